//! The operator's one error type. Each variant names a metric label
//! (`witan_operator_reconcile_errors_total{error=...}`).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// A member RPC (etcd v3 API) failed.
    #[error("member API: {0}")]
    Member(#[from] crate::members::MemberError),

    /// Serialising a patch failed (a programmer error, but never panic in reconcile).
    #[error("serialisation: {0}")]
    Serialization(#[from] serde_json::Error),

    /// A Secret the spec names (TLS material, a password) is missing or
    /// lacks a key.
    #[error("missing Secret: {0}")]
    MissingSecret(String),

    /// The KvCluster lacks something every object has (namespace, uid).
    #[error("invalid KvCluster: {0}")]
    InvalidResource(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Low-cardinality label for the error metric.
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Member(_) => "member",
            Error::Serialization(_) => "serialization",
            Error::MissingSecret(_) => "missing_secret",
            Error::InvalidResource(_) => "invalid_resource",
        }
    }
}

//! How the operator and its backup jobs reach members: TLS with a client
//! certificate (`spec.tls`) and a user name and password (`spec.auth`).
//! Used by [`crate::members`] and [`crate::backup`].

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity};
use tonic::transport::ClientTlsConfig;

/// PEM material of a `kubernetes.io/tls` Secret: `ca.crt` verifies the
/// members, `tls.crt`/`tls.key` is the client certificate they may demand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A user of the cluster's auth (etcd's Authenticate).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Never print a password in logs or errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Everything needed to talk to one cluster besides its URLs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub tls: Option<ClientTls>,
    pub credentials: Option<Credentials>,
}

impl ClientTls {
    /// tonic's TLS settings (rustls with ring) for this material.
    #[must_use]
    pub fn config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// etcd's answer to Authenticate while auth is off. A cluster whose auth
/// the operator has not enabled yet is reached without a user.
#[must_use]
pub fn is_auth_not_enabled(error: &etcd_client::Error) -> bool {
    error.to_string().contains("authentication is not enabled")
}

/// Connects to `endpoints` with `access`: as the user when auth is on,
/// without one while auth is still off.
pub async fn connect(
    endpoints: &[String],
    access: &Access,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
) -> Result<Client, etcd_client::Error> {
    let options = |with_user: bool| {
        let mut options = ConnectOptions::new().with_connect_timeout(connect_timeout);
        if let Some(timeout) = request_timeout {
            options = options.with_timeout(timeout);
        }
        if let Some(tls) = &access.tls {
            options = options.with_tls(tls.config());
        }
        if let (true, Some(c)) = (with_user, &access.credentials) {
            options = options.with_user(c.user.clone(), c.password.clone());
        }
        options
    };
    if access.credentials.is_none() {
        return Client::connect(endpoints, Some(options(false))).await;
    }
    // Connecting as a user authenticates on one endpoint, and a learner
    // refuses Authenticate (as in etcd): try the members one by one.
    let mut last = None;
    for endpoint in endpoints {
        let one = std::slice::from_ref(endpoint);
        match Client::connect(one, Some(options(true))).await {
            Err(error) if is_auth_not_enabled(&error) => {
                return Client::connect(endpoints, Some(options(false))).await;
            }
            Err(error) => last = Some(error),
            ok => return ok,
        }
    }
    Err(last
        .unwrap_or_else(|| etcd_client::Error::InvalidArgs("no endpoints to connect to".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials {
            user: "witan-operator".into(),
            password: "s3cret".into(),
        };
        let printed = format!(
            "{:?}",
            Access {
                tls: None,
                credentials: Some(c)
            }
        );
        assert!(printed.contains("witan-operator"));
        assert!(!printed.contains("s3cret"));
    }

    #[test]
    fn only_etcds_auth_not_enabled_error_falls_back() {
        let off = etcd_client::Error::GRpcStatus(tonic::Status::failed_precondition(
            "etcdserver: authentication is not enabled",
        ));
        assert!(is_auth_not_enabled(&off));
        let wrong = etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(
            "etcdserver: authentication failed, invalid user ID or password",
        ));
        assert!(!is_auth_not_enabled(&wrong));
    }
}

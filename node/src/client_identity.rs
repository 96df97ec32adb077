//! Who a client connection proved itself to be at the transport layer.
//!
//! The client listener (TLS) and the auth checks meet here: when
//! `--client-cert-auth` is on and a client presents a certificate the trusted
//! CA signed, the listener attaches a [`ClientCertIdentity`] to the connection
//! (`tls::listener::ConnInfo`, which tonic puts into every request's
//! extensions); auth then takes its common name as the user name for a request
//! that carries no token, as etcd does (`AuthInfoFromTLS`).

/// The verified client certificate's Subject common name (CN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertIdentity {
    pub common_name: String,
}

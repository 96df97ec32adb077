//! TLS for the client and peer listeners and the peer dialer (rustls with
//! the ring provider, TLS 1.2 and 1.3 only), configured like etcd's
//! `--cert-file`/`--peer-cert-file` family (see docs/tls.md).
//!
//! - [`settings`]: the pure rules that turn flags into [`TlsSettings`].
//! - [`reload`]: a configuration built from files and rebuilt when they
//!   change on disk (rotation without restart).
//! - [`server`] / [`client`]: rustls configurations from PEM files.
//! - [`listener`]: accepted connections (plain or TLS) for tonic, with the
//!   verified client certificate's CN in every request's extensions.
//! - [`connector`]: the peer dialer's TCP + TLS connector for tonic.
//! - [`auto`]: `--auto-tls` self-signed certificates.
//! - [`der`]: serial number and CN of a certificate.
//!
//! Must not depend on the node's Raft or storage: only on the config types.

pub mod auto;
pub mod client;
pub mod connector;
pub mod der;
pub mod listener;
pub mod member;
mod pem;
pub mod reload;
pub mod server;
pub mod settings;
mod stream;

use std::path::PathBuf;
use std::sync::Arc;

pub use reload::Reloading;
pub use settings::{CertSource, TlsSettings};
pub use stream::Stream;

/// Why a TLS configuration could not be built. Every variant names the file
/// (or directory) it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{what}: {reason}")]
    Verifier { what: String, reason: String },
    #[error("self-signed certificate in {}: {reason}", dir.display())]
    AutoTls { dir: PathBuf, reason: String },
}

/// The one crypto provider every TLS configuration here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

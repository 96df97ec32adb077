//! The TLS one member runs with, loaded from its [`Config`] at start-up:
//! a bad or missing file fails the start here, naming the file.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;

use super::client::{self, ClientFiles, Verify};
use super::listener::Acceptor;
use super::reload::Refresh;
use super::server::{self, CLIENT_ALPN, PEER_ALPN, ServerFiles};
use super::{CertSource, Reloading, TlsError, auto};
use crate::config::Config;

/// TLS for a member's listeners and its peer dialer.
#[derive(Default)]
pub struct MemberTls {
    /// For https client and metrics listeners.
    pub client: Option<Acceptor>,
    /// For https peer listeners.
    pub peer_server: Option<Acceptor>,
    /// For dialling https peers.
    pub peer_client: Option<Arc<Reloading<ClientConfig>>>,
    /// Everything the reload watcher refreshes.
    pub reloadable: Vec<Arc<dyn Refresh>>,
}

/// The certificate and key files of `source`, generating auto-TLS ones.
fn cert_and_key(source: &CertSource) -> Result<(PathBuf, PathBuf), TlsError> {
    match source {
        CertSource::Files {
            cert_file,
            key_file,
        } => Ok((cert_file.clone(), key_file.clone())),
        CertSource::Auto {
            dir,
            hosts,
            validity_years,
        } => auto::self_signed(dir, hosts, *validity_years),
    }
}

/// Loads every TLS configuration `config` asks for.
pub fn load(config: &Config) -> Result<MemberTls, TlsError> {
    let mut out = MemberTls::default();
    let client_https = config
        .listen_client_urls
        .iter()
        .chain(&config.listen_metrics_urls)
        .any(|u| u.https);
    if let (true, Some(source)) = (client_https, &config.client_tls.cert) {
        let (cert_file, key_file) = cert_and_key(source)?;
        let files = ServerFiles {
            cert_file,
            key_file,
            trusted_ca_file: config.client_tls.trusted_ca_file.clone(),
        };
        let reloading = Arc::new(server::load("client listener", &files, CLIENT_ALPN)?);
        out.reloadable.push(reloading.clone());
        out.client = Some(Acceptor {
            config: reloading,
            identity: config.client_tls.client_cert_auth,
        });
    }
    let Some(source) = &config.peer_tls.cert else {
        return Ok(out);
    };
    let (cert_file, key_file) = cert_and_key(source)?;
    if config.listen_peer_urls.iter().any(|u| u.https) {
        let files = ServerFiles {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            trusted_ca_file: config.peer_tls.trusted_ca_file.clone(),
        };
        let reloading = Arc::new(server::load("peer listener", &files, PEER_ALPN)?);
        out.reloadable.push(reloading.clone());
        out.peer_server = Some(Acceptor {
            config: reloading,
            identity: false,
        });
    }
    let verify = match (&config.peer_tls.trusted_ca_file, source) {
        (Some(ca), _) => Some(Verify::Ca(ca.clone())),
        (None, CertSource::Auto { .. }) => Some(Verify::SkipVerify),
        // Nothing to verify peers with: https peers are refused when
        // dialled (config validation already refuses configured ones).
        (None, CertSource::Files { .. }) => None,
    };
    if let Some(verify) = verify {
        let files = ClientFiles {
            verify,
            cert_and_key: Some((cert_file, key_file)),
        };
        let reloading = Arc::new(client::load("peer dialer", &files)?);
        out.reloadable.push(reloading.clone());
        out.peer_client = Some(reloading);
    }
    Ok(out)
}

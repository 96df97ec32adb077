//! rustls server configurations for the client and peer listeners.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

use super::{Reloading, TlsError, pem, provider};

/// ALPN of the client listener: gRPC (h2) and the HTTP endpoints (either).
pub const CLIENT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN of the peer listener: gRPC only.
pub const PEER_ALPN: &[&[u8]] = &[b"h2"];

/// The files of one listener's TLS.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// With a trusted CA, clients must present a certificate it signed
    /// (etcd's `RequireAndVerifyClientCert` whenever a CA is given).
    pub trusted_ca_file: Option<PathBuf>,
}

/// Loads `files` into a configuration that reloads when they change.
pub fn load(
    what: &str,
    files: &ServerFiles,
    alpn: &[&[u8]],
) -> Result<Reloading<ServerConfig>, TlsError> {
    let mut paths = vec![files.cert_file.clone(), files.key_file.clone()];
    paths.extend(files.trusted_ca_file.clone());
    let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
    let build_paths = paths.clone();
    let what_owned = what.to_string();
    Reloading::load(what, paths, move |contents| {
        build(&what_owned, &build_paths, contents, &alpn)
    })
}

/// `paths`/`contents`: certificate, key, optional CA.
fn build(
    what: &str,
    paths: &[PathBuf],
    contents: &[Vec<u8>],
    alpn: &[Vec<u8>],
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let certs = pem::certs(&paths[0], &contents[0])?;
    let key = pem::private_key(&paths[1], &contents[1])?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        // TLS 1.2 and 1.3: rustls speaks nothing older.
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: what.to_string(),
            source,
        })?;
    let builder = match (paths.get(2), contents.get(2)) {
        (Some(ca_path), Some(ca)) => {
            let roots = pem::roots(ca_path, ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Verifier {
                    what: format!("client verifier from {}", ca_path.display()),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rustls {
            what: format!("{} with key {}", paths[0].display(), paths[1].display()),
            source,
        })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

//! rustls client configurations: the peer dialer (the peer certificate is
//! its client certificate) and witan's own client subcommands.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{Reloading, TlsError, pem, provider};

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub enum Verify {
    /// Against the CAs in this file.
    Ca(PathBuf),
    /// Not at all: `--peer-auto-tls`, as etcd (InsecureSkipVerify), since
    /// every member's certificate is self-signed.
    SkipVerify,
}

/// The files of one dialer's TLS.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub verify: Verify,
    /// Certificate and key presented when the server asks for one.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
}

/// Loads `files` into a configuration that reloads when they change.
pub fn load(what: &str, files: &ClientFiles) -> Result<Reloading<ClientConfig>, TlsError> {
    let mut paths = Vec::new();
    if let Some((cert, key)) = &files.cert_and_key {
        paths.push(cert.clone());
        paths.push(key.clone());
    }
    if let Verify::Ca(ca) = &files.verify {
        paths.push(ca.clone());
    }
    let build_paths = paths.clone();
    let files = files.clone();
    let what_owned = what.to_string();
    Reloading::load(what, paths, move |contents| {
        build(&what_owned, &files, &build_paths, contents)
    })
}

fn build(
    what: &str,
    files: &ClientFiles,
    paths: &[PathBuf],
    contents: &[Vec<u8>],
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let rustls_error = |source| TlsError::Rustls {
        what: what.to_string(),
        source,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?;
    let builder = match &files.verify {
        Verify::Ca(_) => {
            let last = paths.len() - 1;
            builder.with_root_certificates(pem::roots(&paths[last], &contents[last])?)
        }
        Verify::SkipVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider))),
    };
    let mut config = match &files.cert_and_key {
        Some(_) => {
            let certs = pem::certs(&paths[0], &contents[0])?;
            let key = pem::private_key(&paths[1], &contents[1])?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|source| TlsError::Rustls {
                    what: format!("{} with key {}", paths[0].display(), paths[1].display()),
                    source,
                })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts any server certificate, but still checks that the handshake is
/// signed by its key (so the session is encrypted to whoever holds it).
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

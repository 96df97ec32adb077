//! `--auto-tls` / `--peer-auto-tls`: a self-signed certificate generated
//! into `<data-dir>/fixtures/{client,peer}` on first start and reused after,
//! as etcd does. For tests and trials only: nobody can verify it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};

use super::TlsError;

/// The certificate and key file names, etcd's.
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// Hosts every self-signed certificate is valid for, besides the URLs'.
const ALWAYS: [&str; 2] = ["localhost", "127.0.0.1"];

/// The names a certificate for `hosts` carries: the hosts without
/// duplicates and without unspecified addresses (0.0.0.0 is nobody's
/// name), then localhost and 127.0.0.1.
pub fn subject_alt_names(hosts: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let unspecified = |h: &str| {
        h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
    };
    for host in hosts.iter().map(String::as_str).chain(ALWAYS) {
        if !host.is_empty() && !unspecified(host) && !out.iter().any(|h| h == host) {
            out.push(host.to_string());
        }
    }
    out
}

/// The (certificate, key) files in `dir`, generated unless both exist.
pub fn self_signed(
    dir: &Path,
    hosts: &[String],
    validity_years: u32,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    let fail = |reason: String| TlsError::AutoTls {
        dir: dir.to_path_buf(),
        reason,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(format!("creating the directory: {e}")))?;
    let mut params = CertificateParams::new(subject_alt_names(hosts))
        .map_err(|e| fail(format!("subject alternative names: {e}")))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "witan");
    params.distinguished_name = name;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(validity_years));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().map_err(|e| fail(format!("generating a key: {e}")))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| fail(format!("signing: {e}")))?;
    // The key first and private; the certificate last, so a crash in
    // between leaves no certificate and the next start generates both anew.
    write(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(&fail)?;
    write(&cert_path, cert.pem().as_bytes(), 0o644).map_err(&fail)?;
    Ok((cert_path, key_path))
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deduplicated_and_always_include_loopback() {
        let hosts = vec![
            "10.0.0.1".to_string(),
            "0.0.0.0".to_string(),
            "member-0.svc".to_string(),
            "10.0.0.1".to_string(),
            "127.0.0.1".to_string(),
        ];
        assert_eq!(
            subject_alt_names(&hosts),
            vec!["10.0.0.1", "member-0.svc", "127.0.0.1", "localhost"]
        );
    }

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixtures = dir.path().join("fixtures").join("client");
        let (cert, key) = self_signed(&fixtures, &[], 1).expect("generate");
        let first = std::fs::read(&cert).expect("cert");
        assert!(std::fs::read(&key).expect("key").starts_with(b"-----BEGIN"));
        let (again, _) = self_signed(&fixtures, &[], 1).expect("reuse");
        assert_eq!(std::fs::read(again).expect("cert"), first);
    }
}

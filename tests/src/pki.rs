//! Certificates for TLS tests, made with rcgen: a CA, server certificates
//! for 127.0.0.1 and localhost (also usable as client certificates, as
//! peer certificates are), client certificates with a CN, written as PEM
//! files. A second, unrelated CA makes the certificates that must be refused.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// `--cert-file <cert> --key-file <key>` with `prefix` (`""` or `"peer-"`).
    pub fn flags(&self, prefix: &str) -> Vec<String> {
        vec![
            format!("--{prefix}cert-file"),
            self.cert.display().to_string(),
            format!("--{prefix}key-file"),
            self.key.display().to_string(),
        ]
    }

    /// etcdctl's `--cert <cert> --key <key>`.
    pub fn ctl_flags(&self) -> Vec<String> {
        vec![
            "--cert".to_string(),
            self.cert.display().to_string(),
            "--key".to_string(),
            self.key.display().to_string(),
        ]
    }
}

/// A certificate authority whose certificate is in [`Ca::file`].
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    file: PathBuf,
}

/// What one issued certificate says.
#[derive(Debug, Clone)]
pub struct Leaf<'a> {
    /// Subject common name (the user name under client-cert auth).
    pub common_name: &'a str,
    /// DNS names and IP addresses.
    pub sans: &'a [&'a str],
    pub serial: u64,
}

/// The names a server (or peer) certificate on loopback needs.
pub const LOOPBACK: &[&str] = &["127.0.0.1", "localhost"];

impl Ca {
    /// A new CA named `name`, its certificate written to `<dir>/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let file = dir.join(format!("{name}.pem"));
        write_atomically(&file, &cert.pem());
        Ca {
            issuer: Issuer::new(params, key),
            file,
        }
    }

    /// The CA certificate (`--trusted-ca-file`, etcdctl's `--cacert`).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Issues `leaf` into `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem`,
    /// replacing them if they exist (each file is swapped in whole).
    pub fn issue(&self, dir: &Path, stem: &str, leaf: &Leaf<'_>) -> CertFiles {
        let sans: Vec<String> = leaf.sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, leaf.common_name);
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from_slice(&leaf.serial.to_be_bytes()));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let files = CertFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        };
        write_atomically(&files.key, &key.serialize_pem());
        write_atomically(&files.cert, &cert.pem());
        files
    }
}

/// Writes through a temporary file and a rename, so a reader sees either
/// the old contents or the new, never half.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

/// A serial number as DER stores it, without leading zero bytes.
pub fn serial_bytes(serial: u64) -> Vec<u8> {
    let bytes = serial.to_be_bytes();
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes[first..].to_vec()
}

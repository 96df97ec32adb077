//! The rules that turn one side's TLS flags (client or peer) into
//! [`TlsSettings`]: pure, checked once at start-up. Files are read later,
//! when the listeners are built, with errors naming the file.

use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// Where a side's certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// `--auto-tls` / `--peer-auto-tls`: self-signed, generated once into
    /// `dir` and reused, valid for `hosts`.
    Auto {
        dir: PathBuf,
        hosts: Vec<String>,
        validity_years: u32,
    },
}

/// One side's TLS, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `None`: this side has no certificate (plain http only).
    pub cert: Option<CertSource>,
    /// Clients (or peers) must present a certificate this CA signed; for the
    /// peer dialer, also the CA that signs the other members' certificates.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: the certificate's CN identifies the caller.
    pub client_cert_auth: bool,
}

/// The client side or the peer side, with its flag names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Peer,
}

struct Names {
    cert: &'static str,
    key: &'static str,
    ca: &'static str,
    cert_auth: &'static str,
    url_kind: &'static str,
}

impl Side {
    fn names(self) -> Names {
        match self {
            Side::Client => Names {
                cert: "cert-file",
                key: "key-file",
                ca: "trusted-ca-file",
                cert_auth: "client-cert-auth",
                url_kind: "client",
            },
            Side::Peer => Names {
                cert: "peer-cert-file",
                key: "peer-key-file",
                ca: "peer-trusted-ca-file",
                cert_auth: "peer-client-cert-auth",
                url_kind: "peer",
            },
        }
    }
}

/// One side's TLS flags as given.
#[derive(Debug, Clone, Default)]
pub struct SideFlags<'a> {
    pub cert_file: Option<&'a Path>,
    pub key_file: Option<&'a Path>,
    pub trusted_ca_file: Option<&'a Path>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
}

/// Where `--auto-tls` keeps its certificate and for which hosts.
#[derive(Debug, Clone)]
pub struct AutoTls {
    pub dir: PathBuf,
    pub hosts: Vec<String>,
    pub validity_years: u32,
}

fn bad(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

/// Validates one side. `https_urls` are (flag, URL) pairs of this side that
/// use `https://` (listen URLs, and for the peer side the peer URLs it
/// dials). Files given win over auto TLS, as in etcd.
pub fn settings(
    side: Side,
    flags: &SideFlags<'_>,
    https_urls: &[(&'static str, &str)],
    auto: AutoTls,
) -> Result<TlsSettings, ConfigError> {
    let names = side.names();
    let cert = match (flags.cert_file, flags.key_file) {
        (Some(cert_file), Some(key_file)) => Some(CertSource::Files {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
        }),
        (Some(_), None) => {
            return Err(bad(names.key, format!("is required with --{}", names.cert)));
        }
        (None, Some(_)) => {
            return Err(bad(names.cert, format!("is required with --{}", names.key)));
        }
        (None, None) if flags.auto_tls => Some(CertSource::Auto {
            dir: auto.dir,
            hosts: auto.hosts,
            validity_years: auto.validity_years,
        }),
        (None, None) => None,
    };
    if flags.client_cert_auth && flags.trusted_ca_file.is_none() {
        return Err(bad(
            names.cert_auth,
            format!(
                "needs --{} to verify {} certificates",
                names.ca, names.url_kind
            ),
        ));
    }
    for (flag, url) in https_urls {
        if cert.is_none() {
            // etcd's own words.
            return Err(bad(
                flag,
                format!(
                    "TLS key/cert (--{}, --{}) must be provided for {} url {url} with HTTPS scheme",
                    names.cert, names.key, names.url_kind
                ),
            ));
        }
    }
    let files_without_ca =
        matches!(cert, Some(CertSource::Files { .. })) && flags.trusted_ca_file.is_none();
    if side == Side::Peer && files_without_ca && !https_urls.is_empty() {
        return Err(bad(
            names.ca,
            "is required to verify the other members' certificates over https peer URLs (or use --peer-auto-tls)",
        ));
    }
    Ok(TlsSettings {
        cert,
        trusted_ca_file: flags.trusted_ca_file.map(Path::to_path_buf),
        client_cert_auth: flags.client_cert_auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto() -> AutoTls {
        AutoTls {
            dir: "/d/fixtures/client".into(),
            hosts: vec!["127.0.0.1".into()],
            validity_years: 1,
        }
    }

    fn flags<'a>(cert: Option<&'a str>, key: Option<&'a str>) -> SideFlags<'a> {
        SideFlags {
            cert_file: cert.map(Path::new),
            key_file: key.map(Path::new),
            ..Default::default()
        }
    }

    #[test]
    fn plain_http_needs_nothing() {
        let s = settings(Side::Client, &SideFlags::default(), &[], auto()).expect("plain");
        assert_eq!(s, TlsSettings::default());
    }

    #[test]
    fn https_without_a_certificate_is_refused_with_etcds_message() {
        let url = "https://127.0.0.1:2379";
        let err = settings(
            Side::Client,
            &SideFlags::default(),
            &[("listen-client-urls", url)],
            auto(),
        )
        .unwrap_err();
        assert_eq!(err.flag, "listen-client-urls");
        assert_eq!(
            err.reason,
            "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"
        );
        let err = settings(
            Side::Peer,
            &SideFlags::default(),
            &[("listen-peer-urls", "https://127.0.0.1:2380")],
            auto(),
        )
        .unwrap_err();
        assert!(
            err.reason.contains("(--peer-cert-file, --peer-key-file)"),
            "{err}"
        );
    }

    #[test]
    fn cert_and_key_come_together() {
        let err = settings(Side::Client, &flags(Some("c"), None), &[], auto()).unwrap_err();
        assert_eq!(err.to_string(), "--key-file: is required with --cert-file");
        let err = settings(Side::Peer, &flags(None, Some("k")), &[], auto()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--peer-cert-file: is required with --peer-key-file"
        );
    }

    #[test]
    fn client_cert_auth_needs_a_ca() {
        let mut f = flags(Some("c"), Some("k"));
        f.client_cert_auth = true;
        let err = settings(Side::Client, &f, &[], auto()).unwrap_err();
        assert_eq!(err.flag, "client-cert-auth");
        f.trusted_ca_file = Some(Path::new("ca"));
        let s = settings(Side::Client, &f, &[], auto()).expect("valid");
        assert!(s.client_cert_auth);
        assert_eq!(s.trusted_ca_file, Some(PathBuf::from("ca")));
    }

    #[test]
    fn files_win_over_auto_tls_and_auto_tls_serves_https() {
        let mut f = flags(Some("c"), Some("k"));
        f.auto_tls = true;
        let s = settings(Side::Client, &f, &[], auto()).expect("valid");
        assert!(matches!(s.cert, Some(CertSource::Files { .. })));
        let f = SideFlags {
            auto_tls: true,
            ..Default::default()
        };
        let s = settings(
            Side::Client,
            &f,
            &[("listen-client-urls", "https://127.0.0.1:1")],
            auto(),
        )
        .expect("valid");
        assert_eq!(
            s.cert,
            Some(CertSource::Auto {
                dir: "/d/fixtures/client".into(),
                hosts: vec!["127.0.0.1".into()],
                validity_years: 1
            })
        );
    }

    #[test]
    fn https_peers_need_a_ca_unless_auto_tls() {
        let urls = [("initial-cluster", "https://127.0.0.1:2380")];
        let err = settings(Side::Peer, &flags(Some("c"), Some("k")), &urls, auto()).unwrap_err();
        assert_eq!(err.flag, "peer-trusted-ca-file");
        let f = SideFlags {
            auto_tls: true,
            ..Default::default()
        };
        assert!(settings(Side::Peer, &f, &urls, auto()).is_ok());
    }
}

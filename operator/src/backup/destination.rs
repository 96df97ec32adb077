//! Where backups go: a local directory (a mounted PVC) or an S3-compatible
//! bucket, both behind `object_store`.

use std::{path::PathBuf, sync::Arc};

use object_store::{
    ObjectStore, aws::AmazonS3Builder, local::LocalFileSystem, path::Path as ObjectPath,
};

use super::BackupError;

/// A parsed `--destination`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A directory; written to a temporary name, fsynced, then renamed.
    Dir(PathBuf),
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
}

/// How to reach and sign for S3 (ignored for directories).
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// Endpoint URL; AWS when unset.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), which most self-hosted
    /// servers need; virtual-hosted style (`bucket.endpoint/key`) otherwise.
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl Destination {
    /// `s3://bucket[/prefix]` or a directory path (absolute, so a CronJob's
    /// working directory never decides where backups land).
    pub fn parse(raw: &str) -> Result<Destination, BackupError> {
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BackupError::Config(format!("no bucket in {raw:?}")));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == "." || p == "..") {
                return Err(BackupError::Config(format!(
                    "prefix in {raw:?} has a . or .. segment"
                )));
            }
            return Ok(Destination::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if raw.contains("://") {
            return Err(BackupError::Config(format!(
                "unsupported destination {raw:?}: use s3://bucket/prefix or a directory"
            )));
        }
        let path = PathBuf::from(raw);
        if !path.is_absolute() {
            return Err(BackupError::Config(format!(
                "destination directory {raw:?} must be an absolute path"
            )));
        }
        Ok(Destination::Dir(path))
    }

    /// The prefix under which backups are listed and written.
    #[must_use]
    pub fn prefix(&self) -> ObjectPath {
        match self {
            Destination::Dir(_) => ObjectPath::default(),
            Destination::S3 { prefix, .. } => ObjectPath::from(prefix.as_str()),
        }
    }

    /// Where a backup named `name` is, as a person would type it.
    #[must_use]
    pub fn location(&self, name: &str) -> String {
        match self {
            Destination::Dir(dir) => dir.join(name).display().to_string(),
            Destination::S3 { bucket, prefix } if prefix.is_empty() => {
                format!("s3://{bucket}/{name}")
            }
            Destination::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}/{name}"),
        }
    }

    /// An object store rooted at the bucket or the directory (created if
    /// missing).
    pub fn open(&self, s3: &S3Options) -> Result<Arc<dyn ObjectStore>, BackupError> {
        match self {
            Destination::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| BackupError::Io {
                    what: format!("creating {}", dir.display()),
                    source,
                })?;
                let store = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|source| BackupError::Store {
                        what: "opening the directory",
                        source,
                    })?
                    .with_fsync(true);
                Ok(Arc::new(store))
            }
            Destination::S3 { bucket, .. } => {
                install_crypto_provider();
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(&s3.region)
                    .with_virtual_hosted_style_request(!s3.path_style);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint_url(endpoint, bucket, s3.path_style))
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
                    builder = builder
                        .with_access_key_id(id)
                        .with_secret_access_key(secret);
                }
                let store = builder.build().map_err(|source| BackupError::Store {
                    what: "configuring the S3 client",
                    source,
                })?;
                Ok(Arc::new(store))
            }
        }
    }
}

/// The endpoint `object_store` wants: as given for path-style requests; with
/// the bucket as the first host label for virtual-hosted style (it does not
/// add it to a custom endpoint itself).
#[must_use]
pub fn endpoint_url(endpoint: &str, bucket: &str, path_style: bool) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if path_style {
        return endpoint.to_string();
    }
    match endpoint.split_once("://") {
        Some((scheme, host)) if !host.starts_with(&format!("{bucket}.")) => {
            format!("{scheme}://{bucket}.{host}")
        }
        _ => endpoint.to_string(),
    }
}

/// reqwest is built without a bundled TLS crypto provider (the workspace
/// uses ring, like kube, not aws-lc); install ring as the process default
/// once. A provider someone installed first is kept.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_into_a_bucket_and_prefix_or_a_directory() {
        assert_eq!(
            Destination::parse("s3://backups/prod/kv/").unwrap(),
            Destination::S3 {
                bucket: "backups".into(),
                prefix: "prod/kv".into()
            }
        );
        assert_eq!(
            Destination::parse("s3://backups").unwrap(),
            Destination::S3 {
                bucket: "backups".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Destination::parse("/var/lib/witan-backup/kv").unwrap(),
            Destination::Dir("/var/lib/witan-backup/kv".into())
        );
        for bad in [
            "s3://",
            "s3:///x",
            "gs://b/p",
            "relative/dir",
            "s3://b/../x",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn locations_are_what_a_person_would_type() {
        let s3 = Destination::parse("s3://b/p/q").unwrap();
        assert_eq!(
            s3.location("x.witan-snapshot"),
            "s3://b/p/q/x.witan-snapshot"
        );
        assert_eq!(s3.prefix().as_ref(), "p/q");
        let root = Destination::parse("s3://b").unwrap();
        assert_eq!(root.location("x"), "s3://b/x");
        let dir = Destination::parse("/backup").unwrap();
        assert_eq!(dir.location("x"), "/backup/x");
    }

    #[test]
    fn virtual_hosted_endpoints_get_the_bucket_as_host_label() {
        assert_eq!(
            endpoint_url("http://127.0.0.1:9000/", "b", true),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            endpoint_url("https://s3.example.com", "b", false),
            "https://b.s3.example.com"
        );
        assert_eq!(
            endpoint_url("https://b.s3.example.com", "b", false),
            "https://b.s3.example.com"
        );
    }
}

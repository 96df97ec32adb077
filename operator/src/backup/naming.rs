//! Backup object names: `<cluster>-<UTC time>-rev<revision>.witan-snapshot`,
//! e.g. `kv-20260102T030405.678Z-rev42.witan-snapshot`.
//!
//! The name alone says which cluster a backup belongs to, when it was taken
//! and at which revision, so retention can choose what to delete from a
//! plain listing (no object metadata, which not every S3-compatible server
//! keeps) and a person can pick a backup to restore from `ls`.

use k8s_openapi::jiff::{Timestamp, civil::DateTime, tz::TimeZone};

/// The file extension of every backup object.
pub const SUFFIX: &str = ".witan-snapshot";

/// What a backup's name says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupName {
    pub cluster: String,
    /// When the backup was taken, to the millisecond.
    pub time: Timestamp,
    /// The revision the snapshot holds.
    pub revision: i64,
}

impl BackupName {
    /// The object (or file) name.
    #[must_use]
    pub fn render(&self) -> String {
        format!(
            "{}-{}.{:03}Z-rev{}{SUFFIX}",
            self.cluster,
            self.time.strftime("%Y%m%dT%H%M%S"),
            self.time.subsec_millisecond(),
            self.revision
        )
    }

    /// Parses a name [`render`](Self::render) made; `None` for anything else
    /// (other files in the same place are never mistaken for backups).
    #[must_use]
    pub fn parse(name: &str) -> Option<BackupName> {
        let stem = name.strip_suffix(SUFFIX)?;
        let (rest, revision) = stem.rsplit_once("-rev")?;
        if revision.is_empty() || !revision.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let revision: i64 = revision.parse().ok()?;
        // `YYYYMMDDTHHMMSS.mmmZ` is 20 bytes, preceded by '-'.
        let split = rest.len().checked_sub(21)?;
        let (cluster, time) = rest.split_at(split);
        let time = time.strip_prefix('-')?;
        if cluster.is_empty() || !time.is_ascii() {
            return None;
        }
        let (seconds, millis) = time.strip_suffix('Z')?.split_once('.')?;
        if millis.len() != 3 || !millis.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let millis: i64 = millis.parse().ok()?;
        let civil = DateTime::strptime("%Y%m%dT%H%M%S", seconds).ok()?;
        let whole = civil.to_zoned(TimeZone::UTC).ok()?.timestamp();
        let time = Timestamp::from_millisecond(whole.as_millisecond() + millis).ok()?;
        let parsed = BackupName {
            cluster: cluster.to_string(),
            time,
            revision,
        };
        // Only the canonical form: no leading zeros, no other spellings.
        (parsed.render() == name).then_some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(ms).unwrap()
    }

    #[test]
    fn a_name_renders_utc_time_to_the_millisecond_and_the_revision() {
        let name = BackupName {
            cluster: "kv".into(),
            time: "2026-01-02T03:04:05.678Z".parse().unwrap(),
            revision: 42,
        };
        assert_eq!(
            name.render(),
            "kv-20260102T030405.678Z-rev42.witan-snapshot"
        );
    }

    #[test]
    fn names_round_trip_even_when_the_cluster_name_has_dashes() {
        for (cluster, ms, revision) in [
            ("kv", 0, 1),
            ("my-kv-rev1", 1_767_323_045_678, 9_000_000_000),
            ("a", 1_767_323_045_001, 0),
        ] {
            let name = BackupName {
                cluster: cluster.into(),
                time: at(ms),
                revision,
            };
            assert_eq!(BackupName::parse(&name.render()), Some(name));
        }
    }

    #[test]
    fn foreign_or_malformed_names_are_not_backups() {
        for name in [
            "kv-20260102T030405.678Z-rev42.db",
            "kv-20260102T030405.678Z-rev.witan-snapshot",
            "kv-20260102T030405.678Z-rev-1.witan-snapshot",
            "kv-20260102T030405.678Z-rev042.witan-snapshot",
            "kv-20260102T030405Z-rev42.witan-snapshot",
            "-20260102T030405.678Z-rev42.witan-snapshot",
            "kv_20260102T030405.678Z-rev42.witan-snapshot",
            "kv-20261302T030405.678Z-rev42.witan-snapshot",
            "kv-2026010xT030405.678Z-rev42.witan-snapshot",
            ".witan-snapshot",
            "notes.txt",
        ] {
            assert_eq!(BackupName::parse(name), None, "{name}");
        }
    }
}

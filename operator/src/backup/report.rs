//! What one backup run reports: a JSON line on stdout and the same JSON as
//! the container's termination message, which is how the controller learns
//! the result (from the finished pod's status) without reading the store.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Kubernetes keeps at most 4096 bytes of a termination message.
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

/// A backup that was stored and verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    /// When the snapshot was requested (RFC 3339, UTC).
    pub time: String,
    /// The revision the snapshot holds.
    pub revision: i64,
    /// Bytes stored.
    pub size: u64,
    /// Where it is: `s3://bucket/prefix/name` or a path.
    pub location: String,
    /// SHA-256 of the file before its trailer (as `witan snapshot status`
    /// prints it).
    pub sha256: String,
    /// Older backups deleted by retention.
    #[serde(default)]
    pub pruned: Vec<String>,
}

/// What the run wrote: a report, or why it failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    Stored(BackupReport),
    Failed { error: String },
}

impl Outcome {
    /// The JSON written to stdout and the termination log, within the
    /// termination message's size limit (long errors and prune lists are
    /// shortened, never the fields the controller reads).
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut outcome = self.clone();
        loop {
            let json = serde_json::to_string(&outcome).unwrap_or_else(|e| {
                format!(r#"{{"error":"the backup outcome does not serialise: {e}"}}"#)
            });
            if json.len() <= TERMINATION_MESSAGE_MAX {
                return json;
            }
            match &mut outcome {
                Outcome::Stored(report) if !report.pruned.is_empty() => {
                    report.pruned.truncate(report.pruned.len() / 2);
                }
                Outcome::Failed { error } if error.len() > 64 => {
                    let mut keep = error.len() / 2;
                    while !error.is_char_boundary(keep) {
                        keep -= 1;
                    }
                    error.truncate(keep);
                    error.push('…');
                }
                _ => return json,
            }
        }
    }

    /// Parses a termination message; `None` if it is not one of ours.
    #[must_use]
    pub fn parse(message: &str) -> Option<Outcome> {
        serde_json::from_str(message.trim()).ok()
    }
}

/// Writes the outcome to the termination log. Absent directory (not in a
/// pod) is not an error worth failing a backup for; the caller logs it.
pub fn write_termination_log(path: &Path, outcome: &Outcome) -> std::io::Result<()> {
    std::fs::write(path, outcome.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> BackupReport {
        BackupReport {
            time: "2026-01-02T03:04:05.678Z".into(),
            revision: 42,
            size: 1056,
            location: "s3://b/kv-20260102T030405.678Z-rev42.witan-snapshot".into(),
            sha256: "ab".repeat(32),
            pruned: vec!["old".into()],
        }
    }

    #[test]
    fn outcomes_round_trip_through_json() {
        let stored = Outcome::Stored(report());
        assert_eq!(Outcome::parse(&stored.to_json()), Some(stored));
        let failed = Outcome::Failed {
            error: "connect: refused".into(),
        };
        assert_eq!(failed.to_json(), r#"{"error":"connect: refused"}"#);
        assert_eq!(Outcome::parse(&failed.to_json()), Some(failed));
        assert_eq!(Outcome::parse("panicked at main.rs"), None);
    }

    #[test]
    fn long_outcomes_fit_in_a_termination_message() {
        let mut big = report();
        big.pruned = (0..500).map(|i| format!("kv-backup-{i:05}")).collect();
        let json = Outcome::Stored(big).to_json();
        assert!(json.len() <= TERMINATION_MESSAGE_MAX, "{}", json.len());
        let Some(Outcome::Stored(parsed)) = Outcome::parse(&json) else {
            panic!("still a report: {json}");
        };
        assert_eq!(parsed.revision, 42);

        let failed = Outcome::Failed {
            error: "é".repeat(5000),
        };
        let json = failed.to_json();
        assert!(json.len() <= TERMINATION_MESSAGE_MAX, "{}", json.len());
        assert!(matches!(
            Outcome::parse(&json),
            Some(Outcome::Failed { .. })
        ));
    }
}

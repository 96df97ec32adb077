//! What each restore step reports: one JSON line on stdout and the same JSON
//! as the init container's termination message, from which the controller
//! sets the `Restored` condition ([`super::observe`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backup::report::TERMINATION_MESSAGE_MAX;

/// The backup a member fetched (and checked: framing and SHA-256 trailer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fetched {
    /// `s3://bucket/prefix/name` or a path in the backup volume.
    pub location: String,
    pub size: u64,
    /// SHA-256 of the file before its trailer.
    pub sha256: String,
}

/// The outcome of `restore-fetch` or `restore-apply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum RestoreOutcome {
    /// `restore-fetch` downloaded and checked the backup.
    Fetched {
        backup: Fetched,
    },
    /// `restore-apply` built the data dir from it (`witan snapshot restore`).
    #[serde(rename_all = "camelCase")]
    Restored {
        backup: Fetched,
        /// As `witan snapshot restore` printed it.
        revision: Option<i64>,
    },
    /// Nothing to do for this member.
    Skipped {
        reason: String,
    },
    Failed {
        error: String,
    },
}

impl RestoreOutcome {
    /// The JSON, within the termination message's size limit (a long error
    /// is shortened).
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut outcome = self.clone();
        loop {
            let json = serde_json::to_string(&outcome).unwrap_or_else(|e| {
                format!(r#"{{"outcome":"failed","error":"the outcome does not serialise: {e}"}}"#)
            });
            if json.len() <= TERMINATION_MESSAGE_MAX {
                return json;
            }
            match &mut outcome {
                RestoreOutcome::Failed { error } | RestoreOutcome::Skipped { reason: error }
                    if error.len() > 64 =>
                {
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
    pub fn parse(message: &str) -> Option<RestoreOutcome> {
        serde_json::from_str(message.trim()).ok()
    }

    /// Prints the JSON and writes it to the termination log (a missing log
    /// outside a pod is logged, not fatal).
    pub fn publish(&self, termination_log: &Path) {
        let json = self.to_json();
        println!("{json}");
        if let Err(error) = std::fs::write(termination_log, &json) {
            tracing::warn!(
                path = %termination_log.display(),
                "writing the termination log failed: {error}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched() -> Fetched {
        Fetched {
            location: "s3://b/kv-20260102T030405.678Z-rev42.witan-snapshot".into(),
            size: 1056,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn outcomes_round_trip_through_json() {
        for outcome in [
            RestoreOutcome::Fetched { backup: fetched() },
            RestoreOutcome::Restored {
                backup: fetched(),
                revision: Some(42),
            },
            RestoreOutcome::Skipped {
                reason: "data".into(),
            },
            RestoreOutcome::Failed {
                error: "no backup".into(),
            },
        ] {
            assert_eq!(RestoreOutcome::parse(&outcome.to_json()), Some(outcome));
        }
        assert_eq!(
            RestoreOutcome::Failed { error: "x".into() }.to_json(),
            r#"{"outcome":"failed","error":"x"}"#
        );
        assert_eq!(RestoreOutcome::parse("Error: panicked"), None);
        // A backup job's report is not a restore outcome.
        assert_eq!(RestoreOutcome::parse(r#"{"error":"x"}"#), None);
    }

    #[test]
    fn long_errors_fit_in_a_termination_message() {
        let json = RestoreOutcome::Failed {
            error: "é".repeat(5000),
        }
        .to_json();
        assert!(json.len() <= TERMINATION_MESSAGE_MAX);
        assert!(matches!(
            RestoreOutcome::parse(&json),
            Some(RestoreOutcome::Failed { .. })
        ));
    }
}

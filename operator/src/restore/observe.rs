//! From the member pods' restore init containers to the `Restored`
//! condition. Pure: the controller lists the pods (it already does, to
//! observe the members).

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};

use super::{
    APPLY_CONTAINER, FETCH_CONTAINER,
    report::{Fetched, RestoreOutcome},
};

/// What one member's restore init container last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreRun {
    pub pod: String,
    /// [`FETCH_CONTAINER`] or [`APPLY_CONTAINER`].
    pub container: String,
    pub exit_code: i32,
    /// The termination message (our JSON, or the log tail when the process
    /// died before writing it).
    pub message: String,
}

/// The last termination of each restore init container in `pods` (the
/// current one, or the previous one while a failed container waits to be
/// retried).
#[must_use]
pub fn runs_from_pods(pods: &[Pod]) -> Vec<RestoreRun> {
    let mut runs = Vec::new();
    for pod in pods {
        let Some(statuses) = pod
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
        else {
            continue;
        };
        for status in statuses {
            if status.name != FETCH_CONTAINER && status.name != APPLY_CONTAINER {
                continue;
            }
            let terminated: Option<&ContainerStateTerminated> = status
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| status.last_state.as_ref()?.terminated.as_ref());
            if let Some(t) = terminated {
                runs.push(RestoreRun {
                    pod: pod.metadata.name.clone().unwrap_or_default(),
                    container: status.name.clone(),
                    exit_code: t.exit_code,
                    message: t.message.clone().unwrap_or_default(),
                });
            }
        }
    }
    runs.sort_by(|a, b| (&a.pod, &a.container).cmp(&(&b.pod, &b.container)));
    runs
}

/// The `Restored` condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreState {
    /// `"True"`, `"False"` or `"Unknown"`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What the runs say about the restore; `None` when they say nothing new
/// (every member skipped, e.g. pods replaced since, so the condition
/// written before stands).
///
/// - `True`/`Restored`: members restored, all the same backup.
/// - `False`/`RestoreMismatch`: members restored different backups (the
///   cluster holds diverging data; it should be deleted and restored from
///   a named backup).
/// - `False`/`RestoreFailed`: a step failed; the message says which and why.
/// - `Unknown`/`RestorePending`: nothing finished yet.
#[must_use]
pub fn state(runs: &[RestoreRun]) -> Option<RestoreState> {
    let restored: Vec<(&str, Fetched, Option<i64>)> = runs
        .iter()
        .filter(|r| r.exit_code == 0)
        .filter_map(|r| match RestoreOutcome::parse(&r.message)? {
            RestoreOutcome::Restored { backup, revision } => {
                Some((r.pod.as_str(), backup, revision))
            }
            _ => None,
        })
        .collect();
    if let Some((_, first, revision)) = restored.first() {
        let differs = restored
            .iter()
            .any(|(_, b, _)| b.location != first.location || b.sha256 != first.sha256);
        let members: Vec<&str> = restored.iter().map(|(pod, _, _)| *pod).collect();
        if differs {
            let each: Vec<String> = restored
                .iter()
                .map(|(pod, b, _)| format!("{pod}: {} ({})", b.location, short(&b.sha256)))
                .collect();
            return Some(RestoreState {
                status: "False",
                reason: "RestoreMismatch",
                message: format!("members restored different backups: {}", each.join("; ")),
            });
        }
        return Some(RestoreState {
            status: "True",
            reason: "Restored",
            message: format!(
                "{} restored {}{} (sha256 {})",
                members.join(", "),
                first.location,
                revision.map_or_else(String::new, |r| format!(" at revision {r}")),
                short(&first.sha256)
            ),
        });
    }
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.exit_code != 0)
        .map(|r| {
            let why = match RestoreOutcome::parse(&r.message) {
                Some(RestoreOutcome::Failed { error }) => error,
                _ if r.message.trim().is_empty() => format!("exit code {}", r.exit_code),
                _ => r.message.trim().to_string(),
            };
            format!("{} {}: {why}", r.pod, r.container)
        })
        .collect();
    if !failed.is_empty() {
        return Some(RestoreState {
            status: "False",
            reason: "RestoreFailed",
            message: failed.join("; "),
        });
    }
    let skipped_only = !runs.is_empty()
        && runs.iter().all(|r| {
            matches!(
                RestoreOutcome::parse(&r.message),
                Some(RestoreOutcome::Skipped { .. })
            )
        });
    if skipped_only {
        return None;
    }
    Some(RestoreState {
        status: "Unknown",
        reason: "RestorePending",
        message: "waiting for the founding members to fetch and restore the backup".into(),
    })
}

fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fetched(location: &str, sha: &str) -> Fetched {
        Fetched {
            location: location.into(),
            size: 1056,
            sha256: sha.repeat(32),
        }
    }

    fn run(pod: &str, container: &str, exit_code: i32, outcome: &RestoreOutcome) -> RestoreRun {
        RestoreRun {
            pod: pod.into(),
            container: container.into(),
            exit_code,
            message: outcome.to_json(),
        }
    }

    fn restored(pod: &str, location: &str, sha: &str) -> RestoreRun {
        run(
            pod,
            APPLY_CONTAINER,
            0,
            &RestoreOutcome::Restored {
                backup: fetched(location, sha),
                revision: Some(42),
            },
        )
    }

    #[test]
    fn init_container_terminations_become_runs() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "kv-0"},
            "status": {"initContainerStatuses": [
                {"name": FETCH_CONTAINER, "image": "i", "imageID": "", "ready": false,
                 "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "message": "fetched"}}},
                {"name": APPLY_CONTAINER, "image": "i", "imageID": "", "ready": false,
                 "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "message": "boom"}}},
                {"name": "other", "image": "i", "imageID": "", "ready": false,
                 "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0}}}
            ]}
        }))
        .unwrap();
        let pending: Pod = serde_json::from_value(json!({"metadata": {"name": "kv-1"}})).unwrap();
        let runs = runs_from_pods(&[pending, pod]);
        assert_eq!(
            runs,
            vec![
                RestoreRun {
                    pod: "kv-0".into(),
                    container: APPLY_CONTAINER.into(),
                    exit_code: 1,
                    message: "boom".into()
                },
                RestoreRun {
                    pod: "kv-0".into(),
                    container: FETCH_CONTAINER.into(),
                    exit_code: 0,
                    message: "fetched".into()
                },
            ]
        );
    }

    #[test]
    fn members_that_restored_the_same_backup_make_it_restored() {
        let runs = vec![
            restored("kv-0", "s3://b/x", "ab"),
            restored("kv-1", "s3://b/x", "ab"),
            run(
                "kv-2",
                FETCH_CONTAINER,
                0,
                &RestoreOutcome::Skipped {
                    reason: "data".into(),
                },
            ),
        ];
        let state = state(&runs).unwrap();
        assert_eq!(state.status, "True");
        assert_eq!(state.reason, "Restored");
        assert_eq!(
            state.message,
            "kv-0, kv-1 restored s3://b/x at revision 42 (sha256 abababababab)"
        );
    }

    #[test]
    fn different_backups_are_a_mismatch() {
        let runs = vec![
            restored("kv-0", "s3://b/x", "ab"),
            restored("kv-1", "s3://b/y", "cd"),
        ];
        let state = state(&runs).unwrap();
        assert_eq!((state.status, state.reason), ("False", "RestoreMismatch"));
        assert!(
            state.message.contains("kv-1: s3://b/y"),
            "{}",
            state.message
        );
    }

    #[test]
    fn a_failed_step_says_which_member_and_why() {
        let runs = vec![
            run(
                "kv-1",
                FETCH_CONTAINER,
                1,
                &RestoreOutcome::Failed {
                    error: "no backup of kv".into(),
                },
            ),
            RestoreRun {
                pod: "kv-2".into(),
                container: APPLY_CONTAINER.into(),
                exit_code: 137,
                message: String::new(),
            },
        ];
        let state = state(&runs).unwrap();
        assert_eq!((state.status, state.reason), ("False", "RestoreFailed"));
        assert_eq!(
            state.message,
            "kv-1 restore-fetch: no backup of kv; kv-2 restore: exit code 137"
        );
    }

    #[test]
    fn nothing_finished_is_pending_and_only_skips_say_nothing() {
        assert_eq!(state(&[]).unwrap().status, "Unknown");
        let fetched_only = vec![run(
            "kv-0",
            FETCH_CONTAINER,
            0,
            &RestoreOutcome::Fetched {
                backup: fetched("x", "ab"),
            },
        )];
        assert_eq!(state(&fetched_only).unwrap().reason, "RestorePending");
        let skipped = vec![run(
            "kv-0",
            FETCH_CONTAINER,
            0,
            &RestoreOutcome::Skipped {
                reason: "data".into(),
            },
        )];
        assert_eq!(state(&skipped), None);
    }
}

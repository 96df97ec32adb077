//! The KvCluster status, computed from what one reconcile observed and the
//! step it chose. Pure: the controller writes the result with server-side
//! apply.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::{
    backup::observe::Readiness,
    crd::{KvCluster, KvClusterStatus, MemberRole, MemberStatus, Phase},
    names::ClusterNames,
    observed::Observed,
    planner::{Step, WaitReason},
};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const BACKUP_READY: &str = "BackupReady";
/// Only with `spec.bootstrap.restore`.
pub const RESTORED: &str = "Restored";

/// The status to write after taking `step` on `observed`, at time `now`.
#[must_use]
pub fn compute(
    kvc: &KvCluster,
    names: &ClusterNames,
    observed: &Observed,
    step: &Step,
    now: &Time,
) -> KvClusterStatus {
    let previous = kvc.status.clone().unwrap_or_default();
    let membership = observed.membership.as_ref();

    let mut members: Vec<MemberStatus> = membership
        .map(|m| {
            m.members
                .iter()
                .map(|m| MemberStatus {
                    name: m.name.clone(),
                    id: format!("{:x}", m.id),
                    role: if m.is_leader {
                        MemberRole::Leader
                    } else if m.is_learner {
                        MemberRole::Learner
                    } else {
                        MemberRole::Follower
                    },
                    healthy: m.healthy,
                    revision: m.revision,
                })
                .collect()
        })
        .unwrap_or_default();
    members.sort_by_key(|m| (names.ordinal_of(&m.name), m.name.clone()));

    let voters: Vec<_> = membership.map(|m| m.voters().collect()).unwrap_or_default();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();
    let quorum = voters.len() / 2 + 1;
    let leader = membership.and_then(|m| m.leader());
    let available = leader.is_some() && healthy_voters >= quorum;
    let unhealthy: Vec<&str> = membership
        .map(|m| {
            m.members
                .iter()
                .filter(|m| !m.healthy)
                .map(|m| m.name.as_str())
                .collect()
        })
        .unwrap_or_default();

    let available_condition = if membership.is_none() {
        condition(AVAILABLE, false, "Unreachable", "no member answers".into())
    } else {
        condition(
            AVAILABLE,
            available,
            if available {
                "QuorumHealthy"
            } else {
                "NoQuorum"
            },
            format!(
                "{healthy_voters}/{} voters healthy, quorum needs {quorum}{}",
                voters.len(),
                if leader.is_some() { "" } else { ", no leader" }
            ),
        )
    };
    let progressing = match step {
        Step::Converged | Step::Paused => {
            condition(PROGRESSING, false, step_reason(step), step_message(step))
        }
        _ => condition(PROGRESSING, true, step_reason(step), step_message(step)),
    };
    let blocked = matches!(
        step,
        Step::Wait(
            WaitReason::ForeignMember { .. }
                | WaitReason::EvenVoters { .. }
                | WaitReason::InvalidReplicas { .. }
                | WaitReason::StorageChangeRefused { .. }
        )
    );
    let degraded = if !unhealthy.is_empty() {
        condition(DEGRADED, true, "UnhealthyMembers", unhealthy.join(", "))
    } else if blocked {
        condition(DEGRADED, true, step_reason(step), step_message(step))
    } else {
        condition(DEGRADED, false, "AllMembersHealthy", String::new())
    };
    let backups = crate::backup::observe::state(
        kvc.spec.backup.as_ref(),
        previous.last_backup.as_ref(),
        &observed.backup_runs,
    );
    let mut backup = condition(
        BACKUP_READY,
        backups.ready == Readiness::True,
        backups.reason,
        backups.message,
    );
    if backups.ready == Readiness::Unknown {
        backup.status = "Unknown".into();
    }

    let phase = match step {
        Step::Paused => Phase::Paused,
        Step::Bootstrap { .. } | Step::Wait(WaitReason::MembersStarting) => Phase::Creating,
        Step::Wait(WaitReason::ClusterUnreachable) => Phase::Unavailable,
        Step::ReplacePod { .. } => Phase::Upgrading,
        Step::ExpandClaims { .. }
        | Step::ReplaceStatefulSet { .. }
        | Step::RecreateStatefulSet { .. }
        | Step::Wait(WaitReason::StatefulSetDeleting) => Phase::Resizing,
        Step::TransferLeadership { .. } if observed.pods.iter().any(|p| !p.up_to_date) => {
            Phase::Upgrading
        }
        _ if !unhealthy.is_empty() || blocked || (membership.is_some() && !available) => {
            Phase::Degraded
        }
        Step::Converged => Phase::Running,
        _ => Phase::Scaling,
    };

    let restored = kvc
        .spec
        .bootstrap
        .as_ref()
        .and_then(|b| b.restore.as_ref())
        .map(|_| restored_condition(&previous.conditions, &observed.restore_runs));

    let mut conditions = Vec::new();
    for mut c in [available_condition, progressing, degraded, backup]
        .into_iter()
        .chain(restored)
    {
        // Keep the transition time while the condition's status holds.
        c.last_transition_time = previous
            .conditions
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
        c.observed_generation = kvc.metadata.generation;
        conditions.push(c);
    }

    KvClusterStatus {
        phase: Some(phase),
        conditions,
        replicas: observed.statefulset_replicas.unwrap_or(0),
        ready_replicas: i32::try_from(observed.pods.iter().filter(|p| p.ready).count())
            .unwrap_or(i32::MAX),
        selector: Some(names.selector_string()),
        members,
        leader: leader.map(|l| l.name.clone()),
        cluster_id: membership
            .and_then(|m| m.cluster_id)
            .map(|id| format!("{id:x}"))
            .or(previous.cluster_id),
        last_backup: backups.last_backup,
        observed_generation: kvc.metadata.generation,
    }
}

/// `Restored` from the restore init containers; what was written before
/// when they say nothing new (their pods were replaced since and only
/// skipped, or have not run their init containers yet).
fn restored_condition(
    previous: &[Condition],
    runs: &[crate::restore::observe::RestoreRun],
) -> Condition {
    let state = crate::restore::observe::state(runs).filter(|s| s.status != "Unknown");
    if state.is_none()
        && let Some(before) = previous.iter().find(|c| c.type_ == RESTORED)
    {
        return before.clone();
    }
    let state = state.unwrap_or(crate::restore::observe::RestoreState {
        status: "Unknown",
        reason: "RestorePending",
        message: "no member has restored yet".into(),
    });
    let mut c = condition(RESTORED, false, state.reason, state.message);
    c.status = state.status.into();
    c
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// A PascalCase reason for a step (conditions and events).
#[must_use]
pub fn step_reason(step: &Step) -> &'static str {
    match step {
        Step::Paused => "Paused",
        Step::Bootstrap { .. } => "Bootstrap",
        Step::AddLearner { .. } => "AddLearner",
        Step::ScaleStatefulSet { .. } => "ScaleStatefulSet",
        Step::ChangeVoters { .. } => "ChangeVoters",
        Step::TransferLeadership { .. } => "TransferLeadership",
        Step::RemoveMember { .. } => "RemoveMember",
        Step::ReplacePod { .. } => "ReplaceMember",
        Step::ExpandClaims { .. } => "ExpandVolumes",
        Step::ReplaceStatefulSet { .. } => "OrphanStatefulSet",
        Step::RecreateStatefulSet { .. } => "RecreateStatefulSet",
        Step::Converged => "Converged",
        Step::Wait(reason) => match reason {
            WaitReason::MembersStarting => "MembersStarting",
            WaitReason::ClusterUnreachable => "ClusterUnreachable",
            WaitReason::NoLeader => "NoLeader",
            WaitReason::LearnerCatchingUp { .. } => "LearnerCatchingUp",
            WaitReason::Unhealthy { .. } => "WaitingForHealthyMembers",
            WaitReason::ForeignMember { .. } => "ForeignMember",
            WaitReason::EvenVoters { .. } => "EvenVoters",
            WaitReason::InvalidReplicas { .. } => "InvalidReplicas",
            WaitReason::StatefulSetDeleting => "StatefulSetDeleting",
            WaitReason::StorageChangeRefused { .. } => "StorageChangeRefused",
        },
    }
}

/// A human sentence for a step.
#[must_use]
pub fn step_message(step: &Step) -> String {
    match step {
        Step::Paused => "spec.paused is set: no changes are made".into(),
        Step::Bootstrap { replicas } => format!("bootstrapping {replicas} founding members"),
        Step::AddLearner { member } => format!("adding {member} as a learner"),
        Step::ScaleStatefulSet { replicas } => {
            format!("setting the StatefulSet to {replicas} replicas")
        }
        Step::ChangeVoters { voters, why } => {
            let ids: Vec<String> = voters.iter().map(|id| format!("{id:x}")).collect();
            format!("changing the voters to [{}] ({why:?})", ids.join(", "))
        }
        Step::TransferLeadership { from, to } => {
            format!("moving leadership from {from:x} to {to:x}")
        }
        Step::RemoveMember { member, id } => format!("removing member {member} ({id:x})"),
        Step::ReplacePod { pod } => format!("replacing {pod} with the new template"),
        Step::ExpandClaims { claims, size } => {
            format!("requesting {size} for the volumes {}", claims.join(", "))
        }
        Step::ReplaceStatefulSet { size } => format!(
            "deleting the StatefulSet with its pods orphaned (they keep running) to create it again with {size} volumes"
        ),
        Step::RecreateStatefulSet { replicas } => format!(
            "creating the StatefulSet again with the new volume size; it adopts the {replicas} running members"
        ),
        Step::Converged => "the cluster matches the spec".into(),
        Step::Wait(reason) => match reason {
            WaitReason::MembersStarting => "waiting for the founding members to answer".into(),
            WaitReason::ClusterUnreachable => "no member answers".into(),
            WaitReason::NoLeader => "waiting for a leader".into(),
            WaitReason::LearnerCatchingUp { member } => {
                format!("waiting for learner {member} to catch up")
            }
            WaitReason::Unhealthy { members } => {
                format!("waiting for {} to be healthy", members.join(", "))
            }
            WaitReason::ForeignMember { id } => {
                format!("member {id:x} was not created by this operator; remove it by hand")
            }
            WaitReason::EvenVoters { voters } => {
                format!("the change would leave {voters} voters (even)")
            }
            WaitReason::InvalidReplicas { replicas } => {
                format!("spec.replicas={replicas} is not one of 1, 3, 5, 7, 9")
            }
            WaitReason::StatefulSetDeleting => {
                "waiting for the StatefulSet to be deleted (its pods keep running)".into()
            }
            WaitReason::StorageChangeRefused { message } => message.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::{
        observed::{Membership, ObservedMember, ObservedPod},
        resources::testing::kvc,
    };

    fn member(ordinal: u32, leader: bool, healthy: bool) -> ObservedMember {
        ObservedMember {
            id: 0xa0 + u64::from(ordinal),
            name: format!("kv-{ordinal}"),
            is_learner: false,
            is_leader: leader,
            healthy,
            caught_up: true,
            revision: Some(42),
        }
    }

    fn observed(members: Vec<ObservedMember>) -> Observed {
        Observed {
            statefulset_replicas: Some(3),
            bootstrapped: true,
            membership: Some(Membership {
                members,
                joint_target: None,
                cluster_id: Some(0xbeef),
            }),
            pods: (0..3)
                .map(|i| ObservedPod {
                    name: format!("kv-{i}"),
                    ready: i != 2,
                    up_to_date: true,
                })
                .collect(),
            backup_runs: Vec::new(),
            restore_runs: Vec::new(),
            storage: crate::observed::ObservedStorage::default(),
        }
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn find<'a>(status: &'a KvClusterStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    #[test]
    fn a_healthy_cluster_is_running_and_available() {
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let obs = observed(vec![
            member(0, false, true),
            member(1, true, true),
            member(2, false, true),
        ]);
        let status = compute(&kvc, &names, &obs, &Step::Converged, &at(100));
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(status.leader.as_deref(), Some("kv-1"));
        assert_eq!(status.cluster_id.as_deref(), Some("beef"));
        assert_eq!(status.members[1].role, MemberRole::Leader);
        assert_eq!(status.members[1].id, "a1");
        assert_eq!(status.replicas, 3);
        assert_eq!(status.ready_replicas, 2);
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/instance=kv,app.kubernetes.io/name=witan")
        );
        let available = find(&status, AVAILABLE);
        assert_eq!(available.status, "True");
        assert_eq!(available.message, "3/3 voters healthy, quorum needs 2");
        assert_eq!(find(&status, PROGRESSING).status, "False");
        assert_eq!(find(&status, DEGRADED).status, "False");
        assert_eq!(find(&status, BACKUP_READY).reason, "NotConfigured");
    }

    #[test]
    fn an_unhealthy_member_degrades_but_keeps_availability() {
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let obs = observed(vec![
            member(0, true, true),
            member(1, false, true),
            member(2, false, false),
        ]);
        let step = Step::Wait(WaitReason::Unhealthy {
            members: vec!["kv-2".into()],
        });
        let status = compute(&kvc, &names, &obs, &step, &at(100));
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert_eq!(find(&status, AVAILABLE).status, "True");
        assert_eq!(find(&status, DEGRADED).status, "True");
        assert_eq!(find(&status, DEGRADED).message, "kv-2");
    }

    #[test]
    fn losing_quorum_makes_the_cluster_unavailable() {
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let obs = observed(vec![
            member(0, true, true),
            member(1, false, false),
            member(2, false, false),
        ]);
        let status = compute(
            &kvc,
            &names,
            &obs,
            &Step::Wait(WaitReason::NoLeader),
            &at(1),
        );
        assert_eq!(find(&status, AVAILABLE).status, "False");
        assert_eq!(find(&status, AVAILABLE).reason, "NoQuorum");
    }

    #[test]
    fn a_new_cluster_is_creating_and_progressing() {
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let status = compute(
            &kvc,
            &names,
            &Observed::default(),
            &Step::Bootstrap { replicas: 3 },
            &at(1),
        );
        assert_eq!(status.phase, Some(Phase::Creating));
        assert_eq!(find(&status, PROGRESSING).status, "True");
        assert_eq!(find(&status, PROGRESSING).reason, "Bootstrap");
        assert_eq!(find(&status, AVAILABLE).reason, "Unreachable");
        assert_eq!(status.replicas, 0);
    }

    #[test]
    fn transition_times_change_only_when_a_condition_flips() {
        let mut kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let obs = observed(vec![
            member(0, true, true),
            member(1, false, true),
            member(2, false, true),
        ]);
        let first = compute(&kvc, &names, &obs, &Step::Converged, &at(100));
        kvc.status = Some(first);
        let step = Step::AddLearner {
            member: "kv-3".into(),
        };
        let second = compute(&kvc, &names, &obs, &step, &at(200));
        assert_eq!(find(&second, AVAILABLE).last_transition_time, at(100));
        assert_eq!(find(&second, PROGRESSING).last_transition_time, at(200));
        assert_eq!(second.phase, Some(Phase::Scaling));
    }

    #[test]
    fn the_cluster_id_survives_an_unreachable_spell() {
        let mut kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        kvc.status = Some(KvClusterStatus {
            cluster_id: Some("beef".into()),
            ..KvClusterStatus::default()
        });
        let obs = Observed {
            statefulset_replicas: Some(3),
            bootstrapped: true,
            ..Observed::default()
        };
        let status = compute(
            &kvc,
            &names,
            &obs,
            &Step::Wait(WaitReason::ClusterUnreachable),
            &at(1),
        );
        assert_eq!(status.cluster_id.as_deref(), Some("beef"));
        assert_eq!(status.phase, Some(Phase::Unavailable));
    }
    fn restoring() -> KvCluster {
        let mut kvc = kvc(3);
        kvc.spec.bootstrap = Some(crate::crd::BootstrapSpec {
            restore: Some(crate::crd::RestoreSpec {
                source: crate::crd::BackupLocation {
                    pvc: None,
                    s3: Some(crate::crd::S3Location {
                        endpoint: "http://s3".into(),
                        bucket: "b".into(),
                        prefix: None,
                        region: None,
                        force_path_style: true,
                        credentials_secret_name: "c".into(),
                    }),
                },
                name: "latest".into(),
                source_cluster: None,
            }),
        });
        kvc
    }

    fn restore_run(
        pod: &str,
        outcome: &crate::restore::report::RestoreOutcome,
    ) -> crate::restore::observe::RestoreRun {
        crate::restore::observe::RestoreRun {
            pod: pod.into(),
            container: crate::restore::APPLY_CONTAINER.into(),
            exit_code: 0,
            message: outcome.to_json(),
        }
    }

    #[test]
    fn restored_is_reported_only_for_a_restore_and_survives_the_pods() {
        use crate::restore::report::{Fetched, RestoreOutcome};
        let obs = observed(vec![
            member(0, true, true),
            member(1, false, true),
            member(2, false, true),
        ]);
        let plain = kvc(3);
        let names = ClusterNames::of(&plain).unwrap();
        let status = compute(&plain, &names, &obs, &Step::Converged, &at(100));
        assert!(status.conditions.iter().all(|c| c.type_ != RESTORED));

        let mut kvc = restoring();
        let status = compute(&kvc, &names, &obs, &Step::Converged, &at(100));
        let pending = find(&status, RESTORED);
        assert_eq!(
            (pending.status.as_str(), pending.reason.as_str()),
            ("Unknown", "RestorePending")
        );

        let mut obs = obs;
        let restored = RestoreOutcome::Restored {
            backup: Fetched {
                location: "s3://b/kv-x".into(),
                size: 1056,
                sha256: "ab".repeat(32),
            },
            revision: Some(42),
        };
        obs.restore_runs = (0..3)
            .map(|i| restore_run(&format!("kv-{i}"), &restored))
            .collect();
        let status = compute(&kvc, &names, &obs, &Step::Converged, &at(200));
        let done = find(&status, RESTORED).clone();
        assert_eq!(done.status, "True");
        assert_eq!(done.reason, "Restored");
        assert!(
            done.message
                .starts_with("kv-0, kv-1, kv-2 restored s3://b/kv-x at revision 42")
        );
        assert_eq!(done.last_transition_time, at(200));

        // Later the pods are replaced: their init containers only skip, or
        // are gone. The condition stands as written.
        kvc.status = Some(status);
        obs.restore_runs = vec![restore_run(
            "kv-1",
            &RestoreOutcome::Skipped {
                reason: "data".into(),
            },
        )];
        let status = compute(&kvc, &names, &obs, &Step::Converged, &at(300));
        assert_eq!(find(&status, RESTORED), &done);
        obs.restore_runs.clear();
        let status = compute(&kvc, &names, &obs, &Step::Converged, &at(400));
        assert_eq!(find(&status, RESTORED), &done);
    }
}

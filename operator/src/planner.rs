//! The step planner: from the spec and what was observed, the single next
//! safe step. Pure; the controller executes the step and reconciles again.
//!
//! Invariants the plan keeps:
//! - one change at a time: every step is one RPC or one object change;
//! - the voting set only ever moves between odd sizes, by one joint change
//!   (`ChangeVoters`), never through an even size;
//! - a member leaves Raft before its pod goes away, and the leader hands over
//!   leadership before it is removed or replaced;
//! - at most one member is down at any time during a rollout;
//! - every decision is re-derived from observation, so an operator restart or
//!   a leader change in the middle of a step resumes where it stopped.

use std::collections::BTreeSet;

use crate::{
    crd::{ALLOWED_REPLICAS, KvClusterSpec},
    names::ClusterNames,
    observed::{Membership, Observed, ObservedMember},
    resources::configmap::{ClusterState, InitialCluster},
};

/// Why a joint voter change is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoterChange {
    /// Promote caught-up learners (scale up).
    Grow,
    /// Drop members that are going away (scale down).
    Shrink,
    /// Finish a joint change that was interrupted.
    Finish,
}

/// Why nothing can be done now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// The StatefulSet exists but no member answered yet (first start).
    MembersStarting,
    /// The cluster answered before, but no member answers now.
    ClusterUnreachable,
    /// Members answer but none is leader.
    NoLeader,
    /// A learner is not yet healthy or caught up.
    LearnerCatchingUp { member: String },
    /// These members are unhealthy or their pods not ready; changing
    /// anything now could cost the quorum.
    Unhealthy { members: Vec<String> },
    /// A member the operator did not create (its peer URL is not one of this
    /// cluster's); a human must decide.
    ForeignMember { id: u64 },
    /// The change would leave an even number of voters.
    EvenVoters { voters: usize },
    /// `spec.replicas` is not one of 1, 3, 5, 7, 9 (the API server should
    /// have refused it; the CRD may have been installed without the rule).
    InvalidReplicas { replicas: i32 },
    /// The StatefulSet is being deleted with its pods orphaned (a storage
    /// change); it is created again once it is gone.
    StatefulSetDeleting,
    /// `spec.storage` asks for what cannot be done (a shrink, another
    /// StorageClass); the CRD's rules should have refused it.
    StorageChangeRefused { message: String },
}

/// The single next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `spec.paused`: change nothing.
    Paused,
    /// Create the children; the StatefulSet starts `replicas` founding
    /// members with `--initial-cluster-state new`.
    Bootstrap { replicas: i32 },
    /// MemberAdd as a learner (its pod starts after the StatefulSet grows).
    AddLearner { member: String },
    /// Set the StatefulSet's replicas.
    ScaleStatefulSet { replicas: i32 },
    /// One joint change of the voting set to `voters` (odd).
    ChangeVoters {
        voters: BTreeSet<u64>,
        why: VoterChange,
    },
    /// MoveLeader from `from` to `to`.
    TransferLeadership { from: u64, to: u64 },
    /// MemberRemove of a member that is no longer a voter.
    RemoveMember { id: u64, member: String },
    /// Delete the pod so the StatefulSet recreates it from the new template.
    ReplacePod { pod: String },
    /// Patch these member PersistentVolumeClaims to request `size`.
    ExpandClaims { claims: Vec<String>, size: String },
    /// Every claim requests the new size: delete the StatefulSet, orphaning
    /// its pods, to re-create it with the claim template of `size`.
    ReplaceStatefulSet { size: String },
    /// Create the StatefulSet again over its orphaned pods, with `replicas`.
    RecreateStatefulSet { replicas: i32 },
    /// Nothing safe to do now; look again soon.
    Wait(WaitReason),
    /// Everything matches the spec.
    Converged,
}

/// The members a KvCluster with `replicas` members consists of.
fn desired_members(names: &ClusterNames, replicas: i32) -> BTreeSet<String> {
    let replicas = u32::try_from(replicas).unwrap_or(0);
    (0..replicas).map(|i| names.member(i)).collect()
}

/// The next safe step towards `spec` from `observed`.
#[must_use]
pub fn next_step(spec: &KvClusterSpec, names: &ClusterNames, observed: &Observed) -> Step {
    if spec.paused {
        return Step::Paused;
    }
    if !ALLOWED_REPLICAS.contains(&spec.replicas) {
        return Step::Wait(WaitReason::InvalidReplicas {
            replicas: spec.replicas,
        });
    }
    if let Some(step) = crate::storage::replacement_step(&spec.storage, observed) {
        return step;
    }
    let Some(statefulset_replicas) = observed.statefulset_replicas else {
        return Step::Bootstrap {
            replicas: spec.replicas,
        };
    };
    let Some(membership) = &observed.membership else {
        return Step::Wait(if observed.bootstrapped {
            WaitReason::ClusterUnreachable
        } else {
            WaitReason::MembersStarting
        });
    };
    // Finish an interrupted joint change before anything else: Raft allows
    // one membership change at a time, and the target was chosen safely
    // when the change began.
    if let Some(target) = &membership.joint_target {
        return Step::ChangeVoters {
            voters: target.clone(),
            why: VoterChange::Finish,
        };
    }
    if let Some(foreign) = membership
        .members
        .iter()
        .find(|m| names.ordinal_of(&m.name).is_none())
    {
        return Step::Wait(WaitReason::ForeignMember { id: foreign.id });
    }
    let Some(leader) = membership.leader() else {
        return Step::Wait(WaitReason::NoLeader);
    };
    let desired = desired_members(names, spec.replicas);

    if let Some(step) = shrink(
        names,
        &desired,
        membership,
        leader,
        statefulset_replicas,
        spec.replicas,
    ) {
        return step;
    }
    if let Some(step) = grow(names, &desired, membership, statefulset_replicas) {
        return step;
    }
    match rollout(names, membership, leader, observed) {
        // Volumes change only when nothing else is in motion.
        Step::Converged => {
            crate::storage::change_step(&spec.storage, observed).unwrap_or(Step::Converged)
        }
        step => step,
    }
}

/// Scale down: leftover learners go, leadership moves off leaving voters,
/// one joint change drops them, then the StatefulSet shrinks.
fn shrink(
    names: &ClusterNames,
    desired: &BTreeSet<String>,
    membership: &Membership,
    leader: &ObservedMember,
    statefulset_replicas: i32,
    replicas: i32,
) -> Option<Step> {
    // Learners that are not wanted: left over from a shrink (a removed voter
    // may stay behind as a learner) or from a grow that was cancelled.
    if let Some(stray) = membership.learners().find(|m| !desired.contains(&m.name)) {
        return Some(Step::RemoveMember {
            id: stray.id,
            member: stray.name.clone(),
        });
    }
    let (staying, leaving): (Vec<&ObservedMember>, Vec<&ObservedMember>) =
        membership.voters().partition(|m| desired.contains(&m.name));
    if !leaving.is_empty() {
        if leaving.iter().any(|m| m.id == leader.id) {
            return Some(match best_successor(&staying, |_| true) {
                Some(to) => Step::TransferLeadership {
                    from: leader.id,
                    to: to.id,
                },
                None => Step::Wait(WaitReason::Unhealthy {
                    members: staying.iter().map(|m| m.name.clone()).collect(),
                }),
            });
        }
        let unhealthy: Vec<String> = staying
            .iter()
            .filter(|m| !m.ok())
            .map(|m| m.name.clone())
            .collect();
        if !unhealthy.is_empty() {
            return Some(Step::Wait(WaitReason::Unhealthy { members: unhealthy }));
        }
        if staying.len().is_multiple_of(2) {
            return Some(Step::Wait(WaitReason::EvenVoters {
                voters: staying.len(),
            }));
        }
        return Some(Step::ChangeVoters {
            voters: staying.iter().map(|m| m.id).collect(),
            why: VoterChange::Shrink,
        });
    }
    // Raft no longer has the leaving members: now their pods may go.
    let highest_member = membership
        .members
        .iter()
        .filter_map(|m| names.ordinal_of(&m.name))
        .max()
        .map_or(0, |o| i64::from(o) + 1);
    if statefulset_replicas > replicas && highest_member <= i64::from(replicas) {
        return Some(Step::ScaleStatefulSet { replicas });
    }
    None
}

/// Scale up: add each missing member as a learner, start their pods, wait
/// until every learner caught up, then promote them all in one joint change.
fn grow(
    names: &ClusterNames,
    desired: &BTreeSet<String>,
    membership: &Membership,
    statefulset_replicas: i32,
) -> Option<Step> {
    let mut missing: Vec<&String> = desired
        .iter()
        .filter(|d| membership.by_name(d).is_none())
        .collect();
    missing.sort_by_key(|d| names.ordinal_of(d));
    if let Some(member) = missing.first() {
        return Some(Step::AddLearner {
            member: (*member).clone(),
        });
    }
    let needed = membership
        .members
        .iter()
        .filter_map(|m| names.ordinal_of(&m.name))
        .max()
        .map_or(0, |o| {
            i32::try_from(o).unwrap_or(i32::MAX).saturating_add(1)
        });
    if statefulset_replicas < needed {
        return Some(Step::ScaleStatefulSet { replicas: needed });
    }
    let learners: Vec<&ObservedMember> = membership.learners().collect();
    if learners.is_empty() {
        return None;
    }
    if let Some(behind) = learners.iter().find(|l| !l.ok()) {
        return Some(Step::Wait(WaitReason::LearnerCatchingUp {
            member: behind.name.clone(),
        }));
    }
    let unhealthy: Vec<String> = membership
        .voters()
        .filter(|m| !m.healthy)
        .map(|m| m.name.clone())
        .collect();
    if !unhealthy.is_empty() {
        return Some(Step::Wait(WaitReason::Unhealthy { members: unhealthy }));
    }
    let voters: BTreeSet<u64> = membership.members.iter().map(|m| m.id).collect();
    if voters.len().is_multiple_of(2) {
        return Some(Step::Wait(WaitReason::EvenVoters {
            voters: voters.len(),
        }));
    }
    Some(Step::ChangeVoters {
        voters,
        why: VoterChange::Grow,
    })
}

/// Leader-aware rolling update: followers first, one at a time, each
/// healthy and caught up before the next; the leader hands over and goes
/// last.
fn rollout(
    names: &ClusterNames,
    membership: &Membership,
    leader: &ObservedMember,
    observed: &Observed,
) -> Step {
    let outdated = |m: &ObservedMember| observed.pod(&m.name).is_some_and(|p| !p.up_to_date);
    let down: Vec<&ObservedMember> = membership
        .members
        .iter()
        .filter(|m| !m.ok() || !observed.pod(&m.name).is_some_and(|p| p.ready))
        .collect();
    match down.as_slice() {
        [] => {}
        // A member that is already down and still runs the old template may
        // be replaced: that takes no second member down, and the new
        // template may be what heals it.
        [only] if outdated(only) => {
            return Step::ReplacePod {
                pod: only.name.clone(),
            };
        }
        _ => {
            return Step::Wait(WaitReason::Unhealthy {
                members: down.iter().map(|m| m.name.clone()).collect(),
            });
        }
    }
    let mut followers: Vec<&ObservedMember> = membership
        .members
        .iter()
        .filter(|m| m.id != leader.id && outdated(m))
        .collect();
    // Highest ordinal first, as the StatefulSet controller would.
    followers.sort_by_key(|m| std::cmp::Reverse(names.ordinal_of(&m.name)));
    if let Some(follower) = followers.first() {
        return Step::ReplacePod {
            pod: follower.name.clone(),
        };
    }
    if outdated(leader) {
        let voters: Vec<&ObservedMember> =
            membership.voters().filter(|m| m.id != leader.id).collect();
        return match best_successor(&voters, |m| !outdated(m)) {
            Some(to) => Step::TransferLeadership {
                from: leader.id,
                to: to.id,
            },
            // A single member: there is nobody to hand over to.
            None if membership.voters().count() == 1 => Step::ReplacePod {
                pod: leader.name.clone(),
            },
            None => Step::Wait(WaitReason::Unhealthy {
                members: voters.iter().map(|m| m.name.clone()).collect(),
            }),
        };
    }
    Step::Converged
}

/// The voter to hand leadership to: healthy, caught up, preferring those
/// `preferred` accepts, then the lowest name.
fn best_successor<'a>(
    candidates: &[&'a ObservedMember],
    preferred: impl Fn(&ObservedMember) -> bool,
) -> Option<&'a ObservedMember> {
    candidates
        .iter()
        .filter(|m| !m.is_learner && m.ok())
        .min_by_key(|m| (!preferred(m), m.name.len(), m.name.as_str()))
        .copied()
}

/// What a member starting for the first time must be told, or `None` when
/// the ConfigMap must be left as it is (members are starting and the
/// operator cannot see the cluster yet).
#[must_use]
pub fn initial_cluster(
    spec: &KvClusterSpec,
    names: &ClusterNames,
    observed: &Observed,
) -> Option<InitialCluster> {
    // Pods orphaned by a StatefulSet replacement belong to a cluster that
    // exists: never tell them to start a new one.
    if observed.statefulset_replicas.is_none() && observed.storage.orphaned_replicas.is_none() {
        let mut members: Vec<String> = desired_members(names, spec.replicas).into_iter().collect();
        members.sort_by_key(|m| names.ordinal_of(m));
        return Some(InitialCluster {
            state: ClusterState::New,
            members,
        });
    }
    let membership = observed.membership.as_ref()?;
    let mut members: Vec<String> = membership.members.iter().map(|m| m.name.clone()).collect();
    members.sort_by_key(|m| names.ordinal_of(m));
    Some(InitialCluster {
        state: ClusterState::Existing,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::ObservedPod;

    fn names() -> ClusterNames {
        ClusterNames {
            name: "kv".into(),
            namespace: "prod".into(),
            uid: "u".into(),
            tls: false,
        }
    }

    /// Member `kv-<ordinal>` with id `100 + ordinal`, healthy and caught up.
    fn voter(ordinal: u32) -> ObservedMember {
        ObservedMember {
            id: 100 + u64::from(ordinal),
            name: format!("kv-{ordinal}"),
            is_learner: false,
            is_leader: false,
            healthy: true,
            caught_up: true,
            revision: Some(10),
        }
    }

    fn learner(ordinal: u32) -> ObservedMember {
        ObservedMember {
            is_learner: true,
            ..voter(ordinal)
        }
    }

    fn leader(ordinal: u32) -> ObservedMember {
        ObservedMember {
            is_leader: true,
            ..voter(ordinal)
        }
    }

    fn ids(ordinals: &[u64]) -> BTreeSet<u64> {
        ordinals.iter().map(|o| 100 + o).collect()
    }

    /// A running cluster: the StatefulSet runs `sts` pods (ready, up to date).
    fn cluster(sts: i32, members: Vec<ObservedMember>) -> Observed {
        Observed {
            statefulset_replicas: Some(sts),
            bootstrapped: true,
            pods: (0..sts)
                .map(|i| ObservedPod {
                    name: format!("kv-{i}"),
                    ready: true,
                    up_to_date: true,
                })
                .collect(),
            membership: Some(Membership {
                members,
                joint_target: None,
                cluster_id: Some(7),
            }),
            backup_runs: Vec::new(),
            restore_runs: Vec::new(),
            storage: crate::observed::ObservedStorage::default(),
        }
    }

    fn plan(replicas: i32, observed: &Observed) -> Step {
        next_step(&KvClusterSpec::with_replicas(replicas), &names(), observed)
    }

    /// `cluster` whose StatefulSet's claim template asks for 1Gi and whose
    /// claims ask for `claims`.
    fn with_storage(mut observed: Observed, claims: &[&str]) -> Observed {
        observed.storage.template_size = Some("1Gi".into());
        observed.storage.claims = claims
            .iter()
            .enumerate()
            .map(|(i, size)| crate::observed::ObservedClaim {
                name: format!("data-kv-{i}"),
                requested: Some((*size).into()),
            })
            .collect();
        observed
    }

    fn grown(replicas: i32) -> KvClusterSpec {
        let mut spec = KvClusterSpec::with_replicas(replicas);
        spec.storage.size = k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".into());
        spec
    }

    #[test]
    fn a_larger_storage_size_on_a_converged_cluster_expands_the_claims_then_replaces_the_statefulset()
     {
        let members = vec![leader(0), voter(1), voter(2)];
        let observed = with_storage(cluster(3, members.clone()), &["1Gi", "1Gi", "1Gi"]);
        assert_eq!(
            next_step(&grown(3), &names(), &observed),
            Step::ExpandClaims {
                claims: vec!["data-kv-0".into(), "data-kv-1".into(), "data-kv-2".into()],
                size: "2Gi".into(),
            }
        );
        let patched = with_storage(cluster(3, members), &["2Gi", "2Gi", "2Gi"]);
        assert_eq!(
            next_step(&grown(3), &names(), &patched),
            Step::ReplaceStatefulSet { size: "2Gi".into() }
        );
    }

    #[test]
    fn a_storage_change_waits_for_a_scale_to_finish() {
        let observed = with_storage(
            cluster(3, vec![leader(0), voter(1), voter(2)]),
            &["1Gi", "1Gi", "1Gi"],
        );
        assert_eq!(
            next_step(&grown(5), &names(), &observed),
            Step::AddLearner {
                member: "kv-3".into()
            }
        );
    }

    #[test]
    fn a_bootstrapped_cluster_whose_statefulset_was_orphaned_is_recreated_not_bootstrapped() {
        let mut observed = cluster(3, vec![leader(0), voter(1), voter(2)]);
        observed.statefulset_replicas = None;
        observed.storage.orphaned_replicas = Some(3);
        assert_eq!(
            plan(3, &observed),
            Step::RecreateStatefulSet { replicas: 3 }
        );
        // Its ConfigMap keeps saying `existing`: the members are running.
        let initial = initial_cluster(&KvClusterSpec::with_replicas(3), &names(), &observed)
            .expect("membership known");
        assert_eq!(initial.state, ClusterState::Existing);
    }

    fn set_pod(observed: &mut Observed, name: &str, ready: bool, up_to_date: bool) {
        let pod = observed
            .pods
            .iter_mut()
            .find(|p| p.name == name)
            .expect("pod");
        pod.ready = ready;
        pod.up_to_date = up_to_date;
    }

    fn members_mut(observed: &mut Observed) -> &mut Vec<ObservedMember> {
        &mut observed.membership.as_mut().expect("membership").members
    }

    // --- bootstrap and waiting

    #[test]
    fn a_new_cluster_is_bootstrapped_with_all_founding_members() {
        assert_eq!(
            plan(3, &Observed::default()),
            Step::Bootstrap { replicas: 3 }
        );
    }

    #[test]
    fn founding_members_that_have_not_answered_yet_are_waited_for() {
        let observed = Observed {
            statefulset_replicas: Some(3),
            ..Observed::default()
        };
        assert_eq!(plan(3, &observed), Step::Wait(WaitReason::MembersStarting));
        let lost = Observed {
            bootstrapped: true,
            ..observed
        };
        assert_eq!(plan(3, &lost), Step::Wait(WaitReason::ClusterUnreachable));
    }

    #[test]
    fn paused_changes_nothing_even_when_the_spec_differs() {
        let mut spec = KvClusterSpec::with_replicas(5);
        spec.paused = true;
        let observed = cluster(3, vec![leader(0), voter(1), voter(2)]);
        assert_eq!(next_step(&spec, &names(), &observed), Step::Paused);
        assert_eq!(
            next_step(&spec, &names(), &Observed::default()),
            Step::Paused
        );
    }

    #[test]
    fn even_replicas_are_never_acted_on() {
        let observed = cluster(3, vec![leader(0), voter(1), voter(2)]);
        assert_eq!(
            plan(4, &observed),
            Step::Wait(WaitReason::InvalidReplicas { replicas: 4 })
        );
    }

    #[test]
    fn a_healthy_cluster_matching_the_spec_is_converged() {
        let observed = cluster(3, vec![leader(0), voter(1), voter(2)]);
        assert_eq!(plan(3, &observed), Step::Converged);
    }

    #[test]
    fn no_leader_means_no_change() {
        let observed = cluster(3, vec![voter(0), voter(1), voter(2)]);
        assert_eq!(plan(5, &observed), Step::Wait(WaitReason::NoLeader));
    }

    #[test]
    fn a_member_the_operator_did_not_create_blocks_changes() {
        let mut stranger = voter(9);
        stranger.name = "elsewhere-0".into();
        let observed = cluster(3, vec![leader(0), voter(1), voter(2), stranger]);
        assert_eq!(
            plan(3, &observed),
            Step::Wait(WaitReason::ForeignMember { id: 109 })
        );
    }

    // --- scale up 3 -> 5

    #[test]
    fn scale_up_adds_missing_members_as_learners_lowest_ordinal_first() {
        let observed = cluster(3, vec![leader(0), voter(1), voter(2)]);
        assert_eq!(
            plan(5, &observed),
            Step::AddLearner {
                member: "kv-3".into()
            }
        );
        let observed = cluster(3, vec![leader(0), voter(1), voter(2), learner(3)]);
        assert_eq!(
            plan(5, &observed),
            Step::AddLearner {
                member: "kv-4".into()
            }
        );
    }

    #[test]
    fn learners_get_their_pods_once_all_are_added() {
        let observed = cluster(
            3,
            vec![leader(0), voter(1), voter(2), learner(3), learner(4)],
        );
        assert_eq!(plan(5, &observed), Step::ScaleStatefulSet { replicas: 5 });
    }

    #[test]
    fn learners_are_promoted_together_only_when_all_caught_up() {
        let mut slow = learner(4);
        slow.caught_up = false;
        let observed = cluster(5, vec![leader(0), voter(1), voter(2), learner(3), slow]);
        assert_eq!(
            plan(5, &observed),
            Step::Wait(WaitReason::LearnerCatchingUp {
                member: "kv-4".into()
            })
        );
        let observed = cluster(
            5,
            vec![leader(0), voter(1), voter(2), learner(3), learner(4)],
        );
        assert_eq!(
            plan(5, &observed),
            Step::ChangeVoters {
                voters: ids(&[0, 1, 2, 3, 4]),
                why: VoterChange::Grow
            }
        );
    }

    #[test]
    fn one_to_three_goes_straight_to_three_voters() {
        let observed = cluster(3, vec![leader(0), learner(1), learner(2)]);
        assert_eq!(
            plan(3, &observed),
            Step::ChangeVoters {
                voters: ids(&[0, 1, 2]),
                why: VoterChange::Grow
            }
        );
    }

    // --- scale down 5 -> 3

    #[test]
    fn scale_down_removes_leaving_voters_in_one_joint_change() {
        let observed = cluster(5, vec![leader(0), voter(1), voter(2), voter(3), voter(4)]);
        assert_eq!(
            plan(3, &observed),
            Step::ChangeVoters {
                voters: ids(&[0, 1, 2]),
                why: VoterChange::Shrink
            }
        );
    }

    #[test]
    fn the_leader_hands_over_before_it_is_removed() {
        let observed = cluster(5, vec![voter(0), voter(1), voter(2), voter(3), leader(4)]);
        assert_eq!(
            plan(3, &observed),
            Step::TransferLeadership { from: 104, to: 100 }
        );
    }

    #[test]
    fn leadership_goes_to_a_healthy_staying_member() {
        let mut sick = voter(0);
        sick.healthy = false;
        let observed = cluster(5, vec![sick, voter(1), voter(2), voter(3), leader(4)]);
        assert_eq!(
            plan(3, &observed),
            Step::TransferLeadership { from: 104, to: 101 }
        );
    }

    #[test]
    fn scale_down_waits_while_a_staying_member_is_unhealthy() {
        let mut sick = voter(2);
        sick.healthy = false;
        let observed = cluster(5, vec![leader(0), voter(1), sick, voter(3), voter(4)]);
        assert_eq!(
            plan(3, &observed),
            Step::Wait(WaitReason::Unhealthy {
                members: vec!["kv-2".into()]
            })
        );
    }

    #[test]
    fn after_the_voter_change_leftover_learners_are_removed_then_pods_go() {
        // The joint change left the removed voters behind as learners.
        let observed = cluster(
            5,
            vec![leader(0), voter(1), voter(2), learner(3), learner(4)],
        );
        assert_eq!(
            plan(3, &observed),
            Step::RemoveMember {
                id: 103,
                member: "kv-3".into()
            }
        );
        // Raft no longer knows them: shrink the StatefulSet.
        let observed = cluster(5, vec![leader(0), voter(1), voter(2)]);
        assert_eq!(plan(3, &observed), Step::ScaleStatefulSet { replicas: 3 });
    }

    #[test]
    fn a_cancelled_scale_up_removes_the_learners_it_added() {
        let observed = cluster(3, vec![leader(0), voter(1), voter(2), learner(3)]);
        assert_eq!(
            plan(3, &observed),
            Step::RemoveMember {
                id: 103,
                member: "kv-3".into()
            }
        );
    }

    // --- interrupted joint change

    #[test]
    fn an_interrupted_joint_change_is_finished_first() {
        // The operator died after starting 5 -> 3; the cluster is in the joint
        // configuration. Whatever the spec says now, finish that change.
        let mut observed = cluster(5, vec![leader(0), voter(1), voter(2), voter(3), voter(4)]);
        observed.membership.as_mut().unwrap().joint_target = Some(ids(&[0, 1, 2]));
        for replicas in [3, 5] {
            assert_eq!(
                plan(replicas, &observed),
                Step::ChangeVoters {
                    voters: ids(&[0, 1, 2]),
                    why: VoterChange::Finish
                }
            );
        }
    }

    #[test]
    fn a_voter_change_that_never_landed_is_simply_made_again() {
        // The operator died before the change was committed: the cluster still
        // has the old voters, and the same plan comes out again.
        let observed = cluster(5, vec![leader(0), voter(1), voter(2), voter(3), voter(4)]);
        let first = plan(3, &observed);
        assert_eq!(plan(3, &observed.clone()), first);
        assert!(matches!(
            first,
            Step::ChangeVoters {
                why: VoterChange::Shrink,
                ..
            }
        ));
    }

    // --- rolling update

    fn outdated_cluster() -> Observed {
        let mut observed = cluster(3, vec![voter(0), leader(1), voter(2)]);
        for pod in &mut observed.pods {
            pod.up_to_date = false;
        }
        observed
    }

    #[test]
    fn rollout_replaces_followers_first_highest_ordinal_first() {
        let mut observed = outdated_cluster();
        assert_eq!(plan(3, &observed), Step::ReplacePod { pod: "kv-2".into() });
        set_pod(&mut observed, "kv-2", true, true);
        assert_eq!(plan(3, &observed), Step::ReplacePod { pod: "kv-0".into() });
    }

    #[test]
    fn rollout_moves_leadership_to_an_updated_member_before_replacing_the_leader() {
        let mut observed = outdated_cluster();
        set_pod(&mut observed, "kv-0", true, true);
        set_pod(&mut observed, "kv-2", true, true);
        assert_eq!(
            plan(3, &observed),
            Step::TransferLeadership { from: 101, to: 100 }
        );
    }

    #[test]
    fn rollout_waits_for_a_replaced_member_to_recover() {
        let mut observed = outdated_cluster();
        // kv-2 was replaced and is still starting.
        set_pod(&mut observed, "kv-2", false, true);
        assert_eq!(
            plan(3, &observed),
            Step::Wait(WaitReason::Unhealthy {
                members: vec!["kv-2".into()]
            })
        );
        // ... or its pod is ready but it has not caught up yet.
        set_pod(&mut observed, "kv-2", true, true);
        members_mut(&mut observed)[2].caught_up = false;
        assert!(matches!(
            plan(3, &observed),
            Step::Wait(WaitReason::Unhealthy { .. })
        ));
    }

    #[test]
    fn rollout_replaces_an_outdated_member_that_is_already_down() {
        let mut observed = outdated_cluster();
        members_mut(&mut observed)[0].healthy = false;
        set_pod(&mut observed, "kv-0", false, false);
        assert_eq!(plan(3, &observed), Step::ReplacePod { pod: "kv-0".into() });
    }

    #[test]
    fn rollout_never_takes_a_second_member_down() {
        let mut observed = outdated_cluster();
        members_mut(&mut observed)[0].healthy = false;
        members_mut(&mut observed)[2].healthy = false;
        assert_eq!(
            plan(3, &observed),
            Step::Wait(WaitReason::Unhealthy {
                members: vec!["kv-0".into(), "kv-2".into()]
            })
        );
    }

    #[test]
    fn a_single_member_is_replaced_in_place() {
        let mut observed = cluster(1, vec![leader(0)]);
        set_pod(&mut observed, "kv-0", true, false);
        assert_eq!(plan(1, &observed), Step::ReplacePod { pod: "kv-0".into() });
    }

    #[test]
    fn an_unhealthy_member_without_a_rollout_is_reported_not_converged() {
        let mut observed = cluster(3, vec![leader(0), voter(1), voter(2)]);
        members_mut(&mut observed)[1].healthy = false;
        assert_eq!(
            plan(3, &observed),
            Step::Wait(WaitReason::Unhealthy {
                members: vec!["kv-1".into()]
            })
        );
    }

    // --- the ConfigMap

    #[test]
    fn founding_members_are_told_new_and_later_members_existing() {
        let first = initial_cluster(
            &KvClusterSpec::with_replicas(3),
            &names(),
            &Observed::default(),
        );
        assert_eq!(
            first,
            Some(InitialCluster {
                state: ClusterState::New,
                members: vec!["kv-0".into(), "kv-1".into(), "kv-2".into()],
            })
        );
        let observed = cluster(3, vec![leader(0), voter(1), voter(2), learner(3)]);
        let later = initial_cluster(&KvClusterSpec::with_replicas(5), &names(), &observed);
        assert_eq!(
            later,
            Some(InitialCluster {
                state: ClusterState::Existing,
                members: vec!["kv-0".into(), "kv-1".into(), "kv-2".into(), "kv-3".into()],
            })
        );
    }

    #[test]
    fn the_configmap_is_left_alone_while_the_cluster_cannot_be_seen() {
        let observed = Observed {
            statefulset_replicas: Some(3),
            ..Observed::default()
        };
        assert_eq!(
            initial_cluster(&KvClusterSpec::with_replicas(3), &names(), &observed),
            None
        );
    }

    #[test]
    fn ten_members_sort_by_ordinal_not_by_text() {
        let members: Vec<ObservedMember> =
            (0..9).map(voter).chain([learner(10), learner(9)]).collect();
        let observed = cluster(9, members);
        let ic = initial_cluster(&KvClusterSpec::with_replicas(9), &names(), &observed).unwrap();
        assert_eq!(ic.members.last().map(String::as_str), Some("kv-10"));
    }
}

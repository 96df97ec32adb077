//! What the controller saw of one cluster in one reconcile: the input of the
//! planner and of the status computation. Plain data, no I/O.

use std::collections::BTreeSet;

/// One Raft member, from MemberList plus that member's own Status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedMember {
    pub id: u64,
    /// The member (and pod) name, derived from its peer URL: members that
    /// have not started yet have no name in MemberList.
    pub name: String,
    pub is_learner: bool,
    pub is_leader: bool,
    /// It answered Status and (for a voter) knows a leader.
    pub healthy: bool,
    /// Its applied index is close enough to the leader's (see
    /// [`is_caught_up`]).
    pub caught_up: bool,
    /// Its revision, when it answered.
    pub revision: Option<i64>,
}

impl ObservedMember {
    /// Healthy and caught up: safe to count on for a quorum.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.healthy && self.caught_up
    }
}

/// The membership as the cluster reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub members: Vec<ObservedMember>,
    /// The target voter set of a joint change that was started but not
    /// finished (the operator, or the leader, stopped half-way). `None` when
    /// the cluster is in a single, uniform configuration, or cannot say.
    pub joint_target: Option<BTreeSet<u64>>,
    /// Raft cluster id.
    pub cluster_id: Option<u64>,
}

impl Membership {
    #[must_use]
    pub fn leader(&self) -> Option<&ObservedMember> {
        self.members.iter().find(|m| m.is_leader)
    }

    pub fn voters(&self) -> impl Iterator<Item = &ObservedMember> {
        self.members.iter().filter(|m| !m.is_learner)
    }

    pub fn learners(&self) -> impl Iterator<Item = &ObservedMember> {
        self.members.iter().filter(|m| m.is_learner)
    }

    #[must_use]
    pub fn by_name(&self, name: &str) -> Option<&ObservedMember> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// One member pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedPod {
    pub name: String,
    pub ready: bool,
    /// Runs the StatefulSet's current template (its `controller-revision-hash`
    /// equals the StatefulSet's `updateRevision`).
    pub up_to_date: bool,
}

/// Everything one reconcile observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `spec.replicas` of the StatefulSet; `None` when it does not exist.
    pub statefulset_replicas: Option<i32>,
    /// The cluster answered at least once (status has a cluster id).
    pub bootstrapped: bool,
    /// `None` when no member answered MemberList.
    pub membership: Option<Membership>,
    pub pods: Vec<ObservedPod>,
    /// Finished runs of the backup CronJob (empty without `spec.backup`).
    pub backup_runs: Vec<crate::backup::observe::BackupRun>,
    /// What the member pods' restore init containers last reported (empty
    /// without `spec.bootstrap.restore`).
    pub restore_runs: Vec<crate::restore::observe::RestoreRun>,
    /// The volumes as they are, for a change of `spec.storage`.
    pub storage: ObservedStorage,
}

/// The StatefulSet's volume claim template and the member volumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedStorage {
    /// `resources.requests.storage` of the StatefulSet's claim template
    /// (`None` without a StatefulSet).
    pub template_size: Option<String>,
    /// `storageClassName` of the claim template.
    pub template_class: Option<String>,
    /// The StatefulSet is being deleted (orphaning its pods, to be
    /// re-created with a new claim template).
    pub statefulset_deleting: bool,
    /// Without a StatefulSet, member pods that still run (it was deleted
    /// with its pods orphaned): the highest ordinal + 1.
    pub orphaned_replicas: Option<i32>,
    /// The members' claims, listed only while the template's size differs
    /// from the spec's.
    pub claims: Vec<ObservedClaim>,
}

/// One member's PersistentVolumeClaim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedClaim {
    pub name: String,
    /// Its `spec.resources.requests.storage`.
    pub requested: Option<String>,
}

impl Observed {
    #[must_use]
    pub fn pod(&self, name: &str) -> Option<&ObservedPod> {
        self.pods.iter().find(|p| p.name == name)
    }
}

/// How far behind the leader's applied index a learner may be and still be
/// promoted: the leader then sends it the rest within a heartbeat or two.
pub const CATCH_UP_MAX_LAG: u64 = 1_000;

/// Whether a member whose applied index is `member_applied` has caught up
/// with a leader at `leader_applied`.
#[must_use]
pub fn is_caught_up(leader_applied: u64, member_applied: u64) -> bool {
    leader_applied.saturating_sub(member_applied) <= CATCH_UP_MAX_LAG
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_within_the_lag_bound_is_caught_up() {
        assert!(is_caught_up(5_000, 5_000));
        assert!(is_caught_up(5_000, 4_000));
        assert!(!is_caught_up(5_000, 3_999));
        // A member ahead of a stale leader reading is caught up, not an overflow.
        assert!(is_caught_up(10, 20));
    }
}

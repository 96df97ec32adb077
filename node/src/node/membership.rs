//! Membership decisions, as pure functions over a snapshot of the cluster:
//! whether an add, remove, update, promote or voter-set change may go
//! ahead, with etcd's error when it may not (`server/etcdserver/server.go`
//! mayAddMember, mayRemoveMember, mayPromoteMember; `api/membership`).
//!
//! The leader runs these checks right before it proposes the change, under
//! a lock that admits one membership change at a time.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::EtcdError;
use crate::raft::types::{MemberNode, NodeId};

/// A learner may be promoted once its log reaches this share of the
/// leader's (etcd's `readyPercentThreshold`).
pub const PROMOTE_READY_SHARE: f64 = 0.9;

/// What the leader knows of the cluster when a change is asked for.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Voters in the latest configuration (both halves of a joint one).
    pub voters: BTreeSet<NodeId>,
    /// Every member, voter or learner, with its peer URLs.
    pub nodes: BTreeMap<NodeId, MemberNode>,
    /// Members that have started and published their name (etcd's
    /// "started" members).
    pub started: BTreeSet<NodeId>,
    /// Per member, the highest log index known to be replicated to it.
    pub matched_index: BTreeMap<NodeId, u64>,
    /// The leader's last log index.
    pub leader_last_index: u64,
    /// Learners allowed at once (`--max-learners`).
    pub max_learners: usize,
}

impl ClusterView {
    pub fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .keys()
            .copied()
            .filter(|id| !self.voters.contains(id))
    }

    fn started_among<'a>(&self, ids: impl IntoIterator<Item = &'a NodeId>) -> usize {
        ids.into_iter()
            .filter(|id| self.started.contains(id))
            .count()
    }

    /// A learner is ready for promotion when its log is within 10 % of the
    /// leader's.
    pub fn is_caught_up(&self, id: NodeId) -> bool {
        let matched = self.matched_index.get(&id).copied().unwrap_or(0);
        // Precision loss only matters past 2^53 entries.
        (matched as f64) >= (self.leader_last_index as f64) * PROMOTE_READY_SHARE
    }
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Peer URLs must be absolute `http(s)://host:port` URLs, as etcd's
/// `types.NewURLs` requires.
pub fn check_peer_urls(urls: &[String]) -> Result<(), EtcdError> {
    if urls.is_empty() {
        return Err(EtcdError::MemberBadUrls);
    }
    for url in urls {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or(EtcdError::MemberBadUrls)?;
        let (host, port) = rest.rsplit_once(':').ok_or(EtcdError::MemberBadUrls)?;
        let path_free = !port.contains('/') && !host.contains('/');
        if host.is_empty() || !path_free || port.parse::<u16>().is_err() {
            return Err(EtcdError::MemberBadUrls);
        }
    }
    Ok(())
}

/// No two members may share a peer URL (`except` is the member being
/// updated, which may keep its own).
fn check_urls_free(
    view: &ClusterView,
    urls: &[String],
    except: Option<NodeId>,
) -> Result<(), EtcdError> {
    let taken = view
        .nodes
        .iter()
        .filter(|(id, _)| Some(**id) != except)
        .any(|(_, node)| node.peer_urls.iter().any(|u| urls.contains(u)));
    if taken {
        Err(EtcdError::PeerUrlExist)
    } else {
        Ok(())
    }
}

/// With one more voter, the started voters must still be a quorum, or the
/// cluster would stop until the new member starts (etcd's strict
/// reconfiguration check; going from one member to two is allowed).
fn check_quorum_with_new_voter(view: &ClusterView) -> Result<(), EtcdError> {
    let voters_after = view.voters.len() + 1;
    let started = view.started_among(&view.voters);
    if started == 1 && voters_after == 2 {
        return Ok(());
    }
    if started < quorum(voters_after) {
        return Err(EtcdError::NotEnoughStartedMembers);
    }
    Ok(())
}

/// May a member on `peer_urls` be added?
pub fn check_add(view: &ClusterView, peer_urls: &[String], learner: bool) -> Result<(), EtcdError> {
    check_peer_urls(peer_urls)?;
    check_urls_free(view, peer_urls, None)?;
    if learner {
        if view.learners().count() >= view.max_learners {
            return Err(EtcdError::TooManyLearners);
        }
        Ok(())
    } else {
        check_quorum_with_new_voter(view)
    }
}

/// May member `id` be removed? A learner, or a member that never started,
/// always may; otherwise the started voters left must be a quorum.
pub fn check_remove(view: &ClusterView, id: NodeId) -> Result<(), EtcdError> {
    if !view.nodes.contains_key(&id) {
        return Err(EtcdError::MemberNotFound);
    }
    if !view.voters.contains(&id) || !view.started.contains(&id) {
        return Ok(());
    }
    let remaining: Vec<NodeId> = view.voters.iter().copied().filter(|v| *v != id).collect();
    if remaining.is_empty() {
        // etcd refuses to remove the last voter the same way.
        return Err(EtcdError::NotEnoughStartedMembers);
    }
    if view.started_among(&remaining) < quorum(remaining.len()) {
        return Err(EtcdError::NotEnoughStartedMembers);
    }
    Ok(())
}

/// May member `id` move to `peer_urls`?
pub fn check_update(view: &ClusterView, id: NodeId, peer_urls: &[String]) -> Result<(), EtcdError> {
    if !view.nodes.contains_key(&id) {
        return Err(EtcdError::MemberNotFound);
    }
    check_peer_urls(peer_urls)?;
    check_urls_free(view, peer_urls, Some(id))
}

/// May learner `id` become a voter?
pub fn check_promote(view: &ClusterView, id: NodeId) -> Result<(), EtcdError> {
    if !view.nodes.contains_key(&id) {
        return Err(EtcdError::MemberNotFound);
    }
    if view.voters.contains(&id) {
        return Err(EtcdError::MemberNotLearner);
    }
    if !view.is_caught_up(id) {
        return Err(EtcdError::LearnerNotReady);
    }
    check_quorum_with_new_voter(view)
}

/// What a voter-set change amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterChange {
    /// The voter set already is the target (a retried request).
    Done,
    /// Propose the joint change to these voters.
    Replace(BTreeSet<NodeId>),
}

/// May the voter set become `target` in one joint change? Every target
/// member must exist, new voters must be caught-up learners, the size must
/// be odd, and the started members of the target must be a quorum of it.
pub fn check_change_voters(
    view: &ClusterView,
    target: &[NodeId],
    uniform: bool,
) -> Result<VoterChange, EtcdError> {
    let target: BTreeSet<NodeId> = target.iter().copied().collect();
    if target.is_empty() {
        return Err(EtcdError::InvalidVoterSet("the voter set is empty".into()));
    }
    if target.len().is_multiple_of(2) {
        return Err(EtcdError::InvalidVoterSet(format!(
            "the voter set must have an odd size, not {}",
            target.len()
        )));
    }
    if uniform && target == view.voters {
        return Ok(VoterChange::Done);
    }
    for id in &target {
        if !view.nodes.contains_key(id) {
            return Err(EtcdError::MemberNotFound);
        }
        if !view.voters.contains(id) && !view.is_caught_up(*id) {
            return Err(EtcdError::LearnerNotReady);
        }
    }
    if view.started_among(&target) < quorum(target.len()) {
        return Err(EtcdError::NotEnoughStartedMembers);
    }
    Ok(VoterChange::Replace(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> MemberNode {
        MemberNode {
            peer_urls: vec![format!("http://127.0.0.1:{port}")],
        }
    }

    /// `voters` and `learners` by id, all started and caught up.
    fn view(voters: &[NodeId], learners: &[NodeId]) -> ClusterView {
        let all: Vec<NodeId> = voters.iter().chain(learners).copied().collect();
        ClusterView {
            voters: voters.iter().copied().collect(),
            nodes: all.iter().map(|id| (*id, node(*id as u16))).collect(),
            started: all.iter().copied().collect(),
            matched_index: all.iter().map(|id| (*id, 100)).collect(),
            leader_last_index: 100,
            max_learners: 1,
        }
    }

    fn urls(port: u16) -> Vec<String> {
        node(port).peer_urls
    }

    #[test]
    fn peer_urls_must_be_absolute_with_a_port() {
        assert!(check_peer_urls(&urls(1)).is_ok());
        assert!(check_peer_urls(&["https://a.b:2380".into()]).is_ok());
        for bad in [
            "a:2380",
            "http://a",
            "http://:1",
            "http://a:x",
            "http://a:1/p",
        ] {
            assert_eq!(
                check_peer_urls(&[bad.to_string()]),
                Err(EtcdError::MemberBadUrls),
                "{bad}"
            );
        }
        assert_eq!(check_peer_urls(&[]), Err(EtcdError::MemberBadUrls));
    }

    #[test]
    fn add_refuses_a_taken_url_and_a_second_learner() {
        let v = view(&[1, 2, 3], &[]);
        assert_eq!(check_add(&v, &urls(2), true), Err(EtcdError::PeerUrlExist));
        assert!(check_add(&v, &urls(9), true).is_ok());
        let v = view(&[1, 2, 3], &[4]);
        assert_eq!(
            check_add(&v, &urls(9), true),
            Err(EtcdError::TooManyLearners)
        );
        let v = ClusterView {
            max_learners: 2,
            ..v
        };
        assert!(check_add(&v, &urls(9), true).is_ok());
    }

    #[test]
    fn a_voter_is_added_only_while_started_voters_keep_quorum() {
        // 3 voters, 2 started: with a 4th, quorum is 3.
        let mut v = view(&[1, 2, 3], &[]);
        v.started.remove(&3);
        assert_eq!(
            check_add(&v, &urls(9), false),
            Err(EtcdError::NotEnoughStartedMembers)
        );
        v.started.insert(3);
        assert!(check_add(&v, &urls(9), false).is_ok());
        // One member may always grow to two.
        assert!(check_add(&view(&[1], &[]), &urls(9), false).is_ok());
    }

    #[test]
    fn learners_and_unstarted_members_may_always_be_removed() {
        let mut v = view(&[1, 2, 3], &[4]);
        v.started = [1, 4].into();
        assert!(check_remove(&v, 4).is_ok(), "a learner");
        assert!(check_remove(&v, 2).is_ok(), "an unstarted voter");
        assert_eq!(
            check_remove(&v, 1),
            Err(EtcdError::NotEnoughStartedMembers),
            "only one started voter would be left of two"
        );
        assert_eq!(check_remove(&v, 7), Err(EtcdError::MemberNotFound));
        assert!(check_remove(&view(&[1, 2, 3], &[]), 1).is_ok());
        assert_eq!(
            check_remove(&view(&[1], &[]), 1),
            Err(EtcdError::NotEnoughStartedMembers)
        );
    }

    #[test]
    fn promote_needs_a_caught_up_learner() {
        let mut v = view(&[1, 2, 3], &[4]);
        assert_eq!(check_promote(&v, 1), Err(EtcdError::MemberNotLearner));
        assert_eq!(check_promote(&v, 8), Err(EtcdError::MemberNotFound));
        v.matched_index.insert(4, 89);
        assert_eq!(check_promote(&v, 4), Err(EtcdError::LearnerNotReady));
        v.matched_index.insert(4, 90);
        assert!(check_promote(&v, 4).is_ok());
    }

    #[test]
    fn update_may_keep_its_own_urls_but_not_take_another_members() {
        let v = view(&[1, 2, 3], &[]);
        assert!(check_update(&v, 1, &urls(1)).is_ok());
        assert!(check_update(&v, 1, &urls(7)).is_ok());
        assert_eq!(check_update(&v, 1, &urls(2)), Err(EtcdError::PeerUrlExist));
        assert_eq!(
            check_update(&v, 9, &urls(7)),
            Err(EtcdError::MemberNotFound)
        );
    }

    #[test]
    fn voter_sets_change_between_odd_sizes_only() {
        let v = view(&[1, 2, 3], &[4, 5]);
        assert_eq!(
            check_change_voters(&v, &[1, 2, 3, 4, 5], true),
            Ok(VoterChange::Replace([1, 2, 3, 4, 5].into()))
        );
        assert!(matches!(
            check_change_voters(&v, &[1, 2, 3, 4], true),
            Err(EtcdError::InvalidVoterSet(_))
        ));
        assert!(matches!(
            check_change_voters(&v, &[], true),
            Err(EtcdError::InvalidVoterSet(_))
        ));
        assert_eq!(
            check_change_voters(&v, &[1, 2, 9], true),
            Err(EtcdError::MemberNotFound)
        );
        // Duplicates collapse: {1, 2, 3} is the current set.
        assert_eq!(
            check_change_voters(&v, &[3, 2, 1, 1], true),
            Ok(VoterChange::Done)
        );
    }

    #[test]
    fn an_interrupted_joint_change_is_completed_by_sending_it_again() {
        // In the joint phase the voters are both halves: {1..5} while the
        // target {1, 2, 3} is not yet the uniform config.
        let v = view(&[1, 2, 3, 4, 5], &[]);
        assert_eq!(
            check_change_voters(&v, &[1, 2, 3], false),
            Ok(VoterChange::Replace([1, 2, 3].into()))
        );
        assert_eq!(
            check_change_voters(&v, &[1, 2, 3, 4, 5], true),
            Ok(VoterChange::Done)
        );
    }

    #[test]
    fn new_voters_must_be_caught_up_and_the_target_must_have_a_started_quorum() {
        let mut v = view(&[1, 2, 3], &[4, 5]);
        v.matched_index.insert(5, 10);
        assert_eq!(
            check_change_voters(&v, &[1, 2, 3, 4, 5], true),
            Err(EtcdError::LearnerNotReady)
        );
        let mut v = view(&[1, 2, 3], &[4, 5]);
        v.started = [1, 2].into();
        assert_eq!(
            check_change_voters(&v, &[1, 2, 3, 4, 5], true),
            Err(EtcdError::NotEnoughStartedMembers)
        );
    }
}

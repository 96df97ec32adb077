//! When a member starts an election: Raft's PreVote and CheckQuorum, which
//! etcd runs by default and openraft 0.9 lacks.
//!
//! openraft's own election timer is off (`enable_elect: false`). Instead a
//! voter that has not heard from a leader for a randomized election timeout
//! first asks the voters whether they would vote for it (PreVote). A voter
//! says yes only if it has not heard from a leader for an election timeout
//! itself and the candidate's log is at least as up to date as its own; a
//! leader says yes only if it has lost touch with a quorum (CheckQuorum).
//! With a majority of yes, the member starts a real election.
//!
//! So a follower that was cut off or paused, or whose timer ran late on a
//! busy machine, never bumps the term and never unseats a leader the rest of
//! the cluster still follows. Leadership transfer (see `transfer`) starts its
//! election directly.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use rand::Rng;
use tokio::sync::watch;

use super::member::Member;
use crate::proto::witanpb::{PreVoteRequest, PreVoteResponse};
use crate::raft::types::NodeId;

/// A log position as elections compare them: term first, then index.
pub type LogPosition = (u64, u64);

/// What a member knows when asked for a pre-vote.
#[derive(Debug, Clone, Copy)]
pub struct PreVoteView {
    pub is_leader: bool,
    /// As a leader: since a quorum last acknowledged it.
    pub since_quorum_ack: Option<Duration>,
    /// As a follower: since it last heard from a leader (or voted).
    pub since_leader_contact: Option<Duration>,
    pub last_log: LogPosition,
}

/// Would this member vote for a candidate whose log ends at
/// `candidate_log`, if it campaigned now?
pub fn grant_pre_vote(
    view: &PreVoteView,
    candidate_log: LogPosition,
    election_timeout: Duration,
) -> bool {
    let leader_alive = if view.is_leader {
        // CheckQuorum: a leader a quorum still answers keeps its place.
        view.since_quorum_ack.is_some_and(|d| d < election_timeout)
    } else {
        view.since_leader_contact
            .is_some_and(|d| d < election_timeout)
    };
    !leader_alive && candidate_log >= view.last_log
}

/// Whether `granted` yes-votes (the candidate's own included) out of
/// `voters` are a majority.
pub fn is_majority(granted: usize, voters: usize) -> bool {
    voters > 0 && granted > voters / 2
}

impl Member {
    fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.config.election_timeout_ms)
    }

    /// Where this member's log ends.
    fn last_log_position(&self) -> LogPosition {
        match self.log.last_log_id() {
            Some(id) => (id.leader_id.term, id.index),
            None => (0, 0),
        }
    }

    /// Since this member last heard from a leader (or changed its vote).
    async fn since_leader_contact(&self) -> Option<Duration> {
        let touched = self
            .raft
            .with_raft_state(|state| state.vote_last_modified())
            .await
            .ok()
            .flatten()?;
        Some(tokio::time::Instant::now().saturating_duration_since(touched))
    }

    /// A follower that has not heard from a leader for `quiet` (a removed
    /// follower keeps its last leader in mind, since PreVote never lets it
    /// campaign, so "no leader known" would not tell).
    pub(crate) async fn is_quiet_follower(&self, quiet: Duration) -> bool {
        if self.raft.metrics().borrow().state == ServerState::Leader {
            return false;
        }
        self.since_leader_contact().await.is_none_or(|d| d >= quiet)
    }

    /// Answers a PreVote request.
    pub async fn answer_pre_vote(&self, req: &PreVoteRequest) -> PreVoteResponse {
        let metrics = self.raft.metrics().borrow().clone();
        let is_leader = metrics.state == ServerState::Leader;
        let view = PreVoteView {
            is_leader,
            since_quorum_ack: metrics.millis_since_quorum_ack.map(Duration::from_millis),
            since_leader_contact: if is_leader {
                None
            } else {
                self.since_leader_contact().await
            },
            last_log: self.last_log_position(),
        };
        let candidate_log = (req.last_log_term, req.last_log_index);
        let granted = grant_pre_vote(&view, candidate_log, self.election_timeout());
        tracing::debug!(candidate = %format!("{:x}", req.candidate_id), granted, ?view, "pre-vote");
        PreVoteResponse { granted }
    }

    /// Asks every other voter for a pre-vote; true when a majority of the
    /// voters (this one included) would vote for this member.
    async fn pre_vote_wins(&self, voters: &[(NodeId, crate::raft::types::MemberNode)]) -> bool {
        let (term, index) = self.last_log_position();
        let request = PreVoteRequest {
            candidate_id: self.id,
            last_log_term: term,
            last_log_index: index,
        };
        let asks = voters
            .iter()
            .filter(|(id, _)| *id != self.id)
            .map(|(_, node)| async move {
                let mut client = self.committer.channels.client(node).ok()?;
                let mut req = tonic::Request::new(request);
                req.set_timeout(self.election_timeout() / 2);
                client
                    .pre_vote(req)
                    .await
                    .ok()
                    .map(|r| r.into_inner().granted)
            });
        let answers = futures::future::join_all(asks).await;
        let granted = 1 + answers.into_iter().filter(|a| *a == Some(true)).count();
        is_majority(granted, voters.len())
    }
}

/// Starts elections for this member when PreVote says it may win one.
pub async fn drive_elections(member: Arc<Member>, mut stop: watch::Receiver<bool>) {
    let timeout = member.election_timeout();
    // Check often enough that an election starts close to its timeout.
    let tick = (timeout / 10).max(Duration::from_millis(10));
    let mut this_round = randomized(timeout);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => return,
        }
        if member.elections_held() {
            continue;
        }
        let (is_voter, leading, voters) = {
            let metrics = member.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let voters: Vec<_> = membership
                .voter_ids()
                .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
                .collect();
            (
                voters.iter().any(|(id, _)| *id == member.id),
                metrics.state == ServerState::Leader,
                voters,
            )
        };
        if !is_voter || leading {
            continue;
        }
        // A member that never heard from anyone counts from its start.
        let quiet = member.since_leader_contact().await.unwrap_or(Duration::MAX);
        if quiet < this_round {
            continue;
        }
        if member.pre_vote_wins(&voters).await {
            let term = member.raft.metrics().borrow().current_term;
            tracing::info!(term, "pre-vote won; starting an election");
            if let Err(e) = member.raft.trigger().elect().await {
                tracing::warn!(error = %e, "starting an election");
                return;
            }
        }
        // Whatever happened, the next attempt waits a fresh random timeout
        // (our own vote resets the contact clock when we campaign).
        this_round = randomized(timeout);
    }
}

/// A timeout in [t, 2t), so that members rarely campaign at once.
fn randomized(timeout: Duration) -> Duration {
    let extra_ms = rand::rng().random_range(0..timeout.as_millis().max(1) as u64);
    timeout + Duration::from_millis(extra_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(1000);

    fn follower(heard_ms: Option<u64>, last_log: LogPosition) -> PreVoteView {
        PreVoteView {
            is_leader: false,
            since_quorum_ack: None,
            since_leader_contact: heard_ms.map(Duration::from_millis),
            last_log,
        }
    }

    #[test]
    fn a_follower_that_still_hears_its_leader_refuses() {
        assert!(!grant_pre_vote(&follower(Some(200), (3, 10)), (3, 10), T));
        assert!(grant_pre_vote(&follower(Some(1500), (3, 10)), (3, 10), T));
        assert!(grant_pre_vote(&follower(None, (0, 0)), (0, 0), T));
    }

    #[test]
    fn a_candidate_with_a_shorter_or_older_log_is_refused() {
        let view = follower(Some(5000), (3, 10));
        assert!(!grant_pre_vote(&view, (3, 9), T));
        assert!(!grant_pre_vote(&view, (2, 50), T), "an older term loses");
        assert!(grant_pre_vote(&view, (4, 1), T), "a newer term wins");
        assert!(grant_pre_vote(&view, (3, 11), T));
    }

    #[test]
    fn a_leader_in_touch_with_a_quorum_refuses() {
        let leader = |ack_ms: Option<u64>| PreVoteView {
            is_leader: true,
            since_quorum_ack: ack_ms.map(Duration::from_millis),
            since_leader_contact: None,
            last_log: (3, 10),
        };
        assert!(!grant_pre_vote(&leader(Some(100)), (3, 10), T));
        assert!(grant_pre_vote(&leader(Some(2000)), (3, 10), T));
        assert!(grant_pre_vote(&leader(None), (3, 10), T));
    }

    #[test]
    fn majorities() {
        assert!(is_majority(1, 1));
        assert!(!is_majority(1, 2));
        assert!(is_majority(2, 3));
        assert!(!is_majority(2, 4));
        assert!(is_majority(3, 5));
        assert!(!is_majority(0, 0));
    }

    #[test]
    fn timeouts_are_spread_over_one_to_two_election_timeouts() {
        for _ in 0..100 {
            let t = randomized(T);
            assert!(t >= T && t < 2 * T, "{t:?}");
        }
    }
}

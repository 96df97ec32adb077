//! Leadership transfer (Maintenance.MoveLeader, and a leader's SIGTERM).
//!
//! openraft 0.9 has no TimeoutNow message, and its followers refuse votes
//! while their leader lease (one maximal election timeout since the last
//! heartbeat) runs. So the leader hands over in steps:
//!
//! 1. it holds new writes (refused as "not leader", which every member
//!    retries on the next leader) and waits until the transferee has every
//!    entry;
//! 2. it asks the other voters to hold their elections (see `election`),
//!    so that only the transferee campaigns;
//! 3. it stops its heartbeats and asks the transferee to campaign. Once the
//!    followers' leases run out they vote for it (its log is complete), and
//!    the old leader follows on the first message of the higher term.
//!
//! Every step is bounded; on failure heartbeats and writes resume and the
//! client gets etcd's "leader transfer took too long".

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::committer::{NoChange, raft_changed};
use super::member::Member;
use crate::error::EtcdError;
use crate::proto::witanpb::{CampaignRequest, HoldElectionsRequest};
use crate::raft::types::{MemberNode, NodeId};

/// How long an asked member holds its elections, in maximal election
/// timeouts: enough for the followers' leases to run out and one campaign.
const HOLD_ELECTION_TIMEOUTS: u32 = 4;

/// Until when this member starts no election of its own accord.
#[derive(Default)]
pub struct ElectionHold {
    until: Mutex<Option<Instant>>,
}

impl Member {
    fn election_timeout_max(&self) -> Duration {
        // Raft is configured with [election_timeout, 2 * election_timeout].
        Duration::from_millis(self.config.election_timeout_ms * 2)
    }

    /// Moves leadership to voter `target`. Only the leader may; moving to
    /// itself is a no-op.
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), EtcdError> {
        // No membership change may run meanwhile: the voter set is fixed.
        let _one_at_a_time = self.reconfig_lock.lock().await;
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Err(EtcdError::NotLeader);
        }
        if target == self.id {
            return Ok(());
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&target) {
            return Err(EtcdError::BadLeaderTransferee);
        }
        let deadline = tokio::time::Instant::now() + self.committer.request_timeout;
        tracing::info!(target = %format!("{target:x}"), term = metrics.current_term, "transferring leadership");
        self.committer.writes_held.store(true, Ordering::Release);
        let others: Vec<MemberNode> = voters
            .iter()
            .filter(|id| **id != target && **id != self.id)
            .filter_map(|id| membership.get_node(id).cloned())
            .collect();
        let result = self
            .hand_over(target, membership.get_node(&target), &others, deadline)
            .await;
        self.raft.runtime_config().heartbeat(true);
        self.committer.writes_held.store(false, Ordering::Release);
        if result.is_err() {
            // Let the others elect again at once rather than at the end of
            // their hold.
            self.hold_elections_on(&others, Duration::ZERO).await;
        }
        match &result {
            Ok(()) => tracing::info!(target = %format!("{target:x}"), "leadership transferred"),
            Err(e) => {
                tracing::warn!(target = %format!("{target:x}"), error = %e, "leadership transfer failed")
            }
        }
        result
    }

    async fn hand_over(
        &self,
        target: NodeId,
        target_node: Option<&MemberNode>,
        others: &[MemberNode],
        deadline: tokio::time::Instant,
    ) -> Result<(), EtcdError> {
        let target_node = target_node.ok_or(EtcdError::BadLeaderTransferee)?;
        let mut metrics = self.raft.metrics();
        // 1. The transferee has every entry.
        loop {
            let caught_up = {
                let m = metrics.borrow_and_update();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&target).cloned().flatten())
                    .map(|l| l.index);
                matched.is_some() && matched == m.last_log_index
            };
            if caught_up {
                break;
            }
            match raft_changed(&mut metrics, deadline).await {
                Ok(()) => {}
                Err(NoChange::TimedOut) => return Err(EtcdError::LeaderTransferTimeout),
                Err(NoChange::Stopped) => return Err(EtcdError::Stopped),
            }
        }
        // 2. Only the transferee campaigns.
        let hold = self.election_timeout_max() * HOLD_ELECTION_TIMEOUTS;
        self.hold_elections_on(others, hold).await;
        // 3. No more heartbeats; the transferee campaigns until it wins.
        self.raft.runtime_config().heartbeat(false);
        let mut client = self
            .committer
            .channels
            .client(target_node)
            .map_err(EtcdError::Internal)?;
        client
            .campaign(CampaignRequest {
                duration_ms: u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
            })
            .await
            .map_err(|status| {
                EtcdError::Internal(format!("asking the transferee to campaign: {status}"))
            })?;
        loop {
            if metrics.borrow_and_update().current_leader == Some(target) {
                return Ok(());
            }
            match raft_changed(&mut metrics, deadline).await {
                Ok(()) => {}
                Err(NoChange::TimedOut) => return Err(EtcdError::LeaderTransferTimeout),
                Err(NoChange::Stopped) => return Err(EtcdError::Stopped),
            }
        }
    }

    /// Asks `members` to hold elections for `duration` (zero lifts a
    /// hold). Best effort: a member we cannot reach cannot hear a
    /// campaign from us either.
    async fn hold_elections_on(&self, members: &[MemberNode], duration: Duration) {
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        for node in members {
            let Ok(mut client) = self.committer.channels.client(node) else {
                continue;
            };
            let mut request = tonic::Request::new(HoldElectionsRequest { duration_ms });
            request.set_timeout(self.election_timeout_max());
            if let Err(status) = client.hold_elections(request).await {
                tracing::debug!(member = %node, error = %status, "holding elections");
            }
        }
    }

    /// Starts no election of its own accord for `duration` (zero lifts the
    /// hold). The latest request wins.
    pub fn hold_elections(&self, duration: Duration) {
        let until = (!duration.is_zero()).then(|| Instant::now() + duration);
        *self
            .election_hold
            .until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = until;
    }

    /// Whether a hold asked for by a transferring leader still runs.
    pub fn elections_held(&self) -> bool {
        self.election_hold
            .until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Campaigns until this member leads or `duration` passes. Followers
    /// refuse while their leader lease runs, so it tries again every half
    /// election timeout.
    pub fn campaign(self: &std::sync::Arc<Self>, duration: Duration) {
        let member = self.clone();
        let retry = Duration::from_millis(member.config.election_timeout_ms / 2)
            .max(Duration::from_millis(10));
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + duration;
            let mut metrics = member.raft.metrics();
            while tokio::time::Instant::now() < deadline {
                if metrics.borrow_and_update().state == ServerState::Leader {
                    return;
                }
                if let Err(e) = member.raft.trigger().elect().await {
                    tracing::warn!(error = %e, "campaigning for leadership");
                    return;
                }
                let _ = tokio::time::timeout(
                    retry,
                    metrics.wait_for(|m| m.state == ServerState::Leader),
                )
                .await;
            }
        });
    }

    /// Before a leader exits, hands leadership to the voter with the most
    /// of the log, so the cluster does not wait out an election timeout.
    pub async fn step_down_before_exit(&self) {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return;
        }
        let membership = metrics.membership_config.membership();
        let best = membership
            .voter_ids()
            .filter(|id| *id != self.id)
            .max_by_key(|id| {
                metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map_or(0, |l| l.index)
            });
        let Some(target) = best else {
            return;
        };
        if let Err(e) = self.transfer_leadership(target).await {
            tracing::warn!(error = %e, "could not hand leadership over before exiting");
        }
    }
}

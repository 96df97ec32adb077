//! Background work of a member: the leader's lease expiry sweep, restarting
//! lease clocks on promotion, the leader's automatic compaction, and
//! publishing this member's attributes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::watch;

use super::auto_compaction::{self, AutoCompactor};
use super::committer::Leadership;
use super::member::Member;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::{CompactionRequest, LeaseRevokeRequest};
use crate::proto::witanpb::internal_request::Request;
use crate::proto::witanpb::{InternalRequest, MemberAttributes};
use crate::storage::{CHECKPOINT_INTERVAL, Store};

/// How often the leader looks for expired leases.
const LEASE_SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Revokes proposed per sweep, at most (etcd revokes at most 1000/s).
const MAX_REVOKES_PER_SWEEP: usize = 250;

/// Restarts every lease's TTL when this member becomes leader, since the
/// previous leader's keep-alives were not replicated.
pub async fn promote_leases_on_leadership(member: Arc<Member>, mut stop: watch::Receiver<bool>) {
    // The server metrics change with the vote, role and membership only;
    // the full metrics change on every append and would wake this task
    // for every write.
    let mut metrics = member.raft.server_metrics();
    let mut led_term = None;
    loop {
        {
            let m = metrics.borrow_and_update();
            let term = m.vote.leader_id().get_term();
            let leading = m.state == ServerState::Leader && m.current_leader == Some(member.id);
            if leading && led_term != Some(term) {
                led_term = Some(term);
                member.lessor.promote(Instant::now());
                tracing::info!(member = %format!("{:x}", member.id), term, "became leader; lease clocks restarted");
            } else if !leading {
                led_term = None;
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// On the leader, proposes a revoke for each expired lease.
pub async fn sweep_expired_leases(member: Arc<Member>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LEASE_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !matches!(member.committer.leadership(), Leadership::Me) {
            continue;
        }
        for id in member
            .lessor
            .take_expired(Instant::now(), MAX_REVOKES_PER_SWEEP)
        {
            let member = member.clone();
            tokio::spawn(async move {
                let request = InternalRequest {
                    request: Some(Request::LeaseRevoke(LeaseRevokeRequest { id })),
                    // Expiry is the members' doing: no user's permission applies.
                    internal: true,
                    ..Default::default()
                };
                match member.propose(request).await {
                    Ok(_) | Err(EtcdError::LeaseNotFound) => {
                        tracing::debug!(lease = id, "expired lease revoked");
                    }
                    Err(err) => {
                        tracing::warn!(lease = id, error = %err, "revoking expired lease failed; will retry");
                        member.lessor.revoke_failed(id);
                    }
                }
            });
        }
    }
}

/// etcd's automatic compaction: every member samples its revision, the
/// leader proposes the compactions `auto_compaction` decides on.
pub async fn auto_compact(member: Arc<Member>, mut stop: watch::Receiver<bool>) {
    let policy = member.config.auto_compaction;
    let Some(every) = auto_compaction::tick_interval(policy) else {
        return;
    };
    let mut compactor = AutoCompactor::new(policy);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let compacted = match member.read(|view| Ok(view.compact_revision)) {
            Ok(compacted) => compacted,
            Err(err) => {
                tracing::warn!(error = %err, "auto compaction: reading the compact revision");
                continue;
            }
        };
        let current = member.hub.current_revision();
        let Some(revision) = compactor.observe(Instant::now(), current, compacted) else {
            continue;
        };
        if !matches!(member.committer.leadership(), Leadership::Me) {
            continue;
        }
        let request = InternalRequest {
            request: Some(Request::Compaction(CompactionRequest {
                revision,
                physical: false,
            })),
            ..Default::default()
        };
        tokio::select! {
            result = member.propose(request) => match result {
                Ok(_) => tracing::info!(revision, ?policy, "auto compaction done"),
                // Someone (a client, a previous leader) got there first.
                Err(EtcdError::Compacted) => {}
                Err(err) => tracing::warn!(revision, error = %err, "auto compaction failed; will retry"),
            },
            _ = stop.changed() => return,
        }
    }
}

/// Makes the state machine durable every [`CHECKPOINT_INTERVAL`] when it
/// changed, so a restart replays at most that much log, and the log can be
/// purged up to a snapshot. The final checkpoint comes at shutdown.
pub async fn checkpoint(store: Store, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint()).await {
            Ok(Ok(_)) => {}
            // The next tick tries again; the log keeps everything since the
            // last good one.
            Ok(Err(e)) => tracing::error!(error = %e, "checkpointing the state machine failed"),
            Err(e) => tracing::error!(error = %e, "checkpointing the state machine failed"),
        }
    }
}

/// Publishes this member's name and client URLs through Raft (etcd's
/// publish step), retrying until it is part of the cluster and it sticks.
pub async fn publish_attributes(member: Arc<Member>, mut stop: watch::Receiver<bool>) {
    let wanted = MemberAttributes {
        member_id: member.id,
        name: member.config.name.clone(),
        client_urls: member.config.advertise_client_urls.clone(),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match member.member_attributes(member.id) {
            Ok(Some(current)) if current == wanted => return,
            _ => {}
        }
        let request = InternalRequest {
            request: Some(Request::Publish(wanted.clone())),
            ..Default::default()
        };
        match member.propose(request).await {
            Ok(_) => {
                tracing::info!(member = %format!("{:x}", member.id), name = %wanted.name, "published member attributes");
                return;
            }
            Err(err) => tracing::debug!(error = %err, "publishing member attributes; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Flips `member.removed` once this member learns the cluster removed it:
/// from its own applied membership, or, when it has been without a leader
/// for a while, from a peer that knows a newer membership without it (a
/// removed follower may never receive the entry that removed it, since the
/// leader stops replicating to it).
pub async fn notice_removal(member: Arc<Member>, mut stop: watch::Receiver<bool>) {
    let ask_after = Duration::from_millis(member.config.election_timeout_ms * 3);
    let metrics = member.raft.metrics();
    // Log index of the newest membership that still listed this member.
    let mut last_listed_at: Option<u64> = None;
    let mut peers: Vec<String> = Vec::new();
    // When peers were last asked, so a quiet member asks once per pause.
    let mut last_asked: Option<Instant> = None;
    loop {
        let removed_locally = {
            let m = metrics.borrow();
            let config = &m.membership_config;
            let index = config.log_id().map_or(0, |l| l.index);
            let applied = m.last_applied.map_or(0, |l| l.index);
            let membership = config.membership();
            if membership.get_node(&member.id).is_some() {
                last_listed_at = Some(index);
                peers = membership
                    .nodes()
                    .filter(|(id, _)| **id != member.id)
                    .filter_map(|(_, node)| node.peer_urls.first().cloned())
                    .collect();
                false
            } else {
                // Applied, hence committed: the cluster did remove us.
                last_listed_at.is_some_and(|listed| index > listed && applied >= index)
            }
        };
        let removed = match (removed_locally, last_listed_at) {
            (true, _) => true,
            // At most one look per pause: it goes through Raft's core.
            (false, Some(listed)) if last_asked.is_none_or(|t| t.elapsed() >= ask_after) => {
                last_asked = Some(Instant::now());
                member.is_quiet_follower(ask_after).await
                    && removed_according_to_peers(&member, &peers, listed).await
            }
            _ => false,
        };
        if removed {
            tracing::warn!(member = %format!("{:x}", member.id), "this member was removed from the cluster; shutting down");
            member.removed.send_replace(true);
            return;
        }
        // A poll, not a wake-up per applied entry: removal is rare, and
        // noticing it within a fraction of the pause is soon enough.
        tokio::select! {
            _ = tokio::time::sleep(ask_after / 3) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Whether a peer that has a leader knows a membership newer than
/// `listed_at` that no longer lists this member.
async fn removed_according_to_peers(member: &Member, peers: &[String], listed_at: u64) -> bool {
    for url in peers {
        match super::join::ask(&member.committer.channels, url).await {
            Ok(answer)
                if answer.has_leader
                    && answer.membership_index > listed_at
                    && !answer.members.iter().any(|m| m.id == member.id) =>
            {
                return true;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "asking a peer for the membership"),
        }
    }
    false
}

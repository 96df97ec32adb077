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

/// How often the leader looks for expired leases.
const LEASE_SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Revokes proposed per sweep, at most (etcd revokes at most 1000/s).
const MAX_REVOKES_PER_SWEEP: usize = 250;

/// Restarts every lease's TTL when this member becomes leader, since the
/// previous leader's keep-alives were not replicated.
pub async fn promote_leases_on_leadership(member: Arc<Member>, mut stop: watch::Receiver<bool>) {
    let mut metrics = member.raft.metrics();
    let mut led_term = None;
    loop {
        {
            let m = metrics.borrow_and_update();
            let leading = m.state == ServerState::Leader && m.current_leader == Some(member.id);
            if leading && led_term != Some(m.current_term) {
                led_term = Some(m.current_term);
                member.lessor.promote(Instant::now());
                tracing::info!(member = %format!("{:x}", member.id), term = m.current_term, "became leader; lease clocks restarted");
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

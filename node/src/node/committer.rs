//! Where a member's writes and read indexes come from: Raft itself when
//! the member leads, the leader over the peer link when it does not.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use openraft::error::{ClientWriteError, RaftError};
use prost::Message;

use super::proposer::BatchSink;
use super::read_barrier::ReadIndexSource;
use crate::error::EtcdError;
use crate::hub::ApplyHub;
use crate::metrics::Metrics;
use crate::proto::witanpb::forward_request::Request as FwdReq;
use crate::proto::witanpb::forward_response::Response as FwdResp;
use crate::proto::witanpb::internal_response::Response;
use crate::proto::witanpb::{
    ForwardRequest, ForwardResponse, InternalBatch, InternalRequest, InternalResponse, RaftMessage,
};
use crate::raft::network::PeerChannels;
use crate::raft::types::{Batch, MemberNode, NodeId, Raft, RaftMetrics};

/// Talks to whoever leads.
pub struct Committer {
    pub id: NodeId,
    pub raft: Raft,
    pub channels: PeerChannels,
    pub hub: ApplyHub,
    /// How long to wait for a leader or a forwarded answer.
    pub request_timeout: Duration,
    /// Pending and failed proposals are counted here.
    pub metrics: Arc<Metrics>,
    /// Set while this leader hands leadership over: new writes are refused
    /// as "not leader" (so they are retried on the next leader), since
    /// every append would renew the followers' leader lease.
    pub writes_held: std::sync::atomic::AtomicBool,
}

/// Who leads right now, as this member sees it.
pub enum Leadership {
    Me,
    Other(NodeId, MemberNode),
    Unknown,
}

impl Committer {
    pub fn leadership(&self) -> Leadership {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        match metrics.current_leader {
            Some(leader) if leader == self.id && metrics.state == ServerState::Leader => {
                Leadership::Me
            }
            Some(leader) if leader != self.id => {
                match metrics.membership_config.membership().get_node(&leader) {
                    Some(node) => Leadership::Other(leader, node.clone()),
                    None => Leadership::Unknown,
                }
            }
            _ => Leadership::Unknown,
        }
    }

    /// Waits (bounded) until some leader is known.
    pub async fn leader(&self) -> Result<Leadership, EtcdError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut metrics = self.raft.metrics();
        loop {
            match self.leadership() {
                Leadership::Unknown => {}
                known => return Ok(known),
            }
            match raft_changed(&mut metrics, deadline).await {
                Ok(()) => {}
                Err(NoChange::TimedOut) => return Err(EtcdError::NoLeader),
                Err(NoChange::Stopped) => return Err(EtcdError::Stopped),
            }
        }
    }

    /// Sends a request to the leader's peer service.
    pub async fn forward(&self, node: &MemberNode, request: FwdReq) -> Result<FwdResp, EtcdError> {
        let mut client = self.channels.client(node).map_err(EtcdError::Internal)?;
        let msg = RaftMessage {
            data: ForwardRequest {
                request: Some(request),
            }
            .encode_to_vec(),
        };
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.request_timeout);
        let reply = client
            .forward(req)
            .await
            .map_err(|status| forward_failure(&status))?;
        let resp = ForwardResponse::decode(reply.into_inner().data.as_slice())
            .map_err(|e| EtcdError::Internal(format!("decoding forwarded answer: {e}")))?;
        match resp.response {
            Some(FwdResp::Error(code)) => Err(EtcdError::from_wire(code)),
            Some(other) => Ok(other),
            None => Err(EtcdError::Internal("empty forwarded answer".into())),
        }
    }

    /// Proposes a batch on this member, which must lead.
    pub async fn write_as_leader(
        &self,
        batch: Vec<InternalRequest>,
    ) -> Result<Vec<InternalResponse>, EtcdError> {
        if self.writes_held.load(std::sync::atomic::Ordering::Acquire) {
            return Err(EtcdError::NotLeader);
        }
        match self.raft.client_write(Batch(batch)).await {
            Ok(resp) => Ok(resp.data.0),
            // Refused before it was appended: nothing happened, so the
            // caller may send it again to the new leader.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(EtcdError::NotLeader)
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(EtcdError::Internal(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => {
                tracing::error!(error = %e, "raft stopped");
                Err(EtcdError::Stopped)
            }
        }
    }

    /// Waits (bounded) until this member has applied `revision`, so a
    /// client that wrote through it reads its own write here.
    async fn catch_up_to_revision(&self, revision: i64) {
        let mut rx = self.hub.revision();
        let _ = tokio::time::timeout(self.request_timeout, rx.wait_for(|r| *r >= revision)).await;
    }

    /// This member's read index: the leader's commit point, confirmed by a
    /// quorum. A read changes nothing, so a leadership change in the middle
    /// is simply tried again (until the request deadline), where etcd
    /// leaves the retry to its client.
    pub async fn read_index(&self) -> Result<u64, EtcdError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let attempt = match self.leader().await? {
                Leadership::Me => self.read_index_as_leader().await,
                Leadership::Other(_, node) => {
                    match self.forward(&node, FwdReq::ReadIndex(true)).await {
                        Ok(FwdResp::ReadIndex(index)) => Ok(index),
                        Ok(_) => Err(EtcdError::Internal("unexpected forwarded answer".into())),
                        Err(e) => Err(e),
                    }
                }
                Leadership::Unknown => Err(EtcdError::NoLeader),
            };
            match attempt {
                Err(EtcdError::NotLeader | EtcdError::LeaderChanged)
                    if tokio::time::Instant::now() < deadline =>
                {
                    self.leadership_changed(deadline).await;
                }
                Err(EtcdError::NotLeader) => return Err(EtcdError::LeaderChanged),
                other => return other,
            }
        }
    }

    pub async fn read_index_as_leader(&self) -> Result<u64, EtcdError> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => Ok(read_log_id.map_or(0, |id| id.index)),
            // Not (or no longer) the leader: the asker tries again.
            Err(RaftError::APIError(_)) => Err(EtcdError::NotLeader),
            Err(RaftError::Fatal(_)) => Err(EtcdError::Stopped),
        }
    }
}

/// What a failed forward means for the request. A refused connection
/// carried nothing, so it is reported as `NotLeader` ("not taken, safe to
/// send again"); any other failure may have happened after the leader took
/// the request, so its fate is unknown to us.
fn forward_failure(status: &tonic::Status) -> EtcdError {
    if status_chain_has_refused_connection(status) {
        return EtcdError::NotLeader;
    }
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => EtcdError::Timeout,
        _ => EtcdError::LeaderChanged,
    }
}

fn status_chain_has_refused_connection(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = err.source();
    }
    false
}

fn max_revision(responses: &[InternalResponse]) -> i64 {
    responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(Response::Put(x)) => x.header.as_ref(),
            Some(Response::DeleteRange(x)) => x.header.as_ref(),
            Some(Response::Txn(x)) => x.header.as_ref(),
            Some(Response::LeaseRevoke(x)) => x.header.as_ref(),
            _ => None,
        })
        .map(|h| h.revision)
        .max()
        .unwrap_or(0)
}

impl Committer {
    /// One attempt at committing a batch through whoever leads.
    async fn commit_once(
        &self,
        batch: Vec<InternalRequest>,
    ) -> Result<Vec<InternalResponse>, EtcdError> {
        match self.leader().await? {
            Leadership::Me => self.write_as_leader(batch).await,
            Leadership::Other(_, node) => {
                let fwd = FwdReq::Batch(InternalBatch { requests: batch });
                match self.forward(&node, fwd).await? {
                    FwdResp::Batch(resp) => {
                        self.catch_up_to_revision(max_revision(&resp.responses))
                            .await;
                        Ok(resp.responses)
                    }
                    _ => Err(EtcdError::Internal("unexpected forwarded answer".into())),
                }
            }
            Leadership::Unknown => Err(EtcdError::NoLeader),
        }
    }

    /// Waits, until `deadline` at most, for this member's view of Raft to
    /// change (a new term, leader or membership), so a retry has a chance.
    async fn leadership_changed(&self, deadline: tokio::time::Instant) {
        let mut metrics = self.raft.metrics();
        let pause = deadline.min(tokio::time::Instant::now() + NOT_LEADER_PAUSE);
        if let Err(NoChange::Stopped) = raft_changed(&mut metrics, pause).await {
            // Nothing will change any more: pace the caller's retries.
            tokio::time::sleep_until(pause).await;
        }
    }
}

/// Why a wait for Raft's metrics to change ended without a change.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoChange {
    TimedOut,
    /// Raft has stopped (its metrics channel is closed).
    Stopped,
}

/// Waits until Raft's metrics change, until `deadline` at most. A closed
/// channel (Raft stopped) is ready at once, and so is one that changes
/// faster than it is read, and `timeout_at` never fires on a future that
/// is always ready: a loop around `timeout_at(deadline, changed())` spun
/// at 100 % CPU forever when Raft stopped during a leader's hand-over at
/// shutdown. So the deadline is checked first and a closed channel ends
/// the wait.
pub(crate) async fn raft_changed(
    metrics: &mut tokio::sync::watch::Receiver<RaftMetrics>,
    deadline: tokio::time::Instant,
) -> Result<(), NoChange> {
    if tokio::time::Instant::now() >= deadline {
        return Err(NoChange::TimedOut);
    }
    match tokio::time::timeout_at(deadline, metrics.changed()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(NoChange::Stopped),
        Err(_) => Err(NoChange::TimedOut),
    }
}

/// Longest wait between two attempts at a batch that was refused: Raft's
/// metrics do not change when a leader that refused us is just slow to
/// learn it lost, so we also try again after this pause.
const NOT_LEADER_PAUSE: Duration = Duration::from_millis(50);

impl BatchSink for Committer {
    async fn commit(
        &self,
        batch: Vec<InternalRequest>,
    ) -> Result<Vec<InternalResponse>, EtcdError> {
        // Every request of the batch is a proposal in flight until it ends,
        // however it ends (the guard also covers a dropped future).
        let count = i64::try_from(batch.len()).unwrap_or(i64::MAX);
        let _pending = PendingGuard::new(&self.metrics.proposals_pending, count);
        let result = self.commit_retrying(batch).await;
        if result.is_err() {
            self.metrics.proposals_failed.inc_by(count.unsigned_abs());
        }
        result
    }
}

/// Adds to a gauge while alive.
struct PendingGuard<'a> {
    gauge: &'a prometheus::IntGauge,
    count: i64,
}

impl<'a> PendingGuard<'a> {
    fn new(gauge: &'a prometheus::IntGauge, count: i64) -> Self {
        gauge.add(count);
        PendingGuard { gauge, count }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.gauge.sub(self.count);
    }
}

impl Committer {
    async fn commit_retrying(
        &self,
        batch: Vec<InternalRequest>,
    ) -> Result<Vec<InternalResponse>, EtcdError> {
        // An election is short next to the request timeout: a request that
        // meets one waits it out, as it would in etcd, instead of failing.
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            // Only "not leader" is retried: the batch was refused before it
            // was appended (or the connection carrying it was refused), so
            // sending it again cannot apply it twice.
            match self.commit_once(batch.clone()).await {
                Err(EtcdError::NotLeader) if tokio::time::Instant::now() < deadline => {
                    self.leadership_changed(deadline).await;
                }
                Err(EtcdError::NotLeader) => return Err(EtcdError::LeaderChanged),
                other => return other,
            }
        }
    }
}

impl ReadIndexSource for Committer {
    async fn sync_to_read_index(&self) -> Result<(), EtcdError> {
        let index = self.read_index().await?;
        self.raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| EtcdError::Timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::witanpb::raft_client::RaftClient;

    #[tokio::test]
    async fn waiting_for_raft_ends_when_it_stops_or_the_deadline_passed() {
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let (tx, mut rx) = tokio::sync::watch::channel(RaftMetrics::new_initial(1));
        tx.send_modify(|m| m.current_term = 2);
        assert_eq!(raft_changed(&mut rx, far).await, Ok(()));
        // A change is waiting, but the deadline has passed.
        tx.send_modify(|m| m.current_term = 3);
        let passed = tokio::time::Instant::now();
        assert_eq!(raft_changed(&mut rx, passed).await, Err(NoChange::TimedOut));
        // Raft stopped: the wait ends at once, not at the deadline (an
        // hour away), and again each time it is asked.
        rx.borrow_and_update();
        drop(tx);
        for _ in 0..3 {
            let waited = tokio::time::timeout(Duration::from_secs(10), raft_changed(&mut rx, far))
                .await
                .expect("ends at once");
            assert_eq!(waited, Err(NoChange::Stopped));
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_safe_refusal_and_other_failures_are_not() {
        // A port nobody listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let status = RaftClient::new(channel)
            .forward(RaftMessage { data: vec![] })
            .await
            .expect_err("nobody listens");
        assert!(matches!(forward_failure(&status), EtcdError::NotLeader));

        let reset = tonic::Status::unavailable("connection reset");
        assert!(matches!(forward_failure(&reset), EtcdError::LeaderChanged));
        let late = tonic::Status::deadline_exceeded("late");
        assert!(matches!(forward_failure(&late), EtcdError::Timeout));
    }
}

//! The client side of the peer link: openraft's RPCs carried over gRPC to
//! the other members' peer listeners, MessagePack inside.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use rustls::ClientConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use super::types::{MemberNode, NodeId, TypeConfig};
use crate::proto::witanpb::RaftMessage;
use crate::proto::witanpb::raft_client::RaftClient;
use crate::storage::wal::durable::DurableLog;
use crate::tls::Reloading;
use crate::tls::connector::Connector;

/// Largest peer message accepted, in bytes (snapshots travel in chunks far
/// below this; log batches are bounded by the proposer).
pub const MAX_PEER_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Lazily connected gRPC channels to peers, shared by Raft replication and
/// request forwarding. `https://` peers are dialled with the peer TLS
/// (the peer certificate as client certificate, the peer CA to verify),
/// reloaded from disk for every new connection.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<Arc<Reloading<ClientConfig>>>,
    /// `--peer-source-ip`.
    source_ip: Option<IpAddr>,
}

impl PeerChannels {
    /// Channels that dial `https://` peers with `tls` (none: https peers
    /// are refused with a clear error).
    pub fn new(tls: Option<Arc<Reloading<ClientConfig>>>) -> Self {
        PeerChannels {
            channels: Default::default(),
            tls,
            source_ip: None,
        }
    }

    /// Dials every peer from `source_ip` (`--peer-source-ip`).
    pub fn with_source_ip(mut self, source_ip: Option<IpAddr>) -> Self {
        self.source_ip = source_ip;
        self
    }

    /// A client for the member reachable at `node`'s first peer URL.
    pub fn client(&self, node: &MemberNode) -> Result<RaftClient<Channel>, String> {
        let url = node
            .peer_urls
            .first()
            .ok_or_else(|| "member has no peer URL".to_string())?;
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match map.get(url) {
            Some(channel) => channel.clone(),
            None => {
                let (connector, uri) = Connector::new(url, self.tls.as_ref())
                    .map_err(|e| format!("peer URL {url}: {e}"))?;
                let connector = connector.with_source_ip(self.source_ip);
                let channel = Endpoint::from_shared(uri)
                    .map_err(|e| format!("bad peer URL {url}: {e}"))?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .connect_with_connector_lazy(connector);
                map.insert(url.clone(), channel.clone());
                channel
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }
}

/// A peer as its links are kept: its id and the peer URL dialled.
type PeerKey = (NodeId, String);

/// openraft's network factory.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    pub channels: PeerChannels,
    /// `etcd_network_peer_round_trip_time_seconds`, labelled by peer.
    round_trip_time: Option<HistogramVec>,
    /// `witan_network_peer_append_streams_opened_total`, labelled by peer.
    append_streams_opened: Option<IntCounterVec>,
    /// What every connection to a peer shares, by peer id and URL.
    links: Arc<Mutex<HashMap<PeerKey, Arc<PeerLink>>>>,
    /// When set, a commit index goes to followers only once this member's
    /// log holds that entry durably (`storage::wal::durable`).
    durable_log: Option<DurableLog>,
}

impl PeerNetwork {
    pub fn new(channels: PeerChannels) -> Self {
        PeerNetwork {
            channels,
            round_trip_time: None,
            append_streams_opened: None,
            links: Default::default(),
            durable_log: None,
        }
    }

    /// Tells followers a commit index only once `log` holds it durably.
    pub fn committing_what_is_durable_in(mut self, log: DurableLog) -> Self {
        self.durable_log = Some(log);
        self
    }

    /// Times heartbeats to each peer into `histogram` (label `To`).
    pub fn with_round_trip_time(mut self, histogram: HistogramVec) -> Self {
        self.round_trip_time = Some(histogram);
        self
    }

    /// Counts the append streams opened to each peer in `counter` (label `To`).
    pub fn with_append_streams_opened(mut self, counter: IntCounterVec) -> Self {
        self.append_streams_opened = Some(counter);
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> Self::Network {
        // etcd labels peers with their member id in hex.
        let to = format!("{target:x}");
        let url = node.peer_urls.first().cloned().unwrap_or_default();
        let link = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((target, url))
            .or_default()
            .clone();
        PeerConnection {
            target,
            client: self.channels.client(node),
            round_trip_time: self
                .round_trip_time
                .as_ref()
                .map(|h| h.with_label_values(&[&to])),
            append_streams_opened: self
                .append_streams_opened
                .as_ref()
                .map(|c| c.with_label_values(&[&to])),
            link,
            durable_log: self.durable_log.clone(),
        }
    }
}

/// What every connection to one peer shares. openraft opens a connection
/// per follower for replication and a fresh one for every leadership
/// check (a linearizable read's round of heartbeats): with a stream per
/// connection each read round opened, and closed, a stream to every
/// follower, which cost more than the unary calls it replaced.
#[derive(Default)]
struct PeerLink {
    /// Append streams with no exchange in flight: a connection borrows one
    /// for each exchange, and a second one opens only while the first is
    /// busy (replication and a read round at the same time).
    idle: Mutex<Vec<AppendStream>>,
    /// Until when appends go as unary calls: the peer did not know the
    /// stream (a member of an older version, during a rolling upgrade).
    unary_until: Mutex<Option<Instant>>,
}

/// Idle streams kept per peer, at most; more were only ever needed at once.
const MAX_IDLE_STREAMS: usize = 4;

impl PeerLink {
    /// An idle stream that is still open. Between exchanges nothing may be
    /// waiting on a stream: anything there is its end (the peer stopped,
    /// the connection broke), and finding it now spares an append a
    /// failure.
    fn take_idle(&self) -> Option<AppendStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut open) = idle.pop() {
            if open.replies.message().now_or_never().is_none() {
                return Some(open);
            }
        }
        None
    }

    /// Gives back a stream whose last exchange ended with its reply.
    fn put_idle(&self, open: AppendStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_STREAMS {
            idle.push(open);
        }
    }

    fn streams_refused_until(&self) -> Option<Instant> {
        *self.unary_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refuse_streams_until(&self, until: Instant) {
        *self.unary_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }
}

/// A connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    client: Result<RaftClient<Channel>, String>,
    round_trip_time: Option<Histogram>,
    append_streams_opened: Option<IntCounter>,
    /// The peer's append streams (AppendEntriesStream), shared.
    link: Arc<PeerLink>,
    durable_log: Option<DurableLog>,
}

/// How long a peer that does not know the append stream is sent unary
/// appends before the stream is tried again (it may have been upgraded).
const UNARY_RETRY_AFTER: Duration = Duration::from_secs(30);

/// One open AppendEntriesStream: requests go in, one reply per request
/// comes back, in order.
struct AppendStream {
    requests: tokio::sync::mpsc::Sender<RaftMessage>,
    replies: tonic::Streaming<RaftMessage>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerError(String);

pub(crate) fn encode<T: Serialize>(value: &T) -> RaftMessage {
    RaftMessage {
        data: crate::storage::to_rmp(value),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(msg: &RaftMessage) -> Result<T, String> {
    rmp_serde::from_slice(&msg.data).map_err(|e| format!("decoding peer message: {e}"))
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    /// An AppendEntries without entries (a heartbeat, or a commit index
    /// update): the follower answers it without an fsync, so its time is
    /// close to the peer link's round trip, which etcd's prober measures.
    Heartbeat,
    Vote,
    Snapshot,
}

type RpcResult<Resp, E> = Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>;

impl PeerConnection {
    /// One unary call.
    async fn unary(
        &mut self,
        rpc: Rpc,
        message: RaftMessage,
        ttl: Duration,
    ) -> Result<RaftMessage, Status> {
        let client = self
            .client
            .as_mut()
            .map_err(|e| Status::unavailable(e.clone()))?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(ttl);
        let reply = match rpc {
            Rpc::Append | Rpc::Heartbeat => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        reply.map(tonic::Response::into_inner)
    }

    /// One append on an idle stream of the peer's, opening one if none is.
    ///
    /// The stream is taken out of the link for the exchange and put back
    /// only once its reply is in: a stream that failed, timed out, or whose
    /// exchange was cancelled (openraft drops an append that outlives the
    /// heartbeat interval) is dropped with it, and the next append opens a
    /// new one. Reusing it could pair a late reply with the next request:
    /// a success for entries the follower does not have.
    async fn streamed(
        &mut self,
        message: RaftMessage,
        ttl: Duration,
    ) -> Result<RaftMessage, Status> {
        tokio::time::timeout(ttl, self.exchange(message))
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer to an append in time")))
    }

    async fn exchange(&mut self, message: RaftMessage) -> Result<RaftMessage, Status> {
        let mut open = match self.link.take_idle() {
            Some(open) => open,
            None => self.open_stream().await?,
        };
        open.requests
            .send(message)
            .await
            .map_err(|_| Status::unavailable("the append stream to the peer is closed"))?;
        let reply = open
            .replies
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("the peer closed the append stream"))?;
        self.link.put_idle(open);
        Ok(reply)
    }

    async fn open_stream(&mut self) -> Result<AppendStream, Status> {
        let client = self
            .client
            .as_mut()
            .map_err(|e| Status::unavailable(e.clone()))?;
        // One request at a time is in the stream: openraft waits for each
        // reply before it sends the next append.
        let (requests, outgoing) = tokio::sync::mpsc::channel(1);
        let replies = client
            .append_entries_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        if let Some(counter) = &self.append_streams_opened {
            counter.inc();
        }
        Ok(AppendStream { requests, replies })
    }

    /// Carries `req` to the peer and decodes its answer.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let message = encode(req);
        let ttl = option.hard_ttl();
        let sent_at = Instant::now();
        let on_stream = matches!(rpc, Rpc::Append | Rpc::Heartbeat)
            && self
                .link
                .streams_refused_until()
                .is_none_or(|until| Instant::now() >= until);
        let reply = if on_stream {
            match self.streamed(message, ttl).await {
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(
                        peer = self.target,
                        "peer does not know the append stream; sending it unary appends"
                    );
                    self.link
                        .refuse_streams_until(Instant::now() + UNARY_RETRY_AFTER);
                    // Encoded again rather than copied ahead of every
                    // append for this rare case.
                    self.unary(rpc, encode(req), ttl).await
                }
                reply => reply,
            }
        } else {
            self.unary(rpc, message, ttl).await
        };
        if let (Rpc::Heartbeat, Ok(_), Some(histogram)) = (rpc, &reply, &self.round_trip_time) {
            histogram.observe(sent_at.elapsed().as_secs_f64());
        }
        let reply = match reply {
            Ok(reply) => reply,
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&PeerError(
                    status.message().to_string(),
                ))));
            }
            Err(status) => {
                return Err(RPCError::Network(NetworkError::new(&PeerError(
                    status.message().to_string(),
                ))));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&PeerError(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        let kind = if rpc.entries.is_empty() {
            Rpc::Heartbeat
        } else {
            Rpc::Append
        };
        if let (Some(log), Some(commit)) = (&self.durable_log, rpc.leader_commit) {
            // Nearly always at once: the leader's fsync of an entry began
            // before any follower could acknowledge it.
            match tokio::time::timeout(option.hard_ttl(), log.wait_for(commit.index)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(RPCError::Network(NetworkError::new(&e))),
                Err(_) => {
                    return Err(RPCError::Network(NetworkError::new(&PeerError(format!(
                        "entry {} is not yet durable here",
                        commit.index
                    )))));
                }
            }
        }
        self.call(kind, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// Decodes a peer RPC's MessagePack payload, exactly as the peer service
/// does (the fuzz target `raft_rpc` drives it).
pub fn decode_peer_message<T: DeserializeOwned>(msg: &RaftMessage) -> Result<T, String> {
    decode(msg)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use openraft::Vote;
    use prometheus::Opts;
    use tonic::{Request, Response, Streaming};

    use super::*;
    use crate::proto::witanpb::raft_server::{Raft, RaftServer};
    use crate::proto::witanpb::{
        CampaignRequest, CampaignResponse, ClusterMembersRequest, ClusterMembersResponse,
        HoldElectionsRequest, HoldElectionsResponse, MembershipChange, MembershipChangeResult,
        PreVoteRequest, PreVoteResponse,
    };

    /// A member of a version before the append stream: it answers unary
    /// appends and knows no other call.
    #[derive(Default)]
    struct OlderPeer {
        unary_appends: Arc<AtomicUsize>,
        stream_asks: Arc<AtomicUsize>,
    }

    fn unknown<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("unknown method"))
    }

    #[tonic::async_trait]
    impl Raft for OlderPeer {
        type AppendEntriesStreamStream = tokio_stream::Empty<Result<RaftMessage, Status>>;

        async fn append_entries(
            &self,
            req: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            let _: AppendEntriesRequest<TypeConfig> =
                decode(req.get_ref()).map_err(Status::invalid_argument)?;
            self.unary_appends.fetch_add(1, Ordering::SeqCst);
            let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                Ok(AppendEntriesResponse::Success);
            Ok(Response::new(encode(&answer)))
        }
        async fn append_entries_stream(
            &self,
            _: Request<Streaming<RaftMessage>>,
        ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
            self.stream_asks.fetch_add(1, Ordering::SeqCst);
            unknown()
        }
        async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            unknown()
        }
        async fn install_snapshot(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            unknown()
        }
        async fn forward(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            unknown()
        }
        async fn cluster_members(
            &self,
            _: Request<ClusterMembersRequest>,
        ) -> Result<Response<ClusterMembersResponse>, Status> {
            unknown()
        }
        async fn change_members(
            &self,
            _: Request<MembershipChange>,
        ) -> Result<Response<MembershipChangeResult>, Status> {
            unknown()
        }
        async fn hold_elections(
            &self,
            _: Request<HoldElectionsRequest>,
        ) -> Result<Response<HoldElectionsResponse>, Status> {
            unknown()
        }
        async fn campaign(
            &self,
            _: Request<CampaignRequest>,
        ) -> Result<Response<CampaignResponse>, Status> {
            unknown()
        }
        async fn pre_vote(
            &self,
            _: Request<PreVoteRequest>,
        ) -> Result<Response<PreVoteResponse>, Status> {
            unknown()
        }
    }

    /// Serves `peer` on a free loopback port: its node and the server task.
    async fn serve(peer: OlderPeer) -> (MemberNode, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RaftServer::new(peer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        let node = MemberNode {
            peer_urls: vec![format!("http://{addr}")],
        };
        (node, server)
    }

    #[tokio::test]
    async fn a_peer_without_the_append_stream_gets_unary_appends() {
        let peer = OlderPeer::default();
        let unary_appends = peer.unary_appends.clone();
        let stream_asks = peer.stream_asks.clone();
        let (node, server) = serve(peer).await;
        let opened = IntCounterVec::new(Opts::new("opened", "streams"), &["To"]).unwrap();
        let mut network =
            PeerNetwork::new(PeerChannels::new(None)).with_append_streams_opened(opened.clone());
        let mut connection = network.new_client(2, &node).await;
        for _ in 0..3 {
            let request = AppendEntriesRequest {
                vote: Vote::new_committed(1, 1),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            };
            let answer = connection
                .append_entries(request, RPCOption::new(Duration::from_secs(5)))
                .await
                .expect("the older peer answers");
            assert_eq!(answer, AppendEntriesResponse::Success);
        }
        assert_eq!(unary_appends.load(Ordering::SeqCst), 3);
        // The stream was asked for once, refused, and not asked for again.
        assert_eq!(stream_asks.load(Ordering::SeqCst), 1);
        assert_eq!(opened.with_label_values(&["2"]).get(), 0);
        assert!(connection.link.streams_refused_until().is_some());
        // So does a connection opened later (openraft opens one per
        // leadership check).
        let mut later = network.new_client(2, &node).await;
        let request = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        later
            .append_entries(request, RPCOption::new(Duration::from_secs(5)))
            .await
            .expect("the older peer answers");
        assert_eq!(unary_appends.load(Ordering::SeqCst), 4);
        assert_eq!(stream_asks.load(Ordering::SeqCst), 1);
        server.abort();
    }

    #[tokio::test]
    async fn a_commit_index_goes_out_only_once_the_leader_holds_it_durably() {
        use std::future::Future;
        use std::task::{Context, Waker};

        use crate::raft::types::LogId;
        use crate::storage::wal::durable::Durability;

        let peer = OlderPeer::default();
        let appends = peer.unary_appends.clone();
        let (node, server) = serve(peer).await;
        let at = |index| Durability {
            upto: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            failed: false,
        };
        let (durable, rx) = tokio::sync::watch::channel(at(4));
        let mut network = PeerNetwork::new(PeerChannels::new(None))
            .committing_what_is_durable_in(DurableLog::new(rx));
        let mut connection = network.new_client(2, &node).await;
        let committing = |index| AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
        };
        let option = RPCOption::new(Duration::from_secs(5));
        connection
            .append_entries(committing(4), option.clone())
            .await
            .expect("durable: sent at once");
        assert_eq!(appends.load(Ordering::SeqCst), 1);

        let mut early = std::pin::pin!(connection.append_entries(committing(6), option.clone()));
        assert!(
            early
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending()
        );
        assert_eq!(appends.load(Ordering::SeqCst), 1, "held back");
        durable.send_replace(at(6));
        early.await.expect("sent once durable");
        assert_eq!(appends.load(Ordering::SeqCst), 2);
        server.abort();
    }
}

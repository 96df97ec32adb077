//! The client side of the peer link: openraft's RPCs carried over gRPC to
//! the other members' peer listeners, MessagePack inside.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use prometheus::{Histogram, HistogramVec};
use rustls::ClientConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use super::types::{MemberNode, NodeId, TypeConfig};
use crate::proto::witanpb::RaftMessage;
use crate::proto::witanpb::raft_client::RaftClient;
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

/// openraft's network factory.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    pub channels: PeerChannels,
    /// `etcd_network_peer_round_trip_time_seconds`, labelled by peer.
    round_trip_time: Option<HistogramVec>,
}

impl PeerNetwork {
    pub fn new(channels: PeerChannels) -> Self {
        PeerNetwork {
            channels,
            round_trip_time: None,
        }
    }

    /// Times heartbeats to each peer into `histogram` (label `To`).
    pub fn with_round_trip_time(mut self, histogram: HistogramVec) -> Self {
        self.round_trip_time = Some(histogram);
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> Self::Network {
        PeerConnection {
            target,
            client: self.channels.client(node),
            // etcd labels peers with their member id in hex.
            round_trip_time: self
                .round_trip_time
                .as_ref()
                .map(|h| h.with_label_values(&[&format!("{target:x}")])),
        }
    }
}

/// A connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    client: Result<RaftClient<Channel>, String>,
    round_trip_time: Option<Histogram>,
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

enum Rpc {
    Append,
    /// An AppendEntries without entries (a heartbeat, or a commit index
    /// update): the follower answers it without an fsync, so its time is
    /// close to the peer link's round trip, which etcd's prober measures.
    Heartbeat,
    Vote,
    Snapshot,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&PeerError(
                    e.clone(),
                ))));
            }
        };
        let mut request = tonic::Request::new(encode(req));
        request.set_timeout(option.hard_ttl());
        let sent_at = Instant::now();
        let reply = match rpc {
            Rpc::Append | Rpc::Heartbeat => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        if let (Rpc::Heartbeat, Ok(_), Some(histogram)) = (&rpc, &reply, &self.round_trip_time) {
            histogram.observe(sent_at.elapsed().as_secs_f64());
        }
        let reply = match reply {
            Ok(reply) => reply.into_inner(),
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

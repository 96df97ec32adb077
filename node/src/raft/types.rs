//! The openraft type configuration: what a log entry carries and what
//! applying it returns.
//!
//! An entry's payload is a batch of etcd requests (group commit). Both the
//! batch and its responses cross the wire as protobuf inside the serde
//! encoding openraft uses, so a follower forwards exactly the client's
//! request and the apply path needs no second schema.

use std::fmt;

use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::proto::witanpb::{
    InternalBatch, InternalBatchResponse, InternalRequest, InternalResponse,
};

/// A member as Raft knows it: where its peers reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// Peer URLs (`http://host:2380`), as in etcd's `Member.peerURLs`.
    pub peer_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.peer_urls.join(","))
    }
}

/// A batch of client write requests: one Raft entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch(pub Vec<InternalRequest>);

/// The responses to one batch, in request order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchResponse(pub Vec<InternalResponse>);

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} requests", self.0.len())
    }
}

/// Encodes messages as field 1 of a wrapper message (`InternalBatch`,
/// `InternalBatchResponse`) without copying them into one first: entries
/// are encoded for the log and for every follower.
fn encode_repeated<M: Message>(items: &[M]) -> Vec<u8> {
    let len: usize = items
        .iter()
        .map(|m| prost::encoding::message::encoded_len(1, m))
        .sum();
    let mut buf = Vec::with_capacity(len);
    for item in items {
        prost::encoding::message::encode(1, item, &mut buf);
    }
    buf
}

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&encode_repeated(&self.0))
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        InternalBatch::decode(bytes.as_slice())
            .map(|b| Batch(b.requests))
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for BatchResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&encode_repeated(&self.0))
    }
}

impl<'de> Deserialize<'de> for BatchResponse {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        InternalBatchResponse::decode(bytes.as_slice())
            .map(|b| BatchResponse(b.responses))
            .map_err(serde::de::Error::custom)
    }
}

openraft::declare_raft_types!(
    /// witan's Raft types.
    pub TypeConfig:
        D = Batch,
        R = BatchResponse,
        NodeId = u64,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        // A file in the member's snap dir: snapshots are streamed to and
        // from disk, never held whole in memory.
        SnapshotData = crate::storage::snapshot_file::RaftSnapshotFile,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, MemberNode>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::PutRequest;
    use crate::proto::witanpb::internal_request::Request;

    #[test]
    fn batch_survives_messagepack() {
        let batch = Batch(vec![InternalRequest {
            request: Some(Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        }]);
        let bytes = rmp_serde::to_vec(&batch).unwrap();
        let back: Batch = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, batch);
    }
}

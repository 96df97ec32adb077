//! The peer link's decoding: the first byte names what arrives, the rest is
//! its payload. openraft's AppendEntries, Vote and InstallSnapshot requests
//! (MessagePack, as the peer service decodes them, with each entry's batch
//! as protobuf inside) and the answers a member decodes from its peers; a
//! request forwarded by a follower (protobuf `ForwardRequest`). What
//! decodes is then handled where a pure path exists: every request of an
//! entry's batch is applied to an in-memory MVCC store, as the state
//! machine would, and an InstallSnapshot's data is decoded as a snapshot
//! image and installed into one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta, Vote};
use prost::Message;
use serde::de::DeserializeOwned;
use witan_fuzz::apply;
use witan_node::mvcc::scratch::ScratchStore;
use witan_node::proto::etcdserverpb::PutRequest;
use witan_node::proto::witanpb::internal_request::Request as Internal;
use witan_node::proto::witanpb::{
    ForwardRequest, InternalBatch, InternalRequest, RaftMessage, forward_request,
};
use witan_node::raft::network::decode_peer_message;
use witan_node::raft::types::{Batch, Entry, MemberNode, NodeId, TypeConfig};
use witan_node::storage::snapshot::{IMAGE_FORMAT, SnapshotImage};

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Option<T> {
    decode_peer_message(&RaftMessage {
        data: payload.to_vec(),
    })
    .ok()
}

fn apply_batch(store: &mut ScratchStore, requests: &[InternalRequest]) {
    for request in requests.iter().filter_map(|r| r.request.as_ref()) {
        let _ = apply(store, request);
    }
}

fn apply_entries(entries: &[Entry]) {
    let Ok(mut store) = ScratchStore::new() else {
        return;
    };
    for entry in entries {
        if let EntryPayload::Normal(Batch(requests)) = &entry.payload {
            apply_batch(&mut store, requests);
        }
    }
}

/// Installs a snapshot image as a member does.
fn install(data: &[u8]) {
    if let Ok(image) = SnapshotImage::decode(data) {
        witan_fuzz::install_image(&image);
    }
}

fn handle(kind: u8, payload: &[u8]) {
    match kind % 8 {
        0 => {
            if let Some(rpc) = decode::<AppendEntriesRequest<TypeConfig>>(payload) {
                apply_entries(&rpc.entries);
            }
        }
        1 => drop(decode::<VoteRequest<NodeId>>(payload)),
        2 => {
            if let Some(rpc) = decode::<InstallSnapshotRequest<TypeConfig>>(payload) {
                if rpc.offset == 0 && rpc.done {
                    install(&rpc.data);
                }
            }
        }
        3 => {
            if let Ok(ForwardRequest {
                request: Some(forward_request::Request::Batch(batch)),
            }) = ForwardRequest::decode(payload)
            {
                if let Ok(mut store) = ScratchStore::new() {
                    apply_batch(&mut store, &batch.requests);
                }
            }
        }
        4 => drop(decode::<
            Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>,
        >(payload)),
        5 => drop(decode::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(
            payload,
        )),
        6 => drop(decode::<
            Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
        >(payload)),
        // A snapshot image alone, as a member installs it.
        _ => install(payload),
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let with_kind = |kind: u8, payload: Vec<u8>| {
        let mut out = vec![kind];
        out.extend(payload);
        out
    };
    let put = InternalRequest {
        request: Some(Internal::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let leader = CommittedLeaderId::new(2, 1);
    let log_id = |index| LogId::new(leader, index);
    let entries = vec![
        Entry {
            log_id: log_id(1),
            payload: EntryPayload::Membership(Membership::new(
                vec![[1u64].into_iter().collect()],
                [(
                    1u64,
                    MemberNode {
                        peer_urls: vec!["http://127.0.0.1:2380".into()],
                    },
                )]
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
            )),
        },
        Entry {
            log_id: log_id(2),
            payload: EntryPayload::Normal(Batch(vec![put.clone(), put.clone()])),
        },
        Entry {
            log_id: log_id(3),
            payload: EntryPayload::Blank,
        },
    ];
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: None,
        entries,
        leader_commit: Some(log_id(2)),
    };
    let image = SnapshotImage {
        format: IMAGE_FORMAT,
        revision: 3,
        compact_revision: 1,
        ..Default::default()
    };
    let install = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(3)),
            last_membership: Default::default(),
            snapshot_id: "2-3-1".into(),
        },
        offset: 0,
        data: image.encode(),
        done: true,
    };
    let vote = VoteRequest::<NodeId>::new(Vote::new(3, 2), Some(log_id(3)));
    let forward = ForwardRequest {
        request: Some(forward_request::Request::Batch(InternalBatch {
            requests: vec![put],
        })),
    };
    vec![
        with_kind(0, rmp(&append)),
        with_kind(1, rmp(&vote)),
        with_kind(2, rmp(&install)),
        with_kind(3, forward.encode_to_vec()),
        with_kind(7, image.encode()),
    ]
}

/// MessagePack the way the peer network encodes.
fn rmp<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("seed encodes")
}

fuzz_target!(
    init: witan_fuzz::write_seeds_if_asked(seeds),
    |data: &[u8]| {
        if let Some((&kind, payload)) = data.split_first() {
            handle(kind, payload);
        }
    }
);

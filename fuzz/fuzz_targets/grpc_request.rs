//! gRPC client requests: each frame of the input is one request of the kind
//! its first byte names (Range, Put, DeleteRange, Txn, Compaction, lease
//! calls, Watch, or an internal request as a follower forwards it), decoded
//! with prost, validated and then read or applied on one in-memory MVCC
//! store, so later frames see what earlier ones wrote.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use witan_fuzz::{ClientKind, encode_frames, frames, handle_client_request};
use witan_node::mvcc::scratch::ScratchStore;
use witan_node::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use witan_node::proto::etcdserverpb::request_op::Request as Op;
use witan_node::proto::etcdserverpb::watch_request::RequestUnion;
use witan_node::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};

fn put(key: &[u8], value: &[u8], lease: i64) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        prev_kv: true,
        ..Default::default()
    }
}

fn frame(kind: ClientKind, msg: &impl Message) -> (u8, Vec<u8>) {
    (kind.byte(), msg.encode_to_vec())
}

fn seeds() -> Vec<Vec<u8>> {
    let puts = vec![
        frame(ClientKind::Put, &put(b"a", b"1", 0)),
        frame(ClientKind::Put, &put(b"b", b"2", 0)),
        frame(ClientKind::Put, &put(b"a", b"3", 0)),
    ];
    let mut seeds = vec![encode_frames(&puts)];
    let mut reads = puts.clone();
    reads.push(frame(
        ClientKind::Range,
        &RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            sort_order: 2,
            sort_target: 3,
            limit: 1,
            revision: 3,
            ..Default::default()
        },
    ));
    reads.push(frame(
        ClientKind::DeleteRange,
        &DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            prev_kv: true,
        },
    ));
    seeds.push(encode_frames(&reads));
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b"a".to_vec(),
            target: CompareTarget::Mod as i32,
            result: CompareResult::Greater as i32,
            target_union: Some(TargetUnion::ModRevision(1)),
            range_end: Vec::new(),
        }],
        success: vec![
            RequestOp {
                request: Some(Op::RequestPut(put(b"c", b"4", 0))),
            },
            RequestOp {
                request: Some(Op::RequestTxn(TxnRequest {
                    success: vec![RequestOp {
                        request: Some(Op::RequestRange(RangeRequest {
                            key: b"c".to_vec(),
                            ..Default::default()
                        })),
                    }],
                    ..Default::default()
                })),
            },
        ],
        failure: vec![RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: b"b".to_vec(),
                ..Default::default()
            })),
        }],
    };
    let mut txns = puts.clone();
    txns.push(frame(ClientKind::Txn, &txn));
    seeds.push(encode_frames(&txns));
    let mut compact = puts.clone();
    compact.push(frame(
        ClientKind::Compaction,
        &CompactionRequest {
            revision: 3,
            physical: true,
        },
    ));
    compact.push(frame(
        ClientKind::Watch,
        &WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"a".to_vec(),
                range_end: vec![0],
                start_revision: 2,
                prev_kv: true,
                ..Default::default()
            })),
        },
    ));
    seeds.push(encode_frames(&compact));
    let leases = vec![
        frame(
            ClientKind::LeaseGrant,
            &LeaseGrantRequest { ttl: 60, id: 7 },
        ),
        frame(ClientKind::Put, &put(b"l", b"x", 7)),
        frame(ClientKind::LeaseRevoke, &LeaseRevokeRequest { id: 7 }),
        frame(ClientKind::Put, &put(b"l", b"y", 8)),
    ];
    seeds.push(encode_frames(&leases));
    seeds
}

fuzz_target!(
    init: witan_fuzz::write_seeds_if_asked(seeds),
    |data: &[u8]| {
        let Ok(mut store) = ScratchStore::new() else {
            return;
        };
        for (kind, payload) in frames(data) {
            let _ = handle_client_request(&mut store, ClientKind::of(kind), payload);
        }
    }
);

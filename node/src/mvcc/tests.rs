//! MVCC rules checked against a real redb database: revisions, history,
//! txn semantics, compaction, leases and every Range option.

use super::apply::ApplyError;
use super::range::prefix_end;
use super::testkit::{Mvcc, put_req, range_req};
use crate::error::EtcdError;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request as OpRequest;
use crate::proto::etcdserverpb::response_op::Response as OpResponse;
use crate::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeResponse, RequestOp, TxnRequest,
};
use crate::proto::mvccpb::event::EventType;

fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(OpRequest::RequestPut(put_req(key, value))),
    }
}

fn op_range(key: &str) -> RequestOp {
    RequestOp {
        request: Some(OpRequest::RequestRange(range_req(key, ""))),
    }
}

/// A fresh store holding one lease, `id`, and no key.
fn store_with_lease(id: i64) -> Mvcc {
    let mut s = Mvcc::new();
    s.write(|a| a.lease_grant(&LeaseGrantRequest { ttl: 10, id }).unwrap());
    s
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, value: TargetUnion) -> Compare {
    Compare {
        key: key.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(value),
        range_end: Vec::new(),
    }
}

#[test]
fn revisions_versions_and_create_revision() {
    let mut s = Mvcc::new();
    assert_eq!(
        s.put("a", "1"),
        2,
        "the first write is revision 2, as in etcd"
    );
    assert_eq!(s.put("a", "2"), 3);
    let kv = s.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    s.write(|a| {
        a.delete_range(&DeleteRangeRequest {
            key: "a".into(),
            ..Default::default()
        })
        .unwrap()
    });
    assert_eq!(s.revision, 4);
    assert!(s.get("a").is_none());
    // Re-created: a new life starts at version 1.
    assert_eq!(s.put("a", "3"), 5);
    let kv = s.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn noop_delete_and_read_only_txn_keep_the_revision() {
    let mut s = Mvcc::new();
    s.put("a", "1");
    let (resp, events) = s.write(|a| {
        a.delete_range(&DeleteRangeRequest {
            key: "missing".into(),
            ..Default::default()
        })
        .unwrap()
    });
    assert_eq!(resp.deleted, 0);
    assert!(events.is_empty());
    assert_eq!(s.revision, 2);
    let (resp, _) = s.write(|a| {
        a.txn(&TxnRequest {
            success: vec![op_range("a")],
            ..Default::default()
        })
        .unwrap()
    });
    assert!(resp.succeeded);
    assert_eq!(s.revision, 2);
}

#[test]
fn txn_writes_share_one_revision_and_reads_see_them() {
    let mut s = Mvcc::new();
    let (resp, events) = s.write(|a| {
        a.txn(&TxnRequest {
            success: vec![op_put("x", "1"), op_put("y", "2"), op_range("x")],
            ..Default::default()
        })
        .unwrap()
    });
    assert_eq!(s.revision, 2);
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.kv.as_ref().unwrap().mod_revision == 2)
    );
    let Some(OpResponse::ResponseRange(r)) = &resp.responses[2].response else {
        panic!("expected a range response");
    };
    assert_eq!(
        r.kvs[0].value, b"1",
        "a read inside the txn sees its own write"
    );
}

#[test]
fn txn_compares_pick_the_branch() {
    let mut s = Mvcc::new();
    s.put("k", "v");
    let run = |s: &mut Mvcc, c: Compare| {
        s.write(|a| {
            a.txn(&TxnRequest {
                compare: vec![c],
                success: vec![op_range("k")],
                failure: vec![],
            })
            .unwrap()
            .succeeded
        })
        .0
    };
    use CompareResult::*;
    use CompareTarget::*;
    assert!(run(
        &mut s,
        cmp("k", Value, Equal, TargetUnion::Value(b"v".to_vec()))
    ));
    assert!(!run(
        &mut s,
        cmp("k", Value, Equal, TargetUnion::Value(b"w".to_vec()))
    ));
    assert!(run(
        &mut s,
        cmp("k", Value, Greater, TargetUnion::Value(b"a".to_vec()))
    ));
    assert!(run(
        &mut s,
        cmp("k", Version, Equal, TargetUnion::Version(1))
    ));
    assert!(run(
        &mut s,
        cmp("k", Create, Equal, TargetUnion::CreateRevision(2))
    ));
    assert!(run(
        &mut s,
        cmp("k", Mod, Less, TargetUnion::ModRevision(3))
    ));
    assert!(run(
        &mut s,
        cmp("k", Mod, NotEqual, TargetUnion::ModRevision(3))
    ));
    assert!(run(&mut s, cmp("k", Lease, Equal, TargetUnion::Lease(0))));
    // A missing key: version 0 compares, but a value compare always fails.
    assert!(run(
        &mut s,
        cmp("nope", Version, Equal, TargetUnion::Version(0))
    ));
    assert!(!run(
        &mut s,
        cmp("nope", Value, Equal, TargetUnion::Value(Vec::new()))
    ));
    // A compare over a range holds for every key in it.
    s.put("k2", "v");
    let mut over_range = cmp("k", Value, Equal, TargetUnion::Value(b"v".to_vec()));
    over_range.range_end = prefix_end(b"k");
    assert!(run(&mut s, over_range.clone()));
    s.put("k3", "other");
    assert!(!run(&mut s, over_range));
}

#[test]
fn nested_txn_branches_are_decided_before_any_write() {
    let mut s = Mvcc::new();
    s.put("flag", "0");
    let nested = TxnRequest {
        // Decided against the state before the outer txn wrote "flag".
        compare: vec![cmp(
            "flag",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b"0".to_vec()),
        )],
        success: vec![op_put("saw", "old")],
        failure: vec![op_put("saw", "new")],
    };
    s.write(|a| {
        a.txn(&TxnRequest {
            success: vec![
                op_put("flag", "1"),
                RequestOp {
                    request: Some(OpRequest::RequestTxn(nested)),
                },
            ],
            ..Default::default()
        })
        .unwrap()
    });
    assert_eq!(s.get("saw").unwrap().value, b"old");
    assert_eq!(
        s.get("flag").unwrap().mod_revision,
        s.get("saw").unwrap().mod_revision
    );
}

#[test]
fn put_options_and_their_errors() {
    let mut s = Mvcc::new();
    let (err, _) = s.write(|a| {
        a.put(&PutRequest {
            key: "k".into(),
            ignore_value: true,
            ..Default::default()
        })
    });
    assert!(matches!(
        err,
        Err(ApplyError::Rejected(EtcdError::KeyNotFound))
    ));
    let (err, _) = s.write(|a| {
        a.put(&PutRequest {
            key: "k".into(),
            lease: 42,
            ..Default::default()
        })
    });
    assert!(matches!(
        err,
        Err(ApplyError::Rejected(EtcdError::LeaseNotFound))
    ));
    assert_eq!(s.revision, 1, "rejected puts write nothing");
    s.put("k", "v1");
    let (resp, _) = s.write(|a| {
        a.put(&PutRequest {
            key: "k".into(),
            ignore_value: true,
            prev_kv: true,
            ..Default::default()
        })
        .unwrap()
    });
    assert_eq!(resp.prev_kv.unwrap().value, b"v1");
    let kv = s.get("k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"v1"[..], 2));
}

#[test]
fn ignore_lease_keeps_the_keys_lease_and_needs_the_key() {
    let mut s = store_with_lease(7);
    let put = |key: &str, value: &str, lease: i64, ignore_lease: bool| PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ignore_lease,
        ..Default::default()
    };
    s.write(|a| a.put(&put("k", "v1", 7, false)).unwrap());
    s.write(|a| a.put(&put("k", "v2", 0, true)).unwrap());
    let kv = s.get("k").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"v2"[..], 7, 2)
    );
    // Without ignore_lease a put with no lease detaches the key.
    s.write(|a| a.put(&put("k", "v3", 0, false)).unwrap());
    assert_eq!(s.get("k").unwrap().lease, 0);
    let (err, _) = s.write(|a| a.put(&put("missing", "v", 0, true)));
    assert!(matches!(
        err,
        Err(ApplyError::Rejected(EtcdError::KeyNotFound))
    ));
}

#[test]
fn reads_at_past_revisions_and_compaction() {
    let mut s = Mvcc::new();
    s.put("a", "1"); // 2
    s.put("a", "2"); // 3
    s.put("b", "1"); // 4
    s.write(|a| {
        a.delete_range(&DeleteRangeRequest {
            key: "b".into(),
            ..Default::default()
        })
        .unwrap()
    }); // 5
    let at = |s: &Mvcc, rev: i64| {
        let mut req = range_req("a", "c");
        req.revision = rev;
        s.range(req)
    };
    assert_eq!(at(&s, 2).unwrap().kvs[0].value, b"1");
    assert_eq!(keys(&at(&s, 4).unwrap()), vec!["a", "b"]);
    assert_eq!(keys(&at(&s, 5).unwrap()), vec!["a"]);
    assert_eq!(at(&s, 6), Err(EtcdError::FutureRev));

    s.write(|a| {
        a.compact(&CompactionRequest {
            revision: 4,
            physical: true,
        })
        .unwrap()
    });
    assert_eq!(at(&s, 3), Err(EtcdError::Compacted));
    // The compact revision itself is still readable.
    let r = at(&s, 4).unwrap();
    assert_eq!(keys(&r), vec!["a", "b"]);
    assert_eq!(r.kvs[0].value, b"2");
    assert_eq!(s.events(3), Err(EtcdError::Compacted));
    let events = s.events(4).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].r#type, EventType::Delete as i32);
    let (err, _) = s.write(|a| {
        a.compact(&CompactionRequest {
            revision: 4,
            physical: false,
        })
    });
    assert!(matches!(
        err,
        Err(ApplyError::Rejected(EtcdError::Compacted))
    ));
    let (err, _) = s.write(|a| {
        a.compact(&CompactionRequest {
            revision: 99,
            physical: false,
        })
    });
    assert!(matches!(
        err,
        Err(ApplyError::Rejected(EtcdError::FutureRev))
    ));
}

#[test]
fn range_options_follow_etcd() {
    let mut s = Mvcc::new();
    s.put("c", "1"); // 2
    s.put("a", "3"); // 3
    s.put("b", "2"); // 4
    s.put("a", "4"); // 5
    let all = || range_req("\0", "\0");
    assert_eq!(keys(&s.range(all()).unwrap()), vec!["a", "b", "c"]);
    assert_eq!(
        keys(&s.range(range_req("b", "\0")).unwrap()),
        vec!["b", "c"]
    );

    let mut limited = all();
    limited.limit = 2;
    let r = s.range(limited).unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["a".into(), "b".into()], true, 3)
    );

    let sorted = |target: SortTarget, order: SortOrder| {
        let mut req = all();
        req.sort_target = target as i32;
        req.sort_order = order as i32;
        keys(&s.range(req).unwrap())
    };
    assert_eq!(
        sorted(SortTarget::Key, SortOrder::Descend),
        vec!["c", "b", "a"]
    );
    assert_eq!(
        sorted(SortTarget::Value, SortOrder::Ascend),
        vec!["c", "b", "a"]
    );
    // A non-key target without an order sorts ascending.
    assert_eq!(
        sorted(SortTarget::Mod, SortOrder::None),
        vec!["c", "b", "a"]
    );
    assert_eq!(
        sorted(SortTarget::Create, SortOrder::Descend),
        vec!["b", "a", "c"]
    );
    assert_eq!(sorted(SortTarget::Version, SortOrder::Descend)[0], "a");

    let mut filtered = all();
    filtered.min_mod_revision = 4;
    let r = s.range(filtered).unwrap();
    assert_eq!(keys(&r), vec!["a", "b"]);
    assert_eq!(r.count, 3, "count ignores filters, as etcd's does");
    let mut filtered = all();
    filtered.max_create_revision = 2;
    assert_eq!(keys(&s.range(filtered).unwrap()), vec!["c"]);

    let mut keys_only = all();
    keys_only.keys_only = true;
    assert!(
        s.range(keys_only)
            .unwrap()
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty())
    );
    let mut count_only = all();
    count_only.count_only = true;
    let r = s.range(count_only).unwrap();
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 3);
    // range_end not above key: nothing.
    assert!(s.range(range_req("b", "a")).unwrap().kvs.is_empty());
}

#[test]
fn lease_revoke_deletes_attached_keys_in_one_revision() {
    let mut s = store_with_lease(7);
    assert_eq!(s.revision, 1, "a grant writes no key");
    for key in ["x", "y"] {
        s.write(|a| {
            a.put(&PutRequest {
                key: key.into(),
                lease: 7,
                ..Default::default()
            })
            .unwrap()
        });
    }
    s.put("z", "unleased");
    let (_, events) = s.write(|a| a.lease_revoke(&LeaseRevokeRequest { id: 7 }).unwrap());
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.r#type == EventType::Delete as i32));
    assert!(
        events
            .iter()
            .all(|e| e.kv.as_ref().unwrap().mod_revision == s.revision)
    );
    assert!(s.get("x").is_none() && s.get("y").is_none());
    assert!(s.get("z").is_some());
    let (err, _) = s.write(|a| a.lease_revoke(&LeaseRevokeRequest { id: 7 }));
    assert!(matches!(
        err,
        Err(ApplyError::Rejected(EtcdError::LeaseNotFound))
    ));
    let (err, _) = s.write(|a| {
        a.lease_grant(&LeaseGrantRequest { ttl: 10, id: 8 })
            .unwrap();
        a.lease_grant(&LeaseGrantRequest { ttl: 10, id: 8 })
    });
    assert!(matches!(
        err,
        Err(ApplyError::Rejected(EtcdError::LeaseExist))
    ));
}

#[test]
fn watch_events_carry_prev_kv_and_order() {
    let mut s = Mvcc::new();
    s.put("a", "1");
    s.put("a", "2");
    let events = s.events(2).unwrap();
    assert_eq!(events.len(), 2);
    assert!(events[0].prev_kv.is_none());
    assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(events[1].kv.as_ref().unwrap().mod_revision, 3);
}

#[test]
fn a_record_summary_reads_key_and_meta_without_the_value() {
    use super::index::Meta;
    use super::{KIND_DELETE, KIND_PUT, encode_history, record_summary};
    use crate::proto::mvccpb::KeyValue;
    let kv = KeyValue {
        key: b"some/key".to_vec(),
        create_revision: 4,
        mod_revision: 9,
        version: 3,
        value: vec![7; 300],
        lease: -2,
    };
    let record = encode_history(KIND_PUT, &kv);
    let (kind, key, meta) = record_summary(&record).unwrap();
    assert_eq!((kind, key), (KIND_PUT, &b"some/key"[..]));
    assert_eq!(
        meta,
        Meta {
            create_revision: 4,
            version: 3,
            lease: -2
        }
    );
    // A tombstone has a key and a mod revision only.
    let tombstone = KeyValue {
        key: b"k".to_vec(),
        mod_revision: 3,
        ..Default::default()
    };
    let record = encode_history(KIND_DELETE, &tombstone);
    let (kind, key, meta) = record_summary(&record).unwrap();
    assert_eq!((kind, key, meta), (KIND_DELETE, &b"k"[..], Meta::default()));
    assert!(record_summary(&[]).is_err());
    // A key longer than the record, and a field cut short.
    assert!(record_summary(&[KIND_PUT, 0x0a, 0x05, b'a']).is_err());
    assert!(record_summary(&[KIND_PUT, 0x10]).is_err());
}

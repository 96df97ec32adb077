//! Multi-member behaviour of witan through its etcd gRPC API: replication,
//! forwarding, linearizable reads, failover, snapshot install, revision
//! rules, response headers, membership and shutdown.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestCluster, wait_for, wait_until};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use witan_node::proto::etcdserverpb::kv_client::KvClient;
use witan_node::proto::etcdserverpb::request_op::Request as Op;
use witan_node::proto::etcdserverpb::watch_client::WatchClient;
use witan_node::proto::etcdserverpb::watch_request::RequestUnion;
use witan_node::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, MemberListRequest, PutRequest,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, StatusRequest, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use witan_node::proto::mvccpb::KeyValue;

/// Long enough for any member to apply what the leader committed.
const CONVERGE: Duration = Duration::from_secs(15);

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> ResponseHeader {
    kv.put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("put {key}: {e}"))
    .into_inner()
    .header
    .expect("put header")
}

async fn range(kv: &mut KvClient<Channel>, request: RangeRequest) -> RangeResponse {
    kv.range(request)
        .await
        .unwrap_or_else(|e| panic!("range: {e}"))
        .into_inner()
}

/// Reads one key, linearizably or from the member's local state.
async fn get(kv: &mut KvClient<Channel>, key: &str, serializable: bool) -> Option<KeyValue> {
    range(
        kv,
        RangeRequest {
            key: key.into(),
            serializable,
            ..Default::default()
        },
    )
    .await
    .kvs
    .pop()
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn range_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

/// The member's current revision, from its local state.
async fn current_revision(kv: &mut KvClient<Channel>) -> i64 {
    range(
        kv,
        RangeRequest {
            key: b"\0".to_vec(),
            serializable: true,
            count_only: true,
            ..Default::default()
        },
    )
    .await
    .header
    .expect("range header")
    .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_on_leader_replicates_to_every_member() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let written = put(&mut cluster.kv(leader).await, "replicated", "value").await;
    assert!(written.revision > 1);

    for i in 0..cluster.size() {
        let mut kv = cluster.kv(i).await;
        let kv_pair = wait_for(CONVERGE, &format!("member {i} to apply the put"), || {
            let mut kv = kv.clone();
            async move { get(&mut kv, "replicated", true).await }
        })
        .await;
        assert_eq!(kv_pair.value, b"value");
        assert_eq!(kv_pair.mod_revision, written.revision, "member {i}");
        let local_revision = current_revision(&mut kv).await;
        assert_eq!(local_revision, written.revision, "member {i} revision");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_on_follower_is_forwarded_and_read_back_locally() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = cluster.followers().await[0];
    let mut follower_kv = cluster.kv(follower).await;

    for n in 0..10 {
        let value = format!("v{n}");
        let header = put(&mut follower_kv, "forwarded", &value).await;
        assert_eq!(header.member_id, cluster.id(follower));
        assert!(header.revision > 1);
        // Read-your-writes on the member written through, without a barrier.
        let local = get(&mut follower_kv, "forwarded", true)
            .await
            .expect("the follower sees its own write");
        assert_eq!(local.value, value.as_bytes());
        assert_eq!(local.mod_revision, header.revision);

        let on_leader = get(&mut cluster.kv(leader).await, "forwarded", false)
            .await
            .expect("the leader has the write");
        assert_eq!(on_leader.value, value.as_bytes());
        assert_eq!(on_leader.mod_revision, header.revision);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_read_on_another_member_sees_the_latest_write() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.leader().await;
    let mut clients = Vec::new();
    for i in 0..cluster.size() {
        clients.push(cluster.kv(i).await);
    }
    // Every ordered pair of members, writer then reader, several times.
    for n in 0..20 {
        let writer = n % 3;
        let reader = (writer + 1 + n / 3 % 2) % 3;
        assert_ne!(writer, reader);
        let value = format!("value-{n}");
        let header = put(&mut clients[writer], "linearizable", &value).await;
        let read = get(&mut clients[reader], "linearizable", false)
            .await
            .expect("key exists");
        assert_eq!(
            read.value,
            value.as_bytes(),
            "write via {writer}, read via {reader}"
        );
        assert_eq!(read.mod_revision, header.revision);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_keeps_data_and_the_old_leader_catches_up() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let old_leader = cluster.leader().await;
    let mut kv = cluster.kv(old_leader).await;
    for n in 0..10 {
        put(&mut kv, &format!("before/{n}"), &format!("{n}")).await;
    }
    cluster.stop(old_leader).await;

    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    let follower = cluster.followers().await[0];
    put(&mut cluster.kv(new_leader).await, "after", "via-leader").await;
    let newest = put(&mut cluster.kv(follower).await, "after", "via-follower").await;

    for i in cluster.running() {
        let mut kv = cluster.kv(i).await;
        for n in 0..10 {
            let kv_pair = get(&mut kv, &format!("before/{n}"), false)
                .await
                .unwrap_or_else(|| panic!("before/{n} lost on member {i}"));
            assert_eq!(kv_pair.value, format!("{n}").as_bytes());
        }
        let after = get(&mut kv, "after", false).await.expect("after exists");
        assert_eq!(after.value, b"via-follower");
    }

    cluster.restart(old_leader).await;
    let mut kv = cluster.kv(old_leader).await;
    let caught_up = wait_for(CONVERGE, "the old leader to catch up", || {
        let mut kv = kv.clone();
        async move {
            get(&mut kv, "after", true)
                .await
                .filter(|kv| kv.mod_revision == newest.revision)
        }
    })
    .await;
    assert_eq!(caught_up.value, b"via-follower");
    assert_eq!(current_revision(&mut kv).await, newest.revision);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_member_catches_up_by_snapshot() {
    const KEYS: usize = 300;
    let mut cluster = TestCluster::start(3, &["--snapshot-count", "20"]).await;
    let leader = cluster.leader().await;
    let lagging = cluster.followers().await[0];
    let lagging_metrics = cluster.member(lagging).raft.metrics();
    cluster.stop(lagging).await;
    let lagging_last_log = lagging_metrics.borrow().last_log_index.unwrap_or(0);

    let mut kv = cluster.kv(leader).await;
    for n in 0..KEYS {
        put(&mut kv, &format!("snap/{n:04}"), &format!("{n}")).await;
    }
    let leader_metrics = cluster.member(leader).raft.metrics();
    let purged = wait_for(CONVERGE, "the leader to snapshot and purge", || {
        let metrics = leader_metrics.borrow().clone();
        async move {
            let snapshot = metrics.snapshot.map_or(0, |id| id.index);
            let purged = metrics.purged.map_or(0, |id| id.index);
            (snapshot > 0 && purged > lagging_last_log).then_some(purged)
        }
    })
    .await;

    cluster.restart(lagging).await;
    let mut kv = cluster.kv(lagging).await;
    wait_until(CONVERGE, "the restarted member to have every key", || {
        let mut kv = kv.clone();
        async move {
            let resp = range(
                &mut kv,
                RangeRequest {
                    key: b"snap/".to_vec(),
                    range_end: b"snap0".to_vec(),
                    serializable: true,
                    count_only: true,
                    ..Default::default()
                },
            )
            .await;
            resp.count == KEYS as i64
        }
    })
    .await;
    let last = get(&mut kv, &format!("snap/{:04}", KEYS - 1), true)
        .await
        .expect("last key");
    assert_eq!(last.value, format!("{}", KEYS - 1).as_bytes());
    // The entries it missed were purged before it came back, so only a
    // snapshot can have brought them.
    let metrics = cluster.member(lagging).raft.metrics();
    wait_until(
        CONVERGE,
        "the restarted member to report a snapshot",
        || {
            let snapshot = metrics.borrow().snapshot;
            async move { snapshot.is_some_and(|id| id.index >= purged) }
        },
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn txn_and_revision_rules_hold_through_the_cluster() {
    let cluster = TestCluster::start(3, &[]).await;
    let follower = cluster.followers().await[0];
    let mut kv = cluster.kv(follower).await;

    let first = put(&mut kv, "rules/a", "1").await.revision;

    // Two puts in one txn are one revision.
    let txn = kv
        .txn(TxnRequest {
            success: vec![put_op("rules/t1", "x"), put_op("rules/t2", "y")],
            ..Default::default()
        })
        .await
        .expect("txn")
        .into_inner();
    assert!(txn.succeeded);
    let txn_revision = txn.header.expect("txn header").revision;
    assert_eq!(txn_revision, first + 1);
    for key in ["rules/t1", "rules/t2"] {
        let kv_pair = get(&mut kv, key, false).await.expect("txn key");
        assert_eq!(kv_pair.mod_revision, txn_revision, "{key}");
    }

    // Deleting nothing and reading in a txn change nothing.
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: b"rules/absent".to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.deleted, 0);
    assert_eq!(
        deleted.header.expect("delete header").revision,
        txn_revision
    );
    let read_only = kv
        .txn(TxnRequest {
            success: vec![range_op("rules/a")],
            ..Default::default()
        })
        .await
        .expect("read-only txn")
        .into_inner();
    assert_eq!(read_only.header.expect("txn header").revision, txn_revision);
    assert_eq!(current_revision(&mut kv).await, txn_revision);
    let second = put(&mut kv, "rules/a", "2").await.revision;
    assert_eq!(second, txn_revision + 1);

    // History: an older revision still shows the old value.
    let old = range(
        &mut kv,
        RangeRequest {
            key: b"rules/a".to_vec(),
            revision: first,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(old.kvs.first().expect("old version").value, b"1");

    kv.compact(CompactionRequest {
        revision: txn_revision,
        physical: true,
    })
    .await
    .expect("compact");
    for i in 0..cluster.size() {
        let mut kv = cluster.kv(i).await;
        let err = kv
            .range(RangeRequest {
                key: b"rules/a".to_vec(),
                revision: first,
                ..Default::default()
            })
            .await
            .expect_err("reading below the compact revision fails");
        assert_eq!(err.code(), Code::OutOfRange, "member {i}");
        assert_eq!(
            err.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        // The compact revision itself is still readable.
        let at_compact = range(
            &mut kv,
            RangeRequest {
                key: b"rules/a".to_vec(),
                revision: txn_revision,
                ..Default::default()
            },
        )
        .await;
        let at_compact = at_compact
            .kvs
            .first()
            .expect("version at the compact revision");
        assert_eq!(at_compact.value, b"1");
    }

    let err = kv
        .range(RangeRequest {
            key: b"rules/a".to_vec(),
            revision: second + 100,
            ..Default::default()
        })
        .await
        .expect_err("reading a future revision fails");
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_response_header_identifies_cluster_and_member() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.leader().await;
    let mut cluster_ids = BTreeSet::new();
    for i in 0..cluster.size() {
        let member_id = cluster.id(i);
        let status = cluster
            .maintenance(i)
            .await
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let status_header = status.header.expect("status header");
        assert_eq!(status_header.member_id, member_id);

        let members = cluster
            .cluster_client(i)
            .await
            .member_list(MemberListRequest { linearizable: true })
            .await
            .expect("member list")
            .into_inner();
        assert!(members.members.iter().any(|m| m.id == member_id));

        let mut kv = cluster.kv(i).await;
        let key = format!("header/{i}");
        let put_header = put(&mut kv, &key, "v").await;
        let range_header = range(
            &mut kv,
            RangeRequest {
                key: key.clone().into(),
                ..Default::default()
            },
        )
        .await
        .header;
        let txn_header = kv
            .txn(TxnRequest {
                success: vec![put_op(&key, "w")],
                ..Default::default()
            })
            .await
            .expect("txn")
            .into_inner()
            .header;
        let delete_header = kv
            .delete_range(DeleteRangeRequest {
                key: key.clone().into(),
                ..Default::default()
            })
            .await
            .expect("delete")
            .into_inner()
            .header;
        let grant_header = cluster
            .lease(i)
            .await
            .lease_grant(LeaseGrantRequest { ttl: 10, id: 0 })
            .await
            .expect("lease grant")
            .into_inner()
            .header;

        let headers = [
            ("status", Some(status_header)),
            ("member list", members.header),
            ("put", Some(put_header)),
            ("range", range_header),
            ("txn", txn_header),
            ("delete", delete_header),
            ("lease grant", grant_header),
        ];
        for (what, header) in headers {
            let header = header.unwrap_or_else(|| panic!("{what} on member {i}: no header"));
            assert_ne!(header.cluster_id, 0, "{what} on member {i}");
            assert_eq!(header.member_id, member_id, "{what} on member {i}");
            assert!(header.revision > 0, "{what} on member {i}: revision");
            assert!(header.raft_term > 0, "{what} on member {i}: raft term");
            cluster_ids.insert(header.cluster_id);
        }
    }
    assert_eq!(cluster_ids.len(), 1, "one cluster id: {cluster_ids:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_list_shows_every_published_member() {
    let cluster = TestCluster::start(3, &[]).await;
    for i in 0..cluster.size() {
        let client = cluster.cluster_client(i).await;
        let members = wait_for(CONVERGE, "every member to publish", || {
            let mut client = client.clone();
            async move {
                let members = client
                    .member_list(MemberListRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .members;
                let published = members
                    .iter()
                    .all(|m| !m.name.is_empty() && !m.client_ur_ls.is_empty());
                published.then_some(members)
            }
        })
        .await;
        assert_eq!(members.len(), 3, "as seen by member {i}");
        for n in 0..cluster.size() {
            let config = cluster.config(n);
            let listed = members
                .iter()
                .find(|m| m.id == cluster.id(n))
                .unwrap_or_else(|| panic!("member {n} missing from member {i}'s list"));
            assert_eq!(listed.name, format!("n{}", n + 1));
            assert_eq!(listed.peer_ur_ls, config.initial_advertise_peer_urls);
            assert_eq!(listed.client_ur_ls, config.advertise_client_urls);
            assert!(!listed.is_learner);
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_shuts_down_while_a_client_watches() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let member = cluster.followers().await[0];
    let (requests, outbound) = mpsc::channel(1);
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"watched".to_vec(),
                ..Default::default()
            })),
        })
        .await
        .expect("queue the create request");
    let mut responses = WatchClient::new(cluster.channel(member).await)
        .watch(ReceiverStream::new(outbound))
        .await
        .expect("watch")
        .into_inner();
    let created = responses
        .message()
        .await
        .expect("watch stream")
        .expect("created");
    assert!(created.created);

    tokio::time::timeout(Duration::from_secs(10), cluster.stop(member))
        .await
        .expect("shutdown completes with a watch stream open");
    // The client learns that its stream is over.
    let ended = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("the watch stream ends");
    assert!(
        !matches!(ended, Ok(Some(_))),
        "no more responses: {ended:?}"
    );
    drop(requests);
    cluster.shutdown().await;
}

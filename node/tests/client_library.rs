//! witan through a real etcd client library (`etcd-client`), against a
//! three-member cluster: watches, lease keep-alive streams, watch progress
//! and count-only ranges.

mod common;

use std::time::{Duration, Instant};

use common::{TestCluster, wait_until};
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions, WatchResponse, WatchStream,
};

/// Longest wait for one streamed response.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(cluster: &TestCluster, index: usize) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(20));
    Client::connect([cluster.endpoint(index)], Some(options))
        .await
        .unwrap_or_else(|e| panic!("connecting to member {index}: {e}"))
}

async fn next_response(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(STREAM_TIMEOUT, stream.message())
        .await
        .expect("a watch response in time")
        .expect("watch stream healthy")
        .expect("watch stream open")
}

/// Creates a watch on `stream` and returns its id.
async fn expect_created(stream: &mut WatchStream) -> i64 {
    let created = next_response(stream).await;
    assert!(created.created(), "first response creates: {created:?}");
    assert!(!created.canceled(), "{}", created.cancel_reason());
    created.watch_id()
}

/// Puts through `client` and returns the write's revision.
async fn put(client: &mut Client, key: &str, value: &str) -> i64 {
    let resp = client.put(key, value, None).await.expect("put");
    resp.header().expect("put header").revision()
}

/// An event as (type, key, value, mod revision, previous value).
type Seen = (EventType, String, String, i64, Option<String>);

/// Reads responses of watch `id` until `count` events arrived.
async fn collect_events(stream: &mut WatchStream, id: i64, count: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let resp = next_response(stream).await;
        assert_eq!(resp.watch_id(), id);
        assert!(!resp.canceled(), "{}", resp.cancel_reason());
        for event in resp.events() {
            let kv = event.kv().expect("event kv");
            seen.push((
                event.event_type(),
                kv.key_str().expect("utf-8 key").to_string(),
                kv.value_str().expect("utf-8 value").to_string(),
                kv.mod_revision(),
                event
                    .prev_kv()
                    .map(|p| p.value_str().expect("utf-8 value").to_string()),
            ));
        }
    }
    assert_eq!(seen.len(), count, "no extra events: {seen:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_sees_writes_made_through_another_member() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.leader().await;
    let mut watching = connect(&cluster, 0).await;
    let mut writing = connect(&cluster, 1).await;
    let prefix_with_prev = || WatchOptions::new().with_prefix().with_prev_key();

    let mut stream = watching
        .watch("watch/", Some(prefix_with_prev()))
        .await
        .expect("watch");
    let id = expect_created(&mut stream).await;

    let r1 = put(&mut writing, "watch/a", "1").await;
    let r2 = put(&mut writing, "watch/a", "2").await;
    let deleted = writing.delete("watch/a", None).await.expect("delete");
    let r3 = deleted.header().expect("delete header").revision();
    // Revision r3 + 1 is outside the prefix: no event.
    put(&mut writing, "unwatched", "x").await;
    let r5 = put(&mut writing, "watch/b", "3").await;

    let expected: Vec<Seen> = vec![
        (EventType::Put, "watch/a".into(), "1".into(), r1, None),
        (
            EventType::Put,
            "watch/a".into(),
            "2".into(),
            r2,
            Some("1".into()),
        ),
        (
            EventType::Delete,
            "watch/a".into(),
            "".into(),
            r3,
            Some("2".into()),
        ),
        (EventType::Put, "watch/b".into(), "3".into(), r5, None),
    ];
    let live = collect_events(&mut stream, id, 4).await;
    assert_eq!(live, expected);
    assert!(
        live.windows(2).all(|w| w[0].3 < w[1].3),
        "revisions increase"
    );

    // Replaying history from r1 on a third member gives the same events.
    let mut replaying = connect(&cluster, 2).await;
    let mut replay = replaying
        .watch("watch/", Some(prefix_with_prev().with_start_revision(r1)))
        .await
        .expect("replay watch");
    let replay_id = expect_created(&mut replay).await;
    assert_eq!(collect_events(&mut replay, replay_id, 4).await, expected);

    // After a cancel, only the stream's other watch hears anything.
    stream.cancel(id).await.expect("cancel");
    let canceled = next_response(&mut stream).await;
    assert!(canceled.canceled());
    assert_eq!(canceled.watch_id(), id);
    stream
        .watch("other/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("second watch");
    let other_id = expect_created(&mut stream).await;
    put(&mut writing, "watch/c", "after-cancel").await;
    let r_other = put(&mut writing, "other/x", "y").await;
    let events = collect_events(&mut stream, other_id, 1).await;
    assert_eq!(
        events,
        vec![(EventType::Put, "other/x".into(), "y".into(), r_other, None)]
    );
    // A member cannot shut down while a client holds a watch stream open.
    drop((stream, replay));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_ids_are_not_reused_after_cancel() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.leader().await;
    let mut client = connect(&cluster, 0).await;
    let mut stream = client.watch("a", None).await.expect("watch");
    let first = expect_created(&mut stream).await;
    stream.cancel(first).await.expect("cancel");
    assert!(next_response(&mut stream).await.canceled());
    stream.watch("b", None).await.expect("second watch");
    let second = expect_created(&mut stream).await;
    // etcd hands out ids in increasing order and never reuses one on a
    // stream, so a late response for a canceled watch cannot be taken for
    // a newer watch's.
    assert!(
        second > first,
        "second watch got id {second}, first had {first}"
    );
    drop(stream);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_lives_while_kept_alive_and_expires_after() {
    const TTL: i64 = 3;
    let cluster = TestCluster::start(3, &[]).await;
    let followers = cluster.followers().await;
    // Everything goes through followers, so grants, keep-alives and
    // time-to-live are forwarded to the leader.
    let mut client = connect(&cluster, followers[0]).await;
    let mut reader = connect(&cluster, followers[1]).await;

    let lease = client.lease_grant(TTL, None).await.expect("grant");
    assert_eq!(lease.ttl(), TTL);
    let id = lease.id();
    let granted_at = Instant::now();
    client
        .put("leased", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put with lease");

    let (mut keeper, mut responses) = client.lease_keep_alive(id).await.expect("keep-alive");
    let mut renewals = 0;
    while granted_at.elapsed() < Duration::from_secs(2 * TTL as u64) {
        // Pacing only: each round waits for the server's answer.
        tokio::time::sleep(Duration::from_millis(700)).await;
        keeper.keep_alive().await.expect("send keep-alive");
        let resp = tokio::time::timeout(STREAM_TIMEOUT, responses.message())
            .await
            .expect("keep-alive answer in time")
            .expect("keep-alive stream healthy")
            .expect("keep-alive stream open");
        assert_eq!(resp.id(), id);
        assert!(resp.ttl() > 0, "renewal {renewals}: ttl {}", resp.ttl());
        renewals += 1;
    }
    assert!(renewals >= 5, "only {renewals} renewals");
    let alive = reader.get("leased", None).await.expect("get");
    assert_eq!(
        alive.kvs().len(),
        1,
        "the key outlived its TTL while kept alive"
    );
    let ttl = client
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    assert!(ttl.ttl() > 0);
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);

    drop(keeper);
    drop(responses);
    wait_until(Duration::from_secs(15), "the lease to expire", || {
        let mut reader = reader.clone();
        async move {
            let resp = reader
                .get("leased", Some(GetOptions::new().with_count_only()))
                .await
                .expect("get");
            resp.count() == 0
        }
    })
    .await;
    let ttl = client
        .lease_time_to_live(id, None)
        .await
        .expect("time to live of an expired lease");
    assert_eq!(ttl.ttl(), -1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_progress_is_notified_and_answers_requests() {
    let cluster = TestCluster::start(3, &["--watch-progress-notify-interval", "1s"]).await;
    cluster.leader().await;
    let mut client = connect(&cluster, 1).await;
    let written = client.put("progress/a", "1", None).await.expect("put");
    let revision = written.header().expect("header").revision();

    let mut stream = client
        .watch(
            "progress/",
            Some(WatchOptions::new().with_prefix().with_progress_notify()),
        )
        .await
        .expect("watch");
    let id = expect_created(&mut stream).await;

    // With no writes, a notification carries the current revision.
    let notified = next_response(&mut stream).await;
    assert_eq!(notified.watch_id(), id);
    assert!(!notified.created() && !notified.canceled());
    assert!(notified.events().is_empty());
    assert_eq!(notified.header().expect("header").revision(), revision);

    // A requested progress answers for the whole stream (watch id -1);
    // periodic notifications may come first.
    stream.request_progress().await.expect("request progress");
    let deadline = Instant::now() + STREAM_TIMEOUT;
    let answer = loop {
        assert!(Instant::now() < deadline, "no answer to a progress request");
        let resp = next_response(&mut stream).await;
        assert!(resp.events().is_empty(), "no writes happened");
        if resp.watch_id() == -1 {
            break resp;
        }
        assert_eq!(resp.watch_id(), id);
    };
    assert_eq!(answer.header().expect("header").revision(), revision);
    drop(stream);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn count_only_and_keys_only_ranges() {
    // Debian's etcdctl 3.4 has no --count-only, so the library covers it.
    let cluster = TestCluster::start(3, &[]).await;
    let mut writer = connect(&cluster, 0).await;
    for i in 0..5 {
        put(&mut writer, &format!("count/{i}"), "value").await;
    }
    put(&mut writer, "other", "value").await;
    let mut reader = connect(&cluster, 1).await;

    let counted = reader
        .get(
            "count/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count-only get");
    assert_eq!(counted.count(), 5);
    assert!(counted.kvs().is_empty(), "count_only returns no key-values");

    let limited = reader
        .get(
            "count/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(2),
            ),
        )
        .await
        .expect("keys-only get");
    assert_eq!(limited.count(), 5, "count ignores the limit");
    assert!(limited.more());
    let keys: Vec<&str> = limited
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["count/0", "count/1"]);
    assert!(limited.kvs().iter().all(|kv| kv.value().is_empty()));
    cluster.shutdown().await;
}

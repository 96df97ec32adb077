//! Bad input at the edges, against real witan processes: oversized
//! requests, too many or too deeply nested txn operations, ranges whose end
//! is before their key, negative revisions, unknown lease ids, malformed
//! snapshot files for `witan snapshot restore`, and a data dir that runs
//! out of space. Each must get etcd's answer (code and `etcdserver: ...`
//! message, through the etcd-client crate), never a crash or a hang, and
//! must leave the member serving.
//!
//! What `etcdctl.rs` (`request_limits`, the lease section) already covers
//! through etcdctl at the default limits is not repeated: here the limits
//! are set by flag, requests also go through followers, and the answers
//! are checked on the wire.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchResponse, WatchStream,
};
use tonic::Code;
use witan_tests::{Cluster, run_witan};

const TOO_LARGE: &str = "etcdserver: request is too large";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect(c: &Cluster, i: usize) -> Client {
    let url = c.member(i).client_url();
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    Client::connect([url.clone()], Some(options))
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// The gRPC status of a failed call; panics when the call succeeded or
/// failed another way.
fn status<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>) -> (Code, String) {
    match result {
        Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

async fn current_revision(client: &mut Client) -> i64 {
    client
        .get("any", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// A member that is not the leader, so requests through it are forwarded.
/// The next answer on a watch stream, within a bound.
async fn next_watch_answer(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch answer in time")
        .expect("watch stream")
        .expect("a watch response")
}

fn follower(c: &Cluster) -> usize {
    let leader = c.leader();
    (0..c.len()).find(|&i| i != leader).expect("a follower")
}

#[test]
fn oversized_requests_are_refused_on_every_member() {
    const LIMIT_BYTES: usize = 8 * 1024;
    let c = Cluster::start_with(3, &["--max-request-bytes", &LIMIT_BYTES.to_string()]);
    let rt = runtime();
    rt.block_on(async {
        for i in [c.leader(), follower(&c)] {
            let mut client = connect(&c, i).await;
            let before = current_revision(&mut client).await;
            // Just under the limit is fine.
            client
                .put("fits", vec![b'v'; LIMIT_BYTES - 100], None)
                .await
                .expect("a put under --max-request-bytes");
            let written = before + 1;

            // Above it: refused with etcd's error, as a put and inside a txn.
            let put = client.put("big", vec![b'v'; LIMIT_BYTES + 1], None).await;
            assert_eq!(status(put), (Code::InvalidArgument, TOO_LARGE.into()));
            let txn = Txn::new().and_then([TxnOp::put("big", vec![b'v'; LIMIT_BYTES + 1], None)]);
            assert_eq!(
                status(client.txn(txn).await),
                (Code::InvalidArgument, TOO_LARGE.into())
            );

            // Above the gRPC frame limit (the limit plus etcd's 512 KiB of
            // overhead) the server refuses the message before decoding it.
            let huge = client
                .put("huge", vec![b'v'; LIMIT_BYTES + 600 * 1024], None)
                .await;
            let (code, message) = status(huge);
            assert_ne!(code, Code::Ok, "{message}");
            assert_ne!(code, Code::Unavailable, "the member went away: {message}");

            // Nothing of it was written, and the member still serves.
            assert_eq!(current_revision(&mut client).await, written);
            let big = client.get("big", None).await.expect("get");
            assert_eq!(big.count(), 0);
            let huge = client.get("huge", None).await.expect("get");
            assert_eq!(huge.count(), 0);
        }
    });
}

/// `n` puts of distinct keys.
fn puts(prefix: &str, n: usize) -> Vec<TxnOp> {
    (0..n)
        .map(|k| TxnOp::put(format!("{prefix}/{k}"), "v", None))
        .collect()
}

#[test]
fn txn_operation_limits_count_every_branch_and_nesting() {
    let c = Cluster::start_with(3, &["--max-txn-ops", "4"]);
    let rt = runtime();
    rt.block_on(async {
        let mut client = connect(&c, follower(&c)).await;
        let before = current_revision(&mut client).await;
        let compares = |n: usize| -> Vec<Compare> {
            (0..n)
                .map(|k| Compare::version(format!("c/{k}"), CompareOp::Equal, 0))
                .collect()
        };
        let refused = [
            Txn::new().when(compares(5)),
            Txn::new().and_then(puts("s", 5)),
            Txn::new().or_else(puts("f", 5)),
            // Nested: the inner txn's own branch is over the limit.
            Txn::new().and_then([TxnOp::txn(Txn::new().and_then(puts("n", 5)))]),
        ];
        for txn in refused {
            assert_eq!(
                status(client.txn(txn).await),
                (Code::InvalidArgument, TOO_MANY_OPS.into())
            );
        }
        // Four everywhere is within the limit.
        let ok = Txn::new()
            .when(compares(4))
            .and_then(puts("s", 4))
            .or_else(puts("f", 4));
        assert!(
            client
                .txn(ok)
                .await
                .expect("a txn at the limit")
                .succeeded()
        );
        assert_eq!(current_revision(&mut client).await, before + 1);

        // Nesting is bounded by protobuf decoding's recursion limit (100
        // messages, so about 49 txn levels): a txn nested 40 deep must be
        // checked and answered promptly (its validation once took time
        // exponential in the depth, pinning a server thread for good).
        let nest = |depth: usize| {
            let mut txn = Txn::new().and_then([TxnOp::put("deep", "v", None)]);
            for _ in 0..depth {
                txn = Txn::new().and_then([TxnOp::txn(txn)]);
            }
            txn
        };
        let started = Instant::now();
        let resp = client.txn(nest(40)).await.expect("a txn nested 40 deep");
        assert!(resp.succeeded());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a 40-deep txn took {:?}",
            started.elapsed()
        );
        // Deeper than the decoder allows: refused as gRPC refuses a message
        // it cannot unmarshal (Internal), and the member still serves.
        let (code, message) = status(client.txn(nest(64)).await);
        assert_eq!(code, Code::Internal, "{message}");
        assert!(message.ends_with("recursion limit reached"), "{message}");
        let deep = client.get("deep", None).await.expect("get");
        assert_eq!(deep.kvs()[0].value(), b"v");
    });
}

#[test]
fn a_range_end_before_the_key_selects_nothing() {
    let c = Cluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let mut client = connect(&c, follower(&c)).await;
        for k in ["a", "b", "c"] {
            client.put(k, "v", None).await.expect("put");
        }
        let revision = current_revision(&mut client).await;
        // As etcd: an empty answer, not an error, for a reversed or empty
        // interval, linearizable or serializable.
        for end in ["a", "b"] {
            for serializable in [false, true] {
                let mut options = GetOptions::new().with_range(end);
                if serializable {
                    options = options.with_serializable();
                }
                let got = client.get("b", Some(options)).await.expect("get");
                assert_eq!((got.count(), got.kvs().len()), (0, 0), "end {end}");
            }
        }
        // A delete of a reversed interval deletes nothing and makes no
        // revision.
        let deleted = client
            .delete("c", Some(etcd_client::DeleteOptions::new().with_range("b")))
            .await
            .expect("delete");
        assert_eq!(deleted.deleted(), 0);
        assert_eq!(current_revision(&mut client).await, revision);
        assert_eq!(client.get("c", None).await.expect("get").count(), 1);

        // A watch on one is refused as etcd refuses it: created and
        // cancelled at once, "mvcc: watcher range is empty".
        let mut stream = client
            .watch("b", Some(WatchOptions::new().with_range("a")))
            .await
            .expect("watch");
        let resp = next_watch_answer(&mut stream).await;
        assert!(resp.created() && resp.canceled(), "{resp:?}");
        assert_eq!(resp.cancel_reason(), "mvcc: watcher range is empty");
    });
}

#[test]
fn negative_revisions_get_etcds_answers() {
    let c = Cluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let mut client = connect(&c, follower(&c)).await;
        client.put("k", "1", None).await.expect("put");
        client.put("k", "2", None).await.expect("put");
        let revision = current_revision(&mut client).await;
        // Range: a revision <= 0 means the latest, as in etcd.
        for rev in [-1, -5, i64::MIN] {
            let got = client
                .get("k", Some(GetOptions::new().with_revision(rev)))
                .await
                .expect("get at a negative revision");
            assert_eq!(got.kvs()[0].value(), b"2", "revision {rev}");
            assert_eq!(got.header().expect("header").revision(), revision);
        }
        // Compact: at or below the compact revision is "compacted".
        for rev in [-1, i64::MIN] {
            assert_eq!(
                status(client.compact(rev, None).await),
                (Code::OutOfRange, COMPACTED.into()),
                "compact {rev}"
            );
        }
        // Watch: refused at creation as compacted; the stream stays usable.
        let mut stream = client
            .watch("k", Some(WatchOptions::new().with_start_revision(-1)))
            .await
            .expect("watch");
        let resp = next_watch_answer(&mut stream).await;
        assert!(resp.created() && resp.canceled(), "{resp:?}");
        assert_eq!(resp.cancel_reason(), COMPACTED);
        stream
            .watch("k", Some(WatchOptions::new().with_start_revision(revision)))
            .await
            .expect("a second watch on the same stream");
        let resp = next_watch_answer(&mut stream).await;
        assert!(resp.created() && !resp.canceled(), "{resp:?}");
        // The history from `revision` arrives with or after the creation.
        let mut events = resp.events().to_vec();
        while events.is_empty() {
            let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("events in time")
                .expect("watch stream")
                .expect("a watch response");
            events = resp.events().to_vec();
        }
        assert_eq!(events[0].kv().expect("kv").mod_revision(), revision);
    });
}

#[test]
fn unknown_lease_ids_get_etcds_answers_on_every_member() {
    let c = Cluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        for i in [c.leader(), follower(&c)] {
            let mut client = connect(&c, i).await;
            let before = current_revision(&mut client).await;
            for id in [0x1234_i64, -7, i64::MAX] {
                let put = client
                    .put("leased", "v", Some(PutOptions::new().with_lease(id)))
                    .await;
                assert_eq!(
                    status(put),
                    (Code::NotFound, LEASE_NOT_FOUND.into()),
                    "put with lease {id:x}"
                );
                assert_eq!(
                    status(client.lease_revoke(id).await),
                    (Code::NotFound, LEASE_NOT_FOUND.into()),
                    "revoke {id:x}"
                );
                // Time-to-live: no error, TTL -1 (etcd's "already expired").
                let ttl = client
                    .lease_time_to_live(id, None)
                    .await
                    .expect("time-to-live of an unknown lease");
                assert_eq!((ttl.id(), ttl.ttl()), (id, -1));
                // Keep-alive: an answer with TTL 0, which the client turns
                // into "lease not found" (not a gRPC error).
                match client.lease_keep_alive(id).await {
                    Err(etcd_client::Error::LeaseKeepAliveError(e)) => {
                        assert_eq!(e, "lease not found")
                    }
                    other => panic!("keep-alive of {id:x}: {other:?}"),
                }
            }
            assert_eq!(current_revision(&mut client).await, before);
        }
        // A TTL above etcd's maximum is refused.
        let mut client = connect(&c, 0).await;
        assert_eq!(
            status(client.lease_grant(9_000_000_001, None).await),
            (Code::OutOfRange, "etcdserver: too large lease TTL".into())
        );
    });
}

/// A valid snapshot file of a one-member cluster holding five keys.
fn valid_snapshot(dir: &Path) -> PathBuf {
    let c = Cluster::start(1);
    for k in 0..5 {
        c.ctl(&["put", &format!("k{k}"), "v"]);
    }
    let path = dir.join("good.db");
    let saved = c.ctl(&["snapshot", "save", &path.display().to_string()]);
    assert!(saved.contains("Snapshot saved"), "{saved}");
    path
}

/// Files that must not restore: (name, content).
fn malformed_snapshots(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut flipped = good.to_vec();
    flipped[good.len() / 2] ^= 0x40;
    let mut bad_trailer = good.to_vec();
    let last = bad_trailer.len() - 1;
    bad_trailer[last] ^= 1;
    // An etcd (bbolt) snapshot's framing: 512-byte blocks and a SHA-256
    // trailer, but not witan's magic.
    let mut etcd_like = vec![0u8; 4096];
    etcd_like[..4].copy_from_slice(&[0xed, 0xda, 0x0c, 0xed]);
    let mut huge_length = good.to_vec();
    huge_length[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    vec![
        ("empty.db", Vec::new()),
        ("text.db", b"this is not a snapshot\n".to_vec()),
        ("truncated.db", good[..good.len() - 100].to_vec()),
        ("header-only.db", good[..24].to_vec()),
        ("extended.db", [good, &[0u8; 512]].concat()),
        ("flipped.db", flipped),
        ("bad-trailer.db", bad_trailer),
        ("etcd-like.db", etcd_like),
        ("huge-length.db", huge_length),
    ]
}

#[test]
fn malformed_snapshot_files_are_refused_and_restore_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good_path = valid_snapshot(dir.path());
    let good = std::fs::read(&good_path).expect("read the snapshot");
    for (name, content) in malformed_snapshots(&good) {
        let file = dir.path().join(name);
        std::fs::write(&file, &content).expect("write a malformed file");
        let file_arg = file.display().to_string();

        let (ok, stdout, stderr) = run_witan(&["snapshot", "status", &file_arg]);
        assert!(!ok, "status accepted {name}:\n{stdout}");
        assert!(
            stderr.starts_with("Error: snapshot file "),
            "{name}: {stderr}"
        );

        let parent = tempfile::tempdir().expect("temp dir");
        let data_dir = parent.path().join("restored");
        let (ok, stdout, stderr) = run_witan(&[
            "snapshot",
            "restore",
            &file_arg,
            "--data-dir",
            &data_dir.display().to_string(),
        ]);
        assert!(!ok, "restore accepted {name}:\n{stdout}");
        // One clear line naming the file and what is wrong with it.
        assert!(
            stderr.starts_with("Error: snapshot file "),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(name), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        // Nothing was written: no data dir, no staging leftovers.
        let left: Vec<_> = std::fs::read_dir(parent.path())
            .expect("read the parent")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{name} left {left:?}");
    }
    // The same command restores the good file.
    let parent = tempfile::tempdir().expect("temp dir");
    let data_dir = parent.path().join("restored");
    let (ok, stdout, stderr) = run_witan(&[
        "snapshot",
        "restore",
        &good_path.display().to_string(),
        "--data-dir",
        &data_dir.display().to_string(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(data_dir.join("member").is_dir());
}

/// A tmpfs mounted on a directory, unmounted (lazily, in case a process
/// still holds a file) when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount tmpfs on {} (the test needs root): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_fails_writes_loses_nothing_and_recovers_once_freed() {
    const VALUE_BYTES: usize = 64 * 1024;
    let mounted: Mutex<Option<Tmpfs>> = Mutex::new(None);
    // The member's data dir is a 16 MiB tmpfs, mounted before it starts.
    let mut c = Cluster::start_prepared(1, &[], |m| {
        *mounted.lock().expect("lock") = Some(Tmpfs::mount(m.data_dir(), "16m"));
    });
    let tmpfs = mounted.lock().expect("lock").take().expect("mounted");
    let rt = runtime();
    let value = vec![b'x'; VALUE_BYTES];

    // Write until the disk is full; remember every acknowledged key.
    let (acked, refusal) = rt.block_on(async {
        let mut client = connect(&c, 0).await;
        let mut acked = Vec::new();
        // 16 MiB cannot hold 400 values of 64 KiB.
        for n in 0..400 {
            let key = format!("fill/{n:04}");
            match client.put(key.clone(), value.clone(), None).await {
                Ok(_) => acked.push(key),
                Err(e) => return (acked, e),
            }
        }
        panic!("400 puts of {VALUE_BYTES} bytes fit on a 16 MiB tmpfs");
    });
    eprintln!("{} puts acknowledged, then: {refusal}", acked.len());
    assert!(
        acked.len() >= 10,
        "only {} puts fit: {refusal}",
        acked.len()
    );

    // The member stops with the cause, as etcd does: an error exit, not a
    // panic, and no process left answering with timeouts.
    let exit = c.wait_exit(0, Duration::from_secs(30));
    assert!(exit.ends_with("exit status: 1"), "{exit}");
    let log = std::fs::read_to_string(c.member(0).log_path()).expect("member log");
    assert!(!log.contains("panicked"), "the member panicked:\n{log}");
    assert!(
        log.contains("No space left on device"),
        "the log does not say why:\n{log}"
    );

    // Once space is freed, the restarted member serves writes again and
    // still holds every acknowledged write.
    tmpfs.resize("256m");
    c.restart(0);
    rt.block_on(async {
        let mut client = connect(&c, 0).await;
        client
            .put("after/full", "ok", None)
            .await
            .expect("a write once space is freed");
        for key in &acked {
            let got = client.get(key.as_str(), None).await.expect("get");
            assert_eq!(got.count(), 1, "acknowledged {key} is gone");
            assert_eq!(got.kvs()[0].value().len(), VALUE_BYTES, "{key}");
        }
    });
    drop(c);
    drop(tmpfs);
}

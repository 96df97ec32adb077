//! The space quota, alarms and defragmentation through the real `etcdctl`
//! (Debian's 3.4) against real 3-member witan clusters: a write over
//! `--quota-backend-bytes` raises NOSPACE, the whole cluster then refuses
//! what would store more, and etcd's recovery procedure (delete, compact,
//! defrag, disarm) makes it writable again.

use std::time::Duration;

use witan_tests::{Cluster, json, poll_until, revision_of, run_bounded};

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// Small enough that a few dozen large values cross it in seconds.
const QUOTA_BYTES: u64 = 4_000_000;
/// Values big enough to fill the quota quickly, small enough for one
/// request (etcd's 1.5 MiB limit).
const VALUE_BYTES: usize = 100_000;
/// A short Raft log: the file also holds the log, which is purged only up
/// to a snapshot, so the space the big puts took comes back soon.
const SNAPSHOT_COUNT: &str = "10";

/// `endpoint status -w json` of member `i`: its database file size.
fn db_size_bytes(c: &Cluster, i: usize) -> u64 {
    c.status(i)["dbSize"].as_u64().expect("dbSize")
}

fn quota_cluster() -> Cluster {
    Cluster::start_with(
        3,
        &[
            "--quota-backend-bytes",
            &QUOTA_BYTES.to_string(),
            "--snapshot-count",
            SNAPSHOT_COUNT,
        ],
    )
}

/// Puts big values through member 0 until one fails; that failure.
fn fill_until_no_space(c: &Cluster) -> (usize, witan_tests::CtlOutput) {
    let value = "x".repeat(VALUE_BYTES);
    // Twice the quota in values is far more than ever fits.
    let bound = 2 * QUOTA_BYTES as usize / VALUE_BYTES;
    for n in 0..bound {
        let key = format!("big/{n:03}");
        let out = c.run(&c.endpoint(0), &["put", &key], Some(&value));
        if !out.success() {
            return (n, out);
        }
    }
    panic!("{bound} puts of {VALUE_BYTES} bytes never exceeded a {QUOTA_BYTES}-byte quota");
}

#[test]
fn nospace_stops_writes_cluster_wide_until_compact_defrag_disarm() {
    let c = quota_cluster();
    let (stored, refused) = fill_until_no_space(&c);
    assert!(stored > 0, "the first put already failed:\n{refused}");
    assert!(refused.stderr.contains(NO_SPACE), "{refused}");

    // The member that refused raised NOSPACE for itself, for all to see.
    let id0 = c.member_id(0);
    let alarms = c.ctl(&["alarm", "list"]);
    assert!(
        alarms.contains(&format!("memberID:{id0} alarm:NOSPACE")),
        "{alarms}"
    );
    let errors = c.status(0)["errors"].clone();
    assert_eq!(
        errors,
        serde_json::json!([format!("memberID:{id0} alarm:NOSPACE")])
    );

    // Every member refuses what would store more, including members whose
    // own file is under the quota: the alarm is applied everywhere.
    for i in 0..c.len() {
        let put = c.expect_err(c.run(&c.endpoint(i), &["put", "small", "x"], None));
        assert!(put.stderr.contains(NO_SPACE), "{put}");
        let lease = c.expect_err(c.run(&c.endpoint(i), &["lease", "grant", "60"], None));
        assert!(lease.stderr.contains(NO_SPACE), "{lease}");
        let txn = c.expect_err(c.run(&c.endpoint(i), &["txn"], Some("\nput txn-key v\n\n\n")));
        assert!(txn.stderr.contains(NO_SPACE), "{txn}");
    }
    // A txn that only deletes stores nothing more: it goes through.
    assert_eq!(
        c.ctl_stdin(&["txn"], "\ndel nothing\n\n\n"),
        "SUCCESS\n\n0\n"
    );
    // Reads and deletes keep working.
    let first = c.ctl(&["get", "big/000", "--print-value-only"]);
    assert_eq!(first.trim_end().len(), VALUE_BYTES);
    let del = c.ctl(&["del", "big/", "--prefix", "-w", "json"]);
    assert_eq!(json(&del)["deleted"].as_u64(), Some(stored as u64));
    let revision = revision_of(&del);
    assert_eq!(
        c.ctl(&["compaction", &revision.to_string()]),
        format!("compacted revision {revision}\n")
    );

    // Defragment until every file is well under the quota. The big values
    // also sit in the Raft log until a snapshot lets it be purged, so keep
    // the log moving with deletes of nothing (allowed under NOSPACE).
    poll_until(
        Duration::from_secs(60),
        "every member's file to shrink under the quota",
        || {
            let out = c.ctl(&["defrag", "--cluster"]);
            let sizes: Vec<u64> = (0..c.len()).map(|i| db_size_bytes(&c, i)).collect();
            if sizes.iter().all(|&s| s < QUOTA_BYTES / 4) {
                return Ok(());
            }
            for _ in 0..5 {
                c.ctl(&["del", "nothing"]);
            }
            Err(format!("sizes {sizes:?}; {out}"))
        },
    );
    // Every file is under the quota now, so no member refuses on its own
    // size: the refusal left is the replicated alarm's, in apply.
    for i in 0..c.len() {
        let put = c.expect_err(c.run(&c.endpoint(i), &["put", "small", "x"], None));
        assert!(put.stderr.contains(NO_SPACE), "{put}");
    }

    let disarmed = c.ctl(&["alarm", "disarm"]);
    assert!(
        disarmed.contains(&format!("memberID:{id0} alarm:NOSPACE")),
        "{disarmed}"
    );
    assert_eq!(c.ctl(&["alarm", "list"]), "");
    for i in 0..c.len() {
        assert_eq!(c.ctl_on(i, &["put", "small", "x"]), "OK\n");
    }
    c.ctl(&["lease", "grant", "60"]);
    assert!(c.status(0)["errors"].is_null(), "{}", c.status(0));
}

#[test]
fn alarms_survive_a_restart_and_bring_back_the_refusal() {
    let mut c = quota_cluster();
    let (_, refused) = fill_until_no_space(&c);
    assert!(refused.stderr.contains(NO_SPACE), "{refused}");
    let id0 = c.member_id(0);
    // Member 2 restarts from its own data dir: the alarm is in its tables.
    c.kill(2);
    c.restart(2);
    let alarms = c.ctl_on(2, &["alarm", "list"]);
    assert!(
        alarms.contains(&format!("memberID:{id0} alarm:NOSPACE")),
        "{alarms}"
    );
    let put = c.expect_err(c.run(&c.endpoint(2), &["put", "small", "x"], None));
    assert!(put.stderr.contains(NO_SPACE), "{put}");
}

#[test]
fn defrag_shrinks_the_database_file() {
    let c = Cluster::start_with(3, &["--snapshot-count", SNAPSHOT_COUNT]);
    let value = "y".repeat(VALUE_BYTES);
    for n in 0..30 {
        c.ctl_stdin(&["put", &format!("frag/{n:02}")], &value);
    }
    let full_bytes = db_size_bytes(&c, 1);
    assert!(full_bytes > 30 * VALUE_BYTES as u64, "{full_bytes} bytes");
    let del = c.ctl(&["del", "frag/", "--prefix", "-w", "json"]);
    let revision = revision_of(&del).to_string();
    c.ctl(&["compaction", &revision]);
    let shrunk_bytes = poll_until(
        Duration::from_secs(60),
        "member 1's file to shrink by defrag",
        || {
            let out = c.ctl_on(1, &["defrag"]);
            assert!(out.contains("Finished defragmenting etcd member"), "{out}");
            let now = db_size_bytes(&c, 1);
            if now * 4 < full_bytes {
                return Ok(now);
            }
            // Let a snapshot purge the log that still holds the values.
            for _ in 0..5 {
                c.ctl(&["del", "nothing"]);
            }
            Err(format!("{full_bytes} -> {now} bytes"))
        },
    );
    let status = c.status(1);
    let in_use = status["dbSizeInUse"].as_u64().expect("dbSizeInUse");
    assert!(
        in_use <= shrunk_bytes,
        "in use {in_use} > file {shrunk_bytes}"
    );
    // The member still serves after defragmentation.
    c.ctl_on(1, &["put", "after", "defrag"]);
    assert_eq!(
        c.ctl_on(1, &["get", "after", "--print-value-only"]),
        "defrag\n"
    );
}

#[test]
fn status_reports_the_quota_storage_version_and_learner_flag() {
    let c = Cluster::start_with(1, &["--quota-backend-bytes", "123456789"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let status = rt.block_on(async {
        let mut client = etcd_client::Client::connect([c.member(0).client_url()], None)
            .await
            .expect("connect");
        client.status().await.expect("status")
    });
    assert_eq!(status.db_size_quota(), 123_456_789);
    assert_eq!(status.storage_version(), "3.6.0");
    assert!(!status.is_learner());
    assert!(status.errors().is_empty());
    assert!(status.raft_used_db_size() > 0);
    assert!(status.raft_used_db_size() <= status.db_size());

    // The configured quota is what dashboards compare the size with.
    let mut curl = std::process::Command::new("curl");
    curl.args(["-s", "-f", "--max-time", "8"]).arg(format!(
        "http://127.0.0.1:{}/metrics",
        c.member(0).client_port
    ));
    let scraped = run_bounded(curl, None, Duration::from_secs(10));
    assert!(
        scraped
            .stdout
            .lines()
            .any(|l| l == "etcd_server_quota_backend_bytes 123456789"),
        "{}",
        scraped.stdout
    );
}

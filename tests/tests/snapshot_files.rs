//! Raft snapshots as files in `<data-dir>/member/snap/` on real 3-member
//! witan clusters, driven by Debian's `etcdctl`: a follower that missed
//! more than the leader keeps in its log catches up from the leader's
//! snapshot file, sent in several chunks, and keeps it as its own.

use std::path::PathBuf;
use std::time::Duration;

use witan_tests::{Cluster, json, poll_until};

/// Forty values of this size make a snapshot larger than openraft's
/// 3 MiB chunk, so it crosses the peer link in more than one chunk.
const VALUE_BYTES: usize = 128 * 1024;
const KEYS: usize = 40;
/// openraft's default `snapshot_max_chunk_size`.
const CHUNK_BYTES: u64 = 3 * 1024 * 1024;

fn snap_dir(c: &Cluster, i: usize) -> PathBuf {
    c.member(i).data_dir().join("member").join("snap")
}

/// (name, size in bytes) of every file in member `i`'s snap dir.
fn snap_files(c: &Cluster, i: usize) -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir(snap_dir(c, i)) else {
        return Vec::new();
    };
    let mut files: Vec<(String, u64)> = dir
        .filter_map(Result::ok)
        .map(|e| {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect();
    files.sort();
    files
}

/// `endpoint hashkv` of member `i`.
fn hash_kv(c: &Cluster, i: usize) -> u64 {
    let out = json(&c.ctl_on(i, &["endpoint", "hashkv", "-w", "json"]));
    out[0]["HashKV"]["hash"].as_u64().expect("hash")
}

#[test]
fn a_follower_catches_up_from_a_snapshot_file_sent_in_chunks() {
    let mut c = Cluster::start_with(3, &["--snapshot-count", "10"]);
    c.kill(2);
    let up = format!("{},{}", c.endpoint(0), c.endpoint(1));
    let value = "v".repeat(VALUE_BYTES);
    for n in 0..KEYS {
        let key = format!("big/{n:02}");
        c.expect_ok(c.run(&up, &["put", &key], Some(&value)));
    }
    // The members that saw every write keep their snapshot as one file.
    let leader_files = poll_until(Duration::from_secs(30), "a snapshot file", || {
        let files = snap_files(&c, 0);
        match files.as_slice() {
            [(name, size)] if name.ends_with(".snap") && *size > CHUNK_BYTES => Ok(files),
            _ => Err(format!("member 0's snap dir holds {files:?}")),
        }
    });

    c.spawn(2);
    c.wait_healthy(&[2], Duration::from_secs(60));
    let log = std::fs::read_to_string(c.member(2).log_path()).expect("member log");
    assert!(
        log.contains("installed snapshot"),
        "{}",
        c.member(2).log_tail(40)
    );
    // Member 2 answers from its own store, with the same history.
    let count = c.ctl_on(
        2,
        &[
            "get",
            "big/",
            "--prefix",
            "--keys-only",
            "--consistency=s",
            "-w",
            "json",
        ],
    );
    assert_eq!(json(&count)["count"], KEYS, "{count}");
    poll_until(Duration::from_secs(30), "equal HashKV", || {
        let hashes: Vec<u64> = (0..3).map(|i| hash_kv(&c, i)).collect();
        if hashes.iter().all(|h| *h == hashes[0]) {
            Ok(())
        } else {
            Err(format!("{hashes:?}"))
        }
    });
    // The received snapshot is member 2's own now: one complete file, no
    // temporary left, bigger than a chunk (so it came in several).
    let files = snap_files(&c, 2);
    assert!(
        matches!(files.as_slice(), [(name, size)] if name.ends_with(".snap") && *size > CHUNK_BYTES),
        "member 2's snap dir holds {files:?} (member 0's: {leader_files:?})"
    );

    // It restarts from its data dir, snapshot file included.
    c.kill(2);
    c.restart(2);
    let count = c.ctl_on(
        2,
        &[
            "get",
            "big/",
            "--prefix",
            "--keys-only",
            "--consistency=s",
            "-w",
            "json",
        ],
    );
    assert_eq!(json(&count)["count"], KEYS, "{count}");
}

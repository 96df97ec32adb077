//! `witan snapshot status` and `witan snapshot restore` against a snapshot
//! saved by the real `etcdctl` from a real 3-member cluster, and a new
//! 3-member cluster started from the restored data dirs.

use serde_json::Value;
use witan_tests::{Cluster, json, restore_into, revision_of, run_witan as witan};

/// Every key (base64 key, value, revisions, version, lease) and the header
/// revision, read linearizably from member `i`.
fn everything(c: &Cluster, i: usize) -> (Vec<Value>, i64) {
    let out = c.ctl_on(i, &["get", "", "--prefix", "-w", "json"]);
    let v = json(&out);
    let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
    (kvs, revision_of(&out))
}

#[test]
fn a_restored_snapshot_starts_a_new_cluster_with_the_same_data() {
    let c = Cluster::start(3);
    let lease_out = c.ctl(&["lease", "grant", "600", "-w", "json"]);
    let lease_id = json(&lease_out)["ID"].as_i64().expect("lease ID");
    let lease_hex = format!("{lease_id:x}");
    let mut revs = Vec::new();
    for (k, v) in [("r/a", "1"), ("r/b", "2"), ("r/a", "3"), ("r/c", "4")] {
        revs.push(revision_of(&c.ctl(&["put", k, v, "-w", "json"])));
    }
    c.ctl(&["del", "r/b"]);
    revs.push(revision_of(&c.ctl(&[
        "put", "r/l", "leased", "--lease", &lease_hex, "-w", "json",
    ])));
    let last = revision_of(&c.ctl(&["put", "r/c", "5", "-w", "json"]));
    c.wait_applied(1, last);
    let (original, at) = everything(&c, 1);
    assert_eq!(at, last);
    assert_eq!(original.len(), 3, "{original:?}");
    let original_cluster = c.status(1)["header"]["cluster_id"].clone();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.db");
    let path_s = path.display().to_string();
    c.expect_success(c.run(&c.endpoint(1), &["snapshot", "save", &path_s], None));
    drop(c);

    // status, both formats.
    let (ok, stdout, stderr) = witan(&["snapshot", "status", &path_s, "-w", "json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let st = json(&stdout);
    assert_eq!(st["revision"].as_i64(), Some(last), "{st}");
    assert_eq!(st["totalKey"].as_u64(), Some(3), "{st}");
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(st["totalSize"].as_u64(), Some(size), "{st}");
    assert_eq!(st["hashAlgorithm"], "sha256");
    assert_eq!(st["hash"].as_str().map(str::len), Some(64), "{st}");
    let (ok, stdout, _) = witan(&["snapshot", "status", &path_s]);
    assert!(ok);
    assert!(stdout.contains(&format!("revision: {last}\n")), "{stdout}");
    assert!(stdout.contains("total keys: 3\n"), "{stdout}");

    // A truncated copy is refused and leaves nothing behind.
    let raw = std::fs::read(&path).unwrap();
    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &raw[..raw.len() - 100]).unwrap();
    let target = dir.path().join("never");
    let (ok, stdout, stderr) = witan(&[
        "snapshot",
        "restore",
        &truncated.display().to_string(),
        "--data-dir",
        &target.display().to_string(),
    ]);
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!(!target.exists());
    let (ok, _, stderr) = witan(&["snapshot", "status", &truncated.display().to_string()]);
    assert!(!ok);
    assert!(stderr.starts_with("Error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // A new cluster (new ports, new token) from the restored data dirs.
    let n = Cluster::start_prepared(3, &[], |m| restore_into(&path, m));
    let new_cluster = n.status(0)["header"]["cluster_id"].clone();
    assert_ne!(new_cluster, original_cluster);
    for i in 0..n.len() {
        n.wait_applied(i, last);
        let (kvs, at) = everything(&n, i);
        assert_eq!(at, last, "member {i}");
        assert_eq!(kvs, original, "member {i}");
    }
    // History came along: an older revision still reads.
    let older = revs[0].to_string();
    let out = n.ctl(&["get", "r/a", "--rev", &older, "--print-value-only"]);
    assert_eq!(out, "1\n");
    // The lease too.
    let leases = n.ctl(&["lease", "list"]);
    assert!(leases.contains(&lease_hex), "{leases}");
    // The next write continues from the snapshot's revision.
    let next = revision_of(&n.ctl(&["put", "r/new", "x", "-w", "json"]));
    assert_eq!(next, last + 1);
    for i in 0..n.len() {
        n.wait_applied(i, next);
    }
}

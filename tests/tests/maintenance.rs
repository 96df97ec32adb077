//! Maintenance RPCs through the real `etcdctl` (Debian's 3.4) against a
//! real 3-member witan cluster: `snapshot save` and `endpoint hashkv`.

use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use witan_node::proto::mvccpb::KeyValue;
use witan_node::storage::backup;
use witan_tests::{Cluster, json, poll_until, revision_of};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

/// One `endpoint hashkv -w json` entry: (endpoint, header revision, hash,
/// compact revision).
fn hashkv_entries(out: &str) -> Vec<(String, i64, u64, i64)> {
    json(out)
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {out}"))
        .iter()
        .map(|e| {
            let h = &e["HashKV"];
            (
                e["Endpoint"].as_str().unwrap_or("").to_string(),
                h["header"]["revision"].as_i64().unwrap_or(0),
                h["hash"].as_u64().unwrap_or(0),
                h["compact_revision"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// `endpoint hashkv --cluster -w json [extra]` polled until all three
/// members answer at `revision`; their entries.
fn hashkv_at(c: &Cluster, revision: i64, extra: &[&str]) -> Vec<(String, i64, u64, i64)> {
    let mut args = vec!["endpoint", "hashkv", "--cluster", "-w", "json"];
    args.extend_from_slice(extra);
    poll_until(
        Duration::from_secs(20),
        "every member answering hashkv at the last revision",
        || {
            let out = c.run(&c.endpoint(0), &args, None);
            if !out.success() {
                return Err(out.to_string());
            }
            let entries = hashkv_entries(&out.stdout);
            if entries.len() == 3 && entries.iter().all(|e| e.1 == revision) {
                Ok(entries)
            } else {
                Err(out.stdout)
            }
        },
    )
}

#[test]
fn snapshot_save_writes_a_verifiable_witan_snapshot() {
    let c = Cluster::start(3);
    let mut last = 0;
    for (k, v) in [("snap/a", "1"), ("snap/b", "2"), ("snap/a", "3")] {
        last = revision_of(&c.ctl(&["put", k, v, "-w", "json"]));
    }
    c.ctl(&["del", "snap/b"]);
    last += 1;
    c.wait_applied(1, last);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.db");
    let path_s = path.display().to_string();
    let out = c.expect_success(c.run(&c.endpoint(1), &["snapshot", "save", &path_s], None));
    assert!(
        out.stdout.contains(&format!("Snapshot saved at {path_s}")),
        "{out}"
    );

    let raw = std::fs::read(&path).expect("snapshot file");
    assert_eq!(raw.len() % 512, 32, "size {}", raw.len());
    let (content, trailer) = raw.split_at(raw.len() - 32);
    assert_eq!(Sha256::digest(content).as_slice(), trailer);

    let file = backup::decode(&raw).expect("decoding the saved snapshot");
    assert_eq!(file.image.revision, last);
    assert_eq!(file.etcd_version, "3.6.5");
    assert_eq!(file.member_name, "node-2");
    assert_eq!(file.member_id, c.member_id(1));
    assert!(file.applied_index > 0);
    // Every version of both keys, deletion included, in revision order:
    // the last one of a key says whether it is live.
    let versions: Vec<(String, String, bool)> = file
        .image
        .records
        .iter()
        .map(|(_, _, record)| {
            let (kind, rest) = record.split_first().expect("a kind byte");
            let kv = KeyValue::decode(rest).expect("key-value");
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                *kind == 1,
            )
        })
        .filter(|(k, _, _)| k.starts_with("snap/"))
        .collect();
    assert_eq!(versions.len(), 4, "{versions:?}");
    let mut live = std::collections::BTreeMap::new();
    for (key, value, deleted) in versions {
        if deleted {
            live.remove(&key);
        } else {
            live.insert(key, value);
        }
    }
    assert_eq!(
        live.into_iter().collect::<Vec<_>>(),
        vec![("snap/a".to_string(), "3".to_string())]
    );

    // Several members in --endpoints is refused by etcdctl itself.
    c.ctl_err(&["snapshot", "save", &path_s]);
}

#[test]
fn hashkv_agrees_across_members() {
    let c = Cluster::start(3);
    let mut revs = Vec::new();
    for (k, v) in [("h/a", "1"), ("h/b", "2"), ("h/a", "3"), ("h/c", "4")] {
        revs.push(revision_of(&c.ctl(&["put", k, v, "-w", "json"])));
    }
    let last = *revs.last().unwrap();

    let current = hashkv_at(&c, last, &[]);
    let hash = current[0].2;
    assert!(
        current.iter().all(|e| e.2 == hash && e.3 == -1),
        "{current:?}"
    );

    let earlier = revs[1].to_string();
    let at = hashkv_at(&c, last, &["--rev", &earlier]);
    let old_hash = at[0].2;
    assert!(at.iter().all(|e| e.2 == old_hash), "{at:?}");
    assert_ne!(old_hash, hash);
    // --rev of the current revision is the current hash.
    let at_last = hashkv_at(&c, last, &["--rev", &last.to_string()]);
    assert!(at_last.iter().all(|e| e.2 == hash), "{at_last:?}");

    // A later write changes the current hash but not the earlier one.
    let next = revision_of(&c.ctl(&["put", "h/a", "5", "-w", "json"]));
    let after = hashkv_at(&c, next, &[]);
    assert!(after.iter().all(|e| e.2 == after[0].2), "{after:?}");
    assert_ne!(after[0].2, hash);
    let again = hashkv_at(&c, next, &["--rev", &earlier]);
    assert!(again.iter().all(|e| e.2 == old_hash), "{again:?}");

    // A future revision fails as Range does.
    let future = (next + 10).to_string();
    let err = c.expect_err(c.run(
        &c.endpoint(0),
        &["endpoint", "hashkv", "--rev", &future],
        None,
    ));
    assert!(err.stderr.contains(FUTURE), "{err}");
}

#[test]
fn hashkv_below_the_compaction_fails() {
    let c = Cluster::start(3);
    let r1 = revision_of(&c.ctl(&["put", "hc/k", "1", "-w", "json"]));
    let r2 = revision_of(&c.ctl(&["put", "hc/k", "2", "-w", "json"]));
    let r3 = revision_of(&c.ctl(&["put", "hc/k", "3", "-w", "json"]));
    let r2s = r2.to_string();
    assert_eq!(
        c.ctl(&["compaction", &r2s]),
        format!("compacted revision {r2}\n")
    );
    for i in 0..c.len() {
        c.wait_applied(i, r3);
    }
    // Every member has applied the compaction once it answers Range with
    // `compacted` below it.
    let r1s = r1.to_string();
    for i in 0..c.len() {
        poll_until(Duration::from_secs(20), "compaction applied", || {
            let out = c.run(
                &c.endpoint(i),
                &["get", "hc/k", "--rev", &r1s, "--consistency", "s"],
                None,
            );
            if out.stderr.contains(COMPACTED) {
                Ok(())
            } else {
                Err(out.to_string())
            }
        });
    }
    let err = c.expect_err(c.run(&c.endpoint(0), &["endpoint", "hashkv", "--rev", &r1s], None));
    assert!(err.stderr.contains(COMPACTED), "{err}");

    // At and above the compaction revision every member agrees, and reports it.
    let at = hashkv_at(&c, r3, &["--rev", &r2s]);
    assert!(at.iter().all(|e| e.2 == at[0].2 && e.3 == r2), "{at:?}");
}

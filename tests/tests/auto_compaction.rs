//! etcd's automatic compaction (`--auto-compaction-mode revision`) on a
//! real 3-member cluster, observed through the real `etcdctl`.

use std::time::Duration;

use witan_tests::{Cluster, poll_until, revision_of};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

#[test]
fn revision_mode_keeps_the_last_revisions() {
    let c = Cluster::start_with(
        3,
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "5",
        ],
    );
    let first = revision_of(&c.ctl(&["put", "k", "v0", "-w", "json"]));
    for i in 1..20 {
        assert_eq!(c.ctl(&["put", "k", &format!("v{i}")]), "OK\n");
    }
    let current = revision_of(&c.ctl(&["get", "k", "-w", "json"]));
    assert!(current >= first + 19, "{first} .. {current}");
    let early = first.to_string();
    let recent = (current - 2).to_string();

    poll_until(
        Duration::from_secs(15),
        "the leader to compact away early revisions",
        || {
            let out = c.run(&c.endpoints(), &["get", "k", "--rev", &early], None);
            if out.success() {
                return Err(format!("--rev {early} still readable"));
            }
            if !out.stderr.contains(COMPACTED) {
                return Err(format!("unexpected failure: {out}"));
            }
            Ok(())
        },
    );
    // The last revisions are kept: a read at current-2 still works, on
    // every member.
    for i in 0..c.len() {
        assert_eq!(
            c.ctl_on(i, &["get", "k", "--rev", &recent, "--print-value-only"]),
            "v17\n"
        );
    }
}

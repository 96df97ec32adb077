//! Membership changes with real processes and Debian's etcdctl: adding a
//! learner, starting it with `--initial-cluster-state existing`, promoting
//! it; removing a follower and the leader; updating peer URLs; and witan's
//! joint voter change (3 -> 5 -> 3 voters) under a steady stream of writes.

use std::time::Duration;

use serde_json::Value;
use witan_tests::{Cluster, json, poll_until};

/// How long a removed member may take to notice and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn member_list(cluster: &Cluster, endpoint: &str) -> Vec<Value> {
    let out = cluster.ctl_on_endpoints(endpoint, &["member", "list", "-w", "json"]);
    json(&out)["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

#[test]
fn a_learner_is_added_started_caught_up_and_promoted() {
    let mut cluster = Cluster::start(3);
    for i in 0..20 {
        cluster.ctl(&["put", &format!("k{i:02}"), &format!("v{i}")]);
    }
    let new = cluster.prepare_joining("node-4");
    let peer_url = cluster.member(new).peer_url();
    let voters = cluster.endpoint(0);

    let added = json(&cluster.ctl_on_endpoints(
        &voters,
        &[
            "member",
            "add",
            "node-4",
            "--learner",
            &format!("--peer-urls={peer_url}"),
            "-w",
            "json",
        ],
    ));
    let id = added["member"]["ID"].as_u64().expect("added member id");
    assert_eq!(added["member"]["isLearner"], Value::Bool(true));

    // Not started yet: listed with an empty name, and not promotable.
    let listed = member_list(&cluster, &voters);
    let learner = listed
        .iter()
        .find(|m| m["ID"].as_u64() == Some(id))
        .expect("the learner is listed");
    assert_eq!(learner["name"].as_str().unwrap_or(""), "");
    assert_eq!(learner["isLearner"], Value::Bool(true));
    let early = cluster.expect_err(cluster.run(&voters, &["member", "promote", &hex(id)], None));
    assert!(
        early
            .error_line()
            .contains("can only promote a learner member which is in sync with leader"),
        "{early}"
    );

    // Started, it catches up and serves serializable reads only.
    cluster.spawn(new);
    let learner_endpoint = cluster.endpoint(new);
    poll_until(Duration::from_secs(30), "the learner has the data", || {
        let out = cluster.run(
            &learner_endpoint,
            &["get", "k19", "--consistency=s", "--print-value-only"],
            None,
        );
        if out.success() && out.stdout.trim() == "v19" {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
    let refused = cluster.expect_err(cluster.run(&learner_endpoint, &["put", "x", "y"], None));
    assert!(
        refused
            .error_line()
            .contains("etcdserver: rpc not supported for learner"),
        "{refused}"
    );

    let promoted = poll_until(Duration::from_secs(30), "the promotion", || {
        let out = cluster.run(&voters, &["member", "promote", &hex(id)], None);
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(out.to_string())
        }
    });
    assert!(promoted.contains("promoted"), "{promoted}");

    // A voter now: it published its name, and it takes writes.
    poll_until(Duration::from_secs(20), "the new member's name", || {
        let listed = member_list(&cluster, &voters);
        let member = listed.iter().find(|m| m["ID"].as_u64() == Some(id));
        match member {
            Some(m) if m["name"] == "node-4" && m["isLearner"] != Value::Bool(true) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(member_list(&cluster, &voters).len(), 4);
    cluster.ctl_on(new, &["put", "from-new", "yes"]);
    assert_eq!(
        cluster
            .ctl_on(0, &["get", "from-new", "--print-value-only"])
            .trim(),
        "yes"
    );
}

#[test]
fn a_follower_and_then_the_leader_are_removed_and_exit() {
    let mut cluster = Cluster::start(3);
    cluster.ctl(&["put", "before", "1"]);
    let leader = cluster.leader();
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let follower_id = cluster.member_id(follower);

    let out = cluster.ctl_on(leader, &["member", "remove", &hex(follower_id)]);
    assert!(out.contains("removed"), "{out}");
    cluster.wait_exit(follower, EXIT_TIMEOUT);
    let listed = member_list(&cluster, &cluster.endpoint(leader));
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|m| m["ID"].as_u64() != Some(follower_id)));

    // Now the leader removes itself: it steps down and exits, and the last
    // member leads alone.
    let leader_id = cluster.member_id(leader);
    let last = (0..3)
        .find(|&i| i != leader && i != follower)
        .expect("one left");
    let out = cluster.ctl_on(leader, &["member", "remove", &hex(leader_id)]);
    assert!(out.contains("removed"), "{out}");
    cluster.wait_exit(leader, EXIT_TIMEOUT);
    poll_until(
        Duration::from_secs(30),
        "the last member to take writes",
        || {
            let out = cluster.run(&cluster.endpoint(last), &["put", "after", "2"], None);
            if out.success() {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    );
    let listed = member_list(&cluster, &cluster.endpoint(last));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        cluster
            .ctl_on(last, &["get", "before", "--print-value-only"])
            .trim(),
        "1"
    );
}

#[test]
fn member_update_changes_peer_urls_and_refuses_bad_ones() {
    let cluster = Cluster::start(3);
    // A follower moves, and etcdctl talks to the leader: were the leader
    // itself to move, followers could no longer reach it at its listed URL
    // (as in etcd, the member must be restarted on the new URL).
    let leader = cluster.leader();
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let other = (0..3)
        .find(|&i| i != leader && i != follower)
        .expect("a third");
    let id = cluster.member_id(follower);
    let original = cluster.member(follower).peer_url();
    let moved = "http://127.0.0.1:1";
    let at_leader = cluster.endpoint(leader);
    cluster.ctl_on_endpoints(
        &at_leader,
        &[
            "member",
            "update",
            &hex(id),
            &format!("--peer-urls={moved}"),
        ],
    );
    let listed = member_list(&cluster, &at_leader);
    let member = listed
        .iter()
        .find(|m| m["ID"].as_u64() == Some(id))
        .expect("updated member listed");
    assert_eq!(member["peerURLs"], serde_json::json!([moved]));

    // Another member's URL is taken; an unknown member is not found.
    let taken = cluster.member(other).peer_url();
    let out = cluster.expect_err(cluster.run(
        &at_leader,
        &[
            "member",
            "update",
            &hex(id),
            &format!("--peer-urls={taken}"),
        ],
        None,
    ));
    assert!(
        out.error_line()
            .contains("etcdserver: Peer URLs already exists"),
        "{out}"
    );
    let out = cluster.expect_err(cluster.run(&at_leader, &["member", "remove", "abcdef"], None));
    assert!(
        out.error_line().contains("etcdserver: member not found"),
        "{out}"
    );

    cluster.ctl_on_endpoints(
        &at_leader,
        &[
            "member",
            "update",
            &hex(id),
            &format!("--peer-urls={original}"),
        ],
    );
    cluster.ctl_on_endpoints(&at_leader, &["put", "still", "works"]);
}

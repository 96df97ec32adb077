//! Leadership transfer with real processes: `etcdctl move-leader`, its
//! refusals, a leader that hands over on SIGTERM, and what a new leader
//! does with the leases it inherits.

use std::time::Duration;

use witan_tests::{Cluster, poll_until, revision_of};

#[test]
fn move_leader_hands_leadership_to_the_chosen_member() {
    let cluster = Cluster::start(3);
    cluster.ctl(&["put", "k", "before"]);
    let leader = cluster.leader();
    let target = (0..3).find(|&i| i != leader).expect("a follower");
    let target_id = cluster.member_id(target);

    let out = cluster.ctl(&["move-leader", &format!("{target_id:x}")]);
    assert!(out.contains("Leadership transferred"), "{out}");
    assert_eq!(cluster.leader(), target);
    for i in 0..3 {
        assert_eq!(cluster.status(i)["leader"].as_u64(), Some(target_id));
    }
    // The cluster keeps its data and takes writes under the new leader.
    cluster.ctl(&["put", "k", "after"]);
    assert_eq!(
        cluster
            .ctl_on(leader, &["get", "k", "--print-value-only"])
            .trim(),
        "after"
    );
}

#[test]
fn move_leader_refuses_a_non_member_and_a_follower_refuses_to_move() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader();
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let out = cluster.expect_err(cluster.run(
        &cluster.endpoint(leader),
        &["move-leader", "abcdef"],
        None,
    ));
    assert!(
        out.error_line()
            .contains("etcdserver: bad leader transferee"),
        "{out}"
    );
    // etcdctl finds the leader itself; asked directly, a follower refuses.
    let out = cluster.expect_err(cluster.run(
        &cluster.endpoint(follower),
        &["move-leader", &format!("{:x}", cluster.member_id(leader))],
        None,
    ));
    assert!(
        out.to_string().contains("no leader endpoint given")
            || out.error_line().contains("etcdserver: not leader"),
        "{out}"
    );
}

#[test]
fn a_leader_hands_over_before_it_exits_on_sigterm() {
    let mut cluster = Cluster::start(3);
    cluster.ctl(&["put", "k", "v"]);
    let leader = cluster.leader();
    cluster.terminate(leader);
    let exit = cluster.wait_exit(leader, Duration::from_secs(20));
    assert!(exit.contains("exit status: 0"), "{exit}");
    let log = std::fs::read_to_string(cluster.member(leader).log_path()).expect("leader log");
    assert!(
        log.contains("leadership transferred"),
        "the leader did not hand over:\n{}",
        cluster.logs()
    );
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader);
    cluster.ctl(&["put", "k", "after"]);
}

/// Raft term and leader id as member `i` reports them.
fn term_and_leader(cluster: &Cluster, i: usize) -> (u64, u64) {
    let status = cluster.status(i);
    let term = status["header"]["raft_term"].as_u64().expect("raft_term");
    (term, status["leader"].as_u64().expect("leader"))
}

/// How long the follower stays frozen: several election timeouts (the
/// suite runs with 500 ms), so its election timer has long run out.
const PAUSE: Duration = Duration::from_millis(2_000);

#[test]
fn a_follower_back_from_a_pause_does_not_unseat_the_leader() {
    // Without PreVote the resumed follower, having missed every heartbeat,
    // would campaign at a higher term and depose a healthy leader.
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let before = term_and_leader(&cluster, leader);
    cluster.pause(follower);
    for i in 0..10 {
        cluster.ctl_on(leader, &["put", &format!("during/{i}"), "x"]);
    }
    let revision = revision_of(&cluster.ctl_on(leader, &["get", "during/9", "-w", "json"]));
    // The fault is the length of the pause, not a wait for something.
    std::thread::sleep(PAUSE);
    cluster.resume(follower);
    cluster.wait_applied(follower, revision);
    // The follower caught up without an election: same term, same leader,
    // as every member reports it.
    for i in 0..3 {
        assert_eq!(
            term_and_leader(&cluster, i),
            before,
            "member {i}\n{}",
            cluster.logs()
        );
    }
}

/// Remaining seconds of lease `id`, as member `i` answers `lease timetolive`
/// ("lease ID granted with TTL(Ns), remaining(Ms)").
fn remaining_secs(cluster: &Cluster, i: usize, id: &str) -> Result<i64, String> {
    let out = cluster.ctl_on(i, &["lease", "timetolive", id]);
    out.rsplit_once("remaining(")
        .and_then(|(_, rest)| rest.strip_suffix("s)\n"))
        .and_then(|secs| secs.parse().ok())
        .ok_or_else(|| format!("unexpected timetolive output {out:?}"))
}

#[test]
fn a_new_leader_restarts_lease_clocks_then_expires_leases_itself() {
    // Keep-alives reach only the leader and are not replicated, so a new
    // leader cannot know how recently a lease was renewed: like etcd, it
    // gives every lease its full TTL again, then expires it on its own.
    let cluster = Cluster::start(3);
    let granted = cluster.ctl(&["lease", "grant", "6"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected lease grant output {granted:?}"))
        .to_string();
    cluster.ctl(&["put", "leased", "v", "--lease", &id]);
    let leader = cluster.leader();
    // Let the clock run down (the lease's own time is the fault here).
    poll_until(
        Duration::from_secs(20),
        "the lease to run down",
        || match remaining_secs(&cluster, leader, &id)? {
            secs if secs <= 3 => Ok(()),
            secs => Err(format!("{secs}s remaining")),
        },
    );
    let target = (0..3).find(|&i| i != leader).expect("a follower");
    let out = cluster.ctl(&["move-leader", &format!("{:x}", cluster.member_id(target))]);
    assert!(out.contains("Leadership transferred"), "{out}");
    assert_eq!(cluster.leader(), target);
    let restarted = remaining_secs(&cluster, target, &id).expect("remaining TTL");
    assert!(
        restarted >= 4,
        "the new leader kept the old clock: {restarted}s remaining"
    );
    // Nobody keeps it alive: the new leader revokes it, key and all.
    poll_until(Duration::from_secs(30), "the lease to expire", || {
        let out = cluster.ctl_on(target, &["get", "leased", "--print-value-only"]);
        if out.trim().is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {out:?}"))
        }
    });
}

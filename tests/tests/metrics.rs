//! etcd's Prometheus metrics on the client port's `/metrics`, scraped with
//! curl from every member of a real 3-member cluster.

use std::process::Command;
use std::time::Duration;

use witan_tests::{Cluster, poll_until, run_bounded};

/// How long a stream's end may take to show in the metrics.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Every etcd metric witan exports (see docs/metrics.md).
const NAMES: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_is_learner",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_server_quota_backend_bytes",
    "etcd_disk_wal_fsync_duration_seconds",
    "etcd_disk_backend_commit_duration_seconds",
    "process_resident_memory_bytes",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    "grpc_server_handling_seconds",
];

/// `curl -s http://127.0.0.1:<port>/metrics`.
fn scrape(port: u16) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "8", "-f"])
        .arg(format!("http://127.0.0.1:{port}/metrics"));
    let out = run_bounded(cmd, None, Duration::from_secs(10));
    if !out.status.is_some_and(|s| s.success()) {
        return Err(format!("curl failed: {:?} {}", out.status, out.stderr));
    }
    Ok(out.stdout)
}

/// The value of an unlabelled sample `name`.
fn sample(text: &str, name: &str) -> Result<f64, String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .ok_or_else(|| format!("no sample {name}"))?;
    line.trim()
        .parse()
        .map_err(|e| format!("{name} = {line:?}: {e}"))
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn labelled(text: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((set, value)) = rest.split_once("} ") else {
            continue;
        };
        // No label value here contains `,`, so splitting on it is exact.
        let mut got: Vec<String> = set.split(',').map(str::to_string).collect();
        got.sort();
        if got == want {
            return value.trim().parse().map_err(|e| format!("{line:?}: {e}"));
        }
    }
    Err(format!("no sample {name}{labels:?}"))
}

/// One gRPC method's go-grpc-prometheus series, read from a scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Calls {
    started: f64,
    received: f64,
    sent: f64,
    handled: f64,
    handling_count: f64,
}

fn calls(text: &str, grpc_type: &str, service: &str, method: &str, code: &str) -> Calls {
    let labels = [
        ("grpc_type", grpc_type),
        ("grpc_service", service),
        ("grpc_method", method),
    ];
    let get = |name: &str, labels: &[(&str, &str)]| {
        labelled(text, name, labels).unwrap_or_else(|e| panic!("{e} in:\n{text}"))
    };
    let mut with_code = labels.to_vec();
    with_code.push(("grpc_code", code));
    Calls {
        started: get("grpc_server_started_total", &labels),
        received: get("grpc_server_msg_received_total", &labels),
        sent: get("grpc_server_msg_sent_total", &labels),
        handled: get("grpc_server_handled_total", &with_code),
        handling_count: get("grpc_server_handling_seconds_count", &labels),
    }
}

impl std::ops::Sub for Calls {
    type Output = Calls;

    fn sub(self, before: Calls) -> Calls {
        Calls {
            started: self.started - before.started,
            received: self.received - before.received,
            sent: self.sent - before.sent,
            handled: self.handled - before.handled,
            handling_count: self.handling_count - before.handling_count,
        }
    }
}

#[test]
fn every_member_serves_etcds_metrics() {
    let cluster = Cluster::start(3);
    for i in 0..5 {
        cluster.ctl(&["put", &format!("k{i}"), "v"]);
    }
    let leader = cluster.leader();

    // Followers apply a moment after the leader answers; poll until every
    // member shows the writes.
    let texts: Vec<String> = cluster
        .members()
        .iter()
        .map(|member| {
            poll_until(Duration::from_secs(20), "metrics on every member", || {
                let text = scrape(member.client_port)?;
                if sample(&text, "etcd_server_proposals_applied_total")? < 6.0 {
                    return Err("writes not applied yet".into());
                }
                Ok(text)
            })
        })
        .collect();

    let mut leaders = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let name = &cluster.member(i).name;
        for metric in NAMES {
            assert!(
                text.contains(&format!("# TYPE {metric} ")),
                "{name}: {metric} missing from:\n{text}"
            );
        }
        let get = |metric: &str| sample(text, metric).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(get("etcd_server_has_leader"), 1.0, "{name}");
        assert_eq!(get("etcd_server_is_learner"), 0.0, "{name}");
        if get("etcd_server_is_leader") == 1.0 {
            leaders.push(i);
        }
        assert!(
            get("etcd_server_leader_changes_seen_total") >= 1.0,
            "{name}"
        );
        let committed = get("etcd_server_proposals_committed_total");
        let applied = get("etcd_server_proposals_applied_total");
        assert!(
            applied > 0.0 && committed >= applied,
            "{name}: {committed} {applied}"
        );
        assert!(get("etcd_server_proposals_pending") >= 0.0, "{name}");
        assert_eq!(get("etcd_server_proposals_failed_total"), 0.0, "{name}");
        assert!(get("etcd_mvcc_db_total_size_in_bytes") > 0.0, "{name}");
        assert!(
            get("etcd_mvcc_db_total_size_in_use_in_bytes") > 0.0,
            "{name}"
        );
        assert_eq!(
            get("etcd_server_quota_backend_bytes"),
            2.0 * 1024.0 * 1024.0 * 1024.0,
            "{name}"
        );
        assert!(
            get("etcd_disk_wal_fsync_duration_seconds_count") > 0.0,
            "{name}"
        );
        assert!(
            get("etcd_disk_backend_commit_duration_seconds_count") > 0.0,
            "{name}"
        );
        assert!(
            text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}"),
            "{name}"
        );
        assert!(get("process_resident_memory_bytes") > 0.0, "{name}");
    }
    assert_eq!(leaders, vec![leader], "exactly the leader says is_leader");
}

/// go-grpc-prometheus' series, as etcd exports them, for unary calls that
/// succeed and fail (a trailers-only error), a bidi stream the client
/// abandons and a server stream; counted from a scrape before and after.
#[test]
fn grpc_calls_are_counted_as_go_grpc_prometheus_counts_them() {
    let c = Cluster::start(1);
    let port = c.member(0).client_port;
    let before = scrape(port).expect("scrape");
    // Every series exists before its first call, as after go's Register.
    assert_eq!(
        labelled(
            &before,
            "grpc_server_handled_total",
            &[
                ("grpc_type", "unary"),
                ("grpc_service", "etcdserverpb.Cluster"),
                ("grpc_method", "MemberPromote"),
                ("grpc_code", "Unavailable"),
            ],
        ),
        Ok(0.0)
    );
    let put = |t: &str| calls(t, "unary", "etcdserverpb.KV", "Put", "OK");
    let range = |t: &str| calls(t, "unary", "etcdserverpb.KV", "Range", "OK");
    let revoke = |t: &str| calls(t, "unary", "etcdserverpb.Lease", "LeaseRevoke", "NotFound");
    let watch = |t: &str| calls(t, "bidi_stream", "etcdserverpb.Watch", "Watch", "Canceled");
    let snapshot = |t: &str| {
        calls(
            t,
            "server_stream",
            "etcdserverpb.Maintenance",
            "Snapshot",
            "OK",
        )
    };

    for _ in 0..2 {
        c.ctl(&["put", "a", "b"]);
    }
    for _ in 0..3 {
        c.ctl(&["get", "a"]);
    }
    let out = c.ctl_err(&["lease", "revoke", "1234abcd"]);
    assert!(
        out.error_line().contains("requested lease not found"),
        "{out}"
    );

    // A watch that sees one event, then its client goes away.
    let mut watcher = c.watch(&["w"]);
    poll_until(SETTLE_TIMEOUT, "the watch to be created", || {
        let d = watch(&scrape(port)?) - watch(&before);
        (d.started == 1.0 && d.sent == 1.0)
            .then_some(())
            .ok_or(format!("{d:?}"))
    });
    c.ctl(&["put", "w", "x"]);
    watcher.wait_line(0, "x", Duration::from_secs(10));
    watcher.kill();

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("snap.db").display().to_string();
    c.expect_success(c.run(&c.endpoint(0), &["snapshot", "save", &path], None));

    let after = poll_until(SETTLE_TIMEOUT, "the watch to be handled", || {
        let text = scrape(port)?;
        let d = watch(&text) - watch(&before);
        (d.handled == 1.0).then_some(text).ok_or(format!("{d:?}"))
    });
    let one_each = |n: f64| Calls {
        started: n,
        received: n,
        sent: n,
        handled: n,
        handling_count: n,
    };
    // Two puts, and the one the watch saw.
    assert_eq!(put(&after) - put(&before), one_each(3.0));
    assert_eq!(range(&after) - range(&before), one_each(3.0));
    // A failed unary call sends no message.
    assert_eq!(
        revoke(&after) - revoke(&before),
        Calls {
            sent: 0.0,
            ..one_each(1.0)
        }
    );
    // Each message of a stream counts: the create request; the created
    // response and the event.
    assert_eq!(
        watch(&after) - watch(&before),
        Calls {
            received: 1.0,
            sent: 2.0,
            ..one_each(1.0)
        }
    );
    let snap = snapshot(&after) - snapshot(&before);
    assert_eq!(
        (
            snap.started,
            snap.received,
            snap.handled,
            snap.handling_count
        ),
        (1.0, 1.0, 1.0, 1.0),
        "{snap:?}"
    );
    assert!(snap.sent >= 2.0, "the snapshot comes in chunks: {snap:?}");
}

/// `etcd_network_peer_round_trip_time_seconds{To}`: the leader times its
/// heartbeats to each follower, labelled with the follower's id in hex.
#[test]
fn the_leader_reports_round_trips_to_each_peer() {
    let c = Cluster::start(3);
    let leader = c.leader();
    let peers: Vec<String> = (0..c.len())
        .filter(|&i| i != leader)
        .map(|i| format!("{:x}", c.member_id(i)))
        .collect();
    let port = c.member(leader).client_port;
    let text = poll_until(SETTLE_TIMEOUT, "round trips to both peers", || {
        let text = scrape(port)?;
        for to in &peers {
            let count = labelled(
                &text,
                "etcd_network_peer_round_trip_time_seconds_count",
                &[("To", to)],
            )?;
            if count < 1.0 {
                return Err(format!("no round trip to {to} yet"));
            }
        }
        Ok(text)
    });
    for to in &peers {
        // etcd's buckets: 0.1ms doubling, 16 of them.
        for le in ["0.0001", "3.2768", "+Inf"] {
            labelled(
                &text,
                "etcd_network_peer_round_trip_time_seconds_bucket",
                &[("To", to), ("le", le)],
            )
            .unwrap_or_else(|e| panic!("{e} in:\n{text}"));
        }
        let sum = labelled(
            &text,
            "etcd_network_peer_round_trip_time_seconds_sum",
            &[("To", to)],
        )
        .expect("sum");
        assert!(sum > 0.0, "{to}: {sum}");
    }
}

/// The leader sends its log appends to each follower on one long-lived
/// stream (as etcd's peer transport keeps a stream per peer), not one call
/// per append: 30 writes later it has opened no new stream to either
/// follower (a few, should appends time out on a loaded machine: a timed
/// out append's stream is dropped, lest its late reply answer the next).
#[test]
fn the_leader_appends_to_each_peer_on_one_stream() {
    let c = Cluster::start(3);
    let leader = c.leader();
    let port = c.member(leader).client_port;
    let followers: Vec<String> = (0..c.len())
        .filter(|&i| i != leader)
        .map(|i| format!("{:x}", c.member_id(i)))
        .collect();
    let streams = |text: &str, to: &str| {
        labelled(
            text,
            "witan_network_peer_append_streams_opened_total",
            &[("To", to)],
        )
    };
    let before = poll_until(SETTLE_TIMEOUT, "a stream to each follower", || {
        let text = scrape(port)?;
        for to in &followers {
            if streams(&text, to)? < 1.0 {
                return Err(format!("no stream to {to} yet"));
            }
        }
        Ok(text)
    });
    for n in 0..30 {
        c.ctl(&["put", &format!("key-{n}"), "value"]);
        // A linearizable read: the leader confirms its leadership with a
        // round of heartbeats, which takes the same streams.
        c.ctl(&["get", &format!("key-{n}")]);
    }
    let after = scrape(port).expect("scrape");
    let committed = |text: &str| sample(text, "etcd_server_proposals_committed_total").unwrap();
    assert!(committed(&after) - committed(&before) >= 30.0, "{after}");
    for to in &followers {
        let opened = streams(&after, to).unwrap() - streams(&before, to).unwrap();
        assert!(
            opened <= 3.0,
            "{opened} new streams to {to} for 30 writes and 30 linearizable reads"
        );
    }
}

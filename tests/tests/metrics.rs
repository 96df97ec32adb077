//! etcd's Prometheus metrics on the client port's `/metrics`, scraped with
//! curl from every member of a real 3-member cluster.

use std::process::Command;
use std::time::Duration;

use witan_tests::{Cluster, poll_until, run_bounded};

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

//! etcd's Prometheus metrics, served as text on the client port's
//! `/metrics` (see docs/metrics.md). Each member owns its own registry, so
//! members in one process (tests) never share counters.
//!
//! Counters and histograms are updated where things happen (log flusher,
//! apply, committer, a leader watch task); gauges that mirror Raft state
//! are set from an [`Observed`] snapshot taken at scrape time.

pub mod grpc;

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder, exponential_buckets,
};
use tokio::sync::watch;

use grpc::GrpcMetrics;

use crate::raft::types::{NodeId, Raft};

/// etcd's bucket layout for disk latencies: 1ms doubling, 14 buckets
/// (up to ~8.2s), then +Inf.
pub fn disk_duration_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 14).expect("valid bucket layout")
}

/// etcd's bucket layout for peer round trips: 0.1ms doubling, 16 buckets
/// (up to ~3.3s), then +Inf.
pub fn peer_round_trip_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.0, 16).expect("valid bucket layout")
}

/// What the scrape-time gauges report, read from the member when scraped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub has_leader: bool,
    pub is_leader: bool,
    pub is_learner: bool,
    /// Raft log index of the last entry (etcd: the committed index).
    pub committed_index: u64,
    /// Raft log index of the last applied entry.
    pub applied_index: u64,
    /// Size of the database file in bytes.
    pub db_size_bytes: u64,
    /// Bytes of the database file in allocated pages.
    pub db_size_in_use_bytes: u64,
    /// The configured space quota (0 when turned off).
    pub quota_backend_bytes: u64,
}

/// One member's metrics and the registry they are exposed from.
pub struct Metrics {
    registry: Registry,
    has_leader: IntGauge,
    is_leader: IntGauge,
    is_learner: IntGauge,
    proposals_committed: IntGauge,
    proposals_applied: IntGauge,
    db_total_size: IntGauge,
    db_total_size_in_use: IntGauge,
    quota_backend_bytes: IntGauge,
    /// Leaders this member has seen come in (etcd counts the first, too).
    pub leader_changes: IntCounter,
    /// Client requests in batches being committed right now.
    pub proposals_pending: IntGauge,
    /// Client requests whose batch failed to commit.
    pub proposals_failed: IntCounter,
    /// Time of one durable commit (fsync) of the Raft log.
    pub wal_fsync: Histogram,
    /// Time of one apply transaction's commit.
    pub backend_commit: Histogram,
    /// Round trip of one heartbeat to a peer, labelled `To` (the peer's id
    /// in hex, as etcd writes member ids).
    pub peer_round_trip_time: HistogramVec,
    /// Append streams this member opened to each peer (`To`, hex): one
    /// carries every log append to that peer until it breaks.
    pub peer_append_streams: IntCounterVec,
    /// go-grpc-prometheus' server metrics, fed by the client port's layer.
    pub grpc: Arc<GrpcMetrics>,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("unique name");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique name");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(disk_duration_buckets()))
        .expect("valid histogram");
    registry.register(Box::new(h.clone())).expect("unique name");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered (and, on Linux, the
    /// process collector for `process_*`).
    pub fn new() -> Self {
        let r = Registry::new();
        let metrics = Metrics {
            has_leader: gauge(
                &r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                &r,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            is_learner: gauge(
                &r,
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            leader_changes: counter(
                &r,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            proposals_committed: gauge(
                &r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                &r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                &r,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                &r,
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            db_total_size: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_total_size_in_use: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            quota_backend_bytes: gauge(
                &r,
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
            ),
            wal_fsync: histogram(
                &r,
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
            ),
            backend_commit: histogram(
                &r,
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
            ),
            peer_round_trip_time: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "etcd_network_peer_round_trip_time_seconds",
                        "Round-Trip-Time histogram between peers",
                    )
                    .buckets(peer_round_trip_buckets()),
                    &["To"],
                )
                .expect("valid histogram");
                r.register(Box::new(h.clone())).expect("unique name");
                h
            },
            peer_append_streams: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "witan_network_peer_append_streams_opened_total",
                        "Streams opened to a peer for its log appends; each carries every append until it breaks.",
                    ),
                    &["To"],
                )
                .expect("valid counter");
                r.register(Box::new(c.clone())).expect("unique name");
                c
            },
            grpc: Arc::new(GrpcMetrics::register(&r)),
            registry: r,
        };
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = metrics.registry.register(Box::new(process)) {
                tracing::warn!(error = %e, "process metrics unavailable");
            }
        }
        metrics
    }

    /// Sets the scrape-time gauges from `observed` and renders every metric
    /// in Prometheus' text format.
    pub fn render(&self, observed: &Observed) -> String {
        self.has_leader.set(observed.has_leader.into());
        self.is_leader.set(observed.is_leader.into());
        self.is_learner.set(observed.is_learner.into());
        self.proposals_committed
            .set(saturate(observed.committed_index));
        self.proposals_applied.set(saturate(observed.applied_index));
        self.db_total_size.set(saturate(observed.db_size_bytes));
        self.db_total_size_in_use
            .set(saturate(observed.db_size_in_use_bytes));
        self.quota_backend_bytes
            .set(saturate(observed.quota_backend_bytes));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether seeing `next` as leader after `prev` counts as a leader change,
/// as etcd counts them: a known leader different from the last one seen
/// (so the first leader counts, and losing a leader does not).
pub fn is_leader_change(prev: Option<NodeId>, next: Option<NodeId>) -> bool {
    next.is_some() && next != prev
}

/// Counts leader changes in `raft`'s metrics until `stop` flips.
pub async fn watch_leader_changes(
    raft: Raft,
    counter: IntCounter,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = raft.metrics();
    let mut last = None;
    loop {
        let current = rx.borrow_and_update().current_leader;
        if is_leader_change(last, current) {
            counter.inc();
        }
        last = current;
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|stopping| *stopping) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
        "grpc_server_handling_seconds",
    ];

    fn value(text: &str, name: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
            .to_string()
    }

    #[test]
    fn exposition_names_every_metric_with_its_type() {
        let text = Metrics::new().render(&Observed::default());
        for name in NAMES {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} missing");
        }
        for (name, kind) in [
            ("etcd_server_has_leader", "gauge"),
            ("etcd_server_leader_changes_seen_total", "counter"),
            ("etcd_server_proposals_applied_total", "gauge"),
            ("etcd_server_proposals_failed_total", "counter"),
            ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
            ("etcd_disk_backend_commit_duration_seconds", "histogram"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
        }
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes "));
    }

    #[test]
    fn gauges_follow_the_observation() {
        let metrics = Metrics::new();
        let text = metrics.render(&Observed {
            has_leader: true,
            is_leader: false,
            is_learner: true,
            committed_index: 12,
            applied_index: 11,
            db_size_bytes: 4096,
            db_size_in_use_bytes: 1024,
            quota_backend_bytes: 2147483648,
        });
        assert_eq!(value(&text, "etcd_server_has_leader"), "1");
        assert_eq!(value(&text, "etcd_server_is_leader"), "0");
        assert_eq!(value(&text, "etcd_server_is_learner"), "1");
        assert_eq!(value(&text, "etcd_server_proposals_committed_total"), "12");
        assert_eq!(value(&text, "etcd_server_proposals_applied_total"), "11");
        assert_eq!(value(&text, "etcd_mvcc_db_total_size_in_bytes"), "4096");
        assert_eq!(
            value(&text, "etcd_mvcc_db_total_size_in_use_in_bytes"),
            "1024"
        );
        assert_eq!(
            value(&text, "etcd_server_quota_backend_bytes"),
            "2147483648"
        );
    }

    #[test]
    fn histograms_use_etcds_bucket_layout() {
        let buckets = disk_duration_buckets();
        assert_eq!(buckets.len(), 14);
        assert_eq!(buckets[0], 0.001);
        assert!((buckets[13] - 8.192).abs() < 1e-9);
        for pair in buckets.windows(2) {
            assert!((pair[1] / pair[0] - 2.0).abs() < 1e-9);
        }
        let metrics = Metrics::new();
        metrics.wal_fsync.observe(0.003);
        let text = metrics.render(&Observed::default());
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 1\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"} 1\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_count 1\n"));
    }

    #[test]
    fn peer_round_trips_use_etcds_buckets_and_hex_ids() {
        let buckets = peer_round_trip_buckets();
        assert_eq!(buckets.len(), 16);
        assert_eq!(buckets[0], 0.0001);
        assert!((buckets[15] - 3.2768).abs() < 1e-9);
        let metrics = Metrics::new();
        metrics
            .peer_round_trip_time
            .with_label_values(&[&format!("{:x}", 0x8e9e05c52164694d_u64)])
            .observe(0.0003);
        let text = metrics.render(&Observed::default());
        assert!(text.contains(
            "etcd_network_peer_round_trip_time_seconds_bucket{To=\"8e9e05c52164694d\",le=\"0.0004\"} 1\n"
        ));
    }

    #[test]
    fn registries_are_per_member() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.proposals_failed.inc();
        let text = b.render(&Observed::default());
        assert_eq!(value(&text, "etcd_server_proposals_failed_total"), "0");
    }

    #[test]
    fn leader_changes_count_as_etcd_counts_them() {
        assert!(is_leader_change(None, Some(1)));
        assert!(!is_leader_change(Some(1), Some(1)));
        assert!(is_leader_change(Some(1), Some(2)));
        assert!(!is_leader_change(Some(1), None));
        assert!(is_leader_change(None, Some(1)));
        assert!(!is_leader_change(None, None));
    }
}

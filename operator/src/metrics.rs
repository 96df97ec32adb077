//! Operator metrics (prefix `witan_operator_`), per KvCluster: reconciles,
//! their duration and their failures labelled by [`crate::Error::metric_label`].

use prometheus::{
    HistogramOpts, HistogramTimer, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::{Error, crd::KvCluster};

const LABELS: [&str; 2] = ["namespace", "name"];

pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
}

impl Metrics {
    /// A fresh registry with the operator's metrics in it.
    ///
    /// # Panics
    /// Only if the metric definitions below are invalid (a programmer error).
    #[must_use]
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("witan_operator".into()), None).expect("valid prefix");
        let reconciles = IntCounterVec::new(
            Opts::new("reconcile_total", "Reconciles started, per KvCluster"),
            &LABELS,
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "reconcile_errors_total",
                "Reconciles that failed, per KvCluster and error",
            ),
            &["namespace", "name", "error"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "reconcile_duration_seconds",
                "How long reconciles took, per KvCluster",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &LABELS,
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
        }
    }

    /// Counts a reconcile; the returned timer records its duration when dropped.
    pub fn reconcile_started(&self, kvc: &KvCluster) -> HistogramTimer {
        let labels = labels(kvc);
        self.reconciles.with_label_values(&labels).inc();
        self.duration.with_label_values(&labels).start_timer()
    }

    pub fn reconcile_failed(&self, kvc: &KvCluster, error: &Error) {
        let [namespace, name] = labels(kvc);
        self.failures
            .with_label_values(&[namespace.as_str(), name.as_str(), error.metric_label()])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn labels(kvc: &KvCluster) -> [String; 2] {
    [
        kvc.metadata.namespace.clone().unwrap_or_default(),
        kvc.metadata.name.clone().unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::kvc;

    #[test]
    fn reconciles_and_failures_are_counted_per_cluster() {
        let metrics = Metrics::new();
        let kvc = kvc(3);
        drop(metrics.reconcile_started(&kvc));
        metrics.reconcile_failed(&kvc, &Error::InvalidResource("x".into()));
        let text = metrics.render();
        assert!(text.contains(r#"witan_operator_reconcile_total{name="kv",namespace="prod"} 1"#));
        assert!(text.contains(
            r#"witan_operator_reconcile_errors_total{error="invalid_resource",name="kv",namespace="prod"} 1"#
        ));
        assert!(text.contains(
            r#"witan_operator_reconcile_duration_seconds_count{name="kv",namespace="prod"} 1"#
        ));
    }
}

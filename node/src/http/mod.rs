//! etcd's HTTP endpoints on the client port, next to gRPC: `/health`,
//! `/livez`, `/readyz` (with `/livez/<check>` and `/readyz/<check>`),
//! `/version`, `/metrics` (Prometheus text, see docs/metrics.md) and the
//! JSON gateway under `/v3/` ([`gateway`]). The
//! decisions live in [`probe`] and [`crate::metrics`]; this module does the
//! reads.

pub mod gateway;
pub mod probe;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::EtcdError;
use crate::node::Member;
use crate::node::committer::Leadership;
use crate::node::member::ETCD_COMPAT_VERSION;
use probe::{Answer, Check, Health, Probe};

/// How long a linearizable read may take before a check calls it failed.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The HTTP routes, to be merged with the gRPC services' router.
pub fn router(member: Arc<Member>) -> Router {
    endpoints(member.clone()).merge(gateway::router(member))
}

/// The HTTP endpoints without the gateway: all a `--listen-metrics-urls`
/// listener serves.
pub fn endpoints(member: Arc<Member>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/livez/{check}", get(livez_check))
        .route("/readyz/{check}", get(readyz_check))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(member)
}

async fn health(State(member): State<Arc<Member>>, uri: Uri) -> Response {
    let query = probe::parse_query(uri.query());
    let verdict = if probe::health_needs_leader(&query) && !has_leader(&member) {
        Health::NoLeader
    } else {
        match read(&member, !query.serializable).await {
            Ok(()) => Health::Healthy,
            Err(e) => Health::ReadFailed(e),
        }
    };
    if verdict != Health::Healthy {
        tracing::warn!(?verdict, "serving /health false");
    }
    respond(probe::render_health(&verdict))
}

async fn livez(State(member): State<Arc<Member>>, uri: Uri) -> Response {
    root_probe(&member, Probe::Livez, &uri).await
}

async fn readyz(State(member): State<Arc<Member>>, uri: Uri) -> Response {
    root_probe(&member, Probe::Readyz, &uri).await
}

async fn livez_check(
    State(member): State<Arc<Member>>,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    single_probe(&member, Probe::Livez, &name, &uri).await
}

async fn readyz_check(
    State(member): State<Arc<Member>>,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    single_probe(&member, Probe::Readyz, &name, &uri).await
}

async fn version() -> Response {
    respond(Answer {
        status: StatusCode::OK,
        content_type: probe::JSON,
        body: probe::version_json(ETCD_COMPAT_VERSION, env!("CARGO_PKG_VERSION")),
    })
}

/// etcd's Prometheus metrics; the Raft-state gauges are read now.
async fn metrics(State(member): State<Arc<Member>>) -> Response {
    // Each of these borrows the Raft metrics on its own; no borrow is held
    // across another (a watch borrow is a read lock).
    let leadership = member.committer.leadership();
    let is_learner = member.is_learner();
    let (committed_index, applied_index) = {
        let raft = member.raft.metrics();
        let raft = raft.borrow();
        (
            raft.last_log_index.unwrap_or(0),
            raft.last_applied.map_or(0, |id| id.index),
        )
    };
    let observed = crate::metrics::Observed {
        has_leader: !matches!(leadership, Leadership::Unknown),
        is_leader: matches!(leadership, Leadership::Me),
        is_learner,
        committed_index,
        applied_index,
        db_size_bytes: member.store.file_size_bytes(),
        db_size_in_use_bytes: crate::storage::blocking(|| member.store.size_in_use_bytes())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "measuring the database in use");
                0
            }),
        quota_backend_bytes: member.config.quota_backend_bytes.unwrap_or(0),
    };
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        member.metrics.render(&observed),
    )
        .into_response()
}

async fn root_probe(member: &Member, kind: Probe, uri: &Uri) -> Response {
    let query = probe::parse_query(uri.query());
    let checks = probe::select(kind, &query.exclude);
    run_checks(member, &checks, query.verbose).await
}

async fn single_probe(member: &Member, kind: Probe, name: &str, uri: &Uri) -> Response {
    let Some(check) = kind.check(name) else {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    };
    let query = probe::parse_query(uri.query());
    run_checks(member, &[check], query.verbose).await
}

async fn run_checks(member: &Member, checks: &[Check], verbose: bool) -> Response {
    let mut results = Vec::with_capacity(checks.len());
    for &check in checks {
        results.push((check, run_check(member, check).await));
    }
    let answer = probe::render_checks(&results, verbose);
    if answer.status != StatusCode::OK {
        tracing::warn!(reason = %answer.body.trim_end(), "health check failed");
    }
    respond(answer)
}

async fn run_check(member: &Member, check: Check) -> Result<(), String> {
    match check {
        // witan raises no CORRUPT alarm yet.
        Check::DataCorruption => Ok(()),
        Check::SerializableRead => read(member, false).await,
        Check::LinearizableRead => read(member, true).await,
        Check::NonLearner if member.is_learner() => Err("not supported for learner".into()),
        Check::NonLearner => Ok(()),
    }
}

fn has_leader(member: &Member) -> bool {
    !matches!(member.committer.leadership(), Leadership::Unknown)
}

/// A local read, after a ReadIndex barrier when `linearizable`; bounded by
/// [`READ_TIMEOUT`].
async fn read(member: &Member, linearizable: bool) -> Result<(), String> {
    let attempt = async {
        if linearizable {
            member.linearizable_barrier().await?;
        }
        member.read(|view| Ok(view.revision)).map(|_| ())
    };
    match tokio::time::timeout(READ_TIMEOUT, attempt).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(EtcdError::Timeout.to_string()),
    }
}

fn respond(answer: Answer) -> Response {
    (
        answer.status,
        [
            (header::CONTENT_TYPE, answer.content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        answer.body,
    )
        .into_response()
}

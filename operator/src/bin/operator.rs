//! `witan-operator`: watches KvCluster resources and reconciles them; serves
//! `/metrics` and `/healthz`. Flags parse here; everything else is the library.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{Router, extract::State, routing::get};
use clap::Parser;
use kube::{Client, runtime::events::Reporter};
use witan_operator::{
    controller::{self, Context},
    members::EtcdMembers,
    metrics::Metrics,
};

#[derive(Debug, Parser)]
#[command(
    name = "witan-operator",
    version,
    about = "Kubernetes operator for witan KvClusters"
)]
struct Config {
    /// Address of the HTTP server for /metrics and /healthz.
    #[arg(long, env = "WITAN_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// This replica's name in Events (the pod name, from the downward API).
    #[arg(long, env = "WITAN_OPERATOR_POD_NAME")]
    pod_name: Option<String>,
    /// Bound on connecting to one member, e.g. `2s`.
    #[arg(long, env = "WITAN_OPERATOR_MEMBER_CONNECT_TIMEOUT", default_value = "2s", value_parser = humantime_duration)]
    member_connect_timeout: std::time::Duration,
    /// Bound on one member RPC, e.g. `5s`.
    #[arg(long, env = "WITAN_OPERATOR_MEMBER_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime_duration)]
    member_request_timeout: std::time::Duration,
}

/// Durations like `500ms`, `2s`, `1m`.
fn humantime_duration(raw: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {raw:?}"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" | "" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("unknown unit in {raw:?} (use ms, s or m)")),
    }
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> String {
    metrics.render()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let client = Client::try_default()
        .await
        .context("connect to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::new());
    let members = Arc::new(EtcdMembers {
        connect_timeout: config.member_connect_timeout,
        request_timeout: config.member_request_timeout,
    });
    let reporter = Reporter {
        controller: "witan-operator".into(),
        instance: config.pod_name.clone(),
    };
    let ctx = Arc::new(Context::new(client, members, metrics.clone(), reporter));

    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("bind {}", config.http_addr))?;
    tracing::info!(addr = %config.http_addr, "serving /metrics and /healthz");
    let server = axum::serve(listener, app);

    tokio::select! {
        () = controller::run(ctx) => tracing::info!("controller stopped"),
        result = server => result.context("serve HTTP")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            humantime_duration("500ms"),
            Ok(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            humantime_duration("2s"),
            Ok(std::time::Duration::from_secs(2))
        );
        assert_eq!(
            humantime_duration("1m"),
            Ok(std::time::Duration::from_secs(60))
        );
        assert!(humantime_duration("2h").is_err());
        assert!(humantime_duration("s").is_err());
    }
}

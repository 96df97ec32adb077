//! `witan-operator`: watches KvCluster resources and reconciles them; serves
//! `/metrics` and `/healthz`. `witan-operator backup ...` takes one backup
//! (what the backup CronJob runs); `restore-fetch` and `restore-apply` are
//! the member pods' restore init containers. Flags parse here; everything
//! else is the library.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{Router, extract::State, routing::get};
use clap::Parser;
use kube::{Client, runtime::events::Reporter};
use tokio::sync::watch;
use witan_operator::{
    controller::{self, Context},
    leader_election::{Ended, LeaderElector, LeaseConfig, run_while_leading},
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
    /// Watch KvClusters in this namespace only; every namespace when unset.
    #[arg(long, env = "WITAN_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Run the controller only while holding the leader Lease, so that
    /// several replicas can run with exactly one active.
    #[arg(long, env = "WITAN_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease: the operator's own (downward API).
    #[arg(long, env = "WITAN_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "WITAN_OPERATOR_LEASE_NAME",
        default_value = "witan-operator"
    )]
    lease_name: String,
    /// How long a leader's lease lasts without renewal, e.g. `15s`.
    #[arg(long, env = "WITAN_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = humantime_duration)]
    lease_duration: std::time::Duration,
    /// How long a leader keeps leading while it cannot renew, e.g. `10s`.
    #[arg(long, env = "WITAN_OPERATOR_RENEW_DEADLINE", default_value = "10s", value_parser = humantime_duration)]
    renew_deadline: std::time::Duration,
    /// How often candidates try to take the lease and the leader renews it.
    #[arg(long, env = "WITAN_OPERATOR_RETRY_PERIOD", default_value = "2s", value_parser = humantime_duration)]
    retry_period: std::time::Duration,
    /// `app.kubernetes.io/name` label of this operator's pods: KvCluster
    /// NetworkPolicies admit pods with it (in `--namespace`) to the client port.
    #[arg(long, env = "WITAN_OPERATOR_POD_NAME_LABEL", default_value = witan_operator::controller::OPERATOR_POD_NAME_LABEL)]
    pod_name_label: String,
    /// Image of the backup CronJobs (this operator's image).
    #[arg(long, env = "WITAN_OPERATOR_BACKUP_IMAGE")]
    backup_image: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Take one snapshot of a cluster, store it, prune old ones.
    Backup(witan_operator::backup::BackupArgs),
    /// Restore init container, step 1: fetch and check a member's backup.
    RestoreFetch(witan_operator::restore::FetchArgs),
    /// Restore init container, step 2: run `witan snapshot restore` on it.
    RestoreApply(witan_operator::restore::ApplyArgs),
}

impl Config {
    /// The namespace to watch; an empty value means every namespace.
    fn watch_namespace(&self) -> Option<String> {
        self.watch_namespace.clone().filter(|ns| !ns.is_empty())
    }

    /// The leader election settings, validated; `None` when election is off.
    fn lease(&self) -> anyhow::Result<Option<LeaseConfig>> {
        if !self.leader_election {
            return Ok(None);
        }
        let lease = LeaseConfig {
            lease_name: self.lease_name.clone(),
            namespace: self.namespace.clone().unwrap_or_default(),
            identity: self.pod_name.clone().unwrap_or_default(),
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        };
        lease.validate().context(
            "leader election (set --pod-name and --namespace, or --leader-election=false)",
        )?;
        Ok(Some(lease))
    }
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

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::warn!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> String {
    metrics.render()
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    match &config.command {
        Some(Command::Backup(args)) => {
            init_tracing();
            witan_operator::backup::run(args).await?;
            return Ok(());
        }
        Some(Command::RestoreFetch(args)) => {
            init_tracing();
            witan_operator::restore::fetch(args).await?;
            return Ok(());
        }
        Some(Command::RestoreApply(args)) => {
            init_tracing();
            witan_operator::restore::apply(args)?;
            return Ok(());
        }
        None => {}
    }
    let lease = config.lease()?;
    let watch_namespace = config.watch_namespace();
    init_tracing();

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
    let mut ctx = Context::new(client.clone(), members, metrics.clone(), reporter);
    if let Some(image) = config.backup_image.clone() {
        ctx.backup_image = image;
    }
    // KvCluster NetworkPolicies admit this operator's pods by namespace too.
    ctx.operator_peer = witan_operator::resources::network_policy::operator_peer(
        config.namespace.as_deref(),
        std::collections::BTreeMap::from([(
            "app.kubernetes.io/name".to_string(),
            config.pod_name_label.clone(),
        )]),
    );
    let ctx = Arc::new(ctx);

    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("bind {}", config.http_addr))?;
    tracing::info!(addr = %config.http_addr, "serving /metrics and /healthz");
    let server = axum::serve(listener, app);

    let controller = move || controller::run(ctx.clone(), watch_namespace.clone());
    let operate = async {
        let Some(lease) = lease else {
            controller().await;
            return Ok(());
        };
        let elector = LeaderElector::new(client, lease)?;
        let (leading, is_leading) = watch::channel(false);
        let election = tokio::spawn(elector.run(leading));
        let ended = run_while_leading(is_leading, controller, shutdown_signal).await;
        tracing::info!(?ended, "controller stopped");
        // The receiver is gone with run_while_leading: the elector releases
        // the lease (if held) and ends.
        election.await.context("leader election task")?;
        anyhow::ensure!(ended != Ended::ElectionStopped, "leader election stopped");
        anyhow::Ok(())
    };

    tokio::select! {
        result = operate => result?,
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

    #[test]
    fn leader_election_is_on_by_default_and_needs_an_identity_and_a_namespace() {
        let config = Config::try_parse_from(["witan-operator"]).expect("parses");
        assert!(config.leader_election);
        assert!(config.lease().is_err(), "no pod name, no namespace");

        let config = Config::try_parse_from([
            "witan-operator",
            "--pod-name=witan-operator-abc",
            "--namespace=witan-system",
        ])
        .expect("parses");
        let lease = config.lease().expect("valid").expect("election on");
        assert_eq!(lease.identity, "witan-operator-abc");
        assert_eq!(lease.namespace, "witan-system");
        assert_eq!(lease.lease_name, "witan-operator");
        assert_eq!(lease.lease_duration, std::time::Duration::from_secs(15));

        let config =
            Config::try_parse_from(["witan-operator", "--leader-election=false"]).expect("parses");
        assert_eq!(config.lease().expect("valid"), None);
    }

    #[test]
    fn an_empty_watch_namespace_means_every_namespace() {
        let config =
            Config::try_parse_from(["witan-operator", "--watch-namespace="]).expect("parses");
        assert_eq!(config.watch_namespace(), None);
        let config =
            Config::try_parse_from(["witan-operator", "--watch-namespace=apps"]).expect("parses");
        assert_eq!(config.watch_namespace().as_deref(), Some("apps"));
    }
}

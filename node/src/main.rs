//! `witan`: parses flags, starts a member, stops it cleanly on SIGTERM or
//! SIGINT. `witan snapshot status|restore` work on snapshot files offline,
//! as etcdutl's do. Everything else lives in the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use witan_node::config::{Config, Flags, FoundingMember};
use witan_node::storage::restore;
use witan_node::tls::{
    self, Reloading,
    client::{ClientFiles, Verify},
    connector::Connector,
};

// glibc's malloc spent a tenth of the members' CPU on the write path
// (arena locks, chunk coalescing). jemalloc's per-thread caches do the same
// work for less, without the resident-memory growth mimalloc showed here
// (docs/benchmarks.md has the figures).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `witan` with no subcommand runs a member with [`Flags`].
#[derive(Debug, Parser)]
#[command(
    name = "witan",
    version,
    about = "A replicated key-value store that speaks the etcd v3 API",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with snapshot files (`etcdctl snapshot save` output) offline.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Sets the voter set in one joint-consensus change
    /// (witanpb.Membership/ChangeVoters): every id must be a voter or a
    /// caught-up learner, and the set must have an odd size. Voters left
    /// out are removed from the cluster.
    Voters {
        /// Any member's client URL (`https://` for TLS) or host:port.
        #[arg(long, default_value = "127.0.0.1:2379")]
        endpoint: String,
        /// Member ids in hex, as `etcdctl member list` prints them.
        #[arg(required = true, value_parser = parse_member_id)]
        ids: Vec<u64>,
        #[command(flatten)]
        tls: ClientTlsFlags,
        /// `NAME:PASSWORD` when auth is on (etcdctl's `--user`); the
        /// change needs the root role.
        #[arg(long)]
        user: Option<String>,
    },
}

/// etcdctl's TLS flags, for an `https://` endpoint.
#[derive(Debug, clap::Args)]
struct ClientTlsFlags {
    /// CA certificate (PEM) that signed the member's certificate.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM), for members with --client-cert-auth.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long)]
    key: Option<PathBuf>,
}

impl ClientTlsFlags {
    /// The dialer's TLS, if any flag asks for it.
    fn load(self) -> anyhow::Result<Option<Arc<Reloading<rustls::ClientConfig>>>> {
        if self.cacert.is_none() && self.cert.is_none() && self.key.is_none() {
            return Ok(None);
        }
        let cert_and_key = match (self.cert, self.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => anyhow::bail!("--cert and --key go together"),
        };
        let ca = self
            .cacert
            .context("--cacert is required to verify the member's certificate")?;
        let files = ClientFiles {
            verify: Verify::Ca(ca),
            cert_and_key,
        };
        Ok(Some(Arc::new(tls::client::load("witan voters", &files)?)))
    }
}

fn parse_member_id(raw: &str) -> Result<u64, String> {
    u64::from_str_radix(raw, 16).map_err(|e| format!("{raw:?} is not a hex member id: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WriteOut {
    Simple,
    Json,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Verifies a snapshot file and prints its revision, live key count,
    /// size in bytes and SHA-256 checksum.
    Status {
        file: PathBuf,
        /// Output format.
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: WriteOut,
    },
    /// Verifies a snapshot file and builds a new member's data dir from it.
    /// Start every member of the new cluster with the same flags (and
    /// `--initial-cluster-state new`).
    Restore {
        file: PathBuf,
        /// Human-readable name of the new member.
        #[arg(long, default_value = "default")]
        name: String,
        /// Data dir to create; must not exist or be empty (default: `<name>.witan`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The new cluster: `name=peer-url,...` (default: this member alone).
        #[arg(long)]
        initial_cluster: Option<String>,
        /// Peer URLs of the new member.
        #[arg(long, default_value = "http://127.0.0.1:2380")]
        initial_advertise_peer_urls: String,
        /// Token of the new cluster.
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
    },
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("WITAN_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(daemon(cli.flags)),
        Some(Command::Voters {
            endpoint,
            ids,
            tls,
            user,
        }) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            if let Err(e) = runtime.block_on(change_voters(endpoint, ids, tls, user)) {
                eprintln!("Error: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Snapshot(command)) => {
            if let Err(e) = snapshot(command) {
                eprintln!("Error: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn change_voters(
    endpoint: String,
    ids: Vec<u64>,
    tls: ClientTlsFlags,
    user: Option<String>,
) -> anyhow::Result<()> {
    use witan_node::proto::witanpb::ChangeVotersRequest;
    use witan_node::proto::witanpb::membership_client::MembershipClient;
    let url = if endpoint.contains("://") {
        endpoint
    } else {
        format!("http://{endpoint}")
    };
    let tls = tls.load()?;
    let (connector, uri) = Connector::new(&url, tls.as_ref())
        .map_err(|e| anyhow::anyhow!("{e} (give --cacert for an https endpoint)"))?;
    let channel = tonic::transport::Endpoint::from_shared(uri)
        .with_context(|| format!("endpoint {url}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut request = tonic::Request::new(ChangeVotersRequest { voter_ids: ids });
    if let Some(user) = user {
        let token = authenticate(channel.clone(), &user).await?;
        let token = tonic::metadata::MetadataValue::try_from(token.as_str())
            .context("the auth token is not valid metadata")?;
        request.metadata_mut().insert("token", token);
    }
    let mut client = MembershipClient::new(channel);
    let resp = client
        .change_voters(request)
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    for m in resp.members {
        let role = if m.is_learner { "learner" } else { "voter" };
        println!("{:x}, {role}, {}, {}", m.id, m.name, m.peer_ur_ls.join(","));
    }
    Ok(())
}

/// Authenticates as `user` (`NAME:PASSWORD`) and returns the token.
async fn authenticate(channel: tonic::transport::Channel, user: &str) -> anyhow::Result<String> {
    use witan_node::proto::etcdserverpb::AuthenticateRequest;
    use witan_node::proto::etcdserverpb::auth_client::AuthClient;
    let (name, password) = user.split_once(':').context("--user takes NAME:PASSWORD")?;
    let resp = AuthClient::new(channel)
        .authenticate(AuthenticateRequest {
            name: name.to_string(),
            password: password.to_string(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    Ok(resp.into_inner().token)
}

async fn daemon(flags: Flags) -> anyhow::Result<()> {
    init_logging(&flags.log_format);
    let config = Config::from_flags(flags).context("invalid configuration")?;
    let running = witan_node::node::start(config)
        .await
        .context("starting member")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut removed = running.member.removed.subscribe();
    // Raft's core drops its metrics senders when it stops; the server
    // metrics change rarely, so waiting on them costs no wake-up per write.
    let mut raft_alive = running.member.raft.server_metrics();
    let mut fatal = None;
    let signalled = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); true }
        _ = int.recv() => { tracing::info!("SIGINT: shutting down"); true }
        _ = removed.wait_for(|removed| *removed) => false,
        // Raft stopped on a storage error (a full or failing disk): this
        // member can write nothing more until it is restarted (its
        // database handle is poisoned), so it exits with the cause, as
        // etcd does, rather than answer every request with a timeout.
        () = async { while raft_alive.changed().await.is_ok() {} } => {
            let why = running.member.raft.metrics().borrow().running_state.clone();
            fatal = Some(why.err().map_or_else(|| "raft ended".to_string(), |e| e.to_string()));
            false
        }
    };
    if signalled {
        // A leader hands over first, so the cluster need not wait out an
        // election timeout; bounded by the request timeout.
        running.member.step_down_before_exit().await;
    }
    if let Some(cause) = fatal {
        tracing::error!(error = %cause, "raft stopped: exiting");
        // Bounded: a stopped Raft may not answer its shutdown.
        let _ = tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await;
        anyhow::bail!("raft stopped: {cause}");
    }
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Status { file, write_out } => {
            let raw = std::fs::read(&file)
                .with_context(|| format!("reading snapshot file {}", file.display()))?;
            let st = restore::status(&raw)
                .with_context(|| format!("snapshot file {}", file.display()))?;
            match write_out {
                WriteOut::Json => println!("{}", serde_json::to_string(&st)?),
                WriteOut::Simple => {
                    println!("hash: {} ({})", st.hash, st.hash_algorithm);
                    println!("revision: {}", st.revision);
                    println!("compact revision: {}", st.compact_revision);
                    println!("total keys: {}", st.total_key);
                    println!("total size: {}", st.total_size);
                    println!("version: {}", st.version);
                    println!(
                        "taken from: member {} ({}) of cluster {}",
                        st.member_id, st.member_name, st.cluster_id
                    );
                }
            }
            Ok(())
        }
        SnapshotCommand::Restore {
            file,
            name,
            data_dir,
            initial_cluster,
            initial_advertise_peer_urls,
            initial_cluster_token,
        } => {
            let member = FoundingMember::parse(
                &name,
                initial_cluster.as_deref(),
                &initial_advertise_peer_urls,
                &initial_cluster_token,
            )
            .context("invalid configuration")?;
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.witan")));
            let restored = restore::restore_file(&file, &data_dir)?;
            let (member_id, cluster_id) = member.ids();
            println!(
                "restored snapshot at revision {} (compact revision {}, {} keys) to {}",
                restored.revision,
                restored.compact_revision,
                restored.keys,
                data_dir.display()
            );
            println!(
                "start it with the same --name, --initial-cluster, \
                 --initial-advertise-peer-urls and --initial-cluster-token: \
                 member {member_id:x} of new cluster {cluster_id:x}"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_subcommand_is_the_daemon_and_snapshot_subcommands_parse() {
        let cli = Cli::try_parse_from(["witan", "--name", "n1"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.flags.name, "n1");
        let cli =
            Cli::try_parse_from(["witan", "snapshot", "status", "f.db", "-w", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Snapshot(SnapshotCommand::Status {
                write_out: WriteOut::Json,
                ..
            }))
        ));
        let cli = Cli::try_parse_from([
            "witan",
            "snapshot",
            "restore",
            "f.db",
            "--name",
            "a",
            "--data-dir",
            "d",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Snapshot(SnapshotCommand::Restore { ref name, .. })) if name == "a"
        ));
        let cli = Cli::try_parse_from(["witan", "voters", "a1", "B2", "c3"]).expect("voters");
        assert!(matches!(
            cli.command,
            Some(Command::Voters { ref ids, ref endpoint, ref tls, ref user }) if ids == &[0xa1, 0xb2, 0xc3] && endpoint == "127.0.0.1:2379" && tls.cacert.is_none() && user.is_none()
        ));
        let cli = Cli::try_parse_from(["witan", "voters", "--user", "root:pw", "a1"])
            .expect("voters with etcdctl's --user");
        assert!(matches!(
            cli.command,
            Some(Command::Voters { ref user, .. }) if user.as_deref() == Some("root:pw")
        ));
        let cli = Cli::try_parse_from([
            "witan",
            "voters",
            "--endpoint",
            "https://127.0.0.1:2379",
            "--cacert",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "a1",
        ])
        .expect("voters with etcdctl's TLS flags");
        assert!(matches!(
            cli.command,
            Some(Command::Voters { ref tls, .. }) if tls.cacert.as_deref() == Some(std::path::Path::new("ca.pem"))
        ));
        assert!(Cli::try_parse_from(["witan", "voters", "xyz"]).is_err());
        assert!(Cli::try_parse_from(["witan", "voters"]).is_err());
        // Daemon flags do not mix with a subcommand.
        assert!(Cli::try_parse_from(["witan", "--name", "x", "snapshot", "status", "f"]).is_err());
    }
}

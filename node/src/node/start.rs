//! Bringing a member up: open or bootstrap its data dir, start Raft, bind
//! the peer and client listeners, and start the background tasks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::listener;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::committer::Committer;
use super::member::Member;
use super::proposer::Proposer;
use super::read_barrier::ReadBarrier;
use super::tasks;
use crate::config::{ClusterState, Config};
use crate::hub::ApplyHub;
use crate::ids;
use crate::lease::lessor::Lessor;
use crate::metrics::{self, Metrics};
use crate::proto::witanpb::MemberIdentity;
use crate::proto::witanpb::raft_server::RaftServer;
use crate::raft::network::{MAX_PEER_MESSAGE_BYTES, PeerChannels, PeerNetwork};
use crate::raft::peer_service::PeerService;
use crate::raft::types::{MemberNode, Raft};
use crate::storage::log_store::LogStore;
use crate::storage::state_machine::StateMachine;
use crate::storage::{META, StorageError, Store, meta_i64, meta_key};

/// How long shutdown waits for servers and tasks before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("joining the cluster: {0}")]
    Join(#[from] super::join::JoinError),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::token::TokenError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started member and the handles to stop it.
pub struct RunningMember {
    pub member: Arc<Member>,
    /// Addresses actually bound (useful when a port was 0).
    pub client_addrs: Vec<SocketAddr>,
    pub peer_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningMember {
    /// Stops serving, stops Raft and waits for every task to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        // Streams end on the stop signal; the deadline only guards against
        // a client that never lets go, so shutdown can never hang.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("a server task outlived the shutdown grace period; aborting it");
                abort.abort();
            }
        }
        if let Err(e) = self.member.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        // Nothing applies any more: make it all durable, so the next start
        // replays no log.
        let store = self.member.store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final checkpoint"),
            Err(e) => tracing::warn!(error = %e, "final checkpoint"),
        }
    }
}

/// Loads this member's identity, or on first start derives it (a founding
/// member) or learns it from the running cluster (a joining member), and
/// records it.
async fn identity(
    config: &Config,
    store: &Store,
    channels: &PeerChannels,
) -> Result<(MemberIdentity, bool), StartError> {
    if let Some(identity) = store.identity()? {
        return Ok((identity, false));
    }
    if config.initial_cluster_state == ClusterState::Existing {
        let identity = super::join::discover_identity(config, channels).await?;
        store.save_identity(&identity)?;
        return Ok((identity, true));
    }
    let token = &config.initial_cluster_token;
    let member_ids: Vec<u64> = config
        .initial_cluster
        .values()
        .map(|urls| ids::member_id(urls, token))
        .collect();
    let identity = MemberIdentity {
        member_id: ids::member_id(&config.initial_advertise_peer_urls, token),
        cluster_id: ids::cluster_id(&member_ids, token),
        name: config.name.clone(),
    };
    store.save_identity(&identity)?;
    Ok((identity, true))
}

fn raft_config(config: &Config) -> Result<openraft::Config, StartError> {
    let raft_config = openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_ms,
        // openraft's own election timer is off (see `enable_elect` below);
        // what remains of these two is the follower's leader lease, which
        // is `election_timeout_max`. It must end when PreVote lets a
        // candidate through (one election timeout of silence), or the
        // real vote would be refused and the election lost.
        election_timeout_max: config.election_timeout_ms + 1,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        // etcd keeps 5000 entries after a snapshot so slow followers can
        // still catch up from the log.
        max_in_snapshot_log_to_keep: config.snapshot_count.min(5000),
        install_snapshot_timeout: 10_000,
        // Elections start from `election::drive_elections`, after a
        // PreVote round, never from openraft's own timer.
        enable_elect: false,
        ..Default::default()
    };
    raft_config
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))
}

async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, StartError> {
    let mut out = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
        out.push(listener);
    }
    Ok(out)
}

/// Starts a member from its configuration.
pub async fn start(config: Config) -> Result<RunningMember, StartError> {
    let config = Arc::new(config);
    let store = Store::open(&config.data_dir)?;
    // After the data dir exists: --auto-tls writes into it.
    let tls = crate::tls::member::load(&config)?;
    let network = PeerNetwork::new(
        PeerChannels::new(tls.peer_client.clone()).with_source_ip(config.peer_source_ip),
    );
    let channels = network.channels.clone();
    let (identity, fresh) = identity(&config, &store, &channels).await?;
    let id = identity.member_id;
    // Every task of this member logs inside this span, so its lines carry
    // the member id.
    let span = tracing::info_span!("member", id = %format!("{id:x}"), name = %config.name);

    let revision = {
        let txn = store.db().begin_read().map_err(StorageError::from)?;
        let meta = txn.open_table(META).map_err(StorageError::from)?;
        meta_i64(&meta, meta_key::REVISION)?.max(1)
    };
    let hub = ApplyHub::new(revision);
    let lessor = Arc::new(Lessor::new());
    let metrics = Arc::new(Metrics::new());
    let auth_state = {
        let txn = store.db().begin_read().map_err(StorageError::from)?;
        crate::auth::load(&txn)?
    };
    let auth = Arc::new(crate::auth::AuthStore::new(&config.auth, auth_state)?);
    // The leader's own appends are not held for its fsync, so what reads
    // commits (the state machine, followers) waits for it instead.
    let state_machine =
        StateMachine::new(store.clone(), hub.clone(), lessor.clone(), auth.clone())?
            .with_commit_histogram(metrics.backend_commit.clone());
    let log_store = LogStore::open(&store, Some(metrics.wal_fsync.clone()))?.leading_as(id);
    let log = log_store.wal();
    let state_machine = state_machine.applying_what_is_durable_in(log_store.durable());
    let network = network
        .with_round_trip_time(metrics.peer_round_trip_time.clone())
        .with_append_streams_opened(metrics.peer_append_streams.clone())
        .committing_what_is_durable_in(log_store.durable());
    // Listeners first, so a port conflict fails before Raft starts.
    let peer_listeners = bind(&config.listen_peer_addrs).await?;
    let client_listeners = bind(&config.listen_client_addrs).await?;
    let metrics_addrs: Vec<SocketAddr> =
        config.listen_metrics_urls.iter().map(|u| u.addr).collect();
    let metrics_listeners = bind(&metrics_addrs).await?;

    let raft = Raft::new(
        id,
        Arc::new(raft_config(&config)?),
        network,
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;

    if fresh && config.initial_cluster_state == ClusterState::New {
        let token = &config.initial_cluster_token;
        let members: BTreeMap<u64, MemberNode> = config
            .initial_cluster
            .values()
            .map(|urls| {
                (
                    ids::member_id(urls, token),
                    MemberNode {
                        peer_urls: urls.clone(),
                    },
                )
            })
            .collect();
        // Every founding member initializes with the same membership, which
        // openraft allows; whoever wins the first election leads.
        raft.initialize(members)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        tracing::info!(parent: &span, cluster = %format!("{:x}", identity.cluster_id), "bootstrapped a new cluster");
    }

    let request_timeout = Duration::from_millis((config.election_timeout_ms * 5).max(5_000));
    let committer = Arc::new(Committer {
        id,
        raft: raft.clone(),
        channels,
        hub: hub.clone(),
        request_timeout,
        metrics: metrics.clone(),
        writes_held: Default::default(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let member = Arc::new(Member {
        id,
        cluster_id: identity.cluster_id,
        config: config.clone(),
        raft,
        store,
        log,
        hub,
        lessor,
        auth,
        proposer: Proposer::start(committer.clone()),
        barrier: ReadBarrier::start(committer.clone()),
        committer,
        metrics,
        stopping: stop_rx.clone(),
        reconfig_lock: tokio::sync::Mutex::new(()),
        removed: watch::channel(false).0,
        election_hold: Default::default(),
    });

    let mut tasks = Vec::new();
    let mut peer_addrs = Vec::new();
    for (listener, url) in peer_listeners.into_iter().zip(&config.listen_peer_urls) {
        peer_addrs.push(listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen_peer_addrs[0],
            source,
        })?);
        let service = RaftServer::new(PeerService {
            member: member.clone(),
        })
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let mut stop = stop_rx.clone();
        let incoming = listener::incoming(
            listener,
            url.https.then(|| tls.peer_server.clone()).flatten(),
        );
        tasks.push(tokio::spawn(
            async move {
                let result = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.changed().await;
                    })
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "peer server failed");
                }
            }
            .instrument(span.clone()),
        ));
    }
    let mut client_addrs = Vec::new();
    for (listener, url) in client_listeners.into_iter().zip(&config.listen_client_urls) {
        client_addrs.push(listener.local_addr().map_err(|source| StartError::Bind {
            addr: url.addr,
            source,
        })?);
        let tls = url.https.then(|| tls.client.clone()).flatten();
        tasks.push(tokio::spawn(
            crate::server::serve(member.clone(), listener, tls, stop_rx.clone())
                .instrument(span.clone()),
        ));
    }
    for (listener, url) in metrics_listeners
        .into_iter()
        .zip(&config.listen_metrics_urls)
    {
        let tls = url.https.then(|| tls.client.clone()).flatten();
        tasks.push(tokio::spawn(
            crate::server::serve_http_endpoints(member.clone(), listener, tls, stop_rx.clone())
                .instrument(span.clone()),
        ));
    }
    // Certificates rotate without a restart: the files are read again
    // every second and new handshakes use what they hold.
    tasks.push(tokio::spawn(
        crate::tls::reload::watch(tls.reloadable, stop_rx.clone()).instrument(span.clone()),
    ));
    tasks.push(tokio::spawn(
        tasks::promote_leases_on_leadership(member.clone(), stop_rx.clone())
            .instrument(span.clone()),
    ));
    tasks.push(tokio::spawn(
        tasks::sweep_expired_leases(member.clone(), stop_rx.clone()).instrument(span.clone()),
    ));
    tasks.push(tokio::spawn(
        metrics::watch_leader_changes(
            member.raft.clone(),
            member.metrics.leader_changes.clone(),
            stop_rx.clone(),
        )
        .instrument(span.clone()),
    ));
    tasks.push(tokio::spawn(
        tasks::auto_compact(member.clone(), stop_rx.clone()).instrument(span.clone()),
    ));
    tasks.push(tokio::spawn(
        tasks::checkpoint(member.store.clone(), stop_rx.clone()).instrument(span.clone()),
    ));
    tasks.push(tokio::spawn(
        tasks::publish_attributes(member.clone(), stop_rx.clone()).instrument(span.clone()),
    ));
    tasks.push(tokio::spawn(
        tasks::notice_removal(member.clone(), stop_rx.clone()).instrument(span.clone()),
    ));
    tasks.push(tokio::spawn(
        super::election::drive_elections(member.clone(), stop_rx.clone()).instrument(span.clone()),
    ));
    tracing::info!(parent: &span, client = ?client_addrs, peer = ?peer_addrs, "serving");
    Ok(RunningMember {
        member,
        client_addrs,
        peer_addrs,
        stop,
        tasks,
    })
}

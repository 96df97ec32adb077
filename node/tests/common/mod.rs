//! In-process witan clusters for integration tests: port allocation,
//! starting, stopping and restarting members, finding the leader, gRPC
//! clients, and polling with a deadline.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use clap::Parser;
use openraft::ServerState;
use tempfile::TempDir;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use witan_node::config::{Config, Flags};
use witan_node::node::start::StartError;
use witan_node::node::{Member, RunningMember, start};
use witan_node::proto::etcdserverpb::cluster_client::ClusterClient;
use witan_node::proto::etcdserverpb::kv_client::KvClient;
use witan_node::proto::etcdserverpb::lease_client::LeaseClient;
use witan_node::proto::etcdserverpb::maintenance_client::MaintenanceClient;

/// How long a cluster may take to elect its first leader or a new one.
const LEADER_WAIT: Duration = Duration::from_secs(15);
/// Attempts at starting a cluster before a port conflict fails the test.
const START_ATTEMPTS: usize = 5;
/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` until it yields a value, failing the test after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `check` until it holds, failing the test after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// `count` distinct free local ports, all reserved at once so they differ.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// Logs to the test output when `RUST_LOG` is set.
fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// A cluster of members named `n1`, `n2`, ... in this process, each with its
/// own ports and data dir. Members are addressed by index (0 is `n1`).
pub struct TestCluster {
    configs: Vec<Config>,
    members: Vec<Option<RunningMember>>,
    ids: Vec<u64>,
    _dir: TempDir,
}

fn member_config(
    dir: &Path,
    index: usize,
    client_port: u16,
    peer_port: u16,
    initial_cluster: &str,
    extra_flags: &[&str],
) -> Config {
    let name = format!("n{}", index + 1);
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let data_dir = dir.join(&name);
    let mut argv: Vec<&str> = vec![
        "witan",
        "--name",
        &name,
        "--data-dir",
        data_dir.to_str().expect("utf-8 temp dir"),
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-token",
        "witan-test",
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
    ];
    argv.extend_from_slice(extra_flags);
    let flags = Flags::try_parse_from(argv).expect("test flags parse");
    Config::from_flags(flags).expect("test flags are valid")
}

impl TestCluster {
    /// Starts `size` members with the test defaults plus `extra_flags`.
    pub async fn start(size: usize, extra_flags: &[&str]) -> Self {
        init_tracing();
        let mut attempt = 1;
        loop {
            match Self::try_start(size, extra_flags).await {
                Ok(cluster) => return cluster,
                // Between allocating a port and binding it, another test's
                // socket can take it: start over on fresh ports.
                Err(StartError::Bind { addr, source }) if attempt < START_ATTEMPTS => {
                    eprintln!("{addr} was taken ({source}); starting over on fresh ports");
                    attempt += 1;
                }
                Err(e) => panic!("starting a {size}-member cluster: {e}"),
            }
        }
    }

    async fn try_start(size: usize, extra_flags: &[&str]) -> Result<Self, StartError> {
        let dir = TempDir::new().expect("temp dir");
        let ports = free_ports(2 * size);
        let (client_ports, peer_ports) = ports.split_at(size);
        let initial_cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("n{}=http://127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let configs: Vec<Config> = (0..size)
            .map(|i| {
                member_config(
                    dir.path(),
                    i,
                    client_ports[i],
                    peer_ports[i],
                    &initial_cluster,
                    extra_flags,
                )
            })
            .collect();
        let mut members = Vec::new();
        for config in &configs {
            match start(config.clone()).await {
                Ok(running) => members.push(running),
                Err(e) => {
                    for running in members {
                        running.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        let ids = members.iter().map(|m| m.member.id).collect();
        Ok(TestCluster {
            configs,
            members: members.into_iter().map(Some).collect(),
            ids,
            _dir: dir,
        })
    }

    pub fn size(&self) -> usize {
        self.configs.len()
    }

    /// Indexes of the members currently running.
    pub fn running(&self) -> Vec<usize> {
        (0..self.size())
            .filter(|&i| self.members[i].is_some())
            .collect()
    }

    /// A running member's core.
    pub fn member(&self, index: usize) -> &Arc<Member> {
        &self.members[index]
            .as_ref()
            .unwrap_or_else(|| panic!("member {index} is stopped"))
            .member
    }

    /// A member's id (known even while it is stopped).
    pub fn id(&self, index: usize) -> u64 {
        self.ids[index]
    }

    pub fn config(&self, index: usize) -> &Config {
        &self.configs[index]
    }

    /// The member's client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self, index: usize) -> String {
        format!("http://{}", self.configs[index].listen_client_addrs[0])
    }

    pub async fn channel(&self, index: usize) -> Channel {
        Endpoint::from_shared(self.endpoint(index))
            .expect("valid endpoint")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to member {index}: {e}"))
    }

    pub async fn kv(&self, index: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(index).await)
    }

    pub async fn maintenance(&self, index: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel(index).await)
    }

    pub async fn cluster_client(&self, index: usize) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel(index).await)
    }

    pub async fn lease(&self, index: usize) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel(index).await)
    }

    /// Waits until every running member follows one running leader, and
    /// returns the leader's index.
    pub async fn leader(&self) -> usize {
        wait_for(LEADER_WAIT, "an agreed leader", || async {
            self.agreed_leader()
        })
        .await
    }

    fn agreed_leader(&self) -> Option<usize> {
        let running = self.running();
        let first = running.first()?;
        let leader_id = self.member(*first).raft.metrics().borrow().current_leader?;
        let leader = running
            .iter()
            .copied()
            .find(|&i| self.ids[i] == leader_id)?;
        let is_leader = self.member(leader).raft.metrics().borrow().state == ServerState::Leader;
        let agreed = running
            .iter()
            .all(|&i| self.member(i).raft.metrics().borrow().current_leader == Some(leader_id));
        (is_leader && agreed).then_some(leader)
    }

    /// Running members other than the leader (waits for a leader).
    pub async fn followers(&self) -> Vec<usize> {
        let leader = self.leader().await;
        self.running()
            .into_iter()
            .filter(|&i| i != leader)
            .collect()
    }

    /// Stops a member; its data dir stays for a restart.
    pub async fn stop(&mut self, index: usize) {
        let running = self.members[index]
            .take()
            .unwrap_or_else(|| panic!("member {index} is already stopped"));
        running.shutdown().await;
    }

    /// Starts a stopped member again with its original config and data dir.
    pub async fn restart(&mut self, index: usize) {
        assert!(
            self.members[index].is_none(),
            "member {index} is still running"
        );
        let running = start(self.configs[index].clone())
            .await
            .unwrap_or_else(|e| panic!("restarting member {index}: {e}"));
        assert_eq!(running.member.id, self.ids[index], "identity kept");
        self.members[index] = Some(running);
    }

    /// Stops every running member.
    pub async fn shutdown(mut self) {
        for index in self.running() {
            self.stop(index).await;
        }
    }
}

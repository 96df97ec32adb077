//! A cluster of real `witan` processes on loopback ports.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binary::witan_bin;
use crate::ctl::{self, CtlOutput};
use crate::process::{LineChild, poll_until};

/// Raft timing for every test member: fast elections keep tests short.
pub const HEARTBEAT_MS: &str = "50";
pub const ELECTION_MS: &str = "500";
/// How long a member may take to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a cluster start is retried when a port was taken between
/// choosing it and the member binding it.
const START_ATTEMPTS: usize = 3;
/// Lines of each member's log shown when something fails.
const LOG_TAIL_LINES: usize = 40;

/// Ports handed out by this process, so parallel tests never share one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// `n` distinct free loopback ports, all chosen at once (every listener is
/// held until all are bound), never one this process handed out before.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n * 20 {
        if ports.len() == n {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if handed.insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
    assert_eq!(ports.len(), n, "could not find {n} free ports");
    drop(held);
    ports
}

/// One `witan` process (or its remains after a kill): name, ports, data dir
/// and log file. Killed with SIGKILL when dropped.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    /// The peer port the cluster knows this member by (its advertised
    /// peer URL); a [`PeerFront`] proxy's port when there is one.
    pub peer_port: u16,
    /// The port this member listens on for peers (`peer_port` unless a
    /// [`PeerFront`] stands in front of it).
    pub peer_listen_port: u16,
    /// Flags of this member alone (TLS files, `--peer-source-ip`), kept for
    /// [`Cluster::replace`].
    own_args: Vec<String>,
    /// `http` or `https`.
    client_scheme: &'static str,
    peer_scheme: &'static str,
    data_dir: TempDir,
    log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    /// `127.0.0.1:<client port>`, as etcdctl's `--endpoints` takes it
    /// (`https://127.0.0.1:<client port>` when the member serves TLS).
    pub fn endpoint(&self) -> String {
        match self.client_scheme {
            "https" => self.client_url(),
            _ => format!("127.0.0.1:{}", self.client_port),
        }
    }

    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.peer_scheme, self.peer_port)
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The flags this member runs with (the same on every restart).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening member log");
        let log_err = log.try_clone().expect("cloning log handle");
        let child = Command::new(witan_bin())
            .args(&self.args)
            .env("NO_COLOR", "1")
            // A failed start logs its error, not a library backtrace that
            // would push the error out of the log tail the harness reads
            // (panics still print theirs under RUST_BACKTRACE).
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", witan_bin().display()));
        self.child = Some(child);
    }

    /// `kill -9` (std's `Child::kill` is SIGKILL on Unix) and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `Some(description)` when the process has exited on its own.
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited: {status}", self.name)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: waiting failed: {e}", self.name)),
        }
    }

    /// The last `n` lines of this member's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// TLS for a test cluster (see tests/tests/tls.rs): URL schemes, each
/// member's certificate flags, and the flags every harness etcdctl run gets.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub client_https: bool,
    pub peer_https: bool,
    /// Flags of member `i` (on top of the cluster's extra flags).
    pub member_flags: Vec<Vec<String>>,
    /// etcdctl flags for every run (`--cacert`, `--cert`, `--key`).
    pub ctl_flags: Vec<String>,
    /// Members that must become healthy at start (`None`: all).
    pub wait_for: Option<Vec<usize>>,
}

fn scheme(https: bool) -> &'static str {
    if https { "https" } else { "http" }
}

/// A proxy in front of the members' peer listeners (the robustness suite's
/// partitions and delays): for member `i`, the port its peers dial instead
/// of its own (`advertised_ports[i]`) and the address it dials them from
/// (`source_ips[i]`, `--peer-source-ip`), so the proxy knows each link.
#[derive(Debug, Clone)]
pub struct PeerFront {
    pub advertised_ports: Vec<u16>,
    pub source_ips: Vec<IpAddr>,
}

/// Makes the [`PeerFront`] for the given peer listen ports.
type FrontFn<'a> = dyn Fn(&[u16]) -> PeerFront + 'a;

/// Where a member listens and is reached.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    peer_listen: u16,
    peer_advertised: u16,
}

impl Ports {
    fn direct(client: u16, peer: u16) -> Ports {
        Ports {
            client,
            peer_listen: peer,
            peer_advertised: peer,
        }
    }
}

/// A member named `name` on the given ports, not started yet.
#[allow(clippy::too_many_arguments)]
fn new_member(
    name: &str,
    ports: Ports,
    initial_cluster: &str,
    state: &str,
    token: &str,
    extra_args: &[&str],
    own_args: Vec<String>,
    logs: &Path,
    security: &Security,
) -> Member {
    let (client_port, peer_port) = (ports.client, ports.peer_advertised);
    let data_dir = TempDir::with_prefix(format!("witan-{name}-")).expect("data temp dir");
    let (client_scheme, peer_scheme) = (scheme(security.client_https), scheme(security.peer_https));
    let client = format!("{client_scheme}://127.0.0.1:{client_port}");
    let peer = format!("{peer_scheme}://127.0.0.1:{peer_port}");
    let listen_peer = format!("{peer_scheme}://127.0.0.1:{}", ports.peer_listen);
    let mut args: Vec<String> = [
        "--name",
        name,
        "--data-dir",
        &data_dir.path().display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &listen_peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-state",
        state,
        "--initial-cluster-token",
        token,
        "--heartbeat-interval",
        HEARTBEAT_MS,
        "--election-timeout",
        ELECTION_MS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra_args.iter().map(|s| s.to_string()));
    args.extend(own_args.iter().cloned());
    let log_path = logs.join(format!("{name}.log"));
    File::create(&log_path).expect("creating member log");
    Member {
        name: name.to_string(),
        client_port,
        peer_port,
        peer_listen_port: ports.peer_listen,
        own_args,
        client_scheme,
        peer_scheme,
        data_dir,
        log_path,
        args,
        child: None,
    }
}

/// N members started together with `--initial-cluster-state new`.
pub struct Cluster {
    members: Vec<Member>,
    /// `--initial-cluster-token` of this cluster.
    token: String,
    /// Flags every member gets on top of the defaults.
    extra_args: Vec<String>,
    logs: TempDir,
    /// `--user` for health checks, once auth is on (etcdctl 3.4's
    /// `endpoint health` counts "user name is empty" as unhealthy).
    health_user: Option<String>,
    security: Security,
}

fn unique_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "witan-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Cluster {
    /// Starts `n` members and waits until every one is healthy.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// [`Cluster::start`] with extra flags for every member.
    pub fn start_with(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_prepared(n, extra_args, |_| {})
    }

    /// [`Cluster::start_with`], calling `prepare` on every member (its data
    /// dir exists and is empty, its flags are set) before it is first
    /// started, e.g. to restore a snapshot into its data dir.
    pub fn start_prepared(n: usize, extra_args: &[&str], prepare: impl Fn(&Member)) -> Cluster {
        Cluster::start_prepared_as(n, extra_args, None, prepare)
    }

    /// [`Cluster::start_prepared`] whose health checks run as
    /// `health_user` (`name:password`), for data dirs restored with auth on.
    pub fn start_prepared_as(
        n: usize,
        extra_args: &[&str],
        health_user: Option<&str>,
        prepare: impl Fn(&Member),
    ) -> Cluster {
        Cluster::start_with_options(n, extra_args, health_user, Security::default(), prepare)
    }

    /// [`Cluster::start_prepared`] with TLS as `security` says.
    pub fn start_secure(
        n: usize,
        extra_args: &[&str],
        security: Security,
        prepare: impl Fn(&Member),
    ) -> Cluster {
        Cluster::start_with_options(n, extra_args, None, security, prepare)
    }

    /// [`Cluster::start_with`] behind a peer proxy: `front` gets the ports
    /// the members will listen on for peers and says where each member is
    /// advertised instead and which address it dials from ([`PeerFront`]).
    pub fn start_fronted(
        n: usize,
        extra_args: &[&str],
        front: impl Fn(&[u16]) -> PeerFront,
    ) -> Cluster {
        Cluster::start_with_options_fronted(
            n,
            extra_args,
            None,
            Security::default(),
            Some(&front),
            |_| {},
        )
    }

    fn start_with_options(
        n: usize,
        extra_args: &[&str],
        health_user: Option<&str>,
        security: Security,
        prepare: impl Fn(&Member),
    ) -> Cluster {
        Cluster::start_with_options_fronted(n, extra_args, health_user, security, None, prepare)
    }

    fn start_with_options_fronted(
        n: usize,
        extra_args: &[&str],
        health_user: Option<&str>,
        security: Security,
        front: Option<&FrontFn<'_>>,
        prepare: impl Fn(&Member),
    ) -> Cluster {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Cluster::try_start(n, extra_args, health_user, &security, front, &prepare) {
                Ok(cluster) => return cluster,
                // Someone took a port between choosing and binding: new ports.
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("cluster did not start after {START_ATTEMPTS} attempts:\n{last}")
    }

    fn try_start(
        n: usize,
        extra_args: &[&str],
        health_user: Option<&str>,
        security: &Security,
        front: Option<&FrontFn<'_>>,
        prepare: &dyn Fn(&Member),
    ) -> Result<Cluster, String> {
        assert!(n > 0);
        let free = free_ports(2 * n);
        let mut ports: Vec<Ports> = free.chunks(2).map(|p| Ports::direct(p[0], p[1])).collect();
        let mut own_args: Vec<Vec<String>> = (0..n)
            .map(|i| security.member_flags.get(i).cloned().unwrap_or_default())
            .collect();
        if let Some(front) = front {
            let listen: Vec<u16> = ports.iter().map(|p| p.peer_listen).collect();
            let front = front(&listen);
            for (i, p) in ports.iter_mut().enumerate() {
                p.peer_advertised = front.advertised_ports[i];
                own_args[i].push("--peer-source-ip".into());
                own_args[i].push(front.source_ips[i].to_string());
            }
        }
        let logs = TempDir::with_prefix("witan-logs-").expect("log temp dir");
        let token = unique_token();
        let names: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&ports)
            .map(|(name, p)| {
                format!(
                    "{name}={}://127.0.0.1:{}",
                    scheme(security.peer_https),
                    p.peer_advertised
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for ((name, p), own) in names.iter().zip(&ports).zip(own_args) {
            members.push(new_member(
                name,
                *p,
                &initial_cluster,
                "new",
                &token,
                extra_args,
                own,
                logs.path(),
                security,
            ));
        }
        let mut cluster = Cluster {
            members,
            token,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            logs,
            health_user: health_user.map(str::to_string),
            security: security.clone(),
        };
        for member in &mut cluster.members {
            prepare(member);
            member.spawn();
        }
        let all: Vec<usize> = (0..n).collect();
        let wait_for = security.wait_for.clone().unwrap_or(all);
        cluster.try_wait_healthy(&wait_for, READY_TIMEOUT)?;
        Ok(cluster)
    }

    /// `--initial-cluster` for member `name` (advertised on `peer_port`)
    /// joining the running members.
    fn initial_cluster_joined_by(&self, name: &str, peer_port: u16) -> String {
        let mut initial: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        initial.push(format!(
            "{name}={}://127.0.0.1:{peer_port}",
            scheme(self.security.peer_https)
        ));
        initial.join(",")
    }

    /// Prepares member `name` that joins this running cluster with
    /// `--initial-cluster-state existing`, on fresh ports and a fresh data
    /// dir, and returns its index. It is not started: add it with
    /// `etcdctl member add` (its [`Member::peer_url`]) first, then
    /// [`Cluster::spawn`] it.
    pub fn prepare_joining(&mut self, name: &str) -> usize {
        let ports = free_ports(2);
        let initial = self.initial_cluster_joined_by(name, ports[1]);
        let extra: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let member = new_member(
            name,
            Ports::direct(ports[0], ports[1]),
            &initial,
            "existing",
            &self.token,
            &extra,
            Vec::new(),
            self.logs.path(),
            &self.security,
        );
        self.members.push(member);
        self.members.len() - 1
    }

    /// Adds member `name` as a learner (`etcdctl member add --learner`
    /// through member 0) and starts it; returns its index and member id.
    /// It is not waited for: it catches up in the background.
    pub fn add_learner(&mut self, name: &str) -> (usize, u64) {
        let index = self.prepare_joining(name);
        let peer_url = self.members[index].peer_url();
        let added = crate::json(&self.ctl_on(
            0,
            &[
                "member",
                "add",
                name,
                "--learner",
                &format!("--peer-urls={peer_url}"),
                "-w",
                "json",
            ],
        ));
        let id = added["member"]["ID"].as_u64().expect("added member id");
        self.spawn(index);
        (index, id)
    }

    /// Replaces member `i` the way etcd's runbook does: `member remove` (the
    /// removed member shuts itself down), a wiped data dir, `member add
    /// --learner` with the same peer URL, a start with
    /// `--initial-cluster-state existing` on the same ports (so clients of
    /// the old member reach the new one), and `member promote` once it has
    /// caught up. The new member is named `<name>-new`; returns its id.
    pub fn replace(&mut self, i: usize) -> u64 {
        let old_id = self.member_id(i);
        let other = self
            .running()
            .into_iter()
            .find(|&o| o != i)
            .expect("another running member");
        self.ctl_on(other, &["member", "remove", &format!("{old_id:x}")]);
        self.wait_exit(i, READY_TIMEOUT);
        let old = &self.members[i];
        let ports = Ports {
            client: old.client_port,
            peer_listen: old.peer_listen_port,
            peer_advertised: old.peer_port,
        };
        let own_args = old.own_args.clone();
        let name = format!("{}-new", self.members[i].name);
        let peer_url = format!(
            "{}://127.0.0.1:{}",
            scheme(self.security.peer_https),
            ports.peer_advertised
        );
        let initial = self.initial_cluster_joined_by(&name, ports.peer_advertised);
        let extra: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        // The old member (and its data dir) goes; the new one starts empty.
        self.members[i] = new_member(
            &name,
            ports,
            &initial,
            "existing",
            &self.token,
            &extra,
            own_args,
            self.logs.path(),
            &self.security,
        );
        let added = crate::json(&self.ctl_on(
            other,
            &[
                "member",
                "add",
                &name,
                "--learner",
                &format!("--peer-urls={peer_url}"),
                "-w",
                "json",
            ],
        ));
        let id = added["member"]["ID"].as_u64().expect("added member id");
        self.spawn(i);
        // etcd refuses to promote a learner that is not in sync yet.
        poll_until(READY_TIMEOUT, "the new member promoted", || {
            let out = self.run(
                &self.endpoint(other),
                &["member", "promote", &format!("{id:x}")],
                None,
            );
            if out.success() {
                Ok(())
            } else {
                Err(out.to_string())
            }
        });
        self.wait_healthy(&[i], READY_TIMEOUT);
        id
    }

    /// Starts member `i` without waiting for it (a learner is never
    /// "healthy" to etcdctl, since it refuses linearizable reads).
    pub fn spawn(&mut self, i: usize) {
        self.members[i].spawn();
    }

    /// Sends SIGTERM to member `i` (a graceful stop; its data dir stays).
    pub fn terminate(&mut self, i: usize) {
        self.signal(i, "-TERM");
    }

    /// Freezes member `i` (SIGSTOP): it keeps its sockets but does nothing,
    /// like a process starved of CPU or a VM paused.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Lets a paused member run again (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let child = self.members[i].child.as_ref().expect("member is running");
        let pid = child.id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "sending {signal} to {pid}");
    }

    /// Waits until member `i` exits on its own; returns how it exited.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.members[i].exited() {
                self.members[i].child = None;
                return exit;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} still running after {timeout:?}\n{}",
                    self.members[i].name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Indexes of the members that are running.
    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect()
    }

    /// Comma-separated endpoints of every running member.
    pub fn endpoints(&self) -> String {
        self.running()
            .into_iter()
            .map(|i| self.members[i].endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].endpoint()
    }

    /// The tail of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            out.push_str(&format!(
                "----- {} ({}, {}) last {LOG_TAIL_LINES} log lines -----\n{}\n",
                m.name,
                if m.is_running() { "running" } else { "killed" },
                m.log_path.display(),
                m.log_tail(LOG_TAIL_LINES)
            ));
        }
        out
    }

    /// `kill -9` member `i` (its data dir stays).
    pub fn kill(&mut self, i: usize) {
        assert!(self.members[i].is_running(), "{} is not running", i);
        self.members[i].kill();
    }

    /// Starts member `i` again with the same data dir and flags and waits
    /// until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.members[i].spawn();
        self.wait_healthy(&[i], READY_TIMEOUT);
    }

    /// Health checks from now on run as `user` (`name:password`), as
    /// they must once auth is enabled.
    pub fn set_health_user(&mut self, user: Option<&str>) {
        self.health_user = user.map(str::to_string);
    }

    /// Polls `etcdctl endpoint health` on the given members until all pass.
    pub fn wait_healthy(&mut self, which: &[usize], timeout: Duration) {
        if let Err(e) = self.try_wait_healthy(which, timeout) {
            panic!("{e}");
        }
    }

    fn try_wait_healthy(&mut self, which: &[usize], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = which.to_vec();
        let mut last = String::new();
        let mut health_args = vec![
            "endpoint",
            "health",
            "--dial-timeout",
            "1s",
            "--command-timeout",
            "2s",
        ];
        let user = self.health_user.clone();
        if let Some(user) = &user {
            health_args.extend(["--user", user.as_str()]);
        }
        let ctl_flags = self.security.ctl_flags.clone();
        health_args.extend(ctl_flags.iter().map(String::as_str));
        loop {
            for &i in which {
                if let Some(exit) = self.members[i].exited() {
                    return Err(format!("{exit} before becoming healthy\n{}", self.logs()));
                }
            }
            pending.retain(|&i| {
                let out = CtlOutput::run(&self.members[i].endpoint(), &health_args, None);
                // etcdctl 3.4 reports health on stderr.
                if out.success() && out.stderr.contains("is healthy") {
                    false
                } else {
                    last = out.to_string();
                    true
                }
            });
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "members {pending:?} not healthy after {timeout:?}; last check:\n{last}\n{}",
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until member `i` has applied `revision` (a serializable read
    /// answers from the member's own state).
    pub fn wait_applied(&self, i: usize, revision: i64) {
        crate::poll_until(
            Duration::from_secs(20),
            &format!("member {i} at revision {revision}"),
            || {
                let out = self.run(
                    &self.endpoint(i),
                    &["get", "nothing", "--consistency", "s", "-w", "json"],
                    None,
                );
                let seen = serde_json::from_str::<serde_json::Value>(&out.stdout)
                    .ok()
                    .and_then(|v| v["header"]["revision"].as_i64())
                    .unwrap_or(0);
                if seen >= revision {
                    Ok(())
                } else {
                    Err(format!("at {seen}: {out}"))
                }
            },
        )
    }

    /// Runs etcdctl against `endpoints` (not checked), with the cluster's
    /// TLS flags if it has any.
    pub fn run(&self, endpoints: &str, args: &[&str], stdin: Option<&str>) -> CtlOutput {
        CtlOutput::run(endpoints, &self.with_ctl_flags(args), stdin)
    }

    fn with_ctl_flags<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = args.to_vec();
        full.extend(self.security.ctl_flags.iter().map(String::as_str));
        full
    }

    /// Panics with the run and the member logs unless `out` succeeded;
    /// returns its stdout.
    pub fn expect_ok(&self, out: CtlOutput) -> String {
        if !out.success() {
            panic!("etcdctl failed:\n{out}\n{}", self.logs());
        }
        out.stdout
    }

    /// Like [`Cluster::expect_ok`] but returns the whole output (some
    /// etcdctl commands, like `endpoint health`, answer on stderr).
    pub fn expect_success(&self, out: CtlOutput) -> CtlOutput {
        if !out.success() {
            panic!("etcdctl failed:\n{out}\n{}", self.logs());
        }
        out
    }

    /// Panics unless `out` failed; returns it.
    pub fn expect_err(&self, out: CtlOutput) -> CtlOutput {
        if out.success() {
            panic!("etcdctl unexpectedly succeeded:\n{out}\n{}", self.logs());
        }
        out
    }

    /// etcdctl against every running member; must succeed; stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.expect_ok(self.run(&self.endpoints(), args, None))
    }

    /// etcdctl against member `i` only; must succeed; stdout.
    pub fn ctl_on(&self, i: usize, args: &[&str]) -> String {
        self.expect_ok(self.run(&self.endpoint(i), args, None))
    }

    /// etcdctl against the given `--endpoints` value; must succeed; stdout.
    pub fn ctl_on_endpoints(&self, endpoints: &str, args: &[&str]) -> String {
        self.expect_ok(self.run(endpoints, args, None))
    }

    /// etcdctl with `stdin` against every running member; must succeed.
    pub fn ctl_stdin(&self, args: &[&str], stdin: &str) -> String {
        self.expect_ok(self.run(&self.endpoints(), args, Some(stdin)))
    }

    /// etcdctl against every running member; must fail.
    pub fn ctl_err(&self, args: &[&str]) -> CtlOutput {
        self.expect_err(self.run(&self.endpoints(), args, None))
    }

    /// `etcdctl endpoint status -w json` of member `i`: its `Status` object.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let out = self.ctl_on(i, &["endpoint", "status", "-w", "json"]);
        let parsed: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("endpoint status json: {e}\n{out}"));
        parsed[0]["Status"].clone()
    }

    /// The member id of member `i` (from its status header).
    pub fn member_id(&self, i: usize) -> u64 {
        self.status(i)["header"]["member_id"]
            .as_u64()
            .expect("header.member_id")
    }

    /// Index of the leader, once every running member names the same
    /// running member as leader.
    pub fn leader(&self) -> usize {
        let ids: Vec<(usize, u64)> = self
            .running()
            .into_iter()
            .map(|i| (i, self.member_id(i)))
            .collect();
        poll_until(Duration::from_secs(30), "an agreed leader", || {
            let leaders: Vec<u64> = ids
                .iter()
                .map(|&(i, _)| {
                    let out = self.run(
                        &self.endpoint(i),
                        &["endpoint", "status", "-w", "json"],
                        None,
                    );
                    serde_json::from_str::<serde_json::Value>(&out.stdout)
                        .ok()
                        .and_then(|v| v[0]["Status"]["leader"].as_u64())
                        .unwrap_or(0)
                })
                .collect();
            let first = leaders[0];
            if first == 0 || leaders.iter().any(|&l| l != first) {
                return Err(format!("leaders reported: {leaders:?}"));
            }
            ids.iter()
                .find(|&&(_, id)| id == first)
                .map(|&(i, _)| i)
                .ok_or_else(|| format!("leader {first:x} is not a running member"))
        })
    }

    /// `etcdctl watch <args>` in the background against every running
    /// member, its stdout read line by line.
    pub fn watch(&self, args: &[&str]) -> LineChild {
        let mut full = vec!["watch"];
        full.extend_from_slice(args);
        LineChild::spawn(
            format!("etcdctl {}", full.join(" ")),
            ctl::command(&self.endpoints(), &self.with_ctl_flags(&full)),
        )
    }
}

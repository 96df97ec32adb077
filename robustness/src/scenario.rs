//! One run: a fresh cluster, traffic, one fault, the final state, the
//! check, and a report folder on a violation.
//!
//! Everything random (the fault, its target and durations, each client's
//! requests and each watcher's offsets) comes from the run's seed, so
//! `--seed N` replays the same fault and the same request mix. The timing
//! of real processes is not replayable; the schedule is.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use rand::SeedableRng;
use rand::rngs::StdRng;
use witan_tests::{Cluster, PeerFront};

use crate::checker::{self, Verdict};
use crate::history::{FinalState, History, Kv};
use crate::nemesis::{self, Fault};
use crate::proxy::PeerProxy;
use crate::report;
use crate::traffic::{self, Recorder, TrafficConfig, kv_of};
use crate::violation::{Kind, Violation};

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// One of [`crate::nemesis::KINDS`]; random from the seed when `None`.
    pub fault: Option<String>,
    pub traffic: TrafficConfig,
    /// Successful operations before the fault (etcd's "minimal QPS reached"),
    /// and after it heals.
    pub ops_before: usize,
    pub ops_after: usize,
    /// Bound on each of those two phases.
    pub phase_limit: Duration,
    /// The long mode: instead of one fault, `kill -9` the leader every
    /// 5–15 s for this long ([`crate::nemesis::leader_kills`]).
    pub leader_kills_for: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            fault: None,
            traffic: TrafficConfig::default(),
            ops_before: 200,
            ops_after: 200,
            phase_limit: Duration::from_secs(20),
            leader_kills_for: None,
        }
    }
}

pub struct RunResult {
    pub seed: u64,
    pub fault: Fault,
    pub did: String,
    pub verdict: Verdict,
    pub ops_per_sec: f64,
    /// Median latency of the operations that succeeded.
    pub p50_ms: f64,
    /// Wall time of the whole run: start, traffic, fault, check.
    pub secs: f64,
    pub report: Option<PathBuf>,
}

impl RunResult {
    pub fn summary(&self) -> String {
        format!(
            "seed={} fault=\"{}\" ops={} ({:.0} ops/s, p50 {:.1} ms) watch_events={} \
             violations={} lost_acked_writes={} took={:.0}s",
            self.seed,
            self.did,
            self.verdict.ops,
            self.ops_per_sec,
            self.p50_ms,
            self.verdict.watch_events,
            self.verdict.violations.len(),
            self.verdict.lost_acked_writes,
            self.secs
        )
    }
}

/// How long after the last fault healed every member's HashKV must agree.
const HASHES_AGREE_WITHIN: Duration = Duration::from_secs(30);

/// Polls every member's HashKV at `revision` until they are all equal;
/// `Err` says what differed when `deadline` passes first.
async fn hashes_agree(urls: &[String], revision: i64, deadline: Instant) -> Result<(), String> {
    loop {
        let mut hashes = Vec::new();
        for url in urls {
            hashes.push(hash_kv(url, revision).await);
        }
        let first = &hashes[0];
        if first.is_ok() && hashes.iter().all(|h| h == first) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "HashKV at revision {revision} still differs {} s after the last fault: {hashes:?}",
                HASHES_AGREE_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn hash_kv(url: &str, revision: i64) -> Result<u32, String> {
    let mut client = traffic::connect(url, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.hash_kv(revision))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(resp.hash())
}

fn wait_acked(recorder: &Recorder, at_least: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while recorder.acked.load(Ordering::Relaxed) < at_least && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn read_prefix(
    url: &str,
    prefix: &str,
    serializable: bool,
) -> Result<(i64, Vec<Kv>), String> {
    let mut client = traffic::connect(url, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    let mut options = GetOptions::new().with_prefix();
    if serializable {
        options = options.with_serializable();
    }
    let resp = tokio::time::timeout(Duration::from_secs(3), client.get(prefix, Some(options)))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let revision = resp.header().map_or(0, |h| h.revision());
    Ok((revision, resp.kvs().iter().map(kv_of).collect()))
}

/// The final linearizable read, then every member's own (serializable)
/// view once it has applied that revision.
async fn final_state(urls: &[String], prefix: &str, recorder: &Recorder) -> Option<FinalState> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut last = String::new();
        for url in urls {
            let at = recorder.now();
            match read_prefix(url, prefix, false).await {
                Ok((revision, kvs)) => return Some(finish(urls, prefix, at, revision, kvs).await),
                Err(e) => last = e,
            }
        }
        if Instant::now() >= deadline {
            eprintln!("final read failed on every member: {last}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn finish(urls: &[String], prefix: &str, at: u64, revision: i64, kvs: Vec<Kv>) -> FinalState {
    let mut members = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match read_prefix(url, prefix, true).await {
                Ok((r, kvs)) if r >= revision || Instant::now() >= deadline => {
                    members.push((i, r, kvs));
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("member {i}: final serializable read failed: {e}");
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    FinalState {
        revision,
        kvs,
        at,
        members,
    }
}

/// The address member `i` dials its peers from when they are proxied.
fn source_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1 + i as u8))
}

/// The run's cluster, behind a [`PeerProxy`] when the fault needs one.
fn start_cluster(fault: &Fault, member_args: &[&str]) -> (Cluster, Option<PeerProxy>) {
    let n = fault.members();
    if !fault.needs_proxy() {
        return (Cluster::start_with(n, member_args), None);
    }
    // The harness may retry with new ports; the last proxy made is the one.
    let made = RefCell::new(None);
    let cluster = Cluster::start_fronted(n, member_args, |listen_ports| {
        let upstreams: Vec<SocketAddr> = listen_ports
            .iter()
            .map(|&p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let listen: Vec<SocketAddr> = witan_tests::free_ports(n)
            .into_iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let sources = (0..n).map(|i| (source_ip(i), i)).collect();
        let proxy =
            PeerProxy::start(&upstreams, &listen, sources).expect("starting the peer proxy");
        let front = PeerFront {
            advertised_ports: proxy.listen_addrs().iter().map(SocketAddr::port).collect(),
            source_ips: (0..n).map(source_ip).collect(),
        };
        *made.borrow_mut() = Some(proxy);
        front
    });
    (cluster, made.into_inner())
}

/// One run with `seed`.
pub fn run(seed: u64, options: &RunOptions) -> RunResult {
    let run_started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let fault = match &options.fault {
        Some(kind) => Fault::of_kind(kind, &mut rng).unwrap_or_else(|| {
            panic!("unknown fault {kind:?}; known: {:?}", crate::nemesis::KINDS)
        }),
        None => Fault::random(&mut rng),
    };
    eprintln!("robustness run: seed={seed} fault={fault:?}");
    let member_args = fault.member_args();
    let member_args: Vec<&str> = member_args.iter().map(String::as_str).collect();
    let (mut cluster, proxy) = start_cluster(&fault, &member_args);
    let urls: Vec<String> = cluster.members().iter().map(|m| m.client_url()).collect();
    let cfg = options.traffic.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (start_revision, existing) = rt
        .block_on(read_prefix(&urls[0], &cfg.prefix, false))
        .unwrap_or_else(|e| panic!("reading the start revision: {e}\n{}", cluster.logs()));
    assert!(
        existing.is_empty(),
        "a fresh cluster holds keys under {}",
        cfg.prefix
    );

    let recorder = Arc::new(Recorder::new(start_revision));
    let started = Instant::now();
    let witness = rt.spawn(traffic::watch_loop(
        999,
        urls.clone(),
        cfg.prefix.clone(),
        start_revision + 1,
        None,
        recorder.clone(),
    ));
    let mut clients = Vec::new();
    for c in 0..cfg.clients {
        let member = c % urls.len();
        clients.push(rt.spawn(traffic::client_loop(
            c,
            member,
            urls[member].clone(),
            cfg.clone(),
            seed,
            recorder.clone(),
        )));
    }
    let mut watchers = Vec::new();
    for w in 0..cfg.watchers {
        watchers.push(rt.spawn(traffic::watcher_loop(
            w,
            urls.clone(),
            cfg.clone(),
            seed,
            recorder.clone(),
        )));
    }

    wait_acked(&recorder, options.ops_before, options.phase_limit);
    let did = match options.leader_kills_for {
        Some(total) => nemesis::leader_kills(&mut cluster, &mut rng, total),
        None => fault.inject(&mut cluster, proxy.as_ref(), &mut rng),
    };
    let last_fault_healed = Instant::now();
    let healed = recorder.acked.load(Ordering::Relaxed);
    wait_acked(&recorder, healed + options.ops_after, options.phase_limit);
    recorder.stop_clients.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for c in clients {
            let _ = c.await;
        }
    });
    let traffic_secs = started.elapsed().as_secs_f64();
    let final_state = rt.block_on(final_state(&urls, &cfg.prefix, &recorder));
    // Let the witness catch up to the final revision, then stop watching.
    if let Some(f) = &final_state {
        let deadline = Instant::now() + Duration::from_secs(10);
        while recorder.witness_upto.load(Ordering::Relaxed) < f.revision
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    recorder.stop_watches.store(true, Ordering::Relaxed);
    rt.block_on(async {
        let _ = witness.await;
        for w in watchers {
            let _ = w.await;
        }
    });
    let (ops, watches) = recorder.take();
    let ops_per_sec = ops.len() as f64 / traffic_secs;
    let mut latencies: Vec<u64> = ops
        .iter()
        .filter_map(|op| op.ret.map(|r| r - op.invoke))
        .collect();
    latencies.sort_unstable();
    let p50_ms = latencies
        .get(latencies.len() / 2)
        .map_or(0.0, |&ns| ns as f64 / 1e6);
    let history = History {
        prefix: cfg.prefix.clone(),
        start_revision,
        ops,
        watches,
        final_state,
    };
    let mut verdict = checker::check(&history);
    if let Some(f) = &history.final_state {
        // Every member must hold the same data at the final revision
        // (etcd's robustness tests end the same way), within 30 s of the
        // last fault's heal.
        let deadline = last_fault_healed + HASHES_AGREE_WITHIN;
        if let Err(e) = rt.block_on(hashes_agree(&urls, f.revision, deadline)) {
            verdict
                .violations
                .push(Violation::new(Kind::Hash, e, Vec::new()));
        }
    }
    let mut result = RunResult {
        seed,
        fault,
        did,
        verdict,
        ops_per_sec,
        p50_ms,
        secs: run_started.elapsed().as_secs_f64(),
        report: None,
    };
    if !result.verdict.ok() {
        let logs: Vec<(String, PathBuf)> = cluster
            .members()
            .iter()
            .map(|m| (m.name.clone(), m.log_path().to_path_buf()))
            .collect();
        match report::write(
            &format!("seed-{seed}"),
            &result.summary(),
            &history,
            &result.verdict,
            &logs,
        ) {
            Ok(dir) => result.report = Some(dir),
            Err(e) => eprintln!("writing the report failed: {e}"),
        }
    }
    drop(cluster);
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

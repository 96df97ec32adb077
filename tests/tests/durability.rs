//! Acknowledged writes survive `kill -9` of the leader: concurrent writers
//! (gRPC, etcd-client) record every write the cluster acknowledged while the
//! leader is killed mid-stream; afterwards every survivor and the restarted
//! member serve every acknowledged write with its value.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use witan_tests::{Cluster, poll_until};

const WRITERS: usize = 4;
const PREFIX: &str = "dur/";
/// Writes acknowledged before the kill, and after it, that each phase aims
/// for (each phase is also bounded in time).
const PHASE_TARGET: usize = 500;
const PHASE_LIMIT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// What the writers did: acknowledged writes, and attempts whose outcome is
/// unknown (an error or timeout: they may or may not have been applied).
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<String, String>,
    uncertain: BTreeMap<String, String>,
}

async fn connect(url: &str) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(REQUEST_TIMEOUT);
    Client::connect([url], Some(options))
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// One writer: sequential puts of fresh keys, moving on to the next member
/// whenever one fails.
async fn writer(
    id: usize,
    urls: Vec<String>,
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut clients = Vec::new();
    for url in &urls {
        clients.push(connect(url).await);
    }
    let mut at = id % clients.len();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let key = format!("{PREFIX}{id}/{seq:07}");
        let value = format!("writer {id} write {seq} at {:?}", Instant::now());
        let put = clients[at].put(key.as_str(), value.as_str(), None);
        let ok = matches!(
            tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), put).await,
            Ok(Ok(_))
        );
        {
            let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
            if ok {
                ledger.acked.insert(key, value);
                acked.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            ledger.uncertain.insert(key, value);
        }
        {
            at = (at + 1) % clients.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every `PREFIX` key a member holds, read with the given consistency.
async fn dump(url: &str, serializable: bool) -> Result<BTreeMap<String, String>, String> {
    let mut client = connect(url).await;
    let mut options = GetOptions::new().with_prefix();
    if serializable {
        options = options.with_serializable();
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(PREFIX, Some(options)))
        .await
        .map_err(|_| format!("get from {url} timed out"))?
        .map_err(|e| format!("get from {url}: {e}"))?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect())
}

/// Compares what a member holds with the ledger: every acknowledged write
/// with its value, and nothing that was never written.
fn check(who: &str, held: &BTreeMap<String, String>, ledger: &Ledger) -> Result<(), String> {
    let missing: Vec<&String> = ledger
        .acked
        .iter()
        .filter(|(k, v)| held.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{who}: {} of {} acknowledged writes missing or wrong, e.g. {:?} = {:?}",
            missing.len(),
            ledger.acked.len(),
            missing[0],
            held.get(missing[0])
        ));
    }
    for (k, v) in held {
        let known = ledger.acked.get(k).or_else(|| ledger.uncertain.get(k));
        if known != Some(v) {
            return Err(format!("{who}: holds {k:?} = {v:?}, which nobody wrote"));
        }
    }
    Ok(())
}

fn wait_for_acks(acked: &AtomicUsize, at_least: usize, what: &str) -> usize {
    let started = Instant::now();
    while acked.load(Ordering::Relaxed) < at_least && started.elapsed() < PHASE_LIMIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let now = acked.load(Ordering::Relaxed);
    eprintln!("{what}: {now} acknowledged after {:?}", started.elapsed());
    now
}

#[test]
fn acknowledged_writes_survive_a_leader_kill() {
    let mut c = Cluster::start(3);
    let urls: Vec<String> = c.members().iter().map(|m| m.client_url()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            rt.spawn(writer(
                id,
                urls.clone(),
                ledger.clone(),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // Phase 1: a healthy cluster. Then kill -9 the leader mid-stream.
    wait_for_acks(&acked, PHASE_TARGET, "before the kill");
    let leader = c.leader();
    let killed_at = Instant::now();
    c.kill(leader);
    let acked_at_kill = acked.load(Ordering::Relaxed);
    eprintln!("killed the leader, {}", c.member(leader).name);

    // Phase 2: the writers go on against the survivors.
    wait_for_acks(
        &acked,
        acked_at_kill + PHASE_TARGET,
        "after the kill (running total)",
    );
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for w in writers {
            tokio::time::timeout(Duration::from_secs(15), w)
                .await
                .expect("writer stops")
                .expect("writer task");
        }
    });
    let ledger = Arc::try_unwrap(ledger)
        .ok()
        .expect("writers are done")
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let total = ledger.acked.len();
    let after_kill = total - acked_at_kill;
    eprintln!(
        "writes: {total} acknowledged ({acked_at_kill} before the kill, {after_kill} after it, \
         over {:?} since it), {} uncertain",
        killed_at.elapsed(),
        ledger.uncertain.len()
    );
    assert!(total > 200, "only {total} acknowledged writes");
    assert!(
        after_kill > 50,
        "only {after_kill} writes acknowledged after the leader was killed"
    );

    // Every survivor serves every acknowledged write (linearizable reads),
    // and the survivors agree on the whole keyspace. (Polled for agreement
    // only: a write whose client gave up could in principle still be
    // applied late, moving every member on together.)
    let survivors = c.running();
    let reference = poll_until(Duration::from_secs(30), "the survivors to agree", || {
        let mut reference: Option<BTreeMap<String, String>> = None;
        for &i in &survivors {
            let held = rt.block_on(dump(&urls[i], false))?;
            if let Err(e) = check(&c.member(i).name, &held, &ledger) {
                panic!("{e}\n{}", c.logs());
            }
            match &reference {
                None => reference = Some(held),
                Some(r) if *r == held => {}
                Some(r) => {
                    return Err(format!(
                        "survivors disagree: {} keys vs {}",
                        r.len(),
                        held.len()
                    ));
                }
            }
        }
        reference.ok_or_else(|| "no survivors".to_string())
    });

    // The killed member comes back from its data dir and catches up:
    // serializable (member-local) reads, polled until they match.
    c.restart(leader);
    let name = c.member(leader).name.clone();
    let caught_up = poll_until(
        Duration::from_secs(60),
        "the restarted member to catch up",
        || {
            let held = rt.block_on(dump(&urls[leader], true))?;
            check(&name, &held, &ledger)?;
            let now = rt.block_on(dump(&urls[survivors[0]], false))?;
            if held == now {
                Ok(held)
            } else {
                Err(format!(
                    "{name} holds {} keys, the survivors {}",
                    held.len(),
                    now.len()
                ))
            }
        },
    );
    assert!(caught_up.len() >= reference.len());

    // And etcdctl agrees: each writer's last acknowledged write, read
    // member-locally from the restarted member.
    for id in 0..WRITERS {
        let mine = format!("{PREFIX}{id}/");
        let (k, v) = ledger
            .acked
            .range(mine.clone()..)
            .take_while(|(k, _)| k.starts_with(&mine))
            .last()
            .expect("every writer got writes acknowledged");
        assert_eq!(
            c.ctl_on(leader, &["get", k, "--consistency=s", "--print-value-only"]),
            format!("{v}\n")
        );
    }
    let count = c.ctl_on(
        leader,
        &[
            "get",
            PREFIX,
            "--prefix",
            "--consistency=s",
            "--keys-only",
            "-w",
            "json",
        ],
    );
    let count: serde_json::Value = serde_json::from_str(&count).expect("json");
    assert_eq!(count["count"].as_u64(), Some(caught_up.len() as u64));
}

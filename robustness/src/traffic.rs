//! Client traffic with a recorded history: `clients` sequential clients,
//! each pinned to one member, together at a fixed total rate, doing the
//! etcd "put/delete/lease" mix on a few keys (puts, puts with a lease,
//! linearizable and serializable gets, prefix gets, deletes, txns guarded on
//! mod_revision), plus watchers that open watches at offsets around the
//! current revision and one witness watch over the whole run.
//!
//! Every value written is unique in the run (`c<client>-<seq>`), which is
//! what lets the checkers identify writes from what was read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType as PbEventType,
    GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{
    Event, EventType, Kv, Op, Outcome, Request, Response, Time, Watch, WatchResponse, WatchSegment,
};

#[derive(Clone, Debug)]
pub struct TrafficConfig {
    pub prefix: String,
    pub clients: usize,
    /// Operations per second, all clients together.
    pub rate: u32,
    pub keys: usize,
    pub request_timeout: Duration,
    /// Clients opening short watches at offsets around the current revision.
    pub watchers: usize,
    /// TTL of the leases keys are attached to (long: no expiry in a run).
    pub lease_ttl: i64,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            prefix: "rob/".into(),
            clients: 32,
            rate: 240,
            keys: 8,
            request_timeout: Duration::from_secs(1),
            watchers: 2,
            lease_ttl: 3600,
        }
    }
}

/// The shared history being written, and what the run controller watches.
pub struct Recorder {
    epoch: Instant,
    ops: Mutex<Vec<Op>>,
    watches: Mutex<Vec<Watch>>,
    /// Highest header revision any answer carried.
    pub latest_revision: AtomicI64,
    /// Highest revision the witness watch received.
    pub witness_upto: AtomicI64,
    /// Successful operations so far.
    pub acked: std::sync::atomic::AtomicUsize,
    /// Clients stop issuing requests.
    pub stop_clients: AtomicBool,
    /// Watchers (including the witness) stop.
    pub stop_watches: AtomicBool,
}

impl Recorder {
    pub fn new(start_revision: i64) -> Recorder {
        Recorder {
            epoch: Instant::now(),
            ops: Mutex::new(Vec::new()),
            watches: Mutex::new(Vec::new()),
            latest_revision: AtomicI64::new(start_revision),
            witness_upto: AtomicI64::new(start_revision),
            acked: Default::default(),
            stop_clients: AtomicBool::new(false),
            stop_watches: AtomicBool::new(false),
        }
    }

    pub fn now(&self) -> Time {
        self.epoch.elapsed().as_nanos() as Time
    }

    fn record(&self, mut op: Op) {
        if let Some(r) = op.response() {
            self.latest_revision
                .fetch_max(r.revision(), Ordering::Relaxed);
            self.acked.fetch_add(1, Ordering::Relaxed);
        }
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        op.id = ops.len();
        ops.push(op);
    }

    fn record_watch(&self, mut watch: Watch) {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watch.id = watches.len();
        watches.push(watch);
    }

    /// Everything recorded so far.
    pub fn take(&self) -> (Vec<Op>, Vec<Watch>) {
        let ops = std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()));
        let watches = std::mem::take(&mut *self.watches.lock().unwrap_or_else(|e| e.into_inner()));
        (ops, watches)
    }
}

pub async fn connect(url: &str, timeout: Duration) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    Client::connect([url], Some(options)).await
}

pub fn kv_of(kv: &KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision())
}

/// Sends one request; `Err` carries why the outcome is unknown.
async fn send(client: &mut Client, request: &Request) -> Result<Response, String> {
    match request {
        Request::Put { key, value, lease } => {
            let mut options = PutOptions::new().with_prev_key();
            if *lease != 0 {
                options = options.with_lease(*lease);
            }
            let resp = client
                .put(key.as_str(), value.as_str(), Some(options))
                .await
                .map_err(|e| e.to_string())?;
            Ok(Response::Put {
                revision: header_revision(resp.header()),
                prev: resp.prev_key().map(kv_of),
            })
        }
        Request::Get {
            key,
            prefix,
            serializable,
        } => {
            let mut options = GetOptions::new();
            if *prefix {
                options = options.with_prefix();
            }
            if *serializable {
                options = options.with_serializable();
            }
            let resp = client
                .get(key.as_str(), Some(options))
                .await
                .map_err(|e| e.to_string())?;
            Ok(Response::Get {
                revision: header_revision(resp.header()),
                kvs: resp.kvs().iter().map(kv_of).collect(),
            })
        }
        Request::Delete { key } => {
            let resp = client
                .delete(key.as_str(), Some(DeleteOptions::new().with_prev_key()))
                .await
                .map_err(|e| e.to_string())?;
            Ok(Response::Delete {
                revision: header_revision(resp.header()),
                deleted: resp.deleted(),
                prev: resp.prev_kvs().first().map(kv_of),
            })
        }
        Request::CasPut {
            key,
            expect_mod_revision,
            value,
            ..
        } => {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    *expect_mod_revision,
                )])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_prev_key()),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = client.txn(txn).await.map_err(|e| e.to_string())?;
            let kv = match resp.op_responses().first() {
                Some(TxnOpResponse::Put(p)) => p.prev_key().map(kv_of),
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map(kv_of),
                other => return Err(format!("unexpected txn response {other:?}")),
            };
            Ok(Response::Cas {
                revision: header_revision(resp.header()),
                succeeded: resp.succeeded(),
                kv,
            })
        }
    }
}

/// One client: sequential requests to member `member` at `period`.
#[allow(clippy::too_many_arguments)]
pub async fn client_loop(
    id: usize,
    member: usize,
    url: String,
    cfg: TrafficConfig,
    seed: u64,
    recorder: Arc<Recorder>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let Ok(mut client) = connect(&url, cfg.request_timeout).await else {
        return;
    };
    let lease =
        match tokio::time::timeout(cfg.request_timeout, client.lease_grant(cfg.lease_ttl, None))
            .await
        {
            Ok(Ok(resp)) => resp.id(),
            _ => 0,
        };
    let period = Duration::from_secs_f64(cfg.clients as f64 / f64::from(cfg.rate));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What this client last saw of each key: (mod_revision, value).
    let mut seen: HashMap<String, (i64, Option<String>)> = HashMap::new();
    let mut seq = 0u64;
    while !recorder.stop_clients.load(Ordering::Relaxed) {
        tick.tick().await;
        seq += 1;
        let key = format!("{}k{}", cfg.prefix, rng.random_range(0..cfg.keys));
        let value = format!("c{id}-{seq}");
        let request = match rng.random_range(0..100) {
            0..30 => Request::Put {
                key,
                value,
                lease: 0,
            },
            30..35 => Request::Put { key, value, lease },
            35..55 => Request::Get {
                key,
                prefix: false,
                serializable: false,
            },
            55..65 => Request::Get {
                key,
                prefix: false,
                serializable: true,
            },
            65..70 => Request::Get {
                key: cfg.prefix.clone(),
                prefix: true,
                serializable: false,
            },
            70..78 => Request::Delete { key },
            _ => {
                let (m, v) = seen.get(&key).cloned().unwrap_or((0, None));
                Request::CasPut {
                    key,
                    expect_mod_revision: m,
                    expect_value: v,
                    value,
                }
            }
        };
        let invoke = recorder.now();
        let result = tokio::time::timeout(cfg.request_timeout, send(&mut client, &request)).await;
        let ret = recorder.now();
        let outcome = match result {
            Ok(Ok(resp)) => {
                learn(&mut seen, &request, &resp);
                Outcome::Ok(resp)
            }
            Ok(Err(e)) => Outcome::Unknown(e),
            Err(_) => Outcome::Unknown("client timeout".into()),
        };
        // A read that failed has no effect: nothing to check.
        if !request.may_write() && matches!(outcome, Outcome::Unknown(_)) {
            continue;
        }
        let ret = matches!(outcome, Outcome::Ok(_)).then_some(ret);
        recorder.record(Op {
            id: 0,
            client: id,
            member,
            invoke,
            ret,
            request,
            outcome,
        });
    }
}

fn learn(seen: &mut HashMap<String, (i64, Option<String>)>, request: &Request, resp: &Response) {
    let key = request.key().to_owned();
    match (request, resp) {
        (Request::Put { value, .. }, Response::Put { revision, .. })
        | (
            Request::CasPut { value, .. },
            Response::Cas {
                revision,
                succeeded: true,
                ..
            },
        ) => {
            seen.insert(key, (*revision, Some(value.clone())));
        }
        (Request::Delete { .. }, Response::Delete { deleted, .. }) if *deleted > 0 => {
            seen.insert(key, (0, None));
        }
        (Request::Get { .. }, Response::Get { kvs, .. }) => {
            for kv in kvs {
                seen.insert(kv.key.clone(), (kv.mod_revision, Some(kv.value.clone())));
            }
        }
        (Request::CasPut { .. }, Response::Cas { kv, .. }) => {
            let now = kv
                .as_ref()
                .map_or((0, None), |kv| (kv.mod_revision, Some(kv.value.clone())));
            seen.insert(key, now);
        }
        _ => {}
    }
}

/// Reads one watch stream until `until`, a cancel, or a break.
async fn watch_segment(
    url: &str,
    member: usize,
    prefix: &str,
    start: i64,
    until: Option<Instant>,
    recorder: &Recorder,
) -> WatchSegment {
    let mut segment = WatchSegment {
        member,
        start_revision: start,
        responses: Vec::new(),
        broken: None,
    };
    let opened = async {
        let mut client = connect(url, Duration::from_secs(1)).await?;
        client
            .watch(
                prefix,
                Some(WatchOptions::new().with_prefix().with_start_revision(start)),
            )
            .await
    };
    let mut stream = match tokio::time::timeout(Duration::from_secs(2), opened).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            segment.broken = Some(e.to_string());
            return segment;
        }
        Err(_) => {
            segment.broken = Some("watch open timed out".into());
            return segment;
        }
    };
    loop {
        if recorder.stop_watches.load(Ordering::Relaxed)
            || until.is_some_and(|u| Instant::now() >= u)
        {
            return segment;
        }
        // Short waits, so the stop flags are seen promptly.
        let next = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
        let resp = match next {
            Err(_) => continue,
            Ok(Ok(Some(resp))) => resp,
            Ok(Ok(None)) => {
                segment.broken = Some("stream ended".into());
                return segment;
            }
            Ok(Err(e)) => {
                segment.broken = Some(e.to_string());
                return segment;
            }
        };
        let events: Vec<Event> = resp
            .events()
            .iter()
            .filter_map(|e| {
                Some(Event {
                    kind: match e.event_type() {
                        PbEventType::Put => EventType::Put,
                        PbEventType::Delete => EventType::Delete,
                    },
                    kv: kv_of(e.kv()?),
                })
            })
            .collect();
        let canceled = resp.canceled();
        if events.is_empty() && !canceled {
            continue;
        }
        segment.responses.push(WatchResponse {
            received: recorder.now(),
            header_revision: header_revision(resp.header()),
            events,
            compact_revision: resp.compact_revision(),
            canceled,
        });
        if canceled {
            segment.broken = Some(format!("canceled: {}", resp.cancel_reason()));
            return segment;
        }
    }
}

/// A logical watch from `start` on `prefix` until `until` (or, for the
/// witness, until the watches are stopped), resumed on the next member from
/// the last revision received + 1 whenever a stream breaks.
pub async fn watch_loop(
    client: usize,
    urls: Vec<String>,
    prefix: String,
    start: i64,
    until: Option<Instant>,
    recorder: Arc<Recorder>,
) {
    let mut watch = Watch {
        id: 0,
        client,
        prefix: prefix.clone(),
        start_revision: start,
        segments: Vec::new(),
    };
    let mut next = start;
    let mut member = client % urls.len();
    while !recorder.stop_watches.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u)
    {
        let segment = watch_segment(&urls[member], member, &prefix, next, until, &recorder).await;
        for resp in &segment.responses {
            for e in &resp.events {
                next = next.max(e.kv.mod_revision + 1);
            }
        }
        if until.is_none() {
            recorder.witness_upto.fetch_max(next - 1, Ordering::Relaxed);
        }
        let broken = segment.broken.is_some();
        // Compacted past where it would resume: etcd ends such a watch for
        // good (canceled with compact_revision); so does the client.
        let compacted = segment
            .responses
            .last()
            .is_some_and(|r| r.canceled && r.compact_revision > 0);
        watch.segments.push(segment);
        if compacted {
            break;
        }
        if broken {
            member = (member + 1) % urls.len();
            // Do not spin against a member that is down.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    recorder.record_watch(watch);
}

/// Watchers: each opens watches at offsets of -30..+5 around the latest
/// revision, for 0.5–2 s each, until the watches are stopped.
pub async fn watcher_loop(
    id: usize,
    urls: Vec<String>,
    cfg: TrafficConfig,
    seed: u64,
    recorder: Arc<Recorder>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5741_5443_4845_5253 ^ id as u64);
    while !recorder.stop_watches.load(Ordering::Relaxed)
        && !recorder.stop_clients.load(Ordering::Relaxed)
    {
        let latest = recorder.latest_revision.load(Ordering::Relaxed);
        let start = (latest + rng.random_range(-30..=5)).max(1);
        let until = Instant::now() + Duration::from_millis(rng.random_range(500..2000));
        watch_loop(
            id + 1000,
            urls.clone(),
            cfg.prefix.clone(),
            start,
            Some(until),
            recorder.clone(),
        )
        .await;
    }
}

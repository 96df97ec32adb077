//! Leader election: the pure decisions, `run_while_leading` driven by hand,
//! and the elector against a mocked API server (tower-test).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;

const ME: &str = "witan-operator-0";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/witan-operator";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

fn config() -> LeaseConfig {
    LeaseConfig {
        lease_name: "witan-operator".into(),
        namespace: "ops".into(),
        identity: ME.into(),
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    }
}

fn held_by(holder: &str, duration_seconds: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(duration_seconds),
        lease_transitions: Some(3),
        ..LeaseSpec::default()
    }
}

fn micro(seconds: i64) -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
}

// ---- pure decisions -------------------------------------------------------

#[test]
fn a_missing_lease_is_created() {
    let d = decide(ME, None, Duration::ZERO, Duration::from_secs(15));
    assert_eq!(d, Decision::Create);
}

#[test]
fn a_free_lease_is_acquired_at_once() {
    let default = Duration::from_secs(15);
    assert_eq!(
        decide(ME, Some(&LeaseSpec::default()), Duration::ZERO, default),
        Decision::Acquire
    );
    let empty = LeaseSpec {
        holder_identity: Some(String::new()),
        ..LeaseSpec::default()
    };
    assert_eq!(
        decide(ME, Some(&empty), Duration::ZERO, default),
        Decision::Acquire
    );
}

#[test]
fn our_own_lease_is_renewed() {
    let d = decide(
        ME,
        Some(&held_by(ME, 15)),
        Duration::from_secs(100),
        Duration::from_secs(15),
    );
    assert_eq!(d, Decision::Renew);
}

#[test]
fn another_holders_lease_is_taken_only_after_it_stayed_unchanged_for_its_duration() {
    let other = held_by("witan-operator-1", 15);
    let default = Duration::from_secs(15);
    assert_eq!(
        decide(ME, Some(&other), Duration::from_secs(14), default),
        Decision::Follow
    );
    assert_eq!(
        decide(ME, Some(&other), Duration::from_secs(15), default),
        Decision::Acquire
    );
}

#[test]
fn expiry_uses_the_duration_the_holder_wrote() {
    // The holder promised 60s; our own default of 15s must not shorten it.
    let other = held_by("witan-operator-1", 60);
    let default = Duration::from_secs(15);
    assert_eq!(
        decide(ME, Some(&other), Duration::from_secs(30), default),
        Decision::Follow
    );
    assert_eq!(
        decide(ME, Some(&other), Duration::from_secs(60), default),
        Decision::Acquire
    );
}

#[test]
fn acquiring_counts_a_transition_and_renewing_keeps_it() {
    let other = LeaseSpec {
        acquire_time: Some(micro(100)),
        ..held_by("witan-operator-1", 15)
    };
    let taken = claimed(Some(&other), ME, Decision::Acquire, &micro(200), 15);
    assert_eq!(taken.holder_identity.as_deref(), Some(ME));
    assert_eq!(taken.lease_transitions, Some(4));
    assert_eq!(taken.acquire_time, Some(micro(200)));
    assert_eq!(taken.renew_time, Some(micro(200)));
    assert_eq!(taken.lease_duration_seconds, Some(15));

    let renewed = claimed(Some(&taken), ME, Decision::Renew, &micro(210), 15);
    assert_eq!(renewed.lease_transitions, Some(4));
    assert_eq!(renewed.acquire_time, Some(micro(200)));
    assert_eq!(renewed.renew_time, Some(micro(210)));

    let created = claimed(None, ME, Decision::Create, &micro(1), 15);
    assert_eq!(created.lease_transitions, Some(0));
    assert_eq!(created.holder_identity.as_deref(), Some(ME));
}

#[test]
fn a_released_lease_is_free_for_the_next_candidate_at_once() {
    let ours = claimed(None, ME, Decision::Create, &micro(1), 15);
    let free = released(&ours, &micro(2));
    assert_eq!(free.holder_identity, None);
    assert_eq!(free.lease_duration_seconds, Some(1));
    assert_eq!(free.lease_transitions, Some(0));
    assert_eq!(
        decide(
            "witan-operator-1",
            Some(&free),
            Duration::ZERO,
            Duration::from_secs(15)
        ),
        Decision::Acquire
    );
}

#[test]
fn a_leader_steps_down_when_it_cannot_renew_within_the_deadline() {
    let t0 = Instant::now();
    let deadline = Duration::from_secs(10);
    // Renewed: leads.
    assert!(still_leading(true, Some(true), Some(t0), t0, deadline));
    // A failed round inside the deadline: still leads.
    let t9 = t0 + Duration::from_secs(9);
    assert!(still_leading(true, None, Some(t0), t9, deadline));
    // A failed round at the deadline: steps down.
    let t10 = t0 + Duration::from_secs(10);
    assert!(!still_leading(true, None, Some(t0), t10, deadline));
    // Someone else wrote the lease (conflict or new holder): steps down at once.
    assert!(!still_leading(true, Some(false), Some(t0), t0, deadline));
    // A follower whose round failed stays a follower.
    assert!(!still_leading(false, None, None, t0, deadline));
}

#[test]
fn config_validation_protects_the_timing_invariants() {
    assert_eq!(config().validate(), Ok(()));
    let mut c = config();
    c.identity = String::new();
    assert_eq!(c.validate(), Err(ConfigError::NoIdentity));
    let mut c = config();
    c.renew_deadline = c.lease_duration;
    assert!(matches!(c.validate(), Err(ConfigError::Timing { .. })));
    let mut c = config();
    c.retry_period = c.renew_deadline;
    assert!(matches!(c.validate(), Err(ConfigError::Timing { .. })));
    let mut c = config();
    c.lease_duration = Duration::from_millis(15_500);
    assert_eq!(
        c.validate(),
        Err(ConfigError::Duration(Duration::from_millis(15_500)))
    );
}

// ---- run_while_leading ----------------------------------------------------

/// A controller that counts its starts and its drops, and finishes when told.
struct FakeController {
    started: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    finish: watch::Receiver<bool>,
}

struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl FakeController {
    fn start(&self) -> impl Future<Output = ()> + use<> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let guard = DropCount(self.dropped.clone());
        let mut finish = self.finish.clone();
        async move {
            let _guard = guard;
            let _ = finish.wait_for(|done| *done).await;
        }
    }
}

#[tokio::test]
async fn the_controller_runs_only_while_leading_and_restarts_when_leadership_returns() {
    let (leading_tx, leading_rx) = watch::channel(false);
    let (finish_tx, finish_rx) = watch::channel(false);
    let fake = FakeController {
        started: Arc::default(),
        dropped: Arc::default(),
        finish: finish_rx,
    };
    let never = std::future::pending::<()>;
    let run = run_while_leading(leading_rx, || fake.start(), never);
    tokio::pin!(run);

    // Standing by: nothing runs.
    assert!(futures::poll!(&mut run).is_pending());
    assert_eq!(fake.started.load(Ordering::SeqCst), 0);

    // Leadership gained: the controller starts.
    leading_tx.send_replace(true);
    assert!(futures::poll!(&mut run).is_pending());
    assert_eq!(fake.started.load(Ordering::SeqCst), 1);
    assert_eq!(fake.dropped.load(Ordering::SeqCst), 0);

    // Leadership lost: the controller is dropped, nothing new starts.
    leading_tx.send_replace(false);
    assert!(futures::poll!(&mut run).is_pending());
    assert_eq!(fake.dropped.load(Ordering::SeqCst), 1);
    assert_eq!(fake.started.load(Ordering::SeqCst), 1);

    // Leadership back: a fresh controller.
    leading_tx.send_replace(true);
    assert!(futures::poll!(&mut run).is_pending());
    assert_eq!(fake.started.load(Ordering::SeqCst), 2);

    // The controller stops by itself (a signal): the loop ends.
    finish_tx.send_replace(true);
    assert_eq!(run.await, Ended::ControllerStopped);
}

#[tokio::test]
async fn a_standby_replica_ends_on_shutdown_or_when_the_elector_goes() {
    let (_leading_tx, leading_rx) = watch::channel(false);
    let ended = run_while_leading(
        leading_rx,
        || async { panic!("a standby replica must not start the controller") },
        || async {},
    )
    .await;
    assert_eq!(ended, Ended::Shutdown);

    let (leading_tx, leading_rx) = watch::channel(true);
    let run = run_while_leading(
        leading_rx,
        std::future::pending::<()>,
        std::future::pending::<()>,
    );
    tokio::pin!(run);
    assert!(futures::poll!(&mut run).is_pending());
    drop(leading_tx);
    assert_eq!(run.await, Ended::ElectionStopped);
}

// ---- the elector against a mocked API server ------------------------------

type ApiServer = Handle<Request<Body>, Response<Body>>;

fn elector() -> (LeaderElector, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    (
        LeaderElector::new(client, config()).expect("valid config"),
        handle,
    )
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": reason, "code": code, "message": reason})
}

fn lease(resource_version: &str, spec: &LeaseSpec) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "witan-operator", "namespace": "ops",
                     "resourceVersion": resource_version},
        "spec": spec,
    })
}

/// Expect `method path` next, answer `code` with `answer` (or the request's
/// own body when `answer` is null), and return the request body.
async fn expect(
    server: &mut ApiServer,
    method: Method,
    path: &str,
    code: u16,
    answer: Value,
) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(60), server.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came for {method} {path}"))
        .unwrap_or_else(|| panic!("client gone before {method} {path}"));
    assert_eq!((request.method(), request.uri().path()), (&method, path));
    let bytes = request.into_body().collect_bytes().await.expect("body");
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    let answer = if answer.is_null() {
        body.clone()
    } else {
        answer
    };
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
    body
}

#[tokio::test]
async fn a_missing_lease_is_created_with_us_as_holder() {
    let (mut elector, mut server) = elector();
    let round = tokio::spawn(async move { elector.try_acquire_or_renew(Instant::now()).await });
    expect(
        &mut server,
        Method::GET,
        LEASE,
        404,
        status(404, "NotFound"),
    )
    .await;
    let created = expect(&mut server, Method::POST, LEASES, 201, Value::Null).await;
    assert_eq!(created["metadata"]["name"], "witan-operator");
    assert_eq!(created["spec"]["holderIdentity"], ME);
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(created["spec"]["leaseTransitions"], 0);
    assert!(round.await.unwrap().expect("round succeeds"));
}

#[tokio::test]
async fn losing_the_race_to_create_the_lease_means_following() {
    let (mut elector, mut server) = elector();
    let round = tokio::spawn(async move { elector.try_acquire_or_renew(Instant::now()).await });
    expect(
        &mut server,
        Method::GET,
        LEASE,
        404,
        status(404, "NotFound"),
    )
    .await;
    expect(
        &mut server,
        Method::POST,
        LEASES,
        409,
        status(409, "AlreadyExists"),
    )
    .await;
    assert!(!round.await.unwrap().expect("round succeeds"));
}

#[tokio::test]
async fn an_abandoned_lease_is_taken_with_its_resource_version_after_the_lease_duration() {
    let (mut elector, mut server) = elector();
    let other = held_by("witan-operator-1", 15);
    let renewed = LeaseSpec {
        renew_time: Some(micro(500)),
        ..other.clone()
    };
    let t0 = Instant::now();
    // (time offset, what the API server holds, whether we hold it afterwards)
    let rounds = [
        (0, lease("7", &other), false),
        // The holder renewed: the clock restarts.
        (10, lease("8", &renewed), false),
        (20, lease("8", &renewed), false),
        // Unchanged for 15s on our clock: the holder is gone.
        (25, lease("8", &renewed), true),
    ];
    for (offset, current, expect_held) in rounds {
        let now = t0 + Duration::from_secs(offset);
        let round = async { elector.try_acquire_or_renew(now).await };
        let server = async {
            expect(&mut server, Method::GET, LEASE, 200, current).await;
            if expect_held {
                let put = expect(&mut server, Method::PUT, LEASE, 200, Value::Null).await;
                assert_eq!(put["metadata"]["resourceVersion"], "8", "optimistic lock");
                assert_eq!(put["spec"]["holderIdentity"], ME);
                assert_eq!(put["spec"]["leaseTransitions"], 4);
            }
        };
        let (held, ()) = tokio::join!(round, server);
        assert_eq!(held.expect("round succeeds"), expect_held, "at +{offset}s");
    }
}

#[tokio::test]
async fn a_conflicting_write_means_someone_else_won() {
    let (mut elector, mut server) = elector();
    let round = tokio::spawn(async move { elector.try_acquire_or_renew(Instant::now()).await });
    expect(
        &mut server,
        Method::GET,
        LEASE,
        200,
        lease("3", &LeaseSpec::default()),
    )
    .await;
    expect(
        &mut server,
        Method::PUT,
        LEASE,
        409,
        status(409, "Conflict"),
    )
    .await;
    assert!(!round.await.unwrap().expect("round succeeds"));
}

#[tokio::test(start_paused = true)]
async fn the_elector_leads_renews_and_releases_the_lease_when_the_controller_stops() {
    let (elector, mut server) = elector();
    let (tx, mut rx) = watch::channel(false);
    let task = tokio::spawn(elector.run(tx));
    expect(
        &mut server,
        Method::GET,
        LEASE,
        404,
        status(404, "NotFound"),
    )
    .await;
    let created = expect(&mut server, Method::POST, LEASES, 201, Value::Null).await;
    rx.wait_for(|leading| *leading).await.expect("elector runs");

    // The next round renews with the resourceVersion it read.
    let mut stored = created.clone();
    stored["metadata"]["resourceVersion"] = json!("2");
    expect(&mut server, Method::GET, LEASE, 200, stored.clone()).await;
    let put = expect(&mut server, Method::PUT, LEASE, 200, Value::Null).await;
    assert_eq!(put["metadata"]["resourceVersion"], "2");
    assert_eq!(put["spec"]["holderIdentity"], ME);

    // The controller stopped (every receiver gone): the lease is released.
    drop(rx);
    stored["spec"] = put["spec"].clone();
    expect(&mut server, Method::GET, LEASE, 200, stored).await;
    let release = expect(&mut server, Method::PUT, LEASE, 200, Value::Null).await;
    assert_eq!(release["spec"].get("holderIdentity"), None);
    assert_eq!(release["spec"]["leaseDurationSeconds"], 1);
    task.await.expect("elector ends");
}

#[tokio::test(start_paused = true)]
async fn the_elector_steps_down_when_the_api_server_fails_past_the_renew_deadline() {
    let (elector, mut server) = elector();
    let (tx, mut rx) = watch::channel(false);
    let _task = tokio::spawn(elector.run(tx));
    expect(
        &mut server,
        Method::GET,
        LEASE,
        404,
        status(404, "NotFound"),
    )
    .await;
    expect(&mut server, Method::POST, LEASES, 201, Value::Null).await;
    rx.wait_for(|leading| *leading).await.expect("elector runs");
    let leading_since = Instant::now();

    // Every later round fails. The elector must keep leading for less than
    // the renew deadline (10s), then step down.
    let failures = async {
        loop {
            expect(
                &mut server,
                Method::GET,
                LEASE,
                500,
                status(500, "InternalError"),
            )
            .await;
        }
    };
    let stepped_down = async {
        tokio::select! {
            () = failures => unreachable!(),
            changed = rx.wait_for(|leading| !*leading) => { changed.expect("elector runs"); }
        }
    };
    // Virtual time (paused clock): a bound, not a wait.
    tokio::time::timeout(Duration::from_secs(60), stepped_down)
        .await
        .expect("the elector stepped down");
    let led_for = leading_since.elapsed();
    assert!(
        led_for >= Duration::from_secs(10) && led_for < Duration::from_secs(15),
        "stepped down after {led_for:?}"
    );
}

//! The controller against a mocked API server (tower-test) and fake members:
//! every request the reconcile makes is asserted, in order.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body, runtime::events::Reporter};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::{
    access::Access,
    crd::{KvClusterStatus, Phase},
    members::MemberError,
    observed::{Membership, ObservedMember},
    resources::testing::kvc,
};

/// Members as the test scripts them; records every mutating call.
#[derive(Default)]
struct FakeMembers {
    membership: Option<Membership>,
    calls: Mutex<Vec<String>>,
    auth: Mutex<crate::auth::AuthState>,
    /// The access each observe was given.
    accesses: Mutex<Vec<Access>>,
}

impl FakeMembers {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl MemberApi for FakeMembers {
    fn observe<'a>(
        &'a self,
        _names: &'a ClusterNames,
        _endpoints: &'a [String],
        access: &'a Access,
    ) -> BoxFuture<'a, Result<Option<Membership>, MemberError>> {
        self.accesses.lock().unwrap().push(access.clone());
        Box::pin(async { Ok(self.membership.clone()) })
    }

    fn add_learner<'a>(
        &'a self,
        _endpoints: &'a [String],
        _access: &'a Access,
        peer_url: &'a str,
    ) -> BoxFuture<'a, Result<u64, MemberError>> {
        self.record(format!("add_learner {peer_url}"));
        Box::pin(async { Ok(0x99) })
    }

    fn change_voters<'a>(
        &'a self,
        _endpoints: &'a [String],
        _access: &'a Access,
        voters: &'a BTreeSet<u64>,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        self.record(format!("change_voters {voters:?}"));
        Box::pin(async { Ok(()) })
    }

    fn move_leader<'a>(
        &'a self,
        endpoints: &'a [String],
        _access: &'a Access,
        to: u64,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        self.record(format!("move_leader {endpoints:?} {to}"));
        Box::pin(async { Ok(()) })
    }

    fn remove_member<'a>(
        &'a self,
        _endpoints: &'a [String],
        _access: &'a Access,
        id: u64,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        self.record(format!("remove_member {id}"));
        Box::pin(async { Ok(()) })
    }

    fn auth_state<'a>(
        &'a self,
        _endpoints: &'a [String],
        _access: &'a Access,
    ) -> BoxFuture<'a, Result<crate::auth::AuthState, MemberError>> {
        Box::pin(async { Ok(self.auth.lock().unwrap().clone()) })
    }

    fn auth_apply<'a>(
        &'a self,
        _endpoints: &'a [String],
        _access: &'a Access,
        step: &'a crate::auth::AuthStep,
        password: &'a str,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        use crate::auth::AuthStep;
        self.record(format!("auth {step:?} password={password}"));
        let mut auth = self.auth.lock().unwrap();
        match step {
            AuthStep::AddRootRole => {
                auth.roles.insert("root".into());
            }
            AuthStep::AddUser { user } => {
                auth.users.insert(user.clone(), BTreeSet::new());
            }
            AuthStep::GrantRoot { user } => {
                auth.users
                    .entry(user.clone())
                    .or_default()
                    .insert("root".into());
            }
            AuthStep::Enable => auth.enabled = true,
            AuthStep::Done => {}
        }
        Box::pin(async { Ok(()) })
    }
}

type ApiServer = Handle<Request<Body>, Response<Body>>;

fn context(members: Arc<FakeMembers>) -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let reporter = Reporter {
        controller: "witan-operator".into(),
        instance: None,
    };
    let ctx = Context::new(client, members, Arc::new(Metrics::new()), reporter);
    (Arc::new(ctx), handle)
}

/// What the fake API server answers.
enum Reply {
    /// The object the request carried (what an apply returns, near enough).
    Echo,
    NotFound,
    Json(Value),
}

/// Expect the next request to be `method path`, answer it, return its body.
async fn expect(server: &mut ApiServer, method: Method, path: &str, reply: Reply) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), server.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came for {method} {path}"))
        .unwrap_or_else(|| panic!("client gone before {method} {path}"));
    assert_eq!((request.method(), request.uri().path()), (&method, path));
    if method == Method::PATCH {
        let query = request.uri().query().unwrap_or_default();
        assert!(query.contains("fieldManager=witan-operator"), "{query}");
        // The API server takes `force` on server-side apply only.
        let apply = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t == "application/apply-patch+yaml");
        assert_eq!(query.contains("force=true"), apply, "{query}");
    }
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    let (status, answer) = match reply {
        Reply::Echo => (StatusCode::OK, body.clone()),
        Reply::Json(v) => (StatusCode::OK, v),
        Reply::NotFound => (
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": "not found"}),
        ),
    };
    let response = Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
        .unwrap();
    send.send_response(response);
    body
}

const STS: &str = "/apis/apps/v1/namespaces/prod/statefulsets/kv";
const PODS: &str = "/api/v1/namespaces/prod/pods";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/prod/events";
const STATUS: &str = "/apis/witan.io/v1alpha1/namespaces/prod/kvclusters/kv/status";
const CRONJOB: &str = "/apis/batch/v1/namespaces/prod/cronjobs/kv-backup";

fn existing_statefulset(replicas: i32) -> Value {
    let kvc = kvc(replicas);
    let names = ClusterNames::of(&kvc).unwrap();
    let mut sts = serde_json::to_value(
        resources::statefulset::build(
            &kvc,
            &names,
            replicas,
            resources::cronjob::DEFAULT_BACKUP_IMAGE,
        )
        .unwrap(),
    )
    .unwrap();
    sts["status"] = json!({"replicas": replicas, "updateRevision": "kv-r1"});
    sts
}

fn ready_pods(count: u32) -> Value {
    let items: Vec<Value> = (0..count)
        .map(|i| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("kv-{i}"), "namespace": "prod",
                             "labels": {"controller-revision-hash": "kv-r1"}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn healthy_three() -> Membership {
    let member = |i: u32| ObservedMember {
        id: 100 + u64::from(i),
        name: format!("kv-{i}"),
        is_learner: false,
        is_leader: i == 0,
        healthy: true,
        caught_up: true,
        revision: Some(5),
    };
    Membership {
        members: (0..3).map(member).collect(),
        joint_target: None,
        cluster_id: Some(0xc1),
    }
}

/// Expects the applies of the Services, the PDB, and (when `configmap`) the ConfigMap.
async fn expect_fixed_children(server: &mut ApiServer, configmap: bool) -> Option<Value> {
    let peer = expect(
        server,
        Method::PATCH,
        "/api/v1/namespaces/prod/services/kv-peer",
        Reply::Echo,
    )
    .await;
    assert_eq!(peer["metadata"]["ownerReferences"][0]["kind"], "KvCluster");
    expect(
        server,
        Method::PATCH,
        "/api/v1/namespaces/prod/services/kv-client",
        Reply::Echo,
    )
    .await;
    expect(
        server,
        Method::PATCH,
        "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/kv",
        Reply::Echo,
    )
    .await;
    // Without spec.backup the backup CronJob is deleted (if there is one).
    expect(server, Method::DELETE, CRONJOB, Reply::NotFound).await;
    if configmap {
        Some(
            expect(
                server,
                Method::PATCH,
                "/api/v1/namespaces/prod/configmaps/kv-config",
                Reply::Echo,
            )
            .await,
        )
    } else {
        None
    }
}

/// A KvCluster as the API server returns it from a status patch.
fn stored() -> Value {
    serde_json::to_value(kvc(3)).unwrap()
}

fn status_of(patch: &Value) -> KvClusterStatus {
    assert_eq!(patch["apiVersion"], "witan.io/v1alpha1");
    assert_eq!(patch["kind"], "KvCluster");
    serde_json::from_value(patch["status"].clone()).expect("a KvCluster status")
}

#[tokio::test]
async fn a_new_kvcluster_gets_its_children_an_event_and_a_creating_status() {
    let members = Arc::new(FakeMembers::default());
    let (ctx, mut server) = context(members.clone());
    let kvc = Arc::new(kvc(3));
    let reconcile = tokio::spawn(reconcile(kvc.clone(), ctx));

    expect(&mut server, Method::GET, STS, Reply::NotFound).await;
    let configmap = expect_fixed_children(&mut server, true).await.unwrap();
    assert_eq!(configmap["data"]["WITAN_INITIAL_CLUSTER_STATE"], "new");
    let sts = expect(&mut server, Method::PATCH, STS, Reply::Echo).await;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
    let event = expect(&mut server, Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], "Bootstrap");
    let status =
        status_of(&expect(&mut server, Method::PATCH, STATUS, Reply::Json(stored())).await);
    assert_eq!(status.phase, Some(Phase::Creating));
    assert_eq!(status.observed_generation, Some(1));

    let action = reconcile.await.unwrap().expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    assert!(members.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn scaling_three_to_five_adds_the_first_learner_and_keeps_the_statefulset() {
    let members = Arc::new(FakeMembers {
        membership: Some(healthy_three()),
        ..FakeMembers::default()
    });
    let (ctx, mut server) = context(members.clone());
    let kvc = Arc::new(kvc(5));
    let reconcile = tokio::spawn(reconcile(kvc, ctx));

    expect(
        &mut server,
        Method::GET,
        STS,
        Reply::Json(existing_statefulset(3)),
    )
    .await;
    expect(&mut server, Method::GET, PODS, Reply::Json(ready_pods(3))).await;
    let configmap = expect_fixed_children(&mut server, true).await.unwrap();
    assert_eq!(configmap["data"]["WITAN_INITIAL_CLUSTER_STATE"], "existing");
    let sts = expect(&mut server, Method::PATCH, STS, Reply::Echo).await;
    assert_eq!(
        sts["spec"]["replicas"], 3,
        "the pod starts only after the member is added"
    );
    let event = expect(&mut server, Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], "AddLearner");
    let status =
        status_of(&expect(&mut server, Method::PATCH, STATUS, Reply::Json(stored())).await);
    assert_eq!(status.phase, Some(Phase::Scaling));
    assert_eq!(status.leader.as_deref(), Some("kv-0"));
    assert_eq!(status.cluster_id.as_deref(), Some("c1"));
    assert_eq!(status.ready_replicas, 3);

    reconcile.await.unwrap().expect("reconcile succeeds");
    assert_eq!(
        *members.calls.lock().unwrap(),
        ["add_learner http://kv-3.kv-peer.prod.svc:2380"]
    );
}

#[tokio::test]
async fn a_paused_kvcluster_only_gets_its_status_written() {
    let members = Arc::new(FakeMembers {
        membership: Some(healthy_three()),
        ..FakeMembers::default()
    });
    let (ctx, mut server) = context(members.clone());
    let mut paused = kvc(5);
    paused.spec.paused = true;
    let reconcile = tokio::spawn(reconcile(Arc::new(paused), ctx));

    expect(
        &mut server,
        Method::GET,
        STS,
        Reply::Json(existing_statefulset(3)),
    )
    .await;
    expect(&mut server, Method::GET, PODS, Reply::Json(ready_pods(3))).await;
    let status =
        status_of(&expect(&mut server, Method::PATCH, STATUS, Reply::Json(stored())).await);
    assert_eq!(status.phase, Some(Phase::Paused));
    assert_eq!(status.members.len(), 3);

    let action = reconcile.await.unwrap().expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    assert!(members.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_converged_cluster_reports_running_and_changes_nothing() {
    let members = Arc::new(FakeMembers {
        membership: Some(healthy_three()),
        ..FakeMembers::default()
    });
    let (ctx, mut server) = context(members.clone());
    let reconcile = tokio::spawn(reconcile(Arc::new(kvc(3)), ctx));

    expect(
        &mut server,
        Method::GET,
        STS,
        Reply::Json(existing_statefulset(3)),
    )
    .await;
    expect(&mut server, Method::GET, PODS, Reply::Json(ready_pods(3))).await;
    expect_fixed_children(&mut server, true).await;
    expect(&mut server, Method::PATCH, STS, Reply::Echo).await;
    // No event: nothing changed.
    let status =
        status_of(&expect(&mut server, Method::PATCH, STATUS, Reply::Json(stored())).await);
    assert_eq!(status.phase, Some(Phase::Running));

    reconcile.await.unwrap().expect("reconcile succeeds");
    assert!(members.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_api_call_fails_the_reconcile_and_counts_an_error() {
    let (ctx, mut server) = context(Arc::new(FakeMembers::default()));
    let kvc = Arc::new(kvc(3));
    let reconcile = tokio::spawn(reconcile(kvc.clone(), ctx.clone()));
    let (_, send) = server.next_request().await.expect("a request");
    send.send_response(
        Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Body::from(
                serde_json::to_vec(
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "reason": "Forbidden", "code": 403, "message": "no"}),
                )
                .unwrap(),
            ))
            .unwrap(),
    );
    let error = reconcile.await.unwrap().expect_err("reconcile fails");
    assert_eq!(error.metric_label(), "kube");
    assert_eq!(
        error_policy(kvc.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        error_policy(kvc, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
    assert!(ctx.metrics.render().contains(r#"error="kube""#));
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    assert_eq!(backoff(1), Duration::from_secs(1));
    assert_eq!(backoff(4), Duration::from_secs(8));
    assert_eq!(backoff(30), Duration::from_secs(300));
    assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
}

fn with_s3_backup(mut kvc: KvCluster) -> KvCluster {
    kvc.spec.backup = Some(crate::crd::BackupSpec {
        schedule: "*/30 * * * *".into(),
        destination: crate::crd::BackupLocation {
            pvc: None,
            s3: Some(crate::crd::S3Location {
                endpoint: "http://minio.storage:9000".into(),
                bucket: "backups".into(),
                prefix: Some("kv".into()),
                region: None,
                force_path_style: true,
                credentials_secret_name: "s3-creds".into(),
            }),
        },
        retention: 4,
    });
    kvc
}

/// A finished backup pod whose termination message is `message`.
fn backup_pods(exit_code: i32, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
    "items": [{
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "kv-backup-29000000-abcde", "namespace": "prod",
                     "labels": {"witan.io/backup-of": "kv"}},
        "status": {"containerStatuses": [{
            "name": "backup", "image": "witan-operator:test", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "message": message,
                                     "finishedAt": "2026-01-02T03:05:00Z"}}
        }]}
    }]})
}

#[tokio::test]
async fn a_kvcluster_with_backup_gets_its_cronjob_and_last_backup_from_the_finished_run() {
    let members = Arc::new(FakeMembers {
        membership: Some(healthy_three()),
        ..FakeMembers::default()
    });
    let (ctx, mut server) = context(members.clone());
    let reconcile = tokio::spawn(reconcile(Arc::new(with_s3_backup(kvc(3))), ctx));

    expect(
        &mut server,
        Method::GET,
        STS,
        Reply::Json(existing_statefulset(3)),
    )
    .await;
    expect(&mut server, Method::GET, PODS, Reply::Json(ready_pods(3))).await;
    let report = crate::backup::report::Outcome::Stored(crate::backup::report::BackupReport {
        time: "2026-01-02T03:04:05.678Z".into(),
        revision: 77,
        size: 2080,
        location: "s3://backups/kv/kv-20260102T030405.678Z-rev77.witan-snapshot".into(),
        sha256: "00".repeat(32),
        pruned: vec![],
    });
    expect(
        &mut server,
        Method::GET,
        PODS,
        Reply::Json(backup_pods(0, &report.to_json())),
    )
    .await;
    for path in [
        "/api/v1/namespaces/prod/services/kv-peer",
        "/api/v1/namespaces/prod/services/kv-client",
        "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/kv",
    ] {
        expect(&mut server, Method::PATCH, path, Reply::Echo).await;
    }
    let cronjob = expect(&mut server, Method::PATCH, CRONJOB, Reply::Echo).await;
    assert_eq!(cronjob["kind"], "CronJob");
    assert_eq!(
        cronjob["metadata"]["ownerReferences"][0]["kind"],
        "KvCluster"
    );
    assert_eq!(cronjob["spec"]["schedule"], "*/30 * * * *");
    assert_eq!(cronjob["spec"]["concurrencyPolicy"], "Forbid");
    let container = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], resources::cronjob::DEFAULT_BACKUP_IMAGE);
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--destination=s3://backups/kv"))
    );
    expect(
        &mut server,
        Method::PATCH,
        "/api/v1/namespaces/prod/configmaps/kv-config",
        Reply::Echo,
    )
    .await;
    expect(&mut server, Method::PATCH, STS, Reply::Echo).await;
    let status =
        status_of(&expect(&mut server, Method::PATCH, STATUS, Reply::Json(stored())).await);
    let last = status
        .last_backup
        .expect("lastBackup from the termination message");
    assert_eq!(last.revision, 77);
    assert_eq!(last.size_bytes, 2080);
    assert_eq!(
        last.location,
        "s3://backups/kv/kv-20260102T030405.678Z-rev77.witan-snapshot"
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == status::BACKUP_READY)
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "BackupSucceeded")
    );

    reconcile.await.unwrap().expect("reconcile succeeds");
}

#[tokio::test]
async fn a_failed_backup_run_sets_backup_ready_false_with_the_error() {
    let members = Arc::new(FakeMembers {
        membership: Some(healthy_three()),
        ..FakeMembers::default()
    });
    let (ctx, mut server) = context(members);
    let mut paused = with_s3_backup(kvc(3));
    // Paused: no children are applied, so only the reads and the status remain.
    paused.spec.paused = true;
    let reconcile = tokio::spawn(reconcile(Arc::new(paused), ctx));

    expect(
        &mut server,
        Method::GET,
        STS,
        Reply::Json(existing_statefulset(3)),
    )
    .await;
    expect(&mut server, Method::GET, PODS, Reply::Json(ready_pods(3))).await;
    let failed = crate::backup::report::Outcome::Failed {
        error: "uploading: access denied".into(),
    };
    expect(
        &mut server,
        Method::GET,
        PODS,
        Reply::Json(backup_pods(1, &failed.to_json())),
    )
    .await;
    let status =
        status_of(&expect(&mut server, Method::PATCH, STATUS, Reply::Json(stored())).await);
    assert_eq!(status.last_backup, None);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == status::BACKUP_READY)
        .unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "BackupFailed");
    assert_eq!(
        ready.message,
        "kv-backup-29000000-abcde: uploading: access denied"
    );
    reconcile.await.unwrap().expect("reconcile succeeds");
}

fn secret(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "prod"}, "data": data})
}

const SECRETS: &str = "/api/v1/namespaces/prod/secrets";

#[tokio::test]
async fn a_secured_cluster_is_reached_with_its_certificate_fenced_and_gets_auth_turned_on() {
    use crate::crd::{AuthSpec, NetworkPolicySpec, SecretKeyRef, TlsSpec};
    let members = Arc::new(FakeMembers {
        membership: Some(healthy_three()),
        ..FakeMembers::default()
    });
    let (ctx, mut server) = context(members.clone());
    let mut secured = kvc(3);
    secured.spec.tls = Some(TlsSpec {
        client_cert_auth: true,
        ..TlsSpec::default()
    });
    secured.spec.auth = Some(AuthSpec {
        enabled: true,
        root_password_secret_ref: SecretKeyRef {
            name: "root-pw".into(),
            key: "password".into(),
        },
    });
    secured.spec.network_policy = Some(NetworkPolicySpec {
        enabled: true,
        ..NetworkPolicySpec::default()
    });
    let reconcile = tokio::spawn(reconcile(Arc::new(secured), ctx));

    expect(
        &mut server,
        Method::GET,
        STS,
        Reply::Json(existing_statefulset(3)),
    )
    .await;
    // The operator's client certificate, read by name.
    expect(
        &mut server,
        Method::GET,
        &format!("{SECRETS}/kv-operator-tls"),
        Reply::Json(secret(
            "kv-operator-tls",
            json!({"ca.crt": "Q0E=", "tls.crt": "Q0VSVA==", "tls.key": "S0VZ"}),
        )),
    )
    .await;
    // Its own credentials: none yet, so it makes them, owned by the cluster.
    expect(
        &mut server,
        Method::GET,
        &format!("{SECRETS}/kv-operator-auth"),
        Reply::NotFound,
    )
    .await;
    let created = expect(&mut server, Method::POST, SECRETS, Reply::Echo).await;
    assert_eq!(created["metadata"]["name"], "kv-operator-auth");
    assert_eq!(
        created["metadata"]["ownerReferences"][0]["kind"],
        "KvCluster"
    );
    assert_eq!(created["stringData"]["username"], "witan-operator");
    let password = created["stringData"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(password.len(), 32);

    expect(&mut server, Method::GET, PODS, Reply::Json(ready_pods(3))).await;
    expect_fixed_children(&mut server, false).await;
    let policy = expect(
        &mut server,
        Method::PATCH,
        "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/kv",
        Reply::Echo,
    )
    .await;
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let configmap = expect(
        &mut server,
        Method::PATCH,
        "/api/v1/namespaces/prod/configmaps/kv-config",
        Reply::Echo,
    )
    .await;
    assert!(
        configmap["data"]["WITAN_INITIAL_CLUSTER"]
            .as_str()
            .unwrap()
            .contains("kv-0=https://kv-0.kv-peer.prod.svc:2380")
    );
    let sts = expect(&mut server, Method::PATCH, STS, Reply::Echo).await;
    let args = sts["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--client-cert-auth"))
    );

    // Auth, step by step, each with an Event; root's password from its Secret.
    let mut reasons = Vec::new();
    for step in 0..6 {
        if step == 1 {
            expect(
                &mut server,
                Method::GET,
                &format!("{SECRETS}/root-pw"),
                Reply::Json(secret("root-pw", json!({"password": "cm9vdHB3"}))),
            )
            .await;
        }
        let event = expect(&mut server, Method::POST, EVENTS, Reply::Echo).await;
        reasons.push(event["note"].as_str().unwrap().to_string());
    }
    assert_eq!(
        reasons,
        [
            "added role root",
            "added user root",
            "granted role root to root",
            "added user witan-operator",
            "granted role root to witan-operator",
            "enabled authentication",
        ]
    );
    expect(&mut server, Method::PATCH, STATUS, Reply::Json(stored())).await;
    reconcile.await.unwrap().expect("reconcile succeeds");

    let calls = members.calls.lock().unwrap().clone();
    assert_eq!(calls[1], "auth AddUser { user: \"root\" } password=rootpw");
    assert_eq!(
        calls[3],
        format!("auth AddUser {{ user: \"witan-operator\" }} password={password}")
    );
    assert!(members.auth.lock().unwrap().enabled);
    // The members were observed over TLS with the operator's certificate and user.
    let access = members.accesses.lock().unwrap()[0].clone();
    let tls = access.tls.expect("TLS material");
    assert_eq!(
        (tls.ca_pem, tls.cert_pem, tls.key_pem),
        (b"CA".to_vec(), b"CERT".to_vec(), b"KEY".to_vec())
    );
    let credentials = access.credentials.expect("credentials");
    assert_eq!(credentials.user, "witan-operator");
    assert_eq!(credentials.password, password);
}

/// A new KvCluster whose certificates cert-manager is to issue.
fn issued_by_cert_manager() -> KvCluster {
    use crate::crd::{CertManagerSpec, IssuerRef, TlsSpec};
    let mut secured = kvc(3);
    secured.spec.tls = Some(TlsSpec {
        cert_manager: Some(CertManagerSpec {
            issuer_ref: IssuerRef {
                name: "ca".into(),
                kind: "ClusterIssuer".into(),
                group: "cert-manager.io".into(),
            },
        }),
        ..TlsSpec::default()
    });
    secured
}

/// The start of a new secured cluster's reconcile: its operator Secret is
/// not there yet (cert-manager has not issued it), which is said in an
/// Event, and the fixed children follow.
async fn expect_start_without_operator_secret(server: &mut ApiServer) {
    expect(server, Method::GET, STS, Reply::NotFound).await;
    expect(
        server,
        Method::GET,
        &format!("{SECRETS}/kv-operator-tls"),
        Reply::NotFound,
    )
    .await;
    let event = expect(server, Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], "CredentialsMissing");
    assert!(event["note"].as_str().unwrap().contains("kv-operator-tls"));
    expect_fixed_children(server, false).await;
}

/// The end of a bootstrap reconcile: ConfigMap, StatefulSet, Event, status.
async fn expect_bootstrap_rest(server: &mut ApiServer) {
    expect(
        server,
        Method::PATCH,
        "/api/v1/namespaces/prod/configmaps/kv-config",
        Reply::Echo,
    )
    .await;
    let sts = expect(server, Method::PATCH, STS, Reply::Echo).await;
    let volumes = sts["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("kv-server-tls") && volumes.contains("kv-peer-tls"));
    let event = expect(server, Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], "Bootstrap");
    expect(server, Method::PATCH, STATUS, Reply::Json(stored())).await;
}

const CERT_MANAGER_V1: &str = "/apis/cert-manager.io/v1";

#[tokio::test]
async fn with_cert_manager_the_certificates_are_applied_before_their_secrets_exist() {
    let (ctx, mut server) = context(Arc::new(FakeMembers::default()));
    let reconcile = tokio::spawn(reconcile(Arc::new(issued_by_cert_manager()), ctx));
    expect_start_without_operator_secret(&mut server).await;
    expect(
        &mut server,
        Method::GET,
        CERT_MANAGER_V1,
        Reply::Json(json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "cert-manager.io/v1",
            "resources": [{"name": "certificates", "singularName": "certificate", "namespaced": true,
                           "kind": "Certificate", "verbs": ["create", "get", "list", "patch", "watch"]}]
        })),
    )
    .await;
    for secret in ["kv-server-tls", "kv-peer-tls", "kv-operator-tls"] {
        let certificate = expect(
            &mut server,
            Method::PATCH,
            &format!("{CERT_MANAGER_V1}/namespaces/prod/certificates/{secret}"),
            Reply::Echo,
        )
        .await;
        assert_eq!(certificate["kind"], "Certificate");
        assert_eq!(certificate["spec"]["secretName"], secret);
        assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    }
    expect_bootstrap_rest(&mut server).await;
    reconcile.await.unwrap().expect("reconcile succeeds");
}

#[tokio::test]
async fn without_cert_manager_an_event_says_so_and_the_rest_is_reconciled() {
    let (ctx, mut server) = context(Arc::new(FakeMembers::default()));
    let reconcile = tokio::spawn(reconcile(Arc::new(issued_by_cert_manager()), ctx));
    expect_start_without_operator_secret(&mut server).await;
    expect(&mut server, Method::GET, CERT_MANAGER_V1, Reply::NotFound).await;
    let event = expect(&mut server, Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], "CertManagerMissing");
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("cert-manager.io/v1 Certificate")
    );
    expect_bootstrap_rest(&mut server).await;
    reconcile.await.unwrap().expect("reconcile succeeds");
}

// --- spec.storage.size grows ----------------------------------------------

const CLAIMS: &str = "/api/v1/namespaces/prod/persistentvolumeclaims";

fn claim(ordinal: u32, size: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": format!("data-kv-{ordinal}"), "namespace": "prod"},
        "spec": {"resources": {"requests": {"storage": size}}}
    })
}

/// A 3-member KvCluster that asks for 2Gi volumes (the StatefulSet of
/// `existing_statefulset` has 1Gi) and has answered before.
fn grown() -> KvCluster {
    let mut kvc = kvc(3);
    kvc.spec.storage.size = k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".into());
    kvc.status = Some(KvClusterStatus {
        cluster_id: Some("c1".into()),
        ..KvClusterStatus::default()
    });
    kvc
}

fn template_size(sts: &Value) -> &Value {
    &sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
}

/// The GETs of the three member claims, answered with `sizes`.
async fn expect_claims(server: &mut ApiServer, sizes: [&str; 3]) {
    for (ordinal, size) in (0..).zip(sizes) {
        let path = format!("{CLAIMS}/data-kv-{ordinal}");
        expect(
            server,
            Method::GET,
            &path,
            Reply::Json(claim(ordinal, size)),
        )
        .await;
    }
}

/// The start of a reconcile of `grown()` on a converged cluster whose
/// claims request `claims`: up to the StatefulSet's apply, which keeps the
/// old claim template (it cannot change).
async fn expect_grown_until_the_statefulset(server: &mut ApiServer, claims: [&str; 3]) {
    expect(
        server,
        Method::GET,
        STS,
        Reply::Json(existing_statefulset(3)),
    )
    .await;
    expect(server, Method::GET, PODS, Reply::Json(ready_pods(3))).await;
    expect_claims(server, claims).await;
    expect_fixed_children(server, true).await;
    let sts = expect(server, Method::PATCH, STS, Reply::Echo).await;
    assert_eq!(template_size(&sts), "1Gi", "an existing template is kept");
}

/// The step's Event, then the status written after it: phase Resizing.
async fn expect_resizing_step(server: &mut ApiServer, reason: &str) {
    let event = expect(server, Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], reason);
    let status = status_of(&expect(server, Method::PATCH, STATUS, Reply::Json(stored())).await);
    assert_eq!(status.phase, Some(Phase::Resizing));
}

fn healthy() -> Arc<FakeMembers> {
    Arc::new(FakeMembers {
        membership: Some(healthy_three()),
        ..FakeMembers::default()
    })
}

#[tokio::test]
async fn a_larger_storage_size_patches_the_claims_that_ask_for_less() {
    let (ctx, mut server) = context(healthy());
    let reconcile = tokio::spawn(reconcile(Arc::new(grown()), ctx));

    // data-kv-0 was patched before an operator restart: left alone.
    expect_grown_until_the_statefulset(&mut server, ["2Gi", "1Gi", "1Gi"]).await;
    for path in [format!("{CLAIMS}/data-kv-1"), format!("{CLAIMS}/data-kv-2")] {
        let patch = expect(&mut server, Method::PATCH, &path, Reply::Echo).await;
        assert_eq!(
            patch,
            json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})
        );
    }
    expect_resizing_step(&mut server, "ExpandVolumes").await;

    let action = reconcile.await.unwrap().expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_refused_claim_patch_is_a_warning_and_degraded_with_the_api_servers_message() {
    let (ctx, mut server) = context(healthy());
    let reconcile = tokio::spawn(reconcile(Arc::new(grown()), ctx));

    expect_grown_until_the_statefulset(&mut server, ["1Gi", "1Gi", "1Gi"]).await;
    // What the PersistentVolumeClaimResize admission answers.
    let (request, send) = server.next_request().await.expect("the claim patch");
    assert_eq!(request.uri().path(), format!("{CLAIMS}/data-kv-0"));
    let message = "persistentvolumeclaims \"data-kv-0\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize";
    send.send_response(
        Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Body::from(
                serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "Forbidden", "code": 403,
                    "message": message}))
                .unwrap(),
            ))
            .unwrap(),
    );
    let event = expect(&mut server, Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "ExpandVolumes");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("must support resize"),
        "{event}"
    );
    // The cluster is fine: the status says what is wrong, and the
    // operator looks again in a minute rather than failing every reconcile.
    let status =
        status_of(&expect(&mut server, Method::PATCH, STATUS, Reply::Json(stored())).await);
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::status::DEGRADED)
        .expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "StorageChangeRefused")
    );
    assert!(
        degraded.message.contains("must support resize"),
        "{}",
        degraded.message
    );
    assert_eq!(status.phase, Some(Phase::Degraded));
    let action = reconcile.await.unwrap().expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
}

#[tokio::test]
async fn once_every_claim_asks_for_the_new_size_the_statefulset_is_deleted_orphaning_its_pods() {
    let (ctx, mut server) = context(healthy());
    let reconcile = tokio::spawn(reconcile(Arc::new(grown()), ctx));

    expect_grown_until_the_statefulset(&mut server, ["2Gi", "2Gi", "2Gi"]).await;
    let options = expect(
        &mut server,
        Method::DELETE,
        STS,
        Reply::Json(existing_statefulset(3)),
    )
    .await;
    assert_eq!(options["propagationPolicy"], "Orphan");
    expect_resizing_step(&mut server, "OrphanStatefulSet").await;
    reconcile.await.unwrap().expect("reconcile succeeds");
}

#[tokio::test]
async fn a_statefulset_being_deleted_is_left_alone() {
    let (ctx, mut server) = context(healthy());
    let reconcile = tokio::spawn(reconcile(Arc::new(grown()), ctx));

    let mut deleting = existing_statefulset(3);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-24T21:00:00Z");
    expect(&mut server, Method::GET, STS, Reply::Json(deleting)).await;
    expect(&mut server, Method::GET, PODS, Reply::Json(ready_pods(3))).await;
    expect_claims(&mut server, ["2Gi"; 3]).await;
    expect_fixed_children(&mut server, true).await;
    // No apply of the StatefulSet (it would update the object being
    // deleted), no event: the next step comes when it is gone.
    let status =
        status_of(&expect(&mut server, Method::PATCH, STATUS, Reply::Json(stored())).await);
    assert_eq!(status.phase, Some(Phase::Resizing));
    let action = reconcile.await.unwrap().expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn orphaned_members_get_their_statefulset_again_with_the_new_claim_template() {
    // As after an operator restart between the delete and the re-create.
    let (ctx, mut server) = context(healthy());
    let reconcile = tokio::spawn(reconcile(Arc::new(grown()), ctx));

    expect(&mut server, Method::GET, STS, Reply::NotFound).await;
    expect(&mut server, Method::GET, PODS, Reply::Json(ready_pods(3))).await;
    // The claims were patched before the delete: nothing left to grow.
    expect_claims(&mut server, ["2Gi"; 3]).await;
    let configmap = expect_fixed_children(&mut server, true).await.unwrap();
    assert_eq!(
        configmap["data"]["WITAN_INITIAL_CLUSTER_STATE"], "existing",
        "running members are never told to start a new cluster"
    );
    let sts = expect(&mut server, Method::PATCH, STS, Reply::Echo).await;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(template_size(&sts), "2Gi");
    expect_resizing_step(&mut server, "RecreateStatefulSet").await;
    reconcile.await.unwrap().expect("reconcile succeeds");
}

#[tokio::test]
async fn the_controller_watches_the_backup_jobs_by_their_labels() {
    let (ctx, mut server) = context(Arc::new(FakeMembers::default()));
    let driver = tokio::spawn(
        controller(&ctx.client, Some("prod"))
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|_| futures::future::ready(())),
    );
    // Each watched kind is listed (then watched); unanswered requests only
    // make the watchers retry. Look for the Jobs among them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let query = loop {
        let (request, _unanswered) = tokio::time::timeout_at(deadline, server.next_request())
            .await
            .expect("no request for the backup Jobs")
            .expect("client gone");
        if request.uri().path() == "/apis/batch/v1/namespaces/prod/jobs" {
            break request.uri().query().unwrap_or_default().to_string();
        }
    };
    driver.abort();
    let decoded = query
        .replace("%2F", "/")
        .replace("%3D", "=")
        .replace("%2C", ",");
    assert!(
        decoded.contains(&format!(
            "labelSelector={}",
            crate::backup::trigger::job_selector()
        )),
        "{query}"
    );
}

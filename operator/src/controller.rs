//! The KvCluster controller: observe, plan one step, apply it, write status.
//! The only module with side effects on Kubernetes and on the members.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        batch::v1::{CronJob, Job},
        core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use serde::Serialize;
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::{
    Error, Result,
    access::Access,
    crd::KvCluster,
    members::MemberApi,
    metrics::Metrics,
    names::{ClusterNames, FIELD_MANAGER},
    observed::{Observed, ObservedClaim, ObservedPod, ObservedStorage},
    planner::{self, Step, WaitReason},
    resources, status,
};

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub members: Arc<dyn MemberApi>,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    /// Image of the backup CronJobs (the operator's own image).
    pub backup_image: String,
    /// The operator's pods, admitted to the client port by each KvCluster's
    /// NetworkPolicy.
    pub operator_peer: k8s_openapi::api::networking::v1::NetworkPolicyPeer,
    /// Consecutive failures per KvCluster (namespace/name), for backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    #[must_use]
    pub fn new(
        client: Client,
        members: Arc<dyn MemberApi>,
        metrics: Arc<Metrics>,
        reporter: Reporter,
    ) -> Self {
        Self {
            client,
            members,
            metrics,
            reporter,
            backup_image: resources::cronjob::DEFAULT_BACKUP_IMAGE.to_string(),
            operator_peer: resources::network_policy::operator_peer(
                None,
                std::collections::BTreeMap::from([(
                    "app.kubernetes.io/name".to_string(),
                    OPERATOR_POD_NAME_LABEL.to_string(),
                )]),
            ),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn record_outcome(&self, key: String, failed: bool) -> u32 {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed {
            let n = failures.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            failures.remove(&key);
            0
        }
    }
}

/// `app.kubernetes.io/name` of the operator's pods (the chart's default).
pub const OPERATOR_POD_NAME_LABEL: &str = "witan-operator";

/// Run the controller until a shutdown signal. It watches KvClusters and
/// their children in `namespace`, or in every namespace when `None` (the
/// Helm chart grants a Role or a ClusterRole to match).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    controller(&ctx.client, namespace.as_deref())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The controller: KvClusters, the children they own, and the backup Jobs.
fn controller(client: &Client, ns: Option<&str>) -> Controller<KvCluster> {
    let children = watcher::Config::default().labels("app.kubernetes.io/managed-by=witan-operator");
    Controller::new(
        watched::<KvCluster>(client, ns),
        watcher::Config::default().any_semantic(),
    )
    .owns(watched::<StatefulSet>(client, ns), children.clone())
    .owns(watched::<Service>(client, ns), children.clone())
    .owns(watched::<ConfigMap>(client, ns), children.clone())
    .owns(watched::<CronJob>(client, ns), children.clone())
    .owns(watched::<PodDisruptionBudget>(client, ns), children)
    // The backup Jobs belong to the CronJob, not the KvCluster: a finished
    // one reconciles its KvCluster directly, so status.lastBackup does not
    // depend on the CronJob controller updating the CronJob's status (which
    // today also wakes the controller through `owns`) nor on the periodic
    // requeue.
    .watches(
        watched::<Job>(client, ns),
        watcher::Config::default().labels(&crate::backup::trigger::job_selector()),
        |job| crate::backup::trigger::kvcluster_of_finished_job(&job),
    )
}

/// The API of `K` in one namespace, or in all of them.
fn watched<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One reconcile of one KvCluster.
#[instrument(skip_all, fields(kvcluster = %kvc.name_any(), namespace = kvc.namespace().unwrap_or_default()))]
pub async fn reconcile(kvc: Arc<KvCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(&kvc);
    let names = ClusterNames::of(&kvc)?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let statefulset = statefulsets.get_opt(&names.statefulset()).await?;
    let access = match security::access(&kvc, &names, &ctx).await {
        Ok(access) => access,
        Err(error) => {
            // Said on the KvCluster: a missing Secret is the user's to fix.
            publish_note(
                &ctx,
                &kvc,
                EventType::Warning,
                security::CREDENTIALS_MISSING,
                error.to_string(),
            )
            .await;
            return Err(error);
        }
    };
    let mut observed = observe(&kvc, &names, &ctx, statefulset.as_ref(), &access).await?;
    if kvc.spec.backup.is_some() {
        observed.backup_runs = observe_backups(&names, &ctx).await?;
    }
    let mut step = planner::next_step(&kvc.spec, &names, &observed);

    if step != Step::Paused {
        apply_children(&kvc, &names, &ctx, &observed, &step).await?;
        if let Err(error) = execute(&names, &ctx, &observed, &step, &access).await {
            publish(
                &ctx,
                &kvc,
                EventType::Warning,
                &step,
                format!("{}: {error}", status::step_message(&step)),
            )
            .await;
            // Volumes the API server will not expand: said in the status
            // (Degraded), looked at again later; everything else goes on.
            match crate::storage::expansion_refused(&step, &error) {
                Some(message) => step = Step::Wait(WaitReason::StorageChangeRefused { message }),
                None => return Err(error),
            }
        }
        if is_change(&step) {
            info!(step = ?step, "took a step");
            publish(
                &ctx,
                &kvc,
                EventType::Normal,
                &step,
                status::step_message(&step),
            )
            .await;
        }
        // Auth goes on once a leader answers (etcd needs one to apply it).
        let endpoints = healthy_endpoints(&names, &observed);
        let has_leader = observed
            .membership
            .as_ref()
            .is_some_and(|m| m.members.iter().any(|m| m.is_leader));
        if has_leader {
            security::ensure_auth(&kvc, &names, &ctx, &endpoints, &access).await?;
        }
    }

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new_status = status::compute(&kvc, &names, &observed, &step, &now);
    if let Some((type_, reason, note)) = restore_event(&kvc, &new_status) {
        publish_note(&ctx, &kvc, type_, &reason, note).await;
    }
    let kvcs: Api<KvCluster> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let patch = json!({
        "apiVersion": KvCluster::api_version(&()),
        "kind": KvCluster::kind(&()),
        "status": new_status,
    });
    kvcs.patch_status(&kvc.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;
    ctx.record_outcome(object_key(&kvc), false);
    Ok(Action::requeue(requeue_after(&step)))
}

/// After a failed reconcile: log, count, and retry with exponential backoff.
pub fn error_policy(kvc: Arc<KvCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(kvcluster = %kvc.name_any(), "reconcile failed: {error}");
    ctx.metrics.reconcile_failed(&kvc, error);
    let failures = ctx.record_outcome(object_key(&kvc), true);
    Action::requeue(backoff(failures))
}

/// Delay before retrying after `failures` consecutive failures: 1s, 2s, 4s…
/// up to 5 minutes.
#[must_use]
pub fn backoff(failures: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(300);
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX)
}

/// When to look again after `step`: soon while something is in motion.
#[must_use]
pub fn requeue_after(step: &Step) -> Duration {
    match step {
        // A refused storage change waits for a human (or the StorageClass).
        Step::Converged | Step::Paused | Step::Wait(WaitReason::StorageChangeRefused { .. }) => {
            Duration::from_secs(60)
        }
        Step::Wait(_) => Duration::from_secs(10),
        _ => Duration::from_secs(2),
    }
}

fn is_change(step: &Step) -> bool {
    !matches!(step, Step::Wait(_) | Step::Converged | Step::Paused)
}

fn object_key(kvc: &KvCluster) -> String {
    format!("{}/{}", kvc.namespace().unwrap_or_default(), kvc.name_any())
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// StatefulSet replicas, pods and the membership as the members report it.
async fn observe(
    kvc: &KvCluster,
    names: &ClusterNames,
    ctx: &Context,
    statefulset: Option<&StatefulSet>,
    access: &Access,
) -> Result<Observed> {
    let bootstrapped = kvc.status.as_ref().is_some_and(|s| s.cluster_id.is_some());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let Some(statefulset) = statefulset else {
        if !bootstrapped {
            return Ok(Observed {
                bootstrapped,
                ..Observed::default()
            });
        }
        // A cluster that answered before has no StatefulSet: deleted with its
        // pods orphaned for a storage change, and the operator stopped
        // before creating it again. The running pods say how many members.
        let listed = pods
            .list(&ListParams::default().labels(&names.selector_string()))
            .await?;
        let orphaned_replicas = crate::storage::orphaned_replicas(
            names,
            listed.items.iter().map(ResourceExt::name_any),
        );
        let (membership, claims) = match orphaned_replicas {
            Some(replicas) => (
                observe_membership(names, ctx, replicas, access).await,
                observe_claims(names, ctx, replicas).await?,
            ),
            None => (None, Vec::new()),
        };
        return Ok(Observed {
            bootstrapped,
            membership,
            pods: observed_pods(&listed.items, None),
            storage: ObservedStorage {
                orphaned_replicas,
                claims,
                ..ObservedStorage::default()
            },
            ..Observed::default()
        });
    };
    let replicas = statefulset
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let update_revision = statefulset
        .status
        .as_ref()
        .and_then(|s| s.update_revision.clone());
    let listed = pods
        .list(&ListParams::default().labels(&names.selector_string()))
        .await?;
    let membership = observe_membership(names, ctx, replicas, access).await;
    let storage = observe_storage(kvc, names, ctx, statefulset, replicas).await?;
    Ok(Observed {
        statefulset_replicas: Some(replicas),
        bootstrapped,
        membership,
        pods: observed_pods(&listed.items, update_revision.as_ref()),
        backup_runs: Vec::new(),
        restore_runs: if kvc
            .spec
            .bootstrap
            .as_ref()
            .is_some_and(|b| b.restore.is_some())
        {
            crate::restore::observe::runs_from_pods(&listed.items)
        } else {
            Vec::new()
        },
        storage,
    })
}

/// The member pods; without an `update_revision` every pod is up to date.
fn observed_pods(pods: &[Pod], update_revision: Option<&String>) -> Vec<ObservedPod> {
    pods.iter()
        .map(|pod| ObservedPod {
            name: pod.name_any(),
            ready: pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            up_to_date: update_revision.is_none()
                || pod.labels().get("controller-revision-hash") == update_revision,
        })
        .collect()
}

/// The membership as members 0..`replicas` report it; `None` when none
/// answers.
async fn observe_membership(
    names: &ClusterNames,
    ctx: &Context,
    replicas: i32,
    access: &Access,
) -> Option<crate::observed::Membership> {
    let endpoints: Vec<String> = (0..u32::try_from(replicas).unwrap_or(0))
        .map(|i| names.client_url(&names.member(i)))
        .collect();
    if endpoints.is_empty() {
        return None;
    }
    match ctx.members.observe(names, &endpoints, access).await {
        Ok(membership) => membership,
        Err(error) => {
            // Handled here: an unreachable cluster is an observation.
            warn!("observing members failed: {error}");
            None
        }
    }
}

/// The StatefulSet's claim template and, while its size differs from the
/// spec's, the members' claims.
async fn observe_storage(
    kvc: &KvCluster,
    names: &ClusterNames,
    ctx: &Context,
    statefulset: &StatefulSet,
    replicas: i32,
) -> Result<ObservedStorage> {
    let template = resources::statefulset::data_claim_template(statefulset);
    let template_size = template.and_then(resources::statefulset::claim_request);
    let template_class = template
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.storage_class_name.clone());
    let claims = if template_size
        .as_ref()
        .is_some_and(|size| *size != kvc.spec.storage.size.0)
    {
        observe_claims(names, ctx, replicas).await?
    } else {
        Vec::new()
    };
    Ok(ObservedStorage {
        template_size,
        template_class,
        statefulset_deleting: statefulset.metadata.deletion_timestamp.is_some(),
        orphaned_replicas: None,
        claims,
    })
}

/// The claims of members 0..`replicas` that exist, and what they request.
async fn observe_claims(
    names: &ClusterNames,
    ctx: &Context,
    replicas: i32,
) -> Result<Vec<ObservedClaim>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let mut claims = Vec::new();
    for ordinal in 0..u32::try_from(replicas).unwrap_or(0) {
        let name = resources::statefulset::claim_name(names, ordinal);
        if let Some(claim) = api.get_opt(&name).await? {
            claims.push(ObservedClaim {
                name,
                requested: resources::statefulset::claim_request(&claim),
            });
        }
    }
    Ok(claims)
}

/// Server-side apply of every child. The StatefulSet keeps its replicas
/// unless the step sets them.
async fn apply_children(
    kvc: &KvCluster,
    names: &ClusterNames,
    ctx: &Context,
    observed: &Observed,
    step: &Step,
) -> Result<()> {
    let ns = &names.namespace;
    let client = &ctx.client;
    apply(
        &Api::<Service>::namespaced(client.clone(), ns),
        &names.headless_service(),
        &resources::headless_service::build(kvc, names)?,
    )
    .await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), ns),
        &names.client_service(),
        &resources::client_service::build(kvc, names)?,
    )
    .await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        &names.pdb(),
        &resources::pdb::build(kvc, names)?,
    )
    .await?;
    apply_backup_cronjob(kvc, names, ctx).await?;
    security::apply_certificates(kvc, names, ctx).await?;
    security::apply_network_policy(kvc, names, ctx).await?;
    if let Some(initial) = planner::initial_cluster(&kvc.spec, names, observed) {
        apply(
            &Api::<ConfigMap>::namespaced(client.clone(), ns),
            &names.configmap(),
            &resources::configmap::build(kvc, names, &initial)?,
        )
        .await?;
    }
    let replicas = match step {
        // Applying to an object being deleted would only update it.
        Step::Wait(WaitReason::StatefulSetDeleting) => None,
        Step::Bootstrap { replicas }
        | Step::ScaleStatefulSet { replicas }
        | Step::RecreateStatefulSet { replicas } => Some(*replicas),
        _ => observed.statefulset_replicas,
    };
    if let Some(replicas) = replicas {
        let mut statefulset =
            resources::statefulset::build(kvc, names, replicas, &ctx.backup_image)?;
        if let Some(size) = &observed.storage.template_size {
            resources::statefulset::keep_claim_template(
                &mut statefulset,
                size,
                observed.storage.template_class.clone(),
            );
        }
        apply(
            &Api::<StatefulSet>::namespaced(client.clone(), ns),
            &names.statefulset(),
            &statefulset,
        )
        .await?;
    }
    Ok(())
}

/// The backup CronJob exists exactly while `spec.backup` is set.
async fn apply_backup_cronjob(kvc: &KvCluster, names: &ClusterNames, ctx: &Context) -> Result<()> {
    let cronjobs = Api::<CronJob>::namespaced(ctx.client.clone(), &names.namespace);
    let name = resources::cronjob::name(names);
    match &kvc.spec.backup {
        Some(backup) => {
            let cronjob = resources::cronjob::build(kvc, names, backup, &ctx.backup_image)?;
            apply(&cronjobs, &name, &cronjob).await
        }
        None => delete_if_present(&cronjobs, &name).await,
    }
}

/// Deletes `name` in the background; already gone is fine.
async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Finished runs of the backup CronJob, from its pods' termination messages.
async fn observe_backups(
    names: &ClusterNames,
    ctx: &Context,
) -> Result<Vec<crate::backup::observe::BackupRun>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let listed = pods
        .list(&ListParams::default().labels(&resources::cronjob::pod_selector(names)))
        .await?;
    Ok(crate::backup::observe::runs_from_pods(&listed.items))
}

async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<()>
where
    K: Resource + Serialize + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.patch(name, &apply_params(), &Patch::Apply(object))
        .await?;
    Ok(())
}

/// The member RPC or pod deletion a step stands for.
async fn execute(
    names: &ClusterNames,
    ctx: &Context,
    observed: &Observed,
    step: &Step,
    access: &Access,
) -> Result<()> {
    let membership = observed.membership.as_ref();
    let endpoints = healthy_endpoints(names, observed);
    match step {
        Step::AddLearner { member } => {
            let id = ctx
                .members
                .add_learner(&endpoints, access, &names.peer_url(member))
                .await?;
            info!(member, id = format!("{id:x}"), "added learner");
        }
        Step::ChangeVoters { voters, .. } => {
            ctx.members
                .change_voters(&endpoints, access, voters)
                .await?;
        }
        Step::TransferLeadership { from, to } => {
            let leader: Vec<String> = membership
                .and_then(|m| m.members.iter().find(|m| m.id == *from))
                .map(|m| vec![names.client_url(&m.name)])
                .unwrap_or_default();
            ctx.members.move_leader(&leader, access, *to).await?;
        }
        Step::RemoveMember { id, .. } => {
            ctx.members.remove_member(&endpoints, access, *id).await?;
        }
        Step::ReplacePod { pod } => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
            pods.delete(pod, &DeleteParams::default()).await?;
        }
        Step::ExpandClaims { claims, size } => {
            // A merge patch of the one field: the StatefulSet controller owns
            // the rest of the claim. The API server refuses it when the
            // StorageClass does not allow expansion; that error is the
            // step's Warning event, and the retry backs off.
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(ctx.client.clone(), &names.namespace);
            let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
            for claim in claims {
                api.patch(
                    claim,
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(&patch),
                )
                .await?;
                info!(claim, size, "requested a larger volume");
            }
        }
        Step::ReplaceStatefulSet { .. } => {
            // Orphan: the pods keep running (no member goes down) and the
            // StatefulSet created again adopts them.
            let statefulsets: Api<StatefulSet> =
                Api::namespaced(ctx.client.clone(), &names.namespace);
            let params = DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
                ..DeleteParams::default()
            };
            statefulsets.delete(&names.statefulset(), &params).await?;
        }
        // Applied with the children (Bootstrap, ScaleStatefulSet,
        // RecreateStatefulSet) or nothing to do.
        Step::Bootstrap { .. }
        | Step::ScaleStatefulSet { .. }
        | Step::RecreateStatefulSet { .. }
        | Step::Wait(_)
        | Step::Converged
        | Step::Paused => {}
    }
    Ok(())
}

/// Client URLs of the members that answered.
fn healthy_endpoints(names: &ClusterNames, observed: &Observed) -> Vec<String> {
    observed
        .membership
        .as_ref()
        .map(|m| {
            m.members
                .iter()
                .filter(|m| m.healthy)
                .map(|m| names.client_url(&m.name))
                .collect()
        })
        .unwrap_or_default()
}

/// Publish an Event on the KvCluster. A failure to publish is logged, never
/// fatal: the step itself already happened.
async fn publish(ctx: &Context, kvc: &KvCluster, type_: EventType, step: &Step, note: String) {
    publish_note(ctx, kvc, type_, status::step_reason(step), note).await;
}

/// An Event when the `Restored` condition changes to `True` or `False`.
fn restore_event(
    kvc: &KvCluster,
    new_status: &crate::crd::KvClusterStatus,
) -> Option<(EventType, String, String)> {
    let find = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        conditions
            .iter()
            .find(|c| c.type_ == status::RESTORED)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let now = find(&new_status.conditions)?;
    let before = kvc.status.as_ref().and_then(|s| find(&s.conditions));
    if before.as_ref() == Some(&now) {
        return None;
    }
    match now.0.as_str() {
        "True" => Some((EventType::Normal, now.1, now.2)),
        "False" => Some((EventType::Warning, now.1, now.2)),
        _ => None,
    }
}

async fn publish_note(
    ctx: &Context,
    kvc: &KvCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &kvc.object_ref(&())).await {
        warn!("publishing an event failed: {error}");
    }
}

mod security;
#[cfg(test)]
mod tests;

//! A change of `spec.storage` on a running cluster. Pure: the controller
//! observes and executes.
//!
//! A StatefulSet's `volumeClaimTemplates` cannot be changed, so growing the
//! members' volumes takes three steps, each re-derived from what is
//! observed (an operator restart anywhere resumes):
//! 1. patch every member's PersistentVolumeClaim to request the new size
//!    (the CSI resizer grows the volume; the API server refuses the patch
//!    when the StorageClass does not allow expansion);
//! 2. delete the StatefulSet with `propagationPolicy: Orphan`: its pods keep
//!    running, no member goes down;
//! 3. once it is gone, create it again with the new claim template; it
//!    adopts the running pods.
//!
//! The CRD refuses a shrink and a change of `storageClassName` (CEL rules);
//! should one reach the operator anyway (a CRD installed without them), it
//! reports it as `Degraded` and keeps the volumes as they are.

use crate::{
    Error,
    crd::StorageSpec,
    names::ClusterNames,
    observed::{Observed, ObservedClaim},
    planner::{Step, WaitReason},
    quantity,
};

/// A step that finishes a StatefulSet replacement started earlier; it comes
/// before any membership step, as the members have no StatefulSet meanwhile.
/// Without a StatefulSet, the claims are grown before it is created again:
/// its new template would not grow the volumes the members already have
/// (the spec may have grown while the operator was down, or a human deleted
/// the StatefulSet with `--cascade=orphan`).
#[must_use]
pub fn replacement_step(spec: &StorageSpec, observed: &Observed) -> Option<Step> {
    if observed.storage.statefulset_deleting {
        return Some(Step::Wait(WaitReason::StatefulSetDeleting));
    }
    match (
        observed.statefulset_replicas,
        observed.storage.orphaned_replicas,
    ) {
        (None, Some(replicas)) if observed.bootstrapped => {
            let smaller = quantity::bytes(&spec.size.0)
                .map(|wanted| smaller_claims(&observed.storage.claims, wanted))
                .unwrap_or_default();
            Some(if smaller.is_empty() {
                Step::RecreateStatefulSet { replicas }
            } else {
                Step::ExpandClaims {
                    claims: smaller,
                    size: spec.size.0.clone(),
                }
            })
        }
        _ => None,
    }
}

/// The claims that request less than `wanted` bytes (or nothing readable).
/// A claim grown beyond it (by hand) is left alone.
fn smaller_claims(claims: &[ObservedClaim], wanted: u128) -> Vec<String> {
    claims
        .iter()
        .filter(|c| {
            c.requested
                .as_deref()
                .and_then(quantity::bytes)
                .is_none_or(|requested| requested < wanted)
        })
        .map(|c| c.name.clone())
        .collect()
}

/// When the cluster otherwise matches the spec: the step that brings its
/// volumes to `spec`, or `None` when they already are.
#[must_use]
pub fn change_step(spec: &StorageSpec, observed: &Observed) -> Option<Step> {
    let storage = &observed.storage;
    let template_size = storage.template_size.as_deref()?;
    let refused = |message: String| Some(Step::Wait(WaitReason::StorageChangeRefused { message }));
    if spec.storage_class_name != storage.template_class {
        return refused(format!(
            "storage.storageClassName cannot change once the cluster exists (it is {}, the spec asks for {})",
            class_name(storage.template_class.as_deref()),
            class_name(spec.storage_class_name.as_deref()),
        ));
    }
    let Some(wanted) = quantity::bytes(&spec.size.0) else {
        return refused(format!("storage.size {:?} is not a quantity", spec.size.0));
    };
    let Some(current) = quantity::bytes(template_size) else {
        return refused(format!(
            "the StatefulSet's claim template asks for {template_size:?}, not a quantity"
        ));
    };
    if wanted == current {
        return None;
    }
    if wanted < current {
        return refused(format!(
            "storage.size cannot shrink from {template_size} to {}: volumes only grow",
            spec.size.0
        ));
    }
    let smaller = smaller_claims(&storage.claims, wanted);
    if smaller.is_empty() {
        Some(Step::ReplaceStatefulSet {
            size: spec.size.0.clone(),
        })
    } else {
        Some(Step::ExpandClaims {
            claims: smaller,
            size: spec.size.0.clone(),
        })
    }
}

/// When the API server refused to expand a claim (403: the
/// PersistentVolumeClaimResize admission, the StorageClass does not allow
/// expansion; 422: the claim cannot change), what to report. The cluster
/// itself is fine: the controller reports it as `Degraded` and looks again
/// later, rather than failing every reconcile (the spec cannot simply go
/// back, as the CRD refuses a shrink). Other errors are `None`.
#[must_use]
pub fn expansion_refused(step: &Step, error: &Error) -> Option<String> {
    let Step::ExpandClaims { size, .. } = step else {
        return None;
    };
    match error {
        Error::Kube(kube::Error::Api(status)) if matches!(status.code, 403 | 422) => Some(format!(
            "the API server refused to expand the volumes to {size}: {} (the StorageClass must allow volume expansion)",
            status.message
        )),
        _ => None,
    }
}

/// Without a StatefulSet: how many members the running pods stand for (the
/// highest ordinal + 1), `None` when no member pod runs.
#[must_use]
pub fn orphaned_replicas(
    names: &ClusterNames,
    pods: impl IntoIterator<Item = String>,
) -> Option<i32> {
    pods.into_iter()
        .filter_map(|pod| names.ordinal_of(&pod))
        .max()
        .and_then(|highest| i32::try_from(highest).ok()?.checked_add(1))
}

fn class_name(class: Option<&str>) -> String {
    class.map_or_else(|| "the default class".into(), |c| format!("{c:?}"))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::observed::{ObservedClaim, ObservedStorage};

    fn spec(size: &str) -> StorageSpec {
        StorageSpec {
            size: Quantity(size.into()),
            ..StorageSpec::default()
        }
    }

    fn claim(name: &str, requested: &str) -> ObservedClaim {
        ObservedClaim {
            name: name.into(),
            requested: Some(requested.into()),
        }
    }

    /// A running 3-member cluster whose template asks for `template` and
    /// whose claims ask for `claims`.
    fn running(template: &str, claims: &[&str]) -> Observed {
        Observed {
            statefulset_replicas: Some(3),
            bootstrapped: true,
            storage: ObservedStorage {
                template_size: Some(template.into()),
                claims: claims
                    .iter()
                    .enumerate()
                    .map(|(i, size)| claim(&format!("data-kv-{i}"), size))
                    .collect(),
                ..ObservedStorage::default()
            },
            ..Observed::default()
        }
    }

    #[test]
    fn the_same_size_changes_nothing_whatever_its_spelling() {
        assert_eq!(change_step(&spec("1Gi"), &running("1Gi", &[])), None);
        assert_eq!(change_step(&spec("1024Mi"), &running("1Gi", &[])), None);
    }

    #[test]
    fn without_a_statefulset_there_is_nothing_to_change() {
        assert_eq!(change_step(&spec("2Gi"), &Observed::default()), None);
    }

    #[test]
    fn growth_first_patches_the_claims_that_ask_for_less() {
        let observed = running("1Gi", &["2Gi", "1Gi", "1Gi"]);
        assert_eq!(
            change_step(&spec("2Gi"), &observed),
            Some(Step::ExpandClaims {
                claims: vec!["data-kv-1".into(), "data-kv-2".into()],
                size: "2Gi".into(),
            })
        );
    }

    #[test]
    fn a_claim_without_a_readable_request_is_patched() {
        let mut observed = running("1Gi", &["2Gi", "2Gi"]);
        observed.storage.claims.push(ObservedClaim {
            name: "data-kv-2".into(),
            requested: None,
        });
        assert_eq!(
            change_step(&spec("2Gi"), &observed),
            Some(Step::ExpandClaims {
                claims: vec!["data-kv-2".into()],
                size: "2Gi".into(),
            })
        );
    }

    #[test]
    fn once_every_claim_is_patched_the_statefulset_is_replaced() {
        // Claims already patched (this reconcile or one before a restart),
        // one grown further by hand: nothing left to patch.
        let observed = running("1Gi", &["2Gi", "2048Mi", "5Gi"]);
        assert_eq!(
            change_step(&spec("2Gi"), &observed),
            Some(Step::ReplaceStatefulSet { size: "2Gi".into() })
        );
    }

    #[test]
    fn a_shrink_is_refused_and_reported() {
        let step = change_step(&spec("512Mi"), &running("1Gi", &["1Gi"; 3]));
        let Some(Step::Wait(WaitReason::StorageChangeRefused { message })) = step else {
            panic!("{step:?}");
        };
        assert!(
            message.contains("cannot shrink from 1Gi to 512Mi"),
            "{message}"
        );
    }

    #[test]
    fn a_new_storage_class_is_refused_and_reported() {
        let mut wanted = spec("1Gi");
        wanted.storage_class_name = Some("fast".into());
        let step = change_step(&wanted, &running("1Gi", &[]));
        let Some(Step::Wait(WaitReason::StorageChangeRefused { message })) = step else {
            panic!("{step:?}");
        };
        assert!(
            message.contains("is the default class, the spec asks for \"fast\""),
            "{message}"
        );
    }

    #[test]
    fn a_size_that_is_not_a_quantity_is_refused() {
        let step = change_step(&spec("lots"), &running("1Gi", &[]));
        assert!(matches!(
            step,
            Some(Step::Wait(WaitReason::StorageChangeRefused { .. }))
        ));
    }

    #[test]
    fn while_the_statefulset_is_being_deleted_the_operator_waits() {
        let mut observed = running("1Gi", &["2Gi"; 3]);
        observed.storage.statefulset_deleting = true;
        assert_eq!(
            replacement_step(&spec("2Gi"), &observed),
            Some(Step::Wait(WaitReason::StatefulSetDeleting))
        );
    }

    #[test]
    fn after_a_restart_between_the_delete_and_the_create_the_statefulset_is_recreated() {
        // The operator deleted the StatefulSet (orphaning the pods) and
        // stopped before creating it again: the pods tell how many members.
        let observed = Observed {
            statefulset_replicas: None,
            bootstrapped: true,
            storage: ObservedStorage {
                orphaned_replicas: Some(3),
                ..ObservedStorage::default()
            },
            ..Observed::default()
        };
        assert_eq!(
            replacement_step(&spec("1Gi"), &observed),
            Some(Step::RecreateStatefulSet { replicas: 3 })
        );
        // Its claims asked for the new size before the delete.
        let mut patched = observed.clone();
        patched.storage.claims = running("1Gi", &["2Gi", "2Gi", "2Gi"]).storage.claims;
        assert_eq!(
            replacement_step(&spec("2Gi"), &patched),
            Some(Step::RecreateStatefulSet { replicas: 3 })
        );
    }

    #[test]
    fn without_a_statefulset_smaller_claims_grow_before_it_is_created_again() {
        // The spec grew while the StatefulSet was gone (deleted by hand with
        // --cascade=orphan, or the operator was down).
        let mut observed = running("1Gi", &["1Gi", "2Gi", "1Gi"]);
        observed.statefulset_replicas = None;
        observed.storage.template_size = None;
        observed.storage.orphaned_replicas = Some(3);
        assert_eq!(
            replacement_step(&spec("2Gi"), &observed),
            Some(Step::ExpandClaims {
                claims: vec!["data-kv-0".into(), "data-kv-2".into()],
                size: "2Gi".into(),
            })
        );
    }

    fn api_error(code: u16, message: &str) -> Error {
        Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..kube::core::Status::default()
        })))
    }

    #[test]
    fn a_refused_expansion_is_reported_with_the_api_servers_message() {
        let step = Step::ExpandClaims {
            claims: vec!["data-kv-0".into()],
            size: "2Gi".into(),
        };
        let message = expansion_refused(&step, &api_error(403, "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize")).expect("refused");
        assert!(
            message.contains("to 2Gi: only dynamically provisioned pvc"),
            "{message}"
        );
        assert!(expansion_refused(&step, &api_error(422, "invalid")).is_some());
        // Anything else is an ordinary failure, retried with backoff.
        assert_eq!(
            expansion_refused(&step, &api_error(500, "etcd timeout")),
            None
        );
        assert_eq!(expansion_refused(&step, &api_error(409, "conflict")), None);
        let other = Step::ReplaceStatefulSet { size: "2Gi".into() };
        assert_eq!(
            expansion_refused(&other, &api_error(403, "forbidden")),
            None
        );
    }

    #[test]
    fn orphaned_pods_count_up_to_the_highest_ordinal() {
        let names = ClusterNames {
            name: "kv".into(),
            namespace: "prod".into(),
            uid: "uid-1".into(),
            tls: false,
        };
        let pods = |p: &[&str]| p.iter().map(|p| (*p).to_string()).collect::<Vec<_>>();
        assert_eq!(
            orphaned_replicas(&names, pods(&["kv-0", "kv-2", "kv-1"])),
            Some(3)
        );
        // A member pod missing in the middle (being recreated) still counts.
        assert_eq!(orphaned_replicas(&names, pods(&["kv-0", "kv-2"])), Some(3));
        // Pods that are not members (another cluster, a backup) do not.
        assert_eq!(
            orphaned_replicas(&names, pods(&["kvx-0", "kv-backup-1-abcde"])),
            None
        );
        assert_eq!(orphaned_replicas(&names, pods(&[])), None);
    }

    #[test]
    fn a_new_cluster_without_pods_is_not_a_replacement() {
        assert_eq!(replacement_step(&spec("1Gi"), &Observed::default()), None);
        assert_eq!(replacement_step(&spec("2Gi"), &running("1Gi", &[])), None);
        // Pods left from a cluster that never answered: bootstrap as usual.
        let observed = Observed {
            storage: ObservedStorage {
                orphaned_replicas: Some(3),
                ..ObservedStorage::default()
            },
            ..Observed::default()
        };
        assert_eq!(replacement_step(&spec("1Gi"), &observed), None);
    }
}

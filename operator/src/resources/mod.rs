//! Pure builders: `fn(&KvCluster, ...) -> Kubernetes object`, one per kind.
//! They do no I/O; the controller applies what they return with
//! server-side apply, so each returns the whole desired object.

pub mod client_service;
pub mod configmap;
pub mod cronjob;
pub mod headless_service;
pub mod pdb;
pub mod statefulset;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{
    crd::KvCluster,
    error::Result,
    names::{ClusterNames, owner_reference},
};

/// Metadata of a child object: name, namespace, labels and the controller
/// owner reference that makes Kubernetes delete it with the KvCluster.
pub(crate) fn child_meta(
    kvc: &KvCluster,
    names: &ClusterNames,
    name: String,
) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(names.labels()),
        owner_references: Some(vec![owner_reference(kvc)?]),
        ..ObjectMeta::default()
    })
}

#[cfg(test)]
pub(crate) mod testing {
    use kube::api::ObjectMeta;

    use crate::crd::{KvCluster, KvClusterSpec};

    /// A stored KvCluster (namespace and uid set, as the API server does).
    pub fn kvc(replicas: i32) -> KvCluster {
        let mut kvc = KvCluster::new("kv", KvClusterSpec::with_replicas(replicas));
        kvc.metadata = ObjectMeta {
            name: Some("kv".into()),
            namespace: Some("prod".into()),
            uid: Some("uid-1".into()),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        kvc
    }

    /// Asserts the child is labelled and owned by the KvCluster.
    pub fn assert_owned(value: &serde_json::Value) {
        let meta = &value["metadata"];
        assert_eq!(meta["namespace"], "prod");
        assert_eq!(meta["labels"]["app.kubernetes.io/instance"], "kv");
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"],
            "witan-operator"
        );
        let owner = &meta["ownerReferences"][0];
        assert_eq!(owner["kind"], "KvCluster");
        assert_eq!(owner["apiVersion"], "witan.io/v1alpha1");
        assert_eq!(owner["uid"], "uid-1");
        assert_eq!(owner["controller"], true);
    }
}

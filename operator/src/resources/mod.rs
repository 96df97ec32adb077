//! Pure builders: `fn(&KvCluster, ...) -> Kubernetes object`, one per kind.
//! They do no I/O; the controller applies what they return with
//! server-side apply, so each returns the whole desired object.

pub mod certificates;
pub mod client_service;
pub mod configmap;
pub mod credentials;
pub mod cronjob;
pub mod headless_service;
pub mod network_policy;
pub mod pdb;
pub mod statefulset;
pub mod tls;

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
    use serde_json::{Value, json};

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

    /// The strings of a JSON array.
    pub fn strings(v: &Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect()
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

    /// PodSecurity `restricted` (and no Kubernetes API credentials) for a
    /// pod spec: every container, every volume.
    pub fn assert_restricted_pod(pod: &Value) {
        assert_eq!(pod["automountServiceAccountToken"], false);
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod.get(host).is_none() || pod[host] == false, "{host}");
        }
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true);
        assert!(psc["runAsUser"].as_i64().unwrap() > 0);
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
        const ALLOWED: [&str; 8] = [
            "configMap",
            "secret",
            "emptyDir",
            "persistentVolumeClaim",
            "projected",
            "downwardAPI",
            "csi",
            "ephemeral",
        ];
        for volume in pod["volumes"].as_array().into_iter().flatten() {
            let kinds: Vec<&String> = volume
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "name")
                .collect();
            assert_eq!(kinds.len(), 1, "{volume}");
            assert!(ALLOWED.contains(&kinds[0].as_str()), "{volume}");
        }
        let containers = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().into_iter().flatten());
        for c in containers {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
            assert_eq!(sc["privileged"], false);
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["runAsNonRoot"], true);
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
            assert!(sc["capabilities"].get("add").is_none());
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        }
    }
}

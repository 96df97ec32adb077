//! The Helm chart in `charts/witan`: its version follows the workspace, its
//! RBAC grants exactly what the operator uses and never a wildcard, its
//! Deployment runs under PodSecurity `restricted` with flags the binary
//! knows, and its example KvCluster is a valid KvCluster.
//!
//! Rendering needs `helm` (`$HELM`, else on `PATH`; `scripts/test.sh`
//! installs it). Without it these tests fail under CI (`CI` set) and are
//! skipped with a message elsewhere.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{apps::v1::Deployment, rbac::v1::PolicyRule};
use serde::Deserialize;
use serde_json::Value;
use witan_operator::crd::KvCluster;

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/witan")
}

fn helm() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HELM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("helm"))
        .find(|candidate| candidate.is_file())
}

/// The chart rendered with the given values files (relative to the chart),
/// one JSON value per object; `None` when helm is missing outside CI.
fn render(values: &[&str]) -> Option<Vec<Value>> {
    let Some(helm) = helm() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "helm is needed to test the chart (set HELM or put helm on PATH)"
        );
        eprintln!("skipped: helm not found (set HELM or put helm on PATH)");
        return None;
    };
    let mut command = Command::new(helm);
    command
        .args(["template", "witan", "--namespace", "witan-system"])
        .args(["--kube-version", "1.33.0"])
        .arg(chart_dir());
    for file in values {
        command.arg("--values").arg(chart_dir().join(file));
    }
    let output = command.output().expect("run helm");
    assert!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    let objects = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect();
    Some(objects)
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().expect("kind").to_string())
        .collect();
    kinds.sort();
    kinds
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

/// (apiGroup/resource, resourceNames) -> verbs, over every rule of `role`.
fn grants(role: &Value) -> BTreeMap<String, Vec<String>> {
    let rules: Vec<PolicyRule> =
        serde_json::from_value(role["rules"].clone()).expect("rules parse as PolicyRule");
    let mut grants = BTreeMap::new();
    for rule in rules {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                let mut key = format!("{group}/{resource}");
                if let Some(names) = &rule.resource_names {
                    key = format!("{key}[{}]", names.join(","));
                }
                let verbs: &mut Vec<String> = grants.entry(key).or_default();
                verbs.extend(rule.verbs.iter().cloned());
                verbs.sort();
            }
        }
    }
    grants
}

fn expect_grants(expected: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    expected
        .iter()
        .map(|(key, verbs)| {
            let mut verbs: Vec<String> = verbs.iter().map(|v| (*v).to_string()).collect();
            verbs.sort();
            ((*key).to_string(), verbs)
        })
        .collect()
}

/// What the controller does (operator/src/controller.rs) and the backup
/// CronJob and its Jobs.
const OPERATOR_GRANTS: &[(&str, &[&str])] = &[
    ("witan.io/kvclusters", &["list", "watch"]),
    ("witan.io/kvclusters/status", &["patch"]),
    // delete: orphaned and re-created when spec.storage.size grows.
    (
        "apps/statefulsets",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    ("/services", &["list", "watch", "create", "patch"]),
    ("/configmaps", &["list", "watch", "create", "patch"]),
    (
        "policy/poddisruptionbudgets",
        &["list", "watch", "create", "patch"],
    ),
    ("/pods", &["list", "delete"]),
    // spec.storage.size grows: read each member claim, request more.
    ("/persistentvolumeclaims", &["get", "patch"]),
    (
        "batch/cronjobs",
        &["list", "watch", "create", "patch", "delete"],
    ),
    // A finished backup Job triggers a reconcile of its KvCluster.
    ("batch/jobs", &["list", "watch"]),
    ("events.k8s.io/events", &["create", "patch"]),
    // spec.tls and spec.auth (operator/src/controller/security.rs): read
    // the TLS client certificate and passwords by name, create its own
    // credentials once. No list or watch: Secrets cannot be enumerated.
    ("/secrets", &["get", "create"]),
    // spec.networkPolicy: applied, and deleted when turned off.
    (
        "networking.k8s.io/networkpolicies",
        &["create", "patch", "delete"],
    ),
    // spec.tls.certManager: applied.
    ("cert-manager.io/certificates", &["create", "patch"]),
];

/// The default values and each file in `ci/` (what CI lints and renders).
const EVERY_VALUES_FILE: [&[&str]; 4] = [
    &[],
    &["ci/all-on-values.yaml"],
    &["ci/namespaced-values.yaml"],
    &["ci/locked-down-values.yaml"],
];

/// What leader election does (operator/src/leader_election.rs).
const LEASE_GRANTS: &[(&str, &[&str])] = &[
    ("coordination.k8s.io/leases", &["create"]),
    (
        "coordination.k8s.io/leases[witan-operator]",
        &["get", "update"],
    ),
];

#[test]
fn chart_and_app_version_follow_the_workspace_version() {
    let text = std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_yaml_ng::from_str(&text).expect("Chart.yaml parses");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["apiVersion"], "v2");
}

#[test]
fn default_values_install_the_operator_and_nothing_optional() {
    let Some(objects) = render(&[]) else { return };
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let deployment: Deployment =
        serde_json::from_value(one(&objects, "Deployment").clone()).expect("a Deployment");
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(1));
}

#[test]
fn rbac_grants_exactly_what_the_operator_uses_and_no_wildcard() {
    for values in EVERY_VALUES_FILE {
        let Some(objects) = render(values) else {
            return;
        };
        for object in &objects {
            if let Some(rules) = object.get("rules") {
                let text = rules.to_string();
                assert!(!text.contains('*'), "wildcard in {values:?}: {text}");
                // Privilege escalation through RBAC itself is never granted.
                for verb in ["escalate", "bind", "impersonate"] {
                    assert!(!text.contains(verb), "{verb} in {values:?}: {text}");
                }
                // Secrets can be read by name only, never enumerated.
                let rules: Vec<PolicyRule> =
                    serde_json::from_value(rules.clone()).expect("rules parse");
                for rule in rules {
                    if rule.resources.iter().flatten().any(|r| r == "secrets") {
                        assert!(
                            !rule.verbs.iter().any(|v| v == "list" || v == "watch"),
                            "{values:?}: {:?}",
                            rule.verbs
                        );
                    }
                }
            }
        }
        let workload = objects
            .iter()
            .find(|o| {
                (o["kind"] == "ClusterRole" || o["kind"] == "Role")
                    && !o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .ends_with("-leader-election")
            })
            .expect("the operator's role");
        assert_eq!(
            grants(workload),
            expect_grants(OPERATOR_GRANTS),
            "{values:?}"
        );
    }

    let Some(objects) = render(&[]) else { return };
    let lease_role = one(&objects, "Role");
    assert_eq!(lease_role["metadata"]["namespace"], "witan-system");
    assert_eq!(grants(lease_role), expect_grants(LEASE_GRANTS));
}

#[test]
fn a_watched_namespace_gets_a_role_there_instead_of_a_cluster_role() {
    let Some(objects) = render(&["ci/namespaced-values.yaml"]) else {
        return;
    };
    let kinds = kinds(&objects);
    assert!(!kinds.iter().any(|k| k.starts_with("Cluster")), "{kinds:?}");
    let role = one(&objects, "Role");
    assert_eq!(role["metadata"]["namespace"], "apps");
    let binding = one(&objects, "RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], "apps");
    assert_eq!(binding["subjects"][0]["namespace"], "witan-system");
    // Election off in this file: no Lease role, and never two operators at once.
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let example = one(&objects, "KvCluster");
    assert_eq!(example["metadata"]["namespace"], "apps");
}

#[test]
fn the_operator_pod_is_restricted_probed_and_configured_with_known_flags() {
    let Some(objects) = render(&["ci/all-on-values.yaml"]) else {
        return;
    };
    let deployment: Deployment =
        serde_json::from_value(one(&objects, "Deployment").clone()).expect("a Deployment");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let pod_security = pod.security_context.expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|uid| uid > 0));
    assert_eq!(
        pod_security.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let container = &pod.containers[0];
    let security = container.security_context.clone().expect("securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    for probe in [&container.liveness_probe, &container.readiness_probe] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some("/healthz"));
    }
    assert!(container.resources.is_some());

    // Every variable the chart sets is one the binary reads.
    let help = Command::new(env!("CARGO_BIN_EXE_witan-operator"))
        .arg("--help")
        .output()
        .expect("run witan-operator --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let env = container.env.clone().unwrap_or_default();
    for var in env.iter().filter(|v| v.name.starts_with("WITAN_OPERATOR_")) {
        assert!(
            help.contains(&format!("env: {}", var.name)),
            "{} is not a witan-operator flag",
            var.name
        );
    }
    for needed in ["WITAN_OPERATOR_POD_NAME", "WITAN_OPERATOR_NAMESPACE"] {
        assert!(env.iter().any(|v| v.name == needed), "{needed} missing");
    }
}

#[test]
fn optional_monitors_and_the_example_cluster_render_when_enabled() {
    let Some(objects) = render(&["ci/all-on-values.yaml"]) else {
        return;
    };
    let monitor = one(&objects, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    let pods = one(&objects, "PodMonitor");
    assert_eq!(pods["spec"]["podMetricsEndpoints"][0]["port"], "client");
    assert_eq!(
        pods["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"],
        "witan-operator"
    );
    let example: KvCluster =
        serde_json::from_value(one(&objects, "KvCluster").clone()).expect("a valid KvCluster");
    assert_eq!(example.spec.replicas, 5);
    assert_eq!(
        example.spec.storage.storage_class_name.as_deref(),
        Some("fast")
    );
}

/// PodSecurity `restricted` for a rendered pod spec, beyond the container
/// checks above: no host namespaces, no hostPath, only restricted volume
/// types, every container locked down.
fn assert_restricted(pod: &Value) {
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod.get(host).is_none_or(|v| v == false), "{host}");
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        assert!(volume.get("hostPath").is_none(), "{volume}");
    }
    for c in pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .chain(pod["initContainers"].as_array().into_iter().flatten())
    {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert!(sc["capabilities"].get("add").is_none());
        assert!(sc.get("privileged").is_none_or(|v| v == false));
        for port in c["ports"].as_array().into_iter().flatten() {
            assert!(port.get("hostPort").is_none(), "{port}");
        }
    }
}

#[test]
fn the_operator_pod_meets_the_restricted_profile_under_every_values_file() {
    for values in EVERY_VALUES_FILE {
        let Some(objects) = render(values) else {
            return;
        };
        assert_restricted(&one(&objects, "Deployment")["spec"]["template"]["spec"]);
    }
}

#[test]
fn the_operator_network_policy_is_off_by_default_and_admits_only_monitoring() {
    let Some(objects) = render(&[]) else { return };
    assert!(!kinds(&objects).contains(&"NetworkPolicy".to_string()));

    let Some(objects) = render(&["ci/all-on-values.yaml"]) else {
        return;
    };
    let policy = one(&objects, "NetworkPolicy");
    let deployment = one(&objects, "Deployment");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let ingress = policy["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"port": "http-metrics", "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );

    // Nobody listed: no ingress at all, never an empty `from` (= everyone).
    let Some(objects) = render(&["ci/locked-down-values.yaml"]) else {
        return;
    };
    let policy = one(&objects, "NetworkPolicy");
    assert_eq!(policy["spec"]["ingress"], serde_json::json!([]));
}

#[test]
fn network_policies_of_kvclusters_admit_the_operator_by_the_label_its_pods_carry() {
    let Some(objects) = render(&["ci/all-on-values.yaml"]) else {
        return;
    };
    let deployment = one(&objects, "Deployment");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    let label = env
        .iter()
        .find(|v| v["name"] == "WITAN_OPERATOR_POD_NAME_LABEL")
        .expect("WITAN_OPERATOR_POD_NAME_LABEL");
    assert_eq!(label["value"], labels["app.kubernetes.io/name"]);
}

#[test]
fn the_member_pod_monitor_scrapes_tls_members_on_their_metrics_port() {
    let Some(objects) = render(&["ci/all-on-values.yaml"]) else {
        return;
    };
    let monitor = one(&objects, "PodMonitor");
    let endpoints = monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("endpoints");
    assert_eq!(endpoints[0]["port"], "client");
    assert_eq!(
        endpoints[0]["relabelings"][0],
        serde_json::json!({"sourceLabels": ["__meta_kubernetes_pod_label_witan_io_tls"],
            "regex": "true", "action": "drop"})
    );
    assert_eq!(endpoints[1]["port"], "metrics");
}

//! The committed CRD YAML must be exactly what the Rust types generate.
//! Regenerate with:
//! `cargo run -p witan-operator --bin crdgen > crds/kvcluster.yaml && cp crds/kvcluster.yaml charts/witan/crds/`

use std::path::Path;

fn assert_matches_generated(relative: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    let committed =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let generated = witan_operator::crd::crd_yaml().expect("generate the CRD");
    assert!(
        committed == generated,
        "{relative} is out of date with the KvCluster types; regenerate it with crdgen"
    );
}

#[test]
fn committed_crd_matches_the_types() {
    assert_matches_generated("crds/kvcluster.yaml");
}

#[test]
fn chart_crd_matches_the_types() {
    assert_matches_generated("charts/witan/crds/kvcluster.yaml");
}

#[test]
fn committed_crd_parses_as_a_custom_resource_definition() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/kvcluster.yaml");
    let text = std::fs::read_to_string(path).expect("read crds/kvcluster.yaml");
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text).expect("valid CRD YAML");
    assert_eq!(crd.spec.names.kind, "KvCluster");
}

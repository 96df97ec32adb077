//! `docs/operator.md` cannot drift: every KvCluster in it is a valid
//! `KvCluster` whose every field the operator reads, and every chart value
//! its table names exists in `charts/witan/values.yaml`.

use std::path::Path;

use serde_json::Value;
use witan_operator::crd::{ALLOWED_REPLICAS, KvCluster};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The bodies of the fenced blocks of `lang` in a Markdown text.
fn fenced(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim() == format!("```{lang}") => current = Some(String::new()),
            Some(body) if line.trim() == "```" => {
                blocks.push(std::mem::take(body));
                current = None;
            }
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// Every key and value of `doc` is in `full` (arrays element by element).
fn assert_contained(doc: &Value, full: &Value, path: &str) {
    match (doc, full) {
        (Value::Object(d), Value::Object(f)) => {
            for (key, value) in d {
                let inner = format!("{path}.{key}");
                let other = f
                    .get(key)
                    .unwrap_or_else(|| panic!("{inner} is not a KvCluster field (dropped)"));
                assert_contained(value, other, &inner);
            }
        }
        (Value::Array(d), Value::Array(f)) => {
            assert_eq!(d.len(), f.len(), "{path}");
            for (i, (a, b)) in d.iter().zip(f).enumerate() {
                assert_contained(a, b, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(doc, full, "{path}"),
    }
}

#[test]
fn every_kvcluster_in_the_operator_doc_is_a_valid_kvcluster() {
    assert!(
        check_kvclusters("docs/operator.md") >= 3,
        "the doc shows a minimal, a full and a restoring KvCluster"
    );
}

#[test]
fn every_kvcluster_in_the_backup_doc_is_a_valid_kvcluster() {
    assert!(
        check_kvclusters("docs/backup.md") >= 1,
        "a restoring KvCluster"
    );
}

/// Checks every KvCluster in the doc; returns how many there are.
fn check_kvclusters(path: &str) -> usize {
    let doc = read(path);
    let mut checked = 0;
    for block in fenced(&doc, "yaml") {
        let value: Value = serde_yaml_ng::from_str(&block).expect("YAML parses");
        if value["kind"] != "KvCluster" {
            continue;
        }
        assert_eq!(value["apiVersion"], "witan.io/v1alpha1");
        let kvc: KvCluster = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("not a KvCluster: {e}\n{block}"));
        assert!(
            ALLOWED_REPLICAS.contains(&kvc.spec.replicas),
            "replicas {} would be refused by the CRD",
            kvc.spec.replicas
        );
        // serde ignores unknown fields: a misspelt field would parse and be
        // silently dropped. Round-trip and require every field to survive.
        let full = serde_json::to_value(&kvc).expect("serialises");
        assert_contained(&value, &full, "");
        checked += 1;
    }
    checked
}

#[test]
fn the_doc_shows_kubectl_scale_on_the_short_name() {
    let doc = read("docs/operator.md");
    assert!(doc.contains("kubectl scale kvc/"));
}

#[test]
fn every_chart_value_the_doc_names_exists() {
    let doc = read("docs/operator.md");
    let values: Value =
        serde_yaml_ng::from_str(&read("charts/witan/values.yaml")).expect("values.yaml parses");
    let table_start = doc.find("| value | default |").expect("the values table");
    let mut named = 0;
    for row in doc[table_start..].lines().skip(2) {
        if !row.starts_with('|') {
            break;
        }
        let cell = row.split('|').nth(1).unwrap_or_default();
        let keys: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        let prefix = keys
            .first()
            .and_then(|k| k.rsplit_once('.'))
            .map_or("", |(p, _)| p);
        for (i, key) in keys.iter().enumerate() {
            let full = if i > 0 && !key.contains('.') && !prefix.is_empty() {
                format!("{prefix}.{key}")
            } else {
                (*key).to_string()
            };
            let found = full
                .split('.')
                .try_fold(&values, |v, part| v.get(part))
                .is_some();
            assert!(found, "{full} is not in charts/witan/values.yaml");
            named += 1;
        }
    }
    assert!(named >= 10, "the table names the chart's values ({named})");
}

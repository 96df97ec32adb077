//! Reading etcdctl's `-w json` answers.

use serde_json::Value;

/// Parses etcdctl's JSON output, or panics showing it.
pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not json ({e}): {text}"))
}

/// `header.revision` of a `-w json` answer.
pub fn revision_of(text: &str) -> i64 {
    json(text)["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no header.revision in {text}"))
}

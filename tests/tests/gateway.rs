//! etcd's JSON gateway with curl, as etcd's docs show it: POST protojson to
//! `/v3/...` (proto field names, base64 bytes, int64 as strings).

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use witan_tests::{Cluster, LineChild, run_bounded};

/// How long one curl may take.
const CURL_TIMEOUT: Duration = Duration::from_secs(10);

/// `curl -X POST -d <body> http://<endpoint><path>`: (status, JSON body).
fn post(endpoint: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "8",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-d",
    ])
    .arg(body.to_string())
    .arg(format!("http://{endpoint}{path}"));
    let out = run_bounded(cmd, None, CURL_TIMEOUT);
    assert!(
        out.status.is_some_and(|s| s.success()),
        "curl {path}: {:?} {}",
        out.status,
        out.stderr
    );
    let (text, code) = out.stdout.rsplit_once('\n').expect("status line");
    let json =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
    (code.trim().parse().expect("status code"), json)
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn kv_lease_and_errors_over_the_json_gateway() {
    let c = Cluster::start(3);
    let ep = c.endpoint(1);
    assert_eq!(b64("foo"), "Zm9v");

    let (code, put) = post(
        &ep,
        "/v3/kv/put",
        &json!({"key": b64("foo"), "value": b64("bar")}),
    );
    assert_eq!(code, 200, "{put}");
    let revision = put["header"]["revision"]
        .as_str()
        .expect("revision as a string");
    assert!(put["header"]["cluster_id"].is_string());

    let (code, range) = post(&ep, "/v3/kv/range", &json!({"key": b64("foo")}));
    assert_eq!(code, 200);
    assert_eq!(range["count"], "1");
    assert_eq!(range["kvs"][0]["key"], b64("foo"));
    assert_eq!(range["kvs"][0]["value"], b64("bar"));
    assert_eq!(range["kvs"][0]["mod_revision"], revision);
    assert_eq!(range["kvs"][0]["version"], "1");

    // The same through etcdctl: one store behind both front ends.
    assert_eq!(c.ctl_on(0, &["get", "foo", "--print-value-only"]), "bar\n");

    let txn = json!({
        "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("bar")}],
        "success": [{"request_put": {"key": b64("foo"), "value": b64("baz")}}],
        "failure": [{"request_range": {"key": b64("foo")}}]
    });
    let (code, resp) = post(&ep, "/v3/kv/txn", &txn);
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["succeeded"], true);
    let (_, resp) = post(&ep, "/v3/kv/txn", &txn);
    assert!(resp.get("succeeded").is_none(), "false is left out: {resp}");
    assert_eq!(
        resp["responses"][0]["response_range"]["kvs"][0]["value"],
        b64("baz")
    );

    let (code, grant) = post(&ep, "/v3/lease/grant", &json!({"TTL": "60"}));
    assert_eq!(code, 200, "{grant}");
    assert_eq!(grant["TTL"], "60");
    let id = grant["ID"].as_str().expect("lease id").to_string();
    let (_, ttl) = post(&ep, "/v3/kv/lease/timetolive", &json!({"ID": id}));
    assert_eq!(ttl["grantedTTL"], "60");

    // /v3beta is the same gateway.
    let (code, del) = post(&ep, "/v3beta/kv/deleterange", &json!({"key": b64("foo")}));
    assert_eq!((code, &del["deleted"]), (200, &json!("1")));

    // etcd's errors, with grpc-gateway's HTTP status.
    let (code, err) = post(&ep, "/v3/kv/range", &json!({}));
    assert_eq!(code, 400);
    assert_eq!(err["message"], "etcdserver: key is not provided");
    assert_eq!(err["code"], 3);
    let (code, err) = post(
        &ep,
        "/v3/kv/range",
        &json!({"key": b64("foo"), "revision": "999"}),
    );
    assert_eq!(code, 400);
    assert_eq!(
        err["error"],
        "etcdserver: mvcc: required revision is a future revision"
    );
}

#[test]
fn watch_streams_result_lines() {
    let c = Cluster::start(3);
    let ep = c.endpoint(0);
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-N", "--max-time", "30", "-X", "POST", "-d"])
        .arg(json!({"create_request": {"key": b64("watched")}}).to_string())
        .arg(format!("http://{ep}/v3/watch"));
    let mut watch = LineChild::spawn("curl /v3/watch", cmd);
    let created: Value = serde_json::from_str(&watch.wait_lines(1, Duration::from_secs(10))[0])
        .expect("a JSON line");
    assert_eq!(created["result"]["created"], true, "{created}");

    // A write through another member arrives as one result line.
    c.ctl_on(2, &["put", "watched", "value"]);
    let line = watch.wait_lines(2, Duration::from_secs(10))[1].clone();
    let event: Value = serde_json::from_str(&line).expect("a JSON line");
    let kv = &event["result"]["events"][0]["kv"];
    assert_eq!(kv["key"], b64("watched"), "{event}");
    assert_eq!(kv["value"], b64("value"));
    assert!(
        event["result"]["events"][0].get("type").is_none(),
        "PUT is the default: {event}"
    );
}

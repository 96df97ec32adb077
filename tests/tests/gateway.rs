//! etcd's JSON gateway with curl, as etcd's docs show it: POST protojson to
//! `/v3/...` (proto field names, base64 bytes, int64 as strings).

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use witan_node::storage::backup;
use witan_tests::{Cluster, LineChild, poll_until, revision_of, run_bounded};

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

/// `curl -X POST -d <body>` to a streaming call that ends by itself:
/// (status, one JSON value per line of the answer).
fn post_stream(endpoint: &str, path: &str, body: &str) -> (u16, Vec<Value>) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-N",
        "--max-time",
        "8",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-d",
    ])
    .arg(body)
    .arg(format!("http://{endpoint}{path}"));
    let out = run_bounded(cmd, None, CURL_TIMEOUT);
    assert!(
        out.status.is_some_and(|s| s.success()),
        "curl {path} did not end by itself: {:?} {}",
        out.status,
        out.stderr
    );
    let (text, code) = out.stdout.rsplit_once('\n').expect("status line");
    let lines = text
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {line}"))
        })
        .collect();
    (code.trim().parse().expect("status code"), lines)
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

#[test]
fn cluster_and_maintenance_calls_over_the_json_gateway() {
    let c = Cluster::start(3);
    let ep = c.endpoint(0);
    let ids: Vec<String> = (0..3).map(|i| c.member_id(i).to_string()).collect();

    let (code, list) = post(&ep, "/v3/cluster/member/list", &json!({}));
    assert_eq!(code, 200, "{list}");
    let mut listed: Vec<String> = list["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members: {list}"))
        .iter()
        .map(|m| m["ID"].as_str().expect("ID as a string").to_string())
        .collect();
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want);
    let me = &list["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["ID"] == ids[0].as_str())
        .expect("member 0 listed")
        .clone();
    assert_eq!(me["name"], c.member(0).name, "{me}");
    assert_eq!(me["peerURLs"][0], c.member(0).peer_url(), "{me}");
    assert_eq!(me["clientURLs"][0], c.member(0).client_url(), "{me}");

    let leader = c.leader();
    let (code, status) = post(&ep, "/v3/maintenance/status", &json!({}));
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["header"]["member_id"], ids[0].as_str());
    assert_eq!(status["leader"], ids[leader].as_str());
    assert!(
        status["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    assert!(status["dbSize"].as_str().is_some(), "{status}");
    assert!(status.get("isLearner").is_none(), "false is left out");

    // GET (0, the default) lists the alarms: none.
    let (code, alarms) = post(&ep, "/v3/maintenance/alarm", &json!({"action": "GET"}));
    assert_eq!(code, 200, "{alarms}");
    assert!(alarms.get("alarms").is_none(), "{alarms}");
    assert!(alarms["header"]["revision"].is_string());

    // Membership changes: a learner (never started) added, refused
    // promotion while it is behind, then removed; a voter cannot be
    // promoted; an unknown member cannot be removed.
    let (code, added) = post(
        &ep,
        "/v3/cluster/member/add",
        &json!({"peerURLs": ["http://127.0.0.1:1"], "isLearner": true}),
    );
    assert_eq!(code, 200, "{added}");
    assert_eq!(added["member"]["isLearner"], true, "{added}");
    let learner = added["member"]["ID"].as_str().expect("new ID").to_string();
    let (code, err) = post(&ep, "/v3/cluster/member/promote", &json!({"ID": learner}));
    assert_eq!(code, 400, "{err}");
    assert_eq!(
        err["message"],
        "etcdserver: can only promote a learner member which is in sync with leader"
    );
    let (code, removed) = post(&ep, "/v3/cluster/member/remove", &json!({"ID": learner}));
    assert_eq!(code, 200, "{removed}");
    assert_eq!(removed["members"].as_array().map(Vec::len), Some(3));
    let (code, err) = post(&ep, "/v3/cluster/member/promote", &json!({"ID": ids[1]}));
    assert_eq!(code, 400, "{err}");
    assert_eq!(
        err["message"],
        "etcdserver: can only promote a learner member"
    );
    let (code, err) = post(&ep, "/v3/cluster/member/remove", &json!({"ID": "12345"}));
    assert_eq!(code, 404, "{err}");
    assert_eq!(err["message"], "etcdserver: member not found");

    // Leadership moves to the member named, through the leader.
    let target = (leader + 1) % 3;
    let (code, moved) = post(
        &c.endpoint(leader),
        "/v3/maintenance/transfer-leadership",
        &json!({"targetID": ids[target]}),
    );
    assert_eq!(code, 200, "{moved}");
    assert_eq!(c.leader(), target);

    let mut last = 0;
    for v in ["1", "2", "3"] {
        last = revision_of(&c.ctl(&["put", "compacted", v, "-w", "json"]));
    }
    let (code, compact) = post(
        &ep,
        "/v3/kv/compaction",
        &json!({"revision": last.to_string(), "physical": true}),
    );
    assert_eq!(code, 200, "{compact}");
    assert!(compact["header"]["revision"].is_string());
    let (code, err) = post(
        &ep,
        "/v3/kv/range",
        &json!({"key": b64("compacted"), "revision": (last - 1).to_string()}),
    );
    assert_eq!(code, 400, "{err}");
    assert_eq!(
        err["message"],
        "etcdserver: mvcc: required revision has been compacted"
    );
    // Compacting the same revision again is etcd's error too.
    let (code, err) = post(
        &ep,
        "/v3/kv/compaction",
        &json!({"revision": last.to_string()}),
    );
    assert_eq!(code, 400, "{err}");
}

#[test]
fn lease_keepalive_streams_one_result_per_request() {
    let c = Cluster::start(3);
    let ep = c.endpoint(1);
    let (code, grant) = post(&ep, "/v3/lease/grant", &json!({"TTL": "10"}));
    assert_eq!(code, 200, "{grant}");
    let id = grant["ID"].as_str().expect("lease id").to_string();
    let remaining = |id: &str| {
        let (_, ttl) = post(&ep, "/v3/lease/timetolive", &json!({"ID": id}));
        ttl["TTL"]
            .as_str()
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("TTL: {ttl}"))
    };
    // Let the lease run down a little, so the keep-alive visibly renews it.
    poll_until(Duration::from_secs(10), "the lease to run down", || {
        let ttl = remaining(&id);
        (ttl <= 8).then_some(()).ok_or(format!("TTL {ttl}"))
    });

    // Two requests in one body: two answers, then the stream ends.
    let request = json!({"ID": id}).to_string();
    let (code, lines) = post_stream(&ep, "/v3/lease/keepalive", &format!("{request}\n{request}"));
    assert_eq!(code, 200, "{lines:?}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert_eq!(line["result"]["ID"], id.as_str(), "{line}");
        assert_eq!(line["result"]["TTL"], "10", "{line}");
        assert!(line["result"]["header"]["revision"].is_string(), "{line}");
    }
    assert!(remaining(&id) >= 9, "renewed");

    // A lease that does not exist answers TTL 0 (left out), as in etcd.
    let (code, lines) = post_stream(&ep, "/v3beta/lease/keepalive", r#"{"ID":"12345"}"#);
    assert_eq!(code, 200);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["result"]["ID"], "12345");
    assert!(lines[0]["result"].get("TTL").is_none(), "{lines:?}");

    // A body that does not decode is refused before any stream.
    let (code, lines) = post_stream(&ep, "/v3/lease/keepalive", "{not json");
    assert_eq!(code, 400, "{lines:?}");
    assert_eq!(lines[0]["code"], 3, "{lines:?}");
}

#[test]
fn snapshot_streams_the_snapshot_in_base64_chunks() {
    let c = Cluster::start(3);
    let mut last = 0;
    for v in ["1", "2"] {
        last = revision_of(&c.ctl(&["put", "snapped", v, "-w", "json"]));
    }
    c.wait_applied(2, last);

    let (code, lines) = post_stream(&c.endpoint(2), "/v3/maintenance/snapshot", "{}");
    assert_eq!(code, 200);
    assert!(lines.len() >= 2, "content, then the checksum: {lines:?}");
    let first = &lines[0]["result"];
    assert_eq!(
        first["header"]["revision"],
        last.to_string().as_str(),
        "{first}"
    );
    let mut raw = Vec::new();
    let mut previous_remaining = u64::MAX;
    for line in &lines {
        let result = &line["result"];
        let blob = result["blob"].as_str().unwrap_or_else(|| panic!("{line}"));
        raw.extend(
            base64::engine::general_purpose::STANDARD
                .decode(blob)
                .expect("base64 blob"),
        );
        // remaining_bytes counts down; 0 is left out.
        let remaining: u64 = result.get("remaining_bytes").map_or(0, |r| {
            r.as_str().and_then(|r| r.parse().ok()).expect("a string")
        });
        assert!(remaining <= previous_remaining, "{line}");
        previous_remaining = remaining;
    }
    assert_eq!(previous_remaining, 0);
    let (content, trailer) = raw.split_at(raw.len() - 32);
    assert_eq!(Sha256::digest(content).as_slice(), trailer);
    let file = backup::decode(&raw).expect("decoding the streamed snapshot");
    assert_eq!(file.image.revision, last);
    assert_eq!(file.member_id, c.member_id(2));
}

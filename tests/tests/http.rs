//! etcd's HTTP endpoints (`/health`, `/livez`, `/readyz`, `/version`) on the
//! client port, next to gRPC, probed with curl over HTTP/1.1 (and h2c).

use std::time::Duration;

use witan_tests::{Cluster, Reply, curl, poll_until};

/// `GET http://127.0.0.1:<port><path>` with curl, over HTTP/1.1 unless
/// `extra` says otherwise.
fn get_with(port: u16, path: &str, extra: &[&str]) -> Result<Reply, String> {
    curl(&format!("http://127.0.0.1:{port}{path}"), extra)
}

fn get(port: u16, path: &str) -> Reply {
    get_with(port, path, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", reply.body))
}

#[test]
fn health_readiness_liveness_and_version_over_http() {
    let mut cluster = Cluster::start(3);
    // gRPC keeps working on the same port.
    cluster.ctl(&["put", "over", "grpc"]);

    for member in cluster.members() {
        let port = member.client_port;
        let health = get(port, "/health");
        assert_eq!(health.status, 200, "{}: {health:?}", member.name);
        assert_eq!(health.body, r#"{"health":"true","reason":""}"#);
        // HTTP/2 without upgrade (as gRPC clients speak) reaches it too.
        let h2 = get_with(port, "/health", &["--http2-prior-knowledge"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h2.status, 200, "{h2:?}");
        let tolerant = get(port, "/health?exclude=NOSPACE&serializable=false");
        assert_eq!(tolerant.status, 200, "{tolerant:?}");

        let ready = get(port, "/readyz?verbose");
        assert_eq!(ready.status, 200, "{ready:?}");
        let lines: Vec<&str> = ready.body.lines().collect();
        for check in [
            "data_corruption",
            "serializable_read",
            "linearizable_read",
            "non_learner",
        ] {
            assert!(
                lines.contains(&format!("[+]{check} ok").as_str()),
                "{check} in {:?}",
                ready.body
            );
        }
        assert_eq!(lines.last(), Some(&"ok"), "{:?}", ready.body);
        let plain = get(port, "/readyz");
        assert_eq!((plain.status, plain.body.as_str()), (200, "ok\n"));
        let excluded = get(port, "/readyz?verbose&exclude=linearizable_read");
        assert_eq!(excluded.status, 200);
        assert!(!excluded.body.contains("linearizable_read"), "{excluded:?}");

        let learner = get(port, "/readyz/non_learner");
        assert_eq!((learner.status, learner.body.as_str()), (200, "ok\n"));
        assert_eq!(get(port, "/readyz/no_such_check").status, 404);

        let live = get(port, "/livez");
        assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));
        assert_eq!(get(port, "/livez/serializable_read").status, 200);

        let version = get(port, "/version");
        assert_eq!(version.status, 200, "{version:?}");
        let v = json(&version);
        assert_eq!(v["etcdserver"], "3.6.5");
        assert_eq!(v["etcdcluster"], "3.6.0");
        assert!(v["witan"].is_string(), "{v}");
    }

    // No quorum: the survivor loses its leader and /health goes 503, while
    // the local (serializable) checks stay green.
    let survivor = cluster.leader();
    let port = cluster.member(survivor).client_port;
    for i in 0..cluster.len() {
        if i != survivor {
            cluster.kill(i);
        }
    }
    let unhealthy = poll_until(Duration::from_secs(30), "/health to fail", || {
        let reply = get_with(port, "/health", &[])?;
        if reply.status == 503 {
            Ok(reply)
        } else {
            Err(format!("{reply:?}"))
        }
    });
    assert_eq!(json(&unhealthy)["health"], "false", "{unhealthy:?}");
    let live = get(port, "/livez");
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));
    let serializable = get(port, "/health?serializable=true");
    assert_eq!(serializable.status, 200, "{serializable:?}");
    assert_eq!(serializable.body, r#"{"health":"true","reason":""}"#);
    let ready = get(port, "/readyz/linearizable_read");
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready.body.starts_with("[-]linearizable_read failed: "),
        "{ready:?}"
    );
}

//! The `witan` daemon as an operator runs it: configured entirely through
//! `WITAN_*` environment variables, stopped with SIGTERM, restarted with its
//! identity and data from the data dir.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use witan_tests::{CtlOutput, free_ports, poll_until, witan_bin};

/// Kills the daemon if a test fails before stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `witan` with no flags at all, only environment variables.
fn start_from_env(data_dir: &std::path::Path, client: u16, peer: u16) -> Daemon {
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(witan_bin())
        .env_clear()
        .env("WITAN_NAME", "from-env")
        .env("WITAN_DATA_DIR", data_dir)
        .env("WITAN_LISTEN_CLIENT_URLS", &client_url)
        .env("WITAN_ADVERTISE_CLIENT_URLS", &client_url)
        .env("WITAN_LISTEN_PEER_URLS", &peer_url)
        .env("WITAN_INITIAL_ADVERTISE_PEER_URLS", &peer_url)
        .env("WITAN_INITIAL_CLUSTER", format!("from-env={peer_url}"))
        .env("WITAN_INITIAL_CLUSTER_TOKEN", "env-test")
        .env("WITAN_HEARTBEAT_INTERVAL", "50")
        .env("WITAN_ELECTION_TIMEOUT", "500")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning witan");
    Daemon(child)
}

fn ctl(endpoint: &str, args: &[&str]) -> String {
    let out = CtlOutput::run(endpoint, args, None);
    assert!(out.success(), "etcdctl {args:?} failed: {}", out.stderr);
    out.stdout
}

fn wait_serving(endpoint: &str) {
    poll_until(Duration::from_secs(30), "the member to serve", || {
        let out = CtlOutput::run(endpoint, &["endpoint", "health"], None);
        if out.success() {
            Ok(())
        } else {
            Err(out.stderr)
        }
    });
}

fn member_id(endpoint: &str) -> String {
    let json = ctl(endpoint, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&json).expect("status json");
    status[0]["Status"]["header"]["member_id"].to_string()
}

#[test]
fn configured_by_environment_stops_on_sigterm_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("member-data");
    let ports = free_ports(2);
    let endpoint = format!("127.0.0.1:{}", ports[0]);

    let mut daemon = start_from_env(&data_dir, ports[0], ports[1]);
    wait_serving(&endpoint);
    let list = ctl(&endpoint, &["member", "list"]);
    assert!(
        list.contains(", from-env, "),
        "named from WITAN_NAME: {list}"
    );
    ctl(&endpoint, &["put", "kept", "across-restart"]);
    let id = member_id(&endpoint);

    // SIGTERM: a clean stop, exit status 0, within a bounded time.
    let pid = daemon.0.id().to_string();
    let signalled = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(signalled.is_ok_and(|s| s.success()), "sending SIGTERM");
    let status = poll_until(
        Duration::from_secs(15),
        "witan to exit on SIGTERM",
        || match daemon.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".to_string()),
            Err(e) => Err(e.to_string()),
        },
    );
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(data_dir.join("member").join("witan.redb").is_file());

    // Same data dir: same identity, same data.
    let _restarted = start_from_env(&data_dir, ports[0], ports[1]);
    wait_serving(&endpoint);
    assert_eq!(member_id(&endpoint), id, "the member id survives a restart");
    assert_eq!(
        ctl(&endpoint, &["get", "kept", "--print-value-only"]).trim(),
        "across-restart"
    );
}

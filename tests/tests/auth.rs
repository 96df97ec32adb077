//! Authentication and key-range permissions with real processes: Debian's
//! etcdctl 3.4 (`--user NAME:PASSWORD`), the etcd-client crate and curl
//! against 3-member clusters.

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use serde_json::Value;
use witan_tests::pki::{Ca, CertFiles, LOOPBACK, Leaf};
use witan_tests::{Cluster, CtlOutput, Security, poll_until, restore_into};

const ROOT: &str = "root:rootpw";
const READER: &str = "reader:rpw";
const WRITER: &str = "writer:wpw";
const BOTH: &str = "both:bpw";
const DENIED: &str = "etcdserver: permission denied";
/// bcrypt at its cheapest: every etcdctl call authenticates once.
const FAST_BCRYPT: [&str; 2] = ["--bcrypt-cost", "4"];

/// etcdctl as `user` against `endpoints`.
fn run_as(c: &Cluster, endpoints: &str, user: &str, args: &[&str]) -> CtlOutput {
    let mut full = vec!["--user", user];
    full.extend_from_slice(args);
    c.run(endpoints, &full, None)
}

/// etcdctl as `user` against `endpoints`; must succeed; stdout.
fn ok_as(c: &Cluster, endpoints: &str, user: &str, args: &[&str]) -> String {
    c.expect_ok(run_as(c, endpoints, user, args))
}

/// etcdctl as `user` against `endpoints`; must fail with `error`.
fn refused_as(c: &Cluster, endpoints: &str, user: &str, args: &[&str], error: &str) {
    let out = c.expect_err(run_as(c, endpoints, user, args));
    assert!(out.error_line().contains(error), "wanted {error:?}:\n{out}");
}

/// The etcdctl commands docs/auth.md shows: root, three roles (read,
/// write, readwrite on a key, a prefix and a range), three users, auth on.
fn set_up_auth(c: &Cluster, endpoints: &str) {
    let ctl = |args: &[&str]| c.expect_ok(c.run(endpoints, args, None));
    // The data the users will read, written while auth is still off.
    for key in ["rk", "rp/x", "wk", "bk", "bp/x", "rb", "secret"] {
        ctl(&["put", key, "v0"]);
    }
    let out = c.expect_err(c.run(endpoints, &["auth", "enable"], None));
    assert!(
        out.error_line()
            .contains("etcdserver: root user does not exist"),
        "{out}"
    );
    assert!(ctl(&["user", "add", ROOT]).contains("User root created"));
    ctl(&["role", "add", "root"]);
    ctl(&["user", "grant-role", "root", "root"]);
    for role in ["reader", "writer", "both"] {
        assert!(ctl(&["role", "add", role]).contains(&format!("Role {role} created")));
    }
    ctl(&["role", "grant-permission", "reader", "read", "rk"]);
    ctl(&[
        "role",
        "grant-permission",
        "reader",
        "read",
        "rp/",
        "--prefix",
    ]);
    ctl(&["role", "grant-permission", "writer", "write", "wk"]);
    ctl(&[
        "role",
        "grant-permission",
        "writer",
        "write",
        "wp/",
        "--prefix",
    ]);
    ctl(&["role", "grant-permission", "both", "readwrite", "bk"]);
    ctl(&[
        "role",
        "grant-permission",
        "both",
        "readwrite",
        "bp/",
        "--prefix",
    ]);
    // A range: [ra, rc).
    ctl(&["role", "grant-permission", "both", "readwrite", "ra", "rc"]);
    for user in [READER, WRITER, BOTH] {
        let name = user.split(':').next().unwrap_or_default();
        ctl(&["user", "add", user]);
        ctl(&["user", "grant-role", name, name]);
    }
    assert!(ctl(&["auth", "enable"]).contains("Authentication Enabled"));
}

/// Every user × (key inside, prefix inside, key outside) × (read, write)
/// through member `i`.
fn check_matrix(c: &Cluster, i: usize) {
    let ep = c.endpoint(i);
    let get = |user: &str, key: &str| ok_as(c, &ep, user, &["get", key, "--print-value-only"]);
    let put = |user: &str, key: &str| {
        assert_eq!(
            ok_as(c, &ep, user, &["put", key, &format!("by-{i}")]),
            "OK\n"
        )
    };
    // read: the key and the prefix, nothing else, and no writes.
    assert!(!get(READER, "rk").is_empty());
    assert!(!get(READER, "rp/x").is_empty());
    assert!(!ok_as(c, &ep, READER, &["get", "rp/", "--prefix"]).is_empty());
    refused_as(c, &ep, READER, &["get", "secret"], DENIED);
    refused_as(c, &ep, READER, &["put", "rk", "x"], DENIED);
    refused_as(c, &ep, READER, &["put", "rp/x", "x"], DENIED);
    refused_as(c, &ep, READER, &["put", "secret", "x"], DENIED);
    // write: the key and the prefix, nothing else, and no reads.
    put(WRITER, "wk");
    put(WRITER, "wp/new");
    refused_as(c, &ep, WRITER, &["put", "secret", "x"], DENIED);
    refused_as(c, &ep, WRITER, &["get", "wk"], DENIED);
    // readwrite: the key, the prefix and the range, nothing else.
    for key in ["bk", "bp/x", "rb"] {
        put(BOTH, key);
        assert_eq!(get(BOTH, key), format!("by-{i}\n"));
    }
    refused_as(c, &ep, BOTH, &["get", "secret"], DENIED);
    refused_as(c, &ep, BOTH, &["put", "secret", "x"], DENIED);
    refused_as(c, &ep, BOTH, &["get", "ra", "rd"], DENIED);
}

#[test]
fn the_permission_matrix_holds_on_every_member_across_a_leader_change_and_a_restart() {
    let mut c = Cluster::start_with(3, &FAST_BCRYPT);
    let all = c.endpoints();
    set_up_auth(&c, &all);

    for i in 0..3 {
        check_matrix(&c, i);
    }
    // A txn that compares outside the permission is refused whole; one
    // inside goes through.
    let txn = |compare: &str| {
        let stdin =
            format!("mod(\"{compare}\") > \"0\"\n\nput bk from-txn\nput bp/y from-txn\n\n\n");
        run_as_stdin(&c, &all, BOTH, &["txn"], &stdin)
    };
    let out = c.expect_err(txn("secret"));
    assert!(out.error_line().contains(DENIED), "{out}");
    let out = c.expect_ok(txn("bk"));
    assert!(out.starts_with("SUCCESS"), "{out}");
    // A delete over a range partly outside is refused; one inside is not.
    refused_as(&c, &all, BOTH, &["del", "bp/", "bq"], DENIED);
    assert_eq!(ok_as(&c, &all, BOTH, &["del", "bp/y"]), "1\n");
    // Wrong password, no user at all.
    refused_as(
        &c,
        &all,
        "both:wrong",
        &["get", "bk"],
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let out = c.expect_err(c.run(&all, &["get", "bk"], None));
    assert!(
        out.error_line().contains("etcdserver: user name is empty"),
        "{out}"
    );
    // Management is root's.
    refused_as(&c, &all, BOTH, &["role", "add", "mine"], DENIED);
    refused_as(&c, &all, BOTH, &["user", "list"], DENIED);
    let users = ok_as(&c, &all, ROOT, &["user", "list"]);
    assert_eq!(users, "both\nreader\nroot\nwriter\n");
    let role = ok_as(&c, &all, ROOT, &["role", "get", "both"]);
    assert!(role.contains("[ra, rc)"), "{role}");
    assert!(role.contains("[bp/, bp0) (prefix bp/)"), "{role}");
    // Snapshots are root's too.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("denied.db").display().to_string();
    refused_as(
        &c,
        &c.endpoint(0),
        BOTH,
        &["snapshot", "save", &file],
        DENIED,
    );

    // A leader change.
    let leader = c.leader();
    let target = (0..3).find(|&i| i != leader).expect("a follower");
    let target_id = c.member_id(target);
    let out = c.ctl(&["move-leader", &format!("{target_id:x}")]);
    assert!(out.contains("Leadership transferred"), "{out}");
    assert_eq!(c.leader(), target);
    for i in 0..3 {
        check_matrix(&c, i);
    }

    // Every member restarts: simple tokens are gone, users and roles stay.
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.set_health_user(Some(ROOT));
    c.wait_healthy(&[0, 1, 2], Duration::from_secs(60));
    for i in 0..3 {
        check_matrix(&c, i);
    }

    // witan's own voter change is root's: `witan voters --user`.
    let ids: Vec<String> = (0..3).map(|i| format!("{:x}", c.member_id(i))).collect();
    let one = c.endpoint(1);
    let voters = |user: Option<&str>| {
        let mut args = vec!["voters", "--endpoint", &one];
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        args.extend(ids.iter().map(String::as_str));
        witan_tests::run_witan(&args)
    };
    let (ok, _, stderr) = voters(None);
    assert!(
        !ok && stderr.contains("etcdserver: user name is empty"),
        "{stderr}"
    );
    let (ok, _, stderr) = voters(Some(BOTH));
    assert!(!ok && stderr.contains(DENIED), "{stderr}");
    let (ok, stdout, stderr) = voters(Some(ROOT));
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches(", voter, ").count(), 3, "{stdout}");

    // Status (etcdctl 3.4 has no `auth status`: the gateway's), then
    // everything open again.
    let status = auth_status(&c, 1, Some(&gateway_token(&c, 0, ROOT)));
    assert_eq!(status["enabled"], true, "{status}");
    let revision: u64 = status["authRevision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("authRevision: {status}"));
    // Three users and four roles with their grants, root's too, and enable.
    assert!(revision >= 20, "{status}");
    assert!(
        ok_as(&c, &all, ROOT, &["auth", "disable"]).contains("Authentication Disabled"),
        "auth disable"
    );
    c.set_health_user(None);
    for i in 0..3 {
        c.ctl_on(i, &["put", "secret", "open"]);
        assert_eq!(
            c.ctl_on(i, &["get", "secret", "--print-value-only"]),
            "open\n"
        );
    }
    let status = auth_status(&c, 2, None);
    assert_eq!(
        status["enabled"],
        Value::Null,
        "false is left out: {status}"
    );
    assert!(status["authRevision"].as_str().is_some(), "{status}");
}

/// `/v3/auth/status` on member `i`.
fn auth_status(c: &Cluster, i: usize, token: Option<&str>) -> Value {
    let url = format!("{}/v3/auth/status", c.member(i).client_url());
    curl(&url, token, "{}")
}

/// etcdctl as `user` with `stdin` (not checked).
fn run_as_stdin(c: &Cluster, endpoints: &str, user: &str, args: &[&str], stdin: &str) -> CtlOutput {
    let mut full = vec!["--user", user];
    full.extend_from_slice(args);
    c.run(endpoints, &full, Some(stdin))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect_as(c: &Cluster, i: usize, user: &str) -> Client {
    let (name, password) = user.split_once(':').expect("name:password");
    Client::connect(
        [c.member(i).client_url()],
        Some(ConnectOptions::new().with_user(name, password)),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting as {name}: {e}"))
}

#[test]
fn watches_leases_and_maintenance_are_checked_as_etcd_checks_them() {
    let c = Cluster::start_with(3, &FAST_BCRYPT);
    let all = c.endpoints();
    set_up_auth(&c, &all);

    // Leases: whoever revokes (or reads) one needs write (read) on every
    // key attached to it; a put onto it needs write on those keys too.
    let granted = ok_as(&c, &all, BOTH, &["lease", "grant", "600"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("lease id in {granted:?}"))
        .to_string();
    let on_lease = format!("--lease={id}");
    ok_as(&c, &all, BOTH, &["put", &on_lease, "bk", "leased"]);
    ok_as(&c, &all, ROOT, &["put", &on_lease, "secret", "leased"]);
    refused_as(&c, &all, BOTH, &["lease", "timetolive", &id], DENIED);
    refused_as(&c, &all, BOTH, &["lease", "revoke", &id], DENIED);
    refused_as(&c, &all, BOTH, &["put", &on_lease, "bp/z", "v"], DENIED);
    let revoked = ok_as(&c, &all, ROOT, &["lease", "revoke", &id]);
    assert!(revoked.contains("revoked"), "{revoked}");

    // Maintenance: defrag and hashes are root's; status and alarms are not.
    refused_as(&c, &c.endpoint(1), BOTH, &["defrag"], DENIED);
    refused_as(&c, &c.endpoint(1), BOTH, &["endpoint", "hashkv"], DENIED);
    ok_as(&c, &c.endpoint(1), ROOT, &["endpoint", "hashkv"]);
    ok_as(&c, &c.endpoint(1), BOTH, &["endpoint", "status"]);
    ok_as(&c, &c.endpoint(1), BOTH, &["alarm", "list"]);

    runtime().block_on(async {
        for i in 0..3 {
            let mut client = connect_as(&c, i, BOTH).await;
            let mut refused = client.watch("secret", None).await.expect("watch");
            let resp = refused
                .message()
                .await
                .expect("watch stream")
                .expect("a response");
            assert!(resp.created() && resp.canceled(), "{resp:?}");
            assert_eq!(
                resp.cancel_reason(),
                "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
            );

            let mut inside = client.watch("bk", None).await.expect("watch");
            let created = inside
                .message()
                .await
                .expect("watch stream")
                .expect("created");
            assert!(created.created() && !created.canceled(), "{created:?}");
            let value = format!("watched-{i}");
            client.put("bk", value.as_str(), None).await.expect("put");
            let event = inside
                .message()
                .await
                .expect("watch stream")
                .expect("event");
            let kv = event.events()[0].kv().expect("kv");
            assert_eq!(kv.value(), value.as_bytes());
        }
    });
}

/// curl POST of `body` to `url` with an optional `Authorization`; the JSON
/// answer.
fn curl(url: &str, token: Option<&str>, body: &str) -> Value {
    let header = token.map(|t| format!("Authorization: {t}"));
    let mut extra = vec!["-X", "POST", "-d", body];
    if let Some(header) = &header {
        extra.extend(["-H", header.as_str()]);
    }
    let reply = witan_tests::curl(url, &extra).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("curl {url}: {e}\n{}", reply.body))
}

fn gateway_token(c: &Cluster, i: usize, user: &str) -> String {
    let (name, password) = user.split_once(':').expect("name:password");
    let url = format!("{}/v3/auth/authenticate", c.member(i).client_url());
    let body = format!("{{\"name\":\"{name}\",\"password\":\"{password}\"}}");
    let answer = curl(&url, None, &body);
    answer["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {answer}"))
        .to_string()
}

/// `bk` as base64, for the gateway's JSON.
const BK_B64: &str = "Yms=";

#[test]
fn expired_and_garbage_tokens_are_invalid_and_the_gateway_takes_authorization() {
    let ttl = Duration::from_secs(2);
    let mut args = FAST_BCRYPT.to_vec();
    args.extend(["--auth-token-ttl", "2"]);
    let c = Cluster::start_with(3, &args);
    set_up_auth(&c, &c.endpoints());

    // The gateway: authenticate, then the token in Authorization, on any
    // member (the simple token went through Raft).
    let token = gateway_token(&c, 0, BOTH);
    for i in 0..3 {
        let url = format!("{}/v3/kv/range", c.member(i).client_url());
        let answer = curl(&url, Some(&token), &format!("{{\"key\":\"{BK_B64}\"}}"));
        assert_eq!(answer["kvs"][0]["key"], BK_B64, "{answer}");
        let denied = curl(&url, Some(&token), "{\"key\":\"c2VjcmV0\"}");
        assert_eq!(denied["code"], 7, "{denied}");
        assert_eq!(denied["message"], DENIED, "{denied}");
        let garbage = curl(&url, Some("garbage"), &format!("{{\"key\":\"{BK_B64}\"}}"));
        assert_eq!(garbage["code"], 16, "{garbage}");
        assert_eq!(garbage["message"], "etcdserver: invalid auth token");
    }
    let root = gateway_token(&c, 1, ROOT);
    let status = auth_status(&c, 2, Some(&root));
    assert_eq!(status["enabled"], true, "{status}");
    let refused = auth_status(&c, 2, Some(&token));
    assert_eq!(refused["message"], DENIED, "{refused}");
    let url = format!("{}/v3/auth/user/list", c.member(2).client_url());
    let users = curl(&url, Some(&root), "{}");
    assert_eq!(
        users["users"],
        serde_json::json!(["both", "reader", "root", "writer"])
    );

    // An unused simple token dies after --auth-token-ttl.
    runtime().block_on(async {
        let mut client = connect_as(&c, 1, BOTH).await;
        client.get("bk", None).await.expect("a fresh token works");
        let last_use = Instant::now();
        // Waiting on the clock is the point here: the token must go unused.
        poll_until(ttl * 3, "the token's ttl to pass", || {
            if last_use.elapsed() > ttl + Duration::from_millis(500) {
                Ok(())
            } else {
                Err(format!("{:?} since last use", last_use.elapsed()))
            }
        });
        let err = client.get("bk", None).await.expect_err("an expired token");
        assert!(
            err.to_string().contains("etcdserver: invalid auth token"),
            "{err}"
        );
    });
}

#[test]
fn jwt_tokens_signed_by_one_member_are_accepted_by_every_member() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = rcgen::KeyPair::generate().expect("an ES256 key");
    let private = dir.path().join("jwt.key");
    let public = dir.path().join("jwt.pub");
    std::fs::write(&private, key.serialize_pem()).expect("writing the key");
    std::fs::write(&public, key.public_key_pem()).expect("writing the key");
    let token_flag = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=10m",
        public.display(),
        private.display()
    );
    let mut args = FAST_BCRYPT.to_vec();
    args.extend(["--auth-token", &token_flag]);
    let c = Cluster::start_with(3, &args);
    set_up_auth(&c, &c.endpoints());

    let token = gateway_token(&c, 0, BOTH);
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    for i in 0..3 {
        let url = format!("{}/v3/kv/range", c.member(i).client_url());
        let answer = curl(&url, Some(&token), &format!("{{\"key\":\"{BK_B64}\"}}"));
        assert_eq!(answer["kvs"][0]["key"], BK_B64, "{answer}");
    }
    // etcdctl authenticates with a JWT the same way.
    for i in 0..3 {
        check_matrix(&c, i);
    }
    // A change to auth makes older JWTs stale, as etcd's revision claim.
    ok_as(&c, &c.endpoints(), ROOT, &["role", "add", "later"]);
    let url = format!("{}/v3/kv/range", c.member(2).client_url());
    let stale = curl(&url, Some(&token), &format!("{{\"key\":\"{BK_B64}\"}}"));
    assert_eq!(
        stale["message"], "etcdserver: revision of auth store is old",
        "{stale}"
    );
}

#[test]
fn auth_survives_a_raft_snapshot_and_a_backup_restore() {
    let mut args = FAST_BCRYPT.to_vec();
    args.extend(["--snapshot-count", "10"]);
    let mut c = Cluster::start_with(3, &args);
    // Member 2 misses every auth change: it can only learn them from the
    // leader's snapshot.
    c.kill(2);
    let up = format!("{},{}", c.endpoint(0), c.endpoint(1));
    set_up_auth(&c, &up);
    for n in 0..30 {
        ok_as(&c, &up, ROOT, &["put", &format!("filler/{n}"), "x"]);
    }
    c.spawn(2);
    c.set_health_user(Some(ROOT));
    c.wait_healthy(&[2], Duration::from_secs(60));
    let log = std::fs::read_to_string(c.member(2).log_path()).expect("member log");
    assert!(
        log.contains("installed snapshot"),
        "{}",
        c.member(2).log_tail(40)
    );
    check_matrix(&c, 2);

    // A backup taken with etcdctl, restored into a new cluster.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backup.db");
    let saved = ok_as(
        &c,
        &c.endpoint(0),
        ROOT,
        &["snapshot", "save", &file.display().to_string()],
    );
    assert!(saved.contains("Snapshot saved"), "{saved}");
    let restored =
        Cluster::start_prepared_as(3, &FAST_BCRYPT, Some(ROOT), |m| restore_into(&file, m));
    for i in 0..3 {
        check_matrix(&restored, i);
    }
    let status = auth_status(&restored, 0, Some(&gateway_token(&restored, 1, ROOT)));
    assert_eq!(status["enabled"], true, "{status}");
}

#[test]
fn the_gateway_manages_auth_with_etcds_json() {
    let c = Cluster::start_with(3, &FAST_BCRYPT);
    let call = |i: usize, path: &str, token: Option<&str>, body: &str| {
        curl(
            &format!("{}/v3/auth/{path}", c.member(i).client_url()),
            token,
            body,
        )
    };
    for body in [
        r#"{"name":"root","password":"rootpw"}"#,
        r#"{"name":"app","password":"apppw"}"#,
    ] {
        let added = call(0, "user/add", None, body);
        assert!(added["header"]["revision"].is_string(), "{added}");
    }
    call(1, "role/add", None, r#"{"name":"root"}"#);
    call(1, "role/add", None, r#"{"name":"app"}"#);
    // etcd's JSON: permType by name, bytes in base64 ("app/", "app0").
    call(
        2,
        "role/grant",
        None,
        r#"{"name":"app","perm":{"permType":"READWRITE","key":"YXBwLw==","range_end":"YXBwMA=="}}"#,
    );
    call(2, "user/grant", None, r#"{"user":"root","role":"root"}"#);
    call(2, "user/grant", None, r#"{"user":"app","role":"app"}"#);
    let enabled = call(0, "enable", None, "{}");
    assert!(enabled.get("code").is_none(), "{enabled}");

    let root = gateway_token(&c, 1, ROOT);
    let app = gateway_token(&c, 2, "app:apppw");
    let roles = call(0, "role/list", Some(&root), "{}");
    assert_eq!(
        roles["roles"],
        serde_json::json!(["app", "root"]),
        "{roles}"
    );
    let perm = call(1, "role/get", Some(&app), r#"{"role":"app"}"#);
    assert_eq!(perm["perm"][0]["permType"], "READWRITE", "{perm}");
    assert_eq!(perm["perm"][0]["key"], "YXBwLw==", "{perm}");
    // A user reads itself and its roles, nobody else's.
    let me = call(2, "user/get", Some(&app), r#"{"name":"app"}"#);
    assert_eq!(me["roles"], serde_json::json!(["app"]), "{me}");
    let other = call(2, "user/get", Some(&app), r#"{"name":"root"}"#);
    assert_eq!(other["message"], DENIED, "{other}");
    let not_found = call(0, "user/get", Some(&root), r#"{"name":"ghost"}"#);
    assert_eq!(not_found["message"], "etcdserver: user name not found");
    assert_eq!(not_found["code"], 9, "FailedPrecondition: {not_found}");
    let exists = call(0, "role/add", Some(&root), r#"{"name":"app"}"#);
    assert_eq!(exists["message"], "etcdserver: role name already exists");

    // A new password kills the old tokens; the new one works.
    call(
        1,
        "user/changepw",
        Some(&root),
        r#"{"name":"app","password":"newpw"}"#,
    );
    let url = format!("{}/v3/kv/put", c.member(0).client_url());
    let put = r#"{"key":"YXBwL2s=","value":"dg=="}"#;
    let stale = curl(&url, Some(&app), put);
    assert_eq!(
        stale["message"], "etcdserver: invalid auth token",
        "{stale}"
    );
    let fresh = gateway_token(&c, 0, "app:newpw");
    let done = curl(&url, Some(&fresh), put);
    assert!(done["header"]["revision"].is_string(), "{done}");

    // Revoking the role takes the permission away at once.
    call(
        2,
        "user/revoke",
        Some(&root),
        r#"{"name":"app","role":"app"}"#,
    );
    let fresh = gateway_token(&c, 0, "app:newpw");
    let denied = curl(&url, Some(&fresh), put);
    assert_eq!(denied["message"], DENIED, "{denied}");
    let not_granted = call(
        2,
        "user/revoke",
        Some(&root),
        r#"{"name":"app","role":"app"}"#,
    );
    assert_eq!(
        not_granted["message"],
        "etcdserver: role is not granted to the user"
    );
    // root stays while auth is on.
    let refused = call(1, "user/delete", Some(&root), r#"{"name":"root"}"#);
    assert_eq!(refused["message"], "etcdserver: invalid auth management");
    call(1, "user/delete", Some(&root), r#"{"name":"app"}"#);
    call(1, "role/delete", Some(&root), r#"{"role":"app"}"#);
    let users = call(0, "user/list", Some(&root), "{}");
    assert_eq!(users["users"], serde_json::json!(["root"]), "{users}");
    call(2, "disable", Some(&root), "{}");
    assert_eq!(auth_status(&c, 0, None)["enabled"], Value::Null);
}

/// A client certificate for `common_name` from `ca`.
fn client_cert(ca: &Ca, dir: &std::path::Path, common_name: &str, serial: u64) -> CertFiles {
    ca.issue(
        dir,
        common_name,
        &Leaf {
            common_name,
            sans: &[],
            serial,
        },
    )
}

#[test]
fn a_client_certificates_common_name_is_the_user_when_no_token_is_given() {
    let dir = tempfile::tempdir().expect("pki dir");
    let ca = Ca::new(dir.path(), "ca");
    let ca_file = ca.file().display().to_string();
    let member_flags = (0..3)
        .map(|i| {
            let name = format!("node-{}", i + 1);
            let leaf = Leaf {
                common_name: &name,
                sans: LOOPBACK,
                serial: 0x1000 + i as u64,
            };
            let mut flags = ca.issue(dir.path(), &name, &leaf).flags("");
            flags.extend([
                "--trusted-ca-file".to_string(),
                ca_file.clone(),
                "--client-cert-auth".to_string(),
            ]);
            flags
        })
        .collect();
    // The cluster's own etcdctl runs (health checks included) present CN
    // root: once auth is on they act as root without a password.
    let root_cert = client_cert(&ca, dir.path(), "root", 0x100);
    let mut ctl_flags = vec!["--cacert".to_string(), ca_file.clone()];
    ctl_flags.extend(root_cert.ctl_flags());
    let security = Security {
        client_https: true,
        peer_https: false,
        member_flags,
        ctl_flags,
        wait_for: None,
    };
    let c = Cluster::start_secure(3, &FAST_BCRYPT, security, |_| {});
    c.ctl(&["user", "add", ROOT]);
    c.ctl(&["role", "add", "root"]);
    c.ctl(&["user", "grant-role", "root", "root"]);
    c.ctl(&["user", "add", "alice", "--no-password"]);
    c.ctl(&["role", "add", "alice"]);
    c.ctl(&[
        "role",
        "grant-permission",
        "alice",
        "readwrite",
        "a/",
        "--prefix",
    ]);
    c.ctl(&["user", "grant-role", "alice", "alice"]);
    c.ctl(&["auth", "enable"]);

    // As alice (her certificate, no --user), on every member.
    let alice = client_cert(&ca, dir.path(), "alice", 0x101);
    let mallory = client_cert(&ca, dir.path(), "mallory", 0x102);
    let as_cert = |cert: &CertFiles, i: usize, args: &[&str]| {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.extend(["--cacert".to_string(), ca_file.clone()]);
        full.extend(cert.ctl_flags());
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        CtlOutput::run(&c.endpoint(i), &full, None)
    };
    for i in 0..3 {
        let put = c.expect_ok(as_cert(&alice, i, &["put", "a/x", "by-alice"]));
        assert_eq!(put, "OK\n");
        let got = c.expect_ok(as_cert(&alice, i, &["get", "a/x", "--print-value-only"]));
        assert_eq!(got, "by-alice\n");
        let out = c.expect_err(as_cert(&alice, i, &["put", "b", "x"]));
        assert!(out.error_line().contains(DENIED), "{out}");
        let out = c.expect_err(as_cert(&alice, i, &["user", "list"]));
        assert!(out.error_line().contains(DENIED), "{out}");
        // A name the store does not know gets nothing.
        let out = c.expect_err(as_cert(&mallory, i, &["get", "a/x"]));
        assert!(out.error_line().contains(DENIED), "{out}");
    }
    // CN root is root; a token wins over the certificate.
    assert_eq!(c.ctl(&["user", "list"]), "alice\nroot\n");
    let out = c.expect_err(c.run(
        &c.endpoints(),
        &["--user", "root:wrong", "get", "a/x"],
        None,
    ));
    assert!(
        out.error_line()
            .contains("etcdserver: authentication failed, invalid user ID or password"),
        "{out}"
    );
}

//! The real `etcdctl` (Debian's 3.4) against a real 3-member witan cluster,
//! asserting etcdctl's exact output. Each test starts its own cluster.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use witan_tests::{Cluster, json, poll_until, revision_of};

/// `key\nvalue\n` pairs, as `etcdctl get` prints them.
fn kvs(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}\n{v}\n")).collect()
}

/// The id out of `lease <id> granted with TTL(<n>s)`.
fn granted_lease(out: &str, ttl: u32) -> String {
    let id = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected lease grant output {out:?}"))
        .to_string();
    assert_eq!(out, format!("lease {id} granted with TTL({ttl}s)\n"));
    assert_eq!(id.len(), 16, "lease ids print as 16 hex digits: {id}");
    id
}

#[test]
fn get_and_its_range_options() {
    let c = Cluster::start(3);

    assert_eq!(c.ctl(&["put", "foo", "v1"]), "OK\n");
    assert_eq!(c.ctl(&["get", "foo"]), kvs(&[("foo", "v1")]));
    let rev1 = revision_of(&c.ctl(&["get", "foo", "-w", "json"]));
    assert_eq!(c.ctl(&["put", "foo", "v2"]), "OK\n");
    assert_eq!(c.ctl(&["get", "foo"]), kvs(&[("foo", "v2")]));
    assert_eq!(c.ctl(&["get", "foo", "--print-value-only"]), "v2\n");
    assert_eq!(c.ctl(&["get", "nope"]), "");

    // --rev: the older value at the older revision.
    let r1 = rev1.to_string();
    assert_eq!(c.ctl(&["get", "foo", "--rev", &r1]), kvs(&[("foo", "v1")]));
    let at_rev1 = json(&c.ctl(&["get", "foo", "--rev", &r1, "-w", "json"]));
    assert_eq!(at_rev1["kvs"][0]["mod_revision"].as_i64(), Some(rev1));
    assert_eq!(at_rev1["kvs"][0]["version"].as_i64(), Some(1));

    // Data for the sort orders, chosen so that every order differs:
    //   s/a = "3": version 3, created 2nd, modified 5th
    //   s/b = "2": version 1, created 3rd, modified 3rd
    //   s/c = "1": version 2, created 1st, modified 6th
    for (k, v) in [
        ("s/c", "9"),
        ("s/a", "8"),
        ("s/b", "2"),
        ("s/a", "7"),
        ("s/a", "3"),
        ("s/c", "1"),
    ] {
        assert_eq!(c.ctl(&["put", k, v]), "OK\n");
    }
    let (a, b, cc) = (("s/a", "3"), ("s/b", "2"), ("s/c", "1"));

    assert_eq!(c.ctl(&["get", "--prefix", "s/"]), kvs(&[a, b, cc]));
    assert_eq!(
        c.ctl(&["get", "--prefix", "s/", "--print-value-only"]),
        "3\n2\n1\n"
    );
    // etcdctl 3.4 prints the key and an empty value line with --keys-only.
    assert_eq!(
        c.ctl(&["get", "--prefix", "s/", "--keys-only"]),
        "s/a\n\ns/b\n\ns/c\n\n"
    );
    // A range [s/a, s/c).
    assert_eq!(c.ctl(&["get", "s/a", "s/c"]), kvs(&[a, b]));
    // --from-key: s/b and everything after it ("foo" sorts before "s/").
    assert_eq!(c.ctl(&["get", "--from-key", "s/b"]), kvs(&[b, cc]));
    assert_eq!(
        c.ctl(&["get", "--from-key", "a", "--keys-only"]),
        "foo\n\ns/a\n\ns/b\n\ns/c\n\n"
    );

    // --limit, and `more`/`count` in json.
    assert_eq!(
        c.ctl(&["get", "--prefix", "s/", "--limit", "2"]),
        kvs(&[a, b])
    );
    let limited = json(&c.ctl(&["get", "--prefix", "s/", "--limit", "2", "-w", "json"]));
    assert_eq!(limited["kvs"].as_array().map(Vec::len), Some(2));
    assert_eq!(limited["more"], Value::Bool(true));
    assert_eq!(limited["count"].as_i64(), Some(3));
    let all = json(&c.ctl(&["get", "--prefix", "s/", "--limit", "3", "-w", "json"]));
    assert_eq!(all["kvs"].as_array().map(Vec::len), Some(3));
    assert!(!all["more"].as_bool().unwrap_or(false), "{all}");
    assert_eq!(all["count"].as_i64(), Some(3));

    // --sort-by with both orders.
    let cases = [
        ("KEY", [a, b, cc]),
        ("VERSION", [b, cc, a]),
        ("CREATE", [cc, a, b]),
        ("MODIFY", [b, a, cc]),
        ("VALUE", [cc, b, a]),
    ];
    for (by, ascending) in cases {
        let asc = c.ctl(&[
            "get",
            "--prefix",
            "s/",
            "--sort-by",
            by,
            "--order",
            "ASCEND",
        ]);
        assert_eq!(asc, kvs(&ascending), "--sort-by {by} --order ASCEND");
        let mut descending = ascending;
        descending.reverse();
        let desc = c.ctl(&[
            "get",
            "--prefix",
            "s/",
            "--sort-by",
            by,
            "--order",
            "DESCEND",
        ]);
        assert_eq!(desc, kvs(&descending), "--sort-by {by} --order DESCEND");
    }
    // Sorting and limiting together: the two newest modifications.
    assert_eq!(
        c.ctl(&[
            "get",
            "--prefix",
            "s/",
            "--sort-by",
            "MODIFY",
            "--order",
            "DESCEND",
            "--limit",
            "2"
        ]),
        kvs(&[cc, a])
    );
}

#[test]
fn put_flags_and_delete() {
    let c = Cluster::start(3);

    assert_eq!(c.ctl(&["put", "p", "v1"]), "OK\n");
    assert_eq!(c.ctl(&["put", "p", "v2", "--prev-kv"]), "OK\np\nv1\n");
    // A create has no previous value to show.
    assert_eq!(c.ctl(&["put", "fresh", "x", "--prev-kv"]), "OK\n");

    // --ignore-value keeps the value (and bumps the version).
    assert_eq!(c.ctl(&["put", "p", "--ignore-value"]), "OK\n");
    assert_eq!(c.ctl(&["get", "p"]), kvs(&[("p", "v2")]));
    let p = json(&c.ctl(&["get", "p", "-w", "json"]));
    assert_eq!(p["kvs"][0]["version"].as_i64(), Some(3));
    let err = c.ctl_err(&["put", "missing", "--ignore-value"]);
    assert_eq!(
        err.error_line(),
        "Error: etcdserver: key not found",
        "{err}"
    );
    assert_eq!(c.ctl(&["get", "missing"]), "");

    // --lease attaches the key to the lease.
    let lease = granted_lease(&c.ctl(&["lease", "grant", "100"]), 100);
    assert_eq!(c.ctl(&["put", "lk", "lv", "--lease", &lease]), "OK\n");
    let lk = json(&c.ctl(&["get", "lk", "-w", "json"]));
    let lease_num = u64::from_str_radix(&lease, 16).expect("hex lease id");
    assert_eq!(lk["kvs"][0]["lease"].as_u64(), Some(lease_num));
    // --ignore-value with --lease re-attaches an existing key.
    assert_eq!(
        c.ctl(&["put", "p", "--ignore-value", "--lease", &lease]),
        "OK\n"
    );
    let p = json(&c.ctl(&["get", "p", "-w", "json"]));
    assert_eq!(p["kvs"][0]["lease"].as_u64(), Some(lease_num));
    let err = c.ctl_err(&["put", "lk", "x", "--lease", "1234abcd"]);
    assert_eq!(
        err.error_line(),
        "Error: etcdserver: requested lease not found",
        "{err}"
    );

    // del: count, --prev-kv, --prefix, ranges.
    for k in ["d/1", "d/2", "d/3", "d/4", "e"] {
        assert_eq!(c.ctl(&["put", k, &format!("val-{k}")]), "OK\n");
    }
    assert_eq!(c.ctl(&["del", "d/1", "--prev-kv"]), "1\nd/1\nval-d/1\n");
    assert_eq!(c.ctl(&["del", "d/1"]), "0\n");
    assert_eq!(c.ctl(&["del", "d/2", "d/4"]), "2\n");
    assert_eq!(
        c.ctl(&["del", "--prefix", "d/", "--prev-kv"]),
        "1\nd/4\nval-d/4\n"
    );
    assert_eq!(c.ctl(&["get", "--prefix", "d/"]), "");
    assert_eq!(c.ctl(&["get", "e"]), kvs(&[("e", "val-e")]));
    assert_eq!(c.ctl(&["put", "d/5", "x"]), "OK\n");
    assert_eq!(c.ctl(&["del", "--prefix", "d/"]), "1\n");
    assert_eq!(c.ctl(&["del", "--from-key", "f"]), "3\n"); // fresh, lk, p
    assert_eq!(c.ctl(&["get", "--from-key", ""]), kvs(&[("e", "val-e")]));
}

#[test]
fn txn_from_stdin() {
    let c = Cluster::start(3);
    assert_eq!(c.ctl(&["put", "t/k", "v1"]), "OK\n");

    // value(): success branch, with a put and a get.
    let out = c.ctl_stdin(
        &["txn"],
        "value(\"t/k\") = \"v1\"\n\nput t/k v2\nget t/k\n\nput t/k vfail\n\n",
    );
    assert_eq!(out, "SUCCESS\n\nOK\n\nt/k\nv2\n");

    // The same compare now fails: failure branch with get, del and put.
    assert_eq!(c.ctl(&["put", "t/gone", "g"]), "OK\n");
    let out = c.ctl_stdin(
        &["txn"],
        "value(\"t/k\") = \"v1\"\n\nput t/k never\n\nget t/k\ndel t/gone\nput t/other x\n\n",
    );
    assert_eq!(out, "FAILURE\n\nt/k\nv2\n\n1\n\nOK\n");
    assert_eq!(c.ctl(&["get", "t/k"]), kvs(&[("t/k", "v2")]));
    assert_eq!(c.ctl(&["get", "t/gone"]), "");
    assert_eq!(c.ctl(&["get", "t/other"]), kvs(&[("t/other", "x")]));

    let k = json(&c.ctl(&["get", "t/k", "-w", "json"]));
    let modr = k["kvs"][0]["mod_revision"].as_i64().expect("mod_revision");
    let create = k["kvs"][0]["create_revision"]
        .as_i64()
        .expect("create_revision");
    assert_eq!(k["kvs"][0]["version"].as_i64(), Some(2));

    // mod(), version() and create(), all true: success.
    let all_true = format!(
        "mod(\"t/k\") = \"{modr}\"\nversion(\"t/k\") = \"2\"\ncreate(\"t/k\") = \"{create}\"\n\nput t/all yes\n\nput t/all no\n\n"
    );
    assert_eq!(c.ctl_stdin(&["txn"], &all_true), "SUCCESS\n\nOK\n");
    assert_eq!(c.ctl(&["get", "t/all"]), kvs(&[("t/all", "yes")]));

    // Each kind of compare, false on its own: failure.
    let falses = [
        format!("mod(\"t/k\") > \"{modr}\""),
        "version(\"t/k\") < \"2\"".to_string(),
        format!("create(\"t/k\") != \"{create}\""),
        "value(\"t/k\") > \"v3\"".to_string(),
    ];
    for compare in &falses {
        let input = format!("{compare}\n\nput t/f bad\n\nget t/k\n\n");
        assert_eq!(
            c.ctl_stdin(&["txn"], &input),
            "FAILURE\n\nt/k\nv2\n",
            "compare {compare}"
        );
    }
    assert_eq!(c.ctl(&["get", "t/f"]), "");

    // A missing key has version 0 and create revision 0.
    let missing =
        "version(\"t/new\") = \"0\"\ncreate(\"t/new\") = \"0\"\n\nput t/new created\n\n\n";
    assert_eq!(c.ctl_stdin(&["txn"], missing), "SUCCESS\n\nOK\n");
    assert_eq!(c.ctl_stdin(&["txn"], missing), "FAILURE\n");
    assert_eq!(c.ctl(&["get", "t/new"]), kvs(&[("t/new", "created")]));

    // No compares at all: success; json reports it too.
    let out = c.ctl_stdin(&["txn", "-w", "json"], "\nput t/empty e\n\n\n");
    assert_eq!(json(&out)["succeeded"], Value::Bool(true));
    assert_eq!(c.ctl(&["get", "t/empty"]), kvs(&[("t/empty", "e")]));
}

#[test]
fn watch_replays_from_a_revision_and_follows_a_prefix() {
    let c = Cluster::start(3);

    let r1 = revision_of(&c.ctl(&["put", "w/k", "1", "-w", "json"]));
    assert_eq!(c.ctl(&["put", "w/k", "2"]), "OK\n");
    assert_eq!(c.ctl(&["del", "w/k"]), "1\n");
    assert_eq!(c.ctl(&["put", "w/other", "9"]), "OK\n");

    // Replay from r1 with previous values, then a live event.
    let mut watch = c.watch(&["w/k", "--rev", &r1.to_string(), "--prev-kv"]);
    let replay = [
        "PUT", "w/k", "1", // created: no previous value
        "PUT", "w/k", "1", "w/k", "2", // previous, then current
        "DELETE", "w/k", "2", "w/k", "", // previous, then the tombstone
    ];
    assert_eq!(
        watch.wait_lines(replay.len(), Duration::from_secs(15)),
        replay
    );
    assert_eq!(c.ctl(&["put", "w/k", "3"]), "OK\n");
    // A live update carries its previous version too.
    assert_eq!(c.ctl(&["put", "w/k", "4"]), "OK\n");
    let mut expected: Vec<&str> = replay.to_vec();
    expected.extend(["PUT", "w/k", "3"]);
    expected.extend(["PUT", "w/k", "3", "w/k", "4"]);
    assert_eq!(
        watch.wait_lines(expected.len(), Duration::from_secs(15)),
        expected
    );
    watch.kill();

    // --prefix from the next revision (so nothing done after this line
    // can be missed, however late the watcher starts).
    let next = revision_of(&c.ctl(&["get", "w/", "--prefix", "-w", "json"])) + 1;
    let mut watch = c.watch(&["--prefix", "w/", "--rev", &next.to_string()]);
    assert_eq!(c.ctl(&["put", "w/a", "x"]), "OK\n");
    assert_eq!(c.ctl(&["put", "w/b", "y"]), "OK\n");
    assert_eq!(c.ctl(&["put", "not-w/a", "outside"]), "OK\n");
    assert_eq!(c.ctl(&["del", "w/a"]), "1\n");
    assert_eq!(c.ctl(&["put", "w/c", "last"]), "OK\n");
    let expected = [
        "PUT", "w/a", "x", "PUT", "w/b", "y", "DELETE", "w/a", "", "PUT", "w/c", "last",
    ];
    assert_eq!(
        watch.wait_lines(expected.len(), Duration::from_secs(15)),
        expected
    );
    watch.kill();

    // A watch started after the fact, from now: sees only what follows.
    let next = revision_of(&c.ctl(&["get", "w/", "--prefix", "-w", "json"])) + 1;
    let mut watch = c.watch(&["--prefix", "w/", "--rev", &next.to_string(), "--prev-kv"]);
    assert_eq!(c.ctl(&["put", "w/c", "again"]), "OK\n");
    assert_eq!(
        watch.wait_lines(5, Duration::from_secs(15)),
        ["PUT", "w/c", "last", "w/c", "again"]
    );
}

#[test]
fn leases() {
    let c = Cluster::start(3);

    let id = granted_lease(&c.ctl(&["lease", "grant", "100"]), 100);
    assert_eq!(c.ctl(&["put", "lk1", "a", "--lease", &id]), "OK\n");
    assert_eq!(c.ctl(&["put", "lk2", "b", "--lease", &id]), "OK\n");

    assert_eq!(
        c.ctl(&["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(100)\n")
    );

    // timetolive with and without --keys.
    let out = c.ctl(&["lease", "timetolive", &id, "--keys"]);
    let prefix = format!("lease {id} granted with TTL(100s), remaining(");
    let rest = out
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("unexpected timetolive output {out:?}"));
    let (remaining, keys) = rest
        .split_once("s), attached keys([")
        .unwrap_or_else(|| panic!("unexpected timetolive output {out:?}"));
    let remaining: u32 = remaining.parse().expect("remaining seconds");
    assert!((90..=100).contains(&remaining), "remaining {remaining}");
    let keys: BTreeSet<&str> = keys
        .strip_suffix("])\n")
        .unwrap_or_else(|| panic!("unexpected timetolive output {out:?}"))
        .split(' ')
        .collect();
    assert_eq!(keys, BTreeSet::from(["lk1", "lk2"]));
    let out = c.ctl(&["lease", "timetolive", &id]);
    assert!(
        out.starts_with(&prefix) && out.ends_with("s)\n") && !out.contains("attached"),
        "{out:?}"
    );

    // lease list shows every live lease.
    let other = granted_lease(&c.ctl(&["lease", "grant", "100"]), 100);
    let list = c.ctl(&["lease", "list"]);
    let mut lines = list.lines();
    assert_eq!(lines.next(), Some("found 2 leases"), "{list}");
    let listed: HashSet<&str> = lines.collect();
    assert_eq!(listed, HashSet::from([id.as_str(), other.as_str()]));

    // Revoking deletes the attached keys.
    assert_eq!(
        c.ctl(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(c.ctl(&["get", "--prefix", "lk"]), "");
    assert_eq!(
        c.ctl(&["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    assert_eq!(
        c.ctl(&["lease", "list"]),
        format!("found 1 leases\n{other}\n")
    );
    let err = c.ctl_err(&["lease", "revoke", &id]);
    assert_eq!(
        err.error_line(),
        "Error: failed to revoke lease (etcdserver: requested lease not found)",
        "{err}"
    );
    let err = c.ctl_err(&["lease", "keep-alive", "--once", &id]);
    assert!(
        err.stderr
            .contains("Error: etcdserver: requested lease not found"),
        "{err}"
    );

    // A short lease that nobody keeps alive expires and takes its key along.
    let short = granted_lease(&c.ctl(&["lease", "grant", "2"]), 2);
    let attached = Instant::now();
    assert_eq!(c.ctl(&["put", "ttl/k", "v", "--lease", &short]), "OK\n");
    assert_eq!(c.ctl(&["get", "ttl/k"]), kvs(&[("ttl/k", "v")]));
    poll_until(Duration::from_secs(20), "ttl/k to expire", || {
        let out = c.ctl(&["get", "ttl/k"]);
        if out.is_empty() { Ok(()) } else { Err(out) }
    });
    let lived = attached.elapsed();
    assert!(
        lived >= Duration::from_millis(1500),
        "a 2 s lease expired after {lived:?}"
    );
    assert_eq!(
        c.ctl(&["lease", "timetolive", &short]),
        format!("lease {short} already expired\n")
    );
    // The other lease is untouched.
    assert_eq!(
        c.ctl(&["lease", "list"]),
        format!("found 1 leases\n{other}\n")
    );
}

#[test]
fn compaction() {
    let c = Cluster::start(3);
    let r1 = revision_of(&c.ctl(&["put", "c/k", "1", "-w", "json"]));
    let r2 = revision_of(&c.ctl(&["put", "c/k", "2", "-w", "json"]));
    let r3 = revision_of(&c.ctl(&["put", "c/k", "3", "-w", "json"]));
    assert!(r1 < r2 && r2 < r3);
    let (r1, r2) = (r1.to_string(), r2.to_string());

    assert_eq!(c.ctl(&["get", "c/k", "--rev", &r1]), kvs(&[("c/k", "1")]));
    assert_eq!(
        c.ctl(&["compaction", &r2]),
        format!("compacted revision {r2}\n")
    );
    const COMPACTED: &str = "Error: etcdserver: mvcc: required revision has been compacted";
    let err = c.ctl_err(&["get", "c/k", "--rev", &r1]);
    assert_eq!(err.error_line(), COMPACTED, "{err}");
    // The compaction revision itself and later ones stay readable, on
    // every member.
    for i in 0..c.len() {
        let out = c.run(&c.endpoint(i), &["get", "c/k", "--rev", &r1], None);
        assert_eq!(c.expect_err(out).error_line(), COMPACTED);
        assert_eq!(
            c.ctl_on(i, &["get", "c/k", "--rev", &r2]),
            kvs(&[("c/k", "2")])
        );
        assert_eq!(c.ctl_on(i, &["get", "c/k"]), kvs(&[("c/k", "3")]));
    }
    // Compacting again below the compacted revision fails the same way.
    let err = c.ctl_err(&["compaction", &r1]);
    assert_eq!(err.error_line(), COMPACTED, "{err}");

    // A watch from a compacted revision is cancelled with the reason
    // (etcdctl 3.4 reports it on stderr and exits non-zero).
    let mut watch = c.watch(&["c/k", "--rev", &r1]);
    let status = watch.wait_exit(Duration::from_secs(15));
    assert!(!status.success());
    assert_eq!(watch.seen(), &[] as &[String]);
    assert_eq!(
        watch.stderr(),
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n\
         Error: watch is canceled by the server\n"
    );
}

#[test]
fn cluster_status_health_members_and_follower_writes() {
    let c = Cluster::start(3);
    let endpoints: Vec<String> = (0..3).map(|i| c.endpoint(i)).collect();

    // endpoint status: one entry per member, all naming the same leader,
    // which is one of them; version string present.
    let leader = c.leader();
    let status = json(&c.ctl(&["endpoint", "status", "-w", "json"]));
    let entries = status.as_array().expect("array");
    assert_eq!(entries.len(), 3);
    let mut ids = HashSet::new();
    let mut leaders = HashSet::new();
    for e in entries {
        assert!(endpoints.contains(&e["Endpoint"].as_str().unwrap_or("").to_string()));
        assert_eq!(e["Status"]["version"], Value::String("3.6.5".into()));
        ids.insert(
            e["Status"]["header"]["member_id"]
                .as_u64()
                .expect("member_id"),
        );
        leaders.insert(e["Status"]["leader"].as_u64().expect("leader"));
    }
    assert_eq!(ids.len(), 3, "{status}");
    assert_eq!(leaders.len(), 1, "{status}");
    let leader_id = *leaders.iter().next().expect("one leader");
    assert!(ids.contains(&leader_id));
    assert_eq!(c.member_id(leader), leader_id);

    // The simple format: endpoint, id, version, db size, is leader, ...
    for (i, ep) in endpoints.iter().enumerate() {
        let out = c.ctl_on(i, &["endpoint", "status"]);
        let fields: Vec<&str> = out.trim_end().split(", ").collect();
        assert_eq!(fields[0], ep, "{out}");
        assert_eq!(fields[1], format!("{:x}", c.member_id(i)), "{out}");
        assert_eq!(fields[2], "3.6.5", "{out}");
        assert_eq!(
            fields[4],
            if i == leader { "true" } else { "false" },
            "{out}"
        );
        assert_eq!(fields[5], "false", "is learner: {out}");
    }

    // endpoint health on each member, on all, and discovered with
    // --cluster. etcdctl 3.4 prints the health lines on stderr.
    let health = |endpoints: &str, args: &[&str]| -> String {
        let out = c.expect_success(c.run(endpoints, args, None));
        assert_eq!(out.stdout, "", "{out}");
        out.stderr
    };
    for ep in &endpoints {
        let out = health(ep, &["endpoint", "health"]);
        assert!(
            out.starts_with(&format!(
                "{ep} is healthy: successfully committed proposal: took = "
            )),
            "{out}"
        );
        assert_eq!(out.lines().count(), 1, "{out}");
    }
    let out = health(&c.endpoints(), &["endpoint", "health"]);
    let healthy: HashSet<&str> = out
        .lines()
        .filter(|l| l.contains(" is healthy: successfully committed proposal: took = "))
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        healthy,
        endpoints.iter().map(String::as_str).collect(),
        "{out}"
    );
    let out = health(&c.endpoint(1), &["endpoint", "health", "--cluster"]);
    let healthy: HashSet<String> = out
        .lines()
        .filter(|l| l.contains(" is healthy: successfully committed proposal: took = "))
        .map(|l| l.split(' ').next().unwrap_or("").to_string())
        .collect();
    let client_urls: HashSet<String> = c.members().iter().map(|m| m.client_url()).collect();
    assert_eq!(healthy, client_urls, "{out}");

    // member list: three started members with their names and URLs.
    let out = c.ctl(&["member", "list"]);
    let mut listed: Vec<Vec<String>> = out
        .lines()
        .map(|l| l.split(", ").map(str::to_string).collect())
        .collect();
    listed.sort_by(|a, b| a[2].cmp(&b[2]));
    assert_eq!(listed.len(), 3, "{out}");
    for (i, row) in listed.iter().enumerate() {
        let m = c.member(i);
        let expected = [
            format!("{:x}", c.member_id(i)),
            "started".to_string(),
            m.name.clone(),
            m.peer_url(),
            m.client_url(),
            "false".to_string(),
        ];
        assert_eq!(row.as_slice(), expected.as_slice(), "{out}");
    }
    let members = json(&c.ctl(&["member", "list", "-w", "json"]));
    assert_eq!(members["members"].as_array().map(Vec::len), Some(3));

    // A write on a follower is readable everywhere.
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (f1, f2) = (followers[0], followers[1]);
    assert_eq!(c.ctl_on(f1, &["put", "from-follower", "hello"]), "OK\n");
    for i in [f2, leader, f1] {
        assert_eq!(
            c.ctl_on(i, &["get", "from-follower"]),
            kvs(&[("from-follower", "hello")]),
            "linearizable read on member {i}"
        );
    }
    assert_eq!(c.ctl_on(f2, &["del", "from-follower"]), "1\n");
    assert_eq!(c.ctl_on(f1, &["get", "from-follower"]), "");
    // Serializable reads converge too.
    assert_eq!(c.ctl_on(f2, &["put", "ser", "s"]), "OK\n");
    for i in 0..3 {
        poll_until(Duration::from_secs(10), "serializable read", || {
            let out = c.ctl_on(i, &["get", "ser", "--consistency=s"]);
            if out == kvs(&[("ser", "s")]) {
                Ok(())
            } else {
                Err(out)
            }
        });
    }
}

/// `endpoint status` through URL-style endpoints (`http://host:port`), which
/// is what `--cluster` uses (the members' advertised client URLs).
#[test]
fn endpoint_status_by_url_and_with_cluster() {
    let c = Cluster::start(3);
    let urls: Vec<String> = c.members().iter().map(|m| m.client_url()).collect();
    // The URL form of one endpoint.
    let out = c.ctl_on_endpoints(&urls[0], &["endpoint", "status", "-w", "json"]);
    assert_eq!(json(&out).as_array().map(Vec::len), Some(1), "{out}");
    // --cluster discovers every member's client URL, once every member has
    // published it (members publish their attributes just after starting).
    let expected: HashSet<String> = urls.iter().cloned().collect();
    let status = poll_until(
        Duration::from_secs(10),
        "--cluster to list every member",
        || {
            let out = c.ctl_on(0, &["endpoint", "status", "--cluster", "-w", "json"]);
            let status = json(&out);
            let listed: HashSet<String> = status
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["Endpoint"].as_str().unwrap_or("").to_string())
                .collect();
            if listed == expected {
                Ok(status)
            } else {
                Err(out)
            }
        },
    );
    let entries = status.as_array().expect("array");
    for e in entries {
        assert_eq!(e["Status"]["version"], Value::String("3.6.5".into()));
    }
}

/// `etcdctl txn` input with no compares and `n` puts on success.
fn txn_of_puts(n: usize) -> String {
    let puts: String = (0..n).map(|i| format!("put k{i} v\n")).collect();
    format!("\n{puts}\n\n")
}

/// etcd's request limits, with etcd's messages: a value above
/// --max-request-bytes (1.5 MiB) and a txn of 129 operations (the limit is
/// --max-txn-ops, 128) are refused and change nothing.
#[test]
fn request_limits() {
    let c = Cluster::start(3);
    let before = revision_of(&c.ctl(&["get", "x", "-w", "json"]));

    // Read from stdin: no command line holds a 1.6 MB argument.
    let big = "v".repeat(1_600_000);
    let out = c.expect_err(c.run(&c.endpoint(0), &["put", "big"], Some(&big)));
    assert!(
        out.stderr.contains("etcdserver: request is too large"),
        "{out}"
    );

    let out = c.expect_err(c.run(&c.endpoint(1), &["txn"], Some(&txn_of_puts(129))));
    assert!(
        out.stderr
            .contains("etcdserver: too many operations in txn request"),
        "{out}"
    );

    // 128 operations are fine.
    let out = c.expect_ok(c.run(&c.endpoint(2), &["txn"], Some(&txn_of_puts(128))));
    assert!(out.starts_with("SUCCESS"), "{out}");
    let after = revision_of(&c.ctl(&["get", "x", "-w", "json"]));
    assert_eq!(
        after,
        before + 1,
        "only the 128-op txn wrote, in one revision"
    );
}

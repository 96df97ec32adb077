//! Runs docs/service-discovery.md as written: its titled `sh` blocks go to
//! bash exactly as a user would type them (only `ETCDCTL_ENDPOINTS` is set
//! here), against a real 3-member cluster, and its titled `text` blocks are
//! the outputs they must produce.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use witan_tests::{Cluster, LineChild, clear_etcdctl_env, etcdctl_bin, poll_until};

const DOC: &str = include_str!("../../docs/service-discovery.md");
const KEY: &str = "/services/web/web-1";
/// The lease TTL the doc grants, in seconds.
const DOC_TTL_SECS: u64 = 5;

/// Fenced blocks with a `title="..."` info string: (language, title) -> body.
fn titled_blocks(markdown: &str) -> BTreeMap<String, (String, String)> {
    let mut blocks = BTreeMap::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for inner in lines.by_ref() {
            if inner == "```" {
                break;
            }
            body.push_str(inner);
            body.push('\n');
        }
        let lang = info.split_whitespace().next().unwrap_or("").to_string();
        if let Some(rest) = info.split_once("title=\"").map(|(_, r)| r) {
            let title = rest.split('"').next().unwrap_or("").to_string();
            let previous = blocks.insert(title.clone(), (lang, body));
            assert!(previous.is_none(), "two blocks titled {title:?}");
        }
    }
    blocks
}

struct Doc {
    blocks: BTreeMap<String, (String, String)>,
}

impl Doc {
    fn load() -> Doc {
        Doc {
            blocks: titled_blocks(DOC),
        }
    }

    fn commands(&self, title: &str) -> &str {
        let (lang, body) = self
            .blocks
            .get(title)
            .unwrap_or_else(|| panic!("the doc has no block titled {title:?}"));
        assert_eq!(lang, "sh", "block {title:?}");
        assert!(
            !body.contains("--endpoints"),
            "block {title:?} must rely on ETCDCTL_ENDPOINTS, as the doc says"
        );
        body
    }

    fn output(&self, title: &str) -> Vec<String> {
        let (lang, body) = self
            .blocks
            .get(title)
            .unwrap_or_else(|| panic!("the doc has no block titled {title:?}"));
        assert_eq!(lang, "text", "block {title:?}");
        body.lines().map(str::to_string).collect()
    }
}

/// A bash session fed from stdin, like a terminal: variables set by one
/// block are there for the next.
struct Shell {
    name: String,
    bash: LineChild,
}

const DONE: &str = "__witan_test_block_done__";

impl Shell {
    fn new(name: &str, endpoints: &str) -> Shell {
        let mut cmd = Command::new("bash");
        clear_etcdctl_env(&mut cmd);
        cmd.env("ETCDCTL_ENDPOINTS", endpoints);
        // The etcdctl under test first on PATH.
        if let Some(dir) = Path::new(&etcdctl_bin())
            .parent()
            .filter(|d| d.is_absolute())
        {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        let mut bash = LineChild::spawn(format!("bash session {name:?}"), cmd);
        // Strict mode, so a failing command in a block fails the block.
        bash.send("set -euo pipefail\n");
        Shell {
            name: name.to_string(),
            bash,
        }
    }

    /// Runs a block to completion; returns its stdout lines.
    fn run(&mut self, title: &str, block: &str) -> Vec<String> {
        let from = self.bash.seen().len();
        self.bash.send(block);
        self.bash.send(&format!("echo {DONE}\n"));
        let at = self.bash.wait_line(from, DONE, Duration::from_secs(30));
        let out = self.bash.seen()[from..at].to_vec();
        eprintln!("[{}] {title}: {out:?}", self.name);
        out
    }

    /// Starts a block that does not end by itself (a watch).
    fn start(&mut self, block: &str) -> usize {
        let from = self.bash.seen().len();
        self.bash.send(block);
        from
    }

    fn wait_lines(&mut self, from: usize, n: usize) -> Vec<String> {
        let lines = self
            .bash
            .wait_until(Duration::from_secs(30), &format!("{n} lines"), |seen| {
                seen.len() >= from + n
            });
        lines[from..from + n].to_vec()
    }
}

#[test]
fn the_service_discovery_doc_works_as_written() {
    let doc = Doc::load();
    let c = Cluster::start(3);
    let endpoints = c.endpoints();

    // A client that lists (nothing yet) and starts watching.
    let mut watcher = Shell::new("watcher", &endpoints);
    assert_eq!(
        watcher.run("discover", doc.commands("discover")),
        Vec::<String>::new()
    );
    let watch_from = watcher.start(doc.commands("watch"));

    // The instance advertises itself.
    let mut instance = Shell::new("instance", &endpoints);
    assert_eq!(instance.run("advertise", doc.commands("advertise")), ["OK"]);

    // The watcher sees the PUT, exactly as the doc shows it.
    let expected_watch = doc.output("watch-output");
    assert_eq!(expected_watch.len(), 6, "PUT and DELETE events");
    assert_eq!(watcher.wait_lines(watch_from, 3), expected_watch[..3]);

    // A new client discovers the instance, exactly as the doc shows it.
    let mut client = Shell::new("client", &endpoints);
    assert_eq!(
        client.run("discover", doc.commands("discover")),
        doc.output("discover-output")
    );
    assert_eq!(doc.output("discover-output")[0], KEY);

    // The keep-alive keeps the entry well past its TTL.
    let advertised = Instant::now();
    while advertised.elapsed() < Duration::from_secs(DOC_TTL_SECS + 2) {
        let listed = c.ctl(&["get", "--prefix", "/services/web/", "--keys-only"]);
        assert_eq!(
            listed,
            format!("{KEY}\n\n"),
            "lost the entry after {:?} although its lease is kept alive\n{}",
            advertised.elapsed(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The instance stops: the entry vanishes within the TTL (bounded poll).
    assert_eq!(
        instance.run("stop", doc.commands("stop")),
        Vec::<String>::new()
    );
    let stopped = Instant::now();
    poll_until(Duration::from_secs(20), "the entry to expire", || {
        let out = c.ctl(&["get", "--prefix", "/services/web/"]);
        if out.is_empty() { Ok(()) } else { Err(out) }
    });
    let gone_after = stopped.elapsed();
    eprintln!("entry gone {gone_after:?} after the keep-alive stopped");
    assert!(
        gone_after >= Duration::from_secs(1),
        "the entry vanished after only {gone_after:?}: the lease was not alive"
    );

    // The watcher sees the DELETE; discovery lists nothing.
    assert_eq!(watcher.wait_lines(watch_from, 6), expected_watch);
    assert_eq!(
        client.run("discover", doc.commands("discover")),
        Vec::<String>::new()
    );
}

#[test]
fn the_doc_has_the_blocks_the_test_runs() {
    let doc = Doc::load();
    for title in ["advertise", "discover", "watch", "stop"] {
        assert!(!doc.commands(title).trim().is_empty());
    }
    assert!(
        doc.commands("advertise")
            .contains("LEASE=$(etcdctl lease grant 5 | awk '{print $2}')")
    );
    assert!(
        doc.commands("watch")
            .contains("etcdctl watch --prefix /services/web/ --rev")
    );
    assert_eq!(doc.output("discover-output").len(), 2);
}

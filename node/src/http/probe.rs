//! The decisions behind the HTTP health endpoints, free of I/O: which checks
//! a request runs, and how their results become a status and a body.
//!
//! The texts follow etcd's `etcdhttp` package (itself in the Kubernetes
//! style): `/health` answers `{"health":"true","reason":""}`; `/livez` and
//! `/readyz` answer `ok`, with `?verbose` one `[+]name ok` or
//! `[-]name failed: reason` line per check first, and on a failure a 503
//! that always carries the lines.

use axum::http::StatusCode;
use serde::Serialize;

/// A named check of `/livez` or `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No CORRUPT alarm (witan raises none yet, so it always passes).
    DataCorruption,
    /// A local read works.
    SerializableRead,
    /// A ReadIndex-backed read works: the cluster has consensus.
    LinearizableRead,
    /// This member votes (a learner is not ready).
    NonLearner,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }
}

/// Which endpoint family a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Livez,
    Readyz,
}

impl Probe {
    /// The checks this probe runs, in the order they are reported.
    pub fn checks(self) -> &'static [Check] {
        match self {
            Probe::Livez => &[Check::SerializableRead],
            Probe::Readyz => &[
                Check::DataCorruption,
                Check::SerializableRead,
                Check::LinearizableRead,
                Check::NonLearner,
            ],
        }
    }

    /// The check named `name` under this probe (`/readyz/<name>`).
    pub fn check(self, name: &str) -> Option<Check> {
        self.checks().iter().copied().find(|c| c.name() == name)
    }
}

/// The query parameters the health endpoints understand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `verbose` present (any value).
    pub verbose: bool,
    /// Every non-empty `exclude=` value, in order.
    pub exclude: Vec<String>,
    /// `serializable=true`.
    pub serializable: bool,
}

/// Parses a raw query string (without the `?`).
pub fn parse_query(raw: Option<&str>) -> Query {
    let mut query = Query::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "verbose" => query.verbose = true,
            "exclude" if !value.is_empty() => query.exclude.push(value.to_string()),
            "serializable" => query.serializable = value == "true",
            _ => {}
        }
    }
    query
}

/// The checks a root probe request runs: all of the probe's but the
/// excluded ones. Excluding an unknown check is not an error (etcd only
/// logs it, for version compatibility).
pub fn select(probe: Probe, exclude: &[String]) -> Vec<Check> {
    probe
        .checks()
        .iter()
        .copied()
        .filter(|c| !exclude.iter().any(|e| e == c.name()))
        .collect()
}

/// A response: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";

/// The `/livez` or `/readyz` answer for the checks' results.
pub fn render_checks(results: &[(Check, Result<(), String>)], verbose: bool) -> Answer {
    let mut lines = String::new();
    let mut failed = false;
    for (check, result) in results {
        match result {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", check.name())),
            Err(reason) => {
                failed = true;
                lines.push_str(&format!("[-]{} failed: {reason}\n", check.name()));
            }
        }
    }
    if failed {
        // A failure always shows which check failed, verbose or not.
        lines.push('\n');
        return Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            content_type: TEXT,
            body: lines,
        };
    }
    let body = if verbose {
        lines + "ok\n"
    } else {
        "ok\n".into()
    };
    Answer {
        status: StatusCode::OK,
        content_type: TEXT,
        body,
    }
}

/// etcd's `/health` verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    NoLeader,
    ReadFailed(String),
}

/// Whether `/health` must see a leader first (not with `serializable=true`).
pub fn health_needs_leader(query: &Query) -> bool {
    !query.serializable
}

/// The `/health` answer: 200 with the JSON, or 503 with it (plus the newline
/// Go's `http.Error` adds).
pub fn render_health(health: &Health) -> Answer {
    let (ok, reason) = match health {
        Health::Healthy => (true, String::new()),
        Health::NoLeader => (false, "RAFT NO LEADER".to_string()),
        Health::ReadFailed(e) => (false, format!("RANGE ERROR:{e}")),
    };
    let json = serde_json::to_string(&HealthBody {
        health: if ok { "true" } else { "false" },
        reason: &reason,
    })
    .unwrap_or_default();
    if ok {
        Answer {
            status: StatusCode::OK,
            content_type: JSON,
            body: json,
        }
    } else {
        Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            content_type: JSON,
            body: json + "\n",
        }
    }
}

/// The `/version` body: etcd's three fields plus witan's own version.
pub fn version_json(etcd_server: &str, witan: &str) -> String {
    serde_json::to_string(&VersionBody {
        etcdserver: etcd_server,
        etcdcluster: ETCD_CLUSTER_VERSION,
        storage: ETCD_STORAGE_VERSION,
        witan,
    })
    .unwrap_or_default()
}

/// The cluster and storage versions reported by `/version`.
pub const ETCD_CLUSTER_VERSION: &str = "3.6.0";
pub const ETCD_STORAGE_VERSION: &str = "3.6.0";

/// `/health`'s body, fields in etcd's order.
#[derive(Serialize)]
struct HealthBody<'a> {
    health: &'a str,
    reason: &'a str,
}

/// `/version`'s body, fields in etcd's order.
#[derive(Serialize)]
struct VersionBody<'a> {
    etcdserver: &'a str,
    etcdcluster: &'a str,
    storage: &'a str,
    witan: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(parse_query(None), Query::default());
        let q = parse_query(Some("verbose&exclude=non_learner&exclude=&exclude=x"));
        assert!(q.verbose);
        assert!(!q.serializable);
        assert_eq!(q.exclude, vec!["non_learner".to_string(), "x".to_string()]);
        assert!(parse_query(Some("verbose=false")).verbose);
        assert!(parse_query(Some("serializable=true")).serializable);
        assert!(!parse_query(Some("serializable=1")).serializable);
        assert!(!parse_query(Some("serializable")).serializable);
    }

    #[test]
    fn selection_honours_excludes_and_ignores_unknown_ones() {
        assert_eq!(select(Probe::Livez, &[]), vec![Check::SerializableRead]);
        assert_eq!(select(Probe::Readyz, &[]), Probe::Readyz.checks().to_vec());
        let ex = vec!["linearizable_read".to_string(), "nope".to_string()];
        assert_eq!(
            select(Probe::Readyz, &ex),
            vec![
                Check::DataCorruption,
                Check::SerializableRead,
                Check::NonLearner
            ]
        );
        assert_eq!(Probe::Readyz.check("non_learner"), Some(Check::NonLearner));
        assert_eq!(Probe::Livez.check("non_learner"), None);
        assert_eq!(Probe::Readyz.check("nope"), None);
    }

    #[test]
    fn all_ok_is_200_and_verbose_lists_every_check() {
        let results: Vec<_> = Probe::Readyz
            .checks()
            .iter()
            .map(|c| (*c, Ok(())))
            .collect();
        let plain = render_checks(&results, false);
        assert_eq!(plain.status, StatusCode::OK);
        assert_eq!(plain.body, "ok\n");
        let verbose = render_checks(&results, true);
        assert_eq!(verbose.status, StatusCode::OK);
        assert_eq!(
            verbose.body,
            "[+]data_corruption ok\n[+]serializable_read ok\n\
             [+]linearizable_read ok\n[+]non_learner ok\nok\n"
        );
        // No checks at all (everything excluded) is ok.
        assert_eq!(render_checks(&[], false).status, StatusCode::OK);
    }

    #[test]
    fn a_failure_is_503_and_always_shows_the_lines() {
        let results = vec![
            (Check::SerializableRead, Ok(())),
            (
                Check::NonLearner,
                Err("not supported for learner".to_string()),
            ),
        ];
        for verbose in [false, true] {
            let answer = render_checks(&results, verbose);
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                answer.body,
                "[+]serializable_read ok\n[-]non_learner failed: not supported for learner\n\n"
            );
        }
    }

    #[test]
    fn health_bodies() {
        let ok = render_health(&Health::Healthy);
        assert_eq!(ok.status, StatusCode::OK);
        assert_eq!(ok.body, r#"{"health":"true","reason":""}"#);
        let no_leader = render_health(&Health::NoLeader);
        assert_eq!(no_leader.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            no_leader.body,
            "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}\n"
        );
        let read = render_health(&Health::ReadFailed("etcdserver: request timed out".into()));
        assert_eq!(
            read.body,
            "{\"health\":\"false\",\"reason\":\"RANGE ERROR:etcdserver: request timed out\"}\n"
        );
        assert!(health_needs_leader(&Query::default()));
        assert!(!health_needs_leader(&parse_query(Some(
            "serializable=true"
        ))));
    }

    #[test]
    fn version_body() {
        assert_eq!(
            version_json("3.6.5", "0.1.0"),
            r#"{"etcdserver":"3.6.5","etcdcluster":"3.6.0","storage":"3.6.0","witan":"0.1.0"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&version_json("3.6.5", "0.1.0")).unwrap();
        assert_eq!(v["etcdserver"], "3.6.5");
        assert_eq!(v["etcdcluster"], "3.6.0");
        assert_eq!(v["storage"], "3.6.0");
        assert_eq!(v["witan"], "0.1.0");
    }
}

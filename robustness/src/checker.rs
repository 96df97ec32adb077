//! All checks of one run's history, and the verdict.

use std::time::Duration;

use crate::history::History;
use crate::linearizability::{self, FINAL_READ, SearchResult};
use crate::violation::{Kind, Violation};
use crate::{revisions, watch};

/// How long the per-key search may spend shrinking a failing history.
const SHRINK_FOR: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    pub lost_acked_writes: usize,
    /// Operations and watches checked, for the summary.
    pub ops: usize,
    pub watch_events: usize,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs every check: the per-key linearizability search, the global
/// revision check (which also counts lost acknowledged writes) and the
/// watch checks.
pub fn check(history: &History) -> Verdict {
    let mut violations = Vec::new();
    for failure in linearizability::check(history, SHRINK_FOR) {
        let (kind, what) = match failure.result {
            SearchResult::Illegal => (Kind::Linearizability, "is not linearizable"),
            _ => (
                Kind::Undecided,
                "could not be decided within the search budget",
            ),
        };
        let with_final = failure.minimal.contains(&FINAL_READ);
        let ops: Vec<usize> = failure
            .minimal
            .iter()
            .copied()
            .filter(|&id| id != FINAL_READ)
            .collect();
        violations.push(Violation::new(
            kind,
            format!(
                "key {:?} {what}; minimal failing history: {} ops{}",
                failure.key,
                ops.len(),
                if with_final {
                    " and the final read"
                } else {
                    ""
                }
            ),
            ops,
        ));
    }
    let checked = revisions::check(history);
    violations.extend(checked.violations);
    violations.extend(watch::check(history, &checked.replay));
    Verdict {
        violations,
        lost_acked_writes: checked.lost_acked_writes,
        ops: history.ops.len(),
        watch_events: history.watches.iter().map(|w| w.events().len()).sum(),
    }
}

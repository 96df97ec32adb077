//! On a violation: one folder with the failing history, the minimal
//! failing sub-histories, the verdict and every member's log.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::checker::Verdict;
use crate::history::History;

/// Where reports go: `$WITAN_ROBUSTNESS_REPORTS`, else
/// `<workspace>/target/robustness-reports`.
pub fn reports_root() -> PathBuf {
    std::env::var_os("WITAN_ROBUSTNESS_REPORTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/robustness-reports")
        })
}

/// Writes the report for run `name` and returns its folder:
/// - `verdict.txt`: every violation, one per line;
/// - `minimal.json`: per violation, the ops and watches that show it;
/// - `history.json`: the whole recorded history;
/// - `<member>.log`: each member's log.
pub fn write(
    name: &str,
    summary: &str,
    history: &History,
    verdict: &Verdict,
    logs: &[(String, PathBuf)],
) -> std::io::Result<PathBuf> {
    let dir = reports_root().join(name);
    fs::create_dir_all(&dir)?;
    let mut text = format!("{summary}\n");
    for v in &verdict.violations {
        text.push_str(&format!("{v}\n"));
    }
    fs::write(dir.join("verdict.txt"), text)?;
    let minimal: Vec<serde_json::Value> = verdict
        .violations
        .iter()
        .map(|v| {
            let ids: BTreeSet<usize> = v.ops.iter().copied().collect();
            let watches: BTreeSet<usize> = v.watches.iter().copied().collect();
            serde_json::json!({
                "violation": v,
                "ops": history.ops.iter().filter(|op| ids.contains(&op.id)).collect::<Vec<_>>(),
                "watches": history.watches.iter().filter(|w| watches.contains(&w.id)).collect::<Vec<_>>(),
            })
        })
        .collect();
    fs::write(
        dir.join("minimal.json"),
        serde_json::to_string_pretty(&minimal)?,
    )?;
    fs::write(
        dir.join("history.json"),
        serde_json::to_string_pretty(history)?,
    )?;
    for (name, path) in logs {
        let _ = fs::copy(path, dir.join(format!("{name}.log")));
    }
    Ok(dir)
}

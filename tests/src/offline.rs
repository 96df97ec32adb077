//! The `witan` binary's offline commands (`witan snapshot status|restore`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{Member, run_bounded, witan_bin};

/// How long one offline command may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `witan <args>` without the caller's `WITAN_*` environment:
/// (success, stdout, stderr).
pub fn run_witan(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(witan_bin());
    cmd.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WITAN_") {
            cmd.env_remove(name);
        }
    }
    let done = run_bounded(cmd, None, RUN_TIMEOUT);
    (
        done.status.is_some_and(|s| s.success()),
        done.stdout,
        done.stderr,
    )
}

/// The value of `flag` in a member's arguments.
pub fn flag_of<'a>(m: &'a Member, flag: &str) -> &'a str {
    let args = m.args();
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{} has no {flag}", m.name));
    &args[at + 1]
}

/// `witan snapshot restore` of `file` into member `m`'s (empty) data dir,
/// with its name, cluster and token; must succeed.
pub fn restore_into(file: &Path, m: &Member) {
    let data_dir = m.data_dir().display().to_string();
    let peer = m.peer_url();
    let (ok, stdout, stderr) = run_witan(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &data_dir,
        "--name",
        &m.name,
        "--initial-cluster",
        flag_of(m, "--initial-cluster"),
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster-token",
        flag_of(m, "--initial-cluster-token"),
    ]);
    assert!(ok, "restore for {} failed:\n{stdout}\n{stderr}", m.name);
    assert!(stdout.contains("restored snapshot at revision"), "{stdout}");
}

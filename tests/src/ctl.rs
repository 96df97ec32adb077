//! Running the real `etcdctl`.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::process::run_bounded;

/// etcdctl's own limits: how long to dial, how long one request may take.
pub const DIAL_TIMEOUT: &str = "2s";
pub const COMMAND_TIMEOUT: &str = "5s";
/// Wall-clock bound on one etcdctl run (its own timeouts should fire first).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The etcdctl binary: `$ETCDCTL_BIN`, else Debian's `/usr/bin/etcdctl`,
/// else whatever `etcdctl` is on `PATH`.
pub fn etcdctl_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ETCDCTL_BIN") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/bin/etcdctl");
    if debian.is_file() {
        debian
    } else {
        PathBuf::from("etcdctl")
    }
}

/// Removes every `ETCDCTL_*` variable (output format, endpoints, timeouts)
/// the test run may have inherited, so outputs are etcdctl's defaults.
pub fn clear_etcdctl_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(name);
        }
    }
}

/// `etcdctl --endpoints <endpoints> --dial-timeout .. --command-timeout .. <args>`,
/// not yet run.
pub fn command(endpoints: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(etcdctl_bin());
    clear_etcdctl_env(&mut cmd);
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .arg("--dial-timeout")
        .arg(DIAL_TIMEOUT)
        .arg("--command-timeout")
        .arg(COMMAND_TIMEOUT)
        .args(args);
    cmd
}

/// What one etcdctl run did.
#[derive(Debug)]
pub struct CtlOutput {
    pub endpoints: String,
    pub args: Vec<String>,
    pub stdout: String,
    pub stderr: String,
    /// `None` when the harness had to kill it at [`RUN_TIMEOUT`].
    pub status: Option<ExitStatus>,
}

impl CtlOutput {
    pub fn run(endpoints: &str, args: &[&str], stdin: Option<&str>) -> CtlOutput {
        let done = run_bounded(command(endpoints, args), stdin, RUN_TIMEOUT);
        CtlOutput {
            endpoints: endpoints.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            stdout: done.stdout,
            stderr: done.stderr,
            status: done.status,
        }
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The last line of stderr, which is where etcdctl puts `Error: ...`.
    pub fn error_line(&self) -> &str {
        self.stderr.trim_end().lines().last().unwrap_or("")
    }
}

impl fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("killed after {RUN_TIMEOUT:?}"),
        };
        write!(
            f,
            "etcdctl --endpoints {} {}\n  status: {status}\n  stdout:\n{}\n  stderr:\n{}",
            self.endpoints,
            self.args.join(" "),
            self.stdout,
            self.stderr
        )
    }
}

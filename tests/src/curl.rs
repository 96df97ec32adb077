//! Running curl against the members' HTTP endpoints.

use std::process::Command;
use std::time::Duration;

use crate::process::run_bounded;

/// How long one curl may take.
pub const CURL_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP status code and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// `curl <extra> <url>`; the reply, or curl's failure (it could not
/// connect, the TLS handshake failed, ...).
pub fn curl(url: &str, extra: &[&str]) -> Result<Reply, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "8", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url);
    let out = run_bounded(cmd, None, CURL_TIMEOUT);
    if !out.status.is_some_and(|s| s.success()) {
        return Err(format!(
            "curl {url} failed: {:?} {}",
            out.status, out.stderr
        ));
    }
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .ok_or_else(|| format!("no status line in {:?}", out.stdout))?;
    let status = code
        .trim()
        .parse()
        .map_err(|e| format!("status {code:?}: {e}"))?;
    Ok(Reply {
        status,
        body: body.to_string(),
    })
}

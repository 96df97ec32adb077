//! Child processes with deadlines.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often polls look again.
const POLL: Duration = Duration::from_millis(50);

/// Calls `probe` until it returns `Some` or `timeout` passes; panics with
/// `what` and the last `probe` failure description otherwise.
pub fn poll_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Output of a bounded run. `status` is `None` when the deadline killed it.
#[derive(Debug)]
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    pub status: Option<ExitStatus>,
}

fn read_all(mut from: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion, feeding it `stdin`, killing it (SIGKILL) if it
/// is still running after `timeout`.
pub fn run_bounded(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> Finished {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_owned();
        // A writer thread, so a child that does not read cannot block us;
        // dropping the pipe sends EOF.
        thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let out = read_all(child.stdout.take().expect("piped stdout"));
    let err = read_all(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    Finished {
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        status,
    }
}

/// A long-running child whose stdout is read line by line. Killed with
/// SIGKILL (its whole process group, so anything it started in the
/// background goes too) when dropped.
pub struct LineChild {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    killed: bool,
}

impl LineChild {
    /// Spawns `cmd` in a process group of its own, stdin piped.
    pub fn spawn(what: impl Into<String>, mut cmd: Command) -> LineChild {
        let what = what.into();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what} ({cmd:?}): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        LineChild {
            what,
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
            killed: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes to the child's stdin.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing to {}: {e}", self.what));
    }

    /// Reads stdout until `done(lines seen so far)` holds; panics after
    /// `timeout` showing what was seen. Returns the lines seen so far.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> &[String] {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: timed out after {timeout:?} waiting for {what}\nstdout so far:\n{}\nstderr:\n{}",
                    self.what,
                    self.seen.join("\n"),
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: stdout closed while waiting for {what} (exit: {:?})\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.child.try_wait(),
                    self.seen.join("\n"),
                    self.stderr()
                ),
            }
        }
        &self.seen
    }

    /// Waits until at least `n` stdout lines arrived; returns the first `n`.
    pub fn wait_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        self.wait_until(timeout, &format!("{n} lines"), |seen| seen.len() >= n)[..n].to_vec()
    }

    /// Waits for a line equal to `line` after the first `from` lines;
    /// returns its index.
    pub fn wait_line(&mut self, from: usize, line: &str, timeout: Duration) -> usize {
        let seen = self.wait_until(timeout, &format!("a line {line:?}"), |seen| {
            seen.iter().skip(from).any(|l| l == line)
        });
        from + seen
            .iter()
            .skip(from)
            .position(|l| l == line)
            .expect("just seen")
    }

    /// Waits for the child to exit on its own (bounded), then for its
    /// output to drain; returns the exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => panic!(
                    "{}: still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.seen.join("\n"),
                    self.stderr()
                ),
                Err(e) => panic!("{}: waiting: {e}", self.what),
            }
        };
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        status
    }

    /// SIGKILLs the child's process group and reaps the child.
    pub fn kill(&mut self) {
        self.stdin.take();
        if std::mem::replace(&mut self.killed, true) {
            // Reaped already: the group id may belong to someone else now.
            return;
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        self.kill();
    }
}

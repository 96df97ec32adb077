//! Where the `witan` binary under test comes from.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The `witan` binary: `$WITAN_BIN` if set, otherwise built once per test
/// process with `cargo build -p witan-node --bin witan` (the path is taken
/// from cargo's own report, so `CARGO_TARGET_DIR` is honoured).
pub fn witan_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("WITAN_BIN") {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "WITAN_BIN={} is not a file", path.display());
            return path;
        }
        build()
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

fn build() -> PathBuf {
    let root = workspace_root();
    let output = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "witan-node",
            "--bin",
            "witan",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo build for witan");
    assert!(
        output.status.success(),
        "cargo build -p witan-node --bin witan failed ({})",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let from_cargo = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "witan")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from));
    let path = from_cargo.unwrap_or_else(|| root.join("target/debug/witan"));
    assert!(path.is_file(), "no witan binary at {}", path.display());
    path
}

//! The Dockerfile's shape, checked without Docker: the two targets exist,
//! build the right binaries with `--locked`, and run them from a runtime
//! image without build tools as the non-root uid the operator's pods use.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// One `FROM` stage: its name, base image and instructions (continuation
/// lines joined, comments dropped).
#[derive(Debug)]
struct Stage {
    name: String,
    base: String,
    instructions: Vec<String>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter_map(|i| {
                let (word, rest) = i.split_once(' ')?;
                word.eq_ignore_ascii_case(keyword).then_some(rest.trim())
            })
            .collect()
    }

    fn only(&self, keyword: &str) -> &str {
        let found = self.all(keyword);
        assert_eq!(found.len(), 1, "stage {}: one {keyword}", self.name);
        found[0]
    }
}

fn stages() -> Vec<Stage> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("read Dockerfile");
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            lines.push(std::mem::take(&mut current));
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in lines {
        if let Some(from) = line.strip_prefix("FROM ") {
            let words: Vec<&str> = from.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => (*name).to_string(),
                _ => panic!("every stage is named: {line}"),
            };
            stages.push(Stage {
                name,
                base: words[0].to_string(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(line);
        }
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

/// Checks a runtime target: its base, binary, user and entrypoint.
fn assert_runtime(stages: &[Stage], target: &str, binary: &str, build_stage: &str) {
    let runtime = stage(stages, target);
    assert!(
        !runtime.base.starts_with("rust") && !stages.iter().any(|s| s.name == runtime.base),
        "{target} must start from a runtime image, not {}",
        runtime.base
    );
    assert!(
        runtime.all("RUN").is_empty(),
        "{target}: no RUN in a shell-less runtime image"
    );
    let copies = runtime.all("COPY");
    let wanted = format!("--from={build_stage} /out/{binary} /usr/local/bin/{binary}");
    assert!(copies.contains(&wanted.as_str()), "{target}: {copies:?}");

    let user = runtime.only("USER");
    let uid: i64 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("{target}: USER must be numeric, got {user}"));
    assert!(uid > 0, "{target} runs as root");
    assert_eq!(
        uid,
        witan_operator::resources::statefulset::RUN_AS,
        "{target}: the uid the operator's pods run as"
    );
    assert_eq!(
        runtime.only("ENTRYPOINT"),
        format!("[\"/usr/local/bin/{binary}\"]")
    );
}

#[test]
fn node_target_runs_witan_as_non_root_with_the_member_ports() {
    let stages = stages();
    assert_runtime(&stages, "node", "witan", "build-node");
    let node = stage(&stages, "node");
    assert_eq!(node.only("EXPOSE"), "2379 2380");
    let build = stage(&stages, "build-node");
    assert!(
        build
            .only("RUN")
            .contains("cargo build --release --locked -p witan-node --bin witan "),
        "{build:?}"
    );
    let manifest = std::fs::read_to_string(root().join("node/Cargo.toml")).expect("node manifest");
    assert!(
        manifest.contains("name = \"witan\""),
        "the node binary is `witan`"
    );
}

#[test]
fn operator_target_runs_witan_operator_as_non_root() {
    let stages = stages();
    assert_runtime(&stages, "operator", "witan-operator", "build-operator");
    let build = stage(&stages, "build-operator");
    assert!(
        build
            .only("RUN")
            .contains("cargo build --release --locked -p witan-operator --bin witan-operator "),
        "{build:?}"
    );
    // The binary the image names is the one this package builds.
    assert!(Path::new(env!("CARGO_BIN_EXE_witan-operator")).is_file());
}

#[test]
fn build_stages_install_protoc_and_share_one_base() {
    let stages = stages();
    let base = stage(&stages, "build-base");
    assert!(base.base.starts_with("rust:"), "{}", base.base);
    assert!(
        base.all("RUN")
            .iter()
            .any(|r| r.contains("protobuf-compiler")),
        "etcd-client compiles protos: the build needs protoc"
    );
    for name in ["build-node", "build-operator"] {
        assert_eq!(stage(&stages, name).base, "build-base");
    }
    // The two final targets are the last two stages, so a plain
    // `docker build` without --target builds the operator.
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names[names.len() - 2..], ["node", "operator"]);
}

#[test]
fn the_build_context_leaves_out_target_and_git() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".git/"] {
        assert!(entries.contains(&needed), "{needed} in .dockerignore");
    }
    // The workspace must stay buildable from the context: every member's
    // directory (as the workspace manifest lists them) is sent.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let members: Vec<&str> = members_line
        .split('"')
        .skip(1)
        .step_by(2)
        .chain(["Cargo.toml", "Cargo.lock"])
        .collect();
    assert!(members.contains(&"operator"), "{members:?}");
    for member in members {
        assert!(
            !entries.iter().any(|e| e.trim_end_matches('/') == member),
            "{member} is needed by `cargo build --locked`"
        );
    }
}

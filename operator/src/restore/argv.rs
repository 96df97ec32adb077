//! The `witan snapshot restore` command line of one member. The StatefulSet
//! builder renders it with `$(VAR)` references that the kubelet expands
//! from the pod's environment; the tests render it with real values and run
//! it. One builder for both, so the test runs what the pod runs.

/// The member flags `witan snapshot restore` needs; each must equal what
/// the member later starts with, or it does not recognise the data dir as
/// its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberFlags {
    /// `--name`.
    pub name: String,
    /// `--initial-cluster`: `name=peer-url,...`.
    pub initial_cluster: String,
    /// `--initial-advertise-peer-urls`.
    pub initial_advertise_peer_urls: String,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
}

impl MemberFlags {
    /// The flags as references to the member container's environment
    /// (`WITAN_NAME` from the pod name, the rest from the ConfigMap and the
    /// container's own variables), for the kubelet to expand.
    #[must_use]
    pub fn from_pod_env() -> MemberFlags {
        MemberFlags {
            name: "$(WITAN_NAME)".into(),
            initial_cluster: "$(WITAN_INITIAL_CLUSTER)".into(),
            initial_advertise_peer_urls: "$(WITAN_INITIAL_ADVERTISE_PEER_URLS)".into(),
            initial_cluster_token: "$(WITAN_INITIAL_CLUSTER_TOKEN)".into(),
        }
    }
}

/// `witan snapshot restore SNAPSHOT --data-dir DATA_DIR ...`, starting with
/// the binary `witan`.
#[must_use]
pub fn witan_restore(
    witan: &str,
    snapshot: &str,
    data_dir: &str,
    flags: &MemberFlags,
) -> Vec<String> {
    [
        witan,
        "snapshot",
        "restore",
        snapshot,
        "--data-dir",
        data_dir,
        "--name",
        &flags.name,
        "--initial-cluster",
        &flags.initial_cluster,
        "--initial-advertise-peer-urls",
        &flags.initial_advertise_peer_urls,
        "--initial-cluster-token",
        &flags.initial_cluster_token,
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

/// The revision in `witan snapshot restore`'s first line of output
/// ("restored snapshot at revision N ..."), if it printed one.
#[must_use]
pub fn restored_revision(stdout: &str) -> Option<i64> {
    stdout.lines().find_map(|line| {
        line.strip_prefix("restored snapshot at revision ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_form_refers_to_the_member_environment() {
        let argv = witan_restore(
            "/usr/local/bin/witan",
            "/var/lib/witan-restore/backup.witan-snapshot",
            "/var/lib/witan/data",
            &MemberFlags::from_pod_env(),
        );
        assert_eq!(
            argv,
            [
                "/usr/local/bin/witan",
                "snapshot",
                "restore",
                "/var/lib/witan-restore/backup.witan-snapshot",
                "--data-dir",
                "/var/lib/witan/data",
                "--name",
                "$(WITAN_NAME)",
                "--initial-cluster",
                "$(WITAN_INITIAL_CLUSTER)",
                "--initial-advertise-peer-urls",
                "$(WITAN_INITIAL_ADVERTISE_PEER_URLS)",
                "--initial-cluster-token",
                "$(WITAN_INITIAL_CLUSTER_TOKEN)",
            ]
        );
    }

    #[test]
    fn the_revision_is_read_from_witans_output() {
        let out = "restored snapshot at revision 42 (compact revision 3, 7 keys) to /d\n\
                   start it with the same --name ...\n";
        assert_eq!(restored_revision(out), Some(42));
        assert_eq!(restored_revision("something else"), None);
        assert_eq!(restored_revision(""), None);
    }
}

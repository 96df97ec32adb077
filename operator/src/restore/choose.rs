//! Pure decisions of the restore steps: whether a member restores at all,
//! and which backup `latest` means.

use k8s_openapi::jiff::Timestamp;

use crate::backup::naming::BackupName;

/// What a member's restore steps do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Fetch the backup and build the data dir from it.
    Restore,
    /// Leave the member alone; the reason is reported.
    Skip(String),
}

/// Whether a member restores: only a founding member of a new cluster
/// (`--initial-cluster-state new`) whose data dir is missing or empty.
///
/// - A member with data (a restarted pod, a replaced pod keeping its
///   volume) keeps it: restoring again would throw its writes away.
/// - A member that joins an existing cluster (`existing`, a scale-up) gets
///   the data from the leader through Raft; a restored data dir would make
///   it a second, diverging founder.
#[must_use]
pub fn decide(data_dir_has_entries: bool, initial_cluster_state: &str) -> Decision {
    if data_dir_has_entries {
        return Decision::Skip("the data dir is not empty: the member keeps its data".into());
    }
    if initial_cluster_state != "new" {
        return Decision::Skip(format!(
            "the member joins an existing cluster (initial cluster state {initial_cluster_state:?}): \
             it gets its data from the leader"
        ));
    }
    Decision::Restore
}

/// The backup `latest` stands for among the file names `listed`: the newest
/// backup of `cluster` taken no later than `not_after` (the KvCluster's
/// creation), ordered like retention orders them (time, then revision,
/// then name).
///
/// Every founding member chooses on its own, at a slightly different
/// moment; the bound makes them choose the same file even when the source
/// cluster takes another backup meanwhile. Retention deletes the oldest
/// first, so if the chosen file is pruned between two members' choices,
/// every older one is too and the later member finds none (it fails, it
/// never restores a different backup).
#[must_use]
pub fn latest(listed: &[String], cluster: &str, not_after: Option<Timestamp>) -> Option<String> {
    listed
        .iter()
        .filter_map(|name| BackupName::parse(name).map(|parsed| (parsed, name)))
        .filter(|(parsed, _)| parsed.cluster == cluster)
        .filter(|(parsed, _)| not_after.is_none_or(|bound| parsed.time <= bound))
        .max_by(|(a, an), (b, bn)| (a.time, a.revision, *an).cmp(&(b.time, b.revision, *bn)))
        .map(|(_, name)| name.clone())
}

/// A named backup must be a plain file name in the source (no path: the
/// source decides the directory or prefix).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!(
            "backup name {name:?} is not a file name (or \"latest\")"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(cluster: &str, second: i64, revision: i64) -> String {
        BackupName {
            cluster: cluster.into(),
            time: Timestamp::from_second(1_767_000_000 + second).unwrap(),
            revision,
        }
        .render()
    }

    fn at(second: i64) -> Option<Timestamp> {
        Some(Timestamp::from_second(1_767_000_000 + second).unwrap())
    }

    #[test]
    fn only_an_empty_founding_member_restores() {
        assert_eq!(decide(false, "new"), Decision::Restore);
        assert!(matches!(decide(true, "new"), Decision::Skip(r) if r.contains("not empty")));
        assert!(
            matches!(decide(false, "existing"), Decision::Skip(r) if r.contains("existing cluster"))
        );
        assert!(matches!(decide(true, "existing"), Decision::Skip(_)));
        // A missing or garbled state never means "new".
        assert!(matches!(decide(false, ""), Decision::Skip(_)));
    }

    #[test]
    fn latest_is_the_newest_backup_of_the_cluster_whatever_the_listing_order() {
        let mine: Vec<String> = (0..4).map(|i| name("kv", i * 10, 100 + i)).collect();
        let mut listed = mine.clone();
        listed.push(name("kv-other", 1000, 1));
        listed.push(name("k", 1000, 1));
        listed.push("README".into());
        listed.push("kv-latest.witan-snapshot".into());
        listed.reverse();
        assert_eq!(latest(&listed, "kv", None), Some(mine[3].clone()));
        listed.swap(0, 3);
        assert_eq!(latest(&listed, "kv", None), Some(mine[3].clone()));
        assert_eq!(
            latest(&listed, "kv-other", None),
            Some(name("kv-other", 1000, 1))
        );
        assert_eq!(latest(&listed, "nobody", None), None);
        assert_eq!(latest(&[], "kv", None), None);
    }

    #[test]
    fn latest_ignores_backups_taken_after_the_bound() {
        let listed: Vec<String> = (0..4).map(|i| name("kv", i * 10, 100 + i)).collect();
        assert_eq!(latest(&listed, "kv", at(25)), Some(listed[2].clone()));
        // Inclusive bound.
        assert_eq!(latest(&listed, "kv", at(20)), Some(listed[2].clone()));
        assert_eq!(latest(&listed, "kv", at(-1)), None);
    }

    #[test]
    fn the_same_millisecond_is_ordered_by_revision() {
        let listed = vec![name("kv", 5, 11), name("kv", 5, 12), name("kv", 5, 10)];
        assert_eq!(latest(&listed, "kv", None), Some(listed[1].clone()));
    }

    #[test]
    fn named_backups_are_plain_file_names() {
        assert!(check_name("kv-20260102T030405.678Z-rev42.witan-snapshot").is_ok());
        assert!(check_name("any-file").is_ok());
        for bad in ["", ".", "..", "a/b", "/abs", "../x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}

//! Which backups to delete so that `retention` copies remain.

use super::naming::BackupName;

/// The names among `existing` to delete so that the newest `retention`
/// backups of `cluster` remain. Pure.
///
/// - Only names that parse as backups of `cluster` are considered: other
///   clusters' backups and foreign files in the same place are never
///   deleted.
/// - Newest means latest time, then highest revision, then name (a total
///   order, so the choice never depends on listing order).
/// - `just_written` is never deleted, even if a skewed clock made it look
///   older than what is already there: a backup run must not delete the
///   backup it just took.
/// - A `retention` of 0 is treated as 1.
#[must_use]
pub fn to_prune(
    existing: &[String],
    cluster: &str,
    retention: usize,
    just_written: &str,
) -> Vec<String> {
    let mut ours: Vec<(BackupName, &String)> = existing
        .iter()
        .filter_map(|name| BackupName::parse(name).map(|parsed| (parsed, name)))
        .filter(|(parsed, _)| parsed.cluster == cluster)
        .collect();
    ours.sort_by(|(a, an), (b, bn)| {
        (b.time, b.revision, bn.as_str()).cmp(&(a.time, a.revision, an.as_str()))
    });
    ours.dedup_by(|(_, a), (_, b)| a == b);
    let mut keep = retention.max(1);
    let at = ours.iter().position(|(_, name)| *name == just_written);
    if let Some(at) = at.filter(|at| *at >= keep) {
        // Keep it in place of the oldest of the newest `keep`.
        ours.remove(at);
        keep -= 1;
    }
    ours.into_iter()
        .skip(keep)
        .map(|(_, name)| name.clone())
        .filter(|name| name != just_written)
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn name(cluster: &str, second: i64, revision: i64) -> String {
        BackupName {
            cluster: cluster.into(),
            time: Timestamp::from_second(1_767_000_000 + second).unwrap(),
            revision,
        }
        .render()
    }

    #[test]
    fn keeps_the_newest_retention_copies() {
        let all: Vec<String> = (0..6).map(|i| name("kv", i, 10 + i)).collect();
        // Listing order must not matter.
        let mut shuffled = all.clone();
        shuffled.reverse();
        shuffled.swap(1, 4);
        let pruned = to_prune(&shuffled, "kv", 4, &all[5]);
        assert_eq!(pruned, vec![all[1].clone(), all[0].clone()]);
    }

    #[test]
    fn nothing_is_pruned_while_there_are_at_most_retention_copies() {
        let all: Vec<String> = (0..3).map(|i| name("kv", i, i)).collect();
        assert!(to_prune(&all, "kv", 3, &all[2]).is_empty());
        assert!(to_prune(&all, "kv", 7, &all[2]).is_empty());
    }

    #[test]
    fn other_clusters_and_foreign_files_are_never_pruned() {
        let mine: Vec<String> = (0..3).map(|i| name("kv", i, i)).collect();
        let mut all = mine.clone();
        all.push(name("kv-other", 0, 1));
        all.push(name("k", 0, 1));
        all.push("kv-notes.txt".into());
        all.push("lost+found".into());
        assert_eq!(
            to_prune(&all, "kv", 1, &mine[2]),
            vec![mine[1].clone(), mine[0].clone()]
        );
    }

    #[test]
    fn the_same_second_is_ordered_by_revision() {
        let old = name("kv", 5, 10);
        let new = name("kv", 5, 11);
        assert_eq!(
            to_prune(&[new.clone(), old.clone()], "kv", 1, &new),
            vec![old]
        );
    }

    #[test]
    fn the_backup_just_written_survives_a_clock_that_went_backwards() {
        let later: Vec<String> = (10..13).map(|i| name("kv", i, i)).collect();
        let just = name("kv", 1, 20);
        let mut all = later.clone();
        all.push(just.clone());
        let pruned = to_prune(&all, "kv", 2, &just);
        assert!(!pruned.contains(&just));
        // `just` takes one of the two places: the newest other copy stays.
        assert_eq!(pruned, vec![later[1].clone(), later[0].clone()]);
    }

    #[test]
    fn retention_zero_keeps_one() {
        let all: Vec<String> = (0..3).map(|i| name("kv", i, i)).collect();
        assert_eq!(
            to_prune(&all, "kv", 0, &all[2]),
            vec![all[1].clone(), all[0].clone()]
        );
    }
}

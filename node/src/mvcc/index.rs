//! The key index: for every key, the revisions at which it was written, in
//! memory, as etcd's treeIndex. The versions themselves are records in
//! redb's `kv_records` table keyed by revision, so a write appends at the
//! end of that table instead of rewriting a page chosen by its key: with
//! random keys, a key-ordered table costs every write a copy of a whole
//! page per table, and the index turns that into one ordered append.
//!
//! Rebuilt from `kv_records` when a member starts or installs a snapshot;
//! changed only by the state machine's apply, under the write lock the
//! store keeps around it (`storage::Store::index`).

use std::collections::BTreeMap;
use std::ops::Bound;

use smallvec::SmallVec;

/// etcd's revision: the main revision of a write request and the position
/// of one change within it (a txn changes several keys in one revision).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: u32,
}

impl Revision {
    pub fn new(main: i64, sub: u32) -> Self {
        Revision { main, sub }
    }

    /// The `kv_records` key of this revision.
    pub fn table_key(self) -> (u64, u32) {
        (self.main as u64, self.sub)
    }
}

/// One change of a key: where its record is, and whether it deleted the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    main: i64,
    sub: u32,
    tombstone: bool,
}

impl Version {
    fn revision(self) -> Revision {
        Revision::new(self.main, self.sub)
    }
}

/// Most keys have one retained version, kept inline.
type Versions = SmallVec<[Version; 1]>;

/// What a put left of a key that the next put builds on, so that a put
/// need not read the record it supersedes (etcd's keyIndex keeps the same:
/// the generation's created revision and version count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// One key's retained versions, oldest first, and the newest one's meta
/// (meaningless when the newest is a deletion).
#[derive(Debug)]
struct Key {
    versions: Versions,
    meta: Meta,
}

impl Key {
    fn live(&self) -> Option<(Revision, Meta)> {
        let newest = self.versions.last()?;
        (!newest.tombstone).then_some((newest.revision(), self.meta))
    }
}

/// Every retained version of every key.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Box<[u8]>, Key>,
}

/// The newest version with a main revision at or below `revision`, if it
/// is live.
fn live_at(versions: &Versions, revision: i64) -> Option<Revision> {
    let n = versions.partition_point(|v| v.main <= revision);
    let newest = versions[..n].last()?;
    (!newest.tombstone).then(|| newest.revision())
}

impl KeyIndex {
    pub fn new() -> Self {
        KeyIndex::default()
    }

    /// Records a put of `key` at `rev` with one search of the index (a put
    /// is the hot path): `meta_of` is given the key's live version before
    /// the put, if any, and returns what the new version holds. Returns
    /// that live version and the new meta.
    pub fn put(
        &mut self,
        key: &[u8],
        rev: Revision,
        meta_of: impl FnOnce(Option<(Revision, Meta)>) -> Meta,
    ) -> (Option<(Revision, Meta)>, Meta) {
        let version = Version {
            main: rev.main,
            sub: rev.sub,
            tombstone: false,
        };
        if let Some(entry) = self.keys.get_mut(key) {
            debug_assert!(
                entry.versions.last().is_none_or(|v| v.revision() < rev),
                "index: {rev:?} is not after the key's newest version"
            );
            let prior = entry.live();
            entry.meta = meta_of(prior);
            entry.versions.push(version);
            return (prior, entry.meta);
        }
        let meta = meta_of(None);
        let mut versions = Versions::new();
        versions.push(version);
        self.keys.insert(key.into(), Key { versions, meta });
        (None, meta)
    }

    /// Records a put of `key` at `rev` that left it with `meta`. Changes
    /// arrive in revision order (apply, or a rebuild that reads
    /// `kv_records` in revision order).
    pub fn push_put(&mut self, key: &[u8], rev: Revision, meta: Meta) {
        self.put(key, rev, |_| meta);
    }

    /// Records a deletion of `key` at `rev`.
    pub fn push_delete(&mut self, key: &[u8], rev: Revision) {
        let version = Version {
            main: rev.main,
            sub: rev.sub,
            tombstone: true,
        };
        match self.keys.get_mut(key) {
            Some(entry) => {
                debug_assert!(
                    entry.versions.last().is_none_or(|v| v.revision() < rev),
                    "index: {rev:?} is not after the key's newest version"
                );
                entry.versions.push(version);
            }
            None => {
                let mut versions = Versions::new();
                versions.push(version);
                let meta = Meta::default();
                self.keys.insert(key.into(), Key { versions, meta });
            }
        }
    }

    /// Where the current version of `key` is, if the key exists.
    pub fn latest(&self, key: &[u8]) -> Option<Revision> {
        self.live(key).map(|(rev, _)| rev)
    }

    /// Where the current version of `key` is and what it holds besides its
    /// value, if the key exists.
    pub fn live(&self, key: &[u8]) -> Option<(Revision, Meta)> {
        self.keys.get(key)?.live()
    }

    /// Where the version of `key` live at `revision` is, if any.
    pub fn at(&self, key: &[u8], revision: i64) -> Option<Revision> {
        live_at(&self.keys.get(key)?.versions, revision)
    }

    /// Where the version of `key` live just before `revision` is, if any.
    pub fn before(&self, key: &[u8], revision: i64) -> Option<Revision> {
        live_at(&self.keys.get(key)?.versions, revision - 1)
    }

    /// Every key in `[lo, hi)` live at `revision`, in key order, with
    /// where its version is.
    pub fn range<'a>(
        &'a self,
        lo: Bound<&'a [u8]>,
        hi: Bound<&'a [u8]>,
        revision: i64,
    ) -> impl Iterator<Item = (&'a [u8], Revision)> + 'a {
        // BTreeMap::range panics on bounds that enclose nothing.
        let encloses = match (lo, hi) {
            (Bound::Included(l), Bound::Included(h)) => l <= h,
            (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(h))
            | (Bound::Excluded(l), Bound::Included(h)) => l < h,
            _ => true,
        };
        encloses
            .then(|| self.keys.range::<[u8], _>((lo, hi)))
            .into_iter()
            .flatten()
            .filter_map(move |(key, entry)| Some((&key[..], live_at(&entry.versions, revision)?)))
    }

    /// Compacts at `at`: for each key, every version older than its newest
    /// one at or below `at` goes, and that newest one goes too when it is a
    /// deletion older than `at`. Returns where the removed versions' records
    /// are, for the caller to delete. Keys left without versions are gone.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut doomed = Vec::new();
        self.keys.retain(|_, Key { versions, .. }| {
            let below = versions.partition_point(|v| v.main <= at);
            if below == 0 {
                return true;
            }
            let newest = versions[below - 1];
            let drop = if newest.tombstone && newest.main < at {
                below
            } else {
                below - 1
            };
            doomed.extend(versions[..drop].iter().map(|v| v.revision()));
            versions.drain(..drop);
            !versions.is_empty()
        });
        doomed
    }

    /// Keys that have any retained version (live or deleted).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    fn meta(create_revision: i64, version: i64) -> Meta {
        Meta {
            create_revision,
            version,
            lease: 0,
        }
    }

    fn all(index: &KeyIndex, revision: i64) -> Vec<(String, i64)> {
        index
            .range(Bound::Unbounded, Bound::Unbounded, revision)
            .map(|(k, r)| (String::from_utf8(k.to_vec()).unwrap(), r.main))
            .collect()
    }

    /// a@2 b@3 a@4 del b@5 c@6
    fn sample() -> KeyIndex {
        let mut index = KeyIndex::new();
        index.push_put(b"a", rev(2), meta(2, 1));
        index.push_put(b"b", rev(3), meta(3, 1));
        index.push_put(b"a", rev(4), meta(2, 2));
        index.push_delete(b"b", rev(5));
        index.push_put(b"c", rev(6), meta(6, 1));
        index
    }

    #[test]
    fn reads_see_the_version_live_at_their_revision() {
        let index = sample();
        assert_eq!(index.latest(b"a"), Some(rev(4)));
        assert_eq!(index.latest(b"b"), None);
        assert_eq!(index.latest(b"zz"), None);
        assert_eq!(index.at(b"a", 1), None);
        assert_eq!(index.at(b"a", 3), Some(rev(2)));
        assert_eq!(index.at(b"b", 4), Some(rev(3)));
        assert_eq!(index.at(b"b", 5), None);
        assert_eq!(index.before(b"a", 4), Some(rev(2)));
        assert_eq!(index.before(b"b", 6), None);
        assert_eq!(index.before(b"a", 2), None);
        assert_eq!(all(&index, 6), [("a".into(), 4), ("c".into(), 6)]);
        assert_eq!(all(&index, 3), [("a".into(), 2), ("b".into(), 3)]);
        let bc: Vec<_> = index
            .range(Bound::Included(b"b"), Bound::Excluded(b"d"), 4)
            .map(|(k, r)| (k.to_vec(), r.main))
            .collect();
        assert_eq!(bc, [(b"b".to_vec(), 3)]);
        // Bounds that enclose nothing give nothing (and do not panic).
        let none = index.range(Bound::Included(b"c"), Bound::Excluded(b"a"), 6);
        assert_eq!(none.count(), 0);
        let none = index.range(Bound::Included(b"c"), Bound::Excluded(b"c"), 6);
        assert_eq!(none.count(), 0);
    }

    #[test]
    fn a_live_key_tells_what_its_newest_put_left() {
        let mut index = sample();
        assert_eq!(index.live(b"a"), Some((rev(4), meta(2, 2))));
        assert_eq!(index.live(b"b"), None, "deleted");
        assert_eq!(index.live(b"zz"), None);
        let leased = Meta {
            lease: 7,
            ..meta(2, 3)
        };
        index.push_put(b"a", rev(7), leased);
        assert_eq!(index.live(b"a"), Some((rev(7), leased)));
        // Compaction keeps the newest version, and with it the meta.
        index.compact(7);
        assert_eq!(index.live(b"a"), Some((rev(7), leased)));
        // A put sees the live version it supersedes, once.
        let next = |prior: Option<(Revision, Meta)>| {
            let (_, p) = prior.expect("a is live");
            Meta {
                version: p.version + 1,
                ..p
            }
        };
        let (prior, now) = index.put(b"a", rev(9), next);
        assert_eq!(prior, Some((rev(7), leased)));
        assert_eq!(now.version, 4);
        assert_eq!(index.live(b"a"), Some((rev(9), now)));
        let (prior, _) = index.put(b"new", rev(10), |prior| {
            assert_eq!(prior, None);
            meta(10, 1)
        });
        assert_eq!(prior, None);
        // A put after a deletion starts afresh.
        index.push_put(b"b", rev(8), meta(8, 1));
        assert_eq!(index.live(b"b"), Some((rev(8), meta(8, 1))));
    }

    #[test]
    fn subs_order_changes_within_one_revision() {
        let mut index = KeyIndex::new();
        index.push_put(b"x", Revision::new(7, 0), meta(7, 1));
        index.push_put(b"y", Revision::new(7, 1), meta(7, 1));
        assert_eq!(index.latest(b"y"), Some(Revision::new(7, 1)));
        assert_eq!(index.at(b"y", 7), Some(Revision::new(7, 1)));
        assert_eq!(index.at(b"y", 6), None);
    }

    #[test]
    fn compaction_keeps_the_newest_version_at_or_below_it() {
        let mut index = sample();
        let mut doomed = index.compact(4);
        doomed.sort();
        // a@2 is superseded by a@4; b@3 is the newest of b at 4 and stays.
        assert_eq!(doomed, [rev(2)]);
        assert_eq!(all(&index, 4), [("a".into(), 4), ("b".into(), 3)]);
        // At 6, b's newest version is its deletion at 5: both go, and b
        // leaves the index.
        let mut doomed = index.compact(6);
        doomed.sort();
        assert_eq!(doomed, [rev(3), rev(5)]);
        assert_eq!(index.key_count(), 2);
        assert_eq!(all(&index, 6), [("a".into(), 4), ("c".into(), 6)]);
    }

    #[test]
    fn a_deletion_at_the_compact_revision_stays() {
        let mut index = sample();
        let mut doomed = index.compact(5);
        doomed.sort();
        assert_eq!(doomed, [rev(2), rev(3)]);
        // b's deletion at 5 is still there for a watch from revision 5.
        assert_eq!(index.at(b"b", 5), None);
        assert_eq!(index.key_count(), 3);
    }
}

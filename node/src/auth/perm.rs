//! Key ranges as half-open intervals, and sets of them: what a role's
//! permissions cover and whether a request's range lies inside.
//!
//! etcd's conventions (the same as Range, DeleteRange and Watch):
//! - `range_end` empty: the single key, here `[key, key + "\0")`;
//! - `range_end` = `"\0"`: every key from `key` on, `[key, ∞)`;
//! - otherwise `[key, range_end)`.
//!
//! A request is permitted when its whole interval lies inside the union of
//! the granted intervals (etcd's range permission cache does the same with
//! merged intervals).

/// The end of an interval: a key (excluded), or past every key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    Key(Vec<u8>),
    /// Declared last, so it compares above every key.
    Unbounded,
}

/// `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub start: Vec<u8>,
    pub end: End,
}

impl Interval {
    /// The interval `(key, range_end)` names, by etcd's conventions.
    pub fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut next = key.to_vec();
                next.push(0);
                End::Key(next)
            }
            [0] => End::Unbounded,
            end => End::Key(end.to_vec()),
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }

    /// True when no key lies inside (`range_end <= key`).
    pub fn is_empty(&self) -> bool {
        match &self.end {
            End::Key(end) => end.as_slice() <= self.start.as_slice(),
            End::Unbounded => false,
        }
    }
}

/// A union of intervals, kept sorted and merged: no two overlap or touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermSet {
    merged: Vec<Interval>,
}

impl PermSet {
    /// Merges `intervals` (in any order, possibly overlapping).
    pub fn new(mut intervals: Vec<Interval>) -> PermSet {
        intervals.retain(|iv| !iv.is_empty());
        intervals.sort_by(|a, b| a.start.cmp(&b.start));
        let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
        for iv in intervals {
            if let Some(last) = merged.last_mut() {
                // Touching counts: [a, b) and [b, c) cover [a, c).
                let touches = match &last.end {
                    End::Unbounded => true,
                    End::Key(end) => iv.start.as_slice() <= end.as_slice(),
                };
                if touches {
                    if iv.end > last.end {
                        last.end = iv.end;
                    }
                    continue;
                }
            }
            merged.push(iv);
        }
        PermSet { merged }
    }

    /// Whether every key of `[key, range_end)` is in the set. An empty
    /// request range is judged by its start key alone.
    pub fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        let wanted = Interval::of(key, range_end);
        let wanted = if wanted.is_empty() {
            Interval::of(key, &[])
        } else {
            wanted
        };
        // The only candidate is the last merged interval starting at or
        // before the wanted start.
        let idx = self
            .merged
            .partition_point(|iv| iv.start.as_slice() <= wanted.start.as_slice());
        match idx.checked_sub(1).map(|i| &self.merged[i]) {
            Some(iv) => iv.end >= wanted.end,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(&str, &str)]) -> PermSet {
        PermSet::new(
            ranges
                .iter()
                .map(|(k, e)| Interval::of(k.as_bytes(), e.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn a_single_key_covers_only_itself() {
        let s = set(&[("foo", "")]);
        assert!(s.covers(b"foo", b""));
        assert!(!s.covers(b"foo0", b""));
        assert!(!s.covers(b"fo", b""));
        assert!(
            !s.covers(b"foo", b"fop"),
            "a prefix range is more than the key"
        );
    }

    #[test]
    fn a_prefix_covers_keys_and_subranges_inside() {
        let s = set(&[("dir/", "dir0")]);
        assert!(s.covers(b"dir/a", b""));
        assert!(s.covers(b"dir/", b"dir0"));
        assert!(s.covers(b"dir/a", b"dir/b"));
        assert!(!s.covers(b"dir0", b""));
        assert!(!s.covers(b"dir/a", b"dir1"), "partly outside");
        assert!(!s.covers(b"di", b"dir/b"), "starts outside");
        assert!(!s.covers(b"dir/a", b"\0"), "open-ended is outside");
    }

    #[test]
    fn from_key_covers_everything_after() {
        let s = set(&[("m", "\0")]);
        assert!(s.covers(b"m", b""));
        assert!(s.covers(b"zzz", b"\0"));
        assert!(!s.covers(b"a", b""));
        assert!(!s.covers(b"a", b"\0"));
    }

    #[test]
    fn touching_and_overlapping_grants_merge() {
        let s = set(&[("c", "e"), ("a", "c"), ("d", "g")]);
        assert!(s.covers(b"a", b"g"));
        assert!(!s.covers(b"a", b"h"));
        let gap = set(&[("a", "b"), ("c", "d")]);
        assert!(!gap.covers(b"a", b"d"));
        assert!(gap.covers(b"c", b""));
        // A single key next to a range it touches: [b, b\0) + [b\0, c).
        let joined = set(&[("b", ""), ("b\0", "c")]);
        assert!(joined.covers(b"b", b"c"));
    }

    #[test]
    fn empty_grants_and_empty_sets_cover_nothing() {
        assert!(!PermSet::default().covers(b"a", b""));
        let s = set(&[("b", "a")]);
        assert!(!s.covers(b"a", b""));
        assert!(!s.covers(b"b", b""));
    }

    #[test]
    fn an_empty_request_range_is_judged_by_its_key() {
        let s = set(&[("k", "")]);
        assert!(s.covers(b"k", b"a"));
        assert!(!s.covers(b"j", b"a"));
    }

    #[test]
    fn every_key_needs_an_unbounded_grant_from_the_smallest_key() {
        let all = set(&[("\0", "\0")]);
        assert!(all.covers(b"\0", b"\0"));
        assert!(all.covers(b"anything", b""));
        assert!(!set(&[("a", "\0")]).covers(b"\0", b"\0"));
    }
}

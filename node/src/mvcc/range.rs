//! etcd's key-range conventions, shared by Range, DeleteRange, Watch and
//! Compare:
//!
//! | range_end            | meaning                      |
//! |----------------------|------------------------------|
//! | empty                | the single key `key`         |
//! | `"\0"`               | every key `>= key`           |
//! | greater than `key`   | the half-open range `[key, range_end)` |
//! | not greater than key | nothing                      |
//!
//! A prefix is `[p, prefix_end(p))`; `key = "\0", range_end = "\0"` is
//! every key.

use std::ops::Bound;

/// Lower and upper bound over user keys.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The set of keys a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key.
    Single(Vec<u8>),
    /// Every key `>= start`.
    From(Vec<u8>),
    /// The half-open interval `[start, end)`, with `start < end`.
    Between(Vec<u8>, Vec<u8>),
    /// No key at all (range_end not above key).
    Empty,
}

impl KeyRange {
    /// Interprets a `(key, range_end)` pair as etcd does.
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        if range_end.is_empty() {
            KeyRange::Single(key.to_vec())
        } else if range_end == [0] {
            KeyRange::From(key.to_vec())
        } else if range_end > key {
            KeyRange::Between(key.to_vec(), range_end.to_vec())
        } else {
            KeyRange::Empty
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_slice() == key,
            KeyRange::From(start) => key >= start.as_slice(),
            KeyRange::Between(start, end) => key >= start.as_slice() && key < end.as_slice(),
            KeyRange::Empty => false,
        }
    }

    /// The range as bounds over user keys, or `None` when it is empty.
    pub fn bounds(&self) -> Option<KeyBounds<'_>> {
        match self {
            KeyRange::Single(k) => Some((Bound::Included(k), Bound::Included(k))),
            KeyRange::From(start) => Some((Bound::Included(start), Bound::Unbounded)),
            KeyRange::Between(start, end) => Some((Bound::Included(start), Bound::Excluded(end))),
            KeyRange::Empty => None,
        }
    }

    /// Whether two ranges share at least one key (used to refuse a txn that
    /// writes the same key twice).
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let (Some((a_lo, a_hi)), Some((b_lo, b_hi))) = (self.bounds(), other.bounds()) else {
            return false;
        };
        below_upper(a_lo, b_hi) && below_upper(b_lo, a_hi)
    }
}

/// Whether a lower bound lies at or below an upper bound, i.e. the two can
/// enclose a key.
fn below_upper(lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    let Bound::Included(lo) = lo else {
        return true;
    };
    match hi {
        Bound::Included(hi) => lo <= hi,
        Bound::Excluded(hi) => lo < hi,
        Bound::Unbounded => true,
    }
}

/// The range_end that makes `[prefix, end)` cover every key starting with
/// `prefix`: the last byte below 0xff incremented, trailing 0xff dropped.
/// A prefix of only 0xff bytes (or empty) covers everything: `"\0"`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_range_end_is_a_single_key() {
        let r = KeyRange::new(b"foo", b"");
        assert!(r.contains(b"foo"));
        assert!(!r.contains(b"foo1"));
        assert!(!r.contains(b"fo"));
    }

    #[test]
    fn zero_range_end_is_every_key_from() {
        let r = KeyRange::new(b"b", b"\0");
        assert!(r.contains(b"b"));
        assert!(r.contains(b"zzz"));
        assert!(!r.contains(b"a"));
        let all = KeyRange::new(b"\0", b"\0");
        assert!(all.contains(b"\0"));
        assert!(all.contains(b"a"));
    }

    #[test]
    fn prefix_end_increments_last_byte_dropping_ff() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"ab\xff\xff"), b"ac");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
        let r = KeyRange::new(b"foo/", &prefix_end(b"foo/"));
        assert!(r.contains(b"foo/"));
        assert!(r.contains(b"foo/bar"));
        assert!(!r.contains(b"foo0"));
        assert!(!r.contains(b"fop"));
    }

    #[test]
    fn range_end_not_above_key_is_empty() {
        assert_eq!(KeyRange::new(b"b", b"a"), KeyRange::Empty);
        assert_eq!(KeyRange::new(b"b", b"b"), KeyRange::Empty);
        assert!(!KeyRange::Empty.contains(b"b"));
    }

    #[test]
    fn half_open_interval() {
        let r = KeyRange::new(b"a", b"c");
        assert!(r.contains(b"a"));
        assert!(r.contains(b"bzz"));
        assert!(!r.contains(b"c"));
    }

    #[test]
    fn overlap_rules() {
        let single = KeyRange::new(b"b", b"");
        assert!(single.overlaps(&KeyRange::new(b"b", b"")));
        assert!(!single.overlaps(&KeyRange::new(b"c", b"")));
        assert!(single.overlaps(&KeyRange::new(b"a", b"c")));
        assert!(!single.overlaps(&KeyRange::new(b"c", b"d")));
        assert!(!KeyRange::new(b"a", b"b").overlaps(&KeyRange::new(b"b", b"c")));
        assert!(KeyRange::new(b"a", b"\0").overlaps(&KeyRange::new(b"z", b"")));
        assert!(!KeyRange::Empty.overlaps(&single));
    }
}

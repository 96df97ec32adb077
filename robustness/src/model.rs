//! The etcd model with revisions: one store whose revision grows by one
//! per modifying request, replayed write by write in revision order. The
//! replay answers "what did key k (or prefix p) hold at revision r" and
//! "which events did revision r produce", which the checkers compare with
//! what clients and watchers were told.

use std::collections::BTreeMap;

use crate::history::{Event, EventType, Kv, Request};

/// The store after every revision of a run.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    /// Revision before the first write of the run.
    pub start: i64,
    /// Last revision replayed.
    pub last: i64,
    /// The events each revision produced, in order.
    pub events: BTreeMap<i64, Vec<Event>>,
    /// Per key: (revision, value from then on; `None` once deleted).
    versions: BTreeMap<String, Vec<(i64, Option<Kv>)>>,
    state: BTreeMap<String, Kv>,
}

impl Replay {
    pub fn new(start: i64) -> Replay {
        Replay {
            start,
            last: start,
            ..Replay::default()
        }
    }

    /// What `key` held at `revision`.
    pub fn get_at(&self, key: &str, revision: i64) -> Option<&Kv> {
        let versions = self.versions.get(key)?;
        let at = versions.partition_point(|(r, _)| *r <= revision);
        at.checked_sub(1).and_then(|i| versions[i].1.as_ref())
    }

    /// Every key-value under `prefix` (or exactly `key` when not a prefix)
    /// at `revision`, sorted by key.
    pub fn range_at(&self, key: &str, prefix: bool, revision: i64) -> Vec<Kv> {
        if !prefix {
            return self.get_at(key, revision).cloned().into_iter().collect();
        }
        self.versions
            .keys()
            .filter(|k| k.starts_with(key))
            .filter_map(|k| self.get_at(k, revision).cloned())
            .collect()
    }

    /// What `key` holds now (after [`Replay::last`]).
    pub fn current(&self, key: &str) -> Option<&Kv> {
        self.state.get(key)
    }

    /// Applies `request` as revision `last + 1`. Returns the previous value
    /// of its key, or why the model refuses it (a delete of an absent key or
    /// a txn whose guard is false creates no revision).
    pub fn apply(&mut self, request: &Request) -> Result<Option<Kv>, String> {
        let revision = self.last + 1;
        let key = request.key().to_owned();
        let prev = self.state.get(&key).cloned();
        let (event, after) = match request {
            Request::Get { .. } => return Err("a read creates no revision".into()),
            Request::Delete { .. } => {
                let Some(prev) = &prev else {
                    return Err(format!("delete of {key:?}, which is absent"));
                };
                let gone = Kv {
                    key: key.clone(),
                    value: String::new(),
                    create_revision: 0,
                    mod_revision: revision,
                    version: 0,
                    lease: 0,
                };
                let _ = prev;
                (
                    Event {
                        kind: EventType::Delete,
                        kv: gone,
                    },
                    None,
                )
            }
            Request::CasPut {
                expect_mod_revision,
                value,
                ..
            } => {
                let held = prev.as_ref().map_or(0, |kv| kv.mod_revision);
                if held != *expect_mod_revision {
                    return Err(format!(
                        "txn on {key:?} guarded on mod_revision {expect_mod_revision}, \
                         but the key's mod_revision is {held}"
                    ));
                }
                let kv = put_kv(&key, value, 0, prev.as_ref(), revision);
                (
                    Event {
                        kind: EventType::Put,
                        kv: kv.clone(),
                    },
                    Some(kv),
                )
            }
            Request::Put { value, lease, .. } => {
                let kv = put_kv(&key, value, *lease, prev.as_ref(), revision);
                (
                    Event {
                        kind: EventType::Put,
                        kv: kv.clone(),
                    },
                    Some(kv),
                )
            }
        };
        match &after {
            Some(kv) => self.state.insert(key.clone(), kv.clone()),
            None => self.state.remove(&key),
        };
        self.versions
            .entry(key)
            .or_default()
            .push((revision, after));
        self.events.entry(revision).or_default().push(event);
        self.last = revision;
        Ok(prev)
    }
}

fn put_kv(key: &str, value: &str, lease: i64, prev: Option<&Kv>, revision: i64) -> Kv {
    Kv {
        key: key.to_owned(),
        value: value.to_owned(),
        create_revision: prev.map_or(revision, |p| p.create_revision),
        mod_revision: revision,
        version: prev.map_or(1, |p| p.version + 1),
        lease,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    #[test]
    fn replay_tracks_versions_and_events() {
        let mut r = Replay::new(1);
        assert_eq!(r.apply(&put("a", "1")).unwrap(), None);
        let prev = r.apply(&put("a", "2")).unwrap().unwrap();
        assert_eq!((prev.value.as_str(), prev.mod_revision), ("1", 2));
        r.apply(&Request::Delete { key: "a".into() }).unwrap();
        assert!(r.apply(&Request::Delete { key: "a".into() }).is_err());
        assert_eq!(r.get_at("a", 2).unwrap().value, "1");
        let at3 = r.get_at("a", 3).unwrap();
        assert_eq!((at3.create_revision, at3.version), (2, 2));
        assert_eq!(r.get_at("a", 4), None);
        assert_eq!(r.get_at("a", 1), None);
        assert_eq!(r.events[&4][0].kind, EventType::Delete);
        let cas = Request::CasPut {
            key: "a".into(),
            expect_mod_revision: 0,
            expect_value: None,
            value: "3".into(),
        };
        r.apply(&cas).unwrap();
        assert_eq!(r.get_at("a", 5).unwrap().create_revision, 5);
        assert!(r.apply(&cas).is_err(), "the guard no longer holds");
    }
}

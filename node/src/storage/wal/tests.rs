use std::ops::Bound::{Included, Unbounded};

use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::proto::etcdserverpb::PutRequest;
use crate::proto::witanpb::InternalRequest;
use crate::proto::witanpb::internal_request::Request;
use crate::raft::types::Batch;

fn id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// An entry carrying one put of `value_bytes` bytes.
fn entry(term: u64, index: u64, value_bytes: usize) -> Entry {
    Entry {
        log_id: id(term, index),
        payload: EntryPayload::Normal(Batch(vec![InternalRequest {
            request: Some(Request::Put(PutRequest {
                key: format!("k{index}").into_bytes(),
                value: vec![b'v'; value_bytes],
                ..Default::default()
            })),
            ..Default::default()
        }])),
    }
}

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|i| entry(term, i, 16)).collect()
}

fn all(wal: &Wal) -> Vec<LogId> {
    wal.read(Unbounded, Unbounded)
        .unwrap()
        .into_iter()
        .map(|e| e.log_id)
        .collect()
}

fn ids(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<LogId> {
    indexes.map(|i| id(term, i)).collect()
}

fn segments(dir: &Path) -> Vec<u64> {
    segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|(f, _)| f)
        .collect()
}

#[test]
fn appended_entries_read_back_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.log_state(), (None, None));
    wal.append(&entries(1, 0..=4)).unwrap();
    wal.sync().unwrap();
    assert_eq!(all(&wal), ids(1, 0..=4));
    let two = wal.read(Included(2), Included(3)).unwrap();
    assert_eq!(two, vec![entry(1, 2, 16), entry(1, 3, 16)]);
    drop(wal);

    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.log_state(), (None, Some(id(1, 4))));
    assert_eq!(all(&wal), ids(1, 0..=4));
    wal.append(&entries(1, 5..=5)).unwrap();
    assert_eq!(wal.last_log_id(), Some(id(1, 5)));
}

#[test]
fn an_entry_out_of_order_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    wal.append(&entries(1, 1..=2)).unwrap();
    let err = wal.append(&entries(1, 4..=4)).unwrap_err();
    assert!(matches!(
        err,
        WalError::OutOfOrder {
            found: 4,
            expected_after: Some(2)
        }
    ));
    assert_eq!(wal.last_log_id(), Some(id(1, 2)));
}

#[test]
fn the_vote_is_kept_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.vote(), None);
    let vote = Vote::new(3, 2);
    wal.save_vote(&vote).unwrap();
    drop(wal);
    assert_eq!(Wal::open(dir.path()).unwrap().vote(), Some(vote));
}

#[test]
fn a_torn_last_record_is_cut_off_and_appends_go_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    wal.append(&entries(1, 1..=3)).unwrap();
    let end = wal.state().write_offset;
    drop(wal);
    // The last record's tail never reached the disk.
    let (_, path) = segment::list(dir.path()).unwrap().pop().unwrap();
    let file = segment::open(&path).unwrap();
    file.write_all_at(&[0; 4], end - 4).unwrap();

    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(all(&wal), ids(1, 1..=2));
    wal.append(&entries(2, 3..=3)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(all(&wal), vec![id(1, 1), id(1, 2), id(2, 3)]);
}

#[test]
fn appends_move_to_a_new_segment_when_one_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with_segment_bytes(dir.path(), 4096).unwrap();
    for i in 1..=20 {
        wal.append(&[entry(1, i, 1000)]).unwrap();
    }
    let files = segments(dir.path());
    assert!(files.len() >= 5, "segments {files:?}");
    assert_eq!(files[0], 1);
    drop(wal);
    let wal = Wal::open_with_segment_bytes(dir.path(), 4096).unwrap();
    assert_eq!(all(&wal), ids(1, 1..=20));
}

#[test]
fn a_torn_record_before_the_last_segment_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with_segment_bytes(dir.path(), 4096).unwrap();
    for i in 1..=10 {
        wal.append(&[entry(1, i, 1000)]).unwrap();
    }
    drop(wal);
    let (_, first) = segment::list(dir.path()).unwrap().remove(0);
    segment::open(&first)
        .unwrap()
        .write_all_at(b"xx", 20)
        .unwrap();
    let err = Wal::open_with_segment_bytes(dir.path(), 4096)
        .err()
        .expect("damage is refused");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

#[test]
fn truncating_drops_the_entries_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with_segment_bytes(dir.path(), 4096).unwrap();
    for i in 1..=12 {
        wal.append(&[entry(1, i, 1000)]).unwrap();
    }
    let before = segments(dir.path()).len();
    wal.truncate(3).unwrap();
    assert!(segments(dir.path()).len() < before);
    assert_eq!(wal.last_log_id(), Some(id(1, 2)));
    // The new leader's entry 3 is shorter: nothing of the old entries 3.. may
    // come back behind it.
    wal.append(&[entry(2, 3, 10)]).unwrap();
    drop(wal);
    let wal = Wal::open_with_segment_bytes(dir.path(), 4096).unwrap();
    assert_eq!(all(&wal), vec![id(1, 1), id(1, 2), id(2, 3)]);
    wal.truncate(99).unwrap();
    assert_eq!(wal.last_log_id(), Some(id(2, 3)));
}

#[test]
fn purging_removes_whole_segments_and_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with_segment_bytes(dir.path(), 4096).unwrap();
    for i in 1..=20 {
        wal.append(&[entry(1, i, 1000)]).unwrap();
    }
    let before = segments(dir.path());
    wal.purge(id(1, 10)).unwrap();
    let after = segments(dir.path());
    assert!(after.len() < before.len());
    assert!(
        after[0] <= 11,
        "the segment holding entry 11 stays: {after:?}"
    );
    assert_eq!(wal.log_state(), (Some(id(1, 10)), Some(id(1, 20))));
    assert_eq!(all(&wal), ids(1, 11..=20));
    drop(wal);
    let wal = Wal::open_with_segment_bytes(dir.path(), 4096).unwrap();
    assert_eq!(wal.log_state(), (Some(id(1, 10)), Some(id(1, 20))));
    assert_eq!(all(&wal), ids(1, 11..=20));
}

#[test]
fn purging_at_the_end_of_the_log_keeps_appending_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    wal.append(&entries(1, 1..=5)).unwrap();
    wal.purge(id(1, 5)).unwrap();
    assert_eq!(wal.log_state(), (Some(id(1, 5)), Some(id(1, 5))));
    wal.append(&entries(1, 6..=7)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(all(&wal), ids(1, 6..=7));
}

#[test]
fn purging_past_the_end_starts_the_log_after_the_purge_point() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    wal.append(&entries(1, 1..=5)).unwrap();
    // A snapshot up to 100 was installed from the leader.
    wal.purge(id(3, 100)).unwrap();
    assert_eq!(segments(dir.path()), vec![101]);
    assert_eq!(wal.log_state(), (Some(id(3, 100)), Some(id(3, 100))));
    assert!(wal.append(&entries(3, 50..=50)).is_err());
    wal.append(&entries(3, 101..=102)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.log_state(), (Some(id(3, 100)), Some(id(3, 102))));
    assert_eq!(all(&wal), ids(3, 101..=102));
}

#[test]
fn the_first_entry_names_the_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(segments(dir.path()), vec![0]);
    wal.append(&entries(1, 7..=8)).unwrap();
    assert_eq!(segments(dir.path()), vec![7]);
    drop(wal);
    assert_eq!(all(&Wal::open(dir.path()).unwrap()), ids(1, 7..=8));
}

#[test]
fn the_log_is_durable_as_far_as_its_last_sync_and_no_further() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    let durable = wal.durable();
    assert_eq!(durable.upto(), None);
    wal.append(&entries(1, 0..=4)).unwrap();
    assert_eq!(durable.upto(), None, "written is not durable");
    wal.sync().unwrap();
    assert_eq!(durable.upto(), Some(id(1, 4)));

    // A follower's conflicting tail goes: so does its durability.
    wal.append(&entries(1, 5..=6)).unwrap();
    wal.sync().unwrap();
    wal.truncate(3).unwrap();
    assert_eq!(durable.upto(), Some(id(1, 2)));
    wal.append(&entries(2, 3..=3)).unwrap();
    assert_eq!(durable.upto(), Some(id(1, 2)));
    wal.sync().unwrap();
    assert_eq!(durable.upto(), Some(id(2, 3)));

    // What is purged is held by the state machine.
    wal.purge(id(3, 9)).unwrap();
    assert_eq!(durable.upto(), Some(id(3, 9)));
    drop(wal);

    // Reopened, whatever the file holds is durable.
    let wal = Wal::open(dir.path()).unwrap();
    wal.append(&entries(3, 10..=11)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.durable().upto(), Some(id(3, 11)));
}

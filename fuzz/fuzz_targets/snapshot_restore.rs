//! The snapshot file reader behind `witan snapshot status` and `witan
//! snapshot restore`. The first byte picks how the rest is used: as a whole
//! file (the framing checks: magic, format, size, padding, checksum), or as
//! a body that is framed and sealed here with a correct length, padding and
//! SHA-256 trailer, so the fuzzer reaches the MessagePack decoding behind
//! the checksum. Whatever decodes is restored into a fresh data dir (on
//! tmpfs when there is one), which is then opened and read back through
//! the MVCC read path, as the first start of a restored member would.

#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use witan_node::storage::backup::{SnapshotFile, seal};
use witan_node::storage::restore::{restore, status};
use witan_node::storage::snapshot::{IMAGE_FORMAT, SnapshotImage};

/// Where restores go: tmpfs when the machine has it (no disk I/O per
/// input), else the system's temp dir.
fn scratch_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn check(raw: &[u8]) {
    let summary = status(raw);
    let Ok(parent) = tempfile::tempdir_in(scratch_parent()) else {
        return;
    };
    let dir = parent.path().join("restored");
    let restored = restore(raw, &dir);
    assert_eq!(
        summary.is_ok(),
        restored.is_ok(),
        "status and restore disagree: {summary:?} vs {restored:?}"
    );
    match restored {
        Ok(_) => witan_fuzz::read_restored(&dir),
        Err(_) => assert!(!dir.exists(), "a failed restore left {}", dir.display()),
    }
}

fn seeds() -> Vec<Vec<u8>> {
    use serde_bytes::ByteBuf;
    let kv = |key: &[u8], value: &[u8], rev: i64| {
        prost::Message::encode_to_vec(&witan_node::proto::mvccpb::KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: 2,
            mod_revision: rev,
            version: 1,
            lease: 0,
        })
    };
    let record = || {
        let mut record = vec![0];
        record.extend(kv(b"a", b"1", 3));
        ByteBuf::from(record)
    };
    // The current format (records by revision) and format 1 (key-ordered
    // rows, converted on restore: its consistency checks are a target too).
    let current = SnapshotImage {
        format: IMAGE_FORMAT,
        revision: 3,
        compact_revision: 2,
        records: vec![(3, 0, record())],
        ..Default::default()
    };
    let key_ordered = SnapshotImage {
        format: 1,
        revision: 3,
        compact_revision: 2,
        latest: vec![(
            ByteBuf::from(b"a".to_vec()),
            ByteBuf::from(kv(b"a", b"1", 3)),
        )],
        history: vec![(ByteBuf::from(b"a".to_vec()), 3, record())],
        revs: vec![(3, 0, ByteBuf::from(b"a".to_vec()))],
        ..Default::default()
    };
    let file = |image| SnapshotFile {
        cluster_id: 1,
        member_id: 2,
        member_name: "m".into(),
        etcd_version: "3.6.0".into(),
        applied_term: 2,
        applied_index: 5,
        image,
    };
    let with_mode = |mode: u8, rest: &[u8]| {
        let mut out = vec![mode];
        out.extend_from_slice(rest);
        out
    };
    let mut seeds = vec![with_mode(
        1,
        &rmp_serde::to_vec(&SnapshotFile::default()).expect("seed encodes"),
    )];
    for image in [current, key_ordered] {
        let file = file(image);
        seeds.push(with_mode(0, &file.encode()));
        seeds.push(with_mode(
            1,
            &rmp_serde::to_vec(&file).expect("seed encodes"),
        ));
    }
    seeds
}

fuzz_target!(
    init: witan_fuzz::write_seeds_if_asked(seeds),
    |data: &[u8]| {
        match data.split_first() {
            Some((mode, rest)) if mode % 2 == 1 => check(&seal(rest)),
            Some((_, rest)) => check(rest),
            None => check(data),
        }
    }
);

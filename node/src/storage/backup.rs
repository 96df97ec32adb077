//! Snapshot files: what `Maintenance.Snapshot` streams and `etcdctl
//! snapshot save` writes to disk, and what a later `witan snapshot restore`
//! reads back.
//!
//! Layout (integers little-endian):
//!
//! | offset | size | content |
//! | --- | --- | --- |
//! | 0 | 8 | magic `WITANSNP` |
//! | 8 | 4 | file format version (u32, currently 1) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | body length `n` (u64) |
//! | 24 | n | body: [`SnapshotFile`] as MessagePack |
//! | 24 + n | p | zero padding, so that `24 + n + p` is a multiple of 512 |
//! | 24 + n + p | 32 | SHA-256 of every byte before it |
//!
//! The body holds the member identity (cluster id, member id, name), the
//! etcd-compatible version and the last applied Raft log id of the member
//! that produced it, and a [`SnapshotImage`]: every state-machine table as
//! read through one redb read transaction, so the file is one consistent
//! point in time (the image's `revision`).
//!
//! The padding and the trailer are etcd's convention: a file whose size is
//! `512·k + 32` ends with the SHA-256 of the rest, which is what etcd's
//! restore tooling checks. The format version is bumped on any change to
//! the header or the body's framing; the image in the body carries its own
//! layout version (`snapshot::IMAGE_FORMAT`). [`decode`] refuses versions
//! it does not know.

use prost::Message;
use redb::ReadTransaction;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::snapshot::SnapshotImage;
use super::{META, StorageError, meta_key, meta_rmp};
use crate::proto::witanpb::MemberIdentity;
use crate::raft::types::LogId;

/// First eight bytes of every witan snapshot file.
pub const MAGIC: [u8; 8] = *b"WITANSNP";
/// The snapshot file format this build writes and the only one it reads.
pub const FILE_FORMAT: u32 = 1;
/// Bytes before the body: magic, format, reserved, body length.
pub const HEADER_LEN: usize = 24;
/// Header, body and padding together are a multiple of this.
pub const ALIGN: usize = 512;
/// The SHA-256 trailer.
pub const CHECKSUM_LEN: usize = 32;

/// The body of a snapshot file.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotFile {
    pub cluster_id: u64,
    pub member_id: u64,
    pub member_name: String,
    /// The etcd version the producing member reported.
    pub etcd_version: String,
    /// Last applied Raft log id (term, index) covered by the image; (0, 0)
    /// when nothing was applied yet.
    pub applied_term: u64,
    pub applied_index: u64,
    pub image: SnapshotImage,
}

/// Why a byte string is not a valid snapshot file.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFileError {
    #[error(
        "snapshot file is {len} bytes, too short for a header and checksum (at least {} bytes)",
        ALIGN + CHECKSUM_LEN
    )]
    TooShort { len: usize },
    #[error("not a witan snapshot file (bad magic)")]
    BadMagic,
    #[error("snapshot file format {found} is not supported (this build reads {FILE_FORMAT})")]
    UnsupportedFormat { found: u32 },
    #[error(
        "snapshot file is {len} bytes, not 512·k + 32: truncated or extended \
         (expected {expected} bytes from its header)"
    )]
    BadSize { len: usize, expected: usize },
    #[error("snapshot file checksum mismatch: trailer says {expected}, content hashes to {found}")]
    ChecksumMismatch { expected: String, found: String },
    #[error("snapshot file has non-zero bytes in its padding or reserved field")]
    BadPadding,
    #[error("snapshot file body: {0}")]
    Body(String),
}

impl SnapshotFile {
    /// Reads the member identity, applied log id and every state-machine
    /// table through one read transaction.
    pub fn capture(txn: &ReadTransaction, etcd_version: &str) -> Result<Self, StorageError> {
        let image = SnapshotImage::capture(txn)?;
        let meta = txn.open_table(META)?;
        let identity = match meta.get(meta_key::IDENTITY)? {
            Some(raw) => MemberIdentity::decode(raw.value())
                .map_err(|e| StorageError::corrupt("member identity", e))?,
            None => MemberIdentity::default(),
        };
        let applied: Option<LogId> = meta_rmp(&meta, meta_key::APPLIED)?;
        Ok(SnapshotFile {
            cluster_id: identity.cluster_id,
            member_id: identity.member_id,
            member_name: identity.name,
            etcd_version: etcd_version.to_string(),
            applied_term: applied.map_or(0, |id| id.leader_id.term),
            applied_index: applied.map_or(0, |id| id.index),
            image,
        })
    }

    /// The whole file: header, body, padding, checksum.
    pub fn encode(&self) -> Vec<u8> {
        seal(&super::to_rmp(self))
    }
}

/// Frames an encoded body as a snapshot file: header, body, padding and
/// checksum. Public for the fuzz target `snapshot_restore`, which seals
/// arbitrary bodies to get past the checksum.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let unpadded = HEADER_LEN + body.len();
    let padded = unpadded.div_ceil(ALIGN) * ALIGN;
    let mut out = Vec::with_capacity(padded + CHECKSUM_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FILE_FORMAT.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out.resize(padded, 0);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a snapshot file's framing (magic, format, size, checksum,
/// padding) and returns its body, not yet decoded.
pub fn verify(raw: &[u8]) -> Result<&[u8], SnapshotFileError> {
    if raw.len() < ALIGN + CHECKSUM_LEN {
        // The smallest valid file is one padded block plus the trailer; a
        // shorter input that does not even start with the magic is foreign.
        if raw.len() >= MAGIC.len() && raw[..MAGIC.len()] != MAGIC {
            return Err(SnapshotFileError::BadMagic);
        }
        return Err(SnapshotFileError::TooShort { len: raw.len() });
    }
    if raw[..8] != MAGIC {
        return Err(SnapshotFileError::BadMagic);
    }
    let word = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    let format = word(8);
    if format != FILE_FORMAT {
        return Err(SnapshotFileError::UnsupportedFormat { found: format });
    }
    let body_len = u64::from_le_bytes(raw[16..24].try_into().expect("8 bytes"));
    // The size the header implies, computed without overflow on garbage.
    let expected = usize::try_from(body_len)
        .ok()
        .and_then(|n| n.checked_add(HEADER_LEN))
        .and_then(|n| n.checked_next_multiple_of(ALIGN))
        .and_then(|n| n.checked_add(CHECKSUM_LEN));
    if expected != Some(raw.len()) {
        return Err(SnapshotFileError::BadSize {
            len: raw.len(),
            expected: expected.unwrap_or(usize::MAX),
        });
    }
    let (content, trailer) = raw.split_at(raw.len() - CHECKSUM_LEN);
    let sum = Sha256::digest(content);
    if sum.as_slice() != trailer {
        return Err(SnapshotFileError::ChecksumMismatch {
            expected: hex(trailer),
            found: hex(&sum),
        });
    }
    let body_end = HEADER_LEN + body_len as usize;
    if word(12) != 0 || content[body_end..].iter().any(|&b| b != 0) {
        return Err(SnapshotFileError::BadPadding);
    }
    Ok(&content[HEADER_LEN..body_end])
}

/// Verifies and decodes a snapshot file.
pub fn decode(raw: &[u8]) -> Result<SnapshotFile, SnapshotFileError> {
    let body = verify(raw)?;
    let file: SnapshotFile =
        rmp_serde::from_slice(body).map_err(|e| SnapshotFileError::Body(e.to_string()))?;
    file.image.check_format().map_err(SnapshotFileError::Body)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::storage::snapshot::IMAGE_FORMAT;

    fn sample() -> SnapshotFile {
        SnapshotFile {
            cluster_id: 7,
            member_id: 9,
            member_name: "node-1".into(),
            etcd_version: "3.6.5".into(),
            applied_term: 2,
            applied_index: 42,
            image: SnapshotImage {
                format: IMAGE_FORMAT,
                revision: 5,
                compact_revision: 2,
                records: vec![(5, 0, ByteBuf::from(vec![0, 1]))],
                ..Default::default()
            },
        }
    }

    /// Rewrites the trailer so a deliberately altered file passes the
    /// checksum and reaches the later checks.
    fn reseal(raw: &mut [u8]) {
        let end = raw.len() - CHECKSUM_LEN;
        let sum = Sha256::digest(&raw[..end]);
        raw[end..].copy_from_slice(&sum);
    }

    #[test]
    fn round_trips_with_etcd_framing() {
        let file = sample();
        let raw = file.encode();
        assert_eq!(raw.len() % ALIGN, CHECKSUM_LEN);
        assert_eq!(&raw[..8], b"WITANSNP");
        let end = raw.len() - CHECKSUM_LEN;
        assert_eq!(Sha256::digest(&raw[..end]).as_slice(), &raw[end..]);
        assert_eq!(decode(&raw).unwrap(), file);
    }

    #[test]
    fn a_body_filling_a_block_exactly_gets_no_padding() {
        let mut file = sample();
        let base = file.encode().len();
        // Grow the name until header + body lands on a block boundary.
        for extra in 0..ALIGN * 2 {
            file.member_name = "n".repeat(extra);
            let raw = file.encode();
            let body_len = u64::from_le_bytes(raw[16..24].try_into().unwrap()) as usize;
            if (HEADER_LEN + body_len).is_multiple_of(ALIGN) {
                assert_eq!(raw.len(), HEADER_LEN + body_len + CHECKSUM_LEN);
                assert_eq!(decode(&raw).unwrap(), file);
                return;
            }
        }
        panic!("no exact fit found starting from {base} bytes");
    }

    #[test]
    fn rejects_truncation_anywhere() {
        let raw = sample().encode();
        for cut in [0, 1, 8, 23, 100, raw.len() - 33, raw.len() - 1] {
            let err = decode(&raw[..cut]).unwrap_err();
            assert!(
                matches!(
                    err,
                    SnapshotFileError::TooShort { .. } | SnapshotFileError::BadSize { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
        let mut longer = raw.clone();
        longer.extend_from_slice(&[0; ALIGN]);
        assert!(matches!(
            decode(&longer),
            Err(SnapshotFileError::BadSize { .. })
        ));
    }

    #[test]
    fn rejects_corruption() {
        let raw = sample().encode();
        // Any flipped bit in the content or the trailer breaks the checksum.
        for at in [
            HEADER_LEN,
            HEADER_LEN + 5,
            raw.len() - CHECKSUM_LEN - 1,
            raw.len() - 1,
        ] {
            let mut bad = raw.clone();
            bad[at] ^= 0x10;
            assert!(
                matches!(
                    decode(&bad),
                    Err(SnapshotFileError::ChecksumMismatch { .. })
                ),
                "flip at {at}"
            );
        }
        let mut bad = raw.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(SnapshotFileError::BadMagic));
        let mut bad = raw.clone();
        bad[8] = 2;
        assert_eq!(
            decode(&bad),
            Err(SnapshotFileError::UnsupportedFormat { found: 2 })
        );
        // A resealed file with garbage in the padding, or in the body.
        let mut bad = raw.clone();
        let last_pad = raw.len() - CHECKSUM_LEN - 1;
        bad[last_pad] = 1;
        reseal(&mut bad);
        assert_eq!(decode(&bad), Err(SnapshotFileError::BadPadding));
        let mut bad = raw.clone();
        for b in &mut bad[HEADER_LEN..HEADER_LEN + 4] {
            *b = 0xc1; // never used in MessagePack
        }
        reseal(&mut bad);
        assert!(matches!(decode(&bad), Err(SnapshotFileError::Body(_))));
        // A huge body length cannot overflow or panic.
        let mut bad = raw.clone();
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        reseal(&mut bad);
        assert!(matches!(
            decode(&bad),
            Err(SnapshotFileError::BadSize { .. })
        ));
    }

    #[test]
    fn rejects_foreign_and_empty_input() {
        assert_eq!(decode(&[]), Err(SnapshotFileError::TooShort { len: 0 }));
        assert_eq!(
            decode(b"SQLite format 3\0"),
            Err(SnapshotFileError::BadMagic)
        );
        // An etcd (bbolt) snapshot has the same framing but not our magic.
        let mut etcd_like = vec![0u8; ALIGN];
        let sum = Sha256::digest(&etcd_like);
        etcd_like.extend_from_slice(&sum);
        assert_eq!(decode(&etcd_like), Err(SnapshotFileError::BadMagic));
    }

    #[test]
    fn captures_identity_and_tables_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::Store::open(dir.path()).unwrap();
        store
            .save_identity(&MemberIdentity {
                member_id: 11,
                cluster_id: 22,
                name: "m".into(),
            })
            .unwrap();
        let txn = store.db().begin_read().unwrap();
        let file = SnapshotFile::capture(&txn, "3.6.5").unwrap();
        assert_eq!((file.cluster_id, file.member_id), (22, 11));
        assert_eq!(file.member_name, "m");
        assert_eq!((file.applied_term, file.applied_index), (0, 0));
        assert_eq!(decode(&file.encode()).unwrap(), file);
    }
}

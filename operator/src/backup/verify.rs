//! Checks a witan snapshot file's framing while it streams past, without
//! holding it in memory: magic, size `512·k + 32`, body length and the
//! SHA-256 trailer (docs/storage.md, "Snapshot files").
//!
//! The operator does not depend on `witan-node`, so this repeats only the
//! framing rules, not the body's decoding; `witan snapshot status` checks
//! everything else at restore time.

use sha2::{Digest, Sha256};

/// First eight bytes of every witan snapshot file.
pub const MAGIC: &[u8; 8] = b"WITANSNP";
/// The file format version this operator knows.
pub const FILE_FORMAT: u32 = 1;
/// Magic, format, reserved, body length.
pub const HEADER_LEN: usize = 24;
/// Header, body and padding together are a multiple of this.
pub const ALIGN: u64 = 512;
/// The SHA-256 trailer.
pub const CHECKSUM_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("snapshot is truncated: {len} bytes, a witan snapshot has at least 544")]
    TooShort { len: u64 },
    #[error("not a witan snapshot (bad magic)")]
    BadMagic,
    #[error("witan snapshot format {found} is not supported (this operator reads {FILE_FORMAT})")]
    UnsupportedFormat { found: u32 },
    #[error("snapshot size {len} does not match its header (expected {expected})")]
    BadSize { len: u64, expected: u64 },
    #[error("snapshot checksum mismatch: trailer {trailer}, content hashes to {computed}")]
    ChecksumMismatch { trailer: String, computed: String },
}

/// A verified snapshot's size and SHA-256 (of everything before the trailer,
/// as `witan snapshot status` prints it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub size: u64,
    pub sha256: String,
}

/// Feed chunks with [`update`](Self::update), then [`finish`](Self::finish).
#[derive(Default)]
pub struct SnapshotVerifier {
    hasher: Sha256,
    /// The last up to 32 bytes seen: the trailer, once the stream ends.
    tail: Vec<u8>,
    header: Vec<u8>,
    len: u64,
}

impl SnapshotVerifier {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.len += chunk.len() as u64;
        if self.header.len() < HEADER_LEN {
            let want = (HEADER_LEN - self.header.len()).min(chunk.len());
            self.header.extend_from_slice(&chunk[..want]);
        }
        // Everything but the last 32 bytes seen so far is content.
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > CHECKSUM_LEN {
            let content = self.tail.len() - CHECKSUM_LEN;
            self.hasher.update(&self.tail[..content]);
            self.tail.drain(..content);
        }
    }

    /// Bytes seen so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Result<Verified, SnapshotError> {
        let min = ALIGN + CHECKSUM_LEN as u64;
        if self.header.len() >= MAGIC.len() && &self.header[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        if self.len < min {
            return Err(SnapshotError::TooShort { len: self.len });
        }
        let word = |at: usize| {
            let bytes: [u8; 4] = self.header[at..at + 4].try_into().expect("4 header bytes");
            u32::from_le_bytes(bytes)
        };
        let format = word(8);
        if format != FILE_FORMAT {
            return Err(SnapshotError::UnsupportedFormat { found: format });
        }
        let body_len = u64::from_le_bytes(self.header[16..24].try_into().expect("8 header bytes"));
        let expected = body_len
            .checked_add(HEADER_LEN as u64)
            .and_then(|n| n.checked_next_multiple_of(ALIGN))
            .and_then(|n| n.checked_add(CHECKSUM_LEN as u64))
            .unwrap_or(u64::MAX);
        if expected != self.len {
            return Err(SnapshotError::BadSize {
                len: self.len,
                expected,
            });
        }
        let computed = hex(&self.hasher.finalize());
        let trailer = hex(&self.tail);
        if computed != trailer {
            return Err(SnapshotError::ChecksumMismatch { trailer, computed });
        }
        Ok(Verified {
            size: self.len,
            sha256: computed,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A well-formed snapshot file with `body` (not a real MessagePack body:
    /// the framing is all this module checks).
    pub(crate) fn snapshot_file(body: &[u8]) -> Vec<u8> {
        let mut file = Vec::new();
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&FILE_FORMAT.to_le_bytes());
        file.extend_from_slice(&[0; 4]);
        file.extend_from_slice(&(body.len() as u64).to_le_bytes());
        file.extend_from_slice(body);
        file.resize(file.len().next_multiple_of(512), 0);
        let sum = Sha256::digest(&file);
        file.extend_from_slice(&sum);
        file
    }

    fn verify_in_chunks(file: &[u8], chunk: usize) -> Result<Verified, SnapshotError> {
        let mut v = SnapshotVerifier::new();
        for c in file.chunks(chunk) {
            v.update(c);
        }
        v.finish()
    }

    #[test]
    fn a_well_formed_file_verifies_whatever_the_chunking() {
        let file = snapshot_file(&[7; 1000]);
        assert_eq!(file.len(), 1024 + 32);
        let expected = hex(&Sha256::digest(&file[..1024]));
        for chunk in [1, 5, 31, 32, 33, 512, 4096] {
            let v = verify_in_chunks(&file, chunk).unwrap();
            assert_eq!(v.size, 1056);
            assert_eq!(v.sha256, expected, "chunk {chunk}");
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut file = snapshot_file(b"hello");
        file[30] ^= 1;
        assert!(matches!(
            verify_in_chunks(&file, 100),
            Err(SnapshotError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let file = snapshot_file(&[1; 600]);
        assert_eq!(
            verify_in_chunks(&file[..file.len() - 512], 64),
            Err(SnapshotError::BadSize {
                len: 544,
                expected: 1056
            })
        );
        assert_eq!(
            verify_in_chunks(&file[..100], 64),
            Err(SnapshotError::TooShort { len: 100 })
        );
        assert_eq!(
            verify_in_chunks(b"SQLite format 3\0 and more", 4),
            Err(SnapshotError::BadMagic)
        );
        let mut v2 = file.clone();
        v2[8] = 2;
        assert_eq!(
            verify_in_chunks(&v2, 64),
            Err(SnapshotError::UnsupportedFormat { found: 2 })
        );
        assert_eq!(
            SnapshotVerifier::new().finish(),
            Err(SnapshotError::TooShort { len: 0 })
        );
    }
}

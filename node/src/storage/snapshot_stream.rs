//! The Raft snapshot stream: every state-machine row at one applied log id,
//! written and read one row at a time so neither side holds the store in
//! memory. This is what a member keeps in `<data-dir>/member/snap/` and what
//! a leader sends, in chunks, to a follower that fell behind the purged log.
//!
//! Layout: the magic `WITANRSS`, then frames. A frame is
//!
//! | size | content |
//! | --- | --- |
//! | 1 | tag |
//! | 4 | payload length `n` (u32, little-endian) |
//! | n | payload |
//! | 4 | CRC-32C of every byte before it in the stream (magic included) |
//!
//! The running CRC makes a flipped, dropped, repeated or reordered frame
//! fail at that frame. The first frame is the header ([`StreamHeader`]:
//! format version, revision, compact revision, the Raft snapshot meta), then
//! one frame per row ([`Row`]), then the end frame with the row count. A
//! stream without its end frame is truncated. Integers inside payloads are
//! little-endian; byte strings carry a u32 length first.
//!
//! Decoding never trusts a length: a frame longer than [`MAX_FRAME_BYTES`]
//! or a field running past its frame is an error, never a panic or a huge
//! allocation.

use std::io::{self, Read, Write};

use crate::raft::types::SnapshotMeta;

/// First eight bytes of a Raft snapshot stream.
pub const STREAM_MAGIC: [u8; 8] = *b"WITANRSS";
/// The stream layout this build writes. Version 1 was the whole-image
/// MessagePack blob kept in redb's `snapshot` table (still the image inside
/// `witan snapshot save` files, see `snapshot.rs`). Version 2 carried the
/// key-ordered tables of storage format 2 (`Latest`, `History`, `Revs`
/// rows); version 3 carries `Record` rows instead. This build reads both.
pub const STREAM_FORMAT: u32 = 3;
/// The oldest layout this build reads.
pub const OLDEST_STREAM_FORMAT: u32 = 2;
/// Largest frame accepted. A row is one key-value version (etcd caps a
/// request at 1.5 MiB by default; witan at its `--max-request-bytes`), so
/// this bound only stops garbage from asking for gigabytes.
pub const MAX_FRAME_BYTES: u32 = 256 * 1024 * 1024;

const TAG_HEADER: u8 = 0;
const TAG_LATEST: u8 = 1;
const TAG_HISTORY: u8 = 2;
const TAG_REVS: u8 = 3;
const TAG_LEASE: u8 = 4;
const TAG_LEASE_KEY: u8 = 5;
const TAG_MEMBER: u8 = 6;
const TAG_ALARM: u8 = 7;
const TAG_AUTH: u8 = 8;
const TAG_RECORD: u8 = 9;
const TAG_END: u8 = 0xff;

/// One row of one state-machine table, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row<'a> {
    /// `kv_records`: (revision, sub) -> kind byte + `mvccpb.KeyValue`.
    Record {
        revision: u64,
        sub: u32,
        record: &'a [u8],
    },
    /// Format 2's `kv_latest`: user key -> `mvccpb.KeyValue` (read only).
    Latest { key: &'a [u8], value: &'a [u8] },
    /// Format 2's `kv_history`: (user key, mod_revision) -> kind byte +
    /// KeyValue (read only).
    History {
        key: &'a [u8],
        revision: u64,
        value: &'a [u8],
    },
    /// Format 2's `kv_revs`: (revision, sub) -> user key (read only).
    Revs {
        revision: u64,
        sub: u32,
        key: &'a [u8],
    },
    /// `leases`: lease id -> `witanpb.LeaseRecord`.
    Lease { id: i64, record: &'a [u8] },
    /// `lease_keys`: (lease id, user key).
    LeaseKey { id: i64, key: &'a [u8] },
    /// `members`: member id -> `witanpb.MemberAttributes`.
    Member { id: u64, attributes: &'a [u8] },
    /// `alarms`: (member id, `etcdserverpb.AlarmType`).
    Alarm { member: u64, alarm: i32 },
    /// `auth`: row name -> value.
    Auth { name: &'a str, value: &'a [u8] },
}

/// What the first frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub revision: i64,
    pub compact_revision: i64,
    pub meta: SnapshotMeta,
}

/// Why a stream cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading snapshot stream: {0}")]
    Io(#[from] io::Error),
    #[error("not a witan Raft snapshot (bad magic)")]
    BadMagic,
    #[error(
        "Raft snapshot format {found} is not supported (this build reads {OLDEST_STREAM_FORMAT} to {STREAM_FORMAT})"
    )]
    UnsupportedFormat { found: u32 },
    #[error("Raft snapshot is truncated (after {rows} rows)")]
    Truncated { rows: u64 },
    #[error("Raft snapshot checksum mismatch at frame {frame}")]
    Checksum { frame: u64 },
    #[error("Raft snapshot frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    FrameTooLarge { len: u32 },
    #[error("Raft snapshot is malformed: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> StreamError {
    StreamError::Malformed(what.into())
}

/// Appends one row's payload (without tag) to `out`; returns the tag.
fn encode_row(row: &Row<'_>, out: &mut Vec<u8>) -> u8 {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        // A row longer than 4 GiB cannot exist: redb values are far smaller.
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    match *row {
        Row::Record {
            revision,
            sub,
            record,
        } => {
            out.extend_from_slice(&revision.to_le_bytes());
            out.extend_from_slice(&sub.to_le_bytes());
            bytes(out, record);
            TAG_RECORD
        }
        Row::Latest { key, value } => {
            bytes(out, key);
            bytes(out, value);
            TAG_LATEST
        }
        Row::History {
            key,
            revision,
            value,
        } => {
            bytes(out, key);
            out.extend_from_slice(&revision.to_le_bytes());
            bytes(out, value);
            TAG_HISTORY
        }
        Row::Revs { revision, sub, key } => {
            out.extend_from_slice(&revision.to_le_bytes());
            out.extend_from_slice(&sub.to_le_bytes());
            bytes(out, key);
            TAG_REVS
        }
        Row::Lease { id, record } => {
            out.extend_from_slice(&id.to_le_bytes());
            bytes(out, record);
            TAG_LEASE
        }
        Row::LeaseKey { id, key } => {
            out.extend_from_slice(&id.to_le_bytes());
            bytes(out, key);
            TAG_LEASE_KEY
        }
        Row::Member { id, attributes } => {
            out.extend_from_slice(&id.to_le_bytes());
            bytes(out, attributes);
            TAG_MEMBER
        }
        Row::Alarm { member, alarm } => {
            out.extend_from_slice(&member.to_le_bytes());
            out.extend_from_slice(&alarm.to_le_bytes());
            TAG_ALARM
        }
        Row::Auth { name, value } => {
            bytes(out, name.as_bytes());
            bytes(out, value);
            TAG_AUTH
        }
    }
}

/// Reads fields off a frame's payload; every read is bounds-checked.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StreamError> {
        if self.rest.len() < n {
            return Err(malformed(format!(
                "a field of {n} bytes runs past its frame ({} left)",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StreamError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, StreamError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, StreamError> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, StreamError> {
        self.array().map(i64::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, StreamError> {
        self.array().map(i32::from_le_bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], StreamError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// The payload must be used up exactly: trailing bytes mean a frame of
    /// another layout.
    fn done(&self) -> Result<(), StreamError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} unexpected bytes at the end of a frame",
                self.rest.len()
            )))
        }
    }
}

fn decode_row(tag: u8, payload: &[u8]) -> Result<Row<'_>, StreamError> {
    let mut f = Fields { rest: payload };
    let row = match tag {
        TAG_RECORD => Row::Record {
            revision: f.u64()?,
            sub: f.u32()?,
            record: f.bytes()?,
        },
        TAG_LATEST => Row::Latest {
            key: f.bytes()?,
            value: f.bytes()?,
        },
        TAG_HISTORY => Row::History {
            key: f.bytes()?,
            revision: f.u64()?,
            value: f.bytes()?,
        },
        TAG_REVS => Row::Revs {
            revision: f.u64()?,
            sub: f.u32()?,
            key: f.bytes()?,
        },
        TAG_LEASE => Row::Lease {
            id: f.i64()?,
            record: f.bytes()?,
        },
        TAG_LEASE_KEY => Row::LeaseKey {
            id: f.i64()?,
            key: f.bytes()?,
        },
        TAG_MEMBER => Row::Member {
            id: f.u64()?,
            attributes: f.bytes()?,
        },
        TAG_ALARM => Row::Alarm {
            member: f.u64()?,
            alarm: f.i32()?,
        },
        TAG_AUTH => Row::Auth {
            name: std::str::from_utf8(f.bytes()?)
                .map_err(|e| malformed(format!("auth row name: {e}")))?,
            value: f.bytes()?,
        },
        other => return Err(malformed(format!("unknown frame tag {other}"))),
    };
    f.done()?;
    Ok(row)
}

/// Writes a stream frame by frame to `W`. Holds one row's encoding at a
/// time (the scratch buffer), whatever the size of the store.
pub struct StreamWriter<W: Write> {
    out: W,
    crc: u32,
    rows: u64,
    scratch: Vec<u8>,
}

impl<W: Write> StreamWriter<W> {
    /// Writes the magic and the header frame.
    pub fn new(out: W, header: &StreamHeader) -> io::Result<Self> {
        Self::with_format(out, header, STREAM_FORMAT)
    }

    /// A writer that claims layout `format` (tests write format-2 streams
    /// with it, as an older member would).
    pub(crate) fn with_format(out: W, header: &StreamHeader, format: u32) -> io::Result<Self> {
        let mut writer = StreamWriter {
            out,
            crc: 0,
            rows: 0,
            scratch: Vec::new(),
        };
        writer.put(&STREAM_MAGIC)?;
        let meta = super::to_rmp(&header.meta);
        let mut payload = Vec::with_capacity(24 + meta.len());
        payload.extend_from_slice(&format.to_le_bytes());
        payload.extend_from_slice(&header.revision.to_le_bytes());
        payload.extend_from_slice(&header.compact_revision.to_le_bytes());
        payload.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        payload.extend_from_slice(&meta);
        writer.frame(TAG_HEADER, &payload)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.out.write_all(bytes)
    }

    fn frame(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= MAX_FRAME_BYTES)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a snapshot row of {} bytes is too large", payload.len()),
                )
            })?;
        self.put(&[tag])?;
        self.put(&len.to_le_bytes())?;
        self.put(payload)?;
        let crc = self.crc.to_le_bytes();
        self.put(&crc)
    }

    /// Appends one row.
    pub fn row(&mut self, row: &Row<'_>) -> io::Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let tag = encode_row(row, &mut scratch);
        let result = self.frame(tag, &scratch);
        self.scratch = scratch;
        self.rows += 1;
        result
    }

    /// Writes the end frame and hands back the sink (not flushed).
    pub fn finish(mut self) -> io::Result<W> {
        let rows = self.rows.to_le_bytes();
        self.frame(TAG_END, &rows)?;
        Ok(self.out)
    }
}

/// Reads a stream frame by frame from `R`, checking each frame's CRC before
/// decoding it. Holds one frame at a time.
pub struct StreamReader<R: Read> {
    input: R,
    crc: u32,
    frames: u64,
    rows: u64,
    ended: bool,
    frame: Vec<u8>,
}

impl<R: Read> StreamReader<R> {
    /// Reads and checks the magic and the header frame.
    pub fn open(input: R) -> Result<(Self, StreamHeader), StreamError> {
        let mut reader = StreamReader {
            input,
            crc: 0,
            frames: 0,
            rows: 0,
            ended: false,
            frame: Vec::new(),
        };
        let mut magic = [0u8; 8];
        reader.fill(&mut magic)?;
        if magic != STREAM_MAGIC {
            return Err(StreamError::BadMagic);
        }
        reader.crc = crc32c::crc32c_append(0, &magic);
        let tag = reader.next_frame()?;
        if tag != TAG_HEADER {
            return Err(malformed(format!(
                "first frame has tag {tag}, not a header"
            )));
        }
        let mut f = Fields {
            rest: &reader.frame,
        };
        let format = f.u32()?;
        if !(OLDEST_STREAM_FORMAT..=STREAM_FORMAT).contains(&format) {
            return Err(StreamError::UnsupportedFormat { found: format });
        }
        let revision = f.i64()?;
        let compact_revision = f.i64()?;
        let meta = rmp_serde::from_slice(f.bytes()?)
            .map_err(|e| malformed(format!("snapshot meta: {e}")))?;
        f.done()?;
        let header = StreamHeader {
            revision,
            compact_revision,
            meta,
        };
        Ok((reader, header))
    }

    /// Fills `buf`; running out of input is truncation.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), StreamError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => StreamError::Truncated { rows: self.rows },
            _ => StreamError::Io(e),
        })
    }

    /// Reads the next frame's payload into `self.frame` and returns its tag.
    fn next_frame(&mut self) -> Result<u8, StreamError> {
        let mut head = [0u8; 5];
        self.fill(&mut head)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_FRAME_BYTES {
            return Err(StreamError::FrameTooLarge { len });
        }
        // Read through `take` so a lying length allocates only what the
        // input really holds.
        self.frame.clear();
        let read = (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut self.frame)?;
        if read != len as usize {
            return Err(StreamError::Truncated { rows: self.rows });
        }
        let mut stored = [0u8; 4];
        self.fill(&mut stored)?;
        self.crc = crc32c::crc32c_append(self.crc, &head);
        self.crc = crc32c::crc32c_append(self.crc, &self.frame);
        self.frames += 1;
        if u32::from_le_bytes(stored) != self.crc {
            return Err(StreamError::Checksum { frame: self.frames });
        }
        self.crc = crc32c::crc32c_append(self.crc, &stored);
        Ok(head[0])
    }

    /// The next row, or `None` once the end frame has been read and its row
    /// count matches. Nothing may follow the end frame.
    pub fn next_row(&mut self) -> Result<Option<Row<'_>>, StreamError> {
        if self.ended {
            return Ok(None);
        }
        let tag = self.next_frame()?;
        if tag == TAG_END {
            let mut f = Fields { rest: &self.frame };
            let count = f.u64()?;
            f.done()?;
            if count != self.rows {
                return Err(malformed(format!(
                    "end frame counts {count} rows, the stream held {}",
                    self.rows
                )));
            }
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra)? != 0 {
                return Err(malformed("bytes after the end frame"));
            }
            self.ended = true;
            return Ok(None);
        }
        self.rows += 1;
        decode_row(tag, &self.frame).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::StoredMembership;

    fn header() -> StreamHeader {
        StreamHeader {
            revision: 7,
            compact_revision: 3,
            meta: SnapshotMeta {
                last_log_id: Some(openraft::LogId::new(
                    openraft::CommittedLeaderId::new(2, 1),
                    40,
                )),
                last_membership: StoredMembership::default(),
                snapshot_id: "2-40-1".into(),
            },
        }
    }

    fn rows() -> Vec<Row<'static>> {
        vec![
            Row::Record {
                revision: 5,
                sub: 1,
                record: b"\x00kv",
            },
            Row::Latest {
                key: b"a",
                value: b"kv-a",
            },
            Row::History {
                key: b"a",
                revision: 5,
                value: b"\x00kv",
            },
            Row::Revs {
                revision: 5,
                sub: 0,
                key: b"a",
            },
            Row::Lease {
                id: -1,
                record: b"rec",
            },
            Row::LeaseKey { id: 9, key: b"a" },
            Row::Member {
                id: u64::MAX,
                attributes: b"",
            },
            Row::Alarm {
                member: 1,
                alarm: 2,
            },
            Row::Auth {
                name: "user/root",
                value: b"x",
            },
        ]
    }

    fn encoded() -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), &header()).unwrap();
        for row in rows() {
            w.row(&row).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<(StreamHeader, usize), StreamError> {
        let (mut r, h) = StreamReader::open(bytes)?;
        let mut n = 0;
        while r.next_row()?.is_some() {
            n += 1;
        }
        Ok((h, n))
    }

    #[test]
    fn every_row_kind_round_trips() {
        let bytes = encoded();
        let (mut r, h) = StreamReader::open(bytes.as_slice()).unwrap();
        assert_eq!(h, header());
        let mut back = Vec::new();
        while let Some(row) = r.next_row().unwrap() {
            back.push(format!("{row:?}"));
        }
        let want: Vec<String> = rows().iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encoded();
        for len in 0..bytes.len() {
            assert!(read_all(&bytes[..len]).is_err(), "accepted {len} bytes");
        }
        assert!(read_all(&bytes).is_ok());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = encoded();
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x5a;
            assert!(read_all(&bad).is_err(), "accepted a flip at {at}");
        }
    }

    #[test]
    fn trailing_bytes_and_other_formats_are_refused() {
        let mut bytes = encoded();
        bytes.push(0);
        assert!(matches!(read_all(&bytes), Err(StreamError::Malformed(_))));
        assert!(matches!(
            read_all(b"WITANSNP\x01\x00\x00\x00"),
            Err(StreamError::BadMagic)
        ));
    }

    #[test]
    fn format_2_streams_are_read_and_newer_ones_refused() {
        for (format, readable) in [(1, false), (2, true), (3, true), (4, false)] {
            let mut w = StreamWriter::with_format(Vec::new(), &header(), format).unwrap();
            w.row(&rows()[1]).unwrap();
            let bytes = w.finish().unwrap();
            match read_all(&bytes) {
                Ok((_, n)) => assert!(readable && n == 1, "format {format}"),
                Err(StreamError::UnsupportedFormat { found }) => {
                    assert!(!readable && found == format, "format {format}")
                }
                Err(other) => panic!("format {format}: {other}"),
            }
        }
    }

    #[test]
    fn a_huge_length_is_refused_without_allocating_it() {
        let mut bytes = STREAM_MAGIC.to_vec();
        bytes.push(TAG_HEADER);
        bytes.extend_from_slice(&(MAX_FRAME_BYTES - 1).to_le_bytes());
        bytes.extend_from_slice(&[0; 16]);
        assert!(matches!(
            read_all(&bytes),
            Err(StreamError::Truncated { .. })
        ));
        let mut bytes = STREAM_MAGIC.to_vec();
        bytes.push(TAG_HEADER);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_all(&bytes),
            Err(StreamError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        // xorshift: deterministic, seed printed by the assertion message.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let bytes = encoded();
        for round in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bad = bytes.clone();
            let at = (state as usize) % bad.len();
            let len = ((state >> 32) as usize) % (bad.len() - at) + 1;
            for (i, b) in bad[at..at + len].iter_mut().enumerate() {
                *b = (state >> (i % 8 * 8)) as u8;
            }
            if bad != bytes {
                assert!(read_all(&bad).is_err(), "round {round} accepted garbage");
            }
        }
    }

    /// A sink that remembers the largest single write it was given.
    struct Largest<'a>(&'a mut usize, &'a mut usize);

    impl Write for Largest<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            *self.0 = (*self.0).max(buf.len());
            *self.1 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writer_holds_one_row_at_a_time() {
        let (mut largest, mut total) = (0, 0);
        let value = vec![7u8; 1000];
        let mut w = StreamWriter::new(Largest(&mut largest, &mut total), &header()).unwrap();
        for i in 0..10_000u32 {
            w.row(&Row::Latest {
                key: &i.to_be_bytes(),
                value: &value,
            })
            .unwrap();
            // Everything written so far has reached the sink: the writer
            // keeps no rows back.
            assert_eq!(w.rows, u64::from(i) + 1);
        }
        w.finish().unwrap();
        assert!(total > 10_000 * 1000);
        assert!(largest <= 1000 + 16, "a write of {largest} bytes");
    }

    /// A source that counts what was read from it.
    struct Counting<'a> {
        inner: &'a [u8],
        read: usize,
    }

    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn the_reader_holds_one_row_at_a_time() {
        let value = vec![7u8; 1000];
        let mut w = StreamWriter::new(Vec::new(), &header()).unwrap();
        for i in 0..1000u32 {
            w.row(&Row::Latest {
                key: &i.to_be_bytes(),
                value: &value,
            })
            .unwrap();
        }
        let bytes = w.finish().unwrap();
        let (mut r, _) = StreamReader::open(Counting {
            inner: &bytes,
            read: 0,
        })
        .unwrap();
        let mut rows = 0usize;
        while r.next_row().unwrap().is_some() {
            rows += 1;
            // Never more than the header and one row ahead of the rows
            // handed out.
            assert!(r.input.read <= 200 + rows * (1000 + 30));
            assert!(r.frame.capacity() <= 2048);
        }
        assert_eq!(rows, 1000);
    }
}

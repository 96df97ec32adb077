//! Small files replaced whole and durably: the vote and the purge point.
//!
//! A marker is written to a temporary name, fsynced, renamed over the old
//! one and the directory fsynced, so after a crash it holds either the old
//! value or the new one. Its content is one record (length, CRC, payload),
//! so damage is found rather than decoded.

use std::path::Path;

use super::record::{self, HEADER_BYTES, Header};

pub fn write(dir: &Path, name: &str, payload: &[u8]) -> std::io::Result<()> {
    let mut raw = Vec::with_capacity(HEADER_BYTES + payload.len());
    record::encode(payload, &mut raw);
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut &file, &raw)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    super::segment::sync_dir(dir)
}

/// The marker's payload; None when it was never written.
pub fn read(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, String> {
    let raw = match std::fs::read(dir.join(name)) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {name}: {e}")),
    };
    let header: [u8; HEADER_BYTES] = raw
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| format!("{name} is {} bytes long", raw.len()))?;
    match record::decode_header(header) {
        Header::Record { len, crc }
            if raw.len() == HEADER_BYTES + len
                && record::payload_matches(&raw[HEADER_BYTES..], crc) =>
        {
            Ok(Some(raw[HEADER_BYTES..].to_vec()))
        }
        _ => Err(format!("{name} is damaged")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_reads_back_what_was_written_last() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), "vote").unwrap(), None);
        write(dir.path(), "vote", b"first").unwrap();
        write(dir.path(), "vote", b"second").unwrap();
        assert_eq!(read(dir.path(), "vote").unwrap().unwrap(), b"second");
        assert!(!dir.path().join("vote.tmp").exists());
    }

    #[test]
    fn a_damaged_marker_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "vote", b"value").unwrap();
        let path = dir.path().join("vote");
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        std::fs::write(&path, &raw).unwrap();
        assert!(read(dir.path(), "vote").is_err());
        std::fs::write(&path, b"abc").unwrap();
        assert!(read(dir.path(), "vote").is_err());
    }
}

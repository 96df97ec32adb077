//! How one log entry is framed in a segment file.
//!
//! A record is `len: u32 LE`, `crc: u32 LE` (CRC-32C of the payload), then
//! `len` payload bytes. Segment files are preallocated and so read as zeros
//! past the last record: a zero length ends the segment. A record whose
//! header or payload is cut short, or whose checksum does not match, is a
//! write torn by a crash (or damage); what the caller does with it depends
//! on where it sits (see `segment::scan`).

/// Bytes in a record header.
pub const HEADER_BYTES: usize = 8;

/// The largest payload a record may carry. A length field above it is
/// damage, not an entry: the proposer's batches stay far below it.
pub const MAX_PAYLOAD_BYTES: usize = 256 << 20;

/// The header and payload of one record, ready to be written.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!payload.is_empty() && payload.len() <= MAX_PAYLOAD_BYTES);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What a record header says about the bytes that follow it.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// Zeros: no record was ever written here.
    End,
    /// A payload of `len` bytes with this checksum.
    Record { len: usize, crc: u32 },
    /// A length no writer produces.
    Invalid { len: u64 },
}

pub fn decode_header(raw: [u8; HEADER_BYTES]) -> Header {
    let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    let crc = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
    match len {
        0 if crc == 0 => Header::End,
        0 => Header::Invalid { len: 0 },
        len if len > MAX_PAYLOAD_BYTES => Header::Invalid { len: len as u64 },
        len => Header::Record { len, crc },
    }
}

/// Whether `payload` is what the header promised.
pub fn payload_matches(payload: &[u8], crc: u32) -> bool {
    crc32c::crc32c(payload) == crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(bytes: &[u8]) -> Header {
        decode_header(bytes[..HEADER_BYTES].try_into().unwrap())
    }

    #[test]
    fn an_encoded_record_decodes_to_its_payload() {
        let mut out = Vec::new();
        encode(b"entry", &mut out);
        assert_eq!(out.len(), HEADER_BYTES + 5);
        let Header::Record { len, crc } = header_of(&out) else {
            panic!("not a record");
        };
        assert_eq!(len, 5);
        assert!(payload_matches(&out[HEADER_BYTES..], crc));
    }

    #[test]
    fn zeros_end_a_segment() {
        assert_eq!(header_of(&[0; 8]), Header::End);
    }

    #[test]
    fn a_flipped_payload_bit_fails_the_checksum() {
        let mut out = Vec::new();
        encode(b"entry", &mut out);
        out[HEADER_BYTES] ^= 1;
        let Header::Record { crc, .. } = header_of(&out) else {
            panic!("not a record");
        };
        assert!(!payload_matches(&out[HEADER_BYTES..], crc));
    }

    #[test]
    fn impossible_lengths_are_invalid() {
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(
            header_of(&huge),
            Header::Invalid {
                len: u32::MAX as u64
            }
        );
        assert_eq!(
            header_of(&[0, 0, 0, 0, 1, 0, 0, 0]),
            Header::Invalid { len: 0 }
        );
    }
}

//! Multi-version concurrency control exactly as etcd defines it: a global
//! revision that grows by one per write request or transaction, and per key
//! `create_revision`, `mod_revision`, `version` and `lease`, with every
//! version kept until compaction.
//!
//! Storage is etcd's: every version is a record keyed by its revision (redb
//! table `kv_records`), and `index` finds a key's versions in memory.
//! `read` answers ranges at any retained revision; `apply` turns replicated
//! requests into new revisions; `validate` holds the checks made before a
//! request is proposed; `alarm` which requests alarms refuse; `scratch` an
//! in-memory store for fuzzing and tests. All of it works on redb tables
//! and an index handed in by the caller, so the state machine decides
//! transactions, durability and locking.

pub mod alarm;
pub mod apply;
pub mod index;
pub mod range;
pub mod read;
pub mod scratch;
pub mod validate;

use prost::Message;

use crate::proto::mvccpb::KeyValue;
use crate::storage::StorageError;

/// The kind byte in front of a history record.
pub(crate) const KIND_PUT: u8 = 0;
pub(crate) const KIND_DELETE: u8 = 1;

/// Encodes a record: kind byte, then the key-value.
pub(crate) fn encode_history(kind: u8, kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + kv.encoded_len());
    out.push(kind);
    kv.encode(&mut out)
        .expect("a Vec grows to fit any protobuf message");
    out
}

/// Decodes a record into its kind and key-value.
pub(crate) fn decode_history(raw: &[u8]) -> Result<(u8, KeyValue), StorageError> {
    let (&kind, rest) = raw
        .split_first()
        .ok_or_else(|| StorageError::corrupt("history record", "empty"))?;
    let kv = KeyValue::decode(rest).map_err(|e| StorageError::corrupt("history record", e))?;
    Ok((kind, kv))
}

/// A record's kind, key and what the index keeps of it ([`index::Meta`]),
/// without decoding or copying the value: rebuilding the index reads every
/// record. Fields are read as prost would (any order, the last of a
/// repeated scalar wins, unknown ones skipped).
pub(crate) fn record_summary(raw: &[u8]) -> Result<(u8, &[u8], index::Meta), StorageError> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let bad = |e: prost::DecodeError| StorageError::corrupt("history record", e);
    let (&kind, mut rest) = raw
        .split_first()
        .ok_or_else(|| StorageError::corrupt("history record", "empty"))?;
    let mut key: &[u8] = &[];
    let mut meta = index::Meta::default();
    while !rest.is_empty() {
        let (tag, wire_type) = decode_key(&mut rest).map_err(bad)?;
        match (tag, wire_type) {
            (1, WireType::LengthDelimited) => {
                let len = decode_varint(&mut rest).map_err(bad)?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&n| n <= rest.len())
                    .ok_or_else(|| {
                        StorageError::corrupt("history record", "the key runs past the record")
                    })?;
                (key, rest) = rest.split_at(len);
            }
            // int64 fields: a varint, two's complement.
            (2, WireType::Varint) => {
                meta.create_revision = decode_varint(&mut rest).map_err(bad)? as i64
            }
            (4, WireType::Varint) => meta.version = decode_varint(&mut rest).map_err(bad)? as i64,
            (6, WireType::Varint) => meta.lease = decode_varint(&mut rest).map_err(bad)? as i64,
            _ => skip_field(wire_type, tag, &mut rest, DecodeContext::default()).map_err(bad)?,
        }
    }
    Ok((kind, key, meta))
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

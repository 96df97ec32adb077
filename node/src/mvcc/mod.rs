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

/// A record's kind and key, without decoding the rest (rebuilding the
/// index reads every record). prost writes fields in number order, so a
/// key-value with a key starts with field 1; anything else is decoded whole.
pub(crate) fn record_key(raw: &[u8]) -> Result<(u8, std::borrow::Cow<'_, [u8]>), StorageError> {
    let (&kind, rest) = raw
        .split_first()
        .ok_or_else(|| StorageError::corrupt("history record", "empty"))?;
    const KEY_TAG: u8 = 0x0a; // field 1, length-delimited
    if let Some((&KEY_TAG, mut after)) = rest.split_first()
        && let Ok(len) = prost::encoding::decode_varint(&mut after)
        && let Some(key) = usize::try_from(len).ok().and_then(|n| after.get(..n))
    {
        return Ok((kind, std::borrow::Cow::Borrowed(key)));
    }
    let kv = KeyValue::decode(rest).map_err(|e| StorageError::corrupt("history record", e))?;
    Ok((kind, std::borrow::Cow::Owned(kv.key)))
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

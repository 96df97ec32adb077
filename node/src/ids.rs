//! Member and cluster ids: stable u64s derived, as in etcd, from what every
//! founding member knows (peer URLs and the cluster token), so all members
//! compute the same ids without talking.

use sha2::{Digest, Sha256};

fn hash_u64(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    // Zero means "none" in etcd's API.
    u64::from_be_bytes(bytes).max(1)
}

/// A member's id from its peer URLs (order does not matter) and the token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let joined = urls.join(",");
    hash_u64(&[joined.as_bytes(), token.as_bytes()])
}

/// The id of a member added to a running cluster (MemberAdd). As etcd's
/// `NewMember`, the time goes in too: a member removed and added back on
/// the same URLs is a new member with a new id, never the old one.
pub fn added_member_id(peer_urls: &[String], token: &str, unix_nanos: u128) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let joined = urls.join(",");
    hash_u64(&[
        joined.as_bytes(),
        token.as_bytes(),
        &unix_nanos.to_be_bytes(),
    ])
}

/// The cluster's id from its founding members' ids and the token.
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    hash_u64(&[&bytes, token.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_order_independent() {
        let a = member_id(&["http://a:1".into(), "http://b:1".into()], "t");
        let b = member_id(&["http://b:1".into(), "http://a:1".into()], "t");
        assert_eq!(a, b);
        assert_ne!(
            a,
            member_id(&["http://a:1".into(), "http://b:1".into()], "u")
        );
        assert_eq!(cluster_id(&[3, 1, 2], "t"), cluster_id(&[1, 2, 3], "t"));
        assert_ne!(cluster_id(&[1, 2, 3], "t"), cluster_id(&[1, 2], "t"));
    }

    #[test]
    fn a_member_added_again_on_the_same_urls_gets_a_new_id() {
        let urls = ["http://a:1".to_string()];
        assert_ne!(
            added_member_id(&urls, "t", 1),
            added_member_id(&urls, "t", 2)
        );
        assert_ne!(added_member_id(&urls, "t", 1), member_id(&urls, "t"));
    }
}

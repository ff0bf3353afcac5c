//! Bind tokens: the secret that lets a container run on a disk. Disk ids are no secret (they
//! show in the host's mount table, under `disks/` and in pods' annotations), so naming a disk
//! proves nothing; a token only the disk's creator received does.
//!
//! A token is 256 random bits from the kernel, in hex. The daemon keeps only its sha256 (in
//! the store, beside the disk) and answers the token once, in the create's 201: a stolen
//! state.db or a get of the disk gives no token away. The token is high-entropy, so a plain
//! sha256 is enough; no slow hash or salt is needed against guessing.

use sha2::{Digest, Sha256};

use crate::objects::BindToken;

/// The sha256 of a bind token: what the store keeps.
pub type TokenDigest = [u8; 32];

/// A new token for a disk, and the digest to store for it.
pub fn issue() -> (BindToken, TokenDigest) {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the kernel's random source is available");
    let token = hex::encode(secret);
    let digest = digest_of(&token);
    (BindToken(token), digest)
}

pub fn digest_of(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `given` is the token whose digest is `stored`. Compares the digests in constant
/// time, so how long a refusal takes says nothing about how close a guess came.
pub fn matches(stored: &TokenDigest, given: &str) -> bool {
    let given = digest_of(given);
    let mut difference = 0u8;
    for (a, b) in stored.iter().zip(given.iter()) {
        difference |= a ^ b;
    }
    // Keeps the compiler from turning the loop back into an early-exit comparison.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_its_own_digest_only() {
        let (token, digest) = issue();
        let (other, other_digest) = issue();
        assert_eq!(token.0.len(), 64, "256 bits in hex");
        assert!(token.0.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(token, other);
        assert!(matches(&digest, &token.0));
        assert!(!matches(&digest, &other.0));
        assert!(!matches(&other_digest, &token.0));
        assert!(!matches(&digest, ""));
        // The digest is not the token: the store never holds the token itself.
        assert_ne!(hex::encode(digest), token.0);
        // One character off is refused.
        let mut near = token.0.clone().into_bytes();
        near[63] = if near[63] == b'0' { b'1' } else { b'0' };
        assert!(!matches(&digest, std::str::from_utf8(&near).unwrap()));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let (token, _) = issue();
        assert!(!format!("{token:?}").contains(&token.0));
        assert!(!format!("{:?}", Some(token.clone())).contains(&token.0));
    }
}

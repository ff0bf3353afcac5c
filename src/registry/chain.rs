//! OCI ChainIDs: the identity of a layer *stack*, which is what containerd keys unpacked
//! snapshots by (and what `snapshots/<chainID>/` in a cache is named after).

use sha2::{Digest, Sha256};

/// `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " + diff[n])`, per the OCI image spec.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = chain_id_over(chain.last().map(String::as_str), diff_id);
        chain.push(next);
    }
    chain
}

/// The chainID of layer `diff_id` stacked on the chain `parent` (none: a base layer).
pub fn chain_id_over(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_owned(),
        Some(parent) => {
            let hash = Sha256::digest(format!("{parent} {diff_id}").as_bytes());
            format!("sha256:{}", hex::encode(hash))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_single() {
        assert!(chain_ids(&[]).is_empty());
        let one = vec!["sha256:aaaa".to_string()];
        assert_eq!(chain_ids(&one), one);
    }

    #[test]
    fn matches_the_spec_definition() {
        let diffs: Vec<String> = ["sha256:a", "sha256:b", "sha256:c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let chain = chain_ids(&diffs);
        let c1 = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(b"sha256:a sha256:b"))
        );
        let c2 = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{c1} sha256:c").as_bytes()))
        );
        assert_eq!(chain, vec!["sha256:a".to_string(), c1, c2]);
    }

    #[test]
    fn known_vector() {
        // Computed independently: printf 'sha256:0…0 sha256:1…1' | sha256sum
        let d0 = format!("sha256:{}", "0".repeat(64));
        let d1 = format!("sha256:{}", "1".repeat(64));
        assert_eq!(
            chain_ids(&[d0, d1])[1],
            "sha256:f94b891e05f6e37c90d87edfd5bb98a02d618a437c35f3a94b3b00e48e894631"
        );
    }
}

//! Identifiers: `imc-<16 hex>` for caches, `build-<16 hex>` for build work dirs.

fn random_hex16() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the kernel's random source is available");
    hex::encode(bytes)
}

pub fn new_cache_id() -> String {
    format!("imc-{}", random_hex16())
}

pub fn new_disk_id() -> String {
    format!("disk-{}", random_hex16())
}

/// Whether `name` has the shape `new_disk_id` gives: `disk-<16 hex>`.
pub fn is_disk_id(name: &str) -> bool {
    name.strip_prefix("disk-")
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn new_build_id() -> String {
    format!("build-{}", random_hex16())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_have_the_documented_shape() {
        let id = super::new_cache_id();
        assert_eq!(id.len(), 4 + 16);
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(id, super::new_cache_id());
    }
}

//! Which entry of an image index this node can run.

use std::fmt;

/// An OCI platform (`os`/`architecture`[/`variant`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform this binary runs on, in OCI (Go `GOARCH`) names.
    pub fn host() -> Platform {
        let (architecture, variant) = oci_arch(std::env::consts::ARCH);
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// How well an index entry's platform fits this one; `None` if it cannot run here.
    ///
    /// Higher is better: an exact variant beats an entry without variant, which beats an
    /// older variant of the same architecture (arm v7 runs v6 and v5 code; arm64 is v8).
    fn score(&self, candidate: &Platform) -> Option<u32> {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        let wanted = self.variant.as_deref().map(normalize_variant);
        let offered = candidate.variant.as_deref().map(normalize_variant);
        match (wanted, offered) {
            (w, o) if w == o => Some(1000),
            (_, None) => Some(900),
            (Some(w), Some(o)) => {
                let (w, o) = (variant_level(&w)?, variant_level(&o)?);
                (o <= w).then_some(100 + o)
            }
            (None, Some(_)) => None,
        }
    }
}

/// Picks the best entry for `host` among `(index, platform)` candidates: the highest score,
/// and among equals the first listed, as registries order preferred entries first.
pub(crate) fn select<'a>(
    host: &Platform,
    candidates: impl IntoIterator<Item = (usize, &'a Platform)>,
) -> Option<usize> {
    let mut best: Option<(u32, usize)> = None;
    for (i, platform) in candidates {
        if let Some(score) = host.score(platform) {
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, i));
            }
        }
    }
    best.map(|(_, i)| i)
}

fn oci_arch(rust_arch: &str) -> (&str, Option<&str>) {
    match rust_arch {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", Some("v8")),
        // Rust's `arm` targets on Linux are v6 or v7; v7 (armhf) is what images publish.
        "arm" => (
            "arm",
            Some(if cfg!(target_feature = "v7") {
                "v7"
            } else {
                "v6"
            }),
        ),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "loongarch64" => ("loong64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        other => (other, None),
    }
}

fn normalize_variant(v: &str) -> String {
    let v = v.to_ascii_lowercase();
    match v.as_str() {
        "8" => "v8".into(),
        "7" => "v7".into(),
        "6" => "v6".into(),
        _ => v,
    }
}

fn variant_level(v: &str) -> Option<u32> {
    v.strip_prefix('v')?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        let mut parts = s.split('/');
        Platform {
            os: parts.next().unwrap().into(),
            architecture: parts.next().unwrap().into(),
            variant: parts.next().map(str::to_string),
        }
    }

    fn pick(host: &str, offered: &[&str]) -> Option<String> {
        let platforms: Vec<Platform> = offered.iter().map(|s| p(s)).collect();
        select(&p(host), platforms.iter().enumerate()).map(|i| offered[i].to_string())
    }

    #[test]
    fn host_is_linux_with_an_oci_arch() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host.to_string(), "linux/amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(host.to_string(), "linux/arm64/v8");
    }

    #[test]
    fn picks_matching_os_and_arch() {
        let offered = ["windows/amd64", "linux/arm64", "linux/amd64", "linux/amd64"];
        assert_eq!(
            pick("linux/amd64", &offered).as_deref(),
            Some("linux/amd64")
        );
        assert_eq!(pick("linux/s390x", &offered), None);
        assert_eq!(pick("linux/amd64", &["unknown/unknown"]), None);
    }

    #[test]
    fn arm_variants() {
        // arm64 images usually omit the variant or say v8.
        assert_eq!(
            pick("linux/arm64/v8", &["linux/arm64"]).as_deref(),
            Some("linux/arm64")
        );
        assert_eq!(
            pick("linux/arm64/v8", &["linux/arm64", "linux/arm64/v8"]).as_deref(),
            Some("linux/arm64/v8")
        );
        // v7 hosts run v6 but not v8-only arm images; exact wins.
        assert_eq!(
            pick("linux/arm/v7", &["linux/arm/v6", "linux/arm/v7"]).as_deref(),
            Some("linux/arm/v7")
        );
        assert_eq!(
            pick("linux/arm/v7", &["linux/arm/v6"]).as_deref(),
            Some("linux/arm/v6")
        );
        assert_eq!(pick("linux/arm/v6", &["linux/arm/v7"]), None);
        assert_eq!(
            pick("linux/arm/v6", &["linux/arm/v5", "linux/arm"]).as_deref(),
            Some("linux/arm")
        );
    }
}

//! Hostile layers and tampered blobs.
//!
//! Each path-escape case is one image (a benign base plus one bad layer) so a test can
//! check every attack separately: the build must refuse the layer or keep everything it
//! writes inside the layer's directory. The names are the classic ones (`../evil`,
//! `esc/etc/evil`, ...): a vulnerable unpacker running as root would write them on the
//! host, which `escape_targets` lets a test check for.

use super::super::oci::{Artifact, Compression, Image, Layer, ManifestFormat};
use super::super::registry::TestRegistry;
use super::model::LayerSpec;
use super::rng::Rng;

pub struct MaliciousCase {
    pub name: &'static str,
    pub what: &'static str,
    pub layers: Vec<LayerSpec>,
    pub image: Image,
}

impl MaliciousCase {
    pub fn artifact(&self) -> Artifact {
        Artifact::Image(self.image.clone())
    }
}

fn benign_base() -> LayerSpec {
    let mut l = LayerSpec::new(Compression::Gzip);
    l.dir("etc");
    l.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    l.dir("tmp").mode(0o1777);
    l
}

fn case(name: &'static str, what: &'static str, bad: LayerSpec) -> MaliciousCase {
    let layers = vec![benign_base(), bad];
    let image = Image::new(
        layers.iter().map(|l| l.to_layer()).collect(),
        ManifestFormat::Oci,
    );
    MaliciousCase {
        name,
        what,
        layers,
        image,
    }
}

/// One image per path-escape attack.
pub fn malicious_cases() -> Vec<MaliciousCase> {
    let gz = || LayerSpec::new(Compression::Gzip);
    let mut out = Vec::new();

    let mut l = gz();
    l.file("../evil", "escaped via ..\n");
    out.push(case("dotdot", "entry ../evil", l));

    let mut l = gz();
    l.dir("a");
    l.file("a/../../evil-nested", "escaped via a/../..\n");
    out.push(case("dotdot-nested", "entry a/../../evil-nested", l));

    let mut l = gz();
    l.file("/abs/evil", "absolute path\n");
    out.push(case(
        "absolute",
        "entry /abs/evil (must land under the layer root, or be refused)",
        l,
    ));

    let mut l = gz();
    l.symlink("esc", "/");
    l.file("esc/etc/evil", "written through a symlink to /\n");
    out.push(case(
        "symlink-escape",
        "symlink esc -> / then esc/etc/evil",
        l,
    ));

    let mut l = gz();
    l.symlink("up", "../../../../../../..");
    l.file("up/evil-relative", "written through a relative symlink\n");
    out.push(case(
        "symlink-relative-escape",
        "symlink up -> ../../.. then up/evil-relative",
        l,
    ));

    let mut l = gz();
    l.dir("etc");
    l.hardlink("etc/passwd-link", "../../etc/passwd");
    out.push(case("hardlink-escape", "hardlink to ../../etc/passwd", l));

    let mut l = gz();
    l.symlink("link-to-etc", "/etc");
    l.hardlink("stolen", "link-to-etc/passwd");
    out.push(case(
        "hardlink-through-symlink",
        "hardlink to a path through a symlink to /etc",
        l,
    ));

    let mut l = gz();
    // A raw file entry: `Body::Whiteout` would build the name from a parent, and the point
    // here is a name the tar itself spells.
    l.file("../.wh.x", "");
    out.push(case("whiteout-escape", "whiteout ../.wh.x", l));

    out
}

/// Host paths a vulnerable unpacker could create or clobber; none may exist (or change)
/// after building the cases.
pub fn escape_targets() -> Vec<&'static str> {
    vec![
        "/evil",
        "/abs/evil",
        "/etc/evil",
        "/evil-nested",
        "/evil-relative",
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Flip a byte inside a file's data in an uncompressed layer: the tar stays valid and
    /// the size is unchanged, so only hashing the whole blob can notice.
    FlipContentByte,
    /// Flip a byte in the middle of a gzip layer: usually a decode or CRC error, but the
    /// digest check must catch it whatever the decoder says.
    FlipCompressedByte,
    /// Cut a gzip layer in half: the registry serves fewer bytes than the manifest says.
    Truncate,
}

/// Pushes a two-layer image, then tampers with its top layer in the registry's storage.
/// Returns the image (whose manifest still names the original digest) and that digest.
pub fn push_tampered(reg: &TestRegistry, repo: &str, tag: &str, how: Tamper) -> (Image, String) {
    let mut rng = Rng::new(0x7a3b);
    let mut top = match how {
        Tamper::FlipContentByte => LayerSpec::new(Compression::None),
        _ => LayerSpec::new(Compression::Gzip),
    };
    top.dir("data");
    top.file("data/payload", rng.bytes(256 * 1024));
    let layers: Vec<Layer> = vec![benign_base().to_layer(), top.to_layer()];
    let image = Image::new(layers, ManifestFormat::Oci);
    super::super::oci::push(
        reg.addr().as_str(),
        repo,
        tag,
        &Artifact::Image(image.clone()),
        reg.credentials(),
    );
    let victim = image.layers[1].clone();
    match how {
        // The first entry is "data/" (one header block); the payload's header is the
        // second block, so byte 3 * 512 + 100 is inside the payload's content.
        Tamper::FlipContentByte => reg.corrupt_blob(&victim.digest, 3 * 512 + 100),
        Tamper::FlipCompressedByte => reg.corrupt_blob(&victim.digest, victim.size() / 2),
        Tamper::Truncate => reg.truncate_blob(&victim.digest, victim.size() / 2),
    }
    (image, victim.digest)
}

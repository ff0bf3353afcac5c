//! Generates a test image and pushes it to a registry; used by benchmark scripts.
//!
//! ```text
//! cargo run --release --example gen-image -- --registry 127.0.0.1:5000 \
//!     --repo bench/app --tag gzip --compression gzip --kind realistic [--seed N]
//! ```
//!
//! Kinds: `realistic` (~400 MB, 4 layers, ~20,000 files), `features` (the three feature
//! images, pushed as `<repo>/alpha`, `<repo>/bravo`, `<repo>/charlie`), `oversized` (one
//! zstd layer claiming `--size-gib` GiB). Prints sizes, the compression ratio and timings.

#![allow(dead_code)]

#[path = "../tests/support/gen/mod.rs"]
mod gen;
#[path = "../tests/support/oci.rs"]
mod oci;
#[path = "../tests/support/registry.rs"]
mod registry;

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Realistic,
    Features,
    Oversized,
}

#[derive(Parser, Debug)]
#[command(about = "Generate a test OCI image and push it to a registry")]
struct Args {
    /// Registry address, host:port (plain HTTP).
    #[arg(long)]
    registry: String,
    #[arg(long, default_value = "bench/app")]
    repo: String,
    #[arg(long, default_value = "latest")]
    tag: String,
    /// none, gzip or zstd (realistic only).
    #[arg(long, default_value = "gzip")]
    compression: String,
    #[arg(long, value_enum, default_value = "realistic")]
    kind: Kind,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Uncompressed bytes of a realistic image.
    #[arg(long, default_value_t = gen::realistic::REALISTIC_BYTES)]
    bytes: u64,
    /// Files in a realistic image.
    #[arg(long, default_value_t = gen::realistic::REALISTIC_FILES)]
    files: u64,
    /// Claimed size of the oversized layer's file.
    #[arg(long, default_value_t = 21)]
    size_gib: u64,
    #[arg(long, requires = "password")]
    user: Option<String>,
    #[arg(long, requires = "user")]
    password: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let compression = oci::Compression::parse(&args.compression)
        .with_context(|| format!("unknown compression {:?}", args.compression))?;
    let auth = args.user.as_deref().zip(args.password.as_deref());
    let client = oci::RegistryClient::new(&args.registry, auth);

    let t = Instant::now();
    let pushes: Vec<(String, oci::Artifact)> = match args.kind {
        Kind::Realistic => {
            let img = gen::realistic::realistic_image_sized(
                args.seed,
                compression,
                args.bytes,
                args.files,
            );
            vec![(args.repo.clone(), img.into())]
        }
        Kind::Features => {
            if compression != oci::Compression::Gzip {
                bail!("the feature set fixes its own compressions; omit --compression");
            }
            gen::feature_set(args.seed)
                .images
                .into_iter()
                .map(|i| (format!("{}/{}", args.repo, i.name), i.artifact))
                .collect()
        }
        Kind::Oversized => {
            let img = gen::oversized::oversized_image(args.size_gib * gen::oversized::GIB);
            vec![(args.repo.clone(), img.into())]
        }
    };
    let gen_time = t.elapsed();

    let t = Instant::now();
    for (repo, artifact) in &pushes {
        let digest = client
            .push(repo, &args.tag, artifact)
            .map_err(anyhow::Error::msg)?;
        let img = artifact.host_image();
        let (u, c) = (img.uncompressed_size(), img.compressed_size());
        println!(
            "{}/{repo}:{} {digest} layers={} uncompressed={u} compressed={c} ratio={:.2}",
            args.registry,
            args.tag,
            img.layers.len(),
            u as f64 / c.max(1) as f64
        );
        for l in &img.layers {
            println!(
                "  {} {} {} -> {} ({:.2}:1)",
                l.digest,
                l.compression,
                l.uncompressed_size,
                l.size(),
                l.uncompressed_size as f64 / l.size().max(1) as f64
            );
        }
    }
    println!(
        "generated in {:.2} s, pushed in {:.2} s",
        gen_time.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

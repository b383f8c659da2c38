//! `dth-release`: the release artifacts that need no Docker engine. Today: the image.
//!
//! `dth-release image` writes one OCI image layout holding one image index (linux/amd64 + linux/arm64/v8)
//! of the static `finder` and `worker` (or one multi-call binary they link to), Mozilla's CA roots, a non-root
//! user and the OCI annotations; nothing else (no shell, no package manager). `scripts/build-image` runs it, `scripts/publish-image` pushes the
//! layout with `skopeo copy --all`.
//!
//! Why a layout written by hand with `oci-spec` (plus `tar`, `flate2`, `sha2`) rather than umoci:
//! - typed against the spec: index, manifests, configs and descriptors are oci-spec's types with the spec's
//!   media types, so a misspelt field or media type does not compile, rather than failing at a registry;
//! - one multi-platform index: umoci manages single-platform tags (one manifest per tag), and stitching two of
//!   them into an index would be hand-written JSON anyway;
//! - reproducibility under our control: umoci stamps the current time (and the unpacking user's view of file
//!   metadata) into layers and configs; here every byte follows from the binaries, Cargo.lock (CA roots,
//!   miniz_oxide) and the `--created` time, so two builds of one commit give the same index digest;
//! - the same crates (oci-spec's types, sha256 digests, the layout) will serve the registry side of moving the
//!   image (pushing and pulling by digest) later, with no second model of the format.

mod elf;
mod image;
mod layer;
mod package;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::image::{Platform, Spec};

#[derive(Parser)]
#[command(
    name = "dth-release",
    version,
    about = "dth's release artifacts, built without a Docker engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the multi-platform OCI image layout; prints the image index digest.
    Image(ImageArgs),
    /// Write terraform-provider-dth_<version>_<platform>.zip: the provider as registries and mirrors serve it.
    ProviderZip(package::ProviderZipArgs),
    /// Write a SHA256SUMS file (sha256sum format, sorted) over the given files.
    Sums(package::SumsArgs),
    /// Write the Terraform registry manifest (the plugin protocol versions the provider speaks).
    Manifest(package::ManifestArgs),
    /// Write a deterministic tar (.tar) or tar.gz (.tar.gz) of a directory, symlinks kept.
    Tarball(package::TarballArgs),
}

#[derive(Args)]
struct ImageArgs {
    /// ARCH=DIR with DIR/finder and DIR/worker, for amd64 and for arm64 (both required).
    #[arg(long = "bin-dir", value_name = "ARCH=DIR", required = true)]
    bin_dirs: Vec<String>,
    /// The image's version (org.opencontainers.image.version).
    #[arg(long)]
    version: String,
    /// The source revision it was built from (org.opencontainers.image.revision).
    #[arg(long)]
    revision: String,
    /// The source repository URL (org.opencontainers.image.source).
    #[arg(long)]
    source: String,
    /// RFC 3339 creation time, e.g. the commit time: annotations, config and every file's mtime.
    #[arg(long)]
    created: String,
    /// The tag given to the index in the layout's index.json (org.opencontainers.image.ref.name).
    #[arg(long)]
    tag: String,
    /// The layout directory to write (an OCI layout already there is replaced).
    #[arg(long)]
    out: PathBuf,
}

/// `--created` in UTC as `YYYY-MM-DDTHH:MM:SSZ`, and as seconds since the epoch.
fn parse_created(s: &str) -> Result<(String, u64)> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .with_context(|| {
            format!("--created {s}: not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z)")
        })?
        .to_offset(time::UtcOffset::UTC);
    let secs = u64::try_from(t.unix_timestamp())
        .map_err(|_| anyhow::anyhow!("--created {s}: before 1970"))?;
    let text = t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))?;
    Ok((text, secs))
}

/// A tag as the distribution spec allows it: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn spec(args: &ImageArgs) -> Result<Spec> {
    let mut bin_dirs: Vec<(Platform, PathBuf)> = Vec::new();
    for arg in &args.bin_dirs {
        let Some((arch, dir)) = arg.split_once('=') else {
            bail!("--bin-dir {arg}: expected ARCH=DIR, e.g. arm64=target/dist/linux_arm64");
        };
        let Some(platform) = Platform::parse(arch) else {
            bail!("--bin-dir {arg}: unknown architecture '{arch}' (amd64 or arm64)");
        };
        if dir.is_empty() {
            bail!("--bin-dir {arg}: empty directory");
        }
        if bin_dirs.iter().any(|(p, _)| *p == platform) {
            bail!("--bin-dir {arg}: {arch} given twice");
        }
        bin_dirs.push((platform, PathBuf::from(dir)));
    }
    for p in Platform::ALL {
        if !bin_dirs.iter().any(|(q, _)| *q == p) {
            bail!(
                "--bin-dir: missing {}=DIR (the image holds linux/amd64 and linux/arm64)",
                p.name()
            );
        }
    }
    bin_dirs.sort_by_key(|(p, _)| *p);
    for (flag, value) in [
        ("--version", &args.version),
        ("--revision", &args.revision),
        ("--source", &args.source),
    ] {
        if value.trim().is_empty() {
            bail!("{flag}: must not be empty");
        }
    }
    if !valid_tag(&args.tag) {
        bail!(
            "--tag {}: not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-], at most 128 characters)",
            args.tag
        );
    }
    let (created, mtime) = parse_created(&args.created)?;
    Ok(Spec {
        bin_dirs,
        version: args.version.clone(),
        revision: args.revision.clone(),
        source: args.source.clone(),
        created,
        mtime,
        tag: args.tag.clone(),
    })
}

fn image(args: ImageArgs) -> Result<()> {
    let started = Instant::now();
    let spec = spec(&args)?;
    let built = image::write(&spec, &args.out)?;
    for p in &built.platforms {
        eprintln!(
            "dth-release: {:<15} {:>10} bytes compressed (layer {} bytes gzip, {} bytes tar) manifest {}",
            p.platform.display(),
            p.compressed_size,
            p.layer_size,
            p.tar_size,
            p.manifest_digest
        );
    }
    eprintln!(
        "dth-release: wrote {} (tag {}) in {:.1} s",
        args.out.display(),
        spec.tag,
        started.elapsed().as_secs_f64()
    );
    println!("{}", built.index_digest);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(args) => image(args),
        Command::ProviderZip(args) => package::provider_zip_cmd(args),
        Command::Sums(args) => package::sums_cmd(args),
        Command::Manifest(args) => package::manifest_cmd(args),
        Command::Tarball(args) => package::tarball_cmd(args),
    };
    if let Err(e) = result {
        eprintln!("dth-release: error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_is_normalised_to_utc() {
        assert_eq!(
            parse_created("2026-03-01T10:20:30+02:00").unwrap(),
            ("2026-03-01T08:20:30Z".to_string(), 1_772_353_230)
        );
        assert_eq!(
            parse_created("2026-03-01T08:20:30.75Z").unwrap().0,
            "2026-03-01T08:20:30Z"
        );
        assert!(parse_created("yesterday")
            .unwrap_err()
            .to_string()
            .contains("--created"));
        assert!(parse_created("1969-12-31T23:59:59Z").is_err());
    }

    #[test]
    fn tags() {
        for ok in ["0.1.0", "latest", "v1.2.3-rc.1", "_x", &"a".repeat(128)] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", &"a".repeat(129)] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }

    fn args(bin_dirs: &[&str]) -> ImageArgs {
        ImageArgs {
            bin_dirs: bin_dirs.iter().map(|s| s.to_string()).collect(),
            version: "0.1.0".into(),
            revision: "abc".into(),
            source: "https://example.com/dth".into(),
            created: "2026-01-01T00:00:00Z".into(),
            tag: "0.1.0".into(),
            out: PathBuf::from("unused"),
        }
    }

    #[test]
    fn bin_dirs_name_the_flag() {
        let err = |a: &[&str]| spec(&args(a)).err().unwrap().to_string();
        assert!(err(&["amd64=a"]).contains("--bin-dir: missing arm64=DIR"));
        assert!(err(&["amd64=a", "arm64=b", "amd64=c"]).contains("given twice"));
        assert!(err(&["riscv64=a", "arm64=b"]).contains("unknown architecture 'riscv64'"));
        assert!(err(&["a"]).contains("expected ARCH=DIR"));
        let s = spec(&args(&["arm64=b", "amd64=a"])).unwrap();
        assert_eq!(s.bin_dirs[0], (Platform::Amd64, PathBuf::from("a")));
        assert_eq!(s.bin_dirs[1], (Platform::Arm64, PathBuf::from("b")));
    }
}

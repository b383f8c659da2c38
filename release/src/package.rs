//! The release's files besides the image, each a pure function of its inputs and one timestamp:
//!
//! - the provider zip the Terraform ecosystem installs (`terraform-provider-dth_<V>_<os>_<arch>.zip` holding the
//!   one executable `terraform-provider-dth_v<V>`), what a registry serves and a packed filesystem mirror holds;
//! - the `SHA256SUMS` file (`sha256sum` format) a registry signs and `terraform init` records as `zh:` hashes;
//! - the registry manifest (`terraform-provider-dth_<V>_manifest.json`: the plugin protocol the provider speaks);
//! - tarballs of a directory (the instances' binaries, the image's OCI layout): `layer.rs`'s fixed ustar headers,
//!   symlinks kept as symlinks, gzipped like the image's layers when the name ends in `.tar.gz`.

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::elf;
use crate::layer::{self, Entry};

/// What the provider speaks (provider/src/tfplugin): plugin protocol 6.0 only.
pub const PROTOCOL_VERSIONS: &[&str] = &["6.0"];

/// The platforms a provider zip may be for, with the ELF machine its binary must be built for.
const PLATFORMS: &[(&str, u16)] = &[
    ("linux_amd64", elf::EM_X86_64),
    ("linux_arm64", elf::EM_AARCH64),
];

/// A version as it appears in file names: `0.1.0`, `1.2.3-rc.1`, `1.0.0+build.5`.
pub fn check_version(version: &str) -> Result<()> {
    let ok = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    if !ok {
        bail!("version '{version}': expected a version such as 0.1.0 (digits, letters, '.', '-', '+')");
    }
    Ok(())
}

/// `terraform-provider-dth_<version>_<platform>.zip`
pub fn provider_zip_name(version: &str, platform: &str) -> String {
    format!("terraform-provider-dth_{version}_{platform}.zip")
}

/// The executable inside the zip: `terraform-provider-dth_v<version>` (what terraform runs after unpacking).
pub fn provider_binary_name(version: &str) -> String {
    format!("terraform-provider-dth_v{version}")
}

/// The zip's timestamp: `mtime` (seconds since the epoch, UTC) in MS-DOS form, which counts from 1980 in
/// steps of two seconds (an odd second rounds down).
fn dos_time(mtime: u64) -> Result<DateTime> {
    let secs = i64::try_from(mtime).map_err(|_| anyhow!("--mtime {mtime}: out of range"))?;
    let t = time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| anyhow!("--mtime {mtime}: out of range"))?;
    let year = u16::try_from(t.year()).unwrap_or(0);
    DateTime::from_date_and_time(
        year,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second() & !1,
    )
    .map_err(|_| {
        anyhow!(
            "--mtime {mtime}: a zip stores times from 1980 to 2107, not {}",
            t.date()
        )
    })
}

/// The provider zip for `platform` (`linux_amd64`, `linux_arm64`): exactly one entry,
/// `terraform-provider-dth_v<version>`, mode 0755, modified at `mtime`, deflated, no extra fields; the same
/// binary, version, platform and mtime give the same bytes. Refuses a binary built for another architecture.
pub fn provider_zip(binary: &[u8], version: &str, platform: &str, mtime: u64) -> Result<Vec<u8>> {
    check_version(version)?;
    let Some(&(_, machine)) = PLATFORMS.iter().find(|(p, _)| *p == platform) else {
        let known: Vec<&str> = PLATFORMS.iter().map(|(p, _)| *p).collect();
        bail!(
            "--platform {platform}: expected one of {}",
            known.join(", ")
        );
    };
    let elf = elf::inspect(binary).map_err(|why| anyhow!("--binary: {why}"))?;
    if elf.machine != machine {
        bail!(
            "--binary is an {} binary, but {platform} needs {}",
            elf::machine_name(elf.machine),
            elf::machine_name(machine)
        );
    }
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        // Level 6, not 9: on the 80 MB debug provider 9 took twice as long (10.3 s against 5.5 s) and came out
        // larger (19.63 MB against 19.53 MB).
        .compression_level(Some(6))
        .last_modified_time(dos_time(mtime)?)
        .unix_permissions(0o755)
        .large_file(false);
    let mut zip = ZipWriter::new(Cursor::new(Vec::with_capacity(binary.len() / 2)));
    zip.start_file(provider_binary_name(version), options)?;
    zip.write_all(binary)?;
    Ok(zip.finish()?.into_inner())
}

/// `sha256sum` output for `files` (name, bytes): `<hex>  <name>` per line, sorted by name (the order
/// `sha256sum` and goreleaser print for a sorted file list). Two files of one name are refused.
pub fn sums(files: &[(String, Vec<u8>)]) -> Result<String> {
    let mut lines: Vec<(&str, String)> = files
        .iter()
        .map(|(name, bytes)| (name.as_str(), hex::encode(Sha256::digest(bytes))))
        .collect();
    lines.sort();
    if let Some(w) = lines.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!("two files named {}", w[0].0);
    }
    let mut out = String::new();
    for (name, hex) in lines {
        if name.is_empty() || name.contains(['/', '\n']) {
            bail!("'{name}': a checksum line names a file by its base name");
        }
        out.push_str(&format!("{hex}  {name}\n"));
    }
    Ok(out)
}

/// The registry manifest: the plugin protocol versions the provider speaks, as the Terraform Registry reads
/// them from `terraform-provider-<name>_<version>_manifest.json`.
pub fn manifest() -> String {
    let protocols: Vec<String> = PROTOCOL_VERSIONS
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect();
    format!(
        "{{\n  \"version\": 1,\n  \"metadata\": {{\n    \"protocol_versions\": [{}]\n  }}\n}}\n",
        protocols.join(", ")
    )
}

/// The entries of `dir`, recursively, named relative to it: directories (0755), files (0755 when any execute
/// bit is set, else 0644) and symlinks (kept as links; `layer::tar` refuses one that leaves its directory).
fn entries(dir: &Path) -> Result<Vec<Entry>> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<Entry>) -> Result<()> {
        let here = root.join(rel);
        let read = fs::read_dir(&here).with_context(|| format!("reading {}", here.display()))?;
        for item in read {
            let item = item.with_context(|| format!("reading {}", here.display()))?;
            let name = item.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| anyhow!("{}: not a UTF-8 name", item.path().display()))?;
            let path = format!("{rel}{name}");
            let meta = fs::symlink_metadata(item.path())?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                let target = fs::read_link(item.path())?;
                let target = target
                    .to_str()
                    .ok_or_else(|| anyhow!("{}: not a UTF-8 link", item.path().display()))?;
                out.push(Entry::symlink(&path, target));
            } else if kind.is_dir() {
                out.push(Entry::dir(&format!("{path}/"), 0o755));
                walk(root, &format!("{path}/"), out)?;
            } else if kind.is_file() {
                use std::os::unix::fs::PermissionsExt;
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                let data = fs::read(item.path()).with_context(|| format!("reading {path}"))?;
                out.push(Entry::file(&path, mode, data));
            } else {
                bail!(
                    "{}: only files, directories and symlinks go into a tarball",
                    item.path().display()
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    if out.is_empty() {
        bail!("{} is empty", dir.display());
    }
    Ok(out)
}

/// A tar of everything under `dir` (its contents at the archive's root, sorted, fixed headers with `mtime`),
/// gzipped when `gzip`.
pub fn tarball(dir: &Path, mtime: u64, gzip: bool) -> Result<Vec<u8>> {
    let tar = layer::tar(entries(dir)?, mtime)?;
    if gzip {
        layer::gzip(&tar)
    } else {
        Ok(tar)
    }
}

/// `dth-release provider-zip`
#[derive(clap::Args)]
pub struct ProviderZipArgs {
    /// The provider executable to package.
    #[arg(long)]
    binary: PathBuf,
    /// The provider's version (in both names: the zip's and the executable's inside it).
    #[arg(long)]
    version: String,
    /// `linux_amd64` or `linux_arm64`; the binary must be built for it.
    #[arg(long)]
    platform: String,
    /// The entry's modification time, seconds since the epoch (the commit time: `git log -1 --format=%ct`).
    #[arg(long)]
    mtime: u64,
    /// The directory to write `terraform-provider-dth_<version>_<platform>.zip` into (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// `dth-release sums`
#[derive(clap::Args)]
pub struct SumsArgs {
    /// The checksums file to write.
    #[arg(long)]
    out: PathBuf,
    /// The files to list, each by its base name.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// `dth-release manifest`
#[derive(clap::Args)]
pub struct ManifestArgs {
    /// The manifest file to write (`terraform-provider-dth_<version>_manifest.json`).
    #[arg(long)]
    out: PathBuf,
}

/// `dth-release tarball`
#[derive(clap::Args)]
pub struct TarballArgs {
    /// The directory whose contents go into the archive, at its root.
    #[arg(long)]
    dir: PathBuf,
    /// Every entry's modification time, seconds since the epoch.
    #[arg(long)]
    mtime: u64,
    /// The archive to write: `.tar.gz` (gzipped) or `.tar`.
    #[arg(long)]
    out: PathBuf,
}

/// Write `bytes` to `path` through a temporary file beside it, so that no reader sees half a file.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Prints `<path> <size> bytes sha256:<hex>` for what was written, on stdout.
fn report(path: &Path, bytes: &[u8]) {
    println!(
        "{} {} bytes sha256:{}",
        path.display(),
        bytes.len(),
        hex::encode(Sha256::digest(bytes))
    );
}

pub fn provider_zip_cmd(args: ProviderZipArgs) -> Result<()> {
    let binary =
        fs::read(&args.binary).with_context(|| format!("--binary {}", args.binary.display()))?;
    let zip = provider_zip(&binary, &args.version, &args.platform, args.mtime)?;
    let path = args
        .out
        .join(provider_zip_name(&args.version, &args.platform));
    write_file(&path, &zip)?;
    report(&path, &zip);
    Ok(())
}

pub fn sums_cmd(args: SumsArgs) -> Result<()> {
    let mut files = Vec::new();
    for path in &args.files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{}: no file name", path.display()))?;
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        files.push((name.to_string(), bytes));
    }
    let text = sums(&files)?;
    write_file(&args.out, text.as_bytes())?;
    report(&args.out, text.as_bytes());
    Ok(())
}

pub fn manifest_cmd(args: ManifestArgs) -> Result<()> {
    let text = manifest();
    write_file(&args.out, text.as_bytes())?;
    report(&args.out, text.as_bytes());
    Ok(())
}

pub fn tarball_cmd(args: TarballArgs) -> Result<()> {
    let name = args.out.to_string_lossy();
    let gzip = if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        true
    } else if name.ends_with(".tar") {
        false
    } else {
        bail!("--out {name}: name it .tar.gz (gzipped) or .tar");
    };
    let bytes = tarball(&args.dir, args.mtime, gzip)?;
    write_file(&args.out, &bytes)?;
    report(&args.out, &bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::Command;

    const T: u64 = 1_767_225_601; // 2026-01-01T00:00:01Z

    fn amd64_binary() -> Vec<u8> {
        let mut b = elf::fake(elf::EM_X86_64, &[]);
        b.extend((0..200_000u32).map(|i| (i % 251) as u8));
        b
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dth-package-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn provider_zip_is_deterministic_and_holds_one_executable() {
        let bin = amd64_binary();
        let a = provider_zip(&bin, "0.1.0", "linux_amd64", T).unwrap();
        assert_eq!(a, provider_zip(&bin, "0.1.0", "linux_amd64", T).unwrap());
        // Two seconds later is another zip; one second is not (MS-DOS time counts in twos).
        assert_eq!(
            a,
            provider_zip(&bin, "0.1.0", "linux_amd64", T - 1).unwrap()
        );
        assert_ne!(
            a,
            provider_zip(&bin, "0.1.0", "linux_amd64", T + 1).unwrap()
        );
        assert!(a.len() < bin.len() / 2, "deflated: {} bytes", a.len());

        let mut zip = zip::ZipArchive::new(Cursor::new(&a)).unwrap();
        assert_eq!(zip.len(), 1);
        let mut f = zip.by_index(0).unwrap();
        assert_eq!(f.name(), "terraform-provider-dth_v0.1.0");
        assert_eq!(f.compression(), CompressionMethod::Deflated);
        assert_eq!(f.unix_mode(), Some(0o100755));
        assert!(
            f.extra_data().is_none_or(|e| e.is_empty()),
            "no extra fields"
        );
        let m = f.last_modified().unwrap();
        assert_eq!(
            (
                m.year(),
                m.month(),
                m.day(),
                m.hour(),
                m.minute(),
                m.second()
            ),
            (2026, 1, 1, 0, 0, 0)
        );
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, bin);
    }

    /// What Info-ZIP's `zipinfo` (the `unzip -Z` listing) makes of it, when it is installed.
    #[test]
    fn zipinfo_lists_one_0755_file() {
        let dir = temp("zipinfo");
        let path = dir.join("p.zip");
        fs::write(
            &path,
            provider_zip(&amd64_binary(), "1.2.3", "linux_amd64", T).unwrap(),
        )
        .unwrap();
        let out = match Command::new("unzip").arg("-Z").arg(&path).output() {
            Ok(out) => out,
            Err(e) => {
                eprintln!("unzip not installed ({e}): the listing is not checked");
                return;
            }
        };
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // "Archive: ...", "Zip file size: ... number of entries: 1", one file line, the totals line.
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].ends_with("number of entries: 1"), "{text}");
        let file: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(file[0], "-rwxr-xr-x", "{text}");
        assert_eq!(file[2], "unx", "made on unix: {text}");
        // Binary; '-': no extra field and no data descriptor (an 'x' or 'l' there would say so).
        assert_eq!(file[4], "b-", "{text}");
        assert!(file[5].starts_with("def"), "deflated: {text}");
        assert_eq!(
            file[6..],
            ["26-Jan-01", "00:00", "terraform-provider-dth_v1.2.3"]
        );
        assert!(lines[3].starts_with("1 file,"), "{text}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn provider_zip_refuses_the_wrong_binary_or_names() {
        let bin = amd64_binary();
        let err = |r: Result<Vec<u8>>| r.unwrap_err().to_string();
        assert!(err(provider_zip(&bin, "0.1.0", "linux_arm64", T))
            .contains("an x86_64 binary, but linux_arm64 needs aarch64"));
        assert!(err(provider_zip(b"#!/bin/sh\n", "0.1.0", "linux_amd64", T)).contains("not an ELF"));
        assert!(
            err(provider_zip(&bin, "0.1.0", "windows_386", T)).contains("linux_amd64, linux_arm64")
        );
        assert!(err(provider_zip(&bin, "v0.1.0", "linux_amd64", T)).contains("version 'v0.1.0'"));
        assert!(err(provider_zip(&bin, "0.1/0", "linux_amd64", T)).contains("version"));
        assert!(err(provider_zip(&bin, "0.1.0", "linux_amd64", 0)).contains("1980"));
        let arm = elf::fake(elf::EM_AARCH64, &[]);
        assert!(provider_zip(&arm, "0.1.0", "linux_arm64", T).is_ok());
    }

    #[test]
    fn sums_are_sorted_sha256sum_lines_that_sha256sum_checks() {
        let files = vec![
            ("b.zip".to_string(), b"bee".to_vec()),
            ("a_manifest.json".to_string(), manifest().into_bytes()),
            ("a.zip".to_string(), Vec::new()),
        ];
        let text = sums(&files).unwrap();
        let names: Vec<&str> = text.lines().map(|l| &l[66..]).collect();
        assert_eq!(names, ["a.zip", "a_manifest.json", "b.zip"]);
        assert!(text.starts_with(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a.zip\n"
        ));
        assert!(sums(&[files[0].clone(), files[0].clone()])
            .unwrap_err()
            .to_string()
            .contains("two files named b.zip"));
        assert!(sums(&[("x/y".into(), vec![])]).is_err());

        // coreutils agrees, byte for byte.
        let dir = temp("sums");
        for (name, bytes) in &files {
            fs::write(dir.join(name), bytes).unwrap();
        }
        let out = Command::new("sha256sum")
            .args(["a.zip", "a_manifest.json", "b.zip"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
        fs::write(dir.join("SUMS"), &text).unwrap();
        let check = Command::new("sha256sum")
            .args(["--check", "--strict", "SUMS"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(check.status.success());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn manifest_is_the_registry_manifest() {
        let v: serde_json::Value = serde_json::from_str(&manifest()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version": 1, "metadata": {"protocol_versions": ["6.0"]}})
        );
    }

    #[test]
    fn tarball_keeps_symlinks_and_is_deterministic() {
        let dir = temp("tarball");
        fs::write(dir.join("dth"), b"multi-call binary").unwrap();
        use std::os::unix::fs::{symlink, PermissionsExt};
        fs::set_permissions(dir.join("dth"), fs::Permissions::from_mode(0o700)).unwrap();
        symlink("dth", dir.join("finder")).unwrap();
        symlink("dth", dir.join("worker")).unwrap();
        fs::create_dir(dir.join("doc")).unwrap();
        fs::write(dir.join("doc/README"), b"read me").unwrap();

        let gz = tarball(&dir, T, true).unwrap();
        assert_eq!(gz, tarball(&dir, T, true).unwrap());
        let tar = tarball(&dir, T, false).unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, tar);

        let mut seen = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
                h.entry_type(),
                e.link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
                h.mtime().unwrap(),
            ));
        }
        use tar::EntryType::{Directory, Regular, Symlink};
        let link = Some("dth".to_string());
        assert_eq!(
            seen,
            [
                ("doc/".into(), 0o755, Directory, None, T),
                ("doc/README".into(), 0o644, Regular, None, T),
                ("dth".into(), 0o755, Regular, None, T),
                ("finder".into(), 0o777, Symlink, link.clone(), T),
                ("worker".into(), 0o777, Symlink, link, T),
            ]
        );

        // A link out of the directory is refused, not followed.
        symlink("../etc/passwd", dir.join("escape")).unwrap();
        assert!(tarball(&dir, T, true).is_err());
        let _ = fs::remove_dir_all(dir);
    }
}

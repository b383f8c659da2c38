//! The image's one layer: a tar whose bytes depend only on its entries and one timestamp, gzipped with a fixed
//! header. Every header is plain ustar: the path, a fixed mode, uid/gid 0, no user or group names, mtime = the
//! image's creation time, no PAX records (so no atime/ctime), entries in byte order of their paths. Entries are
//! directories, regular files and relative symlinks.

use std::io::Write;

use anyhow::{bail, Context, Result};
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// One directory, file or symlink of the layer. Directory paths end in `/`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    /// A symlink to this target, relative to the link's directory.
    Symlink(String),
}

impl Entry {
    pub fn dir(path: &str, mode: u32) -> Entry {
        assert!(path.ends_with('/'), "directory paths end in /: {path}");
        Entry {
            path: path.into(),
            mode,
            kind: Kind::Dir,
        }
    }

    pub fn file(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Entry {
        assert!(!path.ends_with('/'), "file paths do not end in /: {path}");
        Entry {
            path: path.into(),
            mode,
            kind: Kind::File(data.into()),
        }
    }

    /// A symlink (mode 0777, as symlinks are) to `target`, a name in the same directory.
    pub fn symlink(path: &str, target: &str) -> Entry {
        assert!(
            !path.ends_with('/'),
            "symlink paths do not end in /: {path}"
        );
        Entry {
            path: path.into(),
            mode: 0o777,
            kind: Kind::Symlink(target.into()),
        }
    }
}

/// A built layer: the uncompressed tar's digest (the config's diff_id) and the gzipped blob.
pub struct Layer {
    pub diff_id: String,
    pub tar_size: u64,
    pub gzip: Vec<u8>,
}

/// The tar of `entries`, sorted by path; every header's mtime is `mtime` (seconds since the epoch).
pub fn tar(mut entries: Vec<Entry>, mtime: u64) -> Result<Vec<u8>> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) = entries.windows(2).find(|w| w[0].path == w[1].path) {
        bail!("two layer entries at {}", w[0].path);
    }
    let mut builder = tar::Builder::new(Vec::new());
    for e in &entries {
        if e.path.starts_with('/') || e.path.split('/').any(|s| s == "..") {
            bail!(
                "layer path {} must be relative and stay inside the image",
                e.path
            );
        }
        let mut h = Header::new_ustar();
        h.set_path(&e.path)
            .with_context(|| format!("layer path {}", e.path))?;
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_device_major(0)?;
        h.set_device_minor(0)?;
        let data: &[u8] = match &e.kind {
            Kind::File(d) => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(d.len() as u64);
                d
            }
            Kind::Dir => {
                h.set_entry_type(EntryType::Directory);
                h.set_size(0);
                &[]
            }
            Kind::Symlink(target) => {
                if target.is_empty()
                    || target.starts_with('/')
                    || target.split('/').any(|s| s == "..")
                {
                    bail!(
                        "symlink {} -> {target} must point inside its directory",
                        e.path
                    );
                }
                h.set_entry_type(EntryType::Symlink);
                h.set_link_name(target)
                    .with_context(|| format!("symlink {} -> {target}", e.path))?;
                h.set_size(0);
                &[]
            }
        };
        h.set_cksum();
        builder.append(&h, data)?;
    }
    Ok(builder.into_inner()?)
}

/// gzip with mtime 0, no file name and "unknown" OS, at the best compression: the same input gives the same
/// bytes on every machine (miniz_oxide's version is pinned by Cargo.lock).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::with_capacity(data.len() / 2), Compression::best());
    gz.write_all(data)?;
    Ok(gz.finish()?)
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn build(entries: Vec<Entry>, mtime: u64) -> Result<Layer> {
    let tar = tar(entries, mtime)?;
    Ok(Layer {
        diff_id: sha256(&tar),
        tar_size: tar.len() as u64,
        gzip: gzip(&tar)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entries() -> Vec<Entry> {
        vec![
            Entry::file("usr/local/bin/worker", 0o755, b"worker bytes".to_vec()),
            Entry::dir("tmp/", 0o1777),
            Entry::file("etc/passwd", 0o644, "root:x:0:0:root:/root:/sbin/nologin\n"),
            Entry::dir("etc/", 0o755),
            Entry::dir("usr/local/bin/", 0o755),
            Entry::file("usr/local/bin/finder", 0o755, vec![7u8; 3000]),
            Entry::symlink("usr/local/bin/find", "finder"),
        ]
    }

    const T: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    #[test]
    fn same_entries_same_bytes_in_any_order() {
        let a = build(entries(), T).unwrap();
        let mut shuffled = entries();
        shuffled.reverse();
        shuffled.swap(1, 4);
        let b = build(shuffled, T).unwrap();
        assert_eq!(a.diff_id, b.diff_id);
        assert_eq!(a.gzip, b.gzip);
        assert_eq!(tar(entries(), T).unwrap(), tar(entries(), T).unwrap());
        // The time is the only thing the caller varies, and it shows.
        assert_ne!(build(entries(), T + 1).unwrap().diff_id, a.diff_id);
    }

    #[test]
    fn headers_are_fixed_and_sorted() {
        let bytes = tar(entries(), T).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            assert!(h.as_ustar().is_some(), "{path}: ustar header");
            assert_eq!(h.mtime().unwrap(), T, "{path}");
            assert_eq!(h.uid().unwrap(), 0, "{path}");
            assert_eq!(h.gid().unwrap(), 0, "{path}");
            assert_eq!(h.username_bytes(), Some(&b""[..]), "{path}");
            assert_eq!(h.groupname_bytes(), Some(&b""[..]), "{path}");
            assert!(
                e.pax_extensions().unwrap().is_none(),
                "{path}: no PAX records"
            );
            let mode = h.mode().unwrap();
            let kind = h.entry_type();
            if kind == EntryType::Symlink {
                assert_eq!(e.link_name().unwrap().unwrap().to_str(), Some("finder"));
            }
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.push((path, mode, kind, data.len()));
        }
        let paths: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "etc/",
                "etc/passwd",
                "tmp/",
                "usr/local/bin/",
                "usr/local/bin/find",
                "usr/local/bin/finder",
                "usr/local/bin/worker"
            ]
        );
        let modes: Vec<u32> = seen.iter().map(|s| s.1).collect();
        assert_eq!(modes, [0o755, 0o644, 0o1777, 0o755, 0o777, 0o755, 0o755]);
        assert!(seen
            .iter()
            .all(|s| (s.2 == EntryType::Directory) == s.0.ends_with('/')));
        assert_eq!(seen[4].2, EntryType::Symlink);
        assert_eq!(seen[4].3, 0);
        assert_eq!(seen[5].3, 3000);
        // Two zero blocks end the archive; the whole is a multiple of 512 bytes.
        assert_eq!(bytes.len() % 512, 0);
        assert!(bytes[bytes.len() - 1024..].iter().all(|&b| b == 0));
    }

    #[test]
    fn gzip_header_has_no_time_or_name() {
        let gz = gzip(b"hello").unwrap();
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(gz[3], 0, "no FNAME/FCOMMENT/FEXTRA flags");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(gz[9], 255, "OS unknown");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello");
    }

    #[test]
    fn refuses_duplicates_and_escaping_paths() {
        let mut e = entries();
        e.push(Entry::file("etc/passwd", 0o644, "again"));
        assert!(tar(e, T).unwrap_err().to_string().contains("etc/passwd"));
        assert!(tar(vec![Entry::file("/etc/x", 0o644, "")], T).is_err());
        assert!(tar(vec![Entry::file("etc/../../x", 0o644, "")], T).is_err());
        assert!(tar(vec![Entry::symlink("usr/x", "/bin/sh")], T).is_err());
        assert!(tar(vec![Entry::symlink("usr/x", "../etc/passwd")], T).is_err());
    }
}

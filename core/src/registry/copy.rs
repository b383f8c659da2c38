//! Copying one image between registries, pinned by digest, digests preserved.
//!
//! The order is what makes a copy safe to interrupt at any point (a worker killed, a registry failing):
//! 1. blobs — each skipped when the destination has it (`HEAD`), mounted from another repository of the
//!    destination registry when one is known to hold it (the source repository when both are one registry, or
//!    a repository this process pushed it to), otherwise streamed from the source in chunks (`PATCH`, at least
//!    5 MiB each but the last: ECR's minimum) with its SHA-256 computed on the way and checked, with its size,
//!    before the upload is committed (`PUT ?digest=`); `worker.part_concurrency` blobs at once;
//! 2. the manifests of an index, by digest (untagged), byte for byte;
//! 3. the image's own manifest, by digest for an untagged image or by its tag — last: a tag at the destination
//!    always names a complete image, and until the last step the destination's tag still names the old one.
//!
//! A failed blob is tried again from the start (a new upload session) a few times; the copy as a whole is
//! retried by the caller. Memory: one chunk per blob in flight, reserved from the worker's [`MemoryBudget`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};

use super::client::{Registry, UploadStart};
use super::manifest::{Descriptor, Manifest, Parsed, Plan};
use crate::error::{Error, ErrorKind, Result};
use crate::limit::MemoryBudget;
use crate::stats::{StatEvent, Stats};

/// ECR refuses upload chunks below 5 MiB (but the last).
pub const MIN_CHUNK: usize = 5 * 1024 * 1024;

/// Attempts at one blob before the copy fails.
const BLOB_ATTEMPTS: u32 = 4;

/// Deepest nesting of indexes followed (an index of indexes is legal OCI, and rare).
const MAX_DEPTH: usize = 4;

#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Platforms to copy (`os/arch[/variant]`); empty: all (see [`Plan`]).
    pub platforms: Vec<String>,
    /// Blobs of one image copied at once.
    pub blob_concurrency: usize,
    /// Bytes per upload chunk (at least [`MIN_CHUNK`]).
    pub chunk_size: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            platforms: Vec::new(),
            blob_concurrency: 4,
            chunk_size: MIN_CHUNK,
        }
    }
}

/// What one copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// The digest the destination's tag (or untagged reference) now names.
    pub digest: String,
    /// Bytes of every blob of the image (what it weighs).
    pub bytes: u64,
    /// Bytes uploaded (blobs that were neither present nor mounted).
    pub bytes_uploaded: u64,
    pub blobs_uploaded: u64,
    pub blobs_mounted: u64,
    pub blobs_present: u64,
    /// Manifests pushed (children and the image's own).
    pub manifests: u64,
}

enum BlobOutcome {
    Present,
    Mounted,
    Uploaded(u64),
}

/// Copies images from one registry to another (or within one).
pub struct ImageCopier {
    pub source: Registry,
    pub destination: Registry,
    pub options: CopyOptions,
    memory: MemoryBudget,
    stats: Stats,
    /// Blobs known to be in a destination repository (digest → repository): a later image needing one is
    /// mounted from there rather than uploaded again.
    known: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for ImageCopier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCopier")
            .field("source", &self.source)
            .field("destination", &self.destination)
            .finish()
    }
}

impl ImageCopier {
    pub fn new(
        source: Registry,
        destination: Registry,
        mut options: CopyOptions,
        memory: MemoryBudget,
        stats: Stats,
    ) -> Self {
        options.chunk_size = options.chunk_size.max(MIN_CHUNK);
        options.blob_concurrency = options.blob_concurrency.max(1);
        ImageCopier {
            source,
            destination,
            options,
            memory,
            stats,
            known: Mutex::default(),
        }
    }

    fn same_registry(&self) -> bool {
        self.source.address() == self.destination.address()
    }

    /// The manifests to push for `top` as the plan says, children first (the image's own manifest not
    /// included), and the manifest the tag will name.
    pub async fn manifests(
        &self,
        repository: &str,
        top: &Manifest,
    ) -> Result<(Vec<Manifest>, Manifest)> {
        match Plan::of(top, &self.options.platforms)? {
            Plan::Whole => {
                let mut children = Vec::new();
                self.children(repository, top, 0, &mut children).await?;
                Ok((children, top.clone()))
            }
            Plan::Child(d) => {
                let child = self.source.get_manifest(repository, &d.digest).await?;
                let mut children = Vec::new();
                self.children(repository, &child, 0, &mut children).await?;
                Ok((children, child))
            }
            Plan::Filtered {
                index,
                children: ds,
            } => {
                let mut children = Vec::new();
                for d in ds {
                    let child = self.source.get_manifest(repository, &d.digest).await?;
                    self.children(repository, &child, 0, &mut children).await?;
                    children.push(child);
                }
                Ok((children, index))
            }
        }
    }

    /// Every manifest `m` references, depth first, children before their index.
    async fn children(
        &self,
        repository: &str,
        m: &Manifest,
        depth: usize,
        out: &mut Vec<Manifest>,
    ) -> Result<()> {
        if !m.is_index() {
            return Ok(());
        }
        if depth >= MAX_DEPTH {
            return Err(Error::new(
                ErrorKind::Other,
                format!("indexes nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let Parsed::Index { manifests } = m.parse()? else {
            return Ok(());
        };
        for d in manifests {
            if out.iter().any(|o| o.digest == d.digest) {
                continue;
            }
            let child = self.source.get_manifest(repository, &d.digest).await?;
            Box::pin(self.children(repository, &child, depth + 1, out)).await?;
            out.push(child);
        }
        Ok(())
    }

    /// The blobs of `manifests`, each once, by digest.
    pub fn blobs(manifests: &[&Manifest]) -> Result<Vec<Descriptor>> {
        let mut out: BTreeMap<String, Descriptor> = BTreeMap::new();
        for m in manifests {
            for d in m.parse()?.blobs() {
                out.entry(d.digest.clone()).or_insert_with(|| d.clone());
            }
        }
        Ok(out.into_values().collect())
    }

    /// Copy `source_repository@digest` to `destination_repository`, tagged `tag` (last) or untagged.
    pub async fn copy(
        &self,
        source_repository: &str,
        digest: &str,
        destination_repository: &str,
        tag: Option<&str>,
    ) -> Result<CopyReport> {
        let top = self.source.get_manifest(source_repository, digest).await?;
        let (children, target) = self.manifests(source_repository, &top).await?;
        let all: Vec<&Manifest> = children.iter().chain(std::iter::once(&target)).collect();
        let blobs = Self::blobs(&all)?;
        if let Some(b) = blobs.iter().find(|b| !b.digest.starts_with("sha256:")) {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "blob {} of {}: only sha256 digests are verified by this copier",
                    b.digest,
                    self.source.describe(source_repository, digest)
                ),
            ));
        }
        let mut report = CopyReport {
            digest: target.digest.clone(),
            bytes: blobs.iter().map(|b| b.size).sum(),
            ..Default::default()
        };
        // Futures built first, then driven: keeps a spawned caller's future free of higher-ranked lifetimes.
        let futures: Vec<_> = blobs
            .iter()
            .map(|b| self.blob(source_repository, destination_repository, b))
            .collect();
        let outcomes: Vec<BlobOutcome> = stream::iter(futures)
            .buffer_unordered(self.options.blob_concurrency)
            .try_collect()
            .await?;
        for o in outcomes {
            match o {
                BlobOutcome::Present => report.blobs_present += 1,
                BlobOutcome::Mounted => report.blobs_mounted += 1,
                BlobOutcome::Uploaded(n) => {
                    report.blobs_uploaded += 1;
                    report.bytes_uploaded += n;
                }
            }
        }
        for child in &children {
            self.destination
                .put_manifest(destination_repository, &child.digest, child)
                .await?;
            report.manifests += 1;
        }
        let reference = tag.unwrap_or(&target.digest);
        self.destination
            .put_manifest(destination_repository, reference, &target)
            .await?;
        report.manifests += 1;
        Ok(report)
    }

    /// One blob, tried again from the start when it fails in a way another try can fix.
    async fn blob(&self, src: &str, dst: &str, d: &Descriptor) -> Result<BlobOutcome> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.blob_once(src, dst, d).await {
                Ok(o) => {
                    self.known
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(d.digest.clone(), dst.to_owned());
                    return Ok(o);
                }
                Err(e) if e.is_retryable() && attempt < BLOB_ATTEMPTS => {
                    tracing::info!(blob = %d.digest, attempt, "blob copy failed, starting it again: {e}");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn blob_once(&self, src: &str, dst: &str, d: &Descriptor) -> Result<BlobOutcome> {
        if self.destination.blob_size(dst, &d.digest).await?.is_some() {
            return Ok(BlobOutcome::Present);
        }
        let from = if self.same_registry() && src != dst {
            Some(src.to_owned())
        } else {
            self.known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&d.digest)
                .filter(|r| r.as_str() != dst)
                .cloned()
        };
        let mount = from.as_deref().map(|f| (d.digest.as_str(), f));
        let mut upload = match self.destination.start_upload(dst, mount).await? {
            UploadStart::Mounted => return Ok(BlobOutcome::Mounted),
            UploadStart::Session(u) => u,
        };
        let streamed = self.stream(src, d, &mut upload).await;
        match streamed {
            Ok(()) => {
                self.destination.finish_upload(upload, &d.digest).await?;
                Ok(BlobOutcome::Uploaded(d.size))
            }
            Err(e) => {
                self.destination.cancel_upload(upload).await;
                Err(e)
            }
        }
    }

    /// Stream the blob from the source into the upload session, chunk by chunk; check its digest and size.
    async fn stream(
        &self,
        src: &str,
        d: &Descriptor,
        upload: &mut super::client::Upload,
    ) -> Result<()> {
        let chunk_size = self.options.chunk_size;
        let _memory = self.memory.reserve(chunk_size as u64).await;
        let mut reader = self.source.get_blob(src, &d.digest).await?;
        let mut hasher = Sha256::new();
        let mut buf = BytesMut::with_capacity(d.size.min(chunk_size as u64) as usize);
        let mut total = 0u64;
        while let Some(mut data) = reader.chunk().await? {
            total += data.len() as u64;
            if total > d.size {
                return Err(Error::integrity(format!(
                    "blob {} of {}/{src} is larger than its descriptor's {} bytes",
                    d.digest,
                    self.source.address(),
                    d.size
                )));
            }
            hasher.update(&data);
            while !data.is_empty() {
                // One chunk's buffer, allocated once the last chunk is sent (never two at a time).
                buf.reserve(chunk_size - buf.len());
                let take = (chunk_size - buf.len()).min(data.len());
                buf.extend_from_slice(&data.split_to(take));
                if buf.len() == chunk_size {
                    let chunk: Bytes = buf.split().freeze();
                    self.stats.send(StatEvent::Bytes(chunk.len() as u64));
                    self.destination.upload_chunk(upload, chunk).await?;
                }
            }
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if total != d.size || actual != d.digest {
            return Err(Error::integrity(format!(
                "blob {} of {}/{src}: read {total} bytes with digest {actual}, expected {} bytes",
                d.digest,
                self.source.address(),
                d.size
            )));
        }
        if !buf.is_empty() {
            let chunk = buf.split().freeze();
            self.stats.send(StatEvent::Bytes(chunk.len() as u64));
            self.destination.upload_chunk(upload, chunk).await?;
        }
        Ok(())
    }
}

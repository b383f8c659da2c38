//! Object storage behind one trait: Amazon S3 and S3-compatible endpoints ([`s3::S3Store`]) and an in-memory
//! store for unit tests ([`memory::MemoryStore`]).

pub mod memory;
pub mod s3;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Without quotes.
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Epoch milliseconds (S3 keeps whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<i64>,
}

#[derive(Debug, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    pub common_prefixes: Vec<String>,
    pub next_token: Option<String>,
}

/// The headers, metadata and settings that travel with an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub content_disposition: Option<String>,
    pub cache_control: Option<String>,
    /// HTTP-date, as received.
    pub expires: Option<String>,
    pub user: BTreeMap<String, String>,
}

/// What HEAD (or the headers of a GET) says about an object.
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub size: u64,
    pub etag: String,
    pub version_id: Option<String>,
    pub meta: ObjectMeta,
    /// `AES256`, `aws:kms`, `aws:kms:dsse`, or none.
    pub sse: Option<String>,
    pub storage_class: Option<String>,
    /// `x-amz-restore`: `ongoing-request="false"` means a restored copy of an archived object is readable.
    pub restore: Option<String>,
    /// Tags, when the response says how many there are.
    pub tag_count: Option<u32>,
    /// Full-object checksums by algorithm (`CRC32`, `SHA256`, ...), when the store keeps them.
    pub checksums: BTreeMap<String, String>,
    /// Epoch milliseconds.
    pub last_modified: Option<i64>,
}

impl Head {
    /// The ETag is the MD5 of the bytes (or of the part MD5s): true unless KMS encrypted the object.
    pub fn etag_is_md5(&self) -> bool {
        !matches!(self.sse.as_deref(), Some(s) if s.starts_with("aws:kms"))
    }

    pub fn is_archived_unrestored(&self) -> bool {
        is_archive_class(self.storage_class.as_deref())
            && !self
                .restore
                .as_deref()
                .is_some_and(|r| r.contains("ongoing-request=\"false\""))
    }
}

pub fn is_archive_class(class: Option<&str>) -> bool {
    matches!(class, Some("GLACIER" | "DEEP_ARCHIVE"))
}

/// Which version of a source object a read must see; a read that would see another one fails with
/// `PreconditionFailed`, so one copy never mixes two versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    Version(String),
    ETag(String),
    Latest,
}

impl Pin {
    pub fn of(etag: &str, version_id: Option<&str>) -> Self {
        match version_id {
            Some(v) if !v.is_empty() && v != "null" => Pin::Version(v.to_owned()),
            _ if !etag.is_empty() => Pin::ETag(etag.to_owned()),
            _ => Pin::Latest,
        }
    }
}

/// How objects are written at the destination.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub meta: ObjectMeta,
    pub tags: Vec<(String, String)>,
    pub storage_class: Option<String>,
    pub acl: Option<String>,
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
}

/// Checksums of bytes about to be written, sent with them for the store to check: Content-MD5 (when computed),
/// and S3's CRC64NVME additional checksum (checked whatever encrypts the object, and kept with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sums {
    pub md5: Option<[u8; 16]>,
    pub crc64: u64,
    pub len: u64,
}

impl Sums {
    pub fn of(bytes: &[u8]) -> Self {
        Sums {
            md5: Some(md5_of(bytes)),
            ..Self::crc_only(bytes)
        }
    }

    /// CRC64NVME only: for a store shown to check it and to name what it received by its own MD5 (the ETag),
    /// which then makes ours redundant. MD5 is most of the copy path's CPU (no instructions for it on arm64).
    pub fn crc_only(bytes: &[u8]) -> Self {
        Sums {
            md5: None,
            crc64: crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, bytes),
            len: bytes.len() as u64,
        }
    }

    /// Whether `bytes` have these sums (an MD5 left out is not compared).
    pub fn fit(&self, bytes: &[u8]) -> bool {
        let real = Sums::of(bytes);
        real.crc64 == self.crc64
            && real.len == self.len
            && self.md5.is_none_or(|m| real.md5 == Some(m))
    }
}

/// The CRC64NVME of two byte runs one after the other, from theirs.
pub fn crc64_concat(a: u64, b: u64, b_len: u64) -> u64 {
    if b_len == 0 {
        return a;
    }
    crc_fast::checksum_combine(crc_fast::CrcAlgorithm::Crc64Nvme, a, b, b_len)
}

/// A CRC64NVME as S3 writes it: base64 of its 8 big-endian bytes.
pub fn crc64_b64(crc: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// What a write left at the destination, as its answer says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub etag: String,
    /// `AES256`, `aws:kms`, …: under KMS the ETag is no MD5.
    pub sse: Option<String>,
    /// The CRC64NVME the store computed, when it says.
    pub crc64: Option<String>,
}

/// A destination write's precondition (S3 conditional writes): write only if the key is still as the finder
/// saw it, so that a delayed job never overwrites a newer copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteIf {
    Always,
    /// `If-None-Match: *`.
    Absent,
    /// `If-Match: <etag>`.
    Matches(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u32,
    pub size: u64,
    pub etag: String,
    /// The part's CRC64NVME (base64), when the upload has one.
    pub crc64: Option<String>,
}

/// A body and the headers that came with it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub body: Bytes,
    pub head: Head,
}

#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// The bucket this store reads and writes, for messages.
    fn bucket(&self) -> &str;

    /// One page of keys under `prefix`, in S3's (byte-wise) order. With a delimiter, keys below the next
    /// delimiter are rolled up into `common_prefixes`.
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
    ) -> Result<ListPage>;

    /// Metadata of an object. `NotFound` when it does not exist, `PreconditionFailed` when the pin does not hold.
    async fn head(&self, key: &str, pin: &Pin) -> Result<Head>;

    /// Size of part `n` of a multipart-uploaded object (HEAD `?partNumber=n`), or None if the store does not say.
    async fn part_size(&self, key: &str, pin: &Pin, part_number: u32) -> Result<Option<u64>>;

    /// Bytes `range` (start, end exclusive) or the whole object.
    async fn get(&self, key: &str, range: Option<(u64, u64)>, pin: &Pin) -> Result<Fetched>;

    async fn get_tags(&self, key: &str, pin: &Pin) -> Result<Vec<(String, String)>>;

    /// Single PUT with `Content-MD5` and a CRC64NVME checksum, if `cond` holds (else `Superseded`).
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        sums: Sums,
        opts: &WriteOptions,
        cond: &WriteIf,
    ) -> Result<Written>;

    /// Start an upload whose object will carry a full-object CRC64NVME checksum.
    async fn create_multipart(&self, key: &str, opts: &WriteOptions) -> Result<String>;

    /// Upload a part with `Content-MD5` and its CRC64NVME.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
        sums: Sums,
    ) -> Result<Written>;

    /// Complete with the whole object's CRC64NVME (when known), if `cond` holds (else `Superseded`).
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        crc64: Option<u64>,
        cond: &WriteIf,
    ) -> Result<Written>;

    /// The bucket's default encryption (`AES256`, `aws:kms`, …), or None when it has none or will not say.
    async fn default_encryption(&self) -> Result<Option<String>> {
        Ok(None)
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()>;

    /// Incomplete uploads whose key starts with `prefix`.
    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<UploadInfo>>;

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<PartInfo>>;

    async fn delete(&self, key: &str) -> Result<()>;
}

/// The ETag S3 gives an object uploaded in parts: MD5 of the concatenated part MD5s, `-<count>`.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    for p in part_md5s {
        h.update(p);
    }
    format!("{}-{}", hex::encode(h.finalize()), part_md5s.len())
}

/// Number of parts an ETag says the object was uploaded in (`"…-12"` → 12).
pub fn etag_part_count(etag: &str) -> Option<u32> {
    let (_, n) = etag.rsplit_once('-')?;
    n.parse().ok().filter(|n| *n > 0)
}

pub fn md5_of(bytes: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(bytes).into()
}

pub fn trim_etag(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_of_a_whole_is_the_concatenation_of_its_parts() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = Sums::of(&data).crc64;
        for cut in [0, 1, 4096, 50_000, 99_999, 100_000] {
            let (a, b) = data.split_at(cut);
            let joined = crc64_concat(Sums::of(a).crc64, Sums::of(b).crc64, b.len() as u64);
            assert_eq!(joined, whole, "cut at {cut}");
        }
        // S3's test vector for CRC64NVME ("123456789" → 0xAE8B14860A799888).
        assert_eq!(Sums::of(b"123456789").crc64, 0xAE8B_1486_0A79_9888);
    }
}

//! [`ObjectStore`] over the S3 API: Amazon S3 in any partition, and S3-compatible endpoints.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart,
    ObjectCannedAcl, RequestPayer, ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use base64::Engine;
use bytes::Bytes;

use super::{
    crc64_b64, trim_etag, Fetched, Head, ListPage, ObjectInfo, ObjectMeta, ObjectStore, PartInfo,
    Pin, Sums, UploadInfo, WriteIf, WriteOptions, Written,
};
use crate::aws::SecretCredentials;
use crate::error::{Error, ErrorKind, Result};
use crate::limit::Limits;

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    requester_pays: bool,
    secret: Option<SecretCredentials>,
    limits: Arc<Limits>,
    /// The longest a request may go without progress; requests carrying data get more per byte.
    io_timeout: std::time::Duration,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

fn payer(requester_pays: bool) -> Option<RequestPayer> {
    requester_pays.then_some(RequestPayer::Requester)
}

fn b64(md5: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5)
}

fn millis(t: Option<&aws_smithy_types::DateTime>) -> Option<i64> {
    t.and_then(|t| t.to_millis().ok())
}

/// The headers of a conditional write: (If-Match, If-None-Match).
fn condition(cond: &WriteIf) -> (Option<String>, Option<String>) {
    match cond {
        WriteIf::Always => (None, None),
        WriteIf::Absent => (None, Some("*".to_owned())),
        WriteIf::Matches(e) => (Some(format!("\"{e}\"")), None),
    }
}

/// A conditional write that did not hold: the destination moved on since the finder looked.
fn superseded(e: Error, cond: &WriteIf) -> Error {
    if *cond != WriteIf::Always && e.kind() == ErrorKind::PreconditionFailed {
        Error::new(
            ErrorKind::Superseded,
            format!("{e} (the destination changed since it was listed: a newer copy is there)"),
        )
    } else {
        e
    }
}

fn pin_parts(pin: &Pin) -> (Option<String>, Option<String>) {
    match pin {
        Pin::Version(v) => (Some(v.clone()), None),
        Pin::ETag(e) => (None, Some(format!("\"{e}\""))),
        Pin::Latest => (None, None),
    }
}

/// Metadata values in S3 are ASCII; the SDK hands them over as they came.
fn nonempty(s: Option<&str>) -> Option<String> {
    s.filter(|v| !v.is_empty()).map(str::to_owned)
}

fn encode_tags(tags: &[(String, String)]) -> Option<String> {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    if tags.is_empty() {
        return None;
    }
    let pairs: Vec<String> = tags
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, SET),
                utf8_percent_encode(v, SET)
            )
        })
        .collect();
    Some(pairs.join("&"))
}

/// The headers that travel with an object, from a HEAD or GET response (same accessors, different types).
macro_rules! object_meta {
    ($o:expr) => {
        ObjectMeta {
            content_type: nonempty($o.content_type()),
            content_encoding: nonempty($o.content_encoding()),
            content_language: nonempty($o.content_language()),
            content_disposition: nonempty($o.content_disposition()),
            cache_control: nonempty($o.cache_control()),
            expires: nonempty($o.expires_string()),
            user: $o
                .metadata()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    };
}

/// What a write's answer (PutObject, UploadPart, CompleteMultipartUpload: same accessors, different types)
/// says it left.
macro_rules! written {
    ($o:expr) => {
        Written {
            etag: trim_etag($o.e_tag().unwrap_or_default()),
            sse: $o.server_side_encryption().map(|s| s.as_str().to_owned()),
            crc64: $o.checksum_crc64_nvme().map(str::to_owned),
        }
    };
}

/// Apply the common header setters of PutObject / CreateMultipartUpload.
macro_rules! write_headers {
    ($req:expr, $opts:expr) => {{
        let o: &WriteOptions = $opts;
        let m = &o.meta;
        let mut r = $req
            .set_content_type(m.content_type.clone())
            .set_content_encoding(m.content_encoding.clone())
            .set_content_language(m.content_language.clone())
            .set_content_disposition(m.content_disposition.clone())
            .set_cache_control(m.cache_control.clone())
            .set_metadata((!m.user.is_empty()).then(|| m.user.clone().into_iter().collect()))
            .set_tagging(encode_tags(&o.tags))
            .set_storage_class(o.storage_class.as_deref().map(StorageClass::from))
            .set_acl(o.acl.as_deref().map(ObjectCannedAcl::from))
            .set_server_side_encryption(o.sse.as_deref().map(ServerSideEncryption::from))
            .set_ssekms_key_id(o.kms_key_id.clone());
        if let Some(e) = m.expires.as_deref() {
            if let Ok(t) = aws_smithy_types::DateTime::from_str(
                e,
                aws_smithy_types::date_time::Format::HttpDate,
            ) {
                r = r.expires(t);
            }
        }
        r
    }};
}

impl S3Store {
    pub fn new(
        client: Client,
        bucket: impl Into<String>,
        requester_pays: bool,
        secret: Option<SecretCredentials>,
        limits: Arc<Limits>,
    ) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            requester_pays,
            secret,
            limits,
            io_timeout: std::time::Duration::from_secs(crate::config::DEFAULT_IO_TIMEOUT_SECS),
        }
    }

    /// Set the longest a request may go without progress (the client's own timeouts should say the same).
    pub fn with_io_timeout(mut self, io: std::time::Duration) -> Self {
        self.io_timeout = io;
        self
    }

    /// The per-request timeouts of a request carrying `bytes`.
    fn data(&self, bytes: u64) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default()
            .timeout_config(crate::aws::data_timeouts(self.io_timeout, bytes))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Run one request under the request-rate limit; when credentials come from a secret and are refused,
    /// re-read the secret (at most every 30 s) and try again.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.limits.request().await;
        match f().await {
            Err(e) if e.kind() == ErrorKind::AccessDenied => match &self.secret {
                // Re-read at most every 30 s: a refusal right after a read is not a rotation.
                Some(s) if s.invalidate().await => {
                    tracing::info!(bucket = %self.bucket, "access denied: re-reading the credentials secret");
                    self.limits.request().await;
                    f().await
                }
                _ => Err(e),
            },
            other => other,
        }
    }

    fn ctx(&self, op: &str, key: &str) -> String {
        format!("{op} s3://{}/{key}", self.bucket)
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
    ) -> Result<ListPage> {
        let out = self
            .call(|| async {
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .set_delimiter(delimiter.map(str::to_owned))
                    .set_continuation_token(token.clone())
                    .set_request_payer(payer(self.requester_pays))
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk(self.ctx("listing", prefix), e))
            })
            .await?;
        let objects = out
            .contents()
            .iter()
            .map(|o| ObjectInfo {
                key: o.key().unwrap_or_default().to_owned(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: trim_etag(o.e_tag().unwrap_or_default()),
                storage_class: o.storage_class().map(|c| c.as_str().to_owned()),
                last_modified: millis(o.last_modified()),
            })
            .collect();
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_owned))
            .collect();
        let next_token = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            common_prefixes,
            next_token,
        })
    }

    async fn head(&self, key: &str, pin: &Pin) -> Result<Head> {
        let (version, if_match) = pin_parts(pin);
        let o = self
            .call(|| async {
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .set_version_id(version.clone())
                    .set_if_match(if_match.clone())
                    .checksum_mode(ChecksumMode::Enabled)
                    .set_request_payer(payer(self.requester_pays))
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk(self.ctx("HEAD", key), e))
            })
            .await?;
        let mut checksums = std::collections::BTreeMap::new();
        for (alg, v) in [
            ("CRC32", o.checksum_crc32()),
            ("CRC32C", o.checksum_crc32_c()),
            ("SHA1", o.checksum_sha1()),
            ("SHA256", o.checksum_sha256()),
            ("CRC64NVME", o.checksum_crc64_nvme()),
        ] {
            if let Some(v) = v {
                checksums.insert(alg.to_owned(), v.to_owned());
            }
        }
        Ok(Head {
            size: o.content_length().unwrap_or(0).max(0) as u64,
            etag: trim_etag(o.e_tag().unwrap_or_default()),
            version_id: o.version_id().map(str::to_owned),
            meta: object_meta!(o),
            sse: o.server_side_encryption().map(|s| s.as_str().to_owned()),
            storage_class: o.storage_class().map(|c| c.as_str().to_owned()),
            restore: o.restore().map(str::to_owned),
            tag_count: None,
            checksums,
            last_modified: millis(o.last_modified()),
        })
    }

    async fn part_size(&self, key: &str, pin: &Pin, part_number: u32) -> Result<Option<u64>> {
        // Only a version pin here: some stores compare If-Match with the part's ETag. The ranged GETs that follow
        // carry the full pin.
        let (version, _) = pin_parts(pin);
        let o = self
            .call(|| async {
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .part_number(part_number as i32)
                    .set_version_id(version.clone())
                    .set_request_payer(payer(self.requester_pays))
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk(self.ctx("HEAD part", key), e))
            })
            .await?;
        // A store that ignores partNumber answers with the whole object and no parts count.
        Ok(o.parts_count()
            .filter(|n| *n > 0)
            .and(o.content_length())
            .map(|l| l.max(0) as u64))
    }

    async fn get(&self, key: &str, range: Option<(u64, u64)>, pin: &Pin) -> Result<Fetched> {
        let (version, if_match) = pin_parts(pin);
        if let Some((a, b)) = range {
            self.limits.bytes(b - a).await;
        }
        let range_header = range
            .filter(|(a, b)| b > a)
            .map(|(a, b)| format!("bytes={a}-{}", b - 1));
        let o = self
            .call(|| async {
                self.client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .set_range(range_header.clone())
                    .set_version_id(version.clone())
                    .set_if_match(if_match.clone())
                    .set_request_payer(payer(self.requester_pays))
                    .customize()
                    .config_override(self.data(0))
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk(self.ctx("GET", key), e))
            })
            .await?;
        let size = match o
            .content_range()
            .and_then(|r| r.rsplit_once('/'))
            .and_then(|(_, t)| t.parse().ok())
        {
            Some(total) => total,
            None => o.content_length().unwrap_or(0).max(0) as u64,
        };
        let head = Head {
            size,
            etag: trim_etag(o.e_tag().unwrap_or_default()),
            version_id: o.version_id().map(str::to_owned),
            meta: object_meta!(o),
            sse: o.server_side_encryption().map(|s| s.as_str().to_owned()),
            storage_class: o.storage_class().map(|c| c.as_str().to_owned()),
            restore: o.restore().map(str::to_owned),
            // GET reports x-amz-tagging-count only when there are tags.
            tag_count: Some(o.tag_count().unwrap_or(0).max(0) as u32),
            checksums: Default::default(),
            last_modified: millis(o.last_modified()),
        };
        let expected = o.content_length().unwrap_or(-1);
        // One buffer of the announced size, filled as chunks arrive: collecting and then flattening would hold
        // every part twice for a moment, and memory is budgeted per part.
        let mut buf = bytes::BytesMut::with_capacity(expected.clamp(0, 1 << 30) as usize);
        let mut stream = o.body;
        // The body streams after the request is done: a connection that stalls mid-body is caught here.
        loop {
            let next = tokio::time::timeout(self.io_timeout, stream.try_next())
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Transient,
                        format!(
                            "{}: no data for {:?}",
                            self.ctx("reading body of", key),
                            self.io_timeout
                        ),
                    )
                })?
                .map_err(|e| {
                    Error::with_source(ErrorKind::Transient, self.ctx("reading body of", key), e)
                })?;
            match next {
                Some(chunk) => buf.extend_from_slice(&chunk),
                None => break,
            }
        }
        let body = buf.freeze();
        if expected >= 0 && body.len() as i64 != expected {
            return Err(Error::integrity(format!(
                "{}: received {} bytes, Content-Length said {expected}",
                self.ctx("GET", key),
                body.len()
            )));
        }
        if range.is_none() {
            self.limits.bytes(body.len() as u64).await;
        }
        Ok(Fetched { body, head })
    }

    async fn get_tags(&self, key: &str, pin: &Pin) -> Result<Vec<(String, String)>> {
        let version = match pin {
            Pin::Version(v) => Some(v.clone()),
            _ => None,
        };
        let res = self
            .call(|| async {
                self.client
                    .get_object_tagging()
                    .bucket(&self.bucket)
                    .key(key)
                    .set_version_id(version.clone())
                    .set_request_payer(payer(self.requester_pays))
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk(self.ctx("reading tags of", key), e))
            })
            .await;
        let o = match res {
            // S3-compatible stores without tagging (s3s, some OSS gateways) have no tags to copy.
            Err(e) if e.code() == Some("NotImplemented") => {
                tracing::debug!(bucket = %self.bucket, "the source does not support tagging: copying no tags");
                return Ok(vec![]);
            }
            other => other?,
        };
        Ok(o.tag_set()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect())
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        sums: Sums,
        opts: &WriteOptions,
        cond: &WriteIf,
    ) -> Result<Written> {
        let (if_match, if_none_match) = condition(cond);
        let o = self
            .call(|| async {
                let req = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .content_length(body.len() as i64)
                    .set_content_md5(sums.md5.map(b64))
                    .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                    .checksum_crc64_nvme(crc64_b64(sums.crc64))
                    .set_if_match(if_match.clone())
                    .set_if_none_match(if_none_match.clone())
                    .body(ByteStream::from(body.clone()));
                write_headers!(req, opts)
                    .customize()
                    // The body is vouched for by the signed Content-MD5 and CRC64NVME headers: no SHA-256 of
                    // it on either side (UNSIGNED-PAYLOAD).
                    .disable_payload_signing()
                    .config_override(self.data(sums.len))
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk(self.ctx("PUT", key), e))
            })
            .await
            .map_err(|e| superseded(e, cond))?;
        Ok(written!(o))
    }

    async fn create_multipart(&self, key: &str, opts: &WriteOptions) -> Result<String> {
        let o = self
            .call(|| async {
                let req = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                    .checksum_type(ChecksumType::FullObject);
                write_headers!(req, opts)
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk(self.ctx("starting multipart upload of", key), e))
            })
            .await?;
        o.upload_id().map(str::to_owned).ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                format!("{}: no upload id", self.ctx("CreateMultipartUpload", key)),
            )
        })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
        sums: Sums,
    ) -> Result<Written> {
        let o = self
            .call(|| async {
                self.client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number as i32)
                    .content_length(body.len() as i64)
                    .set_content_md5(sums.md5.map(b64))
                    .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                    .checksum_crc64_nvme(crc64_b64(sums.crc64))
                    .body(ByteStream::from(body.clone()))
                    .customize()
                    .disable_payload_signing()
                    .config_override(self.data(sums.len))
                    .send()
                    .await
                    .map_err(|e| {
                        Error::from_sdk(format!("{} part {number}", self.ctx("uploading", key)), e)
                    })
            })
            .await?;
        Ok(written!(o))
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        crc64: Option<u64>,
        cond: &WriteIf,
    ) -> Result<Written> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(n, e)| {
                        CompletedPart::builder()
                            .part_number(*n as i32)
                            .e_tag(format!("\"{e}\""))
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let (if_match, if_none_match) = condition(cond);
        let o = self
            .call(|| async {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(completed.clone())
                    .set_checksum_crc64_nvme(crc64.map(crc64_b64))
                    .set_checksum_type(crc64.map(|_| ChecksumType::FullObject))
                    .set_if_match(if_match.clone())
                    .set_if_none_match(if_none_match.clone())
                    // "Processing of a Complete Multipart Upload request could take several minutes".
                    .customize()
                    .config_override(self.data(parts.len() as u64 * 64 * 1024))
                    .send()
                    .await
                    .map_err(|e| {
                        Error::from_sdk(self.ctx("completing multipart upload of", key), e)
                    })
            })
            .await
            .map_err(|e| superseded(e, cond))?;
        Ok(written!(o))
    }

    async fn default_encryption(&self) -> Result<Option<String>> {
        let res = self
            .call(|| async {
                self.client
                    .get_bucket_encryption()
                    .bucket(&self.bucket)
                    .send()
                    .await
                    .map_err(|e| {
                        Error::from_sdk(self.ctx("reading the default encryption of", ""), e)
                    })
            })
            .await;
        let o = match res {
            Ok(o) => o,
            // No default encryption configured (buckets made before 2023), or a store without the API.
            Err(e)
                if e.code() == Some("ServerSideEncryptionConfigurationNotFoundError")
                    || e.code() == Some("NotImplemented") =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        Ok(o.server_side_encryption_configuration()
            .and_then(|c| c.rules().first())
            .and_then(|r| r.apply_server_side_encryption_by_default())
            .map(|d| d.sse_algorithm().as_str().to_owned()))
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.call(|| async {
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await
                .map_err(|e| Error::from_sdk(self.ctx("aborting multipart upload of", key), e))
        })
        .await
        .map(|_| ())
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<UploadInfo>> {
        let mut uploads = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let o = self
                .call(|| async {
                    self.client
                        .list_multipart_uploads()
                        .bucket(&self.bucket)
                        .prefix(prefix)
                        .set_key_marker(key_marker.clone())
                        .set_upload_id_marker(id_marker.clone())
                        .send()
                        .await
                        .map_err(|e| {
                            Error::from_sdk(self.ctx("listing multipart uploads under", prefix), e)
                        })
                })
                .await?;
            for u in o.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    uploads.push(UploadInfo {
                        key: k.to_owned(),
                        upload_id: id.to_owned(),
                    });
                }
            }
            if o.is_truncated() != Some(true) {
                return Ok(uploads);
            }
            key_marker = o.next_key_marker().map(str::to_owned);
            id_marker = o.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                return Ok(uploads);
            }
        }
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        let mut parts = Vec::new();
        let mut marker = None::<String>;
        loop {
            let o = self
                .call(|| async {
                    self.client
                        .list_parts()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .set_part_number_marker(marker.clone())
                        .send()
                        .await
                        .map_err(|e| Error::from_sdk(self.ctx("listing parts of", key), e))
                })
                .await?;
            for p in o.parts() {
                parts.push(PartInfo {
                    number: p.part_number().unwrap_or(0).max(0) as u32,
                    size: p.size().unwrap_or(0).max(0) as u64,
                    etag: trim_etag(p.e_tag().unwrap_or_default()),
                    crc64: p.checksum_crc64_nvme().map(str::to_owned),
                });
            }
            if o.is_truncated() != Some(true) {
                return Ok(parts);
            }
            marker = o.next_part_number_marker().map(str::to_owned);
            if marker.is_none() {
                return Ok(parts);
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.call(|| async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| Error::from_sdk(self.ctx("DELETE", key), e))
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_form_encoded() {
        let t = vec![
            ("team".into(), "data eng".into()),
            ("a+b".into(), "x=y&z".into()),
        ];
        assert_eq!(encode_tags(&t).unwrap(), "team=data%20eng&a%2Bb=x%3Dy%26z");
        assert_eq!(encode_tags(&[]), None);
    }
}

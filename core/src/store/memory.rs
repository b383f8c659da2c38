//! An in-memory [`ObjectStore`] with S3's semantics for listing order, delimiters, pins and multipart ETags;
//! the engine's unit tests run against it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    crc64_b64, crc64_concat, md5_of, multipart_etag, Fetched, Head, ListPage, ObjectInfo,
    ObjectMeta, ObjectStore, PartInfo, Pin, Sums, UploadInfo, WriteIf, WriteOptions, Written,
};
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Clone)]
pub struct MemObject {
    pub body: Bytes,
    pub etag: String,
    pub version: u64,
    pub meta: ObjectMeta,
    pub tags: Vec<(String, String)>,
    pub storage_class: Option<String>,
    /// Sizes of the parts it was uploaded in (empty for a single PUT).
    pub part_sizes: Vec<u64>,
}

#[derive(Debug, Default)]
struct Upload {
    key: String,
    opts: WriteOptions,
    parts: BTreeMap<u32, (Bytes, Sums)>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, MemObject>,
    uploads: HashMap<String, Upload>,
    next_id: u64,
    page_size: usize,
}

#[derive(Debug)]
pub struct MemoryStore {
    bucket: String,
    state: Mutex<State>,
}

fn not_found(what: &str) -> Error {
    Error::new(ErrorKind::NotFound, format!("{what}: not found"))
}

impl MemoryStore {
    pub fn new(bucket: &str) -> Self {
        Self {
            bucket: bucket.into(),
            state: Mutex::new(State {
                page_size: 1000,
                ..Default::default()
            }),
        }
    }

    /// Small pages make tests cross page boundaries.
    pub fn with_page_size(self, n: usize) -> Self {
        self.state.lock().unwrap().page_size = n;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, key: &str, body: impl Into<Bytes>) {
        let body = body.into();
        let mut s = self.lock();
        s.next_id += 1;
        let version = s.next_id;
        let etag = hex::encode(md5_of(&body));
        s.objects.insert(
            key.into(),
            MemObject {
                body,
                etag,
                version,
                meta: ObjectMeta::default(),
                tags: vec![],
                storage_class: None,
                part_sizes: vec![],
            },
        );
    }

    pub fn set_storage_class(&self, key: &str, class: &str) {
        if let Some(o) = self.lock().objects.get_mut(key) {
            o.storage_class = Some(class.into());
        }
    }

    pub fn object(&self, key: &str) -> Option<MemObject> {
        self.lock().objects.get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    pub fn upload_count(&self) -> usize {
        self.lock().uploads.len()
    }

    fn check_pin(o: &MemObject, pin: &Pin, key: &str) -> Result<()> {
        let holds = match pin {
            Pin::Latest => true,
            Pin::ETag(e) => &o.etag == e,
            Pin::Version(v) => o.version.to_string() == *v,
        };
        if holds {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::PreconditionFailed,
                format!("{key}: precondition failed"),
            ))
        }
    }

    fn check_condition(s: &State, key: &str, cond: &WriteIf) -> Result<()> {
        let holds = match cond {
            WriteIf::Always => true,
            WriteIf::Absent => !s.objects.contains_key(key),
            WriteIf::Matches(e) => s.objects.get(key).is_some_and(|o| &o.etag == e),
        };
        if holds {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Superseded,
                format!("{key}: precondition failed"),
            ))
        }
    }

    fn head_of(o: &MemObject) -> Head {
        Head {
            size: o.body.len() as u64,
            etag: o.etag.clone(),
            version_id: Some(o.version.to_string()),
            meta: o.meta.clone(),
            sse: None,
            storage_class: o.storage_class.clone(),
            restore: None,
            tag_count: Some(o.tags.len() as u32),
            checksums: Default::default(),
            last_modified: Some(o.version as i64),
        }
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
    ) -> Result<ListPage> {
        let s = self.lock();
        let mut page = ListPage::default();
        let start = token.unwrap_or_default();
        let mut n = 0;
        let mut last_prefix: Option<String> = None;
        for (k, o) in s.objects.range::<String, _>((
            std::ops::Bound::Excluded(&start),
            std::ops::Bound::Unbounded,
        )) {
            if !k.starts_with(prefix) {
                if k.as_str() > prefix {
                    break;
                }
                continue;
            }
            if n == s.page_size {
                // Resume after whatever was returned last.
                let last_obj = page.objects.last().map(|o| o.key.clone());
                let last_cp = page.common_prefixes.last().cloned();
                page.next_token = Some(match (last_obj, last_cp) {
                    (Some(o), Some(p)) if p > o => format!("{p}\u{10FFFF}"),
                    (Some(o), _) => o,
                    (None, Some(p)) => format!("{p}\u{10FFFF}"),
                    (None, None) => start.clone(),
                });
                break;
            }
            if let Some(d) = delimiter {
                if let Some(i) = k[prefix.len()..].find(d) {
                    let cp = k[..prefix.len() + i + d.len()].to_owned();
                    if last_prefix.as_deref() != Some(cp.as_str()) {
                        page.common_prefixes.push(cp.clone());
                        last_prefix = Some(cp);
                        n += 1;
                    }
                    continue;
                }
            }
            page.objects.push(ObjectInfo {
                key: k.clone(),
                size: o.body.len() as u64,
                etag: o.etag.clone(),
                storage_class: o.storage_class.clone(),
                last_modified: Some(o.version as i64),
            });
            n += 1;
        }
        Ok(page)
    }

    async fn head(&self, key: &str, pin: &Pin) -> Result<Head> {
        let s = self.lock();
        let o = s.objects.get(key).ok_or_else(|| not_found(key))?;
        Self::check_pin(o, pin, key)?;
        Ok(Self::head_of(o))
    }

    async fn part_size(&self, key: &str, pin: &Pin, part_number: u32) -> Result<Option<u64>> {
        let s = self.lock();
        let o = s.objects.get(key).ok_or_else(|| not_found(key))?;
        Self::check_pin(o, pin, key)?;
        Ok(o.part_sizes.get(part_number as usize - 1).copied())
    }

    async fn get(&self, key: &str, range: Option<(u64, u64)>, pin: &Pin) -> Result<Fetched> {
        let s = self.lock();
        let o = s.objects.get(key).ok_or_else(|| not_found(key))?;
        Self::check_pin(o, pin, key)?;
        let body = match range {
            Some((a, b)) => o.body.slice(a as usize..(b as usize).min(o.body.len())),
            None => o.body.clone(),
        };
        Ok(Fetched {
            body,
            head: Self::head_of(o),
        })
    }

    async fn get_tags(&self, key: &str, _pin: &Pin) -> Result<Vec<(String, String)>> {
        Ok(self
            .lock()
            .objects
            .get(key)
            .ok_or_else(|| not_found(key))?
            .tags
            .clone())
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        sums: Sums,
        opts: &WriteOptions,
        cond: &WriteIf,
    ) -> Result<Written> {
        if !sums.fit(&body) {
            return Err(Error::new(ErrorKind::Integrity, "BadDigest"));
        }
        // What the store keeps is what it received: its own MD5, whatever the writer sent.
        let sums = Sums::of(&body);
        let mut s = self.lock();
        Self::check_condition(&s, key, cond)?;
        s.next_id += 1;
        let version = s.next_id;
        let etag = hex::encode(sums.md5.unwrap_or_default());
        s.objects.insert(
            key.into(),
            MemObject {
                body,
                etag: etag.clone(),
                version,
                meta: opts.meta.clone(),
                tags: opts.tags.clone(),
                storage_class: opts.storage_class.clone(),
                part_sizes: vec![],
            },
        );
        Ok(Written {
            etag,
            sse: None,
            crc64: Some(crc64_b64(sums.crc64)),
        })
    }

    async fn create_multipart(&self, key: &str, opts: &WriteOptions) -> Result<String> {
        let mut s = self.lock();
        s.next_id += 1;
        let id = format!("upload-{}", s.next_id);
        s.uploads.insert(
            id.clone(),
            Upload {
                key: key.into(),
                opts: opts.clone(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        _key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
        sums: Sums,
    ) -> Result<Written> {
        if !sums.fit(&body) {
            return Err(Error::new(ErrorKind::Integrity, "BadDigest"));
        }
        // What the store keeps is what it received: its own MD5, whatever the writer sent.
        let sums = Sums::of(&body);
        let mut s = self.lock();
        let u = s
            .uploads
            .get_mut(upload_id)
            .ok_or_else(|| not_found(upload_id))?;
        u.parts.insert(number, (body, sums));
        Ok(Written {
            etag: hex::encode(sums.md5.unwrap_or_default()),
            sse: None,
            crc64: Some(crc64_b64(sums.crc64)),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        crc64: Option<u64>,
        cond: &WriteIf,
    ) -> Result<Written> {
        let mut s = self.lock();
        Self::check_condition(&s, key, cond)?;
        let u = s
            .uploads
            .remove(upload_id)
            .ok_or_else(|| not_found(upload_id))?;
        let mut body = Vec::new();
        let mut md5s = Vec::new();
        let mut sizes = Vec::new();
        let mut crc = 0;
        for (n, etag) in parts {
            let (b, m) = u
                .parts
                .get(n)
                .ok_or_else(|| Error::new(ErrorKind::Integrity, format!("InvalidPart {n}")))?;
            if &hex::encode(m.md5.unwrap_or_default()) != etag {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    format!("InvalidPart {n}: etag"),
                ));
            }
            body.extend_from_slice(b);
            md5s.push(m.md5.unwrap_or_default());
            sizes.push(b.len() as u64);
            crc = if body.len() == b.len() {
                m.crc64
            } else {
                crc64_concat(crc, m.crc64, m.len)
            };
        }
        if crc64.is_some_and(|c| c != crc) {
            return Err(Error::new(
                ErrorKind::Integrity,
                "BadDigest: full-object CRC64NVME",
            ));
        }
        let etag = multipart_etag(&md5s);
        s.next_id += 1;
        let version = s.next_id;
        s.objects.insert(
            key.into(),
            MemObject {
                body: body.into(),
                etag: etag.clone(),
                version,
                meta: u.opts.meta,
                tags: u.opts.tags,
                storage_class: u.opts.storage_class,
                part_sizes: sizes,
            },
        );
        Ok(Written {
            etag,
            sse: None,
            crc64: Some(crc64_b64(crc)),
        })
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<()> {
        self.lock()
            .uploads
            .remove(upload_id)
            .map(|_| ())
            .ok_or_else(|| not_found(upload_id))
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<UploadInfo>> {
        let mut v: Vec<_> = self
            .lock()
            .uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| UploadInfo {
                key: u.key.clone(),
                upload_id: id.clone(),
            })
            .collect();
        v.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        Ok(v)
    }

    async fn list_parts(&self, _key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        let s = self.lock();
        let u = s
            .uploads
            .get(upload_id)
            .ok_or_else(|| not_found(upload_id))?;
        Ok(u.parts
            .iter()
            .map(|(n, (b, m))| PartInfo {
                number: *n,
                size: b.len() as u64,
                etag: hex::encode(m.md5.unwrap_or_default()),
                crc64: Some(crc64_b64(m.crc64)),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.lock().objects.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listing_with_delimiter_pages_like_s3() {
        let s = MemoryStore::new("b").with_page_size(2);
        for k in ["a/1", "a/2", "b", "c/x/y", "c/z", "d"] {
            s.insert(k, "x");
        }
        let mut objects = vec![];
        let mut prefixes = vec![];
        let mut token = None;
        loop {
            let p = s.list("", Some("/"), token).await.unwrap();
            objects.extend(p.objects.into_iter().map(|o| o.key));
            prefixes.extend(p.common_prefixes);
            token = p.next_token;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(objects, vec!["b", "d"]);
        assert_eq!(prefixes, vec!["a/", "c/"]);
    }
}

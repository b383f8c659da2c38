//! What an ETag says about an object's bytes, per store, and what "already at the destination" means with it.
//!
//! | source type     | single-part ETag                      | multipart ETag                 | trusted as a content hash |
//! |-----------------|---------------------------------------|--------------------------------|---------------------------|
//! | `Amazon_S3`     | MD5 of the bytes, unless SSE-KMS/SSE-C encrypted them | MD5 of the part MD5s, `-N` | yes (not under KMS)       |
//! | `Tencent_COS`   | MD5 of the bytes                      | as S3's                        | yes                       |
//! | `Aliyun_OSS`    | upper-case hex; the MD5 only for PutObject (appendable objects have others) | `…-N`, not S3's | no: "not necessarily the MD5" |
//! | `Qiniu_Kodo`    | its own hash (qetag: URL-safe base64 of SHA-1s), or an MD5 through its S3 API | —  | no                        |
//! | `S3_Compatible` | usually the MD5 (MinIO, Ceph), but encryption and gateways change that | —   | no                        |
//!
//! The destination is Amazon S3: its ETags are MD5-based unless its objects are KMS-encrypted (the job's
//! `destination.sse`, or the bucket's default encryption, which the finder reads once per run).
//!
//! ETags are compared without regard to case (OSS answers in upper case, S3 in lower). Where both sides are
//! MD5-based and trusted, a different ETag is a different object. Where either is not (or the shapes differ: a
//! single-PUT source copied in parts, a source whose uneven part layout could not be kept), a different ETag
//! says nothing, and the comparison falls back to size and last-modified: the copy is up to date if it was
//! written no earlier than the source's last change (S3 keeps whole seconds: a source changed again in the
//! very second it was copied is the one case this cannot see).
//!
//! Verification follows the same model: bytes read are checked against the source ETag only where it is a
//! trusted MD5; everywhere else the worker checks what it computed itself — the MD5 of the bytes it read, sent
//! as Content-MD5 with every write, and a CRC64NVME checksum that S3 checks and keeps with the object.

use crate::config::SourceType;
use crate::store::{Head, ObjectInfo};

/// What one ETag tells about the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// The MD5 of the bytes.
    Md5([u8; 16]),
    /// S3's multipart ETag: the MD5 of the parts' MD5s, for this many parts.
    Multipart(u32),
    /// Changes when the object does, but is no hash one can check.
    Opaque,
}

impl Meaning {
    /// The shape of an ETag: 32 hex digits, the same with `-N`, or anything else.
    pub fn parse(etag: &str) -> Meaning {
        let mut md5 = [0u8; 16];
        match etag.rsplit_once('-') {
            Some((h, n)) if h.len() == 32 && hex::decode_to_slice(h, &mut md5).is_ok() => n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .map_or(Meaning::Opaque, Meaning::Multipart),
            None if etag.len() == 32 && hex::decode_to_slice(etag, &mut md5).is_ok() => {
                Meaning::Md5(md5)
            }
            _ => Meaning::Opaque,
        }
    }

    pub fn is_hash(self) -> bool {
        self != Meaning::Opaque
    }
}

/// Two ETags name the same bytes version: equal but for case.
pub fn same_etag(a: &str, b: &str) -> bool {
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// Whether KMS (or a customer key) encrypted the object, so that S3's ETag is no MD5.
pub fn encrypted_without_md5(sse: Option<&str>) -> bool {
    sse.is_some_and(|s| s.starts_with("aws:kms"))
}

/// The ETag model of one transfer: the source's type, and whether each side's ETags can be MD5-based at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtagModel {
    pub source: SourceType,
    /// False when the source bucket encrypts with KMS by default.
    pub source_md5: bool,
    /// False when the destination encrypts with KMS (the job's setting or the bucket's default).
    pub dest_md5: bool,
}

impl EtagModel {
    pub fn new(source: SourceType) -> Self {
        Self {
            source,
            source_md5: true,
            dest_md5: true,
        }
    }

    /// Whether this store's ETags are content hashes at all.
    pub fn source_trusted(&self) -> bool {
        self.source_md5 && matches!(self.source, SourceType::AmazonS3 | SourceType::TencentCos)
    }

    /// What a source ETag (from a listing) says.
    pub fn source(&self, etag: &str) -> Meaning {
        if self.source_trusted() {
            Meaning::parse(etag)
        } else {
            Meaning::Opaque
        }
    }

    /// What a source object's ETag says, given its headers (which tell its encryption).
    pub fn source_head(&self, head: &Head) -> Meaning {
        if encrypted_without_md5(head.sse.as_deref()) {
            Meaning::Opaque
        } else {
            self.source(&head.etag)
        }
    }

    /// What a destination ETag (from a listing) says.
    pub fn destination(&self, etag: &str) -> Meaning {
        if self.dest_md5 {
            Meaning::parse(etag)
        } else {
            Meaning::Opaque
        }
    }

    /// What a destination object's ETag says, given its headers.
    pub fn destination_head(&self, head: &Head) -> Meaning {
        if encrypted_without_md5(head.sse.as_deref()) {
            Meaning::Opaque
        } else {
            self.destination(&head.etag)
        }
    }

    /// Same size and ETag, or, where the ETags cannot be compared, same size and a copy no older than the
    /// source. `Verdict::NeedsHead` where both ETags look like MD5s that differ but only the objects' headers
    /// can tell whether KMS made them so.
    pub fn compare(&self, src: &ObjectInfo, dst: &ObjectInfo) -> EtagVerdict {
        if src.size != dst.size {
            return EtagVerdict::Differs;
        }
        if same_etag(&src.etag, &dst.etag) {
            return EtagVerdict::Same;
        }
        let newer_source = match (src.last_modified, dst.last_modified) {
            (Some(s), Some(d)) => Some(s > d),
            _ => None,
        };
        if newer_source == Some(true) {
            return EtagVerdict::Differs;
        }
        match (self.source(&src.etag), self.destination(&dst.etag)) {
            // Both MD5s of the whole object, and they differ: a different object, unless KMS encrypted one of
            // them without the bucket saying so by default (only their headers tell).
            (Meaning::Md5(_), Meaning::Md5(_)) => EtagVerdict::NeedsHead,
            // Same layout and different part hashes: different bytes, when the ages cannot tell.
            (Meaning::Multipart(a), Meaning::Multipart(b)) if a == b && newer_source.is_none() => {
                EtagVerdict::Differs
            }
            _ => EtagVerdict::Same,
        }
    }

    /// After [`EtagVerdict::NeedsHead`]: different objects unless either side's ETag turns out to be no MD5.
    pub fn same_after_head(&self, src: &Head, dst: &Head) -> bool {
        src.size == dst.size
            && (same_etag(&src.etag, &dst.etag)
                || !self.source_head(src).is_hash()
                || !self.destination_head(dst).is_hash())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtagVerdict {
    Same,
    Differs,
    NeedsHead,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(size: u64, etag: &str, lm: Option<i64>) -> ObjectInfo {
        ObjectInfo {
            key: "k".into(),
            size,
            etag: etag.into(),
            storage_class: None,
            last_modified: lm,
        }
    }

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn shapes() {
        assert!(matches!(Meaning::parse(A), Meaning::Md5(_)));
        assert!(matches!(Meaning::parse(&A.to_uppercase()), Meaning::Md5(_)));
        assert_eq!(Meaning::parse(&format!("{A}-3")), Meaning::Multipart(3));
        assert_eq!(Meaning::parse(&format!("{A}-0")), Meaning::Opaque);
        assert_eq!(Meaning::parse(&format!("{A}-x")), Meaning::Opaque);
        assert_eq!(
            Meaning::parse("Fto5o-5ea0sNMlW_75VgGJCv2AcJ"),
            Meaning::Opaque
        );
        assert_eq!(Meaning::parse(""), Meaning::Opaque);
        assert_eq!(Meaning::parse("abc-1"), Meaning::Opaque);
    }

    #[test]
    fn etags_compare_without_case() {
        let m = EtagModel::new(SourceType::AliyunOss);
        let v = m.compare(&info(5, &A.to_uppercase(), Some(10)), &info(5, A, Some(20)));
        assert_eq!(v, EtagVerdict::Same);
    }

    #[test]
    fn a_source_changed_after_its_copy_differs_whatever_the_etags() {
        for src in [SourceType::AmazonS3, SourceType::QiniuKodo] {
            let m = EtagModel::new(src);
            // Single PUT copied in parts, then changed in place keeping its size.
            let v = m.compare(&info(5, A, Some(30)), &info(5, &format!("{B}-2"), Some(20)));
            assert_eq!(v, EtagVerdict::Differs, "{src:?}");
            // The same copy, not changed since.
            let v = m.compare(&info(5, A, Some(10)), &info(5, &format!("{B}-2"), Some(20)));
            assert_eq!(v, EtagVerdict::Same, "{src:?}");
        }
    }

    #[test]
    fn trusted_md5s_that_differ_need_the_headers() {
        let m = EtagModel::new(SourceType::AmazonS3);
        let v = m.compare(&info(5, A, Some(10)), &info(5, B, Some(20)));
        assert_eq!(v, EtagVerdict::NeedsHead);
        let head = |etag: &str, sse: Option<&str>| Head {
            size: 5,
            etag: etag.into(),
            sse: sse.map(str::to_owned),
            ..Default::default()
        };
        assert!(!m.same_after_head(&head(A, None), &head(B, Some("AES256"))));
        assert!(m.same_after_head(&head(A, None), &head(B, Some("aws:kms"))));
        assert!(m.same_after_head(&head(A, Some("aws:kms")), &head(B, None)));
        // Untrusted sources never need them.
        let oss = EtagModel::new(SourceType::AliyunOss);
        assert_eq!(
            oss.compare(&info(5, A, Some(10)), &info(5, B, Some(20))),
            EtagVerdict::Same
        );
        // A destination known to be KMS-encrypted neither.
        let kms = EtagModel {
            dest_md5: false,
            ..m
        };
        assert_eq!(
            kms.compare(&info(5, A, Some(10)), &info(5, B, Some(20))),
            EtagVerdict::Same
        );
    }

    #[test]
    fn without_ages_the_shapes_decide() {
        let m = EtagModel::new(SourceType::AmazonS3);
        let mp = |h: &str, n: u32| format!("{h}-{n}");
        assert_eq!(
            m.compare(&info(5, &mp(A, 2), None), &info(5, &mp(B, 2), None)),
            EtagVerdict::Differs
        );
        assert_eq!(
            m.compare(&info(5, A, None), &info(5, &mp(B, 2), None)),
            EtagVerdict::Same
        );
        assert_eq!(
            m.compare(&info(5, A, None), &info(6, A, None)),
            EtagVerdict::Differs
        );
    }
}

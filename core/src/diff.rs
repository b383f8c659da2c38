//! What counts as "already at the destination": by size, size and ETag, or checksum.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::{CompareMode, Filters};
use crate::error::{Error, Result};
use crate::etag::{same_etag, EtagModel, EtagVerdict};
use crate::store::{Head, ObjectInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not at the destination.
    Missing,
    /// At the destination but different.
    Differs,
    /// Up to date.
    Same,
    /// Same size; only the objects' checksums can tell (checksum mode).
    NeedsChecksum,
    /// Both ETags look like MD5s and differ; only the objects' headers can tell whether KMS made them so.
    NeedsHead,
}

impl Verdict {
    pub fn must_copy(self) -> bool {
        matches!(self, Verdict::Missing | Verdict::Differs)
    }
}

/// Whether `src` is at the destination as `dst`, by `mode`, with what `model` says the ETags mean.
pub fn compare(
    mode: CompareMode,
    model: &EtagModel,
    src: &ObjectInfo,
    dst: Option<&ObjectInfo>,
) -> Verdict {
    let Some(dst) = dst else {
        return Verdict::Missing;
    };
    if src.size != dst.size {
        return Verdict::Differs;
    }
    match mode {
        CompareMode::Size => Verdict::Same,
        CompareMode::SizeEtag => match model.compare(src, dst) {
            EtagVerdict::Same => Verdict::Same,
            EtagVerdict::Differs => Verdict::Differs,
            EtagVerdict::NeedsHead => Verdict::NeedsHead,
        },
        CompareMode::Checksum if same_etag(&src.etag, &dst.etag) => Verdict::Same,
        CompareMode::Checksum => Verdict::NeedsChecksum,
    }
}

/// Checksum mode, after HEAD of both sides: equal when they share a full-object checksum algorithm and the
/// values match; failing that, when both ETags are MD5-based and match.
pub fn same_content(src: &Head, dst: &Head) -> bool {
    if src.size != dst.size {
        return false;
    }
    let common: Vec<_> = src
        .checksums
        .iter()
        .filter_map(|(alg, v)| dst.checksums.get(alg).map(|w| v == w))
        .collect();
    if !common.is_empty() {
        return common.iter().all(|same| *same);
    }
    src.etag_is_md5() && dst.etag_is_md5() && same_etag(&src.etag, &dst.etag)
}

/// Include / exclude globs over source keys.
#[derive(Debug, Clone)]
pub struct KeyFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

fn build(field: &str, globs: &[String]) -> Result<Option<GlobSet>> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for (i, g) in globs.iter().enumerate() {
        let glob = GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::config(&format!("{field}[{i}]"), e))?;
        b.add(glob);
    }
    b.build().map(Some).map_err(|e| Error::config(field, e))
}

impl KeyFilter {
    pub fn new(f: &Filters) -> Result<Self> {
        Ok(Self {
            include: build("filters.include", &f.include)?,
            exclude: build("filters.exclude", &f.exclude)?,
        })
    }

    pub fn accepts(&self, key: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(key))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(size: u64, etag: &str) -> ObjectInfo {
        ObjectInfo {
            key: "k".into(),
            size,
            etag: etag.into(),
            storage_class: None,
            last_modified: None,
        }
    }

    fn compare(mode: CompareMode, src: &ObjectInfo, dst: Option<&ObjectInfo>) -> Verdict {
        super::compare(
            mode,
            &EtagModel::new(crate::config::SourceType::AmazonS3),
            src,
            dst,
        )
    }

    #[test]
    fn modes() {
        use CompareMode::*;
        assert_eq!(compare(Size, &info(1, "a"), None), Verdict::Missing);
        assert_eq!(
            compare(Size, &info(1, "a"), Some(&info(2, "a"))),
            Verdict::Differs
        );
        assert_eq!(
            compare(Size, &info(1, "a"), Some(&info(1, "b"))),
            Verdict::Same
        );
        let (a, b) = (
            "0123456789abcdef0123456789abcdef",
            "fedcba9876543210fedcba9876543210",
        );
        assert_eq!(
            compare(SizeEtag, &info(1, a), Some(&info(1, b))),
            Verdict::NeedsHead,
            "two MD5s that differ: unless KMS made them, different objects"
        );
        assert_eq!(
            compare(SizeEtag, &info(1, a), Some(&info(1, &a.to_uppercase()))),
            Verdict::Same
        );
        assert_eq!(
            compare(SizeEtag, &info(1, "a"), Some(&info(1, "a"))),
            Verdict::Same
        );
        assert_eq!(
            compare(Checksum, &info(1, "a"), Some(&info(1, "b"))),
            Verdict::NeedsChecksum
        );
        assert_eq!(
            compare(Checksum, &info(1, "a"), Some(&info(1, "a"))),
            Verdict::Same
        );
    }

    #[test]
    fn checksums_decide_when_shared() {
        let mut a = Head {
            size: 3,
            etag: "x".into(),
            ..Default::default()
        };
        let mut b = Head {
            size: 3,
            etag: "y".into(),
            ..Default::default()
        };
        assert!(!same_content(&a, &b));
        a.checksums.insert("SHA256".into(), "h".into());
        b.checksums.insert("SHA256".into(), "h".into());
        assert!(same_content(&a, &b));
        b.checksums.insert("SHA256".into(), "other".into());
        assert!(!same_content(&a, &b));
    }

    #[test]
    fn globs() {
        let f = KeyFilter::new(&Filters {
            include: vec!["logs/**".into(), "*.csv".into()],
            exclude: vec!["**/*.tmp".into()],
        })
        .unwrap();
        assert!(f.accepts("logs/2024/a.gz"));
        assert!(f.accepts("top.csv"));
        assert!(!f.accepts("dir/x.csv"), "* stays within one segment");
        assert!(!f.accepts("logs/a.tmp"));
        assert!(KeyFilter::new(&Filters::default())
            .unwrap()
            .accepts("anything"));
    }
}

//! The transfer's own multipart uploads, as its ledger records them: what destroy aborts.
//!
//! A worker records every upload it creates before it uploads any part of it (see
//! [`crate::copy::Copier::start_upload`]) and forgets it once completed or aborted, so the open ones in the
//! ledger are exactly what the transfer may still have left at the destination. Aborting those — and never
//! listing the destination for "incomplete uploads under the prefix" — leaves other applications' uploads in
//! the same bucket alone, even under the same keys.
//!
//! Destroy must stop the workers first (they create uploads), abort, and only then delete the ledger table.

use aws_sdk_s3::error::ProvideErrorMetadata;

use crate::error::{Error, Result};
use crate::ledger::{DynamoLedger, OpenUpload};

/// What [`abort_open_uploads`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AbortedUploads {
    /// Aborted now.
    pub aborted: usize,
    /// Already gone (completed, or aborted by someone else, or its bucket deleted): only forgotten.
    pub gone: usize,
    /// Could not be aborted (access denied, throttled, ...), each with why; still recorded, so another call
    /// tries again.
    pub failed: Vec<(OpenUpload, String)>,
}

impl AbortedUploads {
    /// One line for the user, e.g. "aborted 3 incomplete multipart upload(s) of the transfer; 1 already gone".
    pub fn describe(&self) -> String {
        let mut s = format!(
            "aborted {} incomplete multipart upload(s) of the transfer",
            self.aborted
        );
        if self.gone > 0 {
            s.push_str(&format!("; {} already gone", self.gone));
        }
        if let Some((u, e)) = self.failed.first() {
            s.push_str(&format!(
                "; {} could not be aborted (first: s3://{}/{} upload {}: {e})",
                self.failed.len(),
                u.bucket,
                u.key,
                u.upload_id
            ));
        }
        s
    }
}

/// Abort every upload `ledger` records as open, with `s3` (a client that can reach the destination bucket
/// recorded on each upload), and forget each one aborted or found gone (NoSuchUpload, NoSuchBucket). Uploads
/// the ledger does not record are never touched. Fails only when the ledger cannot be read or written; an
/// upload S3 refuses to abort is reported in [`AbortedUploads::failed`].
pub async fn abort_open_uploads(
    ledger: &DynamoLedger,
    s3: &aws_sdk_s3::Client,
) -> Result<AbortedUploads> {
    let mut done = AbortedUploads::default();
    for u in ledger.open_uploads().await? {
        let res = s3
            .abort_multipart_upload()
            .bucket(&u.bucket)
            .key(&u.key)
            .upload_id(&u.upload_id)
            .send()
            .await;
        match res {
            Ok(_) => done.aborted += 1,
            Err(e) if matches!(e.code(), Some("NoSuchUpload" | "NoSuchBucket")) => done.gone += 1,
            Err(e) => {
                let e = Error::from_sdk(format!("aborting upload of {}", u.key), e);
                tracing::warn!(bucket = %u.bucket, key = %u.key, upload_id = %u.upload_id, "{e}");
                done.failed.push((u, e.to_string()));
                continue;
            }
        }
        ledger.close_upload(&u.upload_id).await?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_first_failure() {
        let mut a = AbortedUploads {
            aborted: 2,
            ..Default::default()
        };
        assert_eq!(
            a.describe(),
            "aborted 2 incomplete multipart upload(s) of the transfer"
        );
        a.gone = 1;
        a.failed.push((
            OpenUpload {
                upload_id: "u1".into(),
                bucket: "b".into(),
                key: "k".into(),
                ..Default::default()
            },
            "AccessDenied".into(),
        ));
        assert_eq!(
            a.describe(),
            "aborted 2 incomplete multipart upload(s) of the transfer; 1 already gone; 1 could not be aborted \
             (first: s3://b/k upload u1: AccessDenied)"
        );
    }
}

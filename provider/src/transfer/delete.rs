//! Delete: every resource a transfer created, newest first, each piece tolerating its absence. Copied data is
//! never touched; only incomplete multipart uploads the workers left under the destination prefix are aborted.

use super::infra::{Infra, ProvisionError, Result};
use super::spec::TransferSpec;
use super::{alarms, fleet, iam, logs, network, notifications, queues, table};
use crate::aws::AwsClients;

/// Most multipart uploads aborted in one delete: a bound on the calls, not a limit that matters in practice.
const MAX_ABORTS: usize = 10_000;

/// Delete everything in `infra`. Returns notes for the user (aborted uploads, steps skipped); fails with every
/// piece that could not be deleted (the others are gone).
pub async fn delete(
    clients: &AwsClients,
    infra: &Infra,
    spec: &TransferSpec,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let failures = Box::pin(teardown(clients, infra, spec)).await;
    if !failures.is_empty() {
        let mut e = ProvisionError::new("deleting transfer", &spec.name, failures.join("; "));
        e.code = Some("DeleteFailed".into());
        return Err(e);
    }
    match Box::pin(abort_uploads(clients, spec)).await {
        Ok(0) => {}
        Ok(n) => notes.push(format!(
            "aborted {n} incomplete multipart upload(s) under s3://{}/{}",
            spec.destination.bucket, spec.destination.prefix
        )),
        Err(note) => notes.push(note),
    }
    Ok(notes)
}

/// Best effort, newest first: deletes every piece `infra` names (empty names are skipped, so a half-made
/// transfer is rolled back by the same code) and returns what could not be deleted.
pub(crate) async fn teardown(c: &AwsClients, infra: &Infra, spec: &TransferSpec) -> Vec<String> {
    let mut failed = Failures::default();
    if let Some(id) = &infra.notification_id {
        failed.step(notifications::remove(c, &spec.source.bucket, id).await);
    }
    Box::pin(alarms::delete(c, infra, &mut failed)).await;
    // Groups (with their instances) before the launch templates, instance profile and security group they use.
    Box::pin(fleet::delete(c, infra, &mut failed)).await;
    if let Some(sg) = &infra.security_group_id {
        failed.step(network::delete_security_group(c, sg).await);
    }
    // After the groups: no instance is left to write to it.
    if !infra.log_group.is_empty() {
        failed.step(logs::delete(c, &infra.log_group).await);
    }
    Box::pin(iam::delete(c, infra, &mut failed)).await;
    Box::pin(table::delete(c, infra, &mut failed)).await;
    Box::pin(queues::delete(c, infra, &mut failed)).await;
    failed.0
}

/// What a teardown could not delete: every step's error except "not found" (already gone is deleted).
#[derive(Debug, Default)]
pub(crate) struct Failures(pub Vec<String>);

impl Failures {
    pub(crate) fn step(&mut self, r: Result<()>) {
        if let Err(e) = r {
            if !e.is_not_found() {
                tracing::warn!(error = %e, "delete step failed");
                self.0.push(e.to_string());
            }
        }
    }
}

/// Aborts the incomplete multipart uploads under the destination prefix (the workers' leftovers; completed
/// objects are never touched). Returns how many, or a note when the store cannot list uploads.
async fn abort_uploads(c: &AwsClients, spec: &TransferSpec) -> std::result::Result<usize, String> {
    let d = &spec.destination;
    if d.endpoint.is_some() || d.credentials_secret_arn.is_some() {
        // Written with other credentials or to another store: the provider's S3 client cannot see it.
        return Ok(0);
    }
    let mut aborted = 0;
    let mut key_marker: Option<String> = None;
    let mut upload_marker: Option<String> = None;
    loop {
        let out =
            c.s3.list_multipart_uploads()
                .bucket(&d.bucket)
                .prefix(&d.prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(upload_marker.clone())
                .send()
                .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let e = ProvisionError::sdk("listing multipart uploads", &d.bucket, e);
                // Stores without the API (and buckets already gone) have nothing we could abort.
                tracing::debug!(error = %e, "not aborting multipart uploads");
                return if e.is_not_found() || e.code.as_deref() == Some("NotImplemented") {
                    Ok(aborted)
                } else {
                    Err(format!(
                        "incomplete multipart uploads were not aborted: {e}"
                    ))
                };
            }
        };
        for u in out.uploads() {
            let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            match c
                .s3
                .abort_multipart_upload()
                .bucket(&d.bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
            {
                Ok(_) => aborted += 1,
                Err(e) => {
                    let e = ProvisionError::sdk("aborting multipart upload", key, e);
                    if !e.is_not_found() {
                        return Err(format!(
                            "incomplete multipart uploads were not all aborted: {e}"
                        ));
                    }
                }
            }
            if aborted >= MAX_ABORTS {
                return Ok(aborted);
            }
        }
        if out.is_truncated() != Some(true) {
            return Ok(aborted);
        }
        key_marker = out.next_key_marker().map(str::to_owned);
        upload_marker = out.next_upload_id_marker().map(str::to_owned);
        if key_marker.is_none() {
            return Ok(aborted);
        }
    }
}

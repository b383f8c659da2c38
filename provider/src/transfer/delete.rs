//! Delete: every resource a transfer created, newest first, each piece tolerating its absence. Copied data is
//! never touched; only the multipart uploads the workers started and left open, as the ledger records them, are
//! aborted (other applications' uploads in the bucket are not the transfer's to touch).

use super::infra::{Infra, ProvisionError, Result};
use super::spec::{Payload, TransferSpec};
use super::{alarms, fleet, iam, logs, network, notifications, queues, table};
use crate::aws::AwsClients;

/// Delete everything in `infra`. Returns notes for the user (aborted uploads, steps skipped); fails with every
/// piece that could not be deleted (the others are gone).
pub async fn delete<P: Payload>(
    clients: &AwsClients,
    infra: &Infra,
    spec: &TransferSpec<P>,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let failures = Box::pin(teardown(clients, infra, spec, &mut notes)).await;
    if !failures.is_empty() {
        let mut e = ProvisionError::new("deleting transfer", &spec.name, failures.join("; "));
        e.code = Some("DeleteFailed".into());
        return Err(e);
    }
    Ok(notes)
}

/// Best effort, newest first: deletes every piece `infra` names (empty names are skipped, so a half-made
/// transfer is rolled back by the same code) and returns what could not be deleted.
pub(crate) async fn teardown<P: Payload>(
    c: &AwsClients,
    infra: &Infra,
    spec: &TransferSpec<P>,
    notes: &mut Vec<String>,
) -> Vec<String> {
    let mut failed = Failures::default();
    if let (Some(id), Some(source)) = (&infra.notification_id, spec.notifications()) {
        failed.step(notifications::remove(c, &source.bucket, id).await);
    }
    Box::pin(alarms::delete(c, infra, &mut failed)).await;
    // Groups (with their instances) before the launch templates, instance profile and security group they use.
    Box::pin(fleet::delete(c, infra, &mut failed)).await;
    // With no worker left to start one, and before the ledger that records them goes.
    if let Some(note) = Box::pin(abort_uploads(c, infra, spec, &mut failed)).await {
        notes.push(note);
    }
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

/// Aborts the multipart uploads the transfer's workers started and left open, as its ledger records them
/// (never "every incomplete upload under the prefix": other applications' uploads stay, even of the same keys).
/// Returns a note for the user when there was something to say.
async fn abort_uploads<P: Payload>(
    c: &AwsClients,
    infra: &Infra,
    spec: &TransferSpec<P>,
    failed: &mut Failures,
) -> Option<String> {
    if infra.table.is_empty() {
        return None;
    }
    let d = spec.uploads_destination()?;
    if d.endpoint.is_some() || d.credentials_secret_arn.is_some() {
        // Written with other credentials or to another store: the provider's S3 client cannot reach it.
        return Some(format!(
            "multipart uploads the workers left open at s3://{} (another store or account) were not aborted: \
             a lifecycle rule on that bucket that aborts incomplete uploads cleans them up",
            d.bucket
        ));
    }
    let s3 = match d.region.as_deref().filter(|r| *r != c.region()) {
        Some(r) => aws_sdk_s3::Client::from_conf(
            c.s3.config()
                .to_builder()
                .region(aws_sdk_s3::config::Region::new(r.to_owned()))
                .build(),
        ),
        None => c.s3.clone(),
    };
    let ledger = dth_core::ledger::DynamoLedger::new(c.dynamodb.clone(), &infra.table);
    match dth_core::uploads::abort_open_uploads(&ledger, &s3).await {
        Ok(done) if done.aborted + done.gone == 0 && done.failed.is_empty() => None,
        Ok(done) => {
            if !done.failed.is_empty() {
                failed.step(Err(ProvisionError::new(
                    "aborting multipart uploads",
                    &d.bucket,
                    done.describe(),
                )));
            }
            Some(done.describe())
        }
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            failed.step(Err(ProvisionError::new(
                "reading the ledger's open uploads",
                &infra.table,
                e,
            )));
            None
        }
    }
}

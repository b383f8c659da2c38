//! Create: every resource of a transfer, in dependency order; on failure, what was made is deleted again
//! (newest first) before the error is returned.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::delete::teardown;
use super::infra::{resource_tags, Infra, Names, ProvisionError, Result};
use super::spec::{Payload, TransferSpec};
use super::{alarms, fleet, iam, logs, network, notifications, queues, table};
use crate::aws::{AwsClients, ProviderConfig};

/// Create every resource of `spec`. On failure, everything already made is deleted again (newest first) and the
/// error names the step that failed; leftovers that could not be deleted are listed in
/// [`ProvisionError::cleanup`].
pub async fn create<P: Payload>(
    clients: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec<P>,
) -> Result<Infra> {
    // Without a limit or a stop there is nothing to abandon; the fallback only satisfies the type.
    create_bounded(clients, cfg, spec, None, &CancellationToken::new())
        .await
        .unwrap_or_else(|a| {
            Err(ProvisionError::new(
                "creating transfer",
                &spec.name,
                a.reason,
            ))
        })
}

/// Why a [`create_within`] stopped before its creation steps were done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandon {
    /// The steps took longer than this.
    TimedOut(Duration),
    /// Terraform asked the provider to stop (StopProvider: the user pressed Ctrl-C).
    Stopped,
}

impl std::fmt::Display for Abandon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abandon::TimedOut(limit) => write!(f, "timed out after {limit:?}"),
            Abandon::Stopped => write!(f, "interrupted: terraform asked the provider to stop"),
        }
    }
}

/// A [`create_within`] whose creation steps were abandoned. What they had made was deleted again; `cleanup`
/// lists what could not be (as [`ProvisionError::cleanup`] does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abandoned {
    pub reason: Abandon,
    pub cleanup: Vec<String>,
}

/// [`create`] with the creation steps bounded by `limit` and stoppable through `stop` (the outer `Err`). When
/// either comes first, the step in progress is abandoned and what was made is deleted again; the rollback itself
/// is neither bounded nor stoppable, since stopping it halfway would leave part of a transfer behind that no
/// state records. (An AWS call in flight at that moment may still complete on AWS's side without being recorded;
/// its resource carries this create's id, so that a later create of the name can tell it is not theirs.)
pub async fn create_within<P: Payload>(
    clients: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec<P>,
    limit: Duration,
    stop: &CancellationToken,
) -> std::result::Result<Result<Infra>, Abandoned> {
    create_bounded(clients, cfg, spec, Some(limit), stop).await
}

async fn create_bounded<P: Payload>(
    clients: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec<P>,
    limit: Option<Duration>,
    stop: &CancellationToken,
) -> std::result::Result<Result<Infra>, Abandoned> {
    let problems = spec.validate();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|(p, m)| format!("{p}: {m}")).collect();
        return Ok(Err(ProvisionError::new(
            "validating transfer",
            &spec.name,
            list.join("; "),
        )));
    }
    let creation_id = super::infra::new_creation_id();
    let mut infra = Infra {
        region: clients.region().to_owned(),
        tags: resource_tags(cfg, spec, &creation_id),
        creation_id,
        ..Infra::default()
    };
    // Boxed: the SDK's futures are large, and a create awaits dozens of them (debug builds overflowed a
    // 2 MiB thread stack with the whole state machine inline).
    let steps = Box::pin(build(clients, cfg, spec, &mut infra));
    let deadline = async {
        match limit {
            Some(l) => tokio::time::sleep(l).await,
            None => std::future::pending().await,
        }
    };
    let built = tokio::select! {
        r = steps => Ok(r),
        _ = deadline => Err(Abandon::TimedOut(limit.unwrap_or_default())),
        _ = stop.cancelled() => Err(Abandon::Stopped),
    };
    // `steps` is gone here (finished or dropped), so `infra` holds what was made, whatever happened.
    match built {
        Ok(Ok(())) => Ok(Ok(infra)),
        Ok(Err(mut e)) => {
            tracing::warn!(transfer = %spec.name, error = %e, "create failed; deleting what was made");
            e.cleanup = Box::pin(teardown(clients, &infra, spec, &mut Vec::new())).await;
            Ok(Err(e))
        }
        Err(reason) => {
            tracing::warn!(transfer = %spec.name, %reason, "create abandoned; deleting what was made");
            let cleanup = Box::pin(teardown(clients, &infra, spec, &mut Vec::new())).await;
            Err(Abandoned { reason, cleanup })
        }
    }
}

async fn build<P: Payload>(
    c: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec<P>,
    infra: &mut Infra,
) -> Result<()> {
    let n = Names::new(&spec.name);
    if let Some(source) = spec.notifications() {
        // S3 delivers notifications only to a queue in the bucket's own region.
        if let Some(r) = source.region.as_deref().filter(|r| *r != c.region()) {
            return Err(ProvisionError::new(
                "configuring S3 event notifications",
                &source.bucket,
                format!(
                    "source.region {r} differs from the provider's region {}: S3 can only notify a queue in the \
                     bucket's region",
                    c.region()
                ),
            ));
        }
    }

    // Names that AWS lets a create overwrite (alarms, dashboard) are checked before anything is made.
    Box::pin(alarms::ensure_names_free(c, &n, infra)).await?;
    Box::pin(queues::create(c, spec, &n, infra)).await?;
    Box::pin(table::create(c, &n, infra)).await?;
    // Before the role (whose policy names it) and the launch templates (whose containers log to it).
    Box::pin(logs::create(c, &n, spec.log_retention_days, infra)).await?;
    Box::pin(iam::create(c, spec, &n, infra)).await?;
    Box::pin(network::resolve(c, spec, &n, infra)).await?;
    Box::pin(network::resolve_ami(c, spec, infra)).await?;
    Box::pin(fleet::create_launch_templates(c, cfg, spec, &n, infra)).await?;
    Box::pin(fleet::create_workers(c, spec, &n, infra)).await?;
    Box::pin(fleet::create_finder(c, spec, &n, infra)).await?;
    Box::pin(alarms::put_dashboard(c, &n, infra)).await?;
    if let Some(email) = &spec.alarm_email {
        Box::pin(alarms::create_topic(c, &n, email, infra)).await?;
    }
    Box::pin(alarms::put_dead_letter_alarm(c, &n, infra)).await?;
    if let Some(source) = spec.notifications() {
        Box::pin(notifications::add(c, source, &n, infra)).await?;
    }
    Ok(())
}

//! Where a transfer stands, from its name alone: what `dth status`, the `dth_transfer` data source and the
//! provider's refresh report.
//!
//! [`overview`] makes a fixed number of AWS calls per transfer, whatever its size — it never lists objects,
//! messages or instances one by one:
//!
//! | service      | calls | what                                                                        |
//! |--------------|-------|-----------------------------------------------------------------------------|
//! | SQS          | 4     | GetQueueUrl and GetQueueAttributes of the job queue and of the dead-letter queue |
//! | DynamoDB     | 2     | GetItem of the run pointer, then of that run's summary                     |
//! | Auto Scaling | 1     | DescribeAutoScalingGroups (the finder's and the workers' groups)           |
//! | CloudWatch   | 0–1   | GetMetricData: objects and bytes copied over the last minutes (the rate)   |
//!
//! [`list`] finds the transfers of an account and region by the tag every worker group carries
//! ([`crate::names::TRANSFER_TAG`]): one DescribeAutoScalingGroups page per 100 groups.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ledger::DynamoLedger;
use crate::metrics;
use crate::names::{Names, TRANSFER_TAG};

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No finder run has started yet and no job is queued.
    #[default]
    Idle,
    /// Jobs are queued or in flight, the finder is still listing, or objects found are not all settled.
    Syncing,
    /// The queue is empty and objects failed or jobs were dead-lettered.
    Failed,
    /// The latest run finished and every object it found was copied (or had vanished from the source).
    InSync,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Syncing => "syncing",
            Status::Failed => "failed",
            Status::InSync => "in_sync",
        }
    }
}

/// A transfer's progress: the latest run's summary from the ledger and the queues' depths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub status: Status,
    pub objects_found: u64,
    pub bytes_found: u64,
    pub objects_done: u64,
    pub bytes_done: u64,
    pub objects_failed: u64,
    /// Objects found but deleted from the source before they were copied.
    pub objects_gone: u64,
    pub queue_visible: u64,
    pub queue_in_flight: u64,
    pub dead_letters: u64,
    /// When the latest finder run started (RFC 3339), if there was one.
    pub last_finder_run: Option<String>,
    /// Whether the latest finder run finished listing.
    pub finder_finished: bool,
    /// Why the latest finder run failed, when it did.
    pub finder_error: Option<String>,
}

impl Progress {
    /// The status rule, in order:
    /// 1. jobs visible or in flight on the queue → `syncing` (work is under way, whatever else holds);
    /// 2. dead letters, objects that failed, or a failed finder run → `failed` (nothing is left to retry them);
    /// 3. no finder run yet → `idle`;
    /// 4. the finder still listing, or found objects not all done / failed / gone → `syncing`;
    /// 5. otherwise → `in_sync`.
    pub fn status_of(&self) -> Status {
        if self.queue_visible + self.queue_in_flight > 0 {
            Status::Syncing
        } else if self.dead_letters > 0 || self.objects_failed > 0 || self.finder_error.is_some() {
            Status::Failed
        } else if self.last_finder_run.is_none() {
            Status::Idle
        } else if !self.finder_finished
            || self.objects_done + self.objects_failed + self.objects_gone < self.objects_found
        {
            Status::Syncing
        } else {
            Status::InSync
        }
    }

    /// Objects found by the latest run and not settled yet.
    pub fn pending_objects(&self) -> u64 {
        self.objects_found
            .saturating_sub(self.objects_done + self.objects_failed + self.objects_gone)
    }

    /// Bytes found by the latest run and not copied yet.
    pub fn pending_bytes(&self) -> u64 {
        self.bytes_found.saturating_sub(self.bytes_done)
    }
}

/// Fill `p` from the ledger: the last good run's summary and the last failure since (a failed finder run never
/// hides the progress of the run before it). One GetItem of the run pointer, one of the good run's summary.
pub async fn read_progress(ledger: &DynamoLedger, p: &mut Progress) -> Result<()> {
    let runs = ledger.latest_runs().await?;
    if let Some(f) = &runs.failed {
        p.finder_error = Some(f.error.clone());
        p.last_finder_run = Some(f.at.clone().unwrap_or_else(|| f.run.clone()));
        p.finder_finished = true;
    }
    let Some(run) = runs.good else {
        return Ok(());
    };
    let Some(s) = ledger.summary(&run).await? else {
        return Ok(());
    };
    if runs.failed.is_none() {
        p.last_finder_run = Some(s.started_at.unwrap_or_else(|| run.clone()));
        p.finder_finished = s.finished_at.is_some();
    }
    p.objects_found = s.objects_found;
    p.bytes_found = s.bytes_found;
    p.objects_done = s.objects_done;
    p.bytes_done = s.bytes_done;
    p.objects_failed = s.objects_failed;
    p.objects_gone = s.objects_gone;
    Ok(())
}

/// The clients [`overview`] reads with.
#[derive(Debug, Clone)]
pub struct Clients {
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    /// For the copy rate; `None` leaves the rate (and the ETA) out.
    pub cloudwatch: Option<aws_sdk_cloudwatch::Client>,
}

/// How far back [`overview`] looks for the copy rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(300);

/// A transfer as `dth status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Overview {
    pub name: String,
    pub status: Status,
    /// The latest run's counts and the queues' depths.
    pub progress: Progress,
    pub pending_objects: u64,
    pub pending_bytes: u64,
    /// Worker instances in service, and the worker group's desired capacity.
    pub workers: u32,
    pub workers_desired: u32,
    /// Finder instances in service (a finder run under way on the fleet).
    pub finders: u32,
    /// Objects and bytes copied per second over [`RATE_WINDOW`], from the workers' metrics; `None` when not
    /// read (no CloudWatch client) or when nothing was published in the window.
    pub objects_per_sec: Option<f64>,
    pub bytes_per_sec: Option<f64>,
    /// The window the rate is over, in seconds.
    pub rate_window_secs: u64,
    /// Seconds until the pending bytes (or objects) are copied at that rate.
    pub eta_secs: Option<u64>,
    /// Pieces that were looked for and not found (`queue`, `dead_letter_queue`, `ledger`, `finder_group`,
    /// `worker_group`): a transfer being created or destroyed, or damaged by hand.
    pub missing: Vec<String>,
}

impl Overview {
    /// Pending work at the rate seen: bytes when both are known, else objects.
    pub fn eta(&self) -> Option<u64> {
        let by = |left: u64, rate: Option<f64>| {
            rate.filter(|r| *r > 0.0)
                .map(|r| (left as f64 / r).ceil() as u64)
        };
        if self.pending_objects == 0 {
            return None;
        }
        by(self.pending_bytes, self.bytes_per_sec)
            .filter(|_| self.pending_bytes > 0)
            .or_else(|| by(self.pending_objects, self.objects_per_sec))
    }
}

/// The transfers in the account and region, by name: every Auto Scaling group tagged [`TRANSFER_TAG`] that is
/// a transfer's worker group. Sorted, without duplicates.
pub async fn list(autoscaling: &aws_sdk_autoscaling::Client) -> Result<Vec<String>> {
    use aws_sdk_autoscaling::types::Filter;
    let mut names = Vec::new();
    let mut token = None;
    loop {
        let out = autoscaling
            .describe_auto_scaling_groups()
            .filters(
                Filter::builder()
                    .name("tag-key")
                    .values(TRANSFER_TAG)
                    .build(),
            )
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| Error::from_sdk("listing the transfers' Auto Scaling groups", e))?;
        for g in out.auto_scaling_groups() {
            let tagged = g
                .tags()
                .iter()
                .find(|t| t.key() == Some(TRANSFER_TAG))
                .and_then(|t| t.value());
            if let Some(name) = tagged {
                if g.auto_scaling_group_name() == Some(Names::new(name).worker_asg.as_str()) {
                    names.push(name.to_owned());
                }
            }
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// What a queue is: its URL, ARN and depth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueInfo {
    pub url: String,
    pub arn: String,
    pub visible: u64,
    pub in_flight: u64,
}

/// The queue named `name`: GetQueueUrl, then GetQueueAttributes. `None` when it does not exist.
pub async fn queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<Option<QueueInfo>> {
    let url = match sqs.get_queue_url().queue_name(name).send().await {
        Ok(o) => o.queue_url().unwrap_or_default().to_owned(),
        Err(e) => {
            let e = Error::from_sdk(format!("finding SQS queue {name}"), e);
            return if e.is_not_found() { Ok(None) } else { Err(e) };
        }
    };
    let out = match sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) => {
            let e = Error::from_sdk(format!("reading SQS queue {name}"), e);
            return if e.is_not_found() { Ok(None) } else { Err(e) };
        }
    };
    let attrs = out.attributes();
    let get = |k: QueueAttributeName| attrs.and_then(|a| a.get(&k)).cloned().unwrap_or_default();
    Ok(Some(QueueInfo {
        arn: get(QueueAttributeName::QueueArn),
        visible: get(QueueAttributeName::ApproximateNumberOfMessages)
            .parse()
            .unwrap_or(0),
        in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .parse()
            .unwrap_or(0),
        url,
    }))
}

/// Transfer `name` as it stands, with the fixed calls of the module docs. `None` when nothing of it exists
/// (no queue, ledger or group of that name).
pub async fn overview(c: &Clients, name: &str) -> Result<Option<Overview>> {
    let n = Names::new(name);
    let ledger = DynamoLedger::new(c.dynamodb.clone(), &n.table);
    let mut progress = Progress::default();
    let groups_f = async {
        c.autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&n.finder_asg)
            .auto_scaling_group_names(&n.worker_asg)
            .send()
            .await
            .map_err(|e| Error::from_sdk(format!("reading Auto Scaling groups of {name}"), e))
    };
    let rate_f = async {
        match &c.cloudwatch {
            Some(cw) => metrics::copy_rate(cw, name, RATE_WINDOW).await.map(Some),
            None => Ok(None),
        }
    };
    let (queue, dlq, ledger_read, groups, rate) = tokio::join!(
        queue(&c.sqs, &n.queue),
        queue(&c.sqs, &n.dlq),
        read_progress(&ledger, &mut progress),
        groups_f,
        rate_f
    );
    let mut missing = Vec::new();
    match queue? {
        Some(q) => {
            progress.queue_visible = q.visible;
            progress.queue_in_flight = q.in_flight;
        }
        None => missing.push("queue".to_owned()),
    }
    match dlq? {
        Some(q) => progress.dead_letters = q.visible + q.in_flight,
        None => missing.push("dead_letter_queue".to_owned()),
    }
    match ledger_read {
        Ok(()) => {}
        Err(e) if e.is_not_found() => missing.push("ledger".to_owned()),
        Err(e) => return Err(e),
    }
    let groups = groups?;
    let group = |g: &str| {
        groups
            .auto_scaling_groups()
            .iter()
            .find(|x| x.auto_scaling_group_name() == Some(g))
    };
    let in_service = |g: &aws_sdk_autoscaling::types::AutoScalingGroup| {
        g.instances()
            .iter()
            .filter(|i| {
                i.lifecycle_state() == Some(&aws_sdk_autoscaling::types::LifecycleState::InService)
            })
            .count() as u32
    };
    let (mut workers, mut workers_desired, mut finders) = (0, 0, 0);
    match group(&n.finder_asg) {
        Some(g) => finders = in_service(g),
        None => missing.push("finder_group".to_owned()),
    }
    match group(&n.worker_asg) {
        Some(g) => {
            workers = in_service(g);
            workers_desired = g.desired_capacity().unwrap_or(0).max(0) as u32;
        }
        None => missing.push("worker_group".to_owned()),
    }
    if missing.len() == 5 {
        return Ok(None);
    }
    // A rate that cannot be read (CloudWatch denied to this caller, say) leaves it out; the rest stands.
    let rate = rate.unwrap_or_else(|e| {
        tracing::debug!("reading the copy rate of {name}: {e}");
        None
    });
    progress.status = progress.status_of();
    let mut o = Overview {
        name: name.to_owned(),
        status: progress.status,
        pending_objects: progress.pending_objects(),
        pending_bytes: progress.pending_bytes(),
        progress,
        workers,
        workers_desired,
        finders,
        objects_per_sec: rate.and_then(|r| r.0),
        bytes_per_sec: rate.and_then(|r| r.1),
        rate_window_secs: RATE_WINDOW.as_secs(),
        eta_secs: None,
        missing,
    };
    o.eta_secs = o.eta();
    Ok(Some(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Progress {
        Progress::default()
    }

    #[test]
    fn status_rule() {
        assert_eq!(p().status_of(), Status::Idle);
        let started = Progress {
            last_finder_run: Some("2026-01-01T00:00:00Z".into()),
            ..p()
        };
        assert_eq!(started.status_of(), Status::Syncing, "finder still listing");
        let done = Progress {
            finder_finished: true,
            objects_found: 10,
            objects_done: 9,
            objects_gone: 1,
            ..started.clone()
        };
        assert_eq!(done.status_of(), Status::InSync);
        let behind = Progress {
            objects_done: 5,
            ..done.clone()
        };
        assert_eq!(behind.status_of(), Status::Syncing);
        assert_eq!(behind.pending_objects(), 4);
        let queued = Progress {
            queue_visible: 3,
            dead_letters: 1,
            ..done.clone()
        };
        assert_eq!(queued.status_of(), Status::Syncing, "work under way wins");
        let dead = Progress {
            dead_letters: 1,
            ..done.clone()
        };
        assert_eq!(dead.status_of(), Status::Failed);
        let finder_failed = Progress {
            finder_error: Some("listing src: AccessDenied".into()),
            finder_finished: false,
            ..started.clone()
        };
        assert_eq!(
            finder_failed.status_of(),
            Status::Failed,
            "a failed run is not still listing"
        );
        let failed = Progress {
            objects_failed: 1,
            objects_done: 8,
            ..done
        };
        assert_eq!(failed.status_of(), Status::Failed);
        // Events arriving before any finder run.
        assert_eq!(
            Progress {
                queue_in_flight: 1,
                ..p()
            }
            .status_of(),
            Status::Syncing
        );
    }

    #[test]
    fn eta_from_bytes_then_objects() {
        let mut o = Overview {
            pending_objects: 10,
            pending_bytes: 1000,
            bytes_per_sec: Some(100.0),
            objects_per_sec: Some(2.0),
            ..Default::default()
        };
        assert_eq!(o.eta(), Some(10));
        o.bytes_per_sec = None;
        assert_eq!(o.eta(), Some(5));
        o.objects_per_sec = Some(0.0);
        assert_eq!(o.eta(), None, "no rate, no ETA");
        o.pending_objects = 0;
        o.bytes_per_sec = Some(1.0);
        assert_eq!(o.eta(), None, "nothing pending");
    }
}

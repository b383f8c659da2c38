//! Moving a transfer's dead-lettered jobs back to its job queue (`dth retry`).
//!
//! SQS's own redrive first (StartMessageMoveTask, watched with ListMessageMoveTasks until it ends); where the
//! server refuses it (an SQS that lacks it, a role without `sqs:StartMessageMoveTask`), message by message:
//! receive from the dead-letter queue, send to the job queue, and only then delete from the dead-letter queue.
//! Interrupted at any point, nothing is lost: a message is deleted only once its copy is on the job queue (at
//! worst a job is on both, and the worker's ledger counts it once).

use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};
use crate::status::QueueInfo;

/// How the jobs went back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// SQS moved them (StartMessageMoveTask).
    MoveTask,
    /// Received, sent and deleted one batch at a time.
    OneByOne,
}

/// What [`retry_dead_letters`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    pub moved: u64,
    pub method: Method,
    /// Stopped before the dead-letter queue was empty (interrupted); what is left stays there.
    pub interrupted: bool,
}

/// How often a move task's progress is read.
const TASK_POLL: Duration = Duration::from_secs(2);

/// Move every message of `dlq` to `queue`; `stop` ends it early (between batches) without losing any.
pub async fn retry_dead_letters(
    sqs: &aws_sdk_sqs::Client,
    dlq: &QueueInfo,
    queue: &QueueInfo,
    stop: &CancellationToken,
) -> Result<Moved> {
    match sqs
        .start_message_move_task()
        .source_arn(&dlq.arn)
        .destination_arn(&queue.arn)
        .send()
        .await
    {
        Ok(_) => watch_task(sqs, dlq, stop).await,
        Err(e) => {
            let e = Error::from_sdk("starting an SQS message move task", e);
            tracing::info!(
                "SQS did not start a message move task ({e}): moving the jobs one batch at a time"
            );
            one_by_one(sqs, dlq, queue, stop).await
        }
    }
}

async fn watch_task(
    sqs: &aws_sdk_sqs::Client,
    dlq: &QueueInfo,
    stop: &CancellationToken,
) -> Result<Moved> {
    loop {
        let out = sqs
            .list_message_move_tasks()
            .source_arn(&dlq.arn)
            .max_results(1)
            .send()
            .await
            .map_err(|e| Error::from_sdk("reading the message move task", e))?;
        let Some(t) = out.results().first() else {
            return Err(Error::new(
                ErrorKind::Other,
                format!("the message move task from {} vanished", dlq.arn),
            ));
        };
        let moved = t.approximate_number_of_messages_moved().max(0) as u64;
        match t.status() {
            Some("COMPLETED") => {
                return Ok(Moved {
                    moved,
                    method: Method::MoveTask,
                    interrupted: false,
                })
            }
            Some(s @ ("FAILED" | "CANCELLED")) => {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "the message move task {}: {} after moving {moved} jobs",
                        s.to_lowercase(),
                        t.failure_reason().unwrap_or("no reason given")
                    ),
                ))
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(TASK_POLL) => {}
            _ = stop.cancelled() => {
                // The task runs on in SQS; leaving it is safe.
                return Ok(Moved { moved, method: Method::MoveTask, interrupted: true });
            }
        }
    }
}

async fn one_by_one(
    sqs: &aws_sdk_sqs::Client,
    dlq: &QueueInfo,
    queue: &QueueInfo,
    stop: &CancellationToken,
) -> Result<Moved> {
    let mut moved = 0u64;
    let mut empty = 0;
    let mut stalled = 0;
    // Two empty long polls in a row: SQS's receive samples servers, so one empty answer can miss a message.
    while empty < 2 {
        if stop.is_cancelled() {
            return Ok(Moved {
                moved,
                method: Method::OneByOne,
                interrupted: true,
            });
        }
        let got = sqs
            .receive_message()
            .queue_url(&dlq.url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| Error::from_sdk(format!("receiving from {}", dlq.url), e))?;
        let messages = got.messages();
        if messages.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        let mut entries = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let e = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(m.body().unwrap_or_default())
                .set_message_attributes(m.message_attributes().cloned())
                .build()
                .map_err(|e| Error::with_source(ErrorKind::Other, "building an SQS batch", e))?;
            entries.push(e);
        }
        let sent = match sqs
            .send_message_batch()
            .queue_url(&queue.url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(sent) => sent,
            Err(e) => {
                // Nothing of this batch reached the job queue: it goes back to the dead-letter queue now
                // rather than when its visibility timeout ends.
                release(sqs, dlq, messages.iter()).await;
                return Err(Error::from_sdk(format!("sending to {}", queue.url), e));
            }
        };
        let nth = |id: &str| messages.get(id.parse::<usize>().ok()?);
        // Only what is on the job queue now leaves the dead-letter queue.
        let deletes: Vec<DeleteMessageBatchRequestEntry> = sent
            .successful()
            .iter()
            .filter_map(|ok| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(ok.id())
                    .receipt_handle(nth(ok.id())?.receipt_handle()?)
                    .build()
                    .ok()
            })
            .collect();
        // What SQS did not take goes back to the dead-letter queue at once: for another try in this loop, or to
        // wait there for the next `dth retry` if SQS said the job itself is at fault.
        release(sqs, dlq, sent.failed().iter().filter_map(|f| nth(f.id()))).await;
        if !deletes.is_empty() {
            let n = deletes.len() as u64;
            let out = sqs
                .delete_message_batch()
                .queue_url(&dlq.url)
                .set_entries(Some(deletes))
                .send()
                .await
                .map_err(|e| {
                    Error::from_sdk(
                        format!(
                            "deleting from {} ({n} jobs are on the job queue and stay dead-lettered too: the \
                             ledger counts each once)",
                            dlq.url
                        ),
                        e,
                    )
                })?;
            if !out.failed().is_empty() {
                // A copy stays in the dead-letter queue as well; a later retry sends it again and the worker counts
                // the job once.
                tracing::warn!(
                    "{} jobs are on the job queue but could not be deleted from {}",
                    out.failed().len(),
                    dlq.url
                );
            }
            moved += n;
        }
        if let Some(f) = sent.failed().iter().find(|f| f.sender_fault()) {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "SQS refused a job: {} {} ({moved} moved; the rest stay dead-lettered)",
                    f.code(),
                    f.message().unwrap_or_default()
                ),
            ));
        }
        if sent.successful().is_empty() {
            stalled += 1;
            if stalled >= 3 {
                let why = sent.failed().first().map_or_else(
                    || "no reason given".to_owned(),
                    |f| format!("{} {}", f.code(), f.message().unwrap_or_default()),
                );
                return Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "SQS took none of the jobs three times in a row: {why} ({moved} moved; the rest stay \
                         dead-lettered)"
                    ),
                ));
            }
        } else {
            stalled = 0;
        }
    }
    Ok(Moved {
        moved,
        method: Method::OneByOne,
        interrupted: false,
    })
}

/// Make received messages visible in the dead-letter queue again at once (best effort: otherwise they reappear
/// when their visibility timeout ends).
async fn release<'a>(
    sqs: &aws_sdk_sqs::Client,
    dlq: &QueueInfo,
    messages: impl Iterator<Item = &'a aws_sdk_sqs::types::Message>,
) {
    let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = messages
        .enumerate()
        .filter_map(|(i, m)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle()?)
                .visibility_timeout(0)
                .build()
                .ok()
        })
        .collect();
    if entries.is_empty() {
        return;
    }
    if let Err(e) = sqs
        .change_message_visibility_batch()
        .queue_url(&dlq.url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        tracing::warn!(
            "{}: the jobs not moved reappear in {} when their visibility timeout ends",
            Error::from_sdk("releasing received jobs", e),
            dlq.url
        );
    }
}

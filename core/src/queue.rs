//! The SQS job queue: batched sends within SQS's limits, long-poll receives, heartbeats.

use aws_sdk_sqs::types::{
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};

use crate::config::MAX_MESSAGE_BYTES;
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub body: String,
    pub receipt: String,
    /// 1 on the first delivery.
    pub receive_count: u32,
}

#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Send every body, ten to a request and at most 256 KiB a request; entries SQS refuses are retried.
    pub async fn send_all(&self, bodies: Vec<String>) -> Result<()> {
        let mut batch: Vec<String> = Vec::with_capacity(10);
        let mut bytes = 0;
        for b in bodies {
            if b.len() > MAX_MESSAGE_BYTES {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!("a job of {} bytes exceeds SQS's message limit", b.len()),
                ));
            }
            if batch.len() == 10 || bytes + b.len() > MAX_MESSAGE_BYTES {
                self.send_batch(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
            bytes += b.len();
            batch.push(b);
        }
        if !batch.is_empty() {
            self.send_batch(batch).await?;
        }
        Ok(())
    }

    async fn send_batch(&self, mut bodies: Vec<String>) -> Result<()> {
        for attempt in 0..8u32 {
            let entries: Vec<_> = bodies
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                })
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::with_source(ErrorKind::Other, "building SQS batch", e))?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| Error::from_sdk(format!("sending jobs to {}", self.url), e))?;
            let failed = out.failed();
            if failed.is_empty() {
                return Ok(());
            }
            if let Some(f) = failed.iter().find(|f| f.sender_fault()) {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "SQS refused a job: {} {}",
                        f.code(),
                        f.message().unwrap_or_default()
                    ),
                ));
            }
            let retry: std::collections::HashSet<usize> =
                failed.iter().filter_map(|f| f.id().parse().ok()).collect();
            bodies = bodies
                .into_iter()
                .enumerate()
                .filter(|(i, _)| retry.contains(i))
                .map(|(_, b)| b)
                .collect();
            tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(5))).await;
        }
        Err(Error::new(
            ErrorKind::Transient,
            format!("SQS kept failing {} jobs", bodies.len()),
        ))
    }

    pub async fn receive(&self, max: u32, wait_secs: u32) -> Result<Vec<Received>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait_secs.min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| Error::from_sdk(format!("receiving from {}", self.url), e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| Received {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                receipt: m.receipt_handle().unwrap_or_default().to_owned(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    pub async fn delete(&self, receipt: &str) -> Result<()> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::from_sdk("deleting a finished job", e))
    }

    /// Keep an in-flight job invisible for `secs` more seconds (0 releases it for redelivery now).
    pub async fn set_visibility(&self, receipt: &str, secs: u32) -> Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(secs as i32)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::from_sdk("extending a job's visibility", e))
    }

    /// (visible, in flight) message counts.
    pub async fn depth(&self) -> Result<(u64, u64)> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| Error::from_sdk(format!("reading attributes of {}", self.url), e))?;
        let get = |n: QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(&n))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }
}

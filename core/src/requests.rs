//! Requests this process sent, per service: every HTTP attempt (retries included: each is billed and each
//! loads the server), counted by an interceptor on every AWS client the engine builds. Reports give the
//! difference between two [`Requests::now`] readings.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// The services counted apart; everything else (autoscaling, ECR, ...) is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    S3 = 0,
    Sqs = 1,
    DynamoDb = 2,
    SecretsManager = 3,
    Other = 4,
}

static SENT: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// The interceptor: add it to a client's config builder (`.interceptor(Count(Service::S3))`).
#[derive(Debug, Clone, Copy)]
pub struct Count(pub Service);

impl Intercept for Count {
    fn name(&self) -> &'static str {
        "dth-request-count"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        SENT[self.0 as usize].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Requests sent, per service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Requests {
    pub s3: u64,
    pub sqs: u64,
    pub dynamodb: u64,
    pub secretsmanager: u64,
    pub other: u64,
}

impl Requests {
    /// Everything this process has sent so far.
    pub fn now() -> Self {
        let n = |s: Service| SENT[s as usize].load(Ordering::Relaxed);
        Requests {
            s3: n(Service::S3),
            sqs: n(Service::Sqs),
            dynamodb: n(Service::DynamoDb),
            secretsmanager: n(Service::SecretsManager),
            other: n(Service::Other),
        }
    }

    /// What was sent since `before` (an earlier reading).
    pub fn since(before: Requests) -> Self {
        let now = Self::now();
        Requests {
            s3: now.s3 - before.s3,
            sqs: now.sqs - before.sqs,
            dynamodb: now.dynamodb - before.dynamodb,
            secretsmanager: now.secretsmanager - before.secretsmanager,
            other: now.other - before.other,
        }
    }

    /// The control plane's share: SQS and DynamoDB, the requests a transfer pays per job.
    pub fn control_plane(&self) -> u64 {
        self.sqs + self.dynamodb
    }
}

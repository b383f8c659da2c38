//! What a transfer created ([`Infra`]), how its pieces are named ([`Names`]) and tagged, and the error every
//! provisioning step reports ([`ProvisionError`]).

use std::collections::BTreeMap;
use std::fmt;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde::{Deserialize, Serialize};

use super::spec::{Payload, TransferSpec};
use crate::aws::ProviderConfig;

pub use dth_core::names::{Names, TRANSFER_TAG};
/// The tag that says which create made a resource: `dth:creation-id = <id>`, a random id made by each create and
/// kept in state. A resource whose id is not ours was made by someone else (another workspace, a state that was
/// lost, another transfer of the same name): create refuses it, rollback and delete never touch it.
pub const CREATION_TAG: &str = "dth:creation-id";
/// On the worker ASG only: which fleet settings were left to their defaults (`subnet_ids`, `security_group_ids`,
/// `ami_id`), so that `import` can tell a resolved default from a value the user wrote.
pub const DEFAULTS_TAG: &str = "dth:defaults";

/// Every id, name and ARN a transfer created: enough to read, update and delete it without listing anything.
/// Empty strings (and `None`) mean "not created", which is also how a half-made transfer is rolled back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Infra {
    /// The control-plane region everything below lives in.
    pub region: String,
    /// The id of the create that made this transfer ([`CREATION_TAG`]); empty for transfers created before the
    /// provider tagged them with one.
    pub creation_id: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
    pub table: String,
    /// The CloudWatch Logs group the instances' containers log to (empty for transfers created before the
    /// provider made one: they keep Docker's local logs and nothing checks for a group).
    pub log_group: String,
    pub role_name: String,
    pub role_arn: String,
    pub policy_name: String,
    pub instance_profile_name: String,
    pub instance_profile_arn: String,
    /// The egress-only group created when `fleet.security_group_ids` is empty.
    pub security_group_id: Option<String>,
    /// The subnets the worker ASG spans (the default VPC's when `fleet.subnet_ids` is empty).
    pub subnet_ids: Vec<String>,
    /// The AMI of the launch templates (resolved at create when `fleet.ami_id` is empty).
    pub ami_id: String,
    pub finder_launch_template_id: String,
    pub finder_launch_template_version: i64,
    pub worker_launch_template_id: String,
    pub worker_launch_template_version: i64,
    pub finder_asg: String,
    pub worker_asg: String,
    pub scale_out_policy_arn: String,
    pub scale_in_policy_arn: String,
    /// The finder's recurring scheduled action, when `schedule` is a cron expression.
    pub schedule_action: Option<String>,
    /// Queue backlog (scale out), queue empty (scale in), dead letters.
    pub alarm_names: Vec<String>,
    pub dashboard: String,
    pub topic_arn: Option<String>,
    pub subscription_arn: Option<String>,
    /// Our entry in the source bucket's notification configuration.
    pub notification_id: Option<String>,
    /// The tags applied at the last create or update (spec tags, default tags and `dth:transfer`).
    pub tags: BTreeMap<String, String>,
}

/// The tags of every resource of a transfer: provider default tags, overridden by the spec's, plus
/// `dth:transfer` and (unless empty: a transfer from before creation ids) `dth:creation-id`.
pub fn resource_tags<P: Payload>(
    cfg: &ProviderConfig,
    spec: &TransferSpec<P>,
    creation_id: &str,
) -> BTreeMap<String, String> {
    let mut t = cfg.default_tags.clone();
    t.extend(spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    t.insert(TRANSFER_TAG.into(), spec.name.clone());
    if !creation_id.is_empty() {
        t.insert(CREATION_TAG.into(), creation_id.to_owned());
    }
    t
}

/// A new creation id: 16 hex digits from the operating system's randomness (through the standard library's
/// randomly keyed hasher, which needs no extra dependency).
pub fn new_creation_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Whose a resource is, from its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Made by this transfer's create (its creation id), or, for a transfer from before creation ids, tagged with
    /// its name and no creation id.
    Us,
    /// Made by another dth transfer: its name and creation id (empty when it predates creation ids).
    Transfer { name: String, creation_id: String },
    /// Not made by dth at all.
    Foreign,
}

impl Owner {
    /// Who owns a resource carrying `tags`, seen from the transfer `name` with `creation_id`.
    pub fn of<'a>(
        tags: impl IntoIterator<Item = (&'a str, &'a str)>,
        name: &str,
        creation_id: &str,
    ) -> Owner {
        let (mut transfer, mut id) = (None, None);
        for (k, v) in tags {
            match k {
                TRANSFER_TAG => transfer = Some(v.to_owned()),
                CREATION_TAG => id = Some(v.to_owned()),
                _ => {}
            }
        }
        match (transfer, id) {
            (None, _) => Owner::Foreign,
            (Some(t), Some(i)) if t == name && i == creation_id => Owner::Us,
            (Some(t), None) if t == name && creation_id.is_empty() => Owner::Us,
            (Some(t), i) => Owner::Transfer {
                name: t,
                creation_id: i.unwrap_or_default(),
            },
        }
    }

    /// `Ok` when the resource is ours; otherwise the error create reports: `what` (like "SQS queue") `name`
    /// exists and belongs to someone else. The code is [`ProvisionError::OWNED_ELSEWHERE`].
    pub fn ensure_ours(self, what: &str, name: &str) -> Result<()> {
        let whose = match self {
            Owner::Us => return Ok(()),
            Owner::Transfer {
                name: t,
                creation_id,
            } if creation_id.is_empty() => {
                format!("it belongs to the dth transfer {t:?}")
            }
            Owner::Transfer {
                name: t,
                creation_id,
            } => {
                format!("it belongs to the dth transfer {t:?} (creation id {creation_id})")
            }
            Owner::Foreign => "it was not made by dth".to_owned(),
        };
        let mut e = ProvisionError::new(
            format!("creating {what}"),
            name,
            format!(
                "already exists and {whose}, not this transfer: it is left as it is. Choose another name (or \
                 name_prefix), or import that transfer (terraform import)"
            ),
        );
        e.code = Some(ProvisionError::OWNED_ELSEWHERE.into());
        Err(e)
    }
}

/// The spec's `tags` from the tags found on a resource: ours and the provider's defaults taken out.
pub fn spec_tags(
    cfg: &ProviderConfig,
    found: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    found
        .into_iter()
        .filter(|(k, v)| {
            !k.starts_with("dth:") && !k.starts_with("aws:") && cfg.default_tags.get(k) != Some(v)
        })
        .collect()
}

/// A provisioning step that failed: what was being done, to which resource, and why.
#[derive(Debug, Clone)]
pub struct ProvisionError {
    /// "creating SQS queue", "reading launch template", ...
    pub action: String,
    /// The resource's name or id.
    pub name: String,
    pub cause: String,
    /// The service's error code, when it gave one.
    pub code: Option<String>,
    /// Failures while rolling back a half-made transfer (each names what was left behind).
    pub cleanup: Vec<String>,
}

impl fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.action, self.name, self.cause)?;
        if !self.cleanup.is_empty() {
            write!(
                f,
                "; rolling back also failed, left behind: {}",
                self.cleanup.join("; ")
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ProvisionError {}

impl ProvisionError {
    /// The code of an error saying a resource create would make already exists and is not ours.
    pub const OWNED_ELSEWHERE: &'static str = "OwnedByAnother";

    pub fn new(
        action: impl Into<String>,
        name: impl Into<String>,
        cause: impl fmt::Display,
    ) -> Self {
        ProvisionError {
            action: action.into(),
            name: name.into(),
            cause: cause.to_string(),
            code: None,
            cleanup: Vec::new(),
        }
    }

    /// From an AWS SDK error: the service's code and message, or the transport problem.
    pub fn sdk<E>(action: &str, name: &str, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = err.code().map(str::to_owned);
        let status = err.raw_response().map(|r| r.status().as_u16());
        let cause = match (&code, err.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => format!("{c} (HTTP {})", status.unwrap_or(0)),
            _ => {
                let detail =
                    aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
                let detail: String = detail.chars().take(400).collect();
                match status {
                    Some(s) => format!("HTTP {s}: {detail}"),
                    None => detail,
                }
            }
        };
        let not_found_message = err
            .message()
            .is_some_and(|m| m.to_ascii_lowercase().contains("not found"));
        let mut e = ProvisionError::new(action, name, cause);
        e.code = match code {
            // Auto Scaling reports missing groups as a ValidationError; give it a code that says so.
            Some(c) if c == "ValidationError" && not_found_message => Some("NotFound".into()),
            other => other,
        };
        e
    }

    /// The resource is not there (any service's way of saying so).
    pub fn is_not_found(&self) -> bool {
        self.code.as_deref().is_some_and(is_not_found_code)
    }
}

/// Error codes that mean "no such resource" across SQS, DynamoDB, IAM, EC2, Auto Scaling, CloudWatch, CloudWatch
/// Logs, SNS, S3.
pub fn is_not_found_code(code: &str) -> bool {
    code.contains("NotFound")
        || code.starts_with("NoSuch")
        || code == "AWS.SimpleQueueService.NonExistentQueue"
        || code == "QueueDoesNotExist"
        || code == "InvalidLaunchTemplateId.Malformed"
}

/// Run `op` again while its error is one `retryable` accepts — AWS's documented eventual-consistency errors, like
/// a queue name still held after its deletion or an IAM instance profile not yet visible to EC2 — with
/// exponential backoff (1 s doubling to 15 s) until `limit` has passed; then the last error. The SDK's own
/// retries (throttling, 5xx, connection errors) happen inside each attempt.
pub(crate) async fn retry_while<T, F, Fut>(
    what: &str,
    name: &str,
    limit: std::time::Duration,
    retryable: impl Fn(&ProvisionError) -> bool,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        match op().await {
            Err(e) if retryable(&e) && tokio::time::Instant::now() + pause <= deadline => {
                tracing::info!(what, name, error = %e, ?pause, "not possible yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(15));
            }
            other => return other,
        }
    }
}

/// Poll `describe` until the resource it reads is not found (deletion done), for at most `limit`: AWS deletes
/// tables, groups and the like asynchronously, and their names are not free again until then.
pub(crate) async fn wait_gone<T, F, Fut>(
    what: &str,
    name: &str,
    limit: std::time::Duration,
    mut describe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = std::time::Duration::from_millis(500);
    loop {
        if present(describe().await)?.is_none() {
            return Ok(());
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(ProvisionError::new(
                what,
                name,
                format!("still there after {} s", limit.as_secs()),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(10));
    }
}

/// `Ok(None)` for a missing resource, the value otherwise, the error for anything else.
pub(crate) fn present<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The transfer name `infra`'s tags carry (what [`Owner::of`] compares with).
pub(crate) fn spec_name(infra: &Infra) -> &str {
    infra.tags.get(TRANSFER_TAG).map_or("", String::as_str)
}

/// `Result` of a provisioning step.
pub type Result<T, E = ProvisionError> = std::result::Result<T, E>;

/// `.send()` futures of any SDK operation, mapped to a [`ProvisionError`] naming the step.
pub(crate) trait MapErrAsync<T> {
    fn map_err_async(self, what: &str, name: &str) -> impl std::future::Future<Output = Result<T>>;
}

impl<T, E, F> MapErrAsync<T> for F
where
    F: std::future::Future<
        Output = std::result::Result<
            T,
            aws_smithy_runtime_api::client::result::SdkError<
                E,
                aws_smithy_runtime_api::client::orchestrator::HttpResponse,
            >,
        >,
    >,
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
{
    fn map_err_async(self, what: &str, name: &str) -> impl std::future::Future<Output = Result<T>> {
        let (what, name) = (what.to_owned(), name.to_owned());
        // On the heap right away, so that callers awaiting many calls stay small.
        let call = Box::pin(self);
        async move { call.await.map_err(|e| ProvisionError::sdk(&what, &name, e)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_by_tags() {
        let tags = |t: &[(&'static str, &'static str)]| t.to_vec();
        let ours = tags(&[(TRANSFER_TAG, "x"), (CREATION_TAG, "c1"), ("team", "a")]);
        assert_eq!(Owner::of(ours.clone(), "x", "c1"), Owner::Us);
        assert_eq!(
            Owner::of(ours.clone(), "x", "c2"),
            Owner::Transfer {
                name: "x".into(),
                creation_id: "c1".into()
            }
        );
        assert!(matches!(Owner::of(ours, "y", "c1"), Owner::Transfer { .. }));
        assert_eq!(Owner::of(tags(&[("team", "a")]), "x", "c1"), Owner::Foreign);
        // A transfer from before creation ids owns what carries its name and no id, and nothing else.
        let legacy = tags(&[(TRANSFER_TAG, "x")]);
        assert_eq!(Owner::of(legacy.clone(), "x", ""), Owner::Us);
        assert!(matches!(
            Owner::of(legacy, "x", "c1"),
            Owner::Transfer { .. }
        ));
        let e = Owner::Foreign
            .ensure_ours("SQS queue", "dth-x-jobs")
            .unwrap_err();
        assert_eq!(e.code.as_deref(), Some(ProvisionError::OWNED_ELSEWHERE));
        assert!(
            e.to_string()
                .contains("SQS queue (dth-x-jobs): already exists and it was not made by dth"),
            "{e}"
        );
        let e = Owner::of(
            tags(&[(TRANSFER_TAG, "x"), (CREATION_TAG, "c1")]),
            "x",
            "c2",
        )
        .ensure_ours("DynamoDB table", "dth-x-ledger")
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("belongs to the dth transfer \"x\" (creation id c1)"),
            "{e}"
        );
        assert_ne!(new_creation_id(), new_creation_id());
        assert_eq!(new_creation_id().len(), 16);
    }

    #[test]
    fn names_follow_the_pattern_and_fit_aws_limits() {
        let long = "a".repeat(super::super::spec::MAX_NAME_LEN);
        let n = Names::new(&long);
        for name in n.all() {
            if name == n.log_group {
                assert_eq!(name, format!("/dth/{long}"));
            } else {
                assert!(name.starts_with(&format!("dth-{long}")), "{name}");
            }
        }
        // IAM role and instance profile names: 64; SQS queue names: 80.
        assert!(n.role.len() <= 64 && n.instance_profile.len() <= 64);
        assert!(n.queue.len() <= 80 && n.dlq.len() <= 80);
        // Security group names and launch template names: 255 / 128.
        assert!(n.finder_launch_template.len() <= 128);
        let short = Names::new("x");
        assert_eq!(short.queue, "dth-x-jobs");
        assert_eq!(short.notification_id, "dth-x");
        let mut all = short.all();
        all.sort();
        // Launch templates and ASGs share names (separate namespaces); nothing else may.
        all.dedup();
        assert_eq!(all.len(), short.all().len() - 2);
    }

    #[test]
    fn tags_layer_defaults_spec_and_ours() {
        let cfg = ProviderConfig {
            default_tags: [("team".into(), "data".into()), ("env".into(), "dev".into())].into(),
            ..Default::default()
        };
        let mut spec = TransferSpec::new("x", "a-b", "c-d", "img");
        spec.tags.insert("env".into(), "prod".into());
        let t = resource_tags(&cfg, &spec, "c1");
        assert_eq!(t.get(CREATION_TAG).map(String::as_str), Some("c1"));
        assert_eq!(t.get("team").map(String::as_str), Some("data"));
        assert_eq!(t.get("env").map(String::as_str), Some("prod"));
        assert_eq!(t.get(TRANSFER_TAG).map(String::as_str), Some("x"));
        assert_eq!(spec_tags(&cfg, t), spec.tags);
    }

    #[test]
    fn error_message_names_what_failed() {
        let e = ProvisionError::new("creating SQS queue", "dth-x-jobs", "AccessDenied: no");
        assert_eq!(
            e.to_string(),
            "creating SQS queue (dth-x-jobs): AccessDenied: no"
        );
        assert!(!e.is_not_found());
        for c in [
            "NoSuchEntity",
            "ResourceNotFoundException",
            "AWS.SimpleQueueService.NonExistentQueue",
            "InvalidGroup.NotFound",
            "InvalidLaunchTemplateName.NotFoundException",
            "NotFound",
        ] {
            assert!(is_not_found_code(c), "{c}");
        }
    }
}

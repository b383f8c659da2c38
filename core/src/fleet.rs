//! What a binary does to the Auto Scaling group it runs in.
//!
//! A transfer's finder group sits at 0 instances; a scheduled action raises it to 1 and the finder, once its
//! run is enqueued, sets the group back to 0 with [`scale_in`]. That is what ends the scheduled run: nothing
//! else watches for the finder to finish, so a finder that cannot scale in keeps its instance (and its cost)
//! until the next action.

use crate::error::{Error, ErrorKind, Result};

/// The CPU architecture of an instance type: Graviton families carry a `g` after their generation digit
/// (t4g, m7gd, c6gn), plus the first Graviton family, a1. `arm64` or `x86_64`, as AMIs name them; the
/// provider picks the AMI by it and the EC2 stand-in the image's platform.
pub fn architecture_of(instance_type: &str) -> &'static str {
    let family = instance_type.split('.').next().unwrap_or("");
    if family == "a1" {
        return "arm64";
    }
    let suffix = family.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = suffix.trim_start_matches(|c: char| c.is_ascii_digit());
    if suffix.starts_with('g') {
        "arm64"
    } else {
        "x86_64"
    }
}

/// Set `asg`'s desired capacity to 0, ignoring the group's cooldown (the run is over; there is nothing to wait
/// for). Fails when the group's minimum size is above 0, so the scheduled action that starts the finder must
/// leave the minimum at 0.
pub async fn scale_in(client: &aws_sdk_autoscaling::Client, asg: &str) -> Result<()> {
    if asg.is_empty() {
        return Err(Error::config("--scale-in-asg", "must not be empty"));
    }
    client
        .set_desired_capacity()
        .auto_scaling_group_name(asg)
        .desired_capacity(0)
        .honor_cooldown(false)
        .send()
        .await
        .map_err(|e| {
            let e = Error::from_sdk(
                format!("setting Auto Scaling group {asg} to 0 instances"),
                e,
            );
            // A rejected request (min size above 0, unknown group) is not a configuration error of the job:
            // the job ran. Report it as a runtime failure so the exit code is 1, not 2.
            if e.kind() == ErrorKind::Config {
                Error::with_source(ErrorKind::Other, "scaling in", e)
            } else {
                e
            }
        })?;
    tracing::info!(asg, "set the finder's Auto Scaling group to 0 instances");
    Ok(())
}

/// The instance's place in its Auto Scaling group, as the instance metadata service tells it: how a worker
/// learns that scale-in has picked its instance, so that it can release its jobs and let the termination go
/// on ([`complete_termination`]) instead of being killed with copies in flight.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    imds: aws_config::imds::Client,
}

/// IMDS's `autoscaling/target-lifecycle-state` while the instance waits in `Terminating:Wait`.
pub const TERMINATED: &str = "Terminated";

impl Lifecycle {
    /// IMDSv2 at its standard address (or `AWS_EC2_METADATA_SERVICE_ENDPOINT`, as every AWS SDK honours).
    pub fn new() -> Self {
        Self {
            imds: aws_config::imds::Client::builder().build(),
        }
    }

    /// The lifecycle state the group is moving this instance to (`InService`, `Terminated`, ...).
    pub async fn target_state(&self) -> Result<String> {
        self.imds
            .get("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await
            .map(|s| s.as_ref().trim().to_owned())
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Other,
                    "reading autoscaling/target-lifecycle-state from the instance metadata service",
                    e,
                )
            })
    }

    /// Returns once the instance is to be terminated. Polls every `every`; a metadata error is logged (at
    /// warn the first time in a row, then at debug) and retried: a worker must not stop copying because IMDS
    /// hiccupped.
    pub async fn terminating(&self, every: std::time::Duration) {
        let mut failing = false;
        loop {
            match self.target_state().await {
                Ok(s) if s == TERMINATED => return,
                Ok(_) => failing = false,
                Err(e) if failing => tracing::debug!("{e}"),
                Err(e) => {
                    tracing::warn!("{e} (retrying every {every:?})");
                    failing = true;
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

/// Tell the group that `instance` may go: its termination lifecycle action `hook` ends with CONTINUE. A
/// group that no longer waits on it (the hook's timeout passed, or no action is pending) is not an error.
pub async fn complete_termination(
    client: &aws_sdk_autoscaling::Client,
    asg: &str,
    hook: &str,
    instance: &str,
) -> Result<()> {
    let done = client
        .complete_lifecycle_action()
        .auto_scaling_group_name(asg)
        .lifecycle_hook_name(hook)
        .instance_id(instance)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await;
    match done {
        Ok(_) => {
            tracing::info!(
                asg,
                hook,
                instance,
                "completed the termination lifecycle action"
            );
            Ok(())
        }
        Err(e) => {
            let e = Error::from_sdk(
                format!("completing lifecycle action {hook} of {instance} in {asg}"),
                e,
            );
            // "No active Lifecycle Action found with instance ID ..." is a ValidationError.
            if e.to_string().contains("No active Lifecycle Action") {
                tracing::info!(
                    asg,
                    hook,
                    instance,
                    "no termination lifecycle action pending"
                );
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

//! What a binary does to the Auto Scaling group it runs in.
//!
//! A transfer's finder group sits at 0 instances; a scheduled action raises it to 1 and the finder, once its
//! run is enqueued, sets the group back to 0 with [`scale_in`]. That is what ends the scheduled run: nothing
//! else watches for the finder to finish, so a finder that cannot scale in keeps its instance (and its cost)
//! until the next action.

use crate::error::{Error, ErrorKind, Result};

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

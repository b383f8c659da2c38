//! How the pieces of a transfer are named and tagged: what the provider creates, and what `dth status`, the
//! `dth_transfer` data source and the workers find again from a transfer's name alone.

/// The tag every resource of a transfer carries: `dth:transfer = <name>`.
pub const TRANSFER_TAG: &str = "dth:transfer";

/// Longest transfer name: `dth-<name>-profile` etc. must fit IAM's 64-character role name limit with room to
/// spare, and alarm/ASG names stay readable.
pub const MAX_NAME_LEN: usize = 40;

/// What is wrong with a transfer name, if anything.
pub fn problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Some(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some(format!(
            "{name:?} may contain only lowercase letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!(
            "{name:?} must begin and end with a letter or digit"
        ));
    }
    None
}

/// The name of each piece of transfer `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The transfer's own name (the metrics' dimension value).
    pub transfer: String,
    pub queue: String,
    pub dlq: String,
    pub table: String,
    /// `/dth/<name>`: log groups are named as paths (like `/aws/lambda/<function>`), so that one prefix lists
    /// every transfer's logs.
    pub log_group: String,
    pub role: String,
    pub policy: String,
    pub instance_profile: String,
    pub security_group: String,
    pub finder_launch_template: String,
    pub worker_launch_template: String,
    pub finder_asg: String,
    pub worker_asg: String,
    /// The worker group's termination lifecycle hook: scale-in waits for a worker to release its jobs.
    pub drain_hook: String,
    pub scale_out_policy: String,
    pub scale_in_policy: String,
    pub schedule_action: String,
    pub backlog_alarm: String,
    pub empty_alarm: String,
    pub dead_letter_alarm: String,
    pub dashboard: String,
    pub topic: String,
    pub notification_id: String,
}

impl Names {
    pub fn new(name: &str) -> Names {
        let n = |part: &str| format!("dth-{name}-{part}");
        Names {
            transfer: name.to_owned(),
            queue: n("jobs"),
            dlq: n("dlq"),
            table: n("ledger"),
            log_group: format!("/dth/{name}"),
            role: n("role"),
            policy: n("access"),
            instance_profile: n("profile"),
            security_group: n("egress"),
            finder_launch_template: n("finder"),
            worker_launch_template: n("worker"),
            finder_asg: n("finder"),
            worker_asg: n("worker"),
            drain_hook: n("drain"),
            scale_out_policy: n("scale-out"),
            scale_in_policy: n("scale-in"),
            schedule_action: n("finder-schedule"),
            backlog_alarm: n("queue-backlog"),
            empty_alarm: n("queue-empty"),
            dead_letter_alarm: n("dead-letters"),
            dashboard: n("dashboard"),
            topic: n("alarms"),
            notification_id: format!("dth-{name}"),
        }
    }

    /// Every name above, for checks that nothing of a transfer is left.
    pub fn all(&self) -> Vec<&str> {
        vec![
            &self.queue,
            &self.dlq,
            &self.table,
            &self.log_group,
            &self.role,
            &self.policy,
            &self.instance_profile,
            &self.security_group,
            &self.finder_launch_template,
            &self.worker_launch_template,
            &self.finder_asg,
            &self.worker_asg,
            &self.scale_out_policy,
            &self.scale_in_policy,
            &self.schedule_action,
            &self.backlog_alarm,
            &self.empty_alarm,
            &self.dead_letter_alarm,
            &self.dashboard,
            &self.topic,
            &self.notification_id,
        ]
    }
}

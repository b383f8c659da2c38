//! Drift: settings of the transfer's AWS resources that the spec does not show (a queue's visibility timeout,
//! an alarm's threshold, a scaling step, the dashboard, the role's policy, the drain hook, the table's time to
//! live, the launch templates' content), found changed by hand. [`super::observe`] reads them in the calls it
//! makes anyway (plus one for the table's time to live) and reports each difference as a [`Drift`]; the
//! resource shows them in the plan (`drift`) and [`super::update`] puts the drifted components back.
//!
//! Settings the spec does show (capacity, schedule, redrive count, retention, image, …) need none of this:
//! they are read into the live spec and planned back like any attribute.

use std::collections::HashMap;
use std::fmt;

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

use super::infra::{Infra, Names};
use super::read::Component;

/// One setting found changed by hand: which component, and what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub component: Component,
    pub detail: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", component_name(self.component), self.detail)
    }
}

/// The snake_case name of a component (as in `missing_components`).
pub fn component_name(c: Component) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{c:?}"))
}

/// The components named by drift lines (as [`Drift`]'s `Display` writes them); lines it cannot read are skipped.
pub fn components_of<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Component> {
    let mut out: Vec<Component> = lines
        .into_iter()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(name, _)| serde_json::from_value(Value::String(name.trim().into())).ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn drift(component: Component, detail: impl Into<String>) -> Drift {
    Drift {
        component,
        detail: detail.into(),
    }
}

/// A queue attribute that must be `want`.
fn queue_attribute(
    out: &mut Vec<Drift>,
    component: Component,
    attrs: Option<&HashMap<QueueAttributeName, String>>,
    name: QueueAttributeName,
    want: &str,
) {
    let found = attrs.and_then(|a| a.get(&name)).map(String::as_str);
    if found.is_some_and(|f| f != want) {
        out.push(drift(
            component,
            format!(
                "{} is {} (the provider sets {want})",
                name.as_str(),
                found.unwrap_or("")
            ),
        ));
    }
}

/// The job queue's and the dead-letter queue's settings: visibility timeout, retention, the redrive target, and
/// (with S3 events) the policy letting the source bucket send.
pub fn queues(
    queue: Option<&HashMap<QueueAttributeName, String>>,
    dlq: Option<&HashMap<QueueAttributeName, String>>,
    infra: &Infra,
    expected_policy: Option<&str>,
) -> Vec<Drift> {
    let mut out = Vec::new();
    let q = Component::Queue;
    queue_attribute(
        &mut out,
        q,
        queue,
        QueueAttributeName::VisibilityTimeout,
        super::queues::VISIBILITY_SECS,
    );
    queue_attribute(
        &mut out,
        q,
        queue,
        QueueAttributeName::MessageRetentionPeriod,
        super::queues::RETENTION_SECS,
    );
    let target = queue
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        .and_then(|p| serde_json::from_str::<Value>(p).ok())
        .and_then(|v| v["deadLetterTargetArn"].as_str().map(str::to_owned));
    if queue.is_some() && target.as_deref() != Some(infra.dlq_arn.as_str()) {
        out.push(drift(
            q,
            format!(
                "RedrivePolicy sends dead letters to {} (the provider sets {})",
                target.as_deref().unwrap_or("nowhere"),
                infra.dlq_arn
            ),
        ));
    }
    if let (Some(want), Some(attrs)) = (expected_policy, queue) {
        let found = attrs
            .get(&QueueAttributeName::Policy)
            .and_then(|p| serde_json::from_str::<Value>(p).ok());
        if found != serde_json::from_str::<Value>(want).ok() {
            out.push(drift(
                q,
                "Policy differs from the one letting the source bucket send events",
            ));
        }
    }
    queue_attribute(
        &mut out,
        Component::DeadLetterQueue,
        dlq,
        QueueAttributeName::MessageRetentionPeriod,
        super::queues::RETENTION_SECS,
    );
    out
}

/// What the provider puts in an alarm, as checked on refresh.
pub struct AlarmWant<'a> {
    pub name: &'a str,
    pub threshold: f64,
    pub evaluation_periods: i32,
    pub comparison: &'a str,
    pub actions: Vec<String>,
}

/// The alarms' thresholds, evaluation periods, comparisons and actions.
pub fn alarms(found: &[aws_sdk_cloudwatch::types::MetricAlarm], want: &[AlarmWant]) -> Vec<Drift> {
    let mut out = Vec::new();
    for w in want {
        let Some(a) = found.iter().find(|a| a.alarm_name() == Some(w.name)) else {
            continue;
        };
        let mut diffs = Vec::new();
        if a.threshold() != Some(w.threshold) {
            diffs.push(format!(
                "threshold {} (the provider sets {})",
                a.threshold().unwrap_or_default(),
                w.threshold
            ));
        }
        if a.evaluation_periods() != Some(w.evaluation_periods) {
            diffs.push(format!(
                "evaluation periods {} (the provider sets {})",
                a.evaluation_periods().unwrap_or_default(),
                w.evaluation_periods
            ));
        }
        let comparison = a.comparison_operator().map(|c| c.as_str()).unwrap_or("");
        if comparison != w.comparison {
            diffs.push(format!(
                "comparison {comparison} (the provider sets {})",
                w.comparison
            ));
        }
        if a.alarm_actions() != w.actions.as_slice() {
            diffs.push(format!(
                "actions {:?} (the provider sets {:?})",
                a.alarm_actions(),
                w.actions
            ));
        }
        if !diffs.is_empty() {
            out.push(drift(
                Component::Alarms,
                format!("{}: {}", w.name, diffs.join(", ")),
            ));
        }
    }
    out
}

/// The scaling policies: the scale-out steps and the scale-in target (`fleet.min`).
pub fn scaling(
    found: &[aws_sdk_autoscaling::types::ScalingPolicy],
    n: &Names,
    min: u32,
) -> Vec<Drift> {
    let mut out = Vec::new();
    let base = super::fleet::SCALE_OUT_STEPS[0].0;
    let want: Vec<(f64, Option<f64>, i32)> = super::fleet::SCALE_OUT_STEPS
        .iter()
        .enumerate()
        .map(|(i, (at, add))| {
            (
                f64::from(at - base),
                super::fleet::SCALE_OUT_STEPS
                    .get(i + 1)
                    .map(|(next, _)| f64::from(next - base)),
                *add,
            )
        })
        .collect();
    if let Some(p) = found
        .iter()
        .find(|p| p.policy_name() == Some(n.scale_out_policy.as_str()))
    {
        let steps: Vec<(f64, Option<f64>, i32)> = p
            .step_adjustments()
            .iter()
            .map(|s| {
                (
                    s.metric_interval_lower_bound().unwrap_or_default(),
                    s.metric_interval_upper_bound(),
                    s.scaling_adjustment().unwrap_or_default(),
                )
            })
            .collect();
        if steps != want || p.adjustment_type() != Some("ChangeInCapacity") {
            out.push(drift(
                Component::ScalingPolicies,
                format!("{}: its steps differ from DTH's", n.scale_out_policy),
            ));
        }
    }
    if let Some(p) = found
        .iter()
        .find(|p| p.policy_name() == Some(n.scale_in_policy.as_str()))
    {
        if p.scaling_adjustment() != Some(min as i32)
            || p.adjustment_type() != Some("ExactCapacity")
        {
            out.push(drift(
                Component::ScalingPolicies,
                format!(
                    "{}: sets {} {} (the provider sets ExactCapacity {min}, fleet.min)",
                    n.scale_in_policy,
                    p.adjustment_type().unwrap_or(""),
                    p.scaling_adjustment().unwrap_or_default()
                ),
            ));
        }
    }
    out
}

/// Two JSON documents that mean the same (key order and spacing aside).
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The dashboard's body.
pub fn dashboard(found: Option<&str>, want: &str) -> Vec<Drift> {
    match found {
        Some(body) if !same_json(body, want) => vec![drift(
            Component::Dashboard,
            "its widgets differ from the provider's",
        )],
        _ => Vec::new(),
    }
}

/// IAM returns policy documents URL-encoded (RFC 3986).
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The role's inline policy document.
pub fn role_policy(found: Option<&str>, want: &str) -> Vec<Drift> {
    match found {
        Some(doc) if !same_json(&url_decode(doc), want) && !same_json(doc, want) => vec![drift(
            Component::RolePolicy,
            "the role's policy differs from the permissions the transfer needs",
        )],
        _ => Vec::new(),
    }
}

/// The drain hook's timeout and default result.
pub fn drain_hook(
    found: &[aws_sdk_autoscaling::types::LifecycleHook],
    n: &Names,
    timeout: i32,
) -> Vec<Drift> {
    let Some(h) = found
        .iter()
        .find(|h| h.lifecycle_hook_name() == Some(n.drain_hook.as_str()))
    else {
        return Vec::new();
    };
    if h.heartbeat_timeout() != Some(timeout) || h.default_result() != Some("CONTINUE") {
        vec![drift(
            Component::DrainHook,
            format!(
                "waits {} s then {} (the provider sets {timeout} s then CONTINUE)",
                h.heartbeat_timeout().unwrap_or_default(),
                h.default_result().unwrap_or("")
            ),
        )]
    } else {
        Vec::new()
    }
}

/// The finder's scheduled action starts one finder.
pub fn schedule(
    found: &[aws_sdk_autoscaling::types::ScheduledUpdateGroupAction],
    n: &Names,
) -> Vec<Drift> {
    match found
        .iter()
        .find(|a| a.scheduled_action_name() == Some(n.schedule_action.as_str()))
    {
        Some(a) if a.desired_capacity() != Some(1) => vec![drift(
            Component::FinderGroup,
            format!(
                "{} starts {} finders (the provider sets 1)",
                n.schedule_action,
                a.desired_capacity().unwrap_or_default()
            ),
        )],
        _ => Vec::new(),
    }
}

/// The ledger's time to live on [`dth_core::ledger::EXPIRES_AT`].
pub fn time_to_live(found: Option<&aws_sdk_dynamodb::types::TimeToLiveDescription>) -> Vec<Drift> {
    use aws_sdk_dynamodb::types::TimeToLiveStatus;
    let Some(t) = found else {
        return Vec::new();
    };
    let on = matches!(
        t.time_to_live_status(),
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    );
    if on && t.attribute_name() == Some(dth_core::ledger::EXPIRES_AT) {
        return Vec::new();
    }
    vec![drift(
        Component::Table,
        format!(
            "time to live is {} (the provider expires rows on {})",
            if on {
                format!("on {}", t.attribute_name().unwrap_or(""))
            } else {
                "off".to_owned()
            },
            dth_core::ledger::EXPIRES_AT
        ),
    )]
}

/// A launch template version's content beyond what the spec shows: IMDSv2, the instance profile, the user data.
pub fn launch_template(
    component: Component,
    found: &aws_sdk_ec2::types::ResponseLaunchTemplateData,
    want: &aws_sdk_ec2::types::RequestLaunchTemplateData,
) -> Vec<Drift> {
    let mut diffs = Vec::new();
    let tokens = found
        .metadata_options()
        .and_then(|m| m.http_tokens())
        .map(|t| t.as_str())
        .unwrap_or("");
    if tokens != "required" {
        diffs.push("instance metadata does not require IMDSv2 tokens".to_owned());
    }
    let profile = found.iam_instance_profile().and_then(|p| p.arn());
    let want_profile = want.iam_instance_profile().and_then(|p| p.arn());
    if profile != want_profile {
        diffs.push(format!(
            "instance profile {} (the provider sets {})",
            profile.unwrap_or("none"),
            want_profile.unwrap_or("none")
        ));
    }
    if found.user_data() != want.user_data() {
        diffs.push("user data differs from what the provider writes".to_owned());
    }
    if diffs.is_empty() {
        Vec::new()
    } else {
        vec![drift(component, diffs.join(", "))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_their_components() {
        let d = drift(Component::ScalingPolicies, "x: y");
        assert_eq!(d.to_string(), "scaling_policies: x: y");
        assert_eq!(
            components_of(["scaling_policies: x: y", "queue: a", "nonsense", "queue: b"]),
            [Component::Queue, Component::ScalingPolicies]
        );
    }

    #[test]
    fn policy_documents_compare_decoded() {
        let want = r#"{"Version":"2012-10-17","Statement":[]}"#;
        assert!(role_policy(
            Some("%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D"),
            want
        )
        .is_empty());
        assert!(role_policy(Some(want), want).is_empty());
        assert_eq!(
            role_policy(Some(r#"{"Version":"2012-10-17","Statement":[{}]}"#), want).len(),
            1
        );
        assert!(dashboard(Some(r#"{ "widgets": [] }"#), r#"{"widgets":[]}"#).is_empty());
    }

    #[test]
    fn queue_settings_compare_with_the_provider_s() {
        let infra = Infra {
            dlq_arn: "arn:aws:sqs:us-east-1:1:dth-x-dlq".into(),
            ..Infra::default()
        };
        let mut q = HashMap::new();
        q.insert(QueueAttributeName::VisibilityTimeout, "900".to_owned());
        q.insert(
            QueueAttributeName::MessageRetentionPeriod,
            "1209600".to_owned(),
        );
        q.insert(
            QueueAttributeName::RedrivePolicy,
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:dth-x-dlq","maxReceiveCount":5}"#
                .to_owned(),
        );
        assert!(queues(Some(&q), Some(&HashMap::new()), &infra, None).is_empty());
        q.insert(QueueAttributeName::VisibilityTimeout, "60".to_owned());
        let d = queues(Some(&q), None, &infra, None);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].to_string(),
            "queue: VisibilityTimeout is 60 (the provider sets 900)"
        );
    }
}

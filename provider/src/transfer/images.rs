//! [`Images`]: what a `dth_ecr_transfer` moves — container images from ECR or any registry into ECR — as the
//! payload of a [`TransferSpec`]. Its source and destination are core's own ([`ImageSource`],
//! [`ImageDestination`]); the finder's options are core's [`ImageFinderOptions`]; everything else (queues, ledger,
//! role, fleet, schedule, alarms) is provisioned exactly as for objects.
//!
//! # What the instances call in ECR, and the IAM action each call needs
//!
//! | Who | Call | IAM action | Resource |
//! |---|---|---|---|
//! | finder, worker | GetAuthorizationToken (a registry login for the source of type `ecr` and for the destination) | `ecr:GetAuthorizationToken` | `*` (no resource-level permissions) |
//! | finder | DescribeRepositories (`all`), ListImages (an `ecr` source: repositories, tags, digests: `aws::ecr_repositories`, `aws::ecr_images`) | the same names | source repositories |
//! | worker | manifest GET/HEAD, blob GET through the registry API | `ecr:BatchGetImage`, `ecr:GetDownloadUrlForLayer`, `ecr:BatchCheckLayerAvailability` | source repositories |
//! | finder | DescribeRepositories, CreateRepository (a missing destination repository: `aws::ensure_ecr_repository`) | the same names | destination repositories |
//! | finder, worker | manifest HEAD at the destination (digest comparison) | `ecr:BatchGetImage` | destination repositories |
//! | worker | blob HEAD, upload, cross-repository mount; manifest PUT | `ecr:BatchCheckLayerAvailability`, `ecr:InitiateLayerUpload`, `ecr:UploadLayerPart`, `ecr:CompleteLayerUpload`, `ecr:GetDownloadUrlForLayer` (the mount's source), `ecr:PutImage` | destination repositories |
//!
//! A side read or written with keys from a secret gets no ECR statement (the role never touches it); a
//! `registry` source needs no AWS permission at all.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use dth_core::config::TransferConfig;
use dth_core::image_config::{
    ImageDestination, ImageFinderOptions, ImageJobConfig, ImageSelection, ImageSource,
    ImageSourceType, ImagesMarker,
};

use super::infra::Infra;
use super::policy::{allow, credentials_statement, Account};
use super::spec::{control_plane, Payload, TransferSpec};
use crate::aws::ProviderConfig;

/// The default schedule of an image transfer: daily at midnight UTC, as DTH's ECR plugin re-checks its images
/// every day (an image transfer only copies what changed, so a daily run of an unchanged set costs a listing).
pub const DAILY: &str = "0 0 * * *";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    pub source: ImageSource,
    pub destination: ImageDestination,
}

impl TransferSpec<Images> {
    /// A spec with every default: the images `selection` (`repo:tag`, `repo:ALL_TAGS`) of a `registry` source,
    /// copied into ECR by workers from `image`.
    pub fn images(name: &str, registry: &str, selection: &[&str], image: &str) -> Self {
        let mut spec = Images::default_spec(name, image);
        spec.source.kind = ImageSourceType::Registry;
        spec.source.registry = Some(registry.into());
        spec.source.images = selection.iter().map(|s| (*s).to_owned()).collect();
        spec
    }

    /// The job config the instances run: the spec's settings as they are, and what the provider owns.
    pub fn image_job_config(&self, infra: &Infra, cfg: &ProviderConfig) -> ImageJobConfig {
        let (queue, ledger, aws) = control_plane(infra, cfg);
        ImageJobConfig {
            transfer: ImagesMarker::Images,
            source: self.source.clone(),
            destination: self.destination.clone(),
            finder: self.finder.options.clone(),
            worker: self.worker.clone(),
            max_attempts: self.max_attempts,
            queue,
            ledger,
            aws,
            metrics: Some(super::spec::metrics_of(&self.name)),
        }
    }
}

/// The ECR repositories an image transfer reads (`ecr` source) or writes, as a repository ARN's last part:
/// each selected repository, or every one (`*`) for `all`; at the destination under the prefix.
fn repositories(source: &ImageSource, prefix: &str) -> Vec<String> {
    if source.all {
        return vec![dth_core::config::join_prefix(prefix, "*")];
    }
    let mut out: Vec<String> = source
        .images
        .iter()
        .filter_map(|text| ImageSelection::parse(text).ok())
        .map(|s| dth_core::config::join_prefix(prefix, s.repository()))
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Payload for Images {
    type FinderOptions = ImageFinderOptions;
    const RESOURCE: &'static str = "dth_ecr_transfer";
    const UNIT: &'static str = "images";

    fn job_config(
        spec: &TransferSpec<Self>,
        infra: &Infra,
        cfg: &ProviderConfig,
    ) -> TransferConfig {
        spec.image_job_config(infra, cfg).into()
    }

    fn apply_job_config(
        spec: &mut TransferSpec<Self>,
        jc: &TransferConfig,
        _cfg: &ProviderConfig,
    ) -> bool {
        let TransferConfig::Images(jc) = jc else {
            return false;
        };
        // Destructured so that a field core adds cannot be forgotten here.
        let ImageJobConfig {
            transfer: _,
            source,
            destination,
            finder,
            worker,
            max_attempts,
            queue: _,
            ledger: _,
            aws: _,
            metrics: _,
        } = jc;
        spec.source = source.clone();
        spec.destination = destination.clone();
        let before = std::mem::replace(&mut spec.finder.options, finder.clone());
        spec.finder.dry_run_keys = before.dry_run_keys;
        spec.apply_shared(worker, *max_attempts);
        true
    }

    fn default_spec(name: &str, image: &str) -> TransferSpec<Self> {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "source": {},
            "destination": {},
            "schedule": DAILY,
            "fleet": {"image": image},
        }))
        .expect("a spec of defaults decodes")
    }

    fn validate(_spec: &TransferSpec<Self>, _bad: &mut dyn FnMut(&str, String)) {
        // Everything an image transfer's settings can get wrong, the engine's own checks find
        // (`ImageJobConfig::validate`, run by `TransferSpec::validate`).
    }

    /// Where images come from and go (the registries, regions and accounts): another transfer.
    fn requires_replace(old: &Self, new: &Self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if old.source.kind != new.source.kind {
            out.push("source.type");
        }
        if old.source.region != new.source.region {
            out.push("source.region");
        }
        if old.source.account_id != new.source.account_id {
            out.push("source.account_id");
        }
        if old.destination.region != new.destination.region {
            out.push("destination.region");
        }
        if old.destination.account_id != new.destination.account_id {
            out.push("destination.account_id");
        }
        out
    }

    fn data_statements(spec: &TransferSpec<Self>, at: &Account) -> Vec<Value> {
        let (s, d) = (&spec.source, &spec.destination);
        let repository_arns =
            |region: &Option<String>, account: &Option<String>, repos: Vec<String>| {
                let region = region.as_deref().unwrap_or(at.region);
                let p = crate::aws::partition_of(region);
                let account = account.as_deref().unwrap_or(at.account);
                repos
                    .into_iter()
                    .map(|r| format!("arn:{p}:ecr:{region}:{account}:repository/{r}"))
                    .collect::<Vec<String>>()
            };
        let mut statements = Vec::new();
        let reads_ecr = s.kind == ImageSourceType::Ecr && s.credentials_secret_arn.is_none();
        let writes_ecr = d.credentials_secret_arn.is_none();
        if reads_ecr || writes_ecr {
            // GetAuthorizationToken has no resource-level permissions: "*" is the only resource it takes.
            statements.push(allow("RegistryLogin", &["ecr:GetAuthorizationToken"], "*"));
        }
        if reads_ecr {
            statements.push(allow(
                "ReadSourceImages",
                &[
                    "ecr:DescribeRepositories",
                    "ecr:ListImages",
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchCheckLayerAvailability",
                ],
                serde_json::json!(repository_arns(
                    &s.region,
                    &s.account_id,
                    repositories(s, "")
                )),
            ));
        }
        if writes_ecr {
            statements.push(allow(
                "WriteDestinationImages",
                &[
                    "ecr:DescribeRepositories",
                    "ecr:CreateRepository",
                    "ecr:BatchGetImage",
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:InitiateLayerUpload",
                    "ecr:UploadLayerPart",
                    "ecr:CompleteLayerUpload",
                    "ecr:PutImage",
                ],
                serde_json::json!(repository_arns(
                    &d.region,
                    &d.account_id,
                    repositories(s, &d.prefix)
                )),
            ));
        }
        statements.extend(credentials_statement([
            &s.credentials_secret_arn,
            &d.credentials_secret_arn,
        ]));
        statements
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TransferSpec<Images> {
        TransferSpec::images(
            "mirror",
            "registry.example.com",
            &["app:1.0", "team/base:ALL_TAGS"],
            "img:1",
        )
    }

    #[test]
    fn defaults_are_a_daily_copy_of_every_platform() {
        let s = spec();
        assert_eq!(s.schedule, DAILY);
        assert!(s.source.include_untagged);
        assert!(s.source.platforms.is_empty());
        assert_eq!(s.finder.instance_type, "t4g.micro");
        assert!(s.validate().is_empty(), "{:?}", s.validate());
    }

    #[test]
    fn the_job_config_round_trips_through_the_spec() {
        let mut s = spec();
        s.destination.prefix = "mirror".into();
        s.source.platforms = vec!["linux/arm64".into()];
        s.finder.parallelism = 7;
        s.worker.part_concurrency = 2;
        s.max_attempts = 9;
        let infra = Infra {
            region: "eu-west-1".into(),
            queue_url: "http://127.0.0.1:1/123456789012/dth-mirror-jobs".into(),
            table: "dth-mirror-ledger".into(),
            ..Infra::default()
        };
        let cfg = ProviderConfig::default();
        let jc = s.transfer_config(&infra, &cfg);
        jc.validate().unwrap();
        let mut back = Images::default_spec("mirror", "img:1");
        assert!(back.apply_transfer_config(&jc, &cfg));
        back.schedule = s.schedule.clone();
        assert_eq!(back, s);
        // An object transfer's config is not an image transfer's.
        let objects = TransferSpec::new("x", "a-b", "c-d", "img:1").transfer_config(&infra, &cfg);
        assert!(!back.apply_transfer_config(&objects, &cfg));
    }

    #[test]
    fn invalid_settings_name_their_attribute() {
        type Change = fn(&mut TransferSpec<Images>);
        let cases: Vec<(Change, &str)> = vec![
            (
                |s| s.source.images = vec!["Bad:1".into()],
                "source.images[0]",
            ),
            (|s| s.source.images.clear(), "source.images"),
            (|s| s.source.all = true, "source.images"),
            (|s| s.source.registry = None, "source.registry"),
            (
                |s| s.source.platforms = vec!["arm64".into()],
                "source.platforms[0]",
            ),
            (
                |s| s.source.region = Some("eu-west-1".into()),
                "source.region",
            ),
            (
                |s| s.destination.prefix = "Upper".into(),
                "destination.prefix",
            ),
            (
                |s| s.destination.account_id = Some("1".into()),
                "destination.account_id",
            ),
            (|s| s.finder.parallelism = 0, "finder.parallelism"),
            (|s| s.worker.concurrency = 0, "fleet.worker_concurrency"),
            (|s| s.max_attempts = 0, "max_attempts"),
            (|s| s.schedule = "sometimes".into(), "schedule"),
            (|s| s.fleet.max = 0, "fleet.max"),
            (|s| s.name = "Bad_Name".into(), "name"),
            (|s| s.alarm_email = Some("nobody".into()), "alarm_email"),
            (
                |s| s.fleet.instance_type = "big".into(),
                "fleet.instance_type",
            ),
        ];
        for (change, attribute) in cases {
            let mut s = spec();
            change(&mut s);
            let problems = s.validate();
            assert!(
                problems.iter().any(|(p, _)| p == attribute),
                "{attribute}: {problems:?}"
            );
        }
    }

    #[test]
    fn the_role_reads_and_writes_only_the_named_repositories() {
        let mut s = spec();
        s.source.kind = ImageSourceType::Ecr;
        s.source.registry = None;
        s.source.account_id = Some("210987654321".into());
        s.source.region = Some("us-west-2".into());
        s.destination.prefix = "mirror".into();
        let at = Account {
            partition: "aws",
            region: "eu-west-1",
            account: "123456789012",
        };
        let st = Images::data_statements(&s, &at);
        let by_sid = |sid: &str| st.iter().find(|x| x["Sid"] == sid).cloned().unwrap();
        assert_eq!(by_sid("RegistryLogin")["Resource"], "*");
        assert_eq!(
            by_sid("ReadSourceImages")["Resource"],
            serde_json::json!([
                "arn:aws:ecr:us-west-2:210987654321:repository/app",
                "arn:aws:ecr:us-west-2:210987654321:repository/team/base"
            ])
        );
        assert_eq!(
            by_sid("WriteDestinationImages")["Resource"],
            serde_json::json!([
                "arn:aws:ecr:eu-west-1:123456789012:repository/mirror/app",
                "arn:aws:ecr:eu-west-1:123456789012:repository/mirror/team/base"
            ])
        );
        // A registry source read anonymously and a destination written with a secret's keys: no ECR grant.
        let mut t = spec();
        t.destination.credentials_secret_arn =
            Some("arn:aws:secretsmanager:eu-west-1:123456789012:secret:dst".into());
        let st = Images::data_statements(&t, &at);
        assert_eq!(st.len(), 1, "{st:?}");
        assert_eq!(st[0]["Sid"], "Credentials");
        // Every repository when all are copied.
        let mut u = spec();
        u.source.images.clear();
        u.source.all = true;
        let st = Images::data_statements(&u, &at);
        assert_eq!(
            st.iter()
                .find(|x| x["Sid"] == "WriteDestinationImages")
                .unwrap()["Resource"],
            serde_json::json!(["arn:aws:ecr:eu-west-1:123456789012:repository/*"])
        );
    }
}

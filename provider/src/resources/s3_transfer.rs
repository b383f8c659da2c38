//! `dth_s3_transfer`: one Data Transfer Hub S3 transfer — its queue, ledger, role, fleet, schedule, alarms and
//! dashboard — with its progress read back into state. Its schema's S3 blocks (source, destination, filters,
//! finder, multipart, batch) and its cost estimate; everything else is [`super::transfer`]'s, shared with
//! `dth_ecr_transfer`.

use super::transfer::{setting, transfer_schema, Kind, Texts, TransferResource};
use crate::tfplugin::{Attribute, Block, NestedBlock, Schema};
use crate::transfer::{cost, Objects, TransferSpec};

pub const TYPE_NAME: &str = "dth_s3_transfer";

/// The `dth_s3_transfer` kind.
pub struct S3Transfer;

/// The resource the provider serves.
pub fn resource() -> TransferResource<S3Transfer> {
    TransferResource::new()
}

pub use super::transfer::{parse_duration, TIMEOUTS};

impl Kind for S3Transfer {
    type P = Objects;
    const OPTIONAL_BLOCKS: &'static [&'static str] =
        &["filters", "finder", "fleet", "multipart", "batch", "worker"];
    const UNWRITTEN_EMPTY: &'static [(&'static str, &'static str)] = &[
        ("filters", "include"),
        ("filters", "exclude"),
        ("fleet", "subnet_ids"),
        ("fleet", "security_group_ids"),
    ];
    const NOT_SETTABLE: &'static [&'static str] = &crate::transfer::spec::NOT_SETTABLE;

    fn schema() -> Schema {
        schema()
    }

    fn cost(spec: &TransferSpec, default_region: &str, objects: u64, bytes: u64) -> Option<String> {
        let from = spec.source.region.as_deref().unwrap_or(default_region);
        let to = spec.destination.region.as_deref().unwrap_or(default_region);
        let estimate = cost::estimate(from, spec.source.kind, to, objects, bytes);
        Some(estimate.describe(objects, bytes, from, to))
    }
}

/// The resource's schema (what the provider serves, and what the docs are generated from). Every optional
/// attribute of the spec is a [`setting`]: its type and default are the spec's (core's, for a job setting).
pub fn schema() -> Schema {
    let d = &super::transfer::defaults::<S3Transfer>();
    let source = Block::new()
        .description("Where objects come from.")
        .attribute(
            setting(d, "source.type", "Kind of store: `Amazon_S3`, `Aliyun_OSS`, `Tencent_COS`, `Qiniu_Kodo` or `S3_Compatible` (needs `endpoint`).")
                .one_of(&["Amazon_S3", "Aliyun_OSS", "Tencent_COS", "Qiniu_Kodo", "S3_Compatible"])
                .requires_replace(),
        )
        .attribute(Attribute::string("bucket").required().requires_replace().description("Source bucket."))
        .attribute(setting(d, "source.prefix", "Only keys under this prefix."))
        .attribute(setting(d, "source.region", "Region of the source bucket. Default: the provider's region.").requires_replace())
        .attribute(setting(d, "source.endpoint", "Endpoint URL. Default: derived from `type` and `region` (Amazon S3's own, or the provider's `endpoints.s3`, for `Amazon_S3`). Addressing is path-style for `S3_Compatible`, and for `Amazon_S3` when the provider sets `s3_use_path_style`."))
        .attribute(setting(d, "source.credentials_secret_arn", "Secrets Manager secret holding `{\"access_key_id\",\"secret_access_key\"}` for the source; re-read on 403. Default: the instance role (same account) — only the ARN is stored, never the secret."))
        .attribute(setting(d, "source.anonymous", "Send unsigned requests: a public bucket, read without credentials. Not with `credentials_secret_arn`."))
        .attribute(setting(d, "source.requester_pays", "Send `x-amz-request-payer: requester`."))
        .attribute(setting(d, "source.kms_key_id", "KMS key the source objects are encrypted with (SSE-KMS): key ARN, key id or alias (`alias/name`). The instance role gets `kms:Decrypt` on it; for an alias, on the keys that carry it. Only for an `Amazon_S3` source read with the instance role."))
        .attribute(
            setting(d, "source.events", "S3 event notifications from the source bucket to the job queue: `none`, `create` (copy new objects as they arrive) or `create_and_delete` (also delete at the destination).")
                .one_of(&["none", "create", "create_and_delete"])
                .requires_replace(),
        )
        .block(
            NestedBlock::single(
                "prefix_list",
                Block::new()
                    .description("A file listing the prefixes to transfer, one per line.")
                    .attribute(Attribute::string("bucket").required().description("Bucket of the list, read with the instance role (whatever credentials the source uses)."))
                    .attribute(Attribute::string("key").required().description("Key of the list.")),
            ).description("Transfer only the prefixes listed in an object."),
        );
    let destination = Block::new()
        .description("Where objects go (Amazon S3).")
        .attribute(Attribute::string("bucket").required().requires_replace().description("Destination bucket."))
        .attribute(setting(d, "destination.prefix", "Prepended to every key."))
        .attribute(setting(d, "destination.region", "Region of the destination bucket. Default: the provider's region.").requires_replace())
        .attribute(setting(d, "destination.endpoint", "Endpoint URL. Default: Amazon S3's (or the provider's `endpoints.s3`). Addressing is path-style when the provider sets `s3_use_path_style`."))
        .attribute(setting(d, "destination.credentials_secret_arn", "Secrets Manager secret with credentials for the destination (another account). Default: the instance role."))
        .attribute(setting(d, "destination.storage_class", "Storage class of the copies."))
        .attribute(setting(d, "destination.acl", "Canned ACL of the copies; empty for none."))
        .attribute(setting(d, "destination.sse", "Server-side encryption: `none`, `AES256` or `aws:kms`.").one_of(&["none", "AES256", "aws:kms"]))
        .attribute(setting(d, "destination.kms_key_id", "KMS key for `sse = \"aws:kms\"`."));
    let filters = Block::new()
        .description("Key globs (`*` within one path segment, `**` across them).")
        .attribute(setting(
            d,
            "filters.include",
            "Copy only keys matching one of these. Empty: every key.",
        ))
        .attribute(setting(
            d,
            "filters.exclude",
            "Never copy keys matching one of these.",
        ));
    let finder = Block::new()
        .description("The finder: lists both sides and enqueues what must move.")
        .attribute(setting(d, "finder.depth", "Levels of common prefixes listed in parallel (objects above that depth are never lost); 0 lists each prefix flat."))
        .attribute(setting(d, "finder.parallelism", "Prefixes listed at once."))
        .attribute(setting(d, "finder.instance_type", "Instance type of the finder."));
    let multipart = Block::new()
        .description("How large objects are copied.")
        .attribute(setting(d, "multipart.threshold", "Objects this size or larger (bytes) are copied in parts."))
        .attribute(setting(d, "multipart.chunk_size", "Part size in bytes (raised when an object would need more than 10,000 parts)."))
        .attribute(setting(d, "multipart.giant_threshold", "Objects this size or larger (bytes) are split into per-part jobs across the whole fleet."));
    let batch = Block::new()
        .description("How the finder packs objects into jobs.")
        .attribute(setting(
            d,
            "batch.max_objects",
            "Most objects in one job (1 to 1000).",
        ))
        .attribute(setting(d, "batch.max_bytes", "Most bytes in one job."));
    transfer_schema::<S3Transfer>(
        &Texts {
            resource: "A Data Transfer Hub S3 transfer: the job queue and dead-letter queue, the DynamoDB ledger, a CloudWatch Logs group, an IAM role, launch templates and Auto Scaling groups running the `finder` and `worker`, the finder's schedule, alarms and a dashboard — with the transfer's progress read back on every refresh.",
            worker_concurrency: "Objects (or parts) each worker copies at once; its memory holds `worker_concurrency × multipart.chunk_size` bytes of data. The job config's `worker.concurrency`.",
            part_concurrency: "Parts of one multipart object copied at once.",
            bandwidth_limit: "Bytes per second each worker reads from the source, over all its copies; 0: unlimited.",
            requests_per_second: "S3 requests per second each worker sends, source and destination together; 0: unlimited.",
            schedule: "When the finder runs: a 5-field cron expression (UTC) or `once` (right after creation).",
        },
        vec![
            setting(d, "compare", "How an object already at the destination counts as up to date: `size`, `size-etag` or `checksum`.").one_of(&["size", "size-etag", "checksum"]),
            setting(d, "skip_compare", "Copy every listed object without looking at the destination."),
            setting(d, "include_metadata", "Copy system headers, user metadata and tags."),
        ],
        vec![
            NestedBlock::single("source", source)
                .min_items(1)
                .max_items(1)
                .description("Where objects come from."),
            NestedBlock::single("destination", destination)
                .min_items(1)
                .max_items(1)
                .description("Where objects go."),
            NestedBlock::single("filters", filters).description("Which keys move."),
            NestedBlock::single("finder", finder).description("The finder's settings."),
            NestedBlock::single("multipart", multipart).description("Multipart settings."),
            NestedBlock::single("batch", batch).description("How objects are packed into jobs."),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::super::config_json;
    use super::super::transfer::{format_duration, timeouts_of, Timeouts};
    use super::*;
    use crate::provider::Client;
    use crate::tfplugin::{AttrPath, Ctx, Diagnostic, Diagnostics, Resource, Value};
    use crate::transfer::{self, Infra, Progress};
    use std::time::Duration;

    type S3Resource = TransferResource<S3Transfer>;
    #[allow(non_upper_case_globals)]
    const S3Transfer: S3Resource = TransferResource::new();

    fn spec_of(v: &Value) -> Result<TransferSpec, Diagnostics> {
        super::super::transfer::spec_of::<super::S3Transfer>(v)
    }

    fn state_of(
        spec: &TransferSpec,
        infra: &Infra,
        progress: &Progress,
        missing: &[String],
        shape: Option<&Value>,
    ) -> Result<Value, Diagnostics> {
        super::super::transfer::state_of::<super::S3Transfer>(spec, infra, progress, missing, shape)
    }

    fn schema_json(spec: &TransferSpec) -> Result<serde_json::Value, Diagnostics> {
        super::super::transfer::schema_json::<super::S3Transfer>(spec)
    }

    #[test]
    fn schema_defaults_equal_the_spec_defaults() {
        // A state built from a default spec reads back as the same spec, its optional blocks null.
        let spec = TransferSpec::new("t", "src", "dst", "img");
        let v = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
        assert_eq!(spec_of(&v).unwrap(), spec);
        assert!(v.get("finder").is_null(), "{v:?}");
        assert_eq!(v.get("fleet").get("max").as_u64(), Some(20));
        assert_eq!(v.get("source").get("type").as_str(), Some("Amazon_S3"));

        // Every default the schema plans is the default spec's, at every depth.
        let spec = TransferSpec::new("t", "src", "dst", transfer::spec::DEFAULT_IMAGE);
        let j = schema_json(&spec).unwrap();
        fn check(block: &Block, at: &str, j: &serde_json::Value, seen: &mut usize) {
            for a in &block.attributes {
                if let Some(default) = &a.default {
                    let path = format!("{at}/{}", a.name);
                    let have = j.pointer(&path).cloned().unwrap_or_default();
                    assert_eq!(&Value::from_json(&have, &a.ty).unwrap(), default, "{path}");
                    *seen += 1;
                }
            }
            for b in &block.blocks {
                check(&b.block, &format!("{at}/{}", b.name), j, seen);
            }
        }
        let mut seen = 0;
        check(&schema().block, "", &j, &mut seen);
        assert!(seen >= 36, "{seen} defaults");
    }

    /// A configuration of the default transfer with `timeouts` as given (JSON; null for no block).
    fn config_with_timeouts(timeouts: serde_json::Value) -> Value {
        let mut j = serde_json::to_value(TransferSpec::new("t", "src", "dst", "img")).unwrap();
        j["timeouts"] = timeouts;
        Value::from_json(&j, &schema().value_type()).unwrap()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn durations_parse_as_terraform_providers_write_them() {
        for (text, seconds) in [
            ("30m", 1800.0),
            ("1h", 3600.0),
            ("90s", 90.0),
            ("1h30m", 5400.0),
            ("1.5h", 5400.0),
            ("2h45m30s", 9930.0),
            ("500ms", 0.5),
            (".5h", 1800.0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs_f64(seconds)),
                "{text}"
            );
        }
        for (text, complaint) in [
            ("", "must not be empty"),
            ("30", "without a unit"),
            ("30x", "unknown unit \"x\""),
            ("1h 30m", "unknown unit \"h \""),
            ("-5m", "is not a duration"),
            ("m", "is not a duration"),
            ("1..5h", "is not a duration"),
            ("0s", "longer than zero"),
            ("0h0m", "longer than zero"),
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(complaint), "{text}: {err}");
        }
        for (seconds, text) in [
            (1800.0, "30m"),
            (5400.0, "1h30m"),
            (90.0, "1m30s"),
            (3600.0, "1h"),
            (0.5, "500ms"),
        ] {
            assert_eq!(format_duration(Duration::from_secs_f64(seconds)), text);
        }
    }

    #[test]
    fn a_bad_timeout_is_reported_under_its_attribute() {
        let config = config_with_timeouts(serde_json::json!({"create": "soon", "delete": "1h"}));
        let mut diags = Diagnostics::new();
        S3Transfer.validate(&config, &mut diags);
        let found: Vec<&Diagnostic> = diags.iter().collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].is_error());
        assert_eq!(
            found[0].path,
            Some(AttrPath::root("timeouts").attr("create"))
        );
        assert!(
            found[0]
                .detail
                .starts_with("timeouts.create: \"soon\" is not a duration"),
            "{}",
            found[0].detail
        );

        // Checked while the rest of the configuration is still unknown; an unknown timeout waits.
        let mut partly_unknown = config_with_timeouts(serde_json::json!({"update": "5 minutes"}));
        partly_unknown.set("schedule", Value::Unknown);
        let mut diags = Diagnostics::new();
        S3Transfer.validate(&partly_unknown, &mut diags);
        let paths: Vec<_> = diags.iter().map(|d| d.path.clone()).collect();
        assert_eq!(paths, [Some(AttrPath::root("timeouts").attr("update"))]);

        let mut unknown = config_with_timeouts(serde_json::Value::Null);
        unknown.set(
            "timeouts",
            Value::object([("create", Value::Unknown), ("delete", Value::string("1h"))]),
        );
        let mut diags = Diagnostics::new();
        S3Transfer.validate(&unknown, &mut diags);
        assert!(diags.is_empty(), "{diags:?}");
    }

    #[test]
    fn timeouts_stay_out_of_the_spec_and_state_keeps_them_as_written() {
        let spec = TransferSpec::new("t", "src", "dst", "img");
        let config = config_with_timeouts(serde_json::json!({"create": "45m"}));
        assert_eq!(
            timeouts_of(&config).unwrap(),
            Timeouts {
                create: 45 * MINUTE,
                update: 30 * MINUTE,
                delete: 30 * MINUTE,
            }
        );
        // The spec never sees them: changing them alone changes no transfer.
        assert_eq!(spec_of(&config).unwrap(), spec);
        let state = state_of(
            &spec,
            &Infra::default(),
            &Progress::default(),
            &[],
            Some(&config),
        )
        .unwrap();
        assert_eq!(state.get("timeouts"), config.get("timeouts"));
        assert!(state.get("timeouts").get("update").is_null());

        // Absent stays absent; import leaves them null, which means the defaults.
        let without = config_with_timeouts(serde_json::Value::Null);
        let state = state_of(
            &spec,
            &Infra::default(),
            &Progress::default(),
            &[],
            Some(&without),
        )
        .unwrap();
        assert!(state.get("timeouts").is_null());
        let imported = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
        assert!(imported.get("timeouts").is_null());
        assert_eq!(timeouts_of(&imported).unwrap().delete, 30 * MINUTE);
    }

    /// Clients whose every endpoint accepts connections and never answers: each AWS call hangs.
    async fn silent_aws() -> (Ctx<Client>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let e = || Some(url.clone());
        let config = crate::aws::ProviderConfig {
            region: Some("us-east-1".into()),
            access_key: Some("AKIDEXAMPLE".into()),
            secret_key: Some("secret".into()),
            endpoints: crate::aws::ServiceEndpoints {
                s3: e(),
                sqs: e(),
                dynamodb: e(),
                autoscaling: e(),
                ec2: e(),
                iam: e(),
                secretsmanager: e(),
                cloudwatch: e(),
                sns: e(),
                sts: e(),
                logs: e(),
                ecr: e(),
            },
            ..Default::default()
        };
        let aws = crate::aws::AwsClients::new(&config).await.unwrap();
        let ctx = Ctx {
            client: std::sync::Arc::new(Client { aws, config }),
            cancel: tokio_util::sync::CancellationToken::new(),
        };
        (ctx, server)
    }

    #[tokio::test]
    async fn create_and_delete_stop_at_their_timeouts() {
        let (ctx, server) = silent_aws().await;
        let planned = config_with_timeouts(serde_json::json!({"create": "300ms"}));
        let started = std::time::Instant::now();
        let err = S3Transfer
            .create(&ctx, &planned)
            .await
            .expect_err("timed out");
        assert!(started.elapsed() < Duration::from_secs(20));
        let d = err.iter().next().unwrap();
        assert_eq!(d.summary, "Creating dth_s3_transfer timed out");
        assert!(
            d.detail.starts_with("creating transfer t timed out after 300ms (timeouts.create). What was made has been deleted again."),
            "{}",
            d.detail
        );

        // A transfer whose worker group exists: deleting it waits on Auto Scaling, which never answers.
        let spec = TransferSpec::new("t", "src", "dst", "img");
        let infra = Infra {
            worker_asg: "dth-t-worker".into(),
            ..Infra::default()
        };
        let mut prior = state_of(&spec, &infra, &Progress::default(), &[], None).unwrap();
        prior.set("timeouts", Value::object([("delete", Value::string("1s"))]));
        let err = S3Transfer
            .delete(&ctx, &prior)
            .await
            .expect_err("timed out");
        let d = err.iter().next().unwrap();
        assert_eq!(d.summary, "Deleting dth_s3_transfer timed out");
        assert!(
            d.detail.contains("timed out after 1s (timeouts.delete)"),
            "{}",
            d.detail
        );
        server.abort();
    }

    /// Whether the schema has an attribute or a nested block at a dotted path.
    fn in_schema(path: &str) -> bool {
        let mut block = &schema().block;
        let mut names = path.split('.').peekable();
        while let Some(name) = names.next() {
            let last = names.peek().is_none();
            if last && block.attributes.iter().any(|a| a.name == name) {
                return true;
            }
            match block.blocks.iter().find(|b| b.name == name) {
                Some(nested) => block = &nested.block,
                None => return false,
            }
        }
        true
    }

    #[test]
    fn every_job_setting_has_an_attribute() {
        use crate::transfer::spec::{job_settings, spec_path, NOT_SETTABLE};
        let settings = job_settings();
        for path in &settings {
            let attribute = spec_path(path);
            assert!(
                in_schema(&attribute),
                "the job setting {path} has no attribute ({attribute})"
            );
        }
        assert!(settings.len() >= 40, "{settings:?}");
        for path in [
            "worker.ledger_retention_days",
            "source.anonymous",
            "batch.max_bytes",
            "events",
        ] {
            assert!(settings.iter().any(|s| s == path), "{path}");
        }
        for path in NOT_SETTABLE {
            assert!(
                !settings.iter().any(|s| s == path) && !in_schema(path),
                "{path} is derived, yet offered"
            );
        }
        // Where a setting is offered elsewhere, its own path is not offered too.
        assert!(!in_schema("worker.concurrency") && !in_schema("events"));
        assert!(!in_schema("queue") && !in_schema("ledger") && !in_schema("aws"));
    }

    #[test]
    fn enumerations_offer_cores_values() {
        use dth_core::config::{CompareMode, EventsMode, SourceType, Sse};
        fn check<T: serde::de::DeserializeOwned>(path: &str) {
            let attribute = schema()
                .attribute(&crate::resources::path_of(path))
                .cloned()
                .unwrap_or_else(|| panic!("{path}"));
            let allowed = attribute.one_of.clone().unwrap_or_default();
            for v in &allowed {
                serde_json::from_value::<T>(serde_json::json!(v))
                    .unwrap_or_else(|e| panic!("{path}: {v:?}: {e}"));
            }
            let default = attribute.default.as_ref().and_then(|d| d.as_str()).unwrap();
            assert!(allowed.iter().any(|a| a == default), "{path}");
        }
        check::<SourceType>("source.type");
        check::<EventsMode>("source.events");
        check::<Sse>("destination.sse");
        check::<CompareMode>("compare");
    }

    #[test]
    fn defaults_in_the_schema_are_cores() {
        let core = dth_core::config::WorkerOptions::default();
        let at = |path: &str| {
            schema()
                .attribute(&crate::resources::path_of(path))
                .and_then(|a| a.default.clone())
                .unwrap_or_else(|| panic!("{path} has no default"))
        };
        assert_eq!(
            at("fleet.worker_concurrency").as_u64(),
            Some(core.concurrency.into())
        );
        assert_eq!(
            at("worker.shutdown_grace_secs").as_u64(),
            Some(core.shutdown_grace_secs)
        );
        assert_eq!(at("multipart.chunk_size").as_u64(), Some(5 * 1024 * 1024));
        assert_eq!(at("batch.max_objects").as_u64(), Some(200));
        assert_eq!(
            at("destination.storage_class").as_str(),
            Some("INTELLIGENT_TIERING")
        );
        assert_eq!(at("include_metadata"), Value::Bool(true));
        assert_eq!(at("max_attempts").as_u64(), Some(5));
        assert_eq!(
            at("fleet.image").as_str(),
            Some(transfer::spec::DEFAULT_IMAGE)
        );
    }

    #[test]
    fn every_setting_survives_the_state() {
        for j in crate::transfer::spec::tests::every_setting() {
            let spec: TransferSpec = serde_json::from_value(j).unwrap();
            let v = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
            assert_eq!(spec_of(&v).unwrap(), spec);
            // As the configuration would carry it, and through a state shaped by it.
            let config = Value::from_json(&config_json(&v), &schema().value_type()).unwrap();
            assert_eq!(spec_of(&config).unwrap(), spec);
            let again = state_of(
                &spec,
                &Infra::default(),
                &Progress::default(),
                &[],
                Some(&v),
            )
            .unwrap();
            assert_eq!(again, v);
        }
        // The relocated concurrency, and the settings the resource does not offer, as the state shows them.
        let mut spec = TransferSpec::new("t", "src", "dst", "img");
        spec.worker.concurrency = 9;
        let v = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
        assert_eq!(v.get("fleet").get("worker_concurrency").as_u64(), Some(9));
        assert!(
            v.get("worker").is_null(),
            "at its defaults otherwise: {v:?}"
        );
        assert_eq!(spec_of(&v).unwrap(), spec);
    }

    #[test]
    fn changed_optional_blocks_show_up() {
        let mut spec = TransferSpec::new("t", "src", "dst", "img");
        spec.finder.depth = 2;
        spec.worker.bandwidth_limit = 1 << 20;
        let v = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
        assert_eq!(v.get("finder").get("depth").as_u64(), Some(2));
        assert!(v.get("finder").get("dry_run_keys").is_null(), "not offered");
        assert_eq!(
            v.get("worker").get("bandwidth_limit").as_u64(),
            Some(1 << 20)
        );
        assert!(
            v.get("worker").get("concurrency").is_null(),
            "offered as fleet.worker_concurrency"
        );
        assert!(v.get("batch").is_null());
    }
}

//! One in-process test per plugin-protocol RPC: requests are built and responses read the way
//! terraform does (msgpack DynamicValues), against a toy provider with an in-memory store and a
//! data source that looks things up in it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dth_provider::tfplugin::proto::tfplugin6 as pb;
use dth_provider::tfplugin::proto::tfplugin6::provider_server::Provider as _;
use dth_provider::tfplugin::value::{decode, encode};
use dth_provider::tfplugin::{
    Attribute, Block, Ctx, DataSource, Diagnostic, Diagnostics, NestedBlock, PlanChange, Provider,
    ProviderService, Resource, Schema, Type, Value,
};
use tonic::Request;

// ---------------------------------------------------------------------------------------------
// The toy provider

#[derive(Default)]
struct World {
    things: Mutex<BTreeMap<String, Value>>,
    next_id: AtomicUsize,
    lookups: AtomicUsize,
    configured_region: Mutex<Option<String>>,
}

impl World {
    fn things(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.things.lock().unwrap()
    }
}

struct Toy {
    world: Arc<World>,
}

#[async_trait]
impl Provider for Toy {
    type Client = Arc<World>;

    fn type_name(&self) -> &'static str {
        "toy"
    }

    fn schema(&self) -> Schema {
        Schema::new(
            0,
            Block::new().attribute(
                Attribute::string("region")
                    .optional()
                    .one_of(&["north", "south"])
                    .description("Where things live"),
            ),
        )
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        if config.get("region").as_str() == Some("south") {
            diags.warning("South is far", "");
        }
    }

    async fn configure(&self, config: &Value) -> Result<Arc<World>, Diagnostics> {
        *self.world.configured_region.lock().unwrap() =
            config.get("region").as_str().map(str::to_owned);
        Ok(Arc::clone(&self.world))
    }

    fn resources(&self) -> Vec<Box<dyn Resource<Arc<World>>>> {
        vec![Box::new(Thing)]
    }

    fn data_sources(&self) -> Vec<Box<dyn DataSource<Arc<World>>>> {
        vec![Box::new(Lookup)]
    }
}

struct Thing;

fn thing_schema() -> Schema {
    Schema::new(
        1,
        Block::new()
            .description("A thing.")
            .attribute(Attribute::string("id").computed())
            .attribute(
                Attribute::string("name")
                    .required()
                    .requires_replace()
                    .validator(|v| match v.as_str() {
                        Some(s) if s == s.to_lowercase() => Ok(()),
                        _ => Err("must be lowercase".into()),
                    }),
            )
            .attribute(Attribute::number("size").optional().default(1u64))
            .attribute(Attribute::string("secret").optional().sensitive())
            .attribute(
                Attribute::string("mode")
                    .optional()
                    .one_of(&["fast", "slow"]),
            )
            .attribute(Attribute::string("etag").computed())
            .block(
                NestedBlock::single(
                    "source",
                    Block::new()
                        .attribute(
                            Attribute::string("bucket")
                                .required()
                                .requires_replace()
                                .validator(|v| match v.as_str() {
                                    Some(s) if s.len() >= 3 => Ok(()),
                                    _ => Err("must be at least 3 characters".into()),
                                }),
                        )
                        .attribute(Attribute::string("arn").computed()),
                )
                .max_items(1),
            )
            .block(NestedBlock::list(
                "rule",
                Block::new()
                    .attribute(Attribute::string("prefix").optional().one_of(&["a/", "b/"])),
            )),
    )
}

#[async_trait]
impl Resource<Arc<World>> for Thing {
    fn type_name(&self) -> &'static str {
        "toy_thing"
    }

    fn schema(&self) -> Schema {
        thing_schema()
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        if config.get("name").as_str() == Some("forbidden") {
            diags.error("Forbidden name", "pick another");
        }
    }

    async fn modify_plan(
        &self,
        _ctx: &Ctx<Arc<World>>,
        plan: &mut PlanChange,
    ) -> Result<(), Diagnostics> {
        // A new size means a new etag, the way a real resource would recompute a digest.
        if let Some(prior) = &plan.prior {
            if prior.get("size") != plan.planned.get("size") {
                plan.planned.set("etag", Value::Unknown);
            }
        }
        if plan.planned.get("size").as_u64() == Some(99) {
            plan.diagnostics.warning("Very big", "99 is a lot");
        }
        Ok(())
    }

    async fn create(&self, ctx: &Ctx<Arc<World>>, planned: &Value) -> Result<Value, Diagnostics> {
        match planned.get("name").as_str() {
            Some("fail") => return Err(Diagnostic::error("creating thing", "boom").into()),
            Some("panic") => panic!("create exploded"),
            Some("slow") => {
                tokio::select! {
                    () = ctx.cancel.cancelled() => {
                        return Err(Diagnostic::error("creating thing", "cancelled").into())
                    }
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
            Some("half") => return Ok(planned.clone()),
            _ => {}
        }
        let id = format!("t-{}", ctx.client.next_id.fetch_add(1, Ordering::SeqCst));
        let mut state = planned.clone();
        state.set("id", Value::string(&id));
        state.set(
            "etag",
            Value::string(format!("e{}", planned.get("size").as_u64().unwrap_or(0))),
        );
        if let Some(source) = state.get_mut("source") {
            if !source.is_null() {
                source.set("arn", Value::string("arn:toy"));
            }
        }
        ctx.client.things().insert(id, state.clone());
        Ok(state)
    }

    async fn read(
        &self,
        ctx: &Ctx<Arc<World>>,
        state: &Value,
    ) -> Result<Option<Value>, Diagnostics> {
        let id = state.get("id").as_str().unwrap_or_default();
        Ok(ctx.client.things().get(id).cloned())
    }

    async fn update(
        &self,
        ctx: &Ctx<Arc<World>>,
        _prior: &Value,
        planned: &Value,
    ) -> Result<Value, Diagnostics> {
        if planned.get("size").as_u64() == Some(13) {
            return Err(Diagnostic::error("updating thing", "unlucky size").into());
        }
        let mut state = planned.clone();
        state.set(
            "etag",
            Value::string(format!("e{}", planned.get("size").as_u64().unwrap_or(0))),
        );
        let id = state.get("id").as_str().unwrap_or_default().to_owned();
        ctx.client.things().insert(id, state.clone());
        Ok(state)
    }

    async fn delete(&self, ctx: &Ctx<Arc<World>>, prior: &Value) -> Result<(), Diagnostics> {
        if prior.get("name").as_str() == Some("undeletable") {
            return Err(Diagnostic::error("deleting thing", "it refuses").into());
        }
        let id = prior.get("id").as_str().unwrap_or_default();
        ctx.client.things().remove(id);
        Ok(())
    }

    async fn import(&self, ctx: &Ctx<Arc<World>>, id: &str) -> Result<Value, Diagnostics> {
        ctx.client
            .things()
            .get(id)
            .cloned()
            .ok_or_else(|| Diagnostic::error("Cannot import", format!("no thing {id}")).into())
    }

    fn upgrade_state(
        &self,
        version: i64,
        mut state: serde_json::Value,
    ) -> Result<serde_json::Value, Diagnostics> {
        match version {
            // Version 0 called the size "bytes".
            0 => {
                if let Some(fields) = state.as_object_mut() {
                    if let Some(bytes) = fields.remove("bytes") {
                        fields.insert("size".into(), bytes);
                    }
                }
                Ok(state)
            }
            1 => Ok(state),
            other => Err(Diagnostic::error("Unsupported state version", other.to_string()).into()),
        }
    }
}

/// `data "toy_lookup"`: finds a thing by name.
struct Lookup;

fn lookup_schema() -> Schema {
    Schema::new(
        0,
        Block::new()
            .description("Looks a thing up by name.")
            .attribute(
                Attribute::string("name")
                    .required()
                    .validator(|v| match v.as_str() {
                        Some(s) if s == s.to_lowercase() => Ok(()),
                        _ => Err("must be lowercase".into()),
                    }),
            )
            .attribute(Attribute::string("kind").optional().one_of(&["any", "big"]))
            .attribute(Attribute::number("limit").optional().default(10u64))
            .attribute(Attribute::string("label").optional().computed())
            .attribute(Attribute::string("id").computed())
            .attribute(Attribute::number("size").computed())
            .block(NestedBlock::list(
                "filter",
                Block::new()
                    .attribute(Attribute::string("prefix").optional().one_of(&["a/", "b/"]))
                    .attribute(Attribute::bool("matched").computed()),
            )),
    )
}

#[async_trait]
impl DataSource<Arc<World>> for Lookup {
    fn type_name(&self) -> &'static str {
        "toy_lookup"
    }

    fn schema(&self) -> Schema {
        lookup_schema()
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        if config.get("name").as_str() == Some("forbidden") {
            diags.error("Forbidden name", "pick another");
        }
    }

    async fn read(&self, ctx: &Ctx<Arc<World>>, config: &Value) -> Result<Value, Diagnostics> {
        ctx.client.lookups.fetch_add(1, Ordering::SeqCst);
        let name = config.get("name").as_str().unwrap_or_default();
        let mut state = config.clone();
        match name {
            "panic" => panic!("lookup exploded"),
            "nothing" => return Ok(Value::Null),
            "half" => {
                state.set("id", Value::string("t-half"));
                state.set("size", Value::Unknown);
                return Ok(state);
            }
            _ => {}
        }
        let found = ctx
            .client
            .things()
            .iter()
            .find(|(_, thing)| thing.get("name").as_str() == Some(name))
            .map(|(id, thing)| (id.clone(), thing.get("size").clone()));
        let Some((id, size)) = found else {
            return Err(
                Diagnostic::error("No such thing", format!("no thing named {name}")).into(),
            );
        };
        state.set("id", Value::string(id));
        state.set("size", size);
        if state.get("label").is_null() {
            state.set("label", Value::string(format!("thing {name}")));
        }
        if let Some(Value::List(filters)) = state.get_mut("filter") {
            for filter in filters {
                let matched = filter.get("prefix").as_str() == Some("a/");
                filter.set("matched", Value::from(matched));
            }
        }
        Ok(state)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn service() -> (ProviderService<Toy>, Arc<World>) {
    let world = Arc::new(World::default());
    let service = ProviderService::new(Toy {
        world: Arc::clone(&world),
    });
    (service, world)
}

async fn configured() -> (ProviderService<Toy>, Arc<World>) {
    let (service, world) = service();
    let config = Value::object([("region", Value::from("north"))]);
    let response = service
        .configure_provider(Request::new(pb::configure_provider::Request {
            terraform_version: "1.15.5".into(),
            config: Some(dv(&config, &provider_type())),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        response.diagnostics.is_empty(),
        "{:?}",
        response.diagnostics
    );
    (service, world)
}

fn provider_type() -> Type {
    Toy {
        world: Arc::default(),
    }
    .schema()
    .value_type()
}

fn thing_type() -> Type {
    thing_schema().value_type()
}

fn dv(value: &Value, ty: &Type) -> pb::DynamicValue {
    pb::DynamicValue {
        msgpack: encode(value, ty).unwrap(),
        json: Vec::new(),
    }
}

fn garbage() -> pb::DynamicValue {
    pb::DynamicValue {
        msgpack: vec![0xdc, 0xff, 0xff, 0x01],
        json: Vec::new(),
    }
}

fn value_of(dynamic: &Option<pb::DynamicValue>) -> Value {
    match dynamic {
        Some(dynamic) => decode(&dynamic.msgpack, &thing_type()).unwrap(),
        None => Value::Null,
    }
}

fn config(name: &str) -> Value {
    Value::object([("name", Value::from(name))])
}

fn path_string(path: &Option<pb::AttributePath>) -> String {
    use pb::attribute_path::step::Selector;
    let Some(path) = path else {
        return String::new();
    };
    path.steps
        .iter()
        .map(|step| match &step.selector {
            Some(Selector::AttributeName(name)) => format!(".{name}"),
            Some(Selector::ElementKeyInt(i)) => format!("[{i}]"),
            Some(Selector::ElementKeyString(k)) => format!("[{k:?}]"),
            None => "?".into(),
        })
        .collect()
}

fn errors(diagnostics: &[pb::Diagnostic]) -> Vec<String> {
    diagnostics
        .iter()
        .filter(|d| d.severity == pb::diagnostic::Severity::Error as i32)
        .map(|d| {
            format!(
                "{} | {} | {}",
                path_string(&d.attribute),
                d.summary,
                d.detail
            )
        })
        .collect()
}

/// Terraform's proposed new state: config, with prior values for computed attributes left out
/// of config (on create there is no prior, so they stay null).
fn proposed(config: &Value, prior: &Value) -> Value {
    let mut out = config.clone();
    for name in ["id", "etag"] {
        if config.get(name).is_null() {
            out.set(name, prior.get(name).clone());
        }
    }
    if config.get("size").is_null() {
        out.set("size", prior.get("size").clone());
    }
    if let Some(source) = out.get_mut("source") {
        if !source.is_null() && source.get("arn").is_null() {
            source.set("arn", prior.get("source").get("arn").clone());
        }
    }
    out
}

async fn plan(
    service: &ProviderService<Toy>,
    prior: &Value,
    config: &Value,
) -> pb::plan_resource_change::Response {
    let ty = thing_type();
    service
        .plan_resource_change(Request::new(pb::plan_resource_change::Request {
            type_name: "toy_thing".into(),
            prior_state: Some(dv(prior, &ty)),
            proposed_new_state: Some(dv(&proposed(config, prior), &ty)),
            config: Some(dv(config, &ty)),
            prior_private: b"private".to_vec(),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn apply(
    service: &ProviderService<Toy>,
    prior: &Value,
    planned: &Value,
) -> pb::apply_resource_change::Response {
    let ty = thing_type();
    service
        .apply_resource_change(Request::new(pb::apply_resource_change::Request {
            type_name: "toy_thing".into(),
            prior_state: Some(dv(prior, &ty)),
            planned_state: Some(dv(planned, &ty)),
            config: Some(dv(planned, &ty)),
            planned_private: Vec::new(),
        }))
        .await
        .unwrap()
        .into_inner()
}

/// Plans and applies `config` from nothing; returns the new state.
async fn create(service: &ProviderService<Toy>, config: &Value) -> Value {
    let planned = plan(service, &Value::Null, config).await;
    assert!(errors(&planned.diagnostics).is_empty());
    let applied = apply(service, &Value::Null, &value_of(&planned.planned_state)).await;
    assert!(
        errors(&applied.diagnostics).is_empty(),
        "{:?}",
        applied.diagnostics
    );
    value_of(&applied.new_state)
}

// ---------------------------------------------------------------------------------------------
// GetMetadata, GetProviderSchema

#[tokio::test]
async fn get_metadata_lists_resources() {
    let (service, _) = service();
    let response = service
        .get_metadata(Request::new(pb::get_metadata::Request {}))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = response
        .resources
        .iter()
        .map(|r| r.type_name.as_str())
        .collect();
    assert_eq!(names, ["toy_thing"]);
    assert!(
        response
            .server_capabilities
            .unwrap()
            .get_provider_schema_optional
    );
}

#[tokio::test]
async fn get_provider_schema_describes_every_attribute() {
    let (service, _) = service();
    let response = service
        .get_provider_schema(Request::new(pb::get_provider_schema::Request {}))
        .await
        .unwrap()
        .into_inner();
    let capabilities = response.server_capabilities.unwrap();
    assert!(capabilities.get_provider_schema_optional && !capabilities.plan_destroy);
    let provider = response.provider.unwrap().block.unwrap();
    assert_eq!(provider.attributes[0].name, "region");
    assert_eq!(provider.attributes[0].r#type, b"\"string\"");
    assert_eq!(
        provider.attributes[0].description_kind,
        pb::StringKind::Markdown as i32
    );

    let thing = &response.resource_schemas["toy_thing"];
    assert_eq!(thing.version, 1);
    let block = thing.block.as_ref().unwrap();
    assert_eq!(block.description, "A thing.");
    let attr = |name: &str| block.attributes.iter().find(|a| a.name == name).unwrap();
    assert!(attr("id").computed && !attr("id").optional);
    assert!(attr("name").required);
    assert!(
        attr("size").optional && attr("size").computed,
        "a default implies computed"
    );
    assert_eq!(attr("size").r#type, b"\"number\"");
    assert!(attr("secret").sensitive);
    let source = block
        .block_types
        .iter()
        .find(|b| b.type_name == "source")
        .unwrap();
    assert_eq!(
        source.nesting,
        pb::schema::nested_block::NestingMode::Single as i32
    );
    assert_eq!(source.max_items, 1);
    let rule = block
        .block_types
        .iter()
        .find(|b| b.type_name == "rule")
        .unwrap();
    assert_eq!(
        rule.nesting,
        pb::schema::nested_block::NestingMode::List as i32
    );
}

// ---------------------------------------------------------------------------------------------
// ValidateProviderConfig, ValidateResourceConfig

#[tokio::test]
async fn validate_provider_config_runs_schema_checks_and_the_hook() {
    let (service, _) = service();
    let validate = |region: &str| {
        let config = Value::object([("region", Value::from(region))]);
        service.validate_provider_config(Request::new(pb::validate_provider_config::Request {
            config: Some(dv(&config, &provider_type())),
        }))
    };
    let bad = validate("east").await.unwrap().into_inner();
    assert_eq!(
        errors(&bad.diagnostics),
        [".region | Invalid attribute value | region must be one of \"north\", \"south\"; got \"east\"."]
    );
    let warned = validate("south").await.unwrap().into_inner();
    assert!(errors(&warned.diagnostics).is_empty());
    assert_eq!(warned.diagnostics[0].summary, "South is far");
}

#[tokio::test]
async fn validate_resource_config_points_at_the_offending_attribute() {
    let (service, _) = service();
    let invalid = Value::object([
        ("name", Value::from("Upper")),
        ("mode", Value::from("medium")),
        ("source", Value::object([("bucket", Value::from("ab"))])),
        (
            "rule",
            Value::list([
                Value::object([("prefix", Value::from("a/"))]),
                Value::object([("prefix", Value::from("c/"))]),
            ]),
        ),
    ]);
    let response = service
        .validate_resource_config(Request::new(pb::validate_resource_config::Request {
            type_name: "toy_thing".into(),
            config: Some(dv(&invalid, &thing_type())),
        }))
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<String> = response
        .diagnostics
        .iter()
        .map(|d| path_string(&d.attribute))
        .collect();
    assert_eq!(
        paths,
        [".name", ".mode", ".source.bucket", ".rule[1].prefix"]
    );
    assert!(response.diagnostics[0]
        .detail
        .contains("name: must be lowercase"));

    let hook = service
        .validate_resource_config(Request::new(pb::validate_resource_config::Request {
            type_name: "toy_thing".into(),
            config: Some(dv(&config_with_unknown_name(), &thing_type())),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        hook.diagnostics.is_empty(),
        "unknown values are not validated"
    );

    let forbidden = service
        .validate_resource_config(Request::new(pb::validate_resource_config::Request {
            type_name: "toy_thing".into(),
            config: Some(dv(&config("forbidden"), &thing_type())),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        errors(&forbidden.diagnostics),
        [" | Forbidden name | pick another"]
    );
}

fn config_with_unknown_name() -> Value {
    Value::object([("name", Value::Unknown), ("mode", Value::Unknown)])
}

#[tokio::test]
async fn validate_unknown_resource_type() {
    let (service, _) = service();
    let response = service
        .validate_resource_config(Request::new(pb::validate_resource_config::Request {
            type_name: "toy_nothing".into(),
            config: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(errors(&response.diagnostics)[0].contains("Unknown resource type"));
}

// ---------------------------------------------------------------------------------------------
// ConfigureProvider, and everything that needs it

#[tokio::test]
async fn configure_provider_hands_the_client_to_resources() {
    let (service, world) = configured().await;
    assert_eq!(
        world.configured_region.lock().unwrap().as_deref(),
        Some("north")
    );
    let state = create(&service, &config("a")).await;
    assert!(world
        .things()
        .contains_key(state.get("id").as_str().unwrap()));
}

#[tokio::test]
async fn resource_operations_before_configure_are_diagnosed() {
    let (service, _) = service();
    let not_configured = |diags: &[pb::Diagnostic]| {
        errors(diags)
            .iter()
            .any(|e| e.contains("Provider not configured"))
    };
    let planned = plan(&service, &Value::Null, &config("a")).await;
    assert!(not_configured(&planned.diagnostics));
    assert!(planned.planned_state.is_none());
    let applied = apply(&service, &Value::Null, &config("a")).await;
    assert!(not_configured(&applied.diagnostics));
    let read = service
        .read_resource(Request::new(pb::read_resource::Request {
            type_name: "toy_thing".into(),
            current_state: Some(dv(&config("a"), &thing_type())),
            private: Vec::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(not_configured(&read.diagnostics));
    assert_eq!(
        value_of(&read.new_state).get("name").as_str(),
        Some("a"),
        "state is kept"
    );
    let imported = service
        .import_resource_state(Request::new(pb::import_resource_state::Request {
            type_name: "toy_thing".into(),
            id: "t-0".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(not_configured(&imported.diagnostics));
}

// ---------------------------------------------------------------------------------------------
// PlanResourceChange

#[tokio::test]
async fn plan_create_fills_defaults_and_marks_computed_unknown() {
    let (service, _) = configured().await;
    let config = Value::object([
        ("name", Value::from("a")),
        ("source", Value::object([("bucket", Value::from("src"))])),
    ]);
    let response = plan(&service, &Value::Null, &config).await;
    assert!(
        response.diagnostics.is_empty(),
        "{:?}",
        response.diagnostics
    );
    assert!(response.requires_replace.is_empty());
    assert_eq!(response.planned_private, b"private");
    let planned = value_of(&response.planned_state);
    assert!(planned.get("id").is_unknown());
    assert!(planned.get("etag").is_unknown());
    assert_eq!(planned.get("size").as_u64(), Some(1));
    assert!(
        planned.get("secret").is_null(),
        "optional attributes are not computed"
    );
    assert!(
        planned.get("source").get("arn").is_unknown(),
        "computed in a new nested block"
    );
    assert_eq!(planned.get("source").get("bucket").as_str(), Some("src"));
}

#[tokio::test]
async fn plan_update_keeps_computed_values_and_flags_replacement() {
    let (service, _) = configured().await;
    let base = Value::object([
        ("name", Value::from("a")),
        ("size", Value::from(5u64)),
        ("source", Value::object([("bucket", Value::from("src"))])),
    ]);
    let state = create(&service, &base).await;

    // No change: the plan equals the prior state.
    let same = plan(&service, &state, &base).await;
    assert_eq!(value_of(&same.planned_state), state);
    assert!(same.requires_replace.is_empty());

    // Size changes in place; the hook marks the etag unknown.
    let mut bigger = base.clone();
    bigger.set("size", Value::from(6u64));
    let resized = plan(&service, &state, &bigger).await;
    let planned = value_of(&resized.planned_state);
    assert_eq!(planned.get("id"), state.get("id"));
    assert!(planned.get("etag").is_unknown());
    assert!(resized.requires_replace.is_empty());

    // Removing size from config goes back to the default.
    let defaulted = plan(&service, &state, &config_keeping_source(&base)).await;
    assert_eq!(
        value_of(&defaulted.planned_state).get("size").as_u64(),
        Some(1)
    );

    // Name and source.bucket force replacement.
    let mut renamed = base.clone();
    renamed.set("name", Value::from("b"));
    renamed.set("source", Value::object([("bucket", Value::from("other"))]));
    let replaced = plan(&service, &state, &renamed).await;
    let paths: Vec<String> = replaced
        .requires_replace
        .iter()
        .map(|p| path_string(&Some(p.clone())))
        .collect();
    assert_eq!(paths, [".name", ".source.bucket"]);
}

fn config_keeping_source(base: &Value) -> Value {
    Value::object([
        ("name", base.get("name").clone()),
        ("source", base.get("source").clone()),
    ])
}

#[tokio::test]
async fn plan_destroy_returns_null_and_hook_warnings_pass_through() {
    let (service, _) = configured().await;
    let state = create(&service, &config("a")).await;
    let response = service
        .plan_resource_change(Request::new(pb::plan_resource_change::Request {
            type_name: "toy_thing".into(),
            prior_state: Some(dv(&state, &thing_type())),
            proposed_new_state: Some(dv(&Value::Null, &thing_type())),
            config: Some(dv(&Value::Null, &thing_type())),
            prior_private: Vec::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(response.diagnostics.is_empty());
    assert_eq!(value_of(&response.planned_state), Value::Null);

    let mut big = config("a");
    big.set("size", Value::from(99u64));
    let warned = plan(&service, &state, &big).await;
    assert_eq!(warned.diagnostics.len(), 1);
    assert_eq!(
        warned.diagnostics[0].severity,
        pb::diagnostic::Severity::Warning as i32
    );
    assert!(warned.planned_state.is_some());
}

// ---------------------------------------------------------------------------------------------
// ApplyResourceChange

#[tokio::test]
async fn apply_create_update_delete() {
    let (service, world) = configured().await;
    let state = create(&service, &config("a")).await;
    assert_eq!(state.get("id").as_str(), Some("t-0"));
    assert_eq!(state.get("etag").as_str(), Some("e1"));
    assert!(state.is_fully_known());

    let mut planned = state.clone();
    planned.set("size", Value::from(2u64));
    planned.set("etag", Value::Unknown);
    let updated = apply(&service, &state, &planned).await;
    assert!(updated.diagnostics.is_empty());
    assert_eq!(
        value_of(&updated.new_state).get("etag").as_str(),
        Some("e2")
    );

    let deleted = apply(&service, &value_of(&updated.new_state), &Value::Null).await;
    assert!(deleted.diagnostics.is_empty());
    assert_eq!(value_of(&deleted.new_state), Value::Null);
    assert!(world.things().is_empty());
}

#[tokio::test]
async fn apply_failures_keep_state_consistent() {
    let (service, world) = configured().await;

    // A failed create records nothing.
    let planned = value_of(
        &plan(&service, &Value::Null, &config("fail"))
            .await
            .planned_state,
    );
    let failed = apply(&service, &Value::Null, &planned).await;
    assert_eq!(errors(&failed.diagnostics), [" | creating thing | boom"]);
    assert_eq!(value_of(&failed.new_state), Value::Null);

    // A failed update keeps the prior state.
    let state = create(&service, &config("a")).await;
    let mut unlucky = state.clone();
    unlucky.set("size", Value::from(13u64));
    let failed = apply(&service, &state, &unlucky).await;
    assert_eq!(
        errors(&failed.diagnostics),
        [" | updating thing | unlucky size"]
    );
    assert_eq!(value_of(&failed.new_state), state);

    // A failed delete keeps the prior state.
    let stubborn = create(&service, &config("undeletable")).await;
    let failed = apply(&service, &stubborn, &Value::Null).await;
    assert_eq!(
        errors(&failed.diagnostics),
        [" | deleting thing | it refuses"]
    );
    assert_eq!(value_of(&failed.new_state), stubborn);
    assert_eq!(world.things().len(), 2);
}

#[tokio::test]
async fn apply_that_leaves_unknowns_or_panics_is_diagnosed() {
    let (service, _) = configured().await;
    let planned = value_of(
        &plan(&service, &Value::Null, &config("half"))
            .await
            .planned_state,
    );
    let half = apply(&service, &Value::Null, &planned).await;
    let errs = errors(&half.diagnostics);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with(".etag | Provider bug"), "{errs:?}");
    let recorded = value_of(&half.new_state);
    assert_eq!(
        recorded.get("name").as_str(),
        Some("half"),
        "still recorded, not orphaned"
    );
    assert!(recorded.is_fully_known());

    let planned = value_of(
        &plan(&service, &Value::Null, &config("panic"))
            .await
            .planned_state,
    );
    let panicked = apply(&service, &Value::Null, &planned).await;
    assert!(errors(&panicked.diagnostics)[0].contains("create exploded"));
    assert_eq!(value_of(&panicked.new_state), Value::Null);
}

// ---------------------------------------------------------------------------------------------
// ReadResource

#[tokio::test]
async fn read_resource_refreshes_and_drops_vanished_resources() {
    let (service, world) = configured().await;
    let state = create(&service, &config("a")).await;
    let id = state.get("id").as_str().unwrap().to_owned();
    world
        .things()
        .get_mut(&id)
        .unwrap()
        .set("size", Value::from(7u64));
    let read = |state: Value| {
        service.read_resource(Request::new(pb::read_resource::Request {
            type_name: "toy_thing".into(),
            current_state: Some(dv(&state, &thing_type())),
            private: b"p".to_vec(),
        }))
    };
    let drifted = read(state.clone()).await.unwrap().into_inner();
    assert!(drifted.diagnostics.is_empty());
    assert_eq!(value_of(&drifted.new_state).get("size").as_u64(), Some(7));
    assert_eq!(drifted.private, b"p");

    world.things().clear();
    let gone = read(state).await.unwrap().into_inner();
    assert!(gone.diagnostics.is_empty());
    assert_eq!(value_of(&gone.new_state), Value::Null);
}

// ---------------------------------------------------------------------------------------------
// ImportResourceState

#[tokio::test]
async fn import_resource_state_returns_the_typed_state() {
    let (service, _) = configured().await;
    let state = create(&service, &config("a")).await;
    let import = |id: &str| {
        service.import_resource_state(Request::new(pb::import_resource_state::Request {
            type_name: "toy_thing".into(),
            id: id.into(),
        }))
    };
    let imported = import("t-0").await.unwrap().into_inner();
    assert!(imported.diagnostics.is_empty());
    assert_eq!(imported.imported_resources.len(), 1);
    assert_eq!(imported.imported_resources[0].type_name, "toy_thing");
    assert_eq!(value_of(&imported.imported_resources[0].state), state);

    let missing = import("t-9").await.unwrap().into_inner();
    assert!(missing.imported_resources.is_empty());
    assert_eq!(
        errors(&missing.diagnostics),
        [" | Cannot import | no thing t-9"]
    );
}

// ---------------------------------------------------------------------------------------------
// UpgradeResourceState

#[tokio::test]
async fn upgrade_resource_state_from_json() {
    let (service, _) = service();
    let upgrade = |version: i64, json: &str| {
        service.upgrade_resource_state(Request::new(pb::upgrade_resource_state::Request {
            type_name: "toy_thing".into(),
            version,
            raw_state: Some(pb::RawState {
                json: json.as_bytes().to_vec(),
                flatmap: Default::default(),
            }),
        }))
    };
    let old = upgrade(
        0,
        r#"{"id":"t-1","name":"a","bytes":4096,"secret":null,"source":null,"rule":[]}"#,
    )
    .await
    .unwrap()
    .into_inner();
    assert!(old.diagnostics.is_empty(), "{:?}", old.diagnostics);
    let upgraded = value_of(&old.upgraded_state);
    assert_eq!(upgraded.get("size").as_u64(), Some(4096));
    assert_eq!(upgraded.get("id").as_str(), Some("t-1"));
    assert!(
        upgraded.get("etag").is_null(),
        "attributes new in this version read as null"
    );

    let current = upgrade(1, r#"{"id":"t-1","name":"a","size":2.0}"#)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        value_of(&current.upgraded_state).get("size").as_u64(),
        Some(2)
    );

    let future = upgrade(7, "{}").await.unwrap().into_inner();
    assert!(errors(&future.diagnostics)[0].contains("Unsupported state version"));
    let corrupt = upgrade(1, "{not json").await.unwrap().into_inner();
    assert!(errors(&corrupt.diagnostics)[0].contains("Invalid stored state"));
    let mistyped = upgrade(1, r#"{"size":"huge"}"#).await.unwrap().into_inner();
    assert!(errors(&mistyped.diagnostics)[0].contains("size"));
}

// ---------------------------------------------------------------------------------------------
// StopProvider

#[tokio::test]
async fn stop_provider_cancels_work_in_flight_only() {
    let (service, _) = configured().await;
    let service = Arc::new(service);
    let planned = value_of(
        &plan(&service, &Value::Null, &config("slow"))
            .await
            .planned_state,
    );
    let in_flight = {
        let service = Arc::clone(&service);
        tokio::spawn(async move { apply(&service, &Value::Null, &planned).await })
    };
    // Let the create reach its wait before stopping.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped = service
        .stop_provider(Request::new(pb::stop_provider::Request {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.error, "");
    let cancelled = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("StopProvider did not cancel the create")
        .unwrap();
    assert_eq!(
        errors(&cancelled.diagnostics),
        [" | creating thing | cancelled"]
    );

    // Later operations get a fresh token.
    let state = create(&service, &config("after")).await;
    assert_eq!(state.get("name").as_str(), Some("after"));
}

// ---------------------------------------------------------------------------------------------
// Data sources: GetProviderSchema, ValidateDataResourceConfig, ReadDataSource

fn lookup_type() -> Type {
    lookup_schema().value_type()
}

fn lookup_of(dynamic: &Option<pb::DynamicValue>) -> Value {
    match dynamic {
        Some(dynamic) => decode(&dynamic.msgpack, &lookup_type()).unwrap(),
        None => Value::Null,
    }
}

async fn validate_lookup(
    service: &ProviderService<Toy>,
    type_name: &str,
    config: Option<pb::DynamicValue>,
) -> pb::validate_data_resource_config::Response {
    service
        .validate_data_resource_config(Request::new(pb::validate_data_resource_config::Request {
            type_name: type_name.into(),
            config,
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn read_lookup(
    service: &ProviderService<Toy>,
    config: &Value,
) -> pb::read_data_source::Response {
    service
        .read_data_source(Request::new(pb::read_data_source::Request {
            type_name: "toy_lookup".into(),
            config: Some(dv(config, &lookup_type())),
        }))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn data_sources_are_in_the_schema_and_metadata() {
    let (service, _) = service();
    let schema = service
        .get_provider_schema(Request::new(pb::get_provider_schema::Request {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        schema.data_source_schemas.keys().collect::<Vec<_>>(),
        ["toy_lookup"]
    );
    assert!(!schema.resource_schemas.contains_key("toy_lookup"));
    let block = schema.data_source_schemas["toy_lookup"]
        .block
        .as_ref()
        .unwrap();
    assert_eq!(block.description, "Looks a thing up by name.");
    let attr = |name: &str| block.attributes.iter().find(|a| a.name == name).unwrap();
    assert!(attr("name").required);
    assert!(attr("id").computed && !attr("id").optional);
    assert!(attr("label").optional && attr("label").computed);
    assert_eq!(attr("size").r#type, b"\"number\"");
    assert_eq!(block.block_types[0].type_name, "filter");

    let metadata = service
        .get_metadata(Request::new(pb::get_metadata::Request {}))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = metadata
        .data_sources
        .iter()
        .map(|d| d.type_name.as_str())
        .collect();
    assert_eq!(names, ["toy_lookup"]);
}

#[tokio::test]
async fn validate_data_resource_config_points_at_the_offending_attribute() {
    let (service, _) = service();
    let ty = lookup_type();
    let invalid = Value::object([
        ("name", Value::from("Upper")),
        ("kind", Value::from("small")),
        (
            "filter",
            Value::list([
                Value::object([("prefix", Value::from("a/"))]),
                Value::object([("prefix", Value::from("c/"))]),
            ]),
        ),
    ]);
    let response = validate_lookup(&service, "toy_lookup", Some(dv(&invalid, &ty))).await;
    let paths: Vec<String> = response
        .diagnostics
        .iter()
        .map(|d| path_string(&d.attribute))
        .collect();
    assert_eq!(paths, [".name", ".kind", ".filter[1].prefix"]);
    assert!(response.diagnostics[0]
        .detail
        .contains("name: must be lowercase"));

    let forbidden = Value::object([("name", Value::from("forbidden"))]);
    let hook = validate_lookup(&service, "toy_lookup", Some(dv(&forbidden, &ty))).await;
    assert_eq!(
        errors(&hook.diagnostics),
        [" | Forbidden name | pick another"]
    );

    // `terraform validate` sends unknowns for anything from variables or other resources.
    let unknown = Value::object([("name", Value::Unknown), ("kind", Value::Unknown)]);
    let fine = validate_lookup(&service, "toy_lookup", Some(dv(&unknown, &ty))).await;
    assert!(fine.diagnostics.is_empty(), "{:?}", fine.diagnostics);

    let unknown_type = validate_lookup(&service, "toy_thing", Some(dv(&forbidden, &ty))).await;
    assert_eq!(
        errors(&unknown_type.diagnostics),
        [" | Unknown data source type | The toy provider has no data source type \"toy_thing\"."]
    );
    let garbled = validate_lookup(&service, "toy_lookup", Some(garbage())).await;
    assert!(errors(&garbled.diagnostics)[0].contains("Invalid configuration"));
}

#[tokio::test]
async fn read_data_source_returns_the_state_it_computed() {
    let (service, world) = configured().await;
    let mut thing = config("a");
    thing.set("size", Value::from(5u64));
    let created = create(&service, &thing).await;

    let config = Value::object([
        ("name", Value::from("a")),
        (
            "filter",
            Value::list([
                Value::object([("prefix", Value::from("a/"))]),
                Value::object([("prefix", Value::from("b/"))]),
            ]),
        ),
    ]);
    let read = read_lookup(&service, &config).await;
    assert!(read.diagnostics.is_empty(), "{:?}", read.diagnostics);
    let state = lookup_of(&read.state);
    assert_eq!(state.get("id"), created.get("id"));
    assert_eq!(state.get("size").as_u64(), Some(5));
    assert_eq!(state.get("label").as_str(), Some("thing a"));
    assert_eq!(
        state.get("limit").as_u64(),
        Some(10),
        "the read saw the schema's default"
    );
    assert!(state.get("kind").is_null());
    let matched: Vec<_> = state
        .get("filter")
        .items()
        .iter()
        .map(|f| f.get("matched").as_bool())
        .collect();
    assert_eq!(matched, [Some(true), Some(false)]);

    // An optional computed attribute set in config is the user's.
    let mut labelled = config.clone();
    labelled.set("label", Value::from("mine"));
    let read = read_lookup(&service, &labelled).await;
    assert_eq!(lookup_of(&read.state).get("label").as_str(), Some("mine"));

    let missing = read_lookup(&service, &Value::object([("name", Value::from("zz"))])).await;
    assert_eq!(
        errors(&missing.diagnostics),
        [" | No such thing | no thing named zz"]
    );
    assert!(missing.state.is_none());
    assert_eq!(world.lookups.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn read_data_source_with_unknown_config_plans_computed_attributes_unknown() {
    let (service, world) = configured().await;
    let config = Value::object([
        ("name", Value::Unknown),
        ("label", Value::from("mine")),
        (
            "filter",
            Value::list([Value::object([("prefix", Value::Unknown)])]),
        ),
    ]);
    let read = read_lookup(&service, &config).await;
    assert!(read.diagnostics.is_empty(), "{:?}", read.diagnostics);
    let state = lookup_of(&read.state);
    assert!(state.get("name").is_unknown());
    assert!(state.get("id").is_unknown());
    assert!(state.get("size").is_unknown());
    assert_eq!(
        state.get("label").as_str(),
        Some("mine"),
        "set in config, so known"
    );
    assert_eq!(state.get("limit").as_u64(), Some(10));
    assert!(state.get("kind").is_null(), "not computed: stays null");
    let filter = &state.get("filter").items()[0];
    assert!(filter.get("prefix").is_unknown() && filter.get("matched").is_unknown());
    assert_eq!(
        world.lookups.load(Ordering::SeqCst),
        0,
        "read is not called"
    );
}

#[tokio::test]
async fn read_data_source_failures_are_diagnosed() {
    let (service, _) = configured().await;
    let named = |name: &str| Value::object([("name", Value::from(name))]);

    let panicked = read_lookup(&service, &named("panic")).await;
    let errs = errors(&panicked.diagnostics);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with(" | Provider bug | "), "{errs:?}");
    assert!(errs[0].contains("lookup exploded"), "{errs:?}");
    assert!(panicked.state.is_none());

    let half = read_lookup(&service, &named("half")).await;
    let errs = errors(&half.diagnostics);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with(".size | Provider bug"), "{errs:?}");
    assert!(half.state.is_none());

    let nothing = read_lookup(&service, &named("nothing")).await;
    assert!(errors(&nothing.diagnostics)[0].contains("returned no state"));

    let unknown_type = service
        .read_data_source(Request::new(pb::read_data_source::Request {
            type_name: "toy_nope".into(),
            config: Some(dv(&named("a"), &lookup_type())),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        errors(&unknown_type.diagnostics),
        [" | Unknown data source type | The toy provider has no data source type \"toy_nope\"."]
    );
    let garbled = service
        .read_data_source(Request::new(pb::read_data_source::Request {
            type_name: "toy_lookup".into(),
            config: Some(garbage()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(errors(&garbled.diagnostics)[0].contains("Invalid configuration"));
    let absent = service
        .read_data_source(Request::new(pb::read_data_source::Request {
            type_name: "toy_lookup".into(),
            config: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(errors(&absent.diagnostics)[0].contains("Invalid configuration"));

    // The service survived the panic.
    let mut thing = config("b");
    thing.set("size", Value::from(2u64));
    create(&service, &thing).await;
    let read = read_lookup(&service, &named("b")).await;
    assert!(read.diagnostics.is_empty(), "{:?}", read.diagnostics);
}

#[tokio::test]
async fn read_data_source_before_configure_is_diagnosed() {
    let (service, world) = service();
    let read = read_lookup(&service, &Value::object([("name", Value::from("a"))])).await;
    assert_eq!(
        errors(&read.diagnostics),
        [" | Provider not configured | Terraform called a resource operation before ConfigureProvider."]
    );
    assert!(read.state.is_none());
    assert_eq!(world.lookups.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// Malformed input

#[tokio::test]
async fn malformed_msgpack_is_a_diagnostic_in_every_handler() {
    let (service, _) = configured().await;
    let has_error = |diags: &[pb::Diagnostic]| errors(diags).iter().any(|e| e.contains("Invalid"));
    let validate = service
        .validate_resource_config(Request::new(pb::validate_resource_config::Request {
            type_name: "toy_thing".into(),
            config: Some(garbage()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(has_error(&validate.diagnostics));
    let validate_provider = service
        .validate_provider_config(Request::new(pb::validate_provider_config::Request {
            config: Some(garbage()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(has_error(&validate_provider.diagnostics));
    let configure = service
        .configure_provider(Request::new(pb::configure_provider::Request {
            terraform_version: String::new(),
            config: Some(garbage()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(has_error(&configure.diagnostics));
    let planned = service
        .plan_resource_change(Request::new(pb::plan_resource_change::Request {
            type_name: "toy_thing".into(),
            prior_state: Some(garbage()),
            proposed_new_state: Some(garbage()),
            config: Some(garbage()),
            prior_private: Vec::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(has_error(&planned.diagnostics));
    let prior = dv(&config("a"), &thing_type());
    let applied = service
        .apply_resource_change(Request::new(pb::apply_resource_change::Request {
            type_name: "toy_thing".into(),
            prior_state: Some(prior.clone()),
            planned_state: Some(garbage()),
            config: None,
            planned_private: Vec::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(has_error(&applied.diagnostics));
    assert_eq!(
        applied.new_state,
        Some(prior),
        "the prior state is handed back untouched"
    );
    let read = service
        .read_resource(Request::new(pb::read_resource::Request {
            type_name: "toy_thing".into(),
            current_state: Some(garbage()),
            private: Vec::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(has_error(&read.diagnostics));
    let wrong_shape = pb::DynamicValue {
        msgpack: encode(&Value::from("just a string"), &Type::String).unwrap(),
        json: Vec::new(),
    };
    let read = service
        .read_resource(Request::new(pb::read_resource::Request {
            type_name: "toy_thing".into(),
            current_state: Some(wrong_shape),
            private: Vec::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(has_error(&read.diagnostics));
}

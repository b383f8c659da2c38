//! The `tfplugin6.Provider` gRPC service: decodes requests, dispatches to the provider and its
//! resources and data sources by type name, and encodes results. Every failure becomes a
//! diagnostic; handlers answer with a gRPC error only for nothing.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::diagnostics::{AttrPath, Diagnostic, Diagnostics};
use super::proto::tfplugin6 as pb;
use super::resource::{Ctx, DataSource, PlanChange, Provider, Resource};
use super::schema::Schema;
use super::value::{Type, Value};
use super::wire;

struct ResourceEntry<C> {
    resource: Box<dyn Resource<C>>,
    schema: Schema,
    ty: Type,
}

struct DataSourceEntry<C> {
    data_source: Box<dyn DataSource<C>>,
    schema: Schema,
    ty: Type,
}

/// Serves one [`Provider`] over plugin protocol 6.
pub struct ProviderService<P: Provider> {
    provider: P,
    schema: Schema,
    ty: Type,
    resources: BTreeMap<&'static str, ResourceEntry<P::Client>>,
    data_sources: BTreeMap<&'static str, DataSourceEntry<P::Client>>,
    client: Mutex<Option<Arc<P::Client>>>,
    cancel: Mutex<CancellationToken>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded sections cannot panic, so a poisoned lock still holds consistent data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn panicked(what: &str, panic: &(dyn Any + Send)) -> Diagnostics {
    Diagnostic::error(
        "Provider bug",
        format!(
            "The provider panicked while {what}: {}. Please report this.",
            panic_message(panic)
        ),
    )
    .into()
}

/// Runs resource code so that a panic in it becomes a diagnostic instead of a dropped connection.
async fn guarded<T>(
    what: &str,
    work: impl Future<Output = Result<T, Diagnostics>>,
) -> Result<T, Diagnostics> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(panicked(what, panic.as_ref())),
    }
}

fn guarded_sync<T>(what: &str, work: impl FnOnce() -> T) -> Result<T, Diagnostics> {
    std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|panic| panicked(what, panic.as_ref()))
}

/// The schema's checks, then the hook's own, over a configuration terraform sent (`what` names it).
fn validate_config(
    schema: &Schema,
    ty: &Type,
    config: Option<&pb::DynamicValue>,
    what: &str,
    hook: impl FnOnce(&Value, &mut Diagnostics),
) -> Diagnostics {
    let config = match wire::decode(config, ty, what) {
        Ok(config) => config,
        Err(diags) => return diags,
    };
    let mut diags = schema.validate(&config);
    let own = guarded_sync(&format!("validating the {what}"), || {
        let mut own = Diagnostics::new();
        hook(&config, &mut own);
        own
    });
    match own {
        Ok(own) | Err(own) => diags.extend(own),
    }
    diags
}

fn unknowns_to_null(value: Value) -> Value {
    match value {
        Value::Unknown => Value::Null,
        Value::List(items) => Value::List(items.into_iter().map(unknowns_to_null).collect()),
        Value::Set(items) => Value::Set(items.into_iter().map(unknowns_to_null).collect()),
        Value::Map(fields) => Value::Map(
            fields
                .into_iter()
                .map(|(k, v)| (k, unknowns_to_null(v)))
                .collect(),
        ),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, unknowns_to_null(v)))
                .collect(),
        ),
        known => known,
    }
}

fn capabilities() -> pb::ServerCapabilities {
    pb::ServerCapabilities {
        plan_destroy: false,
        get_provider_schema_optional: true,
        move_resource_state: false,
        generate_resource_config: false,
    }
}

impl<P: Provider> ProviderService<P> {
    pub fn new(provider: P) -> Self {
        let schema = provider.schema();
        let ty = schema.value_type();
        let resources = provider
            .resources()
            .into_iter()
            .map(|resource| {
                let schema = resource.schema();
                let ty = schema.value_type();
                let entry = ResourceEntry {
                    resource,
                    schema,
                    ty,
                };
                (entry.resource.type_name(), entry)
            })
            .collect();
        let data_sources = provider
            .data_sources()
            .into_iter()
            .map(|data_source| {
                let schema = data_source.schema();
                let ty = schema.value_type();
                let entry = DataSourceEntry {
                    data_source,
                    schema,
                    ty,
                };
                (entry.data_source.type_name(), entry)
            })
            .collect();
        ProviderService {
            provider,
            schema,
            ty,
            resources,
            data_sources,
            client: Mutex::new(None),
            cancel: Mutex::new(CancellationToken::new()),
        }
    }

    /// Cancels operations in flight (terraform's StopProvider); later operations get a fresh token.
    pub fn stop(&self) {
        let previous = std::mem::replace(&mut *lock(&self.cancel), CancellationToken::new());
        previous.cancel();
    }

    fn ctx(&self) -> Result<Ctx<P::Client>, Diagnostics> {
        let client = lock(&self.client).clone().ok_or_else(|| {
            Diagnostics::from(Diagnostic::error(
                "Provider not configured",
                "Terraform called a resource operation before ConfigureProvider.",
            ))
        })?;
        Ok(Ctx {
            client,
            cancel: lock(&self.cancel).clone(),
        })
    }

    fn entry(&self, type_name: &str) -> Result<&ResourceEntry<P::Client>, Diagnostics> {
        self.resources.get(type_name).ok_or_else(|| {
            Diagnostic::error(
                "Unknown resource type",
                format!(
                    "The {} provider has no resource type {type_name:?}.",
                    self.provider.type_name()
                ),
            )
            .into()
        })
    }

    fn data_source_entry(
        &self,
        type_name: &str,
    ) -> Result<&DataSourceEntry<P::Client>, Diagnostics> {
        self.data_sources.get(type_name).ok_or_else(|| {
            Diagnostic::error(
                "Unknown data source type",
                format!(
                    "The {} provider has no data source type {type_name:?}.",
                    self.provider.type_name()
                ),
            )
            .into()
        })
    }

    fn get_provider_schema_now(&self) -> pb::get_provider_schema::Response {
        pb::get_provider_schema::Response {
            provider: Some(wire::schema(&self.schema)),
            resource_schemas: self
                .resources
                .iter()
                .map(|(name, entry)| ((*name).to_owned(), wire::schema(&entry.schema)))
                .collect(),
            data_source_schemas: self
                .data_sources
                .iter()
                .map(|(name, entry)| ((*name).to_owned(), wire::schema(&entry.schema)))
                .collect(),
            server_capabilities: Some(capabilities()),
            ..Default::default()
        }
    }

    fn validate_provider_now(&self, req: &pb::validate_provider_config::Request) -> Diagnostics {
        validate_config(
            &self.schema,
            &self.ty,
            req.config.as_ref(),
            "provider configuration",
            |config, diags| self.provider.validate(config, diags),
        )
    }

    fn validate_resource_now(&self, req: &pb::validate_resource_config::Request) -> Diagnostics {
        match self.entry(&req.type_name) {
            Ok(entry) => validate_config(
                &entry.schema,
                &entry.ty,
                req.config.as_ref(),
                "configuration",
                |config, diags| entry.resource.validate(config, diags),
            ),
            Err(diags) => diags,
        }
    }

    fn validate_data_source_now(
        &self,
        req: &pb::validate_data_resource_config::Request,
    ) -> Diagnostics {
        match self.data_source_entry(&req.type_name) {
            Ok(entry) => validate_config(
                &entry.schema,
                &entry.ty,
                req.config.as_ref(),
                "configuration",
                |config, diags| entry.data_source.validate(config, diags),
            ),
            Err(diags) => diags,
        }
    }

    fn upgrade_now(
        &self,
        req: &pb::upgrade_resource_state::Request,
    ) -> Result<pb::DynamicValue, Diagnostics> {
        let entry = self.entry(&req.type_name)?;
        let raw = req.raw_state.clone().unwrap_or_default();
        if raw.json.is_empty() {
            if !raw.flatmap.is_empty() {
                return Err(Diagnostic::error(
                    "Unsupported state format",
                    "This state was written by terraform 0.11 or older (flatmap); it cannot be \
                     upgraded by this provider.",
                )
                .into());
            }
            return wire::encode(&Value::Null, &entry.ty, "upgraded state");
        }
        let json: serde_json::Value = serde_json::from_slice(&raw.json).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Invalid stored state",
                format!("The stored state is not valid JSON: {e}"),
            ))
        })?;
        let upgraded = guarded_sync("upgrading state", || {
            entry.resource.upgrade_state(req.version, json)
        })??;
        let value = Value::from_json(&upgraded, &entry.ty).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Invalid stored state",
                format!(
                    "The stored state (schema version {}) does not fit schema version {}: {e}",
                    req.version, entry.schema.version
                ),
            ))
        })?;
        wire::encode(&value, &entry.ty, "upgraded state")
    }

    async fn configure_now(&self, req: &pb::configure_provider::Request) -> Diagnostics {
        let config = match wire::decode(req.config.as_ref(), &self.ty, "provider configuration") {
            Ok(config) => config,
            Err(diags) => return diags,
        };
        match guarded("configuring", self.provider.configure(&config)).await {
            Ok(client) => {
                *lock(&self.client) = Some(Arc::new(client));
                Diagnostics::new()
            }
            Err(diags) => diags,
        }
    }

    /// `Ok(None)`: the resource is gone.
    async fn read_now(
        &self,
        req: &pb::read_resource::Request,
    ) -> Result<Option<pb::DynamicValue>, Diagnostics> {
        let entry = self.entry(&req.type_name)?;
        let current = wire::decode(req.current_state.as_ref(), &entry.ty, "current state")?;
        if current.is_null() {
            return Ok(None);
        }
        let ctx = self.ctx()?;
        let read = guarded("reading", entry.resource.read(&ctx, &current)).await?;
        let Some(state) = read else {
            return Ok(None);
        };
        if let Some(path) = state.first_unknown() {
            return Err(unknown_after("read", &path));
        }
        wire::encode(&state, &entry.ty, "state read").map(Some)
    }

    /// The data source's state, read from its configuration.
    async fn read_data_source_now(
        &self,
        req: &pb::read_data_source::Request,
    ) -> Result<pb::DynamicValue, Diagnostics> {
        let entry = self.data_source_entry(&req.type_name)?;
        let ty = &entry.ty;
        let config = wire::decode(req.config.as_ref(), ty, "configuration")?;
        if config.is_null() {
            return Err(Diagnostic::error(
                "Invalid configuration",
                "Terraform sent no configuration for the data source.",
            )
            .into());
        }
        let ctx = self.ctx()?;
        // Defaults for attributes null in config, unknown for computed ones.
        let planned = entry.schema.block.plan(None, &config, &config);
        if !config.is_fully_known() {
            // Terraform reads only wholly known configurations and plans the others itself; should
            // it ask anyway, answer as it would: the configuration, computed attributes unknown.
            return wire::encode(&planned, ty, "planned state");
        }
        let config = unknowns_to_null(planned);
        let state = guarded(
            "reading the data source",
            entry.data_source.read(&ctx, &config),
        )
        .await?;
        if state.is_null() {
            return Err(Diagnostic::error(
                "Provider bug",
                "The read succeeded but returned no state. Please report this.",
            )
            .into());
        }
        if let Some(path) = state.first_unknown() {
            return Err(unknown_after("read", &path));
        }
        wire::encode(&state, ty, "state read")
    }

    async fn plan_now(
        &self,
        req: &pb::plan_resource_change::Request,
        diags: &mut Diagnostics,
    ) -> Result<(pb::DynamicValue, Vec<pb::AttributePath>), Diagnostics> {
        let entry = self.entry(&req.type_name)?;
        let ty = &entry.ty;
        let prior = wire::decode(req.prior_state.as_ref(), ty, "prior state")?;
        let proposed = wire::decode(req.proposed_new_state.as_ref(), ty, "proposed new state")?;
        let config = wire::decode(req.config.as_ref(), ty, "configuration")?;
        if proposed.is_null() {
            return Ok((wire::encode(&Value::Null, ty, "planned state")?, Vec::new()));
        }
        let ctx = self.ctx()?;
        let prior = (!prior.is_null()).then_some(prior);
        let planned = entry.schema.block.plan(prior.as_ref(), &config, &proposed);
        let mut change = PlanChange {
            prior,
            config,
            planned,
            requires_replace: Vec::new(),
            diagnostics: Diagnostics::new(),
        };
        let hook = guarded("planning", entry.resource.modify_plan(&ctx, &mut change)).await;
        diags.extend(std::mem::take(&mut change.diagnostics));
        hook?;
        if diags.has_errors() {
            return Err(Diagnostics::new());
        }
        let mut replace = change.requires_replace;
        if let Some(prior) = &change.prior {
            entry
                .schema
                .block
                .replacements(prior, &change.planned, None, &mut replace);
        }
        let mut unique: Vec<AttrPath> = Vec::with_capacity(replace.len());
        for path in replace {
            if !unique.contains(&path) {
                unique.push(path);
            }
        }
        let planned = wire::encode(&change.planned, ty, "planned state")?;
        Ok((planned, unique.iter().map(wire::path).collect()))
    }

    /// The new state to record (null when the resource no longer exists, or was never created).
    async fn apply_now(
        &self,
        req: &pb::apply_resource_change::Request,
        diags: &mut Diagnostics,
    ) -> Result<pb::DynamicValue, Diagnostics> {
        let entry = self.entry(&req.type_name)?;
        let ty = &entry.ty;
        let prior = wire::decode(req.prior_state.as_ref(), ty, "prior state")?;
        let planned = wire::decode(req.planned_state.as_ref(), ty, "planned state")?;
        let ctx = self.ctx()?;
        let resource = &entry.resource;
        let new_state = if planned.is_null() {
            if prior.is_null() {
                Value::Null
            } else {
                guarded("deleting", resource.delete(&ctx, &prior)).await?;
                Value::Null
            }
        } else if prior.is_null() {
            let created = guarded("creating", resource.create(&ctx, &planned)).await?;
            self.check_applied(created, "create", diags)?
        } else {
            let updated = guarded("updating", resource.update(&ctx, &prior, &planned)).await?;
            self.check_applied(updated, "update", diags)?
        };
        wire::encode(&new_state, ty, "new state")
    }

    /// Terraform rejects unknowns after apply with an unhelpful message; name the attribute
    /// instead, and still record the object so that it is not orphaned.
    fn check_applied(
        &self,
        state: Value,
        operation: &str,
        diags: &mut Diagnostics,
    ) -> Result<Value, Diagnostics> {
        if state.is_null() {
            return Err(Diagnostic::error(
                "Provider bug",
                format!("The {operation} succeeded but returned no state. Please report this."),
            )
            .into());
        }
        if let Some(path) = state.first_unknown() {
            diags.extend(unknown_after(operation, &path));
            return Ok(unknowns_to_null(state));
        }
        Ok(state)
    }

    async fn import_now(
        &self,
        req: &pb::import_resource_state::Request,
    ) -> Result<pb::import_resource_state::ImportedResource, Diagnostics> {
        let entry = self.entry(&req.type_name)?;
        let ctx = self.ctx()?;
        let state = guarded("importing", entry.resource.import(&ctx, &req.id)).await?;
        if state.is_null() {
            return Err(Diagnostic::error(
                "Cannot import non-existent remote object",
                format!("No {} with id {:?} was found.", req.type_name, req.id),
            )
            .into());
        }
        Ok(pb::import_resource_state::ImportedResource {
            type_name: req.type_name.clone(),
            state: Some(wire::encode(
                &unknowns_to_null(state),
                &entry.ty,
                "imported state",
            )?),
            private: Vec::new(),
        })
    }
}

fn unknown_after(operation: &str, path: &AttrPath) -> Diagnostics {
    Diagnostic::error_at(
        path.clone(),
        "Provider bug",
        format!("The {operation} left {path} unknown; every attribute must be known afterwards."),
    )
    .into()
}

fn respond<T>(message: T) -> Result<Response<T>, Status> {
    Ok(Response::new(message))
}

#[tonic::async_trait]
impl<P: Provider> pb::provider_server::Provider for ProviderService<P> {
    async fn get_metadata(
        &self,
        _request: Request<pb::get_metadata::Request>,
    ) -> Result<Response<pb::get_metadata::Response>, Status> {
        respond(pb::get_metadata::Response {
            server_capabilities: Some(capabilities()),
            diagnostics: Vec::new(),
            data_sources: self
                .data_sources
                .keys()
                .map(|name| pb::get_metadata::DataSourceMetadata {
                    type_name: (*name).to_owned(),
                })
                .collect(),
            resources: self
                .resources
                .keys()
                .map(|name| pb::get_metadata::ResourceMetadata {
                    type_name: (*name).to_owned(),
                })
                .collect(),
        })
    }

    async fn get_provider_schema(
        &self,
        _request: Request<pb::get_provider_schema::Request>,
    ) -> Result<Response<pb::get_provider_schema::Response>, Status> {
        respond(self.get_provider_schema_now())
    }

    async fn validate_provider_config(
        &self,
        request: Request<pb::validate_provider_config::Request>,
    ) -> Result<Response<pb::validate_provider_config::Response>, Status> {
        let diags = self.validate_provider_now(request.get_ref());
        respond(pb::validate_provider_config::Response {
            diagnostics: wire::diagnostics(diags),
        })
    }

    async fn validate_resource_config(
        &self,
        request: Request<pb::validate_resource_config::Request>,
    ) -> Result<Response<pb::validate_resource_config::Response>, Status> {
        let diags = self.validate_resource_now(request.get_ref());
        respond(pb::validate_resource_config::Response {
            diagnostics: wire::diagnostics(diags),
        })
    }

    async fn validate_data_resource_config(
        &self,
        request: Request<pb::validate_data_resource_config::Request>,
    ) -> Result<Response<pb::validate_data_resource_config::Response>, Status> {
        let diags = self.validate_data_source_now(request.get_ref());
        respond(pb::validate_data_resource_config::Response {
            diagnostics: wire::diagnostics(diags),
        })
    }

    async fn upgrade_resource_state(
        &self,
        request: Request<pb::upgrade_resource_state::Request>,
    ) -> Result<Response<pb::upgrade_resource_state::Response>, Status> {
        let (upgraded_state, diags) = match self.upgrade_now(request.get_ref()) {
            Ok(state) => (Some(state), Diagnostics::new()),
            Err(diags) => (None, diags),
        };
        respond(pb::upgrade_resource_state::Response {
            upgraded_state,
            diagnostics: wire::diagnostics(diags),
        })
    }

    async fn configure_provider(
        &self,
        request: Request<pb::configure_provider::Request>,
    ) -> Result<Response<pb::configure_provider::Response>, Status> {
        let diags = self.configure_now(request.get_ref()).await;
        respond(pb::configure_provider::Response {
            diagnostics: wire::diagnostics(diags),
        })
    }

    async fn read_resource(
        &self,
        request: Request<pb::read_resource::Request>,
    ) -> Result<Response<pb::read_resource::Response>, Status> {
        let req = request.into_inner();
        let (new_state, diags) = match self.read_now(&req).await {
            Ok(Some(state)) => (Some(state), Diagnostics::new()),
            Ok(None) => (None, Diagnostics::new()),
            // Keep what terraform has: an empty new_state would drop the resource from state.
            Err(diags) => (req.current_state, diags),
        };
        respond(pb::read_resource::Response {
            new_state,
            diagnostics: wire::diagnostics(diags),
            private: req.private,
        })
    }

    async fn plan_resource_change(
        &self,
        request: Request<pb::plan_resource_change::Request>,
    ) -> Result<Response<pb::plan_resource_change::Response>, Status> {
        let req = request.into_inner();
        let mut diags = Diagnostics::new();
        let (planned_state, requires_replace) = match self.plan_now(&req, &mut diags).await {
            Ok((planned, replace)) => (Some(planned), replace),
            Err(errors) => {
                diags.extend(errors);
                (None, Vec::new())
            }
        };
        respond(pb::plan_resource_change::Response {
            planned_state,
            requires_replace,
            planned_private: req.prior_private,
            diagnostics: wire::diagnostics(diags),
        })
    }

    async fn apply_resource_change(
        &self,
        request: Request<pb::apply_resource_change::Request>,
    ) -> Result<Response<pb::apply_resource_change::Response>, Status> {
        let req = request.into_inner();
        let mut diags = Diagnostics::new();
        let new_state = match self.apply_now(&req, &mut diags).await {
            Ok(state) => Some(state),
            Err(errors) => {
                diags.extend(errors);
                // A failed create leaves nothing (prior is null); a failed update or delete keeps
                // the prior object so the user can retry.
                req.prior_state
            }
        };
        respond(pb::apply_resource_change::Response {
            new_state,
            private: req.planned_private,
            diagnostics: wire::diagnostics(diags),
        })
    }

    async fn import_resource_state(
        &self,
        request: Request<pb::import_resource_state::Request>,
    ) -> Result<Response<pb::import_resource_state::Response>, Status> {
        let (imported_resources, diags) = match self.import_now(request.get_ref()).await {
            Ok(imported) => (vec![imported], Diagnostics::new()),
            Err(diags) => (Vec::new(), diags),
        };
        respond(pb::import_resource_state::Response {
            imported_resources,
            diagnostics: wire::diagnostics(diags),
        })
    }

    async fn read_data_source(
        &self,
        request: Request<pb::read_data_source::Request>,
    ) -> Result<Response<pb::read_data_source::Response>, Status> {
        let (state, diags) = match self.read_data_source_now(request.get_ref()).await {
            Ok(state) => (Some(state), Diagnostics::new()),
            Err(diags) => (None, diags),
        };
        respond(pb::read_data_source::Response {
            state,
            diagnostics: wire::diagnostics(diags),
        })
    }

    async fn stop_provider(
        &self,
        _request: Request<pb::stop_provider::Request>,
    ) -> Result<Response<pb::stop_provider::Response>, Status> {
        self.stop();
        respond(pb::stop_provider::Response {
            error: String::new(),
        })
    }
}

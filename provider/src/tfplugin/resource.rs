//! The traits resource, data source and provider code implement. Nothing here mentions protobuf
//! or AWS.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::diagnostics::{AttrPath, Diagnostic, Diagnostics};
use super::schema::Schema;
use super::value::Value;

/// What every resource and data source operation gets: the configured provider's client, and a
/// token cancelled when terraform asks the provider to stop (Ctrl-C): long waits should select on
/// it and return.
pub struct Ctx<C> {
    pub client: Arc<C>,
    pub cancel: CancellationToken,
}

impl<C> Clone for Ctx<C> {
    fn clone(&self) -> Self {
        Ctx {
            client: Arc::clone(&self.client),
            cancel: self.cancel.clone(),
        }
    }
}

/// A plan being made for one resource instance.
#[derive(Debug, Clone)]
pub struct PlanChange {
    /// The current state; `None` when the resource is being created.
    pub prior: Option<Value>,
    /// The configuration as written (may contain unknowns).
    pub config: Value,
    /// The planned new state: terraform's proposal with the schema's defaults applied and, on
    /// create, computed attributes left out of config marked unknown.
    pub planned: Value,
    /// Attributes whose change forces replacement, beyond those flagged in the schema.
    pub requires_replace: Vec<AttrPath>,
    /// Warnings (or errors) to report with the plan.
    pub diagnostics: Diagnostics,
}

#[async_trait]
pub trait Resource<C: Send + Sync + 'static>: Send + Sync + 'static {
    /// The type name in configuration, e.g. `dth_s3_transfer`.
    fn type_name(&self) -> &'static str;

    fn schema(&self) -> Schema;

    /// Checks beyond the schema's; `config` may contain unknowns.
    fn validate(&self, _config: &Value, _diags: &mut Diagnostics) {}

    /// Runs after the framework's planning defaults. May change `plan.planned`, add to
    /// `plan.requires_replace`, push warnings.
    async fn modify_plan(&self, _ctx: &Ctx<C>, _plan: &mut PlanChange) -> Result<(), Diagnostics> {
        Ok(())
    }

    /// Creates the resource and returns its state with every attribute known. On error nothing
    /// is recorded in state, so whatever was half-built must be cleaned up first.
    async fn create(&self, ctx: &Ctx<C>, planned: &Value) -> Result<Value, Diagnostics>;

    /// The resource as it is now; `None` when it is gone (terraform then drops it from state and
    /// plans to create it again).
    async fn read(&self, ctx: &Ctx<C>, state: &Value) -> Result<Option<Value>, Diagnostics>;

    /// On error the prior state is kept.
    async fn update(
        &self,
        ctx: &Ctx<C>,
        prior: &Value,
        planned: &Value,
    ) -> Result<Value, Diagnostics>;

    /// On error the prior state is kept.
    async fn delete(&self, ctx: &Ctx<C>, prior: &Value) -> Result<(), Diagnostics>;

    /// The state of an existing resource from its import id; terraform reads it afterwards.
    async fn import(&self, _ctx: &Ctx<C>, _id: &str) -> Result<Value, Diagnostics> {
        Err(Diagnostic::error(
            "Import not supported",
            format!("{} cannot be imported.", self.type_name()),
        )
        .into())
    }

    /// Turns state stored at schema `version` into JSON for the current schema version.
    fn upgrade_state(
        &self,
        version: i64,
        state: serde_json::Value,
    ) -> Result<serde_json::Value, Diagnostics> {
        let current = self.schema().version;
        if version == current {
            Ok(state)
        } else {
            Err(Diagnostic::error(
                "Unsupported state version",
                format!(
                    "The state of this {} was written with schema version {version}; this \
                     provider reads version {current} only.",
                    self.type_name()
                ),
            )
            .into())
        }
    }
}

/// A data source: read-only, it computes its state from its configuration on every plan.
#[async_trait]
pub trait DataSource<C: Send + Sync + 'static>: Send + Sync + 'static {
    /// The type name in configuration, e.g. `dth_transfer`.
    fn type_name(&self) -> &'static str;

    fn schema(&self) -> Schema;

    /// Checks beyond the schema's; `config` may contain unknowns.
    fn validate(&self, _config: &Value, _diags: &mut Diagnostics) {}

    /// Read: `config` is fully known, with the schema's defaults filled in; return the full state
    /// (every computed attribute known).
    async fn read(&self, ctx: &Ctx<C>, config: &Value) -> Result<Value, Diagnostics>;
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// What every resource operation is given once the provider is configured.
    type Client: Send + Sync + 'static;

    /// The provider's local name, e.g. `dth`.
    fn type_name(&self) -> &'static str;

    fn schema(&self) -> Schema;

    fn validate(&self, _config: &Value, _diags: &mut Diagnostics) {}

    /// Called once per terraform command before any resource operation. Must not block for
    /// long: terraform starts the provider several times per command.
    async fn configure(&self, config: &Value) -> Result<Self::Client, Diagnostics>;

    fn resources(&self) -> Vec<Box<dyn Resource<Self::Client>>>;

    /// None unless the provider has some.
    fn data_sources(&self) -> Vec<Box<dyn DataSource<Self::Client>>> {
        vec![]
    }

    /// Log targets held at `info` even under `TF_LOG=TRACE`: libraries whose debug and trace lines carry credentials
    /// or request bodies (an SDK's signing and identity resolution), which must never reach terraform's log.
    fn quiet_log_targets(&self) -> &'static [&'static str] {
        &[]
    }
}

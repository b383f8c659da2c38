//! A tiny provider, "toy", for checking the plugin layer end to end under the real terraform.
//!
//! `toy_thing` keeps each thing as a JSON file in a directory (provider attribute `dir`), so that
//! state outlives the provider process between terraform commands, and things can be deleted or
//! edited behind terraform's back; `data "toy_thing"` reads one by id. `toy --docs` prints the
//! generated resource doc page.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use dth_provider::tfplugin::{
    docs, AttrPath, Attribute, Block, Ctx, DataSource, Diagnostic, Diagnostics, Provider, Resource,
    Schema, Value,
};

struct Toy;

struct Store {
    dir: PathBuf,
}

#[async_trait]
impl Provider for Toy {
    type Client = Store;

    fn type_name(&self) -> &'static str {
        "toy"
    }

    fn schema(&self) -> Schema {
        Schema::new(
            0,
            Block::new().attribute(
                Attribute::string("dir")
                    .optional()
                    .description("Directory that holds the things. Defaults to `.toy-store`."),
            ),
        )
    }

    async fn configure(&self, config: &Value) -> Result<Store, Diagnostics> {
        let dir = PathBuf::from(config.get("dir").as_str().unwrap_or(".toy-store"));
        tokio::fs::create_dir_all(&dir).await.map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Cannot create the store directory",
                format!("{}: {e}", dir.display()),
            ))
        })?;
        Ok(Store { dir })
    }

    fn resources(&self) -> Vec<Box<dyn Resource<Store>>> {
        vec![Box::new(Thing)]
    }

    fn data_sources(&self) -> Vec<Box<dyn DataSource<Store>>> {
        vec![Box::new(ThingById)]
    }
}

struct Thing;

impl Thing {
    fn path(store: &Store, id: &str) -> Result<PathBuf, Diagnostics> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(
                Diagnostic::error("Invalid id", format!("{id:?} is not a thing id")).into(),
            );
        }
        Ok(store.dir.join(format!("{id}.json")))
    }

    async fn write(store: &Store, state: &Value) -> Result<(), Diagnostics> {
        let id = state.get("id").as_str().unwrap_or_default();
        let path = Thing::path(store, id)?;
        let body = serde_json::to_vec_pretty(&state.to_json()).unwrap_or_default();
        tokio::fs::write(&path, body)
            .await
            .map_err(|e| io_error("writing", &path, e))
    }

    async fn load(&self, store: &Store, id: &str) -> Result<Option<Value>, Diagnostics> {
        let path = Thing::path(store, id)?;
        let body = match tokio::fs::read(&path).await {
            Ok(body) => body,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("reading", &path, e)),
        };
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Corrupt thing",
                format!("{}: {e}", path.display()),
            ))
        })?;
        Value::from_json(&json, &self.schema().value_type())
            .map(Some)
            .map_err(|e| Diagnostic::error("Corrupt thing", e.to_string()).into())
    }
}

fn io_error(doing: &str, path: &std::path::Path, e: std::io::Error) -> Diagnostics {
    Diagnostic::error(format!("{doing} {}", path.display()), e.to_string()).into()
}

#[async_trait]
impl Resource<Store> for Thing {
    fn type_name(&self) -> &'static str {
        "toy_thing"
    }

    fn schema(&self) -> Schema {
        Schema::new(
            0,
            Block::new()
                .description("A thing kept as a JSON file in the provider's directory.")
                .attribute(
                    Attribute::string("id")
                        .computed()
                        .description("`<name>-<n>`"),
                )
                .attribute(
                    Attribute::string("name")
                        .required()
                        .requires_replace()
                        .description("Lowercase letters, digits and dashes")
                        .validator(|v| match v.as_str() {
                            Some(s)
                                if !s.is_empty()
                                    && s.chars().all(|c| {
                                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
                                    }) =>
                            {
                                Ok(())
                            }
                            _ => Err("use lowercase letters, digits and dashes only".into()),
                        }),
                )
                .attribute(
                    Attribute::number("size")
                        .optional()
                        .default(1u64)
                        .description("How big the thing is"),
                )
                .attribute(
                    Attribute::string("secret")
                        .optional()
                        .sensitive()
                        .description("Something not to show"),
                ),
        )
    }

    async fn create(&self, ctx: &Ctx<Store>, planned: &Value) -> Result<Value, Diagnostics> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut state = planned.clone();
        let name = planned.get("name").as_str().unwrap_or("thing");
        state.set("id", Value::string(format!("{name}-{nanos}")));
        Thing::write(&ctx.client, &state).await?;
        Ok(state)
    }

    async fn read(&self, ctx: &Ctx<Store>, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let id = state.get("id").as_str().unwrap_or_default();
        self.load(&ctx.client, id).await
    }

    async fn update(
        &self,
        ctx: &Ctx<Store>,
        _prior: &Value,
        planned: &Value,
    ) -> Result<Value, Diagnostics> {
        Thing::write(&ctx.client, planned).await?;
        Ok(planned.clone())
    }

    async fn delete(&self, ctx: &Ctx<Store>, prior: &Value) -> Result<(), Diagnostics> {
        let path = Thing::path(&ctx.client, prior.get("id").as_str().unwrap_or_default())?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing", &path, e)),
        }
    }

    async fn import(&self, ctx: &Ctx<Store>, id: &str) -> Result<Value, Diagnostics> {
        self.load(&ctx.client, id).await?.ok_or_else(|| {
            Diagnostic::error("Cannot import", format!("there is no toy_thing {id:?}")).into()
        })
    }
}

/// `data "toy_thing"`: an existing thing, by id.
struct ThingById;

#[async_trait]
impl DataSource<Store> for ThingById {
    fn type_name(&self) -> &'static str {
        "toy_thing"
    }

    fn schema(&self) -> Schema {
        Schema::new(
            0,
            Block::new()
                .description("An existing thing, by id.")
                .attribute(
                    Attribute::string("id")
                        .required()
                        .description("The thing's id")
                        .validator(|v| match v.as_str() {
                            Some(s)
                                if !s.is_empty()
                                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                            {
                                Ok(())
                            }
                            _ => Err("not a thing id".into()),
                        }),
                )
                .attribute(Attribute::string("name").computed().description("Its name"))
                .attribute(Attribute::number("size").computed().description("Its size")),
        )
    }

    async fn read(&self, ctx: &Ctx<Store>, config: &Value) -> Result<Value, Diagnostics> {
        let id = config.get("id").as_str().unwrap_or_default();
        let Some(thing) = Thing.load(&ctx.client, id).await? else {
            return Err(Diagnostic::error_at(
                AttrPath::root("id"),
                "No such thing",
                format!("There is no toy_thing {id:?}."),
            )
            .into());
        };
        let mut state = config.clone();
        state.set("name", thing.get("name").clone());
        state.set("size", thing.get("size").clone());
        Ok(state)
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|arg| arg == "--docs") {
        let example = "resource \"toy_thing\" \"example\" {\n  name = \"example\"\n}";
        print!(
            "{}",
            docs::resource_markdown("toy_thing", &Thing.schema(), example)
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(dth_provider::tfplugin::serve(Toy))
}

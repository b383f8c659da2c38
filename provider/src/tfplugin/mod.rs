//! tfplugin-rs: the project's own Terraform plugin protocol 6 layer.
//!
//! Resource code implements [`Resource`], [`DataSource`] and [`Provider`] against [`Value`],
//! [`Schema`] and [`Diagnostics`]; it never sees protobuf. [`serve`] runs the go-plugin handshake
//! and the gRPC server that terraform talks to.

pub mod diagnostics;
pub mod docs;
pub mod resource;
pub mod schema;
pub mod serve;
pub mod server;
pub mod value;
mod wire;

/// The generated protocol messages and services (only the protocol layer and its tests use them).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    pub mod tfplugin6 {
        tonic::include_proto!("tfplugin6");
    }
    pub mod plugin {
        tonic::include_proto!("plugin");
    }
}

pub use diagnostics::{AttrPath, Diagnostic, Diagnostics, PathStep, Severity};
pub use resource::{Ctx, DataSource, PlanChange, Provider, Resource};
pub use schema::{Attribute, Block, NestedBlock, Nesting, Schema};
pub use serve::serve;
pub use server::ProviderService;
pub use value::{Type, Value, ValueError};

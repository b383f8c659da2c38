//! The `dth_s3_transfer` resource's AWS half: the spec a user writes, the AWS resources provisioned for it, and
//! how they are created, read (with progress), imported, updated and deleted. Plain Rust and serde: no protocol
//! types here; `resources/s3_transfer.rs` translates.
//!
//! | step    | function                  |
//! |---------|---------------------------|
//! | plan    | [`TransferSpec::validate`], [`requires_replace`], [`cost::estimate`] |
//! | create  | [`create`]                |
//! | read    | [`observe`] (fixed number of AWS calls), [`import`] |
//! | update  | [`update`]                |
//! | delete  | [`delete`]                |

mod alarms;
pub use dth_core::cost;
mod create;
mod delete;
pub mod drift;
mod fleet;
mod iam;
pub mod images;
pub mod infra;
pub mod logs;
mod network;
mod notifications;
pub mod policy;
mod queues;
mod read;
pub mod spec;
mod table;
mod update;

pub use create::{create, create_within, Abandon, Abandoned};
pub use delete::delete;
pub use fleet::{architecture_of, SCALE_IN_AFTER_MINUTES, SCALE_OUT_STEPS};
pub use images::Images;
pub use infra::{
    new_creation_id, resource_tags, Infra, Names, Owner, ProvisionError, CREATION_TAG,
    DEFAULTS_TAG, TRANSFER_TAG,
};
pub use policy::access_policy;
pub use read::{import, observe, Component, Observed, Progress, Status};
pub use spec::{Destination, Finder, Fleet, Objects, Payload, Schedule, Source, TransferSpec};
pub use update::{infra_unchanged, requires_replace, update, update_repairing};

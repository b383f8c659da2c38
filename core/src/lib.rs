//! dth-core: the transfer engine shared by the `finder` and `worker` binaries (and later the provider).
//!
//! The pieces, each behind a narrow interface so it can be tested alone:
//! - [`config`]: the one [`config::JobConfig`] every component reads, validated once.
//! - [`store`]: the [`store::ObjectStore`] trait, its S3 implementation and an in-memory one.
//! - [`diff`]: what counts as "needs copying".
//! - [`finder`]: list → diff → pack into jobs → enqueue, streaming with bounded memory.
//! - [`worker`]: dequeue → copy (single PUT / multipart / fleet-split) → verify → record.
//! - [`queue`], [`ledger`]: the SQS job queue and the DynamoDB ledger.
//! - [`uploads`]: the transfer's own open multipart uploads, aborted at destroy.
//! - [`fleet`]: what a binary does to its own Auto Scaling group (the finder scales itself in).
//! - [`image_config`], [`images`], [`registry`]: image transfers — their config, their finder and worker side,
//!   and the distribution API client they copy with.
//! - [`build_info`]: the version, revision and target baked into every binary.

pub mod aws;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod copy;
pub mod cost;
pub mod diff;
pub mod error;
pub mod etag;
pub mod events;
pub mod finder;
pub mod fleet;
#[cfg(test)]
mod fuzz;
pub mod image_config;
pub mod images;
pub mod job;
pub mod ledger;
pub mod limit;
pub mod metrics;
pub mod names;
pub mod queue;
pub mod redrive;
pub mod registry;
pub mod requests;
pub mod stats;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod uploads;
pub mod userdata;
pub mod worker;

pub use config::JobConfig;
pub use error::{Error, ErrorKind, Result};

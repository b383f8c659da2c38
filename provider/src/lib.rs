//! terraform-provider-dth: the plugin-protocol-6 layer and the dth resources.
pub mod aws;
pub mod docs;
pub mod provider;
pub mod resources;
pub mod tfplugin;
pub mod transfer;

pub use provider::DthProvider;

//! terraform-provider-dth: the plugin-protocol-6 layer and the dth resources.

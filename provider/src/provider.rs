//! `provider "dth" {}`: where the control plane lives and how to reach it, like the AWS provider's block.

use async_trait::async_trait;

use crate::aws::{AwsClients, ProviderConfig};
use crate::resources::{
    config_json, decode, ecr_transfer, problems_to_diagnostics, s3_transfer, transfer_data,
};
use crate::tfplugin::{
    Attribute, Block, DataSource, Diagnostic, Diagnostics, NestedBlock, Provider, Resource, Schema,
    Type, Value,
};

/// What every resource operation gets once the provider is configured.
pub struct Client {
    pub aws: AwsClients,
    pub config: ProviderConfig,
}

#[derive(Debug, Default)]
pub struct DthProvider;

/// The services an `endpoints {}` block can point elsewhere.
pub const ENDPOINT_SERVICES: [&str; 12] = [
    "autoscaling",
    "cloudwatch",
    "dynamodb",
    "ec2",
    "ecr",
    "iam",
    "logs",
    "s3",
    "secretsmanager",
    "sns",
    "sqs",
    "sts",
];

pub fn schema() -> Schema {
    let mut endpoints = Block::new().description(
        "Endpoint URLs per service, for VPC endpoints, FIPS endpoints or S3-compatible and local stand-ins. \
         The transfer's instances get the same overrides.",
    );
    for svc in ENDPOINT_SERVICES {
        let description = match svc {
            "logs" => "Endpoint URL for logs (CloudWatch Logs).".to_owned(),
            _ => format!("Endpoint URL for {svc}."),
        };
        endpoints = endpoints.attribute(Attribute::string(svc).optional().description(description));
    }
    let assume_role = Block::new()
        .description("A role to assume (through STS) for every call.")
        .attribute(
            Attribute::string("role_arn")
                .required()
                .description("ARN of the role."),
        )
        .attribute(
            Attribute::string("session_name")
                .optional()
                .description("Session name. Default: `dth`."),
        )
        .attribute(
            Attribute::string("external_id")
                .optional()
                .description("External id the role's trust policy requires."),
        );
    Schema::new(
        0,
        Block::new()
            .description("The dth provider provisions Data Transfer Hub transfers into AWS. Credentials come from the standard AWS chain (environment, shared files, `profile`, instance role), `access_key`/`secret_key`, or `assume_role`.")
            .attribute(Attribute::string("region").optional().description("Region of the control plane (queue, ledger, fleet). Default: `AWS_REGION`, then the profile's, then us-east-1."))
            .attribute(Attribute::string("profile").optional().description("Named profile of the shared config and credentials files."))
            .attribute(Attribute::string("access_key").optional().sensitive().description("Access key id; with `secret_key`. Prefer the credential chain."))
            .attribute(Attribute::string("secret_key").optional().sensitive().description("Secret access key; with `access_key`."))
            .attribute(Attribute::map("default_tags", Type::String).optional().description("Tags for every taggable resource, under each resource's own `tags`."))
            .attribute(Attribute::bool("s3_use_path_style").optional().description("Address S3 as `endpoint/bucket/key` (S3-compatible stores and local stand-ins)."))
            .attribute(Attribute::number("max_retries").optional().description(format!("Times an AWS call is retried when AWS throttles it, answers with a server error or the connection fails (the SDK's standard retry mode, with exponential backoff), as in the AWS provider. Default: {}.", crate::aws::DEFAULT_MAX_RETRIES)))
            .block(NestedBlock::single("assume_role", assume_role).description("Assume a role."))
            .block(NestedBlock::single("endpoints", endpoints).description("Endpoint overrides.")),
    )
}

fn config_of(v: &Value) -> Result<ProviderConfig, Diagnostics> {
    decode("provider configuration", config_json(v))
}

#[async_trait]
impl Provider for DthProvider {
    type Client = Client;

    fn type_name(&self) -> &'static str {
        "dth"
    }

    fn schema(&self) -> Schema {
        schema()
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        if !config.is_fully_known() {
            return;
        }
        match config_of(config) {
            Ok(cfg) => {
                problems_to_diagnostics("Invalid provider configuration", cfg.validate(), diags)
            }
            Err(d) => diags.extend(d.0),
        }
    }

    async fn configure(&self, config: &Value) -> Result<Client, Diagnostics> {
        if !config.is_fully_known() {
            return Err(Diagnostic::error(
                "Provider configuration not known",
                "The dth provider's configuration depends on values known only after apply; set it from \
                 variables or literals.",
            )
            .into());
        }
        let cfg = config_of(config)?;
        let aws = AwsClients::new(&cfg).await.map_err(|e| {
            Diagnostics::from(Diagnostic::error_at(
                super::resources::path_of(&e.attribute),
                "Invalid provider configuration",
                e.to_string(),
            ))
        })?;
        Ok(Client { aws, config: cfg })
    }

    fn data_sources(&self) -> Vec<Box<dyn DataSource<Client>>> {
        vec![Box::new(transfer_data::TransferData)]
    }

    fn resources(&self) -> Vec<Box<dyn Resource<Client>>> {
        vec![
            Box::new(s3_transfer::resource()),
            Box::new(ecr_transfer::resource()),
        ]
    }

    /// The SDK's orchestrator and signer print resolved credentials (the access key id) and canonical
    /// requests (the access key id in the config bag and the Authorization header) at debug and trace.
    fn quiet_log_targets(&self) -> &'static [&'static str] {
        dth_core::telemetry::SENSITIVE_TARGETS
    }
}

//! The registry docs under `docs/`, generated from the schemas, the example files under `examples/` and the
//! price table the cost estimate uses, so that none of them can drift from what the provider does.
//!
//! `provider/tests/docs.rs` fails when the files on disk differ from [`render`];
//! `DTH_UPDATE_DOCS=1 cargo test -p terraform-provider-dth --test docs` rewrites them.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::provider::DthProvider;
use crate::resources::{ecr_transfer, s3_transfer};
use crate::tfplugin::docs::{data_source_markdown, provider_markdown, resource_markdown};
use crate::tfplugin::{DataSource, Provider as _};
use crate::transfer::cost;

/// The provider block example (`docs/index.md`); it carries the `required_providers` block as well.
pub const PROVIDER_EXAMPLE: &str = include_str!("../../examples/provider/provider.tf");
/// The `dth_s3_transfer` example (`docs/resources/s3_transfer.md`).
pub const S3_TRANSFER_EXAMPLE: &str =
    include_str!("../../examples/resources/dth_s3_transfer/resource.tf");
/// How a `dth_s3_transfer` is imported.
pub const S3_TRANSFER_IMPORT: &str =
    include_str!("../../examples/resources/dth_s3_transfer/import.sh");

/// The data sources' examples by type name, each from `examples/data-sources/<type name>/data-source.tf`.
pub const DATA_SOURCE_EXAMPLES: &[(&str, &str)] = &[(
    "dth_transfer",
    include_str!("../../examples/data-sources/dth_transfer/data-source.tf"),
)];

/// The example files, relative to the repository root, with their text (for checks that parse or validate them).
pub fn examples() -> Vec<(PathBuf, &'static str)> {
    let mut examples = vec![
        ("examples/provider/provider.tf".into(), PROVIDER_EXAMPLE),
        (
            "examples/resources/dth_s3_transfer/resource.tf".into(),
            S3_TRANSFER_EXAMPLE,
        ),
        (
            "examples/resources/dth_s3_transfer/import.sh".into(),
            S3_TRANSFER_IMPORT,
        ),
        (
            "examples/resources/dth_ecr_transfer/resource.tf".into(),
            ECR_TRANSFER_EXAMPLE,
        ),
        (
            "examples/resources/dth_ecr_transfer/import.sh".into(),
            ECR_TRANSFER_IMPORT,
        ),
    ];
    for (type_name, example) in DATA_SOURCE_EXAMPLES {
        examples.push((
            format!("examples/data-sources/{type_name}/data-source.tf").into(),
            example,
        ));
    }
    examples
}

/// The `dth_ecr_transfer` example (`docs/resources/ecr_transfer.md`).
pub const ECR_TRANSFER_EXAMPLE: &str =
    include_str!("../../examples/resources/dth_ecr_transfer/resource.tf");
/// How a `dth_ecr_transfer` is imported.
pub const ECR_TRANSFER_IMPORT: &str =
    include_str!("../../examples/resources/dth_ecr_transfer/import.sh");

/// Every docs file: (path relative to the repository root, contents).
pub fn render() -> Vec<(PathBuf, String)> {
    let mut pages = vec![
        ("docs/index.md".into(), index_page()),
        ("docs/resources/s3_transfer.md".into(), s3_transfer_page()),
        ("docs/resources/ecr_transfer.md".into(), ecr_transfer_page()),
    ];
    let provider = DthProvider;
    pages.extend(data_source_pages(
        provider.type_name(),
        &provider.data_sources(),
        DATA_SOURCE_EXAMPLES,
    ));
    pages
}

/// A page per data source, `docs/data-sources/<type name without the provider prefix>.md`, with its example from
/// `examples` (by type name).
fn data_source_pages<C: Send + Sync + 'static>(
    provider_name: &str,
    data_sources: &[Box<dyn DataSource<C>>],
    examples: &[(&str, &str)],
) -> Vec<(PathBuf, String)> {
    let prefix = format!("{provider_name}_");
    data_sources
        .iter()
        .map(|data_source| {
            let type_name = data_source.type_name();
            let name = type_name.strip_prefix(&prefix).unwrap_or(type_name);
            let example = examples
                .iter()
                .find(|(n, _)| *n == type_name)
                .map_or("", |(_, e)| e);
            (
                format!("docs/data-sources/{name}.md").into(),
                data_source_markdown(type_name, &data_source.schema(), example),
            )
        })
        .collect()
}

fn index_page() -> String {
    provider_markdown("dth", &crate::provider::schema(), PROVIDER_EXAMPLE)
}

fn s3_transfer_page() -> String {
    let mut page = transfer_page(
        s3_transfer::TYPE_NAME,
        &s3_transfer::schema(),
        S3_TRANSFER_EXAMPLE,
        S3_TRANSFER_IMPORT,
        "photos",
    );
    page.push_str(
        "\n## Cost estimate\n\n\
         While a transfer is not in sync, `terraform plan` warns with the objects and bytes of the latest run \
         still to move, the dead-lettered jobs, and roughly what moving the rest will cost: data transfer out of \
         the source, requests at both ends, SQS and DynamoDB. The estimate is meant to tell dollars from \
         thousands of dollars, not to replace the bill.\n\n",
    );
    page.push_str(&cost::markdown_table());
    page
}

fn ecr_transfer_page() -> String {
    let mut page = transfer_page(
        ecr_transfer::TYPE_NAME,
        &ecr_transfer::schema(),
        ECR_TRANSFER_EXAMPLE,
        ECR_TRANSFER_IMPORT,
        "mirror",
    );
    page.push_str(
        "\n## Progress\n\n\
         While a transfer is not in sync, `terraform plan` warns with the images and bytes of the latest run \
         still to move, the failed images and the dead-lettered jobs, read with the same fixed number of AWS calls \
         as a `dth_s3_transfer`.\n",
    );
    page
}

/// A transfer resource's page: the schema, its example, and the sections every transfer shares (timeouts,
/// import).
fn transfer_page(
    type_name: &str,
    schema: &crate::tfplugin::Schema,
    example: &str,
    import: &str,
    id: &str,
) -> String {
    let mut page = resource_markdown(type_name, schema, example);
    page.push_str(
        "\n## Timeouts\n\n\
         The `timeouts` block sets how long each operation may take, as in other providers' \
         [operation timeouts](https://developer.hashicorp.com/terraform/language/resources/syntax#operation-timeouts):\n\n",
    );
    for (operation, default) in s3_transfer::TIMEOUTS {
        let _ = writeln!(page, "- `{operation}` - (Default `{default}`)");
    }
    page.push_str(
        "\nA create that times out deletes what it made before it reports the error; an update or delete that \
         times out keeps the prior state, and the next plan or destroy picks up where it stopped.\n",
    );
    let _ = write!(
        page,
        "\n## Import\n\n\
         In Terraform v1.5.0 and later, use an `import` block to import a transfer by its `name`:\n\n\
         ```terraform\n\
         import {{\n  to = {type_name}.example\n  id = \"{id}\"\n}}\n\
         ```\n\n\
         With `terraform import`:\n\n```shell\n"
    );
    page.push_str(import.trim_end());
    page.push_str(
        "\n```\n\n\
         Import rebuilds every argument from the transfer's AWS resources (the launch templates' user data, the \
         Auto Scaling groups, the schedule, the alarms and tags), so a configuration matching the transfer plans \
         no changes afterwards.\n",
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tfplugin::{Attribute, Block, Ctx, Diagnostics, Schema, Value};

    #[test]
    fn pages_carry_their_examples_and_the_price_table() {
        let pages = render();
        let page = |p: &str| {
            &pages
                .iter()
                .find(|(path, _)| path.as_os_str() == p)
                .unwrap()
                .1
        };
        assert!(page("docs/index.md").contains("provider \"dth\" {"));
        let transfer = page("docs/resources/s3_transfer.md");
        assert!(transfer.contains("resource \"dth_s3_transfer\" \"example\" {"));
        assert!(transfer.contains("## Argument Reference"));
        assert!(transfer.contains("## Attribute Reference"));
        assert!(transfer.contains("terraform import dth_s3_transfer.example photos"));
        assert!(transfer.contains("## Timeouts\n"));
        assert!(transfer.contains("- `create` - (Default `30m`)\n"));
        assert!(transfer.contains(&cost::markdown_table()));
        let images = page("docs/resources/ecr_transfer.md");
        assert!(images.contains("resource \"dth_ecr_transfer\" \"example\" {"));
        assert!(images.contains("terraform import dth_ecr_transfer.example mirror"));
        assert!(images.contains("to = dth_ecr_transfer.example"));
        assert!(images.contains("`images_found`"));
    }

    #[test]
    fn every_data_source_has_an_example() {
        for data_source in DthProvider.data_sources() {
            let name = data_source.type_name();
            assert!(
                DATA_SOURCE_EXAMPLES.iter().any(|(n, _)| *n == name),
                "{name} has no entry in DATA_SOURCE_EXAMPLES (examples/data-sources/{name}/data-source.tf)"
            );
        }
    }

    struct Lookup;

    #[async_trait::async_trait]
    impl DataSource<()> for Lookup {
        fn type_name(&self) -> &'static str {
            "dth_lookup"
        }

        fn schema(&self) -> Schema {
            Schema::new(
                0,
                Block::new()
                    .description("Looks a thing up.")
                    .attribute(Attribute::string("name").required())
                    .attribute(Attribute::string("arn").computed().description("Its ARN")),
            )
        }

        async fn read(&self, _ctx: &Ctx<()>, config: &Value) -> Result<Value, Diagnostics> {
            Ok(config.clone())
        }
    }

    #[test]
    fn data_sources_get_registry_pages() {
        let example = "data \"dth_lookup\" \"x\" {\n  name = \"a\"\n}\n";
        let data_sources: Vec<Box<dyn DataSource<()>>> = vec![Box::new(Lookup)];
        let pages = data_source_pages("dth", &data_sources, &[("dth_lookup", example)]);
        assert_eq!(pages.len(), 1);
        let (path, page) = &pages[0];
        assert_eq!(path, &PathBuf::from("docs/data-sources/lookup.md"));
        assert!(page.contains("# dth_lookup (Data Source)\n\nLooks a thing up.\n"));
        assert!(page.contains("```terraform\ndata \"dth_lookup\" \"x\" {"));
        assert!(page.contains("- `name` (String)\n"));
        assert!(page.contains("## Attribute Reference"));
        assert!(page.contains("- `arn` (String) Its ARN.\n"));
    }
}

//! The registry docs under `docs/`, generated from the schemas, the example files under `examples/` and the
//! price table the cost estimate uses, so that none of them can drift from what the provider does.
//!
//! `provider/tests/docs.rs` fails when the files on disk differ from [`render`];
//! `DTH_UPDATE_DOCS=1 cargo test -p terraform-provider-dth --test docs` rewrites them.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::resources::{ecr_transfer, s3_transfer};
use crate::tfplugin::docs::{provider_markdown, resource_markdown};
use crate::transfer::cost;

/// The provider block example (`docs/index.md`); it carries the `required_providers` block as well.
pub const PROVIDER_EXAMPLE: &str = include_str!("../../examples/provider/provider.tf");
/// The `dth_s3_transfer` example (`docs/resources/s3_transfer.md`).
pub const S3_TRANSFER_EXAMPLE: &str =
    include_str!("../../examples/resources/dth_s3_transfer/resource.tf");
/// How a `dth_s3_transfer` is imported.
pub const S3_TRANSFER_IMPORT: &str =
    include_str!("../../examples/resources/dth_s3_transfer/import.sh");

/// The example files, relative to the repository root, with their text (for checks that parse or validate them).
pub fn examples() -> Vec<(PathBuf, &'static str)> {
    vec![
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
    ]
}

/// The `dth_ecr_transfer` example (`docs/resources/ecr_transfer.md`).
pub const ECR_TRANSFER_EXAMPLE: &str =
    include_str!("../../examples/resources/dth_ecr_transfer/resource.tf");
/// How a `dth_ecr_transfer` is imported.
pub const ECR_TRANSFER_IMPORT: &str =
    include_str!("../../examples/resources/dth_ecr_transfer/import.sh");

/// Every docs file: (path relative to the repository root, contents).
pub fn render() -> Vec<(PathBuf, String)> {
    vec![
        ("docs/index.md".into(), index_page()),
        ("docs/resources/s3_transfer.md".into(), s3_transfer_page()),
        ("docs/resources/ecr_transfer.md".into(), ecr_transfer_page()),
    ]
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
}

//! Registry-style Markdown documentation generated from schemas, so the docs cannot drift from
//! what the provider accepts.

use std::fmt::Write as _;

use super::schema::{Attribute, Block, NestedBlock, Nesting, Schema};
use super::value::Type;

/// The doc page of a resource (`docs/resources/<name>.md`).
pub fn resource_markdown(type_name: &str, schema: &Schema, example: &str) -> String {
    page(
        &format!("{type_name} Resource"),
        &format!("{type_name} (Resource)"),
        schema,
        example,
    )
}

/// The doc page of a data source (`docs/data-sources/<name>.md`); an empty `example` leaves out
/// the Example Usage section.
pub fn data_source_markdown(type_name: &str, schema: &Schema, example: &str) -> String {
    page(
        &format!("{type_name} Data Source"),
        &format!("{type_name} (Data Source)"),
        schema,
        example,
    )
}

/// The doc page of the provider itself (`docs/index.md`).
pub fn provider_markdown(provider_name: &str, schema: &Schema, example: &str) -> String {
    page(
        &format!("Provider: {provider_name}"),
        &format!("{provider_name} Provider"),
        schema,
        example,
    )
}

fn page(page_title: &str, heading: &str, schema: &Schema, example: &str) -> String {
    let description = schema.block.description.trim();
    let mut out = String::new();
    out.push_str("---\n");
    let _ = writeln!(out, "page_title: {page_title:?}");
    out.push_str("description: |-\n");
    if let Some(line) = description.lines().next() {
        let _ = writeln!(out, "  {line}");
    }
    out.push_str("---\n\n");
    let _ = writeln!(out, "# {heading}\n");
    if !description.is_empty() {
        let _ = writeln!(out, "{description}\n");
    }
    if !example.trim().is_empty() {
        out.push_str("## Example Usage\n\n```terraform\n");
        out.push_str(example.trim_end());
        out.push_str("\n```\n\n");
    }
    out.push_str("## Argument Reference\n");
    let sensitive = sensitive_paths(&schema.block, "");
    if !sensitive.is_empty() {
        let names = sensitive
            .iter()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "\n~> **Note:** {names} {} sensitive: Terraform hides {} in plan and apply output, \
             but stores {} in the state in plain text. Protect the state accordingly.",
            if sensitive.len() == 1 { "is" } else { "are" },
            if sensitive.len() == 1 { "it" } else { "them" },
            if sensitive.len() == 1 { "it" } else { "them" },
        );
    }
    let mut nested = Vec::new();
    // Like the registry's pages: what the user writes under "Argument Reference", what the resource
    // exports under "Attribute Reference", after the nested blocks' sections.
    let mut exported = Vec::new();
    block_sections(
        &mut out,
        &schema.block,
        "",
        "###",
        &mut nested,
        Some(&mut exported),
    );
    while !nested.is_empty() {
        let pending = std::mem::take(&mut nested);
        for (anchor, block) in pending {
            let name = anchor.replace("--", ".");
            let _ = write!(
                out,
                "\n<a id=\"nestedblock--{anchor}\"></a>\n### Nested Schema for `{name}`\n"
            );
            if !block.block.description.trim().is_empty() {
                let _ = write!(out, "\n{}\n", block.block.description.trim());
            }
            block_sections(
                &mut out,
                &block.block,
                &anchor,
                "Heading",
                &mut nested,
                None,
            );
        }
    }
    if !exported.is_empty() {
        out.push_str(
            "\n## Attribute Reference\n\nIn addition to the arguments above, these attributes are exported:\n\n",
        );
        for line in exported {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// Required / Optional / Read-Only lists of one block; nested blocks are queued for their own
/// sections (breadth first, so a page reads top-down). Read-only attributes go to `exported`
/// when given, instead of a list of their own.
fn block_sections<'a>(
    out: &mut String,
    block: &'a Block,
    anchor_prefix: &str,
    heading: &str,
    nested: &mut Vec<(String, &'a NestedBlock)>,
    exported: Option<&mut Vec<String>>,
) {
    let mut required = Vec::new();
    let mut optional = Vec::new();
    let mut read_only = Vec::new();
    for attribute in &block.attributes {
        let line = attribute_line(attribute);
        if attribute.required {
            required.push(line);
        } else if attribute.optional {
            optional.push(line);
        } else {
            read_only.push(line);
        }
    }
    for nested_block in &block.blocks {
        let anchor = if anchor_prefix.is_empty() {
            nested_block.name.clone()
        } else {
            format!("{anchor_prefix}--{}", nested_block.name)
        };
        let line = block_line(nested_block, &anchor);
        if nested_block.is_required() {
            required.push(line);
        } else {
            optional.push(line);
        }
        nested.push((anchor, nested_block));
    }
    if let Some(exported) = exported {
        exported.append(&mut read_only);
    }
    for (title, lines) in [
        ("Required", required),
        ("Optional", optional),
        ("Read-Only", read_only),
    ] {
        if lines.is_empty() {
            continue;
        }
        if heading == "###" {
            let _ = write!(out, "\n### {title}\n\n");
        } else {
            let _ = write!(out, "\n{title}:\n\n");
        }
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
}

fn type_label(ty: &Type) -> String {
    match ty {
        Type::String => "String".into(),
        Type::Number => "Number".into(),
        Type::Bool => "Boolean".into(),
        Type::Dynamic => "Dynamic".into(),
        Type::List(element) => format!("List of {}", type_label(element)),
        Type::Set(element) => format!("Set of {}", type_label(element)),
        Type::Map(element) => format!("Map of {}", type_label(element)),
        Type::Object(_) => "Object".into(),
    }
}

fn sentence(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() || text.ends_with(['.', '!', '?', ':']) || text.ends_with("```") {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

fn attribute_line(attribute: &Attribute) -> String {
    let mut label = type_label(&attribute.ty);
    if attribute.sensitive {
        label.push_str(", Sensitive");
    }
    let mut parts = Vec::new();
    let description = sentence(&attribute.description);
    if !description.is_empty() {
        parts.push(description);
    }
    if let Some(allowed) = &attribute.one_of {
        let allowed = allowed
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ");
        parts.push(format!("One of {allowed}."));
    }
    if let Some(default) = &attribute.default {
        parts.push(format!("Defaults to `{}`.", default.to_json()));
    }
    if attribute.requires_replace {
        parts.push("Changing this forces a new resource.".into());
    }
    let mut line = format!("- `{}` ({label})", attribute.name);
    if !parts.is_empty() {
        line.push(' ');
        line.push_str(&parts.join(" "));
    }
    line
}

fn block_line(block: &NestedBlock, anchor: &str) -> String {
    let mut label = match block.nesting {
        Nesting::Single => "Block".to_owned(),
        Nesting::List => "Block List".to_owned(),
    };
    if block.min_items > 0 {
        let _ = write!(label, ", Min: {}", block.min_items);
    }
    if block.max_items > 0 {
        let _ = write!(label, ", Max: {}", block.max_items);
    }
    let mut line = format!("- `{}` ({label})", block.name);
    let summary = block.block.description.trim().lines().next().unwrap_or("");
    if !summary.is_empty() {
        line.push(' ');
        line.push_str(&sentence(summary));
    }
    if block.requires_replace {
        line.push_str(" Changing this forces a new resource.");
    }
    let _ = write!(
        line,
        " (see [below for nested schema](#nestedblock--{anchor}))"
    );
    line
}

fn sensitive_paths(block: &Block, prefix: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for attribute in &block.attributes {
        if attribute.sensitive {
            paths.push(format!("{prefix}{}", attribute.name));
        }
    }
    for nested in &block.blocks {
        paths.extend(sensitive_paths(
            &nested.block,
            &format!("{prefix}{}.", nested.name),
        ));
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tfplugin::schema::Attribute;

    fn schema() -> Schema {
        Schema::new(
            0,
            Block::new()
                .description("Copies a bucket.\n\nMore detail here.")
                .attribute(Attribute::string("id").computed().description("The id"))
                .attribute(
                    Attribute::string("name")
                        .required()
                        .requires_replace()
                        .description("Name of the thing"),
                )
                .attribute(Attribute::number("size").optional().default(1u64))
                .attribute(Attribute::string("secret").optional().sensitive())
                .attribute(Attribute::string("mode").optional().one_of(&["a", "b"]))
                .block(
                    NestedBlock::single(
                        "source",
                        Block::new()
                            .attribute(Attribute::string("bucket").required())
                            .attribute(Attribute::string("key").optional().sensitive()),
                    )
                    .min_items(1)
                    .max_items(1)
                    .description("Where data comes from"),
                ),
        )
    }

    #[test]
    fn resource_page_lists_attributes_by_kind() {
        let page = resource_markdown("toy_thing", &schema(), "resource \"toy_thing\" \"x\" {}\n");
        assert!(page.starts_with("---\npage_title: \"toy_thing Resource\"\n"));
        assert!(page.contains("# toy_thing (Resource)\n\nCopies a bucket.\n\nMore detail here.\n"));
        assert!(page.contains("```terraform\nresource \"toy_thing\" \"x\" {}\n```"));
        let required = page.find("### Required").unwrap();
        let optional = page.find("### Optional").unwrap();
        let nested = page.find("### Nested Schema for `source`").unwrap();
        let exported = page.find("## Attribute Reference").unwrap();
        assert!(required < optional && optional < nested && nested < exported);
        assert!(!page.contains("### Read-Only"));
        assert!(page.contains(
            "- `name` (String) Name of the thing. Changing this forces a new resource.\n"
        ));
        assert!(page.contains("- `size` (Number) Defaults to `1`.\n"));
        assert!(page.contains("- `secret` (String, Sensitive)\n"));
        assert!(page.contains("- `mode` (String) One of `a`, `b`.\n"));
        assert!(page.contains("- `id` (String) The id.\n"));
        assert!(page.contains(
            "- `source` (Block, Min: 1, Max: 1) Where data comes from. (see [below for nested schema](#nestedblock--source))"
        ));
        assert!(page.contains("### Nested Schema for `source`\n\nWhere data comes from\n\nRequired:\n\n- `bucket` (String)\n"));
        assert!(page.contains("`secret`, `source.key` are sensitive"));
        assert_eq!(
            page,
            resource_markdown("toy_thing", &schema(), "resource \"toy_thing\" \"x\" {}\n")
        );
    }

    #[test]
    fn data_source_page() {
        let example = "data \"toy_thing\" \"x\" {\n  name = \"a\"\n}\n";
        let page = data_source_markdown("toy_thing", &schema(), example);
        assert!(page.starts_with("---\npage_title: \"toy_thing Data Source\"\n"));
        assert!(page.contains("# toy_thing (Data Source)\n\nCopies a bucket."));
        assert!(page.contains("## Example Usage\n\n```terraform\ndata \"toy_thing\" \"x\" {\n"));
        assert!(page.contains("### Required\n"));
        assert!(page.contains("## Attribute Reference\n"));
        assert!(page.contains("- `id` (String) The id.\n"));
        let bare = data_source_markdown("toy_thing", &schema(), " \n");
        assert!(!bare.contains("## Example Usage"));
        assert!(bare.contains("More detail here.\n\n## Argument Reference\n"));
    }

    #[test]
    fn provider_page() {
        let page = provider_markdown("dth", &Schema::new(0, Block::new()), "provider \"dth\" {}");
        assert!(page.contains("# dth Provider\n"));
        assert!(!page.contains("### Required"));
        assert!(!page.contains("## Attribute Reference"));
    }
}

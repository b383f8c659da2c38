//! Conversions between the framework's types and the protocol's messages.

use super::diagnostics::{AttrPath, Diagnostic, Diagnostics, PathStep, Severity};
use super::proto::tfplugin6 as pb;
use super::schema::{Attribute, Block, NestedBlock, Nesting, Schema};
use super::value::{self, Type, Value};

pub(crate) fn path(path: &AttrPath) -> pb::AttributePath {
    use pb::attribute_path::step::Selector;
    let steps = path
        .steps()
        .iter()
        .map(|step| pb::attribute_path::Step {
            selector: Some(match step {
                PathStep::Attr(name) => Selector::AttributeName(name.clone()),
                PathStep::Index(index) => Selector::ElementKeyInt(*index),
                PathStep::Key(key) => Selector::ElementKeyString(key.clone()),
            }),
        })
        .collect();
    pb::AttributePath { steps }
}

pub(crate) fn diagnostic(diagnostic: Diagnostic) -> pb::Diagnostic {
    let severity = match diagnostic.severity {
        Severity::Error => pb::diagnostic::Severity::Error,
        Severity::Warning => pb::diagnostic::Severity::Warning,
    };
    pb::Diagnostic {
        severity: severity as i32,
        summary: diagnostic.summary,
        detail: diagnostic.detail,
        // An empty path would make terraform point at the whole resource block anyway.
        attribute: diagnostic.path.filter(|p| !p.is_whole()).map(|p| path(&p)),
    }
}

pub(crate) fn diagnostics(diagnostics: Diagnostics) -> Vec<pb::Diagnostic> {
    diagnostics.into_iter().map(diagnostic).collect()
}

pub(crate) fn schema(schema: &Schema) -> pb::Schema {
    pb::Schema {
        version: schema.version,
        block: Some(block(&schema.block, schema.version)),
    }
}

fn block(block: &Block, version: i64) -> pb::schema::Block {
    pb::schema::Block {
        version,
        attributes: block.attributes.iter().map(attribute).collect(),
        block_types: block.blocks.iter().map(nested_block).collect(),
        description: block.description.clone(),
        description_kind: pb::StringKind::Markdown as i32,
        deprecated: false,
    }
}

fn attribute(attribute: &Attribute) -> pb::schema::Attribute {
    pb::schema::Attribute {
        name: attribute.name.clone(),
        r#type: type_json(&attribute.ty),
        description: attribute.description.clone(),
        required: attribute.required,
        optional: attribute.optional,
        computed: attribute.computed,
        sensitive: attribute.sensitive,
        description_kind: pb::StringKind::Markdown as i32,
        deprecated: false,
    }
}

fn nested_block(nested: &NestedBlock) -> pb::schema::NestedBlock {
    use pb::schema::nested_block::NestingMode;
    let nesting = match nested.nesting {
        Nesting::Single => NestingMode::Single,
        Nesting::List => NestingMode::List,
    };
    pb::schema::NestedBlock {
        type_name: nested.name.clone(),
        block: Some(block(&nested.block, 0)),
        nesting: nesting as i32,
        min_items: nested.min_items,
        max_items: nested.max_items,
    }
}

fn type_json(ty: &Type) -> Vec<u8> {
    // Serializing a serde_json::Value cannot fail.
    serde_json::to_vec(&ty.to_json()).unwrap_or_default()
}

/// Decodes a DynamicValue (msgpack, or JSON where terraform uses it); absent means null.
pub(crate) fn decode(
    dynamic: Option<&pb::DynamicValue>,
    ty: &Type,
    what: &str,
) -> Result<Value, Diagnostics> {
    let Some(dynamic) = dynamic else {
        return Ok(Value::Null);
    };
    let decoded = if !dynamic.msgpack.is_empty() {
        value::decode(&dynamic.msgpack, ty)
    } else if !dynamic.json.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&dynamic.json) {
            Ok(json) => Value::from_json(&json, ty),
            Err(e) => {
                return Err(Diagnostic::error(
                    format!("Invalid {what}"),
                    format!("The {what} sent by terraform is not valid JSON: {e}"),
                )
                .into())
            }
        }
    } else {
        Ok(Value::Null)
    };
    decoded.map_err(|e| {
        Diagnostic::error(
            format!("Invalid {what}"),
            format!("The {what} sent by terraform does not match the schema: {e}"),
        )
        .into()
    })
}

pub(crate) fn encode(
    value: &Value,
    ty: &Type,
    what: &str,
) -> Result<pb::DynamicValue, Diagnostics> {
    match value::encode(value, ty) {
        Ok(msgpack) => Ok(pb::DynamicValue {
            msgpack,
            json: Vec::new(),
        }),
        Err(e) => Err(Diagnostic::error(
            "Provider produced an invalid value",
            format!("The {what} does not match the schema: {e}. This is a bug in the provider."),
        )
        .into()),
    }
}

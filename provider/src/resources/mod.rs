//! The dth resources, one file each. They translate between terraform values and the plain-Rust specs of
//! [`crate::transfer`]; neither protobuf nor AWS SDK types appear here.

pub mod ecr_transfer;
pub mod s3_transfer;
pub mod transfer;
pub mod transfer_data;

use crate::tfplugin::{AttrPath, Diagnostic, Diagnostics, Value};

/// The JSON of a configuration value with nulls dropped, so that serde's defaults fill what was left out.
pub(crate) fn config_json(v: &Value) -> serde_json::Value {
    fn strip(j: serde_json::Value) -> serde_json::Value {
        match j {
            serde_json::Value::Object(m) => serde_json::Value::Object(
                m.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, strip(v)))
                    .collect(),
            ),
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(strip).collect())
            }
            other => other,
        }
    }
    strip(v.to_json())
}

/// `fleet.max` or `filters.include[2]` as an attribute path.
pub(crate) fn path_of(dotted: &str) -> AttrPath {
    let mut path: Option<AttrPath> = None;
    for segment in dotted.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let p = match path {
            None => AttrPath::root(name),
            Some(p) => p.attr(name),
        };
        path = Some(match index {
            Some(i) => p.index(i),
            None => p,
        });
    }
    path.unwrap_or_else(AttrPath::whole)
}

/// (attribute path, message) problems as error diagnostics.
pub(crate) fn problems_to_diagnostics(
    summary: &str,
    problems: Vec<(String, String)>,
    diags: &mut Diagnostics,
) {
    for (path, message) in problems {
        diags.push(Diagnostic::error_at(
            path_of(&path),
            summary,
            format!("{path}: {message}"),
        ));
    }
}

/// A serde error while reading a value into a spec, naming the attribute it is about.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    json: serde_json::Value,
) -> Result<T, Diagnostics> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        let d = Diagnostic::error(format!("Invalid {what}"), format!("{path}: {}", e.inner()));
        let d = if path.is_empty() || path == "." {
            d
        } else {
            d.with_path(path_of(&path))
        };
        d.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_become_attribute_paths() {
        assert_eq!(path_of("fleet.max"), AttrPath::root("fleet").attr("max"));
        assert_eq!(
            path_of("filters.include[2]"),
            AttrPath::root("filters").attr("include").index(2)
        );
        assert_eq!(path_of("name"), AttrPath::root("name"));
    }

    #[test]
    fn nulls_are_dropped_for_serde_defaults() {
        let v = Value::object([
            ("a", Value::Null),
            (
                "b",
                Value::object([("c", Value::Null), ("d", Value::from(1u64))]),
            ),
        ]);
        assert_eq!(config_json(&v), serde_json::json!({"b": {"d": 1}}));
    }
}

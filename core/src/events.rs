//! S3 event notifications arriving on the job queue.

use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// `ObjectCreated:Put`, `ObjectRemoved:Delete`, ...
    pub name: String,
    pub bucket: String,
    /// Decoded (notifications carry keys form-URL-encoded).
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub version_id: Option<String>,
    pub sequencer: Option<String>,
}

impl EventRecord {
    pub fn is_created(&self) -> bool {
        self.name.starts_with("ObjectCreated:")
    }

    pub fn is_removed(&self) -> bool {
        self.name.starts_with("ObjectRemoved:")
    }
}

/// Keys in notifications are encoded like form values: `+` is a space, the rest percent-escaped.
pub fn decode_key(raw: &str) -> Result<String> {
    let plus = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidMessage,
                format!("event key {raw:?} is not UTF-8"),
                e,
            )
        })
}

pub fn parse_records(v: &serde_json::Value) -> Result<Vec<EventRecord>> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidMessage,
            format!("S3 event notification: {why}"),
        )
    };
    let records = v
        .get("Records")
        .and_then(|r| r.as_array())
        .ok_or_else(|| bad("Records is not a list"))?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let name = r
            .get("eventName")
            .and_then(|n| n.as_str())
            .ok_or_else(|| bad("a record has no eventName"))?;
        let s3 = r
            .get("s3")
            .ok_or_else(|| bad("a record has no s3 section"))?;
        let bucket = s3
            .pointer("/bucket/name")
            .and_then(|b| b.as_str())
            .unwrap_or_default();
        let o = s3
            .get("object")
            .ok_or_else(|| bad("a record has no s3.object"))?;
        let key = o
            .get("key")
            .and_then(|k| k.as_str())
            .ok_or_else(|| bad("a record has no s3.object.key"))?;
        let size = match o.get("size") {
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
            _ => 0,
        };
        let text = |f: &str| {
            o.get(f)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        out.push(EventRecord {
            name: name.to_owned(),
            bucket: bucket.to_owned(),
            key: decode_key(key)?,
            size,
            etag: text("eTag")
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned(),
            version_id: text("versionId").filter(|v| v != "null"),
            sequencer: text("sequencer"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_form_decoded() {
        assert_eq!(decode_key("a+b%2Bc%3D%25%C3%BC").unwrap(), "a b+c=%ü");
        assert!(decode_key("%FF").is_err());
    }

    #[test]
    fn records_parse() {
        let v = serde_json::json!({"Records": [{
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "x+y", "size": 5, "eTag": "abc", "sequencer": "0A"}}
        }]});
        let r = &parse_records(&v).unwrap()[0];
        assert!(r.is_created());
        assert_eq!(
            (r.key.as_str(), r.size, r.sequencer.as_deref()),
            ("x y", 5, Some("0A"))
        );
        assert!(parse_records(&serde_json::json!({"Records": [{"s3": {}}]})).is_err());
    }
}

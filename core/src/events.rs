//! S3 event notifications arriving on the job queue.

use crate::config::{MAX_KEY_BYTES, MAX_OBJECT_SIZE};
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

/// The records of a notification. A malformed record refuses the whole message, naming the field by its path
/// (`Records[0].s3.object.size`).
pub fn parse_records(v: &serde_json::Value) -> Result<Vec<EventRecord>> {
    let records = v
        .get("Records")
        .and_then(|r| r.as_array())
        .ok_or_else(|| invalid("Records: is not a list".into()))?;
    records
        .iter()
        .enumerate()
        .map(|(i, r)| record(r).map_err(|why| invalid(format!("Records[{i}].{why}"))))
        .collect()
}

fn invalid(why: String) -> Error {
    Error::new(
        ErrorKind::InvalidMessage,
        format!("S3 event notification: {why}"),
    )
}

/// One record; the error is the field's path within it and what is wrong.
fn record(r: &serde_json::Value) -> std::result::Result<EventRecord, String> {
    use serde_json::Value as J;
    let text = |v: &J, path: &str| -> std::result::Result<Option<String>, String> {
        match v.pointer(path) {
            None | Some(J::Null) => Ok(None),
            Some(J::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "{}: is {}, not a string",
                &path[1..].replace('/', "."),
                kind(other)
            )),
        }
    };
    let required = |path: &str| -> std::result::Result<String, String> {
        text(r, path)?.ok_or_else(|| format!("{}: is missing", &path[1..].replace('/', ".")))
    };
    let name = required("/eventName")?;
    if !r.get("s3").is_some_and(J::is_object) {
        return Err("s3: is missing or not an object".into());
    }
    let bucket = required("/s3/bucket/name")?;
    let raw = required("/s3/object/key")?;
    let key = decode_key(&raw).map_err(|e| format!("s3.object.key: {e}"))?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "s3.object.key: {} bytes decoded; a key has 1 to {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    // Removals carry no size.
    let size = match r.pointer("/s3/object/size") {
        None | Some(J::Null) => Some(0),
        Some(J::Number(n)) => n.as_u64(),
        Some(J::String(s)) => s.parse().ok(),
        Some(_) => None,
    }
    .filter(|n| *n <= MAX_OBJECT_SIZE)
    .ok_or_else(|| {
        format!(
            "s3.object.size: {} is not a size in bytes (0 to {MAX_OBJECT_SIZE})",
            r.pointer("/s3/object/size").unwrap_or(&J::Null)
        )
    })?;
    let sequencer = text(r, "/s3/object/sequencer")?.filter(|s| !s.is_empty());
    // Sequencers are compared as text, zero-padded: anything but hex could sort after every later event and
    // make them all look stale.
    if let Some(seq) = &sequencer {
        if seq.len() > 64 || !seq.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "s3.object.sequencer: {seq:?} is not up to 64 hexadecimal digits"
            ));
        }
    }
    Ok(EventRecord {
        name,
        bucket,
        key,
        size,
        etag: text(r, "/s3/object/eTag")?
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned(),
        version_id: text(r, "/s3/object/versionId")?.filter(|v| !v.is_empty() && v != "null"),
        sequencer,
    })
}

fn kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value as J;
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "a list",
        J::Object(_) => "an object",
    }
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

/// Issue 12's fuzzing of S3 event notifications: no input panics; a refused record names its field.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::fuzz::{apply, config, json, mutation, Mutation};

    fn valid() -> serde_json::Value {
        json!({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "src"}, "object": {"key": "a+b%2Fc", "size": 5, "eTag": "\"abc\"",
                "versionId": "v1", "sequencer": "0055AED6DCD90281E5"}}}]})
    }

    const FIELDS: &[&str] = &[
        "eventName",
        "s3",
        "s3/bucket",
        "s3/bucket/name",
        "s3/object",
        "s3/object/key",
        "s3/object/size",
        "s3/object/eTag",
        "s3/object/versionId",
        "s3/object/sequencer",
    ];

    /// `+` for a space, every other byte but letters and digits percent-escaped: how S3 writes keys.
    fn form_encode(key: &str) -> String {
        key.bytes()
            .map(|b| match b {
                b' ' => "+".to_owned(),
                b if b.is_ascii_alphanumeric() => (b as char).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn any_records_are_events_or_errors(records in json(), list in prop::collection::vec(json(), 0..4)) {
            for v in [json!({"Records": records}), json!({"Records": list})] {
                if let Err(e) = parse_records(&v) {
                    prop_assert!(e.to_string().contains("Records"), "{e}");
                }
                let _ = crate::job::parse_message(&v.to_string());
            }
        }

        #[test]
        fn a_mutated_record_is_refused_naming_its_field_or_sane(
            picks in prop::collection::vec((any::<prop::sample::Index>(), mutation()), 1..3),
        ) {
            let mut v = valid();
            let mut touched = vec![];
            for (pick, m) in &picks {
                let path = *pick.get(FIELDS);
                if apply(&mut v["Records"][0], path, m) {
                    touched.push((path.replace('/', "."), m.clone()));
                }
            }
            match parse_records(&v) {
                Ok(records) => {
                    let r = &records[0];
                    prop_assert!(!r.key.is_empty() && r.key.len() <= MAX_KEY_BYTES);
                    prop_assert!(r.size <= MAX_OBJECT_SIZE);
                    prop_assert!(r.sequencer.iter().all(|s| s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())));
                }
                Err(e) => {
                    let text = e.to_string();
                    let named = touched.iter().any(|(path, m)| {
                        matches!(m, Mutation::AddStray) || text.contains(&format!("Records[0].{path}"))
                    });
                    prop_assert!(named, "{text:?} names none of {touched:?}");
                }
            }
        }

        #[test]
        fn any_key_decodes_or_is_refused(raw in any::<String>()) {
            let _ = decode_key(&raw);
            let _ = decode_key(&raw.replace(|c: char| c.is_alphabetic(), "%"));
        }

        #[test]
        fn form_encoded_keys_decode_to_themselves(key in any::<String>()) {
            prop_assert_eq!(decode_key(&form_encode(&key)).unwrap(), key);
        }
    }
}

/// Defects the fuzzing of event notifications found; each test failed before its fix.
#[cfg(test)]
mod regressions {
    use serde_json::json;

    use super::*;

    fn with_object(object: serde_json::Value) -> serde_json::Value {
        json!({"Records": [{"eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "b"}, "object": object}}]})
    }

    fn refused(v: serde_json::Value, field: &str) {
        let e = parse_records(&v).expect_err(&v.to_string());
        assert!(e.to_string().contains(field), "{e} does not name {field}");
    }

    /// A negative, fractional, non-numeric or impossible size was read as 0 bytes (or u64::MAX accepted).
    #[test]
    fn a_size_that_is_not_a_size_is_refused() {
        for size in [
            json!(-1),
            json!(1.5),
            json!("ten"),
            json!(true),
            json!(u64::MAX),
            json!("18446744073709551615"),
        ] {
            refused(
                with_object(json!({"key": "k", "size": size})),
                "Records[0].s3.object.size",
            );
        }
        let ok = parse_records(&with_object(json!({"key": "k", "size": "12"}))).unwrap();
        assert_eq!(ok[0].size, 12);
        let removal = parse_records(&with_object(json!({"key": "k"}))).unwrap();
        assert_eq!(removal[0].size, 0);
    }

    /// A record without a bucket name was read as bucket "", which the worker takes for its own bucket.
    #[test]
    fn a_record_without_a_bucket_is_refused() {
        refused(
            json!({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "k"}}}]}),
            "Records[0].s3.bucket.name",
        );
    }

    /// A sequencer that is not hex sorts after every real one: later events of the key looked stale forever.
    #[test]
    fn a_sequencer_that_is_not_hex_is_refused() {
        refused(
            with_object(json!({"key": "k", "sequencer": "ZZZZ"})),
            "Records[0].s3.object.sequencer",
        );
        refused(
            with_object(json!({"key": "k", "sequencer": 12})),
            "Records[0].s3.object.sequencer",
        );
    }

    /// Errors said "a record has no eventName" without saying which record; an empty key was accepted.
    #[test]
    fn errors_name_the_record_and_field() {
        let good = json!({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}});
        refused(
            json!({"Records": [good, {"s3": {}}]}),
            "Records[1].eventName",
        );
        refused(with_object(json!({"key": ""})), "Records[0].s3.object.key");
        refused(
            with_object(json!({"key": "%FF"})),
            "Records[0].s3.object.key",
        );
    }
}

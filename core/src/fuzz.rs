//! What the property tests of the message, config and user data parsers share (issue 12's fuzzing): a
//! deterministic runner configuration and generators of hostile JSON.
//!
//! CI sees the same cases on every run: the seed is fixed and the case count modest. `PROPTEST_CASES=100000`
//! explores further, and `PROPTEST_RNG_SEED=<u64>` explores elsewhere; both are proptest's own variables.
//! Failures are not persisted to `proptest-regressions` files: a defect found becomes a named unit test.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// "dth fuzz".
const SEED: u64 = 0x6474_6820_6675_7a7a;

/// The runner configuration of one property: `cases` unless `PROPTEST_CASES` says otherwise.
pub(crate) fn config(cases: u32) -> Config {
    let env = Config::default();
    let set = |name: &str| std::env::var_os(name).is_some();
    Config {
        cases: if set("PROPTEST_CASES") {
            env.cases
        } else {
            cases
        },
        rng_seed: if set("PROPTEST_RNG_SEED") {
            env.rng_seed
        } else {
            RngSeed::Fixed(SEED)
        },
        failure_persistence: None,
        ..env
    }
}

/// Numbers where arithmetic goes wrong: zero, one, the edges of u32, u64 and i64, S3's limits, negatives and
/// fractions, and any u64.
pub(crate) fn number() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    const GIB: u64 = 1 << 30;
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(2),
            json!(-1),
            json!(1.5),
            json!(1e300),
            json!(-0.0),
            json!(u32::MAX),
            json!(u32::MAX as u64 + 1),
            json!(u64::MAX),
            json!(u64::MAX - 1),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(5 * GIB),
            json!(5 * GIB + 1),
            json!(5 * (1u64 << 20)),
            json!(10_000),
            json!(10_001),
            json!(50_000 * GIB),
            json!("5"),
        ]),
        any::<u64>().prop_map(|n| json!(n)),
        any::<u32>().prop_map(|n| json!(n)),
        (0u64..100_000).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
    ]
}

/// Strings that break naive code: empty, very long, control characters, quotes, odd unicode, escapes.
pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("k".repeat(2000)),
        Just("\u{0}\u{202e}\u{feff}\u{10ffff}".to_owned()),
        Just("a\nb\r\n\"'$`\\%+".to_owned()),
        any::<String>(),
        "[a-z0-9/._-]{1,40}",
    ]
}

/// Any JSON value, a few levels deep.
pub(crate) fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        number(),
        text().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One change to a JSON document: a field at `path` replaced, removed, or a stray field added beside it.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Set(serde_json::Value),
    Remove,
    AddStray,
}

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => prop_oneof![number(), json()].prop_map(Mutation::Set),
        1 => Just(Mutation::Remove),
        1 => Just(Mutation::AddStray),
    ]
}

/// The name of the stray field [`Mutation::AddStray`] adds.
pub(crate) const STRAY: &str = "zz_stray";

/// Apply `m` at `path` (object keys only, `/`-separated); false when the path is not there.
pub(crate) fn apply(doc: &mut serde_json::Value, path: &str, m: &Mutation) -> bool {
    let (parent, name) = match path.rsplit_once('/') {
        Some((p, n)) => (doc.pointer_mut(&format!("/{p}")), n),
        None => (Some(doc), path),
    };
    let Some(serde_json::Value::Object(fields)) = parent else {
        return false;
    };
    match m {
        Mutation::Set(v) => {
            fields.insert(name.to_owned(), v.clone());
        }
        Mutation::Remove => {
            fields.remove(name);
        }
        Mutation::AddStray => {
            fields.insert(STRAY.to_owned(), serde_json::Value::Bool(true));
        }
    }
    true
}

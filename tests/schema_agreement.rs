//! The JSON Schemas the binary carries (`docs/schemas/`, printed by `signup-worker schema`)
//! agree with the code. No servers.
//!
//! - The request schema against the worker's validator [`SignupRequest::parse`]: a property
//!   test generates events, valid ones and every kind of near miss, and requires both to give
//!   the same verdict on each, except where one of the [`NonSchemaRule`]s, the documented
//!   limits of what a schema can say, explains the difference. A table of named edges (years
//!   0001, 9999, 10000 with offsets, lengths at their bounds) runs the same check and pins the
//!   expected verdicts.
//! - The outcome schemas against [`OutcomeEvent`]'s constructors. The integration harness
//!   (`tests/it/helpers.rs`) also validates every outcome event a test captures from a real
//!   worker.
//!
//! The schemas are validated with format assertion on (`occurred_at` is `format: date-time`),
//! as the request schema's description tells publishers to.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Datelike, Utc};
use jsonschema::Validator;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Map, Value};
use signup_worker::amqp::OutcomeEvent;
use signup_worker::domain::{SignupRequest, MAX_BODY_BYTES};
use signup_worker::schema::Schema;
use uuid::Uuid;

/// Generated events per run; `SCHEMA_AGREEMENT_CASES` changes it. About 15,000 a second in
/// release on the 2-core CI machine.
const DEFAULT_CASES: u32 = 50_000;

/// serde_json's recursion limit: it refuses a 128th level of nesting as "not JSON".
const MAX_JSON_DEPTH: usize = 127;

fn validator(schema: Schema) -> Validator {
    let doc: Value = serde_json::from_str(schema.text()).expect("the schema is JSON");
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&doc)
        .unwrap_or_else(|e| panic!("{schema:?} is not a valid schema: {e}"))
}

/// What the worker checks that the request schema cannot say, or says differently. The
/// request schema's description lists the same rules for publishers (checked below).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NonSchemaRule {
    /// The 65,536-byte limit counts the body's bytes as sent. A schema sees a parsed value,
    /// and `maxLength` counts characters of one string, not bytes of the document.
    BodySize,
    /// serde_json refuses nesting deeper than 127 levels (its recursion limit), anywhere in
    /// the body, unknown fields included. JSON Schema has no notion of depth.
    NestingDepth,
    /// `version` must be written as an integer. JSON Schema compares numbers by value and
    /// counts 1.0 as an integer, so `1.0` and `1e0` pass `"type": "integer", "const": 1`;
    /// serde_json reads them as floats and the worker refuses them.
    VersionWrittenAsInteger,
    /// The years 0001 to 9999 apply to `occurred_at`'s UTC instant. A pattern sees the year as
    /// written; an offset can carry the instant across a year end (0001-01-01 with `+hh:mm`
    /// into year 0000, 9999-12-31 with `-hh:mm` into 10000, 0000-12-31 with `-hh:mm` into
    /// 0001). Expressible in principle only by enumerating times and offsets in a regex.
    OccurredAtUtcYear,
    /// chrono's RFC 3339 parser accepts more than `format: date-time`: a space for `T`, U+2212
    /// MINUS SIGN as the offset's sign, and a leap second (`:60`) at any minute. The worker
    /// tolerates these; the schema states RFC 3339 as publishers' validators check it. This
    /// rule only lets the worker accept more, never less.
    OccurredAtLenientSyntax,
}

impl NonSchemaRule {
    const ALL: [Self; 5] = [
        Self::BodySize,
        Self::NestingDepth,
        Self::VersionWrittenAsInteger,
        Self::OccurredAtUtcYear,
        Self::OccurredAtLenientSyntax,
    ];

    /// Does the rule concern this event? Judged from the event alone, not from the verdicts.
    fn applies(self, body: &[u8], event: &Value) -> bool {
        let occurred_at = event.get("occurred_at").and_then(Value::as_str);
        match self {
            Self::BodySize => body.len() > MAX_BODY_BYTES,
            Self::NestingDepth => depth(event) > MAX_JSON_DEPTH,
            Self::VersionWrittenAsInteger => event
                .get("version")
                .is_some_and(|v| v.is_f64() && v.as_f64() == Some(1.0)),
            Self::OccurredAtUtcYear => occurred_at.is_some_and(|s| {
                let Ok(t) = DateTime::parse_from_rfc3339(s) else {
                    return false;
                };
                let written: i32 = s[..4].parse().unwrap_or(-1);
                let utc = t.with_timezone(&Utc).year();
                (1..=9999).contains(&written) != (1..=9999).contains(&utc)
            }),
            Self::OccurredAtLenientSyntax => occurred_at.is_some_and(|s| {
                DateTime::parse_from_rfc3339(s).is_ok()
                    && (s.as_bytes()[10] == b' '
                        || s.contains('\u{2212}')
                        || s.get(17..19) == Some("60"))
            }),
        }
    }

    /// Whether the rule accounts for this disagreement between the verdicts.
    fn explains(self, worker_accepts: bool, schema_accepts: bool) -> bool {
        match self {
            Self::BodySize | Self::NestingDepth | Self::VersionWrittenAsInteger => {
                !worker_accepts && schema_accepts
            }
            Self::OccurredAtUtcYear => worker_accepts != schema_accepts,
            Self::OccurredAtLenientSyntax => worker_accepts && !schema_accepts,
        }
    }

    /// Words of the request schema's description that state the rule to publishers.
    fn documented_as(self) -> &'static str {
        match self {
            Self::BodySize => "at most 65,536 bytes",
            Self::NestingDepth => "at most 127 levels of nested arrays and objects",
            Self::VersionWrittenAsInteger => "1.0 and 1e0",
            Self::OccurredAtUtcYear => "apply to the UTC instant",
            Self::OccurredAtLenientSyntax => "U+2212 MINUS SIGN",
        }
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What one run saw, to prove it covered what it claims to.
#[derive(Debug, Default)]
struct Stats {
    cases: usize,
    both_accept: usize,
    both_refuse: usize,
    /// Disagreements, by the rule that explained them.
    explained: BTreeMap<NonSchemaRule, usize>,
    /// Cases by the kind of near miss they were built with.
    kinds: BTreeMap<&'static str, usize>,
}

/// The two verdicts on one event; a disagreement must be explained by a [`NonSchemaRule`].
fn verdicts(request: &Validator, event: &Value) -> Result<(bool, bool), String> {
    let body = serde_json::to_vec(event).expect("a Value serialises");
    let worker = SignupRequest::parse(&body);
    let schema = request.is_valid(event);
    let worker_accepts = worker.is_ok();
    if worker_accepts == schema {
        return Ok((worker_accepts, schema));
    }
    let rules: Vec<_> = NonSchemaRule::ALL
        .into_iter()
        .filter(|r| r.applies(&body, event) && r.explains(worker_accepts, schema))
        .collect();
    if rules.is_empty() {
        let errors: Vec<String> = request
            .iter_errors(event)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        return Err(format!(
            "the worker {} and the schema {} this event, and no documented non-schema rule \
             explains it.\n  worker: {worker:?}\n  schema errors: {errors:?}\n  event: {}",
            if worker_accepts { "accepts" } else { "refuses" },
            if schema { "accepts" } else { "refuses" },
            truncated(event)
        ));
    }
    Ok((worker_accepts, schema))
}

fn truncated(event: &Value) -> String {
    let text = event.to_string();
    if text.len() > 2_000 {
        let cut = (0..=2_000)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}... ({} bytes)", &text[..cut], text.len())
    } else {
        text
    }
}

fn record(stats: &mut Stats, body: &[u8], event: &Value, (worker, schema): (bool, bool)) {
    stats.cases += 1;
    match (worker, schema) {
        (true, true) => stats.both_accept += 1,
        (false, false) => stats.both_refuse += 1,
        _ => {
            for rule in NonSchemaRule::ALL {
                if rule.applies(body, event) && rule.explains(worker, schema) {
                    *stats.explained.entry(rule).or_default() += 1;
                }
            }
        }
    }
}

// ---- generators ----------------------------------------------------------------------------

/// White space by Rust's definition (what `trim` removes), then the characters ECMA-262's `\s`
/// adds (U+FEFF) or that look like white space but are neither (U+180E, U+200B).
const RUST_WHITE_SPACE: &[char] = &[
    '\t', '\n', '\u{b}', '\u{c}', '\r', ' ', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}',
    '\u{2005}', '\u{200a}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}',
];
const NEAR_WHITE_SPACE: &[char] = &['\u{feff}', '\u{180e}', '\u{200b}'];
/// Control characters (general category Cc) at the edges of their two ranges.
const CONTROLS: &[char] = &['\0', '\u{1}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}'];
/// Letters outside ASCII, astral characters (two UTF-16 units, one code point), a
/// non-character, and ASCII that the slug and e-mail rules care about.
const OTHERS: &[char] = &[
    'é',
    'ß',
    'Ω',
    '中',
    '𝒜',
    '😀',
    '\u{fffe}',
    '\u{10ffff}',
    '\u{a1}',
    'A',
    'Z',
    '_',
    '.',
    '@',
    '-',
    '0',
    '9',
    '"',
    '\\',
];

fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => select(RUST_WHITE_SPACE),
        1 => select(NEAR_WHITE_SPACE),
        2 => select(CONTROLS),
        3 => select(OTHERS),
        4 => proptest::char::range('a', 'z'),
        1 => any::<char>(),
    ]
}

fn text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(interesting_char(), len).prop_map(|cs| cs.into_iter().collect())
}

/// `s` with `c` put in at a position chosen by `at`.
fn insert(s: &str, at: Index, c: char) -> String {
    let chars: Vec<char> = s.chars().collect();
    let i = at.index(chars.len() + 1);
    chars[..i]
        .iter()
        .chain(std::iter::once(&c))
        .chain(&chars[i..])
        .collect()
}

/// `s` with one character replaced by `c`.
fn replace(s: &str, at: Index, c: char) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    if !chars.is_empty() {
        let i = at.index(chars.len());
        chars[i] = c;
    }
    chars.into_iter().collect()
}

/// A string field: mostly valid (so that a near miss elsewhere is often the event's only
/// defect, where a disagreement would show), sometimes a near miss of its own kind, sometimes a valid
/// value with one odd character put in or swapped in. Labelled for the coverage count.
fn field<S>(valid: S, near_misses: BoxedStrategy<String>) -> BoxedStrategy<(String, &'static str)>
where
    S: Strategy<Value = String> + Clone + 'static,
{
    prop_oneof![
        30 => valid.clone().prop_map(|s| (s, "valid")),
        3 => near_misses.prop_map(|s| (s, "near miss")),
        1 => (valid.clone(), any::<Index>(), interesting_char())
            .prop_map(|(s, at, c)| (insert(&s, at, c), "odd character inserted")),
        1 => (valid, any::<Index>(), interesting_char())
            .prop_map(|(s, at, c)| (replace(&s, at, c), "odd character swapped in")),
    ]
    .boxed()
}

fn slug() -> BoxedStrategy<(String, &'static str)> {
    let valid = "[a-z0-9][a-z0-9-]{1,61}[a-z0-9]";
    field(
        valid,
        prop_oneof![
            Just("a-b".to_string()),
            "[a-z0-9]{3}",
            "[a-z0-9]{63}",
            "[a-z0-9]{2}",
            "[a-z0-9]{64}",
            "[a-z0-9][a-z0-9-]{60,63}[a-z0-9]",
            "-[a-z0-9-]{1,10}",
            "[a-z0-9-]{1,10}-",
            "[a-zA-Z0-9_. -]{0,70}",
            text(0..70),
            // Non-ASCII whose bytes, not characters, fall in 3..=63.
            "[éa-z]{2,4}",
            "[a-z]{30}é[a-z]{30}",
        ]
        .boxed(),
    )
}

/// A character a business name can hold inside (no control characters).
fn name_char() -> impl Strategy<Value = char> + Clone {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        1 => Just(' '),
        1 => select(&['é', '中', '𝒜', '😀', '\u{a0}', '\u{2028}', '\u{feff}', '\u{200b}', '&'][..]),
    ]
}

fn padding() -> impl Strategy<Value = String> + Clone {
    proptest::collection::vec(select(RUST_WHITE_SPACE), 0..4)
        .prop_map(|cs| cs.into_iter().collect())
}

/// `len` characters that start and end with a letter.
fn name_core(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> + Clone {
    proptest::collection::vec(name_char(), len).prop_map(|mut cs| {
        if let Some(first) = cs.first_mut() {
            *first = 'A';
        }
        if let Some(last) = cs.last_mut() {
            *last = 'z';
        }
        cs.into_iter().collect()
    })
}

fn business_name() -> BoxedStrategy<(String, &'static str)> {
    let valid = (padding(), name_core(1..=60), padding()).prop_map(|(a, b, c)| a + &b + &c);
    field(
        valid,
        prop_oneof![
            // At the 200-character bound, padded or not.
            (padding(), name_core(198..=202), padding()).prop_map(|(a, b, c)| a + &b + &c),
            Just(String::new()),
            padding(),
            proptest::collection::vec(select(NEAR_WHITE_SPACE), 1..3)
                .prop_map(|cs| cs.into_iter().collect()),
            text(0..30),
            // A white-space control character inside the name, not at an end.
            (name_core(2..=10), select(&['\t', '\n', '\u{85}'][..])).prop_map(|(s, c)| format!(
                "{}{c}{}",
                &s[..1],
                &s[1..]
            )),
        ]
        .boxed(),
    )
}

fn owner_email() -> BoxedStrategy<(String, &'static str)> {
    let valid = "[a-z0-9._%+-]{1,20}@[a-z0-9-]{1,20}\\.[a-z]{2,6}";
    field(
        valid,
        prop_oneof![
            // At the 320-character bound, counted in characters: é is two bytes.
            (310..=322usize, select(&['x', 'é'][..])).prop_map(|(n, c)| {
                let local: String = std::iter::repeat_n(c, n - 10).collect();
                format!("{local}@domain.ex")
            }),
            (text(0..6), text(0..6)).prop_map(|(a, b)| format!("{a}@{b}")),
            "[a-z]{0,5}@[a-z]{0,5}@[a-z]{0,5}",
            "@[a-z]{1,5}",
            "[a-z]{1,5}@",
            "[a-z]{1,10}",
            text(0..30),
        ]
        .boxed(),
    )
}

fn event_id() -> BoxedStrategy<(String, &'static str)> {
    let form = (any::<u128>(), 0..6u8).prop_map(|(n, form)| {
        let id = Uuid::from_u128(n);
        match form {
            0 | 1 => id.hyphenated().to_string(),
            2 => id.hyphenated().to_string().to_uppercase(),
            3 => id.simple().to_string(),
            4 => id.braced().to_string(),
            _ => id.urn().to_string(),
        }
    });
    field(
        form,
        prop_oneof![
            (
                any::<u128>(),
                select(&["URN:UUID:", "Urn:uuid:", "urn:uuid", "uuid:"][..])
            )
                .prop_map(|(n, p)| format!("{p}{}", Uuid::from_u128(n).hyphenated())),
            any::<u128>().prop_map(|n| format!("{{{}}}", Uuid::from_u128(n).simple())),
            any::<u128>().prop_map(|n| format!("{{{}", Uuid::from_u128(n).hyphenated())),
            "[0-9a-f]{31}",
            "[0-9a-f]{33}",
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{11}",
            "[0-9a-f]{8}[0-9a-f-]{24}[0-9a-f]{4}",
            text(0..40),
        ]
        .boxed(),
    )
}

/// RFC 3339 date-times assembled from parts, each part sometimes out of range, with the edge
/// years and offsets weighted up.
fn occurred_at() -> BoxedStrategy<(String, &'static str)> {
    let year = prop_oneof![
        2 => select(&[0u32, 1, 2, 1969, 1970, 2026, 9998, 9999][..]).prop_map(|y| format!("{y:04}")),
        2 => (0..=9999u32).prop_map(|y| format!("{y:04}")),
        1 => select(&["10000", "999", "+2026", "2O26"][..]).prop_map(str::to_owned),
    ];
    let month = prop_oneof![6 => 1..=12u32, 1 => select(&[0u32, 13][..])];
    let day = prop_oneof![4 => 1..=28u32, 3 => 29..=31u32, 1 => select(&[0u32, 32][..])];
    let hour = prop_oneof![6 => 0..=23u32, 1 => Just(24u32)];
    let minute = prop_oneof![6 => 0..=59u32, 1 => Just(60u32)];
    let second = prop_oneof![6 => 0..=59u32, 1 => select(&[60u32, 61][..])];
    let fraction = prop_oneof![
        3 => Just(String::new()),
        2 => "\\.[0-9]{1,12}",
        1 => Just(".".to_string()),
    ];
    let separator = select(&["T", "T", "T", "t", " ", "_"][..]);
    let offset = prop_oneof![
        3 => Just("Z".to_string()),
        1 => Just("z".to_string()),
        4 => (select(&["+", "-", "\u{2212}"][..]), prop_oneof![5 => 0..=23u32, 1 => 24..=25u32], prop_oneof![5 => 0..=59u32, 1 => Just(60u32)])
            .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
        1 => select(&["", "+0100", "+01", "-00:00", "+00:00", "UTC"][..]).prop_map(str::to_owned),
    ];
    let assembled = (
        year, month, day, separator, hour, minute, second, fraction, offset,
    )
        .prop_map(|(y, mo, d, sep, h, mi, s, f, off)| {
            format!("{y}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{f}{off}")
        });
    // Within a day of the ends of the range, where the offset decides the UTC year.
    let edge = (
        select(&["0001-01-01", "9999-12-31", "0000-12-31", "10000-01-01"][..]),
        0..=23u32,
        0..=59u32,
        select(&["+", "-"][..]),
        0..=23u32,
        select(&[0u32, 1, 30, 59][..]),
    )
        .prop_map(|(date, h, mi, sign, oh, om)| {
            format!("{date}T{h:02}:{mi:02}:00{sign}{oh:02}:{om:02}")
        });
    let valid = (
        0..=9999u32,
        1..=12u32,
        1..=28u32,
        0..=23u32,
        0..=59u32,
        0..=59u32,
    )
        .prop_map(|(y, mo, d, h, mi, s)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"))
        .prop_filter("year 0000", |s| !s.starts_with("0000"));
    // What chrono tolerates beyond RFC 3339, on an otherwise valid date-time.
    let lenient = (valid.clone(), 0..3u8, 0..=23u32).prop_map(|(s, how, h)| match how {
        0 => s.replacen('T', " ", 1),
        1 => format!("{}60Z", &s[..17]),
        _ => format!("{}\u{2212}{h:02}:00", &s[..19]),
    });
    field(
        valid,
        prop_oneof![
            4 => assembled,
            3 => edge,
            2 => lenient,
            1 => select(&["2026-11-22", "12:00:00Z", "yesterday", ""][..]).prop_map(str::to_owned),
            1 => text(0..30),
        ]
        .boxed(),
    )
}

fn tier() -> BoxedStrategy<(String, &'static str)> {
    field(
        select(&["starter", "growth", "enterprise"][..]).prop_map(str::to_owned),
        select(
            &[
                "Starter",
                "platinum",
                "",
                " starter",
                "enterprise ",
                "GROWTH",
            ][..],
        )
        .prop_map(str::to_owned)
        .boxed(),
    )
}

fn event_type() -> BoxedStrategy<(String, &'static str)> {
    field(
        Just("tenant.signup.requested".to_string()),
        select(
            &[
                "tenant.signup.completed",
                "Tenant.signup.requested",
                "tenant.signup.requested ",
                "",
            ][..],
        )
        .prop_map(str::to_owned)
        .boxed(),
    )
}

fn version() -> BoxedStrategy<(Value, &'static str)> {
    prop_oneof![
        12 => Just((json!(1), "valid")),
        1 => Just((json!(1.0), "version 1.0")),
        1 => select(vec![json!(2), json!(0), json!(-1), json!("1"), json!(1.5), json!(u64::MAX)])
            .prop_map(|v| (v, "near miss")),
    ]
    .boxed()
}

fn is_demo() -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        Just(Some(json!(false))),
        Just(Some(json!(true))),
        Just(Some(Value::Null)),
        Just(None),
    ]
    .boxed()
}

/// Every place a field can be, for the structural mutations.
const PATHS: &[&str] = &[
    "event_id",
    "type",
    "version",
    "occurred_at",
    "tenant",
    "tenant.slug",
    "tenant.business_name",
    "tenant.owner_email",
    "tenant.tier",
    "tenant.is_demo",
];

#[derive(Debug, Clone)]
enum Mutation {
    Remove(&'static str),
    Null(&'static str),
    /// Replace the value with one of another type.
    Retype(&'static str, Value),
    /// An unknown member, at the top level or in `tenant`.
    Extra(bool, String, Value),
    /// An unknown member that brings the body to about this many bytes.
    PadTo(usize),
    /// An unknown member nested this deep (the top-level object counts one more).
    Deep(usize),
    /// The whole body another JSON type.
    NotAnObject(Value),
}

impl Mutation {
    fn label(&self) -> &'static str {
        match self {
            Self::Remove(_) => "field missing",
            Self::Null(_) => "field null",
            Self::Retype(..) => "field of another type",
            Self::Extra(..) => "unknown field",
            Self::PadTo(_) => "body size at the limit",
            Self::Deep(_) => "nesting depth at the limit",
            Self::NotAnObject(_) => "body not an object",
        }
    }

    fn apply(&self, event: &mut Value) {
        match self {
            Self::Remove(path) => {
                if let Some((obj, key)) = parent(event, path) {
                    obj.remove(key);
                }
            }
            Self::Null(path) => set(event, path, Value::Null),
            Self::Retype(path, v) => set(event, path, v.clone()),
            Self::Extra(in_tenant, key, v) => {
                let target = if *in_tenant {
                    event.get_mut("tenant")
                } else {
                    Some(&mut *event)
                };
                if let Some(Value::Object(obj)) = target {
                    // Never shadows a field of the contract: that is a retype, not an extra.
                    if !PATHS
                        .iter()
                        .any(|p| p.rsplit('.').next() == Some(key.as_str()))
                    {
                        obj.insert(key.clone(), v.clone());
                    }
                }
            }
            Self::PadTo(target) => {
                let len = serde_json::to_vec(event).map_or(0, |b| b.len());
                // `,"x-padding":""` is 15 bytes.
                let fill = target.saturating_sub(len + 15);
                if let Value::Object(obj) = event {
                    obj.insert("x-padding".into(), json!("p".repeat(fill)));
                }
            }
            Self::Deep(levels) => {
                let mut v = json!("bottom");
                for _ in 0..*levels {
                    v = json!([v]);
                }
                if let Value::Object(obj) = event {
                    obj.insert("x-deep".into(), v);
                }
            }
            Self::NotAnObject(v) => *event = v.clone(),
        }
    }
}

fn parent<'a>(
    event: &'a mut Value,
    path: &'a str,
) -> Option<(&'a mut Map<String, Value>, &'a str)> {
    match path.split_once('.') {
        Some((outer, key)) => Some((event.get_mut(outer)?.as_object_mut()?, key)),
        None => Some((event.as_object_mut()?, path)),
    }
}

fn set(event: &mut Value, path: &str, v: Value) {
    if let Some((obj, key)) = parent(event, path) {
        obj.insert(key.to_owned(), v);
    }
}

fn small_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text(0..10).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,5}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let path = select(PATHS);
    let other_type = select(vec![
        json!(1),
        json!(1.5),
        json!(true),
        json!("x"),
        json!([]),
        json!({}),
        json!(["acme"]),
        json!({"slug": "acme"}),
    ]);
    prop_oneof![
        3 => path.clone().prop_map(Mutation::Remove),
        2 => path.clone().prop_map(Mutation::Null),
        3 => (path, other_type).prop_map(|(p, v)| Mutation::Retype(p, v)),
        3 => (any::<bool>(), "[a-zA-Z_ .-]{1,12}", small_json())
            .prop_map(|(t, k, v)| Mutation::Extra(t, k, v)),
        1 => (MAX_BODY_BYTES - 3..=MAX_BODY_BYTES + 3).prop_map(Mutation::PadTo),
        1 => (MAX_JSON_DEPTH - 3..=MAX_JSON_DEPTH + 3).prop_map(Mutation::Deep),
        1 => select(vec![json!([]), json!("event"), json!(42), json!(null), json!([{"type": "tenant.signup.requested"}])])
            .prop_map(Mutation::NotAnObject),
    ]
}

/// An event and the kinds of near miss it was built with.
fn event() -> impl Strategy<Value = (Value, Vec<&'static str>)> {
    let fields = (
        event_id(),
        event_type(),
        version(),
        prop_oneof![4 => occurred_at().prop_map(Some), 1 => Just(None)],
        business_name(),
        slug(),
        owner_email(),
        tier(),
        is_demo(),
    );
    let mutations = prop_oneof![
        3 => Just(Vec::new()),
        2 => proptest::collection::vec(mutation(), 1..=2),
    ];
    (fields, mutations).prop_map(
        |((id, kind, version, at, name, slug, email, tier, demo), mutations)| {
            let mut labels = Vec::new();
            let mut note = |field: &'static str, label: &'static str| {
                if label.starts_with("odd character") {
                    labels.push(label);
                }
                if label != "valid" {
                    labels.push(match (field, label) {
                        (_, "version 1.0") => "version 1.0",
                        ("event_id", _) => "event_id near miss",
                        ("type", _) => "type near miss",
                        ("version", _) => "version near miss",
                        ("occurred_at", _) => "occurred_at near miss",
                        ("business_name", _) => "business_name near miss",
                        ("slug", _) => "slug near miss",
                        ("owner_email", _) => "owner_email near miss",
                        _ => "tier near miss",
                    });
                }
            };
            note("event_id", id.1);
            note("type", kind.1);
            note("version", version.1);
            note("business_name", name.1);
            note("slug", slug.1);
            note("owner_email", email.1);
            note("tier", tier.1);
            let mut tenant = json!({
                "business_name": name.0,
                "slug": slug.0,
                "owner_email": email.0,
                "tier": tier.0,
            });
            if let Some(d) = demo {
                tenant["is_demo"] = d;
            }
            let mut event = json!({
                "event_id": id.0,
                "type": kind.0,
                "version": version.0,
                "tenant": tenant,
            });
            if let Some((at, label)) = at {
                note("occurred_at", label);
                event["occurred_at"] = json!(at);
            }
            for m in &mutations {
                m.apply(&mut event);
                labels.push(m.label());
            }
            (event, labels)
        },
    )
}

// ---- the tests -----------------------------------------------------------------------------

#[test]
fn the_request_schema_and_the_validator_agree_on_generated_events() {
    let request = validator(Schema::Request);
    let cases = std::env::var("SCHEMA_AGREEMENT_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    // A new seed each run explores more over time; a failure names it for replaying.
    let seed: [u8; 32] = match std::env::var("SCHEMA_AGREEMENT_SEED") {
        Ok(hex) => decode_seed(&hex),
        Err(_) => rand::random(),
    };
    let seed_hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let stats = RefCell::new(Stats::default());
    let start = Instant::now();
    let result = runner.run(&event(), |(event, labels)| {
        let body = serde_json::to_vec(&event).expect("a Value serialises");
        let verdicts = verdicts(&request, &event).map_err(TestCaseError::fail)?;
        let mut stats = stats.borrow_mut();
        record(&mut stats, &body, &event, verdicts);
        for label in labels {
            *stats.kinds.entry(label).or_default() += 1;
        }
        Ok(())
    });
    let elapsed = start.elapsed();
    if let Err(e) = result {
        panic!("{e}\n(replay with SCHEMA_AGREEMENT_SEED={seed_hex})");
    }
    let stats = stats.into_inner();
    eprintln!(
        "schema agreement: {} generated events in {elapsed:.1?} (seed {seed_hex}): {} accepted \
         by both, {} refused by both, disagreements explained by non-schema rules: {:?}\n\
         kinds of near miss: {:?}",
        stats.cases, stats.both_accept, stats.both_refuse, stats.explained, stats.kinds
    );
    // The run covered what it claims to, so that a generator that went blind fails here.
    // (Shrinking re-runs cases, so counts may exceed `cases`; they never fall short.)
    let floor = (cases as usize / 200).max(1);
    assert!(stats.cases >= cases as usize);
    assert!(
        stats.both_accept >= floor * 10,
        "too few valid events: {stats:?}"
    );
    assert!(
        stats.both_refuse >= floor * 10,
        "too few invalid events: {stats:?}"
    );
    for kind in [
        "event_id near miss",
        "type near miss",
        "version near miss",
        "version 1.0",
        "occurred_at near miss",
        "business_name near miss",
        "slug near miss",
        "owner_email near miss",
        "tier near miss",
        "odd character inserted",
        "odd character swapped in",
        "field missing",
        "field null",
        "field of another type",
        "unknown field",
        "body size at the limit",
        "nesting depth at the limit",
        "body not an object",
    ] {
        let seen = stats.kinds.get(kind).copied().unwrap_or(0);
        assert!(
            seen >= floor,
            "only {seen} events of kind {kind:?}: {stats:?}"
        );
    }
    // Each exemption was needed: a rule that never explains anything is stale. (Only on runs
    // long enough for each to come up: a few in a thousand events need one.)
    for rule in NonSchemaRule::ALL.into_iter().filter(|_| cases >= 5_000) {
        assert!(
            stats.explained.get(&rule).copied().unwrap_or(0) > 0,
            "{rule:?} never explained a disagreement in {cases} events: is it still needed?"
        );
    }
}

fn decode_seed(hex: &str) -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = hex
            .get(2 * i..2 * i + 2)
            .and_then(|b| u8::from_str_radix(b, 16).ok())
            .expect("SCHEMA_AGREEMENT_SEED is 64 hexadecimal digits");
    }
    seed
}

/// A valid event, changed at one place.
fn valid_with(path: &str, v: Value) -> Value {
    let mut event = json!({
        "event_id": "7d0c8c52-3f3a-4e4e-9a55-2c1d0a3b9f10",
        "type": "tenant.signup.requested",
        "version": 1,
        "occurred_at": "2026-11-22T12:00:00Z",
        "tenant": {
            "business_name": "Acme Bakery",
            "slug": "acme-bakery",
            "owner_email": "owner@acme.example",
            "tier": "starter",
            "is_demo": false
        }
    });
    set(&mut event, path, v);
    event
}

/// One case of tests/schema_edges.json, the event it makes and the verdicts it expects.
fn named_edges() -> Vec<(String, Value, (bool, bool))> {
    let text = include_str!("schema_edges.json");
    let doc: Value = serde_json::from_str(text).expect("tests/schema_edges.json is JSON");
    let cases = doc["cases"].as_array().expect("a list of cases");
    cases
        .iter()
        .map(|case| {
            let field = case["field"].as_str().expect("field");
            let value = match case.get("repeat") {
                Some(r) => {
                    let part = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
                    let times = r["times"].as_u64().expect("times") as usize;
                    json!(format!(
                        "{}{}{}",
                        part("before"),
                        part("text").repeat(times),
                        part("after")
                    ))
                }
                None => case["value"].clone(),
            };
            let expected = (
                case["worker"].as_bool().expect("worker"),
                case["schema"].as_bool().expect("schema"),
            );
            (format!("{case}"), valid_with(field, value), expected)
        })
        .collect()
}

/// The edges, named: years 0000, 0001, 9999 and 10000 with offsets, lengths at their bounds,
/// the white space that Rust and ECMA-262 define differently, every UUID form. The same file
/// is checked with ajv by scripts/asyncapi-cli/ecma-agreement.cjs, so the patterns mean the
/// same in JavaScript's regular expressions as in Rust's.
#[test]
fn named_edges_get_the_expected_verdicts() {
    let request = validator(Schema::Request);
    let cases = named_edges();
    assert!(cases.len() > 50, "tests/schema_edges.json lost its cases");
    let mut wrong = Vec::new();
    for (name, event, expected) in cases {
        match verdicts(&request, &event) {
            Ok(got) if got == expected => {}
            Ok(got) => wrong.push(format!("{name}: got (worker, schema) = {got:?}")),
            Err(e) => wrong.push(format!("{name}: {e}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_text_level_rules_hold_where_a_schema_cannot_look() {
    let request = validator(Schema::Request);
    let valid = valid_with("tenant.slug", json!("acme-bakery"));
    // Body size: exactly at the limit is valid, one byte more is not; the schema sees the
    // same value either way.
    for (size, accepted) in [(MAX_BODY_BYTES, true), (MAX_BODY_BYTES + 1, false)] {
        let mut event = valid.clone();
        Mutation::PadTo(size).apply(&mut event);
        let body = serde_json::to_vec(&event).unwrap();
        assert_eq!(body.len(), size);
        assert_eq!(
            SignupRequest::parse(&body).is_ok(),
            accepted,
            "{size} bytes"
        );
        assert!(request.is_valid(&event));
    }
    // Nesting: 127 levels counting the top-level object are JSON to the worker, 128 are not.
    for (levels, accepted) in [(MAX_JSON_DEPTH - 1, true), (MAX_JSON_DEPTH, false)] {
        let mut event = valid.clone();
        Mutation::Deep(levels).apply(&mut event);
        assert_eq!(depth(&event), levels + 1);
        let body = serde_json::to_vec(&event).unwrap();
        assert_eq!(
            SignupRequest::parse(&body).is_ok(),
            accepted,
            "{levels} levels"
        );
        assert!(request.is_valid(&event));
    }
    // JSON that other parsers may read but serde_json does not; and the last of two members
    // with one name counts.
    let text = serde_json::to_string(&valid).unwrap();
    let body = |extra: &str| format!("{{{extra},{}", &text[1..]).into_bytes();
    assert!(SignupRequest::parse(&body(r#""big":1e400"#)).is_err());
    assert!(SignupRequest::parse(&body(r#""lone":"\ud800""#)).is_err());
    assert!(SignupRequest::parse(&body(r#""ok":"\ud83d\ude00""#)).is_ok());
    assert!(SignupRequest::parse(&body(r#""version":2"#)).is_ok());
    let last_wins = format!("{},\"version\":2}}", &text[..text.len() - 1]);
    assert!(SignupRequest::parse(last_wins.as_bytes()).is_err());
}

#[test]
fn the_request_schema_documents_every_non_schema_rule() {
    let doc: Value = serde_json::from_str(Schema::Request.text()).unwrap();
    let description = doc["description"].as_str().unwrap();
    for rule in NonSchemaRule::ALL {
        assert!(
            description.contains(rule.documented_as()),
            "the request schema's description does not state {rule:?} ({:?})",
            rule.documented_as()
        );
    }
    // Its own example is an event the worker accepts.
    let request = validator(Schema::Request);
    for example in doc["examples"].as_array().unwrap() {
        assert_eq!(verdicts(&request, example), Ok((true, true)), "{example}");
    }
}

#[test]
fn the_outcome_schemas_match_the_outcome_events() {
    let completed = validator(Schema::Completed);
    let rejected = validator(Schema::Rejected);
    let id = Uuid::new_v4().to_string();
    let body = |e: OutcomeEvent| -> Value { serde_json::from_slice(&e.body()).unwrap() };
    let good_completed = [
        body(OutcomeEvent::completed(&id, 1, "acme", Some(1))),
        body(OutcomeEvent::completed(
            &id,
            i64::MAX,
            &"a".repeat(63),
            None,
        )),
    ];
    let good_rejected = [
        body(OutcomeEvent::rejected(
            Some(id.clone()),
            Some("acme".into()),
            "slug_taken",
        )),
        body(OutcomeEvent::rejected(None, None, "invalid")),
        // An invalid event's salvaged ids are whatever the message held.
        body(OutcomeEvent::rejected(
            Some("message-1".into()),
            Some("Not A Slug!".into()),
            "invalid",
        )),
    ];
    for v in &good_completed {
        assert!(completed.is_valid(v), "{v}");
        assert!(!rejected.is_valid(v), "{v}");
    }
    for v in &good_rejected {
        assert!(rejected.is_valid(v), "{v}");
        assert!(!completed.is_valid(v), "{v}");
    }
    let with = |base: &Value, key: &str, v: Value| {
        let mut out = base.clone();
        out[key] = v;
        out
    };
    let done = &good_completed[0];
    let taken = &good_rejected[0];
    for bad in [
        with(done, "reason", json!("invalid")),
        with(done, "tenant_id", Value::Null),
        with(done, "tenant_id", json!(0)),
        with(done, "event_id", json!(id.to_uppercase())),
        with(done, "slug", json!("Acme")),
        with(done, "founding_member_number", json!(0)),
    ] {
        assert!(!completed.is_valid(&bad), "completed accepted {bad}");
    }
    for bad in [
        with(taken, "reason", json!("duplicate")),
        with(taken, "event_id", Value::Null),
        with(taken, "slug", Value::Null),
        with(taken, "tenant_id", json!(1)),
        with(taken, "founding_member_number", json!(1)),
    ] {
        assert!(!rejected.is_valid(&bad), "rejected accepted {bad}");
    }
}

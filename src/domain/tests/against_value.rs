//! The direct parser (`raw.rs`) against the parser it replaced, which built a
//! `serde_json::Value` first: on generated bodies, hostile ones included, both must give the
//! same request or the same error, down to serde_json's message.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use super::super::*;

/// The replaced implementation, kept verbatim as the oracle.
fn parse_via_value(body: &[u8]) -> Result<SignupRequest, InvalidEvent> {
    if body.len() > MAX_BODY_BYTES {
        return Err(InvalidEvent::TooLarge(body.len()));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| InvalidEvent::NotJson(e.to_string()))?;
    let root = value.as_object().ok_or(InvalidEvent::NotAnObject)?;

    let event_id = required_str(root, "event_id")?;
    let event_id =
        Uuid::parse_str(event_id).map_err(|_| InvalidEvent::bad("event_id", "must be a UUID"))?;
    if required_str(root, "type")? != SIGNUP_REQUESTED {
        return Err(InvalidEvent::bad("type", "must be tenant.signup.requested"));
    }
    match root.get("version") {
        None | Some(Value::Null) => return Err(InvalidEvent::MissingField("version")),
        Some(v) if v.as_i64() == Some(1) => {}
        Some(_) => return Err(InvalidEvent::bad("version", "must be the integer 1")),
    }
    let occurred_at = match root.get("occurred_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(OccurredAt::parse(s).map_err(|p| InvalidEvent::bad("occurred_at", p))?)
        }
        Some(_) => return Err(InvalidEvent::bad("occurred_at", "must be a string")),
    };
    let tenant = match root.get("tenant") {
        None | Some(Value::Null) => return Err(InvalidEvent::MissingField("tenant")),
        Some(Value::Object(t)) => t,
        Some(_) => return Err(InvalidEvent::bad("tenant", "must be an object")),
    };
    let slug = Slug::parse(required_str(tenant, "slug")?)
        .map_err(|p| InvalidEvent::bad("tenant.slug", p))?;
    let business_name = BusinessName::parse(required_str(tenant, "business_name")?)
        .map_err(|p| InvalidEvent::bad("tenant.business_name", p))?;
    let owner_email = OwnerEmail::parse(required_str(tenant, "owner_email")?)
        .map_err(|p| InvalidEvent::bad("tenant.owner_email", p))?;
    let tier = Tier::parse(required_str(tenant, "tier")?)
        .map_err(|p| InvalidEvent::bad("tenant.tier", p))?;
    let is_demo = match tenant.get("is_demo") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(InvalidEvent::bad("tenant.is_demo", "must be a boolean")),
    };
    Ok(SignupRequest {
        event_id,
        occurred_at,
        slug,
        business_name,
        owner_email,
        tier,
        is_demo,
    })
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, InvalidEvent> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(InvalidEvent::MissingField(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(InvalidEvent::bad(field, "must be a string")),
    }
}

/// JSON texts for one member's value: right, wrong in type, edge numbers, escapes, nesting.
const VALUES: &[&str] = &[
    "null",
    "true",
    "false",
    "1",
    "1.0",
    "-1",
    "0",
    "-0",
    "1e0",
    "1e400",
    "-1e400",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "[]",
    "{}",
    "[1,{\"a\":[null]}]",
    "{\"slug\":\"x\"}",
    "\"\"",
    "\"x\"",
    "\"tenant.signup.requested\"",
    "\"tenant.signup.requeste\\u0064\"",
    "\"7d0c8c52-3f3a-4e4e-9a55-2c1d0a3b9f10\"",
    "\"7D0C8C52-3F3A-4E4E-9A55-2C1D0A3B9F10\"",
    "\"2026-11-22T12:00:00Z\"",
    "\"2026-11-22T12:00:00+01:00\"",
    "\"10000-01-01T00:00:00Z\"",
    "\"acme-bakery\"",
    "\"Acme Bakery\"",
    "\"owner@acme.example\"",
    "\"starter\"",
    "\"growth\"",
    "\"\\ud800\"",
    "\"\\ud83d\\ude00\"",
    "\"a\\u0000b\"",
    "\"\\x\"",
    "\"caf\u{e9}\"",
    "01",
    "+1",
    "NaN",
    "\"unterminated",
];

const ROOT_KEYS: &[&str] = &[
    "event_id",
    "type",
    "version",
    "occurred_at",
    "tenant",
    "extra",
];
const TENANT_KEYS: &[&str] = &[
    "slug",
    "business_name",
    "owner_email",
    "tier",
    "is_demo",
    "x",
];

fn valid_tenant() -> Vec<(String, String)> {
    [
        ("business_name", "\"Acme Bakery\""),
        ("slug", "\"acme-bakery\""),
        ("owner_email", "\"owner@acme.example\""),
        ("tier", "\"starter\""),
        ("is_demo", "false"),
    ]
    .iter()
    .map(|(k, v)| (format!("\"{k}\""), (*v).to_owned()))
    .collect()
}

fn object(members: &[(String, String)]) -> String {
    let inner: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("{{{}}}", inner.join(","))
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// One member list changed at random: a value replaced, a key dropped, doubled, escaped or
/// added, junk inserted.
fn mutate(
    rng: &mut StdRng,
    members: &mut Vec<(String, String)>,
    keys: &[&str],
    tenant: Option<&str>,
) {
    for _ in 0..rng.random_range(0..4) {
        match rng.random_range(0..8) {
            0 if !members.is_empty() => {
                let i = rng.random_range(0..members.len());
                members[i].1 = VALUES[rng.random_range(0..VALUES.len())].to_owned();
            }
            1 if !members.is_empty() => {
                members.remove(rng.random_range(0..members.len()));
            }
            2 if !members.is_empty() => {
                // The same key again, later (last wins in a Value) or earlier.
                let i = rng.random_range(0..members.len());
                let copy = (
                    members[i].0.clone(),
                    VALUES[rng.random_range(0..VALUES.len())].to_owned(),
                );
                let at = rng.random_range(0..=members.len());
                members.insert(at, copy);
            }
            3 => {
                let key = keys[rng.random_range(0..keys.len())];
                let value = match tenant {
                    Some(t) if key == "tenant" => t.to_owned(),
                    _ => VALUES[rng.random_range(0..VALUES.len())].to_owned(),
                };
                members.push((format!("\"{key}\""), value));
            }
            4 if !members.is_empty() => {
                // A key spelled with an escape: the same key once decoded.
                let i = rng.random_range(0..members.len());
                members[i].0 = members[i]
                    .0
                    .replacen('_', "\\u005f", 1)
                    .replacen('e', "\\u0065", 1);
            }
            5 => {
                let depth = [1, 127, 128, 129, 200][rng.random_range(0..5)];
                members.push(("\"deep\"".into(), nested(depth)));
            }
            6 => members.push(("\"n\"".into(), "1e400".into())),
            _ => {}
        }
    }
}

fn body(rng: &mut StdRng) -> Vec<u8> {
    let mut tenant = valid_tenant();
    mutate(rng, &mut tenant, TENANT_KEYS, None);
    let tenant = object(&tenant);
    let mut root: Vec<(String, String)> = [
        ("event_id", "\"7d0c8c52-3f3a-4e4e-9a55-2c1d0a3b9f10\""),
        ("type", "\"tenant.signup.requested\""),
        ("version", "1"),
        ("occurred_at", "\"2026-11-22T12:00:00Z\""),
    ]
    .iter()
    .map(|(k, v)| (format!("\"{k}\""), (*v).to_owned()))
    .collect();
    root.push(("\"tenant\"".into(), tenant.clone()));
    mutate(rng, &mut root, ROOT_KEYS, Some(&tenant));
    let mut text = object(&root).into_bytes();
    match rng.random_range(0..12) {
        // Not an object at all.
        0 => {
            text = VALUES[rng.random_range(0..VALUES.len())]
                .as_bytes()
                .to_vec()
        }
        1 => text = format!("[{}]", String::from_utf8_lossy(&text)).into_bytes(),
        // Cut short, or with a stray byte (invalid UTF-8 included), or trailing text.
        2 => text.truncate(rng.random_range(0..text.len())),
        3 => {
            let i = rng.random_range(0..text.len());
            text[i] = [0xff, 0xc3, b'"', b'\\', b'}', b'\0'][rng.random_range(0..6)];
        }
        4 => text.extend_from_slice(b" x"),
        5 => text.extend_from_slice(b" \n\t "),
        _ => {}
    }
    text
}

#[test]
fn the_direct_parser_agrees_with_the_value_parser() {
    let mut rng = StdRng::seed_from_u64(0x5167_0b0d);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..30_000 {
        let body = body(&mut rng);
        let direct = SignupRequest::parse(&body);
        assert_eq!(
            direct,
            parse_via_value(&body),
            "body: {}",
            String::from_utf8_lossy(&body)
        );
        if direct.is_ok() {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // The generator must reach both sides, or the comparison proves little.
    assert!(
        accepted > 1_000 && refused > 10_000,
        "accepted {accepted}, refused {refused}"
    );
}

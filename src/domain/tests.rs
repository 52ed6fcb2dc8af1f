//! Unit tests of the event rules (contract section 3).

use super::*;
use serde_json::{json, Value};

mod against_value;

fn valid() -> Value {
    json!({
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
        },
        "unknown": {"ignored": true}
    })
}

fn parse(v: &Value) -> Result<SignupRequest, InvalidEvent> {
    SignupRequest::parse(&serde_json::to_vec(v).unwrap())
}

fn with(path: &[&str], new: Option<Value>) -> Value {
    let mut v = valid();
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = cur.get_mut(*p).unwrap();
    }
    let obj = cur.as_object_mut().unwrap();
    match new {
        Some(x) => obj.insert(path[path.len() - 1].to_string(), x),
        None => obj.remove(path[path.len() - 1]),
    };
    v
}

#[test]
fn the_contract_example_is_valid() {
    let r = parse(&valid()).unwrap();
    assert_eq!(r.slug.as_str(), "acme-bakery");
    assert_eq!(r.tier, Tier::Starter);
    assert!(!r.is_demo);
    assert!(r.occurred_at.is_some());
}

#[test]
fn is_demo_missing_or_null_means_false() {
    assert!(!parse(&with(&["tenant", "is_demo"], None)).unwrap().is_demo);
    assert!(
        !parse(&with(&["tenant", "is_demo"], Some(Value::Null)))
            .unwrap()
            .is_demo
    );
    assert!(
        parse(&with(&["tenant", "is_demo"], Some(json!(true))))
            .unwrap()
            .is_demo
    );
    assert!(parse(&with(&["tenant", "is_demo"], Some(json!("yes")))).is_err());
}

#[test]
fn occurred_at_is_optional_but_checked_when_present() {
    for absent in [None, Some(Value::Null)] {
        assert!(parse(&with(&["occurred_at"], absent))
            .unwrap()
            .occurred_at
            .is_none());
    }
    for ok in [
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59.999999999Z",
        "2026-11-22T12:00:00+05:30",
        "2016-12-31T23:59:60Z",
    ] {
        assert!(
            parse(&with(&["occurred_at"], Some(json!(ok)))).is_ok(),
            "{ok}"
        );
    }
    for bad in [
        json!("yesterday"),
        json!("2026-13-01T00:00:00Z"),
        json!("2026-11-22"),
        json!("0000-01-01T00:00:00Z"),
        json!("0001-01-01T00:00:00+00:01"),
        json!("9999-12-31T23:59:59-23:59"),
        json!(1_700_000_000),
        json!({"at": "2026-11-22T12:00:00Z"}),
    ] {
        let got = parse(&with(&["occurred_at"], Some(bad.clone())));
        assert!(
            matches!(
                got,
                Err(InvalidEvent::BadField {
                    field: "occurred_at",
                    ..
                })
            ),
            "{bad}: {got:?}"
        );
    }
}

#[test]
fn lengths_are_counted_in_characters_after_the_rules_of_section_3() {
    let padded = format!("{}{}", "x".repeat(190), " ".repeat(20));
    let r = parse(&with(&["tenant", "business_name"], Some(json!(padded)))).unwrap();
    assert_eq!(r.business_name.as_str().chars().count(), 190);
    assert!(parse(&with(
        &["tenant", "business_name"],
        Some(json!(format!("  {}  ", "y".repeat(201))))
    ))
    .is_err());
    // 320 characters, 638 bytes.
    let email = format!("{}@{}", "é".repeat(300), "d".repeat(19));
    assert_eq!(email.chars().count(), 320);
    assert!(parse(&with(&["tenant", "owner_email"], Some(json!(email)))).is_ok());
    let email = format!("{}@{}", "é".repeat(301), "d".repeat(19));
    assert!(parse(&with(&["tenant", "owner_email"], Some(json!(email)))).is_err());
}

#[test]
fn nul_and_control_characters_are_named_as_such() {
    for field in ["owner_email", "business_name"] {
        let got = parse(&with(&["tenant", field], Some(json!("a\u{0}b@c.example"))));
        assert!(
            matches!(
                got,
                Err(InvalidEvent::BadField {
                    problem: "must not hold control characters",
                    ..
                })
            ),
            "{field}: {got:?}"
        );
    }
}

#[test]
fn not_json_and_not_object() {
    assert!(matches!(
        SignupRequest::parse(b"{nope"),
        Err(InvalidEvent::NotJson(_))
    ));
    assert!(matches!(
        SignupRequest::parse(b""),
        Err(InvalidEvent::NotJson(_))
    ));
    assert_eq!(
        SignupRequest::parse(b"[1,2]"),
        Err(InvalidEvent::NotAnObject)
    );
}

#[test]
fn oversized_body_is_rejected_before_parsing() {
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    assert_eq!(
        SignupRequest::parse(&big),
        Err(InvalidEvent::TooLarge(MAX_BODY_BYTES + 1))
    );
}

#[test]
fn missing_fields_are_named() {
    for (path, name) in [
        (&["event_id"][..], "event_id"),
        (&["type"][..], "type"),
        (&["version"][..], "version"),
        (&["tenant"][..], "tenant"),
        (&["tenant", "slug"][..], "slug"),
        (&["tenant", "business_name"][..], "business_name"),
        (&["tenant", "owner_email"][..], "owner_email"),
        (&["tenant", "tier"][..], "tier"),
    ] {
        assert_eq!(
            parse(&with(path, None)),
            Err(InvalidEvent::MissingField(name)),
            "{path:?}"
        );
    }
}

#[test]
fn bad_values_are_rejected() {
    let cases: Vec<(&[&str], Value)> = vec![
        (&["event_id"], json!("not-a-uuid")),
        (&["event_id"], json!(42)),
        (&["type"], json!("tenant.signup.completed")),
        (&["version"], json!(2)),
        (&["version"], json!("1")),
        (&["version"], json!(1.5)),
        (&["tenant"], json!("acme")),
        (&["tenant", "slug"], json!("ab")),
        (&["tenant", "slug"], json!("Acme-Bakery")),
        (&["tenant", "slug"], json!("-acme")),
        (&["tenant", "slug"], json!("acme-")),
        (&["tenant", "slug"], json!("acme_bakery")),
        (&["tenant", "slug"], json!("a".repeat(64))),
        (&["tenant", "slug"], json!("ünï")),
        (&["tenant", "business_name"], json!("")),
        (&["tenant", "business_name"], json!("   ")),
        (&["tenant", "business_name"], json!("x".repeat(201))),
        (&["tenant", "owner_email"], json!("owner")),
        (&["tenant", "owner_email"], json!("@acme.example")),
        (&["tenant", "owner_email"], json!("owner@")),
        (&["tenant", "owner_email"], json!("a@b@c")),
        (&["tenant", "owner_email"], json!("own er@acme.example")),
        (&["tenant", "tier"], json!("Starter")),
        (&["tenant", "tier"], json!("platinum")),
    ];
    for (path, value) in cases {
        let got = parse(&with(path, Some(value.clone())));
        assert!(
            matches!(got, Err(InvalidEvent::BadField { .. })),
            "{path:?} = {value}: {got:?}"
        );
    }
}

#[test]
fn boundaries_that_are_valid() {
    assert!(parse(&with(&["tenant", "slug"], Some(json!("a".repeat(63))))).is_ok());
    assert!(parse(&with(&["tenant", "slug"], Some(json!("a-1")))).is_ok());
    assert!(parse(&with(
        &["tenant", "business_name"],
        Some(json!("é".repeat(200)))
    ))
    .is_ok());
    let padded = parse(&with(&["tenant", "business_name"], Some(json!("  Acme  ")))).unwrap();
    assert_eq!(padded.business_name.as_str(), "Acme");
}

#[test]
fn error_text_never_echoes_the_value() {
    let err = parse(&with(
        &["tenant", "owner_email"],
        Some(json!("secret-person")),
    ))
    .unwrap_err();
    assert!(!err.to_string().contains("secret-person"));
}

#[test]
fn signup_body_round_trips() {
    let id = Uuid::new_v4();
    let body = signup_body(
        id,
        "round-trip",
        "Round Trip",
        "a@b.example",
        Tier::Growth,
        true,
    );
    let r = SignupRequest::parse(&body).unwrap();
    assert_eq!((r.event_id, r.tier, r.is_demo), (id, Tier::Growth, true));
}

//! "Whatever the worker accepts as valid, PostgreSQL can store" (contract section 3), checked
//! the direct way: a seeded generator of nasty events, the real parser, and the real INSERT.
//! Deterministic (fixed seed), so a failure reproduces; `fuzz/` holds the open-ended fuzzer.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use signup_worker::domain::SignupRequest;
use signup_worker::store;

use crate::helpers::*;

/// Pieces that have broken text handling somewhere: NUL and other controls, Unicode white
/// space and line separators, non-characters, astral code points, quotes and escapes.
const PIECES: &[&str] = &[
    "a",
    "z",
    "0",
    "9",
    "-",
    "@",
    ".",
    " ",
    "\t",
    "\n",
    "\u{0}",
    "\u{1}",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{200b}",
    "\u{2028}",
    "\u{feff}",
    "\u{fffd}",
    "\u{ffff}",
    "\u{10ffff}",
    "é",
    "e\u{301}",
    "😀",
    "'",
    "\"",
    "\\",
    "%",
    "_",
    "A",
    "ß",
    "\u{202e}",
];

fn nasty(rng: &mut StdRng, max_pieces: usize) -> String {
    let n = rng.random_range(0..=max_pieces);
    (0..n)
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

fn timestamp(rng: &mut StdRng) -> Value {
    match rng.random_range(0..10) {
        0 => Value::Null,
        3..=6 => json!(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            rng.random_range(1..=9999),
            rng.random_range(1..=12),
            rng.random_range(1..=28),
            rng.random_range(0..24),
            rng.random_range(0..60),
            rng.random_range(0..=60)
        )),
        1 => json!(nasty(rng, 12)),
        2 => json!(rng.random_range(-10_i64..2_000_000_000)),
        _ => {
            let year = match rng.random_range(0..4) {
                0 => rng.random_range(0..=2),
                1 => rng.random_range(9998..=10_001),
                _ => rng.random_range(0..=10_000),
            };
            let frac = match rng.random_range(0..3) {
                0 => String::new(),
                _ => format!(
                    ".{}",
                    (0..rng.random_range(1..=12))
                        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                        .collect::<String>()
                ),
            };
            let zone = match rng.random_range(0..3) {
                0 => "Z".to_owned(),
                _ => format!(
                    "{}{:02}:{:02}",
                    if rng.random_bool(0.5) { '+' } else { '-' },
                    rng.random_range(0..=24),
                    rng.random_range(0..=60)
                ),
            };
            json!(format!(
                "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}{zone}",
                rng.random_range(0..=13),
                rng.random_range(0..=32),
                rng.random_range(0..=24),
                rng.random_range(0..=60),
                rng.random_range(0..=61),
            ))
        }
    }
}

fn generate(rng: &mut StdRng, i: usize) -> Vec<u8> {
    let slug = if rng.random_bool(0.8) {
        format!("s{i}-{}", "x".repeat(rng.random_range(0..60)))
    } else {
        format!("s{i}{}", nasty(rng, 4))
    };
    let name = match rng.random_range(0..5) {
        0 | 1 => format!("Business {i}"),
        2 => format!(
            "{}{}{}",
            " ".repeat(rng.random_range(0..30)),
            "n".repeat(rng.random_range(0..=205)),
            " ".repeat(rng.random_range(0..30))
        ),
        _ => nasty(rng, 220),
    };
    let email = match rng.random_range(0..4) {
        3 => format!("owner{i}@example.com"),
        0 => format!("{}@{}", nasty(rng, 170), nasty(rng, 170)),
        _ => format!("{}@x.example", "é".repeat(rng.random_range(0..=320))),
    };
    let tier = ["starter", "growth", "enterprise", "Starter", ""][rng.random_range(0..5)];
    let is_demo = [json!(true), json!(false), Value::Null][rng.random_range(0..3)].clone();
    let body = json!({
        "event_id": if rng.random_bool(0.97) { json!(uuid::Uuid::new_v4()) } else { json!(nasty(rng, 5)) },
        "type": "tenant.signup.requested",
        "version": 1,
        "occurred_at": timestamp(rng),
        "tenant": {
            "business_name": name,
            "slug": slug,
            "owner_email": email,
            "tier": tier,
            "is_demo": is_demo,
        }
    });
    let mut bytes = serde_json::to_vec(&body).unwrap();
    if rng.random_range(0..50) == 0 {
        // Damaged bytes: invalid UTF-8 must be refused by the JSON parser, not PostgreSQL.
        let at = rng.random_range(0..bytes.len());
        bytes[at] = 0xff;
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_the_parser_accepts_postgres_stores() {
    let env = TestEnv::new(1_000_000).await;
    let mut rng = StdRng::seed_from_u64(0x5167_6e75_7073);
    let accepted: Vec<SignupRequest> = (0..15_000)
        .filter_map(|i| SignupRequest::parse(&generate(&mut rng, i)).ok())
        .collect();
    assert!(
        accepted.len() >= 1_000,
        "the generator must reach the INSERT often enough to mean something: {}",
        accepted.len()
    );
    for chunk in accepted.chunks(50) {
        let refs: Vec<&SignupRequest> = chunk.iter().collect();
        if let Err(e) = store::store_batch(&env.db, &refs).await {
            // Find the culprit for the failure message.
            for r in &refs {
                if let Err(e) = store::store_batch(&env.db, &[*r]).await {
                    panic!("accepted but not storable: {r:?}: {e}");
                }
            }
            panic!("a batch failed: {e}");
        }
    }
    assert_eq!(env.tenant_count().await, accepted.len() as i64);
    env.assert_no_number_burned().await;
    env.cleanup().await;
}

/// The two ways of storing a batch (`store::Path`: one call when no two events share a key,
/// a transaction of four statements otherwise) resolve stored twins, taken slugs and new
/// events by the same rules, and draw one number per new tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_store_paths_resolve_twins_taken_slugs_and_new_events_alike() {
    use signup_worker::domain::{signup_body, Tier};
    use signup_worker::store::{Path, Resolution};
    use uuid::Uuid;

    let env = TestEnv::new(100).await;
    let req = |id: Uuid, slug: &str| {
        SignupRequest::parse(&signup_body(
            id,
            slug,
            "Name",
            "a@b.example",
            Tier::Starter,
            false,
        ))
        .unwrap()
    };
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    store::store_batch(&env.db, &[req(a, "path-a"), req(b, "path-b")])
        .await
        .unwrap();

    for (round, copy_inside) in [(1, false), (2, true)] {
        let new = Uuid::new_v4();
        let mut batch = vec![
            req(a, "path-a"),
            req(b, &format!("path-b-moved-{round}")),
            req(Uuid::new_v4(), "path-b"),
            req(new, &format!("path-new-{round}")),
        ];
        if copy_inside {
            batch.push(req(new, "path-new-copy"));
        }
        let expected_path = if copy_inside {
            Path::Transaction
        } else {
            Path::Distinct
        };
        assert_eq!(store::path(&batch), expected_path);

        let got = store::store_batch(&env.db, &batch).await.unwrap();
        assert_eq!(got.len(), batch.len(), "{expected_path:?}");
        let duplicate_of = |r: &Resolution| match r {
            Resolution::Duplicate {
                tenant,
                slug_differs,
            } => Some((tenant.event_id, *slug_differs)),
            _ => None,
        };
        assert_eq!(duplicate_of(&got[0]), Some((a, false)), "{expected_path:?}");
        assert_eq!(duplicate_of(&got[1]), Some((b, true)), "{expected_path:?}");
        assert_eq!(got[2], Resolution::SlugTaken, "{expected_path:?}");
        match &got[3] {
            Resolution::Created { tenant, exhausted } => {
                assert_eq!(tenant.event_id, new);
                assert_eq!(tenant.founding_member_number, Some(2 + round));
                assert!(!exhausted);
            }
            other => panic!("{expected_path:?}: not created: {other:?}"),
        }
        if copy_inside {
            assert_eq!(duplicate_of(&got[4]), Some((new, true)));
        }
    }
    assert_eq!(env.tenant_count().await, 4);
    assert_eq!(env.numbers_in_use().await, vec![1, 2, 3, 4]);
    env.assert_no_number_burned().await;
    env.cleanup().await;
}

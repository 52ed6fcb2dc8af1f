//! Feeds arbitrary bytes to the event parser. It must never panic, and whatever it accepts
//! must satisfy what PostgreSQL needs to store it (contract section 3): no NUL in text, lengths
//! in range, `occurred_at` in the years 0001 to 9999. The suite's `storable` test then proves
//! the same rules against the real INSERT.
#![no_main]

use chrono::Datelike;
use libfuzzer_sys::fuzz_target;
use signup_worker::domain::SignupRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = SignupRequest::parse(data) else {
        return;
    };
    let name = r.business_name.as_str();
    let email = r.owner_email.as_str();
    assert!(!name.contains('\0') && !email.contains('\0'));
    assert!((1..=200).contains(&name.chars().count()));
    assert_eq!(name, name.trim());
    assert!(email.chars().count() <= 320);
    assert!((3..=63).contains(&r.slug.as_str().len()));
    if let Some(at) = r.occurred_at {
        assert!((1..=9999).contains(&at.instant().year()));
    }
});

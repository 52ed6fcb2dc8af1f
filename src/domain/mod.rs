//! The signup event, parsed into domain types before anything touches the database.
//!
//! [`SignupRequest::parse`] is the only way to get a [`SignupRequest`], so every value the
//! store sees already satisfies contract section 3. Validation is a plain function: the unit
//! tests below reach it without servers.

use std::fmt;

use chrono::{DateTime, Datelike, Utc};
use uuid::Uuid;

use raw::Field;

mod raw;

/// Bodies above this size are invalid (contract section 3). Checked before parsing so that a
/// huge body costs no JSON work.
pub const MAX_BODY_BYTES: usize = 65_536;

/// The only event type this worker consumes; also its routing key.
pub const SIGNUP_REQUESTED: &str = "tenant.signup.requested";

/// Why an event is invalid. The `Display` text goes into the `x-signup-error` header of the
/// dead-lettered copy, so it names the field and the problem, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("body is {0} bytes, over the {MAX_BODY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` {problem}")]
    BadField {
        field: &'static str,
        problem: &'static str,
    },
}

impl InvalidEvent {
    fn bad(field: &'static str, problem: &'static str) -> Self {
        Self::BadField { field, problem }
    }
}

/// A tenant slug: 3 to 63 characters of `a-z`, `0-9` and `-`, not starting or ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slug(String);

impl Slug {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if !(3..=63).contains(&s.len()) {
            return Err("must be 3 to 63 characters");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("may hold only a-z, 0-9 and -");
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err("must not start or end with -");
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A business name: stored trimmed, and the trimmed value must be 1 to 200 characters (Unicode
/// scalar values, as PostgreSQL's `char_length` counts them) without control characters. The
/// length is counted after trimming because the trimmed value is what is stored: "Acme" padded
/// with spaces to 250 characters is the same business as "Acme".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessName(String);

impl BusinessName {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err("must not be blank");
        }
        if trimmed.chars().count() > 200 {
            return Err("must be 1 to 200 characters once trimmed");
        }
        // Control characters include U+0000, which PostgreSQL's `text` cannot hold at all.
        if trimmed.chars().any(char::is_control) {
            return Err("must not hold control characters");
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An owner e-mail address, checked for plausibility only: one `@`, both parts non-empty,
/// no white space or control characters, at most 320 characters (the SMTP limit, counted in
/// characters like every length of contract section 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerEmail(String);

impl OwnerEmail {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.chars().count() > 320 {
            return Err("must be at most 320 characters");
        }
        // Control characters first: U+0000 would otherwise be reported as white space, and
        // PostgreSQL's `text` cannot hold it.
        if s.chars().any(char::is_control) {
            return Err("must not hold control characters");
        }
        if s.chars().any(char::is_whitespace) {
            return Err("must not hold white space");
        }
        match s.split_once('@') {
            Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
            {
                Ok(Self(s.to_owned()))
            }
            _ => Err("must be an address with one @ and non-empty parts"),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// When the upstream says the signup happened: an RFC 3339 date-time whose UTC instant lies in
/// the years 0001 to 9999 (contract section 3). The range is what makes it storable: chrono
/// parses year 0000 and offsets that carry 9999-12-31 into year 10000, which PostgreSQL's
/// input routines refuse; inside the range every value is a valid `timestamptz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OccurredAt(DateTime<Utc>);

impl OccurredAt {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let t = DateTime::parse_from_rfc3339(s)
            .map_err(|_| "must be an RFC 3339 date-time")?
            .with_timezone(&Utc);
        if !(1..=9999).contains(&t.year()) {
            return Err("must lie in the years 0001 to 9999 (UTC)");
        }
        Ok(Self(t))
    }

    pub fn instant(self) -> DateTime<Utc> {
        self.0
    }
}

/// The pricing tier a tenant signs up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Starter,
    Growth,
    Enterprise,
}

impl Tier {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        match s {
            "starter" => Ok(Self::Starter),
            "growth" => Ok(Self::Growth),
            "enterprise" => Ok(Self::Enterprise),
            _ => Err("must be one of starter, growth, enterprise"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starter => "starter",
            Self::Growth => "growth",
            Self::Enterprise => "enterprise",
        }
    }
}

/// A valid `tenant.signup.requested` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignupRequest {
    pub event_id: Uuid,
    /// When the upstream says the signup happened; `None` when missing or null (unknown).
    pub occurred_at: Option<OccurredAt>,
    pub slug: Slug,
    pub business_name: BusinessName,
    pub owner_email: OwnerEmail,
    pub tier: Tier,
    pub is_demo: bool,
}

impl SignupRequest {
    /// Parses and validates a message body (contract section 3). Unknown fields are ignored.
    pub fn parse(body: &[u8]) -> Result<Self, InvalidEvent> {
        if body.len() > MAX_BODY_BYTES {
            return Err(InvalidEvent::TooLarge(body.len()));
        }
        let root = raw::parse(body).map_err(|e| InvalidEvent::NotJson(e.to_string()))?;
        let raw::Root::Object(root) = root else {
            return Err(InvalidEvent::NotAnObject);
        };

        let event_id = required_str(&root.event_id, "event_id")?;
        let event_id = Uuid::parse_str(event_id)
            .map_err(|_| InvalidEvent::bad("event_id", "must be a UUID"))?;
        if required_str(&root.kind, "type")? != SIGNUP_REQUESTED {
            return Err(InvalidEvent::bad("type", "must be tenant.signup.requested"));
        }
        match root.version {
            Field::Absent | Field::Null => return Err(InvalidEvent::MissingField("version")),
            Field::Int(Some(1)) => {}
            _ => return Err(InvalidEvent::bad("version", "must be the integer 1")),
        }
        let occurred_at = match &root.occurred_at {
            Field::Absent | Field::Null => None,
            Field::Str(s) => {
                Some(OccurredAt::parse(s).map_err(|p| InvalidEvent::bad("occurred_at", p))?)
            }
            _ => return Err(InvalidEvent::bad("occurred_at", "must be a string")),
        };

        let tenant = match &root.tenant {
            raw::TenantField::Absent | raw::TenantField::Null => {
                return Err(InvalidEvent::MissingField("tenant"))
            }
            raw::TenantField::Object(t) => t,
            raw::TenantField::Other => {
                return Err(InvalidEvent::bad("tenant", "must be an object"))
            }
        };
        let slug = Slug::parse(required_str(&tenant.slug, "slug")?)
            .map_err(|p| InvalidEvent::bad("tenant.slug", p))?;
        let business_name =
            BusinessName::parse(required_str(&tenant.business_name, "business_name")?)
                .map_err(|p| InvalidEvent::bad("tenant.business_name", p))?;
        let owner_email = OwnerEmail::parse(required_str(&tenant.owner_email, "owner_email")?)
            .map_err(|p| InvalidEvent::bad("tenant.owner_email", p))?;
        let tier = Tier::parse(required_str(&tenant.tier, "tier")?)
            .map_err(|p| InvalidEvent::bad("tenant.tier", p))?;
        let is_demo = match tenant.is_demo {
            Field::Absent | Field::Null => false,
            Field::Bool(b) => b,
            _ => return Err(InvalidEvent::bad("tenant.is_demo", "must be a boolean")),
        };

        Ok(Self {
            event_id,
            occurred_at,
            slug,
            business_name,
            owner_email,
            tier,
            is_demo,
        })
    }
}

fn required_str<'a>(value: &'a Field<'_>, field: &'static str) -> Result<&'a str, InvalidEvent> {
    match value {
        Field::Absent | Field::Null => Err(InvalidEvent::MissingField(field)),
        Field::Str(s) => Ok(s),
        _ => Err(InvalidEvent::bad(field, "must be a string")),
    }
}

/// Builds a valid event body; used by the publisher and the tests.
pub fn signup_body(
    event_id: Uuid,
    slug: &str,
    business_name: &str,
    owner_email: &str,
    tier: Tier,
    is_demo: bool,
) -> Vec<u8> {
    let body = serde_json::json!({
        "event_id": event_id,
        "type": SIGNUP_REQUESTED,
        "version": 1,
        "occurred_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "tenant": {
            "business_name": business_name,
            "slug": slug,
            "owner_email": owner_email,
            "tier": tier.as_str(),
            "is_demo": is_demo,
        }
    });
    serde_json::to_vec(&body).expect("a json! value always serialises")
}

#[cfg(test)]
mod tests;

/// From a body that failed to parse: its event id if it is a UUID, and its slug if it is a
/// string, for the rejected outcome of an invalid event. Bodies over the size limit are not
/// looked at.
pub fn salvage_ids(body: &[u8]) -> (Option<String>, Option<String>) {
    let json: Option<serde_json::Value> = if body.len() <= MAX_BODY_BYTES {
        serde_json::from_slice(body).ok()
    } else {
        None
    };
    let event_id = json
        .as_ref()
        .and_then(|v| v.get("event_id")?.as_str().map(str::to_owned))
        .filter(|s| Uuid::parse_str(s).is_ok());
    let slug = json
        .as_ref()
        .and_then(|v| v.get("tenant")?.get("slug")?.as_str().map(str::to_owned));
    (event_id, slug)
}

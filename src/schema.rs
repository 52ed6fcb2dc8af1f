//! The JSON Schemas (draft 2020-12) of the signup event and the two outcome events, as built
//! into the binary: `signup-worker schema [request|completed|rejected]` prints them, so a
//! publisher can take them from the image it runs.
//!
//! The files in `docs/schemas/` are the source; `docs/asyncapi.yaml` references the same
//! files. Embedding them with `include_str!` leaves one copy to keep right, and the tests hold
//! that copy to the code: `tests/schema_agreement.rs` checks the request schema against
//! [`crate::domain::SignupRequest::parse`] on generated events, and the integration harness
//! validates every outcome event it captures.

use clap::ValueEnum;

/// One of the schemas the binary carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Schema {
    /// The signup event publishers send (routing key `tenant.signup.requested`).
    Request,
    /// The outcome `tenant.signup.completed`.
    Completed,
    /// The outcome `tenant.signup.rejected`.
    Rejected,
}

impl Schema {
    pub const ALL: [Schema; 3] = [Schema::Request, Schema::Completed, Schema::Rejected];

    /// The schema document, as the file in `docs/schemas/` held it at build time.
    pub fn text(self) -> &'static str {
        match self {
            Self::Request => include_str!("../docs/schemas/tenant.signup.requested.json"),
            Self::Completed => include_str!("../docs/schemas/tenant.signup.completed.json"),
            Self::Rejected => include_str!("../docs/schemas/tenant.signup.rejected.json"),
        }
    }

    /// The routing key of the messages this schema describes.
    pub fn routing_key(self) -> &'static str {
        match self {
            Self::Request => crate::domain::SIGNUP_REQUESTED,
            Self::Completed => crate::amqp::COMPLETED,
            Self::Rejected => crate::amqp::REJECTED,
        }
    }

    /// The schema for an outcome event's `type`, if it is one.
    pub fn for_outcome(kind: &str) -> Option<Self> {
        [Self::Completed, Self::Rejected]
            .into_iter()
            .find(|s| s.routing_key() == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_schema_is_a_draft_2020_12_document_for_its_routing_key() {
        for schema in Schema::ALL {
            let doc: serde_json::Value = serde_json::from_str(schema.text())
                .unwrap_or_else(|e| panic!("{schema:?}: not JSON: {e}"));
            assert_eq!(
                doc["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{schema:?}"
            );
            assert_eq!(doc["title"], schema.routing_key(), "{schema:?}");
            assert_eq!(
                doc["properties"]["type"]["const"],
                schema.routing_key(),
                "{schema:?}"
            );
        }
        assert_eq!(
            Schema::for_outcome("tenant.signup.completed"),
            Some(Schema::Completed)
        );
        assert_eq!(Schema::for_outcome("tenant.signup.requested"), None);
    }
}

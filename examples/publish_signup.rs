//! Publishes one signup event for signup-worker, with publisher confirms.
//!
//!     cargo run --example publish_signup -- acme-bakery
//!
//! AMQP_URL and SIGNUP_EXCHANGE as for the worker. The worker declares the exchange.
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::json;
use uuid::Uuid;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let slug = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "acme-bakery".into());
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let exchange = std::env::var("SIGNUP_EXCHANGE").unwrap_or_else(|_| "tenant.events".into());

    // The event (docs/schemas/tenant.signup.requested.json). Keep event_id when you retry:
    // the worker stores each event_id once, so a republish is harmless.
    let event_id = Uuid::new_v4();
    let body = serde_json::to_vec(&json!({
        "event_id": event_id,
        "type": "tenant.signup.requested",
        "version": 1,
        "occurred_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "tenant": {
            "business_name": "Acme Bakery",
            "slug": slug,
            "owner_email": format!("owner@{slug}.example"),
            "tier": "starter",
            "is_demo": false
        }
    }))?;

    let connection = Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2) // persistent
        .with_message_id(event_id.to_string().into());
    let confirmation = channel
        .basic_publish(
            exchange.as_str().into(),
            "tenant.signup.requested".into(),
            // mandatory: a message no queue is bound for comes back instead of vanishing
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            properties,
        )
        .await?
        .await?;
    connection.close(200, "done".into()).await?;
    match confirmation {
        Confirmation::Ack(None) => {
            println!("published {event_id}");
            Ok(())
        }
        other => Err(format!("the broker did not take {event_id}: {other:?}").into()),
    }
}

//! RabbitMQ: connecting, the topology of contract section 2, confirmed publishing, and the
//! outcome events of contract section 4. The copies the worker publishes itself (dead
//! letters, retries) are in [`copies`].

use std::borrow::Cow;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use serde::Serialize;

use crate::domain::SIGNUP_REQUESTED;

mod copies;
mod endpoint;

pub use copies::{copy_properties, int_header, prior_attempts, HEADERS_DROPPED_HEADER};
pub use endpoint::{connect, Endpoints, Unreachable, CONNECT_TIMEOUT};

pub const COMPLETED: &str = "tenant.signup.completed";
pub const REJECTED: &str = "tenant.signup.rejected";

/// Header carrying why a message was dead-lettered (contract section 4).
pub const ERROR_HEADER: &str = "x-signup-error";
/// Header counting the deliveries of an event that ended in a transient error. Written for
/// people reading the DLQ; read back only from copies that came through our retry queue
/// (see [`prior_attempts`]).
pub const ATTEMPTS_HEADER: &str = "x-signup-attempts";
/// Quorum queues drop or dead-letter a message returned more often than this. It is a guard
/// against a message that kills its consumer again and again, not our retry policy
/// (`MAX_DELIVERIES`, counted in [`ATTEMPTS_HEADER`]); it is high because every broker
/// connection loss also counts one return. RabbitMQ 3.10 sets no default. A constant, not a
/// setting: every replica and publisher must declare the queue with identical arguments.
pub const QUORUM_DELIVERY_LIMIT: i64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Quorum,
    Classic,
}

impl QueueType {
    pub const ALL: [QueueType; 2] = [QueueType::Quorum, QueueType::Classic];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// Names of the exchange and queues (contract section 2).
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub queue_type: QueueType,
}

impl Topology {
    pub fn retry_queue(&self) -> String {
        format!("{}.retry", self.queue)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    /// Declares exchange, queues and binding. Idempotent; `run` and `publish` both call it so
    /// that events published before any worker started wait in the queue.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;

        // Only a message past the quorum delivery limit takes this path; everything we
        // dead-letter ourselves is published to the DLQ with its reason header.
        let mut main = self.dead_lettering_to(&self.dead_letter_queue());
        if self.queue_type == QueueType::Quorum {
            main.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(QUORUM_DELIVERY_LIMIT),
            );
        }
        self.declare_queue(channel, &self.queue, main).await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                SIGNUP_REQUESTED.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        // Messages wait here for their per-message expiration (the retry backoff), then are
        // dead-lettered straight back onto the main queue through the default exchange.
        let retry = self.dead_lettering_to(&self.queue);
        self.declare_queue(channel, &self.retry_queue(), retry)
            .await?;
        self.declare_queue(channel, &self.dead_letter_queue(), self.queue_args())
            .await?;
        Ok(())
    }

    /// Queue arguments that dead-letter through the default exchange straight into `queue`.
    fn dead_lettering_to(&self, queue: &str) -> FieldTable {
        let mut args = self.queue_args();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.into()),
        );
        args
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(self.queue_type.as_str().into()),
        );
        args
    }

    async fn declare_queue(
        &self,
        channel: &Channel,
        name: &str,
        args: FieldTable,
    ) -> lapin::Result<()> {
        channel
            .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
            .await?;
        Ok(())
    }
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> lapin::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Properties of a persistent JSON message.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// Sends one message on a confirm channel; await the returned confirm (see [`confirmed`]).
/// `mandatory` makes an unroutable message come back as a failure instead of vanishing.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> lapin::Result<PublisherConfirm> {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            body,
            properties,
        )
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the broker could not route the message to {0}")]
    Unroutable(String),
}

/// Waits for a confirm and turns nacks and returns into errors.
pub async fn confirmed(confirm: PublisherConfirm, target: &str) -> Result<(), PublishError> {
    match confirm.await? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(target.to_owned())),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}

/// One message to publish with [`publish_all`].
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: Cow<'a, [u8]>,
    pub properties: BasicProperties,
    pub mandatory: bool,
    /// Named in the error if the broker cannot route it.
    pub target: &'a str,
}

/// Publishes the messages in order and waits until the broker has confirmed every one.
///
/// All at once, not one after the other: lapin resolves each publish only once its I/O thread
/// has written the frames, so awaiting them in turn costs two thread wake-ups per message.
/// Started together (their first polls run in order, so the messages go out in this order),
/// the I/O thread writes the whole batch in a few syscalls.
pub async fn publish_all(
    channel: &Channel,
    messages: Vec<Outgoing<'_>>,
) -> Result<(), PublishError> {
    let confirms = futures_util::future::try_join_all(messages.into_iter().map(|m| async move {
        let confirm = publish(
            channel,
            m.exchange,
            m.routing_key,
            &m.body,
            m.properties,
            m.mandatory,
        )
        .await?;
        Ok::<_, lapin::Error>((confirm, m.target))
    }))
    .await?;
    for (confirm, target) in confirms {
        confirmed(confirm, target).await?;
    }
    Ok(())
}

/// The body of `tenant.signup.completed` / `tenant.signup.rejected` (contract section 4).
/// Built only from stored or parsed values, so every repeat for one event is identical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OutcomeEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub event_id: Option<String>,
    pub tenant_id: Option<i64>,
    pub slug: Option<String>,
    pub founding_member_number: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

impl OutcomeEvent {
    pub fn completed(event_id: &str, tenant_id: i64, slug: &str, number: Option<i32>) -> Self {
        Self {
            kind: COMPLETED.into(),
            event_id: Some(event_id.into()),
            tenant_id: Some(tenant_id),
            slug: Some(slug.into()),
            founding_member_number: number,
            reason: None,
        }
    }

    pub fn rejected(event_id: Option<String>, slug: Option<String>, reason: &str) -> Self {
        Self {
            kind: REJECTED.into(),
            event_id,
            tenant_id: None,
            slug,
            founding_member_number: None,
            reason: Some(reason.into()),
        }
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an outcome event always serialises")
    }

    pub fn properties(&self) -> BasicProperties {
        let props = json_properties();
        match &self.event_id {
            Some(id) => props.with_correlation_id(ShortString::from(id.as_str())),
            None => props,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_bodies_follow_the_contract() {
        let done = OutcomeEvent::completed("e1", 7, "acme", Some(3));
        let v: serde_json::Value = serde_json::from_slice(&done.body()).unwrap();
        assert_eq!(v["type"], COMPLETED);
        assert_eq!(v["tenant_id"], 7);
        assert_eq!(v["founding_member_number"], 3);
        assert!(v.get("reason").is_none());
        let no = OutcomeEvent::rejected(None, None, "invalid");
        let v: serde_json::Value = serde_json::from_slice(&no.body()).unwrap();
        assert_eq!(v["type"], REJECTED);
        assert!(v["event_id"].is_null() && v["tenant_id"].is_null() && v["slug"].is_null());
        assert_eq!(v["reason"], "invalid");
    }
}

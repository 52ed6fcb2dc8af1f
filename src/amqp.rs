//! RabbitMQ: connecting, the topology of contract section 2, confirmed publishing, and the
//! outcome events of contract section 4.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use serde::Serialize;

use crate::domain::SIGNUP_REQUESTED;

/// Bounds each one-shot command's wait on an unreachable broker well under 30 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub const COMPLETED: &str = "tenant.signup.completed";
pub const REJECTED: &str = "tenant.signup.rejected";

/// Header carrying why a message was dead-lettered (contract section 4).
pub const ERROR_HEADER: &str = "x-signup-error";
/// Header counting the deliveries of an event that ended in a transient error. Written for
/// people reading the DLQ; read back only from copies that came through our retry queue
/// (see [`prior_attempts`]).
pub const ATTEMPTS_HEADER: &str = "x-signup-attempts";
/// Set on a copy (dead letter or retry) whose publisher headers had to be dropped to fit the
/// frame: the encoded size of what was dropped, in bytes.
pub const HEADERS_DROPPED_HEADER: &str = "x-signup-headers-dropped";
/// The broker's record of each time it dead-lettered the message.
const X_DEATH: &str = "x-death";
/// Room left in a content-header frame for everything but the headers: the frame and
/// content-header overhead (22 bytes) plus 13 other properties, each a short string of at
/// most 255 bytes or a small number.
const NON_HEADER_PROPERTIES_ROOM: usize = 4096;
/// A publisher header kept on a copy whose headers did not fit only if it is this small.
const KEPT_HEADER_MAX: usize = 1024;

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

#[derive(Debug, thiserror::Error)]
#[error("cannot reach RabbitMQ at {server}: {reason}")]
pub struct Unreachable {
    pub server: String,
    pub reason: String,
}

/// Connects with a deadline.
pub async fn connect(url: &str, name: &str) -> Result<Connection, Unreachable> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let fail = |reason: String| Unreachable {
        server: crate::secrets::mask(url),
        reason,
    };
    // Parsed here, not by lapin: lapin's parse error quotes the whole URL, password included.
    let uri = crate::secrets::check_amqp_url(url).map_err(|e| fail(e.problem))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail(format!(
            "no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
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

/// Reads an integer header, whatever integer type the publisher used.
pub fn int_header(props: &BasicProperties, name: &str) -> Option<i64> {
    int_value(props.headers().as_ref()?.inner().get(name)?)
}

fn int_value(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

/// The encoded size of a header table, as it goes on the wire.
fn encoded_len(table: &FieldTable) -> usize {
    cookie_factory::gen_simple(lapin::types::generation::gen_field_table(table), Vec::new())
        .map(|v| v.len())
        // Encoding into a Vec cannot run out of room; if it ever failed, "too big" is the
        // safe answer.
        .unwrap_or(usize::MAX)
}

/// Properties for a copy of a delivery that the worker publishes itself (to the DLQ or the
/// retry queue): the publisher's properties plus `ours`, with three changes that keep the copy
/// publishable whatever the publisher sent:
///
/// - no `expiration`: a dead letter must stay until an operator deals with it (a retry copy
///   sets its own afterwards);
/// - no `user_id`: the broker refuses a message whose `user_id` is not the publishing
///   connection's user, and the worker's user is not the original publisher's;
/// - if the publisher's headers plus ours would not fit in one frame of `frame_max` bytes
///   (the content header cannot be split), the publisher's headers are dropped except small
///   `x-death` and trace-context entries, and [`HEADERS_DROPPED_HEADER`] says how many bytes
///   went.
pub fn copy_properties(
    original: &BasicProperties,
    ours: Vec<(&str, AMQPValue)>,
    frame_max: u32,
) -> BasicProperties {
    let mut props = BasicProperties::default();
    macro_rules! keep {
        ($($get:ident => $with:ident),*) => {
            $(if let Some(v) = original.$get().clone() {
                props = props.$with(v);
            })*
        };
    }
    keep!(content_type => with_content_type, content_encoding => with_content_encoding,
        delivery_mode => with_delivery_mode, priority => with_priority,
        correlation_id => with_correlation_id, reply_to => with_reply_to,
        message_id => with_message_id, timestamp => with_timestamp, kind => with_type,
        app_id => with_app_id, cluster_id => with_cluster_id);

    let budget = if frame_max == 0 {
        usize::MAX // 0 means "no limit" in AMQP 0-9-1
    } else {
        (frame_max as usize).saturating_sub(NON_HEADER_PROPERTIES_ROOM)
    };
    let mut headers = original.headers().clone().unwrap_or_default();
    for (name, value) in &ours {
        headers.insert((*name).into(), value.clone());
    }
    if encoded_len(&headers) > budget {
        let dropped = original
            .headers()
            .as_ref()
            .map_or(0, |h| encoded_len(h) as i64);
        let mut kept = FieldTable::default();
        for (name, value) in original.headers().iter().flat_map(|h| h.inner()) {
            let small = || {
                let mut one = FieldTable::default();
                one.insert(name.clone(), value.clone());
                encoded_len(&one) <= KEPT_HEADER_MAX
            };
            if matches!(name.as_str(), X_DEATH | "traceparent" | "tracestate") && small() {
                kept.insert(name.clone(), value.clone());
            }
        }
        for (name, value) in ours {
            kept.insert(name.into(), value);
        }
        kept.insert(
            HEADERS_DROPPED_HEADER.into(),
            AMQPValue::LongLongInt(dropped),
        );
        headers = kept;
    }
    props.with_headers(headers)
}

/// How many deliveries of this event already ended in a transient error, from something the
/// publisher cannot use to retry forever: zero unless the broker's own `x-death` record shows
/// the message came back from `retry_queue`; then the larger of the broker's count and our
/// header, clamped to `0..=max`. A negative, absurd or mistyped value counts as 0 or `max`,
/// so the worst a forged header can do is dead-letter its own event early.
pub fn prior_attempts(props: &BasicProperties, retry_queue: &str, max: u32) -> u32 {
    let Some(headers) = props.headers().as_ref() else {
        return 0;
    };
    let deaths = match headers.inner().get(X_DEATH) {
        Some(AMQPValue::FieldArray(a)) => a.as_slice(),
        _ => return 0,
    };
    let broker_count = deaths.iter().find_map(|d| {
        let AMQPValue::FieldTable(d) = d else {
            return None;
        };
        let d = d.inner();
        let is = |key: &str, want: &str| match d.get(key) {
            Some(AMQPValue::LongString(s)) => s.as_bytes() == want.as_bytes(),
            Some(AMQPValue::ShortString(s)) => s.as_str() == want,
            _ => false,
        };
        (is("queue", retry_queue) && is("reason", "expired"))
            .then(|| d.get("count").and_then(int_value).unwrap_or(1))
    });
    let Some(broker_count) = broker_count else {
        return 0;
    };
    let ours = int_header(props, ATTEMPTS_HEADER).unwrap_or(0);
    broker_count.max(ours).clamp(0, i64::from(max)) as u32
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

    fn death(queue: &str, reason: &str, count: i64) -> AMQPValue {
        let mut d = FieldTable::default();
        d.insert("queue".into(), AMQPValue::LongString(queue.into()));
        d.insert("reason".into(), AMQPValue::LongString(reason.into()));
        d.insert("count".into(), AMQPValue::LongLongInt(count));
        AMQPValue::FieldTable(d)
    }

    fn with_headers(pairs: Vec<(&str, AMQPValue)>) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in pairs {
            h.insert(k.into(), v);
        }
        BasicProperties::default().with_headers(h)
    }

    #[test]
    fn attempts_come_from_the_brokers_record_and_are_clamped() {
        let q = "q.retry";
        assert_eq!(prior_attempts(&BasicProperties::default(), q, 10), 0);
        // Straight from a publisher: its own counter is not trusted.
        let forged = with_headers(vec![(ATTEMPTS_HEADER, AMQPValue::LongLongInt(7))]);
        assert_eq!(prior_attempts(&forged, q, 10), 0);
        let negative = with_headers(vec![(ATTEMPTS_HEADER, AMQPValue::LongLongInt(-1_000_000))]);
        assert_eq!(prior_attempts(&negative, q, 10), 0);
        // Back from our retry queue.
        let back = |count: i64, ours: i64| {
            with_headers(vec![
                (
                    X_DEATH,
                    AMQPValue::FieldArray(
                        vec![death("other", "rejected", 99), death(q, "expired", count)].into(),
                    ),
                ),
                (ATTEMPTS_HEADER, AMQPValue::LongLongInt(ours)),
            ])
        };
        assert_eq!(prior_attempts(&back(3, 3), q, 10), 3);
        assert_eq!(prior_attempts(&back(3, -1_000_000), q, 10), 3);
        assert_eq!(prior_attempts(&back(-1_000_000, -5), q, 10), 0);
        assert_eq!(
            prior_attempts(&back(1, 4), q, 10),
            4,
            "a broker that resets x-death"
        );
        assert_eq!(prior_attempts(&back(i64::MAX, 0), q, 10), 10);
    }

    #[test]
    fn copies_drop_expiration_and_user_id_and_keep_the_rest() {
        let original = json_properties()
            .with_message_id("m1".into())
            .with_expiration("3000".into())
            .with_user_id("publisher".into())
            .with_headers(FieldTable::default());
        let copy = copy_properties(
            &original,
            vec![(ERROR_HEADER, AMQPValue::LongString("why".into()))],
            131_072,
        );
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.user_id(), &None);
        assert_eq!(copy.message_id().as_ref().map(|m| m.as_str()), Some("m1"));
        assert_eq!(copy.delivery_mode(), &Some(2));
        let h = copy.headers().as_ref().unwrap().inner();
        assert!(h.contains_key(ERROR_HEADER) && !h.contains_key(HEADERS_DROPPED_HEADER));
    }

    #[test]
    fn headers_that_would_overflow_the_frame_are_dropped_and_said_so() {
        let original = with_headers(vec![
            ("filler", AMQPValue::LongString("x".repeat(130_000).into())),
            (
                "traceparent",
                AMQPValue::LongString(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ),
            ),
            (
                X_DEATH,
                AMQPValue::FieldArray(vec![death("q.retry", "expired", 2)].into()),
            ),
        ]);
        let copy = copy_properties(
            &original,
            vec![(ERROR_HEADER, AMQPValue::LongString("why".into()))],
            131_072,
        );
        let h = copy.headers().as_ref().unwrap();
        assert!(encoded_len(h) < 131_072 - NON_HEADER_PROPERTIES_ROOM);
        let h = h.inner();
        assert!(!h.contains_key("filler"));
        assert!(
            h.contains_key("traceparent")
                && h.contains_key(X_DEATH)
                && h.contains_key(ERROR_HEADER)
        );
        assert!(
            matches!(h.get(HEADERS_DROPPED_HEADER), Some(AMQPValue::LongLongInt(n)) if *n > 130_000)
        );
        assert_eq!(
            prior_attempts(&copy, "q.retry", 10),
            2,
            "the retry count survives"
        );
    }
}

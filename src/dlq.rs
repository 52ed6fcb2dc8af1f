//! The dead-letter queue tools of contract section 1: `dlq list`, `dlq purge`, `dlq replay`.
//!
//! All three walk `<queue>.dlq` the same way ([`Walk`]): `basic_get` with manual acks, for at
//! most the messages that were there when the command started, so a replayed message that is
//! dead-lettered again while we run is never reached. A message the command acts on is acked
//! only once the action is done (for replay: once its republish is confirmed). Every other
//! message is held unacked and, at the end, returned with one `basic.nack(multiple, requeue)`.
//! If the command dies half-way, the broker returns whatever it held: nothing is lost, and at
//! worst a message that was replayed is replayed again (the worker resolves that copy as a
//! duplicate).
//!
//! The messages go back in their order. A classic queue puts them where they were; a quorum
//! queue puts them behind the messages not looked at, so a walk over all of the DLQ leaves its
//! order as it was, and one over the head only (`--limit`) moves that head to the back. A nack
//! rather than closing the channel, which returns them too: RabbitMQ 4.3+ does not count a
//! nack towards a quorum queue's delivery limit, and does count a closed channel.
//!
//! Returning a message is a redelivery. On a quorum DLQ the broker counts it in
//! `x-delivery-count`, one per look, which is why `deliveries` never reads that header. The DLQ
//! is declared without `x-delivery-limit` (see `Topology::declare`): on RabbitMQ 3.x that is no
//! limit, so listing it a hundred times leaves every message where it was. RabbitMQ 4.x gives
//! quorum queues a default limit of 20 and drops a message past it when the queue has no
//! dead-letter target, as the DLQ has none; the README says how to lift it there.

use std::collections::BTreeMap;

use anyhow::Context as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{DeliveryTag, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use crate::admin::queue_depth;
use crate::amqp::{self, Topology};
use crate::domain::SIGNUP_REQUESTED;

mod letter;

pub use letter::{DeadLetter, Listing};

/// Headers that describe a message's past failures; a replayed message starts afresh.
const FAILURE_HEADERS: &[&str] = &[
    amqp::ERROR_HEADER,
    amqp::ATTEMPTS_HEADER,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
];

/// A dead letter's properties with its failure headers removed, for its replay.
fn without_failures(props: &BasicProperties) -> BasicProperties {
    let Some(headers) = props.headers() else {
        return props.clone();
    };
    let mut kept = FieldTable::default();
    for (name, value) in headers.inner() {
        if !FAILURE_HEADERS.contains(&name.as_str()) {
            kept.insert(name.clone(), value.clone());
        }
    }
    props.clone().with_headers(kept)
}

/// A pass over the messages that were in the DLQ when it began (see the module doc).
struct Walk {
    channel: Channel,
    queue: String,
    /// Messages ready in the DLQ when the walk began.
    in_queue: u64,
    /// Gets left: at most `in_queue`, so what arrives meanwhile is never reached.
    left: u64,
    /// The latest delivery tag left in the DLQ: [`Walk::finish`] returns it and all before it
    /// that were not taken.
    held: Option<DeliveryTag>,
}

impl Walk {
    /// Starts a walk over the first `limit` messages (by default all) in the DLQ now.
    async fn begin(
        conn: &Connection,
        channel: Channel,
        topology: &Topology,
        limit: Option<u64>,
    ) -> anyhow::Result<Self> {
        let queue = topology.dead_letter_queue();
        let in_queue = u64::from(queue_depth(conn, &queue).await?.messages);
        Ok(Self {
            channel,
            queue,
            in_queue,
            left: limit.map_or(in_queue, |l| l.min(in_queue)),
            held: None,
        })
    }

    /// The next message, unacked; the caller then either [`take`](Self::take)s or
    /// [`keep`](Self::keep)s it.
    async fn next(&mut self) -> lapin::Result<Option<Delivery>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let got = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await?;
        Ok(got.map(|m| m.delivery))
    }

    /// Removes the message from the DLQ: call only once what it was taken for is done.
    async fn take(&self, delivery: &Delivery) -> lapin::Result<()> {
        self.channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await
    }

    /// Leaves the message in the DLQ.
    fn keep(&mut self, delivery: &Delivery) {
        self.held = Some(delivery.delivery_tag);
    }

    /// Returns every kept message at once, in order.
    async fn finish(self) -> lapin::Result<()> {
        if let Some(tag) = self.held {
            let all_kept = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            self.channel.basic_nack(tag, all_kept).await?;
        }
        self.channel.close(200, "dlq done".into()).await
    }
}

/// Connects, runs `work` and closes the connection whether or not it succeeded.
async fn with_connection<T>(
    broker: &amqp::Endpoints,
    name: &str,
    work: impl AsyncFnOnce(&Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let conn = amqp::connect(broker, name).await?;
    let result = work(&conn).await;
    let _ = conn.close(200, "done".into()).await;
    result
}

/// Shows up to `limit` dead letters (all by default) without removing any.
pub async fn list(
    broker: &amqp::Endpoints,
    topology: &Topology,
    limit: Option<u64>,
) -> anyhow::Result<Listing> {
    with_connection(broker, "signup-worker dlq list", async |conn| {
        let channel = conn.create_channel().await?;
        let mut walk = Walk::begin(conn, channel, topology, limit).await?;
        let in_queue = walk.in_queue;
        let mut messages = Vec::new();
        while let Some(delivery) = walk.next().await? {
            walk.keep(&delivery);
            messages.push(DeadLetter::read(
                &delivery.properties,
                &delivery.data,
                topology,
            ));
        }
        walk.finish().await?;
        let mut by_reason = BTreeMap::new();
        for m in &messages {
            *by_reason.entry(m.reason.clone()).or_insert(0) += 1;
        }
        Ok(Listing {
            queue: topology.dead_letter_queue(),
            in_queue,
            total: messages.len() as u64,
            by_reason,
            messages,
        })
    })
    .await
}

/// What `dlq purge` and `dlq replay` did: messages acted on, and messages looked at but left
/// because their reason did not match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub done: u64,
    pub skipped: u64,
}

/// Deletes the dead letters whose reason contains `reason` (all without it). The same walk as
/// the others even without a filter, rather than `queue.purge`: it deletes exactly what was
/// there when it started, never a dead letter that arrived meanwhile and nobody has seen.
pub async fn purge(
    broker: &amqp::Endpoints,
    topology: &Topology,
    reason: Option<&str>,
) -> anyhow::Result<Moved> {
    with_connection(broker, "signup-worker dlq purge", async |conn| {
        let channel = conn.create_channel().await?;
        let mut walk = Walk::begin(conn, channel, topology, None).await?;
        let mut moved = Moved::default();
        while let Some(delivery) = walk.next().await? {
            if DeadLetter::read(&delivery.properties, &delivery.data, topology).matches(reason) {
                walk.take(&delivery).await?;
                moved.done += 1;
            } else {
                walk.keep(&delivery);
                moved.skipped += 1;
            }
        }
        walk.finish().await?;
        Ok(moved)
    })
    .await
}

/// Moves up to `limit` of the dead letters whose reason contains `reason` (by default all of
/// them) back to the exchange with routing key `tenant.signup.requested`, without the failure
/// headers. Each is acked on the DLQ only after its republish is confirmed.
pub async fn replay(
    broker: &amqp::Endpoints,
    topology: &Topology,
    limit: Option<u64>,
    reason: Option<&str>,
) -> anyhow::Result<Moved> {
    with_connection(broker, "signup-worker dlq replay", async |conn| {
        let channel = amqp::confirm_channel(conn).await?;
        topology
            .declare(&channel)
            .await
            .context("declaring the topology")?;
        // `limit` counts replayed messages, so the walk itself covers the whole DLQ.
        let mut walk = Walk::begin(conn, channel.clone(), topology, None).await?;
        let limit = limit.unwrap_or(u64::MAX);
        let mut moved = Moved::default();
        while moved.done < limit {
            let Some(delivery) = walk.next().await? else {
                break;
            };
            if !DeadLetter::read(&delivery.properties, &delivery.data, topology).matches(reason) {
                walk.keep(&delivery);
                moved.skipped += 1;
                continue;
            }
            let confirm = amqp::publish(
                &channel,
                &topology.exchange,
                SIGNUP_REQUESTED,
                &delivery.data,
                without_failures(&delivery.properties),
                true,
            )
            .await?;
            amqp::confirmed(confirm, &topology.queue).await?;
            walk.take(&delivery).await?;
            moved.done += 1;
        }
        walk.finish().await?;
        Ok(moved)
    })
    .await
}

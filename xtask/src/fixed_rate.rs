//! The fixed-rate load of `xtask bench`: valid signup events published at a steady rate by a
//! publisher of our own, and their outcome events (contract section 4) received on a queue of
//! our own, so that each event's time from publish to outcome is known.
//!
//! The events are built here with serde_json after the contract's section 3 (the worker's
//! `signup_body` is the reference encoder; the task links none of the worker's code).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind, PublisherConfirm};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::workers::POLL;

const REQUESTED: &str = "tenant.signup.requested";
const COMPLETED: &str = "tenant.signup.completed";
const REJECTED: &str = "tenant.signup.rejected";

/// An outcome event as it arrived: the event id it answers, when, and whether it completed.
type Arrival = (String, Instant, bool);

/// Our own exclusive, auto-deleted queue bound to both outcome routing keys: it goes away with
/// the connection, however the run ends.
pub struct Listener {
    channel: Channel,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
}

/// What the publisher sent: each event id with the instant just before its publish.
pub struct Sent {
    pub events: Vec<(String, Instant)>,
    pub secs: f64,
    /// How far the publisher fell behind its schedule at worst.
    pub max_lag_ms: f64,
}

pub struct Outcomes {
    pub received: usize,
    pub completed: usize,
    pub rejected: usize,
    /// Publish-to-outcome times of the events answered, in ms, sorted.
    pub latencies_ms: Vec<f64>,
}

impl Listener {
    pub async fn bind(conn: &Connection, exchange: &str) -> anyhow::Result<Self> {
        let channel = conn.create_channel().await?;
        // The running replica has declared the exchange; a passive declare checks it is there.
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("exchange {exchange} does not exist"))?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let name = queue.name().clone();
        for key in [COMPLETED, REJECTED] {
            channel
                .queue_bind(
                    name.clone(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let consumer = channel
            .basic_consume(
                name,
                "xtask-bench-outcomes".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let (tx, arrivals) = mpsc::unbounded_channel();
        // The arrival time is taken as soon as lapin hands the delivery over.
        consumer.set_delegate(move |delivery: lapin::message::DeliveryResult| {
            let tx = tx.clone();
            async move {
                let Ok(Some(delivery)) = delivery else {
                    return;
                };
                let at = Instant::now();
                let completed = delivery.routing_key.as_str() == COMPLETED;
                let from_body = serde_json::from_slice::<serde_json::Value>(&delivery.data)
                    .ok()
                    .and_then(|v| v["event_id"].as_str().map(str::to_owned));
                let id = from_body.or_else(|| {
                    let id = delivery.properties.correlation_id().as_ref()?;
                    Some(id.as_str().to_owned())
                });
                if let Some(id) = id {
                    let _ = tx.send((id, at, completed));
                }
            }
        });
        Ok(Self { channel, arrivals })
    }

    /// Waits until every event of `sent` has its outcome, for up to `timeout` after the last
    /// publish; `check` runs every [`POLL`] meanwhile (a replica that exits fails the run).
    pub async fn wait_for(
        &mut self,
        sent: &Sent,
        timeout: Duration,
        mut check: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Outcomes> {
        let published = sent.events.len();
        let deadline = sent.events.last().map_or_else(Instant::now, |e| e.1) + timeout;
        let mut first: HashMap<String, (Instant, bool)> = HashMap::with_capacity(published);
        while first.len() < published {
            match tokio::time::timeout(POLL, self.arrivals.recv()).await {
                Ok(Some(arrival)) => {
                    // Everything already received counts before the deadline is looked at.
                    let mut next = Some(arrival);
                    while let Some((id, at, completed)) = next {
                        first.entry(id).or_insert((at, completed));
                        next = self.arrivals.try_recv().ok();
                    }
                }
                Ok(None) => bail!("the outcome consumer stopped"),
                Err(_) => check()?,
            }
            if Instant::now() >= deadline && first.len() < published {
                bail!(
                    "only {} of {published} outcome events arrived within {}s of the last publish \
                     (raise OUTCOME_TIMEOUT, or see the worker's log)",
                    first.len(),
                    timeout.as_secs()
                );
            }
        }
        let mut latencies_ms = Vec::with_capacity(published);
        let (mut completed, mut rejected) = (0, 0);
        for (id, published_at) in &sent.events {
            if let Some(&(at, ok)) = first.get(id) {
                latencies_ms.push(at.saturating_duration_since(*published_at).as_secs_f64() * 1e3);
                if ok {
                    completed += 1;
                } else {
                    rejected += 1;
                }
            }
        }
        latencies_ms.sort_by(f64::total_cmp);
        Ok(Outcomes {
            received: latencies_ms.len(),
            completed,
            rejected,
            latencies_ms,
        })
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "bench done".into()).await;
    }
}

/// Publishes `count` valid, new, non-demo signup events at `rate` per second, with publisher
/// confirms awaited off the publishing path; fails if any is refused or unroutable.
///
/// The schedule is open-loop: event i is due at start + i/rate whatever happened before, and
/// the interval's missed ticks fire at once ([`MissedTickBehavior::Burst`]). So when this task
/// or the broker stalls, the events that fell due meanwhile go out as soon as it can, and the
/// offered rate over the run stays the target; `Delay` would instead push the rest of the
/// schedule back and offer less than asked exactly when the system is slow (coordinated
/// omission). The time recorded is the actual publish instant; `max_lag_ms` says how late the
/// worst one was against its schedule.
pub async fn publish(
    conn: &Connection,
    exchange: &str,
    rate: u32,
    count: u64,
) -> anyhow::Result<Sent> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (confirms_tx, mut confirms_rx) = mpsc::unbounded_channel::<PublisherConfirm>();
    let confirmer = tokio::spawn(async move {
        let (mut refused, mut unroutable) = (0u64, 0u64);
        while let Some(confirm) = confirms_rx.recv().await {
            match confirm.await {
                Ok(c) if c.is_ack() => unroutable += u64::from(c.take_message().is_some()),
                _ => refused += 1,
            }
        }
        (refused, unroutable)
    });

    let nonce = nonce();
    let period = Duration::from_secs(1) / rate.max(1);
    let start = tokio::time::Instant::now();
    let mut interval = tokio::time::interval_at(start, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut events = Vec::with_capacity(count as usize);
    let mut max_lag = Duration::ZERO;
    for i in 0..count {
        interval.tick().await;
        let due = start + period * u32::try_from(i).context("too many events")?;
        let (id, body) = event(nonce, i);
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into());
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(due));
        events.push((id, Instant::now()));
        let confirm = channel
            .basic_publish(
                exchange.into(),
                REQUESTED.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                properties,
            )
            .await?;
        let _ = confirms_tx.send(confirm);
    }
    let secs = start.elapsed().as_secs_f64();
    drop(confirms_tx);
    let (refused, unroutable) = tokio::time::timeout(Duration::from_secs(30), confirmer)
        .await
        .context("the broker did not confirm every event within 30s")??;
    let _ = channel.close(200, "published".into()).await;
    ensure!(
        refused == 0 && unroutable == 0,
        "of {count} events the broker refused {refused} and could not route {unroutable}"
    );
    Ok(Sent {
        events,
        secs,
        max_lag_ms: max_lag.as_secs_f64() * 1e3,
    })
}

/// Different in every run, so that events and slugs never repeat across runs.
fn nonce() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// Event i of a run: its id (a UUID in form, version 4 and variant bits set, built from the
/// run's nonce and i) and its body, contract section 3.
fn event(nonce: u64, i: u64) -> (String, Vec<u8>) {
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        nonce >> 32,
        (nonce >> 16) & 0xffff,
        nonce & 0xfff,
        0x8000 | ((i >> 48) & 0x3fff),
        i & 0xffff_ffff_ffff,
    );
    let body = serde_json::json!({
        "event_id": id,
        "type": REQUESTED,
        "version": 1,
        "occurred_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "tenant": {
            "business_name": format!("Rate Business {i}"),
            "slug": format!("rate-{nonce:x}-{i}"),
            "owner_email": format!("owner{i}@bench.example"),
            "tier": "starter",
            "is_demo": false,
        }
    });
    let body = serde_json::to_vec(&body).expect("a json! value always serialises");
    (id, body)
}

/// The nearest-rank percentile `p` (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_and_distinct() {
        let (a, body) = event(0x0123_4567_89ab_cdef, 0);
        let (b, _) = event(0x0123_4567_89ab_cdef, 1);
        assert_eq!(a, "01234567-89ab-4def-8000-000000000000");
        assert_ne!(a, b);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["event_id"], a.as_str());
        assert_eq!(json["tenant"]["slug"], "rate-123456789abcdef-0");
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}

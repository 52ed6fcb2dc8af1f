//! What a dead letter says about itself, read without I/O, and the `dlq list` output built
//! from it.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde::Serialize;

use crate::amqp::{self, Topology};
use crate::domain::salvage_ids;

/// One dead letter as `dlq list` shows it (field names documented in the README).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    /// The body's `event_id` when it is a UUID, else the AMQP `message_id` (as the worker
    /// salvages it for the outcome).
    pub event_id: Option<String>,
    /// `tenant.slug` as the body names it, valid or not.
    pub slug: Option<String>,
    /// `x-signup-error`; for a message the broker dead-lettered, `broker: <x-death reason>`.
    pub reason: String,
    pub died_at: Option<DateTime<Utc>>,
    /// Where `died_at` comes from: `x-death` (the broker's latest dead-lettering of the message)
    /// or `timestamp` (the AMQP property, set by the publisher: at or before the death).
    pub died_at_source: Option<&'static str>,
    /// Deliveries of the event that failed, as the worker counted them: 1 for one dead-lettered
    /// at its first failure, the attempts for one that ran out of retries; unknown for one the
    /// broker dead-lettered past the main queue's delivery limit.
    pub deliveries: Option<u32>,
}

/// One entry of the broker's `x-death` header.
struct Death {
    queue: String,
    reason: String,
    time: Option<u64>,
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

fn deaths(props: &BasicProperties) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(entries)) = header(props, "x-death") else {
        return Vec::new();
    };
    let field = |d: &FieldTable, key: &str| d.inner().get(key).and_then(text).unwrap_or_default();
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(d) => Some(Death {
                queue: field(d, "queue"),
                reason: field(d, "reason"),
                time: match d.inner().get("time") {
                    Some(AMQPValue::Timestamp(t)) => Some(*t),
                    _ => None,
                },
            }),
            _ => None,
        })
        .collect()
}

fn instant(seconds: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(seconds).ok()?, 0)
}

impl DeadLetter {
    /// Reads what a dead letter says about itself. Pure, so every rule is unit-tested.
    pub fn read(props: &BasicProperties, body: &[u8], topology: &Topology) -> Self {
        let message_id = props.message_id().as_ref().map(|m| m.to_string());
        let (event_id, slug) = salvage_ids(body);
        let deaths = deaths(props);
        // Only the main queue dead-letters into the DLQ through the broker (its delivery limit).
        let by_broker = deaths.iter().find(|d| d.queue == topology.queue);
        let error = header(props, amqp::ERROR_HEADER).and_then(text);
        let deliveries = error.as_ref().map(|_| {
            // The worker's own retry count, read as the worker reads it: the attempts before
            // the last, trusted only with the broker's record of the retry queue.
            amqp::prior_attempts(props, &topology.retry_queue(), u32::MAX).saturating_add(1)
        });
        let reason = match (error, by_broker) {
            (Some(e), _) => e,
            (None, Some(d)) => format!("broker: {}", d.reason),
            (None, None) => "unknown".to_owned(),
        };
        let from_death = deaths.iter().filter_map(|d| d.time).max().and_then(instant);
        let from_timestamp = props.timestamp().and_then(instant);
        let (died_at, died_at_source) = match (from_death, from_timestamp) {
            (Some(t), _) => (Some(t), Some("x-death")),
            (None, Some(t)) => (Some(t), Some("timestamp")),
            (None, None) => (None, None),
        };
        Self {
            event_id: event_id.or_else(|| message_id.clone()),
            message_id,
            slug,
            reason,
            died_at,
            died_at_source,
            deliveries,
        }
    }

    /// Whether `--reason TEXT` selects this message (no filter selects all).
    pub fn matches(&self, filter: Option<&str>) -> bool {
        filter.is_none_or(|f| self.reason.contains(f))
    }
}

/// `dlq list --json` (the README documents the fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    pub queue: String,
    /// Messages ready in the DLQ when the listing began.
    pub in_queue: u64,
    /// Messages listed (all of `in_queue` unless `--limit` stopped earlier).
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub messages: Vec<DeadLetter>,
}

impl Listing {
    /// For people: the table (only if there is anything to show), the count per reason, most
    /// frequent first, and one line saying what was done.
    pub fn human(&self) -> String {
        let or_dash = |v: Option<&str>| v.map_or_else(|| "-".to_owned(), printable);
        let header = [
            "message id",
            "event id",
            "slug",
            "died at",
            "deliveries",
            "reason",
        ];
        let rows: Vec<[String; 6]> = self
            .messages
            .iter()
            .map(|m| {
                [
                    or_dash(m.message_id.as_deref()),
                    or_dash(m.event_id.as_deref()),
                    or_dash(m.slug.as_deref()),
                    m.died_at.map_or_else(
                        || "-".to_owned(),
                        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
                    ),
                    m.deliveries
                        .map_or_else(|| "-".to_owned(), |d| d.to_string()),
                    printable(&m.reason),
                ]
            })
            .collect();
        let mut out = String::new();
        if !rows.is_empty() {
            let header = header.map(str::to_owned);
            let mut widths = [0; 5];
            for row in std::iter::once(&header).chain(&rows) {
                for (width, cell) in widths.iter_mut().zip(row) {
                    *width = cell.chars().count().max(*width);
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                for (width, cell) in widths.iter().zip(row) {
                    out += &format!("{cell:<width$}  ");
                }
                out += &format!("{}\n", row[5]);
            }
            let mut counts: Vec<_> = self.by_reason.iter().collect();
            counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            out += "\n  count  reason\n";
            for (reason, n) in counts {
                out += &format!("{n:>7}  {}\n", printable(reason));
            }
        }
        out += &format!(
            "listed {} of {} dead letters in {}; nothing was removed\n",
            self.total, self.in_queue, self.queue
        );
        out
    }
}

/// Text from a message, safe for a terminal: control characters (a newline in a forged
/// header, an escape sequence in a slug) are shown escaped instead of acting.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::QueueType;

    fn topology() -> Topology {
        Topology {
            exchange: "x".into(),
            queue: "q".into(),
            queue_type: QueueType::Quorum,
        }
    }

    fn death(queue: &str, reason: &str, time: u64) -> AMQPValue {
        let mut d = FieldTable::default();
        d.insert("queue".into(), AMQPValue::LongString(queue.into()));
        d.insert("reason".into(), AMQPValue::LongString(reason.into()));
        d.insert("count".into(), AMQPValue::LongLongInt(9));
        d.insert("time".into(), AMQPValue::Timestamp(time));
        AMQPValue::FieldTable(d)
    }

    fn props(headers: Vec<(&str, AMQPValue)>) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in headers {
            h.insert(k.into(), v);
        }
        BasicProperties::default().with_headers(h)
    }

    fn error(reason: &str) -> (&'static str, AMQPValue) {
        (amqp::ERROR_HEADER, AMQPValue::LongString(reason.into()))
    }

    #[test]
    fn an_invalid_body_falls_back_to_the_message_id_and_the_timestamp() {
        let p = props(vec![error("invalid: body is not JSON")])
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000);
        let d = DeadLetter::read(&p, b"{nope", &topology());
        assert_eq!(d.event_id.as_deref(), Some("m-1"));
        assert_eq!((d.slug.as_deref(), d.deliveries), (None, Some(1)));
        assert_eq!(d.reason, "invalid: body is not JSON");
        assert_eq!(d.died_at, instant(1_700_000_000));
        assert_eq!(d.died_at_source, Some("timestamp"));
        assert!(d.matches(None) && d.matches(Some("not JSON")) && !d.matches(Some("slug")));
    }

    #[test]
    fn a_retried_event_shows_its_attempts_and_its_last_death() {
        let id = uuid::Uuid::new_v4();
        let body = crate::domain::signup_body(
            id,
            "Bad_Slug",
            "B",
            "a@b.c",
            crate::domain::Tier::Growth,
            false,
        );
        let p = props(vec![
            error("failed 10 deliveries with transient errors (last: deadlock)"),
            (amqp::ATTEMPTS_HEADER, AMQPValue::LongLongInt(9)),
            (
                "x-death",
                AMQPValue::FieldArray(vec![death("q.retry", "expired", 1_800_000_000)].into()),
            ),
        ])
        .with_message_id("other".into())
        .with_timestamp(1_700_000_000);
        let d = DeadLetter::read(&p, &body, &topology());
        assert_eq!(d.event_id, Some(id.to_string()), "the body's id wins");
        assert_eq!(d.slug.as_deref(), Some("Bad_Slug"));
        assert_eq!(d.deliveries, Some(10));
        assert_eq!(
            (d.died_at, d.died_at_source),
            (instant(1_800_000_000), Some("x-death"))
        );
        // A forged counter without the broker's record of the retry queue is not believed.
        let forged = props(vec![
            error("e"),
            (amqp::ATTEMPTS_HEADER, AMQPValue::LongLongInt(7)),
        ]);
        assert_eq!(
            DeadLetter::read(&forged, b"", &topology()).deliveries,
            Some(1)
        );
    }

    #[test]
    fn a_broker_dead_letter_names_the_brokers_reason() {
        let deaths = vec![
            death("q.retry", "expired", 5),
            death("q", "delivery_limit", 9),
        ];
        let p = props(vec![("x-death", AMQPValue::FieldArray(deaths.into()))]);
        let d = DeadLetter::read(&p, b"", &topology());
        assert_eq!(d.reason, "broker: delivery_limit");
        assert_eq!((d.deliveries, d.died_at), (None, instant(9)));
        let nothing = DeadLetter::read(&BasicProperties::default(), b"", &topology());
        assert_eq!(nothing.reason, "unknown");
        assert_eq!(
            (nothing.message_id, nothing.died_at, nothing.deliveries),
            (None, None, None)
        );
    }

    #[test]
    fn the_table_escapes_what_could_act_on_a_terminal() {
        let p = props(vec![error("line one\nline two \u{1b}[31m")]);
        let letter = DeadLetter::read(&p, b"", &topology());
        let listing = Listing {
            queue: "q.dlq".into(),
            in_queue: 2,
            total: 1,
            by_reason: BTreeMap::from([(letter.reason.clone(), 1)]),
            messages: vec![letter],
        };
        let text = listing.human();
        assert!(
            !text.contains('\u{1b}') && text.contains("line one\\nline two"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 6, "{text}");
        assert!(text.ends_with("listed 1 of 2 dead letters in q.dlq; nothing was removed\n"));
    }
}

//! The copies of a delivery the worker publishes itself (to the DLQ or the retry queue), and
//! the retry count read back from them. Both must hold whatever the publisher sent: a copy
//! always fits the frame, and a forged counter can never make an event retry forever.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use super::ATTEMPTS_HEADER;

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
    use crate::amqp::{json_properties, ERROR_HEADER};

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

//! `signup-worker publish`: a load and demo publisher. Publishes synthetic signup events with
//! publisher confirms (a bounded window in flight), mixing in the hard cases on request.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::ConfirmSelectOptions;
use lapin::PublisherConfirm;
use rand::seq::IndexedRandom;
use rand::Rng;
use tracing::{info_span, Span};
use uuid::Uuid;

use crate::amqp::{self, Topology};
use crate::cli::PublishArgs;
use crate::domain::{signup_body, Tier, SIGNUP_REQUESTED};
use crate::telemetry;
use crate::trace::TraceContext;

/// Confirms awaited at once: enough to keep the broker busy, few enough to bound memory.
const CONFIRM_WINDOW: usize = 1024;
/// Earlier events kept as candidates for duplicates and slug collisions: bounded so a run of
/// millions of messages does not keep them all.
const REUSE_POOL: usize = 10_000;

/// What a publish run sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishReport {
    pub published: u64,
    pub new_events: u64,
    pub demo: u64,
    pub duplicates: u64,
    pub slug_collisions: u64,
    pub invalid: u64,
    pub elapsed: Duration,
}

impl PublishReport {
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "published {} messages in {:.1}s ({:.0}/s): {} new events ({} demo), {} duplicates, {} slug collisions, {} invalid",
            self.published,
            secs,
            self.published as f64 / secs,
            self.new_events,
            self.demo,
            self.duplicates,
            self.slug_collisions,
            self.invalid
        )
    }
}

/// The invalid classes of contract section 3, published in turn.
fn invalid_body(i: u64, run: &str) -> Vec<u8> {
    let id = Uuid::new_v4();
    let good = |slug: &str, name: &str, tier: &str, version: i64| {
        serde_json::json!({
            "event_id": id, "type": SIGNUP_REQUESTED, "version": version,
            "tenant": {"business_name": name, "slug": slug, "owner_email": "x@invalid.example", "tier": tier}
        })
    };
    let value = match i % 7 {
        0 => return b"this is not json {".to_vec(),
        1 => {
            serde_json::json!({"event_id": id, "type": SIGNUP_REQUESTED, "version": 1, "tenant": {"slug": format!("{run}-missing-{i}")}})
        }
        2 => good("Not A Slug!", "Bad Slug Ltd", "starter", 1),
        3 => good(&format!("{run}-v2-{i}"), "Version Two", "starter", 2),
        4 => good(&format!("{run}-tier-{i}"), "Platinum Co", "platinum", 1),
        5 => good(&format!("{run}-blank-{i}"), "   ", "growth", 1),
        _ => {
            let mut v = good(&format!("{run}-big-{i}"), "Huge Co", "starter", 1);
            v["padding"] = serde_json::Value::String("x".repeat(crate::domain::MAX_BODY_BYTES));
            v
        }
    };
    serde_json::to_vec(&value).expect("a json! value always serialises")
}

pub async fn publish(
    broker: &amqp::Endpoints,
    topology: &Topology,
    args: &PublishArgs,
) -> anyhow::Result<PublishReport> {
    if args.duplicates + args.slug_collisions + args.invalid > 1.0 {
        bail!("--duplicates, --slug-collisions and --invalid add up to more than 1");
    }
    let conn = amqp::connect(broker, "signup-worker publish").await?;
    let channel = conn.create_channel().await.context("opening a channel")?;
    topology
        .declare(&channel)
        .await
        .context("declaring the topology")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.count)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} publishing [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );

    // Slugs carry a per-run tag so that repeated demo runs do not collide with each other.
    let run: String = format!("{:06x}", rand::rng().random_range(0..0x100_0000u32));
    let mut rng = rand::rng();
    let mut pool: Vec<(Uuid, Vec<u8>, String)> = Vec::new();
    let mut window: VecDeque<PublisherConfirm> = VecDeque::with_capacity(CONFIRM_WINDOW);
    let mut report = PublishReport::default();
    let start = Instant::now();

    for i in 0..args.count {
        if let Some(rate) = args.rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let roll: f64 = rng.random();
        let (message_id, body) = if roll < args.duplicates && !pool.is_empty() {
            report.duplicates += 1;
            let (id, body, _) = pool.choose(&mut rng).expect("pool is not empty");
            (*id, body.clone())
        } else if roll < args.duplicates + args.slug_collisions && !pool.is_empty() {
            report.slug_collisions += 1;
            let (_, _, slug) = pool.choose(&mut rng).expect("pool is not empty").clone();
            let id = Uuid::new_v4();
            (
                id,
                signup_body(
                    id,
                    &slug,
                    "Slug Rival Ltd",
                    "rival@collision.example",
                    Tier::Starter,
                    false,
                ),
            )
        } else if roll < args.duplicates + args.slug_collisions + args.invalid {
            report.invalid += 1;
            (Uuid::new_v4(), invalid_body(i, &run))
        } else {
            report.new_events += 1;
            let id = Uuid::new_v4();
            let is_demo = rng.random::<f64>() < args.demo;
            report.demo += u64::from(is_demo);
            let tier = *[Tier::Starter, Tier::Growth, Tier::Enterprise]
                .choose(&mut rng)
                .expect("non-empty");
            let slug = format!("t-{run}-{i}");
            let body = signup_body(
                id,
                &slug,
                &format!("Business {i} ({run})"),
                &format!("owner{i}@{run}.example"),
                tier,
                is_demo,
            );
            if pool.len() < REUSE_POOL {
                pool.push((id, body.clone(), slug));
            } else {
                let k = rng.random_range(0..REUSE_POOL);
                pool[k] = (id, body.clone(), slug);
            }
            (id, body)
        };
        // One trace per published message, as an upstream service would start (contract 1).
        // With OTLP export on, its first span is an exported `publish` span.
        let span = if telemetry::exporting() {
            info_span!(parent: None, "publish", event_id = %message_id)
        } else {
            Span::none()
        };
        let props = TraceContext::root(&span)
            .on(amqp::json_properties().with_message_id(message_id.to_string().into()));
        let confirm = amqp::publish(
            &channel,
            &topology.exchange,
            SIGNUP_REQUESTED,
            &body,
            props,
            true,
        )
        .await?;
        window.push_back(confirm);
        if window.len() >= CONFIRM_WINDOW {
            let c = window.pop_front().expect("window is not empty");
            amqp::confirmed(c, &topology.queue).await?;
            bar.inc(1);
        }
        report.published += 1;
    }
    for c in window {
        amqp::confirmed(c, &topology.queue).await?;
        bar.inc(1);
    }
    bar.finish();
    report.elapsed = start.elapsed();
    let _ = conn.close(200, "publish done".into()).await;
    Ok(report)
}

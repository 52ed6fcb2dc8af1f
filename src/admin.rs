//! One-shot admin commands: `status`, `founding set-capacity`, `founding list` (the `dlq`
//! commands are in [`crate::dlq`]).

use anyhow::Context as _;
use chrono::SecondsFormat;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;
use serde::Serialize;

use crate::amqp::{self, Topology};
use crate::db::DbTarget;
use crate::founding::{self, FoundingList, FoundingStats};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct QueueDepth {
    pub messages: u32,
    pub consumers: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Founding {
    pub capacity: i64,
    pub position: i64,
    pub assigned: i64,
    pub pooled: i64,
    pub retired: i64,
    pub burned: i64,
    pub remaining: i64,
}

impl From<FoundingStats> for Founding {
    fn from(s: FoundingStats) -> Self {
        Self {
            capacity: s.capacity,
            position: s.position,
            assigned: s.assigned,
            pooled: s.pooled,
            retired: s.retired,
            burned: s.burned(),
            remaining: s.remaining(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Queues {
    pub main: QueueDepth,
    pub retry: QueueDepth,
    pub dlq: QueueDepth,
}

/// `status --json` (contract section 5).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub founding: Founding,
    pub queues: Queues,
}

impl StatusReport {
    pub fn human(&self, topology: &Topology) -> String {
        let f = &self.founding;
        let q = &self.queues;
        let row = |name: String, d: &QueueDepth| {
            format!("  {name:<40} {:>9} {:>10}\n", d.messages, d.consumers)
        };
        let mut out = format!(
            "Founding-member programme\n  capacity  {:>8}\n  assigned  {:>8}   tenants holding a number\n  position  {:>8}   highest number the sequence handed out\n  pooled    {:>8}   reclaimed numbers waiting for a tenant\n  retired   {:>8}   numbers of deleted tenants, never reissued\n  burned    {:>8}   drawn by transactions not committed (in flight, or dead: reclaimed within 10 s)\n  remaining {:>8}\n\nQueues{:>45} {:>10}\n",
            f.capacity, f.assigned, f.position, f.pooled, f.retired, f.burned, f.remaining, "messages", "consumers"
        );
        out += &row(topology.queue.clone(), &q.main);
        out += &row(topology.retry_queue(), &q.retry);
        out += &row(topology.dead_letter_queue(), &q.dlq);
        out
    }
}

/// Messages ready in a queue and its consumers; a queue not declared yet has neither.
pub(crate) async fn queue_depth(conn: &Connection, name: &str) -> anyhow::Result<QueueDepth> {
    // A passive declare that fails (no such queue) closes its channel: one channel each.
    let channel = conn.create_channel().await?;
    let result = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await;
    let depth = match result {
        Ok(q) => QueueDepth {
            messages: q.message_count(),
            consumers: q.consumer_count(),
        },
        // Not declared yet: nothing waits there.
        Err(_) => QueueDepth {
            messages: 0,
            consumers: 0,
        },
    };
    let _ = channel.close(200, "status".into()).await;
    Ok(depth)
}

pub async fn status(
    database_url: &str,
    broker: &amqp::Endpoints,
    topology: &Topology,
) -> anyhow::Result<StatusReport> {
    let target = DbTarget::parse(database_url)?;
    let db = target.connect(1).await?;
    let stats = founding::founding_stats(&db)
        .await
        .with_context(|| format!("reading the founding programme on {}", target.server))?;
    let _ = db.close().await;

    let conn = amqp::connect(broker, "signup-worker status").await?;
    let queues = Queues {
        main: queue_depth(&conn, &topology.queue).await?,
        retry: queue_depth(&conn, &topology.retry_queue()).await?,
        dlq: queue_depth(&conn, &topology.dead_letter_queue()).await?,
    };
    let _ = conn.close(200, "status done".into()).await;
    Ok(StatusReport {
        founding: stats.into(),
        queues,
    })
}

pub async fn set_capacity(database_url: &str, capacity: i64) -> anyhow::Result<FoundingStats> {
    let target = DbTarget::parse(database_url)?;
    let db = target.connect(1).await?;
    let result = founding::set_capacity(&db, capacity).await;
    let _ = db.close().await;
    Ok(result?)
}

pub async fn founding_list(database_url: &str) -> anyhow::Result<FoundingList> {
    let target = DbTarget::parse(database_url)?;
    let db = target.connect(1).await?;
    let list = founding::list(&db)
        .await
        .with_context(|| format!("reading the founding members on {}", target.server));
    let _ = db.close().await;
    list
}

/// `founding list --csv`: the tenants only (contract section 1), one header line.
pub fn founding_csv(list: &FoundingList) -> anyhow::Result<String> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(["number", "slug", "business_name", "created_at"])?;
    for t in &list.tenants {
        out.write_record([
            t.number.to_string(),
            t.slug.clone(),
            t.business_name.clone(),
            t.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        ])?;
    }
    Ok(String::from_utf8(out.into_inner()?)?)
}

/// `founding list` for people: a table, then what no tenant holds.
pub fn founding_human(list: &FoundingList) -> String {
    let slug_width = list
        .tenants
        .iter()
        .map(|t| t.slug.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!(
        "{:>7}  {:<slug_width$}  {:<27}  business name\n",
        "number", "slug", "created at"
    );
    for t in &list.tenants {
        out += &format!(
            "{:>7}  {:<slug_width$}  {:<27}  {}\n",
            t.number,
            t.slug,
            t.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            t.business_name
        );
    }
    let numbers = |v: &[i32]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    out += &format!(
        "{} numbered tenants; pooled numbers: {}; retired numbers: {}\n",
        list.tenants.len(),
        numbers(&list.pooled),
        numbers(&list.retired)
    );
    out
}

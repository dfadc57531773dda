//! The audit log writer. Requests hand entries to a channel and a background
//! task writes them in batches, so auditing costs a mutating request one
//! channel send rather than one more database write.

use api::ids::UserId;
use serde_json::json;
use tokio::sync::mpsc;

use crate::db::Db;
use crate::tasks::{Activator, BackgroundTask, Outcome, TaskError};

#[derive(Debug, Clone)]
pub struct Entry {
    pub at: i64,
    pub user: Option<(UserId, String)>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub result: String,
}

/// Where requests record entries; the [`AuditWriter`] task writes them.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Entry>,
    writer: Activator,
}

impl AuditLog {
    /// The log, and the writer task to start (see `crate::tasks`).
    /// Entries recorded before the writer starts wait in the queue.
    pub fn new(db: Db) -> (Self, AuditWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Activator::new();
        let log = Self {
            tx,
            writer: writer.clone(),
        };
        (
            log,
            AuditWriter {
                db,
                rx,
                activator: writer,
                written: 0,
                lost: 0,
                batch: Vec::with_capacity(BATCH),
            },
        )
    }

    pub fn record(&self, e: Entry) {
        if let Err(err) = self.tx.try_send(e) {
            tracing::error!(error = %err, "audit entry lost");
        }
        self.writer.activate();
    }
}

/// Entries waiting to be written before new ones are dropped.
const QUEUE: usize = 65_536;

/// Entries written per transaction.
const BATCH: usize = 256;

/// The background task that drains the queue into `audit_log`; activated
/// by every entry recorded.
pub struct AuditWriter {
    db: Db,
    rx: mpsc::Receiver<Entry>,
    activator: Activator,
    written: u64,
    lost: u64,
    batch: Vec<Entry>,
}

impl AuditWriter {
    /// What wakes this task: the activator every `record` calls.
    pub fn activator(&self) -> Activator {
        self.activator.clone()
    }
}

impl BackgroundTask for AuditWriter {
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        let mut failure = None;
        // Whatever is queued now, in batches; entries recorded meanwhile
        // activated the task again.
        loop {
            self.batch.clear();
            while self.batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(e) => self.batch.push(e),
                    Err(_) => break,
                }
            }
            if self.batch.is_empty() {
                break;
            }
            match write_batch(&self.db, &self.batch).await {
                Ok(()) => self.written += self.batch.len() as u64,
                Err(e) => {
                    tracing::error!(error = %e, lost = self.batch.len(), "cannot write audit entries");
                    self.lost += self.batch.len() as u64;
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(Outcome::ran(json!({
                "written": self.written,
                "lost": self.lost,
                "queued": self.rx.len(),
            }))),
        }
    }
}

/// Rows per INSERT: 8 columns each keeps a statement well under SQLite's
/// 32,766 bound parameters and PostgreSQL's 65,535.
const ROWS_PER_INSERT: usize = 64;

/// Writes a batch as a few multi-row INSERTs in one transaction: each
/// statement is a round trip (and, on SQLite, a thread hand-off).
async fn write_batch(db: &Db, batch: &[Entry]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin_write().await?;
    for chunk in batch.chunks(ROWS_PER_INSERT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|r| {
                let p: Vec<String> = (1..=8).map(|c| format!("${}", r * 8 + c)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO audit_log (id, at, user_id, user_name, method, path, status, result) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(e.at)
                .bind(e.user.as_ref().map(|u| u.0.to_string()))
                .bind(e.user.as_ref().map(|u| u.1.clone()))
                .bind(e.method.clone())
                .bind(e.path.clone())
                .bind(e.status as i64)
                .bind(e.result.clone());
        }
        q.execute(&mut **tx).await?;
    }
    tx.commit().await
}

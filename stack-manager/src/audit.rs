//! The audit log writer. Requests hand entries to a channel and a background
//! task writes them in batches, so auditing costs a mutating request one
//! channel send rather than one more database write.

use serde_json::json;
use tokio::sync::mpsc;

use crate::db::Db;
use crate::store::Store;
use crate::tasks::{Activator, BackgroundTask, Outcome, TaskError};

pub use crate::store::audit::AuditEntry as Entry;

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
                store: Store::new(db),
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
    store: Store,
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
            match self.store.audit_write(&self.batch).await {
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

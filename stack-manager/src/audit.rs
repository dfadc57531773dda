//! The audit log writer. Requests hand entries to a channel and a background
//! task writes them in batches, so auditing costs a mutating request one
//! channel send rather than one more database write.

use api::ids::UserId;
use tokio::sync::mpsc;

use crate::db::Db;

#[derive(Debug, Clone)]
pub struct Entry {
    pub at: i64,
    pub user: Option<(UserId, String)>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub result: String,
}

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Entry>,
}

impl AuditLog {
    /// Starts the writer task. Entries are flushed at least every 200 ms.
    pub fn start(db: Db) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(db, rx));
        Self { tx }
    }

    pub fn record(&self, e: Entry) {
        if let Err(err) = self.tx.try_send(e) {
            tracing::error!(error = %err, "audit entry lost");
        }
    }
}

/// Entries waiting to be written before new ones are dropped.
const QUEUE: usize = 65_536;

async fn writer(db: Db, mut rx: mpsc::Receiver<Entry>) {
    let mut batch = Vec::with_capacity(256);
    loop {
        if rx.recv_many(&mut batch, 256).await == 0 {
            return;
        }
        if let Err(e) = write_batch(&db, &batch).await {
            tracing::error!(error = %e, lost = batch.len(), "cannot write audit entries");
        }
        batch.clear();
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

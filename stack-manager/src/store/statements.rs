//! Counting the SQL statements the process runs, for benchmarks and tests
//! that hold a code path to a fixed number of them.
//!
//! sqlx reports every statement it executes as a `tracing` event with the
//! target `sqlx::query` (at `DEBUG`, unless it was slow). Counting those
//! events counts what really reached the database, whichever module sent
//! it, rather than trusting each call site to count itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{filter_fn, Filtered};
use tracing_subscriber::layer::{Context, Layer};

/// A counter of executed statements, shared by its [`layer`](Self::layer).
#[derive(Clone, Default)]
pub struct StatementCounter {
    count: Arc<AtomicU64>,
}

impl StatementCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Statements executed since the counter was made.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A layer that counts, enabled for sqlx's statement events only (so
    /// that installing it turns no other logging on).
    pub fn layer<S: Subscriber>(
        &self,
    ) -> Filtered<CountLayer, impl tracing_subscriber::layer::Filter<S> + 'static, S> {
        CountLayer {
            count: self.count.clone(),
        }
        .with_filter(filter_fn(|m| m.target() == "sqlx::query"))
    }
}

pub struct CountLayer {
    count: Arc<AtomicU64>,
}

impl<S: Subscriber> Layer<S> for CountLayer {
    fn on_event(&self, _event: &Event<'_>, _ctx: Context<'_, S>) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

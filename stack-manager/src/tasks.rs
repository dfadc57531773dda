//! Background tasks: one shape for everything the stack manager does on its
//! own (host reconcilers, scheduler refresh, audit writer, planner
//! statistics, and whatever comes next).
//!
//! A task is a named body with one method, [`BackgroundTask::activate`]:
//! "look at the world and act". It is activated by a timer (its period,
//! counted from the end of its last run), by anyone holding its
//! [`Activator`], or both. Activations that arrive while it runs are folded
//! into one more run, so a burst of wake-ups costs one pass, never a queue.
//! Bodies are idempotent: a run that fails or is cut short by a shutdown
//! is simply run again.
//!
//! Construction is two-phase so that nothing needs a handle to what owns
//! it: the [`Activator`]s are made first and handed to whoever wakes a task
//! (they live in `AppState`); the bodies are made afterwards, with what
//! they need, and [`Tasks::start`] runs each in its own loop. The registry
//! keeps only each task's status and activator, never its body.
//!
//! For each task the registry records when its last run started and
//! finished, how long it took, what woke it, its runs and failures, its last
//! error and the body's own counters (`details`). Operators read them at
//! `GET /v1/system/tasks` (`strato system tasks`) and in `/metrics`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::resources::{TaskActivation, TaskState, TaskStatus};
use chrono::Utc;
use prometheus::{GaugeVec, IntCounterVec};
use tokio::sync::{watch, Notify};

/// What a failed run reports: only its message is kept.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The body's own counters and findings, shown as the task's `details`.
    pub details: serde_json::Value,
    /// The task has nothing left to do, ever (a reconciler whose host was
    /// deleted): its loop ends and it leaves the registry.
    pub retire: bool,
}

impl Outcome {
    pub fn ran(details: serde_json::Value) -> Self {
        Self {
            details,
            retire: false,
        }
    }

    pub fn retire(details: serde_json::Value) -> Self {
        Self {
            details,
            retire: true,
        }
    }
}

/// The body of a background task.
pub trait BackgroundTask: Send + 'static {
    /// One run: converge what this task is about, report what it did.
    fn activate(&mut self) -> impl Future<Output = Result<Outcome, TaskError>> + Send;
}

/// Wakes one task. Cheap to clone and to call from a request handler: an
/// activation before the task started, or while it runs, is kept (one
/// permit) and runs it once more, never more.
#[derive(Clone, Default)]
pub struct Activator(Arc<Notify>);

impl Activator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn activate(&self) {
        self.0.notify_one();
    }
}

/// What a task is, as registered.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Unique; a family of tasks shares a prefix (`reconciler/<host>`).
    pub name: String,
    pub description: String,
    /// Run again this long after the end of the last run, even when nobody
    /// activated it. `None`: only on activation.
    pub period: Option<Duration>,
}

/// The per-task series of `/metrics`.
#[derive(Clone)]
pub struct TaskMetrics {
    pub runs: IntCounterVec,
    pub errors: IntCounterVec,
    pub last_duration_seconds: GaugeVec,
    pub last_run_timestamp_seconds: GaugeVec,
}

impl TaskMetrics {
    fn forget(&self, task: &str) {
        // A series that never existed (no run yet) is not an error.
        let _ = self.runs.remove_label_values(&[task]);
        let _ = self.errors.remove_label_values(&[task]);
        let _ = self.last_duration_seconds.remove_label_values(&[task]);
        let _ = self.last_run_timestamp_seconds.remove_label_values(&[task]);
    }
}

/// One registered task as the registry sees it.
struct Slot {
    spec: TaskSpec,
    activator: Activator,
    status: Mutex<Record>,
}

#[derive(Default)]
struct Record {
    running_since: Option<chrono::DateTime<Utc>>,
    runs: u64,
    errors: u64,
    last_activation: Option<TaskActivation>,
    last_started_at: Option<chrono::DateTime<Utc>>,
    last_finished_at: Option<chrono::DateTime<Utc>>,
    last_duration: Option<Duration>,
    last_error: Option<String>,
    last_error_at: Option<chrono::DateTime<Utc>>,
    details: serde_json::Value,
}

impl Slot {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> TaskStatus {
        let r = self.record();
        TaskStatus {
            name: self.spec.name.clone(),
            description: self.spec.description.clone(),
            period_secs: self.spec.period.map(|p| p.as_secs_f64()),
            state: if r.running_since.is_some() {
                TaskState::Running
            } else {
                TaskState::Idle
            },
            runs: r.runs,
            errors: r.errors,
            last_activation: r.last_activation,
            last_started_at: r.last_started_at,
            last_finished_at: r.last_finished_at,
            last_duration_ms: r.last_duration.map(|d| d.as_secs_f64() * 1000.0),
            last_error: r.last_error.clone(),
            last_error_at: r.last_error_at,
            details: r.details.clone(),
        }
    }
}

struct Registry {
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    metrics: TaskMetrics,
    stop: watch::Sender<bool>,
}

/// The registry of running tasks: their statuses, and the switch that stops
/// them all.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Registry>,
}

impl Tasks {
    pub fn new(metrics: TaskMetrics) -> Self {
        Self {
            inner: Arc::new(Registry {
                slots: Mutex::new(BTreeMap::new()),
                metrics,
                stop: watch::channel(false).0,
            }),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Slot>>> {
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `body` as the task `spec`, woken by `activator` and its period,
    /// until [`shutdown`](Self::shutdown) or until it retires. A task of the
    /// same name still registered (one that is retiring) is replaced.
    pub fn start(&self, spec: TaskSpec, activator: Activator, body: impl BackgroundTask) {
        if *self.inner.stop.borrow() {
            return;
        }
        let slot = Arc::new(Slot {
            spec,
            activator,
            status: Mutex::new(Record::default()),
        });
        self.slots()
            .insert(slot.spec.name.clone(), Arc::clone(&slot));
        let stop = self.inner.stop.subscribe();
        tokio::spawn(drive(self.clone(), slot, body, stop));
    }

    /// Every task's status, by name, starting after `after`; at most
    /// `limit`, and whether more follow.
    pub fn statuses(&self, after: Option<&str>, limit: usize) -> (Vec<TaskStatus>, bool) {
        use std::ops::Bound;
        let slots: Vec<Arc<Slot>> = {
            let map = self.slots();
            let start = match after {
                Some(a) => Bound::Excluded(a.to_string()),
                None => Bound::Unbounded,
            };
            map.range((start, Bound::Unbounded))
                .take(limit.saturating_add(1))
                .map(|(_, s)| Arc::clone(s))
                .collect()
        };
        let more = slots.len() > limit;
        let statuses = slots.iter().take(limit).map(|s| s.status()).collect();
        (statuses, more)
    }

    /// One task's status.
    pub fn status(&self, name: &str) -> Option<TaskStatus> {
        let slot = self.slots().get(name).cloned();
        slot.map(|s| s.status())
    }

    /// Activates the task `name`, if there is one.
    pub fn activate(&self, name: &str) -> bool {
        let slot = self.slots().get(name).cloned();
        slot.map(|s| s.activator.activate()).is_some()
    }

    /// Stops every task: a running activation is cut short (bodies are
    /// idempotent, and a transaction cut short rolls back), and no task
    /// starts any more.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    fn retire(&self, slot: &Arc<Slot>) {
        let mut slots = self.slots();
        // A successor of the same name may already be registered.
        if slots
            .get(&slot.spec.name)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            slots.remove(&slot.spec.name);
            drop(slots);
            self.inner.metrics.forget(&slot.spec.name);
        }
    }
}

/// One task's loop: wait for an activation (or the period), run, record.
async fn drive(
    tasks: Tasks,
    slot: Arc<Slot>,
    mut body: impl BackgroundTask,
    mut stop: watch::Receiver<bool>,
) {
    let name = slot.spec.name.clone();
    let metrics = tasks.inner.metrics.clone();
    // Counters start at zero rather than appearing at the first run, so
    // that a rate over them is right from the start.
    metrics.runs.with_label_values(&[&name]);
    metrics.errors.with_label_values(&[&name]);
    loop {
        let period = slot.spec.period;
        let timer = async move {
            match period {
                Some(p) => tokio::time::sleep(p).await,
                None => std::future::pending().await,
            }
        };
        let activation = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = slot.activator.0.notified() => TaskActivation::Notify,
            _ = timer => TaskActivation::Timer,
        };
        let started_at = Utc::now();
        {
            let mut r = slot.record();
            r.running_since = Some(started_at);
            r.last_activation = Some(activation);
            r.last_started_at = Some(started_at);
        }
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            r = body.activate() => r,
        };
        let took = started.elapsed();
        let finished_at = Utc::now();
        let retire = {
            let mut r = slot.record();
            r.running_since = None;
            r.runs += 1;
            r.last_finished_at = Some(finished_at);
            r.last_duration = Some(took);
            match result {
                Ok(outcome) => {
                    r.details = outcome.details;
                    outcome.retire
                }
                Err(e) => {
                    r.errors += 1;
                    r.last_error = Some(e.to_string());
                    r.last_error_at = Some(finished_at);
                    tracing::warn!(task = %name, error = %e, "background task failed");
                    metrics.errors.with_label_values(&[&name]).inc();
                    false
                }
            }
        };
        if retire {
            tasks.retire(&slot);
            return;
        }
        metrics.runs.with_label_values(&[&name]).inc();
        metrics
            .last_duration_seconds
            .with_label_values(&[&name])
            .set(took.as_secs_f64());
        metrics
            .last_run_timestamp_seconds
            .with_label_values(&[&name])
            .set(finished_at.timestamp_millis() as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> TaskMetrics {
        crate::metrics::Metrics::new().tasks
    }

    struct Counter {
        runs: Arc<std::sync::atomic::AtomicU64>,
        fail_every_other: bool,
        retire_after: Option<u64>,
    }

    impl BackgroundTask for Counter {
        async fn activate(&mut self) -> Result<Outcome, TaskError> {
            let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if self.fail_every_other && n.is_multiple_of(2) {
                return Err("even run".into());
            }
            let details = serde_json::json!({ "n": n });
            Ok(match self.retire_after {
                Some(last) if n >= last => Outcome::retire(details),
                _ => Outcome::ran(details),
            })
        }
    }

    fn spec(name: &str, period: Option<Duration>) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            description: "test".into(),
            period,
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn activations_run_the_body_and_are_recorded() {
        let tasks = Tasks::new(metrics());
        let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let activator = Activator::new();
        // Activated before it starts: the activation is kept.
        activator.activate();
        tasks.start(
            spec("t", None),
            activator.clone(),
            Counter {
                runs: runs.clone(),
                fail_every_other: true,
                retire_after: None,
            },
        );
        until("first run", || {
            tasks.status("t").is_some_and(|s| s.runs == 1)
        })
        .await;
        let s = tasks.status("t").unwrap();
        assert_eq!(s.errors, 0);
        assert_eq!(s.details, serde_json::json!({ "n": 1 }));
        assert_eq!(s.last_activation, Some(TaskActivation::Notify));
        activator.activate();
        until("second run", || {
            tasks.status("t").is_some_and(|s| s.runs == 2)
        })
        .await;
        let s = tasks.status("t").unwrap();
        assert_eq!(s.errors, 1);
        assert_eq!(s.last_error.as_deref(), Some("even run"));
        assert!(s.last_error_at.is_some());
        // Details stay those of the last run that succeeded.
        assert_eq!(s.details, serde_json::json!({ "n": 1 }));
        tasks.shutdown();
    }

    #[tokio::test]
    async fn a_period_runs_the_task_without_activation() {
        let tasks = Tasks::new(metrics());
        let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tasks.start(
            spec("timer", Some(Duration::from_millis(10))),
            Activator::new(),
            Counter {
                runs: runs.clone(),
                fail_every_other: false,
                retire_after: None,
            },
        );
        until("three timer runs", || {
            tasks.status("timer").is_some_and(|s| s.runs >= 3)
        })
        .await;
        let s = tasks.status("timer").unwrap();
        assert_eq!(s.last_activation, Some(TaskActivation::Timer));
        tasks.shutdown();
        let after = runs.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(runs.load(std::sync::atomic::Ordering::SeqCst) <= after + 1);
    }

    #[tokio::test]
    async fn a_retired_task_leaves_the_registry_and_pages_are_by_name() {
        let tasks = Tasks::new(metrics());
        for name in ["b", "a", "c"] {
            tasks.start(
                spec(name, None),
                Activator::new(),
                Counter {
                    runs: Arc::default(),
                    fail_every_other: false,
                    retire_after: Some(1),
                },
            );
        }
        let (first, more) = tasks.statuses(None, 2);
        assert_eq!(
            first.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(more);
        let (rest, more) = tasks.statuses(Some("b"), 2);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].name, "c");
        assert!(!more);
        assert!(tasks.activate("b"));
        until("b retires", || tasks.status("b").is_none()).await;
        assert!(!tasks.activate("b"));
        assert_eq!(tasks.statuses(None, 10).0.len(), 2);
        tasks.shutdown();
    }
}

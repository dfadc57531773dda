//! Prometheus metrics, served as text at `GET /metrics`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::state::AppState;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub placement_seconds: HistogramVec,
    pub hosts: IntGaugeVec,
    /// 1 while the mass-failure guard holds automatic evacuation.
    pub evacuation_paused: prometheus::IntGauge,
    /// Copies of replicated volumes (besides their primaries) by state.
    pub volume_copies: IntGaugeVec,
    /// What every copy still has to be resent, summed: replication lag.
    pub volume_copies_behind_bytes: prometheus::IntGauge,
    /// Per background task (`crate::tasks`), labelled by its name.
    pub tasks: crate::tasks::TaskMetrics,
    /// Per lease (`crate::lease`), labelled by its name.
    pub leases: crate::lease::LeaseMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "strato_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("static metric definition");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "strato_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["method", "route"],
        )
        .expect("static metric definition");
        let placement_seconds = HistogramVec::new(
            HistogramOpts::new(
                "strato_scheduler_placement_duration_seconds",
                "Time to filter, weigh and claim a host",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
                0.005, 0.0075, 0.01, 0.025, 0.1,
            ]),
            &["kind", "result"],
        )
        .expect("static metric definition");
        let hosts = IntGaugeVec::new(
            Opts::new("strato_hosts", "Hosts by kind and health"),
            &["kind", "health"],
        )
        .expect("static metric definition");
        let evacuation_paused = prometheus::IntGauge::new(
            "strato_evacuation_paused",
            "1 while the mass-failure guard pauses automatic evacuation",
        )
        .expect("static metric definition");
        let volume_copies = IntGaugeVec::new(
            Opts::new(
                "strato_volume_copies",
                "Copies of replicated volumes besides their primaries, by state",
            ),
            &["state"],
        )
        .expect("static metric definition");
        let volume_copies_behind_bytes = prometheus::IntGauge::new(
            "strato_volume_copies_behind_bytes",
            "Bytes of regions primaries still have to resend to their copies",
        )
        .expect("static metric definition");
        let tasks = crate::tasks::TaskMetrics {
            runs: IntCounterVec::new(
                Opts::new(
                    "strato_task_runs_total",
                    "Finished runs of a background task, failed ones included",
                ),
                &["task"],
            )
            .expect("static metric definition"),
            errors: IntCounterVec::new(
                Opts::new(
                    "strato_task_errors_total",
                    "Runs of a background task that failed",
                ),
                &["task"],
            )
            .expect("static metric definition"),
            last_duration_seconds: GaugeVec::new(
                Opts::new(
                    "strato_task_last_duration_seconds",
                    "How long the last run of a background task took",
                ),
                &["task"],
            )
            .expect("static metric definition"),
            last_run_timestamp_seconds: GaugeVec::new(
                Opts::new(
                    "strato_task_last_run_timestamp_seconds",
                    "When the last run of a background task finished (Unix time)",
                ),
                &["task"],
            )
            .expect("static metric definition"),
        };
        let leases = crate::lease::LeaseMetrics {
            held: IntGaugeVec::new(
                Opts::new(
                    "strato_lease_held",
                    "1 while this replica holds the lease (its task runs here)",
                ),
                &["lease"],
            )
            .expect("static metric definition"),
            token: IntGaugeVec::new(
                Opts::new(
                    "strato_lease_token",
                    "The fencing token of the lease as this replica last held it",
                ),
                &["lease"],
            )
            .expect("static metric definition"),
            acquired: IntCounterVec::new(
                Opts::new(
                    "strato_lease_acquisitions_total",
                    "Times this replica took a lease over (a handover to it)",
                ),
                &["lease"],
            )
            .expect("static metric definition"),
            lost: IntCounterVec::new(
                Opts::new(
                    "strato_lease_losses_total",
                    "Times this replica found a lease it held taken over by another",
                ),
                &["lease"],
            )
            .expect("static metric definition"),
            refused_writes: IntCounterVec::new(
                Opts::new(
                    "strato_lease_refused_writes_total",
                    "Writes of a leased task refused because its fencing token was stale",
                ),
                &["lease"],
            )
            .expect("static metric definition"),
        };
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(placement_seconds.clone()),
            Box::new(hosts.clone()),
            Box::new(evacuation_paused.clone()),
            Box::new(volume_copies.clone()),
            Box::new(volume_copies_behind_bytes.clone()),
            Box::new(tasks.runs.clone()),
            Box::new(tasks.errors.clone()),
            Box::new(tasks.last_duration_seconds.clone()),
            Box::new(tasks.last_run_timestamp_seconds.clone()),
            Box::new(leases.held.clone()),
            Box::new(leases.token.clone()),
            Box::new(leases.acquired.clone()),
            Box::new(leases.lost.clone()),
            Box::new(leases.refused_writes.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            requests,
            request_seconds,
            placement_seconds,
            hosts,
            evacuation_paused,
            volume_copies,
            volume_copies_behind_bytes,
            tasks,
            leases,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts and times every request by its route template (not its path, so
/// ids do not explode the label set).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Arbitrary method names from the network must not mint label values.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state
        .metrics
        .requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`.
pub async fn serve(
    State(state): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    state.scheduler.export_host_gauges(&state.metrics.hosts);
    match state.store.volume_copy_figures().await {
        Ok((by_state, behind)) => {
            for s in ["in_sync", "out_of_sync"] {
                let n = by_state.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
                state.metrics.volume_copies.with_label_values(&[s]).set(n);
            }
            state.metrics.volume_copies_behind_bytes.set(behind);
        }
        Err(e) => tracing::warn!(error = %e.message, "cannot read volume copy figures"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

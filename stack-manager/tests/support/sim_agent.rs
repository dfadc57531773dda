//! Simulated agents: many fake hosts behind one HTTP server, speaking the
//! real agent contract (`api::internal`). They exist for the stack manager's
//! own tests and the scale benchmark only — real hosts run the hypervisor
//! and storage agents. A simulated host "realizes" a spec instantly.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::ids::{HostId, InstanceId, VolumeId};
use api::internal::*;
use api::resources::{Capacity, HostKind};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Json, Router};
use futures::StreamExt;

#[derive(Default)]
pub struct SimHost {
    pub host_id: Option<HostId>,
    pub credential: String,
    pub kind: Option<HostKind>,
    pub capacity: Capacity,
    pub instances: HashMap<InstanceId, InstanceSpec>,
    pub volumes: HashMap<VolumeId, VolumeSpec>,
    /// Every PUT/DELETE received, for assertions on idempotency.
    pub calls: u64,
    /// When set, every call fails with 500 (an agent in trouble).
    pub failing: bool,
    /// How a console stream opened from now on behaves.
    pub console: SimConsole,
    /// Instances whose guest died: reported `crashed` until a push with a
    /// newer generation starts them again (as the real agent does).
    pub crashed: HashSet<InstanceId>,
}

/// What `GET .../console/stream` does after its first line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SimConsole {
    /// [`CONSOLE_LINES`] numbered lines, then the body ends (as when the
    /// instance is deleted).
    #[default]
    Lines,
    /// A numbered line every few milliseconds, forever.
    Endless,
    /// The connection breaks after the first numbered line (an agent crash).
    Breaks,
}

/// Numbered lines a [`SimConsole::Lines`] stream prints after its first line.
pub const CONSOLE_LINES: usize = 3;

#[derive(Clone, Default)]
pub struct SimFleet {
    pub hosts: Arc<Mutex<HashMap<String, SimHost>>>,
    pub addr: Option<SocketAddr>,
    /// Console streams being served now, across all hosts: one that the
    /// stack manager stopped reading is dropped and no longer counted.
    pub open_console_streams: Arc<AtomicUsize>,
}

type Fleet = Arc<Mutex<HashMap<String, SimHost>>>;

#[derive(Clone)]
struct FleetState {
    hosts: Fleet,
    open_console_streams: Arc<AtomicUsize>,
}

impl axum::extract::FromRef<FleetState> for Fleet {
    fn from_ref(s: &FleetState) -> Fleet {
        s.hosts.clone()
    }
}

impl SimFleet {
    /// Starts the fleet's HTTP server on a loopback port.
    pub async fn start() -> Self {
        let hosts: Fleet = Arc::default();
        let open_console_streams = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/h/{key}/agent/v1/instances", get(instance_list))
            .route(
                "/h/{key}/agent/v1/instances/{id}",
                put(instance_put).delete(instance_delete),
            )
            .route("/h/{key}/agent/v1/instances/{id}/console", get(console))
            .route(
                "/h/{key}/agent/v1/instances/{id}/console/stream",
                get(console_stream),
            )
            .route("/h/{key}/agent/v1/volumes", get(volume_list))
            .route(
                "/h/{key}/agent/v1/volumes/{id}",
                put(volume_put).delete(volume_delete),
            )
            .with_state(FleetState {
                hosts: hosts.clone(),
                open_console_streams: open_console_streams.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sim fleet");
        let addr = listener.local_addr().expect("sim fleet address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            hosts,
            addr: Some(addr),
            open_console_streams,
        }
    }

    pub fn open_console_streams(&self) -> usize {
        self.open_console_streams.load(Ordering::SeqCst)
    }

    pub fn agent_url(&self, key: &str) -> String {
        format!("http://{}/h/{key}", self.addr.expect("fleet started"))
    }

    /// Enrolls a simulated host through the real internal API.
    pub async fn enroll(
        &self,
        internal: &api::InternalClient,
        token: &str,
        key: &str,
        kind: HostKind,
        capacity: Capacity,
    ) -> Result<HostId, api::ClientError> {
        self.enroll_on(internal, token, key, kind, capacity, None)
            .await
    }

    /// [`enroll`](Self::enroll), naming the provisioner's machine behind it.
    pub async fn enroll_on(
        &self,
        internal: &api::InternalClient,
        token: &str,
        key: &str,
        kind: HostKind,
        capacity: Capacity,
        machine_id: Option<String>,
    ) -> Result<HostId, api::ClientError> {
        let req = EnrollRequest {
            token: token.to_string(),
            name: key.to_string(),
            kind,
            agent_url: self.agent_url(key),
            capacity,
            initiator_iqn: (kind == HostKind::Hypervisor).then(|| sim_iqn(key)),
            iscsi_portal: (kind == HostKind::Storage).then(|| "127.0.0.1:3260".to_string()),
            machine_id,
            replication_address: None,
        };
        let resp = internal.enroll(&req).await?;
        self.hosts.lock().unwrap().insert(
            key.to_string(),
            SimHost {
                host_id: Some(resp.host_id),
                credential: resp.credential,
                kind: Some(kind),
                capacity,
                ..Default::default()
            },
        );
        Ok(resp.host_id)
    }

    /// What a host would report in a heartbeat now.
    pub fn heartbeat_of(&self, key: &str) -> Option<(HostId, String, Heartbeat)> {
        let hosts = self.hosts.lock().unwrap();
        let h = hosts.get(key)?;
        Some((
            h.host_id?,
            h.credential.clone(),
            Heartbeat {
                capacity: h.capacity,
                instances: h.instances.values().map(|s| observed(h, s)).collect(),
                volumes: h.volumes.values().map(observed_volume).collect(),
            },
        ))
    }

    /// Sends one heartbeat for `key` through the real internal API.
    pub async fn heartbeat(&self, internal_url: &str, key: &str) -> Result<(), api::ClientError> {
        let (id, credential, hb) = self.heartbeat_of(key).expect("known sim host");
        api::InternalClient::new(internal_url, Some(credential))
            .heartbeat(id, &hb)
            .await?;
        Ok(())
    }

    pub fn with_host<T>(&self, key: &str, f: impl FnOnce(&mut SimHost) -> T) -> T {
        f(self
            .hosts
            .lock()
            .unwrap()
            .get_mut(key)
            .expect("known sim host"))
    }

    pub fn instance_count(&self) -> usize {
        self.hosts
            .lock()
            .unwrap()
            .values()
            .map(|h| h.instances.len())
            .sum()
    }
}

/// What the host reports of one instance: its spec's power state, or
/// `crashed` while its guest is dead.
fn observed(h: &SimHost, s: &InstanceSpec) -> ObservedInstance {
    let mut o = observed_instance(s);
    if h.crashed.contains(&s.id) {
        o.state = ObservedInstanceState::Crashed;
        o.reason = Some("QEMU exited (simulated crash)".into());
    }
    o
}

fn observed_instance(s: &InstanceSpec) -> ObservedInstance {
    ObservedInstance {
        id: s.id,
        state: match s.power {
            PowerState::Running => ObservedInstanceState::Running,
            PowerState::Stopped => ObservedInstanceState::Stopped,
        },
        generation: s.generation,
        reboot_count: s.reboot_count,
        reason: None,
    }
}

fn observed_volume(s: &VolumeSpec) -> ObservedVolume {
    ObservedVolume {
        id: s.id,
        state: ObservedVolumeState::Available,
        generation: s.generation,
        size_bytes: s.size_bytes,
        snapshots: s.snapshots.clone(),
        reason: None,
        lun: 0,
        replication: None,
    }
}

/// Checks the stack manager's bearer credential and returns the host.
fn authorized<'a>(
    hosts: &'a mut HashMap<String, SimHost>,
    key: &str,
    headers: &HeaderMap,
) -> Result<&'a mut SimHost, StatusCode> {
    let h = hosts.get_mut(key).ok_or(StatusCode::NOT_FOUND)?;
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(h.credential.as_str()) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    if h.failing {
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    }
    h.calls += 1;
    Ok(h)
}

async fn instance_put(
    State(f): State<Fleet>,
    Path((key, _id)): Path<(String, InstanceId)>,
    headers: HeaderMap,
    Json(spec): Json<InstanceSpec>,
) -> Result<Json<ObservedInstance>, StatusCode> {
    let mut hosts = f.lock().unwrap();
    let h = authorized(&mut hosts, &key, &headers)?;
    // A newer generation starts a crashed guest again.
    if h.instances
        .get(&spec.id)
        .is_some_and(|old| old.generation < spec.generation)
    {
        h.crashed.remove(&spec.id);
    }
    h.instances.insert(spec.id, spec.clone());
    Ok(Json(observed(h, &spec)))
}

async fn instance_delete(
    State(f): State<Fleet>,
    Path((key, id)): Path<(String, InstanceId)>,
    headers: HeaderMap,
) -> Result<StatusCode, StatusCode> {
    let mut hosts = f.lock().unwrap();
    let h = authorized(&mut hosts, &key, &headers)?;
    h.instances.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

async fn instance_list(
    State(f): State<Fleet>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<ObservedInstance>>, StatusCode> {
    let mut hosts = f.lock().unwrap();
    let h = authorized(&mut hosts, &key, &headers)?;
    let h = &*h;
    Ok(Json(h.instances.values().map(|s| observed(h, s)).collect()))
}

async fn console(
    State(f): State<Fleet>,
    Path((key, id)): Path<(String, InstanceId)>,
    headers: HeaderMap,
) -> Result<String, StatusCode> {
    let mut hosts = f.lock().unwrap();
    let h = authorized(&mut hosts, &key, &headers)?;
    let spec = h.instances.get(&id).ok_or(StatusCode::NOT_FOUND)?;
    Ok(format!(
        "simulated console of {} ({})\n",
        spec.hostname, spec.id
    ))
}

/// Counts a console stream as open for as long as its body lives.
struct StreamGuard(Arc<AtomicUsize>);

impl StreamGuard {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn console_stream(
    State(f): State<FleetState>,
    Path((key, id)): Path<(String, InstanceId)>,
    headers: HeaderMap,
) -> Result<Response, StatusCode> {
    let (first, mode) = {
        let mut hosts = f.hosts.lock().unwrap();
        let h = authorized(&mut hosts, &key, &headers)?;
        let spec = h.instances.get(&id).ok_or(StatusCode::NOT_FOUND)?;
        (
            format!("simulated console of {} ({})\n", spec.hostname, spec.id),
            h.console,
        )
    };
    let guard = StreamGuard::new(f.open_console_streams.clone());
    let count = match mode {
        SimConsole::Lines => Some(CONSOLE_LINES),
        SimConsole::Endless => None,
        SimConsole::Breaks => Some(1),
    };
    let numbered = futures::stream::iter(1..)
        .take_while(move |n| std::future::ready(count.is_none_or(|c| *n <= c)))
        .then(|n| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(format!("line {n}\n"))
        });
    // After a pause like any line: hyper drops what it has not flushed yet
    // when a body fails, and the line before the break must get out.
    let broken =
        futures::stream::iter((mode == SimConsole::Breaks).then_some(())).then(|()| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated agent crash",
            ))
        });
    let body = futures::stream::once(async { Ok(first) })
        .chain(numbered)
        .chain(broken)
        // The guard goes wherever the body goes, and is dropped with it.
        .map(move |chunk| {
            let _ = &guard;
            chunk
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(body))
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

async fn volume_put(
    State(f): State<Fleet>,
    Path((key, _id)): Path<(String, VolumeId)>,
    headers: HeaderMap,
    Json(spec): Json<VolumeSpec>,
) -> Result<Json<ObservedVolume>, StatusCode> {
    let mut hosts = f.lock().unwrap();
    let h = authorized(&mut hosts, &key, &headers)?;
    let o = observed_volume(&spec);
    h.volumes.insert(spec.id, spec);
    Ok(Json(o))
}

async fn volume_delete(
    State(f): State<Fleet>,
    Path((key, id)): Path<(String, VolumeId)>,
    headers: HeaderMap,
) -> Result<StatusCode, StatusCode> {
    let mut hosts = f.lock().unwrap();
    let h = authorized(&mut hosts, &key, &headers)?;
    h.volumes.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

async fn volume_list(
    State(f): State<Fleet>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<ObservedVolume>>, StatusCode> {
    let mut hosts = f.lock().unwrap();
    let h = authorized(&mut hosts, &key, &headers)?;
    Ok(Json(h.volumes.values().map(observed_volume).collect()))
}

/// The initiator IQN a simulated hypervisor enrolls with.
pub fn sim_iqn(key: &str) -> String {
    format!("iqn.2026-11.io.strato.sim:{key}")
}

/// Heartbeats of simulated hosts through the real internal API, each in
/// its own task, until stopped or dropped: what keeps them alive for the
/// health monitor and the mover.
#[derive(Default)]
pub struct Beats {
    tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl Beats {
    /// Starts (or restarts) `key`'s heartbeats into `internal_url`.
    pub fn start(&self, fleet: &SimFleet, internal_url: &str, key: &str) {
        let fleet = fleet.clone();
        let url = internal_url.to_string();
        let k = key.to_string();
        let task = tokio::spawn(async move {
            loop {
                let _ = fleet.heartbeat(&url, &k).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        if let Some(old) = self.tasks.lock().unwrap().insert(key.into(), task) {
            old.abort();
        }
    }

    /// `key` falls silent (a power loss, a partition).
    pub fn stop(&self, key: &str) {
        if let Some(t) = self.tasks.lock().unwrap().remove(key) {
            t.abort();
        }
    }
}

impl Drop for Beats {
    fn drop(&mut self) {
        for (_, t) in self.tasks.lock().unwrap().drain() {
            t.abort();
        }
    }
}

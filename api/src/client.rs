//! Typed async HTTP clients: [`Client`] for the public API, [`InternalClient`]
//! for agents talking to the stack manager, [`AgentClient`] for the stack
//! manager talking to an agent.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ErrorBody, ErrorCode};
use crate::ids::*;
use crate::internal::*;
use crate::resources::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{}: {}", .body.error, .body.message)]
    Api { status: u16, body: ErrorBody },
    /// The server answered with an error status but no error body.
    #[error("HTTP {status}: {text}")]
    Http { status: u16, text: String },
    #[error("cannot reach {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected response from {url}: {source}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The API error code, when the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.error),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Bearer-authenticated JSON over HTTP; the three clients share it.
#[derive(Debug, Clone)]
pub struct Transport {
    http: reqwest::Client,
    /// For endless bodies (a live console): `http`'s total timeout would cut
    /// them off after 60 s. Built on first use, since most transports (one
    /// per reconciler pass) never open a stream.
    stream_http: std::sync::OnceLock<reqwest::Client>,
    /// Every replica of the server, as given (`http://a:7101,http://b:7101`).
    bases: std::sync::Arc<[String]>,
    /// The one that answered last: tried first.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    token: Option<String>,
}

/// How long a stream may take to connect; once connected it has no deadline.
const STREAM_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Transport {
    pub fn new(base_url: &str, token: Option<String>) -> Self {
        Self::with_http(Self::http_client(), base_url, token)
    }

    /// The HTTP client `new` builds: 60 s per request, idle connections
    /// kept for reuse. Share one across many `with_http` transports.
    pub fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            // A replica whose machine is gone answers nothing: without a
            // bound the kernel's SYN retries take minutes before the next
            // replica is tried.
            .connect_timeout(std::time::Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    }

    /// A transport on an existing client, so that callers that make one
    /// per request (the stack manager's reconcilers, one per pass) share
    /// its connection pool instead of opening a connection each time.
    ///
    /// `base_url` may name several replicas of the server, separated by
    /// commas: a call goes to the one that answered last, and moves on to
    /// the next when it cannot connect (nothing was sent, so any call may
    /// move) or, for a GET, PUT, PATCH or DELETE, when it times out (those
    /// are idempotent in this API; a POST that timed out may have been
    /// done, so it is not sent twice, but the next call starts at the next
    /// replica).
    pub fn with_http(http: reqwest::Client, base_url: &str, token: Option<String>) -> Self {
        let mut bases: Vec<String> = base_url
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect();
        if bases.is_empty() {
            bases.push(String::new());
        }
        Self {
            http,
            stream_http: std::sync::OnceLock::new(),
            bases: bases.into(),
            current: Default::default(),
            token,
        }
    }

    /// The replica calls go to first: the one that answered last.
    pub fn base_url(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len();
        &self.bases[i]
    }

    /// Every replica, in the order given.
    pub fn base_urls(&self) -> &[String] {
        &self.bases
    }

    /// The bearer token sent with every call, for clients that speak to the
    /// same server over another protocol (the CLI's WebSocket console).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn stream_client(&self) -> &reqwest::Client {
        self.stream_http.get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(STREAM_CONNECT_TIMEOUT)
                // A stream can be silent for hours; keepalive probes are what
                // notice a peer that vanished without closing the connection.
                .tcp_keepalive(std::time::Duration::from_secs(30))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new())
        })
    }

    /// Sends `method path` (with what `build` adds: a body) to the replica
    /// that answered last, then to each other one in turn while the error
    /// allows it (see [`with_http`](Self::with_http)). Returns the URL that
    /// answered and its response.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<(String, reqwest::Response)> {
        use std::sync::atomic::Ordering;
        let n = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let idempotent = method != reqwest::Method::POST;
        let mut k = 0;
        loop {
            let i = (first + k) % n;
            let url = format!("{}{}", self.bases[i], path);
            let mut req = self.http.request(method.clone(), &url);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            match Self::send(url.clone(), build(req)).await {
                Err(ClientError::Transport { source, .. })
                    if k + 1 < n
                        && (source.is_connect() || (idempotent && source.is_timeout())) =>
                {
                    k += 1;
                }
                Err(e @ ClientError::Transport { .. }) => {
                    // Not sent again (a POST that timed out may have been
                    // done), but the next call starts at the next replica:
                    // a hung one (paused, its backlog still accepting) must
                    // not take every later call, heartbeats included.
                    if n > 1 {
                        self.current.store((i + 1) % n, Ordering::Relaxed);
                    }
                    return Err(e);
                }
                other => {
                    if other.is_ok() && i != first {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return other.map(|resp| (url, resp));
                }
            }
        }
    }

    async fn send(url: String, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(ClientError::Api {
                status: status.as_u16(),
                body,
            }),
            Err(_) => Err(ClientError::Http {
                status: status.as_u16(),
                text,
            }),
        }
    }

    async fn json<T: DeserializeOwned>(url: String, resp: reqwest::Response) -> Result<T> {
        resp.json::<T>()
            .await
            .map_err(|source| ClientError::Decode { url, source })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (url, resp) = self.call(reqwest::Method::GET, path, |r| r).await?;
        Self::json(url, resp).await
    }

    /// Every item of a paginated list at `path`: asks for the largest pages
    /// and follows `next_page_token` to the last one.
    pub async fn get_all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let first = format!("{path}{sep}limit={PAGE_LIMIT_MAX}");
        let mut page: List<T> = self.get(&first).await?;
        let mut items = std::mem::take(&mut page.items);
        while let Some(token) = page.next_page_token.take() {
            page = self
                .get(&format!("{first}&page_token={}", encode(&token)))
                .await?;
            items.append(&mut page.items);
        }
        Ok(items)
    }

    /// GET whose body is read by the caller as it arrives, with no overall
    /// deadline (only connecting is bounded). Error statuses are turned into
    /// [`ClientError`]s as for every other call.
    pub async fn get_stream(&self, path: &str) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.base_url(), path);
        let mut req = self.stream_client().get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        Self::send(url, req).await
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        let (url, resp) = self.call(reqwest::Method::GET, path, |r| r).await?;
        resp.text()
            .await
            .map_err(|source| ClientError::Decode { url, source })
    }

    pub async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let (url, resp) = self.call(method, path, |r| r.json(body)).await?;
        Self::json(url, resp).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.send_json(reqwest::Method::PUT, path, body).await
    }

    pub async fn patch<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.send_json(reqwest::Method::PATCH, path, body).await
    }

    /// POST with no body and a JSON answer (actions such as `start`).
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (url, resp) = self.call(reqwest::Method::POST, path, |r| r).await?;
        Self::json(url, resp).await
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.call(reqwest::Method::DELETE, path, |r| r)
            .await
            .map(|_| ())
    }
}

fn scoped(path: &str, project: Option<&str>) -> String {
    match project {
        Some(p) => format!("{path}?project={}", encode(p)),
        None => path.to_string(),
    }
}

/// Minimal percent-encoding for a query value (ids and names are `[a-z0-9-]`,
/// but a user may type anything).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Client for the public `/v1` API.
#[derive(Debug, Clone)]
pub struct Client {
    pub transport: Transport,
    /// Project id or name used for project-scoped calls; `None` lets the
    /// server pick the caller's only project.
    pub project: Option<String>,
}

macro_rules! crud {
    // Every list is paginated: the client follows every page to the last.
    ($list:ident, $get:ident, $create:ident, $delete:ident, $path:literal, $id:ty, $create_ty:ty, $ty:ty) => {
        pub async fn $list(&self) -> Result<Vec<$ty>> {
            self.transport.get_all(&self.scoped($path)).await
        }
        crud!(@rest $get, $create, $delete, $path, $id, $create_ty, $ty);
    };
    (@rest $get:ident, $create:ident, $delete:ident, $path:literal, $id:ty, $create_ty:ty, $ty:ty) => {
        pub async fn $get(&self, id: $id) -> Result<$ty> {
            self.transport
                .get(&format!(concat!($path, "/{}"), id))
                .await
        }
        pub async fn $create(&self, body: &$create_ty) -> Result<$ty> {
            self.transport.post(&self.scoped($path), body).await
        }
        pub async fn $delete(&self, id: $id) -> Result<()> {
            self.transport
                .delete(&format!(concat!($path, "/{}"), id))
                .await
        }
    };
}

impl Client {
    pub fn new(base_url: &str, token: &str) -> Self {
        Self {
            transport: Transport::new(base_url, Some(token.to_string())),
            project: None,
        }
    }

    pub fn with_project(mut self, project: Option<String>) -> Self {
        self.project = project;
        self
    }

    /// `path` in the client's project (`?project=`), when it has one.
    pub fn scoped(&self, path: &str) -> String {
        scoped(path, self.project.as_deref())
    }

    pub async fn whoami(&self) -> Result<WhoAmI> {
        self.transport.get("/v1/whoami").await
    }

    // Identity.
    pub async fn project_list(&self) -> Result<Vec<Project>> {
        self.transport.get_all("/v1/projects").await
    }
    pub async fn project_create(&self, body: &ProjectCreate) -> Result<Project> {
        self.transport.post("/v1/projects", body).await
    }
    pub async fn project_get(&self, id_or_name: &str) -> Result<Project> {
        self.transport
            .get(&format!("/v1/projects/{}", encode(id_or_name)))
            .await
    }
    pub async fn project_delete(&self, id_or_name: &str) -> Result<()> {
        self.transport
            .delete(&format!("/v1/projects/{}", encode(id_or_name)))
            .await
    }
    pub async fn member_set(&self, project: &str, user: &str, role: ProjectRole) -> Result<User> {
        self.transport
            .put(
                &format!("/v1/projects/{}/members/{}", encode(project), encode(user)),
                &MembershipSet { role },
            )
            .await
    }
    pub async fn member_remove(&self, project: &str, user: &str) -> Result<()> {
        self.transport
            .delete(&format!(
                "/v1/projects/{}/members/{}",
                encode(project),
                encode(user)
            ))
            .await
    }
    pub async fn user_list(&self) -> Result<Vec<User>> {
        self.transport.get_all("/v1/users").await
    }
    pub async fn user_create(&self, body: &UserCreate) -> Result<User> {
        self.transport.post("/v1/users", body).await
    }
    pub async fn user_delete(&self, id_or_name: &str) -> Result<()> {
        self.transport
            .delete(&format!("/v1/users/{}", encode(id_or_name)))
            .await
    }
    /// Creates a token for `user` (admins) or for the caller (`None`).
    pub async fn token_create(
        &self,
        user: Option<&str>,
        body: &TokenCreate,
    ) -> Result<TokenCreated> {
        match user {
            Some(u) => {
                self.transport
                    .post(&format!("/v1/users/{}/tokens", encode(u)), body)
                    .await
            }
            None => self.transport.post("/v1/tokens", body).await,
        }
    }
    pub async fn token_list(&self) -> Result<Vec<Token>> {
        self.transport.get_all("/v1/tokens").await
    }
    pub async fn token_delete(&self, id: TokenId) -> Result<()> {
        self.transport.delete(&format!("/v1/tokens/{id}")).await
    }

    crud!(
        flavor_list,
        flavor_get,
        flavor_create,
        flavor_delete,
        "/v1/flavors",
        FlavorId,
        FlavorCreate,
        Flavor
    );
    crud!(
        image_list,
        image_get,
        image_create,
        image_delete,
        "/v1/images",
        ImageId,
        ImageCreate,
        Image
    );
    crud!(
        keypair_list,
        keypair_get,
        keypair_create,
        keypair_delete,
        "/v1/keypairs",
        KeypairId,
        KeypairCreate,
        Keypair
    );
    crud!(
        network_list,
        network_get,
        network_create,
        network_delete,
        "/v1/networks",
        NetworkId,
        NetworkCreate,
        Network
    );
    crud!(
        instance_list,
        instance_get,
        instance_create,
        instance_delete,
        "/v1/instances",
        InstanceId,
        InstanceCreate,
        Instance
    );
    crud!(
        volume_list,
        volume_get,
        volume_create,
        volume_delete,
        "/v1/volumes",
        VolumeId,
        VolumeCreate,
        Volume
    );
    crud!(
        group_list,
        group_get,
        group_create,
        group_delete,
        "/v1/anti-affinity-groups",
        GroupId,
        GroupCreate,
        Group
    );

    pub async fn subnet_list(&self, network: NetworkId) -> Result<Vec<Subnet>> {
        self.transport
            .get_all(&format!("/v1/networks/{network}/subnets"))
            .await
    }
    pub async fn subnet_create(&self, network: NetworkId, body: &SubnetCreate) -> Result<Subnet> {
        self.transport
            .post(&format!("/v1/networks/{network}/subnets"), body)
            .await
    }
    pub async fn subnet_get(&self, id: SubnetId) -> Result<Subnet> {
        self.transport.get(&format!("/v1/subnets/{id}")).await
    }
    pub async fn subnet_delete(&self, id: SubnetId) -> Result<()> {
        self.transport.delete(&format!("/v1/subnets/{id}")).await
    }

    pub async fn instance_action(&self, id: InstanceId, action: &str) -> Result<Instance> {
        self.transport
            .post_empty(&format!("/v1/instances/{id}/{action}"))
            .await
    }
    pub async fn instance_update(&self, id: InstanceId, body: &InstanceUpdate) -> Result<Instance> {
        self.transport
            .patch(&format!("/v1/instances/{id}"), body)
            .await
    }
    pub async fn instance_console(&self, id: InstanceId) -> Result<ConsoleLog> {
        self.transport
            .get(&format!("/v1/instances/{id}/console"))
            .await
    }
    pub async fn attachment_create(
        &self,
        instance: InstanceId,
        volume: &str,
    ) -> Result<Attachment> {
        self.transport
            .post(
                &format!("/v1/instances/{instance}/attachments"),
                &AttachmentCreate {
                    volume: volume.to_string(),
                },
            )
            .await
    }
    pub async fn attachment_delete(&self, instance: InstanceId, volume: VolumeId) -> Result<()> {
        self.transport
            .delete(&format!("/v1/instances/{instance}/attachments/{volume}"))
            .await
    }
    pub async fn snapshot_create(
        &self,
        volume: VolumeId,
        body: &SnapshotCreate,
    ) -> Result<Snapshot> {
        self.transport
            .post(&format!("/v1/volumes/{volume}/snapshots"), body)
            .await
    }
    pub async fn snapshot_list(&self) -> Result<Vec<Snapshot>> {
        self.transport.get_all(&self.scoped("/v1/snapshots")).await
    }
    pub async fn snapshot_delete(&self, id: SnapshotId) -> Result<()> {
        self.transport.delete(&format!("/v1/snapshots/{id}")).await
    }

    pub async fn quota_get(&self, project: &str) -> Result<Quota> {
        self.transport
            .get(&format!("/v1/projects/{}/quota", encode(project)))
            .await
    }
    pub async fn quota_update(&self, project: &str, body: &QuotaUpdate) -> Result<Quota> {
        self.transport
            .put(&format!("/v1/projects/{}/quota", encode(project)), body)
            .await
    }

    // Operator resources.
    pub async fn rack_list(&self) -> Result<Vec<Rack>> {
        self.transport.get_all("/v1/racks").await
    }
    pub async fn rack_create(&self, body: &RackCreate) -> Result<Rack> {
        self.transport.post("/v1/racks", body).await
    }
    pub async fn rack_delete(&self, id: RackId) -> Result<()> {
        self.transport.delete(&format!("/v1/racks/{id}")).await
    }
    pub async fn host_list(&self) -> Result<Vec<Host>> {
        self.transport.get_all("/v1/hosts").await
    }
    pub async fn host_get(&self, id: HostId) -> Result<Host> {
        self.transport.get(&format!("/v1/hosts/{id}")).await
    }
    pub async fn host_update(&self, id: HostId, body: &HostUpdate) -> Result<Host> {
        self.transport.patch(&format!("/v1/hosts/{id}"), body).await
    }
    pub async fn host_delete(&self, id: HostId) -> Result<()> {
        self.transport.delete(&format!("/v1/hosts/{id}")).await
    }
    /// Fences the host (if it is not yet) and re-creates its instances
    /// elsewhere, whatever the mass-failure guard says; see
    /// [`EvacuateRequest::confirm_fenced`].
    pub async fn host_evacuate(&self, id: HostId, body: &EvacuateRequest) -> Result<Evacuation> {
        self.transport
            .post(&format!("/v1/hosts/{id}/evacuate"), body)
            .await
    }
    /// Takes a fenced host back: its storage targets accept it again and
    /// it gets new work.
    pub async fn host_readmit(&self, id: HostId) -> Result<Host> {
        self.transport
            .post(&format!("/v1/hosts/{id}/readmit"), &serde_json::json!({}))
            .await
    }
    /// Plans a rebalancing of the hypervisors and, unless `dry_run`,
    /// hands the moves to the mover.
    pub async fn host_rebalance(&self, body: &RebalanceRequest) -> Result<RebalancePlan> {
        self.transport.post("/v1/hosts/rebalance", body).await
    }
    pub async fn host_events(&self, id: HostId) -> Result<Vec<Event>> {
        self.transport
            .get_all(&format!("/v1/hosts/{id}/events"))
            .await
    }
    pub async fn instance_events(&self, id: InstanceId) -> Result<Vec<Event>> {
        self.transport
            .get_all(&format!("/v1/instances/{id}/events"))
            .await
    }
    pub async fn evacuation_state(&self) -> Result<EvacuationState> {
        self.transport.get("/v1/system/evacuation").await
    }
    /// Lifts the mass-failure guard: automatic evacuation runs again.
    pub async fn evacuation_resume(&self) -> Result<EvacuationState> {
        self.transport
            .post("/v1/system/evacuation/resume", &serde_json::json!({}))
            .await
    }
    pub async fn enrollment_token_create(
        &self,
        body: &EnrollmentTokenCreate,
    ) -> Result<EnrollmentTokenCreated> {
        self.transport.post("/v1/enrollment-tokens", body).await
    }
    pub async fn audit_list(&self, limit: u32) -> Result<Vec<AuditRecord>> {
        Ok(self
            .transport
            .get::<List<AuditRecord>>(&format!("/v1/audit?limit={limit}"))
            .await?
            .items)
    }
    /// The stack manager's background tasks and their last runs (admin),
    /// every page.
    pub async fn system_tasks(&self) -> Result<Vec<TaskStatus>> {
        self.transport.get_all("/v1/system/tasks").await
    }
    /// The consistency checker's report (admin): read-only.
    pub async fn system_check(&self) -> Result<ConsistencyReport> {
        self.transport.get("/v1/system/check").await
    }
    /// The stack-manager replicas of the last day and their leases (admin).
    pub async fn system_replicas(&self) -> Result<Vec<Replica>> {
        Ok(self
            .transport
            .get::<List<Replica>>("/v1/system/replicas")
            .await?
            .items)
    }
    pub async fn usage(&self, q: &UsageQuery) -> Result<UsageReport> {
        let mut path = format!("/v1/usage?start={}", encode(&q.start.to_rfc3339()));
        if let Some(end) = q.end {
            path.push_str(&format!("&end={}", encode(&end.to_rfc3339())));
        }
        if let Some(p) = &q.project {
            path.push_str(&format!("&project={}", encode(p)));
        }
        self.transport.get(&path).await
    }
}

/// Client an agent uses to talk to the stack manager's internal listener.
#[derive(Debug, Clone)]
pub struct InternalClient {
    pub transport: Transport,
}

impl InternalClient {
    pub fn new(base_url: &str, credential: Option<String>) -> Self {
        Self {
            transport: Transport::new(base_url, credential),
        }
    }

    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse> {
        self.transport.post(ENROLL_PATH, req).await
    }

    pub async fn heartbeat(&self, host: HostId, hb: &Heartbeat) -> Result<HeartbeatAck> {
        self.transport.post(&heartbeat_path(host), hb).await
    }

    pub async fn desired(&self, host: HostId) -> Result<DesiredHostState> {
        self.transport.get(&desired_path(host)).await
    }
}

/// Client the stack manager uses to push desired state to an agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    pub transport: Transport,
}

impl AgentClient {
    pub fn new(agent_url: &str, credential: &str) -> Self {
        Self {
            transport: Transport::new(agent_url, Some(credential.to_string())),
        }
    }

    /// On a shared HTTP client (see [`Transport::with_http`]).
    pub fn with_http(http: reqwest::Client, agent_url: &str, credential: &str) -> Self {
        Self {
            transport: Transport::with_http(http, agent_url, Some(credential.to_string())),
        }
    }

    pub async fn instance_put(&self, spec: &InstanceSpec) -> Result<ObservedInstance> {
        self.transport
            .put(&format!("/agent/v1/instances/{}", spec.id), spec)
            .await
    }
    pub async fn instance_delete(&self, id: InstanceId) -> Result<()> {
        self.transport
            .delete(&format!("/agent/v1/instances/{id}"))
            .await
    }
    pub async fn instance_list(&self) -> Result<Vec<ObservedInstance>> {
        self.transport.get("/agent/v1/instances").await
    }
    pub async fn instance_console(&self, id: InstanceId) -> Result<String> {
        self.transport
            .get_text(&format!("/agent/v1/instances/{id}/console"))
            .await
    }
    /// Opens the live serial console: the body first carries the last few KiB
    /// of the log, then every byte the guest prints, and ends only when the
    /// instance is deleted. Read it with [`reqwest::Response::chunk`].
    pub async fn instance_console_stream(&self, id: InstanceId) -> Result<reqwest::Response> {
        self.transport
            .get_stream(&format!("/agent/v1/instances/{id}/console/stream"))
            .await
    }
    pub async fn volume_put(&self, spec: &VolumeSpec) -> Result<ObservedVolume> {
        self.transport
            .put(&format!("/agent/v1/volumes/{}", spec.id), spec)
            .await
    }
    pub async fn volume_delete(&self, id: VolumeId) -> Result<()> {
        self.transport
            .delete(&format!("/agent/v1/volumes/{id}"))
            .await
    }
    pub async fn volume_list(&self) -> Result<Vec<ObservedVolume>> {
        self.transport.get("/agent/v1/volumes").await
    }
}

/// Client of a rack's provisioner (`/v1/machines`).
#[derive(Debug, Clone)]
pub struct ProvisionerClient {
    pub transport: Transport,
}

impl ProvisionerClient {
    pub fn new(base_url: &str, token: &str) -> Self {
        Self {
            transport: Transport::new(base_url, Some(token.to_string())),
        }
    }

    pub async fn machine_list(&self) -> Result<Vec<crate::provision::Machine>> {
        self.transport.get("/v1/machines").await
    }
    /// By id or name.
    pub async fn machine_get(&self, key: &str) -> Result<crate::provision::Machine> {
        self.transport.get(&format!("/v1/machines/{key}")).await
    }
    pub async fn machine_create(
        &self,
        req: &crate::provision::MachineCreate,
    ) -> Result<crate::provision::Machine> {
        self.transport.post("/v1/machines", req).await
    }
    pub async fn machine_delete(&self, key: &str) -> Result<()> {
        self.transport.delete(&format!("/v1/machines/{key}")).await
    }
    pub async fn machine_act(
        &self,
        key: &str,
        action: &crate::provision::MachineAction,
    ) -> Result<crate::provision::Machine> {
        self.transport
            .post(&format!("/v1/machines/{key}/actions"), action)
            .await
    }
    pub async fn machine_events(&self, key: &str) -> Result<Vec<crate::provision::MachineEvent>> {
        self.transport
            .get(&format!("/v1/machines/{key}/events"))
            .await
    }
    pub async fn machine_power(&self, key: &str) -> Result<crate::provision::MachinePower> {
        self.transport
            .get(&format!("/v1/machines/{key}/power"))
            .await
    }
    /// Powers the machine off and returns once its power driver reports it
    /// off: what fencing a failed host needs before its VMs and volumes go
    /// elsewhere. Any error means it may still be running.
    pub async fn machine_fence(&self, id: MachineId) -> Result<crate::provision::MachineFenced> {
        self.transport
            .post_empty(&format!("/v1/machines/{id}/fence"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on loopback that answers every request with `body` and
    /// counts the requests.
    async fn answering(
        body: &'static str,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = vec![0u8; 8192];
                let _ = conn.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        (url, hits)
    }

    /// A loopback address nothing listens on: connecting is refused.
    fn refusing() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        url
    }

    #[tokio::test]
    async fn a_call_moves_to_the_next_replica_when_one_refuses_and_stays_there() {
        let dead = refusing();
        let (live, hits) = answering(r#"{"ok":true}"#).await;
        let t = Transport::new(&format!("{dead}, {live}/"), None);
        assert_eq!(t.base_urls(), [dead.clone(), live.clone()]);
        assert_eq!(t.base_url(), dead);
        let v: serde_json::Value = t.get("/v1/x").await.expect("the live replica answers");
        assert_eq!(v["ok"], true);
        assert_eq!(
            t.base_url(),
            live,
            "the one that answered is tried first next time"
        );
        // A POST moves on too when the connection is refused: nothing was sent.
        let t2 = Transport::new(&format!("{dead},{live}"), None);
        let v: serde_json::Value = t2.post("/v1/y", &serde_json::json!({})).await.unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_post_that_times_out_is_not_sent_again_but_the_next_call_goes_elsewhere() {
        // A replica that accepts connections and never answers (paused).
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hung_url = format!("http://{}", hung.local_addr().unwrap());
        let (live, hits) = answering(r#"{"ok":true}"#).await;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(300))
            .build()
            .unwrap();
        let t = Transport::with_http(http, &format!("{hung_url},{live}"), None);
        let r: Result<serde_json::Value> = t.post("/v1/heartbeat", &serde_json::json!({})).await;
        assert!(matches!(r, Err(ClientError::Transport { .. })), "{r:?}");
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "not sent twice"
        );
        assert_eq!(
            t.base_url(),
            live,
            "the next call starts at the next replica"
        );
        let v: serde_json::Value = t
            .post("/v1/heartbeat", &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(v["ok"], true);
        drop(hung);
    }

    #[tokio::test]
    async fn when_every_replica_refuses_the_error_names_the_last_one_tried() {
        let (a, b) = (refusing(), refusing());
        let t = Transport::new(&format!("{a},{b}"), None);
        match t.get::<serde_json::Value>("/v1/x").await {
            Err(ClientError::Transport { url, .. }) => assert_eq!(url, format!("{b}/v1/x")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            t.base_url(),
            a,
            "nothing answered: the next call starts after the last tried"
        );
    }
}

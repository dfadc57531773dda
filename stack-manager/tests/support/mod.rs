//! Test harness: a real stack manager (real HTTP listeners, real SQLite file
//! or a fresh PostgreSQL database) plus simulated agents.

#![allow(dead_code)]

/// Runs each named scenario `async fn name(Backend)` once on SQLite and
/// once on a fresh PostgreSQL database.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

pub mod sim_agent;

use std::time::Duration;

use api::resources::*;
use api::{Client, InternalClient};
use sqlx::Row;
use stack_manager::config::Config;
use stack_manager::state::AppState;

pub use sim_agent::SimFleet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestCloud {
    pub url: String,
    pub internal_url: String,
    pub admin: Client,
    pub admin_token: String,
    pub state: AppState,
    pub fleet: SimFleet,
    _dir: tempfile::TempDir,
}

/// A fresh, empty PostgreSQL database for one test. The suite needs
/// PostgreSQL: without it this fails loudly rather than skipping.
pub async fn fresh_postgres() -> String {
    let base = std::env::var("STRATO_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "STRATO_TEST_POSTGRES_URL is not set. The PostgreSQL half of the suite needs a server: \
             run the suite with `bash scripts/test.sh`, which installs and starts one."
        )
    });
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {base}: {e}"));
    let name = format!("strato_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
    format!("{prefix}/{name}")
}

impl TestCloud {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        // Server-side warnings and errors show up in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            internal_listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(fresh_postgres().await),
        };
        // Simulated hosts heartbeat only when a test says so: the health
        // monitor would fence every one of them after a few seconds. The
        // tests of self-healing turn it on (`healing.rs`).
        config.health.monitor_interval_ms = 0;
        tweak(&mut config);
        let state = AppState::start(config).await.expect("stack manager starts");
        let boot = stack_manager::server::init(&state, "admin", "admin")
            .await
            .expect("init");
        let running = stack_manager::server::start(state.clone())
            .await
            .expect("listen");
        let url = format!("http://{}", running.public);
        let internal_url = format!("http://{}", running.internal);
        let admin = Client::new(&url, &boot.token);
        Self {
            url,
            internal_url,
            admin,
            admin_token: boot.token,
            state,
            fleet: SimFleet::start().await,
            _dir: dir,
        }
    }

    /// A new empty volume of `client`'s project, once it is available.
    pub async fn available_volume(client: &Client, name: &str, size_gib: u64) -> Volume {
        let v = client
            .volume_create(&VolumeCreate {
                name: name.into(),
                size_gib,
                source: VolumeSource::Empty,
                replicas: None,
            })
            .await
            .expect("volume");
        eventually(15, || async {
            (client.volume_get(v.id).await.ok()?.status == VolumeStatus::Available).then_some(())
        })
        .await;
        v
    }

    /// Runs the consistency checker (`GET /v1/system/check`) and fails on
    /// any drift: what the crash and failure tests end with.
    pub async fn assert_consistent(&self) {
        testkit::assert_consistent(&self.admin).await;
    }

    /// Another replica on this cloud's database (PostgreSQL), serving on
    /// loopback with the same config: its public API URL and its state.
    pub async fn second_replica(&self) -> (String, AppState, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = (*self.state.config).clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.internal_listen = "127.0.0.1:0".parse().unwrap();
        config.state_dir = dir.path().to_path_buf();
        config.database_url = Some(self.state.config.database_url());
        let state = AppState::start(config)
            .await
            .expect("second replica starts");
        let running = stack_manager::server::start(state.clone())
            .await
            .expect("listen");
        (format!("http://{}", running.public), state, dir)
    }

    /// A cloud where nothing runs behind a measurement's back: simulated
    /// hosts heartbeat only at enrollment (and when told to), and no resync
    /// pass comes.
    pub async fn start_quiet(backend: Backend) -> Self {
        Self::start_with(backend, |c| {
            c.hosts.down_after_secs = 86_400;
            c.hosts.resync_interval_secs = 3600;
        })
        .await
    }

    /// [`start_quiet`](Self::start_quiet), and without the planner-statistics
    /// task, whose catalogue query every 2 s on PostgreSQL would now and
    /// then land in a test's count of statements.
    pub async fn start_counted(backend: Backend) -> Self {
        Self::start_with(backend, |c| {
            c.hosts.down_after_secs = 86_400;
            c.hosts.resync_interval_secs = 3600;
            c.database_analyze_interval_secs = 0;
            // The mover looks for moves every second: its statements
            // would land in a count too.
            c.moves.interval_ms = 0;
            // So would the lease keeper's renewals (it has no lease to
            // renew here, but its membership row).
            c.replicas.lease_ttl_ms = 7_200_000;
            c.replicas.renew_interval_ms = 3_600_000;
        })
        .await
    }

    /// Starts `key`'s heartbeats (see [`sim_agent::Beats`]).
    pub fn beat(&self, beats: &sim_agent::Beats, key: &str) {
        beats.start(&self.fleet, &self.internal_url, key);
    }

    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.url, token)
    }

    /// A new project with default quota.
    pub async fn project(&self, name: &str) -> Project {
        self.admin
            .project_create(&ProjectCreate {
                name: name.into(),
                description: String::new(),
            })
            .await
            .expect("create project")
    }

    /// A user with `role` in `project`, and a client holding their token.
    pub async fn user(&self, name: &str, project: &str, role: ProjectRole) -> Client {
        self.admin
            .user_create(&UserCreate {
                name: name.into(),
                admin: false,
            })
            .await
            .expect("create user");
        self.admin
            .member_set(project, name, role)
            .await
            .expect("membership");
        let t = self
            .admin
            .token_create(
                Some(name),
                &TokenCreate {
                    description: "test".into(),
                    expires_in_secs: None,
                },
            )
            .await
            .expect("token");
        self.client(&t.secret)
            .with_project(Some(project.to_string()))
    }

    /// Enrolls a simulated host of `kind` through the real internal API.
    pub async fn enroll(
        &self,
        key: &str,
        kind: HostKind,
        capacity: Capacity,
        rack: Option<&str>,
    ) -> api::ids::HostId {
        let token = self
            .admin
            .enrollment_token_create(&EnrollmentTokenCreate {
                kind,
                rack: rack.map(str::to_string),
                expires_in_secs: 3600,
            })
            .await
            .expect("enrollment token");
        let internal = InternalClient::new(&self.internal_url, None);
        self.fleet
            .enroll(&internal, &token.secret, key, kind, capacity)
            .await
            .expect("enroll")
    }

    /// A simulated hypervisor with the provisioner's machine `machine` behind it.
    pub async fn hypervisor_on(&self, key: &str, machine: &str) -> api::ids::HostId {
        let token = self
            .admin
            .enrollment_token_create(&EnrollmentTokenCreate {
                kind: HostKind::Hypervisor,
                rack: None,
                expires_in_secs: 3600,
            })
            .await
            .expect("enrollment token");
        let internal = InternalClient::new(&self.internal_url, None);
        let capacity = Capacity {
            vcpus: 8,
            ram_mib: 16_384,
            disk_gib: 1000,
            ..Default::default()
        };
        self.fleet
            .enroll_on(
                &internal,
                &token.secret,
                key,
                HostKind::Hypervisor,
                capacity,
                Some(machine.to_string()),
            )
            .await
            .expect("enroll")
    }

    pub async fn hypervisor(
        &self,
        key: &str,
        vcpus: u32,
        ram_mib: u64,
        rack: Option<&str>,
    ) -> api::ids::HostId {
        self.enroll(
            key,
            HostKind::Hypervisor,
            Capacity {
                vcpus,
                ram_mib,
                disk_gib: 1000,
                ..Default::default()
            },
            rack,
        )
        .await
    }

    pub async fn storage(&self, key: &str, gib: u64) -> api::ids::HostId {
        self.enroll(
            key,
            HostKind::Storage,
            Capacity {
                storage_bytes_total: gib << 30,
                storage_bytes_free: gib << 30,
                ..Default::default()
            },
            None,
        )
        .await
    }

    /// Raises `project`'s instance, vCPU, RAM (1 GiB per instance) and
    /// address quotas to room for `instances` one-vCPU instances.
    pub async fn quota_for(&self, project: &str, instances: u64) {
        self.admin
            .quota_update(
                project,
                &QuotaUpdate {
                    instances: Some(instances),
                    vcpus: Some(instances),
                    ram_mib: Some(instances * 1024),
                    addresses: Some(instances),
                    ..Default::default()
                },
            )
            .await
            .expect("quota");
    }

    /// Creates network `name` in `client`'s project with one subnet,
    /// `cidr`, whose whole range is pooled (the gateway is its first host).
    pub async fn network(client: &Client, name: &str, cidr: &str) -> Network {
        let net = client
            .network_create(&NetworkCreate {
                name: name.into(),
                vlan: None,
                mtu: 1500,
            })
            .await
            .expect("network");
        client
            .subnet_create(
                net.id,
                &SubnetCreate {
                    name: name.into(),
                    cidr: cidr.parse().expect("cidr"),
                    gateway: None,
                    pools: vec![],
                    reserved: vec![],
                    dns_servers: vec![],
                },
            )
            .await
            .expect("subnet");
        net
    }

    /// Sets up what an instance needs in `project`: flavor `small` (1 vCPU,
    /// 512 MiB, 5 GiB; admin-made once), image `tiny`, network `net` with a
    /// /24 subnet, keypair `key`.
    pub async fn basics(&self, client: &Client) {
        if self.admin.flavor_get_by_name("small").await.is_none() {
            self.admin
                .flavor_create(&FlavorCreate {
                    name: "small".into(),
                    vcpus: 1,
                    ram_mib: 512,
                    disk_gib: 5,
                })
                .await
                .expect("flavor");
        }
        client
            .image_create(&ImageCreate {
                name: "tiny".into(),
                source: "/var/lib/strato/images/tiny.qcow2".into(),
                format: ImageFormat::Qcow2,
                sha256: "a".repeat(64),
                min_disk_gib: 1,
                visibility: Visibility::Private,
            })
            .await
            .expect("image");
        let net = client
            .network_create(&NetworkCreate {
                name: "net".into(),
                vlan: None,
                mtu: 1500,
            })
            .await
            .expect("network");
        client
            .subnet_create(
                net.id,
                &SubnetCreate {
                    name: "v4".into(),
                    cidr: "10.20.0.0/24".parse().unwrap(),
                    gateway: None,
                    pools: vec![],
                    reserved: vec![],
                    dns_servers: vec!["10.20.0.1".parse().unwrap()],
                },
            )
            .await
            .expect("subnet");
        client
            .keypair_create(&KeypairCreate {
                name: "key".into(),
                public_key: TEST_KEY.into(),
            })
            .await
            .expect("keypair");
    }

    pub fn vm(name: &str) -> InstanceCreate {
        InstanceCreate {
            name: name.into(),
            flavor: "small".into(),
            image: "tiny".into(),
            networks: vec!["net".into()],
            keypair: Some("key".into()),
            user_data: None,
            anti_affinity_group: None,
            start: true,
            relocation: Relocation::Allow,
        }
    }
}

pub const TEST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGuEbkB5fiabq34MkliWiex1mZ7OFzxnZjfW/XWDNRTO test@strato";

/// A benchmark knob: the environment variable `name` as a number, or `default`.
pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p`th percentile of an ascending slice (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition not reached within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

trait FlavorByName {
    async fn flavor_get_by_name(&self, name: &str) -> Option<Flavor>;
}

impl FlavorByName for Client {
    async fn flavor_get_by_name(&self, name: &str) -> Option<Flavor> {
        self.flavor_list()
            .await
            .ok()?
            .into_iter()
            .find(|f| f.name == name)
    }
}

/// The columns only API calls change, per table (agents' reports and the
/// audit log, which records refused calls too, are left out).
pub const FINGERPRINT: &[(&str, &str)] = &[
    ("projects", "id, name, description"),
    ("users", "id, name, admin"),
    ("memberships", "user_id, project_id, role"),
    ("tokens", "id, user_id, description, expires_at"),
    (
        "quotas",
        "project_id, max_instances, max_vcpus, max_ram_mib, max_volumes, max_volume_gib, \
         max_addresses, used_instances, used_vcpus, used_ram_mib, used_volumes, \
         used_volume_gib, used_addresses",
    ),
    ("flavors", "id, name, vcpus, ram_mib, disk_gib"),
    (
        "images",
        "id, project_id, name, source, format, sha256, min_disk_gib, visibility",
    ),
    ("keypairs", "id, project_id, name, public_key"),
    ("networks", "id, project_id, name, vlan, mtu"),
    (
        "subnets",
        "id, network_id, name, cidr, gateway, pools, reserved, dns_servers",
    ),
    ("addresses", "subnet_id, address, instance_id"),
    ("anti_affinity_groups", "id, project_id, name"),
    ("racks", "id, name, location"),
    (
        "enrollment_tokens",
        "id, kind, rack_id, expires_at, used_at",
    ),
    (
        "hosts",
        "id, name, kind, rack_id, admin_state, alloc_vcpus, alloc_ram_mib, alloc_disk_gib, \
         alloc_storage, alloc_instances, alloc_volumes",
    ),
    (
        "instances",
        "id, project_id, name, keypair_id, group_id, host_id, desired, generation, \
         reboot_count, user_data, deleted_at",
    ),
    (
        "volumes",
        "id, project_id, name, size_gib, host_id, status, generation, deleted_at",
    ),
    ("attachments", "volume_id, instance_id, device_index"),
    ("snapshots", "id, volume_id, name, status, deleted_at"),
    ("usage_spans", "id, resource_id, ended_at"),
];

pub async fn fingerprint(cloud: &TestCloud) -> Vec<String> {
    let mut out = Vec::new();
    for (table, cols) in FINGERPRINT {
        let expr = cols
            .split(',')
            .map(|c| format!("COALESCE(CAST({} AS TEXT), '~')", c.trim()))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let rows = sqlx::query(&format!("SELECT {expr} AS r FROM {table}"))
            .fetch_all(&cloud.state.db.pool)
            .await
            .unwrap_or_else(|e| panic!("fingerprint of {table}: {e}"));
        let mut rows: Vec<String> = rows
            .iter()
            .map(|r| format!("{table}: {}", r.get::<String, _>("r")))
            .collect();
        rows.sort();
        out.extend(rows);
    }
    out
}

/// `Some(diff)` when the database changed.
pub fn changed(before: &[String], after: &[String]) -> Option<String> {
    assert!(before.len() > 20, "fingerprint too small: {before:?}");
    (before != after).then(|| {
        let gone: Vec<_> = before.iter().filter(|r| !after.contains(r)).collect();
        let new: Vec<_> = after.iter().filter(|r| !before.contains(r)).collect();
        format!("database changed: before only {gone:?}, after only {new:?}")
    })
}

/// A raw HTTP answer: status, body as JSON (`Null` when it is not JSON), text.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: serde_json::Value,
    pub raw: String,
}

/// Sends a raw request built by a test; a transport failure fails the test.
pub async fn send(req: reqwest::RequestBuilder, path: &str) -> Resp {
    let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status().as_u16();
    let raw = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null);
    Resp { status, body, raw }
}

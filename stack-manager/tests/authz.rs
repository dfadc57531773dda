//! Authorization of every public endpoint, on SQLite and PostgreSQL.
//!
//! The world: projects `alpha` (A) and `beta` (B); in A `alice` is a member
//! and `rita` a reader, in B `bob` is a member; plus the admin. Each project
//! holds one of every resource kind. The checks are tables of requests
//! (`Case`s) run as one caller or another:
//!
//! - strangers get 404 (never 403: existence must not leak) for every
//!   resource of a project they do not belong to, and nothing changes;
//! - lists never show another project's items;
//! - readers read but get 403 on every change, and nothing changes;
//! - non-admins get 403 on every operator endpoint, and nothing changes;
//! - the admin (and, for project resources, a member) can do all of it —
//!   the same tables run as them succeed, which proves the refusals above
//!   come from the role and not from a malformed request;
//! - calls without a valid token get 401.
//!
//! `the_tables_cover_every_public_operation` fails when an operation is
//! added to the OpenAPI document without being added to a table here.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::fmt::Display;
use std::time::Duration;

use api::ids::*;
use api::resources::*;
use serde_json::{json, Value};
use sqlx::Row;
use support::{eventually, Backend, Resp, TestCloud};

on_both_backends!(
    strangers_get_404_for_every_foreign_resource_and_it_survives,
    lists_never_show_other_projects,
    readers_read_but_get_403_on_every_change,
    non_admins_get_403_on_every_operator_endpoint,
    admin_can_do_everything,
    calls_without_a_valid_token_get_401,
);

// ---------------------------------------------------------------------------
// Requests as data.

/// One request: `op` is the OpenAPI operation (`METHOD /template`), `path`
/// the concrete path, `ok` the status a caller allowed to do it gets.
#[derive(Debug, Clone)]
struct Case {
    op: &'static str,
    path: String,
    body: Option<Value>,
    ok: u16,
}

/// A case for `op` with its `{placeholders}` filled by `args`, in order.
fn case(op: &'static str, args: &[&dyn Display]) -> Case {
    let (_, template) = op.split_once(' ').expect("op is `METHOD /path`");
    let mut path = String::new();
    let mut rest = template;
    let mut args = args.iter();
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').expect("closing brace");
        path.push_str(&rest[..open]);
        path.push_str(
            &args
                .next()
                .expect("an argument per placeholder")
                .to_string(),
        );
        rest = &rest[close + 1..];
    }
    path.push_str(rest);
    assert!(args.next().is_none(), "too many arguments for {op}");
    Case {
        op,
        path,
        body: None,
        ok: 200,
    }
}

impl Case {
    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
    fn ok(mut self, status: u16) -> Self {
        self.ok = status;
        self
    }
    /// Appends a query string (`project=beta`); empty means none.
    fn query(mut self, q: &str) -> Self {
        if !q.is_empty() {
            self.path
                .push(if self.path.contains('?') { '&' } else { '?' });
            self.path.push_str(q);
        }
        self
    }
    fn method(&self) -> &'static str {
        self.op.split_once(' ').map(|(m, _)| m).unwrap_or("GET")
    }
    fn name(&self) -> String {
        format!("{} {}", self.method(), self.path)
    }
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    auth: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Resp {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(a) = auth {
        req = req.header(reqwest::header::AUTHORIZATION, a);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    support::send(req, path).await
}

/// `Some(problem)` unless `r` is a `status` error with code `code` and a
/// well-formed `{error, message}` body.
fn error_problem(r: &Resp, status: u16, code: &str) -> Option<String> {
    let well_formed = r.body.as_object().is_some_and(|o| {
        o.len() == 2
            && o.get("error").is_some_and(Value::is_string)
            && o.get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty())
    });
    if r.status != status || r.body["error"] != code || !well_formed {
        Some(format!(
            "got {} {}, want {status} {code}",
            r.status,
            r.raw.chars().take(300).collect::<String>()
        ))
    } else {
        None
    }
}

/// Panics listing every failure, so one run shows all of them.
fn report(failures: Vec<String>, what: &str) {
    if !failures.is_empty() {
        panic!(
            "{what}: {} failure(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// The world.

/// One project's resources. `volume` is attached to `instance` and has
/// `snapshot`; `free_volume` is available; the `spare_*` ones are unused so
/// that they can be deleted.
#[derive(Debug, Clone, Default)]
struct Proj {
    name: String,
    id: ProjectId,
    net: NetworkId,
    subnet: SubnetId,
    spare_net: NetworkId,
    spare_subnet: SubnetId,
    keypair: KeypairId,
    image: ImageId,
    spare_image: ImageId,
    group: GroupId,
    instance: InstanceId,
    volume: VolumeId,
    free_volume: VolumeId,
    spare_volume: VolumeId,
    snapshot: SnapshotId,
}

impl Proj {
    fn ids(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.net.to_string(),
            self.subnet.to_string(),
            self.spare_net.to_string(),
            self.spare_subnet.to_string(),
            self.keypair.to_string(),
            self.image.to_string(),
            self.spare_image.to_string(),
            self.group.to_string(),
            self.instance.to_string(),
            self.volume.to_string(),
            self.free_volume.to_string(),
            self.spare_volume.to_string(),
            self.snapshot.to_string(),
        ]
    }
}

/// Every id the tables need; `Default` gives random ones (for the coverage
/// check, which sends nothing).
#[derive(Debug, Clone, Default)]
struct Ids {
    a: Proj,
    b: Proj,
    alice: UserId,
    rita: UserId,
    bob: UserId,
    admin_token: TokenId,
    alice_token: TokenId,
    bob_token: TokenId,
    flavor: FlavorId,
    spare_flavor: FlavorId,
    public_image: ImageId,
    rack: RackId,
    hypervisor: HostId,
    spare_host: HostId,
}

struct World {
    cloud: TestCloud,
    http: reqwest::Client,
    admin: String,
    alice: String,
    rita: String,
    bob: String,
    ids: Ids,
    /// Stored secrets (host credentials, CHAP secrets, token hashes, the
    /// users' bearer tokens) that no response may ever contain.
    secrets: Vec<String>,
}

impl World {
    async fn call(&self, token: &str, c: &Case) -> Resp {
        let r = send(
            &self.http,
            &self.cloud.url,
            Some(&format!("Bearer {token}")),
            c.method(),
            &c.path,
            c.body.as_ref(),
        )
        .await;
        for secret in &self.secrets {
            assert!(
                !r.raw.contains(secret.as_str()),
                "{} leaks a stored secret: {}",
                c.name(),
                r.raw
            );
        }
        r
    }

    /// Runs `cases` as `token`, each expecting error `status`/`code`.
    async fn expect_refused(
        &self,
        who: &str,
        token: &str,
        cases: &[Case],
        status: u16,
        code: &str,
    ) -> Vec<String> {
        let mut failures = Vec::new();
        for c in cases {
            let r = self.call(token, c).await;
            if let Some(p) = error_problem(&r, status, code) {
                failures.push(format!("{who} {}: {p}", c.name()));
            }
        }
        failures
    }

    /// Runs `cases` as `token` in order, each expecting its `ok` status.
    async fn expect_ok(&self, who: &str, token: &str, cases: &[Case]) -> Vec<String> {
        let mut failures = Vec::new();
        for c in cases {
            let r = self.call(token, c).await;
            if r.status != c.ok {
                failures.push(format!(
                    "{who} {}: got {} {}, want {}",
                    c.name(),
                    r.status,
                    r.raw.chars().take(300).collect::<String>(),
                    c.ok
                ));
            }
        }
        failures
    }

    async fn fingerprint(&self) -> Vec<String> {
        support::fingerprint(&self.cloud).await
    }
}

fn assert_unchanged(before: &[String], after: &[String], what: &str) {
    if let Some(diff) = support::changed(before, after) {
        panic!("{what}: {diff}");
    }
}

/// A user with `role` in `project`; returns their token and id.
async fn user(
    cloud: &TestCloud,
    name: &str,
    project: &str,
    role: ProjectRole,
) -> (String, UserId, TokenId) {
    let u = cloud
        .admin
        .user_create(&UserCreate {
            name: name.into(),
            admin: false,
        })
        .await
        .expect("create user");
    cloud
        .admin
        .member_set(project, name, role)
        .await
        .expect("membership");
    let t = cloud
        .admin
        .token_create(
            Some(name),
            &TokenCreate {
                description: "authz".into(),
                expires_in_secs: None,
            },
        )
        .await
        .expect("token");
    (t.secret, u.id, t.token.id)
}

fn image_body(name: &str, visibility: &str) -> Value {
    json!({
        "name": name,
        "source": "https://images.example/x.qcow2",
        "format": "qcow2",
        "sha256": "b".repeat(64),
        "visibility": visibility,
    })
}

fn vm_body(name: &str) -> Value {
    json!({"name": name, "flavor": "small", "image": "tiny", "networks": ["net"], "keypair": "key"})
}

async fn wait_volume(c: &api::Client, id: VolumeId, want: VolumeStatus) {
    eventually(15, || async {
        (c.volume_get(id).await.ok()?.status == want).then_some(())
    })
    .await
}

/// One of every project resource, created by `c` (a member of `name`).
async fn populate(cloud: &TestCloud, c: &api::Client, name: &str) -> Proj {
    cloud.basics(c).await;
    let project = cloud.admin.project_get(name).await.expect("project");
    let net = c.network_list().await.unwrap()[0].clone();
    let subnet = c.subnet_list(net.id).await.unwrap()[0].id;
    let keypair = c.keypair_list().await.unwrap()[0].id;
    let image = c
        .image_list()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.project_id == Some(project.id))
        .expect("private image")
        .id;
    let spare_image = c
        .image_create(&ImageCreate {
            name: "spare-img".into(),
            source: "/var/lib/strato/images/spare.qcow2".into(),
            format: ImageFormat::Raw,
            sha256: "c".repeat(64),
            min_disk_gib: 1,
            visibility: Visibility::Private,
        })
        .await
        .expect("spare image")
        .id;
    let spare_net = c
        .network_create(&NetworkCreate {
            name: "spare-net".into(),
            vlan: Some(42),
            mtu: 1500,
        })
        .await
        .expect("spare network");
    let spare_subnet = c
        .subnet_create(
            spare_net.id,
            &SubnetCreate {
                name: "spare".into(),
                cidr: "10.60.0.0/24".parse().unwrap(),
                gateway: None,
                pools: vec![],
                reserved: vec![],
                dns_servers: vec![],
            },
        )
        .await
        .expect("spare subnet")
        .id;
    let group = c
        .group_create(&GroupCreate { name: "grp".into() })
        .await
        .expect("group")
        .id;
    let vm = c.instance_create(&TestCloud::vm("vm")).await.expect("vm");
    let mut volumes = Vec::new();
    for v in ["data", "free", "spare-vol"] {
        let vol = c
            .volume_create(&VolumeCreate {
                name: v.into(),
                size_gib: 2,
                source: VolumeSource::Empty,
                replicas: None,
            })
            .await
            .expect("volume");
        volumes.push(vol.id);
    }
    for v in &volumes {
        wait_volume(c, *v, VolumeStatus::Available).await;
    }
    eventually(15, || async {
        (c.instance_get(vm.id).await.ok()?.status == InstanceStatus::Running).then_some(())
    })
    .await;
    c.attachment_create(vm.id, "data").await.expect("attach");
    let snapshot = c
        .snapshot_create(
            volumes[0],
            &SnapshotCreate {
                name: "snap".into(),
            },
        )
        .await
        .expect("snapshot")
        .id;
    eventually(15, || async {
        let s = c.snapshot_list().await.ok()?;
        s.iter()
            .any(|s| s.id == snapshot && s.status == SnapshotStatus::Available)
            .then_some(())
    })
    .await;
    wait_volume(c, volumes[0], VolumeStatus::InUse).await;
    Proj {
        name: name.into(),
        id: project.id,
        net: net.id,
        subnet,
        spare_net: spare_net.id,
        spare_subnet,
        keypair,
        image,
        spare_image,
        group,
        instance: vm.id,
        volume: volumes[0],
        free_volume: volumes[1],
        spare_volume: volumes[2],
        snapshot,
    }
}

async fn world(backend: Backend) -> World {
    // Hosts that never heartbeat must not be declared down (and their
    // instances evacuated) while a test runs.
    let cloud = TestCloud::start_with(backend, |c| {
        c.hosts.down_after_secs = 3600;
    })
    .await;
    cloud.project("alpha").await;
    cloud.project("beta").await;
    cloud.project("delta").await; // empty: the admin deletes it
    let (alice, alice_id, alice_token) = user(&cloud, "alice", "alpha", ProjectRole::Member).await;
    let (rita, rita_id, _) = user(&cloud, "rita", "alpha", ProjectRole::Reader).await;
    let (bob, bob_id, bob_token) = user(&cloud, "bob", "beta", ProjectRole::Member).await;
    cloud
        .admin
        .user_create(&UserCreate {
            name: "victim".into(),
            admin: false,
        })
        .await
        .expect("victim");
    let hypervisor = cloud.hypervisor("hv-1", 16, 65_536, None).await;
    cloud.storage("st-1", 200).await;

    let a = populate(
        &cloud,
        &cloud.client(&alice).with_project(Some("alpha".into())),
        "alpha",
    )
    .await;
    let b = populate(
        &cloud,
        &cloud.client(&bob).with_project(Some("beta".into())),
        "beta",
    )
    .await;

    let flavor = cloud
        .admin
        .flavor_list()
        .await
        .unwrap()
        .into_iter()
        .find(|f| f.name == "small")
        .expect("flavor small")
        .id;
    let spare_flavor = cloud
        .admin
        .flavor_create(&FlavorCreate {
            name: "spare".into(),
            vcpus: 2,
            ram_mib: 1024,
            disk_gib: 10,
        })
        .await
        .expect("spare flavor")
        .id;
    let public_image = cloud
        .admin
        .image_create(&ImageCreate {
            name: "pub".into(),
            source: "https://images.example/pub.qcow2".into(),
            format: ImageFormat::Qcow2,
            sha256: "d".repeat(64),
            min_disk_gib: 1,
            visibility: Visibility::Public,
        })
        .await
        .expect("public image")
        .id;
    let rack = cloud
        .admin
        .rack_create(&RackCreate {
            name: "rack-1".into(),
            location: "row 1".into(),
        })
        .await
        .expect("rack")
        .id;
    // Enrolled last and disabled, so nothing is ever placed on it.
    let spare_host = cloud.hypervisor("hv-spare", 4, 4096, None).await;
    cloud
        .admin
        .host_update(
            spare_host,
            &HostUpdate {
                admin_state: AdminState::Disabled,
            },
        )
        .await
        .expect("disable spare host");
    let admin_token = cloud.admin.token_list().await.unwrap()[0].id;
    let mut secrets = vec![
        cloud.admin_token.clone(),
        alice.clone(),
        rita.clone(),
        bob.clone(),
    ];
    for sql in [
        "SELECT credential AS s FROM hosts",
        "SELECT credential_hash AS s FROM hosts",
        "SELECT chap_secret AS s FROM volumes",
        "SELECT secret_hash AS s FROM tokens",
        "SELECT secret_hash AS s FROM enrollment_tokens",
    ] {
        for r in sqlx::query(sql)
            .fetch_all(&cloud.state.db.pool)
            .await
            .unwrap()
        {
            secrets.push(r.get::<String, _>("s"));
        }
    }
    assert!(secrets.len() > 10, "{secrets:?}");
    World {
        http: reqwest::Client::new(),
        admin: cloud.admin_token.clone(),
        cloud,
        alice,
        rita,
        bob,
        secrets,
        ids: Ids {
            a,
            b,
            alice: alice_id,
            rita: rita_id,
            bob: bob_id,
            admin_token,
            alice_token,
            bob_token,
            flavor,
            spare_flavor,
            public_image,
            rack,
            hypervisor,
            spare_host,
        },
    }
}

// ---------------------------------------------------------------------------
// The tables.

/// Reading each of a project's resources.
fn project_reads(p: &Proj) -> Vec<Case> {
    vec![
        case("GET /v1/projects/{project}", &[&p.name]),
        case("GET /v1/projects/{project}", &[&p.id]),
        case("GET /v1/projects/{project}/quota", &[&p.name]),
        case("GET /v1/projects/{project}/quota", &[&p.id]),
        case("GET /v1/networks/{id}", &[&p.net]),
        case("GET /v1/networks/{id}/subnets", &[&p.net]),
        case("GET /v1/subnets/{id}", &[&p.subnet]),
        case("GET /v1/keypairs/{id}", &[&p.keypair]),
        case("GET /v1/images/{id}", &[&p.image]),
        case("GET /v1/anti-affinity-groups/{id}", &[&p.group]),
        case("GET /v1/instances/{id}", &[&p.instance]),
        case("GET /v1/instances/{id}/console", &[&p.instance]),
        case("GET /v1/instances/{id}/events", &[&p.instance]),
        // A plain GET: allowed callers get 400 (not a WebSocket upgrade),
        // which the handler checks only after authorizing.
        case("GET /v1/instances/{id}/console/stream", &[&p.instance]).ok(400),
        case("GET /v1/volumes/{id}", &[&p.volume]),
        case("GET /v1/snapshots/{id}", &[&p.snapshot]),
    ]
}

/// Every change a member may make to a project's resources, in an order in
/// which a member can run them all, one after the other, successfully.
/// `scope` is the query creates carry (`project=beta`, or empty).
fn project_writes(p: &Proj, scope: &str) -> Vec<Case> {
    vec![
        case("POST /v1/networks", &[])
            .query(scope)
            .body(json!({"name": "net2"}))
            .ok(201),
        case("POST /v1/networks/{id}/subnets", &[&p.net])
            .body(json!({"name": "sub2", "cidr": "10.30.0.0/24"}))
            .ok(201),
        case("POST /v1/keypairs", &[])
            .query(scope)
            .body(json!({"name": "key2", "public_key": support::TEST_KEY}))
            .ok(201),
        case("POST /v1/images", &[])
            .query(scope)
            .body(image_body("img2", "private"))
            .ok(201),
        case("POST /v1/anti-affinity-groups", &[])
            .query(scope)
            .body(json!({"name": "grp2"}))
            .ok(201),
        case("POST /v1/instances", &[])
            .query(scope)
            .body(vm_body("vm2"))
            .ok(201),
        case("POST /v1/volumes", &[])
            .query(scope)
            .body(json!({"name": "vol2", "size_gib": 1}))
            .ok(201),
        case("POST /v1/volumes/{id}/snapshots", &[&p.free_volume])
            .body(json!({"name": "snap2"}))
            .ok(201),
        case("PATCH /v1/instances/{id}", &[&p.instance]).body(json!({"relocation": "never"})),
        case("POST /v1/instances/{id}/stop", &[&p.instance]),
        case("POST /v1/instances/{id}/start", &[&p.instance]),
        case("POST /v1/instances/{id}/reboot", &[&p.instance]),
        case("POST /v1/instances/{id}/attachments", &[&p.instance])
            .body(json!({"volume": p.free_volume.to_string()}))
            .ok(201),
        case(
            "DELETE /v1/instances/{id}/attachments/{volume}",
            &[&p.instance, &p.volume],
        )
        .ok(204),
        case("DELETE /v1/snapshots/{id}", &[&p.snapshot]).ok(202),
        case("DELETE /v1/subnets/{id}", &[&p.spare_subnet]).ok(204),
        case("DELETE /v1/networks/{id}", &[&p.spare_net]).ok(204),
        case("DELETE /v1/keypairs/{id}", &[&p.keypair]).ok(204),
        case("DELETE /v1/images/{id}", &[&p.spare_image]).ok(204),
        case("DELETE /v1/anti-affinity-groups/{id}", &[&p.group]).ok(204),
        case("DELETE /v1/volumes/{id}", &[&p.spare_volume]).ok(202),
        case("DELETE /v1/instances/{id}", &[&p.instance]).ok(202),
    ]
}

/// A caller in project `own` naming resources of project `other` from
/// inside their own requests: every such reference is "not found".
fn cross_references(own: &Proj, other: &Proj) -> Vec<Case> {
    let vm = |patch: Value| {
        let mut body = vm_body("xref");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        case("POST /v1/instances", &[])
            .query(&format!("project={}", own.name))
            .body(body)
            .ok(201)
    };
    vec![
        vm(json!({"networks": [other.net.to_string()]})),
        vm(json!({"image": other.image.to_string()})),
        vm(json!({"keypair": other.keypair.to_string()})),
        vm(json!({"anti_affinity_group": other.group.to_string()})),
        case("POST /v1/volumes", &[])
            .query(&format!("project={}", own.name))
            .body(json!({"name": "xref", "size_gib": 2,
                         "source": {"kind": "snapshot", "id": other.snapshot.to_string()}})),
        case("POST /v1/volumes", &[])
            .query(&format!("project={}", own.name))
            .body(json!({"name": "xref", "size_gib": 2,
                         "source": {"kind": "image", "id": other.image.to_string()}})),
        case("POST /v1/instances/{id}/attachments", &[&own.instance])
            .body(json!({"volume": other.free_volume.to_string()})),
        case(
            "DELETE /v1/instances/{id}/attachments/{volume}",
            &[&own.instance, &other.volume],
        ),
    ]
}

/// Project-scoped lists; `scope` is their query string.
fn scoped_lists(scope: &str) -> Vec<Case> {
    [
        "GET /v1/networks",
        "GET /v1/keypairs",
        "GET /v1/images",
        "GET /v1/anti-affinity-groups",
        "GET /v1/instances",
        "GET /v1/volumes",
        "GET /v1/snapshots",
    ]
    .into_iter()
    .map(|op| case(op, &[]).query(scope))
    .collect()
}

/// Lists that are not project-scoped: everyone may call them and sees only
/// what is theirs (or global, for flavors).
fn global_lists() -> Vec<Case> {
    [
        "GET /v1/projects",
        "GET /v1/users",
        "GET /v1/tokens",
        "GET /v1/flavors",
    ]
    .into_iter()
    .map(|op| case(op, &[]))
    .collect()
}

/// Operator endpoints. `project` and `user` are what the calls name: for the
/// admin an empty project and a spare user (so that every case succeeds in
/// order), for the others their own project and a fellow user.
fn operator_cases(ids: &Ids, project: &str, user: &str) -> Vec<Case> {
    vec![
        case("GET /v1/racks", &[]),
        case("POST /v1/racks", &[])
            .body(json!({"name": "rack-2", "location": "row 2"}))
            .ok(201),
        case("GET /v1/racks/{id}", &[&ids.rack]),
        case("DELETE /v1/racks/{id}", &[&ids.rack]).ok(204),
        case("GET /v1/hosts", &[]),
        case("GET /v1/hosts/{id}", &[&ids.hypervisor]),
        case("PATCH /v1/hosts/{id}", &[&ids.spare_host]).body(json!({"admin_state": "draining"})),
        case("GET /v1/hosts/{id}/events", &[&ids.hypervisor]),
        case("POST /v1/hosts/rebalance", &[]).body(json!({"dry_run": true})),
        // Only a fenced host is re-admitted: the admin is told so.
        case("POST /v1/hosts/{id}/readmit", &[&ids.hypervisor]).ok(409),
        case("POST /v1/hosts/{id}/evacuate", &[&ids.spare_host])
            .body(json!({"confirm_fenced": false}))
            .ok(202),
        case("DELETE /v1/hosts/{id}", &[&ids.spare_host]).ok(204),
        case("GET /v1/system/evacuation", &[]),
        case("POST /v1/system/evacuation/resume", &[]),
        case("POST /v1/enrollment-tokens", &[])
            .body(json!({"kind": "hypervisor"}))
            .ok(201),
        case("GET /v1/audit", &[]),
        case("GET /v1/usage", &[]).query("start=2020-01-01T00:00:00Z"),
        case("GET /v1/system/tasks", &[]),
        case("GET /v1/system/replicas", &[]),
        case("GET /v1/system/check", &[]),
        case("POST /v1/flavors", &[])
            .body(json!({"name": "big", "vcpus": 8, "ram_mib": 16384, "disk_gib": 100}))
            .ok(201),
        case("DELETE /v1/flavors/{id}", &[&ids.spare_flavor]).ok(204),
        case("POST /v1/images", &[])
            .body(image_body("pub2", "public"))
            .ok(201),
        case("DELETE /v1/images/{id}", &[&ids.public_image]).ok(204),
        case("POST /v1/projects", &[])
            .body(json!({"name": "gamma"}))
            .ok(201),
        case("PUT /v1/projects/{project}/quota", &[&project]).body(json!({"instances": 99})),
        case(
            "PUT /v1/projects/{project}/members/{user}",
            &[&project, &user],
        )
        .body(json!({"role": "member"})),
        case(
            "DELETE /v1/projects/{project}/members/{user}",
            &[&project, &user],
        )
        .ok(204),
        case("DELETE /v1/projects/{project}", &[&project]).ok(204),
        case("POST /v1/users", &[])
            .body(json!({"name": "mallory", "admin": true}))
            .ok(201),
        case("POST /v1/users/{user}/tokens", &[&user])
            .body(json!({}))
            .ok(201),
        case("DELETE /v1/users/{user}", &[&user]).ok(204),
    ]
}

/// What a non-admin may not do even to themselves: raise their own role,
/// mint tokens through the admin endpoint, delete themselves.
fn self_escalation(own_project: &str, me: &str) -> Vec<Case> {
    vec![
        case(
            "PUT /v1/projects/{project}/members/{user}",
            &[&own_project, &me],
        )
        .body(json!({"role": "member"})),
        case("POST /v1/users/{user}/tokens", &[&me]).body(json!({})),
        case("DELETE /v1/users/{user}", &[&me]),
    ]
}

/// What anyone may do about themselves.
fn self_service(me: &str) -> Vec<Case> {
    vec![
        case("GET /v1/whoami", &[]),
        case("GET /v1/users/{user}", &[&me]),
        case("POST /v1/tokens", &[])
            .body(json!({"description": "mine", "expires_in_secs": 600}))
            .ok(201),
    ]
}

/// Another user's identity and tokens: 404 for non-admins (names and ids
/// do not leak), allowed for the admin.
fn other_user(other: &str, other_token: TokenId) -> Vec<Case> {
    vec![
        case("GET /v1/users/{user}", &[&other]),
        case("GET /v1/tokens", &[]).query(&format!("user={other}")),
        case("DELETE /v1/tokens/{id}", &[&other_token]).ok(204),
    ]
}

/// Global things everyone reads.
fn global_reads(ids: &Ids) -> Vec<Case> {
    vec![
        case("GET /v1/flavors/{id}", &[&ids.flavor]),
        case("GET /v1/images/{id}", &[&ids.public_image]),
    ]
}

/// A sample of endpoints for the authentication checks.
fn auth_sample(ids: &Ids) -> Vec<Case> {
    vec![
        case("GET /v1/whoami", &[]),
        case("GET /v1/projects", &[]),
        case("GET /v1/instances", &[]).query("project=alpha"),
        case("GET /v1/instances/{id}", &[&ids.a.instance]),
        case("POST /v1/instances", &[])
            .query("project=alpha")
            .body(vm_body("anon")),
        case("POST /v1/instances/{id}/stop", &[&ids.a.instance]),
        case("DELETE /v1/volumes/{id}", &[&ids.a.spare_volume]),
        case("POST /v1/flavors", &[])
            .body(json!({"name": "anon", "vcpus": 1, "ram_mib": 512, "disk_gib": 1})),
        case("PATCH /v1/hosts/{id}", &[&ids.hypervisor]).body(json!({"admin_state": "disabled"})),
        case("PUT /v1/projects/{project}/quota", &[&"alpha"]).body(json!({"instances": 0})),
        case("POST /v1/tokens", &[]).body(json!({})),
        case("DELETE /v1/projects/{project}", &[&"delta"]),
        case("GET /v1/audit", &[]),
    ]
}

// ---------------------------------------------------------------------------
// The scenarios.

async fn strangers_get_404_for_every_foreign_resource_and_it_survives(backend: Backend) {
    let w = world(backend).await;
    let (a, b) = (&w.ids.a, &w.ids.b);
    let before = w.fingerprint().await;

    let mut on_b = project_reads(b);
    on_b.extend(project_writes(b, "project=beta"));
    on_b.push(case("DELETE /v1/projects/{project}", &[&"beta"]).ok(403));
    on_b.push(case("DELETE /v1/projects/{project}", &[&b.id]).ok(403));
    let mut on_a = project_reads(a);
    on_a.extend(project_writes(a, "project=alpha"));
    on_a.push(case("DELETE /v1/projects/{project}", &[&"alpha"]));

    let mut failures = Vec::new();
    failures.extend(
        w.expect_refused("alice", &w.alice, &on_b, 404, "not_found")
            .await,
    );
    failures.extend(
        w.expect_refused("rita", &w.rita, &on_b, 404, "not_found")
            .await,
    );
    failures.extend(
        w.expect_refused("bob", &w.bob, &on_a, 404, "not_found")
            .await,
    );
    failures.extend(
        w.expect_refused("alice", &w.alice, &cross_references(a, b), 404, "not_found")
            .await,
    );
    failures.extend(
        w.expect_refused("bob", &w.bob, &cross_references(b, a), 404, "not_found")
            .await,
    );
    report(failures, "strangers");
    assert_unchanged(&before, &w.fingerprint().await, "strangers' requests");

    // The 404 for a hidden resource reads exactly like the one for a
    // resource that does not exist at all.
    let mut failures = Vec::new();
    for c in project_reads(b) {
        let hidden = w.call(&w.alice, &c).await;
        let mut absent = c.clone();
        for id in b.ids() {
            absent.path = absent.path.replace(&id, &uuid::Uuid::new_v4().to_string());
        }
        absent.path = absent.path.replace("beta", "no-such-project");
        let absent_resp = w.call(&w.alice, &absent).await;
        let shape = |r: &Resp, path: &str| {
            let mut m = r.body["message"].as_str().unwrap_or_default().to_string();
            for seg in path.split(['/', '?', '=']) {
                if seg.len() > 3 {
                    m = m.replace(seg, "<x>");
                }
            }
            (r.status, r.body["error"].clone(), m)
        };
        if shape(&hidden, &c.path) != shape(&absent_resp, &absent.path) {
            failures.push(format!(
                "{}: hidden {} vs absent {}",
                c.name(),
                hidden.raw,
                absent_resp.raw
            ));
        }
    }
    report(
        failures,
        "404 of a hidden resource differs from a missing one",
    );

    // Everything is still there for its owner, who can then do all of it.
    report(
        w.expect_ok("bob", &w.bob, &project_reads(b)).await,
        "owner reads",
    );
    report(
        w.expect_ok("bob", &w.bob, &project_writes(b, "project=beta"))
            .await,
        "owner writes",
    );
    let gone: Vec<Case> = vec![case("DELETE /v1/projects/{project}", &[&"beta"]).ok(403)];
    report(
        w.expect_ok("bob", &w.bob, &gone).await,
        "members cannot delete their project",
    );
}

async fn lists_never_show_other_projects(backend: Backend) {
    let w = world(backend).await;
    let (a, b) = (&w.ids.a, &w.ids.b);
    let mut b_ids: BTreeSet<String> = b.ids().into_iter().collect();
    b_ids.insert(w.ids.bob.to_string());
    b_ids.insert(w.ids.bob_token.to_string());
    let mut a_ids: BTreeSet<String> = a.ids().into_iter().collect();
    a_ids.insert(w.ids.alice.to_string());
    a_ids.insert(w.ids.rita.to_string());
    a_ids.insert(w.ids.alice_token.to_string());

    let mut lists = scoped_lists("");
    lists.extend(global_lists());
    lists.push(case("GET /v1/networks/{id}/subnets", &[&a.net]));
    let mut b_lists = scoped_lists("");
    b_lists.extend(global_lists());
    b_lists.push(case("GET /v1/networks/{id}/subnets", &[&b.net]));

    let mut failures = Vec::new();
    let strings = |v: &Value| {
        let mut out = BTreeSet::new();
        collect_strings(v, &mut out);
        out
    };
    for (who, token, cases, foreign, own) in [
        ("alice", &w.alice, &lists, &b_ids, &a_ids),
        ("rita", &w.rita, &lists, &b_ids, &a_ids),
        ("bob", &w.bob, &b_lists, &a_ids, &b_ids),
    ] {
        for c in cases.iter() {
            let r = w.call(token, c).await;
            if r.status != 200 {
                failures.push(format!("{who} {}: got {} {}", c.name(), r.status, r.raw));
                continue;
            }
            let seen = strings(&r.body);
            let leaked: Vec<_> = seen.intersection(foreign).collect();
            if !leaked.is_empty() {
                failures.push(format!("{who} {} shows foreign ids {leaked:?}", c.name()));
            }
            // Lists that hold the caller's own things show them.
            if c.op != "GET /v1/flavors" && seen.intersection(own).next().is_none() {
                failures.push(format!(
                    "{who} {} shows none of their own items: {}",
                    c.name(),
                    r.raw
                ));
            }
        }
    }
    // Users and tokens lists show exactly the caller.
    for (who, token, me) in [
        ("alice", &w.alice, w.ids.alice),
        ("rita", &w.rita, w.ids.rita),
        ("bob", &w.bob, w.ids.bob),
    ] {
        let users = w.call(token, &case("GET /v1/users", &[])).await;
        let ids: Vec<&str> = users.body["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u["id"].as_str()).collect())
            .unwrap_or_default();
        if ids != [me.to_string()] {
            failures.push(format!("{who} GET /v1/users: {}", users.raw));
        }
        let tokens = w.call(token, &case("GET /v1/tokens", &[])).await;
        let owners: BTreeSet<&str> = tokens.body["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t["user_id"].as_str()).collect())
            .unwrap_or_default();
        if owners.iter().any(|o| *o != me.to_string()) {
            failures.push(format!("{who} GET /v1/tokens: {}", tokens.raw));
        }
        let projects = w.call(token, &case("GET /v1/projects", &[])).await;
        let names: Vec<&str> = projects.body["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        let want = if who == "bob" { "beta" } else { "alpha" };
        if names != [want] {
            failures.push(format!("{who} GET /v1/projects: {names:?}"));
        }
    }

    // Naming a project one does not belong to is "not found", worded like a
    // project that does not exist.
    for (who, token, other) in [
        ("alice", &w.alice, b),
        ("rita", &w.rita, b),
        ("bob", &w.bob, a),
    ] {
        for scope in [
            format!("project={}", other.name),
            format!("project={}", other.id),
        ] {
            for c in scoped_lists(&scope) {
                let r = w.call(token, &c).await;
                if let Some(p) = error_problem(&r, 404, "not_found") {
                    failures.push(format!("{who} {}: {p}", c.name()));
                    continue;
                }
                let absent = w
                    .call(token, &case(c.op, &[]).query("project=no-such-project"))
                    .await;
                let hidden_msg = r.body["message"].as_str().unwrap_or_default();
                let absent_msg = absent.body["message"].as_str().unwrap_or_default();
                let name = scope.trim_start_matches("project=");
                if hidden_msg.replace(name, "<p>") != absent_msg.replace("no-such-project", "<p>") {
                    failures.push(format!(
                        "{who} {}: `{hidden_msg}` vs `{absent_msg}`",
                        c.name()
                    ));
                }
            }
        }
    }

    // The admin sees every project's items, or one project's when naming it.
    let mut all = BTreeSet::new();
    for c in scoped_lists("") {
        let r = w.call(&w.admin, &c).await;
        assert_eq!(r.status, 200, "admin {}: {}", c.name(), r.raw);
        all.extend(strings(&r.body));
    }
    for id in [a.net, b.net] {
        assert!(all.contains(&id.to_string()), "admin lists miss {id}");
    }
    for c in scoped_lists("project=alpha") {
        let r = w.call(&w.admin, &c).await;
        assert_eq!(r.status, 200, "admin {}: {}", c.name(), r.raw);
        let leaked: Vec<_> = strings(&r.body).intersection(&b_ids).cloned().collect();
        if !leaked.is_empty() {
            failures.push(format!("admin {} shows beta's {leaked:?}", c.name()));
        }
    }
    report(failures, "lists");
}

fn collect_strings(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            out.insert(s.clone());
        }
        Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

async fn readers_read_but_get_403_on_every_change(backend: Backend) {
    let w = world(backend).await;
    let a = &w.ids.a;
    report(
        w.expect_ok("rita", &w.rita, &project_reads(a)).await,
        "reader reads",
    );
    let before = w.fingerprint().await;
    let mut failures = Vec::new();
    for scope in ["", "project=alpha"] {
        failures.extend(
            w.expect_refused("rita", &w.rita, &project_writes(a, scope), 403, "forbidden")
                .await,
        );
    }
    report(failures, "reader changes");
    assert_unchanged(&before, &w.fingerprint().await, "the reader's requests");
    // The very same requests succeed for a member.
    report(
        w.expect_ok("alice", &w.alice, &project_writes(a, "")).await,
        "member changes",
    );
}

async fn non_admins_get_403_on_every_operator_endpoint(backend: Backend) {
    let w = world(backend).await;
    let ids = &w.ids;
    let before = w.fingerprint().await;
    let mut failures = Vec::new();
    for (who, token, project, fellow) in [
        ("alice", &w.alice, "alpha", "rita"),
        ("rita", &w.rita, "alpha", "alice"),
        ("bob", &w.bob, "beta", "alice"),
    ] {
        let mut cases = operator_cases(ids, project, fellow);
        cases.extend(self_escalation(project, who));
        failures.extend(w.expect_refused(who, token, &cases, 403, "forbidden").await);
        // Someone else's identity and tokens do not exist for them.
        let other_token = if who == "bob" {
            ids.alice_token
        } else {
            ids.bob_token
        };
        let other = if who == "bob" { "alice" } else { "bob" };
        let mut hidden = other_user(other, other_token);
        hidden.extend(other_user("admin", ids.admin_token));
        failures.extend(
            w.expect_refused(who, token, &hidden, 404, "not_found")
                .await,
        );
    }
    report(failures, "non-admins on operator endpoints");
    assert_unchanged(
        &before,
        &w.fingerprint().await,
        "non-admins' operator requests",
    );

    // What they may do: read global things, look after themselves.
    let mut failures = Vec::new();
    for (who, token) in [("alice", &w.alice), ("rita", &w.rita), ("bob", &w.bob)] {
        failures.extend(w.expect_ok(who, token, &global_reads(ids)).await);
        failures.extend(w.expect_ok(who, token, &global_lists()).await);
        failures.extend(w.expect_ok(who, token, &self_service(who)).await);
        let whoami = w.call(token, &case("GET /v1/whoami", &[])).await;
        if whoami.body["user"]["name"] != who || whoami.body["user"]["admin"] != false {
            failures.push(format!("{who} whoami: {}", whoami.raw));
        }
        // Their own new token can be revoked by them.
        let mine = w
            .call(token, &case("POST /v1/tokens", &[]).body(json!({})))
            .await;
        let id = mine.body["token"]["id"].as_str().unwrap_or_default();
        let del = w.call(token, &case("DELETE /v1/tokens/{id}", &[&id])).await;
        if del.status != 204 {
            failures.push(format!("{who} revoking own token: {}", del.raw));
        }
    }
    report(failures, "self service");
}

async fn admin_can_do_everything(backend: Backend) {
    let w = world(backend).await;
    let ids = &w.ids;
    let mut failures = Vec::new();
    failures.extend(w.expect_ok("admin", &w.admin, &project_reads(&ids.a)).await);
    failures.extend(w.expect_ok("admin", &w.admin, &project_reads(&ids.b)).await);
    failures.extend(w.expect_ok("admin", &w.admin, &global_reads(ids)).await);
    failures.extend(w.expect_ok("admin", &w.admin, &global_lists()).await);
    failures.extend(w.expect_ok("admin", &w.admin, &scoped_lists("")).await);
    failures.extend(
        w.expect_ok("admin", &w.admin, &scoped_lists("project=beta"))
            .await,
    );
    failures.extend(
        w.expect_ok("admin", &w.admin, &other_user("alice", ids.alice_token))
            .await,
    );
    failures.extend(
        w.expect_ok("admin", &w.admin, &project_writes(&ids.b, "project=beta"))
            .await,
    );
    failures.extend(
        w.expect_ok("admin", &w.admin, &operator_cases(ids, "delta", "victim"))
            .await,
    );
    failures.extend(w.expect_ok("admin", &w.admin, &self_service("admin")).await);
    report(failures, "admin");
}

async fn calls_without_a_valid_token_get_401(backend: Backend) {
    let w = world(backend).await;
    let ids = &w.ids;

    // A token that expires, one that is revoked, one whose user is deleted.
    let short = w
        .cloud
        .admin
        .token_create(
            Some("alice"),
            &TokenCreate {
                description: "short".into(),
                expires_in_secs: Some(1),
            },
        )
        .await
        .unwrap();
    let whoami = case("GET /v1/whoami", &[]);
    assert_eq!(
        w.call(&short.secret, &whoami).await.status,
        200,
        "fresh token"
    );
    let revoked = w
        .cloud
        .admin
        .token_create(Some("alice"), &TokenCreate::default_for_test())
        .await
        .unwrap();
    assert_eq!(w.call(&revoked.secret, &whoami).await.status, 200);
    w.cloud.admin.token_delete(revoked.token.id).await.unwrap();
    w.cloud
        .admin
        .user_create(&UserCreate {
            name: "ghost".into(),
            admin: true,
        })
        .await
        .unwrap();
    let ghost = w
        .cloud
        .admin
        .token_create(Some("ghost"), &TokenCreate::default_for_test())
        .await
        .unwrap();
    assert_eq!(w.call(&ghost.secret, &whoami).await.status, 200);
    w.cloud.admin.user_delete("ghost").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let before = w.fingerprint().await;
    let headers: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("empty", Some(String::new())),
        ("bare scheme", Some("Bearer".into())),
        ("empty bearer", Some("Bearer ".into())),
        ("garbage", Some("Bearer not-a-token".into())),
        ("other scheme", Some(format!("Basic {}", w.admin))),
        ("no scheme", Some(w.admin.clone())),
        ("expired", Some(format!("Bearer {}", short.secret))),
        ("revoked", Some(format!("Bearer {}", revoked.secret))),
        ("deleted user", Some(format!("Bearer {}", ghost.secret))),
    ];
    let mut failures = Vec::new();
    for (what, header) in &headers {
        for c in auth_sample(ids) {
            let r = send(
                &w.http,
                &w.cloud.url,
                header.as_deref(),
                c.method(),
                &c.path,
                c.body.as_ref(),
            )
            .await;
            if let Some(p) = error_problem(&r, 401, "unauthenticated") {
                failures.push(format!("{what}: {}: {p}", c.name()));
            }
        }
    }
    report(failures, "unauthenticated calls");
    assert_unchanged(&before, &w.fingerprint().await, "unauthenticated requests");

    // Health, the API description and metrics need no token (and a bad one
    // does not get in their way).
    for header in [None, Some("Bearer not-a-token")] {
        for path in ["/v1/health", "/v1/openapi.json", "/metrics"] {
            let r = send(&w.http, &w.cloud.url, header, "GET", path, None).await;
            assert_eq!(r.status, 200, "{path} with {header:?}: {}", r.raw);
        }
    }
    let doc = send(&w.http, &w.cloud.url, None, "GET", "/v1/openapi.json", None).await;
    assert!(doc.body["paths"].is_object(), "{}", doc.raw);
}

trait ForTest {
    fn default_for_test() -> Self;
}

impl ForTest for TokenCreate {
    fn default_for_test() -> Self {
        TokenCreate {
            description: "test".into(),
            expires_in_secs: None,
        }
    }
}

/// Every `/v1` operation the server documents appears in some table above
/// (and every table entry names a documented operation).
#[test]
fn the_tables_cover_every_public_operation() {
    let doc: Value =
        serde_json::from_str(&stack_manager::openapi::document_json()).expect("openapi JSON");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/v1/") {
            continue;
        }
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                documented.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let mut ids = Ids::default();
    ids.a.name = "alpha".into();
    ids.b.name = "beta".into();
    let mut covered = BTreeSet::new();
    let tables = [
        project_reads(&ids.a),
        project_writes(&ids.a, ""),
        cross_references(&ids.a, &ids.b),
        scoped_lists(""),
        global_lists(),
        operator_cases(&ids, "delta", "victim"),
        self_escalation("alpha", "alice"),
        self_service("alice"),
        other_user("bob", ids.bob_token),
        global_reads(&ids),
        auth_sample(&ids),
        vec![case("DELETE /v1/projects/{project}", &[&"beta"])],
    ];
    for c in tables.iter().flatten() {
        covered.insert(c.op.to_string());
    }
    let missing: Vec<_> = documented.difference(&covered).collect();
    let unknown: Vec<_> = covered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "operations no authorization table covers: {missing:#?}"
    );
    assert!(
        unknown.is_empty(),
        "table entries for undocumented operations: {unknown:#?}"
    );
    assert!(documented.len() > 50, "{documented:?}");
}

//! Bad input, on SQLite and PostgreSQL: every refusal is a 4xx with an
//! `{error, message}` body, never a 500, and a refused request changes
//! nothing in the database.
//!
//! The request bodies of every endpoint that takes one are listed once, in
//! `body_endpoints`, with a valid example; the malformed-body checks, the
//! positive control (each valid example is accepted) and the fuzzer all
//! work from that table. `the_body_table_covers_every_operation_with_a_body`
//! fails when the API grows a body the table does not know.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use api::ids::*;
use api::resources::*;
use serde_json::{json, Value};
use support::{changed, eventually, Backend, Resp, TestCloud};

on_both_backends!(
    malformed_bodies_are_400_malformed_body_and_change_nothing,
    malformed_ids_are_400_and_unknown_ids_404,
    invalid_values_are_400_naming_the_field_and_change_nothing,
    unknown_routes_are_404_and_wrong_methods_405,
    nul_characters_are_refused_not_500,
    fuzzed_bodies_never_get_a_500,
);

// ---------------------------------------------------------------------------
// HTTP and database helpers.

/// One request; `body` is sent as is, with `content_type` if given.
async fn send_raw(
    w: &World,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> Resp {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = w
        .http
        .request(method, format!("{}{path}", w.cloud.url))
        .bearer_auth(&w.admin);
    if let Some(ct) = content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    support::send(req, path).await
}

/// Reads what the peer sent next into `seen`; 0 at the end of the stream.
async fn read_more(conn: &mut tokio::net::TcpStream, seen: &mut Vec<u8>, path: &str) -> usize {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within 30 s"))
        .unwrap_or(0);
    seen.extend_from_slice(&buf[..n]);
    n
}

/// An oversized JSON request as the admin, sent the way a careful client
/// sends a large body: `Expect: 100-continue`, the body only once the
/// server asks for it, and the answer read even when the server stops
/// reading the body half-way and closes. reqwest gives up on the write
/// error there and reports the reset instead of the 413 the server had
/// already sent, depending on timing.
async fn send_oversized(w: &World, method: &str, path: &str, body: &Value) -> Resp {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::to_vec(body).expect("JSON");
    let authority = w
        .cloud
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut conn = tokio::net::TcpStream::connect(&authority)
        .await
        .unwrap_or_else(|e| panic!("{path}: connect: {e}"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\
         connection: close\r\n\r\n",
        w.admin,
        body.len()
    );
    conn.write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{path}: write head: {e}"));
    let mut seen = Vec::new();
    // The interim 100 (send the body) or the final answer.
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        if read_more(&mut conn, &mut seen, path).await == 0 {
            break;
        }
    }
    if seen.starts_with(b"HTTP/1.1 100") {
        let end = seen
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        seen.drain(..end);
        // The server may still refuse mid-body and close: what it said is
        // read below either way.
        let _ = tokio::time::timeout(Duration::from_secs(30), conn.write_all(&body)).await;
    }
    while read_more(&mut conn, &mut seen, path).await > 0 {}
    let text = String::from_utf8_lossy(&seen).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{path}: no HTTP answer: {text:?}"));
    let raw = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // A chunked answer: take the JSON between the chunk framing.
    let json_part = raw
        .find('{')
        .and_then(|a| raw.rfind('}').filter(|&b| b > a).map(|b| &raw[a..=b]))
        .unwrap_or("");
    let body = serde_json::from_str(json_part).unwrap_or(Value::Null);
    Resp { status, body, raw }
}

/// A JSON request as the admin.
async fn send(w: &World, method: &str, path: &str, body: Option<&Value>) -> Resp {
    send_raw(
        w,
        method,
        path,
        body.map(|_| "application/json"),
        body.map(|b| serde_json::to_vec(b).expect("JSON")),
    )
    .await
}

const ERROR_CODES: &[&str] = &[
    "invalid_request",
    "malformed_body",
    "invalid_id",
    "unauthenticated",
    "forbidden",
    "not_found",
    "conflict",
    "quota_exceeded",
    "capacity_exhausted",
    "addresses_exhausted",
    "unavailable",
    "internal",
];

/// Whether the body is exactly `{error: <known code>, message: <non-empty>}`.
fn is_error_body(r: &Resp) -> bool {
    r.body.as_object().is_some_and(|o| {
        o.len() == 2
            && o.get("error")
                .and_then(Value::as_str)
                .is_some_and(|c| ERROR_CODES.contains(&c))
            && o.get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty())
    })
}

/// `Some(problem)` unless `r` is a `status` error with code `code` whose
/// message contains every string in `mentions`.
fn error_problem(r: &Resp, status: u16, code: &str, mentions: &[&str]) -> Option<String> {
    let message = r.body["message"].as_str().unwrap_or_default();
    let missing: Vec<_> = mentions.iter().filter(|m| !message.contains(*m)).collect();
    if r.status != status || r.body["error"] != code || !is_error_body(r) || !missing.is_empty() {
        Some(format!(
            "got {} {}, want {status} {code} mentioning {mentions:?}",
            r.status,
            excerpt(&r.raw)
        ))
    } else {
        None
    }
}

fn excerpt(s: &str) -> String {
    let mut e: String = s.chars().take(240).collect();
    if e.len() < s.len() {
        e.push_str("...");
    }
    e
}

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
// The world: project `acme` with member `alice` and everything an instance
// needs, a running instance `vm`, an available volume `data`, a rack.

struct World {
    cloud: TestCloud,
    http: reqwest::Client,
    admin: String,
    net: NetworkId,
    vm: InstanceId,
    volume: VolumeId,
    host: HostId,
}

impl World {
    async fn fingerprint(&self) -> Vec<String> {
        support::fingerprint(&self.cloud).await
    }
}

/// Waits until no instance, volume or snapshot is on its way somewhere.
async fn settled(w: &World) {
    const IN_FLIGHT: [&str; 3] = [
        "SELECT COUNT(*) FROM instances WHERE deleted_at IS NULL \
           AND status IN ('pending', 'building', 'deleting')",
        "SELECT COUNT(*) FROM volumes WHERE deleted_at IS NULL \
           AND status IN ('creating', 'deleting')",
        "SELECT COUNT(*) FROM snapshots WHERE deleted_at IS NULL \
           AND status IN ('creating', 'deleting')",
    ];
    let pool = &w.cloud.state.db.pool;
    eventually(30, || async {
        for q in IN_FLIGHT {
            let n: i64 = sqlx::query_scalar(q).fetch_one(pool).await.ok()?;
            if n > 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

async fn world(backend: Backend) -> World {
    let cloud = TestCloud::start_with(backend, |c| {
        c.hosts.down_after_secs = 3600;
    })
    .await;
    cloud.project("acme").await;
    let alice = cloud.user("alice", "acme", ProjectRole::Member).await;
    cloud.basics(&alice).await;
    let host = cloud.hypervisor("hv-1", 16, 65_536, None).await;
    cloud.storage("st-1", 500).await;
    let net = alice.network_list().await.unwrap()[0].id;
    let vm = alice
        .instance_create(&TestCloud::vm("vm"))
        .await
        .expect("vm");
    let volume = TestCloud::available_volume(&alice, "data", 2).await;
    eventually(15, || async {
        (alice.instance_get(vm.id).await.ok()?.status == InstanceStatus::Running).then_some(())
    })
    .await;
    cloud
        .admin
        .rack_create(&RackCreate {
            name: "rack-1".into(),
            location: String::new(),
        })
        .await
        .expect("rack");
    World {
        http: reqwest::Client::new(),
        admin: cloud.admin_token.clone(),
        cloud,
        net,
        vm: vm.id,
        volume: volume.id,
        host,
    }
}

/// An endpoint that takes a JSON body, with a valid example.
struct BodyEndpoint {
    /// The OpenAPI operation, `METHOD /template`.
    op: &'static str,
    path: String,
    valid: Value,
    /// Fields without a default: leaving one out is malformed.
    required: &'static [&'static str],
    /// Further bodies that must be `malformed_body` (bad enum values, bad
    /// addresses, ...).
    malformed: Vec<Value>,
    /// Status the valid example gets.
    ok: u16,
}

impl BodyEndpoint {
    fn method(&self) -> &'static str {
        self.op.split_once(' ').map(|(m, _)| m).unwrap_or("POST")
    }
}

fn with(base: &Value, patch: Value) -> Value {
    let mut v = base.clone();
    for (k, x) in patch.as_object().expect("patch is an object") {
        v[k] = x.clone();
    }
    v
}

fn body_endpoints(w: &World) -> Vec<BodyEndpoint> {
    body_endpoints_for(w.net, w.vm, w.volume, w.host)
}

/// The table, for the world's network, instance, volume and host.
fn body_endpoints_for(
    net: NetworkId,
    vm: InstanceId,
    volume_id: VolumeId,
    host: HostId,
) -> Vec<BodyEndpoint> {
    let ep = |op: &'static str, path: String, valid: Value, required: &'static [&'static str]| {
        BodyEndpoint {
            op,
            path,
            valid,
            required,
            malformed: Vec::new(),
            ok: 201,
        }
    };
    let image = json!({
        "name": "img-1", "source": "/var/lib/strato/images/one.qcow2", "format": "qcow2",
        "sha256": "e".repeat(64), "min_disk_gib": 1, "visibility": "private",
    });
    let subnet = json!({
        "name": "sub-1", "cidr": "10.99.0.0/24", "gateway": "10.99.0.1",
        "pools": [{"start": "10.99.0.10", "end": "10.99.0.20"}],
        "reserved": [{"start": "10.99.0.15", "end": "10.99.0.16"}],
        "dns_servers": ["10.99.0.1"],
    });
    let instance = json!({
        "name": "vm-1", "flavor": "small", "image": "tiny", "networks": ["net"],
        "keypair": "key", "user_data": "#cloud-config\n", "anti_affinity_group": null,
        "start": true,
    });
    let volume = json!({"name": "vol-1", "size_gib": 1, "source": {"kind": "empty"}});
    let enroll = json!({"kind": "storage", "rack": "rack-1", "expires_in_secs": 600});
    vec![
        ep(
            "POST /v1/flavors",
            "/v1/flavors".into(),
            json!({"name": "f-1", "vcpus": 1, "ram_mib": 512, "disk_gib": 5}),
            &["name", "vcpus", "ram_mib", "disk_gib"],
        ),
        ep(
            "POST /v1/projects",
            "/v1/projects".into(),
            json!({"name": "p-1", "description": "a project"}),
            &["name"],
        ),
        ep(
            "POST /v1/users",
            "/v1/users".into(),
            json!({"name": "u-1", "admin": false}),
            &["name"],
        ),
        ep(
            "POST /v1/tokens",
            "/v1/tokens".into(),
            json!({"description": "t", "expires_in_secs": 3600}),
            &[],
        ),
        ep(
            "POST /v1/users/{user}/tokens",
            "/v1/users/alice/tokens".into(),
            json!({"description": "t", "expires_in_secs": 3600}),
            &[],
        ),
        BodyEndpoint {
            malformed: vec![
                with(&image, json!({"format": "vmdk"})),
                with(&image, json!({"visibility": "secret"})),
            ],
            ..ep(
                "POST /v1/images",
                "/v1/images?project=acme".into(),
                image,
                &["name", "source", "format", "sha256"],
            )
        },
        ep(
            "POST /v1/keypairs",
            "/v1/keypairs?project=acme".into(),
            json!({"name": "key-1", "public_key": support::TEST_KEY}),
            &["name", "public_key"],
        ),
        BodyEndpoint {
            malformed: vec![
                json!({"name": "n", "vlan": 70000}),
                json!({"name": "n", "mtu": -1}),
            ],
            ..ep(
                "POST /v1/networks",
                "/v1/networks?project=acme".into(),
                json!({"name": "net-1", "vlan": 10, "mtu": 1500}),
                &["name"],
            )
        },
        BodyEndpoint {
            malformed: vec![
                with(&subnet, json!({"cidr": "10.99.0.0"})),
                with(&subnet, json!({"cidr": "10.99.0.0/33"})),
                with(&subnet, json!({"cidr": "not-a-cidr"})),
                with(&subnet, json!({"gateway": "10.99.0.256"})),
                with(&subnet, json!({"dns_servers": ["dns.example"]})),
                with(&subnet, json!({"pools": [{"start": "10.99.0.10"}]})),
                with(
                    &subnet,
                    json!({"pools": [{"start": "10.99.0.10", "end": "10.99.0.20", "step": 2}]}),
                ),
                with(&subnet, json!({"reserved": ["10.99.0.15"]})),
            ],
            ..ep(
                "POST /v1/networks/{id}/subnets",
                format!("/v1/networks/{net}/subnets"),
                subnet,
                &["name", "cidr"],
            )
        },
        BodyEndpoint {
            malformed: vec![with(&instance, json!({"networks": "net"}))],
            ..ep(
                "POST /v1/instances",
                "/v1/instances?project=acme".into(),
                instance,
                &["name", "flavor", "image", "networks"],
            )
        },
        BodyEndpoint {
            malformed: vec![
                with(&volume, json!({"source": {"kind": "url", "id": "x"}})),
                with(
                    &volume,
                    json!({"source": {"kind": "snapshot", "id": "nope"}}),
                ),
                with(&volume, json!({"source": {"kind": "snapshot"}})),
                with(&volume, json!({"source": "empty"})),
            ],
            ..ep(
                "POST /v1/volumes",
                "/v1/volumes?project=acme".into(),
                volume,
                &["name", "size_gib"],
            )
        },
        ep(
            "POST /v1/volumes/{id}/snapshots",
            format!("/v1/volumes/{volume_id}/snapshots"),
            json!({"name": "snap-1"}),
            &["name"],
        ),
        ep(
            "POST /v1/anti-affinity-groups",
            "/v1/anti-affinity-groups?project=acme".into(),
            json!({"name": "grp-1"}),
            &["name"],
        ),
        ep(
            "POST /v1/racks",
            "/v1/racks".into(),
            json!({"name": "rack-2", "location": "hall 2"}),
            &["name"],
        ),
        BodyEndpoint {
            malformed: vec![with(&enroll, json!({"kind": "router"}))],
            ..ep(
                "POST /v1/enrollment-tokens",
                "/v1/enrollment-tokens".into(),
                enroll,
                &["kind"],
            )
        },
        BodyEndpoint {
            ok: 200,
            ..ep(
                "PUT /v1/projects/{project}/quota",
                "/v1/projects/acme/quota".into(),
                json!({"instances": 30, "vcpus": 60, "ram_mib": null}),
                &[],
            )
        },
        BodyEndpoint {
            ok: 200,
            malformed: vec![json!({"admin_state": "off"})],
            ..ep(
                "PATCH /v1/hosts/{id}",
                format!("/v1/hosts/{host}"),
                json!({"admin_state": "enabled"}),
                &["admin_state"],
            )
        },
        BodyEndpoint {
            ok: 200,
            malformed: vec![json!({"role": "owner"}), json!({"role": "admin"})],
            ..ep(
                "PUT /v1/projects/{project}/members/{user}",
                "/v1/projects/acme/members/alice".into(),
                json!({"role": "member"}),
                &["role"],
            )
        },
        ep(
            "POST /v1/instances/{id}/attachments",
            format!("/v1/instances/{vm}/attachments"),
            json!({"volume": "data"}),
            &["volume"],
        ),
        BodyEndpoint {
            ok: 200,
            malformed: vec![json!({"relocation": "sometimes"})],
            ..ep(
                "PATCH /v1/instances/{id}",
                format!("/v1/instances/{vm}"),
                json!({"relocation": "allow"}),
                &[],
            )
        },
        // (A dry run: the valid example moves nothing. An out-of-range
        // band is a 400 `invalid_request` from the handler, not a
        // malformed body, so the example carries none.)
        BodyEndpoint {
            ok: 200,
            malformed: vec![json!({"band": "wide"})],
            ..ep(
                "POST /v1/hosts/rebalance",
                "/v1/hosts/rebalance".into(),
                json!({"dry_run": true}),
                &[],
            )
        },
        // (The host heartbeats, so the operator's word that it is off is
        // refused with 409 before anything is fenced: the body was read
        // and judged, and nothing moves.)
        BodyEndpoint {
            ok: 409,
            ..ep(
                "POST /v1/hosts/{id}/evacuate",
                format!("/v1/hosts/{host}/evacuate"),
                json!({"confirm_fenced": true}),
                &[],
            )
        },
    ]
}

/// `e`'s body as a JSON array of its fields in declaration order: what
/// serde's derived `Deserialize` would accept in place of the object. An API
/// body is an object; these must be refused like any other array.
fn positional(e: &BodyEndpoint) -> Vec<Value> {
    let key = support::TEST_KEY;
    match e.op {
        "POST /v1/flavors" => vec![json!(["f-2", 1, 512, 5])],
        "POST /v1/projects" => vec![json!(["p-2"]), json!(["p-3", "d"])],
        "POST /v1/users" => vec![json!(["u-2"]), json!(["u-3", true])],
        "POST /v1/tokens" | "POST /v1/users/{user}/tokens" => {
            vec![json!([]), json!(["t"]), json!(["t", 3600])]
        }
        "POST /v1/images" => vec![json!([
            "img-2",
            "/var/lib/strato/images/two.qcow2",
            "qcow2",
            "e".repeat(64)
        ])],
        "POST /v1/keypairs" => vec![json!(["key-2", key])],
        "POST /v1/networks" => vec![json!(["net-2"]), json!(["net-3", 11, 1500])],
        "POST /v1/networks/{id}/subnets" => vec![json!(["sub-2", "10.98.0.0/24"])],
        "POST /v1/instances" => vec![json!(["vm-2", "small", "tiny", ["net"]])],
        "POST /v1/volumes" => vec![json!(["vol-2", 1])],
        "POST /v1/volumes/{id}/snapshots" => vec![json!(["snap-2"])],
        "POST /v1/anti-affinity-groups" => vec![json!(["grp-2"])],
        "POST /v1/racks" => vec![json!(["rack-3"])],
        "POST /v1/enrollment-tokens" => vec![json!(["hypervisor"])],
        "PUT /v1/projects/{project}/quota" => vec![json!([1, 2, 3, 4, 5, 6])],
        "PATCH /v1/hosts/{id}" => vec![json!(["disabled"])],
        "PUT /v1/projects/{project}/members/{user}" => vec![json!(["reader"])],
        "POST /v1/instances/{id}/attachments" => vec![json!(["data"])],
        "PATCH /v1/instances/{id}" => vec![json!(["never"])],
        "POST /v1/hosts/rebalance" => vec![json!([true])],
        "POST /v1/hosts/{id}/evacuate" => vec![json!([true])],
        other => panic!("no positional form for {other}"),
    }
}

/// A value of another JSON type than `v`.
fn flipped(v: &Value) -> Value {
    match v {
        Value::String(_) => json!(123),
        Value::Number(_) => json!("1"),
        Value::Bool(_) => json!("true"),
        Value::Array(_) => json!({"a": 1}),
        Value::Object(_) => json!([1]),
        Value::Null => json!([1]),
    }
}

/// Every malformed variant of `e`'s valid body, as (description, content
/// type, bytes).
fn malformed_variants(e: &BodyEndpoint) -> Vec<(String, Option<&'static str>, Vec<u8>)> {
    const JSON: Option<&str> = Some("application/json");
    let text = serde_json::to_string(&e.valid).expect("JSON");
    let obj = e.valid.as_object().expect("bodies are objects");
    let mut out: Vec<(String, Option<&'static str>, Vec<u8>)> = vec![
        ("truncated".into(), JSON, text[..text.len() / 2].into()),
        ("unclosed".into(), JSON, text[..text.len() - 1].into()),
        ("empty".into(), JSON, Vec::new()),
        ("array".into(), JSON, b"[]".to_vec()),
        ("array of the body".into(), JSON, format!("[{text}]").into()),
        ("null".into(), JSON, b"null".to_vec()),
        ("string".into(), JSON, b"\"body\"".to_vec()),
        ("number".into(), JSON, b"42".to_vec()),
        ("trailing garbage".into(), JSON, format!("{text}x").into()),
        ("two objects".into(), JSON, format!("{text}{text}").into()),
        ("single quotes".into(), JSON, text.replace('"', "'").into()),
        (
            "invalid UTF-8".into(),
            JSON,
            [b"{\"name\": \"\xff\xfe\"}".as_slice()].concat(),
        ),
        (
            "deep nesting".into(),
            JSON,
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into(),
        ),
        ("no content type".into(), None, text.clone().into()),
        ("text/plain".into(), Some("text/plain"), text.clone().into()),
        (
            "form encoded".into(),
            Some("application/x-www-form-urlencoded"),
            b"name=x".to_vec(),
        ),
        (
            "unknown field".into(),
            JSON,
            serde_json::to_vec(&with(&e.valid, json!({"bogus": 1}))).unwrap(),
        ),
        (
            "duplicate field".into(),
            JSON,
            text.replacen('{', "{\"bogus\": 1, \"bogus\": 2, ", 1)
                .into(),
        ),
    ];
    if let Some(k) = obj.keys().next() {
        out.push((
            format!("duplicate `{k}`"),
            JSON,
            text.replacen('{', &format!("{{\"{k}\": {}, ", obj[k]), 1)
                .into(),
        ));
    }
    for (k, v) in obj {
        out.push((
            format!("`{k}` of the wrong type"),
            JSON,
            serde_json::to_vec(&with(&e.valid, json!({ k.as_str(): flipped(v) }))).unwrap(),
        ));
        if v.is_number() {
            for n in ["-1", "1.5", "1e300", "18446744073709551616"] {
                let mut t = e.valid.clone();
                t[k] = json!("__N__");
                let body = serde_json::to_string(&t).unwrap().replace("\"__N__\"", n);
                out.push((format!("`{k}` = {n}"), JSON, body.into()));
            }
        }
    }
    for k in e.required {
        let mut t = e.valid.clone();
        t.as_object_mut().unwrap().remove(*k);
        out.push((
            format!("`{k}` missing"),
            JSON,
            serde_json::to_vec(&t).unwrap(),
        ));
    }
    for a in positional(e) {
        out.push((
            format!("positional array {a}"),
            JSON,
            serde_json::to_vec(&a).unwrap(),
        ));
    }
    for (i, m) in e.malformed.iter().enumerate() {
        out.push((
            format!("malformed example {i}: {m}"),
            JSON,
            serde_json::to_vec(m).unwrap(),
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// The scenarios.

async fn malformed_bodies_are_400_malformed_body_and_change_nothing(backend: Backend) {
    let w = world(backend).await;
    let endpoints = body_endpoints(&w);
    let mut failures = Vec::new();
    // Positive control first: each valid example is accepted, so the
    // refusals below are about the malformation and nothing else.
    for e in &endpoints {
        let r = send(&w, e.method(), &e.path, Some(&e.valid)).await;
        if r.status != e.ok {
            failures.push(format!(
                "{} {} (valid body): got {} {}, want {}",
                e.method(),
                e.path,
                r.status,
                excerpt(&r.raw),
                e.ok
            ));
        }
    }
    // What the valid examples started (a VM building, a snapshot being
    // taken) finishes before the database is compared around the
    // malformed ones, or its completion would read as their change.
    settled(&w).await;
    let mut checked = 0;
    for e in &endpoints {
        let before = w.fingerprint().await;
        for (what, ct, bytes) in malformed_variants(e) {
            let r = send_raw(&w, e.method(), &e.path, ct, Some(bytes)).await;
            checked += 1;
            if let Some(p) = error_problem(&r, 400, "malformed_body", &[]) {
                failures.push(format!("{} {} ({what}): {p}", e.method(), e.path));
            }
        }
        // Far over the body limit.
        let huge = with(&e.valid, json!({"name": "x".repeat(3 << 20)}));
        let r = send_oversized(&w, e.method(), &e.path, &huge).await;
        if !(r.status == 400 || r.status == 413) || !is_error_body(&r) {
            failures.push(format!(
                "{} {} (3 MiB body): got {} {}",
                e.method(),
                e.path,
                r.status,
                excerpt(&r.raw)
            ));
        }
        if let Some(d) = changed(&before, &w.fingerprint().await) {
            failures.push(format!("{} {}: {d}", e.method(), e.path));
        }
    }
    assert!(checked > 400, "only {checked} malformed bodies sent");
    report(failures, "malformed bodies");
}

/// Routes taking typed ids, with a placeholder `{}` for the id under test
/// and the body the route needs.
fn id_routes(w: &World) -> Vec<(&'static str, String, Option<Value>)> {
    let vm = w.vm;
    let vol = w.volume;
    let mut out: Vec<(&'static str, String, Option<Value>)> = Vec::new();
    for (method, path) in [
        ("GET", "/v1/flavors/{}"),
        ("DELETE", "/v1/flavors/{}"),
        ("GET", "/v1/images/{}"),
        ("DELETE", "/v1/images/{}"),
        ("GET", "/v1/keypairs/{}"),
        ("DELETE", "/v1/keypairs/{}"),
        ("GET", "/v1/networks/{}"),
        ("DELETE", "/v1/networks/{}"),
        ("GET", "/v1/networks/{}/subnets"),
        ("GET", "/v1/subnets/{}"),
        ("DELETE", "/v1/subnets/{}"),
        ("GET", "/v1/instances/{}"),
        ("DELETE", "/v1/instances/{}"),
        ("POST", "/v1/instances/{}/start"),
        ("POST", "/v1/instances/{}/stop"),
        ("POST", "/v1/instances/{}/reboot"),
        ("GET", "/v1/instances/{}/console"),
        ("GET", "/v1/volumes/{}"),
        ("DELETE", "/v1/volumes/{}"),
        ("GET", "/v1/snapshots/{}"),
        ("DELETE", "/v1/snapshots/{}"),
        ("GET", "/v1/anti-affinity-groups/{}"),
        ("DELETE", "/v1/anti-affinity-groups/{}"),
        ("GET", "/v1/racks/{}"),
        ("DELETE", "/v1/racks/{}"),
        ("GET", "/v1/hosts/{}"),
        ("DELETE", "/v1/hosts/{}"),
        ("DELETE", "/v1/tokens/{}"),
    ] {
        out.push((method, path.to_string(), None));
    }
    out.push((
        "POST",
        "/v1/networks/{}/subnets".into(),
        Some(json!({"name": "s", "cidr": "10.98.0.0/24"})),
    ));
    out.push((
        "POST",
        "/v1/instances/{}/attachments".into(),
        Some(json!({"volume": "data"})),
    ));
    out.push((
        "PATCH",
        "/v1/instances/{}".into(),
        Some(json!({"relocation": "allow"})),
    ));
    out.push((
        "POST",
        "/v1/volumes/{}/snapshots".into(),
        Some(json!({"name": "s"})),
    ));
    out.push((
        "PATCH",
        "/v1/hosts/{}".into(),
        Some(json!({"admin_state": "disabled"})),
    ));
    out.push((
        "DELETE",
        format!("/v1/instances/{{}}/attachments/{vol}"),
        None,
    ));
    out.push((
        "DELETE",
        format!("/v1/instances/{vm}/attachments/{{}}"),
        None,
    ));
    out
}

async fn malformed_ids_are_400_and_unknown_ids_404(backend: Backend) {
    let w = world(backend).await;
    let before = w.fingerprint().await;
    let long = "a".repeat(300);
    let bad_ids = [
        "not-a-uuid",
        "12345",
        "00000000-0000-0000-0000-00000000000g",
        "00000000-0000-0000-0000-0000000000000",
        long.as_str(),
        "%C3%A9t%C3%A9",
        "%FF%FE",
        "%00",
        "%20",
        "null",
    ];
    let mut failures = Vec::new();
    for (method, path, body) in id_routes(&w) {
        for bad in bad_ids {
            let p = path.replace("{}", bad);
            let r = send(&w, method, &p, body.as_ref()).await;
            if let Some(problem) = error_problem(&r, 400, "invalid_id", &[]) {
                failures.push(format!("{method} {p}: {problem}"));
            }
        }
        let unknown = uuid::Uuid::new_v4().to_string();
        let p = path.replace("{}", &unknown);
        let r = send(&w, method, &p, body.as_ref()).await;
        if let Some(problem) = error_problem(&r, 404, "not_found", &[&unknown]) {
            failures.push(format!("{method} {p}: {problem}"));
        }
    }
    // Projects and users are named by id or name: anything unknown is 404.
    for unknown in [
        uuid::Uuid::new_v4().to_string(),
        "no-such-thing".to_string(),
        "NOT VALID".to_string(),
        long.clone(),
    ] {
        let enc = unknown.replace(' ', "%20");
        for (method, path, body) in [
            ("GET", format!("/v1/projects/{enc}"), None),
            ("DELETE", format!("/v1/projects/{enc}"), None),
            ("GET", format!("/v1/projects/{enc}/quota"), None),
            (
                "PUT",
                format!("/v1/projects/{enc}/quota"),
                Some(json!({"instances": 1})),
            ),
            (
                "PUT",
                format!("/v1/projects/{enc}/members/alice"),
                Some(json!({"role": "reader"})),
            ),
            (
                "PUT",
                format!("/v1/projects/acme/members/{enc}"),
                Some(json!({"role": "reader"})),
            ),
            ("DELETE", format!("/v1/projects/{enc}/members/alice"), None),
            ("DELETE", format!("/v1/projects/acme/members/{enc}"), None),
            ("GET", format!("/v1/users/{enc}"), None),
            ("DELETE", format!("/v1/users/{enc}"), None),
            ("POST", format!("/v1/users/{enc}/tokens"), Some(json!({}))),
            ("GET", format!("/v1/tokens?user={enc}"), None),
            ("GET", format!("/v1/instances?project={enc}"), None),
            (
                "POST",
                format!("/v1/networks?project={enc}"),
                Some(json!({"name": "n"})),
            ),
        ] {
            let r = send(&w, method, &path, body.as_ref()).await;
            if let Some(problem) = error_problem(&r, 404, "not_found", &[&unknown]) {
                failures.push(format!("{method} {path}: {problem}"));
            }
        }
    }
    report(failures, "ids in paths");
    if let Some(d) = changed(&before, &w.fingerprint().await) {
        panic!("requests with bad ids changed the database: {d}");
    }
}

async fn invalid_values_are_400_naming_the_field_and_change_nothing(backend: Backend) {
    let w = world(backend).await;
    let mut failures_early = Vec::new();
    let vm = |patch: Value| {
        with(
            &json!({"name": "vm-x", "flavor": "small", "image": "tiny", "networks": ["net"]}),
            patch,
        )
    };
    let image = |patch: Value| {
        with(
            &json!({"name": "img-x", "source": "/images/x.qcow2", "format": "raw",
                    "sha256": "f".repeat(64)}),
            patch,
        )
    };
    let subnet = |patch: Value| with(&json!({"name": "sub-x", "cidr": "10.99.0.0/24"}), patch);
    let range = |a: &str, b: &str| json!({"start": a, "end": b});
    let private_key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n";
    let subnets = format!("/v1/networks/{}/subnets", w.net);
    let snapshots = format!("/v1/volumes/{}/snapshots", w.volume);
    let attachments = format!("/v1/instances/{}/attachments", w.vm);
    let long_name = "a".repeat(64);
    let big_user_data = "x".repeat(64 * 1024 + 1);
    let nine_dns: Vec<String> = (1..=9).map(|i| format!("10.99.0.{i}")).collect();
    let nine_nets = vec!["net"; 9];

    // (method, path, body, status, code, what the message must mention)
    type Case<'a> = (&'a str, String, Option<Value>, u16, &'a str, Vec<&'a str>);
    let bad = |path: &str, body: Value, mention: &'static str| -> Case<'static> {
        (
            "POST",
            path.to_string(),
            Some(body),
            400,
            "invalid_request",
            vec![mention],
        )
    };
    let missing = |path: &str, body: Value, mention: &'static str| -> Case<'static> {
        (
            "POST",
            path.to_string(),
            Some(body),
            404,
            "not_found",
            vec![mention],
        )
    };
    let mut cases: Vec<Case> = Vec::new();
    for name in [
        "Upper",
        "",
        "1abc",
        "a_b",
        "abc-",
        "ünï",
        "a b",
        long_name.as_str(),
    ] {
        let n = json!(name);
        for (path, body) in [
            ("/v1/projects", json!({"name": n})),
            ("/v1/users", json!({"name": n})),
            (
                "/v1/flavors",
                json!({"name": n, "vcpus": 1, "ram_mib": 512, "disk_gib": 1}),
            ),
            ("/v1/images?project=acme", image(json!({"name": n}))),
            (
                "/v1/keypairs?project=acme",
                json!({"name": n, "public_key": support::TEST_KEY}),
            ),
            ("/v1/networks?project=acme", json!({"name": n})),
            (subnets.as_str(), subnet(json!({"name": n}))),
            ("/v1/instances?project=acme", vm(json!({"name": n}))),
            (
                "/v1/volumes?project=acme",
                json!({"name": n, "size_gib": 1}),
            ),
            (snapshots.as_str(), json!({"name": n})),
            ("/v1/anti-affinity-groups?project=acme", json!({"name": n})),
            ("/v1/racks", json!({"name": n})),
        ] {
            cases.push(bad(path, body, "name"));
        }
    }
    let flavor = |patch: Value| {
        with(
            &json!({"name": "f-x", "vcpus": 1, "ram_mib": 512, "disk_gib": 1}),
            patch,
        )
    };
    cases.extend([
        bad(
            "/v1/projects",
            json!({"name": "p-x", "description": "d".repeat(1025)}),
            "description",
        ),
        bad("/v1/flavors", flavor(json!({"vcpus": 0})), "vcpus"),
        bad("/v1/flavors", flavor(json!({"vcpus": 257})), "vcpus"),
        bad("/v1/flavors", flavor(json!({"ram_mib": 1})), "ram_mib"),
        bad("/v1/flavors", flavor(json!({"ram_mib": u64::MAX})), "ram_mib"),
        bad("/v1/flavors", flavor(json!({"disk_gib": 0})), "disk_gib"),
        bad(
            "/v1/images?project=acme",
            image(json!({"sha256": "z".repeat(64)})),
            "sha256",
        ),
        bad(
            "/v1/images?project=acme",
            image(json!({"sha256": "F".repeat(64)})),
            "sha256",
        ),
        bad(
            "/v1/images?project=acme",
            image(json!({"sha256": "f".repeat(63)})),
            "sha256",
        ),
        bad(
            "/v1/images?project=acme",
            image(json!({"source": "images/relative.qcow2"})),
            "source",
        ),
        bad(
            "/v1/images?project=acme",
            image(json!({"source": "/images/../../etc/shadow"})),
            "source",
        ),
        bad(
            "/v1/images?project=acme",
            image(json!({"source": "ftp://host/x.img"})),
            "source",
        ),
        bad(
            "/v1/images?project=acme",
            image(json!({"source": "https:///x.img"})),
            "source",
        ),
        bad(
            "/v1/images?project=acme",
            image(json!({"source": "/images/x\n.img"})),
            "source",
        ),
        bad(
            "/v1/images?project=acme",
            image(json!({"source": format!("/{}", "x".repeat(3000))})),
            "source",
        ),
        bad(
            "/v1/images?project=acme",
            image(json!({"min_disk_gib": 0})),
            "min_disk_gib",
        ),
        bad(
            "/v1/keypairs?project=acme",
            json!({"name": "k-x", "public_key": "hello"}),
            "public_key",
        ),
        bad(
            "/v1/keypairs?project=acme",
            json!({"name": "k-x", "public_key": ""}),
            "public_key",
        ),
        bad(
            "/v1/keypairs?project=acme",
            json!({"name": "k-x", "public_key": "ssh-ed25519 AAAA"}),
            "public_key",
        ),
        bad(
            "/v1/keypairs?project=acme",
            json!({"name": "k-x", "public_key": private_key}),
            "private",
        ),
        bad(
            "/v1/keypairs?project=acme",
            json!({"name": "k-x", "public_key": format!("{}\n{}", support::TEST_KEY, support::TEST_KEY)}),
            "public_key",
        ),
        bad(
            "/v1/keypairs?project=acme",
            json!({"name": "k-x", "public_key": "x".repeat(20_000)}),
            "public_key",
        ),
        bad(
            "/v1/networks?project=acme",
            json!({"name": "n-x", "vlan": 5000}),
            "vlan",
        ),
        bad(
            "/v1/networks?project=acme",
            json!({"name": "n-x", "vlan": 0}),
            "vlan",
        ),
        bad(
            "/v1/networks?project=acme",
            json!({"name": "n-x", "mtu": 100}),
            "mtu",
        ),
        bad(
            "/v1/networks?project=acme",
            json!({"name": "n-x", "mtu": 65535}),
            "mtu",
        ),
        // netconfig's messages name the offending value rather than the field.
        bad(&subnets, subnet(json!({"cidr": "10.99.0.5/24"})), "10.99.0.5/24"),
        bad(&subnets, subnet(json!({"cidr": "10.99.0.0/31"})), "10.99.0.0/31"),
        bad(
            &subnets,
            subnet(json!({"pools": [range("10.99.0.10", "10.99.0.20"), range("10.99.0.15", "10.99.0.30")]})),
            "pools",
        ),
        bad(
            &subnets,
            subnet(json!({"pools": [range("10.99.0.20", "10.99.0.10")]})),
            "10.99.0.20",
        ),
        bad(
            &subnets,
            subnet(json!({"pools": [range("10.99.0.0", "10.99.0.10")]})),
            "pool",
        ),
        bad(
            &subnets,
            subnet(json!({"pools": [range("10.98.0.1", "10.98.0.10")]})),
            "pool",
        ),
        bad(
            &subnets,
            subnet(json!({"reserved": [range("10.98.0.1", "10.98.0.10")]})),
            "reserved",
        ),
        bad(&subnets, subnet(json!({"gateway": "10.98.0.1"})), "gateway"),
        bad(&subnets, subnet(json!({"gateway": "10.99.0.0"})), "gateway"),
        bad(&subnets, subnet(json!({"gateway": "10.99.0.255"})), "gateway"),
        bad(&subnets, subnet(json!({"gateway": "fd00::1"})), "gateway"),
        bad(
            &subnets,
            subnet(json!({"dns_servers": nine_dns})),
            "dns_servers",
        ),
        // Overlaps the network's existing 10.20.0.0/24.
        bad(&subnets, subnet(json!({"cidr": "10.20.0.0/25"})), "overlaps"),
        bad(&subnets, subnet(json!({"cidr": "10.0.0.0/8"})), "overlaps"),
        bad(
            "/v1/volumes?project=acme",
            json!({"name": "v-x", "size_gib": 0}),
            "size_gib",
        ),
        bad(
            "/v1/volumes?project=acme",
            json!({"name": "v-x", "size_gib": 65537}),
            "size_gib",
        ),
        bad(
            "/v1/instances?project=acme",
            vm(json!({"user_data": big_user_data})),
            "user_data",
        ),
        bad(
            "/v1/instances?project=acme",
            vm(json!({"networks": []})),
            "networks",
        ),
        bad(
            "/v1/instances?project=acme",
            vm(json!({"networks": nine_nets})),
            "networks",
        ),
        bad(
            "/v1/racks",
            json!({"name": "r-x", "location": "l".repeat(257)}),
            "location",
        ),
        bad(
            "/v1/enrollment-tokens",
            json!({"kind": "hypervisor", "expires_in_secs": 10}),
            "expires_in_secs",
        ),
        bad(
            "/v1/enrollment-tokens",
            json!({"kind": "hypervisor", "expires_in_secs": u64::MAX}),
            "expires_in_secs",
        ),
        bad(
            "/v1/tokens",
            json!({"expires_in_secs": 0}),
            "expires_in_secs",
        ),
        bad(
            "/v1/tokens",
            json!({"expires_in_secs": u64::MAX}),
            "expires_in_secs",
        ),
        bad(
            "/v1/tokens",
            json!({"description": "d".repeat(1025)}),
            "description",
        ),
        bad(
            "/v1/users/alice/tokens",
            json!({"expires_in_secs": 0}),
            "expires_in_secs",
        ),
        // Unknown references: 404 naming what was not found.
        missing(
            "/v1/instances?project=acme",
            vm(json!({"flavor": "no-flavor"})),
            "no-flavor",
        ),
        missing(
            "/v1/instances?project=acme",
            vm(json!({"image": "no-image"})),
            "no-image",
        ),
        missing(
            "/v1/instances?project=acme",
            vm(json!({"networks": ["net", "no-net"]})),
            "no-net",
        ),
        missing(
            "/v1/instances?project=acme",
            vm(json!({"keypair": "no-key"})),
            "no-key",
        ),
        missing(
            "/v1/instances?project=acme",
            vm(json!({"anti_affinity_group": "no-group"})),
            "no-group",
        ),
        missing(
            "/v1/volumes?project=acme",
            json!({"name": "v-x", "size_gib": 1, "source": {"kind": "image", "id": "no-image"}}),
            "no-image",
        ),
        missing(
            "/v1/volumes?project=acme",
            json!({"name": "v-x", "size_gib": 1,
                   "source": {"kind": "snapshot", "id": "00000000-0000-0000-0000-000000000001"}}),
            "00000000-0000-0000-0000-000000000001",
        ),
        missing(&attachments, json!({"volume": "no-volume"}), "no-volume"),
        missing(
            "/v1/enrollment-tokens",
            json!({"kind": "storage", "rack": "no-rack"}),
            "no-rack",
        ),
    ]);
    // Bad query strings.
    for (path, mention) in [
        (
            "/v1/usage?start=2025-01-02T00:00:00Z&end=2025-01-01T00:00:00Z",
            "start",
        ),
        (
            "/v1/usage?start=2025-01-01T00:00:00Z&end=2025-01-01T00:00:00Z",
            "start",
        ),
        ("/v1/usage", "start"),
        ("/v1/usage?start=yesterday", "start"),
        ("/v1/usage?start=2025-01-01T00:00:00Z&bogus=1", "bogus"),
        ("/v1/audit?limit=0", "limit"),
        ("/v1/audit?limit=1001", "limit"),
        ("/v1/audit?limit=-1", "limit"),
        ("/v1/audit?limit=many", "limit"),
        ("/v1/audit?since=last-week", "since"),
        ("/v1/instances?bogus=1", "bogus"),
        ("/v1/tokens?user=alice&bogus=1", "bogus"),
        ("/v1/instances?project=acme&project=acme", "project"),
    ] {
        cases.push((
            "GET",
            path.to_string(),
            None,
            400,
            "invalid_request",
            vec![mention],
        ));
    }

    // A value the server accepts is stored as given: quota limits are u64
    // on the wire, so one it cannot store must be refused, not clamped.
    for field in ["instances", "ram_mib", "volume_gib"] {
        let big = json!({ field: u64::MAX });
        let r = send(&w, "PUT", "/v1/projects/acme/quota", Some(&big)).await;
        let stored = send(&w, "GET", "/v1/projects/acme/quota", None).await;
        let accepted_intact = r.status == 200 && stored.body["limits"][field] == json!(u64::MAX);
        let refused = error_problem(&r, 400, "invalid_request", &[field]).is_none();
        if !(accepted_intact || refused) {
            failures_early.push(format!(
                "PUT /v1/projects/acme/quota {big}: got {} and then reads back {}",
                r.status, stored.body["limits"][field]
            ));
        }
    }
    let quota = || async { send(&w, "GET", "/v1/projects/acme/quota", None).await.body };
    let quota_before = quota().await;
    let mut failures = failures_early;
    let mut last = w.fingerprint().await;
    for (method, path, body, status, code, mentions) in &cases {
        let r = send(&w, method, path, body.as_ref()).await;
        let what = format!(
            "{method} {} {}",
            excerpt(path),
            body.as_ref()
                .map(|b| excerpt(&b.to_string()))
                .unwrap_or_default()
        );
        if let Some(p) = error_problem(&r, *status, code, mentions) {
            failures.push(format!("{what}: {p}"));
        }
        if method != &"GET" {
            let now = w.fingerprint().await;
            if let Some(d) = changed(&last, &now) {
                failures.push(format!("{what}: {d}"));
            }
            last = now;
        }
    }
    assert!(cases.len() > 150, "{}", cases.len());
    report(failures, "invalid values");
    assert_eq!(quota().await, quota_before, "quota usage changed");
}

async fn unknown_routes_are_404_and_wrong_methods_405(backend: Backend) {
    let w = world(backend).await;
    let vm = w.vm;
    let mut failures = Vec::new();
    for (method, path) in [
        ("GET", "/nope".to_string()),
        ("GET", "/v1".to_string()),
        ("GET", "/v1/".to_string()),
        ("GET", "/v2/instances".to_string()),
        ("GET", "/v1/nope".to_string()),
        ("POST", "/v1/nope".to_string()),
        ("GET", "/v1/instances/".to_string()),
        ("GET", format!("/v1/instances/{vm}/nope")),
        ("POST", format!("/v1/instances/{vm}/pause")),
        ("GET", format!("/v1/instances/{vm}/attachments/x/y")),
        ("GET", "/V1/INSTANCES".to_string()),
        ("GET", "/internal/v1/nope".to_string()),
    ] {
        let r = send(&w, method, &path, None).await;
        if let Some(p) = error_problem(&r, 404, "not_found", &[]) {
            failures.push(format!("{method} {path}: {p}"));
        }
    }
    for (method, path) in [
        ("PUT", "/v1/instances".to_string()),
        ("DELETE", "/v1/instances".to_string()),
        ("PATCH", "/v1/flavors".to_string()),
        ("DELETE", "/v1/flavors".to_string()),
        ("PATCH", "/v1/projects/acme".to_string()),
        ("POST", "/v1/projects/acme".to_string()),
        ("POST", format!("/v1/instances/{vm}")),
        ("PUT", format!("/v1/instances/{vm}")),
        ("GET", format!("/v1/instances/{vm}/start")),
        ("DELETE", format!("/v1/instances/{vm}/stop")),
        ("GET", format!("/v1/instances/{vm}/attachments")),
        ("POST", format!("/v1/instances/{vm}/console")),
        ("GET", "/v1/enrollment-tokens".to_string()),
        ("POST", "/v1/hosts".to_string()),
        ("POST", "/v1/whoami".to_string()),
        ("DELETE", "/v1/usage".to_string()),
        ("POST", "/v1/audit".to_string()),
        ("PUT", "/v1/health".to_string()),
        ("POST", "/v1/openapi.json".to_string()),
        ("POST", "/metrics".to_string()),
    ] {
        let r = send(&w, method, &path, None).await;
        if r.status != 405 || !is_error_body(&r) {
            failures.push(format!(
                "{method} {path}: got {} {}, want 405 with an error body",
                r.status,
                excerpt(&r.raw)
            ));
        }
    }
    report(failures, "routes and methods");
}

/// PostgreSQL refuses NUL in text (SQLite stores it): a NUL in any string a
/// caller sends must be a 4xx (or accepted), never a database error.
async fn nul_characters_are_refused_not_500(backend: Backend) {
    let w = world(backend).await;
    let nul = "a\u{0}b";
    let vm = |patch: Value| {
        with(
            &json!({"name": "vm-nul", "flavor": "small", "image": "tiny", "networks": ["net"]}),
            patch,
        )
    };
    let mut cases: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/v1/projects".into(),
            Some(json!({"name": "p-nul", "description": nul})),
        ),
        ("POST", "/v1/users".into(), Some(json!({"name": nul}))),
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"description": nul})),
        ),
        (
            "POST",
            "/v1/racks".into(),
            Some(json!({"name": "r-nul", "location": nul})),
        ),
        (
            "POST",
            "/v1/enrollment-tokens".into(),
            Some(json!({"kind": "hypervisor", "rack": nul})),
        ),
        (
            "POST",
            "/v1/keypairs?project=acme".into(),
            Some(json!({"name": "k-nul", "public_key": format!("{} x{nul}", support::TEST_KEY)})),
        ),
        (
            "POST",
            "/v1/instances?project=acme".into(),
            Some(vm(json!({"user_data": nul}))),
        ),
        (
            "POST",
            "/v1/instances?project=acme".into(),
            Some(vm(json!({"flavor": nul}))),
        ),
        (
            "POST",
            "/v1/instances?project=acme".into(),
            Some(vm(json!({"image": nul}))),
        ),
        (
            "POST",
            "/v1/instances?project=acme".into(),
            Some(vm(json!({"networks": [nul]}))),
        ),
        (
            "POST",
            "/v1/instances?project=acme".into(),
            Some(vm(json!({"keypair": nul}))),
        ),
        (
            "POST",
            "/v1/instances?project=acme".into(),
            Some(vm(json!({"anti_affinity_group": nul}))),
        ),
        (
            "POST",
            "/v1/volumes?project=acme".into(),
            Some(json!({"name": "v-nul", "size_gib": 1, "source": {"kind": "image", "id": nul}})),
        ),
        (
            "POST",
            format!("/v1/instances/{}/attachments", w.vm),
            Some(json!({"volume": nul})),
        ),
    ];
    for path in [
        "/v1/projects/a%00b",
        "/v1/projects/a%00b/quota",
        "/v1/users/a%00b",
        "/v1/tokens?user=a%00b",
        "/v1/instances?project=a%00b",
        "/v1/networks?project=a%00b",
        "/v1/usage?start=2025-01-01T00:00:00Z&project=a%00b",
    ] {
        cases.push(("GET", path.into(), None));
    }
    cases.push(("DELETE", "/v1/projects/a%00b".into(), None));
    cases.push(("DELETE", "/v1/projects/acme/members/a%00b".into(), None));
    cases.push((
        "PUT",
        "/v1/projects/a%00b/members/alice".into(),
        Some(json!({"role": "reader"})),
    ));
    let mut failures = Vec::new();
    for (method, path, body) in &cases {
        let r = send(&w, method, path, body.as_ref()).await;
        let ok =
            (200..300).contains(&r.status) || ((400..500).contains(&r.status) && is_error_body(&r));
        if !ok {
            failures.push(format!(
                "{method} {path} {}: got {} {}",
                body.as_ref().map(|b| b.to_string()).unwrap_or_default(),
                r.status,
                excerpt(&r.raw)
            ));
        }
    }
    report(failures, "NUL characters");
}

// ---------------------------------------------------------------------------
// The fuzzer.

/// xorshift64*: deterministic, seeded, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Stand-ins replaced in the serialized text by numbers JSON can carry but
/// `serde_json::Value` cannot build.
const BIG_NUMBERS: &[(&str, &str)] = &[
    ("__2P64__", "18446744073709551616"),
    ("__1E400__", "1e400"),
    ("__NEG_BIG__", "-99999999999999999999999"),
    ("__MINUS_ZERO__", "-0"),
    ("__EXP__", "1E+2"),
];

fn weird_value(rng: &mut Rng) -> Value {
    const SIMPLE: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "-1",
        "1",
        "1.5",
        "1e300",
        "-1e300",
        "18446744073709551615",
        "-9223372036854775808",
        "4294967296",
        "65536",
        "\"\"",
        "\" \"",
        "\"ünïcødé 💥 名前\"",
        "\"\\u0000\"",
        "\"a\\u0000b\"",
        "\"\\u202eevil\"",
        "\"../../etc/passwd\"",
        "\"'; DROP TABLE projects; --\"",
        "\"%s%n%x\"",
        "\"10.0.0.0/8\"",
        "\"::/0\"",
        "\"255.255.255.255\"",
        "\"00000000-0000-0000-0000-000000000000\"",
        "\"small\"",
        "\"tiny\"",
        "\"net\"",
        "\"data\"",
        "\"acme\"",
        "\"-----BEGIN OPENSSH PRIVATE KEY-----\"",
        "[]",
        "{}",
        "[1, \"a\", null]",
        "[[[[[[[[[[]]]]]]]]]]",
        "{\"kind\": \"image\", \"id\": \"tiny\"}",
        "{\"start\": \"10.0.0.1\", \"end\": \"10.0.0.0\"}",
        "\"__2P64__\"",
        "\"__1E400__\"",
        "\"__NEG_BIG__\"",
        "\"__MINUS_ZERO__\"",
        "\"__EXP__\"",
    ];
    match rng.below(SIMPLE.len() + 4) {
        i if i < SIMPLE.len() => serde_json::from_str(SIMPLE[i]).expect("pool entry is JSON"),
        i if i == SIMPLE.len() => json!("x".repeat(100_000)),
        i if i == SIMPLE.len() + 1 => json!(uuid::Uuid::new_v4().to_string()),
        i if i == SIMPLE.len() + 2 => {
            json!({"kind": "snapshot", "id": uuid::Uuid::new_v4().to_string()})
        }
        _ => json!(vec!["net"; 20]),
    }
}

/// Paths to every value inside `v` (object keys and array indices).
fn paths(v: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                prefix.push(json!(k));
                out.push(prefix.clone());
                paths(x, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                prefix.push(json!(i));
                out.push(prefix.clone());
                paths(x, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match p {
            Value::String(k) => cur.get_mut(k.as_str())?,
            Value::Number(i) => cur.get_mut(i.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Applies one value-level mutation.
fn mutate_value(rng: &mut Rng, v: &mut Value) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    match rng.below(6) {
        // Replace some value.
        0 | 1 if !all.is_empty() => {
            let p = &all[rng.below(all.len())];
            let w = weird_value(rng);
            if let Some(slot) = at(v, p) {
                *slot = w;
            }
        }
        // Remove some field or element.
        2 if !all.is_empty() => {
            let p = all[rng.below(all.len())].clone();
            let (last, parent) = p.split_last().expect("non-empty path");
            if let Some(parent) = at(v, parent) {
                match (parent, last) {
                    (Value::Object(o), Value::String(k)) => {
                        o.remove(k);
                    }
                    (Value::Array(a), Value::Number(i)) => {
                        let i = i.as_u64().unwrap_or(0) as usize;
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                    _ => {}
                }
            }
        }
        // Add an unknown field.
        3 => {
            if let Value::Object(o) = v {
                o.insert(format!("extra{}", rng.below(3)), weird_value(rng));
            }
        }
        // Swap the values of two fields.
        4 if all.len() >= 2 => {
            let a = all[rng.below(all.len())].clone();
            let b = all[rng.below(all.len())].clone();
            let va = at(v, &a).map(|x| x.clone());
            let vb = at(v, &b).map(|x| x.clone());
            if let (Some(va), Some(vb)) = (va, vb) {
                if let Some(s) = at(v, &a) {
                    *s = vb;
                }
                if let Some(s) = at(v, &b) {
                    *s = va;
                }
            }
        }
        // Replace the whole body.
        _ => *v = weird_value(rng),
    }
}

/// A mutated copy of `valid`, as bytes.
fn mutate(rng: &mut Rng, valid: &Value) -> Vec<u8> {
    let mut v = valid.clone();
    for _ in 0..1 + rng.below(3) {
        mutate_value(rng, &mut v);
    }
    let mut text = serde_json::to_string(&v).expect("JSON");
    for (marker, number) in BIG_NUMBERS {
        text = text.replace(&format!("\"{marker}\""), number);
    }
    let mut bytes = text.into_bytes();
    match rng.below(8) {
        // Truncate anywhere (possibly inside a UTF-8 sequence).
        0 => {
            let at = rng.below(bytes.len() + 1);
            bytes.truncate(at);
        }
        // Insert a random byte anywhere.
        1 => {
            let at = rng.below(bytes.len() + 1);
            bytes.insert(at, rng.next() as u8);
        }
        // Wrap in deep nesting.
        2 => {
            let depth = 1 + rng.below(300);
            let mut b = "[".repeat(depth).into_bytes();
            b.extend_from_slice(&bytes);
            b.extend_from_slice("]".repeat(depth).as_bytes());
            bytes = b;
        }
        _ => {}
    }
    bytes
}

async fn fuzzed_bodies_never_get_a_500(backend: Backend) {
    let w = world(backend).await;
    let endpoints = body_endpoints(&w);
    let mut rng = Rng(0x5eed_5eed_1234_5678);
    let mut failures = BTreeSet::new();
    let mut statuses = std::collections::BTreeMap::new();
    let started = std::time::Instant::now();
    for e in &endpoints {
        for _ in 0..200 {
            let bytes = mutate(&mut rng, &e.valid);
            let r = send_raw(
                &w,
                e.method(),
                &e.path,
                Some("application/json"),
                Some(bytes.clone()),
            )
            .await;
            *statuses.entry(r.status).or_insert(0u32) += 1;
            let fine = match r.status {
                200..=299 => r.status == 204 || r.status == 202 || r.body != Value::Null,
                400..=499 => is_error_body(&r),
                _ => false,
            };
            if !fine {
                failures.insert(format!(
                    "{} {}: got {} {} for body {}",
                    e.method(),
                    e.path,
                    r.status,
                    excerpt(&r.raw),
                    excerpt(&String::from_utf8_lossy(&bytes))
                ));
            }
        }
    }
    // Whatever was created meanwhile, the server still answers sanely.
    let health = send(&w, "GET", "/v1/health", None).await;
    assert_eq!(health.status, 200);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(300),
        "fuzzing took {elapsed:?}"
    );
    let failures: Vec<String> = failures.into_iter().collect();
    report(
        failures,
        &format!("fuzzed bodies (status counts {statuses:?})"),
    );
}

/// Every operation with a request body is in `body_endpoints`.
#[test]
fn the_body_table_covers_every_operation_with_a_body() {
    let doc: Value =
        serde_json::from_str(&stack_manager::openapi::document_json()).expect("openapi JSON");
    let mut with_body = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/v1/") {
            continue;
        }
        for method in ["post", "put", "patch", "delete"] {
            if item
                .get(method)
                .is_some_and(|op| op.get("requestBody").is_some())
            {
                with_body.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    // Random ids: nothing is requested here.
    let ops: BTreeSet<String> = body_endpoints_for(
        NetworkId::new(),
        InstanceId::new(),
        VolumeId::new(),
        HostId::new(),
    )
    .iter()
    .map(|e| e.op.to_string())
    .collect();
    assert_eq!(
        with_body, ops,
        "operations with a request body vs `body_endpoints`"
    );
}

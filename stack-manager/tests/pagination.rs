//! Paginated lists of identities and the catalogue (projects, users,
//! tokens, flavors, images, keypairs, anti-affinity groups, audit), on
//! SQLite and PostgreSQL:
//!
//! - walking a list page by page with a small `limit` gives every item
//!   exactly once, in the order of one big page, and its last page carries
//!   no `next_page_token`;
//! - `limit=0`, `limit=1001`, a garbage token and another list's token are
//!   400 `invalid_request`;
//! - a project-scoped list never shows another project's items, on any page.

#[macro_use]
mod support;

use std::collections::HashSet;
use std::time::Duration;

use api::resources::*;
use serde_json::Value;
use support::{send, Backend, TestCloud, TEST_KEY};

on_both_backends!(
    the_client_follows_every_page,
    pages_give_every_item_once_in_order,
    bad_limits_and_tokens_are_400,
    scoped_pages_never_show_another_project,
);

/// GETs `path` with `token`; the answer must be 200.
async fn get(cloud: &TestCloud, token: &str, path: &str) -> Value {
    let r = send(
        reqwest::Client::new()
            .get(format!("{}{path}", cloud.url))
            .bearer_auth(token),
        path,
    )
    .await;
    assert_eq!(r.status, 200, "{path}: {}", r.raw);
    r.body
}

fn with(path: &str, query: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{query}")
}

/// Every item of `path`, walked `limit` at a time, checking each page.
async fn walk(cloud: &TestCloud, token: &str, path: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10_000 {
        let mut query = format!("limit={limit}");
        if let Some(t) = &next {
            query.push_str(&format!("&page_token={t}"));
        }
        let page = get(cloud, token, &with(path, &query)).await;
        let got = page["items"].as_array().expect("items").clone();
        assert!(
            got.len() <= limit,
            "{path}: a page of {} > {limit}",
            got.len()
        );
        next = page["next_page_token"].as_str().map(str::to_string);
        // Only a full page may promise more.
        if next.is_some() {
            assert_eq!(got.len(), limit, "{path}: a short page with a token");
        }
        items.extend(got);
        if next.is_none() {
            return items;
        }
    }
    panic!("{path}: pages never end");
}

/// The whole list as one page, which must be the last.
async fn one_page(cloud: &TestCloud, token: &str, path: &str) -> Vec<Value> {
    let page = get(cloud, token, &with(path, "limit=1000")).await;
    assert!(
        page.get("next_page_token").is_none_or(Value::is_null),
        "{path}: one page of everything has a next page"
    );
    page["items"].as_array().expect("items").clone()
}

/// The world: projects `acme` and `beta` and ten more, users with roles in
/// some of them, tokens, flavors, public and private images, keypairs and
/// groups in both projects (one with members), and the audit of it all.
struct World {
    cloud: TestCloud,
    /// Member of `acme`, reader of `p-03` and `p-07`.
    alice: String,
    /// Member of `beta`.
    bob: String,
}

async fn world(backend: Backend) -> World {
    let cloud = TestCloud::start_quiet(backend).await;
    let admin = &cloud.admin;
    cloud.project("acme").await;
    cloud.project("beta").await;
    for i in 0..10 {
        cloud.project(&format!("p-{i:02}")).await;
    }
    for i in 0..9 {
        let name = format!("u-{i:02}");
        admin
            .user_create(&UserCreate {
                name: name.clone(),
                admin: false,
            })
            .await
            .expect("user");
        for p in 0..(i % 4) {
            admin
                .member_set(&format!("p-{p:02}"), &name, ProjectRole::Reader)
                .await
                .expect("member");
        }
    }
    let admin_client = admin.clone();
    let token = move |user: &'static str| {
        let admin = admin_client.clone();
        async move {
            admin
                .token_create(
                    Some(user),
                    &TokenCreate {
                        description: format!("for {user}"),
                        expires_in_secs: None,
                    },
                )
                .await
                .expect("token")
                .secret
        }
    };
    let alice_client = cloud.user("alice", "acme", ProjectRole::Member).await;
    let bob_client = cloud.user("bob", "beta", ProjectRole::Member).await;
    for p in ["p-03", "p-07"] {
        admin
            .member_set(p, "alice", ProjectRole::Reader)
            .await
            .expect("member");
    }
    let alice = token("alice").await;
    let bob = token("bob").await;
    for _ in 0..6 {
        token("u-01").await;
        token("admin").await;
    }
    for i in 0..9u32 {
        admin
            .flavor_create(&FlavorCreate {
                name: format!("f-{i}"),
                // Several flavors of one size: the order goes on to names.
                vcpus: 1 + i % 3,
                ram_mib: 1024,
                disk_gib: 10,
            })
            .await
            .expect("flavor");
    }
    let image = |name: String, visibility| ImageCreate {
        name,
        source: "/var/lib/strato/images/x.qcow2".into(),
        format: ImageFormat::Qcow2,
        sha256: "b".repeat(64),
        min_disk_gib: 1,
        visibility,
    };
    for i in 0..4 {
        admin
            .image_create(&image(format!("pub-{i}"), Visibility::Public))
            .await
            .expect("public image");
    }
    // A private image may share a public one's name.
    alice_client
        .image_create(&image("pub-1".into(), Visibility::Private))
        .await
        .expect("shadowing image");
    for (client, n) in [(&alice_client, 6), (&bob_client, 4)] {
        for i in 0..n {
            client
                .image_create(&image(format!("img-{i}"), Visibility::Private))
                .await
                .expect("private image");
            client
                .keypair_create(&KeypairCreate {
                    name: format!("key-{i}"),
                    public_key: TEST_KEY.into(),
                })
                .await
                .expect("keypair");
            client
                .group_create(&GroupCreate {
                    name: format!("g-{i}"),
                })
                .await
                .expect("group");
        }
    }
    // Members of groups come as extra joined rows: a page must still hold
    // `limit` groups, not `limit` rows.
    cloud.hypervisor("hv-1", 64, 1 << 17, None).await;
    cloud.hypervisor("hv-2", 64, 1 << 17, None).await;
    cloud.basics(&alice_client).await;
    for (vm, group) in [("vm-1", "g-1"), ("vm-2", "g-1"), ("vm-3", "g-3")] {
        alice_client
            .instance_create(&InstanceCreate {
                anti_affinity_group: Some(group.into()),
                ..TestCloud::vm(vm)
            })
            .await
            .expect("instance");
    }
    // Let the audit writer catch up (it flushes within 200 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    World { cloud, alice, bob }
}

/// Every list, as `(who, path)`; `who` is a token.
fn lists(w: &World) -> Vec<(&str, String)> {
    let admin = w.cloud.admin_token.as_str();
    let alice = w.alice.as_str();
    let bob = w.bob.as_str();
    vec![
        (admin, "/v1/projects".into()),
        (alice, "/v1/projects".into()),
        (admin, "/v1/users".into()),
        (alice, "/v1/users".into()),
        (admin, "/v1/tokens".into()),
        (admin, "/v1/tokens?user=u-01".into()),
        (alice, "/v1/tokens".into()),
        (admin, "/v1/flavors".into()),
        (alice, "/v1/flavors?project=acme".into()),
        (admin, "/v1/images".into()),
        (admin, "/v1/images?project=beta".into()),
        (alice, "/v1/images?project=acme".into()),
        (bob, "/v1/images".into()),
        (admin, "/v1/keypairs".into()),
        (alice, "/v1/keypairs?project=acme".into()),
        (bob, "/v1/keypairs".into()),
        (admin, "/v1/anti-affinity-groups".into()),
        (alice, "/v1/anti-affinity-groups?project=acme".into()),
        (bob, "/v1/anti-affinity-groups".into()),
        (admin, "/v1/audit".into()),
    ]
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect()
}

async fn pages_give_every_item_once_in_order(backend: Backend) {
    let w = world(backend).await;
    for (who, path) in lists(&w) {
        let all = one_page(&w.cloud, who, &path).await;
        assert!(!all.is_empty(), "{path}: nothing to page through");
        let unique: HashSet<String> = ids(&all).into_iter().collect();
        assert_eq!(unique.len(), all.len(), "{path}: an item twice");
        for limit in [1, 2, 5] {
            let walked = walk(&w.cloud, who, &path, limit).await;
            assert_eq!(
                ids(&walked),
                ids(&all),
                "{path}, {limit} at a time: not the items of one page, in its order"
            );
            assert_eq!(walked, all, "{path}, {limit} at a time: items differ");
        }
    }
    // The orders the lists promise.
    let admin = w.cloud.admin_token.as_str();
    let flavors = one_page(&w.cloud, admin, "/v1/flavors").await;
    let keys: Vec<(u64, u64, String)> = flavors
        .iter()
        .map(|f| {
            (
                f["vcpus"].as_u64().unwrap_or_default(),
                f["ram_mib"].as_u64().unwrap_or_default(),
                f["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "flavors come smallest first");
    let audit = one_page(&w.cloud, admin, "/v1/audit").await;
    // As times, not strings: a record at a whole second is written
    // without a fraction (`…:24Z` sorts after `…:24.179Z` as text).
    let times: Vec<chrono::DateTime<chrono::Utc>> = audit
        .iter()
        .filter_map(|r| r["at"].as_str()?.parse().ok())
        .collect();
    assert_eq!(times.len(), audit.len(), "every record has a time");
    let mut newest_first = times.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, newest_first, "audit records come newest first");
    let groups = one_page(
        &w.cloud,
        w.alice.as_str(),
        "/v1/anti-affinity-groups?project=acme",
    )
    .await;
    let members: Vec<usize> = groups
        .iter()
        .map(|g| g["members"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(members, vec![0, 2, 0, 1, 0, 0], "{groups:?}");
    // A non-admin sees only themselves, an admin everyone.
    let users = one_page(&w.cloud, w.alice.as_str(), "/v1/users").await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["name"], "alice");
    assert_eq!(users[0]["memberships"].as_array().map(Vec::len), Some(3));
}

async fn bad_limits_and_tokens_are_400(backend: Backend) {
    let w = world(backend).await;
    let flavor_token = get(&w.cloud, &w.cloud.admin_token, "/v1/flavors?limit=1").await
        ["next_page_token"]
        .as_str()
        .expect("a second page of flavors")
        .to_string();
    let project_token = get(&w.cloud, &w.cloud.admin_token, "/v1/projects?limit=1").await
        ["next_page_token"]
        .as_str()
        .expect("a second page of projects")
        .to_string();
    for (who, path) in lists(&w) {
        let foreign = if path.starts_with("/v1/flavors") {
            &project_token
        } else {
            &flavor_token
        };
        for query in [
            "limit=0".to_string(),
            "limit=1001".to_string(),
            "limit=-1".to_string(),
            "page_token=not-a-token".to_string(),
            "page_token=e30".to_string(),
            format!("page_token={foreign}"),
        ] {
            let target = with(&path, &query);
            let r = send(
                reqwest::Client::new()
                    .get(format!("{}{target}", w.cloud.url))
                    .bearer_auth(who),
                &target,
            )
            .await;
            assert_eq!(r.status, 400, "{target}: {}", r.raw);
            assert_eq!(r.body["error"], "invalid_request", "{target}: {}", r.raw);
            let field = query.split('=').next().unwrap_or_default();
            assert!(
                r.body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(field)),
                "{target}: the message names {field}: {}",
                r.raw
            );
        }
    }
}

async fn scoped_pages_never_show_another_project(backend: Backend) {
    let w = world(backend).await;
    let projects = w.cloud.admin.project_list().await.expect("projects");
    let id_of = |name: &str| {
        projects
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.id.to_string())
            .expect("project")
    };
    let (acme, beta) = (id_of("acme"), id_of("beta"));
    for (who, project, own) in [
        (w.alice.as_str(), "acme", &acme),
        (w.bob.as_str(), "beta", &beta),
        (w.cloud.admin_token.as_str(), "acme", &acme),
        (w.cloud.admin_token.as_str(), "beta", &beta),
    ] {
        for list in ["/v1/images", "/v1/keypairs", "/v1/anti-affinity-groups"] {
            let path = format!("{list}?project={project}");
            let mut seen = 0;
            for limit in [1, 3] {
                for item in walk(&w.cloud, who, &path, limit).await {
                    let owner = &item["project_id"];
                    // Public images belong to no project and show everywhere.
                    let public = list == "/v1/images" && owner.is_null();
                    assert!(
                        public || owner.as_str() == Some(own.as_str()),
                        "{path} as {project}'s caller shows {item}"
                    );
                    seen += 1;
                }
            }
            assert!(seen > 0, "{path}: nothing listed");
        }
    }
    // A stranger naming another project gets 404, on the first page and
    // with a token taken from a page they may see.
    let token = get(&w.cloud, &w.bob, "/v1/keypairs?limit=1").await["next_page_token"]
        .as_str()
        .expect("bob has several keypairs")
        .to_string();
    for path in [
        "/v1/keypairs?project=acme&limit=1".to_string(),
        format!("/v1/keypairs?project=acme&limit=1&page_token={token}"),
    ] {
        let r = send(
            reqwest::Client::new()
                .get(format!("{}{path}", w.cloud.url))
                .bearer_auth(&w.bob),
            &path,
        )
        .await;
        assert_eq!(r.status, 404, "{path}: {}", r.raw);
    }
    // A project's token does not open another project's list either: the
    // rows after it are still filtered by the project asked for.
    let acme_token = get(&w.cloud, &w.alice, "/v1/keypairs?project=acme&limit=1").await
        ["next_page_token"]
        .as_str()
        .expect("acme has several keypairs")
        .to_string();
    let page = get(
        &w.cloud,
        &w.bob,
        &format!("/v1/keypairs?limit=1000&page_token={acme_token}"),
    )
    .await;
    for item in page["items"].as_array().expect("items") {
        assert_eq!(item["project_id"].as_str(), Some(beta.as_str()), "{item}");
    }
}

/// Past the default page of 100, the client library (and so the CLI)
/// still returns every item: it follows `next_page_token` to the end.
async fn the_client_follows_every_page(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let names: Vec<String> = (0..130).map(|i| format!("p-{i:03}")).collect();
    let made: HashSet<String> = futures::future::join_all(names.iter().map(|n| cloud.project(n)))
        .await
        .into_iter()
        .map(|p| p.name)
        .collect();
    let listed = cloud.admin.project_list().await.expect("list");
    let names: HashSet<String> = listed.iter().map(|p| p.name.clone()).collect();
    assert_eq!(names.len(), listed.len(), "no project twice");
    assert!(made.is_subset(&names), "every project listed");
    // One page of the raw API holds only the default 100.
    let page = get(&cloud, &cloud.admin_token, "/v1/projects").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(100));
    assert!(page["next_page_token"].is_string());
}

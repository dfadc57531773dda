//! Pagination of the infrastructure lists: networks, subnets, volumes,
//! snapshots, racks and hosts. Walking a list page by page gives what one
//! big page gives, in the same order; bad limits and tokens are 400s; a
//! project-scoped list shows only the caller's project on every page; and
//! a volume page (attachments joined in) costs a fixed number of
//! statements whatever its size.
//!
//! The statement count is global to the process, so the scenarios of this
//! binary run one at a time (`SERIAL`) and share one subscriber.

mod support;

use std::sync::OnceLock;

use api::resources::*;
use api::Client;
use serde_json::Value;
use stack_manager::store::statements::StatementCounter;
use support::{eventually, Backend, TestCloud};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

on_both_backends!(
    lists_walk_in_pages_and_keep_projects_apart,
    bad_limits_and_tokens_are_refused,
    a_volume_page_costs_the_same_whatever_its_size,
);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The statement counter, installed once for the whole binary (with the
/// usual warnings on the test output).
fn counter() -> &'static StatementCounter {
    static COUNTER: OnceLock<StatementCounter> = OnceLock::new();
    COUNTER.get_or_init(|| {
        let counter = StatementCounter::new();
        let warnings = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(tracing_subscriber::EnvFilter::new("warn"));
        let subscriber = tracing_subscriber::registry()
            .with(counter.layer())
            .with(warnings);
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        counter
    })
}

async fn get(cloud: &TestCloud, token: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", cloud.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("get");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect()
}

fn with_param(path: &str, param: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{param}")
}

/// Every item of `path` walked `limit` at a time: checks that the pages
/// together give what one page of 1000 gives, in the same order, each item
/// once, and that only the last page has no `next_page_token`. Returns
/// the items.
async fn walk(cloud: &TestCloud, token: &str, path: &str, limit: u32) -> Vec<Value> {
    let (status, all) = get(cloud, token, &with_param(path, "limit=1000")).await;
    assert_eq!(status, 200, "{path}: {all}");
    assert!(all.get("next_page_token").is_none(), "{path}: {all}");
    let mut items = Vec::new();
    let mut token_param = String::new();
    let mut pages = 0;
    loop {
        let (status, page) = get(
            cloud,
            token,
            &with_param(path, &format!("limit={limit}{token_param}")),
        )
        .await;
        assert_eq!(status, 200, "{path}: {page}");
        let got = page["items"].as_array().expect("items").clone();
        assert!(got.len() <= limit as usize, "{path}: page too long");
        pages += 1;
        items.extend(got);
        match page.get("next_page_token").and_then(Value::as_str) {
            Some(t) => {
                assert_eq!(page["items"].as_array().map(Vec::len), Some(limit as usize));
                token_param = format!("&page_token={t}");
            }
            None => break,
        }
        assert!(pages < 1000, "{path}: the walk does not end");
    }
    let walked: Vec<String> = items
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(walked, ids(&all), "{path}: pages differ from one big page");
    let mut unique = walked.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), walked.len(), "{path}: an item came twice");
    items
}

fn token_of(c: &Client) -> String {
    c.transport.token().expect("a token").to_string()
}

/// A tenant with networks (one holding several subnets), available
/// volumes and snapshots; returns its client.
async fn tenant(cloud: &TestCloud, project: &str, user: &str, n: usize) -> Client {
    cloud.project(project).await;
    cloud
        .admin
        .quota_update(
            project,
            &QuotaUpdate {
                volumes: Some(100),
                volume_gib: Some(1000),
                ..Default::default()
            },
        )
        .await
        .expect("quota");
    let c = cloud.user(user, project, ProjectRole::Member).await;
    // Names out of creation order, so that the name order shows.
    for i in (0..n).rev() {
        TestCloud::network(&c, &format!("net-{i}"), &format!("10.{i}.0.0/24")).await;
    }
    let first = c.network_list().await.expect("networks")[0].id;
    for i in 1..n {
        c.subnet_create(
            first,
            &SubnetCreate {
                name: format!("extra-{i}"),
                cidr: format!("10.100.{i}.0/24").parse().expect("cidr"),
                gateway: None,
                pools: vec![],
                reserved: vec![],
                dns_servers: vec![],
            },
        )
        .await
        .expect("subnet");
    }
    let mut vols = Vec::new();
    for i in 0..n {
        vols.push(
            c.volume_create(&VolumeCreate {
                name: format!("vol-{i}"),
                size_gib: 1,
                source: VolumeSource::Empty,
                replicas: None,
            })
            .await
            .expect("volume"),
        );
    }
    eventually(30, || async {
        let all = c.volume_list().await.ok()?;
        all.iter()
            .all(|v| v.status == VolumeStatus::Available)
            .then_some(())
    })
    .await;
    for (i, v) in vols.iter().enumerate().take(n - 1) {
        c.snapshot_create(
            v.id,
            &SnapshotCreate {
                name: format!("snap-{i}"),
            },
        )
        .await
        .expect("snapshot");
    }
    c
}

async fn lists_walk_in_pages_and_keep_projects_apart(backend: Backend) {
    let _serial = SERIAL.lock().await;
    counter();
    let cloud = TestCloud::start(backend).await;
    cloud.storage("st-1", 1000).await;
    for i in (0..5).rev() {
        cloud
            .admin
            .rack_create(&RackCreate {
                name: format!("rack-{i}"),
                location: String::new(),
            })
            .await
            .expect("rack");
    }
    for i in 0..4 {
        cloud
            .hypervisor(&format!("hv-{i}"), 8, 16_384, Some("rack-1"))
            .await;
    }
    let acme = tenant(&cloud, "acme", "alice", 7).await;
    let other = tenant(&cloud, "other", "bob", 3).await;
    let acme_id = cloud.admin.project_get("acme").await.expect("acme").id;
    let alice = token_of(&acme);
    let net = acme.network_list().await.expect("networks")[0].id;

    // Tenants' lists: every page holds only the caller's own project.
    for path in ["/v1/networks", "/v1/volumes", "/v1/snapshots"] {
        for limit in [1, 2, 3] {
            let items = walk(&cloud, &alice, path, limit).await;
            assert!(items.len() >= 6, "{path}: {} items", items.len());
            for i in &items {
                assert_eq!(
                    i["project_id"].as_str(),
                    Some(acme_id.to_string().as_str()),
                    "{path}: another project's item: {i}"
                );
            }
        }
        // Named explicitly, the project is the same.
        let named = walk(&cloud, &alice, &format!("{path}?project=acme"), 2).await;
        assert!(named.len() >= 6);
    }
    let subnets = walk(&cloud, &alice, &format!("/v1/networks/{net}/subnets"), 2).await;
    assert_eq!(subnets.len(), 7);
    // Networks come by name.
    let names: Vec<String> = walk(&cloud, &alice, "/v1/networks", 2)
        .await
        .iter()
        .map(|n| n["name"].as_str().expect("name").to_string())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    // Another tenant cannot page through acme's subnets either.
    let (status, _) = get(
        &cloud,
        &token_of(&other),
        &format!("/v1/networks/{net}/subnets?limit=1"),
    )
    .await;
    assert_eq!(status, 404);

    // The admin sees every project, walked in pages just the same.
    let admin = cloud.admin_token.clone();
    for (path, at_least) in [
        ("/v1/networks", 10),
        ("/v1/volumes", 10),
        ("/v1/snapshots", 8),
        ("/v1/racks", 5),
        ("/v1/hosts", 5),
    ] {
        for limit in [1, 2, 4] {
            let items = walk(&cloud, &admin, path, limit).await;
            assert!(items.len() >= at_least, "{path}: {} items", items.len());
        }
    }
    let racks = walk(&cloud, &admin, "/v1/racks", 2).await;
    let rack_names: Vec<&str> = racks.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        rack_names,
        ["rack-0", "rack-1", "rack-2", "rack-3", "rack-4"]
    );
    assert_eq!(racks[1]["host_count"].as_u64(), Some(4));
    // The CLI's client follows the pages too.
    assert_eq!(cloud.admin.host_list().await.expect("hosts").len(), 5);
    assert_eq!(acme.volume_list().await.expect("volumes").len(), 7);
}

async fn bad_limits_and_tokens_are_refused(backend: Backend) {
    let _serial = SERIAL.lock().await;
    counter();
    let cloud = TestCloud::start(backend).await;
    cloud.storage("st-1", 1000).await;
    for i in 0..3 {
        cloud
            .admin
            .rack_create(&RackCreate {
                name: format!("rack-{i}"),
                location: String::new(),
            })
            .await
            .expect("rack");
        cloud.hypervisor(&format!("hv-{i}"), 8, 16_384, None).await;
    }
    let c = tenant(&cloud, "acme", "alice", 3).await;
    let alice = token_of(&c);
    let admin = cloud.admin_token.clone();
    let net = c.network_list().await.expect("networks")[0].id;
    let lists = [
        (alice.clone(), "/v1/networks".to_string()),
        (alice.clone(), format!("/v1/networks/{net}/subnets")),
        (alice.clone(), "/v1/volumes".to_string()),
        (alice.clone(), "/v1/snapshots".to_string()),
        (admin.clone(), "/v1/racks".to_string()),
        (admin.clone(), "/v1/hosts".to_string()),
    ];
    // A genuine token of each list, to offer to the others.
    let mut tokens = Vec::new();
    for (who, path) in &lists {
        let (status, page) = get(&cloud, who, &with_param(path, "limit=1")).await;
        assert_eq!(status, 200, "{path}: {page}");
        let t = page["next_page_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: a second page"))
            .to_string();
        tokens.push(t);
    }
    for (i, (who, path)) in lists.iter().enumerate() {
        let foreign = &tokens[(i + 1) % tokens.len()];
        for bad in [
            "limit=0".to_string(),
            "limit=1001".to_string(),
            "page_token=garbage".to_string(),
            "page_token=%25%25%25".to_string(),
            format!("page_token={foreign}"),
        ] {
            let (status, body) = get(&cloud, who, &with_param(path, &bad)).await;
            assert_eq!(status, 400, "{path}?{bad}: {body}");
            assert_eq!(body["error"], "invalid_request", "{path}?{bad}: {body}");
            assert!(body["message"].is_string(), "{body}");
        }
        // Its own token is fine; so are the bounds.
        let own = &tokens[i];
        for good in [
            format!("limit=1&page_token={own}"),
            "limit=1000".to_string(),
            "limit=1".to_string(),
        ] {
            let (status, body) = get(&cloud, who, &with_param(path, &good)).await;
            assert_eq!(status, 200, "{path}?{good}: {body}");
        }
    }
    // A token of the instances list is not one of the volumes list's.
    cloud.basics(&c).await;
    cloud.quota_for("acme", 5).await;
    for i in 0..2 {
        c.instance_create(&TestCloud::vm(&format!("vm-{i}")))
            .await
            .expect("instance");
    }
    let (status, page) = get(&cloud, &alice, "/v1/instances?limit=1").await;
    assert_eq!(status, 200, "{page}");
    let instances_token = page["next_page_token"].as_str().expect("more instances");
    let (status, _) = get(
        &cloud,
        &alice,
        &format!("/v1/volumes?page_token={instances_token}"),
    )
    .await;
    assert_eq!(status, 400);
    // Admin lists stay admin-only whatever the paging.
    for path in ["/v1/racks?limit=0", "/v1/hosts?limit=5"] {
        let (status, _) = get(&cloud, &alice, path).await;
        assert_eq!(status, 403, "{path}");
    }
}

async fn a_volume_page_costs_the_same_whatever_its_size(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let counter = counter();
    let cloud = TestCloud::start_quiet(backend).await;
    cloud.hypervisor("hv-1", 64, 1 << 20, None).await;
    cloud.storage("st-1", 1000).await;
    cloud.project("acme").await;
    cloud.quota_for("acme", 10).await;
    cloud
        .admin
        .quota_update(
            "acme",
            &QuotaUpdate {
                volumes: Some(100),
                volume_gib: Some(1000),
                ..Default::default()
            },
        )
        .await
        .expect("quota");
    let c = cloud.user("alice", "acme", ProjectRole::Member).await;
    cloud.basics(&c).await;
    let mut vms = Vec::new();
    for i in 0..3 {
        vms.push(
            c.instance_create(&TestCloud::vm(&format!("vm-{i}")))
                .await
                .expect("instance"),
        );
    }
    for i in 0..40 {
        c.volume_create(&VolumeCreate {
            name: format!("vol-{i}"),
            size_gib: 1,
            source: VolumeSource::Empty,
            replicas: None,
        })
        .await
        .expect("volume");
    }
    eventually(60, || async {
        let all = c.volume_list().await.ok()?;
        (all.len() == 40 && all.iter().all(|v| v.status == VolumeStatus::Available)).then_some(())
    })
    .await;
    // 16, 16 and 8 volumes: every instance holds as many as it may.
    for i in 0..40 {
        c.attachment_create(vms[i / 16].id, &format!("vol-{i}"))
            .await
            .expect("attach");
    }

    // Let the reconcilers converge (the storage node opens its ACLs, the
    // host logs in) so that nothing runs behind the measurement's back.
    eventually(60, || async {
        let all = c.volume_list().await.ok()?;
        let vms = c.instance_list().await.ok()?;
        (all.iter().all(|v| v.status == VolumeStatus::InUse)
            && vms.iter().all(|i| i.status == InstanceStatus::Running))
        .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let admin = cloud.admin_token.clone();
    // The first request also resolves the token (cached for a few seconds).
    get(&cloud, &admin, "/v1/volumes?project=acme&limit=1").await;
    // The least of a few tries: a stray background statement (a heartbeat
    // landing meanwhile) must not make a page look dearer than it is.
    let cost = |limit: u32| {
        let cloud = &cloud;
        let admin = &admin;
        async move {
            let mut least = u64::MAX;
            let mut last = Value::Null;
            for _ in 0..3 {
                let before = counter.get();
                let (status, page) = get(
                    cloud,
                    admin,
                    &format!("/v1/volumes?project=acme&limit={limit}"),
                )
                .await;
                least = least.min(counter.get() - before);
                assert_eq!(status, 200, "{page}");
                last = page;
            }
            (least, last)
        }
    };
    let (small_cost, small) = cost(5).await;
    assert_eq!(small["items"].as_array().map(Vec::len), Some(5));
    let (large_cost, large) = cost(1000).await;
    let items = large["items"].as_array().expect("items");
    assert_eq!(items.len(), 40);
    assert!(
        items
            .iter()
            .all(|v| v["attachment"]["instance_id"].is_string()),
        "every volume listed with its attachment"
    );
    println!(
        "{backend:?}: volume list page of 5 costs {small_cost} statements, of 40 {large_cost}"
    );
    assert_eq!(
        small_cost, large_cost,
        "a page's cost does not grow with its size"
    );
    assert!(large_cost <= 3, "{large_cost} statements for one page");
}

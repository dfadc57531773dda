//! What a list page and a reconciler pass cost in SQL statements, counted
//! as sqlx executes them (`store::statements`): a fixed number whatever
//! the size of the page or of the host. One test function in its own
//! binary, so that no other test's statements are counted.

mod support;

use std::time::Duration;

use api::resources::*;
use stack_manager::store::statements::StatementCounter;
use support::{eventually, Backend, TestCloud};
use tracing_subscriber::layer::SubscriberExt;

/// Statements one `GET` costs.
async fn statements_of_get(
    cloud: &TestCloud,
    counter: &StatementCounter,
    path: &str,
) -> (u64, serde_json::Value) {
    let before = counter.get();
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await
        .expect("get");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let body = resp.json().await.expect("json");
    (counter.get() - before, body)
}

async fn fixed_costs(backend: Backend, counter: &StatementCounter) {
    let cloud = TestCloud::start_counted(backend).await;
    let host = cloud.hypervisor("hv-1", 256, 1 << 20, None).await;
    cloud.project("acme").await;
    cloud.quota_for("acme", 100).await;
    let c = cloud.user("alice", "acme", ProjectRole::Member).await;
    cloud.basics(&c).await;
    let mut made = Vec::new();
    for i in 0..40 {
        made.push(
            c.instance_create(&TestCloud::vm(&format!("vm-{i}")))
                .await
                .expect("create"),
        );
    }
    eventually(60, || async {
        (cloud.fleet.instance_count() == 40).then_some(())
    })
    .await;
    // Let the reconciler record its last answers.
    eventually(60, || async {
        let all = c.instance_list().await.ok()?;
        all.iter()
            .all(|i| i.status == InstanceStatus::Running)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The first request also resolves the token (cached for a few seconds).
    statements_of_get(&cloud, counter, "/v1/instances?project=acme&limit=1").await;
    let (small, page) =
        statements_of_get(&cloud, counter, "/v1/instances?project=acme&limit=5").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(5));
    let (large, page) =
        statements_of_get(&cloud, counter, "/v1/instances?project=acme&limit=1000").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(40));
    assert!(
        page["items"][0]["nics"]
            .as_array()
            .is_some_and(|n| n.len() == 1),
        "{}",
        page["items"][0]
    );
    println!("{backend:?}: instance list page of 5 costs {small} statements, of 40 {large}");
    assert_eq!(small, large, "a page's cost does not grow with its size");
    assert!(large <= 3, "{large} statements for one page");

    // What an agent fetches and reports: specs with their NICs in a fixed
    // number of statements, and a converged heartbeat in two (the
    // authenticated update, and the rows its report is compared with).
    let before = counter.get();
    let specs = cloud.state.store.instance_specs(host).await.expect("specs");
    let spec_cost = counter.get() - before;
    assert_eq!(specs.len(), 40);
    assert!(specs.iter().all(|s| s.nics.len() == 1));
    let before = counter.get();
    cloud
        .fleet
        .heartbeat(&cloud.internal_url, "hv-1")
        .await
        .expect("heartbeat");
    let heartbeat_cost = counter.get() - before;
    println!("{backend:?}: the specs of 40 instances cost {spec_cost} statements, a converged heartbeat {heartbeat_cost}");
    assert!(spec_cost <= 3, "{spec_cost} statements for a host's specs");
    assert!(
        heartbeat_cost <= 2,
        "{heartbeat_cost} statements for a heartbeat"
    );

    // A pass where every instance is pushed again, at two sizes.
    let pass = |label: &'static str| {
        let cloud = &cloud;
        async move {
            sqlx::query("UPDATE instances SET generation = generation + 1 WHERE host_id = $1 AND name LIKE $2")
                .bind(host.to_string())
                .bind(label)
                .execute(&cloud.state.db.pool)
                .await
                .expect("bump");
            let before = counter.get();
            let converged = stack_manager::reconciler::run_pass(&cloud.state, host)
                .await
                .expect("pass");
            assert!(converged);
            counter.get() - before
        }
    };
    let few = pass("vm-1_").await; // vm-10 … vm-19
    let all = pass("vm-%").await;
    println!("{backend:?}: a reconciler pass pushing 10 instances costs {few} statements, pushing 40 {all}");
    assert_eq!(
        few, all,
        "a pass's cost does not grow with the instances it pushes"
    );
    // Every push was recorded: nothing is behind any more.
    let behind: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) AS n FROM instances WHERE applied_generation < generation")
            .fetch_one(&cloud.state.db.pool)
            .await
            .expect("count"),
        "n",
    );
    assert_eq!(behind, 0);
    drop(made);
}

/// The identity and catalogue lists: a page of 5 costs what a page of 40
/// does, one statement (the caller's own project needs no lookup).
async fn catalogue_lists(backend: Backend, counter: &StatementCounter) {
    let cloud = TestCloud::start_counted(backend).await;
    let admin = &cloud.admin;
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGuEbkB5fiabq34MkliWiex1mZ7OFzxnZjfW/XWDNRTO t@s";
    for i in 0..40 {
        let name = format!("x-{i:02}");
        cloud.project(&name).await;
        admin
            .user_create(&UserCreate {
                name: name.clone(),
                admin: false,
            })
            .await
            .expect("user");
        admin
            .member_set(&name, &name, ProjectRole::Member)
            .await
            .expect("member");
        admin
            .token_create(
                None,
                &TokenCreate {
                    description: name.clone(),
                    expires_in_secs: None,
                },
            )
            .await
            .expect("token");
        admin
            .flavor_create(&FlavorCreate {
                name: name.clone(),
                vcpus: 1,
                ram_mib: 1024,
                disk_gib: 10,
            })
            .await
            .expect("flavor");
        admin
            .image_create(&ImageCreate {
                name: name.clone(),
                source: "/var/lib/strato/images/x.qcow2".into(),
                format: ImageFormat::Qcow2,
                sha256: "c".repeat(64),
                min_disk_gib: 1,
                visibility: Visibility::Public,
            })
            .await
            .expect("image");
        admin
            .keypair_create(&KeypairCreate {
                name: name.clone(),
                public_key: key.into(),
            })
            .await
            .expect("keypair");
        admin
            .group_create(&GroupCreate { name })
            .await
            .expect("group");
    }
    // Let the audit writer record the creates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for path in [
        "/v1/projects",
        "/v1/users",
        "/v1/tokens",
        "/v1/flavors",
        "/v1/images",
        "/v1/keypairs?project=admin",
        "/v1/anti-affinity-groups?project=admin",
        "/v1/audit",
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        // The first request may also resolve the token (cached a few seconds).
        statements_of_get(&cloud, counter, &format!("{path}{sep}limit=1")).await;
        let (small, page) =
            statements_of_get(&cloud, counter, &format!("{path}{sep}limit=5")).await;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(5), "{path}");
        let (large, page) =
            statements_of_get(&cloud, counter, &format!("{path}{sep}limit=40")).await;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(40), "{path}");
        println!("{backend:?}: {path} page of 5 costs {small} statements, of 40 {large}");
        assert_eq!(
            small, large,
            "{path}: a page's cost does not grow with its size"
        );
        assert_eq!(large, 1, "{path}: {large} statements for one page");
    }
}

#[test]
fn list_pages_and_reconciler_passes_cost_a_fixed_number_of_statements() {
    let counter = StatementCounter::new();
    let subscriber = tracing_subscriber::registry().with(counter.layer());
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        rt.block_on(fixed_costs(backend, &counter));
        rt.block_on(catalogue_lists(backend, &counter));
    }
}

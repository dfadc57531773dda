//! The background tasks an operator can read: `GET /v1/system/tasks` and
//! the `strato_task_*` series of `/metrics`.

mod support;

use api::resources::*;
use support::{eventually, send, Backend, TestCloud};

fn find<'a>(tasks: &'a [TaskStatus], name: &str) -> Option<&'a TaskStatus> {
    tasks.iter().find(|t| t.name == name)
}

async fn tasks_are_listed_and_count_their_runs(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let tasks = cloud.admin.system_tasks().await.expect("tasks");
    for name in [
        "audit-writer",
        "planner-statistics",
        "scheduler-refresh",
        "reconcilers",
    ] {
        let t = find(&tasks, name).unwrap_or_else(|| panic!("{name} not listed: {tasks:#?}"));
        assert!(!t.description.is_empty());
    }
    assert_eq!(
        find(&tasks, "scheduler-refresh").and_then(|t| t.period_secs),
        Some(5.0),
        "five heartbeats (10 s) or half the detection deadline (5 s)"
    );
    match backend {
        // The first round runs at start.
        Backend::Postgres => {
            assert_eq!(
                find(&tasks, "planner-statistics").and_then(|t| t.period_secs),
                Some(2.0)
            );
        }
        Backend::Sqlite => {
            let t = find(&tasks, "planner-statistics").expect("statistics");
            assert_eq!(t.period_secs, None);
            assert_eq!(t.runs, 0);
        }
    }
    let mut names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        "ordered by name"
    );

    // A host's reconciler starts with its first work (reconcilers start
    // lazily: an idle host costs nothing).
    let host = cloud.hypervisor("hv-1", 64, 1 << 18, None).await;
    let reconciler = format!("reconciler/{host}");
    cloud.project("acme").await;
    cloud.quota_for("acme", 4).await;
    let c = cloud.user("alice", "acme", ProjectRole::Member).await;
    cloud.basics(&c).await;
    c.instance_create(&TestCloud::vm("vm-1"))
        .await
        .expect("create");
    eventually(30, || async {
        (cloud.fleet.instance_count() == 1).then_some(())
    })
    .await;
    let first = eventually(30, || async {
        let tasks = cloud.admin.system_tasks().await.ok()?;
        find(&tasks, &reconciler)
            .filter(|t| t.runs >= 1 && t.state == TaskState::Idle)
            .cloned()
    })
    .await;
    assert_eq!(first.period_secs, Some(30.0));
    assert_eq!(first.errors, 0);
    assert_eq!(first.last_activation, Some(TaskActivation::Notify));
    assert!(first.last_started_at.is_some() && first.last_finished_at.is_some());
    assert!(first.last_duration_ms.is_some());
    assert_eq!(first.details["host"], serde_json::json!(host.to_string()));
    let starter = find(
        &cloud.admin.system_tasks().await.expect("tasks"),
        "reconcilers",
    )
    .cloned()
    .expect("reconcilers");
    assert!(starter.runs >= 1);
    assert_eq!(starter.details["started_total"].as_u64(), Some(1));

    // Another instance wakes it again.
    c.instance_create(&TestCloud::vm("vm-2"))
        .await
        .expect("create");
    eventually(30, || async {
        (cloud.fleet.instance_count() == 2).then_some(())
    })
    .await;
    eventually(30, || async {
        let tasks = cloud.admin.system_tasks().await.ok()?;
        find(&tasks, &reconciler)
            .filter(|t| t.runs > first.runs)
            .map(|_| ())
    })
    .await;
    // Every mutating call so far was audited through the writer.
    let audit = eventually(30, || async {
        let tasks = cloud.admin.system_tasks().await.ok()?;
        find(&tasks, "audit-writer")
            .filter(|t| t.runs >= 1 && t.details["written"].as_u64() > Some(0))
            .cloned()
    })
    .await;
    assert_eq!(audit.errors, 0);
    assert_eq!(audit.period_secs, None);

    // The same statuses, page by page.
    let all = cloud.admin.system_tasks().await.expect("tasks");
    let get = |path: String| {
        send(
            reqwest::Client::new()
                .get(format!("{}{path}", cloud.url))
                .bearer_auth(&cloud.admin_token),
            "/v1/system/tasks",
        )
    };
    let first_page = get("/v1/system/tasks?limit=2".into()).await;
    assert_eq!(first_page.status, 200, "{}", first_page.raw);
    assert_eq!(first_page.body["items"].as_array().map(Vec::len), Some(2));
    let token = first_page.body["next_page_token"]
        .as_str()
        .expect("a next page")
        .to_string();
    let second = get(format!("/v1/system/tasks?limit=1000&page_token={token}")).await;
    assert_eq!(second.status, 200, "{}", second.raw);
    let mut paged: Vec<String> = first_page.body["items"]
        .as_array()
        .into_iter()
        .chain(second.body["items"].as_array())
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    paged.dedup();
    assert_eq!(
        paged,
        all.iter().map(|t| t.name.clone()).collect::<Vec<_>>()
    );
    assert!(second.body.get("next_page_token").is_none());
    for bad in [
        "limit=0",
        "limit=1001",
        "page_token=nonsense",
        "colour=blue",
    ] {
        let r = get(format!("/v1/system/tasks?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.raw);
    }

    // The same counts in /metrics.
    let metrics = reqwest::get(format!("{}/metrics", cloud.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    for series in [
        "strato_task_runs_total",
        "strato_task_errors_total",
        "strato_task_last_duration_seconds",
        "strato_task_last_run_timestamp_seconds",
    ] {
        for task in ["audit-writer", reconciler.as_str()] {
            let line = format!("{series}{{task=\"{task}\"}}");
            assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
        }
    }
    assert!(metrics.contains("strato_task_errors_total{task=\"audit-writer\"} 0"));
}

async fn non_admins_get_403(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    cloud.project("acme").await;
    let c = cloud.user("alice", "acme", ProjectRole::Member).await;
    let e = c.system_tasks().await.expect_err("refused");
    assert_eq!(e.status(), Some(403));
    assert_eq!(e.code(), Some(api::ErrorCode::Forbidden));
    let anonymous = send(
        reqwest::Client::new().get(format!("{}/v1/system/tasks", cloud.url)),
        "/v1/system/tasks",
    )
    .await;
    assert_eq!(anonymous.status, 401);
}

on_both_backends!(tasks_are_listed_and_count_their_runs, non_admins_get_403);

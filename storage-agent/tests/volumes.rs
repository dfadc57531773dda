//! Volumes end to end through the real agent and real initiators:
//! discovery, CHAP and ACL refusals, QEMU's `iscsi://` driver moving an
//! image in and out byte for byte, durability of flushed and FUA writes
//! across `kill -9`, snapshots, clones, growth, images, and bad input.

mod support;

use std::time::Duration;

use api::ids::SnapshotId;
use api::internal::{ImageSpec, VolumeSourceSpec, VolumeSpec};
use api::resources::ImageFormat;
use support::*;

/// The initiator name QEMU's iSCSI driver uses when none is configured.
const QEMU_INITIATOR: &str = "iqn.2008-11.org.linux-kvm";
const STRANGER: &str = "iqn.2026-11.io.strato:stranger";

fn qemu_spec(size: u64) -> VolumeSpec {
    let mut spec = volume_spec(size);
    spec.allowed_initiators.push(QEMU_INITIATOR.into());
    spec
}

fn qemu_io(url: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(url);
    let out = run("qemu-io", &args, Duration::from_secs(60));
    let t = text(&out);
    assert!(out.status.success(), "qemu-io {cmds:?}: {t}");
    assert!(
        !t.contains("failed") && !t.contains("error"),
        "qemu-io {cmds:?}: {t}"
    );
    t
}

fn inq(node: &Node, iqn: &str, initiator: &str, secret: &str) -> std::process::Output {
    run(
        "iscsi-inq",
        &["-i", initiator, &node.url(iqn, Some((CHAP_USER, secret)))],
        Duration::from_secs(30),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_chap_and_acl_guard_each_volume() {
    let node = Node::start().await;
    let spec = volume_spec(8 << 20);
    node.realize(&spec).await;
    let other = volume_spec(8 << 20);
    let mut other = other;
    other.allowed_initiators = vec![STRANGER.into()];
    node.realize(&other).await;

    let portal = format!("iscsi://{}", node.portal);
    let ls = text(&run(
        "iscsi-ls",
        &["-i", INITIATOR, &portal],
        Duration::from_secs(30),
    ));
    assert!(
        ls.contains(&spec.iqn),
        "discovery lists the admitted volume: {ls}"
    );
    assert!(
        !ls.contains(&other.iqn),
        "discovery hides volumes the initiator may not use: {ls}"
    );

    let ok = inq(&node, &spec.iqn, INITIATOR, CHAP_SECRET);
    assert!(ok.status.success(), "right secret: {}", text(&ok));
    assert!(
        text(&ok).contains("STRATO"),
        "INQUIRY names the vendor: {}",
        text(&ok)
    );
    let wrong = inq(&node, &spec.iqn, INITIATOR, "not-the-right-secret");
    assert!(!wrong.status.success(), "a wrong CHAP secret is refused");
    let stranger = inq(&node, &spec.iqn, STRANGER, CHAP_SECRET);
    assert!(
        !stranger.status.success(),
        "an initiator outside the ACL is refused"
    );

    // Detach: the ACL empties and the former host is locked out, including
    // the session it has open (fencing), not only its next login.
    let mut session = std::process::Command::new("iscsi-perf")
        .args([
            "-i",
            INITIATOR,
            "-t",
            "60",
            "-x",
            "1",
            &node.url(&spec.iqn, Some((CHAP_USER, CHAP_SECRET))),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iscsi-perf");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        session.try_wait().expect("wait").is_none(),
        "the session is running"
    );
    let mut detached = spec.clone();
    detached.generation = 2;
    detached.allowed_initiators.clear();
    node.realize(&detached).await;
    let fenced = testkit::wait_for(
        "the live session to be cut",
        Duration::from_secs(20),
        || session.try_wait().expect("wait"),
    );
    assert!(!fenced.success(), "iscsi-perf lost its session: {fenced}");
    let after = inq(&node, &spec.iqn, INITIATOR, CHAP_SECRET);
    assert!(!after.status.success(), "a revoked initiator is refused");

    // Delete: the target is gone, and a late push of the old spec does not
    // bring it back.
    node.client().volume_delete(spec.id).await.expect("delete");
    assert!(!node.data_file(spec.id).exists(), "data removed");
    let late = node
        .client()
        .volume_put(&detached)
        .await
        .expect_err("stale spec");
    assert_eq!(late.status(), Some(409), "{late}");
    assert!(
        !node.data_file(spec.id).exists(),
        "the stale spec recreated the volume"
    );
    let ls = text(&run(
        "iscsi-ls",
        &["-i", STRANGER, &portal],
        Duration::from_secs(30),
    ));
    assert!(ls.contains(&other.iqn) && !ls.contains(&spec.iqn), "{ls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_round_trip_and_durability_across_kill_9() {
    let mut node = Node::start().await;
    let spec = qemu_spec(8 << 20);
    node.realize(&spec).await;
    let url = node.url(&spec.iqn, Some((CHAP_USER, CHAP_SECRET)));

    // qemu-img convert into the volume and back: byte-identical.
    let src = node.dir.path().join("src.raw");
    let data: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).expect("source image");
    let src_s = src.to_string_lossy().to_string();
    let into = run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", &src_s, &url],
        Duration::from_secs(120),
    );
    assert!(
        into.status.success(),
        "convert into the volume: {}",
        text(&into)
    );
    let back = node.dir.path().join("back.raw");
    let back_s = back.to_string_lossy().to_string();
    let out = run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &url, &back_s],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "convert out of the volume: {}",
        text(&out)
    );
    assert!(
        std::fs::read(&back).expect("back") == data,
        "the volume returned different bytes"
    );

    // Acknowledged writes survive a crash of the agent: one flushed with
    // SYNCHRONIZE CACHE, one written with FUA.
    qemu_io(&url, &["write -P 0x5a 1M 64k", "flush"]);
    qemu_io(&url, &["write -f -P 0xa5 2M 64k"]);
    node.kill_agent();
    node.start_agent();
    // The stack manager never heard of this volume (the test put it on the
    // agent directly), so the restarted agent parks it until the spec is
    // pushed again, as the stack manager's reconciler does after a restart.
    node.realize(&spec).await;
    let reread = testkit::wait_async("the target to serve again", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let out = run(
                "qemu-io",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "read -P 0x5a 1M 64k",
                    "-c",
                    "read -P 0xa5 2M 64k",
                    &url,
                ],
                Duration::from_secs(30),
            );
            out.status.success().then(|| text(&out))
        }
    })
    .await;
    assert!(
        !reread.contains("Pattern verification failed"),
        "acknowledged writes were lost: {reread}"
    );
    assert_eq!(
        reread.matches("read 65536/65536 bytes").count(),
        2,
        "{reread}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_clones_growth_and_images() {
    let node = Node::start().await;
    let spec = qemu_spec(8 << 20);
    node.realize(&spec).await;
    let url = node.url(&spec.iqn, Some((CHAP_USER, CHAP_SECRET)));
    qemu_io(&url, &["write -P 0x11 0 1M", "flush"]);

    // A snapshot is the volume as it was when taken.
    let snap = SnapshotId::new();
    let mut v2 = spec.clone();
    v2.generation = 2;
    v2.snapshots = vec![snap];
    let o = node.realize(&v2).await;
    assert_eq!(o.snapshots, vec![snap]);
    qemu_io(&url, &["write -P 0x22 0 1M", "flush"]);

    let mut clone = qemu_spec(16 << 20);
    clone.source = VolumeSourceSpec::Snapshot {
        volume_id: spec.id,
        snapshot_id: snap,
    };
    node.realize(&clone).await;
    let clone_url = node.url(&clone.iqn, Some((CHAP_USER, CHAP_SECRET)));
    qemu_io(&clone_url, &["read -P 0x11 0 1M", "read -P 0 8M 8M"]);
    qemu_io(&url, &["read -P 0x22 0 1M"]);

    // Growth is seen by initiators.
    let mut v3 = v2.clone();
    v3.generation = 3;
    v3.size_bytes = 32 << 20;
    let o = node.realize(&v3).await;
    assert_eq!(o.size_bytes, 32 << 20);
    let cap = text(&run(
        "iscsi-readcapacity16",
        &["-s", "-i", INITIATOR, &url],
        Duration::from_secs(30),
    ));
    assert!(
        cap.trim() == (32u64 << 20).to_string(),
        "READ CAPACITY(16) after growth: {cap}"
    );
    qemu_io(&url, &["read -P 0x22 0 1M"]);

    // Shrinking is refused and changes nothing.
    let mut v4 = v3.clone();
    v4.generation = 4;
    v4.size_bytes = 8 << 20;
    let client = node.client();
    let o = client.volume_put(&v4).await.expect("put");
    assert!(o.reason.unwrap_or_default().contains("only grow"));
    assert_eq!(
        std::fs::metadata(node.data_file(spec.id))
            .expect("data")
            .len(),
        32 << 20
    );

    // Dropping the snapshot from the spec deletes it.
    let mut v5 = v3.clone();
    v5.generation = 5;
    v5.snapshots.clear();
    let o = node.realize(&v5).await;
    assert!(o.snapshots.is_empty());

    // A volume from an image holds the image's bytes.
    let cache = std::env::var_os("STRATO_IMAGE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/strato/images".into());
    let image = cache.join("tiny.raw");
    let bytes = std::fs::read(&image).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `bash scripts/guest-images.sh`",
            image.display()
        )
    });
    use sha2::Digest;
    let mut from_image = qemu_spec(((bytes.len() as u64 >> 20) + 1) << 20);
    from_image.source = VolumeSourceSpec::Image {
        image: ImageSpec {
            id: api::ids::ImageId::new(),
            source: image.to_string_lossy().into(),
            format: ImageFormat::Raw,
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        },
    };
    node.realize(&from_image).await;
    let on_disk = std::fs::read(node.data_file(from_image.id)).expect("data");
    assert!(on_disk[..bytes.len()] == bytes[..], "image bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_and_change_nothing() {
    let node = Node::start().await;
    let client = node.client();
    for (what, mutate) in [
        (
            "zero size",
            Box::new(|s: &mut VolumeSpec| s.size_bytes = 0) as Box<dyn Fn(&mut VolumeSpec)>,
        ),
        (
            "unaligned size",
            Box::new(|s: &mut VolumeSpec| s.size_bytes = 1000),
        ),
        (
            "bad iqn",
            Box::new(|s: &mut VolumeSpec| s.iqn = "vol 1".into()),
        ),
        (
            "short secret",
            Box::new(|s: &mut VolumeSpec| s.chap_secret = "short".into()),
        ),
        (
            "bad initiator",
            Box::new(|s: &mut VolumeSpec| s.allowed_initiators = vec!["x y".into()]),
        ),
    ] {
        let mut spec = volume_spec(8 << 20);
        mutate(&mut spec);
        let e = client.volume_put(&spec).await.expect_err(what);
        assert_eq!(e.status(), Some(400), "{what}: {e}");
        assert!(!node.data_file(spec.id).exists(), "{what} left a file");
    }
    // Path and body disagree; no credential; not JSON.
    let spec = volume_spec(8 << 20);
    let http = reqwest::Client::new();
    let wrong = http
        .put(format!(
            "{}/agent/v1/volumes/{}",
            node.agent_url,
            api::ids::VolumeId::new()
        ))
        .bearer_auth(identity_credential(&node))
        .json(&spec)
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), 400);
    let body: serde_json::Value = wrong.json().await.expect("json error body");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    let anon = http
        .put(format!("{}/agent/v1/volumes/{}", node.agent_url, spec.id))
        .json(&spec)
        .send()
        .await
        .expect("send");
    assert_eq!(anon.status(), 401);
    let garbage = http
        .put(format!("{}/agent/v1/volumes/{}", node.agent_url, spec.id))
        .bearer_auth(identity_credential(&node))
        .header("content-type", "application/json")
        .body("{\"id\": 5")
        .send()
        .await
        .expect("send");
    assert_eq!(garbage.status(), 400);
    assert!(client.volume_list().await.expect("list").is_empty());
}

fn identity_credential(node: &Node) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.state.join("identity.json")).expect("identity"))
            .expect("json");
    v["credential"].as_str().expect("credential").to_string()
}

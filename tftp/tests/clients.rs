//! Downloads with the clients Debian ships (tftp-hpa's `tftp`, `atftp`),
//! compared byte for byte.

mod common;

use common::{atftp_get, text, tftp_hpa_get, tftp_hpa_put, Fixture};

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_default_blocks() {
    let f = Fixture::new().await;
    // Not a multiple of 512, plus the exact-multiple case that needs a final
    // empty block.
    for (name, len) in [("pxelinux.0", 45_000usize), ("exact.bin", 512 * 40)] {
        let want = f.put(name, len);
        let local = f.out_path(name);
        let out = tftp_hpa_get(f.addr(), name, &local, "binary").await;
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(read(&local), want, "{name} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_leading_slash_and_subdir() {
    let f = Fixture::new().await;
    let want = f.put("boot/grub/grub.cfg", 3000);
    let local = f.out_path("grub.cfg");
    let out = tftp_hpa_get(f.addr(), "/boot/grub/grub.cfg", &local, "binary").await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&local), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_netascii() {
    let f = Fixture::new().await;
    let body = b"line one\nline two\n\nend\n".repeat(100);
    std::fs::write(f.root.path().join("cfg.txt"), &body).expect("write");
    let local = f.out_path("cfg.txt");
    let out = tftp_hpa_get(f.addr(), "cfg.txt", &local, "ascii").await;
    assert!(out.status.success(), "{}", text(&out));
    // The client converts netascii back to the local newline convention.
    assert_eq!(read(&local), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_blksize_1468() {
    let f = Fixture::new().await;
    let want = f.put("vmlinuz", 3 * 1024 * 1024 + 17);
    let local = f.out_path("vmlinuz");
    let out = atftp_get(f.addr(), "vmlinuz", &local, &["blksize 1468"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&local), want);
    let trace = text(&out);
    assert!(trace.contains("blksize"), "no OACK blksize seen:\n{trace}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_blksize_clamped_to_max() {
    let f = Fixture::new().await;
    let want = f.put("big-blocks", 200_000);
    let local = f.out_path("big-blocks");
    let out = atftp_get(f.addr(), "big-blocks", &local, &["blksize 9000"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&local), want);
    let trace = text(&out);
    assert!(
        trace.contains("blksize: 1468"),
        "server did not clamp blksize:\n{trace}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_windowsize_16() {
    let f = Fixture::new().await;
    let want = f.put("initrd.img", 5 * 1024 * 1024 + 3);
    let local = f.out_path("initrd.img");
    let out = atftp_get(
        f.addr(),
        "initrd.img",
        &local,
        &["blksize 1468", "windowsize 16"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&local), want);
    let trace = text(&out);
    assert!(
        trace.contains("windowsize: 16") && trace.contains("blksize: 1468"),
        "atftp did not see windowsize in the OACK:\n{trace}"
    );
    // atftp numbers packets within a window; a 16th means windows were used.
    assert!(
        trace.contains("received 16. DATA"),
        "no full window observed:\n{trace}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_tsize() {
    let f = Fixture::new().await;
    let want = f.put("tsize.bin", 123_457);
    let local = f.out_path("tsize.bin");
    let out = atftp_get(f.addr(), "tsize.bin", &local, &["tsize enable"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&local), want);
    let trace = text(&out);
    assert!(
        trace.contains("tsize: 123457"),
        "OACK tsize not reported:\n{trace}"
    );
}

/// 33 MiB at 512-byte blocks is 67 584 blocks: the block number wraps past
/// 65535 to 0, which tftp-hpa follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_rollover_past_65535_blocks() {
    let f = Fixture::new().await;
    let want = f.put("rootfs.img", 33 * 1024 * 1024 + 100);
    let local = f.out_path("rootfs.img");
    let out = tftp_hpa_get(f.addr(), "rootfs.img", &local, "binary").await;
    assert!(out.status.success(), "{}", text(&out));
    let got = read(&local);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "content differs after rollover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file_is_an_error() {
    let f = Fixture::new().await;
    let local = f.out_path("nope");
    let out = tftp_hpa_get(f.addr(), "nope", &local, "binary").await;
    let t = text(&out);
    assert!(
        t.contains("Error code 1") || t.contains("File not found"),
        "{t}"
    );
    let out = atftp_get(f.addr(), "nope", &local, &[]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("File not found"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_is_refused() {
    let f = Fixture::new().await;
    // A file next to the root that traversal would reach.
    let secret_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(secret_dir.path().join("secret"), b"top secret").expect("write");
    std::os::unix::fs::symlink(secret_dir.path(), f.root.path().join("link")).expect("symlink");
    let attempts = [
        "../../../../etc/passwd".to_string(),
        "/../etc/passwd".to_string(),
        "boot/../../etc/passwd".to_string(),
        "..\\..\\etc\\passwd".to_string(),
        "link/secret".to_string(),
        format!("{}/secret", secret_dir.path().display()),
    ];
    for (i, name) in attempts.iter().enumerate() {
        let local = f.out_path(&format!("t{i}"));
        let out = atftp_get(f.addr(), name, &local, &[]).await;
        let t = text(&out);
        assert!(!out.status.success(), "{name} was served:\n{t}");
        assert!(
            t.contains("Access violation") || t.contains("File not found"),
            "{name}: {t}"
        );
        let got = std::fs::read(&local).unwrap_or_default();
        assert!(!got.starts_with(b"top secret") && !got.starts_with(b"root:"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_request_is_refused() {
    let f = Fixture::new().await;
    let local = f.out_path("upload");
    std::fs::write(&local, b"payload").expect("write");
    let out = tftp_hpa_put(f.addr(), &local, "upload").await;
    let t = text(&out);
    assert!(t.contains("Error code 2") || t.contains("read-only"), "{t}");
    assert!(!f.root.path().join("upload").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_downloads() {
    let f = Fixture::new().await;
    let mut wants = Vec::new();
    for i in 0..8 {
        let name = format!("node{i}.img");
        wants.push((name.clone(), f.put(&name, 1_000_000 + i * 7919)));
    }
    let mut jobs = Vec::new();
    for (i, (name, _)) in wants.iter().enumerate() {
        let local = f.out_path(name);
        let addr = f.addr();
        let name = name.clone();
        jobs.push(tokio::spawn(async move {
            let out = match i % 3 {
                0 => tftp_hpa_get(addr, &name, &local, "binary").await,
                1 => atftp_get(addr, &name, &local, &["blksize 1468"]).await,
                _ => atftp_get(addr, &name, &local, &["blksize 1468", "windowsize 32"]).await,
            };
            (local, out)
        }));
    }
    for (job, (name, want)) in jobs.into_iter().zip(&wants) {
        let (local, out) = job.await.expect("join");
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert_eq!(&read(&local), want, "{name} differs");
    }
}

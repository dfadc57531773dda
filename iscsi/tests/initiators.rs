//! The target against real initiators: libiscsi's iscsi-ls, iscsi-inq and
//! iscsi-test-cu, and QEMU's iscsi:// block driver. These tools are required;
//! a missing one fails the test.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{run, start, text, MemTarget};
use iscsi::Auth;

const DISK: &str = "iqn.2024-01.org.strato.test:disk";
const PRIVATE: &str = "iqn.2024-01.org.strato.test:private";
const CHAP: &str = "iqn.2024-01.org.strato.test:chap";
const ADMIN: &str = "iqn.2024-01.org.strato.test:admin";
const USER: &str = "iqn.2024-01.org.strato.test:user";

fn targets() -> Vec<Arc<MemTarget>> {
    vec![
        Arc::new(MemTarget::new(DISK, 65536)),
        Arc::new(MemTarget::new(PRIVATE, 2048).with_acl(&[ADMIN])),
        Arc::new(MemTarget::new(CHAP, 2048).with_auth(Auth::Chap {
            user: "alice".into(),
            secret: "opensesame12".into(),
        })),
    ]
}

#[test]
fn discovery_lists_only_what_the_acl_admits() {
    let server = start(targets());
    let portal = format!("iscsi://{}", server.local_addr());
    let o = run("iscsi-ls", &["-i", USER, &portal]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(DISK) && out.contains(CHAP), "{out}");
    assert!(!out.contains(PRIVATE), "ACL-filtered target leaked: {out}");
    assert!(
        out.contains(&format!("Portal:{},1", server.local_addr())),
        "{out}"
    );

    let o = run("iscsi-ls", &["-i", ADMIN, &portal]);
    assert!(text(&o).contains(PRIVATE), "{}", text(&o));
}

/// Reads "tests"/"asserts" rows of CUnit's run summary: (ran, failed).
fn summary(out: &str, row: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(row) && l.split_whitespace().count() >= 5)
        .unwrap_or_else(|| panic!("no {row} summary in output:\n{out}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    (
        cols[2].parse().unwrap_or(0),
        cols[4].parse().unwrap_or(u32::MAX),
    )
}

fn cu_suite(suite: &str, min_tests: u32) {
    let server = start(targets());
    let url = format!("iscsi://{}/{}/0", server.local_addr(), DISK);
    let o = run(
        "iscsi-test-cu",
        &["--dataloss", &format!("--test={suite}"), &url],
    );
    let out = text(&o);
    let (ran, failed) = summary(&out, "tests");
    let (_, assert_failed) = summary(&out, "asserts");
    assert!(ran >= min_tests, "{suite}: only {ran} tests ran:\n{out}");
    assert_eq!((failed, assert_failed), (0, 0), "{suite} failed:\n{out}");
    // "[FAILED]" also appears in log lines for failures the tests provoke on
    // purpose; CUnit's own failure listing is what matters.
    assert!(
        !out.lines().any(|l| l.trim() == "FAILED"),
        "{suite}:\n{out}"
    );
}

#[test]
fn iscsi_test_cu_cmdsn() {
    cu_suite("iSCSI.iSCSIcmdsn", 2);
}

#[test]
fn iscsi_test_cu_datasn() {
    cu_suite("iSCSI.iSCSIdatasn", 1);
}

#[test]
fn iscsi_test_cu_residuals() {
    cu_suite("iSCSI.iSCSIResiduals", 10);
}

#[test]
fn iscsi_test_cu_tmf() {
    cu_suite("iSCSI.iSCSITMF", 2);
}

#[test]
fn iscsi_test_cu_sbc_read_write() {
    cu_suite("SCSI.Read10", 3);
    cu_suite("SCSI.Write10", 3);
}

#[test]
fn chap_accepts_the_right_secret_and_refuses_a_wrong_one() {
    let server = start(targets());
    let addr = server.local_addr();
    let good = run(
        "iscsi-inq",
        &[&format!("iscsi://alice%opensesame12@{addr}/{CHAP}/0")],
    );
    assert!(good.status.success(), "{}", text(&good));
    assert!(text(&good).contains("DIRECT_ACCESS"));
    let bad = run(
        "iscsi-inq",
        &[&format!("iscsi://alice%wrongsecret1@{addr}/{CHAP}/0")],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("Authentication failure"),
        "{}",
        text(&bad)
    );
    let none = run("iscsi-inq", &[&format!("iscsi://{addr}/{CHAP}/0")]);
    assert!(!none.status.success(), "{}", text(&none));
}

#[test]
fn acl_and_unknown_targets_are_refused_with_the_right_status() {
    let server = start(targets());
    let addr = server.local_addr();
    let refused = run(
        "iscsi-inq",
        &["-i", USER, &format!("iscsi://{addr}/{PRIVATE}/0")],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("Authorization failure"),
        "{}",
        text(&refused)
    );
    let admitted = run(
        "iscsi-inq",
        &["-i", ADMIN, &format!("iscsi://{addr}/{PRIVATE}/0")],
    );
    assert!(admitted.status.success(), "{}", text(&admitted));
    let missing = run(
        "iscsi-inq",
        &[&format!(
            "iscsi://{addr}/iqn.2024-01.org.strato.test:nope/0"
        )],
    );
    assert!(text(&missing).contains("not found"), "{}", text(&missing));
}

#[test]
fn qemu_img_round_trips_an_image() {
    let targets = targets();
    let disk = targets[0].clone();
    let server = start(targets);
    let dir = std::env::temp_dir().join(format!("strato-iscsi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.img");
    let back = dir.join("back.img");
    // 4 MiB of varied bytes so that misplaced blocks show.
    let img: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &img).unwrap();
    let url = format!("iscsi://{}/{}/0", server.local_addr(), DISK);
    let o = run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &url,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(&disk.data.lock().unwrap()[..img.len()], &img[..]);
    let o = run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &url,
            back.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let got = std::fs::read(&back).unwrap();
    assert_eq!(&got[..img.len()], &img[..]);
    let o = run(
        "qemu-img",
        &[
            "bench", "-w", "-c", "2000", "-d", "32", "-s", "4096", "-f", "raw", &url,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_dir_all(&dir).ok();
    drop(server);
    assert_eq!(
        disk.opened.load(Ordering::SeqCst),
        disk.closed.load(Ordering::SeqCst)
    );
}

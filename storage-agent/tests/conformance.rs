//! The iSCSI target judged by libiscsi's conformance suite: each suite runs
//! in its own `iscsi-test-cu` process against a fresh 16 MiB volume (32768
//! blocks), with data-loss tests allowed, over CHAP, and must report no
//! FAILED test.

mod support;

use std::time::Duration;

use support::*;

const SUITES: &[&str] = &[
    "SCSI.TestUnitReady",
    "SCSI.Inquiry",
    "SCSI.Mandatory",
    "SCSI.ReadCapacity10",
    "SCSI.ReadCapacity16",
    "SCSI.Read6",
    "SCSI.Read10",
    "SCSI.Read12",
    "SCSI.Read16",
    "SCSI.Write10",
    "SCSI.Write12",
    "SCSI.Write16",
    "SCSI.WriteVerify10",
    "SCSI.WriteVerify12",
    "SCSI.WriteVerify16",
    "SCSI.Verify10",
    "SCSI.Verify12",
    "SCSI.Verify16",
    "SCSI.WriteSame10",
    "SCSI.WriteSame16",
    "SCSI.Unmap",
    "SCSI.GetLBAStatus",
    "SCSI.CompareAndWrite",
    "SCSI.ModeSense6",
    "SCSI.ReportSupportedOpcodes",
    "SCSI.PreventAllow",
    "SCSI.StartStopUnit",
    "SCSI.ProutRegister",
    "SCSI.ProutReserve",
    "SCSI.ProutClear",
    "SCSI.ProutPreempt",
    "SCSI.PrinReadKeys",
    "iSCSI.iSCSIcmdsn",
    "iSCSI.iSCSIdatasn",
    "iSCSI.iSCSIResiduals",
    "iSCSI.iSCSITMF",
];

/// CUnit's run summary row `<kind>  <total> <ran> <passed> <failed> <inactive>`
/// as (ran, passed, failed). libiscsi logs commands a test expects to fail
/// with "[FAILED]" too, so the counts are the verdict, not that word.
fn summary_row(out: &str, kind: &str) -> Option<(u32, u32, u32)> {
    let line = out.lines().find(|l| l.trim_start().starts_with(kind))?;
    let n: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    // total, ran, passed, failed, inactive
    (n.len() >= 4).then(|| (n[1], n[2], n[3]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libiscsi_conformance_suites_pass() {
    let node = Node::start().await;
    let mut failures = Vec::new();
    let mut report = String::new();
    for suite in SUITES {
        let spec = volume_spec(16 << 20);
        node.realize(&spec).await;
        let url = node.url(&spec.iqn, Some((CHAP_USER, CHAP_SECRET)));
        let out = run(
            "iscsi-test-cu",
            &["--dataloss", "--test", suite, &url],
            Duration::from_secs(300),
        );
        let text = text(&out);
        let row = summary_row(&text, "tests");
        let asserts = summary_row(&text, "asserts");
        report.push_str(&format!("{suite}: tests {row:?} asserts {asserts:?}\n"));
        match (row, asserts) {
            (Some((ran, _, 0)), Some((_, _, 0))) if ran > 0 => {}
            _ => {
                let failed: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("FAILED"))
                    .take(30)
                    .collect();
                failures.push(format!("{suite} ({row:?}):\n{}", failed.join("\n")));
                if row.is_none() {
                    failures.push(text.chars().take(4000).collect());
                }
            }
        }
        node.client()
            .volume_delete(spec.id)
            .await
            .expect("delete volume");
    }
    eprintln!("{report}");
    assert!(
        failures.is_empty(),
        "iscsi-test-cu failures:\n{}\n--- agent log tail ---\n{}",
        failures.join("\n\n"),
        node.log()
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

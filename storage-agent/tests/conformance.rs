//! The iSCSI target judged by libiscsi's conformance suite: each suite runs
//! in its own `iscsi-test-cu` process against a fresh 16 MiB volume (32768
//! blocks), with data-loss tests allowed, over CHAP, and must report no
//! FAILED test. Every suite runs twice: on a single copy, and on a
//! replicated volume whose replica (another agent) must then hold exactly
//! the primary's bytes — every write-type command the suites send
//! (WRITE SAME, UNMAP, COMPARE AND WRITE, ...) replicated.

mod support;

use std::path::Path;
use std::time::Duration;

use api::internal::{PeerState, ReplicaPeer, ReplicaRole, ReplicationSpec};
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
async fn libiscsi_conformance_suites_pass_on_single_and_replicated_volumes() {
    let node = Node::start().await;
    let (second, replica_host) = storage_agent(&node.sm, &node.dir.path().join("replica")).await;
    let replica = second.client();
    let mut failures = Vec::new();
    let mut report = String::new();
    for (suite, replicated) in SUITES.iter().flat_map(|s| [(s, false), (s, true)]) {
        let mut spec = volume_spec(16 << 20);
        if replicated {
            let part = |role, peers| ReplicationSpec {
                epoch: 1,
                role,
                key: "conformance-replication-key".into(),
                peers,
            };
            let mut r = spec.clone();
            r.replication = Some(part(ReplicaRole::Replica, Vec::new()));
            replica.volume_put(&r).await.expect("replica spec");
            spec.replication = Some(part(
                ReplicaRole::Primary,
                vec![ReplicaPeer {
                    host: replica_host,
                    address: second.replication.clone(),
                    state: PeerState::InSync,
                }],
            ));
        }
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
        let kind = if replicated { "2 copies" } else { "1 copy" };
        report.push_str(&format!(
            "{suite} ({kind}): tests {row:?} asserts {asserts:?}\n"
        ));
        if replicated {
            // Every response left after the replica acknowledged the change.
            let path = |state: &Path| state.join("volumes").join(spec.id.to_string()).join("data");
            let (p, r) = (
                std::fs::read(path(&node.state)).expect("primary data"),
                std::fs::read(path(&second.state)).expect("replica data"),
            );
            if p != r {
                let at = p.iter().zip(&r).position(|(a, b)| a != b);
                failures.push(format!(
                    "{suite}: the replica differs from the primary (first at byte {at:?}, sizes {} and {})",
                    p.len(),
                    r.len()
                ));
            }
            replica
                .volume_delete(spec.id)
                .await
                .expect("delete replica");
        }
        match (row, asserts) {
            (Some((ran, _, 0)), Some((_, _, 0))) if ran > 0 => {}
            _ => {
                let failed: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("FAILED"))
                    .take(30)
                    .collect();
                failures.push(format!("{suite} ({kind}, {row:?}):\n{}", failed.join("\n")));
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

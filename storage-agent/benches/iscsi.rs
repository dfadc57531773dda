//! 4 KiB I/O over loopback against Strato's iSCSI target and against tgt
//! serving the same file, in the same run, with the issue's tools:
//! random reads with `iscsi-perf -r -b 8` and writes with
//! `qemu-img bench -w -s 4k`, at queue depth 32 and at queue depth 1
//! (latency). Strato is measured twice: an unreplicated volume, and a
//! 2-replica one whose primary streams every write to a replica copy over
//! loopback (Strato's replication protocol, in-process on both ends).
//! Prints a table with the Strato/tgt and replicated/unreplicated ratios.
//!
//! `cargo bench -p storage-agent --bench iscsi` (needs libiscsi-bin,
//! qemu-utils, qemu-block-extra and tgt; `bash scripts/test.sh` installs them).
//! `STRATO_BENCH_SECS` sets the seconds per read run (default 8).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use api::internal::{ObservedPeerState, PeerState, ReplicaPeer};
use storage_agent::exports::{Access, Exports};
use storage_agent::replication::{PrimaryConfig, ReplicaCopy, ReplicaRegistry, Replicated};

const IQN: &str = "iqn.2026-11.io.strato:bench";
const PERF_INITIATOR: &str = "iqn.2026-11.io.strato:bench-initiator";
const QEMU_INITIATOR: &str = "iqn.2008-11.org.linux-kvm";
const FILE_BYTES: u64 = 512 << 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn tgtadm(ctl: u16, args: &[&str]) {
    let out = Command::new("tgtadm")
        .args(["-C", &ctl.to_string(), "--lld", "iscsi"])
        .args(args)
        .output()
        .expect("tgtadm (install tgt)");
    assert!(
        out.status.success(),
        "tgtadm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Tgt {
    child: Child,
    url: String,
}

impl Tgt {
    fn start(file: &Path) -> Tgt {
        let port = free_port();
        let ctl = 200 + (port % 20000);
        let child = Command::new("tgtd")
            .args([
                "-f",
                "-C",
                &ctl.to_string(),
                "--iscsi",
                &format!("portal=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tgtd (install tgt)");
        for _ in 0..50 {
            let ok = Command::new("tgtadm")
                .args([
                    "-C",
                    &ctl.to_string(),
                    "--lld",
                    "iscsi",
                    "--op",
                    "show",
                    "--mode",
                    "target",
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tgtadm(
            ctl,
            &["--op", "new", "--mode", "target", "--tid", "1", "-T", IQN],
        );
        let f = file.display().to_string();
        tgtadm(
            ctl,
            &[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                "1",
                "-b",
                &f,
            ],
        );
        tgtadm(
            ctl,
            &[
                "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
            ],
        );
        // tgt keeps LUN 0 for its controller; data is on LUN 1.
        Tgt {
            child,
            url: format!("iscsi://127.0.0.1:{port}/{IQN}/1"),
        }
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strato(file: &Path) -> (iscsi::Server, String) {
    let lu = scsi::LogicalUnit::open(
        file,
        storage_agent::volumes::device_info(api::ids::VolumeId::new()),
        None,
    )
    .expect("open the logical unit");
    serve(lu)
}

/// A primary on a copy of `file` with one in-sync replica on another copy,
/// the replica served by a registry on a loopback listener.
fn strato_replicated(file: &Path, dir: &Path) -> (iscsi::Server, String, Arc<ReplicaRegistry>) {
    let (primary, replica) = (dir.join("primary.raw"), dir.join("replica.raw"));
    std::fs::copy(file, &primary).expect("primary copy");
    std::fs::copy(file, &replica).expect("replica copy");
    let (pdir, rdir) = (dir.join("primary"), dir.join("replica"));
    std::fs::create_dir_all(&pdir).expect("primary dir");
    std::fs::create_dir_all(&rdir).expect("replica dir");
    let volume = api::ids::VolumeId::new();
    let key = "bench-replication-key";
    let registry = Arc::new(ReplicaRegistry::default());
    registry.insert(ReplicaCopy::open(volume, &replica, &rdir, 1, key).expect("replica copy"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("replication listener");
    let address = listener.local_addr().expect("addr").to_string();
    {
        let registry = registry.clone();
        std::thread::spawn(move || registry.serve(listener));
    }
    let medium = Replicated::open(
        volume,
        &primary,
        &pdir,
        PrimaryConfig {
            epoch: 1,
            key: key.into(),
            peers: vec![ReplicaPeer {
                host: api::ids::HostId::new(),
                address,
                state: PeerState::InSync,
            }],
            resync_bytes_per_sec: 100 << 20,
        },
    )
    .expect("replicated medium");
    for _ in 0..100 {
        if medium
            .observe()
            .iter()
            .all(|p| p.state == ObservedPeerState::InSync)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let lu =
        scsi::LogicalUnit::with_medium(medium, storage_agent::volumes::device_info(volume), None)
            .expect("open the logical unit");
    let (server, url) = serve(lu);
    (server, url, registry)
}

fn serve(lu: scsi::LogicalUnit) -> (iscsi::Server, String) {
    let lu = Arc::new(lu);
    let exports = Arc::new(Exports::default());
    exports.upsert(
        IQN,
        &lu,
        Access {
            chap_user: String::new(),
            chap_secret: String::new(),
            allowed_initiators: vec![PERF_INITIATOR.into(), QEMU_INITIATOR.into()],
        },
    );
    let server = iscsi::Server::bind(
        iscsi::Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..iscsi::Config::default()
        },
        exports,
    )
    .expect("bind the iSCSI target");
    let url = format!("iscsi://{}/{IQN}/0", server.local_addr());
    (server, url)
}

/// Average IOPS `iscsi-perf` reports for random 4 KiB reads.
fn perf_read(url: &str, depth: u32, secs: u64) -> f64 {
    let out = Command::new("iscsi-perf")
        .args([
            "-i",
            PERF_INITIATOR,
            "-r",
            "-b",
            "8",
            "-m",
            &depth.to_string(),
            "-t",
            &secs.to_string(),
            url,
        ])
        .output()
        .expect("iscsi-perf (install libiscsi-bin)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let last = text
        .rsplit("iops average ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok());
    last.unwrap_or_else(|| {
        panic!(
            "no IOPS in iscsi-perf output: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// IOPS of `qemu-img bench` writing `count` 4 KiB requests.
fn qemu_write(url: &str, depth: u32, count: u32) -> f64 {
    let out = Command::new("qemu-img")
        .args([
            "bench",
            "-w",
            "-d",
            &depth.to_string(),
            "-s",
            "4k",
            "-c",
            &count.to_string(),
            "-f",
            "raw",
            url,
        ])
        .output()
        .expect("qemu-img (install qemu-utils)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let secs = text
        .split("Run completed in ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!(
                "qemu-img bench failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    count as f64 / secs
}

struct Row {
    what: &'static str,
    strato: f64,
    replicated: f64,
    tgt: f64,
    latency: bool,
}

fn main() {
    let secs: u64 = std::env::var("STRATO_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("volume.raw");
    {
        // Written, not sparse: reads must hit data, as on a used volume.
        let f = std::fs::File::create(&file).expect("volume file");
        let chunk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        for off in (0..FILE_BYTES).step_by(chunk.len()) {
            f.write_all_at(&chunk, off).expect("fill");
        }
        f.sync_all().expect("sync");
    }
    let tgt = Tgt::start(&file);
    let (_server, strato_url) = strato(&file);
    let (_replicated, replicated_url, _registry) = strato_replicated(&file, dir.path());
    let rounds = 2;
    let mut rows = vec![
        Row {
            what: "random read 4k QD32 (IOPS, iscsi-perf)",
            strato: 0.0,
            replicated: 0.0,
            tgt: 0.0,
            latency: false,
        },
        Row {
            what: "write 4k QD32 (IOPS, qemu-img bench)",
            strato: 0.0,
            replicated: 0.0,
            tgt: 0.0,
            latency: false,
        },
        Row {
            what: "random read 4k QD1 (µs per I/O, iscsi-perf)",
            strato: 0.0,
            replicated: 0.0,
            tgt: 0.0,
            latency: true,
        },
        Row {
            what: "write 4k QD1 (µs per I/O, qemu-img bench)",
            strato: 0.0,
            replicated: 0.0,
            tgt: 0.0,
            latency: true,
        },
    ];
    // Alternate the targets so drift on this noisy machine hits both.
    for round in 0..rounds {
        for (name, url) in [
            ("tgt", tgt.url.as_str()),
            ("strato", strato_url.as_str()),
            ("strato-2-replicas", replicated_url.as_str()),
        ] {
            let r = [
                perf_read(url, 32, secs),
                qemu_write(url, 32, 200_000),
                1e6 / perf_read(url, 1, secs.div_ceil(2)),
                1e6 / qemu_write(url, 1, 20_000),
            ];
            eprintln!("round {round} {name}: {r:.0?}");
            for (row, v) in rows.iter_mut().zip(r) {
                let slot = match name {
                    "tgt" => &mut row.tgt,
                    "strato" => &mut row.strato,
                    _ => &mut row.replicated,
                };
                *slot += v / rounds as f64;
            }
        }
    }
    println!("| 4 KiB over loopback | Strato | Strato, 2 replicas | tgt | Strato / tgt | 2 replicas / 1 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        // For latency, ratios are inverted: > 1 means the first is faster.
        let ratio = |a: f64, b: f64| if r.latency { b / a } else { a / b };
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2}× |",
            r.what,
            r.strato,
            r.replicated,
            r.tgt,
            ratio(r.strato, r.tgt),
            ratio(r.replicated, r.strato)
        );
    }
}

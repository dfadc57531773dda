//! Strato's TFTP server against dnsmasq's, 80 MB over loopback, with the
//! stock clients: tftp-hpa (512-byte lockstep), atftp blksize 1468, and
//! atftp blksize 1468 + windowsize 16 / 64.
//!
//! Both servers run inside a private network namespace this bench creates,
//! because dnsmasq's TFTP port is fixed at 69 and the host's port 69 is not
//! ours to take; Strato runs there too so both see the same loopback.
//! Needs root, `ip`, `dnsmasq`, `tftp` (tftp-hpa) and `atftp`.
//!
//!     cargo bench -p strato-tftp --bench tftp
//!
//! `STRATO_TFTP_BENCH_RUNS` (default 1) repeats each case and keeps the best.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVE_ENV: &str = "STRATO_TFTP_BENCH_SERVE";
const FILE_NAME: &str = "bench.img";
const FILE_SIZE: usize = 80 * 1000 * 1000;
const STRATO_PORT: u16 = 1069;
const DNSMASQ_PORT: u16 = 69;

fn main() {
    if let Ok(root) = std::env::var(SERVE_ENV) {
        serve_strato(PathBuf::from(root));
        return;
    }
    // `cargo test --benches` runs bench binaries with `--test`-like flags;
    // only a real bench run (`cargo bench` passes `--bench`) does the work.
    if !std::env::args().any(|a| a == "--bench") {
        println!("tftp bench: skipped (run with `cargo bench`)");
        return;
    }
    for (bin, pkg) in [
        ("ip", "iproute2"),
        ("dnsmasq", "dnsmasq"),
        ("tftp", "tftp-hpa"),
        ("atftp", "atftp"),
    ] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            panic!("`{bin}` missing: apt-get install -y {pkg}");
        }
    }
    let runs: usize = std::env::var("STRATO_TFTP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);

    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    // dnsmasq drops to `nobody`; the tree must be world-readable.
    chmod(work.path(), 0o755);
    chmod(&root, 0o755);
    let data = pseudo_random(FILE_SIZE);
    std::fs::write(root.join(FILE_NAME), &data).expect("write bench file");
    chmod(&root.join(FILE_NAME), 0o644);

    let ns = Netns::create(&format!("strato-tftp-bench-{}", std::process::id()));
    let dnsmasq = ns.spawn(
        Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--port=0")
            .arg("--enable-tftp")
            .arg(format!("--tftp-root={}", root.display()))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg(format!(
                "--pid-file={}",
                work.path().join("dnsmasq.pid").display()
            ))
            .arg("--log-facility=-")
            .arg("--quiet-tftp")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let _dnsmasq = Reaper(dnsmasq);
    let exe = std::env::current_exe().expect("current_exe");
    let mut strato = ns.spawn(
        Command::new(exe)
            .env(SERVE_ENV, &root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let mut line = String::new();
    BufReader::new(strato.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("strato ready line");
    assert!(line.starts_with("ready"), "strato server: {line:?}");
    let _strato = Reaper(strato);
    ns.wait_ready(DNSMASQ_PORT);
    ns.wait_ready(STRATO_PORT);

    let out = work.path().join("out.img");
    let cases: [(&str, Vec<&str>); 4] = [
        ("tftp-hpa, 512-byte blocks", vec![]),
        ("atftp, blksize 1468", vec!["blksize 1468"]),
        (
            "atftp, blksize 1468 + windowsize 16",
            vec!["blksize 1468", "windowsize 16"],
        ),
        (
            "atftp, blksize 1468 + windowsize 64",
            vec!["blksize 1468", "windowsize 64"],
        ),
    ];
    let mut rows = Vec::new();
    for (i, (label, options)) in cases.iter().enumerate() {
        let mut times = [f64::MAX; 2];
        for (j, port) in [DNSMASQ_PORT, STRATO_PORT].into_iter().enumerate() {
            for _ in 0..runs {
                let _ = std::fs::remove_file(&out);
                let mut cmd = if i == 0 {
                    let mut c = ns.command("tftp");
                    c.args(["-m", "binary", "127.0.0.1", &port.to_string(), "-c", "get"])
                        .arg(FILE_NAME)
                        .arg(&out);
                    c
                } else {
                    let mut c = ns.command("atftp");
                    c.args(["-g", "-r", FILE_NAME, "-l"]).arg(&out);
                    for o in options {
                        c.arg("--option").arg(o);
                    }
                    c.args(["127.0.0.1", &port.to_string()]);
                    c
                };
                let started = Instant::now();
                let status = cmd
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("run client");
                let secs = started.elapsed().as_secs_f64();
                assert!(status.success(), "{label} against port {port} failed");
                let got = std::fs::read(&out).expect("read download");
                assert!(got == data, "{label} against port {port}: download differs");
                times[j] = times[j].min(secs);
            }
        }
        eprintln!(
            "{label}: dnsmasq {:.2} s, strato {:.2} s",
            times[0], times[1]
        );
        rows.push((*label, times[0], times[1]));
    }

    println!();
    println!("80 MB over loopback (network namespace), best of {runs} run(s)");
    println!(
        "| {:<38} | {:>11} | {:>10} | {:>17} |",
        "client", "dnsmasq (s)", "Strato (s)", "Strato/dnsmasq ×"
    );
    println!("|{:-<40}|{:-<13}|{:-<12}|{:-<19}|", "", "", "", "");
    for (label, d, s) in &rows {
        println!(
            "| {:<38} | {:>11.2} | {:>10.2} | {:>17.2} |",
            label,
            d,
            s,
            d / s
        );
    }
    // The issue's target compares like-for-like client settings: dnsmasq
    // ignores windowsize, so its windowsize row is its lockstep speed.
    let (_, d16, s16) = rows[2];
    println!();
    println!(
        "target: blksize 1468 + windowsize 16 at least 4x faster than dnsmasq: {:.1}x ({})",
        d16 / s16,
        if d16 / s16 >= 4.0 { "met" } else { "NOT met" }
    );
}

/// The Strato side of the bench, re-executed inside the namespace. Exits
/// when the parent closes stdin, so a crashed bench leaves nothing behind.
fn serve_strato(root: PathBuf) {
    // RUST_LOG=tftp=info shows per-transfer stats (retransmitted windows).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let config = tftp::Config {
            listen: ([127, 0, 0, 1], STRATO_PORT).into(),
            root,
            ..tftp::Config::default()
        };
        let server = tftp::Server::bind(config).await.expect("bind").spawn();
        println!("ready {}", server.local_addr());
        let _ = std::io::stdout().flush();
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await;
        let _ = server.shutdown().await;
    });
}

struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Netns {
        let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
        assert!(
            ok(Command::new("ip").args(["netns", "add", name])),
            "ip netns add {name} failed (root needed)"
        );
        let ns = Netns {
            name: name.to_string(),
        };
        assert!(ok(
            Command::new("ip").args(["-n", name, "link", "set", "lo", "up"])
        ));
        ns
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    fn spawn(&self, cmd: &mut Command) -> Child {
        let program = cmd.get_program().to_owned();
        let mut wrapped = Command::new("ip");
        wrapped.args(["netns", "exec", &self.name]).arg(&program);
        wrapped.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        // Stdio is not readable back from a Command; callers configure the
        // wrapped command via the same builder calls below.
        let _ = cmd;
        wrapped
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        wrapped.spawn().expect("spawn in netns")
    }

    /// Polls until a server answers a request for a missing file.
    fn wait_ready(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self
                .command("atftp")
                .args(["-g", "-r", "no-such-file", "-l", "/dev/null"])
                .args(["--tftp-timeout", "1", "127.0.0.1", &port.to_string()])
                .output()
                .expect("probe");
            let text = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            if text.contains("not found") || text.contains("File not found") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server on port {port} never answered: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Kills and reaps one child we started, by its own handle.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

//! Processes `strato up` starts, finds and stops: the stack manager, the
//! agents and the rack's provisioner. Shared by `up`, `up_agent` and
//! `up_rack`, which otherwise know nothing of each other's internals.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;

/// Binary `bin` (of package `package`) next to this executable, else on `PATH`.
pub fn find_binary(bin: &str, package: &str) -> Result<PathBuf> {
    let name = format!("{bin}{}", std::env::consts::EXE_SUFFIX);
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    if let Some(p) = exe_dir
        .as_ref()
        .map(|d| d.join(&name))
        .filter(|p| is_executable(p))
    {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join(&name))
            .find(|p| is_executable(p))
        {
            return Ok(p);
        }
    }
    let beside = exe_dir.map_or_else(|| "this executable".into(), |d| d.display().to_string());
    bail!(
        "cannot find the `{bin}` binary in {beside} or on PATH; \
         build it with `cargo build -p {package}` (next to `strato`) or install it"
    )
}

fn is_executable(p: &Path) -> bool {
    let Ok(meta) = fs::metadata(p) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live process of `program`. On Linux the command line
/// is checked too, so a recycled pid is not mistaken for it.
pub fn running_as(pid: u32, program: &str) -> bool {
    let proc = Path::new("/proc");
    if proc.join("self").exists() {
        return fs::read(proc.join(pid.to_string()).join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(program))
            .unwrap_or(false);
    }
    Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `cmd` in its own process group (Ctrl-C in this terminal does not
/// reach it), appending its output to `log` and its pid to `pid_file`.
pub fn spawn_detached(mut cmd: Command, log_path: &Path, pid_file: &Path) -> Result<Child> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    writeln!(log, "--- strato up at {} ---", Utc::now().to_rfc3339())?;
    let err = log.try_clone()?;
    cmd.env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    fs::write(pid_file, format!("{}\n", child.id()))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    Ok(child)
}

/// Sends SIGTERM to `pid` (a `program` process) and waits up to `timeout`
/// for it to exit; false when it still runs.
pub async fn terminate(pid: u32, program: &str, timeout: Duration) -> Result<bool> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .context("cannot run `kill`")?;
    if !status.success() {
        bail!("cannot signal {program} (pid {pid}): `kill` failed ({status})");
    }
    let deadline = Instant::now() + timeout;
    while running_as(pid, program) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(!running_as(pid, program))
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Stops the `program` process named in `pid_file` (SIGTERM, up to 15 s)
/// and removes the pid file; the pid, if one was running.
pub async fn stop_process(
    program: &str,
    what: &str,
    pid_file: &Path,
    log: &Path,
) -> Result<Option<u32>> {
    let Some(pid) = read_pid(pid_file) else {
        return Ok(None);
    };
    if !running_as(pid, program) {
        let _ = fs::remove_file(pid_file);
        return Ok(None);
    }
    if !terminate(pid, program, Duration::from_secs(15)).await? {
        bail!(
            "the {what} (pid {pid}) is still running 15 s after SIGTERM; see {} or `kill -9 {pid}`",
            log.display()
        );
    }
    let _ = fs::remove_file(pid_file);
    Ok(Some(pid))
}

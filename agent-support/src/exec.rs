//! Running the host tools the agent drives (`qemu-img`, `genisoimage`,
//! `ip`): arguments never pass through a shell, stderr becomes the error.

use std::ffi::OsStr;

use tokio::process::Command;

use crate::error::{Error, Result};

/// Runs `program args…` to completion and returns its stdout.
pub async fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::Command {
            program: program.to_string(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Command {
            program: program.to_string(),
            status: out.status.to_string(),
            stderr: stderr.trim().chars().take(2000).collect(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

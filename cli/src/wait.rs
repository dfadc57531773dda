//! `--wait`: poll a resource with a spinner until it settles.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

/// How often to poll, and for how long at most.
pub const INTERVAL: Duration = Duration::from_millis(500);
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// One observation of the thing being waited for.
pub enum Step<T> {
    /// Not there yet; the text is the current status, shown on the spinner.
    Pending(String),
    /// Reached the wanted state.
    Done(T),
    /// Reached a state it will not leave by itself; the text says why.
    Failed(String),
}

/// A spinner on stderr (hidden when stderr is not a terminal).
pub fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        pb.set_style(style);
    }
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// Calls `check` every [`INTERVAL`] until it is done or failed, or
/// [`TIMEOUT`] passes. `what` names the resource in messages ("vm web-1").
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Step<T>>>,
{
    let pb = spinner(format!("{what}: waiting"));
    let deadline = Instant::now() + TIMEOUT;
    let result = loop {
        match check().await {
            Err(e) => break Err(e),
            Ok(Step::Done(v)) => break Ok(v),
            Ok(Step::Failed(reason)) => break Err(anyhow::anyhow!("{what} failed: {reason}")),
            Ok(Step::Pending(status)) => {
                if Instant::now() >= deadline {
                    break Err(anyhow::anyhow!(
                        "timed out after {} s waiting for {what} (last status: {status})",
                        TIMEOUT.as_secs()
                    ));
                }
                pb.set_message(format!("{what}: {status}"));
            }
        }
        tokio::time::sleep(INTERVAL).await;
    };
    pb.finish_and_clear();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poll_returns_done_and_failed() {
        let mut n = 0;
        let v = poll("thing", || {
            n += 1;
            let step = if n < 3 {
                Step::Pending(format!("try {n}"))
            } else {
                Step::Done(n)
            };
            async move { Ok(step) }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);

        let err = poll::<(), _, _>("vm x", || async { Ok(Step::Failed("no host".into())) })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "vm x failed: no host");
    }
}

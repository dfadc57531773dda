//! Turning failures into `error: <message>` plus a hint of what to do next,
//! and the process exit code (1 for failures, 2 for usage errors like clap's).

use std::error::Error as StdError;
use std::fmt;

use api::{ClientError, ErrorCode};

/// The command line was well-formed for clap but still unusable
/// (e.g. `strato login` without `--url`). Exits with 2, like clap's errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for UsageError {}

/// Shorthand: `return Err(usage("..."))`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// No URL or token from flags, environment or the config file.
#[derive(Debug)]
pub struct NotLoggedIn {
    pub missing: &'static str,
}

impl fmt::Display for NotLoggedIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not logged in (no API {} configured)", self.missing)
    }
}

impl StdError for NotLoggedIn {}

const LOGIN_HINT: &str =
    "run `strato login --url URL --token TOKEN`, or `strato up` for an all-in-one cloud";

/// What to print for a failed command, and the exit code.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    pub message: String,
    pub hint: Option<String>,
    pub code: u8,
}

impl Report {
    pub fn of(err: &anyhow::Error) -> Self {
        let mut parts: Vec<String> = Vec::new();
        let mut hint = None;
        let mut code = 1;
        for cause in err.chain() {
            if let Some(ce) = cause.downcast_ref::<ClientError>() {
                let (text, h) = describe_client_error(ce);
                parts.push(text);
                hint = h;
                break;
            }
            if cause.downcast_ref::<NotLoggedIn>().is_some() {
                hint = Some(LOGIN_HINT.into());
            }
            if cause.downcast_ref::<UsageError>().is_some() {
                code = 2;
            }
            let text = cause.to_string();
            // anyhow's context and the source often repeat each other.
            if !parts.last().is_some_and(|last| last.contains(&text)) {
                parts.push(text);
            }
        }
        Report {
            message: parts.join(": "),
            hint,
            code,
        }
    }
}

fn describe_client_error(err: &ClientError) -> (String, Option<String>) {
    match err {
        ClientError::Api { body, .. } => {
            let hint = match body.error {
                ErrorCode::Unauthenticated => Some(format!("your token was not accepted; {LOGIN_HINT}")),
                ErrorCode::Forbidden => Some(
                    "your user lacks the role for this (admin, or member of the project); see `strato whoami`".into(),
                ),
                ErrorCode::QuotaExceeded => Some(
                    "see the project's limits and usage with `strato quota show`; an admin can raise them with `strato quota set`"
                        .into(),
                ),
                ErrorCode::CapacityExhausted => Some(
                    "no enabled, healthy host has room; VMs are only placed once a hypervisor agent has enrolled and volumes once a storage agent has (see `strato host list`)"
                        .into(),
                ),
                ErrorCode::AddressesExhausted => Some(
                    "add a subnet with `strato network subnet-create`, or free addresses by deleting VMs".into(),
                ),
                ErrorCode::MalformedBody => {
                    Some("the server did not understand the request; is this `strato` the same version as the stack manager?".into())
                }
                ErrorCode::Unavailable => Some("a dependency of the stack manager failed; retrying may help".into()),
                ErrorCode::Internal => Some(
                    "this is a bug in the stack manager; its log has the details (`strato up` writes it to <state-dir>/stack-manager.log)"
                        .into(),
                ),
                ErrorCode::InvalidRequest
                | ErrorCode::InvalidId
                | ErrorCode::NotFound
                | ErrorCode::Conflict
                | ErrorCode::BmcUnreachable
                | ErrorCode::BmcFailed => None,
            };
            (body.message.clone(), hint)
        }
        ClientError::Http { status, text } => {
            let text = text.trim();
            let msg = if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {}", truncate(text, 200))
            };
            (
                msg,
                Some("the server did not answer like a Strato stack manager; check the URL with `strato whoami`".into()),
            )
        }
        ClientError::Transport { url, source } => {
            let hint = if source.is_connect() {
                "is the stack manager running? start it with `strato up`"
            } else if source.is_timeout() {
                "the stack manager did not answer in time; it may be overloaded, retry"
            } else {
                "check the URL (`strato login --url ...`) and that the stack manager is running"
            };
            (
                format!("cannot reach {url}: {}", root_cause(source)),
                Some(hint.into()),
            )
        }
        ClientError::Decode { url, source } => (
            format!("unexpected response from {url}: {}", root_cause(source)),
            Some("is the URL a Strato stack manager of the same version as this CLI?".into()),
        ),
    }
}

/// The innermost error's text: for reqwest that is e.g. "Connection refused".
fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use api::ErrorBody;

    fn api_err(code: ErrorCode, message: &str) -> anyhow::Error {
        ClientError::Api {
            status: code.http_status(),
            body: ErrorBody {
                error: code,
                message: message.into(),
            },
        }
        .into()
    }

    #[test]
    fn quota_exceeded_shows_message_and_quota_hint() {
        let r = Report::of(&api_err(
            ErrorCode::QuotaExceeded,
            "quota `instances` exceeded: 20 of 20 used",
        ));
        assert_eq!(r.message, "quota `instances` exceeded: 20 of 20 used");
        assert!(r.hint.unwrap().contains("strato quota show"));
        assert_eq!(r.code, 1);
    }

    #[test]
    fn unauthenticated_hints_login() {
        let r = Report::of(&api_err(ErrorCode::Unauthenticated, "unknown token"));
        assert!(r.hint.unwrap().contains("strato login"));
    }

    #[test]
    fn context_is_kept_in_front_of_api_message() {
        let e = Err::<(), _>(api_err(ErrorCode::NotFound, "no such image"))
            .context("creating vm web-1")
            .unwrap_err();
        let r = Report::of(&e);
        assert_eq!(r.message, "creating vm web-1: no such image");
        assert_eq!(r.hint, None);
    }

    #[test]
    fn usage_errors_exit_2_and_not_logged_in_hints() {
        assert_eq!(Report::of(&usage("bad")).code, 2);
        let r = Report::of(&NotLoggedIn { missing: "URL" }.into());
        assert_eq!(r.code, 1);
        assert!(r.hint.unwrap().contains("strato up"));
    }
}

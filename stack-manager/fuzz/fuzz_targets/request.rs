//! Arbitrary requests through the real public router, on a real store
//! (SQLite in a temporary directory) with an admin token: whatever the
//! method, path, query, headers and body, the answer is never a 500, and
//! every error carries the JSON body `{ "error": code, "message": ... }`.
//!
//! Input: one byte of flags (method, whether the token and the JSON content
//! type are sent), the path and query up to the first newline, then the
//! body. HTTP framing itself is hyper's; this covers everything after it:
//! routing, authentication, the extractors and every handler's validation.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use stack_manager::config::Config;
use stack_manager::state::AppState;
use tower::ServiceExt;

struct Target {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
    _dir: tempfile::TempDir,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let (router, token) = rt.block_on(async {
            let config = Config {
                state_dir: dir.path().to_path_buf(),
                ..Config::default()
            };
            let state = AppState::start(config).await.expect("stack manager starts");
            let boot = stack_manager::server::init(&state, "admin", "admin")
                .await
                .expect("init");
            (stack_manager::http::router(state), boot.token)
        });
        Target {
            rt,
            router,
            token,
            _dir: dir,
        }
    })
}

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(flags & 7) % METHODS.len()].clone();
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let uri = format!("/{}", path.trim_start_matches('/'));
    let t = target();
    let mut request = Request::builder().method(method).uri(uri.as_str());
    if flags & 8 == 0 {
        request = request.header(header::AUTHORIZATION, format!("Bearer {}", t.token));
    }
    if flags & 16 == 0 {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    // A URI the http crate refuses never reaches the router: hyper answers
    // it with a 400 of its own.
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return;
    };
    let (status, bytes) = t.rt.block_on(async {
        let response = t
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .expect("response body");
        (status, bytes)
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{uri}: {}",
        String::from_utf8_lossy(&bytes)
    );
    if status.is_client_error() || status.is_server_error() {
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{uri}: {status} without a JSON body ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{uri}: {status} body is not {{error, message}}: {body}"
        );
    }
});

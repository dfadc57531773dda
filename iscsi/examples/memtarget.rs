//! Serves the test suite's in-memory disk for manual runs of initiators:
//! `cargo run --example memtarget -- 127.0.0.1:3260`.
#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3260".into());
    let blocks = std::env::args()
        .nth(2)
        .and_then(|b| b.parse().ok())
        .unwrap_or(262_144);
    let mut cfg = common::config();
    cfg.listen = addr.parse().expect("listen address");
    let targets = vec![
        Arc::new(common::MemTarget::new(
            "iqn.2024-01.org.strato:disk",
            blocks,
        )),
        Arc::new(
            common::MemTarget::new("iqn.2024-01.org.strato:chap", 2048).with_auth(
                iscsi::Auth::Chap {
                    user: "user".into(),
                    secret: "secret123456".into(),
                },
            ),
        ),
        Arc::new(
            common::MemTarget::new("iqn.2024-01.org.strato:private", 2048)
                .with_acl(&["iqn.2024-01.org.strato:admin"]),
        ),
    ];
    let server = iscsi::Server::bind(cfg, Arc::new(common::MemRegistry { targets })).expect("bind");
    eprintln!("listening on {}", server.local_addr());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

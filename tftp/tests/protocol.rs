//! Protocol behaviour the stock clients cannot provoke, driven by the
//! minimal client in `common` and by hand-built datagrams.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pseudo_random, Client, ClientError, Fixture};
use tftp::packet::{self, Packet};
use tftp::{Config, FsRoot, Overlay, Server};
use tokio::net::UdpSocket;

const FAST: Duration = Duration::from_millis(200);

async fn recv(socket: &UdpSocket, buf: &mut [u8]) -> (usize, std::net::SocketAddr) {
    tokio::time::timeout(Duration::from_secs(5), socket.recv_from(buf))
        .await
        .expect("no reply within 5s")
        .expect("recv")
}

async fn client_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind")
}

fn rrq(file: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    Packet::Rrq(packet::Request {
        filename: file,
        mode,
        options: options.to_vec(),
    })
    .encode(&mut out);
    out
}

#[tokio::test]
async fn windowsize_negotiated_and_used() {
    let f = Fixture::new().await;
    let want = f.put("kernel", 1_000_000);
    let got = Client::default()
        .option("blksize", "1468")
        .option("windowsize", "16")
        .option("tsize", "0")
        .get(f.addr(), "kernel")
        .await
        .expect("download");
    assert_eq!(got.data, want);
    let oack = got.oack.expect("OACK");
    assert_eq!(oack.get("blksize").map(String::as_str), Some("1468"));
    assert_eq!(oack.get("windowsize").map(String::as_str), Some("16"));
    assert_eq!(oack.get("tsize").map(String::as_str), Some("1000000"));
    // ACK 0 plus one per window of 16 blocks of 1468 bytes.
    let blocks = 1_000_000u64.div_ceil(1468);
    assert_eq!(got.acks_sent, 1 + blocks.div_ceil(16));
}

#[tokio::test]
async fn windows_without_segmentation_offload() {
    let f = Fixture::with(|c| {
        c.udp_gso = false;
        c.timeout = FAST;
    })
    .await;
    let want = f.put("kernel", 700_000);
    let mut client = Client::default()
        .option("blksize", "1468")
        .option("windowsize", "32");
    client.drop_once = vec![3, 40, 64];
    let got = client.get(f.addr(), "kernel").await.expect("download");
    assert_eq!(got.data, want);
}

#[tokio::test]
async fn windowsize_clamped_to_configured_max() {
    let f = Fixture::with(|c| c.max_windowsize = 8).await;
    let want = f.put("f", 100_000);
    let got = Client::default()
        .option("windowsize", "1000")
        .get(f.addr(), "f")
        .await
        .expect("download");
    assert_eq!(got.data, want);
    assert_eq!(
        got.oack
            .expect("OACK")
            .get("windowsize")
            .map(String::as_str),
        Some("8")
    );
}

#[tokio::test]
async fn partial_ack_resumes_from_acknowledged_block() {
    let f = Fixture::with(|c| c.timeout = FAST).await;
    let want = f.put("lossy", 300_000);
    let mut client = Client::default()
        .option("blksize", "1024")
        .option("windowsize", "16");
    // A block mid-window (partial ACK), the first of a window (repeat of
    // the previous ACK) and the last of a window (only a timeout reveals it).
    client.drop_once = vec![5, 17, 48, 100, 101, 102];
    let started = Instant::now();
    let got = client.get(f.addr(), "lossy").await.expect("download");
    assert_eq!(got.data, want);
    // Mid-window losses are repaired by ACKs, not timeouts: well under the
    // 6 × 200 ms it would take if every loss waited out the timer.
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn block_numbers_roll_over_with_windows() {
    let f = Fixture::new().await;
    // 8-byte blocks make 70 000 blocks from a 560 KB file.
    let want = f.put("tiny-blocks", 8 * 70_000 + 3);
    let got = Client::default()
        .option("blksize", "8")
        .option("windowsize", "64")
        .get(f.addr(), "tiny-blocks")
        .await
        .expect("download");
    assert_eq!(got.data.len(), want.len());
    assert!(got.data == want);
}

#[tokio::test]
async fn unknown_options_are_ignored() {
    let f = Fixture::new().await;
    let want = f.put("f", 5000);
    let got = Client::default()
        .option("multicast", "")
        .option("x-vendor", "1")
        .option("blksize", "1024")
        .get(f.addr(), "f")
        .await
        .expect("download");
    assert_eq!(got.data, want);
    let oack = got.oack.expect("OACK");
    assert_eq!(oack.len(), 1, "{oack:?}");
    // Only unknown options: plain RFC 1350 transfer, DATA 1 first.
    let got = Client::default()
        .option("x-vendor", "1")
        .get(f.addr(), "f")
        .await
        .expect("download");
    assert_eq!(got.data, want);
    assert!(got.oack.is_none());
}

#[tokio::test]
async fn wrong_tid_gets_error_5_and_transfer_continues() {
    let f = Fixture::new().await;
    let want = f.put("f", 2000);
    let client = client_socket().await;
    let stranger = client_socket().await;
    let mut buf = vec![0u8; 2048];
    client
        .send_to(&rrq("f", "octet", &[]), f.addr())
        .await
        .expect("send");
    let (n, tid) = recv(&client, &mut buf).await;
    assert_ne!(tid, f.addr(), "transfer must use its own port");
    let mut data = match Packet::parse(&buf[..n]) {
        Ok(Packet::Data { block: 1, data }) => data.to_vec(),
        other => panic!("expected DATA 1, got {other:?}"),
    };

    stranger.send_to(&packet::ack(1), tid).await.expect("send");
    let (n, _) = recv(&stranger, &mut buf).await;
    assert!(matches!(
        Packet::parse(&buf[..n]),
        Ok(Packet::Error { code: 5, .. })
    ));

    let mut block = 1u16;
    loop {
        client
            .send_to(&packet::ack(block), tid)
            .await
            .expect("send");
        let (n, _) = recv(&client, &mut buf).await;
        match Packet::parse(&buf[..n]) {
            Ok(Packet::Data { block: b, data: d }) if b == block + 1 => {
                data.extend_from_slice(d);
                block = b;
                if d.len() < 512 {
                    client
                        .send_to(&packet::ack(block), tid)
                        .await
                        .expect("send");
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(data, want);
}

#[tokio::test]
async fn retransmits_on_timeout_then_gives_up() {
    let f = Fixture::with(|c| {
        c.timeout = FAST;
        c.retries = 2;
    })
    .await;
    f.put("f", 2000);
    let client = client_socket().await;
    let mut buf = vec![0u8; 2048];
    client
        .send_to(&rrq("f", "octet", &[]), f.addr())
        .await
        .expect("send");
    let mut copies = 0;
    let started = Instant::now();
    // Never ACK: the first send plus `retries` retransmissions, then silence.
    while let Ok(r) =
        tokio::time::timeout(Duration::from_millis(800), client.recv_from(&mut buf)).await
    {
        let (n, _) = r.expect("recv");
        assert!(matches!(
            Packet::parse(&buf[..n]),
            Ok(Packet::Data { block: 1, .. })
        ));
        copies += 1;
    }
    assert_eq!(copies, 3);
    assert!(started.elapsed() >= FAST * 2);
}

#[tokio::test]
async fn oack_is_retransmitted_until_acked() {
    let f = Fixture::with(|c| c.timeout = FAST).await;
    let want = f.put("f", 700);
    let client = client_socket().await;
    let mut buf = vec![0u8; 2048];
    client
        .send_to(&rrq("f", "octet", &[("tsize", "0")]), f.addr())
        .await
        .expect("send");
    let (_, tid) = recv(&client, &mut buf).await;
    let (n, tid2) = recv(&client, &mut buf).await;
    assert_eq!(tid, tid2);
    assert!(matches!(Packet::parse(&buf[..n]), Ok(Packet::Oack { .. })));
    client.send_to(&packet::ack(0), tid).await.expect("send");
    let (n, _) = recv(&client, &mut buf).await;
    let Ok(Packet::Data { block: 1, data }) = Packet::parse(&buf[..n]) else {
        panic!("expected DATA 1")
    };
    assert_eq!(data, &want[..512]);
}

#[tokio::test]
async fn client_error_after_oack_ends_transfer() {
    // PXE ROMs ask for tsize, then abort and re-request; the server must let
    // the first transfer go quietly and serve the second.
    let f = Fixture::with(|c| c.timeout = FAST).await;
    let want = f.put("f", 700);
    let client = client_socket().await;
    let mut buf = vec![0u8; 2048];
    client
        .send_to(&rrq("f", "octet", &[("tsize", "0")]), f.addr())
        .await
        .expect("send");
    let (_, tid) = recv(&client, &mut buf).await;
    client
        .send_to(&packet::error(packet::ErrorCode::NotDefined, "abort"), tid)
        .await
        .expect("send");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf))
            .await
            .is_err(),
        "server kept sending after the client's ERROR"
    );
    let got = Client::default()
        .get(f.addr(), "f")
        .await
        .expect("download");
    assert_eq!(got.data, want);
}

#[tokio::test]
async fn duplicate_request_does_not_start_second_transfer() {
    let f = Fixture::with(|c| c.timeout = FAST).await;
    f.put("f", 2000);
    let client = client_socket().await;
    let mut buf = vec![0u8; 2048];
    let req = rrq("f", "octet", &[]);
    client.send_to(&req, f.addr()).await.expect("send");
    let (_, tid) = recv(&client, &mut buf).await;
    client.send_to(&req, f.addr()).await.expect("send");
    // Whatever arrives before the retransmission timer fires must come from
    // the one transfer.
    while let Ok(r) =
        tokio::time::timeout(Duration::from_millis(100), client.recv_from(&mut buf)).await
    {
        let (_, from) = r.expect("recv");
        assert_eq!(from, tid, "second transfer started");
    }
}

#[tokio::test]
async fn empty_and_exact_multiple_files() {
    let f = Fixture::new().await;
    std::fs::write(f.root.path().join("empty"), b"").expect("write");
    let got = Client::default()
        .get(f.addr(), "empty")
        .await
        .expect("empty");
    assert!(got.data.is_empty());
    let want = f.put("exact", 1468 * 32);
    let got = Client::default()
        .option("blksize", "1468")
        .option("windowsize", "16")
        .get(f.addr(), "exact")
        .await
        .expect("exact");
    assert_eq!(got.data, want);
}

#[tokio::test]
async fn netascii_on_the_wire() {
    let f = Fixture::new().await;
    std::fs::write(f.root.path().join("t.txt"), b"a\nb\rc").expect("write");
    let got = Client {
        mode: "NetAscii",
        ..Client::default()
    }
    .option("tsize", "0")
    .get(f.addr(), "t.txt")
    .await
    .expect("download");
    assert_eq!(got.data, b"a\r\nb\r\0c");
    // Converted size is not known up front, so tsize is declined.
    assert!(got.oack.is_none());
}

#[tokio::test]
async fn errors_for_bad_requests() {
    let f = Fixture::new().await;
    f.put("f", 10);
    let cases: &[(&str, &str, u16)] = &[
        ("f", "mail", 4),
        ("missing", "octet", 1),
        ("../f", "octet", 2),
        ("/", "octet", 1),
        ("sub/../../f", "octet", 2),
    ];
    for &(file, mode, code) in cases {
        let err = Client {
            mode: Box::leak(mode.to_string().into_boxed_str()),
            ..Client::default()
        }
        .get(f.addr(), file)
        .await
        .expect_err(file);
        assert!(
            matches!(err, ClientError::Tftp { code: c, .. } if c == code),
            "{file} {mode}: {err:?}"
        );
    }
    // A directory is not a file.
    std::fs::create_dir(f.root.path().join("dir")).expect("mkdir");
    let err = Client::default()
        .get(f.addr(), "dir")
        .await
        .expect_err("dir");
    assert!(matches!(err, ClientError::Tftp { code: 2, .. }), "{err:?}");
}

#[tokio::test]
async fn write_request_refused_with_access_violation() {
    let f = Fixture::new().await;
    let client = client_socket().await;
    let mut buf = vec![0u8; 2048];
    let mut wrq = Vec::new();
    Packet::Wrq(packet::Request {
        filename: "x",
        mode: "octet",
        options: vec![],
    })
    .encode(&mut wrq);
    client.send_to(&wrq, f.addr()).await.expect("send");
    let (n, _) = recv(&client, &mut buf).await;
    assert!(matches!(
        Packet::parse(&buf[..n]),
        Ok(Packet::Error { code: 2, .. })
    ));
}

#[tokio::test]
async fn generated_content_through_overlay() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("undionly.kpxe"), b"rom").expect("write");
    let overlay = Arc::new(Overlay::new(FsRoot::new(root.path()).expect("root")));
    assert!(overlay.insert("/pxelinux.cfg/01-52-54-00-12-34-56", "#!ipxe\nboot\n"));
    assert!(!overlay.insert("../escape", "x"));
    let server = Server::bind_with_source(
        Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..Config::default()
        },
        overlay.clone(),
    )
    .await
    .expect("bind")
    .spawn();
    let addr = server.local_addr();
    let got = Client::default()
        .option("tsize", "0")
        .get(addr, "pxelinux.cfg/01-52-54-00-12-34-56")
        .await
        .expect("generated");
    assert_eq!(got.data, b"#!ipxe\nboot\n");
    assert_eq!(
        got.oack.expect("OACK").get("tsize").map(String::as_str),
        Some("12")
    );
    let got = Client::default()
        .get(addr, "/undionly.kpxe")
        .await
        .expect("file");
    assert_eq!(got.data, b"rom");
    overlay.remove("pxelinux.cfg/01-52-54-00-12-34-56");
    let err = Client::default()
        .get(addr, "pxelinux.cfg/01-52-54-00-12-34-56")
        .await
        .expect_err("removed");
    assert!(matches!(err, ClientError::Tftp { code: 1, .. }));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn busy_server_refuses_beyond_max_transfers() {
    let f = Fixture::with(|c| {
        c.max_transfers = 1;
        c.timeout = Duration::from_secs(2);
    })
    .await;
    f.put("f", 5000);
    let first = client_socket().await;
    let mut buf = vec![0u8; 2048];
    first
        .send_to(&rrq("f", "octet", &[]), f.addr())
        .await
        .expect("send");
    recv(&first, &mut buf).await;
    let err = Client::default()
        .get(f.addr(), "f")
        .await
        .expect_err("busy");
    assert!(matches!(err, ClientError::Tftp { code: 0, .. }), "{err:?}");
}

#[tokio::test]
async fn shutdown_stops_listener_and_transfers() {
    let f = Fixture::with(|c| c.timeout = FAST).await;
    f.put("f", 100_000);
    let addr = f.addr();
    let client = client_socket().await;
    let mut buf = vec![0u8; 2048];
    client
        .send_to(&rrq("f", "octet", &[]), addr)
        .await
        .expect("send");
    recv(&client, &mut buf).await;
    tokio::time::timeout(Duration::from_secs(5), f.server.shutdown())
        .await
        .expect("shutdown hangs")
        .expect("shutdown");
    // The port is free again and nothing answers any more.
    let rebound = std::net::UdpSocket::bind(addr).expect("port still bound");
    drop(rebound);
    let late = client_socket().await;
    late.send_to(&rrq("f", "octet", &[]), addr)
        .await
        .expect("send");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), late.recv_from(&mut buf))
            .await
            .map(|r| r.is_err())
            .unwrap_or(true)
    );
    let _ = pseudo_random(1, 1);
}

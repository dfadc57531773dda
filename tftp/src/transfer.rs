//! One read transfer: the RFC 7440 window / retransmit state machine.
//!
//! Blocks are numbered internally with a `u64` index starting at 1; the wire
//! number is the index truncated to 16 bits, so past 65535 it wraps to 0 as
//! tftp-hpa and atftp expect. The last `windowsize` produced packets live in
//! a [`Window`] of preformatted datagrams so a partial ACK or a timeout
//! resends them without re-reading the content.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::time::timeout_at;
use tracing::{debug, trace};

use crate::blocks::BlockReader;
use crate::packet::{self, ErrorCode, Packet};
use crate::window::Window;

/// Room for any datagram a client may send back (ACKs and ERRORs are tiny;
/// anything larger is garbage we only need to recognize as such).
const RECV_BUF: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading content: {0}")]
    Read(std::io::Error),
    #[error("no acknowledgement after {0} retransmissions")]
    TimedOut(u32),
    #[error("client sent error {code}: {message}")]
    Peer { code: u16, message: String },
    #[error("client sent an unexpected {0} packet")]
    Protocol(&'static str),
}

/// What a finished transfer did, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub bytes: u64,
    pub blocks: u64,
    pub retransmitted_windows: u64,
}

pub(crate) struct Params {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    pub retries: u32,
    /// Serialized OACK to send first, if any option was accepted.
    pub oack: Option<Vec<u8>>,
    /// Try UDP segmentation offload for windows.
    pub gso: bool,
}

pub(crate) struct Transfer {
    socket: UdpSocket,
    peer: SocketAddr,
    reader: BlockReader,
    params: Params,
    window: Window,
    recv: Vec<u8>,
}

enum Reply {
    /// The client acknowledged this many further blocks.
    Advanced(u64),
    /// The client asked again for the window after the last acknowledged
    /// block (RFC 7440 loss signal), or sent a stale ACK we should not act on.
    Repeat,
    TimedOut,
}

impl Transfer {
    pub(crate) fn new(
        socket: UdpSocket,
        peer: SocketAddr,
        reader: BlockReader,
        params: Params,
    ) -> Transfer {
        let window = Window::new(params.blksize, params.windowsize);
        Transfer {
            socket,
            peer,
            reader,
            params,
            window,
            recv: vec![0u8; RECV_BUF],
        }
    }

    pub(crate) async fn run(mut self) -> Result<Stats, TransferError> {
        let mut stats = Stats {
            bytes: 0,
            blocks: 0,
            retransmitted_windows: 0,
        };
        if let Some(oack) = self.params.oack.take() {
            self.send_oack(&oack).await?;
        }
        if self.params.gso {
            self.window.enable_gso(&self.socket);
        }

        let window = u64::from(self.params.windowsize.max(1));
        // Index of the highest block the client has acknowledged.
        let mut acked: u64 = 0;
        // Index of the highest block read into the window.
        let mut produced: u64 = 0;
        // Index of the short (final) block once it has been read.
        let mut last: Option<u64> = None;
        let mut retries = 0u32;
        // One immediate resend per window on a repeated ACK is enough to
        // recover from a lost first block; acting on every duplicate would
        // re-create the Sorcerer's Apprentice problem of RFC 1350.
        let mut repeat_honoured = false;

        loop {
            while produced < acked + window && last.is_none() {
                produced += 1;
                let n = self
                    .window
                    .produce(produced, &mut self.reader)
                    .map_err(TransferError::Read)?;
                stats.bytes += n as u64;
                if n < usize::from(self.params.blksize) {
                    last = Some(produced);
                }
            }
            self.window
                .send(&self.socket, self.peer, acked + 1, produced)
                .await?;
            trace!(from = acked + 1, to = produced, "window sent");

            let deadline = tokio::time::Instant::now() + self.params.timeout;
            let reply = loop {
                match self.await_ack(acked, produced - acked, deadline).await? {
                    // Already resent once for this position: let the timeout
                    // decide instead of answering every duplicate.
                    Reply::Repeat if repeat_honoured => continue,
                    r => break r,
                }
            };
            match reply {
                Reply::Advanced(n) => {
                    acked += n;
                    retries = 0;
                    repeat_honoured = false;
                    if Some(acked) == last {
                        stats.blocks = acked;
                        return Ok(stats);
                    }
                }
                Reply::Repeat => {
                    repeat_honoured = true;
                    stats.retransmitted_windows += 1;
                }
                Reply::TimedOut => {
                    retries += 1;
                    if retries > self.params.retries {
                        return Err(TransferError::TimedOut(self.params.retries));
                    }
                    debug!(peer = %self.peer, block = acked + 1, retries, "timeout, resending window");
                    stats.retransmitted_windows += 1;
                }
            }
        }
    }

    async fn send_oack(&mut self, oack: &[u8]) -> Result<(), TransferError> {
        let mut retries = 0;
        loop {
            self.socket.send_to(oack, self.peer).await?;
            let deadline = tokio::time::Instant::now() + self.params.timeout;
            // The OACK is acknowledged with block 0, i.e. "one block past
            // index 65535" in wire terms; expressed as advancing from a
            // virtual index 65535 by one.
            match self.await_ack(u64::from(u16::MAX), 1, deadline).await? {
                Reply::Advanced(_) => return Ok(()),
                Reply::Repeat | Reply::TimedOut => {
                    retries += 1;
                    if retries > self.params.retries {
                        return Err(TransferError::TimedOut(self.params.retries));
                    }
                }
            }
        }
    }

    /// Waits until `deadline` for an ACK of one of the `outstanding` blocks
    /// after `acked`.
    async fn await_ack(
        &mut self,
        acked: u64,
        outstanding: u64,
        deadline: tokio::time::Instant,
    ) -> Result<Reply, TransferError> {
        loop {
            let (n, from) = match timeout_at(deadline, self.socket.recv_from(&mut self.recv)).await
            {
                Err(_) => return Ok(Reply::TimedOut),
                Ok(r) => r?,
            };
            if from != self.peer {
                // RFC 1350: a packet from a foreign TID is answered but must
                // not disturb the transfer in progress.
                debug!(peer = %self.peer, stranger = %from, "packet from unknown TID");
                let err = packet::error(ErrorCode::UnknownTid, "Unknown transfer ID");
                let _ = self.socket.send_to(&err, from).await;
                continue;
            }
            match Packet::parse(&self.recv[..n]) {
                Ok(Packet::Ack { block }) => {
                    let diff = u64::from(block.wrapping_sub(acked as u16));
                    if diff >= 1 && diff <= outstanding {
                        return Ok(Reply::Advanced(diff));
                    }
                    if diff == 0 {
                        return Ok(Reply::Repeat);
                    }
                    // An ACK from an earlier window arriving late; acting on
                    // it would rewind the transfer.
                    trace!(block, "stale ack ignored");
                }
                Ok(Packet::Error { code, message }) => {
                    return Err(TransferError::Peer {
                        code,
                        message: message.to_string(),
                    })
                }
                Ok(Packet::Rrq(_)) | Ok(Packet::Wrq(_)) => {
                    // A client retransmitting its request to our TID; the
                    // transfer's own retransmissions answer it.
                    trace!("request on transfer socket ignored");
                }
                Ok(Packet::Data { .. }) => return Err(self.illegal("DATA").await),
                Ok(Packet::Oack { .. }) => return Err(self.illegal("OACK").await),
                Err(e) => trace!(error = %e, "malformed packet ignored"),
            }
        }
    }

    async fn illegal(&self, what: &'static str) -> TransferError {
        let err = packet::error(ErrorCode::IllegalOperation, "Illegal TFTP operation");
        let _ = self.socket.send_to(&err, self.peer).await;
        TransferError::Protocol(what)
    }
}

/// Elapsed-time helper for logs.
pub(crate) fn rate_mib_s(bytes: u64, started: Instant) -> f64 {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    bytes as f64 / secs / (1024.0 * 1024.0)
}

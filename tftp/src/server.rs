//! The request listener: accepts RRQs on the well-known port and runs each
//! transfer as its own task on its own ephemeral socket.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};
use tracing::{debug, info, warn, Instrument};

use crate::blocks::BlockReader;
use crate::config::Config;
use crate::options::negotiate;
use crate::packet::{self, ErrorCode, Mode, Packet, Request};
use crate::root::{normalize, FsRoot, PathError};
use crate::source::{OpenError, Source};
use crate::transfer::{self, Params, Transfer, TransferError};

/// Requests are small, but RFC 2347 lets options push them past 512 bytes
/// and some ROMs pad; anything beyond this is not a request we would honour.
const REQUEST_BUF: usize = 4096;

/// A bound, not yet running TFTP server.
pub struct Server {
    socket: UdpSocket,
    local_addr: SocketAddr,
    config: Arc<Config>,
    source: Arc<dyn Source>,
    shutdown: ShutdownHandle,
}

/// Stops a server from another task. Cloneable; signalling twice is harmless.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Stops accepting requests and aborts transfers in progress; `run`
    /// returns once they are gone.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A server running on a spawned task.
pub struct RunningServer {
    local_addr: SocketAddr,
    shutdown: ShutdownHandle,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Signals shutdown and waits for the server task to finish.
    pub async fn shutdown(self) -> io::Result<()> {
        self.shutdown.shutdown();
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

/// The parts of a request a transfer task needs after the receive buffer is
/// reused.
struct OwnedRequest {
    filename: String,
    mode: String,
    options: Vec<(String, String)>,
}

impl From<&Request<'_>> for OwnedRequest {
    fn from(r: &Request<'_>) -> OwnedRequest {
        OwnedRequest {
            filename: r.filename.to_string(),
            mode: r.mode.to_string(),
            options: r
                .options
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }
}

impl Server {
    /// Binds `config.listen` and serves files below `config.root`.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let source = FsRoot::new(&config.root)?;
        Server::bind_with_source(config, Arc::new(source)).await
    }

    /// Binds `config.listen` and serves whatever `source` resolves; this is
    /// the hook for generated content (see [`Overlay`](crate::Overlay)).
    /// `config.root` is not used.
    pub async fn bind_with_source(config: Config, source: Arc<dyn Source>) -> io::Result<Server> {
        let socket = UdpSocket::bind(config.listen).await?;
        let local_addr = socket.local_addr()?;
        let (tx, _rx) = watch::channel(false);
        Ok(Server {
            socket,
            local_addr,
            config: Arc::new(config),
            source,
            shutdown: ShutdownHandle(Arc::new(tx)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Runs the server on a new task.
    pub fn spawn(self) -> RunningServer {
        let local_addr = self.local_addr;
        let shutdown = self.shutdown.clone();
        let task = tokio::spawn(self.run());
        RunningServer {
            local_addr,
            shutdown,
            task,
        }
    }

    /// Serves until [`ShutdownHandle::shutdown`] is called.
    pub async fn run(self) -> io::Result<()> {
        let mut stop = self.shutdown.0.subscribe();
        let mut buf = vec![0u8; REQUEST_BUF];
        let mut transfers: JoinSet<()> = JoinSet::new();
        // Peers with a transfer in flight, so a client that retransmits its
        // RRQ before our first reply arrives does not start a second,
        // competing transfer (the running one retransmits on its own).
        let mut active: HashMap<SocketAddr, Id> = HashMap::new();
        let mut peers_by_task: HashMap<Id, SocketAddr> = HashMap::new();
        info!(listen = %self.local_addr, "TFTP server started");

        loop {
            tokio::select! {
                _ = async { stop.wait_for(|stopped| *stopped).await.map(|_| ()) } => break,
                Some(done) = transfers.join_next_with_id(), if !transfers.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            if e.is_panic() {
                                warn!("transfer task panicked");
                            }
                            e.id()
                        }
                    };
                    if let Some(peer) = peers_by_task.remove(&id) {
                        active.remove(&peer);
                    }
                }
                r = self.socket.recv_from(&mut buf) => {
                    let (n, peer) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            // Typically an ICMP error surfacing from an
                            // earlier send; the socket itself is fine.
                            debug!(error = %e, "recv on listener failed");
                            continue;
                        }
                    };
                    self.on_datagram(&buf[..n], peer, &mut transfers, &mut active, &mut peers_by_task).await;
                }
            }
        }
        let running = transfers.len();
        transfers.shutdown().await;
        info!(listen = %self.local_addr, aborted = running, "TFTP server stopped");
        Ok(())
    }

    async fn on_datagram(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
        transfers: &mut JoinSet<()>,
        active: &mut HashMap<SocketAddr, Id>,
        peers_by_task: &mut HashMap<Id, SocketAddr>,
    ) {
        let request = match Packet::parse(datagram) {
            Ok(Packet::Rrq(r)) => r,
            Ok(Packet::Wrq(r)) => {
                info!(%peer, file = r.filename, "write request refused");
                self.reply_error(peer, ErrorCode::AccessViolation, "Server is read-only")
                    .await;
                return;
            }
            Ok(_) => {
                // Stray DATA/ACK/ERROR on the request port belongs to no
                // transfer; answering would only help reflection attacks.
                debug!(%peer, "non-request packet on listener ignored");
                return;
            }
            Err(e) => {
                debug!(%peer, error = %e, "malformed request");
                if datagram.len() >= 2 && matches!(datagram[1], 1 | 2) && datagram[0] == 0 {
                    self.reply_error(peer, ErrorCode::IllegalOperation, "Malformed request")
                        .await;
                }
                return;
            }
        };
        if active.contains_key(&peer) {
            debug!(%peer, "duplicate request for a running transfer ignored");
            return;
        }
        if transfers.len() >= self.config.max_transfers {
            warn!(%peer, limit = self.config.max_transfers, "too many transfers, refusing");
            self.reply_error(peer, ErrorCode::NotDefined, "Server busy")
                .await;
            return;
        }
        let owned = OwnedRequest::from(&request);
        let span = tracing::info_span!("tftp", %peer, file = %owned.filename);
        let task = serve(
            self.local_addr,
            peer,
            owned,
            self.config.clone(),
            self.source.clone(),
        );
        let handle = transfers.spawn(task.instrument(span));
        active.insert(peer, handle.id());
        peers_by_task.insert(handle.id(), peer);
    }

    async fn reply_error(&self, peer: SocketAddr, code: ErrorCode, message: &str) {
        let err = packet::error(code, message);
        if let Err(e) = self.socket.send_to(&err, peer).await {
            debug!(%peer, error = %e, "sending error failed");
        }
    }
}

/// One request, start to finish, on its own socket.
async fn serve(
    listen: SocketAddr,
    peer: SocketAddr,
    request: OwnedRequest,
    config: Arc<Config>,
    source: Arc<dyn Source>,
) {
    // A fresh port per transfer is the RFC 1350 TID; it also means the
    // kernel demultiplexes transfers for us.
    let socket = match UdpSocket::bind(SocketAddr::new(listen.ip(), 0)).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot bind transfer socket");
            return;
        }
    };
    let fail = |code: ErrorCode, message: &'static str| {
        let err = packet::error(code, message);
        let socket = &socket;
        async move {
            let _ = socket.send_to(&err, peer).await;
        }
    };

    let Some(mode) = Mode::parse(&request.mode) else {
        info!(mode = %request.mode, "unsupported mode");
        fail(ErrorCode::IllegalOperation, "Unsupported transfer mode").await;
        return;
    };
    let path = match normalize(&request.filename) {
        Ok(p) => p,
        Err(e) => {
            info!(error = %e, "request refused");
            match e {
                PathError::Empty => fail(ErrorCode::FileNotFound, "File not found").await,
                PathError::Nul | PathError::Traversal => {
                    fail(ErrorCode::AccessViolation, "Access violation").await
                }
            }
            return;
        }
    };
    let opened = {
        let source = source.clone();
        let path = path.clone();
        tokio::task::spawn_blocking(move || source.open(&path)).await
    };
    let content = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            match &e {
                OpenError::NotFound => info!("file not found"),
                e => warn!(error = %e, "cannot open"),
            }
            fail(e.tftp_code(), e.client_message()).await;
            return;
        }
        Err(e) => {
            warn!(error = %e, "source panicked");
            fail(ErrorCode::NotDefined, "Read error").await;
            return;
        }
    };

    let tsize = match mode {
        Mode::Octet => Some(content.len()),
        Mode::Netascii => None,
    };
    let options: Vec<(&str, &str)> = request
        .options
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let negotiated = negotiate(&options, &config.limits(), tsize);
    let oack = (!negotiated.oack.is_empty()).then(|| {
        let mut out = Vec::new();
        Packet::Oack {
            options: negotiated
                .oack
                .iter()
                .map(|(n, v)| (*n, v.as_str()))
                .collect(),
        }
        .encode(&mut out);
        out
    });
    let size = content.len();
    let params = Params {
        blksize: negotiated.blksize,
        windowsize: negotiated.windowsize,
        timeout: negotiated.timeout,
        retries: config.retries,
        oack,
        gso: config.udp_gso,
    };
    debug!(
        mode = mode.as_str(),
        blksize = params.blksize,
        windowsize = params.windowsize,
        size,
        "transfer starting"
    );
    let started = Instant::now();
    let transfer = Transfer::new(socket, peer, BlockReader::new(content, mode), params);
    match transfer.run().await {
        Ok(stats) => info!(
            bytes = stats.bytes,
            blocks = stats.blocks,
            resent_windows = stats.retransmitted_windows,
            mib_s = format_args!("{:.1}", transfer::rate_mib_s(stats.bytes, started)),
            "transfer complete"
        ),
        // PXE ROMs routinely ask for tsize and then abort with an ERROR to
        // reopen with their real parameters; that is not worth a warning.
        Err(TransferError::Peer { code, message }) => {
            debug!(code, message, "client ended transfer")
        }
        Err(e) => warn!(error = %e, "transfer failed"),
    }
}

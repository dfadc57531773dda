//! Sockets and the receive loop around the [`Engine`].

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{Config, Reservation};
use crate::engine::{Engine, Listener, RecvCtx};
use crate::error::Error;
use crate::hooks::Hooks;
use crate::leases::Lease;
use crate::mac::Mac;

/// Largest datagram we accept; DHCP messages are far smaller but relays
/// and jumbo-frame clients may exceed the classic 576.
const MAX_DATAGRAM: usize = 4096;
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// A running DHCP server. Cheap to clone: clones share the sockets and
/// state, so one task can `run()` while others manage reservations.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Mutex<Engine>,
    sock: UdpSocket,
    pxe: Option<UdpSocket>,
    stop: watch::Sender<bool>,
}

enum Ev {
    Packet(Listener, io::Result<(usize, SocketAddr)>),
    Tick,
    Stop,
}

impl Server {
    /// Binds the sockets and loads the lease database. Must be called
    /// inside a tokio runtime.
    pub async fn bind(config: Config, hooks: impl Hooks) -> io::Result<Server> {
        let iface = config.interface.clone();
        let sock = make_socket(config.listen, iface.as_deref())?;
        let pxe = match config.pxe_listen {
            Some(a) => Some(make_socket(a, iface.as_deref())?),
            None => None,
        };
        let engine = Engine::new(config, Arc::new(hooks))?;
        info!(addr = %sock.local_addr()?, mode = ?engine.config().mode, "DHCP server listening");
        let (stop, _) = watch::channel(false);
        Ok(Server {
            inner: Arc::new(Inner {
                engine: Mutex::new(engine),
                sock,
                pxe,
                stop,
            }),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.sock.local_addr()
    }

    /// Address of the PXE (4011) socket, if configured.
    pub fn pxe_local_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.inner.pxe.as_ref().map(|s| s.local_addr())
    }

    /// Serves until [`Server::shutdown`] is called. Per-packet errors are
    /// logged, never fatal.
    pub async fn run(&self) -> io::Result<()> {
        let mut stop = self.inner.stop.subscribe();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut pxe_buf = vec![0u8; MAX_DATAGRAM];
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            let ev = tokio::select! {
                _ = stop.changed() => Ev::Stop,
                r = self.inner.sock.recv_from(&mut buf) => Ev::Packet(Listener::Dhcp, r),
                r = recv_opt(self.inner.pxe.as_ref(), &mut pxe_buf) => Ev::Packet(Listener::Pxe, r),
                _ = tick.tick() => Ev::Tick,
            };
            match ev {
                Ev::Stop => break,
                Ev::Tick => self.engine().housekeeping(SystemTime::now()),
                Ev::Packet(listener, Ok((n, src))) => {
                    let (sock, data) = match listener {
                        Listener::Dhcp => (&self.inner.sock, &buf[..n]),
                        Listener::Pxe => match self.inner.pxe.as_ref() {
                            Some(s) => (s, &pxe_buf[..n]),
                            None => continue,
                        },
                    };
                    self.serve(sock, data, RecvCtx { src, listener }).await;
                }
                Ev::Packet(_, Err(e)) => {
                    // E.g. ICMP errors surfacing on the socket; don't spin.
                    debug!(error = %e, "recv failed");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        info!("DHCP server stopped");
        Ok(())
    }

    async fn serve(&self, sock: &UdpSocket, data: &[u8], ctx: RecvCtx) {
        let reply = self.engine().handle(data, &ctx, SystemTime::now());
        let Some(reply) = reply else { return };
        let bytes = match reply.encode() {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode reply");
                return;
            }
        };
        if let Err(e) = sock.send_to(&bytes, reply.dest).await {
            debug!(dest = %reply.dest, error = %e, "send failed");
        }
    }

    /// Makes `run` return. Idempotent.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    pub fn add_reservation(&self, r: Reservation) -> Result<(), Error> {
        self.engine().add_reservation(r)
    }

    pub fn remove_reservation(&self, mac: Mac) -> Option<Reservation> {
        self.engine().remove_reservation(mac)
    }

    pub fn reservations(&self) -> Vec<Reservation> {
        self.engine().reservations()
    }

    /// Live bound leases.
    pub fn leases(&self) -> Vec<Lease> {
        self.engine().leases(SystemTime::now())
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock cannot leave the lease table
        // half-updated in a way worse than stopping DHCP for the rack.
        self.inner.engine.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn recv_opt(sock: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

fn make_socket(addr: SocketAddr, iface: Option<&str>) -> io::Result<UdpSocket> {
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("DHCP socket {addr}: {e}"));
    let s =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(ctx)?;
    s.set_reuse_address(true).map_err(ctx)?;
    // Replies to unconfigured clients go to 255.255.255.255.
    s.set_broadcast(true).map_err(ctx)?;
    if let Some(i) = iface {
        s.bind_device(Some(i.as_bytes())).map_err(ctx)?;
    }
    // Whole racks power on at once; absorb the burst instead of dropping.
    if let Err(e) = s.set_recv_buffer_size(4 << 20) {
        debug!(error = %e, "could not enlarge receive buffer");
    }
    s.set_nonblocking(true).map_err(ctx)?;
    s.bind(&addr.into()).map_err(ctx)?;
    UdpSocket::from_std(s.into())
}

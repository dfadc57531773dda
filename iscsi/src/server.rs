//! The listener, the connection threads, and the table of live sessions
//! used for TSIH allocation, session reinstatement and fencing.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::login::LoginResult;
use crate::{Config, Error, Nexus, Registry};

/// How long fencing and reinstatement wait for a session's thread to stop
/// touching the target.
const STOP_WAIT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the session table down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct SessionEntry {
    tsih: u16,
    nexus: Nexus,
    fenced: Arc<AtomicBool>,
    stream: TcpStream,
    done: Mutex<bool>,
    cv: Condvar,
}

impl SessionEntry {
    fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn wait(&self, deadline: Instant) -> bool {
        let mut done = lock(&self.done);
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = match self.cv.wait_timeout(done, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

/// State shared by the listener and every connection thread.
pub(crate) struct Shared {
    pub config: Config,
    pub registry: Arc<dyn Registry>,
    sessions: Mutex<HashMap<u16, Arc<SessionEntry>>>,
    next_tsih: Mutex<u16>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    conns_cv: Condvar,
    next_conn: AtomicU64,
    shutting_down: AtomicBool,
}

/// Keeps a session in the table while its connection runs.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    entry: Arc<SessionEntry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut map = lock(&self.shared.sessions);
            if map
                .get(&self.entry.tsih)
                .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
            {
                map.remove(&self.entry.tsih);
            }
        }
        *lock(&self.entry.done) = true;
        self.entry.cv.notify_all();
    }
}

impl Shared {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn allocate_tsih(&self) -> u16 {
        let sessions = lock(&self.sessions);
        let mut next = lock(&self.next_tsih);
        loop {
            *next = next.wrapping_add(1);
            if *next != 0 && !sessions.contains_key(&*next) {
                return *next;
            }
        }
    }

    pub fn session_exists(&self, tsih: u16, initiator: &str, isid: [u8; 6]) -> bool {
        lock(&self.sessions)
            .get(&tsih)
            .is_some_and(|e| e.nexus.initiator_name == initiator && e.nexus.isid == isid)
    }

    /// Enters a new session, first closing any session it reinstates (same
    /// initiator, ISID and target, RFC 7143 §6.3.5) and waiting until that
    /// session has stopped issuing commands.
    pub fn register(
        self: &Arc<Self>,
        result: &LoginResult,
        nexus: Nexus,
        stream: &TcpStream,
        fenced: Arc<AtomicBool>,
    ) -> Result<Registration, Error> {
        let old: Vec<Arc<SessionEntry>> = lock(&self.sessions)
            .values()
            .filter(|e| {
                Some(e.tsih) == result.replaces_tsih
                    || (e.nexus.initiator_name == nexus.initiator_name
                        && e.nexus.isid == nexus.isid
                        && e.nexus.target_name == nexus.target_name)
            })
            .cloned()
            .collect();
        let deadline = Instant::now() + STOP_WAIT;
        for e in &old {
            tracing::info!(initiator = %e.nexus.initiator_name, tsih = e.tsih, "reinstating session");
            e.fence();
        }
        for e in &old {
            e.wait(deadline);
        }
        let entry = Arc::new(SessionEntry {
            tsih: result.tsih,
            nexus,
            fenced,
            stream: stream.try_clone()?,
            done: Mutex::new(false),
            cv: Condvar::new(),
        });
        lock(&self.sessions).insert(result.tsih, entry.clone());
        Ok(Registration {
            shared: self.clone(),
            entry,
        })
    }
}

/// A running iSCSI target server.
pub struct Server {
    shared: Arc<Shared>,
    local: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Binds the listener and starts serving on a background thread.
    pub fn bind(config: Config, registry: Arc<dyn Registry>) -> io::Result<Server> {
        let listener = TcpListener::bind(config.listen)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            registry,
            sessions: Mutex::new(HashMap::new()),
            next_tsih: Mutex::new(0),
            conns: Mutex::new(HashMap::new()),
            conns_cv: Condvar::new(),
            next_conn: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("iscsi-accept".into())
            .spawn(move || accept_loop(listener, s))?;
        tracing::info!(%local, "iSCSI target listening");
        Ok(Server {
            shared,
            local,
            accept: Mutex::new(Some(accept)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Fencing: closes every live session on `target` whose initiator name
    /// `keep` rejects, and waits (bounded) until their threads have stopped
    /// issuing commands; returns how many. Also used when a target is
    /// removed (keep = |_| false).
    pub fn close_sessions(&self, target: &str, keep: &dyn Fn(&str) -> bool) -> usize {
        let victims: Vec<Arc<SessionEntry>> = lock(&self.shared.sessions)
            .values()
            .filter(|e| e.nexus.target_name == target && !keep(&e.nexus.initiator_name))
            .cloned()
            .collect();
        for e in &victims {
            e.fence();
        }
        let deadline = Instant::now() + STOP_WAIT;
        for e in &victims {
            if !e.wait(deadline) {
                tracing::warn!(initiator = %e.nexus.initiator_name, "session did not stop in time");
            }
        }
        victims.len()
    }

    /// Nexus of every live normal session (for status pages and tests).
    pub fn sessions(&self) -> Vec<Nexus> {
        lock(&self.shared.sessions)
            .values()
            .map(|e| e.nexus.clone())
            .collect()
    }

    /// Stops accepting, closes every connection and waits (bounded) for
    /// their threads to finish. Idempotent.
    pub fn shutdown(&self) {
        if self.shared.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wake the blocking accept() with a connection of our own.
        let mut wake = self.local;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(h) = lock(&self.accept).take() {
            let _ = h.join();
        }
        let sessions: Vec<Arc<SessionEntry>> =
            lock(&self.shared.sessions).values().cloned().collect();
        for e in &sessions {
            e.fence();
        }
        let mut conns = lock(&self.shared.conns);
        for s in conns.values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + STOP_WAIT;
        while !conns.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            conns = match self.shared.conns_cv.wait_timeout(conns, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.is_shutting_down() {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                // Out of descriptors and the like: back off instead of
                // spinning.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = lock(&shared.conns);
            if conns.len() >= shared.config.max_connections {
                tracing::warn!("connection limit reached; refusing a connection");
                continue;
            }
            match stream.try_clone() {
                Ok(c) => {
                    conns.insert(id, c);
                }
                Err(_) => continue,
            }
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("iscsi-conn".into())
            .spawn(move || {
                crate::connection::serve(stream, s.clone());
                let mut conns = lock(&s.conns);
                conns.remove(&id);
                s.conns_cv.notify_all();
            });
        if spawned.is_err() {
            lock(&shared.conns).remove(&id);
        }
    }
}

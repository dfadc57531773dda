//! Strato's read-only TFTP server, used by the provisioner to PXE-boot racks.
//!
//! Supported: RFC 1350 read requests in octet and netascii mode (write
//! requests are refused with ERROR 2), RFC 2347 option negotiation, RFC 2348
//! blksize, RFC 2349 timeout and tsize, RFC 7440 windowsize, and block
//! numbers that roll over past 65535 to 0 for files above 32 MiB at 512-byte
//! blocks.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let server = tftp::Server::bind(tftp::Config {
//!     listen: "192.0.2.1:69".parse().unwrap(),
//!     root: "/srv/tftp".into(),
//!     ..tftp::Config::default()
//! })
//! .await?;
//! let running = server.spawn();
//! // ...
//! running.shutdown().await
//! # }
//! ```
//!
//! Generated files (per-host iPXE scripts and the like) are served through
//! the [`Source`] hook, most simply an [`Overlay`] over [`FsRoot`] passed to
//! [`Server::bind_with_source`].
//!
//! # Why not an existing crate
//!
//! The `tftpd` crate supports windowsize but is built on blocking
//! `std::net` sockets with a thread per transfer, has no way to serve
//! generated content, and includes write support we would have to fence
//! off; `async-tftp` is async (on smol/async-std, not tokio) but has no
//! RFC 7440 windowsize, which is where the speed-up over dnsmasq comes from.
//! A read-only server is small enough that owning it costs less than
//! adapting either.
//!
//! # Layout
//!
//! - [`packet`]: wire format, parse and serialize.
//! - [`options`]: RFC 2347 negotiation.
//! - [`root`]: safe path resolution under the served directory.
//! - [`source`]: the content hook.
//! - `blocks`: cutting content into octet/netascii payloads.
//! - `transfer`: one transfer's window / retransmit state machine.
//! - `window`: the window's packets and sending them (UDP GSO when the
//!   kernel has it).
//! - `server`: the request listener.

mod blocks;
mod config;
pub mod options;
pub mod packet;
pub mod root;
mod server;
pub mod source;
mod transfer;
mod window;

pub use config::Config;
pub use root::FsRoot;
pub use server::{RunningServer, Server, ShutdownHandle};
pub use source::{Content, Empty, OpenError, Overlay, Source};
pub use transfer::{Stats, TransferError};

//! The packets of one window, kept ready to (re)send, and the sending itself.
//!
//! Slots live back to back in one buffer so a run of consecutive blocks is a
//! run of consecutive bytes. With UDP generic segmentation offload
//! (`UDP_SEGMENT`, Linux 4.18+) such a run goes to the kernel in one
//! `sendto` and is split into one datagram per slot below the socket; every
//! slot but the final block is full-size, which is exactly GSO's contract.
//! On loopback this halves the server's per-packet cost, and on NICs with
//! UDP segmentation offload the split happens in hardware. Where GSO is not
//! available or a send is refused, the window falls back to one `sendto`
//! per packet for the rest of the transfer.

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tracing::debug;

use crate::blocks::BlockReader;
use crate::packet::{self, DATA_HEADER_LEN};

/// The kernel's cap on segments per GSO send (UDP_MAX_SEGMENTS on older
/// kernels; newer ones allow more, but 64 is safe everywhere).
const GSO_MAX_SEGMENTS: usize = 64;
/// A GSO send is still one IP packet before segmentation and must fit its
/// 16-bit length.
const GSO_MAX_BYTES: usize = 65_000;
/// `UDP_SEGMENT` applies to every send on the socket, so it is only safe
/// when no other packet we send there (ERROR, at most ~405 bytes) can be
/// longer than a slot and get cut up.
const GSO_MIN_SLOT: usize = 512;

pub(crate) struct Window {
    buf: Vec<u8>,
    /// Bytes used in each slot (header included); only the final block of a
    /// transfer is shorter than `slot`.
    lens: Vec<usize>,
    slot: usize,
    /// Segments per GSO send, or `None` to send packet by packet.
    gso_segments: Option<usize>,
}

impl Window {
    pub(crate) fn new(blksize: u16, windowsize: u16) -> Window {
        let slot = DATA_HEADER_LEN + usize::from(blksize);
        let slots = usize::from(windowsize.max(1));
        Window {
            buf: vec![0u8; slot * slots],
            lens: vec![0; slots],
            slot,
            gso_segments: None,
        }
    }

    /// Switches the socket to segmentation offload where it pays and is
    /// safe. Must come after the OACK, which may be longer than a slot.
    pub(crate) fn enable_gso(&mut self, socket: &UdpSocket) {
        let per_send = (GSO_MAX_BYTES / self.slot).min(GSO_MAX_SEGMENTS);
        if self.lens.len() > 1
            && per_send > 1
            && self.slot >= GSO_MIN_SLOT
            && enable_gso(socket, self.slot)
        {
            self.gso_segments = Some(per_send);
        }
    }

    fn slots(&self) -> u64 {
        self.lens.len() as u64
    }

    /// Reads block `index` into its slot and returns the payload size.
    pub(crate) fn produce(&mut self, index: u64, reader: &mut BlockReader) -> io::Result<usize> {
        let i = (index % self.slots()) as usize;
        let start = i * self.slot;
        let packet = &mut self.buf[start..start + self.slot];
        packet::write_data_header(packet, index as u16);
        let n = reader.next_block(&mut packet[DATA_HEADER_LEN..])?;
        self.lens[i] = DATA_HEADER_LEN + n;
        Ok(n)
    }

    /// Sends blocks `from..=to`, all of which must be in the window.
    pub(crate) async fn send(
        &mut self,
        socket: &UdpSocket,
        peer: SocketAddr,
        from: u64,
        to: u64,
    ) -> io::Result<()> {
        let mut index = from;
        while index <= to {
            let first = (index % self.slots()) as usize;
            // Consecutive blocks are consecutive bytes until the ring wraps.
            let run = ((to - index + 1) as usize).min(self.lens.len() - first);
            match self.gso_segments {
                Some(per_send) => {
                    let mut done = 0;
                    while done < run {
                        let n = per_send.min(run - done);
                        let s = first + done;
                        let start = s * self.slot;
                        let end = (s + n - 1) * self.slot + self.lens[s + n - 1];
                        if let Err(e) = socket.send_to(&self.buf[start..end], peer).await {
                            if n == 1 {
                                return Err(e);
                            }
                            // Drivers without checksum offload reject GSO
                            // with EIO; degrade instead of failing the boot.
                            debug!(error = %e, "GSO send refused, sending per packet");
                            self.gso_segments = None;
                            for k in s..first + run {
                                self.send_one(socket, peer, k).await?;
                            }
                            break;
                        }
                        done += n;
                    }
                }
                None => {
                    for k in first..first + run {
                        self.send_one(socket, peer, k).await?;
                    }
                }
            }
            index += run as u64;
        }
        Ok(())
    }

    async fn send_one(&self, socket: &UdpSocket, peer: SocketAddr, slot: usize) -> io::Result<()> {
        let start = slot * self.slot;
        socket
            .send_to(&self.buf[start..start + self.lens[slot]], peer)
            .await?;
        Ok(())
    }
}

/// Sets `UDP_SEGMENT` so sends larger than one slot are segmented by the
/// kernel. Sends no larger than a slot (OACK, ERROR, a lone block) are
/// unaffected.
#[cfg(target_os = "linux")]
fn enable_gso(socket: &UdpSocket, segment: usize) -> bool {
    use std::os::fd::AsRawFd;
    const UDP_SEGMENT: libc::c_int = 103;
    let Ok(size) = libc::c_int::try_from(segment) else {
        return false;
    };
    // SAFETY: a plain setsockopt on a socket we own, with a pointer to a
    // live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(error = %io::Error::last_os_error(), "UDP_SEGMENT unavailable");
    }
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn enable_gso(_socket: &UdpSocket, _segment: usize) -> bool {
    false
}

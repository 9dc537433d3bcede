//! `AF_PACKET` sockets: sending an announcement on one interface, and a
//! capture of every frame an interface receives (for tests and diagnostics).
//!
//! The one `unsafe` of the crate lives here. Neither rustix nor socket2 has
//! a safe `sockaddr_ll` (link-layer socket address), so `LinkAddr` implements
//! rustix's `SocketAddrArg` for the libc struct; every system call goes
//! through rustix's safe wrappers.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::net::addr::{SocketAddrArg, SocketAddrLen, SocketAddrOpaque};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// ETH_P_ALL: every protocol (linux/if_ether.h).
const ETH_P_ALL: u16 = 0x0003;

/// A `sockaddr_ll` naming an interface, a protocol and (for sending) the
/// link-layer destination.
struct LinkAddr(libc::sockaddr_ll);

impl LinkAddr {
    fn new(ifindex: u32, ethertype: u16, dst: Option<[u8; 6]>) -> io::Result<Self> {
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        let mut sll_addr = [0u8; 8];
        let mut sll_halen = 0;
        if let Some(dst) = dst {
            sll_addr[..6].copy_from_slice(&dst);
            sll_halen = 6;
        }
        Ok(LinkAddr(libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: ethertype.to_be(),
            sll_ifindex: ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen,
            sll_addr,
        }))
    }
}

// SAFETY: `f` gets a pointer to the `sockaddr_ll` we own, valid for the whole
// call, with exactly its size: what packet(7) sockets take as `sockaddr`.
unsafe impl SocketAddrArg for LinkAddr {
    unsafe fn with_sockaddr<R>(&self, f: impl FnOnce(*const SocketAddrOpaque, SocketAddrLen) -> R) -> R {
        let ptr: *const libc::sockaddr_ll = &self.0;
        f(ptr.cast(), std::mem::size_of::<libc::sockaddr_ll>() as SocketAddrLen)
    }
}

/// A send-only packet socket (`SOCK_DGRAM`, protocol 0 so it receives
/// nothing): the kernel adds the link-layer header for the destination given
/// with each frame. Opened in the network namespace of the calling thread,
/// and stays there.
#[derive(Debug)]
pub(crate) struct Sender(OwnedFd);

impl Sender {
    pub(crate) fn open() -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::PACKET,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        Ok(Sender(fd))
    }

    /// Send `payload` as one frame of `ethertype` to `dst` on `ifindex`.
    pub(crate) fn send(&self, ifindex: u32, ethertype: u16, dst: [u8; 6], payload: &[u8]) -> io::Result<()> {
        let to = LinkAddr::new(ifindex, ethertype, Some(dst))?;
        let n = rustix::net::sendto(self.0.as_fd(), payload, SendFlags::empty(), &to)?;
        if n != payload.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, format!("sent {n} of {} bytes", payload.len())));
        }
        Ok(())
    }
}

/// Every frame one interface receives, whole (link-layer header included).
/// Opened in the network namespace of the calling thread.
#[derive(Debug)]
pub struct Capture(OwnedFd);

impl Capture {
    /// Capture on interface `ifindex`; `recv` waits at most `timeout`.
    pub fn open(ifindex: u32, timeout: Duration) -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::PACKET,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(rustix::net::eth::ALL),
        )?;
        rustix::net::bind(&fd, &LinkAddr::new(ifindex, ETH_P_ALL, None)?)?;
        rustix::net::sockopt::set_socket_timeout(&fd, rustix::net::sockopt::Timeout::Recv, Some(timeout))?;
        Ok(Capture(fd))
    }

    /// The next frame, or `None` when none came within the timeout.
    pub fn recv(&self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 65536];
        match rustix::net::recv(self.0.as_fd(), &mut buf[..], RecvFlags::TRUNC) {
            Ok((_, len)) => {
                buf.truncate(len.min(buf.len()));
                Ok(Some(buf))
            }
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

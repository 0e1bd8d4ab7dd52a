//! Multicast discovery sockets (see `docs/protocol.md`, "2. Announcement
//! datagram"): the thin I/O shell around the
//! pure [`Announcement`] codec.
//!
//! One UDP socket per agent, bound to the group's port with `SO_REUSEADDR`
//! and `SO_REUSEPORT` (several users' agents on one host each get every
//! datagram), joined to the group on the default interface, with loopback
//! on so that envoys on one host hear each other. Sending uses a TTL of 1:
//! announcements stay on the local segment; farther peers are listed in
//! `cross_subnet_peers`. Received datagrams are parsed with
//! [`Announcement::parse`]; garbage is dropped with a debug log.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::announce::{Announcement, MAX_DATAGRAM_LEN};

/// A joined multicast socket.
#[derive(Debug)]
pub struct Discovery {
    socket: UdpSocket,
    group: SocketAddrV4,
}

impl Discovery {
    /// Bind the group's port and join the group. Must be called inside a
    /// tokio runtime.
    pub fn bind(group: SocketAddrV4) -> std::io::Result<Discovery> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())).into())?;
        s.join_multicast_v4(group.ip(), &Ipv4Addr::UNSPECIFIED)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot join multicast group {}: {e} (no route for multicast? \
                         set `multicast: off` and list peers in cross_subnet_peers)",
                        group.ip()
                    ),
                )
            })?;
        s.set_multicast_loop_v4(true)?;
        s.set_multicast_ttl_v4(1)?;
        s.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(s.into())?;
        Ok(Discovery { socket, group })
    }

    /// Send one announcement to the group.
    pub async fn announce(&self, a: &Announcement) -> std::io::Result<()> {
        self.socket
            .send_to(&a.encode(), self.group)
            .await
            .map(|_| ())
    }

    /// Wait for the next valid announcement; garbage is skipped.
    pub async fn recv(&self) -> std::io::Result<(Announcement, SocketAddr)> {
        // One byte more than the cap, so an oversized datagram is seen as such.
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN + 1];
        loop {
            let (n, from) = self.socket.recv_from(&mut buf).await?;
            match Announcement::parse(&buf[..n]) {
                Ok(a) => return Ok((a, from)),
                Err(e) => tracing::debug!("dropped a datagram from {from}: {e}"),
            }
        }
    }
}

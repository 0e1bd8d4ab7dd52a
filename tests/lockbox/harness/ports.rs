//! Loopback ports for the agents of a test mesh. Ports come from below the
//! kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), so
//! no connect(2), curl or agent of a parallel test is handed one of them by
//! the kernel; a process-wide counter with a per-run random start hands
//! each out once, and each is checked free by binding it. It must not hand
//! out a port it has not checked, nor one from the ephemeral range while
//! the range below it has room.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The lowest port handed out.
const LOW: u16 = 10_000;

/// The next port offset to try (from a random start, see [`window`]).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// `(low, size, start)`: the window `LOW..ephemeral_low`, and this run's
/// random starting offset into it (so that two test processes at once do
/// not walk the same ports in step).
fn window() -> (u16, u32, u32) {
    static WINDOW: OnceLock<(u16, u32, u32)> = OnceLock::new();
    *WINDOW.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32_768);
        let size = u32::from(ephemeral_low.saturating_sub(LOW)).max(1);
        let start = rand::random::<u32>() % size;
        (LOW, size, start)
    })
}

/// `n` distinct loopback ports outside the ephemeral range, each free (it
/// could be bound) when handed out, and never handed out twice by this
/// process.
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let (low, size, start) = window();
    let mut ports = Vec::with_capacity(n);
    for _ in 0..size {
        if ports.len() == n {
            break;
        }
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % size;
        let port = low + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            ports.push(port);
        }
    }
    assert_eq!(
        ports.len(),
        n,
        "no {n} free loopback ports below the ephemeral range"
    );
    ports
}

//! systemd's readiness protocol: a datagram such as `READY=1` to the
//! socket named by `NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket), as `sd_notify(3)` sends it, without linking libsystemd. The
//! unit (`Type=notify`) waits for `READY=1`.
//!
//! It must not decide when the agent is ready or stopping (the agent
//! does), nor fail the agent: without `NOTIFY_SOCKET` it does nothing, and
//! a failed send is logged once per call.

use std::os::unix::net::UnixDatagram;

/// The agent mounts `~/lockbox` and answers on its control socket.
pub const READY: &str = "READY=1";
/// The agent has begun to stop.
pub const STOPPING: &str = "STOPPING=1";

/// Send `state` (`KEY=VALUE` lines) to systemd when it asked for it.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&target, state) {
        tracing::warn!(
            "cannot tell systemd {state:?} on NOTIFY_SOCKET {}: {e}",
            target.to_string_lossy()
        );
    }
}

fn send(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?
    } else {
        let addr = crate::paths::SocketAddr::of(std::path::Path::new(target))?;
        socket.send_to(state.as_bytes(), addr.path())?
    };
    if sent != state.len() {
        return Err(std::io::Error::other("the datagram was cut short"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), READY).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], READY.as_bytes());
    }
}

//! The UDP socket the players' QUIC endpoint runs on.
//!
//! Every QUIC player's inputs and acknowledgements arrive on this one
//! socket, and one runtime thread drains it between snapshots. With the
//! kernel's default receive buffer (208 KiB on Debian) a busy router
//! dropped datagrams whenever that thread was away for a few milliseconds:
//! 10,504 in 100 s at 600 players on one core (`ss -uam`, the `d` count),
//! each a lost input (its ack then waits for the next input, 100 ms later)
//! or a lost acknowledgement (a QUIC retransmission). So the socket asks
//! for [`BUFFER`] each way; the kernel grants at most `net.core.rmem_max`
//! (and `wmem_max`), and the router logs what it got and warns when that
//! is far less (docs/operations.md, "UDP buffers").

use std::net::{SocketAddr, UdpSocket};

/// Receive and send buffer asked for: about 300 ms of a thousand players'
/// inputs and acknowledgements.
pub const BUFFER: usize = 4 << 20;

/// A UDP socket bound to `addr` with buffers of up to [`BUFFER`].
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Asking for more than the system allows is not an error: the kernel
    // grants its maximum, read back below (Linux reports double the size
    // for its own bookkeeping).
    let _ = socket.set_recv_buffer_size(BUFFER);
    let _ = socket.set_send_buffer_size(BUFFER);
    socket.bind(&addr.into())?;
    let (recv, send) = (socket.recv_buffer_size()?, socket.send_buffer_size()?);
    if recv < BUFFER {
        tracing::warn!(
            granted = recv,
            wanted = BUFFER,
            "the QUIC socket's receive buffer is smaller than asked: a busy \
             router will drop players' datagrams; raise net.core.rmem_max \
             (docs/operations.md, \"UDP buffers\")"
        );
    } else {
        tracing::debug!(recv, send, "QUIC socket buffers");
    }
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctl(name: &str) -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The socket gets as much as the system allows, up to BUFFER: more
    /// than the default whenever the maximum is above it.
    #[test]
    fn the_socket_gets_the_buffers_the_system_allows() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(socket.local_addr().unwrap().port() != 0);
        let granted = socket2::SockRef::from(&socket);
        let (recv, send) = (
            granted.recv_buffer_size().unwrap(),
            granted.send_buffer_size().unwrap(),
        );
        let (Some(rmax), Some(rdefault), Some(wmax)) = (
            sysctl("rmem_max"),
            sysctl("rmem_default"),
            sysctl("wmem_max"),
        ) else {
            return; // not Linux: nothing to compare with
        };
        assert!(recv >= BUFFER.min(rmax), "{recv}, rmem_max {rmax}");
        assert!(send >= BUFFER.min(wmax), "{send}, wmem_max {wmax}");
        if rmax > rdefault {
            assert!(recv > rdefault, "{recv}, rmem_default {rdefault}");
        }
    }
}

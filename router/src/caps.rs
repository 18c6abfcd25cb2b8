//! Per-address connection caps of the player ports: how many connections
//! one client address (IPv4 address, or IPv6 /64) may hold open at once,
//! over telnet, telnet over TLS and QUIC together. One host opening
//! connections without end would otherwise hold every session slot and
//! login deadline of the server. The counting is `tessera_auth`'s
//! `AddressCaps` (the HTTP ports use it too); this adds the metric and the
//! telnet refusal.

use std::net::IpAddr;
use std::sync::Arc;
pub use tessera_auth::{AddressCaps, AddressSlot};

/// Connections one address may hold by default: a household or a small
/// office behind one NAT, with a few characters each.
pub const CONNECTIONS_PER_ADDRESS: usize = 16;

/// A place for a connection from `address` over `transport`, or `None`
/// (counted in `tessera_connections_refused_total{reason="per_address"}`).
pub fn admit(
    caps: &Arc<AddressCaps>,
    address: IpAddr,
    transport: &'static str,
) -> Option<AddressSlot> {
    let slot = caps.admit(address);
    if slot.is_none() {
        metrics::counter!("tessera_connections_refused_total", "reason" => "per_address", "transport" => transport)
            .increment(1);
        tracing::info!(address = %address, transport, cap = caps.per_address(), "connection refused: too many from this address");
    }
    slot
}

/// What a refused telnet client reads before the connection closes.
pub fn refusal_text(per_address: usize) -> String {
    format!(
        "Too many connections from your address (at most {per_address}); close one and try again.\r\n"
    )
}

//! Per-address connection caps: how many connections one client address
//! (IPv4 address, or IPv6 /64) may hold open at once, over telnet, telnet
//! over TLS and QUIC together. One host opening connections without end
//! would otherwise hold every session slot and login deadline of the server.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use tessera_auth::{network_of, AddressSet};

/// Connections one address may hold by default: a household or a small
/// office behind one NAT, with a few characters each.
pub const CONNECTIONS_PER_ADDRESS: usize = 16;

/// Counts open connections per client network.
#[derive(Debug)]
pub struct AddressCaps {
    per_address: usize,
    exempt: AddressSet,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct AddressSlot {
    caps: Arc<AddressCaps>,
    /// `None` for an exempt address (nothing was counted).
    network: Option<IpAddr>,
}

impl AddressCaps {
    /// At most `per_address` connections per network (0: no cap); addresses
    /// in `exempt` are not counted.
    pub fn new(per_address: usize, exempt: AddressSet) -> Arc<AddressCaps> {
        Arc::new(AddressCaps {
            per_address,
            exempt,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a connection from `address`, or `None` when its network
    /// holds the cap already (the refusal is counted in
    /// `tessera_connections_refused_total{reason="per_address"}`).
    pub fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        transport: &'static str,
    ) -> Option<AddressSlot> {
        if self.per_address == 0 || self.exempt.contains(address) {
            return Some(AddressSlot {
                caps: self.clone(),
                network: None,
            });
        }
        let network = network_of(address);
        let mut open = self.open.lock();
        let count = open.entry(network).or_insert(0);
        if *count >= self.per_address {
            drop(open);
            metrics::counter!("tessera_connections_refused_total", "reason" => "per_address", "transport" => transport)
                .increment(1);
            tracing::info!(address = %address, transport, cap = self.per_address, "connection refused: too many from this address");
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            caps: self.clone(),
            network: Some(network),
        })
    }

    /// The cap (0: none).
    pub fn per_address(&self) -> usize {
        self.per_address
    }

    /// Connections counted for `address`'s network now.
    pub fn open_from(&self, address: IpAddr) -> usize {
        self.open
            .lock()
            .get(&network_of(address))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some(network) = self.network {
            let mut open = self.caps.open.lock();
            if let Some(count) = open.get_mut(&network) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&network);
                }
            }
        }
    }
}

/// What a refused telnet client reads before the connection closes.
pub fn refusal_text(per_address: usize) -> String {
    format!(
        "Too many connections from your address (at most {per_address}); close one and try again.\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_network_holds_at_most_the_cap_and_dropping_frees_a_place() {
        let caps = AddressCaps::new(2, AddressSet::none());
        let a = caps.admit(ip("192.0.2.1"), "telnet").unwrap();
        let _b = caps.admit(ip("192.0.2.1"), "quic").unwrap();
        assert!(caps.admit(ip("192.0.2.1"), "telnet").is_none());
        // Another address is not affected; the same IPv6 /64 is one network.
        let _c = caps.admit(ip("192.0.2.2"), "telnet").unwrap();
        let _d = caps.admit(ip("2001:db8::1"), "quic").unwrap();
        let _e = caps.admit(ip("2001:db8::2"), "quic").unwrap();
        assert!(caps.admit(ip("2001:db8::3"), "quic").is_none());
        drop(a);
        assert_eq!(caps.open_from(ip("192.0.2.1")), 1);
        assert!(caps.admit(ip("192.0.2.1"), "telnet").is_some());
    }

    #[test]
    fn exempt_addresses_and_a_zero_cap_count_nothing() {
        let caps = AddressCaps::new(1, AddressSet::loopback());
        let held: Vec<_> = (0..5)
            .map(|_| caps.admit(ip("127.0.0.1"), "telnet").unwrap())
            .collect();
        assert_eq!(caps.open_from(ip("127.0.0.1")), 0);
        drop(held);
        let none = AddressCaps::new(0, AddressSet::none());
        let _held: Vec<_> = (0..5)
            .map(|_| none.admit(ip("192.0.2.1"), "telnet").unwrap())
            .collect();
    }
}

//! Client addresses as the abuse limits see them: one IPv4 address, or one IPv6 /64 (a host
//! usually owns a whole /64, so counting single IPv6 addresses would count nothing), and the
//! set of networks exempt from the per-address limits.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use parking_lot::Mutex;

use ipnet::IpNet;

/// The network a per-address limit counts `address` under: IPv4 as is (IPv4-mapped IPv6
/// too), IPv6 as its /64.
pub fn network_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Networks whose clients the per-address limits (account creation, connections) leave
/// alone. The default is loopback (`127.0.0.0/8`, `::1`), as fail2ban's `ignoreip` is: local
/// bot swarms and tests connect from there. A deployment that puts a proxy on the same host
/// in front of the game, so that every player seems to come from loopback, sets it to
/// `none` (docs/security.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressSet {
    nets: Vec<IpNet>,
}

impl AddressSet {
    /// No address is exempt.
    pub fn none() -> AddressSet {
        AddressSet { nets: Vec::new() }
    }

    /// `127.0.0.0/8` and `::1`.
    pub fn loopback() -> AddressSet {
        "127.0.0.0/8,::1".parse().expect("valid networks")
    }

    /// Whether `address` (IPv4-mapped IPv6 read as IPv4) is in the set.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|net| net.contains(&address))
    }
}

impl Default for AddressSet {
    fn default() -> Self {
        AddressSet::loopback()
    }
}

/// `none`, or networks and addresses separated by commas: `127.0.0.0/8,::1,10.1.2.3`.
impl FromStr for AddressSet {
    type Err = String;

    fn from_str(text: &str) -> Result<AddressSet, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("none") || text.is_empty() {
            return Ok(AddressSet::none());
        }
        let nets = text
            .split(',')
            .map(|part| {
                let part = part.trim();
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        format!("{part:?} is neither an address nor a network such as 10.0.0.0/8")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AddressSet { nets })
    }
}

impl fmt::Display for AddressSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nets.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.nets.iter().map(|n| n.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// Counts open connections per client network (IPv4 address or IPv6 /64) against a cap:
/// the player ports of routers and telnet gateways, and the HTTP ports.
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
    /// holds the cap already.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(network_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(network_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn sets_parse_print_and_match() {
        let set: AddressSet = "10.0.0.0/8, 192.0.2.1 ,2001:db8::/32".parse().unwrap();
        assert!(set.contains(ip("10.200.3.4")));
        assert!(set.contains(ip("::ffff:10.0.0.1")));
        assert!(set.contains(ip("192.0.2.1")));
        assert!(!set.contains(ip("192.0.2.2")));
        assert!(set.contains(ip("2001:db8:ffff::9")));
        assert_eq!(set.to_string(), "10.0.0.0/8,192.0.2.1/32,2001:db8::/32");
        assert_eq!(set.to_string().parse::<AddressSet>().unwrap(), set);

        let default = AddressSet::default();
        assert!(default.contains(ip("127.0.0.2")));
        assert!(default.contains(ip("::1")));
        assert!(!default.contains(ip("192.0.2.1")));
        assert_eq!("none".parse::<AddressSet>().unwrap(), AddressSet::none());
        assert!(!AddressSet::none().contains(ip("127.0.0.1")));

        let err = "10.0.0.0/8,lan".parse::<AddressSet>().unwrap_err();
        assert!(err.contains("\"lan\""), "{err}");
        assert!("10.0.0.0/33".parse::<AddressSet>().is_err());
    }
}

#[cfg(test)]
mod caps_tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_network_holds_at_most_the_cap_and_dropping_frees_a_place() {
        let caps = AddressCaps::new(2, AddressSet::none());
        let a = caps.admit(ip("192.0.2.1")).unwrap();
        let _b = caps.admit(ip("192.0.2.1")).unwrap();
        assert!(caps.admit(ip("192.0.2.1")).is_none());
        // Another address is not affected; the same IPv6 /64 is one network.
        let _c = caps.admit(ip("192.0.2.2")).unwrap();
        let _d = caps.admit(ip("2001:db8::1")).unwrap();
        let _e = caps.admit(ip("2001:db8::2")).unwrap();
        assert!(caps.admit(ip("2001:db8::3")).is_none());
        drop(a);
        assert_eq!(caps.open_from(ip("192.0.2.1")), 1);
        assert!(caps.admit(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn exempt_addresses_and_a_zero_cap_count_nothing() {
        let caps = AddressCaps::new(1, AddressSet::loopback());
        let held: Vec<_> = (0..5)
            .map(|_| caps.admit(ip("127.0.0.1")).unwrap())
            .collect();
        assert_eq!(caps.open_from(ip("127.0.0.1")), 0);
        drop(held);
        let none = AddressCaps::new(0, AddressSet::none());
        let _held: Vec<_> = (0..5)
            .map(|_| none.admit(ip("192.0.2.1")).unwrap())
            .collect();
    }
}

//! [`AllowList`]: `--dns-allow`, the networks whose queries the DNS server answers.
//!
//! Like BIND's `allow-query`: a query from a source outside every listed network is answered
//! REFUSED, over UDP and TCP alike, rather than dropped, so a misconfigured client learns why
//! at once instead of timing out. The REFUSED reply carries at most the question and the OPT
//! record, so it is never larger than the query: no amplification.
//!
//! Addresses are compared in one form. An IPv4 client of a dual-stack socket (`[::]:8600`)
//! arrives as `::ffff:a.b.c.d`; it is taken as the IPv4 address it is, so `10.0.0.0/8`
//! matches it. An IPv6 network also contains the IPv4 addresses whose mapped form it
//! contains: `::ffff:10.0.0.0/104` is the same network as `10.0.0.0/8`, and `::/0` is
//! everyone.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The networks allowed to query the DNS server: `10.0.0.0/8,::1/128`. Never empty (no flag
/// means everyone, and is represented by no list at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<Network>,
}

/// One network: an address and a prefix length, with no bits set past the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

/// Why an `--dns-allow` entry is not a network. The message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowListError {
    /// Nothing between two commas (or no value at all).
    #[error("an empty entry; give networks as CIDR[,CIDR...], e.g. 127.0.0.0/8,::1/128")]
    Empty,
    /// The part before the `/` is not an IPv4 or IPv6 address.
    #[error("{entry:?}: {addr:?} is not an IPv4 or IPv6 address")]
    Address {
        /// The entry as given.
        entry: String,
        /// Its address part.
        addr: String,
    },
    /// The prefix length is not a number, or is longer than the address.
    #[error("{entry:?}: the prefix length must be a number from 0 to {max}")]
    Prefix {
        /// The entry as given.
        entry: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Bits are set past the prefix: likely a typo of the network or of the length.
    #[error("{entry:?}: bits are set past the /{prefix} prefix; did you mean {network}?")]
    HostBits {
        /// The entry as given.
        entry: String,
        /// The prefix length.
        prefix: u8,
        /// The network with those bits cleared.
        network: Network,
    },
}

// === impl AllowList ===

impl AllowList {
    /// Parses `CIDR[,CIDR...]`; a bare address is a network of that one address.
    pub fn parse(text: &str) -> Result<Self, AllowListError> {
        let networks = text
            .split(',')
            .map(Network::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { networks })
    }

    /// Whether queries from `source` are answered.
    pub fn allows(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.networks.iter().any(|n| n.contains(source))
    }

    /// The networks, in the order given.
    pub fn networks(&self) -> &[Network] {
        &self.networks
    }
}

impl FromStr for AllowList {
    type Err = AllowListError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, network) in self.networks.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{network}")?;
        }
        Ok(())
    }
}

// === impl Network ===

impl Network {
    /// Parses `ADDR/PREFIX` or a bare `ADDR` (a /32 or /128), surrounding spaces ignored.
    pub fn parse(entry: &str) -> Result<Self, AllowListError> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(AllowListError::Empty);
        }
        let (addr_text, prefix_text) = match entry.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (entry, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| AllowListError::Address {
            entry: entry.to_owned(),
            addr: addr_text.to_owned(),
        })?;
        let max = max_prefix(addr);
        let prefix = match prefix_text {
            None => max,
            // Digits only: `u8::from_str` would also take "+8".
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| {
                    AllowListError::Prefix {
                        entry: entry.to_owned(),
                        max,
                    }
                })?
            }
            Some(_) => {
                return Err(AllowListError::Prefix {
                    entry: entry.to_owned(),
                    max,
                });
            }
        };
        let network = Self {
            addr: masked(addr, prefix),
            prefix,
        };
        if network.addr != addr {
            return Err(AllowListError::HostBits {
                entry: entry.to_owned(),
                prefix,
                network,
            });
        }
        Ok(network)
    }

    /// The network's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network; an IPv4 address is also looked for in its mapped
    /// IPv6 form (`::ffff:a.b.c.d`), and an IPv4-mapped IPv6 address in its IPv4 form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
            (IpAddr::V6(_), IpAddr::V4(v4)) => {
                masked(IpAddr::V6(v4.to_ipv6_mapped()), self.prefix) == self.addr
            }
            (_, ip) => masked(ip, self.prefix) == self.addr,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

// === functions ===

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `addr` with every bit past the first `prefix` cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_print() {
        for (text, printed) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            (" 127.0.0.0/8 ", "127.0.0.0/8"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::1/128", "::1/128"),
            ("::1", "::1/128"),
            ("fd00::/8", "fd00::/8"),
            ("::/0", "::/0"),
            ("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"),
        ] {
            let network = Network::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(network.to_string(), printed);
        }
        let list = AllowList::parse("127.0.0.0/8, 10.0.0.0/8,::1/128").unwrap();
        assert_eq!(list.to_string(), "127.0.0.0/8,10.0.0.0/8,::1/128");
        assert_eq!(list.networks().len(), 3);
    }

    #[test]
    fn bad_entries_are_named_with_the_reason() {
        for (text, message) in [
            ("", "an empty entry"),
            ("10.0.0.0/8,", "an empty entry"),
            ("10.0.0.0/8,,::1", "an empty entry"),
            (
                "10.0.0/8",
                "\"10.0.0/8\": \"10.0.0\" is not an IPv4 or IPv6 address",
            ),
            ("localhost", "\"localhost\": \"localhost\" is not an IPv4"),
            ("[::1]/128", "is not an IPv4 or IPv6 address"),
            (
                "10.0.0.0/33",
                "\"10.0.0.0/33\": the prefix length must be a number from 0 to 32",
            ),
            ("::/129", "from 0 to 128"),
            ("10.0.0.0/", "from 0 to 32"),
            ("10.0.0.0/+8", "from 0 to 32"),
            ("10.0.0.0/ 8", "from 0 to 32"),
            ("10.0.0.0/0008", "from 0 to 32"),
            ("10.0.0.0/8/8", "from 0 to 32"),
            (
                "10.1.2.3/8",
                "\"10.1.2.3/8\": bits are set past the /8 prefix; did you mean 10.0.0.0/8?",
            ),
            ("fd00::1/64", "did you mean fd00::/64?"),
        ] {
            let err = AllowList::parse(text).expect_err(text).to_string();
            assert!(err.contains(message), "{text:?}: {err:?} lacks {message:?}");
        }
    }

    #[test]
    fn sources_match_their_networks_in_either_family() {
        let list = AllowList::parse("127.0.0.0/8,10.0.0.0/8,::1/128,fd00::/8").unwrap();
        for (source, allowed) in [
            ("127.0.0.1", true),
            ("127.255.255.255", true),
            ("10.20.30.40", true),
            ("11.0.0.1", false),
            ("192.168.0.1", false),
            ("::1", true),
            ("::2", false),
            ("fd12:3456::1", true),
            ("fe80::1", false),
            // IPv4 clients of a dual-stack socket.
            ("::ffff:127.0.0.1", true),
            ("::ffff:10.9.8.7", true),
            ("::ffff:192.168.0.1", false),
            // IPv4-compatible (deprecated) addresses are IPv6, not IPv4.
            ("::127.0.0.1", false),
        ] {
            assert_eq!(list.allows(ip(source)), allowed, "{source}");
        }

        // An IPv4-mapped network is the IPv4 network.
        let mapped = AllowList::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.allows(ip("10.1.2.3")));
        assert!(mapped.allows(ip("::ffff:10.1.2.3")));
        assert!(!mapped.allows(ip("11.1.2.3")));
        // `::/0` is everyone; `0.0.0.0/0` every IPv4 client, wherever it connects.
        let v6_all = AllowList::parse("::/0").unwrap();
        assert!(v6_all.allows(ip("192.0.2.1")) && v6_all.allows(ip("2001:db8::1")));
        let v4_all = AllowList::parse("0.0.0.0/0").unwrap();
        assert!(v4_all.allows(ip("::ffff:192.0.2.1")));
        assert!(!v4_all.allows(ip("2001:db8::1")));
    }

    proptest! {
        #[test]
        fn a_network_contains_exactly_the_addresses_sharing_its_prefix(
            net in any::<u32>(), prefix in 0u8..=32, other in any::<u32>(),
        ) {
            let addr = Ipv4Addr::from(net);
            let network = Network {
                addr: masked(IpAddr::V4(addr), prefix),
                prefix,
            };
            // Round trip through the text form.
            prop_assert_eq!(Network::parse(&network.to_string()), Ok(network));
            let shares = prefix == 0 || (net ^ other) >> (32 - u32::from(prefix)) == 0;
            let other = Ipv4Addr::from(other);
            prop_assert_eq!(network.contains(IpAddr::V4(other)), shares);
            prop_assert_eq!(network.contains(IpAddr::V6(other.to_ipv6_mapped())), shares);
            // The same network written as IPv4-mapped IPv6 contains the same addresses.
            let as_v6 = Network::parse(&format!("{}/{}", addr.to_ipv6_mapped(), prefix + 96));
            let as_v6 = match as_v6 {
                Err(AllowListError::HostBits { network, .. }) => network,
                parsed => parsed.unwrap(),
            };
            prop_assert_eq!(as_v6.contains(IpAddr::V4(other)), shares);
        }

        #[test]
        fn ipv6_networks_contain_the_addresses_sharing_their_prefix(
            net in any::<u128>(), prefix in 0u8..=128, other in any::<u128>(),
        ) {
            let network = Network {
                addr: masked(IpAddr::V6(Ipv6Addr::from(net)), prefix),
                prefix,
            };
            prop_assert_eq!(Network::parse(&network.to_string()), Ok(network));
            let shares = prefix == 0 || (net ^ other) >> (128 - u32::from(prefix)) == 0;
            let other = Ipv6Addr::from(other);
            // Sources that are IPv4-mapped are compared as their IPv4 form, which the
            // network's mapped part must then contain: the same answer either way.
            prop_assert_eq!(network.contains(IpAddr::V6(other)), shares);
        }

        #[test]
        fn parsing_never_panics(text in "[0-9a-f:./, ]{0,40}") {
            let _ = AllowList::parse(&text);
        }
    }
}

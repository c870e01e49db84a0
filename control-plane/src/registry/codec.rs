//! How commands are written into the replicated log.
//!
//! Two encodings, told apart by the first byte:
//! - **binary** (first byte [`BINARY_TAG`], 0x01) for the commands every instance sends
//!   often — `RegisterInstance`, `DeregisterInstance`, `SetHealth` — so the leader does not
//!   format and every replica does not parse JSON on the hot write path (JSON decoding was
//!   ~2 % of a 3-node cluster's CPU under 64 writers, on top of its encoding at the leader);
//! - **JSON** (a `{` first, as serde_json writes it) for every other command, and for entries
//!   written before the binary encoding existed: they decode as they always did.
//!
//! JSON never starts with 0x01 (a JSON text starts with `{`, `[`, a literal, a digit, `"`,
//! `-` or whitespace), so the tag cannot be confused with an old entry.
//!
//! # Binary layout (all integers little-endian)
//! `0x01 | op: u8 | fields`, where a string is `len: u32 | UTF-8 bytes`:
//! - op 1, `RegisterInstance`: namespace, service, id, address (`4 | 4 bytes` or
//!   `6 | 16 bytes`), port `u16`, attribute count `u32`, then (key, value) strings in key order;
//! - op 2, `DeregisterInstance`: namespace, service, id;
//! - op 3, `SetHealth`: namespace, service, id, health `u8` (0 healthy, 1 unhealthy,
//!   2 unknown).
//!
//! Decoding is strict: a truncated entry, trailing bytes, an unknown op or invalid UTF-8 is an
//! error (which stops the node rather than let it diverge).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::command::{Command, InstanceSpec};
use super::model::HealthStatus;
use super::names::ServiceName;

/// First byte of a binary-encoded command.
pub const BINARY_TAG: u8 = 0x01;

const OP_REGISTER: u8 = 1;
const OP_DEREGISTER: u8 = 2;
const OP_SET_HEALTH: u8 = 3;

/// Why an entry could not be decoded into a command.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A JSON entry that is not a command.
    #[error("JSON command: {0}")]
    Json(#[from] serde_json::Error),
    /// A binary entry that is damaged or from a newer version.
    #[error("binary command: {0}")]
    Binary(&'static str),
}

/// Encodes `command`: binary for the hot instance commands, JSON for the rest.
pub fn encode(command: &Command) -> Vec<u8> {
    match command {
        Command::RegisterInstance { service, instance } => {
            let attributes: usize = instance
                .attributes
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum();
            let mut out = Vec::with_capacity(
                2 + 12
                    + service.namespace.len()
                    + service.service.len()
                    + instance.id.len()
                    + 17
                    + 2
                    + 4
                    + attributes,
            );
            header(&mut out, OP_REGISTER, service, &instance.id);
            match instance.address {
                IpAddr::V4(a) => {
                    out.push(4);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.push(6);
                    out.extend_from_slice(&a.octets());
                }
            }
            out.extend_from_slice(&instance.port.to_le_bytes());
            put_len(&mut out, instance.attributes.len());
            for (key, value) in &instance.attributes {
                put_str(&mut out, key);
                put_str(&mut out, value);
            }
            out
        }
        Command::DeregisterInstance { service, id } => {
            let mut out = Vec::with_capacity(64);
            header(&mut out, OP_DEREGISTER, service, id);
            out
        }
        Command::SetHealth {
            service,
            id,
            health,
        } => {
            let mut out = Vec::with_capacity(64);
            header(&mut out, OP_SET_HEALTH, service, id);
            out.push(match health {
                HealthStatus::Healthy => 0,
                HealthStatus::Unhealthy => 1,
                HealthStatus::Unknown => 2,
            });
            out
        }
        other => serde_json::to_vec(other).expect("invariant: commands always serialize to JSON"),
    }
}

/// Decodes an entry written by [`encode`] (or by an older version, in JSON).
pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
    let Some((&BINARY_TAG, rest)) = bytes.split_first() else {
        return Ok(serde_json::from_slice(bytes)?);
    };
    let mut r = Reader(rest);
    let op = r.u8()?;
    let service = ServiceName {
        namespace: r.string()?,
        service: r.string()?,
    };
    let id = r.string()?;
    let command = match op {
        OP_REGISTER => {
            let address = match r.u8()? {
                4 => IpAddr::from(r.array::<4>()?),
                6 => IpAddr::from(r.array::<16>()?),
                _ => return Err(DecodeError::Binary("unknown address family")),
            };
            let port = u16::from_le_bytes(r.array::<2>()?);
            let count = r.len()?;
            let mut attributes = BTreeMap::new();
            for _ in 0..count {
                let key = r.string()?;
                let value = r.string()?;
                attributes.insert(key, value);
            }
            Command::RegisterInstance {
                service,
                instance: InstanceSpec {
                    id,
                    address,
                    port,
                    attributes,
                },
            }
        }
        OP_DEREGISTER => Command::DeregisterInstance { service, id },
        OP_SET_HEALTH => {
            let health = match r.u8()? {
                0 => HealthStatus::Healthy,
                1 => HealthStatus::Unhealthy,
                2 => HealthStatus::Unknown,
                _ => return Err(DecodeError::Binary("unknown health status")),
            };
            Command::SetHealth {
                service,
                id,
                health,
            }
        }
        _ => return Err(DecodeError::Binary("unknown op")),
    };
    if !r.0.is_empty() {
        return Err(DecodeError::Binary("trailing bytes"));
    }
    Ok(command)
}

fn header(out: &mut Vec<u8>, op: u8, service: &ServiceName, id: &str) {
    out.push(BINARY_TAG);
    out.push(op);
    put_str(out, &service.namespace);
    put_str(out, &service.service);
    put_str(out, id);
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Every field is bounded far below 4 GiB by validation; a command that is not would
    // be refused by every replica anyway, so saturating keeps encoding infallible.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// The unread rest of a binary entry.
struct Reader<'a>(&'a [u8]);

// === impl Reader ===

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Binary("truncated"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(u32::from_le_bytes(self.array::<4>()?))
            .map_err(|_| DecodeError::Binary("length overflows"))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.len()?;
        if len > self.0.len() {
            return Err(DecodeError::Binary("truncated"));
        }
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Binary("invalid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServiceName {
        ServiceName {
            namespace: "cafe.local".into(),
            service: "orders".into(),
        }
    }

    fn register(address: &str) -> Command {
        Command::RegisterInstance {
            service: svc(),
            instance: InstanceSpec {
                id: "i-1".into(),
                address: address.parse().unwrap(),
                port: 8080,
                attributes: [("version".to_owned(), "v2".to_owned())].into(),
            },
        }
    }

    #[test]
    fn hot_commands_are_binary_and_round_trip() {
        for command in [
            register("10.0.0.1"),
            register("fe80::1"),
            Command::DeregisterInstance {
                service: svc(),
                id: "i-1".into(),
            },
            Command::SetHealth {
                service: svc(),
                id: "i-1".into(),
                health: HealthStatus::Unhealthy,
            },
        ] {
            let bytes = encode(&command);
            assert_eq!(bytes[0], BINARY_TAG, "{command:?}");
            assert_eq!(decode(&bytes).unwrap(), command);
        }
    }

    #[test]
    fn old_json_entries_still_decode() {
        // As an earlier version wrote them (serde_json of `Command`).
        let old = br#"{"op":"RegisterInstance","service":{"namespace":"cafe.local","service":"orders"},"instance":{"id":"i-1","address":"10.0.0.1","port":8080,"attributes":{"version":"v2"}}}"#;
        assert_eq!(decode(old).unwrap(), register("10.0.0.1"));
        let old = br#"{"op":"SetHealth","service":{"namespace":"cafe.local","service":"orders"},"id":"i-1","health":"Unhealthy"}"#;
        assert_eq!(
            decode(old).unwrap(),
            Command::SetHealth {
                service: svc(),
                id: "i-1".into(),
                health: HealthStatus::Unhealthy,
            }
        );
    }

    #[test]
    fn damaged_binary_entries_are_refused() {
        let bytes = encode(&register("10.0.0.1"));
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        let mut op = bytes;
        op[1] = 99;
        assert!(decode(&op).is_err());
    }
}

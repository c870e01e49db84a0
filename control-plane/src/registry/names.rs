//! Validation of every user-supplied field, at the edge and again inside `apply`.
//!
//! Names follow DNS rules (RFC 1035 as relaxed by RFC 1123): a label is 1–63 bytes of
//! lower-case letters, digits and hyphens, neither starting nor ending with a hyphen; a full
//! name is at most 253 bytes. The API lower-cases names before they get here; the registry
//! itself accepts only the canonical lower-case form, so replicas never disagree on case.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::RegistryError;

/// Longest DNS label, in bytes (RFC 1035 §2.3.4).
pub const MAX_LABEL: usize = 63;
/// Longest full DNS name, in bytes, without the trailing dot (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 253;
/// Most attributes an instance may carry (Cloud Map's limit, which we match).
pub const MAX_ATTRIBUTES: usize = 30;
/// Longest attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY: usize = 128;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 256;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;
/// Longest path (prefix or exact) a match may name, in bytes.
pub const MAX_PATH: usize = 1024;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME: usize = 256;
/// Longest header value (exact or prefix) a match may name, in bytes.
pub const MAX_HEADER_VALUE: usize = 1024;
/// Longest HTTP method token, in bytes.
pub const MAX_METHOD: usize = 32;

/// A service's full name split into its label and its namespace: `orders.cafe.local` is
/// service `orders` in namespace `cafe.local`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName {
    /// The namespace (a DNS domain of one or more labels).
    pub namespace: String,
    /// The service's own label.
    pub service: String,
}

// === impl ServiceName ===

impl ServiceName {
    /// Parses and validates a full service name; `field` names it in errors.
    pub fn parse(field: &str, full: &str) -> Result<Self, RegistryError> {
        let Some((service, namespace)) = full.split_once('.') else {
            return Err(RegistryError::invalid(
                field,
                format!("{full:?} is not SERVICE.NAMESPACE (e.g. orders.cafe.local)"),
            ));
        };
        let name = Self {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
        };
        name.validate(field)?;
        Ok(name)
    }

    /// Checks both parts and the total length.
    pub fn validate(&self, field: &str) -> Result<(), RegistryError> {
        validate_label(field, &self.service)?;
        validate_domain(field, &self.namespace)?;
        if self.service.len() + 1 + self.namespace.len() > MAX_NAME {
            return Err(RegistryError::invalid(
                field,
                format!("longer than {MAX_NAME} bytes"),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service, self.namespace)
    }
}

/// Checks one DNS label.
pub fn validate_label(field: &str, label: &str) -> Result<(), RegistryError> {
    let reason = if label.is_empty() {
        "must not be empty".to_owned()
    } else if label.len() > MAX_LABEL {
        format!("label {label:?} is longer than {MAX_LABEL} bytes")
    } else if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        format!("label {label:?} contains {c:?}; only a-z, 0-9 and '-' are allowed")
    } else if label.starts_with('-') || label.ends_with('-') {
        format!("label {label:?} must not start or end with '-'")
    } else {
        return Ok(());
    };
    Err(RegistryError::invalid(field, reason))
}

/// Checks a domain of one or more labels (a namespace name).
pub fn validate_domain(field: &str, domain: &str) -> Result<(), RegistryError> {
    if domain.is_empty() {
        return Err(RegistryError::invalid(field, "must not be empty"));
    }
    if domain.len() > MAX_NAME {
        return Err(RegistryError::invalid(
            field,
            format!("longer than {MAX_NAME} bytes"),
        ));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(RegistryError::invalid(
                field,
                format!("{domain:?} has an empty label"),
            ));
        }
        validate_label(field, label)?;
    }
    Ok(())
}

/// Parses an IPv4 or IPv6 address.
pub fn parse_address(field: &str, address: &str) -> Result<IpAddr, RegistryError> {
    let ip: IpAddr = address.parse().map_err(|_| {
        RegistryError::invalid(field, format!("{address:?} is not an IPv4 or IPv6 address"))
    })?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(RegistryError::invalid(
            field,
            format!("{ip} is not a unicast address an instance can be reached at"),
        ));
    }
    Ok(ip)
}

/// Checks a port number: 1–65535.
pub fn validate_port(field: &str, port: u32) -> Result<u16, RegistryError> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(RegistryError::invalid(
            field,
            format!("{port} is not a port (1-65535)"),
        )),
    }
}

/// Checks an attribute map: count, key syntax, value size.
pub fn validate_attributes(
    field: &str,
    attributes: &BTreeMap<String, String>,
) -> Result<(), RegistryError> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(RegistryError::invalid(
            field,
            format!(
                "{} attributes; at most {MAX_ATTRIBUTES} are allowed",
                attributes.len()
            ),
        ));
    }
    for (key, value) in attributes {
        // Formatted only for an error: this runs for every attribute of every registration,
        // at the API edge and again on every replica.
        let at = || format!("{field}[{key:?}]");
        if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY {
            return Err(RegistryError::invalid(
                at(),
                format!("key must be 1-{MAX_ATTRIBUTE_KEY} bytes"),
            ));
        }
        if let Some(c) = key
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
        {
            return Err(RegistryError::invalid(
                at(),
                format!("key contains {c:?}; only letters, digits and - _ . / are allowed"),
            ));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE {
            return Err(RegistryError::invalid(
                at(),
                format!(
                    "value is {} bytes; at most {MAX_ATTRIBUTE_VALUE} are allowed",
                    value.len()
                ),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(RegistryError::invalid(
                at(),
                "value contains a control character",
            ));
        }
    }
    Ok(())
}

/// Checks a free-text description.
pub fn validate_description(field: &str, description: &str) -> Result<(), RegistryError> {
    if description.len() > MAX_DESCRIPTION {
        return Err(RegistryError::invalid(
            field,
            format!("longer than {MAX_DESCRIPTION} bytes"),
        ));
    }
    Ok(())
}

/// Checks a URL path a route matches on: starts with `/`, no spaces or control characters.
pub fn validate_path(field: &str, path: &str) -> Result<(), RegistryError> {
    if !path.starts_with('/') {
        return Err(RegistryError::invalid(
            field,
            format!("{path:?} must start with '/'"),
        ));
    }
    if path.len() > MAX_PATH {
        return Err(RegistryError::invalid(
            field,
            format!("longer than {MAX_PATH} bytes"),
        ));
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RegistryError::invalid(
            field,
            format!("{path:?} contains a space or a control character"),
        ));
    }
    Ok(())
}

/// Checks an upper-case method token: `GET`, `POST`, `PURGE`, `M-SEARCH`.
pub fn validate_method(field: &str, method: &str) -> Result<(), RegistryError> {
    let ok = !method.is_empty()
        && method.len() <= MAX_METHOD
        && method.starts_with(|c: char| c.is_ascii_uppercase())
        && method
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            field,
            format!(
                "{method:?} is not an upper-case HTTP method token (e.g. GET), at most {MAX_METHOD} bytes"
            ),
        ))
    }
}

/// Checks a lower-case HTTP header name: RFC 9110 token characters.
pub fn validate_header_name(field: &str, name: &str) -> Result<(), RegistryError> {
    if name.is_empty() || name.len() > MAX_HEADER_NAME {
        return Err(RegistryError::invalid(
            field,
            format!("a header name must be 1-{MAX_HEADER_NAME} bytes"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "!#$%&'*+-.^_`|~".contains(*c)))
    {
        return Err(RegistryError::invalid(
            field,
            format!("header name {name:?} contains {c:?}; use lower-case token characters"),
        ));
    }
    Ok(())
}

/// Checks a header value a route matches: bounded, no control characters but tab.
pub fn validate_header_value(field: &str, value: &str) -> Result<(), RegistryError> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(RegistryError::invalid(
            field,
            format!("longer than {MAX_HEADER_VALUE} bytes"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(RegistryError::invalid(
            field,
            "contains a control character",
        ));
    }
    Ok(())
}

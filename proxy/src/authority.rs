//! Which service a request is for: its authority (`:authority` or `Host`), port dropped,
//! lower-cased; and whether a name can be a service name at all (so a `Host: 127.0.0.1:15001`
//! or `Host: localhost` goes to the default service instead of a pointless subscription).

use std::borrow::Cow;
use std::net::IpAddr;

use http::Request;

/// The host part of the request's authority, lower-cased, without port or trailing dot
/// (borrowed from the request unless it had upper-case letters: no allocation per request).
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(authority) => authority.host(),
        None => {
            let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
            strip_port(host)
        }
    };
    let host = raw.trim_end_matches('.');
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: "[::1]:80".
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A full service name: a service label plus a namespace of at least one label, DNS rules
/// (RFC 1035 letters, digits, hyphens; ≤ 63 bytes a label, ≤ 253 in all), not an IP address.
pub(crate) fn is_service_name(name: &str) -> bool {
    if name.len() > 253 || name.parse::<IpAddr>().is_ok() {
        return false;
    }
    let mut labels = 0;
    for label in name.split('.') {
        let bytes = label.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-');
        if !valid {
            return false;
        }
        labels += 1;
    }
    labels >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(uri: &str, host: Option<&str>) -> Option<String> {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        request_host(&builder.body(()).unwrap()).map(Cow::into_owned)
    }

    #[test]
    fn host_header_port_dropped_and_lower_cased() {
        assert_eq!(
            host_of("/x", Some("Orders.Cafe.Local:8080")).as_deref(),
            Some("orders.cafe.local")
        );
        assert_eq!(
            host_of("/x", Some("orders.cafe.local.")).as_deref(),
            Some("orders.cafe.local")
        );
        assert_eq!(host_of("/x", Some("[::1]:80")).as_deref(), Some("::1"));
        assert_eq!(host_of("/x", None), None);
    }

    #[test]
    fn uri_authority_wins_over_host() {
        assert_eq!(
            host_of("http://reports.cafe.local:81/x", Some("orders.cafe.local")).as_deref(),
            Some("reports.cafe.local")
        );
    }

    #[test]
    fn service_names() {
        assert!(is_service_name("orders.cafe.local"));
        assert!(is_service_name("a.b"));
        assert!(!is_service_name("localhost"));
        assert!(!is_service_name("127.0.0.1"));
        assert!(!is_service_name("-x.cafe"));
        assert!(!is_service_name("a..b"));
        assert!(!is_service_name("a_b.cafe"));
        assert!(!is_service_name(&format!("{}.cafe", "a".repeat(64))));
    }
}

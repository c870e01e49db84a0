//! Parsers for command-line values: `KEY=VALUE`, durations (`500ms`, `5s`, `10m`, `1h`),
//! peers (`1=127.0.0.1:7400`) and health checks (`http:/healthz`, `tcp`, `grpc`, `ttl:10s`).

use std::time::Duration;

use meridian_proto::v1 as pb;

pub(super) fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

pub(super) fn duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m or h (e.g. 5s)"))?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{s:?} has unit {unit:?}; use ms, s, m or h")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

pub(super) fn millis(field: &str, d: Duration) -> Result<u32, String> {
    u32::try_from(d.as_millis()).map_err(|_| format!("{field}: {d:?} is too long"))
}

pub(super) fn peers(list: &[String]) -> Result<Vec<(u64, String)>, String> {
    list.iter()
        .map(|p| {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| format!("--peers: {p:?} is not ID=ADDR"))?;
            let id: u64 = id
                .parse()
                .map_err(|_| format!("--peers: {id:?} is not a node id"))?;
            Ok((id, addr.to_owned()))
        })
        .collect()
}

pub(super) fn check(spec: &str) -> Result<pb::health_check::Kind, String> {
    use pb::health_check::Kind;
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match (kind, arg) {
        ("http", path) if !path.is_empty() => Kind::Http(pb::HttpCheck { path: path.into() }),
        ("http", _) => return Err("--check: http needs a path, e.g. http:/healthz".into()),
        ("tcp", "") => Kind::Tcp(pb::TcpCheck {}),
        ("grpc", service) => Kind::Grpc(pb::GrpcCheck {
            service: service.into(),
        }),
        ("ttl", ttl) => Kind::Ttl(pb::TtlCheck {
            ttl_ms: millis(
                "--check",
                duration(ttl).map_err(|e| format!("--check: {e}"))?,
            )?,
        }),
        _ => {
            return Err(format!(
                "--check: {spec:?} is not http:/PATH, tcp, grpc[:SERVICE] or ttl:DURATION"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert!(duration("5").unwrap_err().contains("needs a unit"));
        assert!(duration("5d").unwrap_err().contains("unit \"d\""));
        assert!(duration("s").is_err());
    }

    #[test]
    fn checks() {
        assert!(
            matches!(check("http:/healthz"), Ok(pb::health_check::Kind::Http(h)) if h.path == "/healthz")
        );
        assert!(
            matches!(check("ttl:10s"), Ok(pb::health_check::Kind::Ttl(t)) if t.ttl_ms == 10_000)
        );
        assert!(matches!(check("tcp"), Ok(pb::health_check::Kind::Tcp(_))));
        assert!(check("http").is_err());
        assert!(check("icmp").is_err());
    }

    #[test]
    fn peer_lists() {
        assert_eq!(
            peers(&["1=127.0.0.1:7400".into()]),
            Ok(vec![(1, "127.0.0.1:7400".into())])
        );
        assert!(peers(&["x=1".into()]).is_err());
    }
}

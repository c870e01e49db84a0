//! `cafe-orders`: the orders of each opening hour, in two versions.
//!
//! - `GET /orders?hour=H` (H from 7 to 18; default 12): the orders taken that hour, made up
//!   from a seed per hour so that every instance and both versions agree on what was sold.
//!   `v1` states each total as a decimal string (`"total": "6.00"`); `v2` states it in cents
//!   (`"total_cents": 600`) and adds the channel that took the order (`counter` or `app`).
//!   The body and the `X-Cafe-Version` header name the version.
//! - `GET /healthz`: `ok` (the control plane's HTTP check).
//!
//! A bad canary on demand: `error_rate` answers that share of order requests with 500, and
//! `latency` delays each one.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode};
use hyper::Request;
use hyper::body::Incoming;
use opentelemetry::KeyValue;
use serde_json::json;

use crate::serve::{self, FullResponse};
use crate::trace::Tracer;

/// The café's opening hours: 07:00 to 19:00, one page of orders per hour.
pub const OPENING_HOURS: std::ops::RangeInclusive<u32> = 7..=18;

/// The menu: item and price in cents.
const MENU: [(&str, u64); 6] = [
    ("espresso", 240),
    ("flat white", 360),
    ("cappuccino", 340),
    ("tea", 250),
    ("croissant", 220),
    ("banana bread", 280),
];

/// The orders service's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Totals as decimal strings.
    V1,
    /// Totals in cents, and the channel of each order.
    V2,
}

/// How one orders instance behaves.
#[derive(Debug, Clone)]
pub struct Orders {
    /// Its version.
    pub version: Version,
    /// Share of order requests answered 500 (0 to 1).
    pub error_rate: f64,
    /// Added to every order request.
    pub latency: Duration,
}

// === impl Version ===

impl Version {
    /// Parses `v1` or `v2`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            other => Err(format!("{other:?} is not a version: v1 or v2")),
        }
    }

    /// `v1` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

// === impl Orders ===

impl Orders {
    /// Answers one request, with a SERVER span.
    pub async fn handle(
        self: Arc<Self>,
        tracer: Tracer,
        request: Request<Incoming>,
    ) -> FullResponse {
        let path = request.uri().path().to_owned();
        if path == "/healthz" {
            // Health probes every second would drown the traces: not traced.
            return serve::text(StatusCode::OK, "ok");
        }
        let span = tracer.server(
            &format!("{} {path}", request.method()),
            request.headers(),
            vec![
                KeyValue::new("http.request.method", request.method().to_string()),
                KeyValue::new("url.path", path.clone()),
                KeyValue::new("cafe.version", self.version.as_str()),
            ],
        );
        let mut response = self
            .answer(request.method(), &path, request.uri().query())
            .await;
        response.headers_mut().insert(
            crate::VERSION_HEADER,
            HeaderValue::from_static(self.version.as_str()),
        );
        span.finish(response.status());
        response
    }

    async fn answer(&self, method: &Method, path: &str, query: Option<&str>) -> FullResponse {
        if path != "/orders" {
            return serve::text(StatusCode::NOT_FOUND, &format!("no such page: {path}"));
        }
        if method != Method::GET {
            return serve::text(StatusCode::METHOD_NOT_ALLOWED, "orders answers GET only");
        }
        let hour = match hour(query) {
            Ok(hour) => hour,
            Err(reason) => return serve::text(StatusCode::BAD_REQUEST, &reason),
        };
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.error_rate > 0.0 && fastrand::f64() < self.error_rate {
            return serve::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"version": self.version.as_str(), "error": "the till is jammed"}),
            );
        }
        serve::json(StatusCode::OK, &self.page(hour))
    }

    /// The orders of `hour` as this version writes them.
    pub fn page(&self, hour: u32) -> serde_json::Value {
        let mut rng = fastrand::Rng::with_seed(u64::from(hour));
        let orders: Vec<serde_json::Value> = (0..rng.usize(2..=5))
            .map(|n| {
                let items: Vec<&str> = (0..rng.usize(1..=3))
                    .map(|_| MENU[rng.usize(..MENU.len())].0)
                    .collect();
                let cents: u64 = items
                    .iter()
                    .filter_map(|item| MENU.iter().find(|(name, _)| name == item))
                    .map(|(_, price)| price)
                    .sum();
                let id = format!("{hour:02}{n:02}");
                let app = rng.bool();
                match self.version {
                    Version::V1 => json!({
                        "id": id,
                        "items": items,
                        "total": format!("{}.{:02}", cents / 100, cents % 100),
                    }),
                    Version::V2 => json!({
                        "id": id,
                        "items": items,
                        "total_cents": cents,
                        "channel": if app { "app" } else { "counter" },
                    }),
                }
            })
            .collect();
        json!({"version": self.version.as_str(), "hour": hour, "orders": orders})
    }
}

/// `hour=H` from the query string (12 when absent), within the opening hours.
fn hour(query: Option<&str>) -> Result<u32, String> {
    let Some(value) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("hour="))
    else {
        return Ok(12);
    };
    match value.parse::<u32>() {
        Ok(hour) if OPENING_HOURS.contains(&hour) => Ok(hour),
        _ => Err(format!(
            "hour={value}: the café is open from {} to {}",
            OPENING_HOURS.start(),
            OPENING_HOURS.end() + 1
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders(version: Version) -> Orders {
        Orders {
            version,
            error_rate: 0.0,
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn both_versions_sell_the_same_orders_written_differently() {
        let v1 = orders(Version::V1).page(9);
        let v2 = orders(Version::V2).page(9);
        assert_eq!(v1["version"], "v1");
        assert_eq!(v2["version"], "v2");
        let (a, b) = (
            v1["orders"].as_array().unwrap(),
            v2["orders"].as_array().unwrap(),
        );
        assert!(!a.is_empty());
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            assert_eq!(a["items"], b["items"]);
            let cents = b["total_cents"].as_u64().unwrap();
            assert_eq!(a["total"], format!("{}.{:02}", cents / 100, cents % 100));
            assert!(b["channel"] == "app" || b["channel"] == "counter");
        }
    }

    #[test]
    fn hours_outside_opening_time_are_refused() {
        assert_eq!(hour(None), Ok(12));
        assert_eq!(hour(Some("hour=7")), Ok(7));
        assert_eq!(hour(Some("x=1&hour=18")), Ok(18));
        for bad in ["hour=6", "hour=19", "hour=noon"] {
            assert!(
                hour(Some(bad)).unwrap_err().contains("open from 7 to 19"),
                "{bad}"
            );
        }
    }

    #[test]
    fn versions_parse_or_say_why_not() {
        assert_eq!(Version::parse("v2"), Ok(Version::V2));
        assert!(Version::parse("v3").unwrap_err().contains("v1 or v2"));
    }
}

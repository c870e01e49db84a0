//! `cafe-reports`: the daily summary, built from one orders lookup per opening hour.
//!
//! `GET /reports/daily` asks orders for every opening hour at once, through the local
//! `meridian-proxy` (the calls go to `--orders-via` with `Host: orders.cafe.local`, so the
//! proxy picks the version by the route's weights), reads both versions' bodies (v1 totals as
//! decimal strings, v2 in cents), and answers the day's orders, revenue, items sold, which
//! versions answered how many lookups, how many failed, and the trace id. A failed lookup
//! leaves a gap in the summary rather than failing it; only when every lookup failed is the
//! answer 502. `GET /healthz` answers `ok`.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::Request;
use hyper::body::Incoming;
use opentelemetry::KeyValue;
use serde_json::json;
use tokio::task::JoinSet;

use crate::client::{Answer, CallError, Client};
use crate::orders::OPENING_HOURS;
use crate::serve::{self, FullResponse};
use crate::trace::{ServerSpan, Tracer};

/// Where reports finds orders.
#[derive(Debug, Clone)]
pub struct Reports {
    /// The base URL the lookups go to: the local proxy, e.g. `http://127.0.0.1:15001`.
    pub orders_via: String,
    /// The `Host` of the lookups: the mesh service, e.g. `orders.cafe.local`.
    pub orders_host: HeaderValue,
    /// The client the lookups go through.
    pub client: Client,
}

/// The day so far.
#[derive(Debug, Default)]
struct Day {
    orders: u64,
    revenue_cents: u64,
    items: BTreeMap<String, u64>,
    channels: BTreeMap<String, u64>,
    answered_by: BTreeMap<String, u64>,
    failed: u64,
    errors: Vec<String>,
}

// === impl Reports ===

impl Reports {
    /// Answers one request, with a SERVER span and a CLIENT span per orders lookup.
    pub async fn handle(
        self: Arc<Self>,
        tracer: Tracer,
        request: Request<Incoming>,
    ) -> FullResponse {
        let path = request.uri().path().to_owned();
        if path == "/healthz" {
            return serve::text(StatusCode::OK, "ok");
        }
        let span = tracer.server(
            &format!("{} {path}", request.method()),
            request.headers(),
            vec![
                KeyValue::new("http.request.method", request.method().to_string()),
                KeyValue::new("url.path", path.clone()),
            ],
        );
        let response = if path == "/reports/daily" {
            self.daily(&span).await
        } else {
            serve::text(StatusCode::NOT_FOUND, &format!("no such report: {path}"))
        };
        span.finish(response.status());
        response
    }

    async fn daily(&self, span: &ServerSpan) -> FullResponse {
        let mut lookups = JoinSet::new();
        for hour in OPENING_HOURS {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::HOST, self.orders_host.clone());
            let host = self.orders_host.to_str().unwrap_or_default().to_owned();
            let call = span.client(
                "GET /orders",
                vec![
                    KeyValue::new("http.request.method", "GET"),
                    KeyValue::new("server.address", host),
                    KeyValue::new("url.path", "/orders"),
                    KeyValue::new("cafe.hour", i64::from(hour)),
                ],
                &mut headers,
            );
            let url = format!("{}/orders?hour={hour}", self.orders_via);
            let client = self.client.clone();
            lookups.spawn(async move {
                let answer = client.get(&url, headers).await;
                let version = answer
                    .as_ref()
                    .ok()
                    .and_then(Answer::cafe_version)
                    .map(str::to_owned);
                match &answer {
                    Ok(a) => call.finish(
                        Ok(a.status),
                        version
                            .iter()
                            .map(|v| KeyValue::new("cafe.version", v.clone()))
                            .collect(),
                    ),
                    Err(e) => call.finish(Err(e), Vec::new()),
                }
                (hour, answer)
            });
        }
        let mut day = Day::default();
        while let Some(done) = lookups.join_next().await {
            match done {
                Ok((hour, answer)) => day.add(hour, answer),
                Err(e) => day.fail(format!("lookup task: {e}")),
            }
        }
        span.set_attribute(KeyValue::new("cafe.lookups_failed", day.failed as i64));
        let lookups = OPENING_HOURS.count() as u64;
        let status = if day.failed == lookups {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::OK
        };
        serve::json(status, &day.summary(lookups, span.trace_id()))
    }
}

// === impl Day ===

impl Day {
    fn add(&mut self, hour: u32, answer: Result<Answer, CallError>) {
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return self.fail(format!("hour {hour}: {e}")),
        };
        if !answer.status.is_success() {
            let body = String::from_utf8_lossy(&answer.body);
            let who = answer.cafe_version().unwrap_or("the proxy");
            return self.fail(format!(
                "hour {hour}: {} from {who}: {}",
                answer.status,
                body.trim()
            ));
        }
        let page = match answer.json() {
            Ok(page) => page,
            Err(e) => return self.fail(format!("hour {hour}: unreadable page: {e}")),
        };
        let version = answer
            .cafe_version()
            .or_else(|| page["version"].as_str())
            .unwrap_or("unknown")
            .to_owned();
        for order in page["orders"].as_array().into_iter().flatten() {
            self.orders += 1;
            self.revenue_cents += cents(order).unwrap_or(0);
            for item in order["items"].as_array().into_iter().flatten() {
                if let Some(item) = item.as_str() {
                    *self.items.entry(item.to_owned()).or_default() += 1;
                }
            }
            let channel = order["channel"].as_str().unwrap_or("not recorded (v1)");
            *self.channels.entry(channel.to_owned()).or_default() += 1;
        }
        *self.answered_by.entry(version).or_default() += 1;
    }

    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.errors.push(error);
    }

    fn summary(&self, lookups: u64, trace_id: Option<String>) -> serde_json::Value {
        json!({
            "report": "daily",
            "orders": self.orders,
            "revenue": format!("{}.{:02}", self.revenue_cents / 100, self.revenue_cents % 100),
            "items": self.items,
            "channels": self.channels,
            "lookups": lookups,
            "answered_by": self.answered_by,
            "failed": self.failed,
            "errors": self.errors,
            "trace_id": trace_id,
        })
    }
}

/// An order's total in cents, whichever version wrote it.
fn cents(order: &serde_json::Value) -> Option<u64> {
    if let Some(cents) = order["total_cents"].as_u64() {
        return Some(cents);
    }
    let (units, hundredths) = order["total"].as_str()?.split_once('.')?;
    Some(units.parse::<u64>().ok()? * 100 + hundredths.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_totals_are_read() {
        assert_eq!(cents(&json!({"total": "6.20"})), Some(620));
        assert_eq!(cents(&json!({"total_cents": 620})), Some(620));
        assert_eq!(cents(&json!({"total": "six"})), None);
    }
}

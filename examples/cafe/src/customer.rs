//! `cafe-customer`: the café manager asking for the daily report, again and again.
//!
//! Each request to reports starts a new trace (a CLIENT span of service `cafe-customer`); the
//! answers' `answered_by` counts add up to the observed split of orders lookups between the
//! versions, which the demo script prints beside the route's weights.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use http::HeaderMap;
use opentelemetry::KeyValue;

use crate::client::Client;
use crate::trace::Tracer;

/// What the reports said, added up.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Reports asked for.
    pub reports: u64,
    /// Reports that did not come back as a readable summary.
    pub reports_failed: u64,
    /// Orders lookups made by the reports that came back.
    pub lookups: u64,
    /// Lookups answered, by orders version.
    pub answered_by: BTreeMap<String, u64>,
    /// Lookups that failed.
    pub lookups_failed: u64,
    /// The trace id of the last report that had one.
    pub trace_id: Option<String>,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

// === impl Tally ===

impl Tally {
    /// Asks `reports_url` (e.g. `http://127.0.0.1:8090`) for the daily report `count` times,
    /// one after the other, and adds up the answers.
    pub async fn ask(client: &Client, tracer: &Tracer, reports_url: &str, count: u64) -> Self {
        let mut tally = Self::default();
        let url = format!("{reports_url}/reports/daily");
        for _ in 0..count {
            let mut headers = HeaderMap::new();
            let call = tracer.root_client(
                "GET /reports/daily",
                vec![
                    KeyValue::new("http.request.method", "GET"),
                    KeyValue::new("url.full", url.clone()),
                ],
                &mut headers,
            );
            tally.reports += 1;
            match client.get(&url, headers).await {
                Ok(answer) => {
                    call.finish(Ok(answer.status), Vec::new());
                    match answer.json() {
                        Ok(summary) if summary["lookups"].is_u64() => tally.add(&summary),
                        _ => tally.report_failed(format!(
                            "{}: {}",
                            answer.status,
                            String::from_utf8_lossy(&answer.body).trim()
                        )),
                    }
                }
                Err(e) => {
                    call.finish(Err(&e), Vec::new());
                    tally.report_failed(e.to_string());
                }
            }
        }
        tally
    }

    fn add(&mut self, summary: &serde_json::Value) {
        self.lookups += summary["lookups"].as_u64().unwrap_or(0);
        self.lookups_failed += summary["failed"].as_u64().unwrap_or(0);
        if let Some(answered) = summary["answered_by"].as_object() {
            for (version, n) in answered {
                *self.answered_by.entry(version.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        if let Some(id) = summary["trace_id"].as_str() {
            self.trace_id = Some(id.to_owned());
        }
        if self.first_error.is_none()
            && let Some(error) = summary["errors"].get(0).and_then(|e| e.as_str())
        {
            self.first_error = Some(error.to_owned());
        }
    }

    fn report_failed(&mut self, error: String) {
        self.reports_failed += 1;
        self.first_error.get_or_insert(error);
    }

    /// One line for people (and the demo's test):
    /// `observed    v1  88.2% (180)     v2  11.8% (24)      of 204 order lookups, 0 failed`.
    /// `versions` are always listed, in that order, 0 when none answered.
    pub fn observed_line(&self, versions: &[&str]) -> String {
        let answered: u64 = self.answered_by.values().sum();
        let mut line = String::from("observed  ");
        // Same columns as the script's `configured` line above it.
        let mut names: Vec<&str> = versions.to_vec();
        names.extend(
            self.answered_by
                .keys()
                .map(String::as_str)
                .filter(|v| !versions.contains(v)),
        );
        for version in names {
            let n = self.answered_by.get(version).copied().unwrap_or(0);
            let share = if answered == 0 {
                0.0
            } else {
                100.0 * n as f64 / answered as f64
            };
            let _ = write!(line, "  {version} {share:5.1}% {:<8}", format!("({n})"));
        }
        let _ = write!(
            line,
            " of {} order lookups, {} failed",
            self.lookups, self.lookups_failed
        );
        if self.reports_failed > 0 {
            let _ = write!(line, "; {} reports failed", self.reports_failed);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summaries_add_up_and_print_every_version() {
        let mut tally = Tally::default();
        tally.add(
            &json!({"lookups": 12, "failed": 1, "answered_by": {"v1": 9, "v2": 2},
                          "errors": ["hour 9: 500"], "trace_id": "ab"}),
        );
        tally.add(&json!({"lookups": 12, "failed": 0, "answered_by": {"v1": 12}}));
        assert_eq!(tally.lookups, 24);
        assert_eq!(tally.answered_by["v1"], 21);
        assert_eq!(tally.first_error.as_deref(), Some("hour 9: 500"));
        assert_eq!(
            tally.observed_line(&["v1", "v2"]),
            "observed    v1  91.3% (21)      v2   8.7% (2)      of 24 order lookups, 1 failed"
        );
    }
}

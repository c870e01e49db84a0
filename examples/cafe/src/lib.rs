//! The café demo: the services of Meridian's origin story, small enough to read in one sitting,
//! real enough to show a canary rollout and a trace across the mesh.
//!
//! - `cafe-orders` answers `GET /orders?hour=H` with the orders of one opening hour. Version
//!   `v1` states totals as decimal strings; `v2` (the canary) states them in cents and says
//!   which channel (counter or app) took each order. Every answer names its version in the
//!   body and in the `X-Cafe-Version` header. `--error-rate` and `--latency` make a bad canary.
//! - `cafe-reports` answers `GET /reports/daily`: it asks orders for each opening hour through
//!   its local `meridian-proxy` (`Host: orders.cafe.local`), understands both versions' bodies
//!   and sums the day up, including which versions answered.
//! - `cafe-customer` asks reports for the daily report a number of times and prints how many
//!   order lookups each version answered: the observed split the demo script prints.
//!
//! Each continues the caller's W3C `traceparent` and exports its own server and client spans
//! through `meridian-telemetry` (service names `cafe-orders`, `cafe-reports`,
//! `cafe-customer`), so one trace runs customer → reports → proxy → orders.
//!
//! # Layout
//! - [`app`]: what every binary's `main` shares: runtime, telemetry, signals, listener;
//! - [`serve`]: the HTTP/1.1 + h2c server loop with graceful shutdown;
//! - [`client`]: the HTTP client reports and the customer call with;
//! - [`trace`]: server and client spans, and `traceparent` in and out;
//! - [`orders`], [`reports`], [`customer`]: the three programs' logic.

pub mod app;
pub mod client;
pub mod customer;
pub mod orders;
pub mod reports;
pub mod serve;
pub mod trace;

/// The response header naming the version of orders that answered.
pub const VERSION_HEADER: &str = "x-cafe-version";

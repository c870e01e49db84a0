//! The HTTP client reports and the customer call with: hyper-util's pooled client over
//! HTTP/1.1, every call bounded by a timeout, bodies read whole.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A pooled HTTP/1.1 client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    inner: HyperClient<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL does not parse.
    #[error("bad URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why not.
        reason: String,
    },
    /// Connecting or sending failed.
    #[error("{url}: {source}")]
    Send {
        /// The URL.
        url: String,
        /// What the client said.
        source: hyper_util::client::legacy::Error,
    },
    /// The body could not be read.
    #[error("{url}: reading the body: {source}")]
    Body {
        /// The URL.
        url: String,
        /// What hyper said.
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("{url}: no answer within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        timeout: Duration,
    },
}

// === impl Client ===

impl Client {
    /// A client whose calls give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let inner = HyperClient::builder(TokioExecutor::new()).build_http();
        Self { inner, timeout }
    }

    /// `GET url` with `headers` (a `Host` among them is sent as given: that is how a call
    /// names the mesh service while going to the local proxy's address).
    pub async fn get(&self, url: &str, headers: HeaderMap) -> Result<Answer, CallError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| CallError::Url {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let mut request = http::Request::new(Empty::new());
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let call = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|source| CallError::Send {
                    url: url.to_owned(),
                    source,
                })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|source| CallError::Body {
                    url: url.to_owned(),
                    source,
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| CallError::Timeout {
                url: url.to_owned(),
                timeout: self.timeout,
            })?
    }
}

// === impl Answer ===

impl Answer {
    /// The `X-Cafe-Version` header, if the answer came from orders.
    pub fn cafe_version(&self) -> Option<&str> {
        self.headers
            .get(crate::VERSION_HEADER)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

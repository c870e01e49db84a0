//! Which failed tries are retried: a pure decision over the rule's policy, the method, whether
//! the body can be sent again, and what went wrong.

use http::{Method, StatusCode};

use crate::config::RetryPolicy;

/// How one try ended, as far as retries and outlier detection care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The endpoint answered with this status.
    Response(StatusCode),
    /// No connection could be made: the request never left the proxy.
    ConnectFailure,
    /// The connection broke (or the protocol failed) before a response head arrived.
    Reset,
    /// The try exceeded its per-try timeout.
    PerTryTimeout,
}

// === impl Attempt ===

impl Attempt {
    /// A failure for outlier detection: connect errors, resets, timeouts and 5xx.
    pub(crate) fn is_failure(self) -> bool {
        match self {
            Self::Response(status) => status.is_server_error(),
            Self::ConnectFailure | Self::Reset | Self::PerTryTimeout => true,
        }
    }
}

/// Methods retried without `retry_non_idempotent` (RFC 9110 idempotent methods, as the proto
/// lists them).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a try that ended as `attempt` is retried under `policy` (retries left is the
/// caller's business). `replayable`: the request body is buffered, so it can be sent again.
///
/// A connect failure is retried for every method and whatever `retry_on` lists: the request
/// never left the proxy, so repeating it is always safe (the proto says so for methods; the
/// brief extends it to the event list). Everything else needs an idempotent method (or
/// `retry_non_idempotent`) and its event in `retry_on`.
pub(crate) fn should_retry(
    policy: &RetryPolicy,
    method: &Method,
    attempt: Attempt,
    replayable: bool,
) -> bool {
    if !replayable {
        return false;
    }
    if attempt == Attempt::ConnectFailure {
        return true;
    }
    if !(policy.retry_non_idempotent || is_idempotent(method)) {
        return false;
    }
    let on = &policy.retry_on;
    match attempt {
        Attempt::ConnectFailure => true,
        Attempt::Reset => on.reset,
        Attempt::PerTryTimeout => on.per_try_timeout,
        Attempt::Response(status) => {
            let gateway = matches!(
                status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            );
            (on.server_error && status.is_server_error()) || (on.gateway_error && gateway)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryOn;

    fn policy(retry_on: RetryOn, non_idempotent: bool) -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on,
            retry_non_idempotent: non_idempotent,
        }
    }

    #[test]
    fn default_events_retry_gateway_errors_and_resets_of_idempotent_methods() {
        let p = policy(RetryOn::default(), false);
        assert!(should_retry(
            &p,
            &Method::GET,
            Attempt::Response(StatusCode::SERVICE_UNAVAILABLE),
            true
        ));
        assert!(should_retry(&p, &Method::PUT, Attempt::Reset, true));
        assert!(!should_retry(
            &p,
            &Method::GET,
            Attempt::Response(StatusCode::INTERNAL_SERVER_ERROR),
            true
        ));
        assert!(!should_retry(
            &p,
            &Method::GET,
            Attempt::PerTryTimeout,
            true
        ));
        assert!(!should_retry(
            &p,
            &Method::GET,
            Attempt::Response(StatusCode::NOT_FOUND),
            true
        ));
    }

    #[test]
    fn non_idempotent_methods_only_when_allowed() {
        let strict = policy(RetryOn::default(), false);
        let lax = policy(RetryOn::default(), true);
        let bad_gateway = Attempt::Response(StatusCode::BAD_GATEWAY);
        for m in [Method::POST, Method::PATCH] {
            assert!(!should_retry(&strict, &m, bad_gateway, true));
            assert!(!should_retry(&strict, &m, Attempt::Reset, true));
            assert!(should_retry(&lax, &m, bad_gateway, true));
        }
    }

    #[test]
    fn connect_failures_are_always_retried_when_the_body_can_be_replayed() {
        let only_5xx = policy(
            RetryOn {
                server_error: true,
                ..RetryOn::none()
            },
            false,
        );
        assert!(should_retry(
            &only_5xx,
            &Method::POST,
            Attempt::ConnectFailure,
            true
        ));
        assert!(!should_retry(
            &only_5xx,
            &Method::POST,
            Attempt::ConnectFailure,
            false
        ));
    }

    #[test]
    fn explicit_events() {
        let p = policy(
            RetryOn {
                server_error: true,
                per_try_timeout: true,
                ..RetryOn::none()
            },
            false,
        );
        assert!(should_retry(
            &p,
            &Method::GET,
            Attempt::Response(StatusCode::INTERNAL_SERVER_ERROR),
            true
        ));
        assert!(should_retry(&p, &Method::GET, Attempt::PerTryTimeout, true));
        assert!(!should_retry(&p, &Method::GET, Attempt::Reset, true));
    }

    #[test]
    fn streamed_bodies_are_never_retried() {
        let p = policy(RetryOn::default(), true);
        assert!(!should_retry(&p, &Method::GET, Attempt::Reset, false));
    }

    #[test]
    fn outlier_failures() {
        assert!(Attempt::Response(StatusCode::INTERNAL_SERVER_ERROR).is_failure());
        assert!(!Attempt::Response(StatusCode::NOT_FOUND).is_failure());
        assert!(Attempt::ConnectFailure.is_failure());
        assert!(Attempt::PerTryTimeout.is_failure());
    }
}

//! Trace context in HTTP headers: W3C `traceparent` / `tracestate` and Zipkin's B3 (single
//! `b3` header and multi `X-B3-*` headers) in, W3C (plus the B3 form the caller used) out.
//!
//! [`extract`] reads a caller's span context; [`inject`] writes one for the next hop. Both work
//! on an [`http::HeaderMap`] directly (no `Extractor`/`Injector` indirection, no global
//! propagator), read bytes without allocating, and never panic on any header value: garbage
//! counts as absent, and the trace starts here.
//!
//! Precedence when several are present: a valid `traceparent`, then a valid `b3`, then valid
//! `X-B3-*` headers. An invalid form is skipped, so a broken `traceparent` next to a good `b3`
//! still continues the caller's trace.
//!
//! W3C rules followed (Trace Context, Level 1 §3.2): lower-case hex only; all-zero trace or
//! parent ids are invalid; version `ff` is invalid; version `00` is exactly 55 characters; a
//! higher version is parsed leniently (its first 55 characters as version `00`, then the end
//! or a `-`); more than one `traceparent` field is invalid; `tracestate` is read only with a
//! valid `traceparent`, its fields joined, and dropped (the `traceparent` kept) when invalid.
//!
//! B3 rules followed (openzipkin/b3-propagation): 16 or 32 lower-hex trace ids (a 64-bit id is
//! the low half of the 128-bit one), 16-hex span ids; sampling state `1`, `0` or `d` (debug:
//! sampled), also `true`/`false` in `X-B3-Sampled`, and `X-B3-Flags: 1` for debug; `b3: 0`
//! (or `X-B3-Sampled: 0` without ids) is a deny: the request is not traced, see
//! [`Extracted::Deny`]. An absent sampling state ("defer") is taken as not sampled:
//! OpenTelemetry has no deferred decision, and a deferring caller asks for nothing.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};

/// `traceparent`, the W3C header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`, the W3C vendor list.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `b3`, Zipkin's single header.
pub static B3: HeaderName = HeaderName::from_static("b3");
/// `X-B3-TraceId`.
pub static X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `X-B3-SpanId`.
pub static X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `X-B3-ParentSpanId` (read by nobody here; removed when the B3 headers are rewritten).
pub static X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `X-B3-Sampled`.
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `X-B3-Flags` (`1`: debug).
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// What a request's headers say about its trace.
#[derive(Debug, Clone, PartialEq)]
pub enum Extracted {
    /// No usable trace context: start a trace here.
    None,
    /// The caller's span (remote), in the format it came in.
    Span {
        /// Trace id, span id (the caller's, so the parent of ours), flags, trace state.
        context: SpanContext,
        /// Which B3 forms the caller used, to answer in kind.
        b3: B3Forms,
    },
    /// The caller said "do not trace" without ids (`b3: 0`, or `X-B3-Sampled: 0` alone).
    Deny {
        /// Which B3 forms the caller used.
        b3: B3Forms,
    },
}

/// The B3 forms present on a request, so [`inject`] writes them too: a Zipkin-era callee
/// behind the proxy keeps seeing the form its caller used, with the proxy as its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct B3Forms {
    /// The single `b3` header was present.
    pub single: bool,
    /// `X-B3-TraceId` was present.
    pub multi: bool,
}

// === impl Extracted ===

impl Extracted {
    /// An OpenTelemetry parent context: the caller's span as a remote parent, or an empty
    /// context (a new trace). A [`Extracted::Deny`] becomes an unsampled remote parent with
    /// fresh random ids, so a parent-based sampler drops the request and the next hop gets
    /// the sampled flag `0`.
    pub fn to_context(&self) -> Context {
        match self {
            Self::None => Context::new(),
            Self::Span { context, .. } => Context::new().with_remote_span_context(context.clone()),
            Self::Deny { .. } => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(random_nonzero_u128()),
                SpanId::from(fastrand::u64(1..)),
                TraceFlags::NOT_SAMPLED,
                true,
                TraceState::NONE,
            )),
        }
    }

    /// The B3 forms the caller used (none for W3C or nothing).
    pub fn b3(&self) -> B3Forms {
        match self {
            Self::None => B3Forms::default(),
            Self::Span { b3, .. } | Self::Deny { b3 } => *b3,
        }
    }
}

fn random_nonzero_u128() -> u128 {
    (u128::from(fastrand::u64(1..)) << 64) | u128::from(fastrand::u64(..))
}

/// The trace context `headers` carry, by the precedence above.
pub fn extract(headers: &HeaderMap) -> Extracted {
    let b3 = B3Forms {
        single: headers.contains_key(&B3),
        multi: headers.contains_key(&X_B3_TRACE_ID) || headers.contains_key(&X_B3_SAMPLED),
    };
    if let Some(context) = w3c(headers) {
        return Extracted::Span { context, b3 };
    }
    if b3.single
        && let Some(found) = single_value(headers, &B3).and_then(b3_single)
    {
        return found.with_forms(b3);
    }
    if b3.multi
        && let Some(found) = b3_multi(headers)
    {
        return found.with_forms(b3);
    }
    Extracted::None
}

/// Writes `context` as the trace context of the next hop: `traceparent` (always; sampled flag
/// as the context says) and `tracestate` (when not empty), replacing what `headers` had; and,
/// when the caller used B3 (`b3`), the same span in those forms, replacing the caller's
/// (`X-B3-ParentSpanId` and `X-B3-Flags` are removed: the parent is implied, debug is folded
/// into the sampled flag). An invalid `context` removes the trace headers instead.
pub fn inject(context: &SpanContext, b3: B3Forms, headers: &mut HeaderMap) {
    if !context.is_valid() {
        for name in [&TRACEPARENT, &TRACESTATE] {
            headers.remove(name);
        }
        return;
    }
    let trace_id = context.trace_id().to_bytes();
    let span_id = context.span_id().to_bytes();
    let sampled = context.is_sampled();

    let mut out = [b'-'; TRACEPARENT_LEN];
    out[..2].copy_from_slice(b"00");
    hex_into(&mut out[3..35], &trace_id);
    hex_into(&mut out[36..52], &span_id);
    out[53..55].copy_from_slice(if sampled { b"01" } else { b"00" });
    insert(headers, &TRACEPARENT, &out);
    let state = context.trace_state();
    if *state == TraceState::NONE {
        headers.remove(&TRACESTATE);
    } else {
        match HeaderValue::from_str(&state.header()) {
            Ok(value) => {
                headers.insert(TRACESTATE.clone(), value);
            }
            Err(_) => {
                headers.remove(&TRACESTATE);
            }
        }
    }

    if !(b3.single || b3.multi) {
        return;
    }
    // A 64-bit B3 trace id (the high half zero) goes back out in 16 digits: older Zipkin
    // callees only know those.
    let trace = if trace_id[..8] == [0; 8] {
        &out[19..35]
    } else {
        &out[3..35]
    };
    let span = &out[36..52];
    let flag: &[u8] = if sampled { b"1" } else { b"0" };
    if b3.single {
        let mut single = [0u8; 32 + 1 + 16 + 2];
        let len = trace.len() + 1 + span.len() + 2;
        single[..trace.len()].copy_from_slice(trace);
        single[trace.len()] = b'-';
        single[trace.len() + 1..trace.len() + 17].copy_from_slice(span);
        single[len - 2] = b'-';
        single[len - 1] = flag[0];
        insert(headers, &B3, &single[..len]);
    }
    if b3.multi {
        insert(headers, &X_B3_TRACE_ID, trace);
        insert(headers, &X_B3_SPAN_ID, span);
        insert(headers, &X_B3_SAMPLED, flag);
        headers.remove(&X_B3_PARENT_SPAN_ID);
        headers.remove(&X_B3_FLAGS);
    }
}

fn insert(headers: &mut HeaderMap, name: &HeaderName, value: &[u8]) {
    // Lower-case hex and dashes: always a valid header value.
    if let Ok(value) = HeaderValue::from_bytes(value) {
        headers.insert(name.clone(), value);
    }
}

// === W3C ===

/// A valid `traceparent` (exactly one field) and its `tracestate`.
fn w3c(headers: &HeaderMap) -> Option<SpanContext> {
    let t = single_value(headers, &TRACEPARENT)?;
    let (trace_id, span_id, flags) = traceparent(t)?;
    let state = trace_state(headers);
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// Parses a `traceparent` value per W3C Trace Context §3.2.
fn traceparent(t: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    let version = hex_u8(t.get(0..2)?)?;
    if version == 0xff || t.len() < TRACEPARENT_LEN {
        return None;
    }
    // Version 00 is exactly 55 characters; a later one may carry more after a dash.
    if version == 0 && t.len() != TRACEPARENT_LEN {
        return None;
    }
    if version > 0 && t.len() > TRACEPARENT_LEN && t[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    if t[2] != b'-' || t[35] != b'-' || t[52] != b'-' {
        return None;
    }
    let trace_id = hex_u128(&t[3..35]).filter(|id| *id != 0)?;
    let span_id = hex_u64(&t[36..52]).filter(|id| *id != 0)?;
    let flags = hex_u8(&t[53..55])?;
    // Only the sampled bit is defined for every version; unknown bits are not passed on.
    let flags = TraceFlags::new(flags) & TraceFlags::SAMPLED;
    Some((TraceId::from(trace_id), SpanId::from(span_id), flags))
}

/// Every `tracestate` field, joined with commas (an HTTP list); empty when absent or invalid.
fn trace_state(headers: &HeaderMap) -> TraceState {
    let mut fields = headers.get_all(&TRACESTATE).iter();
    let Some(first) = fields.next() else {
        return TraceState::NONE;
    };
    let parse = |text: &str| text.parse::<TraceState>().unwrap_or(TraceState::NONE);
    let mut rest = fields.peekable();
    if rest.peek().is_none() {
        return first.to_str().map_or(TraceState::NONE, parse);
    }
    let mut joined = String::from(first.to_str().unwrap_or_default());
    for value in rest {
        let Ok(value) = value.to_str() else {
            return TraceState::NONE;
        };
        joined.push(',');
        joined.push_str(value);
    }
    parse(&joined)
}

// === B3 ===

/// The `b3` single header: `{trace}-{span}[-{sampling}[-{parent}]]`, or `{sampling}` alone.
fn b3_single(v: &[u8]) -> Option<Extracted> {
    let mut parts = v.split(|b| *b == b'-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        // Only a sampling state: `0` denies; `1` or `d` without ids says nothing usable.
        return (first == b"0").then_some(Extracted::Deny {
            b3: B3Forms::default(),
        });
    };
    let trace_id = b3_trace_id(first)?;
    let span_id = b3_span_id(span)?;
    let flags = match parts.next() {
        None => TraceFlags::NOT_SAMPLED,
        Some(b"1" | b"d") => TraceFlags::SAMPLED,
        Some(b"0") => TraceFlags::NOT_SAMPLED,
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(remote(trace_id, span_id, flags))
}

/// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, `X-B3-Flags`.
fn b3_multi(headers: &HeaderMap) -> Option<Extracted> {
    let debug = match single_value(headers, &X_B3_FLAGS) {
        None => false,
        Some(b"1") => true,
        Some(b"0") => false,
        Some(_) => return None,
    };
    let sampled = match single_value(headers, &X_B3_SAMPLED) {
        None => None,
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        Some(_) => return None,
    };
    let Some(trace) = single_value(headers, &X_B3_TRACE_ID) else {
        return (sampled == Some(false) && !debug).then_some(Extracted::Deny {
            b3: B3Forms::default(),
        });
    };
    let trace_id = b3_trace_id(trace)?;
    let span_id = b3_span_id(single_value(headers, &X_B3_SPAN_ID)?)?;
    let flags = if debug || sampled == Some(true) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::NOT_SAMPLED
    };
    Some(remote(trace_id, span_id, flags))
}

fn b3_trace_id(v: &[u8]) -> Option<u128> {
    match v.len() {
        16 => hex_u64(v).map(u128::from),
        32 => hex_u128(v),
        _ => None,
    }
    .filter(|id| *id != 0)
}

fn b3_span_id(v: &[u8]) -> Option<u64> {
    (v.len() == 16)
        .then(|| hex_u64(v))
        .flatten()
        .filter(|id| *id != 0)
}

fn remote(trace_id: u128, span_id: u64, flags: TraceFlags) -> Extracted {
    Extracted::Span {
        context: SpanContext::new(
            TraceId::from(trace_id),
            SpanId::from(span_id),
            flags,
            true,
            TraceState::NONE,
        ),
        b3: B3Forms::default(),
    }
}

impl Extracted {
    fn with_forms(self, forms: B3Forms) -> Self {
        match self {
            Self::None => Self::None,
            Self::Span { context, .. } => Self::Span { context, b3: forms },
            Self::Deny { .. } => Self::Deny { b3: forms },
        }
    }
}

// === bytes ===

/// The value of a header that must appear once (several fields: invalid).
fn single_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h [u8]> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values.next().is_none().then(|| value.as_bytes())
}

/// A lower-case hex digit's value.
fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_u128(v: &[u8]) -> Option<u128> {
    if v.is_empty() || v.len() > 32 {
        return None;
    }
    v.iter()
        .try_fold(0u128, |acc, b| Some(acc << 4 | u128::from(nibble(*b)?)))
}

fn hex_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 16 {
        return None;
    }
    v.iter()
        .try_fold(0u64, |acc, b| Some(acc << 4 | u64::from(nibble(*b)?)))
}

fn hex_u8(v: &[u8]) -> Option<u8> {
    match v {
        [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
        _ => None,
    }
}

/// `bytes` as lower-case hex into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
#[path = "propagation_tests.rs"]
mod tests;

//! Tests of [`super`]: the W3C and B3 specifications' examples, their invalid cases, and
//! random bytes.

use super::*;
use proptest::prelude::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN: &str = "b7ad6b7169203331";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    h
}

fn span(extracted: &Extracted) -> &SpanContext {
    match extracted {
        Extracted::Span { context, .. } => context,
        other => panic!("expected a span context, got {other:?}"),
    }
}

#[test]
fn w3c_spec_example_is_continued_with_its_tracestate() {
    let h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "rojo=00f067aa0ba902b7"),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]);
    let extracted = extract(&h);
    let cx = span(&extracted);
    assert_eq!(format!("{:032x}", cx.trace_id()), TRACE);
    assert_eq!(format!("{:016x}", cx.span_id()), SPAN);
    assert!(cx.is_sampled() && cx.is_remote());
    assert_eq!(cx.trace_state().get("rojo"), Some("00f067aa0ba902b7"));
    assert_eq!(cx.trace_state().get("congo"), Some("t61rcWkgMzE"));
    assert_eq!(extracted.b3(), B3Forms::default());
    assert!(extracted.to_context().has_active_span());
}

#[test]
fn w3c_invalid_values_are_ignored() {
    let zeros32 = "00000000000000000000000000000000";
    for bad in [
        String::new(),
        "garbage".to_owned(),
        format!("00-{zeros32}-{SPAN}-01"),
        format!("00-{TRACE}-0000000000000000-01"),
        format!("ff-{TRACE}-{SPAN}-01"),
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("00-{TRACE}-{SPAN}-0g"),
        format!("00-{TRACE}+{SPAN}-01"),
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("00-{TRACE}-{SPAN}-1"),
        format!("0-{TRACE}-{SPAN}-01"),
        format!("01-{TRACE}-{SPAN}-01x"),
        format!("00-{}-{SPAN}-01", &TRACE[..31]),
    ] {
        assert_eq!(
            extract(&headers(&[("traceparent", &bad)])),
            Extracted::None,
            "{bad:?}"
        );
    }
    // Two traceparent fields: invalid.
    let two = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("traceparent", &format!("00-{TRACE}-{SPAN}-00")),
    ]);
    assert_eq!(extract(&two), Extracted::None);
}

#[test]
fn w3c_future_versions_are_read_leniently() {
    for future in [
        format!("01-{TRACE}-{SPAN}-01"),
        format!("cc-{TRACE}-{SPAN}-01-what-the-future-holds"),
    ] {
        let extracted = extract(&headers(&[("traceparent", &future)]));
        assert!(span(&extracted).is_sampled(), "{future}");
    }
    // Unknown flag bits are not passed on; the sampled bit is.
    let extracted = extract(&headers(&[(
        "traceparent",
        &format!("00-{TRACE}-{SPAN}-03"),
    )]));
    assert_eq!(span(&extracted).trace_flags(), TraceFlags::SAMPLED);
    let extracted = extract(&headers(&[(
        "traceparent",
        &format!("00-{TRACE}-{SPAN}-00"),
    )]));
    assert!(!span(&extracted).is_sampled());
}

#[test]
fn an_invalid_tracestate_is_dropped_and_the_traceparent_kept() {
    let h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "no equals sign"),
    ]);
    assert_eq!(*span(&extract(&h)).trace_state(), TraceState::NONE);
}

#[test]
fn b3_single_header_forms() {
    let h = headers(&[("b3", &format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90"))]);
    let extracted = extract(&h);
    assert_eq!(format!("{:032x}", span(&extracted).trace_id()), TRACE);
    assert!(span(&extracted).is_sampled());
    assert_eq!(
        extracted.b3(),
        B3Forms {
            single: true,
            multi: false
        }
    );
    // 64-bit trace id; debug; no sampling state (deferred: not sampled).
    let h = headers(&[("b3", &format!("8448eb211c80319c-{SPAN}-d"))]);
    let cx = span(&extract(&h)).clone();
    assert_eq!(
        format!("{:032x}", cx.trace_id()),
        "00000000000000008448eb211c80319c"
    );
    assert!(cx.is_sampled());
    let h = headers(&[("b3", &format!("{TRACE}-{SPAN}"))]);
    assert!(!span(&extract(&h)).is_sampled());
    // Deny.
    let deny = extract(&headers(&[("b3", "0")]));
    assert!(matches!(deny, Extracted::Deny { .. }), "{deny:?}");
    let cx = deny.to_context();
    assert!(cx.span().span_context().is_valid() && !cx.span().span_context().is_sampled());
    for bad in [
        "1",
        "d",
        "x",
        &format!("{TRACE}-{SPAN}-2"),
        &format!("{TRACE}-{SPAN}-1-bad"),
        &format!("{TRACE}-{SPAN}-1-{SPAN}-more"),
        &format!("{}-{SPAN}-1", &TRACE[..20]),
        &format!("{TRACE}-0000000000000000-1"),
    ] {
        assert_eq!(extract(&headers(&[("b3", bad)])), Extracted::None, "{bad}");
    }
}

#[test]
fn b3_multi_headers() {
    let h = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
    ]);
    let extracted = extract(&h);
    assert!(span(&extracted).is_sampled());
    assert!(extracted.b3().multi && !extracted.b3().single);
    let debug = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
    ]);
    assert!(span(&extract(&debug)).is_sampled());
    let unsampled = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "false"),
    ]);
    assert!(!span(&extract(&unsampled)).is_sampled());
    assert!(matches!(
        extract(&headers(&[("x-b3-sampled", "0")])),
        Extracted::Deny { .. }
    ));
    let no_span = headers(&[("x-b3-traceid", TRACE), ("x-b3-sampled", "1")]);
    assert_eq!(extract(&no_span), Extracted::None);
}

#[test]
fn precedence_is_traceparent_then_b3_then_multi() {
    let other = "1234567890abcdef1234567890abcdef";
    let all = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("b3", &format!("{other}-{SPAN}-1")),
        ("x-b3-traceid", other),
        ("x-b3-spanid", SPAN),
    ]);
    let extracted = extract(&all);
    assert_eq!(format!("{:032x}", span(&extracted).trace_id()), TRACE);
    assert_eq!(
        extracted.b3(),
        B3Forms {
            single: true,
            multi: true
        }
    );
    // A broken traceparent does not hide a good b3.
    let fallback = headers(&[
        ("traceparent", "00-garbage"),
        ("b3", &format!("{other}-{SPAN}-1")),
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
    ]);
    assert_eq!(
        format!("{:032x}", span(&extract(&fallback)).trace_id()),
        other
    );
    let multi_only = headers(&[
        ("b3", "garbage"),
        ("x-b3-traceid", other),
        ("x-b3-spanid", SPAN),
    ]);
    assert_eq!(
        format!("{:032x}", span(&extract(&multi_only)).trace_id()),
        other
    );
}

#[test]
fn inject_writes_w3c_and_the_b3_forms_the_caller_used() {
    let cx = SpanContext::new(
        TraceId::from(0x8448eb211c80319c_u128),
        SpanId::from(0x00f067aa0ba902b7),
        TraceFlags::SAMPLED,
        false,
        "rojo=1".parse().unwrap(),
    );
    let mut h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-00")),
        ("x-b3-parentspanid", SPAN),
        ("x-b3-flags", "1"),
    ]);
    inject(
        &cx,
        B3Forms {
            single: true,
            multi: true,
        },
        &mut h,
    );
    assert_eq!(
        h["traceparent"],
        "00-00000000000000008448eb211c80319c-00f067aa0ba902b7-01"
    );
    assert_eq!(h["tracestate"], "rojo=1");
    assert_eq!(h["b3"], "8448eb211c80319c-00f067aa0ba902b7-1");
    assert_eq!(h["x-b3-traceid"], "8448eb211c80319c");
    assert_eq!(h["x-b3-spanid"], "00f067aa0ba902b7");
    assert_eq!(h["x-b3-sampled"], "1");
    assert!(h.get("x-b3-parentspanid").is_none() && h.get("x-b3-flags").is_none());
    // What was injected reads back as the same span.
    assert_eq!(span(&extract(&h)).span_id(), cx.span_id());

    // Unsampled, 128-bit, W3C only: no B3 written, an old tracestate removed.
    let cx = SpanContext::new(
        TraceId::from_hex(TRACE).unwrap(),
        SpanId::from_hex(SPAN).unwrap(),
        TraceFlags::NOT_SAMPLED,
        false,
        TraceState::NONE,
    );
    let mut h = headers(&[("tracestate", "old=1")]);
    inject(&cx, B3Forms::default(), &mut h);
    assert_eq!(h["traceparent"], format!("00-{TRACE}-{SPAN}-00"));
    assert!(h.get("tracestate").is_none() && h.get("b3").is_none());
}

proptest! {
    #[test]
    fn random_header_bytes_never_panic(
        traceparent in proptest::collection::vec(any::<u8>(), 0..80),
        b3 in proptest::collection::vec(any::<u8>(), 0..80),
        trace_id in proptest::collection::vec(any::<u8>(), 0..40),
        tracestate in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let mut h = HeaderMap::new();
        for (name, value) in [
            (&TRACEPARENT, &traceparent),
            (&B3, &b3),
            (&X_B3_TRACE_ID, &trace_id),
            (&X_B3_SPAN_ID, &trace_id),
            (&TRACESTATE, &tracestate),
        ] {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                h.insert(name.clone(), value);
            }
        }
        let extracted = extract(&h);
        if let Extracted::Span { context, b3 } = &extracted {
            prop_assert!(context.is_valid());
            inject(context, *b3, &mut h);
            prop_assert_eq!(span(&extract(&h)).trace_id(), context.trace_id());
        }
    }

    #[test]
    fn near_valid_traceparents_never_panic(
        version in "[0-9a-fA-F]{2}",
        body in "[0-9a-f-]{50,60}",
    ) {
        let value = format!("{version}-{body}");
        let _ = extract(&headers(&[("traceparent", &value)]));
    }
}

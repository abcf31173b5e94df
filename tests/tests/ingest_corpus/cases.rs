//! The corpus itself: each case is raw request bytes and the answer they must get.

use hookstream_tests::ingest::scheme_of;
use hookstream_tests::sign;

use super::{body, case, http, replace, signed, without, Case, SOURCES};

/// The cases about signatures, for every scheme.
pub(super) fn signature_cases(now: i64) -> Vec<Case> {
    let mut cases = Vec::new();
    for s in SOURCES {
        let b = body("evt_c");
        let h = signed(s, "evt_c", now, &b);
        let mut tampered = b.clone();
        tampered[12] ^= 1;
        cases.push(case(
            format!("{s}: tampered body"),
            http(s, &h, &tampered),
            &[403],
            Some("signature_mismatch"),
        ));
        let wrong = sign::sign(scheme_of(s), "whsec_d3Jvbmctc2VjcmV0", "evt_c", now, &b);
        cases.push(case(
            format!("{s}: unknown secret"),
            http(s, &wrong, &b),
            &[403],
            Some("signature_mismatch"),
        ));
        for (name, _) in &h {
            cases.push(case(
                format!("{s}: without {name}"),
                http(s, &without(&h, name), &b),
                &[400],
                Some("missing_header"),
            ));
        }
        let sig = h
            .iter()
            .map(|(k, _)| k.clone())
            .find(|k| k.contains("signature"))
            .unwrap();
        cases.push(case(
            format!("{s}: signature of another shape"),
            http(s, &replace(&h, &sig, "md5=abc"), &b),
            &[400],
            Some("invalid_header"),
        ));
        // Two signature headers, a wrong one first: the first is the one checked.
        let mut twice = h.clone();
        let bad = sign::sign(scheme_of(s), "whsec_d3Jvbmctc2VjcmV0", "evt_c", now, &b);
        let bad_sig = bad.iter().find(|(k, _)| *k == sig).unwrap().clone();
        twice.insert(0, bad_sig);
        cases.push(case(
            format!("{s}: duplicate signature headers"),
            http(s, &twice, &b),
            &[403],
            Some("signature_mismatch"),
        ));
        if s != "github" {
            for (label, ts) in [("stale", now - 3600), ("future", now + 3600)] {
                let old = signed(s, "evt_c", ts, &b);
                cases.push(case(
                    format!("{s}: {label} timestamp"),
                    http(s, &old, &b),
                    &[403],
                    Some("timestamp_out_of_tolerance"),
                ));
            }
        }
        if s != "stripe" {
            let other = signed(s, "evt_other", now, &b);
            let mut c = case(
                format!("{s}: id header disagrees with the body (accepted: a signed header or the body decides)"),
                http(s, &other, &b),
                &[200],
                None,
            );
            c.signed = true;
            cases.push(c);
        }
    }
    cases
}

/// Signed requests whose bodies are hostile, then odd but valid ones.
pub(super) fn body_cases(now: i64) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut signed_body = |name: &str, b: Vec<u8>, id: &str, status: &'static [u16], code: Option<&'static str>| {
        let h = signed("paymenthub", id, now, &b);
        let mut c = case(format!("paymenthub: {name}"), http("paymenthub", &h, &b), status, code);
        c.signed = true;
        cases.push(c);
    };
    signed_body(
        "body is not UTF-8",
        b"\xff\xfe{\"id\":1}".to_vec(),
        "e1",
        &[400],
        Some("invalid_json"),
    );
    signed_body("empty body", Vec::new(), "e2", &[400], Some("invalid_json"));
    signed_body("JSON array", b"[1,2,3]".to_vec(), "e3", &[400], Some("invalid_json"));
    let deep = [b"{\"a\":".repeat(10_000), b"1".to_vec(), b"}".repeat(10_000)].concat();
    signed_body("JSON nested 10,000 deep", deep, "e4", &[400], Some("invalid_json"));
    let nul = br#"{"id":"a\u0000b","payment_id":"pay_c"}"#.to_vec();
    // The id header carries the NUL too: the HTTP layer refuses the header itself.
    signed_body("NUL in the id", nul, "a\u{0}b", &[400], None);
    let ctl = br#"{"id":"evt_ctl","payment_id":"pay\u0007c"}"#.to_vec();
    signed_body(
        "control character in the payment id",
        ctl,
        "evt_ctl",
        &[400],
        Some("invalid_field"),
    );
    let long = format!(r#"{{"id":"evt_long","payment_id":"{}"}}"#, "p".repeat(10_240)).into_bytes();
    signed_body("10 KB payment id", long, "evt_long", &[400], Some("invalid_field"));
    let long_id = format!(r#"{{"id":"{0}","payment_id":"pay_c"}}"#, "e".repeat(10_240));
    signed_body(
        "10 KB event id",
        long_id.into_bytes(),
        &"e".repeat(10_240),
        &[400],
        Some("invalid_field"),
    );
    for (name, seq) in [
        ("sequence 0", "0"),
        ("negative sequence", "-5"),
        ("sequence beyond i64", "1e30"),
        ("sequence as a string", "\"3\""),
    ] {
        let b = format!(r#"{{"id":"evt_s","payment_id":"pay_c","sequence":{seq}}}"#).into_bytes();
        signed_body(name, b, "evt_s", &[400], Some("invalid_field"));
    }
    signed_body(
        "no payment id",
        br#"{"id":"evt_np"}"#.to_vec(),
        "evt_np",
        &[400],
        Some("missing_field"),
    );
    signed_body(
        "numeric payment id",
        br#"{"id":"evt_nn","payment_id":7}"#.to_vec(),
        "evt_nn",
        &[400],
        Some("invalid_field"),
    );
    cases.extend(accepted_body_cases(now));
    cases
}

/// Signed bodies that are odd but valid: accepted, the processor decides them.
fn accepted_body_cases(now: i64) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut signed_body = |name: &str, b: Vec<u8>, id: &str, status: &'static [u16], code: Option<&'static str>| {
        let h = signed("paymenthub", id, now, &b);
        let mut c = case(format!("paymenthub: {name}"), http("paymenthub", &h, &b), status, code);
        c.signed = true;
        cases.push(c);
    };
    // Signed and well-formed: accepted; the processor decides them (unknown type,
    // sequence far ahead: dead letters with their reason).
    let unknown = br#"{"id":"evt_u","payment_id":"pay_c","type":"payment.teleported"}"#.to_vec();
    signed_body(
        "unknown event type (accepted, the processor dead-letters it)",
        unknown,
        "evt_u",
        &[200],
        None,
    );
    let far = br#"{"id":"evt_f","payment_id":"pay_c","sequence":1000000000000}"#.to_vec();
    signed_body(
        "sequence far ahead (accepted, the processor dead-letters it)",
        far,
        "evt_f",
        &[200],
        None,
    );
    // Duplicate keys: the last one wins (serde_json); the unsigned id header decides nothing.
    let dup = br#"{"id":"evt_first","id":"evt_last","payment_id":"pay_c"}"#.to_vec();
    signed_body(
        "duplicate JSON keys, header names the last",
        dup.clone(),
        "evt_last",
        &[200],
        None,
    );
    signed_body(
        "duplicate JSON keys, header names the first (accepted: the body's last id decides)",
        dup,
        "evt_first",
        &[200],
        None,
    );
    cases
}

/// Requests the router refuses, then those the HTTP layer refuses, then odd but valid
/// ones.
pub(super) fn http_cases(now: i64) -> Vec<Case> {
    let b = body("evt_h");
    let h = signed("paymenthub", "evt_h", now, &b);
    let mut cases = vec![
        case("unknown source", http("nosuch", &h, &b), &[404], Some("unknown_source")),
        case(
            "no such route",
            b"GET /admin HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
            &[404],
            Some("not_found"),
        ),
        case("path traversal", http("../admin", &h, &b), &[404], None),
        case(
            "GET on a webhook path",
            b"GET /webhooks/paymenthub HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
            &[405],
            Some("method_not_allowed"),
        ),
        case(
            "unknown method",
            [b"BREW /webhooks/paymenthub HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".as_slice()].concat(),
            &[405],
            Some("method_not_allowed"),
        ),
    ];
    cases.extend(framing_cases(&h, &b));
    cases.extend(accepted_http_cases(now));
    cases
}

/// Requests whose HTTP framing is broken or beyond a limit: headers, URI, lengths,
/// chunks, Expect, another protocol.
fn framing_cases(h: &[(String, String)], b: &[u8]) -> Vec<Case> {
    let mut cases = vec![
        case(
            "100 headers of 8 KB",
            {
                let mut s = "POST /webhooks/paymenthub HTTP/1.1\r\nhost: x\r\n".to_owned();
                for i in 0..100 {
                    s.push_str(&format!("x-pad-{i}: {}\r\n", "a".repeat(8192)));
                }
                s.push_str("content-length: 0\r\n\r\n");
                s.into_bytes()
            },
            &[431],
            None,
        ),
        case(
            "a 100 KB URI",
            format!("POST /webhooks/{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(100_000)).into_bytes(),
            &[414, 431],
            None,
        ),
        case(
            "a header line without a colon",
            b"POST /webhooks/paymenthub HTTP/1.1\r\nhost x\r\n\r\n".to_vec(),
            &[400],
            None,
        ),
    ];
    cases.extend(length_cases(h, b));
    cases
}

/// The signed request's head with `extra` header lines (and the blank line) appended.
fn head(h: &[(String, String)], extra: &str) -> Vec<u8> {
    let mut s = "POST /webhooks/paymenthub HTTP/1.1\r\nhost: x\r\n".to_owned();
    for (k, v) in h {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(extra);
    s.into_bytes()
}

/// Bodies whose length or chunking is broken or beyond the limit, Expect, and another
/// protocol's preface.
fn length_cases(h: &[(String, String)], b: &[u8]) -> Vec<Case> {
    let head = |extra: &str| head(h, extra);
    let b = b.to_vec();
    vec![
        case(
            "Content-Length not a number",
            [head("content-length: many\r\n\r\n"), b.clone()].concat(),
            &[400],
            None,
        ),
        case(
            "two different Content-Lengths",
            [
                head(&format!("content-length: {}\r\ncontent-length: 3\r\n\r\n", b.len())),
                b.clone(),
            ]
            .concat(),
            &[400],
            None,
        ),
        case(
            "Content-Length shorter than the body",
            [head("content-length: 10\r\n\r\n"), b.clone()].concat(),
            &[403],
            Some("signature_mismatch"),
        ),
        case(
            "invalid chunk size",
            [
                head("transfer-encoding: chunked\r\n\r\n"),
                b"zz\r\nabc\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            &[400],
            Some("body_read_error"),
        ),
        case(
            "chunked over the limit",
            [
                head("transfer-encoding: chunked\r\n\r\n"),
                format!("{:x}\r\n", 70_000).into_bytes(),
                vec![b'a'; 70_000],
                b"\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            &[413],
            Some("payload_too_large"),
        ),
        case(
            "Content-Length over the limit",
            [head("content-length: 10000000\r\n\r\n")].concat(),
            &[413],
            Some("payload_too_large"),
        ),
        case(
            "unsigned, with Expect: 100-continue",
            b"POST /webhooks/paymenthub HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 50000\r\n\r\n"
                .to_vec(),
            &[400],
            Some("missing_header"),
        ),
        // hyper closes the connection without an answer (status 0 here).
        case(
            "an HTTP/2 preface on the HTTP/1 port",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            &[0, 400, 505],
            None,
        ),
    ]
}

/// Signed requests in forms a client may send: answered 200.
fn accepted_http_cases(now: i64) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut ok = |name: &str, bytes: Vec<u8>| {
        let mut c = case(name, bytes, &[200], None);
        c.signed = true;
        cases.push(c);
    };
    let b0 = body("evt_http10");
    let h0 = signed("paymenthub", "evt_http10", now, &b0);
    let mut v10 = http("paymenthub", &h0, &b0);
    v10.splice(
        0..v10.iter().position(|&c| c == b'\r').unwrap(),
        b"POST /webhooks/paymenthub HTTP/1.0".iter().copied(),
    );
    ok("HTTP/1.0", v10);
    let b1 = body("evt_continue");
    let h1 = signed("paymenthub", "evt_continue", now, &b1);
    let mut hc = h1.clone();
    hc.push(("expect".into(), "100-continue".into()));
    ok("signed, with Expect: 100-continue", http("paymenthub", &hc, &b1));
    cases
}

//! Every signature scheme's verification on arbitrary headers and bodies: never
//! panics, and whatever `verify` accepts, the check made before the body is read
//! (`precheck`) accepts too (so no valid request is refused early).
#![no_main]

use arbitrary::Arbitrary;
use hookstream_ingest::verify::{precheck, verify, Scheme, Secrets};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const SCHEMES: [Scheme; 4] = [
    Scheme::HmacSha256,
    Scheme::StandardWebhooks,
    Scheme::Stripe,
    Scheme::Github,
];

#[derive(Arbitrary, Debug)]
struct Input {
    scheme: u8,
    headers: Vec<(u8, Vec<u8>)>,
    body: Vec<u8>,
    now: i64,
    tolerance: u16,
}

fuzz_target!(|i: Input| {
    let scheme = SCHEMES[usize::from(i.scheme) % SCHEMES.len()];
    let names = scheme.signed_headers();
    let mut headers = HeaderMap::new();
    for (n, v) in i.headers.iter().take(8) {
        let name = HeaderName::from_static(names[usize::from(*n) % names.len()]);
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(name, v);
        }
    }
    let secret = if scheme == Scheme::StandardWebhooks {
        "whsec_ZnV6ei1zZWNyZXQ="
    } else {
        "fuzz-secret"
    };
    let Ok(secrets) = Secrets::from_env_value(scheme, secret) else {
        return;
    };
    let tolerance = u64::from(i.tolerance);
    let verified = verify(scheme, &headers, &i.body, &secrets, i.now, tolerance);
    let pre = precheck(scheme, &headers, i.now, tolerance);
    if verified.is_ok() {
        assert!(pre.is_ok(), "verify accepted what precheck refuses: {pre:?}");
    }
});

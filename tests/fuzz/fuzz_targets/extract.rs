//! Body extraction on arbitrary bodies and id headers: never panics, and what it
//! accepts has ids within their bounds; an unsigned id header never decides the id.
#![no_main]

use arbitrary::Arbitrary;
use hookstream_ingest::extract::{extract, FieldMap, MAX_ID_BYTES};
use hookstream_ingest::verify::HeaderId;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    body: Vec<u8>,
    header: Option<(bool, String)>,
}

fuzz_target!(|i: Input| {
    let header = match i.header.clone() {
        None => HeaderId::None,
        Some((true, h)) => HeaderId::Signed(h),
        Some((false, h)) => HeaderId::Unsigned(h),
    };
    let fields = FieldMap::default();
    let Ok(e) = extract(&i.body, &fields, header) else {
        return;
    };
    assert!(!e.payment_id.is_empty() && e.payment_id.len() <= MAX_ID_BYTES);
    assert!(!e.event_id.is_empty() && e.event_id.len() <= MAX_ID_BYTES);
    if let Some((false, h)) = i.header {
        // The same body with another unsigned id: the same event, or refused.
        if let Ok(other) = extract(&i.body, &fields, HeaderId::Unsigned(format!("{h}-other"))) {
            assert_eq!(other.event_id, e.event_id);
        }
    }
    if let Some(s) = e.sequence {
        assert!(s >= 1);
    }
});

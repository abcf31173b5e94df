//! Avro decoding of every schema's records from arbitrary bytes: never panics, and a
//! value that decodes encodes back to bytes that decode to the same value.
#![no_main]

use hookstream_schemas::{decode, encode, DeadLetter, GapTimeout, PolicyEvent, PolicyRequest, RawWebhook};
use libfuzzer_sys::fuzz_target;

fn roundtrip<T>(data: &[u8])
where
    T: hookstream_schemas::AvroRecord + PartialEq + std::fmt::Debug,
{
    let Ok(v) = decode::<T>(data) else { return };
    let bytes = encode(&v).expect("a decoded value encodes");
    let again = decode::<T>(&bytes).expect("an encoded value decodes");
    assert_eq!(again, v);
}

fuzz_target!(|data: &[u8]| {
    roundtrip::<RawWebhook>(data);
    roundtrip::<PolicyEvent>(data);
    roundtrip::<DeadLetter>(data);
    roundtrip::<GapTimeout>(data);
    roundtrip::<PolicyRequest>(data);
});

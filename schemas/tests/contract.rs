//! The `.avsc` files are the contract: these tests prove the Rust types write exactly
//! those schemas, that every type round-trips, that the golden samples in `testdata/`
//! are what the encoder produces byte for byte, and that foreign bytes are rejected
//! with an error that says why.
//!
//! Regenerate the golden files after an intended schema change with
//! `HOOKSTREAM_BLESS=1 cargo test -p hookstream-schemas --test contract`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::PathBuf;

use apache_avro::{reader::datum::GenericDatumReader, Schema};
use hookstream_schemas::{
    avro_json::to_avro_json,
    decode, encode,
    fingerprint::{canonical_form, crc64_avro},
    samples, AvroRecord, CodecError, DeadLetter, GapTimeout, PolicyEvent, PolicyRequest, RawWebhook, HEADER_LEN,
};

fn dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(sub)
}

/// The schema parsed from the file on disk (not the copy compiled into the crate).
fn schema_file(name: &str) -> Schema {
    let text = std::fs::read_to_string(dir("avro").join(format!("{name}.avsc"))).expect("read .avsc");
    Schema::parse_str(&text).expect(".avsc parses")
}

/// Every golden sample: file stem, schema file, encoded bytes, Avro value as JSON.
fn goldens() -> Vec<(&'static str, &'static str, Vec<u8>, serde_json::Value)> {
    fn one<T: AvroRecord>(
        stem: &'static str,
        schema: &'static str,
        v: &T,
    ) -> (&'static str, &'static str, Vec<u8>, serde_json::Value) {
        let json = to_avro_json(&schema_file(schema), &v.to_value()).expect("value fits the schema file");
        (stem, schema, encode(v).expect("encode"), json)
    }
    vec![
        one("RawWebhook", "RawWebhook", &samples::raw_webhook()),
        one("PolicyEvent", "PolicyEvent", &samples::policy_activated()),
        one("PolicyEvent-cancelled", "PolicyEvent", &samples::policy_cancelled()),
        one("PolicyEvent-duplicated", "PolicyEvent", &samples::policy_duplicated()),
        one("PolicyRequest", "PolicyRequest", &samples::policy_request()),
        one("DeadLetter", "DeadLetter", &samples::dead_letter()),
        one("GapTimeout", "GapTimeout", &samples::gap_timeout()),
    ]
}

#[test]
fn header_is_marker_and_rabin_fingerprint_of_the_schema_file() {
    for (name, info) in [
        ("RawWebhook", RawWebhook::info()),
        ("PolicyEvent", PolicyEvent::info()),
        ("DeadLetter", DeadLetter::info()),
        ("GapTimeout", GapTimeout::info()),
        ("PolicyRequest", PolicyRequest::info()),
    ] {
        let text = std::fs::read_to_string(dir("avro").join(format!("{name}.avsc"))).unwrap();
        let pcf = canonical_form(&serde_json::from_str(&text).unwrap()).unwrap();
        assert!(pcf.contains("\"type\":\"long\""), "{name}: {pcf}");
        assert!(!pcf.contains("logicalType") && !pcf.contains("doc"), "{name}: {pcf}");
        assert_eq!(info.header[..2], [0xC3, 0x01], "{name}");
        assert_eq!(
            info.header[2..],
            crc64_avro(pcf.as_bytes()).to_le_bytes(),
            "{name}: fingerprint differs from the .avsc file's"
        );
        assert_eq!(
            info.schema.canonical_form(),
            schema_file(name).canonical_form(),
            "{name}"
        );
    }
}

#[test]
fn every_type_round_trips() {
    assert_eq!(
        decode::<RawWebhook>(&encode(&samples::raw_webhook()).unwrap()).unwrap(),
        samples::raw_webhook()
    );
    for p in [
        samples::policy_activated(),
        samples::policy_cancelled(),
        samples::policy_duplicated(),
    ] {
        assert_eq!(decode::<PolicyEvent>(&encode(&p).unwrap()).unwrap(), p);
    }
    let r = samples::policy_request();
    assert_eq!(decode::<PolicyRequest>(&encode(&r).unwrap()).unwrap(), r);
    let mut cancel = r.clone();
    cancel.kind = hookstream_schemas::PolicyRequestKind::Cancel;
    assert_eq!(decode::<PolicyRequest>(&encode(&cancel).unwrap()).unwrap(), cancel);
    assert_eq!(
        decode::<DeadLetter>(&encode(&samples::dead_letter()).unwrap()).unwrap(),
        samples::dead_letter()
    );
}

#[test]
fn optional_fields_round_trip_as_null() {
    let mut raw = samples::raw_webhook();
    raw.event_type = None;
    raw.sequence = None;
    raw.headers.clear();
    raw.body.clear();
    assert_eq!(decode::<RawWebhook>(&encode(&raw).unwrap()).unwrap(), raw);
    let mut dl = samples::dead_letter();
    dl.original_key = None;
    dl.original_value = None;
    dl.missing_sequences.clear();
    assert_eq!(decode::<DeadLetter>(&encode(&dl).unwrap()).unwrap(), dl);
}

#[test]
fn bytes_decode_with_the_schema_file_alone() {
    for (stem, schema, bytes, json) in goldens() {
        let schema = schema_file(schema);
        let reader = GenericDatumReader::builder(&schema).build().unwrap();
        let mut datum = &bytes[HEADER_LEN..];
        let value = reader.read_value(&mut datum).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert!(datum.is_empty(), "{stem}: trailing bytes");
        assert_eq!(to_avro_json(&schema, &value).unwrap(), json, "{stem}");
    }
}

#[test]
fn encoder_produces_the_golden_files() {
    let bless = std::env::var_os("HOOKSTREAM_BLESS").is_some();
    for (stem, _, bytes, json) in goldens() {
        let bin_path = dir("testdata").join(format!("{stem}.bin"));
        let json_path = dir("testdata").join(format!("{stem}.json"));
        let json_text = serde_json::to_string_pretty(&json).unwrap() + "\n";
        if bless {
            std::fs::write(&bin_path, &bytes).unwrap();
            std::fs::write(&json_path, &json_text).unwrap();
        }
        let golden = std::fs::read(&bin_path).unwrap_or_else(|e| panic!("{}: {e}", bin_path.display()));
        assert_eq!(bytes, golden, "{stem}.bin differs from the encoder's output");
        let golden_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        assert_eq!(json, golden_json, "{stem}.json differs from the sample value");
    }
}

#[test]
fn wrong_fingerprint_is_rejected_with_both_fingerprints_named() {
    let raw = encode(&samples::raw_webhook()).unwrap();
    let err = decode::<PolicyEvent>(&raw).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CodecError::FingerprintMismatch { .. }), "{err:?}");
    assert!(msg.contains("fingerprint mismatch"), "{msg}");
    assert!(msg.contains(&PolicyEvent::info().fingerprint_hex()), "{msg}");
    assert!(msg.contains(&RawWebhook::info().fingerprint_hex()), "{msg}");
}

#[test]
fn foreign_bytes_are_rejected_with_a_clear_error() {
    let err = decode::<RawWebhook>(b"{\"id\":1}").unwrap_err();
    assert!(matches!(err, CodecError::BadMarker { .. }), "{err:?}");
    assert!(err.to_string().contains("not Avro single-object encoding"));

    let err = decode::<RawWebhook>(&[0xC3, 0x01, 1]).unwrap_err();
    assert!(matches!(err, CodecError::TooShort { len: 3, .. }), "{err:?}");

    let mut bytes = encode(&samples::raw_webhook()).unwrap();
    bytes.push(0);
    let err = decode::<RawWebhook>(&bytes).unwrap_err();
    assert!(matches!(err, CodecError::TrailingBytes { count: 1, .. }), "{err:?}");

    let bytes = encode(&samples::raw_webhook()).unwrap();
    let err = decode::<RawWebhook>(&bytes[..bytes.len() - 5]).unwrap_err();
    assert!(matches!(err, CodecError::Datum { .. }), "{err:?}");
}

/// A reader that still has the previous DeadLetter schema (before the reasons
/// sequence_out_of_range, held_limit_exceeded, invalid_field and the field
/// missing_ranges) decodes a new letter, reading an unknown reason as processing_error.
#[test]
fn a_reader_with_the_previous_dead_letter_schema_still_decodes_new_letters() {
    let previous = Schema::parse_str(include_str!("../testdata/DeadLetter-previous.avsc")).unwrap();
    for reason in [
        hookstream_schemas::DeadLetterReason::InvalidField,
        hookstream_schemas::DeadLetterReason::HeldLimitExceeded,
        hookstream_schemas::DeadLetterReason::SequenceOutOfRange,
    ] {
        let mut dl = samples::dead_letter();
        dl.reason = reason;
        let bytes = encode(&dl).unwrap();
        let mut datum = &bytes[HEADER_LEN..];
        let writer = schema_file("DeadLetter");
        let reader = GenericDatumReader::builder(&writer)
            .reader_schema(&previous)
            .build()
            .unwrap();
        let value = reader.read_value(&mut datum).unwrap();
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("a record")
        };
        let reason = fields.iter().find(|(n, _)| n == "reason").map(|(_, v)| v.clone());
        assert_eq!(
            reason,
            Some(apache_avro::types::Value::Enum(8, "processing_error".into())),
            "{reason:?}"
        );
        assert!(!fields.iter().any(|(n, _)| n == "missing_ranges"));
    }
}

/// Bytes written with `avro/previous/<name>` (Avro single-object, that schema's own
/// fingerprint), built from the current Avro value by leaving out the new fields.
fn written_with_previous(file: &str, value: apache_avro::types::Value) -> Vec<u8> {
    let text = std::fs::read_to_string(dir("avro/previous").join(file)).unwrap();
    let schema = Schema::parse_str(&text).unwrap();
    let pcf = canonical_form(&serde_json::from_str(&text).unwrap()).unwrap();
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&crc64_avro(pcf.as_bytes()).to_le_bytes());
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap();
    writer.write_value(&mut out, value).unwrap();
    out
}

/// Records already in a log when a schema gained a field or a union branch stay
/// readable: a GapTimeout without `source` reads with source "", and a PolicyEvent of
/// the two-branch schema reads as before.
#[test]
fn values_written_with_a_previous_schema_version_still_decode() {
    let g = samples::gap_timeout();
    let apache_avro::types::Value::Record(mut fields) = g.to_value() else {
        panic!("a record")
    };
    fields.retain(|(n, _)| n != "source");
    let bytes = written_with_previous("GapTimeout.v1.avsc", apache_avro::types::Value::Record(fields));
    assert_ne!(bytes[..HEADER_LEN], GapTimeout::info().header);
    let read = decode::<GapTimeout>(&bytes).unwrap();
    assert_eq!(read.source, "");
    assert_eq!(read.payment_id, g.payment_id);
    assert_eq!(read.missing_sequences, g.missing_sequences);

    for p in [samples::policy_activated(), samples::policy_cancelled()] {
        let bytes = written_with_previous("PolicyEvent.v1.avsc", p.to_value());
        assert_ne!(bytes[..HEADER_LEN], PolicyEvent::info().header);
        assert_eq!(decode::<PolicyEvent>(&bytes).unwrap(), p);
    }
}

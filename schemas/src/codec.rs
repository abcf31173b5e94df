//! Avro single-object encoding for the contract's record types.
//!
//! Framing is done here rather than with apache-avro's single-object reader so that a
//! value written with another schema is rejected with an error that names both
//! fingerprints, before any datum byte is read.

use std::sync::LazyLock;

use crate::fingerprint::{canonical_form, crc64_avro};
use crate::value::ShapeError;

use apache_avro::{reader::datum::GenericDatumReader, types::Value, writer::datum::GenericDatumWriter, Schema};

/// First two bytes of every single-object encoded value (Avro spec, "Single object encoding").
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
/// Marker plus the 8-byte fingerprint.
pub const HEADER_LEN: usize = 10;

/// Why a value could not be encoded or decoded. Every variant is permanent for the
/// bytes at hand: retrying the same input gives the same error.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than the single-object header needs.
    #[error("{schema}: {len} bytes is too short for Avro single-object encoding (needs at least {HEADER_LEN})")]
    TooShort { schema: &'static str, len: usize },
    /// The first two bytes are not `C3 01`.
    #[error("{schema}: not Avro single-object encoding: first bytes are {found:02X?}, expected [C3, 01]")]
    BadMarker { schema: &'static str, found: [u8; 2] },
    /// Written with a different schema than the one asked for.
    #[error("{schema}: schema fingerprint mismatch: value has {found}, {schema} has {expected}")]
    FingerprintMismatch {
        schema: &'static str,
        expected: String,
        found: String,
    },
    /// The datum does not decode with the schema.
    #[error("{schema}: Avro datum does not decode")]
    Datum {
        schema: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    /// Bytes left after the datum: the value is corrupt or was framed wrongly.
    #[error("{schema}: {count} trailing bytes after the Avro datum")]
    TrailingBytes { schema: &'static str, count: usize },
    /// The decoded Avro value does not have the shape the Rust type expects.
    #[error("{schema}: unexpected Avro value")]
    Shape {
        schema: &'static str,
        #[source]
        source: ShapeError,
    },
    /// The Rust value does not validate against its schema (a bug on the writing side).
    #[error("{schema}: value does not match the schema")]
    Encode {
        schema: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
}

/// A parsed schema with its single-object header, built once per type.
#[derive(Debug)]
pub struct SchemaInfo {
    /// Full name, e.g. `io.hookstream.v1.RawWebhook`.
    pub name: &'static str,
    /// The parsed `.avsc` file.
    pub schema: Schema,
    /// `C3 01` + the little-endian CRC-64-AVRO (Rabin) fingerprint.
    pub header: [u8; HEADER_LEN],
    /// Earlier versions of the schema this crate still reads (their header and schema):
    /// a value written with one is resolved into the current schema, new fields taking
    /// their defaults, so records already in a log stay readable after an upgrade.
    pub previous: Vec<([u8; HEADER_LEN], Schema)>,
}

impl SchemaInfo {
    /// Parse an `.avsc` text. Panics only on a malformed schema file compiled into the
    /// binary, which the crate's tests rule out.
    pub fn parse(name: &'static str, avsc: &str) -> Self {
        let (schema, header) = parse_avsc(avsc);
        Self {
            name,
            schema,
            header,
            previous: Vec::new(),
        }
    }

    /// Also read values written with these earlier versions (`.avsc` texts).
    pub fn reading(mut self, previous: &[&str]) -> Self {
        self.previous = previous
            .iter()
            .map(|avsc| parse_avsc(avsc))
            .map(|(s, h)| (h, s))
            .collect();
        self
    }

    /// The fingerprint as hex, as it appears on the wire (little-endian bytes).
    pub fn fingerprint_hex(&self) -> String {
        hex_bytes(&self.header[2..])
    }
}

/// The schema and its single-object header. Panics only on a malformed schema file
/// compiled into the binary, which the crate's tests rule out.
fn parse_avsc(avsc: &str) -> (Schema, [u8; HEADER_LEN]) {
    #[allow(clippy::expect_used)]
    let schema = Schema::parse_str(avsc).expect("the .avsc files compiled into hookstream-schemas parse");
    #[allow(clippy::expect_used)]
    let json: serde_json::Value = serde_json::from_str(avsc).expect("the .avsc files are JSON");
    #[allow(clippy::expect_used)]
    let pcf = canonical_form(&json).expect("the .avsc files have a canonical form");
    let mut header = [0u8; HEADER_LEN];
    header[..2].copy_from_slice(&SINGLE_OBJECT_MARKER);
    header[2..].copy_from_slice(&crc64_avro(pcf.as_bytes()).to_le_bytes());
    (schema, header)
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Rust type that is one of the contract's Avro records.
pub trait AvroRecord: Sized {
    /// The schema and header, parsed once.
    fn info() -> &'static LazyLock<SchemaInfo>;
    /// The Avro value, fields in schema order.
    fn to_value(&self) -> Value;
    /// The Rust value from a decoded Avro value.
    fn from_value(value: Value) -> Result<Self, ShapeError>;
}

/// Encode a record in the Avro single-object encoding.
pub fn encode<T: AvroRecord>(record: &T) -> Result<Vec<u8>, CodecError> {
    let info: &SchemaInfo = T::info();
    let writer = GenericDatumWriter::builder(&info.schema)
        .build()
        .map_err(|e| CodecError::Encode {
            schema: info.name,
            source: Box::new(e),
        })?;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&info.header);
    writer
        .write_value(&mut out, record.to_value())
        .map_err(|e| CodecError::Encode {
            schema: info.name,
            source: Box::new(e),
        })?;
    Ok(out)
}

/// Decode a record from the Avro single-object encoding, checking marker and fingerprint.
pub fn decode<T: AvroRecord>(bytes: &[u8]) -> Result<T, CodecError> {
    let info: &SchemaInfo = T::info();
    let schema = info.name;
    if let [a, b, ..] = *bytes {
        if [a, b] != SINGLE_OBJECT_MARKER {
            return Err(CodecError::BadMarker { schema, found: [a, b] });
        }
    }
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort {
            schema,
            len: bytes.len(),
        });
    }
    let writer = if bytes[..HEADER_LEN] == info.header {
        None
    } else {
        match info.previous.iter().find(|(h, _)| bytes[..HEADER_LEN] == *h) {
            Some((_, earlier)) => Some(earlier),
            None => {
                return Err(CodecError::FingerprintMismatch {
                    schema,
                    expected: info.fingerprint_hex(),
                    found: hex_bytes(&bytes[2..HEADER_LEN]),
                })
            }
        }
    };
    let reader = match writer {
        None => GenericDatumReader::builder(&info.schema).build(),
        Some(earlier) => GenericDatumReader::builder(earlier).reader_schema(&info.schema).build(),
    }
    .map_err(|e| CodecError::Datum {
        schema,
        source: Box::new(e),
    })?;
    let mut rest = &bytes[HEADER_LEN..];
    let value = reader.read_value(&mut rest).map_err(|e| CodecError::Datum {
        schema,
        source: Box::new(e),
    })?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes {
            schema,
            count: rest.len(),
        });
    }
    T::from_value(value).map_err(|source| CodecError::Shape { schema, source })
}

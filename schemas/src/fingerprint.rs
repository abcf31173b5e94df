//! Parsing Canonical Form and the CRC-64-AVRO fingerprint, per the Avro specification
//! ("Parsing Canonical Form for Schemas", "Schema Fingerprints").
//!
//! Why not `Schema::fingerprint::<Rabin>()` from apache-avro 0.22: its canonical form
//! keeps a logical type's primitive as an object (`{"type":"long"}` for
//! timestamp-millis) where the spec's [PRIMITIVES] rule demands `"long"`, so its
//! fingerprint differs from the one Java, Python (fastavro) and every other conforming
//! implementation compute, and their single-object decoders would not recognise our
//! records. `schemas/check_golden.py` checks this against fastavro.

use serde_json::Value as Json;

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];
const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

/// The CRC-64-AVRO (Rabin) fingerprint of `bytes`, as the spec's reference code computes it.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    let mut table = [0u64; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
        }
        *slot = fp;
    }
    bytes
        .iter()
        .fold(EMPTY, |fp, &b| (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize])
}

/// A JSON value that is not an Avro schema: what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Avro schema: {0}")]
pub struct SchemaError(String);

impl From<&str> for SchemaError {
    fn from(what: &str) -> Self {
        Self(what.to_owned())
    }
}

/// The Parsing Canonical Form of a schema given as JSON.
pub fn canonical_form(schema: &Json) -> Result<String, SchemaError> {
    let mut out = String::new();
    let mut seen = Vec::new();
    write_pcf(schema, None, &mut seen, &mut out)?;
    Ok(out)
}

fn quoted(s: &str) -> String {
    Json::String(s.to_owned()).to_string()
}

fn full_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_owned(),
    }
}

fn write_pcf(schema: &Json, ns: Option<&str>, seen: &mut Vec<String>, out: &mut String) -> Result<(), SchemaError> {
    match schema {
        Json::String(name) if PRIMITIVES.contains(&name.as_str()) => out.push_str(&quoted(name)),
        Json::String(name) => out.push_str(&quoted(&full_name(name, ns))),
        Json::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_pcf(b, ns, seen, out)?;
            }
            out.push(']');
        }
        Json::Object(obj) => {
            let ty = obj.get("type").ok_or("schema object without \"type\"")?;
            let ty_name = match ty {
                Json::String(t) => t.as_str(),
                nested => return write_pcf(nested, ns, seen, out),
            };
            match ty_name {
                "record" | "error" | "enum" | "fixed" => write_named(obj, ty_name, ns, seen, out)?,
                "array" => {
                    out.push_str("{\"type\":\"array\",\"items\":");
                    write_pcf(obj.get("items").ok_or("array without items")?, ns, seen, out)?;
                    out.push('}');
                }
                "map" => {
                    out.push_str("{\"type\":\"map\",\"values\":");
                    write_pcf(obj.get("values").ok_or("map without values")?, ns, seen, out)?;
                    out.push('}');
                }
                // A primitive in object form, with or without a logicalType: its simple form.
                other => write_pcf(&Json::String(other.to_owned()), ns, seen, out)?,
            }
        }
        other => return Err(SchemaError(format!("{other} is neither a name, a union nor an object"))),
    }
    Ok(())
}

/// A named type (record, error, enum, fixed): its full name only when `seen` already
/// holds it, else its name, type and the attributes the canonical form keeps.
fn write_named(
    obj: &serde_json::Map<String, Json>,
    ty_name: &str,
    ns: Option<&str>,
    seen: &mut Vec<String>,
    out: &mut String,
) -> Result<(), SchemaError> {
    let name = obj
        .get("name")
        .and_then(Json::as_str)
        .ok_or("named type without name")?;
    let own_ns = obj.get("namespace").and_then(Json::as_str).or(ns);
    let full = full_name(name, own_ns);
    if seen.contains(&full) {
        out.push_str(&quoted(&full));
        return Ok(());
    }
    seen.push(full.clone());
    let inner_ns = full.rsplit_once('.').map(|(n, _)| n.to_owned());
    out.push_str(&format!("{{\"name\":{},\"type\":{}", quoted(&full), quoted(ty_name)));
    match ty_name {
        "enum" => {
            let symbols = obj.get("symbols").ok_or("enum without symbols")?;
            out.push_str(&format!(",\"symbols\":{symbols}"));
        }
        "fixed" => {
            let size = obj.get("size").ok_or("fixed without size")?;
            out.push_str(&format!(",\"size\":{size}"));
        }
        _ => {
            out.push_str(",\"fields\":[");
            let fields = obj
                .get("fields")
                .and_then(Json::as_array)
                .ok_or("record without fields")?;
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let fname = f.get("name").and_then(Json::as_str).ok_or("field without name")?;
                out.push_str(&format!("{{\"name\":{},\"type\":", quoted(fname)));
                write_pcf(
                    f.get("type").ok_or("field without type")?,
                    inner_ns.as_deref(),
                    seen,
                    out,
                )?;
                out.push('}');
            }
            out.push(']');
        }
    }
    out.push('}');

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vector_for_int() {
        // The Avro specification's example: fingerprint of "int" is 0x7275d51a3f395c8f.
        assert_eq!(crc64_avro(b"\"int\""), 0x7275_d51a_3f39_5c8f);
    }

    #[test]
    fn logical_types_reduce_to_their_primitive() {
        let s: Json = serde_json::from_str(
            r#"{"type":"record","name":"R","namespace":"a.b","doc":"x","fields":[
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"},"doc":"d"},
                {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}},
                {"name":"again","type":"E"}]}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_form(&s).unwrap(),
            r#"{"name":"a.b.R","type":"record","fields":[{"name":"t","type":"long"},{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["A","B"]}},{"name":"again","type":"a.b.E"}]}"#
        );
    }
}

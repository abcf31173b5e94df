//! The Avro JSON encoding (Avro spec, "JSON Encoding") of a value, for the golden
//! samples in `schemas/testdata/*.json` and for operator tools that print records.
//!
//! Unions are written as `{"<branch type name>": value}` (null as `null`), bytes as a
//! string whose code points U+0000–U+00FF are the byte values, so any Avro library's
//! JSON decoder reads the file back with the `.avsc` alone.

use apache_avro::{schema::Name, types::Value, Schema};
use serde_json::{json, Map, Value as Json};

/// A value that does not fit the schema it is converted with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the value does not fit its schema: {0}")]
pub struct MismatchError(String);

/// Convert `value`, written with `schema`, to the Avro JSON encoding.
pub fn to_avro_json(schema: &Schema, value: &Value) -> Result<Json, MismatchError> {
    Ok(match (schema, value) {
        (Schema::Null, Value::Null) => Json::Null,
        (Schema::Boolean, Value::Boolean(b)) => json!(b),
        (Schema::Int, Value::Int(n)) => json!(n),
        (Schema::Long, Value::Long(n)) | (Schema::TimestampMillis, Value::TimestampMillis(n) | Value::Long(n)) => {
            json!(n)
        }
        (Schema::String, Value::String(s)) => json!(s),
        (Schema::Bytes, Value::Bytes(b)) => Json::String(b.iter().map(|&c| char::from(c)).collect()),
        (Schema::Enum(_), Value::Enum(_, symbol)) => json!(symbol),
        (Schema::Array(a), Value::Array(items)) => Json::Array(
            items
                .iter()
                .map(|v| to_avro_json(&a.items, v))
                .collect::<Result<_, _>>()?,
        ),
        (Schema::Record(r), Value::Record(fields)) => {
            let mut out = Map::new();
            for (field, (name, v)) in r.fields.iter().zip(fields) {
                if field.name != *name {
                    return Err(MismatchError(format!(
                        "field order: schema has {}, value has {name}",
                        field.name
                    )));
                }
                out.insert(name.clone(), to_avro_json(&field.schema, v)?);
            }
            Json::Object(out)
        }
        (Schema::Union(u), Value::Union(idx, inner)) => {
            let branch = u
                .variants()
                .get(*idx as usize)
                .ok_or_else(|| MismatchError(format!("union index {idx} out of range")))?;
            match branch {
                Schema::Null => Json::Null,
                b => {
                    let mut m = Map::new();
                    m.insert(type_name(b)?, to_avro_json(b, inner)?);
                    Json::Object(m)
                }
            }
        }
        (s, v) => return Err(MismatchError(format!("value {v:?} does not fit schema {s:?}"))),
    })
}

fn type_name(schema: &Schema) -> Result<String, MismatchError> {
    let full = |n: &Name| n.fullname(None);
    Ok(match schema {
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long | Schema::TimestampMillis => "long".into(),
        Schema::String => "string".into(),
        Schema::Bytes => "bytes".into(),
        Schema::Record(r) => full(&r.name),
        Schema::Enum(e) => full(&e.name),
        other => return Err(MismatchError(format!("no union branch name for {other:?}"))),
    })
}

//! Small helpers to build and take apart `apache_avro::types::Value` records by hand.
//!
//! Unions in the contract are always `["null", T]` (index 0 = null, 1 = value), except
//! `PolicyEvent.event`, which `policy_event.rs` handles itself.

use apache_avro::types::Value;

/// A decoded Avro value without the shape its Rust type expects: the datum decoded with
/// the schema, but a field is missing or of another type. A property of the bytes, so
/// never transient.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    /// The value is not a record.
    #[error("{record}: expected a record, got {got}")]
    NotARecord { record: &'static str, got: String },
    /// A field the type needs is absent.
    #[error("{record}: field {field} is missing")]
    Missing { record: &'static str, field: String },
    /// A field holds another type, or a symbol or branch the type does not know.
    #[error("{record}.{field}: expected {want}, got {got}")]
    Wrong {
        record: &'static str,
        field: String,
        want: &'static str,
        got: String,
    },
}

impl ShapeError {
    /// `record.field` holds `got` where the type wants `want`.
    pub(crate) fn wrong(record: &'static str, field: &str, want: &'static str, got: &Value) -> Self {
        Self::Wrong {
            record,
            field: field.to_owned(),
            want,
            got: format!("{got:?}"),
        }
    }
}

pub(crate) fn opt_string(v: &Option<String>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
    }
}

pub(crate) fn opt_long(v: Option<i64>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(n) => Value::Union(1, Box::new(Value::Long(n))),
    }
}

pub(crate) fn opt_bytes(v: &Option<Vec<u8>>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(b) => Value::Union(1, Box::new(Value::Bytes(b.clone()))),
    }
}

/// Fields of a decoded record, taken by name.
pub(crate) struct Fields {
    record: &'static str,
    fields: Vec<(String, Value)>,
}

impl Fields {
    pub(crate) fn new(record: &'static str, value: Value) -> Result<Self, ShapeError> {
        match value {
            Value::Record(fields) => Ok(Self { record, fields }),
            other => Err(ShapeError::NotARecord {
                record,
                got: format!("{other:?}"),
            }),
        }
    }

    pub(crate) fn take(&mut self, name: &str) -> Result<Value, ShapeError> {
        let pos = self
            .fields
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| ShapeError::Missing {
                record: self.record,
                field: name.to_owned(),
            })?;
        Ok(self.fields.swap_remove(pos).1)
    }

    fn wrong(&self, name: &str, want: &'static str, got: &Value) -> ShapeError {
        ShapeError::wrong(self.record, name, want, got)
    }

    pub(crate) fn string(&mut self, name: &str) -> Result<String, ShapeError> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            other => Err(self.wrong(name, "string", &other)),
        }
    }

    pub(crate) fn bytes(&mut self, name: &str) -> Result<Vec<u8>, ShapeError> {
        match self.take(name)? {
            Value::Bytes(b) => Ok(b),
            other => Err(self.wrong(name, "bytes", &other)),
        }
    }

    pub(crate) fn int(&mut self, name: &str) -> Result<i32, ShapeError> {
        match self.take(name)? {
            Value::Int(n) => Ok(n),
            other => Err(self.wrong(name, "int", &other)),
        }
    }

    pub(crate) fn long(&mut self, name: &str) -> Result<i64, ShapeError> {
        match self.take(name)? {
            Value::Long(n) => Ok(n),
            other => Err(self.wrong(name, "long", &other)),
        }
    }

    pub(crate) fn timestamp_millis(&mut self, name: &str) -> Result<i64, ShapeError> {
        match self.take(name)? {
            Value::TimestampMillis(n) | Value::Long(n) => Ok(n),
            other => Err(self.wrong(name, "timestamp-millis", &other)),
        }
    }

    fn optional(&mut self, name: &str) -> Result<Option<Value>, ShapeError> {
        match self.take(name)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => Ok(None),
                v => Ok(Some(v)),
            },
            Value::Null => Ok(None),
            other => Err(self.wrong(name, "union", &other)),
        }
    }

    pub(crate) fn opt_string(&mut self, name: &str) -> Result<Option<String>, ShapeError> {
        match self.optional(name)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(name, "string or null", &other)),
        }
    }

    pub(crate) fn opt_long(&mut self, name: &str) -> Result<Option<i64>, ShapeError> {
        match self.optional(name)? {
            None => Ok(None),
            Some(Value::Long(n)) => Ok(Some(n)),
            Some(other) => Err(self.wrong(name, "long or null", &other)),
        }
    }

    pub(crate) fn opt_bytes(&mut self, name: &str) -> Result<Option<Vec<u8>>, ShapeError> {
        match self.optional(name)? {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b)),
            Some(other) => Err(self.wrong(name, "bytes or null", &other)),
        }
    }

    /// An array of longs (`missing_sequences`).
    pub(crate) fn longs(&mut self, name: &str) -> Result<Vec<i64>, ShapeError> {
        self.array(name)?
            .into_iter()
            .map(|v| match v {
                Value::Long(n) => Ok(n),
                other => Err(self.wrong(name, "an array of long", &other)),
            })
            .collect()
    }

    pub(crate) fn array(&mut self, name: &str) -> Result<Vec<Value>, ShapeError> {
        match self.take(name)? {
            Value::Array(items) => Ok(items),
            other => Err(self.wrong(name, "array", &other)),
        }
    }
}

/// A record value from `(name, value)` pairs in schema order.
pub(crate) fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect())
}

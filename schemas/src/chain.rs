//! An error with its sources as one line, for log lines, dead-letter details and
//! stall reasons: `Display` of a `thiserror` error names only its own layer.

/// `e` and its sources, joined by `: `.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Fields;

    #[test]
    fn a_shape_error_reads_as_schema_then_field() {
        let value = apache_avro::types::Value::Record(vec![("kind".into(), apache_avro::types::Value::Int(3))]);
        let shape = Fields::new("PolicyRequest", value).and_then(|mut f| f.string("kind"));
        let Err(source) = shape else {
            panic!("an int read as a string must fail")
        };
        let e = crate::CodecError::Shape {
            schema: "io.hookstream.v1.PolicyRequest",
            source,
        };
        assert_eq!(
            error_chain(&e),
            "io.hookstream.v1.PolicyRequest: unexpected Avro value: PolicyRequest.kind: expected string, got Int(3)"
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let value = apache_avro::types::Value::Record(Vec::new());
        let e = Fields::new("GapTimeout", value).and_then(|mut f| f.longs("missing_sequences"));
        assert_eq!(
            e.map_err(|e| e.to_string()).err().as_deref(),
            Some("GapTimeout: field missing_sequences is missing")
        );
    }
}

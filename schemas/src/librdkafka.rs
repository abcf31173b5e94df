//! The `[kafka.librdkafka]` passthrough table of both services, checked once at start-up.

use std::collections::BTreeMap;

/// A passthrough property librdkafka refuses: its key and why, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kafka.librdkafka.{key}: {why}")]
pub struct Refused {
    pub key: String,
    pub why: String,
}

/// Check every passthrough property with librdkafka before any client is made, so that
/// one it refuses (a typo in a variable name, a TLS setting in a build without the `tls`
/// feature) is reported by name: rdkafka's own error carries the value, which may be a
/// password. The key and why, never the value.
pub fn check_passthrough(props: &BTreeMap<String, String>) -> Result<(), Refused> {
    for (k, v) in props {
        let mut c = rdkafka::config::ClientConfig::new();
        c.set(k, v);
        if let Err(e) = c.create_native_config() {
            return Err(Refused {
                key: k.clone(),
                why: refusal(&e, v),
            });
        }
    }
    Ok(())
}

/// Why librdkafka refused a property whose value is `value`, without the value.
fn refusal(e: &rdkafka::error::KafkaError, value: &str) -> String {
    use rdkafka::types::RDKafkaConfRes;
    let (kind, detail) = match e {
        rdkafka::error::KafkaError::ClientConfig(res, desc, _, _) => (
            match res {
                RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN => "no such librdkafka property in this build",
                _ => "librdkafka refuses its value, or this build lacks the feature it needs",
            },
            desc.clone(),
        ),
        other => ("librdkafka refuses it", other.to_string()),
    };
    let detail = if value.is_empty() {
        detail
    } else {
        detail.replace(value, "<value not shown>")
    };
    format!("{kind} ({detail}); the value is not shown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_property_is_named_without_its_value() {
        let secret = "s3cret-value";
        for key in ["sasl.pasword", "ssl.key.password", "socket.timeout.ms"] {
            let props = BTreeMap::from([(key.to_owned(), secret.to_owned())]);
            let e = check_passthrough(&props).expect_err(key);
            assert_eq!(e.key, key);
            assert!(!e.to_string().contains(secret), "{e}");
        }
        let fine = BTreeMap::from([("socket.timeout.ms".to_owned(), "1000".to_owned())]);
        assert_eq!(check_passthrough(&fine), Ok(()));
    }
}

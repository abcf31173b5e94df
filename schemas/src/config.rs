//! The configuration convention every hookstream binary shares, so operators learn it
//! once: a TOML file with a default for every field, then the environment.
//!
//! **Environment overrides.** The field `a.b_c` of a binary whose prefix is `P` is set
//! by `P_A_B_C`, parsed as the type of the field's default (number, boolean, string,
//! or an array in TOML syntax). A free-form table named in `maps` (librdkafka
//! properties) takes any key: `P_<TABLE>_<KEY>` sets `<key>` with `_` read as `.`, and
//! `P_<TABLE>_<KEY>_FILE` reads the value from a file, for secrets such as
//! `sasl.password` that must not live in the config file.
//!
//! **Durations** are `Duration`s in the code and integers with their unit in the name
//! in the file (`gap_timeout_ms = 300000`), through [`millis`] and [`secs`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use toml::{Table, Value};

/// A configuration file that cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not valid TOML for this configuration")]
    Parse(#[source] toml::de::Error),
    #[error("environment override")]
    Env(#[from] EnvError),
    #[error("the defaults do not serialise")]
    Defaults(#[source] toml::ser::Error),
}

/// Variables every binary reads under their common name, and the field (after the
/// binary's prefix) each sets unless the prefixed variable is set: the brokers, and
/// OpenTelemetry's standard variables for the `[tracing]` table.
pub const SHARED_VARIABLES: [(&str, &str); 7] = [
    ("KAFKA_BROKERS", "KAFKA_BROKERS"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "TRACING_OTLP_ENDPOINT"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "TRACING_OTLP_TRACES_ENDPOINT"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "TRACING_OTLP_PROTOCOL"),
    ("OTEL_TRACES_SAMPLER", "TRACING_SAMPLER"),
    ("OTEL_TRACES_SAMPLER_ARG", "TRACING_SAMPLER_ARG"),
    ("OTEL_SERVICE_NAME", "TRACING_SERVICE_NAME"),
];

/// Parse `text` as a `T`, with the environment `vars` applied on top (see the module
/// doc); `KAFKA_BROKERS` stands for `<PREFIX>_KAFKA_BROKERS` when that is not set, and
/// OpenTelemetry's variables for the `[tracing]` fields ([`SHARED_VARIABLES`]).
pub fn from_toml_with_env<T: DeserializeOwned + Serialize + Default>(
    text: &str,
    prefix: &str,
    maps: &[&str],
    vars: &[(String, String)],
) -> Result<T, LoadError> {
    let mut doc: Table = toml::from_str(text).map_err(LoadError::Parse)?;
    let defaults = Table::try_from(T::default()).map_err(LoadError::Defaults)?;
    let mut vars = vars.to_vec();
    for (name, field) in SHARED_VARIABLES {
        let specific = format!("{prefix}_{field}");
        if let Some((_, v)) = vars.iter().find(|(k, _)| k == name).cloned() {
            if !vars.iter().any(|(k, v)| *k == specific && !v.trim().is_empty()) {
                vars.push((specific, v));
            }
        }
    }
    apply_env(&mut doc, &defaults, prefix, maps, &vars)?;
    doc.try_into().map_err(LoadError::Parse)
}

/// A binary's configuration file that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: LoadError,
    },
}

/// Read the file at `path` as a `T`, then apply the process's environment
/// ([`from_toml_with_env`]).
pub fn load_file<T: DeserializeOwned + Serialize + Default>(
    path: &Path,
    prefix: &str,
    maps: &[&str],
) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let vars: Vec<(String, String)> = std::env::vars().collect();
    from_toml_with_env(&text, prefix, maps, &vars).map_err(|source| FileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// The TOML document a Kubernetes ConfigMap in `yaml` holds under `key: |` (indented
/// four spaces), for tests that parse the shipped manifests with the real loaders.
#[cfg(feature = "testing")]
pub fn embedded_toml(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    lines.next();
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// An environment variable does not fit the field it sets.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{name}: {value:?} is not a valid {expected}")]
    Invalid {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error("{name}: cannot read {path}")]
    File {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Every leaf field of `defaults` as (environment name, path, default value), skipping
/// the free-form tables in `maps` (dotted paths such as `kafka.librdkafka`).
pub fn env_names(defaults: &Table, prefix: &str, maps: &[&str]) -> Vec<(String, Vec<String>, Value)> {
    fn walk(
        t: &Table,
        path: &mut Vec<String>,
        prefix: &str,
        maps: &[&str],
        out: &mut Vec<(String, Vec<String>, Value)>,
    ) {
        for (k, v) in t {
            path.push(k.clone());
            match v {
                Value::Table(inner) if !maps.contains(&path.join(".").as_str()) => walk(inner, path, prefix, maps, out),
                Value::Table(_) => {}
                leaf => {
                    let name = format!("{prefix}_{}", path.join("_").to_uppercase());
                    out.push((name, path.clone(), leaf.clone()));
                }
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(defaults, &mut Vec::new(), prefix, maps, &mut out);
    out
}

/// Apply the environment `vars` to the parsed file `doc` (see the module doc).
pub fn apply_env(
    doc: &mut Table,
    defaults: &Table,
    prefix: &str,
    maps: &[&str],
    vars: &[(String, String)],
) -> Result<(), EnvError> {
    let get = |name: &str| {
        vars.iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_owned())
    };
    for (name, path, default) in env_names(defaults, prefix, maps) {
        if let Some(text) = get(&name) {
            let value = parse_like(&default, &text).ok_or_else(|| EnvError::Invalid {
                name: name.clone(),
                value: text.clone(),
                expected: default.type_str(),
            })?;
            set(doc, &path, value);
        }
    }
    for map in maps {
        let path: Vec<String> = map.split('.').map(str::to_owned).collect();
        let last = path.last().map(|s| s.to_uppercase()).unwrap_or_default();
        let head = format!("{prefix}_{last}_");
        for (k, v) in vars {
            let Some(rest) = k.strip_prefix(&head) else { continue };
            let (key, value) = match rest.strip_suffix("_FILE") {
                Some(key) => {
                    let text = std::fs::read_to_string(v.trim()).map_err(|source| EnvError::File {
                        name: k.clone(),
                        path: v.clone(),
                        source,
                    })?;
                    (key, text.trim_end_matches(['\r', '\n']).to_owned())
                }
                None => (rest, v.clone()),
            };
            let mut full = path.clone();
            full.push(key.to_lowercase().replace('_', "."));
            set(doc, &full, Value::String(value));
        }
    }
    Ok(())
}

/// `text` read as the type of `default`.
fn parse_like(default: &Value, text: &str) -> Option<Value> {
    Some(match default {
        Value::String(_) => Value::String(text.to_owned()),
        Value::Integer(_) => Value::Integer(text.parse().ok()?),
        Value::Float(_) => Value::Float(text.parse().ok()?),
        Value::Boolean(_) => Value::Boolean(text.parse().ok()?),
        _ => {
            let doc: Table = toml::from_str(&format!("v = {text}")).ok()?;
            let v = doc.get("v")?.clone();
            (v.type_str() == default.type_str()).then_some(v)?
        }
    })
}

fn set(doc: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = doc;
    for p in parents {
        let entry = t.entry(p.clone()).or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(inner) = entry else { return };
        t = inner;
    }
    t.insert(last.clone(), value);
}

/// A `Duration` as an integer number of milliseconds (`serde(with = "millis")`).
pub mod millis {
    use super::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A `Duration` as an integer number of seconds (`serde(with = "secs")`).
pub mod secs {
    use super::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn every_field_has_its_variable_and_values_take_the_defaults_type() {
        let defaults = table("port = 1\nname = \"a\"\n[kafka]\nlinger_ms = 5\nlist = [\"x\"]\nbrokers = \"b\"\n");
        let mut doc = table("[kafka]\nbrokers = \"from-file\"\n");
        let vars = [
            ("P_PORT".to_owned(), "8".to_owned()),
            ("P_KAFKA_LINGER_MS".to_owned(), "7".to_owned()),
            ("P_KAFKA_LIST".to_owned(), "[\"y\", \"z\"]".to_owned()),
            ("P_KAFKA_BROKERS".to_owned(), " ".to_owned()),
        ];
        apply_env(&mut doc, &defaults, "P", &[], &vars).unwrap();
        assert_eq!(doc["port"].as_integer(), Some(8));
        assert_eq!(doc["kafka"]["linger_ms"].as_integer(), Some(7));
        assert_eq!(doc["kafka"]["list"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            doc["kafka"]["brokers"].as_str(),
            Some("from-file"),
            "blank is not an override"
        );
        let bad = [("P_PORT".to_owned(), "eight".to_owned())];
        let err = apply_env(&mut doc, &defaults, "P", &[], &bad).unwrap_err();
        assert!(err.to_string().contains("P_PORT"), "{err}");
    }

    #[test]
    fn free_form_tables_take_any_key_and_secrets_from_files() {
        let dir = std::env::temp_dir().join(format!("hookstream-env-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let defaults = table("[kafka]\nbrokers = \"b\"\n[kafka.librdkafka]\n");
        let mut doc = Table::new();
        let vars = [
            ("P_LIBRDKAFKA_SECURITY_PROTOCOL".to_owned(), "SASL_SSL".to_owned()),
            ("P_LIBRDKAFKA_SASL_PASSWORD_FILE".to_owned(), dir.display().to_string()),
        ];
        apply_env(&mut doc, &defaults, "P", &["kafka.librdkafka"], &vars).unwrap();
        let _ = std::fs::remove_file(&dir);
        let props = &doc["kafka"]["librdkafka"];
        assert_eq!(props["security.protocol"].as_str(), Some("SASL_SSL"));
        assert_eq!(props["sasl.password"].as_str(), Some("s3cret"));
        assert!(env_names(&defaults, "P", &["kafka.librdkafka"])
            .iter()
            .all(|(n, ..)| n == "P_KAFKA_BROKERS"));
    }
}

//! The shipped configuration files checked key by key against the code's defaults, so a
//! default is written once (`impl Default`) and the file that documents it cannot drift.

use serde::Serialize;
use toml::{Table, Value};

/// How the TOML file `shipped` differs from `defaults`: every field of the defaults must
/// be in the file with the default's value, except the keys in `overrides` (dotted
/// paths), which must differ (a listed override equal to its default is stale), and
/// the free-form tables in `maps`, which are not compared. Empty when they agree.
pub fn differences<T: Serialize>(shipped: &str, defaults: &T, overrides: &[&str], maps: &[&str]) -> Vec<String> {
    let shipped: Table = match toml::from_str(shipped) {
        Ok(t) => t,
        Err(e) => return vec![format!("the file does not parse: {e}")],
    };
    let defaults = match Value::try_from(defaults) {
        Ok(Value::Table(t)) => t,
        Ok(_) => return vec!["the defaults are not a table".into()],
        Err(e) => return vec![format!("the defaults do not serialise: {e}")],
    };
    let mut out = Vec::new();
    compare("", &shipped, &defaults, overrides, maps, &mut out);
    out
}

fn compare(prefix: &str, shipped: &Table, defaults: &Table, overrides: &[&str], maps: &[&str], out: &mut Vec<String>) {
    for (key, default) in defaults {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if maps.contains(&path.as_str()) {
            continue;
        }
        let Some(value) = shipped.get(key) else {
            out.push(format!("{path}: missing from the file (default {default})"));
            continue;
        };
        match (value, default) {
            (Value::Table(s), Value::Table(d)) => compare(&path, s, d, overrides, maps, out),
            _ => {
                let overridden = overrides.contains(&path.as_str());
                if !overridden && !same(value, default) {
                    out.push(format!("{path}: the file says {value}, the default is {default}"));
                } else if overridden && same(value, default) {
                    out.push(format!("{path}: listed as an override but equal to the default"));
                }
            }
        }
    }
}

/// Equal as configuration values: an integer and a float of the same number too.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(i), Value::Float(f)) | (Value::Float(f), Value::Integer(i)) => (*i as f64) == *f,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Inner {
        b: u32,
    }

    #[derive(Serialize)]
    struct Config {
        a: String,
        inner: Inner,
        map: std::collections::BTreeMap<String, String>,
    }

    fn defaults() -> Config {
        Config {
            a: "x".into(),
            inner: Inner { b: 2 },
            map: Default::default(),
        }
    }

    #[test]
    fn a_missing_key_a_drifted_value_and_a_stale_override_are_each_named() {
        let ok = "a = \"x\"\n[inner]\nb = 2\n[map]\nanything = \"y\"\n";
        assert!(differences(ok, &defaults(), &[], &["map"]).is_empty());
        let d = differences("a = \"z\"\n", &defaults(), &[], &["map"]);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("a: the file says \"z\""), "{d:?}");
        assert!(d[1].starts_with("inner: missing"), "{d:?}");
        let d = differences(ok, &defaults(), &["inner.b"], &["map"]);
        assert_eq!(d, vec!["inner.b: listed as an override but equal to the default"]);
        let local = "a = \"x\"\n[inner]\nb = 1\n";
        assert!(differences(local, &defaults(), &["inner.b"], &["map"]).is_empty());
    }
}

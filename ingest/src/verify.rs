//! Signature verification: a pure function of (scheme, headers, body, secrets, now).
//!
//! No I/O and no clock inside, so every rule is unit- and property-tested with fixed
//! inputs, including the schemes' published test vectors. Comparisons of MACs are
//! constant-time (`subtle`); the secret that matched is reported by index only.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// A signature scheme (DESIGN.md, "Webhooks (ingest)").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// `x-event-id`, `x-timestamp`, `x-signature: sha256=<hex HMAC(secret, "{ts}.{body}")>`.
    #[default]
    HmacSha256,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> …`.
    StandardWebhooks,
    /// `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>]`, HMAC over `"{t}.{body}"`.
    Stripe,
    /// `X-Hub-Signature-256: sha256=<hex>` over the body, `X-GitHub-Delivery` id, no timestamp.
    Github,
}

impl Scheme {
    /// The name used in config files and in `RawWebhook.scheme`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::HmacSha256 => "hmac-sha256",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Stripe => "stripe",
            Scheme::Github => "github",
        }
    }

    /// The request headers this scheme signs or identifies with, kept in the Kafka
    /// record so the signature can be re-verified later.
    pub fn signed_headers(self) -> &'static [&'static str] {
        match self {
            Scheme::HmacSha256 => &["x-event-id", "x-timestamp", "x-signature"],
            Scheme::StandardWebhooks => &["webhook-id", "webhook-timestamp", "webhook-signature"],
            Scheme::Stripe => &["stripe-signature"],
            Scheme::Github => &["x-github-delivery", "x-hub-signature-256"],
        }
    }
}

/// Why a source's configured secrets cannot be used. Names a secret by its position,
/// never by its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A Standard Webhooks secret that does not decode.
    #[error("secret #{index} is not whsec_<base64>")]
    NotBase64 { index: usize },
    /// A secret whose key has no bytes.
    #[error("secret #{index} is empty")]
    Empty { index: usize },
    /// The variable or file holds no secret at all.
    #[error("no secret given")]
    NoneGiven,
}

/// A source's secrets as key bytes, in configured order. Never printed.
#[derive(Clone)]
pub struct Secrets(Vec<Vec<u8>>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets([redacted; {}])", self.0.len())
    }
}

impl Secrets {
    /// Secrets from an environment variable's value: separated by whitespace.
    pub fn from_env_value(scheme: Scheme, text: &str) -> Result<Self, SecretError> {
        Self::from_list(scheme, text.split_whitespace())
    }

    /// Secrets from a file: one per line (so a secret may contain spaces), blank lines ignored.
    pub fn from_file_text(scheme: Scheme, text: &str) -> Result<Self, SecretError> {
        Self::from_list(scheme, text.lines().map(str::trim).filter(|l| !l.is_empty()))
    }

    /// Standard Webhooks secrets are `whsec_<base64>` (the prefix is optional) and the key
    /// is the decoded bytes; the other schemes use the secret text itself as the key
    /// (Stripe's `whsec_…` included). An error names the secret's position, never its text.
    pub fn from_list<'a>(scheme: Scheme, items: impl IntoIterator<Item = &'a str>) -> Result<Self, SecretError> {
        let mut keys = Vec::new();
        for (i, s) in items.into_iter().enumerate() {
            let key = match scheme {
                Scheme::StandardWebhooks => base64::engine::general_purpose::STANDARD
                    .decode(s.strip_prefix("whsec_").unwrap_or(s))
                    .map_err(|_| SecretError::NotBase64 { index: i })?,
                _ => s.as_bytes().to_vec(),
            };
            if key.is_empty() {
                return Err(SecretError::Empty { index: i });
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(SecretError::NoneGiven);
        }
        Ok(Self(keys))
    }

    /// How many secrets are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: parsing refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The event id a scheme's id header carries, and whether the signature covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderId {
    /// Signed with the body (standard-webhooks' `webhook-id`): it identifies the event.
    Signed(String),
    /// Outside the signature (`x-event-id`, `X-GitHub-Delivery`): anyone who captured a
    /// request can send it again with another one, so it cannot identify the event alone.
    Unsigned(String),
    /// The scheme has no id header (stripe: the id is in the signed body).
    None,
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The scheme's id header.
    pub event_id: HeaderId,
    /// Index of the secret that matched.
    pub secret_index: usize,
}

/// Why a request was refused; the error module's `Reject` turns it into the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A header the scheme requires is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but unusable (e.g. a timestamp that is not a number).
    #[error("invalid header {header}: {detail}")]
    InvalidHeader { header: &'static str, detail: &'static str },
    /// The signed timestamp is further from now than the tolerance.
    #[error("timestamp outside tolerance")]
    TimestampOutOfTolerance,
    /// No configured secret produces any of the given signatures.
    #[error("signature does not match")]
    SignatureMismatch,
}

fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, Rejection> {
    let v = headers.get(name).ok_or(Rejection::MissingHeader(name))?;
    v.to_str().map(str::trim).map_err(|_| Rejection::InvalidHeader {
        header: name,
        detail: "not visible ASCII",
    })
}

fn timestamp(raw: &str, name: &'static str, now_unix: i64, tolerance_secs: u64) -> Result<(), Rejection> {
    let ts: i64 = raw.parse().map_err(|_| Rejection::InvalidHeader {
        header: name,
        detail: "not a unix timestamp in seconds",
    })?;
    if now_unix.abs_diff(ts) > tolerance_secs {
        return Err(Rejection::TimestampOutOfTolerance);
    }
    Ok(())
}

/// Index of the first secret whose MAC over `parts` equals one of `candidates`.
fn match_secret(secrets: &Secrets, parts: &[&[u8]], candidates: &[Vec<u8>]) -> Result<usize, Rejection> {
    for (i, key) in secrets.0.iter().enumerate() {
        // new_from_slice accepts any key length for HMAC; the error arm cannot happen.
        let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
            continue;
        };
        for p in parts {
            mac.update(p);
        }
        let expected = mac.finalize().into_bytes();
        if candidates.iter().any(|c| bool::from(expected.as_slice().ct_eq(c))) {
            return Ok(i);
        }
    }
    Err(Rejection::SignatureMismatch)
}

/// Lower-case hex only, as the schemes specify: a signature is one exact string, so a
/// changed byte (even only its case) never verifies.
fn strict_hex(h: &str) -> Option<Vec<u8>> {
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(h).ok()
}

fn sha256_hex(value: &str) -> Vec<Vec<u8>> {
    value.strip_prefix("sha256=").and_then(strict_hex).into_iter().collect()
}

/// What can be refused before the body is read: every header the scheme needs is
/// there, its timestamp is within the tolerance, and its signature header has the
/// scheme's shape. [`verify`] checks all of it again with the body.
pub fn precheck(scheme: Scheme, headers: &HeaderMap, now_unix: i64, tolerance_secs: u64) -> Result<(), Rejection> {
    let shape = |header: &'static str, ok: bool| {
        ok.then_some(()).ok_or(Rejection::InvalidHeader {
            header,
            detail: "not a signature of this scheme",
        })
    };
    match scheme {
        Scheme::HmacSha256 => {
            header(headers, "x-event-id")?;
            timestamp(header(headers, "x-timestamp")?, "x-timestamp", now_unix, tolerance_secs)?;
            shape("x-signature", !sha256_hex(header(headers, "x-signature")?).is_empty())
        }
        Scheme::StandardWebhooks => {
            header(headers, "webhook-id")?;
            let ts = header(headers, "webhook-timestamp")?;
            timestamp(ts, "webhook-timestamp", now_unix, tolerance_secs)?;
            let sigs = header(headers, "webhook-signature")?;
            shape("webhook-signature", sigs.split(' ').any(|s| s.starts_with("v1,")))
        }
        Scheme::Stripe => {
            let value = header(headers, "stripe-signature")?;
            let t = value
                .split(',')
                .find_map(|i| i.trim().strip_prefix("t="))
                .ok_or(Rejection::InvalidHeader {
                    header: "stripe-signature",
                    detail: "no t=<timestamp>",
                })?;
            timestamp(t, "stripe-signature", now_unix, tolerance_secs)?;
            shape(
                "stripe-signature",
                value.split(',').any(|i| i.trim().starts_with("v1=")),
            )
        }
        Scheme::Github => {
            header(headers, "x-github-delivery")?;
            shape(
                "x-hub-signature-256",
                !sha256_hex(header(headers, "x-hub-signature-256")?).is_empty(),
            )
        }
    }
}

/// Verify a request. `now_unix` is the current time in seconds; schemes without a
/// timestamp ignore it.
pub fn verify(
    scheme: Scheme,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &Secrets,
    now_unix: i64,
    tolerance_secs: u64,
) -> Result<Verified, Rejection> {
    match scheme {
        Scheme::HmacSha256 => {
            let id = header(headers, "x-event-id")?;
            let ts = header(headers, "x-timestamp")?;
            let sig = header(headers, "x-signature")?;
            timestamp(ts, "x-timestamp", now_unix, tolerance_secs)?;
            let secret_index = match_secret(secrets, &[ts.as_bytes(), b".", body], &sha256_hex(sig))?;
            Ok(Verified {
                event_id: HeaderId::Unsigned(id.to_owned()),
                secret_index,
            })
        }
        Scheme::StandardWebhooks => {
            let id = header(headers, "webhook-id")?;
            let ts = header(headers, "webhook-timestamp")?;
            let sigs = header(headers, "webhook-signature")?;
            timestamp(ts, "webhook-timestamp", now_unix, tolerance_secs)?;
            let candidates: Vec<Vec<u8>> = sigs
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .collect();
            let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
            let secret_index = match_secret(secrets, &parts, &candidates)?;
            Ok(Verified {
                event_id: HeaderId::Signed(id.to_owned()),
                secret_index,
            })
        }
        Scheme::Stripe => {
            let value = header(headers, "stripe-signature")?;
            let mut ts = None;
            let mut candidates = Vec::new();
            for item in value.split(',') {
                match item.trim().split_once('=') {
                    Some(("t", t)) => ts = Some(t),
                    Some(("v1", s)) => candidates.extend(strict_hex(s)),
                    _ => {}
                }
            }
            let ts = ts.ok_or(Rejection::InvalidHeader {
                header: "stripe-signature",
                detail: "no t=<timestamp>",
            })?;
            timestamp(ts, "stripe-signature", now_unix, tolerance_secs)?;
            let secret_index = match_secret(secrets, &[ts.as_bytes(), b".", body], &candidates)?;
            Ok(Verified {
                event_id: HeaderId::None,
                secret_index,
            })
        }
        Scheme::Github => {
            let id = header(headers, "x-github-delivery")?;
            let sig = header(headers, "x-hub-signature-256")?;
            let secret_index = match_secret(secrets, &[body], &sha256_hex(sig))?;
            Ok(Verified {
                event_id: HeaderId::Unsigned(id.to_owned()),
                secret_index,
            })
        }
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;

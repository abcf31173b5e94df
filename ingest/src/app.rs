//! The shared state every request sees, built once at start-up from the config:
//! resolved sources with their secrets, the producer, metrics and the tracer.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::body::BodyBudget;

use crate::config::{HttpConfig, IngestConfig, SourceConfig};
use crate::error::{ConfigError, IngestError};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::trace::RequestTracer;
use crate::verify::Secrets;

/// A configured source with its secrets loaded.
#[derive(Debug)]
pub struct Source {
    pub config: SourceConfig,
    pub secrets: Secrets,
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct App {
    pub sources: HashMap<String, Source>,
    pub publisher: Publisher,
    pub metrics: Metrics,
    pub tracer: RequestTracer,
    pub http: HttpConfig,
    /// Bounds requests in processing; a request that finds none free is answered 429.
    pub in_flight: Arc<Semaphore>,
    /// Memory for the bodies of the requests in flight (`crate::body`).
    pub body_budget: BodyBudget,
}

/// Load each source's secrets from its environment variable or file.
pub fn load_sources(
    config: &IngestConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, Source>, ConfigError> {
    let mut out = HashMap::new();
    for (name, sc) in &config.sources {
        let field = format!("sources.{name}");
        let secrets = match (&sc.secrets_env, &sc.secrets_file) {
            (Some(var), None) => {
                let text = env(var).ok_or_else(|| ConfigError::Invalid {
                    field: field.clone(),
                    detail: format!("environment variable {var} (its secrets) is not set"),
                })?;
                Secrets::from_env_value(sc.scheme, &text)
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                    field: field.clone(),
                    detail: format!("cannot read secrets file {}: {e}", path.display()),
                })?;
                Secrets::from_file_text(sc.scheme, &text)
            }
            _ => {
                return Err(ConfigError::Invalid {
                    field,
                    detail: "set exactly one of secrets_env and secrets_file".into(),
                })
            }
        }
        .map_err(|source| ConfigError::Secrets {
            field: field.clone(),
            source,
        })?;
        out.insert(
            name.clone(),
            Source {
                config: sc.clone(),
                secrets,
            },
        );
    }
    Ok(out)
}

impl App {
    /// Build the state: load secrets (from the process environment) and create the producer.
    pub fn new(config: &IngestConfig) -> Result<Self, IngestError> {
        config.validate()?;
        let sources = load_sources(config, |k| std::env::var(k).ok())?;
        let publisher = Publisher::new(&config.kafka).map_err(IngestError::Producer)?;
        Ok(Self {
            sources,
            publisher,
            metrics: Metrics::new(),
            tracer: RequestTracer::new(&config.tracing)?,
            http: config.http.clone(),
            in_flight: Arc::new(Semaphore::new(config.http.max_in_flight_requests)),
            body_budget: BodyBudget::new(
                config.http.max_buffered_body_bytes,
                config.http.max_buffered_body_bytes_per_peer,
            ),
        })
    }
}

//! Trace export, shared by both services and configured the way every OpenTelemetry
//! user expects: the `[tracing]` table of the binary's config file, overridden by the
//! standard variables `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` and
//! `OTEL_SERVICE_NAME` (the config loader maps them, see `config::SHARED_VARIABLES`; the
//! binary's own `<PREFIX>_TRACING_*` win over them). Export is off until an endpoint is set: trace ids are still made and
//! propagated, so logs and records carry them either way.
//!
//! The exporter (feature `otlp`) sends OTLP over HTTP with protobuf from the SDK's batch
//! processor thread: a slow or absent collector never holds up a request, spans beyond
//! the queue are dropped. `OTEL_BSP_*` tune that processor as usual.

use serde::{Deserialize, Serialize};

/// `[tracing]`: where spans go and which are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// Base URL of an OTLP/HTTP receiver (a collector), e.g. `http://otel-collector:4318`;
    /// spans go to `<it>/v1/traces`. Default empty: no export.
    pub otlp_endpoint: String,
    /// The full URL for spans, when it is not `otlp_endpoint` + `/v1/traces`. Default empty.
    pub otlp_traces_endpoint: String,
    /// `http/protobuf`, the one protocol built in. Default `http/protobuf`.
    pub otlp_protocol: String,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off` or `parentbased_traceidratio` (OpenTelemetry's names).
    /// Default `parentbased_always_on`: a provider's sampled request is kept whole.
    pub sampler: String,
    /// The ratio of the `traceidratio` samplers, 0.0 to 1.0 (0.01: one trace in 100).
    /// Default 1.0.
    pub sampler_arg: f64,
    /// The spans' `service.name`. Default empty: the binary's own
    /// (`hookstream-ingest`, `hookstream-processor`).
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            otlp_traces_endpoint: String::new(),
            otlp_protocol: "http/protobuf".into(),
            sampler: "parentbased_always_on".into(),
            sampler_arg: 1.0,
            service_name: String::new(),
        }
    }
}

/// Settings that cannot be used as they are.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("tracing.otlp_protocol {0:?}: only http/protobuf is built in")]
    Protocol(String),
    #[error("tracing.sampler {0:?} is not one of OpenTelemetry's sampler names")]
    Sampler(String),
    #[error("tracing.sampler_arg {0} is not a ratio between 0 and 1")]
    Ratio(f64),
    #[cfg(feature = "otlp")]
    #[error("the OTLP exporter cannot be built")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Which spans are kept: [`TracingConfig::sampler`] parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    /// The parent's decision when there is a parent, else the inner choice.
    ParentBased(Root),
}

/// A parent-based sampler's choice for a trace that starts here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    On,
    Off,
    Ratio(f64),
}

impl TracingConfig {
    /// The URL spans are sent to, or `None` when export is off.
    pub fn traces_url(&self) -> Option<String> {
        if !self.otlp_traces_endpoint.trim().is_empty() {
            return Some(self.otlp_traces_endpoint.trim().to_owned());
        }
        let base = self.otlp_endpoint.trim().trim_end_matches('/');
        (!base.is_empty()).then(|| format!("{base}/v1/traces"))
    }

    /// The sampler, checked.
    pub fn sampling(&self) -> Result<Sampling, TelemetryError> {
        let ratio = || {
            if (0.0..=1.0).contains(&self.sampler_arg) {
                Ok(self.sampler_arg)
            } else {
                Err(TelemetryError::Ratio(self.sampler_arg))
            }
        };
        Ok(match self.sampler.trim() {
            "always_on" => Sampling::AlwaysOn,
            "always_off" => Sampling::AlwaysOff,
            "traceidratio" => Sampling::Ratio(ratio()?),
            "parentbased_always_on" => Sampling::ParentBased(Root::On),
            "parentbased_always_off" => Sampling::ParentBased(Root::Off),
            "parentbased_traceidratio" => Sampling::ParentBased(Root::Ratio(ratio()?)),
            other => return Err(TelemetryError::Sampler(other.to_owned())),
        })
    }

    /// These settings for a service whose callers are not trusted (ingest: anyone can
    /// send a `traceparent`): a parent-based sampler becomes its root choice for every
    /// request, so a caller's sampled flag never forces a trace to be kept (the trace
    /// id still continues, and a ratio decides by it, as the processor's does).
    pub fn at_the_edge(&self) -> Self {
        let sampler = match self.sampling() {
            Ok(Sampling::ParentBased(Root::On)) => "always_on",
            Ok(Sampling::ParentBased(Root::Off)) => "always_off",
            Ok(Sampling::ParentBased(Root::Ratio(_))) => "traceidratio",
            _ => return self.clone(),
        };
        Self {
            sampler: sampler.into(),
            ..self.clone()
        }
    }

    /// Every setting checked, without building anything (for `--check` and startup).
    pub fn validate(&self) -> Result<(), TelemetryError> {
        self.sampling()?;
        if self.traces_url().is_some() && self.otlp_protocol.trim() != "http/protobuf" {
            return Err(TelemetryError::Protocol(self.otlp_protocol.clone()));
        }
        Ok(())
    }

    /// A tracer provider with these settings: spans of `service.name` (`default_service`
    /// when none is set), sampled as configured, exported when an endpoint is set.
    #[cfg(feature = "otlp")]
    pub fn provider(
        &self,
        default_service: &str,
    ) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, TelemetryError> {
        use opentelemetry_otlp::{Protocol, WithExportConfig};
        use opentelemetry_sdk::trace::Sampler;
        self.validate()?;
        let root = |r: Root| match r {
            Root::On => Sampler::AlwaysOn,
            Root::Off => Sampler::AlwaysOff,
            Root::Ratio(x) => Sampler::TraceIdRatioBased(x),
        };
        let sampler = match self.sampling()? {
            Sampling::AlwaysOn => Sampler::AlwaysOn,
            Sampling::AlwaysOff => Sampler::AlwaysOff,
            Sampling::Ratio(x) => Sampler::TraceIdRatioBased(x),
            Sampling::ParentBased(r) => Sampler::ParentBased(Box::new(root(r))),
        };
        let name = if self.service_name.trim().is_empty() {
            default_service.to_owned()
        } else {
            self.service_name.trim().to_owned()
        };
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
        let mut builder = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_resource(resource);
        if let Some(url) = self.traces_url() {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url)
                .build()
                .map_err(TelemetryError::Exporter)?;
            builder = builder.with_batch_exporter(exporter);
        }
        Ok(builder.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_is_off_by_default_and_the_url_follows_the_otlp_convention() {
        let mut c = TracingConfig::default();
        assert_eq!(c.traces_url(), None);
        assert_eq!(c.sampling().unwrap(), Sampling::ParentBased(Root::On));
        c.otlp_endpoint = "http://collector:4318/".into();
        assert_eq!(c.traces_url().as_deref(), Some("http://collector:4318/v1/traces"));
        c.otlp_traces_endpoint = "http://other:4318/custom".into();
        assert_eq!(c.traces_url().as_deref(), Some("http://other:4318/custom"));
    }

    #[test]
    fn samplers_have_opentelemetrys_names_and_ratios_are_checked() {
        let with = |s: &str, arg: f64| TracingConfig {
            sampler: s.into(),
            sampler_arg: arg,
            ..TracingConfig::default()
        };
        assert_eq!(with("traceidratio", 0.01).sampling().unwrap(), Sampling::Ratio(0.01));
        assert_eq!(
            with("parentbased_traceidratio", 0.5).sampling().unwrap(),
            Sampling::ParentBased(Root::Ratio(0.5))
        );
        assert_eq!(with("always_off", 7.0).sampling().unwrap(), Sampling::AlwaysOff);
        assert!(matches!(
            with("traceidratio", 1.5).sampling(),
            Err(TelemetryError::Ratio(_))
        ));
        assert!(matches!(
            with("sometimes", 1.0).sampling(),
            Err(TelemetryError::Sampler(_))
        ));
        let grpc = TracingConfig {
            otlp_endpoint: "http://c:4317".into(),
            otlp_protocol: "grpc".into(),
            ..TracingConfig::default()
        };
        assert!(matches!(grpc.validate(), Err(TelemetryError::Protocol(_))));
    }
}

//! Prometheus / OpenMetrics exposition of a mesh, read at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{Kind, MetricsSource};

/// A collector that asks `read` for fresh figures on every scrape.
pub(crate) struct MeshCollector<F> {
    pub(crate) read: F,
}

impl<F> std::fmt::Debug for MeshCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshCollector")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl<F> Collector for MeshCollector<F>
where
    F: Fn() -> MetricsSource + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let source = (self.read)();
        let s = &source.stats;
        let e = &mut encoder;
        // Counter names get `_total` from the encoder.
        for (name, help, kind, value) in s.exposed() {
            match kind {
                Kind::Counter => counter(e, name, help, value)?,
                Kind::Gauge => gauge(e, name, help, value as f64)?,
            }
        }
        {
            let metric = ConstCounter::new(0u64);
            let mut family = e.encode_descriptor(
                "service_discovery_health_checks",
                "Health checks run by this peer, by result",
                None,
                metric.metric_type(),
            )?;
            for (result, value) in [
                ("passing", s.health_checks_passed),
                ("failing", s.health_checks_failed),
            ] {
                let labels = [("result", result)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            e,
            "service_discovery_instances_active",
            "Instances in this peer's view",
            s.instances_active as f64,
        )?;
        {
            let metric = ConstGauge::new(0i64);
            let mut family = e.encode_descriptor(
                "service_discovery_instances",
                "Instances in this peer's view by service and status",
                None,
                metric.metric_type(),
            )?;
            for (service, status, count) in &source.instances {
                let labels = [("service", service.as_str()), ("status", status)];
                ConstGauge::new(*count as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            e,
            "service_discovery_owned_instances",
            "Instances this peer owns and heartbeats",
            source.owned as f64,
        )?;
        counter(
            e,
            "service_discovery_reconnects",
            "Reconnections to the backend",
            source.reconnects,
        )?;
        gauge(
            e,
            "service_discovery_view_lag_seconds",
            "Delay from the server storing the last change to this peer receiving it",
            source.view_lag.as_secs_f64(),
        )?;
        gauge(
            e,
            "service_discovery_view_pending_messages",
            "Changes not yet applied: held by the server for this peer plus queued locally",
            (source.server_pending + s.view_backlog) as f64,
        )?;
        Ok(())
    }
}

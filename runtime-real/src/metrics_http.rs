//! The Prometheus endpoint (`metrics.listener`): `GET /metrics` asks the core thread for a
//! snapshot of its metrics and answers it in the OpenMetrics text format (which Prometheus
//! scrapes), encoded by `prometheus-client`. HTTP by `hyper`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sluice_core::metrics::{Family, Kind};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::server::Msg;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One snapshot, handed to the registry as a collector.
#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            // The encoder adds a counter's `_total` itself.
            let (name, ty) = match f.kind {
                Kind::Counter => (f.name.strip_suffix("_total").unwrap_or(&f.name), MetricType::Counter),
                Kind::Gauge => (f.name.as_str(), MetricType::Gauge),
            };
            let mut family = encoder.encode_descriptor(name, f.help, None, ty)?;
            for (labels, value) in &f.samples {
                // The encoder writes label values as they are: escape them (a group id may
                // hold any character).
                let labels: Vec<(&str, String)> = labels.iter().map(|(k, v)| (*k, escape(v))).collect();
                let metric = family.encode_family(&labels)?;
                match f.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(metric)?,
                    Kind::Gauge => ConstGauge::new(*value).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}

/// A label value as the text format writes it.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The exposition text of a snapshot.
pub fn render(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(families)));
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &registry) {
        Ok(()) => out,
        Err(_) => String::from("# the metrics could not be encoded\n# EOF\n"),
    }
}

/// Binds the endpoint, then serves it for as long as the broker runs.
pub async fn start(at: SocketAddr, core: mpsc::Sender<Msg>) -> Result<(), String> {
    let listener = TcpListener::bind(at).await.map_err(|e| format!("cannot listen on metrics.listener {at}: {e}"))?;
    tracing::info!(listen = %at, "metrics endpoint up (GET /metrics)");
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let core = core.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, core.clone()));
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
            });
        }
    });
    Ok(())
}

async fn answer(req: Request<Incoming>, core: mpsc::Sender<Msg>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(r)
    };
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "Sluice serves GET /metrics here\n".into());
    }
    let (tx, rx) = oneshot::channel();
    if core.send(Msg::Scrape { reply: tx }).await.is_err() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the broker is stopping\n".into());
    }
    match rx.await {
        Ok(families) => reply(StatusCode::OK, CONTENT_TYPE, render(families)),
        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the broker is stopping\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges_with_labels() {
        let mut c = Family::new("kafka_server_brokertopicmetrics_messagesin_total", "Records in", Kind::Counter);
        c.samples.push((vec![], 7.0));
        c.samples.push((vec![("topic", "a\"b".to_string())], 3.0));
        let g = Family::one("kafka_server_replicamanager_leadercount", "Leaders", Kind::Gauge, 2.0);
        let text = render(vec![c, g]);
        assert!(text.contains("# TYPE kafka_server_brokertopicmetrics_messagesin counter\n"), "{text}");
        assert!(text.contains("\nkafka_server_brokertopicmetrics_messagesin_total{} 7.0\n"), "{text}");
        assert!(text.contains("kafka_server_brokertopicmetrics_messagesin_total{topic=\"a\\\"b\"} 3.0\n"), "{text}");
        assert!(text.contains("\nkafka_server_replicamanager_leadercount{} 2.0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

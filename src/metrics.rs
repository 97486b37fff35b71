//! Metrics for `/metrics`: one Prometheus registry that every part registers into (the
//! engine and HTTP here, mail in [`crate::mail::MailMetrics`]). Updating a metric is a few
//! atomics; the text is rendered on each scrape.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the rebuild latency histogram.
pub const REBUILD_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
/// Statuses counted by their number; any other is counted as `other` (bounds the labels).
const STATUSES: [(u16, &str); 12] = [
    (200, "200"),
    (204, "204"),
    (303, "303"),
    (304, "304"),
    (400, "400"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (413, "413"),
    (429, "429"),
    (500, "500"),
    (503, "503"),
];

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: &'static str,
}

/// The engine's and the web server's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub articles: Gauge,
    pub articles_scheduled: Gauge,
    pub article_errors: Gauge,
    pub feeds_rebuilt: Counter,
    pub rescans: Counter,
    rebuild_seconds: Histogram,
    requests: Family<RequestLabels, Counter>,
    pub search_documents: Gauge,
    pub search_index_bytes: Gauge,
    pub search_index_file_bytes: Gauge,
    pub websub_notified: Counter,
    pub websub_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            articles: Gauge::default(),
            articles_scheduled: Gauge::default(),
            article_errors: Gauge::default(),
            feeds_rebuilt: Counter::default(),
            rescans: Counter::default(),
            rebuild_seconds: Histogram::new(REBUILD_BUCKETS),
            requests: Family::default(),
            search_documents: Gauge::default(),
            search_index_bytes: Gauge::default(),
            search_index_file_bytes: Gauge::default(),
            websub_notified: Counter::default(),
            websub_failures: Counter::default(),
        }
    }
}

/// The route label of a request path.
pub fn route_of(path: &str) -> &'static str {
    match path {
        "/" | "/index.html" => "index",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        "/subscribe" => "subscribe",
        "/confirm" => "confirm",
        "/unsubscribe" => "unsubscribe",
        "/preferences" => "preferences",
        p if p.starts_with("/feeds/") => "feed",
        p if p.starts_with("/articles/") => "article",
        "/search" => "search",
        p if p.starts_with("/categories/") || p.starts_with("/pages/") => "list",
        p if p.starts_with("/archive/") => "archive",
        _ => "other",
    }
}

impl Metrics {
    /// Adds these metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bantin_articles",
            "Articles in the store, scheduled ones included",
            self.articles.clone(),
        );
        registry.register(
            "bantin_articles_scheduled",
            "Articles whose publication time is still ahead",
            self.articles_scheduled.clone(),
        );
        registry.register(
            "bantin_article_errors",
            "Files of the store that cannot be read as articles",
            self.article_errors.clone(),
        );
        registry.register(
            "bantin_feeds_rebuilt",
            "Feeds rendered again after a change",
            self.feeds_rebuilt.clone(),
        );
        registry.register(
            "bantin_rescans",
            "Full walks of the store",
            self.rescans.clone(),
        );
        registry.register(
            "bantin_rebuild_seconds",
            "Time from a change seen to its files published",
            self.rebuild_seconds.clone(),
        );
        registry.register(
            "bantin_search_documents",
            "Articles in the search index (0 until its first build ends)",
            self.search_documents.clone(),
        );
        registry.register(
            "bantin_search_index_bytes",
            "Memory the search index holds",
            self.search_index_bytes.clone(),
        );
        registry.register(
            "bantin_search_index_file_bytes",
            "Bytes of the search index's word lists in its file in state.dir (a file without a \
             name: du does not see it)",
            self.search_index_file_bytes.clone(),
        );
        registry.register(
            "bantin_websub_notified",
            "Feeds a WebSub hub accepted a publish notice for",
            self.websub_notified.clone(),
        );
        registry.register(
            "bantin_websub_failures",
            "Publish notices a WebSub hub failed (each tried again later)",
            self.websub_failures.clone(),
        );
        registry.register(
            "bantin_http_requests",
            "HTTP requests by route and status",
            self.requests.clone(),
        );
    }

    pub fn request(&self, route: &'static str, status: u16) {
        let status = STATUSES
            .iter()
            .find(|(code, _)| *code == status)
            .map_or("other", |(_, label)| label);
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    pub fn rebuild(&self, took: Duration, feeds: usize) {
        self.feeds_rebuilt.inc_by(feeds as u64);
        self.rebuild_seconds.observe(took.as_secs_f64());
    }
}

/// The Prometheus text of everything registered.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!("cannot render the metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_route_and_status() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.request(route_of("/feeds/a.rss"), 304);
        m.request(route_of("/feeds/a.rss"), 304);
        m.request(route_of("/nope"), 418);
        m.request(route_of("/preferences"), 200);
        m.rebuild(Duration::from_millis(3), 2);
        let text = render(&registry);
        assert!(
            text.contains("bantin_http_requests_total{route=\"feed\",status=\"304\"} 2"),
            "{text}"
        );
        assert!(text.contains("bantin_http_requests_total{route=\"other\",status=\"other\"} 1"));
        assert!(
            text.contains("bantin_http_requests_total{route=\"preferences\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bantin_rebuild_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("bantin_rebuild_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("bantin_feeds_rebuilt_total 2"));
    }
}

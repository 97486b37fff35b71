//! Counters for `/metrics`, in the Prometheus text format. Lock-free: every request and
//! rebuild updates a few atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Routes counted apart.
pub const ROUTES: [&str; 9] = [
    "feed",
    "index",
    "article",
    "subscribe",
    "confirm",
    "unsubscribe",
    "healthz",
    "metrics",
    "other",
];
/// Statuses counted apart; any other lands in the last slot.
pub const STATUSES: [u16; 12] = [200, 204, 303, 304, 400, 403, 404, 405, 413, 429, 500, 0];
/// Upper bounds (seconds) of the rebuild latency histogram.
pub const REBUILD_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Default)]
pub struct Metrics {
    pub articles: AtomicU64,
    pub articles_scheduled: AtomicU64,
    pub article_errors: AtomicU64,
    pub feeds_rebuilt: AtomicU64,
    pub rescans: AtomicU64,
    rebuild_buckets: [AtomicU64; REBUILD_BUCKETS.len()],
    rebuild_count: AtomicU64,
    rebuild_micros: AtomicU64,
    requests: [[AtomicU64; STATUSES.len()]; ROUTES.len()],
}

/// The route label of a request path.
pub fn route_of(path: &str) -> usize {
    let name = match path {
        "/" | "/index.html" => "index",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        "/subscribe" => "subscribe",
        "/confirm" => "confirm",
        "/unsubscribe" => "unsubscribe",
        p if p.starts_with("/feeds/") => "feed",
        p if p.starts_with("/articles/") => "article",
        _ => "other",
    };
    ROUTES
        .iter()
        .position(|r| *r == name)
        .unwrap_or(ROUTES.len() - 1)
}

impl Metrics {
    pub fn request(&self, route: usize, status: u16) {
        let slot = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.requests[route][slot].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rebuild(&self, took: Duration, feeds: usize) {
        self.feeds_rebuilt
            .fetch_add(feeds as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (i, bound) in REBUILD_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.rebuild_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.rebuild_count.fetch_add(1, Ordering::Relaxed);
        self.rebuild_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "bantin_articles",
            "Articles in the store, scheduled ones included.",
            get(&self.articles),
        );
        gauge(
            &mut out,
            "bantin_articles_scheduled",
            "Articles whose publication time is still ahead.",
            get(&self.articles_scheduled),
        );
        gauge(
            &mut out,
            "bantin_article_errors",
            "Files of the store that cannot be read as articles.",
            get(&self.article_errors),
        );
        let _ = writeln!(
            out,
            "# HELP bantin_feeds_rebuilt_total Feeds rendered again after a change.\n\
             # TYPE bantin_feeds_rebuilt_total counter\nbantin_feeds_rebuilt_total {}",
            get(&self.feeds_rebuilt)
        );
        let _ = writeln!(
            out,
            "# HELP bantin_rescans_total Full walks of the store.\n\
             # TYPE bantin_rescans_total counter\nbantin_rescans_total {}",
            get(&self.rescans)
        );
        let _ = writeln!(
            out,
            "# HELP bantin_rebuild_seconds Time from a change seen to its files published.\n\
             # TYPE bantin_rebuild_seconds histogram"
        );
        for (i, bound) in REBUILD_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "bantin_rebuild_seconds_bucket{{le=\"{bound}\"}} {}",
                get(&self.rebuild_buckets[i])
            );
        }
        let count = get(&self.rebuild_count);
        let _ = writeln!(out, "bantin_rebuild_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "bantin_rebuild_seconds_sum {}\nbantin_rebuild_seconds_count {count}",
            get(&self.rebuild_micros) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP bantin_http_requests_total HTTP requests by route and status.\n\
             # TYPE bantin_http_requests_total counter"
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n = get(&self.requests[r][s]);
                if n > 0 {
                    let status = if *status == 0 {
                        "other".to_string()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(
                        out,
                        "bantin_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_route_and_status() {
        let m = Metrics::default();
        m.request(route_of("/feeds/a.rss"), 304);
        m.request(route_of("/feeds/a.rss"), 304);
        m.request(route_of("/nope"), 418);
        m.rebuild(Duration::from_millis(3), 2);
        let text = m.render();
        assert!(text.contains("bantin_http_requests_total{route=\"feed\",status=\"304\"} 2"));
        assert!(text.contains("bantin_http_requests_total{route=\"other\",status=\"other\"} 1"));
        assert!(text.contains("bantin_rebuild_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("bantin_rebuild_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("bantin_feeds_rebuilt_total 2"));
    }
}

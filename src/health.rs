//! Liveness of the daemon's parts, for the systemd watchdog: it is fed only while the HTTP
//! server answers, the mail worker's loop turns and no state flush hangs (the engine feeds
//! it from its own loop, so an engine that hangs starves it too).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The instant the beats count from.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    base().elapsed().as_millis() as u64
}

/// When a part last showed it was alive.
#[derive(Debug)]
pub struct Beat(AtomicU64);

impl Default for Beat {
    fn default() -> Self {
        Beat(AtomicU64::new(now_ms()))
    }
}

impl Beat {
    pub fn beat(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// The parts' beats. Cheap to clone; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The HTTP server answered its own `/healthz`.
    pub http: Arc<Beat>,
    /// The mail worker's loop turned.
    pub worker: Arc<Beat>,
    /// When the running state flush began (0: none runs).
    flush_since: Arc<AtomicU64>,
}

impl Health {
    pub fn flush_started(&self) {
        self.flush_since.store(now_ms().max(1), Ordering::Relaxed);
    }

    pub fn flush_done(&self) {
        self.flush_since.store(0, Ordering::Relaxed);
    }

    /// The part that has not shown progress within `limit`, if any.
    pub fn stuck(&self, limit: Duration) -> Option<&'static str> {
        if self.http.age() > limit {
            return Some("the HTTP server does not answer its own /healthz");
        }
        if self.worker.age() > limit {
            return Some("the mail worker's loop does not turn");
        }
        let since = self.flush_since.load(Ordering::Relaxed);
        if since != 0 && Duration::from_millis(now_ms().saturating_sub(since)) > limit {
            return Some("a state flush does not finish");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_that_stops_beating_is_named() {
        let h = Health::default();
        assert_eq!(h.stuck(Duration::from_secs(60)), None);
        std::thread::sleep(Duration::from_millis(30));
        h.worker.beat();
        assert_eq!(
            h.stuck(Duration::from_millis(20)),
            Some("the HTTP server does not answer its own /healthz")
        );
        h.http.beat();
        assert_eq!(h.stuck(Duration::from_millis(20)), None);
        h.flush_started();
        std::thread::sleep(Duration::from_millis(30));
        h.http.beat();
        h.worker.beat();
        assert_eq!(
            h.stuck(Duration::from_millis(20)),
            Some("a state flush does not finish")
        );
        h.flush_done();
        assert_eq!(h.stuck(Duration::from_millis(20)), None);
    }
}

//! The one source of "now" for the daemon and the commands.
//!
//! Everything that needs the time of day is handed a [`Clock`]: the system clock in
//! production, a manual one in tests, which only moves when the test says so. Waiting for a
//! moment of the clock (a scheduled article, a digest tick, a retry) goes through
//! [`Clock::sleep_until`], so a test that moves the clock wakes every waiter at once instead of
//! sleeping in real time.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};

/// A system-clock waiter looks at the clock again at least this often, so a clock that is set
/// (NTP, a suspended machine) does not leave it asleep for hours.
const SYSTEM_RECHECK: Duration = Duration::from_secs(60);

/// Wall-clock time, real or manual. Cheap to clone.
#[derive(Clone, Default)]
pub struct Clock {
    /// `None`: the system clock. Some: a manual clock holding unix milliseconds.
    manual: Option<Arc<tokio::sync::watch::Sender<i64>>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::System"),
            Some(t) => write!(f, "Clock::Manual({})", *t.borrow()),
        }
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands still at `start` until [`Clock::advance`] or [`Clock::set`].
    pub fn manual(start: DateTime<Utc>) -> Clock {
        Clock {
            manual: Some(Arc::new(tokio::sync::watch::Sender::new(
                start.timestamp_millis(),
            ))),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            None => Utc::now(),
            Some(t) => DateTime::from_timestamp_millis(*t.borrow()).unwrap_or_default(),
        }
    }

    /// Now, as the article times are kept (with an offset).
    pub fn now_fixed(&self) -> DateTime<FixedOffset> {
        self.now().fixed_offset()
    }

    /// Now in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }

    /// Now in unix seconds.
    pub fn now_s(&self) -> i64 {
        self.now().timestamp()
    }

    /// Moves a manual clock forward; wakes every waiter. Panics on the system clock.
    pub fn advance(&self, by: chrono::Duration) {
        let t = self
            .manual
            .as_ref()
            .expect("only a manual clock can be moved");
        t.send_modify(|ms| *ms += by.num_milliseconds());
    }

    /// Sets a manual clock; wakes every waiter. Panics on the system clock.
    pub fn set(&self, to: DateTime<Utc>) {
        let t = self
            .manual
            .as_ref()
            .expect("only a manual clock can be moved");
        t.send_replace(to.timestamp_millis());
    }

    /// Completes once the clock reads `deadline` or later.
    pub async fn sleep_until(&self, deadline: DateTime<Utc>) {
        let deadline_ms = deadline.timestamp_millis();
        match &self.manual {
            None => loop {
                let left = deadline_ms - Utc::now().timestamp_millis();
                if left <= 0 {
                    return;
                }
                let step = Duration::from_millis(left as u64).min(SYSTEM_RECHECK);
                tokio::time::sleep(step).await;
            },
            Some(t) => {
                let mut rx = t.subscribe();
                let _ = rx.wait_for(|ms| *ms >= deadline_ms).await;
            }
        }
    }

    /// Completes after `d` of this clock's time.
    pub async fn sleep(&self, d: Duration) {
        let by = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let deadline = self
            .now()
            .checked_add_signed(by)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.sleep_until(deadline).await
    }

    /// Completes when a manual clock is moved; never on the system clock. Lets a blocking
    /// loop that waits on its own timer notice a manual clock's jump at once.
    pub async fn changed(&self) {
        match &self.manual {
            None => std::future::pending().await,
            Some(t) => {
                let mut rx = t.subscribe();
                let _ = rx.changed().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_its_sleepers_when_moved() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let clock = Clock::manual(start);
        assert_eq!(clock.now(), start);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep(Duration::from_secs(3600)).await })
        };
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(chrono::Duration::minutes(30));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "half way");
        clock.advance(chrono::Duration::minutes(30));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woken by the move")
            .unwrap();
        assert_eq!(clock.now_s(), 1_700_003_600);
    }
}

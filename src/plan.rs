//! Who gets what: alert recipients, digest contents, retry delays and digest ticks. Pure: it
//! is handed `now` and data.

use chrono::{DateTime, TimeZone};

use crate::store::{Schedule, SubState, Subscriber};

/// Whether `sub` gets an alert for an article of `category`.
pub fn wants_alert(sub: &Subscriber, category: &str) -> bool {
    sub.state == SubState::Active && sub.schedule == Schedule::Immediate && sub.follows(category)
}

/// An article as the digest planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published<'a> {
    pub id: &'a str,
    pub category: &'a str,
    /// When it was published to the mail side (unix milliseconds).
    pub seen: i64,
}

/// The articles of a digest at `tick` (unix milliseconds) for `sub`: those that appeared after what its last
/// digest covered (or after it confirmed) and up to `tick`, in its categories, in the order
/// given (newest first).
pub fn digest_for<'a>(sub: &Subscriber, tick: i64, articles: &[Published<'a>]) -> Vec<&'a str> {
    let since = sub
        .digest_until
        .unwrap_or(sub.confirmed.unwrap_or(sub.created).saturating_mul(1000));
    articles
        .iter()
        .filter(|a| a.seen > since && a.seen <= tick && sub.follows(a.category))
        .map(|a| a.id)
        .collect()
}

/// Delay before retry number `attempt` (1 for the first retry): exponential from `initial_ms`,
/// capped at `max_ms`, with ±25 % jitter from `jitter` (a number in 0..1).
pub fn retry_delay_ms(attempt: u32, initial_ms: u64, max_ms: u64, jitter: f64) -> u64 {
    let exp = initial_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let base = exp.min(max_ms) as f64;
    let factor = 0.75 + 0.5 * jitter.clamp(0.0, 1.0);
    (base * factor).round().max(1.0) as u64
}

/// The latest tick of `schedule` in `(last, now]`: the one digest owed after downtime (missed
/// ticks are caught up once, not once each).
pub fn missed_tick<Z: TimeZone>(
    schedule: &cron::Schedule,
    last: &DateTime<Z>,
    now: &DateTime<Z>,
) -> Option<DateTime<Z>> {
    schedule.after(last).take_while(|t| t <= now).last()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn sub(schedule: Schedule, categories: &[&str]) -> Subscriber {
        Subscriber {
            email: "a@x.vn".into(),
            schedule,
            categories: categories.iter().map(|s| s.to_string()).collect(),
            state: SubState::Active,
            created: 0,
            updated: 0,
            confirmed: Some(0),
            confirm_sent: None,
            digest_until: None,
            bounce: None,
        }
    }

    #[test]
    fn alerts_go_to_active_immediate_followers() {
        assert!(wants_alert(&sub(Schedule::Immediate, &[]), "A"));
        assert!(wants_alert(&sub(Schedule::Immediate, &["A"]), "A"));
        assert!(!wants_alert(&sub(Schedule::Immediate, &["B"]), "A"));
        assert!(!wants_alert(&sub(Schedule::Daily, &[]), "A"));
        let mut s = sub(Schedule::Immediate, &[]);
        s.state = SubState::Pending;
        assert!(!wants_alert(&s, "A"));
    }

    #[test]
    fn digests_cover_what_is_new_since_the_last_one() {
        let articles = [
            Published {
                id: "c",
                category: "B",
                seen: 400,
            },
            Published {
                id: "b",
                category: "A",
                seen: 300,
            },
            Published {
                id: "a",
                category: "A",
                seen: 50,
            },
        ];
        let mut s = sub(Schedule::Daily, &["A"]);
        s.digest_until = Some(100);
        assert_eq!(digest_for(&s, 350, &articles), ["b"]);
        s.digest_until = Some(350);
        assert!(
            digest_for(&s, 500, &articles).is_empty(),
            "nothing new in A"
        );
        s.categories.clear();
        assert_eq!(digest_for(&s, 500, &articles), ["c"]);
    }

    #[test]
    fn retry_delays_grow_and_stay_bounded() {
        assert_eq!(retry_delay_ms(1, 1000, 60_000, 0.5), 1000);
        assert_eq!(retry_delay_ms(3, 1000, 60_000, 0.5), 4000);
        assert_eq!(retry_delay_ms(30, 1000, 60_000, 0.5), 60_000);
        assert_eq!(retry_delay_ms(1, 1000, 60_000, 0.0), 750);
        assert_eq!(retry_delay_ms(1, 1000, 60_000, 1.0), 1250);
    }

    #[test]
    fn missed_ticks_are_caught_up_once() {
        let daily = cron::Schedule::from_str("0 0 7 * * *").unwrap();
        let tz = chrono_tz::Asia::Ho_Chi_Minh;
        let last = tz.with_ymd_and_hms(2026, 11, 20, 7, 0, 0).unwrap();
        let now = tz.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap();
        let tick = missed_tick(&daily, &last, &now).unwrap();
        assert_eq!(tick, tz.with_ymd_and_hms(2026, 11, 23, 7, 0, 0).unwrap());
        let early = tz.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap();
        assert_eq!(missed_tick(&daily, &last, &early), None);
    }
}

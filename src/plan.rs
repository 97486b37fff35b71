//! Who gets what: what a change republishes, alert recipients, digest contents, retry delays
//! and digest ticks. Pure: it is handed `now` and data.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, TimeZone};

use crate::library::{Change, Entry, Library};

use crate::subscriber::{Schedule, SubState, Subscriber};

/// What a set of changes to the library asks to be published again.
#[derive(Debug, Default, PartialEq)]
pub struct Republish {
    /// Categories whose feeds change.
    pub touched: BTreeSet<String>,
    /// Visible articles whose pages are written (new, edited, or come due); the mail side
    /// is told of them and decides which are news.
    pub pages: Vec<Arc<Entry>>,
    /// Articles come due since the last pass (among `pages`).
    pub due: Vec<String>,
    /// Ids whose pages go (deleted, or moved back into the future).
    pub gone: Vec<String>,
    /// Ids whose cached bodies are stale (the file went).
    pub forget: Vec<String>,
}

impl Republish {
    pub fn is_empty(&self) -> bool {
        self.touched.is_empty() && self.gone.is_empty()
    }
}

/// What `changes` touch, plus the articles of `library` that came due in `(horizon, now]`.
pub fn republish(
    changes: &[Change],
    library: &Library,
    horizon: DateTime<FixedOffset>,
    now: DateTime<FixedOffset>,
) -> Republish {
    let visible = |e: &Entry| e.published <= now;
    let mut out = Republish::default();
    for change in changes {
        match change {
            Change::Added(new) => {
                if visible(new) {
                    out.touched.insert(new.category.to_string());
                    out.pages.push(new.clone());
                }
            }
            Change::Updated { old, new } => {
                if visible(old) {
                    out.touched.insert(old.category.to_string());
                }
                if visible(new) {
                    out.touched.insert(new.category.to_string());
                    out.pages.push(new.clone());
                } else if visible(old) {
                    out.gone.push(old.id.to_string());
                }
            }
            Change::Removed(old) => {
                out.forget.push(old.id.to_string());
                if visible(old) {
                    out.touched.insert(old.category.to_string());
                    out.gone.push(old.id.to_string());
                }
            }
        }
    }
    let due: Vec<Arc<Entry>> = library
        .visible(now)
        .take_while(|e| e.published > horizon)
        .filter(|e| !out.pages.iter().any(|p| p.id == e.id))
        .cloned()
        .collect();
    for entry in due {
        out.touched.insert(entry.category.to_string());
        out.due.push(entry.id.to_string());
        out.pages.push(entry);
    }
    out
}

/// Whether `sub` gets an alert for an article of `category`.
pub fn wants_alert(sub: &Subscriber, category: &str) -> bool {
    sub.state == SubState::Active && sub.schedule == Schedule::Immediate && sub.follows(category)
}

/// Whether `sub` confirmed after an alert began going out (`since_ms`) and by `now_ms` (unix
/// milliseconds): they are left out of it. A fan-out reads its subscribers in address order
/// over minutes or hours; without this, one who confirms meanwhile would get the alert only
/// if their address sorts after those already read. (A digest likewise leaves out what
/// appeared before its subscriber confirmed.) A confirmation later than `now_ms` says the
/// clock went back: it is not trusted to leave anyone out.
pub fn joined_during(sub: &Subscriber, since_ms: i64, now_ms: i64) -> bool {
    sub.confirmed.is_some_and(|confirmed_s| {
        let confirmed_ms = confirmed_s.saturating_mul(1000);
        since_ms < confirmed_ms && confirmed_ms <= now_ms
    })
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
            soft_bounces: None,
            tokens_after: None,
        }
    }

    #[test]
    fn an_alert_goes_to_those_subscribed_when_it_began() {
        let mut s = sub(Schedule::Immediate, &[]);
        let (began_ms, now_ms) = (1_700_000_000_500, 1_700_000_100_000);
        for (confirmed, left_out) in [
            (Some(1_700_000_000), false),
            (Some(1_699_999_000), false),
            (Some(1_700_000_001), true),
            (Some(1_700_000_100), true),
            // Later than now: the clock went back, nobody is left out for it.
            (Some(1_700_000_101), false),
            (None, false),
        ] {
            s.confirmed = confirmed;
            assert_eq!(
                joined_during(&s, began_ms, now_ms),
                left_out,
                "{confirmed:?}"
            );
        }
    }

    fn entry(id: &str, category: &str, published: &str) -> Entry {
        Entry {
            title: id.into(),
            ..Entry::sample(
                id,
                category,
                DateTime::parse_from_rfc3339(published).unwrap(),
            )
        }
    }

    #[test]
    fn republish_touches_what_changed_and_what_came_due() {
        let now = DateTime::parse_from_rfc3339("2026-11-20T10:00:00+07:00").unwrap();
        let horizon = DateTime::parse_from_rfc3339("2026-11-20T09:00:00+07:00").unwrap();
        let old = Arc::new(entry("cu", "A", "2026-11-01T08:00:00+07:00"));
        let future = Arc::new(entry("sau", "C", "2026-12-01T08:00:00+07:00"));
        let due = entry("den-gio", "D", "2026-11-20T09:30:00+07:00");
        let library = Library::from_entries([(*old).clone(), (*future).clone(), due]);
        let changes = [
            Change::Updated {
                old: old.clone(),
                new: Arc::new(entry("cu", "B", "2026-11-01T08:00:00+07:00")),
            },
            Change::Added(future.clone()),
            Change::Removed(Arc::new(entry("xoa", "A", "2026-11-02T08:00:00+07:00"))),
        ];
        let r = republish(&changes, &library, horizon, now);
        let touched: Vec<&str> = r.touched.iter().map(String::as_str).collect();
        assert_eq!(
            touched,
            ["A", "B", "D"],
            "the future article touches nothing"
        );
        let pages: Vec<&str> = r.pages.iter().map(|e| e.id.as_ref()).collect();
        assert_eq!(pages, ["cu", "den-gio"]);
        assert_eq!(r.due, ["den-gio"]);
        assert_eq!(r.gone, ["xoa"]);
        assert_eq!(r.forget, ["xoa"]);
        // A second pass from the moment 'den-gio' came due finds nothing new; from just
        // before it, it finds 'den-gio' again.
        let its_time = library.get("den-gio").unwrap().published;
        assert!(republish(&[], &library, its_time, now).is_empty());
        let just_before = its_time - chrono::Duration::seconds(1);
        assert_eq!(republish(&[], &library, just_before, now).due, ["den-gio"]);
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

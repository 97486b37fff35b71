//! Subscribers: who wants which news, how often, and where they stand. Pure data; the
//! store keeps them, `plan` decides from them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Immediate,
    Daily,
    Weekly,
}

impl Schedule {
    pub const ALL: [Schedule; 3] = [Schedule::Immediate, Schedule::Daily, Schedule::Weekly];

    pub fn as_str(self) -> &'static str {
        match self {
            Schedule::Immediate => "immediate",
            Schedule::Daily => "daily",
            Schedule::Weekly => "weekly",
        }
    }

    /// `immediate`, `daily` or `weekly`, in any case (`Daily` from a spreadsheet).
    pub fn parse(s: &str) -> Option<Schedule> {
        Schedule::ALL
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum SubState {
    Pending,
    Active,
    Unsubscribed,
    Bounced,
    /// Reported the mail as spam: unsubscribed from everything, never mailed again unless
    /// they opt in anew.
    Complained,
}

impl SubState {
    pub const ALL: [SubState; 5] = [
        SubState::Pending,
        SubState::Active,
        SubState::Unsubscribed,
        SubState::Bounced,
        SubState::Complained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubState::Pending => "pending",
            SubState::Active => "active",
            SubState::Unsubscribed => "unsubscribed",
            SubState::Bounced => "bounced",
            SubState::Complained => "complained",
        }
    }
}

/// A subscriber. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    pub email: String,
    pub schedule: Schedule,
    /// Categories followed; empty means every category.
    pub categories: Vec<String>,
    pub state: SubState,
    pub created: i64,
    pub updated: i64,
    pub confirmed: Option<i64>,
    /// When the last confirmation mail was queued (at most one a day).
    pub confirm_sent: Option<i64>,
    /// Articles that appeared up to this time (unix milliseconds) were covered by a digest.
    pub digest_until: Option<i64>,
    /// Why the address bounced.
    pub bounce: Option<String>,
    /// Soft bounces (a full mailbox) since the last mail that got through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_bounces: Option<SoftBounces>,
    /// Links issued before this time (unix seconds) no longer confirm or change anything:
    /// set when the address unsubscribes, bounces or complains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_after: Option<i64>,
}

/// A run of soft bounces of one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftBounces {
    /// The first of the run (unix milliseconds).
    pub since_ms: i64,
    pub count: u32,
    pub last: String,
    /// When the last one came (unix milliseconds; 0 in records made before it was kept).
    #[serde(default)]
    pub last_ms: i64,
    /// Whether one came as a delivery report through the inbox: the relay had taken that
    /// mail, so the relay taking later ones says nothing of the mailbox, and only time ends
    /// the run ([`SOFT_BOUNCE_GAP_MS`]).
    #[serde(default)]
    pub reported: bool,
}

/// An address bounces after this many soft bounces in a row…
pub const SOFT_BOUNCES: u32 = 5;
/// …spread over at least this long (a mailbox full for a day is not a dead address).
pub const SOFT_BOUNCE_SPAN_MS: i64 = 3 * 24 * 3600 * 1000;
/// A soft bounce this long after the last one starts a new run: the mails between went
/// through, or there were none (the only end a run of reported ones can have).
pub const SOFT_BOUNCE_GAP_MS: i64 = 30 * 24 * 3600 * 1000;

impl Subscriber {
    /// Ends the subscription in `state` at `now` (unix seconds): every link issued before
    /// stops working.
    pub fn end(&mut self, state: SubState, now: i64) {
        self.state = state;
        self.updated = now;
        self.tokens_after = Some(now);
    }

    /// Whether a link issued at `issued` may still act for this subscriber: only one issued
    /// after the subscription last ended (in the same second counts as before).
    pub fn accepts_token(&self, issued: i64) -> bool {
        self.tokens_after.is_none_or(|after| issued > after)
    }

    /// Records a soft bounce at `now_ms`, `reported` when it came as a delivery report;
    /// returns whether the address now counts as bounced.
    pub fn soft_bounce(&mut self, why: &str, now_ms: i64, reported: bool) -> bool {
        if self
            .soft_bounces
            .as_ref()
            .is_some_and(|run| run.last_ms > 0 && now_ms - run.last_ms >= SOFT_BOUNCE_GAP_MS)
        {
            self.soft_bounces = None;
        }
        let run = self.soft_bounces.get_or_insert(SoftBounces {
            since_ms: now_ms,
            count: 0,
            last: String::new(),
            last_ms: now_ms,
            reported: false,
        });
        run.count += 1;
        run.last = why.to_owned();
        run.last_ms = now_ms;
        run.reported |= reported;
        run.count >= SOFT_BOUNCES && now_ms - run.since_ms >= SOFT_BOUNCE_SPAN_MS
    }
}

impl Subscriber {
    /// A new subscriber waiting for confirmation; `now` in unix seconds.
    pub fn new(email: &str, schedule: Schedule, categories: Vec<String>, now: i64) -> Subscriber {
        Subscriber {
            email: email.to_owned(),
            schedule,
            categories,
            state: SubState::Pending,
            created: now,
            updated: now,
            confirmed: None,
            confirm_sent: None,
            digest_until: None,
            bounce: None,
            soft_bounces: None,
            tokens_after: None,
        }
    }

    pub fn follows(&self, category: &str) -> bool {
        self.categories.is_empty() || self.categories.iter().any(|c| c == category)
    }
}

/// `text` without case, Vietnamese diacritics or extra spaces: how a category typed on a
/// keyboard without Vietnamese input is matched (`THONG BAO` finds `THÔNG BÁO`).
pub fn fold(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let bare: String = text
        .nfd()
        .filter(|c| !('\u{300}'..='\u{36f}').contains(c))
        .map(|c| match c {
            'đ' | 'Đ' => 'd',
            c => c,
        })
        .collect();
    bare.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The categories one may follow, shared by the engine (which keeps them current) with the
/// routes and the admin socket: `None` until the engine has read the store once (the first
/// moments of a start, when the last run's pages are already served).
pub type KnownCategories = std::sync::Arc<std::sync::RwLock<Option<Vec<String>>>>;

/// The categories of `wanted` in their canonical spelling from `known` (exact, else equal
/// once folded), sorted and without duplicates; `Err` with those that match nothing.
pub fn canonical_categories(
    wanted: &[String],
    known: &[String],
) -> Result<Vec<String>, Vec<String>> {
    let mut found = Vec::new();
    let mut unknown = Vec::new();
    for w in wanted {
        let w = w.trim();
        if w.is_empty() {
            continue;
        }
        let exact = known.iter().find(|k| k.as_str() == w);
        let folded = || {
            let f = fold(w);
            known.iter().find(|k| fold(k) == f)
        };
        match exact.or_else(folded) {
            Some(k) => found.push(k.clone()),
            None => unknown.push(w.to_owned()),
        }
    }
    if !unknown.is_empty() {
        return Err(unknown);
    }
    found.sort();
    found.dedup();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ["THÔNG BÁO", "TIN TỨC - SỰ KIỆN TIÊU BIỂU", "ĐẠI BIỂU HĐND"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn categories_match_without_case_or_diacritics() {
        let got = canonical_categories(
            &[
                "THONG BAO".into(),
                "thông báo".into(),
                "dai bieu hdnd".into(),
            ],
            &known(),
        );
        assert_eq!(got.unwrap(), ["THÔNG BÁO", "ĐẠI BIỂU HĐND"]);
        // Typed in decomposed Unicode, as some systems do.
        let nfd = "THO\u{302}NG BA\u{301}O".to_string();
        assert_eq!(
            canonical_categories(&[nfd], &known()).unwrap(),
            ["THÔNG BÁO"]
        );
    }

    #[test]
    fn unknown_categories_are_named() {
        let got = canonical_categories(&["KHONG CO".into(), "THONG BAO".into()], &known());
        assert_eq!(got.unwrap_err(), ["KHONG CO"]);
    }

    #[test]
    fn five_soft_bounces_over_three_days_bounce() {
        let mut sub = Subscriber::new("a@x.vn", Schedule::Immediate, vec![], 0);
        for i in 0..4 {
            assert!(!sub.soft_bounce("full", i * SOFT_BOUNCE_SPAN_MS, false));
        }
        assert!(sub.soft_bounce("full", 4 * SOFT_BOUNCE_SPAN_MS, false));
        let mut quick = Subscriber::new("b@x.vn", Schedule::Immediate, vec![], 0);
        for i in 0..10 {
            assert!(
                !quick.soft_bounce("full", i * 1000, false),
                "ten in a few seconds"
            );
        }
    }

    #[test]
    fn a_soft_bounce_long_after_the_last_starts_a_new_run() {
        let mut sub = Subscriber::new("a@x.vn", Schedule::Immediate, vec![], 0);
        let week = 7 * 24 * 3600 * 1000;
        // Four reports a week apart, then a pause of more than a month: a new run.
        for i in 0..4 {
            assert!(!sub.soft_bounce("full", i * week, true));
        }
        let later = 3 * week + SOFT_BOUNCE_GAP_MS;
        assert!(!sub.soft_bounce("full", later, true));
        let run = sub.soft_bounces.clone().unwrap();
        assert_eq!((run.count, run.since_ms, run.reported), (1, later, true));
        // Weekly reports from then on: bounced at the fifth.
        for i in 1..4 {
            assert!(!sub.soft_bounce("full", later + i * week, true));
        }
        assert!(sub.soft_bounce("full", later + 4 * week, true));
    }
}

//! The set of articles of a store, newest first, indexed by id and category.
//!
//! Only what feeds, pages and lists need is kept per article ([`Entry`]); bodies are read
//! again from the store when a page or a feed item needs them, so a store of 100,000 articles
//! fits in little memory.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, FixedOffset};

use crate::article::{Article, When};

/// What the library keeps of one article.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: Arc<str>,
    /// Shared by the entries of one category (see [`shared`]).
    pub category: Arc<str>,
    pub title: String,
    pub published: DateTime<FixedOffset>,
    /// Last change: the file's modification time, never before `published`.
    pub updated: DateTime<FixedOffset>,
    /// Shared by the entries of one signature.
    pub author: Option<Arc<str>>,
    /// File path relative to the store.
    pub file: String,
    /// Size and modification time of the file when it was read, to skip unchanged files
    /// on a rescan.
    pub stamp: Stamp,
    /// The event it announces, for the calendars.
    pub event: Option<When>,
    pub place: Option<String>,
    /// The reason of its correction, if it was corrected.
    pub correction: Option<String>,
    /// What the site's lists show of the article, as one number: a list page compares the
    /// numbers of its articles to know whether it changed. Set by [`Entry::new`] and
    /// [`Entry::with_sig`].
    pub sig: u64,
}

/// A file's size and modification time in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub len: u64,
    pub mtime_ns: i64,
}

impl Entry {
    /// The entry for a parsed article; `modified` is the file's modification time.
    pub fn new(
        article: &Article,
        file: String,
        stamp: Stamp,
        modified: DateTime<FixedOffset>,
    ) -> Self {
        let updated = if modified > article.published {
            modified.with_timezone(article.published.offset())
        } else {
            article.published
        };
        Entry {
            id: article.id.as_str().into(),
            category: shared(&article.category),
            title: article.title.clone(),
            published: article.published,
            updated,
            author: article.author.as_deref().map(shared),
            file,
            stamp,
            event: article.event,
            place: article.place.clone(),
            correction: article.correction.clone(),
            sig: 0,
        }
        .with_sig()
    }

    /// A plain article's entry for tests: titled with its id in capitals, no event, a
    /// zero fingerprint.
    #[cfg(test)]
    pub(crate) fn sample(id: &str, category: &str, published: DateTime<FixedOffset>) -> Entry {
        Entry {
            id: id.into(),
            category: category.into(),
            title: id.to_uppercase(),
            published,
            updated: published,
            author: None,
            file: format!("{id}.txt"),
            stamp: Stamp::default(),
            event: None,
            place: None,
            correction: None,
            sig: 0,
        }
    }

    /// The entry with its [`Entry::sig`] computed from what lists show: id, title,
    /// category, author, dates, whether it is an event.
    pub fn with_sig(mut self) -> Self {
        let mut h = Fnv::default();
        for text in [&*self.id, self.title.as_str(), &*self.category] {
            h.bytes(text.as_bytes());
            h.bytes(&[0xff]);
        }
        h.bytes(self.author.as_deref().unwrap_or("\u{0}").as_bytes());
        h.number(self.published.timestamp() as u64);
        h.number(self.published.offset().local_minus_utc() as u64);
        h.number(self.updated.timestamp() as u64);
        h.number(u64::from(self.event.is_some()));
        self.sig = h.0;
        self
    }

    /// Whether the article is published at `now` (not scheduled for later).
    pub fn is_visible(&self, now: DateTime<FixedOffset>) -> bool {
        self.published <= now
    }
}

/// One shared copy of a text that many entries repeat (a category, a signature): a store
/// of 100,000 articles has a handful of each. The texts seen stay for the process's life;
/// there are as many as the store has distinct ones.
pub fn shared(text: &str) -> Arc<str> {
    static SEEN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<Arc<str>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut seen = SEEN.lock().expect("shared texts");
    if let Some(t) = seen.get(text) {
        return t.clone();
    }
    let t: Arc<str> = Arc::from(text);
    seen.insert(t.clone());
    t
}

/// FNV-1a: a fast, stable fingerprint (the standard hasher's SipHash guards hash tables
/// against chosen keys, which fingerprints of our own content do not need).
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Mixes in a number whole (a multiply per number, not per byte).
    pub fn number(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x0100_0000_01b3).rotate_left(23);
    }
}

/// Sort key: newest first, ties by id.
type Key = (Reverse<i64>, Arc<str>);

fn key_of(entry: &Entry) -> Key {
    (Reverse(entry.published.timestamp()), entry.id.clone())
}

/// The first key of the articles published at `now` or before (and the end of those after).
fn key_at(now: DateTime<FixedOffset>) -> Key {
    (Reverse(now.timestamp()), Arc::default())
}

/// Every article of the store.
#[derive(Debug, Default, Clone)]
pub struct Library {
    ordered: BTreeMap<Key, Arc<Entry>>,
    by_id: HashMap<Arc<str>, Arc<Entry>>,
    by_category: HashMap<Arc<str>, BTreeSet<Key>>,
    /// Articles that announce an event, for the calendars.
    events: BTreeSet<Key>,
}

/// What one change did to the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(Arc<Entry>),
    Updated { old: Arc<Entry>, new: Arc<Entry> },
    Removed(Arc<Entry>),
}

impl Library {
    pub fn from_entries(entries: impl IntoIterator<Item = impl Into<Arc<Entry>>>) -> Self {
        let mut library = Library::default();
        for entry in entries {
            library.upsert(entry);
        }
        library
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Entry>> {
        self.by_id.get(id)
    }

    /// Every entry, newest first (ties by id), scheduled ones included.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.ordered.values()
    }

    /// Published entries at `now`, newest first.
    pub fn visible(&self, now: DateTime<FixedOffset>) -> impl Iterator<Item = &Arc<Entry>> {
        let start = key_at(now);
        self.ordered.range(start..).map(|(_, e)| e)
    }

    /// Published entries of one of `categories` (every category when empty), newest first.
    pub fn visible_in(
        &self,
        categories: &[String],
        now: DateTime<FixedOffset>,
        limit: usize,
    ) -> Vec<Arc<Entry>> {
        if categories.is_empty() {
            return self.visible(now).take(limit).cloned().collect();
        }
        let start = key_at(now);
        let mut keys: Vec<&Key> = Vec::new();
        for category in categories {
            if let Some(set) = self.by_category.get(category.as_str()) {
                keys.extend(set.range(start.clone()..).take(limit));
            }
        }
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .take(limit)
            .filter_map(|k| self.ordered.get(k).cloned())
            .collect()
    }

    /// Published events of one of `categories` (every category when empty), newest article
    /// first.
    pub fn events_in(&self, categories: &[String], now: DateTime<FixedOffset>) -> Vec<Arc<Entry>> {
        let start = key_at(now);
        self.events
            .range(start..)
            .filter_map(|k| self.ordered.get(k))
            .filter(|e| categories.is_empty() || categories.iter().any(|c| **c == *e.category))
            .cloned()
            .collect()
    }

    /// Whether any published article is an event.
    pub fn has_events(&self, now: DateTime<FixedOffset>) -> bool {
        let start = key_at(now);
        self.events.range(start..).next().is_some()
    }

    /// Whether some article is of `category`.
    pub fn has_category(&self, category: &str) -> bool {
        self.by_category
            .get(category)
            .is_some_and(|set| !set.is_empty())
    }

    /// Every category that has at least one article, sorted.
    pub fn categories(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .by_category
            .iter()
            .filter(|(_, set)| !set.is_empty())
            .map(|(c, _)| &**c)
            .collect();
        v.sort_unstable();
        v
    }

    /// How many articles are scheduled after `now` (walks only those).
    pub fn scheduled(&self, now: DateTime<FixedOffset>) -> usize {
        let end = key_at(now);
        self.ordered.range(..end).count()
    }

    /// The earliest publication time after `now`, when an article is scheduled.
    pub fn next_due(&self, now: DateTime<FixedOffset>) -> Option<DateTime<FixedOffset>> {
        let end = key_at(now);
        self.ordered
            .range(..end)
            .next_back()
            .map(|(_, e)| e.published)
            .filter(|t| *t > now)
    }

    /// Adds or replaces an entry; `None` when nothing changed.
    pub fn upsert(&mut self, entry: impl Into<Arc<Entry>>) -> Option<Change> {
        let new = entry.into();
        if self.by_id.get(&*new.id).is_some_and(|old| **old == *new) {
            return None;
        }
        // Removed first: `insert` would keep the old key, the old entry's copy of the id.
        let old = self.by_id.remove(&*new.id);
        self.by_id.insert(new.id.clone(), new.clone());
        if let Some(old) = &old {
            self.unindex(old);
        }
        let key = key_of(&new);
        self.by_category
            .entry(new.category.clone())
            .or_default()
            .insert(key.clone());
        if new.event.is_some() {
            self.events.insert(key.clone());
        }
        self.ordered.insert(key, new.clone());
        Some(match old {
            Some(old) => Change::Updated { old, new },
            None => Change::Added(new),
        })
    }

    /// Removes the article `id`.
    pub fn remove(&mut self, id: &str) -> Option<Change> {
        let old = self.by_id.remove(id)?;
        self.unindex(&old);
        Some(Change::Removed(old))
    }

    fn unindex(&mut self, entry: &Entry) {
        let key = key_of(entry);
        self.ordered.remove(&key);
        self.events.remove(&key);
        if let Some(set) = self.by_category.get_mut(&entry.category) {
            set.remove(&key);
            if set.is_empty() {
                self.by_category.remove(&entry.category);
            }
        }
    }

    /// Whether any article's file lies under `prefix` (a relative folder, `""` for all).
    pub fn has_under(&self, prefix: &str) -> bool {
        self.by_id.values().any(|e| {
            prefix.is_empty()
                || e.file
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, category: &str, when: &str) -> Entry {
        Entry::sample(id, category, DateTime::parse_from_rfc3339(when).unwrap())
    }

    fn now() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2021-01-01T00:00:00+07:00").unwrap()
    }

    fn ids(entries: &[Arc<Entry>]) -> Vec<&str> {
        entries.iter().map(|e| e.id.as_ref()).collect()
    }

    #[test]
    fn newest_first_ties_by_id() {
        let lib = Library::from_entries([
            entry("b", "A", "2020-01-02T00:00:00+07:00"),
            entry("a", "A", "2020-01-02T00:00:00+07:00"),
            entry("c", "B", "2020-01-03T00:00:00+07:00"),
            entry("d", "B", "2020-01-01T00:00:00+07:00"),
        ]);
        let all: Vec<_> = lib.visible(now()).cloned().collect();
        assert_eq!(ids(&all), ["c", "a", "b", "d"]);
        assert_eq!(ids(&lib.visible_in(&["B".into()], now(), 10)), ["c", "d"]);
        assert_eq!(
            ids(&lib.visible_in(&["A".into(), "B".into()], now(), 3)),
            ["c", "a", "b"]
        );
        assert_eq!(lib.categories(), ["A", "B"]);
    }

    #[test]
    fn events_are_indexed_and_follow_changes() {
        let when = When::AllDay {
            first: chrono::NaiveDate::from_ymd_opt(2020, 3, 1).unwrap(),
            last: chrono::NaiveDate::from_ymd_opt(2020, 3, 1).unwrap(),
        };
        let mut e = entry("hop", "A", "2020-01-02T00:00:00+07:00");
        e.event = Some(when);
        let mut lib =
            Library::from_entries([e.clone(), entry("tin", "A", "2020-01-03T00:00:00+07:00")]);
        assert_eq!(ids(&lib.events_in(&[], now())), ["hop"]);
        assert!(lib.events_in(&["B".into()], now()).is_empty());
        e.event = None;
        lib.upsert(e);
        assert!(lib.events_in(&[], now()).is_empty());
    }

    #[test]
    fn future_entries_are_held_back() {
        let mut lib = Library::from_entries([entry("old", "A", "2020-01-01T00:00:00+07:00")]);
        lib.upsert(entry("soon", "A", "2021-01-01T00:00:30+07:00"));
        lib.upsert(entry("later", "A", "2022-01-01T00:00:00+07:00"));
        assert_eq!(ids(&lib.visible_in(&[], now(), 10)), ["old"]);
        assert_eq!(
            lib.next_due(now()).unwrap().to_rfc3339(),
            "2021-01-01T00:00:30+07:00"
        );
        assert_eq!(lib.len(), 3);
        assert_eq!(lib.scheduled(now()), 2);
    }

    #[test]
    fn entries_of_one_category_and_signature_share_the_text() {
        let published = DateTime::parse_from_rfc3339("2024-03-01T08:00:00+07:00").unwrap();
        let article = |id: &str| Article {
            id: id.into(),
            category: "KỲ HỌP HĐND".into(),
            title: id.into(),
            published,
            paragraphs: vec![],
            author: Some("THƯỜNG TRỰC HĐND".into()),
            event: None,
            place: None,
            correction: None,
        };
        let a = Entry::new(&article("a"), "a.txt".into(), Stamp::default(), published);
        let b = Entry::new(&article("b"), "b.txt".into(), Stamp::default(), published);
        assert_eq!(&*a.category, "KỲ HỌP HĐND");
        assert!(Arc::ptr_eq(&a.category, &b.category));
        assert!(Arc::ptr_eq(
            a.author.as_ref().unwrap(),
            b.author.as_ref().unwrap()
        ));
        assert!(!Arc::ptr_eq(&a.category, &shared("THÔNG BÁO")));
    }

    #[test]
    fn upsert_reports_changes() {
        let mut lib = Library::default();
        let e = entry("x", "A", "2020-01-01T00:00:00+07:00");
        assert!(matches!(lib.upsert(e.clone()), Some(Change::Added(_))));
        assert_eq!(lib.upsert(e.clone()), None);
        let mut moved = e.clone();
        moved.category = "B".into();
        assert!(matches!(lib.upsert(moved), Some(Change::Updated { .. })));
        assert_eq!(lib.categories(), ["B"]);
        assert!(matches!(lib.remove("x"), Some(Change::Removed(_))));
        assert!(lib.is_empty());
        assert!(lib.categories().is_empty());
    }
}

//! The site's navigation: a page per category, the list of every article in pages, the
//! archive by month and year, each article's place in its category (previous, next), and
//! each feed's RFC 5005 archive documents.
//!
//! Lists are cut into pages counted from the oldest article: page 1 holds the first twenty
//! ever published and keeps them, so an address that was shared or bookmarked still shows
//! what it showed, and a new article changes only the newest page and the front pages. Each
//! document has a fingerprint of what it shows; the daemon rewrites only the documents whose
//! fingerprint changed.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Datelike, FixedOffset};

use crate::feed::FeedDef;
use crate::library::{Entry, Fnv, Library};

/// Articles on a list page.
pub const PAGE_SIZE: usize = 20;
/// Items in one RFC 5005 archive document.
pub const ARCHIVE_SIZE: usize = 100;

/// The address form of a category: without diacritics, lowercase, words joined by `-`
/// (`THÔNG BÁO` → `thong-bao`, `KỲ HỌP HĐND` → `ky-hop-hdnd`).
pub fn slug(text: &str) -> String {
    let folded = crate::search::fold_text(text);
    let mut out = String::with_capacity(folded.len());
    for c in folded.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("chuyen-muc");
    }
    out
}

/// A document the navigation is made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Doc {
    /// `categories/{slug}.html`: the newest of a category.
    CategoryFront(String),
    /// `categories/{slug}/{n}.html`.
    CategoryPage(String, usize),
    /// `pages/{n}.html`: every article.
    AllPage(usize),
    /// `archive/{YYYY}/{MM}.html`.
    Month(i32, u32),
    /// `archive/index.html`: years, months and categories.
    Years,
    /// `feeds/{name}/archive/{n}.{atom|rss}`.
    FeedArchive { feed: String, n: usize, ext: Ext },
}

/// The formats an archive document comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ext {
    Atom,
    Rss,
}

impl Ext {
    pub fn as_str(self) -> &'static str {
        match self {
            Ext::Atom => "atom",
            Ext::Rss => "rss",
        }
    }
}

impl Doc {
    /// Its path under `output.dir`.
    pub fn path(&self, model: &Model<'_>) -> String {
        match self {
            Doc::CategoryFront(c) => format!("categories/{}.html", model.slug_of(c)),
            Doc::CategoryPage(c, n) => format!("categories/{}/{n}.html", model.slug_of(c)),
            Doc::AllPage(n) => format!("pages/{n}.html"),
            Doc::Month(y, m) => format!("archive/{y:04}/{m:02}.html"),
            Doc::Years => "archive/index.html".into(),
            Doc::FeedArchive { feed, n, ext } => {
                format!("feeds/{feed}/archive/{n}.{}", ext.as_str())
            }
        }
    }
}

/// Articles in a list, oldest first.
type List<'l> = Vec<&'l Arc<Entry>>;

/// The published articles of a library arranged the ways the site shows them.
pub struct Model<'l> {
    pub now: DateTime<FixedOffset>,
    /// Oldest first.
    pub all: Vec<&'l Arc<Entry>>,
    /// By category, oldest first.
    pub by_category: BTreeMap<&'l str, Vec<&'l Arc<Entry>>>,
    /// By (year, month) of publication, oldest first.
    pub months: BTreeMap<(i32, u32), Vec<&'l Arc<Entry>>>,
    slugs: HashMap<&'l str, String>,
    /// The feeds, whose lists [`Model::of_feed`] gives and whose archives are documents.
    feeds: &'l [FeedDef],
    /// The articles of each feed that follows several categories, by feed name.
    merged: HashMap<String, List<'l>>,
}

impl<'l> Model<'l> {
    pub fn new(
        library: &'l Library,
        now: DateTime<FixedOffset>,
        feeds: &'l [FeedDef],
    ) -> Model<'l> {
        let mut all: Vec<&Arc<Entry>> = library.visible(now).collect();
        all.reverse();
        // A store has a handful of categories and a few hundred months: a short list
        // searched in place beats a tree lookup (string comparisons) per article.
        let mut categories: Vec<(&str, List<'_>)> = Vec::new();
        let mut month_list: Vec<((i32, u32), List<'_>)> = Vec::new();
        for e in &all {
            let c = &*e.category;
            match categories
                .iter_mut()
                .find(|(k, _)| k.len() == c.len() && *k == c)
            {
                Some((_, list)) => list.push(e),
                None => categories.push((c, vec![e])),
            }
            let date = e.published.date_naive();
            let key = (date.year(), date.month());
            // Oldest first: an article's month is its predecessor's or a later one, mostly.
            match month_list.iter_mut().rev().find(|(k, _)| *k == key) {
                Some((_, list)) => list.push(e),
                None => month_list.push((key, vec![e])),
            }
        }
        let by_category: BTreeMap<&str, Vec<&Arc<Entry>>> = categories.into_iter().collect();
        let months: BTreeMap<(i32, u32), Vec<&Arc<Entry>>> = month_list.into_iter().collect();
        // Two categories that read the same without diacritics get distinct addresses.
        let mut slugs = HashMap::new();
        let mut taken: HashMap<String, usize> = HashMap::new();
        for c in by_category.keys() {
            let base = slug(c);
            let n = taken.entry(base.clone()).or_insert(0);
            *n += 1;
            let s = if *n == 1 { base } else { format!("{base}-{n}") };
            slugs.insert(*c, s);
        }
        let merged = feeds
            .iter()
            .filter(|def| def.categories.len() > 1)
            .map(|def| {
                let mut list: List<'_> = def
                    .categories
                    .iter()
                    .filter_map(|c| by_category.get(c.as_str()))
                    .flatten()
                    .copied()
                    .collect();
                list.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
                list.dedup_by(|a, b| a.id == b.id);
                (def.name.clone(), list)
            })
            .collect();
        Model {
            now,
            all,
            by_category,
            months,
            slugs,
            feeds,
            merged,
        }
    }

    /// The address form of `category` (computed from its spelling when no article has it).
    pub fn slug_of(&self, category: &str) -> String {
        self.slugs
            .get(category)
            .cloned()
            .unwrap_or_else(|| slug(category))
    }

    /// The category whose address form is `slug`.
    pub fn category_of_slug(&self, slug: &str) -> Option<&'l str> {
        self.slugs
            .iter()
            .find(|(_, s)| s.as_str() == slug)
            .map(|(c, _)| *c)
    }

    /// The articles before and after `entry` in its category (older, newer), whether
    /// `entry` is still there or not (a removed article's former neighbours).
    pub fn neighbours(&self, entry: &Entry) -> (Option<&'l Arc<Entry>>, Option<&'l Arc<Entry>>) {
        let Some(list) = self.by_category.get(&*entry.category) else {
            return (None, None);
        };
        let key = order_key(entry);
        let at = list.partition_point(|e| order_key(e) < key);
        let newer_at = if list.get(at).is_some_and(|e| e.id == entry.id) {
            at + 1
        } else {
            at
        };
        let older = at.checked_sub(1).and_then(|i| list.get(i)).copied();
        (older, list.get(newer_at).copied())
    }

    /// The visible articles of a feed, oldest first.
    pub fn of_feed(&self, def: &FeedDef) -> &[&'l Arc<Entry>] {
        match def.categories.as_slice() {
            [] => &self.all,
            [only] => self
                .by_category
                .get(only.as_str())
                .map_or(&[], Vec::as_slice),
            _ => self.merged.get(&def.name).map_or(&[], Vec::as_slice),
        }
    }

    /// Every document with the fingerprint of what it shows.
    pub fn docs(&self) -> Vec<(Doc, u64)> {
        let mut out = Vec::new();
        for (c, list) in &self.by_category {
            let pages = pages(list.len());
            let mut h = start("front");
            c.hash(&mut h);
            pages.hash(&mut h);
            sign(&mut h, newest(list, PAGE_SIZE));
            out.push((Doc::CategoryFront((*c).to_owned()), h.finish()));
            for n in 1..=pages {
                let mut h = start("page");
                c.hash(&mut h);
                (n < pages).hash(&mut h);
                sign(&mut h, chunk(list, n, PAGE_SIZE));
                out.push((Doc::CategoryPage((*c).to_owned(), n), h.finish()));
            }
        }
        let pages = pages(self.all.len());
        for n in 1..=pages {
            let mut h = start("all");
            (n < pages).hash(&mut h);
            sign(&mut h, chunk(&self.all, n, PAGE_SIZE));
            out.push((Doc::AllPage(n), h.finish()));
        }
        let keys: Vec<&(i32, u32)> = self.months.keys().collect();
        for (i, (key, list)) in self.months.iter().enumerate() {
            let mut h = start("month");
            key.hash(&mut h);
            i.checked_sub(1).map(|p| keys[p]).hash(&mut h);
            keys.get(i + 1).hash(&mut h);
            sign(&mut h, list);
            out.push((Doc::Month(key.0, key.1), h.finish()));
        }
        let mut h = start("years");
        for (key, list) in &self.months {
            (key, list.len()).hash(&mut h);
        }
        for (c, list) in &self.by_category {
            (c, list.len(), self.slug_of(c)).hash(&mut h);
        }
        out.push((Doc::Years, h.finish()));
        for def in self.feeds {
            let list = self.of_feed(def);
            let count = archives(list.len());
            for n in 1..=count {
                for ext in [Ext::Atom, Ext::Rss] {
                    let mut h = start("archive");
                    (&def.name, &def.title, &def.description, ext).hash(&mut h);
                    (n < count).hash(&mut h);
                    sign(&mut h, chunk(list, n, ARCHIVE_SIZE));
                    let doc = Doc::FeedArchive {
                        feed: def.name.clone(),
                        n,
                        ext,
                    };
                    out.push((doc, h.finish()));
                }
            }
        }
        out
    }
}

/// The library's order, oldest first: by time, ties by id descending.
fn order_key(e: &Entry) -> (i64, std::cmp::Reverse<&str>) {
    (e.published.timestamp(), std::cmp::Reverse(&*e.id))
}

/// How many list pages `len` articles make (at least one: an empty category has none to
/// show, but the site's list has its first page).
pub fn pages(len: usize) -> usize {
    len.div_ceil(PAGE_SIZE).max(1)
}

/// How many archive documents a feed of `len` articles has (none when empty).
pub fn archives(len: usize) -> usize {
    len.div_ceil(ARCHIVE_SIZE)
}

/// Page `n` (from 1) of an oldest-first list, oldest first.
pub fn chunk<T>(list: &[T], n: usize, size: usize) -> &[T] {
    let start = (n.saturating_sub(1) * size).min(list.len());
    let end = (n * size).min(list.len());
    &list[start..end]
}

/// The last `count` of an oldest-first list.
pub fn newest<T>(list: &[T], count: usize) -> &[T] {
    &list[list.len().saturating_sub(count)..]
}

/// A fingerprint: a cheap mix of numbers (each article brings its own [`Entry::sig`]).
struct Print(Fnv);

impl Hasher for Print {
    fn finish(&self) -> u64 {
        self.0.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.bytes(bytes);
    }

    fn write_u64(&mut self, n: u64) {
        self.0.number(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.0.number(n as u64);
    }
}

fn start(kind: &str) -> Print {
    let mut h = Print(Fnv::default());
    kind.hash(&mut h);
    h
}

/// Adds what a list shows of each article to a fingerprint.
fn sign(h: &mut Print, list: &[&Arc<Entry>]) {
    h.0.number(list.len() as u64);
    for e in list {
        h.0.number(e.sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, category: &str, day: u32) -> Entry {
        let published =
            DateTime::parse_from_rfc3339(&format!("2024-01-{day:02}T08:00:00+07:00")).unwrap();
        Entry::sample(id, category, published).with_sig()
    }

    fn now() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2025-01-01T00:00:00+07:00").unwrap()
    }

    #[test]
    fn slugs_drop_diacritics_and_keep_categories_apart() {
        assert_eq!(slug("THÔNG BÁO"), "thong-bao");
        assert_eq!(slug("KỲ HỌP HĐND"), "ky-hop-hdnd");
        assert_eq!(
            slug("TIN TỨC - SỰ KIỆN TIÊU BIỂU"),
            "tin-tuc-su-kien-tieu-bieu"
        );
        assert_eq!(slug("  "), "chuyen-muc");
        let lib = Library::from_entries([entry("a", "Thông báo", 1), entry("b", "THÔNG BÁO", 2)]);
        let m = Model::new(&lib, now(), &[]);
        assert_ne!(m.slug_of("Thông báo"), m.slug_of("THÔNG BÁO"));
        assert_eq!(
            m.category_of_slug(&m.slug_of("Thông báo")),
            Some("Thông báo")
        );
    }

    #[test]
    fn pages_count_from_the_oldest_and_a_new_article_changes_only_the_newest() {
        let entries: Vec<Entry> = (1..=25)
            .map(|d| entry(&format!("a{d:02}"), "A", d))
            .collect();
        let lib = Library::from_entries(entries.clone());
        let m = Model::new(&lib, now(), &[]);
        assert_eq!(m.all.first().unwrap().id.as_ref(), "a01");
        let list = &m.by_category["A"];
        assert_eq!(chunk(list, 1, PAGE_SIZE).len(), 20);
        assert_eq!(chunk(list, 2, PAGE_SIZE).len(), 5);
        let (older, newer) = m.neighbours(&entries[4]);
        assert_eq!(
            (older.unwrap().id.as_ref(), newer.unwrap().id.as_ref()),
            ("a04", "a06")
        );
        let before: HashMap<Doc, u64> = m.docs().into_iter().collect();

        let mut lib2 = lib.clone();
        lib2.upsert(entry("a26", "A", 26));
        let m2 = Model::new(&lib2, now(), &[]);
        let after: HashMap<Doc, u64> = m2.docs().into_iter().collect();
        let mut changed: Vec<&Doc> = after
            .iter()
            .filter(|(d, p)| before.get(d) != Some(p))
            .map(|(d, _)| d)
            .collect();
        changed.sort();
        assert_eq!(
            changed,
            [
                &Doc::CategoryFront("A".into()),
                &Doc::CategoryPage("A".into(), 2),
                &Doc::AllPage(2),
                &Doc::Month(2024, 1),
                &Doc::Years,
            ]
        );
        // Its older neighbour gains a newer one; a removed article's neighbours are found
        // around where it was.
        let a26 = lib2.get("a26").unwrap();
        assert_eq!(m2.neighbours(a26).0.unwrap().id.as_ref(), "a25");
        assert_eq!(m.neighbours(a26).0.unwrap().id.as_ref(), "a25");
        assert!(m.neighbours(a26).1.is_none());
        let (o, n) = m.neighbours(&entries[9]);
        assert_eq!(
            (o.unwrap().id.as_ref(), n.unwrap().id.as_ref()),
            ("a09", "a11")
        );
    }

    #[test]
    fn feed_archives_hold_every_article_once() {
        let entries: Vec<Entry> = (0..250)
            .map(|i| {
                entry(
                    &format!("x{i:03}"),
                    if i % 2 == 0 { "A" } else { "B" },
                    1 + i % 28,
                )
            })
            .collect();
        let lib = Library::from_entries(entries);
        let def = FeedDef::parse("a", "title = \"A\"\ncategories = [\"A\"]\n").unwrap();
        let m = Model::new(&lib, now(), std::slice::from_ref(&def));
        let list = m.of_feed(&def);
        assert_eq!(list.len(), 125);
        assert!(list.windows(2).all(|w| w[0].published <= w[1].published));
        let docs = m.docs();
        let archived: Vec<_> = docs
            .iter()
            .filter(|(d, _)| matches!(d, Doc::FeedArchive { ext: Ext::Atom, .. }))
            .collect();
        assert_eq!(archived.len(), 2);
        let total: usize = (1..=archives(list.len()))
            .map(|n| chunk(list, n, ARCHIVE_SIZE).len())
            .sum();
        assert_eq!(total, 125);
    }
}

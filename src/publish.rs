//! Publishing: feeds, the index and article pages rendered from the library and written to
//! `output.dir`. Used by `bantin build` (everything once) and by the daemon (what a change
//! touches).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, FixedOffset};
use rayon::prelude::*;

use crate::article::{Article, ArticleError};
use crate::config::Config;
use crate::feed::{self, DefError, FeedDef, Item, SiteInfo};
use crate::library::{Entry, Library, Stamp};
use crate::nav::{Ext, Model};
use crate::output::{self, Written};
use crate::scan::{ArticleCache, Found, StoreReader};
use crate::site::{ArticleNav, INDEX_LATEST, NeighbourCtx, Pages, Templates};

/// The formats of every feed: (extension, media type): three for readers, its events'
/// calendar, and its page for people.
pub const FORMATS: [(&str, &str); 5] = [
    ("rss", "application/rss+xml; charset=utf-8"),
    ("atom", "application/atom+xml; charset=utf-8"),
    ("json", "application/feed+json; charset=utf-8"),
    ("ics", crate::calendar::MEDIA_TYPE),
    ("html", "text/html; charset=utf-8"),
];

/// A store of at most this many bytes is read once by a build: the bodies read for the
/// library are kept for the pages (a larger one is read again, page by page).
const KEEP_READ_BYTES: u64 = 64 << 20;

/// The calendar of every event: `calendar.ics` at the site's root.
pub const CALENDAR_FILE: &str = "calendar.ics";

/// Everything needed to render and write the site.
pub struct Publisher {
    pub site: SiteInfo,
    pub feeds: Vec<FeedDef>,
    pub templates: Arc<Templates>,
    pub reader: StoreReader,
    pub out: PathBuf,
    /// Seconds between full rescans of the store (daemon).
    pub rescan_secs: u64,
    /// Bodies of the articles currently in feeds, so a rebuild reads few files; shared with
    /// the mail side.
    pub articles: Arc<ArticleCache>,
    /// `feeds.websub_hub`.
    pub websub_hub: Option<String>,
}

/// One feed rendered in its formats.
#[derive(Debug, Clone)]
pub struct RenderedFeed {
    pub name: String,
    /// Bodies in the order of [`FORMATS`].
    pub bodies: [String; 5],
    /// The latest publication or edit among the items.
    pub last_modified: Option<DateTime<FixedOffset>>,
    /// The latest edit among the events of the calendar.
    pub calendar_modified: Option<DateTime<FixedOffset>>,
    /// Ids of the items.
    pub ids: Vec<String>,
}

/// The result of a full build: the library and what was published.
pub struct Built {
    pub library: Library,
    pub report: BuildReport,
    pub feeds: Vec<RenderedFeed>,
    /// What every page was rendered from.
    pub manifest: crate::manifest::Manifest,
}

/// What a build shows first, before the article pages.
pub struct Front<'a> {
    pub library: &'a Library,
    pub feeds: &'a [RenderedFeed],
    pub index: &'a str,
    /// Every event's calendar, and the time of its latest edit.
    pub calendar: &'a (String, Option<DateTime<FixedOffset>>),
    /// The 404 page, the OPML list, the script: (name, media type, body).
    pub fixed: &'a [(&'static str, &'static str, String)],
}

/// What a full build did.
#[derive(Debug, Default)]
pub struct BuildReport {
    pub articles: usize,
    pub published: usize,
    pub scheduled: usize,
    pub errors: Vec<ArticleError>,
    pub feeds: usize,
    pub pages_written: usize,
    pub pages_unchanged: usize,
    pub files_removed: usize,
    /// Problems writing output (not the articles' fault).
    pub write_errors: Vec<String>,
}

impl Publisher {
    /// Loads feed definitions and templates named by the configuration. Problems come back as
    /// `path:line: message` lines.
    pub fn from_config(config: &Config) -> Result<Publisher, Vec<String>> {
        let mut problems = Vec::new();
        let tz = config.timezone().map_err(|e| vec![e])?;
        let feeds = match load_feed_defs(&config.feeds.dir) {
            Ok((defs, errors)) => {
                problems.extend(errors.iter().map(ToString::to_string));
                defs
            }
            Err(e) => {
                problems.push(format!(
                    "{}: cannot read the feed definitions folder: {e}",
                    config.feeds.dir.display()
                ));
                Vec::new()
            }
        };
        let templates = match load_templates(&config.templates.dir) {
            Ok(t) => Some(t),
            Err(errors) => {
                problems.extend(errors.iter().map(ToString::to_string));
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut feeds = feeds;
        for def in &mut feeds {
            def.name_site(&config.site.title);
        }
        let mut site = SiteInfo::new(&config.site.title, config.base_url(), &config.site.language);
        site.address = config.site.address.clone().filter(|a| !a.trim().is_empty());
        site.contact = config.site.contact.clone().filter(|c| !c.trim().is_empty());
        let mut templates = templates.expect("no problems");
        templates.set_site(&site, &feeds);
        // Rendered once before they are taken: `{{ 1/0 }}` or an unknown filter parses,
        // then fails on every page.
        let problems = template_problems(&templates, &site);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Publisher {
            site,
            feeds,
            templates: Arc::new(templates),
            reader: StoreReader {
                root: config.store.dir.clone(),
                tz,
                max_bytes: config.store.max_bytes,
            },
            out: config.output.dir.clone(),
            rescan_secs: config.store.rescan_secs,
            articles: Arc::default(),
            websub_hub: config.feeds.websub_hub.clone(),
        })
    }

    pub fn pages(&self) -> Pages<'_> {
        Pages {
            site: &self.site,
            templates: &self.templates,
        }
    }

    /// Bodies of `entries`, from the cache or read again from the store. An article that can
    /// no longer be read is left out (its excerpt stands in).
    fn bodies_of(&self, entries: &[Arc<Entry>]) -> HashMap<Arc<str>, Arc<Article>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        for e in entries {
            match self.articles.get(&e.id, e.stamp) {
                Some(a) => {
                    out.insert(e.id.clone(), a);
                }
                None => missing.push(e.clone()),
            }
        }
        let read: Vec<(Stamp, Arc<Article>)> = missing
            .par_iter()
            .filter_map(|e| {
                self.reader
                    .read(&self.reader.found_of(e))
                    .ok()
                    .map(|a| (e.stamp, Arc::new(a)))
            })
            .collect();
        for (stamp, a) in read {
            out.insert(a.id.as_str().into(), a.clone());
            self.articles.insert(stamp, a);
        }
        out
    }

    /// Forgets a cached body (the file changed or went).
    pub fn forget(&self, id: &str) {
        self.articles.remove(id);
    }

    /// Keeps a freshly read body for the next feed render.
    pub fn remember(&self, stamp: Stamp, article: Arc<Article>) {
        self.articles.insert(stamp, article);
    }

    /// Renders one feed from the library as it is at `now` (`model`: the same library).
    pub fn render_feed(
        &self,
        def: &FeedDef,
        library: &Library,
        now: DateTime<FixedOffset>,
        model: &Model<'_>,
    ) -> RenderedFeed {
        let entries = library.visible_in(&def.categories, now, def.limit);
        let events = library.events_in(&def.categories, now);
        let bodies = self.bodies_of(&entries);
        let items: Vec<Item<'_>> = entries
            .iter()
            .map(|e| Item {
                entry: e,
                body: bodies.get(&*e.id).map(|a| &**a),
            })
            .collect();
        RenderedFeed {
            name: def.name.clone(),
            bodies: [
                feed::rss(
                    def,
                    &self.site,
                    &items,
                    &self.feed_links(model, def, Ext::Rss),
                ),
                feed::atom(
                    def,
                    &self.site,
                    &items,
                    &self.feed_links(model, def, Ext::Atom),
                ),
                feed::json(def, &self.site, &items, self.websub_hub.as_deref()),
                self.calendar(&def.title, &events),
                self.render_feed_page(model, def, &entries, !events.is_empty())
                    .unwrap_or_else(|e| {
                        tracing::error!("{e}");
                        String::new()
                    }),
            ],
            last_modified: feed::last_modified(&items),
            calendar_modified: events.iter().map(|e| e.updated).max(),
            ids: entries.iter().map(|e| e.id.to_string()).collect(),
        }
    }

    /// A calendar of `events` (each described by its link: reading every body would make a
    /// calendar cost O(events) reads at each change).
    pub fn calendar(&self, name: &str, events: &[Arc<Entry>]) -> String {
        let cal: Vec<crate::calendar::CalEvent<'_>> = events
            .iter()
            .map(|e| crate::calendar::CalEvent {
                entry: e,
                description: None,
            })
            .collect();
        crate::calendar::ics(&self.site, self.reader.tz, name, &cal)
    }

    /// The calendar of every published event, and the time of its latest edit.
    pub fn render_calendar(
        &self,
        library: &Library,
        now: DateTime<FixedOffset>,
    ) -> (String, Option<DateTime<FixedOffset>>) {
        let events = library.events_in(&[], now);
        let modified = events.iter().map(|e| e.updated).max();
        (self.calendar(&self.site.title, &events), modified)
    }

    pub fn write_calendar(&self, ics: &str) -> std::io::Result<()> {
        output::write_atomic(&self.out.join(CALENDAR_FILE), ics.as_bytes()).map(|_| ())
    }

    /// The calendar of one article's event.
    pub fn article_calendar(&self, entry: &Entry, article: &Article) -> Option<String> {
        entry.event?;
        let event = crate::calendar::CalEvent {
            entry,
            description: Some(article.excerpt()),
        };
        Some(crate::calendar::ics(
            &self.site,
            self.reader.tz,
            &article.title,
            &[event],
        ))
    }

    /// Renders the given feeds.
    pub fn render_feeds<'d>(
        &self,
        defs: impl IntoIterator<Item = &'d FeedDef>,
        library: &Library,
        now: DateTime<FixedOffset>,
        model: &Model<'_>,
    ) -> Vec<RenderedFeed> {
        // A feed of full texts takes milliseconds: the six of a council on every core.
        let defs: Vec<&FeedDef> = defs.into_iter().collect();
        defs.par_iter()
            .map(|def| self.render_feed(def, library, now, model))
            .collect()
    }

    /// Drops cached bodies that no feed lists any more.
    pub fn trim_cache(&self, listed: &HashSet<&str>) {
        self.articles.retain(listed);
    }

    /// The index page.
    pub fn render_index(
        &self,
        library: &Library,
        model: &Model<'_>,
    ) -> Result<String, crate::site::TemplateError> {
        let latest: Vec<Arc<Entry>> = library
            .visible(model.now)
            .take(INDEX_LATEST)
            .cloned()
            .collect();
        let bodies = self.bodies_of(&latest);
        let listed: Vec<crate::render::Listed> = latest
            .iter()
            .map(|e| {
                let excerpt = bodies.get(&*e.id).map(|a| a.excerpt()).unwrap_or_default();
                self.listed(model, e, Some(excerpt))
            })
            .collect();
        let events = library.has_events(model.now);
        let categories: Vec<(&str, String)> = library
            .categories()
            .into_iter()
            .map(|c| (c, self.category_url(model, c)))
            .collect();
        self.pages().index(
            &listed,
            &categories,
            &self.all_url(model),
            &self.older_url(model),
            events,
        )
    }

    /// What an article page links to: its category, its neighbours there.
    pub fn article_nav(&self, model: &Model<'_>, entry: &Entry) -> ArticleNav {
        let (older, newer) = model.neighbours(entry);
        let neighbour = |e: &Entry| NeighbourCtx {
            title: e.title.clone(),
            url: self.site.article_url(&e.id),
        };
        ArticleNav {
            category_url: self.category_url(model, &entry.category),
            older: older.map(|e| neighbour(e)),
            newer: newer.map(|e| neighbour(e)),
        }
    }

    pub fn feed_path(&self, name: &str, ext: &str) -> PathBuf {
        self.out.join("feeds").join(format!("{name}.{ext}"))
    }

    pub fn page_path(&self, id: &str) -> PathBuf {
        self.out.join("articles").join(format!("{id}.html"))
    }

    pub fn page_calendar_path(&self, id: &str) -> PathBuf {
        self.out.join("articles").join(format!("{id}.ics"))
    }

    /// Writes a rendered feed's three files.
    pub fn write_feed(&self, feed: &RenderedFeed) -> std::io::Result<()> {
        for ((ext, _), body) in FORMATS.iter().zip(&feed.bodies) {
            output::write_atomic(&self.feed_path(&feed.name, ext), body.as_bytes())?;
        }
        Ok(())
    }

    pub fn index_path(&self) -> PathBuf {
        self.out.join("index.html")
    }

    pub fn write_index(&self, html: &str) -> std::io::Result<()> {
        output::write_atomic(&self.index_path(), html.as_bytes()).map(|_| ())
    }

    /// Renders and writes one article's page with its navigation, and its event's calendar.
    pub fn write_page(
        &self,
        entry: &Entry,
        article: &Article,
        nav: &ArticleNav,
    ) -> Result<Written, String> {
        let html = self
            .pages()
            .article(article, entry.updated, nav)
            .map_err(|e| e.to_string())?;
        let path = self.page_path(&article.id);
        let written = output::write_atomic(&path, html.as_bytes())
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        let ics_path = self.page_calendar_path(&article.id);
        match self.article_calendar(entry, article) {
            Some(ics) => {
                output::write_atomic(&ics_path, ics.as_bytes())
                    .map_err(|e| format!("{}: cannot write: {e}", ics_path.display()))?;
            }
            None if ics_path.exists() => {
                output::remove(&self.out.join("articles"), &ics_path)
                    .map_err(|e| format!("{}: cannot remove: {e}", ics_path.display()))?;
            }
            None => {}
        }
        Ok(written)
    }

    /// Writes a page into a staging folder that no one serves yet (a first build): no
    /// temporary file and rename per page.
    fn write_staged_page(
        &self,
        staging: &Path,
        entry: &Entry,
        article: &Article,
        nav: &ArticleNav,
    ) -> Result<Written, String> {
        let html = self
            .pages()
            .article(article, entry.updated, nav)
            .map_err(|e| e.to_string())?;
        let path = staging.join(format!("{}.html", article.id));
        output::write_new(&path, html.as_bytes())
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        if let Some(ics) = self.article_calendar(entry, article) {
            let path = staging.join(format!("{}.ics", article.id));
            output::write_new(&path, ics.as_bytes())
                .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        }
        Ok(Written::Replaced)
    }

    /// Removes the page of an article that is gone or no longer published, and its calendar.
    pub fn remove_page(&self, id: &str) -> std::io::Result<()> {
        let ics = self.page_calendar_path(id);
        if ics.exists() {
            output::remove(&self.out.join("articles"), &ics)?;
        }
        output::remove(&self.out.join("articles"), &self.page_path(id))
    }

    /// What every page depends on besides its article: this version of bantin, the
    /// templates, the site's settings, the feed definitions (pages list the feeds).
    pub fn generation(&self) -> u64 {
        let mut h = crate::library::Fnv::default();
        h.bytes(env!("CARGO_PKG_VERSION").as_bytes());
        h.number(self.templates.fingerprint);
        let site = &self.site;
        for text in [
            &site.title,
            &site.base_url,
            &site.language,
            &site.tag_prefix,
        ] {
            h.bytes(text.as_bytes());
            h.bytes(&[0xff]);
        }
        for text in [&site.address, &site.contact] {
            h.bytes(text.as_deref().unwrap_or("\u{0}").as_bytes());
            h.bytes(&[0xff]);
        }
        for def in &self.feeds {
            for text in [&def.name, &def.title, &def.description] {
                h.bytes(text.as_bytes());
                h.bytes(&[0xff]);
            }
            for c in &def.categories {
                h.bytes(c.as_bytes());
                h.bytes(&[0xfe]);
            }
            h.number(def.limit as u64);
        }
        h.number(crate::nav::PAGE_SIZE as u64);
        h.number(crate::nav::ARCHIVE_SIZE as u64);
        h.0
    }

    /// Reads every file of `files` (a walk of the store) and publishes everything once:
    /// pages, feeds, the navigation, the index, and removes what is stale. `progress` counts
    /// files read.
    /// `front` is told as soon as the feeds, the home page, the calendar and the fixed files
    /// are written: what readers come for first (the daemon serves them while the article
    /// pages and lists are written).
    pub fn build_from(
        &self,
        files: Vec<Found>,
        now: DateTime<FixedOffset>,
        progress: &AtomicUsize,
        front: impl FnOnce(&Front<'_>),
    ) -> std::io::Result<Built> {
        // First every article is read for the library: a page links to its neighbours,
        // known only once all are read.
        let started = std::time::Instant::now();
        // Into an empty folder nothing can be stale: no walk of the output to prune it.
        let fresh = std::fs::read_dir(&self.out).map_or(true, |mut d| d.next().is_none());
        // A store that fits in memory is read once: its bodies are kept for the pages.
        let total: u64 = files.iter().map(|f| f.stamp.len).sum();
        let kept: Option<Mutex<HashMap<String, Arc<Article>>>> =
            (total <= KEEP_READ_BYTES).then(|| Mutex::new(HashMap::with_capacity(files.len())));
        let (entries, errors) = self.reader.read_all(&files, |found, article| {
            progress.fetch_add(1, Ordering::Relaxed);
            if let Some(kept) = &kept {
                kept.lock()
                    .expect("kept bodies")
                    .insert(found.id.clone(), Arc::new(article));
            }
        });
        // What the walk found is not needed again; a large store's list is tens of MB.
        drop(files);
        let kept = kept.map(|k| k.into_inner().expect("kept bodies"));
        progress.fetch_add(errors.len(), Ordering::Relaxed);
        let library = Library::from_entries(entries);
        let model = Model::new(&library, now, &self.feeds);

        // The front first: feeds, the home page, the calendar, the fixed files.
        let rendered = self.render_feeds(&self.feeds, &library, now, &model);
        for feed in &rendered {
            self.write_feed(feed)?;
        }
        let listed: HashSet<&str> = rendered
            .iter()
            .flat_map(|f| f.ids.iter().map(String::as_str))
            .collect();
        self.trim_cache(&listed);
        let mut front_errors = Vec::new();
        let (fixed, problem) = self.render_fixed();
        front_errors.extend(problem);
        if let Err(e) = self.write_fixed(&fixed) {
            front_errors.push(e);
        }
        let index = self
            .render_index(&library, &model)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.write_index(&index)?;
        let calendar = self.render_calendar(&library, now);
        self.write_calendar(&calendar.0)?;
        front(&Front {
            library: &library,
            feeds: &rendered,
            index: &index,
            calendar: &calendar,
            fixed: &fixed,
        });
        let feeds_done = started.elapsed();

        let written = AtomicUsize::new(0);
        let unchanged = AtomicUsize::new(0);
        let write_errors = Mutex::new(Vec::new());
        // What was rendered before, from what: an unchanged page is neither read nor
        // rendered. The file goes until the new one is written (a build stopped halfway
        // leaves none, and the next compares every page).
        let generation = self.generation();
        let previous = crate::manifest::Manifest::load(&self.out, generation);
        crate::manifest::Manifest::remove(&self.out);
        let prints: Mutex<HashMap<Arc<str>, u64>> = Mutex::new(HashMap::new());
        // A first build fills a staging folder and moves it into place at the end: the pages
        // appear all at once, and each needs no rename of its own.
        let pages_dir = self.out.join("articles");
        let staging = (!pages_dir.exists()).then(|| self.out.join(".articles.new"));
        if let Some(staging) = &staging
            && staging.exists()
        {
            std::fs::remove_dir_all(staging)?;
        }
        model.all.par_iter().for_each(|entry| {
            let nav = self.article_nav(&model, entry);
            let print = crate::manifest::page_print(generation, entry, &nav);
            if staging.is_none()
                && previous.pages.get(&entry.id) == Some(&print)
                && self.page_path(&entry.id).exists()
                && (entry.event.is_none() || self.page_calendar_path(&entry.id).exists())
            {
                unchanged.fetch_add(1, Ordering::Relaxed);
                prints
                    .lock()
                    .expect("prints")
                    .insert(entry.id.clone(), print);
                return;
            }
            let read = match kept.as_ref().and_then(|k| k.get(&*entry.id)) {
                Some(a) => Ok(a.clone()),
                None => self.reader.body(&self.articles, entry),
            };
            let article = match read {
                Ok(a) => a,
                Err(e) => {
                    write_errors.lock().expect("errors").push(e.to_string());
                    return;
                }
            };
            let result = match &staging {
                Some(staging) => self.write_staged_page(staging, entry, &article, &nav),
                None => self.write_page(entry, &article, &nav),
            };
            if result.is_ok() {
                prints
                    .lock()
                    .expect("prints")
                    .insert(entry.id.clone(), print);
            }
            match result {
                Ok(Written::Replaced) => written.fetch_add(1, Ordering::Relaxed),
                Ok(Written::Unchanged) => unchanged.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    write_errors.lock().expect("errors").push(e);
                    0
                }
            };
        });
        if let Some(staging) = &staging {
            output::create_public_dir(staging)?;
            std::fs::rename(staging, &pages_dir)?;
        }
        let pages_done = started.elapsed();
        let mut report = BuildReport {
            articles: library.len(),
            published: library.len() - library.scheduled(now),
            errors,
            feeds: self.feeds.len(),
            pages_written: written.into_inner(),
            pages_unchanged: unchanged.into_inner(),
            write_errors: write_errors.into_inner().expect("errors"),
            ..Default::default()
        };
        report.write_errors.extend(front_errors);
        report.scheduled = report.articles - report.published;

        let docs = model.docs();
        let doc_prints: Mutex<HashMap<String, u64>> = Mutex::new(HashMap::new());
        let problems: Vec<String> = docs
            .par_iter()
            .flat_map_iter(|(doc, print)| {
                let path = doc.path(&model);
                if previous.docs.get(&path) == Some(print) && self.out.join(&path).exists() {
                    doc_prints.lock().expect("prints").insert(path, *print);
                    return Vec::new();
                }
                let problems = self.write_docs(&model, [doc]);
                if problems.is_empty() {
                    doc_prints.lock().expect("prints").insert(path, *print);
                }
                problems
            })
            .collect();
        report.write_errors.extend(problems);
        let docs_done = started.elapsed();
        // Every body read is freed one by one: not on the way to the lists.
        std::thread::spawn(move || drop(kept));
        if !fresh {
            report.files_removed = self.prune(&library, now)? + self.prune_docs(&model, &docs)?;
        }
        tracing::debug!(
            "built: feeds and the home page by {feeds_done:.2?}, articles read and their pages \
             written by {pages_done:.2?}, {} lists and archive documents by {docs_done:.2?}, \
             stale files removed by {:.2?}",
            docs.len(),
            started.elapsed()
        );
        let manifest = crate::manifest::Manifest {
            generation,
            pages: prints.into_inner().expect("prints"),
            docs: doc_prints.into_inner().expect("prints"),
        };
        if let Err(e) = manifest.save(&self.out) {
            report.write_errors.push(format!(
                "{}: cannot write: {e}",
                crate::manifest::Manifest::path(&self.out).display()
            ));
        }
        drop(model);
        Ok(Built {
            library,
            report,
            feeds: rendered,
            manifest,
        })
    }

    /// Removes pages of articles that are gone or not yet published, and feeds no longer
    /// defined.
    pub fn prune(&self, library: &Library, now: DateTime<FixedOffset>) -> std::io::Result<usize> {
        let mut removed = 0;
        let pages = self.out.join("articles");
        for rel in output::files_under(&pages, ".html") {
            let rel_str = crate::scan::rel_string(&rel);
            let id = rel_str.strip_suffix(".html").unwrap_or(&rel_str);
            let keep = library.get(id).is_some_and(|e| e.is_visible(now));
            if !keep {
                output::remove(&pages, &pages.join(&rel))?;
                removed += 1;
            }
        }
        for rel in output::files_under(&pages, ".ics") {
            let rel_str = crate::scan::rel_string(&rel);
            let id = rel_str.strip_suffix(".ics").unwrap_or(&rel_str);
            let keep = library
                .get(id)
                .is_some_and(|e| e.is_visible(now) && e.event.is_some());
            if !keep {
                output::remove(&pages, &pages.join(&rel))?;
                removed += 1;
            }
        }
        let names: HashSet<String> = self
            .feeds
            .iter()
            .flat_map(|f| {
                FORMATS
                    .iter()
                    .map(move |(ext, _)| format!("{}.{ext}", f.name))
            })
            .collect();
        let feeds_dir = self.out.join("feeds");
        for rel in output::files_under(&feeds_dir, "") {
            let name = crate::scan::rel_string(&rel);
            // Archive documents live below, pruned with the navigation.
            if name.contains('/') {
                continue;
            }
            let ours = FORMATS
                .iter()
                .any(|(ext, _)| name.ends_with(&format!(".{ext}")));
            if ours && !names.contains(&name) {
                output::remove(&feeds_dir, &feeds_dir.join(&rel))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Categories named by feed definitions that no article of the library has:
/// (feed name, category).
pub fn unknown_categories<'a>(
    feeds: &'a [FeedDef],
    library: &Library,
) -> Vec<(&'a FeedDef, &'a str)> {
    let known: HashSet<&str> = library.categories().into_iter().collect();
    feeds
        .iter()
        .flat_map(|f| f.categories.iter().map(move |c| (f, c.as_str())))
        .filter(|(_, c)| !known.contains(c))
        .collect()
}

/// Renders every page and mail template once with sample data: what a start, a build and
/// a reload check before they take the templates (a template can parse and still fail to
/// render). One message per problem.
pub fn template_problems(templates: &Templates, site: &SiteInfo) -> Vec<String> {
    let pages = Pages { site, templates };
    let sample = crate::mail::message::sample_article();
    let entry = Entry::new(
        &sample,
        "mau/bai-mau.txt".into(),
        Stamp::default(),
        sample.published,
    );
    let mut problems = Vec::new();
    let listed = crate::render::Listed {
        id: entry.id.to_string(),
        title: entry.title.clone(),
        category: entry.category.to_string(),
        category_url: format!("{}/categories/mau.html", site.base_url),
        url: site.article_url(&entry.id),
        published_iso: entry.published.to_rfc3339(),
        published_text: crate::site::local_time(&entry.published),
        excerpt: Some(sample.excerpt()),
    };
    let category_url = format!("{}/categories/mau.html", site.base_url);
    let page_url = format!("{}/pages/1.html", site.base_url);
    if let Err(e) = pages.index(
        std::slice::from_ref(&listed),
        &[(sample.category.as_str(), category_url.clone())],
        &page_url,
        &page_url,
        true,
    ) {
        problems.push(e.to_string());
    }
    problems.extend(crate::render::sample_problems(templates, site, &listed));
    // Once plain, once with every optional part (an event, its place, a correction).
    let mut event = sample.clone();
    event.event = Some(crate::article::When::Timed {
        start: sample.published.naive_local(),
        end: None,
    });
    event.place = Some("Hội trường".into());
    event.correction = Some("Sửa giờ".into());
    let nav = ArticleNav {
        category_url,
        older: Some(NeighbourCtx {
            title: "Bài trước".into(),
            url: site.article_url("mau/truoc"),
        }),
        newer: None,
    };
    for article in [&sample, &event] {
        if let Err(e) = pages.article(article, article.published, &nav) {
            problems.push(e.to_string());
        }
    }
    if let Err(e) = pages.message("Tiêu đề", "Nội dung", Some(("/x", "t", "Nút"))) {
        problems.push(e.to_string());
    }
    let refill = crate::site::Refill::new(
        "mau@example.vn",
        None,
        &[],
        std::slice::from_ref(&sample.category),
    );
    if let Err(e) = pages.subscribe_again("Tiêu đề", "Nội dung", &refill) {
        problems.push(e.to_string());
    }
    problems.extend(crate::mail::check_templates(templates, site));
    // A template rendered twice (an article with and without its optional parts) fails
    // the same way twice, mostly: said once (the first line names the template, the line
    // and the error; the rest shows the sample's values, which differ).
    let mut seen = HashSet::new();
    problems.retain(|p| seen.insert(p.lines().next().unwrap_or_default().to_owned()));
    problems
}

/// The categories a subscriber may follow: those the store's articles use and those the
/// feed definitions name, sorted.
pub fn known_categories(library: &Library, feeds: &[FeedDef]) -> Vec<String> {
    let mut all: Vec<String> = library
        .categories()
        .into_iter()
        .map(String::from)
        .chain(feeds.iter().flat_map(|f| f.categories.iter().cloned()))
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The known categories of the store and feeds named by `config`, read from disk (for the
/// commands that run without the daemon).
pub fn read_known_categories(config: &Config) -> Vec<String> {
    let feeds = load_feed_defs(&config.feeds.dir)
        .map(|(defs, _)| defs)
        .unwrap_or_default();
    let Ok(tz) = config.timezone() else {
        return known_categories(&Library::default(), &feeds);
    };
    let reader = StoreReader {
        root: config.store.dir.clone(),
        tz,
        max_bytes: config.store.max_bytes,
    };
    let files = reader.walk().unwrap_or_default();
    let (entries, _) = reader.read_all(&files, |_, _| {});
    known_categories(&Library::from_entries(entries), &feeds)
}

/// Whether `dir` is inside `root` (used to refuse an output folder inside the store).
pub fn is_inside(dir: &Path, root: &Path) -> bool {
    match (dir.canonicalize(), root.canonicalize()) {
        (Ok(d), Ok(r)) => d.starts_with(r),
        _ => false,
    }
}

/// Every `*.toml` of a folder, sorted by name; problems are returned beside the good ones.
pub fn load_feed_defs(dir: &Path) -> Result<(Vec<FeedDef>, Vec<DefError>), std::io::Error> {
    let mut defs = Vec::new();
    let mut errors = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Err(e) => errors.push(DefError {
                path: shown,
                line: 1,
                message: format!("không đọc được tệp: {e}"),
            }),
            Ok(text) => match FeedDef::parse(&name, &text) {
                Ok(def) => defs.push(def),
                Err((line, message)) => errors.push(DefError {
                    path: shown,
                    line,
                    message,
                }),
            },
        }
    }
    Ok((defs, errors))
}

/// Reads and compiles every template of [`crate::site::TEMPLATE_NAMES`] from `dir`.
pub fn load_templates(dir: &Path) -> Result<Templates, Vec<crate::site::TemplateError>> {
    // One line for the folder, not one per template it should hold: missing, or holding
    // none of the templates that have no built-in stand-in (an empty or wrong folder).
    let own = || {
        crate::site::TEMPLATE_NAMES
            .iter()
            .filter(|name| !crate::site::BUILT_IN.iter().any(|(n, _)| n == *name))
    };
    if !dir.is_dir() || !own().any(|name| dir.join(name).is_file()) {
        return Err(vec![crate::site::TemplateError::MissingDir {
            path: dir.display().to_string(),
        }]);
    }
    Templates::compile(crate::site::TEMPLATE_NAMES.iter().map(|name| {
        let path = dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            // A templates folder made before a template existed gets the built-in one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::site::BUILT_IN
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, text)| text.to_string())
                .ok_or(e),
            other => other,
        };
        (*name, path.display().to_string(), text)
    }))
}

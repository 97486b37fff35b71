//! The engine: owns the library, turns file events and the clock into republishing.
//!
//! It runs on its own thread. It takes file events (debounced), rescans the store
//! periodically, publishes scheduled articles when they come due, and republishes only what a
//! change touches ([`crate::plan::republish`]): the pages, the feeds of the categories
//! touched, the index. It tells the mail side what became visible or went, and pings the
//! systemd watchdog while it is healthy.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use chrono::{DateTime, FixedOffset};
use sd_notify::NotifyState;

use super::notify;
use crate::article::Article;
use crate::clock::Clock;
use crate::http::{AppState, Served, Snapshot};
use crate::library::{Change, Entry, Library};
use crate::metrics::Metrics;
use crate::nav::Model;
use crate::publish::{FORMATS, Publisher, RenderedFeed};
use crate::site::ArticleNav;
use crate::watch::{Debouncer, StoreWatch};

/// A part may go this long without showing progress (or four watchdog intervals, if
/// longer) before the watchdog is starved.
const WATCHDOG_GRACE: Duration = Duration::from_secs(3);
/// The engine wakes at least this often, to ping the watchdog and notice a stop.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// After a new folder appears, the store is walked again this soon (inotify watches a new
/// folder only some time after it was made).
const NEW_FOLDER_RESCAN: Duration = Duration::from_secs(2);
/// File events taken in one turn of the engine loop before it does the work they ask for.
const MAX_EVENTS_PER_TURN: usize = 10_000;

/// Messages to the engine thread.
pub enum Msg {
    Fs(notify::Result<notify::Event>),
    Reload(Box<Publisher>),
    /// The clock was moved (a test's manual clock): look at what came due.
    Tick,
    Stop,
}

/// What the engine tells the mail side.
pub enum MailEvent {
    /// Articles that became visible (new, edited, or come due).
    Published(Vec<Arc<Entry>>),
    /// Articles deleted or moved back into the future.
    Removed(Vec<String>),
    /// Every visible article, after a full rebuild (reload).
    Resync(Vec<Arc<Entry>>),
}

pub fn system_time(t: DateTime<FixedOffset>) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
}

/// The engine: owns the library and republishes what changes.
pub struct Engine {
    pub publisher: Arc<Publisher>,
    pub library: Library,
    clock: Clock,
    metrics: Metrics,
    /// The categories subscribers may follow, for the subscription routes and commands.
    categories: crate::subscriber::KnownCategories,
    /// Files of the store that are broken, by path relative to the store, with the stamp they
    /// were read at (an unchanged broken file is not read and logged again at every rescan).
    pub errors: HashMap<String, crate::library::Stamp>,
    app: Arc<AppState>,
    /// Articles published up to this time; later ones are scheduled.
    pub horizon: DateTime<FixedOffset>,
    /// The articles each feed lists: the bodies worth keeping in memory.
    feed_ids: HashMap<String, Vec<String>>,
    index_time: SystemTime,
    watch: Option<StoreWatch>,
    /// Identity (device, inode) of the watched store folder, to notice it replaced.
    watched_root: Option<(u64, u64)>,
    tx: Sender<Msg>,
    /// Tells the mail side what was published or removed.
    mail: tokio::sync::mpsc::UnboundedSender<MailEvent>,
    next_rescan: Instant,
    watchdog: Option<(Duration, Instant)>,
    /// Files of the site that could not be written (a full disk), tried again with backoff.
    unwritten: Unwritten,
    /// The other parts' liveness: the watchdog is fed only while they all make progress.
    health: crate::health::Health,
    /// The part last found stuck (logged once, not at every turn).
    stuck: Option<&'static str>,
    /// The search index, fed with every change.
    search: Arc<crate::search::Search>,
    /// Feeds changed since the hub was last told (WebSub).
    websub: Option<tokio::sync::mpsc::UnboundedSender<Vec<String>>>,
    /// What the site's pages and lists were rendered from (a list not in it is written at
    /// the next change); saved when the engine stops.
    manifest: crate::manifest::Manifest,
    /// Whether the site changed since the manifest file was written (the file is then gone).
    manifest_stale: bool,
}

/// What the engine shares with the rest of the daemon.
pub struct Shared {
    pub app: Arc<AppState>,
    pub clock: Clock,
    pub metrics: Metrics,
    /// The categories subscribers may follow, kept current by the engine.
    pub categories: crate::subscriber::KnownCategories,
    pub health: crate::health::Health,
    pub search: Arc<crate::search::Search>,
    /// Where changed feeds' names go, for the WebSub hub.
    pub websub: Option<tokio::sync::mpsc::UnboundedSender<Vec<String>>>,
}

impl Engine {
    /// Reads the whole store, publishes it, and starts watching.
    pub fn start(
        publisher: Arc<Publisher>,
        shared: Shared,
        tx: Sender<Msg>,
        mail: tokio::sync::mpsc::UnboundedSender<MailEvent>,
    ) -> anyhow::Result<Engine> {
        let Shared {
            app,
            clock,
            metrics,
            categories,
            health,
            search,
            websub,
        } = shared;
        let mut engine = Engine {
            publisher,
            library: Library::default(),
            horizon: clock.now_fixed(),
            clock,
            metrics,
            categories,
            errors: HashMap::new(),
            app,
            feed_ids: HashMap::new(),
            index_time: SystemTime::UNIX_EPOCH,
            watch: None,
            watched_root: None,
            tx,
            mail,
            next_rescan: Instant::now(),
            watchdog: sd_notify::watchdog_enabled().map(|d| (d / 2, Instant::now())),
            unwritten: Unwritten::default(),
            health,
            stuck: None,
            search,
            websub,
            manifest: crate::manifest::Manifest::default(),
            manifest_stale: false,
        };
        // Watched before the walk: a file dropped while the site is built (the feeds are
        // served by then) is an event waiting when the engine's loop starts.
        engine.start_watch();
        engine.full_build()?;
        Ok(engine)
    }

    /// Publishes everything from a fresh walk (start and reload).
    fn full_build(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let root = &self.publisher.reader.root;
        let files = self
            .publisher
            .reader
            .walk()
            .with_context(|| format!("cannot read store.dir '{}'", root.display()))?;
        let now = self.clock.now_fixed();
        tracing::debug!(
            files = files.len(),
            "store walked in {:.2?}",
            started.elapsed()
        );
        // The feeds and the home page are served as soon as they are made; a page not
        // written yet is "come back shortly" (503), not "no such page".
        self.app
            .building
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let app = self.app.clone();
        let built = self
            .publisher
            .build_from(files, now, &AtomicUsize::new(0), |front| {
                app.replace(front_snapshot(front, now));
                if !app.healthy.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::info!("feeds and the home page ready; writing the article pages");
                    notify(&[
                        NotifyState::Ready,
                        NotifyState::Status("serving the feeds; writing the article pages"),
                    ]);
                }
            });
        self.app
            .building
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let built = built.with_context(|| {
            format!(
                "cannot write to output.dir '{}'",
                self.publisher.out.display()
            )
        })?;
        for e in &built.report.errors {
            tracing::warn!("{e}");
        }
        for e in &built.report.write_errors {
            tracing::error!("{e}");
        }
        let root = self
            .publisher
            .reader
            .root
            .canonicalize()
            .unwrap_or_default();
        self.errors = built
            .report
            .errors
            .iter()
            .map(|e| {
                let stamp = std::fs::metadata(&e.path)
                    .map(|m| crate::scan::stamp_of(&m))
                    .unwrap_or_default();
                let rel = e.path.strip_prefix(&root).unwrap_or(&e.path);
                (crate::scan::rel_string(rel), stamp)
            })
            .collect();
        self.library = built.library;
        self.horizon = now;
        self.feed_ids.clear();
        for feed in &built.feeds {
            self.feed_ids.insert(feed.name.clone(), feed.ids.clone());
        }
        self.index_time = index_time(&self.library, now);
        self.manifest = built.manifest;
        self.manifest_stale = false;
        self.build_search(now);
        self.update_metrics();
        self.metrics.rebuild(started.elapsed(), built.feeds.len());
        self.next_rescan = Instant::now() + self.rescan_interval();
        Ok(())
    }

    /// Builds the search index from every published article on a thread of its own: the
    /// site is served meanwhile, and changes made while it runs are applied after it.
    fn build_search(&self, now: DateTime<FixedOffset>) {
        let entries: Vec<Arc<Entry>> = self.library.visible(now).cloned().collect();
        let publisher = self.publisher.clone();
        let search = self.search.clone();
        let ticket = search.begin_build();
        let spawned = std::thread::Builder::new()
            .name("search-index".into())
            .spawn(move || {
                let started = Instant::now();
                let mut index = search.new_index();
                for entry in entries {
                    let article = match publisher.reader.body(&publisher.articles, &entry) {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!("{e}");
                            continue;
                        }
                    };
                    index.add(entry, &article);
                }
                // Measured as kept: without the room its lists grew into.
                index.shrink();
                let (docs, bytes, disk) = (index.len(), index.heap_bytes(), index.disk_bytes());
                if !search.finish_build(ticket, index, bytes) {
                    return; // a reload started a newer one
                }
                // Building left freed memory behind (each article's words); give it back.
                #[cfg(all(target_os = "linux", target_env = "gnu"))]
                // SAFETY: malloc_trim only releases free memory of the allocator.
                unsafe {
                    libc::malloc_trim(0);
                }
                tracing::info!(
                    articles = docs,
                    mib = bytes / (1 << 20),
                    file_mib = disk >> 20,
                    "search index built in {:.1?}",
                    started.elapsed()
                );
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start building the search index: {e}");
        }
    }

    fn rescan_interval(&self) -> Duration {
        // The interval lives in the configuration the publisher was made from.
        Duration::from_secs(self.publisher.rescan_secs.max(1))
    }

    fn start_watch(&mut self) {
        let root = self.publisher.reader.root.clone();
        let tx = self.tx.clone();
        match StoreWatch::start(&root, move |event| {
            let _ = tx.send(Msg::Fs(event));
        }) {
            Ok(watch) => {
                self.watch = Some(watch);
                self.watched_root = dir_identity(&root);
            }
            Err(e) => {
                self.watch = None;
                self.watched_root = None;
                tracing::error!(
                    "cannot watch '{}': {e}; changes are seen at the next rescan",
                    root.display()
                );
            }
        }
    }

    pub fn status(&self) -> String {
        format!(
            "{} articles ({} scheduled, {} broken), {} feeds",
            self.library.len(),
            self.library.scheduled(self.horizon),
            self.errors.len(),
            self.publisher.feeds.len()
        )
    }

    /// Publishes the categories subscribers may follow, when they changed.
    fn update_categories(&self) {
        let known = crate::publish::known_categories(&self.library, &self.publisher.feeds);
        if self.categories.read().expect("categories").as_ref() != Some(&known) {
            *self.categories.write().expect("categories") = Some(known);
        }
    }

    fn update_metrics(&self) {
        self.update_categories();
        let m = &self.metrics;
        m.articles.set(self.library.len() as i64);
        m.articles_scheduled
            .set(self.library.scheduled(self.horizon) as i64);
        m.article_errors.set(self.errors.len() as i64);
    }

    /// The main loop: events, due articles, rescans, the watchdog, until told to stop.
    pub fn run(mut self, rx: Receiver<Msg>) {
        let mut debouncer = Debouncer::default();
        loop {
            let wake = [
                debouncer.deadline(),
                self.library.next_due(self.horizon).map(|t| {
                    Instant::now() + (t - self.clock.now_fixed()).to_std().unwrap_or_default()
                }),
                Some(self.next_rescan),
                self.watchdog.map(|(_, at)| at),
                (!self.unwritten.is_empty()).then_some(self.unwritten.next),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + MAX_SLEEP);
            let timeout = wake
                .saturating_duration_since(Instant::now())
                .min(MAX_SLEEP);
            let mut next = rx.recv_timeout(timeout).map_err(Some);
            let mut stop = false;
            // Take the events already queued (a bounded number: a flood of events must not
            // starve the work below, nor the watchdog) before handling any.
            let mut taken = 0;
            loop {
                match next {
                    Ok(Msg::Fs(Ok(event))) => {
                        for signal in crate::watch::classify(&event) {
                            debouncer.push(signal, Instant::now());
                        }
                    }
                    Ok(Msg::Fs(Err(e))) => {
                        tracing::warn!("file watch error: {e}; rescanning");
                        debouncer.push(crate::watch::Signal::Rescan, Instant::now());
                    }
                    Ok(Msg::Reload(publisher)) => self.reload(*publisher),
                    Ok(Msg::Tick) => {}
                    Ok(Msg::Stop) | Err(Some(RecvTimeoutError::Disconnected)) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
                taken += 1;
                if taken == MAX_EVENTS_PER_TURN {
                    break; // the rest waits for the next turn
                }
                next = rx.try_recv().map_err(|e| match e {
                    std::sync::mpsc::TryRecvError::Empty => None,
                    std::sync::mpsc::TryRecvError::Disconnected => {
                        Some(RecvTimeoutError::Disconnected)
                    }
                });
            }
            if stop {
                self.save_manifest();
                break;
            }
            let (paths, rescan) = debouncer.take_ready(Instant::now());
            if rescan {
                // Asked for by an event (a new folder, lost events): files made in a new
                // folder before it was watched sent nothing, so walk again shortly after.
                self.rescan();
                self.next_rescan = self.next_rescan.min(Instant::now() + NEW_FOLDER_RESCAN);
            } else if Instant::now() >= self.next_rescan {
                self.rescan();
            } else if !paths.is_empty() {
                self.handle_paths(paths);
            }
            if self
                .library
                .next_due(self.horizon)
                .is_some_and(|t| t <= self.clock.now_fixed())
            {
                self.publish_changes(Vec::new(), Instant::now());
            }
            self.write_unwritten();
            self.ping_watchdog();
        }
    }

    /// Writes what the pages were rendered from, for the next start.
    fn save_manifest(&mut self) {
        if !self.manifest_stale {
            return;
        }
        match self.manifest.save(&self.publisher.out) {
            Ok(()) => self.manifest_stale = false,
            Err(e) => tracing::warn!("cannot write the site's manifest: {e}"),
        }
    }

    /// The site is about to change: the manifest on disk no longer says what it holds.
    fn manifest_changes(&mut self) {
        if !self.manifest_stale {
            crate::manifest::Manifest::remove(&self.publisher.out);
            self.manifest_stale = true;
        }
    }

    fn ping_watchdog(&mut self) {
        let Some((every, at)) = self.watchdog else {
            return;
        };
        if Instant::now() < at {
            return;
        }
        // Healthy: the engine is turning (this runs on it), the store can be read, and the
        // HTTP server, the mail worker and the state flushes make progress.
        let limit = (every * 4).max(WATCHDOG_GRACE);
        let stuck = if std::fs::read_dir(&self.publisher.reader.root).is_err() {
            Some("the store cannot be read")
        } else {
            self.health.stuck(limit)
        };
        // While a part is stuck, look again soon: a ping withheld for one whole interval
        // already puts the service at the edge of its watchdog timeout.
        let next = if stuck.is_some() {
            every.min(MAX_SLEEP)
        } else {
            every
        };
        match stuck {
            None => {
                if let Some(was) = self.stuck.take() {
                    tracing::info!("feeding the watchdog again ({was} no longer)");
                }
                notify(&[NotifyState::Watchdog]);
            }
            Some(part) => {
                if self.stuck != Some(part) {
                    tracing::error!("withholding the watchdog ping: {part}");
                    self.stuck = Some(part);
                }
            }
        }
        self.watchdog = Some((every, Instant::now() + next));
    }

    fn reload(&mut self, mut publisher: Publisher) {
        // One article cache for the daemon's whole life: the mail side holds it too.
        publisher.articles = self.publisher.articles.clone();
        if publisher.reader.root != self.publisher.reader.root {
            publisher.articles.clear();
        }
        let old = std::mem::replace(&mut self.publisher, Arc::new(publisher));
        match self.full_build() {
            Ok(()) => {
                if old.reader.root != self.publisher.reader.root {
                    self.start_watch();
                }
                tracing::info!(
                    feeds = self.publisher.feeds.len(),
                    articles = self.library.len(),
                    "reloaded"
                );
                let visible = self.library.visible(self.horizon).cloned().collect();
                let _ = self.mail.send(MailEvent::Resync(visible));
            }
            Err(e) => {
                tracing::error!("reload failed, keeping the running configuration: {e:#}");
                self.publisher = old;
            }
        }
        notify(&[NotifyState::Status(&self.status())]);
    }

    /// Looks again at paths that events named.
    fn handle_paths(&mut self, paths: Vec<PathBuf>) {
        let seen = Instant::now();
        let root = self.publisher.reader.root.clone();
        let canonical_root = root.canonicalize().unwrap_or_else(|_| root.clone());
        let mut changes = Vec::new();
        for path in paths {
            if path == root || path == canonical_root {
                // The store folder itself was replaced, removed or renamed.
                return self.rescan();
            }
            let Some(rel) = path
                .strip_prefix(&canonical_root)
                .or_else(|_| path.strip_prefix(&root))
                .ok()
                .map(Path::to_path_buf)
            else {
                continue; // another entry of the store's parent folder
            };
            if path.is_dir() {
                // A new folder: files made in it before it was watched sent no event. A
                // walk now finds those; another shortly after finds any made in between.
                self.rescan();
                self.next_rescan = self.next_rescan.min(Instant::now() + NEW_FOLDER_RESCAN);
                return;
            }
            let Some(id) = crate::article::id_for(&rel) else {
                if self.library.has_under(&crate::scan::rel_string(&rel)) {
                    return self.rescan(); // a folder of articles went
                }
                continue;
            };
            let file = crate::scan::rel_string(&rel);
            match self.publisher.reader.found_at(&path) {
                None => {
                    self.errors.remove(&file);
                    if let Some(change) = self.library.remove(&id) {
                        tracing::info!(id, "article removed");
                        changes.push(change);
                    }
                }
                Some(found) => {
                    if self
                        .library
                        .get(&id)
                        .is_some_and(|e| e.stamp == found.stamp)
                    {
                        continue;
                    }
                    self.read_one(&found, &mut changes);
                }
            }
        }
        self.publish_changes(changes, seen);
    }

    fn read_one(&mut self, found: &crate::scan::Found, changes: &mut Vec<Change>) {
        let key = found.file.clone();
        match self.publisher.reader.read(found) {
            Ok(article) => {
                if self.errors.remove(&key).is_some() {
                    tracing::info!(file = found.file, "article fixed");
                }
                let entry = self.publisher.reader.entry(found, &article);
                self.warn_look_alike(&found.file, &entry.category);
                let scheduled = (entry.published > self.clock.now_fixed())
                    .then(|| entry.published.to_rfc3339());
                let article = Arc::new(article);
                self.publisher.remember(found.stamp, article.clone());
                if let Some(change) = self.library.upsert(entry) {
                    let what = match &change {
                        Change::Added(_) => "article added",
                        _ => "article updated",
                    };
                    match scheduled {
                        Some(at) => {
                            tracing::info!(id = found.id, "{what}: scheduled, published at {at}")
                        }
                        None => tracing::info!(id = found.id, "{what}"),
                    }
                    changes.push(change);
                }
            }
            Err(e) => {
                // The last good version, if any, stays published.
                tracing::warn!("{e}");
                self.errors.insert(key, found.stamp);
            }
        }
    }

    /// Warns when `category` is new and reads as one the store has, written another way
    /// (case, diacritics, spaces): it makes a category of its own, whose articles the
    /// followers of the other never get. `bantin check` says the same.
    fn warn_look_alike(&self, file: &str, category: &str) {
        if self.library.has_category(category) {
            return; // the common case, a lookup
        }
        let form = crate::check::category_form(category);
        if let Some(known) = self
            .library
            .categories()
            .into_iter()
            .find(|c| crate::check::category_form(c) == form)
        {
            tracing::warn!(
                file,
                "category \"{category}\" is written differently from the existing \"{known}\": \
                 it becomes a category of its own, and those who follow \"{known}\" are not \
                 told of it; write it exactly the same if it is the same"
            );
        }
    }

    /// Walks the whole store again and applies what differs.
    fn rescan(&mut self) {
        let seen = Instant::now();
        self.next_rescan = seen + self.rescan_interval();
        self.metrics.rescans.inc();
        let root = self.publisher.reader.root.clone();
        if dir_identity(&root) != self.watched_root {
            tracing::info!(store = %root.display(), "the store folder was replaced; watching it again");
            self.start_watch();
        }
        let files = match self.publisher.reader.walk() {
            Ok(files) => files,
            Err(e) => {
                // Keep everything published: the folder may be in the middle of a swap.
                tracing::warn!(
                    "cannot read store.dir '{}': {e}; keeping what is published",
                    root.display()
                );
                return;
            }
        };
        let mut changes = Vec::new();
        let present: HashSet<&str> = files.iter().map(|f| f.id.as_str()).collect();
        let gone: Vec<String> = self
            .library
            .iter()
            .filter(|e| !present.contains(&*e.id))
            .map(|e| e.id.to_string())
            .collect();
        for id in gone {
            if let Some(change) = self.library.remove(&id) {
                tracing::info!(id, "article removed");
                changes.push(change);
            }
        }
        let live: HashSet<&str> = files.iter().map(|f| f.file.as_str()).collect();
        self.errors.retain(|file, _| live.contains(file.as_str()));
        for found in &files {
            let unchanged = self
                .library
                .get(&found.id)
                .is_some_and(|e| e.stamp == found.stamp)
                || self.errors.get(&found.file) == Some(&found.stamp);
            if !unchanged {
                self.read_one(found, &mut changes);
            }
        }
        self.publish_changes(changes, seen);
    }

    /// Republishes what `changes` touch, and articles that came due.
    fn publish_changes(&mut self, changes: Vec<Change>, seen: Instant) {
        let now = self.clock.now_fixed();
        let plan = crate::plan::republish(&changes, &self.library, self.horizon, now);
        self.horizon = self.horizon.max(now);
        for id in &plan.forget {
            self.publisher.forget(id);
        }
        for id in &plan.due {
            tracing::info!(id, "scheduled article published");
        }
        if plan.is_empty() {
            self.update_metrics();
            return;
        }
        let work = self.render_changes(&plan, &changes, now);
        let (snapshot, index, calendar) = self.publish_memory(&work, now);
        self.write_files(&plan, &work, index.as_deref());
        // Readers see the change once what it links to is on disk: a feed's new item or an
        // event in the calendar never points at a page not written yet.
        self.app.replace(snapshot);
        if let Some(ics) = calendar
            && let Err(e) = self.publisher.write_calendar(&ics)
        {
            // Served from memory meanwhile; the next change writes it again.
            tracing::error!("cannot write {}: {e}", crate::publish::CALENDAR_FILE);
        }
        for id in &plan.gone {
            self.search
                .update(crate::search::Update::Remove(id.clone()));
        }
        // Edits leave their old entries behind, marked dead; past a fifth, start afresh.
        if self.search.worth_rebuilding() {
            tracing::info!("building the search index again (many edits and removals)");
            self.build_search(now);
        }
        // The mail side decides what is news (an edit is not) and cancels what went.
        if !plan.pages.is_empty() {
            let _ = self.mail.send(MailEvent::Published(plan.pages.clone()));
        }
        if !plan.gone.is_empty() {
            let _ = self.mail.send(MailEvent::Removed(plan.gone.clone()));
        }
        if let Some(websub) = &self.websub
            && !work.feeds.is_empty()
        {
            let _ = websub.send(work.feeds.iter().map(|f| f.name.clone()).collect());
        }
        // Last: once /metrics counts an article, its page and feeds are on disk.
        self.update_metrics();
        self.metrics.rebuild(seen.elapsed(), work.feeds.len());
        tracing::debug!(
            feeds = work.feeds.len(),
            pages = work.pages.len(),
            docs = work.docs.len(),
            "republished in {:.2?}",
            seen.elapsed()
        );
        notify(&[NotifyState::Status(&self.status())]);
    }

    /// Renders what `plan` changes: the feeds it touches, the index, the pages of the
    /// articles it names and of their neighbours, and the navigation documents whose
    /// fingerprint changed.
    fn render_changes(
        &self,
        plan: &crate::plan::Republish,
        changes: &[Change],
        now: DateTime<FixedOffset>,
    ) -> Rendered {
        let model = Model::new(&self.library, now, &self.publisher.feeds);
        let defs: Vec<_> = self
            .publisher
            .feeds
            .iter()
            .filter(|d| plan.touched.iter().any(|c| d.includes(c)))
            .cloned()
            .collect();
        let feeds = self
            .publisher
            .render_feeds(&defs, &self.library, now, &model);
        let index = self
            .publisher
            .render_index(&self.library, &model)
            .map_err(|e| e.to_string());
        // The pages of changed articles, and of the articles next to them before and after
        // the change (their "older"/"newer" links).
        let mut pages: Vec<Arc<Entry>> = plan.pages.clone();
        let add = |e: &Arc<Entry>, pages: &mut Vec<Arc<Entry>>| {
            if e.is_visible(now) && !pages.iter().any(|p| p.id == e.id) {
                pages.push(e.clone());
            }
        };
        for change in changes {
            let (old, new) = match change {
                Change::Added(new) => (None, Some(new)),
                Change::Updated { old, new } => (Some(old), Some(new)),
                Change::Removed(old) => (Some(old), None),
            };
            for e in old.into_iter().chain(new) {
                let (older, newer) = model.neighbours(e);
                for n in older.into_iter().chain(newer) {
                    add(n, &mut pages);
                }
            }
        }
        let pages = pages
            .into_iter()
            .map(|e| {
                let nav = self.publisher.article_nav(&model, &e);
                (e, nav)
            })
            .collect();
        let all = model.docs();
        let mut docs = Vec::new();
        let mut current = HashSet::with_capacity(all.len());
        for (doc, print) in &all {
            let path = doc.path(&model);
            if self.manifest.docs.get(&path) != Some(print) {
                let body = self.publisher.render_doc(&model, doc);
                docs.push((*print, path.clone(), body));
            }
            current.insert(path);
        }
        let gone = self
            .manifest
            .docs
            .keys()
            .filter(|path| !current.contains(*path))
            .cloned()
            .collect();
        Rendered {
            feeds,
            index,
            pages,
            docs,
            gone,
        }
    }

    /// The served snapshot with the rendered feeds and index, to be put in place once the
    /// pages they link to are written; and the index and the calendar when it changed, for
    /// the files.
    fn publish_memory(
        &mut self,
        work: &Rendered,
        now: DateTime<FixedOffset>,
    ) -> (Snapshot, Option<String>, Option<String>) {
        let mut snapshot = (*self.app.snapshot()).clone();
        let wall = system_time(self.clock.now_fixed());
        for feed in &work.feeds {
            insert_feed(&mut snapshot, feed);
        }
        let index = match &work.index {
            Ok(html) => {
                self.index_time = self.index_time.max(wall);
                snapshot.index = Some(Arc::new(Served::index(
                    html.clone().into_bytes(),
                    self.index_time,
                )));
                Some(html.clone())
            }
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        };
        let calendar = self.publisher.render_calendar(&self.library, now);
        let changed = snapshot
            .calendar
            .as_ref()
            .is_none_or(|c| c.body != calendar.0.as_bytes());
        let calendar = changed.then(|| {
            snapshot.calendar = Some(calendar_served(calendar.clone()));
            calendar.0
        });
        (snapshot, index, calendar)
    }

    /// Writes what `plan` changed to `output.dir`: pages, feeds, the navigation, the index.
    fn write_files(&mut self, plan: &crate::plan::Republish, work: &Rendered, index: Option<&str>) {
        self.manifest_changes();
        for id in &plan.gone {
            self.manifest.pages.remove(id.as_str());
            self.unwritten.pages.remove(id.as_str());
            if let Err(e) = self.publisher.remove_page(id) {
                tracing::error!(id, "cannot remove the page: {e}");
            }
        }
        for (entry, nav) in &work.pages {
            if let Some(article) = self.write_page(entry, nav)
                && plan.pages.iter().any(|p| p.id == entry.id)
            {
                self.search
                    .update(crate::search::Update::Add(entry.clone(), article));
            }
        }
        for feed in &work.feeds {
            if let Err(e) = self.publisher.write_feed(feed) {
                tracing::error!(
                    feed = feed.name,
                    "cannot write the feed: {e}; trying again later"
                );
                self.unwritten.note_feed(feed.clone());
            } else {
                self.unwritten.feeds.remove(&feed.name);
            }
            self.feed_ids.insert(feed.name.clone(), feed.ids.clone());
        }
        for (print, path, body) in &work.docs {
            let full = self.publisher.out.join(path);
            match body {
                Some(Ok(body)) => match crate::output::write_atomic(&full, body.as_bytes()) {
                    // Recorded only once written: a failed one is written at the next change.
                    Ok(_) => {
                        self.manifest.docs.insert(path.clone(), *print);
                    }
                    Err(e) => tracing::error!("cannot write {}: {e}", full.display()),
                },
                Some(Err(e)) => tracing::error!("{e}"),
                None => {
                    self.manifest.docs.remove(path);
                }
            }
        }
        for path in &work.gone {
            let full = self.publisher.out.join(path);
            // Forgotten once removed: one that could not be is tried at the next change.
            match crate::output::remove(&self.publisher.out, &full) {
                Ok(()) => {
                    self.manifest.docs.remove(path);
                }
                Err(e) => tracing::error!("cannot remove {}: {e}", full.display()),
            }
        }
        // Keep in memory only the bodies the feeds list (a flood of new articles must not
        // pile up there).
        let listed: HashSet<&str> = self
            .feed_ids
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        self.publisher.trim_cache(&listed);
        if let Some(html) = index {
            match self.publisher.write_index(html) {
                Ok(()) => self.unwritten.index = None,
                Err(e) => {
                    tracing::error!("cannot write index.html: {e}; trying again later");
                    self.unwritten.index = Some(html.to_owned());
                    self.unwritten.schedule();
                }
            }
        }
    }

    /// Writes the page of `entry`; one that cannot be written is tried again later.
    /// Returns its body, when it could be read.
    fn write_page(&mut self, entry: &Arc<Entry>, nav: &ArticleNav) -> Option<Arc<Article>> {
        let article = self.read_body(entry)?;
        match self.publisher.write_page(entry, &article, nav) {
            Ok(_) => {
                self.unwritten.pages.remove(&entry.id);
                let generation = self.manifest.generation;
                self.manifest.pages.insert(
                    entry.id.clone(),
                    crate::manifest::page_print(generation, entry, nav),
                );
            }
            Err(e) => {
                tracing::error!("{e}; trying again later");
                self.manifest.pages.remove(&entry.id);
                self.unwritten
                    .pages
                    .insert(entry.id.clone(), (entry.clone(), nav.clone()));
                self.unwritten.schedule();
            }
        }
        Some(article)
    }

    /// Tries again what could not be written, when its time has come.
    fn write_unwritten(&mut self) {
        if self.unwritten.is_empty() || Instant::now() < self.unwritten.next {
            return;
        }
        self.manifest_changes();
        let (pages, feeds, index) = (
            std::mem::take(&mut self.unwritten.pages),
            std::mem::take(&mut self.unwritten.feeds),
            self.unwritten.index.take(),
        );
        self.unwritten.failing = false;
        for (entry, nav) in pages.into_values() {
            // Only what is still published.
            if self
                .library
                .get(&entry.id)
                .is_some_and(|e| e.stamp == entry.stamp)
            {
                self.write_page(&entry, &nav);
            }
        }
        for feed in feeds.into_values() {
            if let Err(e) = self.publisher.write_feed(&feed) {
                tracing::debug!(feed = feed.name, "still cannot write the feed: {e}");
                self.unwritten.note_feed(feed);
            }
        }
        if let Some(html) = index
            && self.publisher.write_index(&html).is_err()
        {
            self.unwritten.index = Some(html);
            self.unwritten.schedule();
        }
        if self.unwritten.is_empty() {
            tracing::info!("the site's files are all written again");
            self.unwritten = Unwritten::default();
        }
    }

    /// The body of `entry`: from the shared cache, else read again.
    fn read_body(&self, entry: &Entry) -> Option<Arc<Article>> {
        if let Some(a) = self.publisher.articles.get(&entry.id, entry.stamp) {
            return Some(a);
        }
        match self
            .publisher
            .reader
            .read(&self.publisher.reader.found_of(entry))
        {
            Ok(a) => {
                let a = Arc::new(a);
                self.publisher.remember(entry.stamp, a.clone());
                Some(a)
            }
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }
}

/// What a change renders, before it is served and written.
struct Rendered {
    feeds: Vec<RenderedFeed>,
    index: Result<String, String>,
    /// Article pages to write, with their navigation.
    pages: Vec<(Arc<Entry>, ArticleNav)>,
    /// Navigation and archive documents whose fingerprint changed.
    docs: Vec<ChangedDoc>,
    /// Paths of documents that are no more.
    gone: Vec<String>,
}

/// A document to write again: (fingerprint, path, body; `None` when it no longer exists).
type ChangedDoc = (u64, String, Option<Result<String, String>>);

/// Files of the site that could not be written, and when to try again.
struct Unwritten {
    pages: HashMap<Arc<str>, (Arc<Entry>, ArticleNav)>,
    feeds: HashMap<String, RenderedFeed>,
    index: Option<String>,
    next: Instant,
    /// The wait before the next try; doubles while writes keep failing.
    backoff: Duration,
    /// Whether a failure was seen since the last try (the backoff then grows).
    failing: bool,
}

impl Default for Unwritten {
    fn default() -> Self {
        Unwritten {
            pages: HashMap::new(),
            feeds: HashMap::new(),
            index: None,
            next: Instant::now(),
            backoff: UNWRITTEN_FIRST,
            failing: false,
        }
    }
}

impl Unwritten {
    fn is_empty(&self) -> bool {
        self.pages.is_empty() && self.feeds.is_empty() && self.index.is_none()
    }

    fn note_feed(&mut self, feed: RenderedFeed) {
        self.feeds.insert(feed.name.clone(), feed);
        self.schedule();
    }

    /// Plans the next try: a failure in this round makes the wait longer.
    fn schedule(&mut self) {
        if !self.failing {
            self.failing = true;
            self.next = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(UNWRITTEN_MAX);
        }
    }
}

/// The first and the longest wait before writing the site's files again.
const UNWRITTEN_FIRST: Duration = Duration::from_secs(1);
const UNWRITTEN_MAX: Duration = Duration::from_secs(60);

/// What the HTTP side serves from memory, read back from the output a clean stop left for
/// the same configuration (its manifest says so): served at once on a restart while the
/// engine checks the store. `None` when anything is missing.
pub fn snapshot_from_disk(publisher: &Publisher) -> Option<Snapshot> {
    let out = &publisher.out;
    if !crate::manifest::Manifest::matches(out, publisher.generation()) {
        return None;
    }
    let read = |path: &Path| -> Option<(Vec<u8>, SystemTime)> {
        let bytes = std::fs::read(path).ok()?;
        let modified = std::fs::metadata(path).ok()?.modified().ok()?;
        Some((bytes, modified))
    };
    let mut snapshot = Snapshot::default();
    for feed in &publisher.feeds {
        for (ext, media) in FORMATS {
            let (body, at) = read(&publisher.feed_path(&feed.name, ext))?;
            snapshot.feeds.insert(
                format!("{}.{ext}", feed.name),
                Arc::new(Served::feed(body, media, at)),
            );
        }
    }
    let (body, at) = read(&publisher.index_path())?;
    snapshot.index = Some(Arc::new(Served::index(body, at)));
    let (body, at) = read(&out.join(crate::publish::CALENDAR_FILE))?;
    snapshot.calendar = Some(Arc::new(Served::feed(
        body,
        crate::calendar::MEDIA_TYPE,
        at,
    )));
    for (name, media) in crate::render::FIXED {
        let (body, at) = read(&out.join(name))?;
        snapshot
            .fixed
            .insert(name, Arc::new(Served::feed(body, media, at)));
    }
    Some(snapshot)
}

/// Serves a feed; its `Last-Modified` comes from its content (its newest item), so it is the
/// same after a restart and goes down again when a wrong date is fixed.
fn insert_feed(snapshot: &mut Snapshot, feed: &RenderedFeed) {
    for ((ext, media), body) in FORMATS.iter().zip(&feed.bodies) {
        let modified = if *ext == "ics" {
            feed.calendar_modified
        } else {
            feed.last_modified
        };
        let time = modified.map_or(SystemTime::UNIX_EPOCH, system_time);
        let file = format!("{}.{ext}", feed.name);
        snapshot.feeds.insert(
            file,
            Arc::new(Served::feed(body.clone().into_bytes(), media, time)),
        );
    }
}

/// The home page's `Last-Modified`: the latest change of an article it can show.
fn index_time(library: &crate::library::Library, now: DateTime<FixedOffset>) -> SystemTime {
    library
        .visible(now)
        .next()
        .map_or(SystemTime::UNIX_EPOCH, |e| system_time(e.updated))
}

/// What the HTTP side serves from memory, from the front of a build.
fn front_snapshot(front: &crate::publish::Front<'_>, now: DateTime<FixedOffset>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for feed in front.feeds {
        insert_feed(&mut snapshot, feed);
    }
    snapshot.index = Some(Arc::new(Served::index(
        front.index.as_bytes().to_vec(),
        index_time(front.library, now),
    )));
    snapshot.calendar = Some(calendar_served(front.calendar.clone()));
    // The 404 page, the OPML list and the script, served from memory.
    let at = system_time(now);
    for (name, media, body) in front.fixed {
        let served = Served::feed(body.as_bytes().to_vec(), media, at);
        snapshot.fixed.insert(name, Arc::new(served));
    }
    snapshot
}

/// The served form of the site's calendar; `Last-Modified` from its latest event edit.
fn calendar_served((ics, modified): (String, Option<DateTime<FixedOffset>>)) -> Arc<Served> {
    Arc::new(Served::feed(
        ics.into_bytes(),
        crate::calendar::MEDIA_TYPE,
        modified.map_or(SystemTime::UNIX_EPOCH, system_time),
    ))
}

/// (device, inode) of a folder.
fn dir_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

//! `bantin run`: the daemon. It wires the parts together and owns shutdown and systemd
//! notification.
//!
//! - The engine thread owns the library. It takes file events (debounced), rescans the store
//!   periodically, publishes scheduled articles when they come due, and republishes only what a
//!   change touches: the page, the feeds of the article's category, the index. It also pings
//!   the systemd watchdog while it is healthy.
//! - The HTTP server serves feeds and the index from memory (a snapshot the engine replaces)
//!   and pages from `output.dir`.
//! - Signals: SIGTERM and SIGINT stop the daemon gracefully; SIGHUP reloads the configuration,
//!   feed definitions and templates (a broken reload keeps the running ones).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use sd_notify::NotifyState;

use crate::article::Article;
use crate::config::Config;
use crate::http::{AppState, Limits, Served, Snapshot};
use crate::library::{Change, Entry, Library};
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::publish::{FORMATS, Publisher, RenderedFeed};
use crate::store::{Schedule, Store};
use crate::watch::{Debouncer, StoreWatch};

/// The engine wakes at least this often, to ping the watchdog and notice a stop.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// File events taken in one turn of the engine loop before it does the work they ask for.
const MAX_EVENTS_PER_TURN: usize = 10_000;

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bantin")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let reload = Arc::new(tokio::sync::Notify::new());
        spawn_signal_handler(stop_tx, reload.clone())?;
        run_until(config, reload, async {
            let _ = stop_rx.await;
        })
        .await
    })
}

fn spawn_signal_handler(
    stop: tokio::sync::oneshot::Sender<()>,
    reload: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading"); reload.notify_one(); }
            }
        }
        let _ = stop.send(());
    });
    Ok(())
}

/// Messages to the engine thread.
enum Msg {
    Fs(notify::Result<notify::Event>),
    Reload(Box<Publisher>),
    Stop,
}

/// What the engine tells the mail side.
pub enum MailEvent {
    /// Articles that became visible (new, or come due); bodies already read come along.
    Published(Vec<Arc<Entry>>, Vec<Arc<Article>>),
    /// Articles deleted or moved back into the future.
    Removed(Vec<String>),
    /// Every visible article, after a full rebuild (reload).
    Resync(Vec<Arc<Entry>>),
}

/// Runs the daemon until `shutdown` completes; `reload` asks for a configuration reload.
pub async fn run_until(
    config: Config,
    reload: Arc<tokio::sync::Notify>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let publisher = Publisher::from_config(&config).map_err(|problems| {
        anyhow::anyhow!(
            "cannot start: fix these and run 'bantin check':\n{}",
            problems.join("\n")
        )
    })?;
    if crate::publish::is_inside(&config.output.dir, &config.store.dir) {
        anyhow::bail!(
            "output.dir '{}' is inside store.dir '{}': choose a folder outside the store",
            config.output.dir.display(),
            config.store.dir.display()
        );
    }
    std::fs::create_dir_all(&config.output.dir)
        .with_context(|| format!("cannot create output.dir '{}'", config.output.dir.display()))?;
    std::fs::create_dir_all(&config.state.dir)
        .with_context(|| format!("cannot create state.dir '{}'", config.state.dir.display()))?;
    let store = Store::open(&config.state.dir)
        .map_err(|e| anyhow::anyhow!("{e} (is another bantin running with the same state.dir?)"))?;
    // The mail side and the subscription pages share the publisher's templates; a reload
    // swaps them for all.
    let mail_templates: crate::site::SharedTemplates =
        Arc::new(std::sync::RwLock::new(publisher.templates.clone()));
    let mailer = Arc::new(
        Mailer::new(&config, store.clone(), mail_templates.clone())
            .map_err(|e| anyhow::anyhow!("cannot set up mail: {e}"))?,
    );
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let addr = listener.local_addr().context("no local address")?;

    let metrics = Arc::new(Metrics::default());
    let app = Arc::new(AppState::new(
        config.output.dir.join("articles"),
        metrics.clone(),
    ));
    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    let (mail_tx, mut mail_rx) = tokio::sync::mpsc::unbounded_channel::<MailEvent>();
    let started = Instant::now();
    let engine = {
        let app = app.clone();
        let publisher = Arc::new(publisher);
        tokio::task::spawn_blocking(move || {
            Engine::start(publisher, app, tx.clone(), mail_tx).map(|e| (e, tx))
        })
        .await
        .context("the engine panicked while starting")??
    };
    let (engine, tx) = engine;
    let visible: Vec<Arc<Entry>> = engine.library.visible(engine.horizon).cloned().collect();
    mailer
        .startup(visible)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start mail: {e}"))?;
    tracing::info!(
        articles = engine.library.len(),
        broken = engine.errors.len(),
        feeds = engine.publisher.feeds.len(),
        "published the store in {:.2?}",
        started.elapsed()
    );
    let status = engine.status();
    let engine_thread = std::thread::Builder::new()
        .name("bantin-engine".into())
        .spawn(move || engine.run(rx))
        .context("cannot start the engine thread")?;

    let limits = Limits {
        header_timeout: Duration::from_secs(config.http.header_timeout_secs),
        max_connections: config.http.max_connections,
        max_body_bytes: config.http.max_body_bytes,
        drain: Duration::from_secs(config.http.drain_secs),
    };
    // Mail: the delivery worker, the engine's events, the digests, the admin socket.
    let mail_stop = Arc::new(tokio::sync::Notify::new());
    let worker = tokio::spawn(mailer.clone().run(mail_stop.clone()));
    let events = {
        let mailer = mailer.clone();
        tokio::spawn(async move {
            while let Some(event) = mail_rx.recv().await {
                let result = match event {
                    MailEvent::Published(entries, bodies) => {
                        for body in bodies {
                            mailer.remember(body);
                        }
                        mailer.published(entries).await
                    }
                    MailEvent::Removed(ids) => {
                        let mut result = Ok(());
                        for id in ids {
                            result = result.and(mailer.removed(&id).await);
                        }
                        result
                    }
                    MailEvent::Resync(entries) => mailer.startup(entries).await,
                };
                if let Err(e) = result {
                    tracing::error!("mail: {e}");
                }
            }
        })
    };
    let tz = config.timezone().map_err(|e| anyhow::anyhow!(e))?;
    let mut digests = Vec::new();
    for (schedule, expr) in [
        (Schedule::Daily, &config.digest.daily),
        (Schedule::Weekly, &config.digest.weekly),
    ] {
        let cron: cron::Schedule = expr
            .parse()
            .map_err(|e| anyhow::anyhow!("digest.{}: {e}", schedule.as_str()))?;
        digests.push(tokio::spawn(digest_loop(
            mailer.clone(),
            schedule,
            cron,
            tz,
        )));
    }
    let admin = spawn_admin_socket(&config, store.clone(), mailer.clone())?;
    let pruner = tokio::spawn(prune_loop(store.clone(), config.mail.keep_days));
    {
        let mailer = mailer.clone();
        *app.extra_metrics.lock().expect("metrics") = Some(Box::new(move |out: &mut String| {
            mailer.metrics.render(out, mailer.queued());
        }));
    }
    let subscribe = crate::subscribe::SubscribeState::new(
        mailer.clone(),
        mail_templates.clone(),
        crate::feed::SiteInfo::new(&config.site.title, config.base_url(), &config.site.language),
        config.mail.subscribe_per_hour,
    );
    let router = crate::http::router(
        app.clone(),
        crate::subscribe::router(Arc::new(subscribe)),
        &limits,
    );
    app.healthy.store(true, Ordering::Relaxed);
    tracing::info!("listening on http://{addr}");
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);

    let reloader = {
        let tx = tx.clone();
        let original = config.clone();
        let shared = mail_templates.clone();
        tokio::spawn(async move {
            loop {
                reload.notified().await;
                notify(&[NotifyState::Reloading]);
                match reload_publisher(&original) {
                    Ok(publisher) => {
                        // Pages of the subscription routes and mails use the new ones too.
                        *shared.write().expect("templates lock") = publisher.templates.clone();
                        let _ = tx.send(Msg::Reload(Box::new(publisher)));
                    }
                    Err(e) => {
                        tracing::error!("reload failed, keeping the running configuration: {e:#}")
                    }
                }
                notify(&[NotifyState::Ready]);
            }
        })
    };

    let drain = limits.drain;
    crate::http::serve(listener, router, limits, shutdown).await;
    app.healthy.store(false, Ordering::Relaxed);
    reloader.abort();
    admin.abort();
    pruner.abort();
    for d in &digests {
        d.abort();
    }
    let _ = tx.send(Msg::Stop);
    let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    events.abort();
    // Mails in flight finish (or the deadline passes); the rest stay queued for next time.
    mail_stop.notify_one();
    if tokio::time::timeout(drain, worker).await.is_err() {
        tracing::warn!(
            "mails still in flight after {drain:?}; they will be retried at the next start"
        );
    }
    if let Err(e) = store.flush_async().await {
        tracing::error!("cannot flush the state: {e}");
    }
    let _ = std::fs::remove_file(config.state.dir.join(crate::admin::SOCKET));
    notify(&[NotifyState::Stopping]);
    tracing::info!("stopped");
    Ok(())
}

/// Runs the digests of one schedule: a missed tick is caught up once at start, then every
/// tick of the cron expression, in the council's time zone.
async fn digest_loop(
    mailer: Arc<Mailer>,
    schedule: Schedule,
    cron: cron::Schedule,
    tz: chrono_tz::Tz,
) {
    let last_run = format!("digest\0{}", schedule.as_str());
    let first_start = format!("digest-start\0{}", schedule.as_str());
    let now = Utc::now().with_timezone(&tz);
    let known = |key: &str| mailer.store.meta_i64(key).ok().flatten();
    let last = match known(&last_run).or_else(|| known(&first_start)) {
        Some(t) => tz.timestamp_opt(t, 0).single().unwrap_or(now),
        None => {
            // First start: digests begin with the next tick.
            let _ = mailer.store.set_meta_i64(&first_start, now.timestamp());
            let _ = mailer.store.flush();
            now
        }
    };
    if let Some(tick) = crate::plan::missed_tick(&cron, &last, &now) {
        tracing::info!(
            schedule = schedule.as_str(),
            "catching up the digest missed at {}",
            tick.to_rfc3339()
        );
        if let Err(e) = mailer.digest(schedule, tick.fixed_offset()).await {
            tracing::error!("digest: {e}");
        }
    }
    loop {
        let now = Utc::now().with_timezone(&tz);
        let Some(next) = cron.after(&now).next() else {
            return;
        };
        // Sleep in steps, so a clock change is noticed.
        loop {
            let left = (next - Utc::now().with_timezone(&tz))
                .to_std()
                .unwrap_or_default();
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(Duration::from_secs(60))).await;
        }
        if let Err(e) = mailer.digest(schedule, next.fixed_offset()).await {
            tracing::error!("digest: {e}");
        }
    }
}

/// Once a day (and at start), removes finished deliveries older than `keep_days`.
async fn prune_loop(store: Store, keep_days: u64) {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    loop {
        let before = Utc::now().timestamp_millis()
            - (keep_days as i64).saturating_mul(DAY.as_millis() as i64);
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.prune_finished(before)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                removed = n,
                "pruned finished deliveries older than {keep_days} days"
            ),
            Ok(Err(e)) => tracing::error!("cannot prune the outbox: {e}"),
            Err(e) => tracing::error!("cannot prune the outbox: {e}"),
        }
        tokio::time::sleep(DAY).await;
    }
}

/// Serves `subscribers` and `status` for the CLI while the daemon holds the database.
fn spawn_admin_socket(
    config: &Config,
    store: Store,
    mailer: Arc<Mailer>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let path = config.state.dir.join(crate::admin::SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot create the admin socket '{}'", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let store_dir = config.store.dir.clone();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (store, mailer, store_dir) = (store.clone(), mailer.clone(), store_dir.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if tokio::io::BufReader::new(read)
                    .read_line(&mut line)
                    .await
                    .is_err()
                {
                    return;
                }
                let reply = match serde_json::from_str::<crate::admin::Request>(&line) {
                    Ok(request) => tokio::task::spawn_blocking(move || {
                        let wake = || mailer.wake.notify_one();
                        let ctx = crate::admin::Context {
                            store: &store,
                            store_dir: &store_dir,
                            on_queued: &wake,
                        };
                        crate::admin::execute(&ctx, request)
                    })
                    .await
                    .unwrap_or_default(),
                    Err(e) => crate::admin::Reply {
                        code: 2,
                        stdout: String::new(),
                        stderr: format!("error: bad request: {e}\n"),
                    },
                };
                let mut out = serde_json::to_string(&reply).expect("serializable");
                out.push('\n');
                let _ = write.write_all(out.as_bytes()).await;
            });
        }
    }))
}

/// Loads the configuration again from the same place and the parts it names.
fn reload_publisher(original: &Config) -> anyhow::Result<Publisher> {
    let config = match &original.source {
        Some(path) => Config::from_file(path)?,
        None => Config::locate(None)?,
    };
    if config.http.listen != original.http.listen
        || config.state.dir != original.state.dir
        || config.output.dir != original.output.dir
    {
        tracing::warn!(
            "http.listen, state.dir and output.dir take effect at the next restart; \
             the running values stay"
        );
    }
    let mut publisher = Publisher::from_config(&config)
        .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
    publisher.out = original.output.dir.clone();
    Ok(publisher)
}

/// Sends a systemd notification; a no-op without `NOTIFY_SOCKET`.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

fn now() -> DateTime<FixedOffset> {
    Utc::now().fixed_offset()
}

fn system_time(t: DateTime<FixedOffset>) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
}

/// The engine: owns the library and republishes what changes.
struct Engine {
    publisher: Arc<Publisher>,
    library: Library,
    /// Files of the store that are broken, by path relative to the store, with the stamp they
    /// were read at (an unchanged broken file is not read and logged again at every rescan).
    errors: HashMap<String, crate::library::Stamp>,
    app: Arc<AppState>,
    /// Articles published up to this time; later ones are scheduled.
    horizon: DateTime<FixedOffset>,
    /// Last-Modified of each feed file, never going back.
    feed_times: HashMap<String, SystemTime>,
    /// The articles each feed lists: the bodies worth keeping in memory.
    feed_ids: HashMap<String, Vec<String>>,
    index_time: SystemTime,
    watch: Option<StoreWatch>,
    /// Identity (device, inode) of the watched store folder, to notice it replaced.
    watched_root: Option<(u64, u64)>,
    tx: Sender<Msg>,
    /// Tells the mail side what was published or removed.
    mail: tokio::sync::mpsc::UnboundedSender<MailEvent>,
    rescan_every: Duration,
    next_rescan: Instant,
    watchdog: Option<(Duration, Instant)>,
}

impl Engine {
    /// Reads the whole store, publishes it, and starts watching.
    fn start(
        publisher: Arc<Publisher>,
        app: Arc<AppState>,
        tx: Sender<Msg>,
        mail: tokio::sync::mpsc::UnboundedSender<MailEvent>,
    ) -> anyhow::Result<Engine> {
        let mut engine = Engine {
            publisher,
            library: Library::default(),
            errors: HashMap::new(),
            app,
            horizon: now(),
            feed_times: HashMap::new(),
            feed_ids: HashMap::new(),
            index_time: SystemTime::UNIX_EPOCH,
            watch: None,
            watched_root: None,
            tx,
            mail,
            rescan_every: Duration::from_secs(60),
            next_rescan: Instant::now(),
            watchdog: sd_notify::watchdog_enabled().map(|d| (d / 2, Instant::now())),
        };
        engine.full_build()?;
        engine.start_watch();
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
        let now = now();
        let built = self
            .publisher
            .build_from(files, now, &AtomicUsize::new(0))
            .with_context(|| {
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
        let mut snapshot = Snapshot::default();
        self.feed_ids.clear();
        for feed in &built.feeds {
            let time = feed
                .last_modified
                .map_or(SystemTime::UNIX_EPOCH, system_time);
            self.insert_feed(&mut snapshot, feed, time);
            self.feed_ids.insert(feed.name.clone(), feed.ids.clone());
        }
        self.index_time = self
            .library
            .visible(now)
            .next()
            .map_or(SystemTime::UNIX_EPOCH, |e| system_time(e.updated));
        snapshot.index = Some(Arc::new(Served::index(
            built.index.into_bytes(),
            self.index_time,
        )));
        self.app.replace(snapshot);
        self.update_metrics();
        self.app
            .metrics
            .rebuild(started.elapsed(), built.feeds.len());
        self.rescan_every = self.rescan_interval();
        self.next_rescan = Instant::now() + self.rescan_every;
        Ok(())
    }

    fn rescan_interval(&self) -> Duration {
        // The interval lives in the configuration the publisher was made from.
        Duration::from_secs(self.publisher.rescan_secs.max(1))
    }

    fn insert_feed(&mut self, snapshot: &mut Snapshot, feed: &RenderedFeed, time: SystemTime) {
        for ((ext, media), body) in FORMATS.iter().zip(&feed.bodies) {
            let file = format!("{}.{ext}", feed.name);
            let time = match self.feed_times.get(&file) {
                Some(old) if *old > time => *old,
                _ => time,
            };
            self.feed_times.insert(file.clone(), time);
            snapshot.feeds.insert(
                file,
                Arc::new(Served::feed(body.clone().into_bytes(), media, time)),
            );
        }
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

    fn status(&self) -> String {
        format!(
            "{} articles ({} scheduled, {} broken), {} feeds",
            self.library.len(),
            self.library.scheduled(self.horizon),
            self.errors.len(),
            self.publisher.feeds.len()
        )
    }

    fn update_metrics(&self) {
        let m = &self.app.metrics;
        let scheduled = self.library.scheduled(self.horizon);
        m.articles
            .store(self.library.len() as u64, Ordering::Relaxed);
        m.articles_scheduled
            .store(scheduled as u64, Ordering::Relaxed);
        m.article_errors
            .store(self.errors.len() as u64, Ordering::Relaxed);
    }

    /// The main loop: events, due articles, rescans, the watchdog, until told to stop.
    fn run(mut self, rx: Receiver<Msg>) {
        let mut debouncer = Debouncer::default();
        loop {
            let wake = [
                debouncer.deadline(),
                self.library
                    .next_due(self.horizon)
                    .map(|t| Instant::now() + (t - now()).to_std().unwrap_or_default()),
                Some(self.next_rescan),
                self.watchdog.map(|(_, at)| at),
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
                break;
            }
            let (paths, rescan) = debouncer.take_ready(Instant::now());
            if rescan || Instant::now() >= self.next_rescan {
                self.rescan();
            } else if !paths.is_empty() {
                self.handle_paths(paths);
            }
            if self
                .library
                .next_due(self.horizon)
                .is_some_and(|t| t <= now())
            {
                self.publish_changes(Vec::new(), HashMap::new(), Instant::now());
            }
            self.ping_watchdog();
        }
    }

    fn ping_watchdog(&mut self) {
        let Some((every, at)) = self.watchdog else {
            return;
        };
        if Instant::now() < at {
            return;
        }
        // Healthy: the store can be read and the engine is turning.
        if std::fs::read_dir(&self.publisher.reader.root).is_ok() {
            notify(&[NotifyState::Watchdog]);
        } else {
            tracing::warn!("store unreadable; withholding the watchdog ping");
        }
        self.watchdog = Some((every, Instant::now() + every));
    }

    fn reload(&mut self, publisher: Publisher) {
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
        let mut fresh = HashMap::new();
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
                return self.rescan();
            }
            let Some(id) = crate::article::id_for(&rel) else {
                if !self
                    .library
                    .ids_under(&crate::scan::rel_string(&rel))
                    .is_empty()
                {
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
                    self.read_one(&found, &mut changes, &mut fresh);
                }
            }
        }
        self.publish_changes(changes, fresh, seen);
    }

    fn read_one(
        &mut self,
        found: &crate::scan::Found,
        changes: &mut Vec<Change>,
        fresh: &mut HashMap<String, Arc<Article>>,
    ) {
        let key = found.file.clone();
        match self.publisher.reader.read(found) {
            Ok(article) => {
                if self.errors.remove(&key).is_some() {
                    tracing::info!(file = found.file, "article fixed");
                }
                let entry = self.publisher.reader.entry(found, &article);
                let article = Arc::new(article);
                self.publisher.remember(found.stamp, article.clone());
                if let Some(change) = self.library.upsert(entry) {
                    match &change {
                        Change::Added(_) => tracing::info!(id = found.id, "article added"),
                        _ => tracing::info!(id = found.id, "article updated"),
                    }
                    fresh.insert(found.id.clone(), article);
                    changes.push(change);
                }
            }
            Err(e) => {
                // The last good version, if any, stays published.
                tracing::warn!("{e}");
                self.errors.insert(key, found.stamp);
                self.update_metrics();
            }
        }
    }

    /// Walks the whole store again and applies what differs.
    fn rescan(&mut self) {
        let seen = Instant::now();
        self.next_rescan = seen + self.rescan_every;
        self.app.metrics.rescans.fetch_add(1, Ordering::Relaxed);
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
        let mut fresh = HashMap::new();
        let present: HashSet<&str> = files.iter().map(|f| f.id.as_str()).collect();
        let gone: Vec<String> = self
            .library
            .iter()
            .filter(|e| !present.contains(e.id.as_str()))
            .map(|e| e.id.clone())
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
                self.read_one(found, &mut changes, &mut fresh);
            }
        }
        self.publish_changes(changes, fresh, seen);
    }

    /// Republishes what `changes` touch, and articles that came due.
    fn publish_changes(
        &mut self,
        changes: Vec<Change>,
        fresh: HashMap<String, Arc<Article>>,
        seen: Instant,
    ) {
        let now = now();
        let visible = |e: &Entry| e.published <= now;
        let mut touched: HashSet<String> = HashSet::new();
        let mut pages: Vec<Arc<Entry>> = Vec::new();
        let mut gone_pages: Vec<String> = Vec::new();
        for change in &changes {
            match change {
                Change::Added(new) => {
                    if visible(new) {
                        touched.insert(new.category.clone());
                        pages.push(new.clone());
                    }
                }
                Change::Updated { old, new } => {
                    if visible(old) {
                        touched.insert(old.category.clone());
                    }
                    if visible(new) {
                        touched.insert(new.category.clone());
                        pages.push(new.clone());
                    } else if visible(old) {
                        gone_pages.push(old.id.clone());
                    }
                }
                Change::Removed(old) => {
                    self.publisher.forget(&old.id);
                    if visible(old) {
                        touched.insert(old.category.clone());
                        gone_pages.push(old.id.clone());
                    }
                }
            }
        }
        // Articles whose time came since the last pass.
        let due: Vec<Arc<Entry>> = self
            .library
            .visible(now)
            .take_while(|e| e.published > self.horizon)
            .filter(|e| !pages.iter().any(|p| p.id == e.id))
            .cloned()
            .collect();
        for entry in &due {
            tracing::info!(id = entry.id, "scheduled article published");
            touched.insert(entry.category.clone());
            pages.push(entry.clone());
        }
        self.horizon = self.horizon.max(now);
        if touched.is_empty() && gone_pages.is_empty() {
            self.update_metrics();
            return;
        }

        // Memory first (readers see the change at once), then the files.
        let defs: Vec<_> = self
            .publisher
            .feeds
            .iter()
            .filter(|d| touched.iter().any(|c| d.includes(c)))
            .cloned()
            .collect();
        let rendered = self.publisher.render_feeds(&defs, &self.library, now);
        let index = self.publisher.render_index(&self.library, now);
        let mut snapshot = (*self.app.snapshot()).clone();
        let wall = SystemTime::now();
        for feed in &rendered {
            let time = feed
                .last_modified
                .map_or(wall, |t| system_time(t).max(wall));
            self.insert_feed(&mut snapshot, feed, time);
        }
        match &index {
            Ok(html) => {
                self.index_time = self.index_time.max(wall);
                snapshot.index = Some(Arc::new(Served::index(
                    html.clone().into_bytes(),
                    self.index_time,
                )));
            }
            Err(e) => tracing::error!("{e}"),
        }
        self.app.replace(snapshot);

        for id in &gone_pages {
            if let Err(e) = self.publisher.remove_page(id) {
                tracing::error!(id, "cannot remove the page: {e}");
            }
        }
        for entry in &pages {
            let article = match fresh.get(&entry.id) {
                Some(a) => Some(a.clone()),
                None => self.read_body(entry),
            };
            if let Some(article) = article
                && let Err(e) = self.publisher.write_page(&article)
            {
                tracing::error!("{e}");
            }
        }
        for feed in &rendered {
            if let Err(e) = self.publisher.write_feed(feed) {
                tracing::error!(feed = feed.name, "cannot write the feed: {e}");
            }
            self.feed_ids.insert(feed.name.clone(), feed.ids.clone());
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
        if let Ok(html) = &index
            && let Err(e) = self.publisher.write_index(html)
        {
            tracing::error!("cannot write index.html: {e}");
        }
        // The mail side decides what is news (an edit is not) and cancels what went.
        if !pages.is_empty() {
            let bodies = pages
                .iter()
                .filter_map(|e| fresh.get(&e.id).cloned())
                .collect();
            let _ = self.mail.send(MailEvent::Published(pages.clone(), bodies));
        }
        if !gone_pages.is_empty() {
            let _ = self.mail.send(MailEvent::Removed(gone_pages.clone()));
        }
        self.update_metrics();
        self.app.metrics.rebuild(seen.elapsed(), rendered.len());
        tracing::debug!(
            feeds = rendered.len(),
            pages = pages.len(),
            "republished in {:.2?}",
            seen.elapsed()
        );
        notify(&[NotifyState::Status(&self.status())]);
    }

    fn read_body(&self, entry: &Entry) -> Option<Arc<Article>> {
        let found = crate::scan::Found {
            file: entry.file.clone(),
            path: self.publisher.reader.root.join(&entry.file),
            id: entry.id.clone(),
            stamp: entry.stamp,
        };
        match self.publisher.reader.read(&found) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }
}

/// (device, inode) of a folder.
fn dir_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

//! `bantin run`: the daemon. It wires the parts together and owns shutdown and systemd
//! notification.
//!
//! - [`engine`]: the engine thread owns the library and republishes what a change touches.
//! - [`tasks`]: the background tasks: mail events, digests, pruning, the admin socket,
//!   reloads.
//! - The HTTP server serves feeds and the index from memory (a snapshot the engine replaces)
//!   and pages from `output.dir`.
//! - Signals: SIGTERM and SIGINT stop the daemon gracefully; SIGHUP reloads the configuration,
//!   feed definitions and templates (a broken reload keeps the running ones).

pub mod engine;
pub mod tasks;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::registry::Registry;
use sd_notify::NotifyState;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::Config;
use crate::http::{AppState, Limits};
use crate::library::Entry;
use crate::mail::Mail;
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::store::Store;
use engine::{Engine, MailEvent, Msg};

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    // At least two workers: the mail's group commit blocks one for each sync of the
    // journal of sent mails (see `mail::worker`); the site keeps answering on the other.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
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

/// The daemon's sockets: the public site, and the private metrics (if any).
pub struct Listeners {
    pub http: TcpListener,
    pub metrics: Option<TcpListener>,
}

/// Runs the daemon on `http.listen` (and `http.metrics_listen`) with the system clock until
/// `shutdown` completes; `reload` asks for a configuration reload.
pub async fn run_until(
    config: Config,
    reload: Arc<tokio::sync::Notify>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let http = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let metrics = match config.http.metrics_addr() {
        None => None,
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on http.metrics_listen {addr} (set it empty to turn it off)")
        })?),
    };
    let listeners = Listeners { http, metrics };
    serve(config, listeners, Clock::system(), reload, shutdown).await
}

/// Runs the daemon on `listener`, reading the time from `clock`, until `shutdown`
/// completes. Shutdown order: stop accepting, drain HTTP, stop the engine, let the mails in
/// flight finish (with a deadline), flush the state, `STOPPING=1`.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    clock: Clock,
    reload: Arc<tokio::sync::Notify>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (publisher, store) = open(&config)?;
    let Listeners {
        http: listener,
        metrics: metrics_listener,
    } = listeners;
    let addr = listener.local_addr().context("no local address")?;

    // The mail side and the subscription pages share the publisher's templates (a reload
    // swaps them for all) and its article cache.
    let templates: crate::site::SharedTemplates =
        Arc::new(std::sync::RwLock::new(publisher.templates.clone()));
    let site = crate::site::share_site(publisher.site.clone());
    let mail = Mail::setup(
        &config,
        store.clone(),
        templates.clone(),
        site.clone(),
        publisher.articles.clone(),
        clock.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot set up mail: {e}"))?;

    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    mail.metrics.register(&mut registry, &mail.outbox);
    let app = Arc::new(AppState::new(
        &config.output.dir,
        metrics.clone(),
        Arc::new(registry),
    ));

    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    let (mail_tx, mail_rx) = tokio::sync::mpsc::unbounded_channel::<MailEvent>();
    let started = Instant::now();
    let categories: crate::subscriber::KnownCategories = Arc::default();
    let search =
        Arc::new(crate::search::Search::in_folder(&config.state.dir).with_metrics(metrics.clone()));
    let find = crate::find::FindState {
        search: search.clone(),
        templates: templates.clone(),
        site: site.clone(),
        articles: publisher.articles.clone(),
        reader: publisher.reader.clone(),
    };
    let (websub_tx, websub_rx) = match &config.feeds.websub_hub {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let limits = Limits {
        header_timeout: Duration::from_secs(config.http.header_timeout_secs),
        max_connections: config.http.max_connections,
        max_per_client: config.http.max_connections_per_client.max(1),
        trusted: config.http.trusted(),
        request_timeout: Duration::from_secs(config.http.request_timeout_secs.max(1)),
        write_timeout: Duration::from_secs(config.http.write_timeout_secs.max(1)),
        max_body_bytes: config.http.max_body_bytes,
        drain: Duration::from_secs(config.http.drain_secs),
        probe_port: Arc::default(),
    };
    let mut subscribe = crate::subscribe::SubscribeState::new(
        mail.outbox.clone(),
        mail.links.clone(),
        categories.clone(),
        templates.clone(),
        site.clone(),
        config.mail.subscribe_per_hour,
    );
    subscribe.trusted = config.http.trusted();
    subscribe.confirm_secs = (config.mail.confirm_days as i64).saturating_mul(24 * 3600);
    let router = crate::http::router(
        app.clone(),
        crate::subscribe::router(Arc::new(subscribe)).merge(crate::find::router(Arc::new(find))),
        &limits,
        site.clone(),
    );
    // The admin commands (status, subscribers) answer from the first moment.
    let mut background = vec![tasks::admin_socket(
        &config,
        mail.outbox.clone(),
        categories.clone(),
        mail.links.signer.clone(),
        metrics.article_errors.clone(),
    )?];
    if let Some(metrics) = metrics_listener {
        let metrics_addr = metrics.local_addr().context("no local address")?;
        let router = crate::http::metrics_router(app.clone());
        background.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics, router).await {
                tracing::error!("metrics listener: {e}");
            }
        }));
        tracing::info!("metrics on http://{metrics_addr}/metrics");
    }

    // A restart after a clean stop serves what that run left (each file was written whole)
    // while the engine checks the store behind it; a first start, or one after a crash or a
    // change of the configuration, serves once the engine has built.
    let early = engine::snapshot_from_disk(&publisher);
    let served_early = early.is_some();
    if let Some(snapshot) = early {
        app.replace(snapshot);
        app.healthy.store(true, Ordering::Relaxed);
        tracing::info!("serving the output of the last run while the store is checked");
        tracing::info!("listening on http://{addr}");
        notify(&[
            NotifyState::Ready,
            NotifyState::Status("serving the last output; checking the store"),
        ]);
    }
    let serving = crate::http::serve(listener, router, limits.clone(), shutdown);
    tokio::pin!(serving);
    // systemd runs the watchdog from READY=1 on, and the engine's loop feeds it only once it
    // has started: while the site is served and the engine still starts, it is fed here.
    if let Some(period) = sd_notify::watchdog_enabled() {
        let app = app.clone();
        background.push(tokio::spawn(async move {
            while !app.started.load(Ordering::Relaxed) {
                if app.healthy.load(Ordering::Relaxed) {
                    notify(&[NotifyState::Watchdog]);
                }
                tokio::time::sleep(period / 2).await;
            }
        }));
    }

    let starting = async {
        let engine = {
            let (app, clock, tx) = (app.clone(), clock.clone(), tx.clone());
            let categories = categories.clone();
            let health = mail.outbox.health.clone();
            let publisher = Arc::new(publisher);
            let shared = engine::Shared {
                app,
                clock,
                metrics: metrics.clone(),
                categories,
                health,
                search: search.clone(),
                websub: websub_tx,
            };
            tokio::task::spawn_blocking(move || Engine::start(publisher, shared, tx, mail_tx))
                .await
                .context("the engine panicked while starting")??
        };
        let visible: Vec<Arc<Entry>> = engine.library.visible(engine.horizon).cloned().collect();
        mail.outbox
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
        // The parts the watchdog waits on start now: a long first build or mail startup is
        // not a hang of theirs.
        mail.outbox.health.http.beat();
        mail.outbox.health.worker.beat();
        let engine_thread = std::thread::Builder::new()
            .name("bantin-engine".into())
            .spawn(move || engine.run(rx))
            .context("cannot start the engine thread")?;

        let mail_stop = Arc::new(tokio::sync::Notify::new());
        let worker = tokio::spawn(mail.worker.clone().run(mail_stop.clone()));
        let tz = config.timezone().map_err(|e| anyhow::anyhow!(e))?;
        let events = tokio::spawn(tasks::mail_events(mail.outbox.clone(), mail_rx));
        background.extend([
            tokio::spawn(tasks::prune(
                store.clone(),
                clock.clone(),
                config.mail.keep_days,
                config.mail.confirm_days,
            )),
            tokio::spawn(tasks::clock_ticks(clock.clone(), tx.clone())),
            tokio::spawn(tasks::settled_alerts(mail.outbox.clone())),
            tokio::spawn(tasks::state_guard(mail.outbox.clone())),
            tokio::spawn(tasks::http_probe(
                addr,
                limits.probe_port.clone(),
                mail.outbox.health.clone(),
            )),
            tokio::spawn(tasks::reloads(
                config.clone(),
                reload,
                templates.clone(),
                (site.clone(), mail.links.clone()),
                tx.clone(),
            )),
        ]);
        if let (Some(hub), Some(rx)) = (&config.feeds.websub_hub, websub_rx) {
            background.push(tokio::spawn(crate::websub::notifier(
                hub.clone(),
                site.clone(),
                rx,
                metrics.clone(),
            )));
            tracing::info!(hub, "telling a WebSub hub of feed changes");
        }
        if let Some(dir) = &config.mail.inbox.dir {
            let local = crate::mail::bounce_local(&config.mail.return_path).to_owned();
            background.push(tokio::spawn(tasks::inbox(
                mail.outbox.clone(),
                mail.links.signer.clone(),
                dir.clone(),
                local,
                Duration::from_secs(config.mail.inbox.poll_secs.max(1)),
            )));
            tracing::info!(inbox = %dir.display(), "reading bounces and complaints");
        }
        for (schedule, cron) in tasks::digest_schedules(&config)? {
            background.push(tokio::spawn(tasks::digests(
                mail.outbox.clone(),
                schedule,
                cron,
                tz,
            )));
        }
        app.healthy.store(true, Ordering::Relaxed);
        app.started.store(true, Ordering::Relaxed);
        if !served_early {
            tracing::info!("listening on http://{addr}");
        }
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        anyhow::Ok((engine_thread, events, mail_stop, worker))
    };
    // Requests are answered while the engine starts (with what the last run left, or
    // "starting"); a stop asked meanwhile waits for the start to finish, then stops it.
    let mut stopped_early = false;
    let (engine_thread, events, mail_stop, worker) = {
        tokio::pin!(starting);
        tokio::select! {
            started = &mut starting => started?,
            () = &mut serving => {
                stopped_early = true;
                starting.await?
            }
        }
    };
    let running = Running {
        app,
        engine: tx,
        engine_thread,
        events,
        background,
        mail_stop,
        worker,
        store,
        drain: limits.drain,
        socket: config.state.dir.join(crate::admin::SOCKET),
    };
    if !stopped_early {
        serving.await;
    }
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Loads what the daemon publishes from and opens its state: every check that can refuse
/// to start comes before anything runs.
fn open(config: &Config) -> anyhow::Result<(Publisher, Store)> {
    let publisher = Publisher::from_config(config).map_err(|problems| {
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
    crate::output::create_public_dir(&config.output.dir)
        .with_context(|| format!("cannot create output.dir '{}'", config.output.dir.display()))?;
    crate::output::create_private_dir(&config.state.dir)
        .with_context(|| format!("cannot create state.dir '{}'", config.state.dir.display()))?;
    let cache = config.state.cache_mb.saturating_mul(1024 * 1024);
    let store = Store::open_with_cache(&config.state.dir, cache).map_err(|e| {
        if e.is_held() {
            anyhow::anyhow!("{e} (is another bantin running with the same state.dir?)")
        } else {
            anyhow::anyhow!("{e}")
        }
    })?;
    Ok((publisher, store))
}

/// What runs once the daemon serves, to be stopped in order.
struct Running {
    app: Arc<AppState>,
    engine: std::sync::mpsc::Sender<Msg>,
    engine_thread: std::thread::JoinHandle<()>,
    /// Carries the engine's news to the outbox: stopped after the engine.
    events: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
    mail_stop: Arc<tokio::sync::Notify>,
    worker: tokio::task::JoinHandle<()>,
    store: Store,
    /// How long the mails in flight may take to finish.
    drain: Duration,
    socket: std::path::PathBuf,
}

impl Running {
    /// After HTTP stopped: the tasks, the engine, the mails in flight (with a deadline), a
    /// last flush, `STOPPING=1`.
    async fn stop(self) {
        self.app.healthy.store(false, Ordering::Relaxed);
        for task in &self.background {
            task.abort();
        }
        let _ = self.engine.send(Msg::Stop);
        let engine = self.engine_thread;
        let _ = tokio::task::spawn_blocking(move || engine.join()).await;
        self.events.abort();
        // Mails in flight finish (or the deadline passes); the rest stay queued for next time.
        self.mail_stop.notify_one();
        let drain = self.drain;
        if tokio::time::timeout(drain, self.worker).await.is_err() {
            tracing::warn!(
                "mails still in flight after {drain:?}; they will be retried at the next start"
            );
        }
        if let Err(e) = self.store.flush_async().await {
            tracing::error!("cannot flush the state: {e}");
        }
        let _ = std::fs::remove_file(&self.socket);
        notify(&[NotifyState::Stopping]);
    }
}

/// Sends a systemd notification; a no-op without `NOTIFY_SOCKET`.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

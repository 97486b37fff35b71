//! The daemon's background tasks, one function each: they run until aborted at shutdown.

use std::sync::Arc;
use std::sync::mpsc::Sender;

use anyhow::Context;
use chrono::TimeZone;

use super::engine::{MailEvent, Msg};
use super::notify;
use crate::clock::Clock;
use crate::config::Config;
use crate::mail::Outbox;
use crate::publish::Publisher;
use crate::store::Store;
use crate::subscriber::Schedule;
use sd_notify::NotifyState;

/// How often finished deliveries are pruned.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Hands the engine's news to the outbox, in order.
pub async fn mail_events(
    outbox: Outbox,
    mut events: tokio::sync::mpsc::UnboundedReceiver<MailEvent>,
) {
    while let Some(event) = events.recv().await {
        let result = match event {
            MailEvent::Published(entries) => outbox.published(entries).await,
            MailEvent::Removed(ids) => {
                let mut result = Ok(());
                for id in ids {
                    result = result.and(outbox.removed(&id).await);
                }
                result
            }
            MailEvent::Resync(entries) => outbox.startup(entries).await,
        };
        if let Err(e) = result {
            tracing::error!("mail: {e}");
        }
    }
}

/// Alerts new articles once they have been unchanged for `mail.alert_delay_secs`.
pub async fn settled_alerts(outbox: Outbox) {
    loop {
        match outbox.next_settled_ms() {
            None => outbox.settled.notified().await,
            Some(due) => {
                let at = chrono::DateTime::from_timestamp_millis(due).unwrap_or_default();
                tokio::select! {
                    () = outbox.clock.sleep_until(at) => {
                        if let Err(e) = outbox.alert_settled().await {
                            tracing::error!("mail: {e}");
                            // The state may be failing: not again at once.
                            outbox.clock.sleep(std::time::Duration::from_secs(5)).await;
                        }
                    }
                    () = outbox.settled.notified() => {}
                }
            }
        }
    }
}

/// Reads the Maildir the MTA delivers bounces, complaints and mailto unsubscribes into:
/// each message acts once, and leaves `new/` only once its effect is on disk.
pub async fn inbox(
    outbox: Outbox,
    signer: crate::token::Signer,
    dir: std::path::PathBuf,
    local: String,
    every: std::time::Duration,
) {
    use crate::mail::inbox;
    let counts = outbox.metrics.inbox.clone();
    loop {
        let files = match inbox::waiting(&dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!("cannot read the inbox '{}': {e}", dir.display());
                Vec::new()
            }
        };
        for path in files {
            let Ok(raw) = std::fs::read(&path) else {
                continue; // taken away meanwhile
            };
            let (o, s, l) = (outbox.clone(), signer.clone(), local.clone());
            let done = tokio::task::spawn_blocking(move || {
                inbox::process(&raw, &o.store, &o.clock, &s, &l)
            })
            .await;
            match done {
                Ok(Ok(finding)) => {
                    counts
                        .get_or_create(&inbox::KindLabel {
                            kind: finding.kind(),
                        })
                        .inc();
                    tracing::info!(file = %path.display(), kind = finding.kind(), "inbox message read");
                    if let Err(e) = inbox::file_away(&dir, &path) {
                        tracing::error!("cannot move '{}' to cur/: {e}", path.display());
                    }
                }
                // The state cannot be written: left in new/, read again later.
                Ok(Err(e)) => {
                    tracing::error!("inbox: {e}");
                    break;
                }
                Err(e) => tracing::error!("inbox: {e}"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// How often the daemon asks its own HTTP server for `/healthz`, and how long it waits.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Asks the daemon's own HTTP server for `/healthz`, as a client would; each answer is a
/// beat of [`crate::health::Health::http`], which the watchdog checks.
/// Its local port is announced in `port` before it connects, so the server does not count it
/// in the share of its address.
pub async fn http_probe(
    addr: std::net::SocketAddr,
    port: Arc<std::sync::atomic::AtomicU16>,
    health: crate::health::Health,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let probe = async {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .ok()?;
            let any = if addr.is_ipv4() {
                std::net::SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
            };
            socket.bind(any).ok()?;
            let local = socket.local_addr().ok()?;
            port.store(local.port(), std::sync::atomic::Ordering::Relaxed);
            let mut stream = socket.connect(addr).await.ok()?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: bantin\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.ok()?;
            answer.starts_with(b"HTTP/1.1 200").then_some(())
        };
        if let Ok(Some(())) = tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            health.http.beat();
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// The largest admin request (mails given to `inbox process` travel in it).
const ADMIN_MAX_REQUEST: u64 = 64 * 1024 * 1024;
/// How long an admin connection may take to send its request.
const ADMIN_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a state that failed a write is tried again.
const STATE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches the state: after a failed write (a full disk) it reopens the database until it
/// can be written again, then lets delivery resume. The error is logged once.
pub async fn state_guard(outbox: Outbox) {
    let store = outbox.store.clone();
    let mut failing = false;
    loop {
        tokio::time::sleep(STATE_RETRY).await;
        if !store.is_broken() {
            continue;
        }
        let s = store.clone();
        let now = outbox.clock.now_ms();
        match tokio::task::spawn_blocking(move || s.recover(now)).await {
            Ok(Ok(())) => {
                tracing::info!("the state can be written again; delivery resumes");
                failing = false;
                outbox.state_recovered();
            }
            Ok(Err(e)) if !failing => {
                tracing::error!("cannot write the state; retrying every second: {e}");
                failing = true;
            }
            _ => {}
        }
    }
}

/// Tells the engine when a manual clock moves, so what came due is published at once.
/// Never fires on the system clock.
pub async fn clock_ticks(clock: Clock, engine: Sender<Msg>) {
    loop {
        clock.changed().await;
        if engine.send(Msg::Tick).is_err() {
            return;
        }
    }
}

/// The cron schedules of the digests, parsed.
pub fn digest_schedules(config: &Config) -> anyhow::Result<Vec<(Schedule, cron::Schedule)>> {
    [
        (Schedule::Daily, &config.digest.daily),
        (Schedule::Weekly, &config.digest.weekly),
    ]
    .into_iter()
    .map(|(schedule, expr)| {
        expr.parse()
            .map(|cron| (schedule, cron))
            .map_err(|e| anyhow::anyhow!("digest.{}: {e}", schedule.as_str()))
    })
    .collect()
}

/// Runs the digests of one schedule: a missed tick is caught up once at start, then every
/// tick of the cron expression, in the council's time zone.
pub async fn digests(outbox: Outbox, schedule: Schedule, cron: cron::Schedule, tz: chrono_tz::Tz) {
    let clock = outbox.clock.clone();
    let store = &outbox.store;
    let now = clock.now().with_timezone(&tz);
    let known = store
        .last_digest(schedule)
        .ok()
        .flatten()
        .or_else(|| store.digest_start(schedule).ok().flatten());
    let last = match known {
        Some(t) => tz.timestamp_opt(t, 0).single().unwrap_or(now),
        None => {
            // First start: digests begin with the next tick.
            let _ = store.set_digest_start(schedule, now.timestamp());
            let _ = store.flush();
            now
        }
    };
    if let Some(tick) = crate::plan::missed_tick(&cron, &last, &now) {
        tracing::info!(
            schedule = schedule.as_str(),
            "catching up the digest missed at {}",
            tick.to_rfc3339()
        );
        if let Err(e) = outbox.digest(schedule, tick.fixed_offset()).await {
            tracing::error!("digest: {e}");
        }
    }
    let mut after = now.max(last);
    loop {
        let Some(next) = cron.after(&after).next() else {
            return;
        };
        clock.sleep_until(next.to_utc()).await;
        if let Err(e) = outbox.digest(schedule, next.fixed_offset()).await {
            tracing::error!("digest: {e}");
        }
        // A tick missed while asleep (a suspended machine) is not run twice over.
        after = clock.now().with_timezone(&tz).max(next);
    }
}

/// Once a day (and at start), compacts finished deliveries older than `keep_days`, removes
/// the logs of mails sent before then, and removes subscribers who did not confirm within
/// `confirm_days`.
pub async fn prune(store: Store, clock: Clock, keep_days: u64, confirm_days: u64) {
    loop {
        let before = clock.now_s() - (confirm_days as i64).saturating_mul(24 * 3600);
        match store.prune_pending(before) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                "deleted subscribers who did not confirm within {confirm_days} days"
            ),
            Err(e) => tracing::error!("cannot prune pending subscribers: {e}"),
        }
        let before =
            clock.now_ms() - (keep_days as i64).saturating_mul(PRUNE_EVERY.as_millis() as i64);
        // Blocking work on the state, off the async workers.
        let s = store.clone();
        let upkeep = tokio::task::spawn_blocking(move || {
            (
                s.compact_finished(before),
                s.prune_fanouts(before),
                s.prune_sent_logs(before),
            )
        })
        .await;
        match upkeep {
            Ok((compacted, fanouts, logs)) => {
                match compacted {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        compacted = n,
                        "compacted finished deliveries older than {keep_days} days"
                    ),
                    Err(e) => tracing::error!("cannot compact the outbox: {e}"),
                }
                if let Err(e) = fanouts {
                    tracing::error!("cannot prune finished fan-outs: {e}");
                }
                match logs {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        days = n,
                        "removed the logs of mails sent over {keep_days} days ago"
                    ),
                    Err(e) => tracing::error!("cannot prune the logs of sent mails: {e}"),
                }
            }
            Err(e) => tracing::error!("cannot compact the outbox: {e}"),
        }
        clock.sleep(PRUNE_EVERY).await;
    }
}

/// Reloads the configuration, feed definitions and templates on each SIGHUP; a broken
/// reload keeps the running ones.
pub async fn reloads(
    original: Config,
    reload: Arc<tokio::sync::Notify>,
    shared: crate::site::SharedTemplates,
    (site, links): (crate::site::SharedSite, crate::mail::Links),
    engine: Sender<Msg>,
) {
    loop {
        reload.notified().await;
        notify(&[NotifyState::Reloading]);
        match reload_publisher(&original) {
            Ok(publisher) => {
                // Pages of the subscription routes and mails use the new ones too, and the
                // new site.title and site.base_url.
                *shared.write().expect("templates lock") = publisher.templates.clone();
                *site.write().expect("site lock") = Arc::new(publisher.site.clone());
                links.set_base_url(&publisher.site.base_url);
                let _ = engine.send(Msg::Reload(Box::new(publisher)));
            }
            Err(e) => {
                tracing::error!("reload failed, keeping the running configuration: {e:#}")
            }
        }
        notify(&[NotifyState::Ready]);
    }
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
    // The mail side (its transport, relay, sender, keys) and the digest schedules are set up
    // once: a change is said, not silently dropped.
    let changed: Vec<&str> = [
        (
            "[mail]",
            format!("{:?}", config.mail) != format!("{:?}", original.mail),
        ),
        (
            "[digest]",
            format!("{:?}", config.digest) != format!("{:?}", original.digest),
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect();
    if !changed.is_empty() {
        tracing::warn!(
            "changes to {} take effect at the next restart (systemctl restart); \
             the running values stay",
            changed.join(" and ")
        );
    }
    let mut publisher = Publisher::from_config(&config)
        .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
    publisher.out = original.output.dir.clone();
    Ok(publisher)
}

/// Serves `subscribers` and `status` for the CLI while the daemon holds the database.
pub fn admin_socket(
    config: &Config,
    outbox: Outbox,
    categories: crate::subscriber::KnownCategories,
    signer: crate::token::Signer,
    article_errors: prometheus_client::metrics::gauge::Gauge,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let path = config.state.dir.join(crate::admin::SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot create the admin socket '{}'", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let store_dir = config.store.dir.clone();
    let return_path = config.mail.return_path.clone();
    // Checked when the configuration was read.
    let tz = config.timezone().unwrap_or(chrono_tz::UTC);
    let config_for_categories = Arc::new(config.clone());
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (outbox, store_dir) = (outbox.clone(), store_dir.clone());
            let categories = categories.clone();
            let config = config_for_categories.clone();
            let (signer, return_path) = (signer.clone(), return_path.clone());
            let article_errors = article_errors.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                // One request line, of bounded size, within a bounded time.
                let mut reader = tokio::io::BufReader::new(read.take(ADMIN_MAX_REQUEST));
                match tokio::time::timeout(ADMIN_IDLE, reader.read_line(&mut line)).await {
                    Ok(Ok(_)) if line.ends_with('\n') => {}
                    _ => return,
                }
                let reply = match serde_json::from_str::<crate::admin::Request>(&line) {
                    Ok(request) => tokio::task::spawn_blocking(move || {
                        let wake = || outbox.wake.notify_one();
                        let from_disk = std::sync::OnceLock::new();
                        let ctx = crate::admin::Context {
                            store: &outbox.store,
                            clock: &outbox.clock,
                            tz,
                            pause: outbox.paused(),
                            daemon: true,
                            // Before the engine has read the store, read from disk as the
                            // commands without the daemon do (once per request: it walks
                            // the store).
                            categories: &|| {
                                let known = categories.read().expect("categories").clone();
                                known.unwrap_or_else(|| {
                                    from_disk
                                        .get_or_init(|| {
                                            crate::publish::read_known_categories(&config)
                                        })
                                        .clone()
                                })
                            },
                            signer: Some(signer),
                            return_path: &return_path,
                            relay_utf8: outbox.relay_utf8.get(),
                            store_dir: &store_dir,
                            // Known once the store is read (the categories are set then).
                            broken: categories
                                .read()
                                .expect("categories")
                                .is_some()
                                .then(|| article_errors.get().max(0) as usize),
                            on_queued: &wake,
                            planned: &|article| outbox.unrecorded(article),
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

//! The delivery worker: takes due deliveries from the outbox, renders and sends them with a
//! bounded concurrency and an optional rate, retries temporary failures with jittered
//! exponential backoff, and records each outcome durably (group commit) before it takes the
//! slot back, so a crash repeats at most the mails in flight. Fresh deliveries always go
//! before retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::message::{ComposeError, Composer, Content, key_file_name};
use super::outbox::Outbox;
use super::transport::{SendError, Transport};
use crate::article::Article;
use crate::config::Config;
use crate::plan;
use crate::scan::{ArticleCache, Found, StoreReader};
use crate::store::{Delivery, DeliveryState, Kind, LANE_FRESH, LANE_RETRY, Queued, Store};
use crate::subscriber::{SubState, Subscriber};

/// Deliveries taken from the queue per look.
const BATCH: usize = 256;
/// With nothing queued, the worker looks again at least this often (it is woken on every
/// enqueue anyway).
const IDLE_LOOK: Duration = Duration::from_secs(60);

/// How retries are spaced and when they stop.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// A delivery older than this is given up instead of retried.
    pub lifetime_ms: i64,
}

/// Sends what the outbox holds.
pub struct Worker {
    outbox: Outbox,
    composer: Composer,
    transport: Transport,
    /// Bodies shared with publishing; a miss is read from the store.
    articles: Arc<ArticleCache>,
    reader: StoreReader,
    concurrency: usize,
    rate_per_second: f64,
    retry: RetryPolicy,
    commit: Committer,
}

/// What one delivery needs besides itself, read once before rendering.
enum Loaded {
    Alert(Arc<Article>),
    Digest(Vec<Arc<Article>>),
    Confirm(Option<Subscriber>),
}

impl Worker {
    pub fn new(
        config: &Config,
        outbox: Outbox,
        composer: Composer,
        transport: Transport,
        articles: Arc<ArticleCache>,
    ) -> Result<Worker, super::MailError> {
        Ok(Worker {
            outbox,
            composer,
            transport,
            articles,
            reader: StoreReader {
                root: config.store.dir.clone(),
                tz: config.timezone().map_err(super::MailError::Config)?,
                max_bytes: config.store.max_bytes,
            },
            concurrency: config.mail.concurrency.max(1),
            rate_per_second: config.mail.rate_per_second,
            retry: RetryPolicy {
                initial_ms: config.mail.retry_initial_ms.max(1),
                max_ms: config.mail.retry_max_ms.max(1),
                lifetime_ms: (config.mail.retry_lifetime_secs as i64).saturating_mul(1000),
            },
            commit: Committer::new(),
        })
    }

    fn store(&self) -> &Store {
        &self.outbox.store
    }

    /// Sends queued mail until `stop` is notified; then waits for the mails in flight and
    /// for their outcomes to be on disk.
    pub async fn run(self: Arc<Self>, stop: Arc<tokio::sync::Notify>) {
        let flusher = {
            let worker = self.clone();
            tokio::spawn(async move { worker.commit.run(worker.store()).await })
        };
        self.send_loop(stop).await;
        // Anything recorded by the senders is flushed before the flusher goes.
        self.commit.wait().await;
        flusher.abort();
    }

    /// Due deliveries: fresh ones first, then retries.
    fn due(&self, now: i64) -> Vec<Queued> {
        let in_flight = self.outbox.in_flight.clone();
        let skip = |key: &str| in_flight.lock().expect("in flight").contains(key);
        for lane in [LANE_FRESH, LANE_RETRY] {
            match self.store().due(lane, now, BATCH, &skip) {
                Ok(batch) if !batch.is_empty() => return batch,
                Ok(_) => {}
                Err(e) => tracing::error!("cannot read the mail queue: {e}"),
            }
        }
        Vec::new()
    }

    async fn send_loop(self: &Arc<Self>, stop: Arc<tokio::sync::Notify>) {
        let clock = &self.outbox.clock;
        let slots = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
        let interval = (self.rate_per_second > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / self.rate_per_second));
        let mut next_slot = tokio::time::Instant::now();
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            let now = clock.now_ms();
            let batch = self.due(now);
            if batch.is_empty() {
                let next = self.store().next_queued_ms().ok().flatten();
                let wait = async {
                    match next {
                        Some(t) => {
                            let at = chrono::DateTime::from_timestamp_millis(t.max(now + 1))
                                .unwrap_or_default();
                            clock.sleep_until(at).await
                        }
                        None => tokio::time::sleep(IDLE_LOOK).await,
                    }
                };
                tokio::select! {
                    () = &mut stopped => break,
                    () = self.outbox.wake.notified() => {},
                    () = wait => {},
                }
                continue;
            }
            for queued in batch {
                let permit = tokio::select! {
                    () = &mut stopped => return self.drain(slots).await,
                    p = slots.clone().acquire_owned() => p.expect("semaphore never closes"),
                };
                if let Some(interval) = interval {
                    let now = tokio::time::Instant::now();
                    if next_slot > now {
                        tokio::time::sleep_until(next_slot).await;
                    }
                    next_slot = next_slot.max(now) + interval;
                }
                if !self
                    .outbox
                    .in_flight
                    .lock()
                    .expect("in flight")
                    .insert(queued.key.clone())
                {
                    continue;
                }
                let worker = self.clone();
                tokio::spawn(async move {
                    worker.deliver(&queued).await;
                    worker
                        .outbox
                        .in_flight
                        .lock()
                        .expect("in flight")
                        .remove(&queued.key);
                    drop(permit);
                });
            }
        }
        self.drain(slots).await;
    }

    /// Waits for the mails in flight to finish.
    async fn drain(&self, slots: Arc<tokio::sync::Semaphore>) {
        let _ = slots.acquire_many(self.concurrency as u32).await;
    }

    /// An article by id, from the shared cache or the store.
    fn article(&self, id: &str) -> Option<Arc<Article>> {
        if let Some(a) = self.articles.get_any(id) {
            return Some(a);
        }
        // The file's own name: it may differ from the id (a name typed in NFD).
        let file = match self.store().known_article(id) {
            Ok(Some(known)) if !known.file.is_empty() => known.file,
            _ => format!("{id}.txt"),
        };
        let found = Found {
            path: self.reader.root.join(&file),
            file,
            id: id.to_owned(),
            stamp: Default::default(),
        };
        let article = Arc::new(self.reader.read(&found).ok()?);
        self.articles.insert(found.stamp, article.clone());
        Some(article)
    }

    /// Reads what `d` is about. `Err` when our side cannot (the article went).
    fn load(&self, d: &Delivery) -> Result<Loaded, ComposeError> {
        Ok(match &d.kind {
            Kind::Alert { article } => Loaded::Alert(
                self.article(article)
                    .ok_or_else(|| ComposeError::ArticleGone(article.clone()))?,
            ),
            Kind::Digest { articles, .. } => {
                Loaded::Digest(articles.iter().filter_map(|id| self.article(id)).collect())
            }
            Kind::Confirm { .. } => Loaded::Confirm(self.store().subscriber(&d.email)?),
        })
    }

    /// Renders `d` and hands it to the transport.
    async fn send(&self, key: &str, d: &Delivery, loaded: Loaded) -> Result<(), SendError> {
        let content = match &loaded {
            Loaded::Alert(a) => Content::Alert(a),
            Loaded::Digest(list) => Content::Digest(list),
            Loaded::Confirm(sub) => Content::Confirm {
                schedule: sub
                    .as_ref()
                    .map_or(crate::subscriber::Schedule::Immediate, |s| s.schedule),
                categories: sub.as_ref().map_or(&[], |s| &s.categories),
            },
        };
        let message = self
            .composer
            .render(d, content)
            .and_then(|r| self.composer.message(key, d, r, self.outbox.clock.now()))
            // Our side failed (a template error): the address is not at fault.
            .map_err(|e| SendError::Failed(e.to_string()))?;
        let bytes = message.formatted();
        self.transport
            .send(message.envelope(), &bytes, &key_file_name(key))
            .await
    }

    /// Sends one delivery and records the outcome durably: the delivery is read once and
    /// written once.
    async fn deliver(&self, queued: &Queued) {
        let key = &queued.key;
        let metrics = &self.outbox.metrics;
        let clock = &self.outbox.clock;
        let mut d = match self.store().delivery(key) {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        if d.state != DeliveryState::Pending {
            // A stale queue entry: the update drops it.
            let _ = self.store().update(key, &d, Some(queued));
            return;
        }
        // Subscribers who left in the meantime get nothing more (confirmations excepted).
        let outcome = match &d.kind {
            Kind::Confirm { .. } => self.load(&d),
            _ => match self.store().subscriber(&d.email) {
                Ok(Some(s)) if s.state == SubState::Active => self.load(&d),
                _ => {
                    d.state = DeliveryState::Cancelled;
                    d.error = Some("subscriber no longer active".into());
                    d.updated_ms = clock.now_ms();
                    self.finish(key, &d, queued).await;
                    metrics.cancelled.inc();
                    return;
                }
            },
        };
        let outcome = match outcome {
            Ok(loaded) => self.send(key, &d, loaded).await,
            Err(e) => Err(SendError::Failed(e.to_string())),
        };
        d.attempts += 1;
        d.updated_ms = clock.now_ms();
        match outcome {
            Ok(()) => {
                d.state = DeliveryState::Sent;
                d.error = None;
                metrics.sent.inc();
            }
            Err(SendError::Temporary(message))
                if d.updated_ms - d.created_ms < self.retry.lifetime_ms =>
            {
                let delay = plan::retry_delay_ms(
                    d.attempts,
                    self.retry.initial_ms,
                    self.retry.max_ms,
                    jitter(),
                );
                d.next_ms = d.updated_ms + delay as i64;
                tracing::warn!(
                    to = d.email,
                    attempt = d.attempts,
                    "temporary failure, retry in {delay} ms: {message}"
                );
                d.error = Some(message);
                metrics.retried.inc();
            }
            Err(e) => {
                d.state = DeliveryState::Failed;
                d.error = Some(e.to_string());
                metrics.failed.inc();
                tracing::warn!(to = d.email, "delivery failed: {e}");
                if let SendError::Bounced(why) = &e {
                    self.bounce(&d.email, why);
                }
            }
        }
        self.finish(key, &d, queued).await;
    }

    async fn finish(&self, key: &str, d: &Delivery, queued: &Queued) {
        if let Err(e) = self.store().update(key, d, Some(queued)) {
            tracing::error!("cannot record delivery {}: {e}", key.replace('\0', "/"));
        }
        // Durable before the slot is given back: a crash repeats at most the mails in flight.
        self.commit.wait().await;
    }

    fn bounce(&self, email: &str, why: &str) {
        if let Ok(Some(mut sub)) = self.store().subscriber(email)
            && sub.state != SubState::Bounced
        {
            sub.state = SubState::Bounced;
            sub.bounce = Some(why.to_owned());
            sub.updated = self.outbox.clock.now_s();
            if self.store().put_subscriber(&sub).is_ok() {
                tracing::warn!(email, "address marked bounced");
            }
        }
    }
}

/// Group commit: every sender that recorded an outcome waits for one flush that covers it;
/// concurrent senders share a flush instead of queueing for one each.
struct Committer {
    requested: AtomicU64,
    done: tokio::sync::watch::Sender<u64>,
    wake: tokio::sync::Notify,
    running: AtomicBool,
}

impl Committer {
    fn new() -> Committer {
        Committer {
            requested: AtomicU64::new(0),
            done: tokio::sync::watch::Sender::new(0),
            wake: tokio::sync::Notify::new(),
            running: AtomicBool::new(false),
        }
    }

    /// Waits until everything written before the call is on disk.
    async fn wait(&self) {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut done = self.done.subscribe();
        self.wake.notify_one();
        let _ = done.wait_for(|d| *d >= ticket).await;
    }

    /// Flushes whenever asked, until the process ends.
    async fn run(&self, store: &Store) {
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        loop {
            let target = self.requested.load(Ordering::SeqCst);
            if *self.done.borrow() >= target {
                self.wake.notified().await;
                continue;
            }
            let started = std::time::Instant::now();
            if let Err(e) = store.flush_async().await {
                tracing::error!("cannot flush the state: {e}");
            }
            tracing::trace!(
                covered = target - *self.done.borrow(),
                "flush took {:?}",
                started.elapsed()
            );
            self.done.send_replace(target);
        }
    }
}

/// A number in 0..1 for retry jitter: each `RandomState` is keyed afresh, so hashing
/// nothing gives a new value every call.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let h = std::collections::hash_map::RandomState::new().build_hasher();
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

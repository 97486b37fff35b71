//! The delivery worker: takes due deliveries from the outbox, renders and sends them with a
//! bounded concurrency and an optional rate, retries temporary failures with jittered
//! exponential backoff, and records each outcome durably (group commit) before it takes the
//! slot back, so a crash repeats at most the mails in flight. Fresh deliveries always go
//! before retries.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::message::{ComposeError, Composer, Content, key_file_name};
use super::outbox::{Outbox, Pause};
use super::pause_log::{Line, PauseLog};
use super::transport::{Receipt, SendError, Transport};
use crate::article::Article;
use crate::config::Config;
use crate::library::Entry;
use crate::plan;
use crate::store::{
    Delivery, DeliveryState, Kind, LANE_FRESH, LANE_RETRY, Queued, Recorded, Store,
};
use crate::subscriber::{SubState, Subscriber};

/// Deliveries taken from the queue per look.
const BATCH: usize = 256;
/// Sent alerts and digests folded into their articles' totals together.
const FOLD_EVERY: usize = 1_000;
/// Turns the flusher gives the other tasks before a flush, while they keep asking for it.
const LINGER_TURNS: usize = 4;
/// Mails one try during a pause may take, while each is refused as the last ones were.
const PROBE_MAILS: usize = 5;
/// How the reason of a pause for the same refusal of several recipients starts.
const REFUSES_EVERY: &str = "the relay refuses every message";
/// The worker's loop shows it is alive at least this often.
const BEAT: Duration = Duration::from_secs(1);
/// With nothing queued, the worker looks again at least this often (it is woken on every
/// enqueue anyway).
const IDLE_LOOK: Duration = Duration::from_secs(60);
/// The first pause when the relay refuses us or the state cannot be written; it doubles
/// while the cause lasts, up to [`PAUSE_MAX_MS`].
const PAUSE_FIRST_MS: i64 = 30_000;
const PAUSE_MAX_MS: i64 = 15 * 60_000;
/// The reason of a pause for a state that cannot be written.
pub const STATE_FAILED: &str = "cannot write the state (is its disk full?)";
/// The same refusal of the message for this many different recipients in a row means the
/// relay refuses us, not the message.
const SAME_REJECTIONS: usize = 3;
/// ... unless the relay was seen refusing some addresses that way while it took other mails:
/// then it takes this many different recipients in a row, with no mail taken between them,
/// to blame the relay again.
const SELECTIVE_REJECTIONS: usize = 10;
/// The addresses remembered as refused by the relay (beyond, a refused mail of an address
/// not remembered fails only if the relay took another mail since its last try).
const SELECTIVE_ADDRESSES: usize = 10_000;

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
    /// Mails on their way at once (see [`Transport::senders`]).
    senders: usize,
    rate_per_second: f64,
    retry: RetryPolicy,
    commit: Committer,
    /// The last run of identical refusals: the refusal and the recipients it hit.
    rejections: Mutex<Option<(String, HashSet<String>)>>,
    /// A refusal the relay gave to the same addresses again after it took other mails: it
    /// refuses those addresses (no relay rights for their domain, say), and their mails fail
    /// one by one instead of pausing everyone's again and again. With those addresses.
    selective: Mutex<Option<(String, HashSet<String>)>>,
    /// When the relay last took a mail (the worker's clock; 0: not since the start).
    last_taken_ms: AtomicI64,
    /// Sent alerts and digests not yet folded into their articles' totals.
    sent: Mutex<Vec<String>>,
    /// Temporary failures logged lately, by reason.
    deferrals: Deferrals,
    /// What the log said of pauses and resumes lately.
    pause_log: Mutex<PauseLog>,
}

fn log_line(line: Option<Line>) {
    match line {
        Some(Line::Error(text)) => tracing::error!("{text}"),
        Some(Line::Info(text)) => tracing::info!("{text}"),
        None => {}
    }
}

/// How often the same temporary failure is logged.
const DEFERRALS_EVERY: Duration = Duration::from_secs(60);

/// Temporary failures by reason (addresses left out): when each was last logged, and how
/// many came since.
#[derive(Default)]
struct Deferrals(Mutex<HashMap<String, (std::time::Instant, usize)>>);

impl Deferrals {
    /// Whether to log a failure for `reason` now, with how many were not logged since the
    /// last line; `None`: counted, not logged.
    fn note(&self, reason: &str) -> Option<usize> {
        self.note_at(reason, std::time::Instant::now())
    }

    fn note_at(&self, reason: &str, now: std::time::Instant) -> Option<usize> {
        let mut seen = self.0.lock().expect("deferrals");
        match seen.get_mut(reason) {
            Some((at, folded)) if now.duration_since(*at) < DEFERRALS_EVERY => {
                *folded += 1;
                None
            }
            Some((at, folded)) => {
                let n = std::mem::take(folded);
                *at = now;
                Some(n)
            }
            None => {
                // Reasons are few; a relay that words each differently cannot grow this
                // past a few hundred.
                if seen.len() > 256 {
                    seen.clear();
                }
                seen.insert(reason.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// What one delivery needs besides itself, read once before rendering.
enum Loaded {
    Alert(Arc<Article>, Entry),
    Digest(Vec<Arc<Article>>),
    Confirm(Option<Subscriber>),
    Correction(Box<(Arc<Article>, Entry, crate::store::Correction)>),
}

impl Worker {
    pub fn new(
        config: &Config,
        outbox: Outbox,
        composer: Composer,
        transport: Transport,
    ) -> Result<Worker, super::MailError> {
        Ok(Worker {
            outbox,
            composer,
            senders: transport.senders(config.mail.concurrency.max(1)),
            rate_per_second: config.mail.rate_per_second,
            retry: RetryPolicy {
                initial_ms: config.mail.retry_initial_ms.max(1),
                max_ms: config.mail.retry_max_ms.max(1),
                lifetime_ms: (config.mail.retry_lifetime_secs as i64).saturating_mul(1000),
            },
            transport,
            commit: Committer::new(),
            rejections: Mutex::default(),
            selective: Mutex::default(),
            last_taken_ms: AtomicI64::new(0),
            sent: Mutex::default(),
            deferrals: Deferrals::default(),
            pause_log: Mutex::default(),
        })
    }

    fn store(&self) -> &Store {
        &self.outbox.store
    }

    /// Sends queued mail until `stop` is notified; then waits for the mails in flight and
    /// for their outcomes to be on disk.
    pub async fn run(self: Arc<Self>, stop: Arc<tokio::sync::Notify>) {
        // What a crash left sent but not folded.
        match tokio::task::block_in_place(|| self.store().fold_all_sent()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(folded = n, "sent mails folded into their articles' totals"),
            Err(e) => tracing::error!("cannot fold sent mails: {e}"),
        }
        let flusher = {
            let worker = self.clone();
            tokio::spawn(async move {
                worker
                    .commit
                    .run(worker.store(), &worker.outbox.health)
                    .await
            })
        };
        self.send_loop(stop).await;
        let now = self.outbox.clock.now_ms();
        log_line(self.pause_log.lock().expect("pause log").stopping(now));
        flusher.abort();
        // What was sent is folded, the marks held in memory with it, and anything recorded
        // by the senders is flushed: the database has them all. (Not folded, they stay in
        // their journal, which the next start replays.)
        let keys = std::mem::take(&mut *self.sent.lock().expect("sent"));
        let settled = tokio::task::block_in_place(|| {
            self.store().fold_sent(&keys)?;
            self.store().flush()
        });
        if let Err(e) = settled {
            tracing::error!("cannot flush the state: {e}");
        }
    }

    /// Due deliveries, at most `limit`: fresh ones on record first (confirmations,
    /// corrections, digests), then the alerts of the fan-outs, then retries.
    fn due(&self, now: i64, limit: usize) -> Vec<Queued> {
        let in_flight = self.outbox.in_flight.clone();
        let skip = |key: &str| in_flight.lock().expect("in flight").contains(key);
        let on_record = |lane| match self.store().due(lane, now, limit, &skip) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!("cannot read the mail queue: {e}");
                Vec::new()
            }
        };
        let fresh = on_record(LANE_FRESH);
        if !fresh.is_empty() {
            return fresh;
        }
        let planned: Vec<Queued> = self
            .outbox
            .take_fresh(limit)
            .into_iter()
            .map(|key| Queued {
                lane: LANE_FRESH,
                next_ms: now,
                key,
                planned: true,
            })
            .collect();
        if !planned.is_empty() {
            return planned;
        }
        on_record(LANE_RETRY)
    }

    async fn send_loop(self: &Arc<Self>, stop: Arc<tokio::sync::Notify>) {
        let clock = &self.outbox.clock;
        let slots = Arc::new(tokio::sync::Semaphore::new(self.senders));
        let interval = (self.rate_per_second > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / self.rate_per_second));
        let mut next_slot = tokio::time::Instant::now();
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            self.outbox.health.worker.beat();
            let now = clock.now_ms();
            let mut probe = false;
            if self.store().is_broken() {
                // Nothing is sent while sent-marks cannot be recorded: that is how a full
                // disk turned into the same mails sent again and again.
                self.pause(STATE_FAILED.into());
            }
            let paused = self.outbox.paused();
            if paused.is_none() {
                log_line(self.pause_log.lock().expect("pause log").tick(now));
            }
            if let Some(pause) = paused {
                if now < pause.retry_ms {
                    let until =
                        chrono::DateTime::from_timestamp_millis(pause.retry_ms).unwrap_or_default();
                    tokio::select! {
                        () = &mut stopped => break,
                        () = clock.sleep_until(until) => {},
                        () = self.outbox.wake.notified() => {},
                        () = tokio::time::sleep(BEAT) => {},
                    }
                    continue;
                }
                // Time to try again: the state first, then one mail alone.
                if self.store().is_broken() {
                    continue; // the state guard reopens it, then wakes us
                }
                if let Err(e) = self.store().probe_write(now) {
                    self.pause(format!("{STATE_FAILED}: {e}"));
                    continue;
                }
                probe = true;
            }
            self.fold(FOLD_EVERY);
            // A try during a pause plans too: the try may be a new mail, and planning
            // stopped while the relay refused.
            if let Err(e) = tokio::task::block_in_place(|| self.outbox.feed()) {
                tracing::error!("cannot plan alerts: {e}");
            }
            let batch = self.due(now, if probe { PROBE_MAILS } else { BATCH });
            if probe && batch.is_empty() {
                self.resume();
            }
            if batch.is_empty() {
                self.fold(1);
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
                    // Turn now and then, to show the loop is alive.
                    () = tokio::time::sleep(BEAT) => {},
                }
                continue;
            }
            if probe {
                let _ = slots.acquire_many(self.senders as u32).await;
                // One mail at a time; while the relay refuses them as it refused the others
                // (a few addresses it will not take may come first in line), the next.
                let mut tried = 0;
                for queued in &batch {
                    tried += 1;
                    self.outbox
                        .in_flight
                        .lock()
                        .expect("in flight")
                        .insert(queued.key.clone());
                    self.deliver(queued, true).await;
                    self.outbox
                        .in_flight
                        .lock()
                        .expect("in flight")
                        .remove(&queued.key);
                    // Anything but the same refusal (a 4xx, a bounce) means the relay talks
                    // to us again.
                    match self.outbox.paused() {
                        None => break,
                        Some(p) if p.retry_ms <= clock.now_ms() => {
                            self.resume();
                            break;
                        }
                        Some(p) if !p.reason.starts_with(REFUSES_EVERY) => break,
                        Some(_) => {}
                    }
                }
                self.outbox.put_back(batch.into_iter().skip(tried));
                continue;
            }
            let mut batch = batch.into_iter();
            while let Some(queued) = batch.next() {
                if self.outbox.paused().is_some() {
                    // What is left waits for the pause to end.
                    self.outbox.put_back(std::iter::once(queued).chain(batch));
                    break;
                }
                let permit = loop {
                    tokio::select! {
                        () = &mut stopped => return self.drain(slots).await,
                        p = slots.clone().acquire_owned() => break p.expect("semaphore never closes"),
                        // Waiting for a slow relay is not being stuck.
                        () = tokio::time::sleep(BEAT) => self.outbox.health.worker.beat(),
                    }
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
                    worker.deliver(&queued, false).await;
                    worker
                        .outbox
                        .in_flight
                        .lock()
                        .expect("in flight")
                        .remove(&queued.key);
                    drop(permit);
                    // The loop may be waiting for this very delivery's old time: look again.
                    worker.outbox.wake.notify_one();
                });
            }
        }
        self.drain(slots).await;
    }

    /// Waits for the mails in flight to finish.
    async fn drain(&self, slots: Arc<tokio::sync::Semaphore>) {
        // A mail waiting for a connection is not begun now: it waits for the next start
        // rather than for a relay that may hang.
        self.transport.close();
        let _ = slots.acquire_many(self.senders as u32).await;
    }

    /// Reads what `d` is about. `Err` when our side cannot (the article went).
    fn load(&self, d: &Delivery) -> Result<Loaded, ComposeError> {
        Ok(match &d.kind {
            Kind::Alert { article } => {
                let (a, entry) = self
                    .outbox
                    .article(article)
                    .ok_or_else(|| ComposeError::ArticleGone(article.clone()))?;
                Loaded::Alert(a, entry)
            }
            Kind::Digest { articles, .. } => Loaded::Digest(
                articles
                    .iter()
                    .filter_map(|id| self.outbox.article(id).map(|(a, _)| a))
                    .collect(),
            ),
            Kind::Confirm { .. } => Loaded::Confirm(self.store().subscriber(&d.email)?),
            Kind::Correction { article, n, .. } => {
                let (a, entry) = self
                    .outbox
                    .article(article)
                    .ok_or_else(|| ComposeError::ArticleGone(article.clone()))?;
                let record = self
                    .store()
                    .correction(article, *n)?
                    .ok_or_else(|| ComposeError::ArticleGone(article.clone()))?;
                Loaded::Correction(Box::new((a, entry, record)))
            }
        })
    }

    /// Renders `d` and hands it to the transport.
    async fn send(
        &self,
        key: &str,
        d: &Delivery,
        loaded: Loaded,
        subscriber: Option<&Subscriber>,
    ) -> Result<Option<Receipt>, SendError> {
        let content = match &loaded {
            Loaded::Alert(a, entry) => Content::Alert(a, entry),
            Loaded::Correction(c) => Content::Correction(&c.0, &c.1, &c.2),
            Loaded::Digest(list) => Content::Digest(list),
            Loaded::Confirm(sub) => Content::Confirm {
                schedule: sub
                    .as_ref()
                    .map_or(crate::subscriber::Schedule::Immediate, |s| s.schedule),
                categories: sub.as_ref().map_or(&[], |s| &s.categories),
                active: sub.as_ref().is_some_and(|s| s.state == SubState::Active),
            },
        };
        let compose = |eight_bit| {
            self.composer
                .render_to_send(d, content, subscriber)
                .and_then(|r| {
                    self.composer
                        .message(key, d, r, self.outbox.clock.now(), eight_bit)
                })
                // Our side failed (a template error): the address is not at fault.
                .map_err(|e| SendError::Failed(e.to_string()))
        };
        let name = key_file_name(key);
        let message = compose(self.transport.eight_bit().await)?;
        match self
            .transport
            .send(&message.envelope, &message.bytes, &name)
            .await
        {
            Err(SendError::NeedsSevenBit) => {
                let message = compose(false)?;
                self.transport
                    .send(&message.envelope, &message.bytes, &name)
                    .await
            }
            sent => sent,
        }
    }

    /// Sends one delivery and records the outcome durably: the delivery is read once and
    /// written once. `probe`: the one mail tried while delivery is paused.
    async fn deliver(&self, queued: &Queued, probe: bool) {
        let key = &queued.key;
        let metrics = &self.outbox.metrics;
        let clock = &self.outbox.clock;
        let mut d = match self.outbox.delivery(key) {
            // A planned alert no longer planned (its article went) has its record, if any,
            // and no more to do.
            Ok(Some((_, false))) if queued.planned => return,
            Ok(Some((d, _))) => d,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        if !queued.planned && d.state != DeliveryState::Pending {
            // A stale queue entry: the update drops it.
            let _ = self.store().update(key, &d, Some(queued));
            return;
        }
        // Subscribers who left in the meantime get nothing more (confirmations excepted).
        // What a mail is about is read here, on the async thread: the article is nearly always
        // in the shared cache (a fan-out reads its file once).
        let mut subscriber = None;
        let outcome = match &d.kind {
            Kind::Confirm { .. } => self.load(&d),
            _ => match self.store().subscriber(&d.email) {
                Ok(Some(s)) if s.state == SubState::Active => {
                    subscriber = Some(s);
                    self.load(&d)
                }
                _ => return self.cancel(d, queued, "subscriber no longer active").await,
            },
        };
        let outcome = match outcome {
            Ok(loaded) => self.send(key, &d, loaded, subscriber.as_ref()).await,
            // Its file went: the article was deleted (the daemon may not know yet) or is
            // being saved. Deleted, it is cancelled as its other mails are; else tried again.
            Err(ComposeError::ArticleGone(id)) => {
                if matches!(self.store().known_article(&id), Ok(None)) {
                    return self.cancel(d, queued, "article deleted").await;
                }
                Err(SendError::Temporary(format!(
                    "the article '{id}' cannot be read now"
                )))
            }
            Err(e) => Err(SendError::Failed(e.to_string())),
        };
        if let Err(SendError::Stopping) = outcome {
            // Not given to the relay: as it was (a planned alert waits in memory, and the
            // next start plans its window again).
            if queued.planned {
                self.outbox.put_back(std::iter::once(queued.clone()));
            }
            return;
        }
        let now = clock.now_ms();
        let outcome = match outcome {
            Err(SendError::Rejected(why)) if self.same_rejection(&why, &d.email) => {
                // The reason goes to the log, `status` and a metric label: no subscriber's
                // address in it.
                let refusal = refusal_of_any(&why);
                self.pause(format!("{REFUSES_EVERY}: {refusal}"));
                Err(SendError::Ours(why))
            }
            // Refused again, and nothing shows that the relay refuses this address rather
            // than every message: the relay is blamed, not the mail, which would fail.
            Err(SendError::Rejected(why))
                if d.rejections > 0 && !self.refuses_address(&why, &d.email, d.updated_ms) =>
            {
                let refusal = refusal_of_any(&why);
                self.pause(format!("{REFUSES_EVERY}: {refusal}"));
                Err(SendError::Ours(why))
            }
            other => other,
        };
        if let Err(SendError::Ours(why)) = &outcome {
            // Not this mail's fault: no attempt counted, first in line when sending resumes;
            // but a try during the pause that failed goes behind the mails due meanwhile,
            // so the next try is another mail, which the relay may well take (it may have
            // refused a few addresses, not us).
            self.pause(why.clone());
            d.error = Some(why.clone());
            d.updated_ms = now;
            if probe {
                d.next_ms = d.next_ms.max(now);
            }
            self.finish(key, &d, queued).await;
            return;
        }
        d.attempts += 1;
        d.updated_ms = now;
        let mut receipt = None;
        match outcome {
            Ok(taken) => {
                receipt = taken;
                d.state = DeliveryState::Sent;
                d.error = None;
                metrics.sent.inc();
                self.delivered(&d.email, subscriber.as_ref());
            }
            Err(SendError::Rejected(why)) if d.rejections == 0 => {
                // Refused once: perhaps a passing fault of the relay's filter; once more later.
                d.rejections = 1;
                self.retry_later(&mut d, why, "refused");
            }
            Err(SendError::SoftBounce(why)) => {
                let bounced = self.soft_bounce(&d.email, &why);
                if bounced || d.updated_ms - d.created_ms >= self.retry.lifetime_ms {
                    d.state = DeliveryState::Failed;
                    d.error = Some(why);
                    metrics.failed.inc();
                } else {
                    self.retry_later(&mut d, why, "mailbox full");
                }
            }
            Err(SendError::Temporary(why))
                if d.updated_ms - d.created_ms < self.retry.lifetime_ms =>
            {
                self.retry_later(&mut d, why, "temporary failure");
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
        self.finish_taken(key, &d, queued, receipt).await;
        if d.state == DeliveryState::Sent
            && matches!(d.kind, Kind::Alert { .. } | Kind::Digest { .. })
        {
            self.sent.lock().expect("sent").push(key.to_owned());
        }
    }

    /// Records `d` as cancelled, `why`.
    async fn cancel(&self, mut d: Delivery, queued: &Queued, why: &str) {
        d.state = DeliveryState::Cancelled;
        d.error = Some(why.into());
        d.updated_ms = self.outbox.clock.now_ms();
        self.finish(&queued.key, &d, queued).await;
        self.outbox.metrics.cancelled.inc();
    }

    /// Folds the sent alerts and digests into their articles' totals once at least `least`
    /// wait (the outbox then holds only what is pending or went wrong).
    fn fold(&self, least: usize) {
        let keys = {
            let mut sent = self.sent.lock().expect("sent");
            if sent.len() < least.max(1) {
                return;
            }
            std::mem::take(&mut *sent)
        };
        match tokio::task::block_in_place(|| self.store().fold_sent(&keys)) {
            Ok(_) => {}
            Err(e @ crate::store::StoreError::Corrupt { .. }) => {
                // Left on record: folded at the next start.
                tracing::error!("cannot fold sent mails: {e}");
            }
            Err(e) => {
                // The state cannot be written (a full disk): nothing more is sent until it
                // can, and the mails are folded then.
                self.sent.lock().expect("sent").extend(keys);
                self.store().mark_broken();
                self.pause(format!("{STATE_FAILED}: {e}"));
            }
        }
    }

    /// Plans the next try of `d` after a jittered, growing delay; `what` names the failure
    /// in the log (temporary failure, refused, mailbox full).
    fn retry_later(&self, d: &mut Delivery, why: String, what: &str) {
        let delay = plan::retry_delay_ms(
            d.attempts,
            self.retry.initial_ms,
            self.retry.max_ms,
            jitter(),
        );
        d.next_ms = d.updated_ms + delay as i64;
        // A relay deferring a whole fan-out defers thousands of mails the same way: one
        // line a minute for each reason, saying how many it stands for.
        if let Some(folded) = self.deferrals.note(&refusal_of_any(&why)) {
            let more = match folded {
                0 => String::new(),
                1 => " (and 1 more mail deferred the same way since the last line)".to_owned(),
                n => format!(" (and {n} more mails deferred the same way since the last line)"),
            };
            tracing::warn!(
                to = d.email,
                attempt = d.attempts,
                "{what}, retry in {delay} ms: {why}{more}"
            );
        }
        d.error = Some(why);
        self.outbox.metrics.retried.inc();
    }

    /// Whether `why` is the same refusal as the last ones, for enough different recipients
    /// in a row to blame the relay rather than the message.
    fn same_rejection(&self, why: &str, email: &str) -> bool {
        if self.outbox.paused().is_some() {
            return true; // a try during a pause: the relay still refuses us
        }
        let why = refusal_of_any(why);
        let selective = self.selective.lock().expect("selective");
        let enough = if selective.as_ref().is_some_and(|(r, _)| *r == why) {
            SELECTIVE_REJECTIONS
        } else {
            SAME_REJECTIONS
        };
        drop(selective);
        let mut last = self.rejections.lock().expect("rejections");
        match last.as_mut() {
            Some((reason, emails)) if *reason == why => {
                emails.insert(email.to_owned());
            }
            _ => *last = Some((why, HashSet::from([email.to_owned()]))),
        }
        last.as_ref().is_some_and(|(_, e)| e.len() >= enough)
    }

    /// Whether the relay, refusing `email`'s mail again with `why`, refuses that address
    /// rather than every message: it took another mail since the mail's last try (at
    /// `last_try_ms`), or it was seen refusing that address so before. A mail taken after a
    /// run of refusals tells neither (the relay may have been mended in between): only the
    /// same address refused again, after the relay took others, does.
    fn refuses_address(&self, why: &str, email: &str, last_try_ms: i64) -> bool {
        let refusal = refusal_of_any(why);
        let known = self
            .selective
            .lock()
            .expect("selective")
            .as_ref()
            .is_some_and(|(r, emails)| *r == refusal && emails.contains(email));
        if known {
            return true;
        }
        if self.last_taken_ms.load(Ordering::Relaxed) < last_try_ms {
            return false;
        }
        self.refused_while_taking(refusal, [email.to_owned()]);
        true
    }

    /// The relay refused `emails` with `refusal` while it took other mails: it refuses
    /// those addresses, not us (told once a refusal).
    fn refused_while_taking(&self, refusal: String, emails: impl IntoIterator<Item = String>) {
        let mut selective = self.selective.lock().expect("selective");
        let known = match selective.as_mut() {
            Some((r, known)) if *r == refusal => known,
            _ => {
                tracing::warn!(
                    "the relay takes some mails and refuses others with \"{refusal}\": those \
                     addresses' mails are now refused one by one (tried again once, then \
                     failed), and delivery pauses again only if {SELECTIVE_REJECTIONS} \
                     addresses in a row are refused so"
                );
                &mut selective.insert((refusal, HashSet::new())).1
            }
        };
        for email in emails {
            if known.len() >= SELECTIVE_ADDRESSES {
                break;
            }
            known.insert(email);
        }
    }

    /// A mail got through: a pause ends, a run of refusals is broken, a run of soft
    /// bounces of that address is over.
    fn delivered(&self, email: &str, read: Option<&Subscriber>) {
        self.last_taken_ms
            .fetch_max(self.outbox.clock.now_ms(), Ordering::Relaxed);
        // A run of refusals broken by a mail the relay took while delivery ran: it refuses
        // those addresses, not us. Broken by a try during the pause the run caused, it tells
        // nothing (the relay may have been mended): the refused mails' next tries tell.
        let run = self.rejections.lock().expect("rejections").take();
        if let Some((refusal, emails)) = run
            && self.outbox.paused().is_none()
        {
            self.refused_while_taking(refusal, emails);
        }
        if !self.store().is_broken() {
            self.resume();
        }
        // The relay taking the mail clears soft bounces it gave itself; not those reported
        // later through the inbox, which came after the relay had taken those mails too.
        let clears = |s: &Subscriber| s.soft_bounces.as_ref().is_some_and(|r| !r.reported);
        if read.is_some_and(|s| !clears(s)) {
            return; // read just before sending: nothing to clear
        }
        if let Ok(Some(mut sub)) = self.store().subscriber(email)
            && clears(&sub)
        {
            sub.soft_bounces = None;
            let _ = self.store().put_subscriber(&sub);
        }
    }

    /// Pauses delivery as a whole, or lengthens the pause when the same cause lasts. The
    /// cause is logged once, not once a mail.
    fn pause(&self, reason: String) {
        let now = self.outbox.clock.now_ms();
        let mut pause = self.outbox.pause.lock().expect("pause");
        match pause.as_mut() {
            Some(p) if p.retry_ms > now => {} // already paused; mails in flight report the same
            Some(p) => {
                p.backoff_ms = (p.backoff_ms * 2).min(PAUSE_MAX_MS);
                p.retry_ms = now + p.backoff_ms;
                if p.reason != reason {
                    tracing::error!("mail delivery still paused: {reason}");
                    p.reason = reason;
                }
            }
            None => {
                let line = self.pause_log.lock().expect("pause log").paused(
                    &reason,
                    now,
                    PAUSE_FIRST_MS / 1000,
                );
                log_line(line);
                *pause = Some(Pause {
                    reason,
                    since_ms: now,
                    retry_ms: now + PAUSE_FIRST_MS,
                    backoff_ms: PAUSE_FIRST_MS,
                });
            }
        }
    }

    fn resume(&self) {
        if let Some(p) = self.outbox.pause.lock().expect("pause").take() {
            let now = self.outbox.clock.now_ms();
            let line = self
                .pause_log
                .lock()
                .expect("pause log")
                .resumed(&p.reason, p.since_ms, now);
            log_line(line);
        }
    }

    /// Records a soft bounce of `email`; returns whether the address now bounces.
    fn soft_bounce(&self, email: &str, why: &str) -> bool {
        let Ok(Some(mut sub)) = self.store().subscriber(email) else {
            return false;
        };
        let bounced = sub.soft_bounce(why, self.outbox.clock.now_ms(), false);
        if bounced {
            sub.end(SubState::Bounced, self.outbox.clock.now_s());
            sub.bounce = Some(format!("mailbox full for days: {why}"));
            tracing::warn!(email, "address marked bounced after repeated soft bounces");
        }
        let _ = self.store().put_subscriber(&sub);
        bounced
    }

    /// Records the outcome of a delivery durably before the slot is given back: a crash
    /// repeats at most the mails in flight. A state that cannot be written pauses delivery
    /// (what was sent meanwhile may be sent once more, never in a loop).
    /// An alert planned in memory has its first record written here; once flushed, its
    /// window may settle.
    async fn finish(&self, key: &str, d: &Delivery, queued: &Queued) {
        self.finish_taken(key, d, queued, None).await
    }

    /// [`Worker::finish`] for a mail the relay took over a connection that waits for it to
    /// be on record (see [`Receipt`]).
    async fn finish_taken(
        &self,
        key: &str,
        d: &Delivery,
        queued: &Queued,
        receipt: Option<Receipt>,
    ) {
        let recorded = if queued.planned {
            let recorded = self.store().record_planned(key, d);
            if recorded.is_ok() {
                self.outbox.recorded(key);
            }
            recorded
        } else {
            self.store()
                .update(key, d, Some(queued))
                .map(|()| Recorded::Record)
        };
        let written = match recorded {
            Ok(recorded) => self.commit.wait(recorded).await,
            Err(e) => Err(e.to_string()),
        };
        if let (Ok(()), Some(receipt)) = (&written, receipt) {
            receipt.recorded();
        }
        match written {
            Ok(()) if queued.planned => {
                if let Err(e) = self.outbox.settled(key) {
                    // The fan-out's record stays behind: a restart plans the window again
                    // and finds this mail on record.
                    tracing::error!("cannot record a fan-out's progress: {e}");
                }
            }
            Ok(()) => {}
            Err(e) => {
                if queued.planned {
                    // Not on record: tried again once the state is back (perhaps once more,
                    // as any mail in flight when the state broke).
                    self.outbox.put_back(std::iter::once(queued.clone()));
                }
                self.store().mark_broken();
                self.pause(format!("{STATE_FAILED}: {e}"));
            }
        }
    }

    fn bounce(&self, email: &str, why: &str) {
        if let Ok(Some(mut sub)) = self.store().subscriber(email)
            && !matches!(sub.state, SubState::Bounced | SubState::Complained)
        {
            sub.end(SubState::Bounced, self.outbox.clock.now_s());
            sub.bounce = Some(why.to_owned());
            if self.store().put_subscriber(&sub).is_ok() {
                tracing::warn!(email, "address marked bounced");
            }
        }
    }
}

/// Group commit: every sender that recorded an outcome waits for one flush that covers it;
/// concurrent senders share a flush instead of queueing for one each. When all they recorded
/// since the last flush are marks of sent alerts, the flush is a sync of the marks' journal,
/// much cheaper than a flush of the database (see [`crate::journal`]).
struct Committer {
    requested: AtomicU64,
    /// A sender recorded more than a mark since the last flush: the database is flushed.
    records: AtomicBool,
    /// The last ticket flushed, and the error of that flush if it failed.
    done: tokio::sync::watch::Sender<(u64, Option<String>)>,
    wake: tokio::sync::Notify,
    running: AtomicBool,
}

impl Committer {
    fn new() -> Committer {
        Committer {
            requested: AtomicU64::new(0),
            records: AtomicBool::new(false),
            done: tokio::sync::watch::Sender::new((0, None)),
            wake: tokio::sync::Notify::new(),
            running: AtomicBool::new(false),
        }
    }

    /// Waits until everything written before the call is on disk, or the flush that
    /// should have put it there failed.
    async fn wait(&self, recorded: Recorded) -> Result<(), String> {
        if recorded == Recorded::Record {
            // Before the ticket: the flush that covers the ticket sees it.
            self.records.store(true, Ordering::SeqCst);
        }
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut done = self.done.subscribe();
        self.wake.notify_one();
        match done.wait_for(|(d, _)| *d >= ticket).await {
            Ok(done) => match &done.1 {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            },
            Err(_) => Err("the state flusher stopped".into()),
        }
    }

    /// Flushes whenever asked, until the process ends.
    async fn run(&self, store: &Store, health: &crate::health::Health) {
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        loop {
            let mut target = self.requested.load(Ordering::SeqCst);
            if self.done.borrow().0 >= target {
                self.wake.notified().await;
                continue;
            }
            // Senders whose replies are in take their turn first: one flush then covers
            // them too.
            for _ in 0..LINGER_TURNS {
                tokio::task::yield_now().await;
                let now = self.requested.load(Ordering::SeqCst);
                if now == target {
                    break;
                }
                target = now;
            }
            let started = std::time::Instant::now();
            health.flush_started();
            let flushed = if self.records.swap(false, Ordering::SeqCst) {
                store.flush_async().await
            } else {
                // On this worker thread, blocking it for the sync: handing the sync to a
                // blocking thread cost more CPU than the sync (measured in a fan-out: ~14 µs
                // more a mail, from the threads' wake-ups). The runtime has other workers.
                store.sync_marks()
            };
            let error = flushed.err().map(|e| e.to_string());
            health.flush_done();
            tracing::trace!(
                covered = target - self.done.borrow().0,
                "flush took {:?}",
                started.elapsed()
            );
            self.done.send_replace((target, error));
        }
    }
}

/// A refusal with the addresses it names left out: Postfix's `554 5.7.1 <a@x.vn>: Relay
/// access denied` is the same refusal for every recipient.
pub fn refusal_of_any(why: &str) -> String {
    why.split_whitespace()
        .map(|w| if w.contains('@') { "<…>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A number in 0..1 for retry jitter: each `RandomState` is keyed afresh, so hashing
/// nothing gives a new value every call.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let h = std::collections::hash_map::RandomState::new().build_hasher();
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_deferral_is_logged_once_a_minute_with_how_many_it_stands_for() {
        let d = Deferrals::default();
        let t = std::time::Instant::now();
        let busy = "smtp: 451 4.3.0 try later (at end of DATA)";
        assert_eq!(d.note_at(busy, t), Some(0));
        for s in 1..=3 {
            assert_eq!(d.note_at(busy, t + Duration::from_secs(s)), None);
        }
        // Another reason is logged at once.
        assert_eq!(
            d.note_at("smtp: 421 closing", t + Duration::from_secs(4)),
            Some(0)
        );
        assert_eq!(d.note_at(busy, t + DEFERRALS_EVERY), Some(3));
        assert_eq!(
            d.note_at(busy, t + DEFERRALS_EVERY + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn a_refusal_names_no_address() {
        assert_eq!(
            refusal_of_any("smtp: 554 5.7.1 <dan@x.vn>: Relay access denied"),
            "smtp: 554 5.7.1 <…> Relay access denied"
        );
    }
}

//! What is owed to whom: alerts for new articles, digests at each tick, confirmations, and
//! cancellations when an article goes. Every plan is written to the outbox (and flushed)
//! before anything is sent; delivery keys make planning twice harmless. An alert fan-out is
//! the exception: its record says how far it got, and its mails are planned in memory a
//! window at a time (see [`super::fresh`]), each written once, with its outcome.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, FixedOffset};

use super::{MailError, MailMetrics};
use crate::article::Article;
use crate::clock::Clock;
use crate::correction::Version;
use crate::library::{Entry, Stamp};
use crate::plan;
use crate::scan::{ArticleCache, Found, StoreReader};
use crate::store::{
    Correction, Delivery, DeliveryState, Fanout, Kind, KnownArticle, Queued, Store,
};
use crate::subscriber::{Schedule, SubState, Subscriber};

/// Deliveries planned between two flushes of the state, so that a large plan does not pile up
/// in sled's memory.
const FLUSH_EVERY: usize = 10_000;
/// Alerts the fan-outs keep planned in memory, waiting to be sent.
const FANOUT_WINDOW: usize = 2_000;
/// Mails waiting in the queue (retries) beyond which the fan-outs plan no more.
const FANOUT_BACKLOG: usize = 4 * FANOUT_WINDOW;
/// Subscribers one step of a fan-out reads.
const FANOUT_STEP: usize = 500;

/// A confirmation mail is queued at most this often per address (seconds).
const CONFIRM_EVERY_SECS: i64 = 24 * 3600;

/// The planning side of mail. Cheap to clone; every clone shares the worker's wake-up.
#[derive(Clone)]
pub struct Outbox {
    pub store: Store,
    pub clock: Clock,
    /// Wakes the worker when deliveries are queued.
    pub wake: Arc<tokio::sync::Notify>,
    /// Keys being sent right now: not cancelled under the sender's feet.
    pub in_flight: Arc<Mutex<HashSet<String>>>,
    pub metrics: MailMetrics,
    /// Set while delivery as a whole is paused (the relay refuses us, the state cannot be
    /// written); read by `status` and `/metrics`.
    pub pause: Arc<Mutex<Option<Pause>>>,
    /// Whether the relay takes non-ASCII addresses, as it last said.
    pub relay_utf8: super::RelaySays,
    /// The worker's loop and the state flushes report their progress here.
    pub health: crate::health::Health,
    /// New articles waiting to be unchanged for `policy.delay_ms` before they are alerted,
    /// and corrections of mailed ones waiting the same before they are mailed.
    settling: Arc<Mutex<HashMap<String, Settling>>>,
    /// Told when an article starts settling.
    pub settled: Arc<tokio::sync::Notify>,
    policy: NewsPolicy,
    /// Writes the page of every digest run (none in tests that plan only).
    pub bulletins: Option<super::bulletin::BulletinPages>,
    /// Bodies shared with publishing, and the store to read them from when not cached.
    articles: Arc<ArticleCache>,
    reader: StoreReader,
    /// The entries last made for cached articles: a fan-out asks for the same article once
    /// per recipient.
    entries: Arc<Mutex<Vec<Made>>>,
    /// The alerts of the running fan-outs, planned a window at a time.
    pub(super) fresh: Arc<Mutex<super::fresh::Fresh>>,
}

/// An entry made for an article as read.
type Made = (Stamp, Arc<Article>, Entry);

/// Entries kept by [`Outbox::article`].
const ENTRIES_KEPT: usize = 8;

/// What counts as news, and when it may be mailed.
#[derive(Debug, Clone, Copy)]
pub struct NewsPolicy {
    /// An alert waits until its article has been unchanged this long (milliseconds).
    pub delay_ms: i64,
    /// Older articles seen for the first time are not mailed (milliseconds).
    pub max_age_ms: i64,
    /// A fan-out done within this long is not started again for the same article
    /// (`mail.keep_days`, milliseconds).
    pub keep_ms: i64,
}

impl NewsPolicy {
    pub fn from_config(config: &crate::config::Config) -> NewsPolicy {
        NewsPolicy {
            delay_ms: (config.mail.alert_delay_secs as i64).saturating_mul(1000),
            max_age_ms: (config.mail.alert_max_age_days as i64).saturating_mul(24 * 3600 * 1000),
            keep_ms: (config.mail.keep_days.max(1) as i64).saturating_mul(24 * 3600 * 1000),
        }
    }
}

/// A new article not alerted yet, or a mailed one whose new correction is not mailed yet.
#[derive(Debug, Clone)]
struct Settling {
    entry: Arc<Entry>,
    /// When it may be alerted, if unchanged until then.
    due_ms: i64,
}

/// Why and since when delivery is paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub reason: String,
    /// Unix milliseconds.
    pub since_ms: i64,
    /// When sending is tried again (unix milliseconds).
    pub retry_ms: i64,
    /// The wait before that try; doubles while the cause lasts.
    pub backoff_ms: i64,
}

impl Outbox {
    pub fn new(
        store: Store,
        clock: Clock,
        metrics: MailMetrics,
        policy: NewsPolicy,
        articles: Arc<ArticleCache>,
        reader: StoreReader,
    ) -> Outbox {
        Outbox {
            store,
            clock,
            wake: Arc::default(),
            in_flight: Arc::default(),
            metrics,
            pause: Arc::default(),
            relay_utf8: super::RelaySays::default(),
            health: crate::health::Health::default(),
            settling: Arc::default(),
            settled: Arc::default(),
            policy,
            bulletins: None,
            articles,
            reader,
            entries: Arc::default(),
            fresh: Arc::default(),
        }
    }

    /// An article's text and its entry (with the file's modification time), from the shared
    /// cache (publishing replaces what changed there: a fan-out reads no file) or the store.
    /// `None` when it cannot be read (it went, or broke).
    pub fn article(&self, id: &str) -> Option<(Arc<Article>, Entry)> {
        let cached = self.articles.get_any(id);
        if let Some((stamp, article)) = &cached {
            let entries = self.entries.lock().expect("entries");
            if let Some((_, _, entry)) = entries
                .iter()
                .find(|(s, a, _)| s == stamp && Arc::ptr_eq(a, article))
            {
                return Some((article.clone(), entry.clone()));
            }
        }
        // The file's own name: it may differ from the id (a name typed in NFD).
        let file = match self.store.known_article(id) {
            Ok(Some(known)) if !known.file.is_empty() => known.file,
            _ => format!("{id}.txt"),
        };
        let path = self.reader.root.join(&file);
        let (stamp, article) = match cached {
            Some(cached) => cached,
            None => {
                let stamp = std::fs::metadata(&path)
                    .map(|m| crate::scan::stamp_of(&m))
                    .ok()?;
                let found = Found {
                    path: path.clone(),
                    file: file.clone(),
                    id: id.to_owned(),
                    stamp,
                };
                let a = Arc::new(self.reader.read(&found).ok()?);
                self.articles.insert(stamp, a.clone());
                (stamp, a)
            }
        };
        let found = Found {
            path,
            file,
            id: id.to_owned(),
            stamp,
        };
        let entry = self.reader.entry(&found, &article);
        let mut entries = self.entries.lock().expect("entries");
        if entries.len() >= ENTRIES_KEPT {
            entries.remove(0);
        }
        entries.push((stamp, article.clone(), entry.clone()));
        Some((article, entry))
    }

    /// Ends a pause caused by the state now that it can be written again: sending resumes
    /// with one mail at once.
    pub fn state_recovered(&self) {
        if let Some(p) = self.pause.lock().expect("pause").as_mut()
            && p.reason.starts_with(super::worker::STATE_FAILED)
        {
            p.retry_ms = self.clock.now_ms();
        }
        self.wake.notify_one();
    }

    /// The pause in force, if any.
    pub fn paused(&self) -> Option<Pause> {
        self.pause.lock().expect("pause").clone()
    }

    /// The articles the daemon found at start (or after a reload): on the very first start
    /// they are the baseline (nobody is mailed); later, any not yet known were published while
    /// the daemon was down and are alerted now, and known ones that are gone are forgotten.
    pub async fn startup(&self, visible: Vec<Arc<Entry>>) -> Result<(), MailError> {
        if self.store.baseline()?.is_none() {
            for entry in &visible {
                self.store.put_known_article(&entry.id, &known(entry, 0))?;
            }
            self.store.set_baseline(self.clock.now_s())?;
            self.store.flush_async().await?;
            tracing::info!(
                articles = visible.len(),
                "first start: the store's articles are the baseline; nobody is mailed for them"
            );
            // The list of bulletins, empty: its address answers before the first digest.
            self.republish_bulletins(false);
            return Ok(());
        }
        // Forget articles that went while the daemon was down.
        let present: HashSet<&str> = visible.iter().map(|a| &*a.id).collect();
        let mut gone = Vec::new();
        for r in self.store.known_articles() {
            let (id, _) = r?;
            if !present.contains(id.as_str()) {
                gone.push(id);
            }
        }
        for id in gone {
            self.removed(&id).await?;
        }
        let repaired = self.store.repair_queue()?;
        if repaired > 0 {
            tracing::info!(repaired, "requeued deliveries interrupted by a crash");
        }
        self.republish_bulletins(false);
        self.published(visible).await
    }

    /// Articles that became visible (new, edited, or come due). News is decided here, once
    /// and durably: an article the mail side has never known, published within
    /// `alert_max_age_days`. It is alerted once it has been unchanged for
    /// `alert_delay_secs` (an edit meanwhile starts the wait again); a known one (an edit
    /// after that, a restart) gets nothing, unless it carries a new correction, which waits
    /// the same before it is mailed. Older ones are recorded as known, never mailed.
    pub async fn published(&self, entries: Vec<Arc<Entry>>) -> Result<(), MailError> {
        let notices = entries.len() as u64;
        let result = self.notice(entries).await;
        self.metrics.notices.inc_by(notices);
        result
    }

    async fn notice(&self, entries: Vec<Arc<Entry>>) -> Result<(), MailError> {
        let now = self.clock.now_ms();
        let mut fresh = Vec::new();
        let mut old = Vec::new();
        for entry in entries {
            if let Some(known) = self.store.known_article(&entry.id)? {
                // Known: an edit mails nobody, unless it carries a new correction; that one
                // waits as a new article does, so that a clerk saving the reason twice
                // mails one correction, with the final text.
                if is_new_correction(&entry, &known) {
                    if self.policy.delay_ms <= 0 {
                        self.correct(&entry, known).await?;
                    } else {
                        let due_ms = now + self.policy.delay_ms;
                        let id = entry.id.to_string();
                        self.settling
                            .lock()
                            .expect("settling")
                            .insert(id, Settling { entry, due_ms });
                        self.settled.notify_one();
                    }
                } else {
                    // The correction taken back, or as already mailed: nothing waits.
                    self.settling.lock().expect("settling").remove(&*entry.id);
                }
                continue;
            }
            if now - entry.published.timestamp_millis() > self.policy.max_age_ms {
                old.push(entry);
            } else {
                fresh.push(entry);
            }
        }
        if !old.is_empty() {
            for entry in &old {
                self.store.put_known_article(&entry.id, &known(entry, 0))?;
            }
            self.store.flush_async().await?;
            tracing::info!(
                articles = old.len(),
                "published but not mailed: older than mail.alert_max_age_days ({} days) \
                 when first seen",
                self.policy.max_age_ms / (24 * 3600 * 1000)
            );
        }
        if fresh.is_empty() {
            return Ok(());
        }
        if self.policy.delay_ms <= 0 {
            return self.alert(fresh).await;
        }
        let mut settling = self.settling.lock().expect("settling");
        for entry in fresh {
            let due_ms = now + self.policy.delay_ms;
            settling.insert(entry.id.to_string(), Settling { entry, due_ms });
        }
        drop(settling);
        self.settled.notify_one();
        Ok(())
    }

    /// When the next settling article may be alerted.
    pub fn next_settled_ms(&self) -> Option<i64> {
        let settling = self.settling.lock().expect("settling");
        settling.values().map(|s| s.due_ms).min()
    }

    /// Alerts the articles that have settled by now.
    pub async fn alert_settled(&self) -> Result<(), MailError> {
        let now = self.clock.now_ms();
        let due: Vec<Arc<Entry>> = {
            let mut settling = self.settling.lock().expect("settling");
            let ids: Vec<String> = settling
                .iter()
                .filter(|(_, s)| s.due_ms <= now)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| settling.remove(id))
                .map(|s| s.entry)
                .collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        // Corrections of articles mailed already; the rest are new.
        let mut fresh = Vec::new();
        let mut result = Ok(());
        let mut again = Vec::new();
        for entry in due {
            match self.store.known_article(&entry.id) {
                Ok(None) => fresh.push(entry),
                Ok(Some(known)) => {
                    if !is_new_correction(&entry, &known) {
                        continue;
                    }
                    if let Err(e) = self.correct(&entry, known).await {
                        again.push(entry);
                        result = Err(e);
                    }
                }
                Err(e) => {
                    again.push(entry);
                    result = Err(e.into());
                }
            }
        }
        if !fresh.is_empty() {
            let alerted = self.alert(fresh.clone()).await;
            if alerted.is_err() {
                again.extend(fresh);
                result = alerted;
            }
        }
        let due = again;
        if result.is_err() {
            // Not planned: tried again at the next turn.
            let mut settling = self.settling.lock().expect("settling");
            for entry in due {
                settling
                    .entry(entry.id.to_string())
                    .or_insert(Settling { entry, due_ms: now });
            }
        }
        result
    }

    /// One alert for each of `fresh` to every matching active `immediate` subscriber:
    /// a fan-out each, which [`Outbox::feed`] queues a window at a time.
    async fn alert(&self, fresh: Vec<Arc<Entry>>) -> Result<(), MailError> {
        let now = self.clock.now_ms();
        let mut started = Vec::new();
        let mut repeats: HashMap<&str, String> = HashMap::new();
        for a in &fresh {
            let fanout = Fanout {
                created_ms: now,
                category: a.category.to_string(),
                after: String::new(),
                planned: 0,
                done: false,
                fingerprint: Fanout::fingerprint_of(&a.category, &a.title, a.published.timestamp()),
            };
            let since = now - self.policy.keep_ms;
            if let Some(other) = self.store.fanout_like(&a.id, &fanout.fingerprint, since)? {
                tracing::warn!(
                    id = &*a.id,
                    same_as = other,
                    "same category, title and date as an article already mailed (moved or \
                     copied?): not mailed again"
                );
                repeats.insert(&a.id, other);
                continue;
            }
            if self.store.start_fanout(&a.id, &fanout, since)? {
                self.fresh.lock().expect("fresh").begun(&a.id, &fanout);
                started.push(&a.id);
            } else {
                tracing::info!(
                    id = &*a.id,
                    "alerts already sent to every subscriber: not again"
                );
            }
        }
        // Known only once its fan-out is recorded: a crash in between notices it again,
        // and a fan-out starts once. The text as announced is kept, for corrections.
        for a in &fresh {
            if let Some((article, _)) = self.article(&a.id) {
                self.store.put_version(&a.id, &Version::of(&article))?;
            }
            let mut k = known(a, now);
            k.same_as = repeats.remove(&*a.id);
            self.store.put_known_article(&a.id, &k)?;
        }
        self.store.flush_async().await?;
        for id in started {
            tracing::info!(id = &**id, "alert fan-out started");
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Plans the next windows of the alert fan-outs, oldest first, until `FANOUT_WINDOW`
    /// alerts wait to be sent: memory holds that many however many subscribers there are.
    /// Blocking (sled). Returns how many alerts it planned.
    pub fn feed(&self) -> Result<usize, MailError> {
        let mut added = 0;
        let waiting = || self.fresh.lock().expect("fresh").waiting();
        if waiting() >= FANOUT_WINDOW / 2 {
            return Ok(0);
        }
        let fanouts = self.store.fanouts()?;
        if fanouts.is_empty() {
            return Ok(0);
        }
        // While a relay refuses mail by mail (each goes to the retry lane), no more than a
        // few windows in all.
        if self.store.queued(FANOUT_BACKLOG) >= FANOUT_BACKLOG {
            return Ok(0);
        }
        for (id, record) in fanouts {
            loop {
                if waiting() >= FANOUT_WINDOW {
                    return Ok(added);
                }
                let resume = {
                    let mut fresh = self.fresh.lock().expect("fresh");
                    // Ended meanwhile (the article went, which ends it here only after its
                    // record): not planned again from memory.
                    if self.store.fanout(&id)?.is_none_or(|f| f.done) {
                        break;
                    }
                    fresh.resume(&id, &record)
                };
                let Some(resume) = resume else {
                    break; // every window planned
                };
                let fanout = resume.record;
                // After a restart, a mail of an unsettled window may have been sent: its
                // record says so, or, once folded, the bitmap of those told.
                let alerted = resume
                    .look_up
                    .then(|| self.store.alerted(&id))
                    .transpose()?;
                let now = self.clock.now_ms();
                let mut window = Vec::new();
                let mut last = None;
                let mut seen = 0;
                // Mailed before the restart: counted among the fan-out's mails all the same.
                let mut mailed = 0;
                for r in self.store.subscribers_after(&fanout.after) {
                    let sub = r?;
                    seen += 1;
                    if plan::wants_alert(&sub, &fanout.category)
                        && !plan::joined_during(&sub, fanout.created_ms, now)
                    {
                        let kind = Kind::Alert {
                            article: id.clone(),
                        };
                        let d = Delivery::new(kind, &sub.email, now);
                        let known = match &alerted {
                            Some(told) => {
                                self.store.has_delivery(&d.key())? || told.told(&sub.email)?
                            }
                            None => false,
                        };
                        if known {
                            mailed += 1;
                        } else {
                            window.push(d);
                        }
                    }
                    last = Some(sub.email);
                    if seen == FANOUT_STEP {
                        break;
                    }
                }
                let done = seen < FANOUT_STEP;
                let planned = window.len();
                let next = Fanout {
                    after: last.unwrap_or_else(|| fanout.after.clone()),
                    planned: fanout.planned + (planned + mailed) as u64,
                    done,
                    ..fanout.clone()
                };
                if done {
                    tracing::info!(id, mails = next.planned, "alerts queued");
                }
                let mut fresh = self.fresh.lock().expect("fresh");
                if let Some(next) = fresh.add(&id, window, next) {
                    // Written under the lock: the records go in the order the windows settle.
                    self.store.advance_fanout(&id, &next)?;
                }
                drop(fresh);
                added += planned;
                if done {
                    break;
                }
            }
        }
        Ok(added)
    }

    /// Up to `n` planned alerts to send, in order.
    pub fn take_fresh(&self, n: usize) -> Vec<String> {
        self.fresh.lock().expect("fresh").take(n)
    }

    /// Planned alerts taken and not sent after all (delivery paused): first in line again.
    pub fn put_back(&self, batch: impl DoubleEndedIterator<Item = Queued>) {
        let mut fresh = self.fresh.lock().expect("fresh");
        for q in batch.rev() {
            if q.planned {
                fresh.put_back(q.key);
            }
        }
    }

    /// Alerts planned in memory and without an outcome on record (waiting or being sent):
    /// all, or those of one article. `status` counts them as pending.
    pub fn unrecorded(&self, article: Option<&str>) -> usize {
        self.fresh.lock().expect("fresh").unrecorded(article)
    }

    /// The outcome of a planned alert is written: `status` counts it by its record (or
    /// mark) from now on, not twice while it goes to disk.
    pub fn recorded(&self, key: &str) {
        self.fresh.lock().expect("fresh").recorded(key);
    }

    /// The delivery under `key`: planned in memory, or on record.
    pub fn delivery(&self, key: &str) -> Result<Option<(Delivery, bool)>, MailError> {
        if let Some(d) = self.fresh.lock().expect("fresh").delivery(key) {
            return Ok(Some((d.clone(), true)));
        }
        Ok(self.store.delivery(key)?.map(|d| (d, false)))
    }

    /// The outcome of a planned alert is on record (and flushed): its window may be
    /// settled, and its fan-out's record move on.
    pub fn settled(&self, key: &str) -> Result<(), MailError> {
        let mut fresh = self.fresh.lock().expect("fresh");
        if let Some((id, next)) = fresh.settled(key) {
            self.store.advance_fanout(&id, &next)?;
        }
        Ok(())
    }

    /// A known article now carries a new `Đính chính:` reason: everyone who was told of it
    /// (by an alert or a digest) gets one correction, answering the mail they received.
    /// Those still to be told (a pending alert, a digest to come) get the corrected text
    /// only. Planned durably before anything is sent; planning twice is harmless (the
    /// correction's number is in every key).
    async fn correct(&self, entry: &Entry, mut known: KnownArticle) -> Result<(), MailError> {
        let reason = entry.correction.clone().unwrap_or_default();
        let Some((article, _)) = self.article(&entry.id) else {
            return Ok(()); // unreadable now: the next notice tries again
        };
        let after = Version::of(&article);
        // The number of this correction: after every one ever recorded (an article deleted
        // and written again keeps its history), or the one a crash left half planned, whose
        // "before" is still what people were told.
        let last = self.store.corrections_of(&entry.id)?.pop();
        let (n, before) = match last {
            Some(c) if c.n > known.corrections => (c.n, c.before),
            last => (
                last.map_or(0, |c| c.n).max(known.corrections) + 1,
                self.store
                    .version(&entry.id)?
                    .unwrap_or_else(|| after.clone()),
            ),
        };
        let now = self.clock.now_ms();
        let mut recipients = if known.seen > 0 {
            self.recipients(&entry.id)?
        } else {
            Vec::new()
        };
        // The same article mailed under its old name: those it told are readers too.
        if let Some(old) = &known.same_as {
            let own: HashSet<String> = recipients.iter().map(|(e, _)| e.clone()).collect();
            let theirs = self.recipients(old)?;
            recipients.extend(theirs.into_iter().filter(|(e, _)| !own.contains(e)));
        }
        // The record first: a mail that goes out at once finds what it is to say.
        let record = Correction {
            n,
            reason: reason.clone(),
            at_ms: now,
            before,
            after: after.clone(),
            planned: recipients.len(),
            compacted: Default::default(),
        };
        self.store.put_correction(&entry.id, &record)?;
        for (email, reply_to) in recipients {
            let kind = Kind::Correction {
                article: entry.id.to_string(),
                n,
                reply_to,
            };
            self.store.enqueue(&Delivery::new(kind, &email, now))?;
        }
        let planned = record.planned;
        self.store.put_version(&entry.id, &after)?;
        // Last: once the article says this reason was acted on, nothing plans it again.
        known.correction = Some(reason);
        known.corrections = n;
        self.store.put_known_article(&entry.id, &known)?;
        self.store.flush_async().await?;
        tracing::info!(id = &*entry.id, n, mails = planned, "correction planned");
        self.wake.notify_one();
        Ok(())
    }

    /// Who is owed a correction of `article`, with the delivery key of the mail they got:
    /// those told of it, and those whose mail carrying it is being sent right now (it may
    /// have been rendered before the change; one correction too many beats one missing).
    fn recipients(&self, article: &str) -> Result<Vec<(String, String)>, MailError> {
        // Nothing is folded meanwhile: a mail is on record or in the totals, not in between.
        let _books = self.store.hold_books();
        // In flight first: a mail that finishes meanwhile is then told (or still in flight).
        let in_flight: Vec<String> = self
            .in_flight
            .lock()
            .expect("in flight")
            .iter()
            .cloned()
            .collect();
        let mut out: std::collections::BTreeMap<String, String> = self
            .store
            .told_of(article)?
            .into_iter()
            .map(|(email, told)| (email, told.key))
            .collect();
        for key in in_flight {
            let Some((d, _)) = self.delivery(&key)? else {
                continue;
            };
            let carries = match &d.kind {
                Kind::Alert { article: a } => a == article,
                Kind::Digest { articles, .. } => articles.iter().any(|a| a == article),
                _ => false,
            };
            if carries {
                out.entry(d.email).or_insert(key);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// An article was deleted: its unsent alerts are cancelled (or never planned, when it
    /// was still settling).
    pub async fn removed(&self, id: &str) -> Result<(), MailError> {
        if self.settling.lock().expect("settling").remove(id).is_some() {
            tracing::info!(id, "deleted before its alert was due: nobody is mailed");
        }
        self.store.forget_article(id)?;
        let pending: Vec<(String, Delivery)> = self
            .store
            .alerts_of(id)
            .filter_map(Result::ok)
            .filter(|(_, d)| d.state == DeliveryState::Pending)
            .collect();
        let waiting = {
            let in_flight = self.in_flight.lock().expect("in flight");
            self.fresh.lock().expect("fresh").end(id, &in_flight)
        };
        let now = self.clock.now_ms();
        let cancel = |mut d: Delivery| {
            d.state = DeliveryState::Cancelled;
            d.updated_ms = now;
            d.error = Some("article deleted".into());
            d
        };
        let mut cancelled = 0;
        // Planned in memory: no record yet, this is its first.
        for (key, d) in waiting {
            self.store.record_planned(&key, &cancel(d))?;
            cancelled += 1;
        }
        for (key, d) in pending {
            if self.in_flight.lock().expect("in flight").contains(&key) {
                continue;
            }
            let queued = Queued {
                lane: d.lane(),
                next_ms: d.next_ms,
                key: key.clone(),
                planned: false,
            };
            self.store.update(&key, &cancel(d), Some(&queued))?;
            cancelled += 1;
        }
        self.store.flush_async().await?;
        if cancelled > 0 {
            self.metrics.cancelled.inc_by(cancelled);
            tracing::info!(id, cancelled, "unsent alerts cancelled");
        }
        Ok(())
    }

    /// One digest run of `schedule` at `tick`: a mail per subscriber with something new.
    /// It covers what the mail side knows when it runs (a catch-up after downtime includes
    /// what was found at start). Returns how many mails were queued.
    pub async fn digest(
        &self,
        schedule: Schedule,
        tick: DateTime<FixedOffset>,
    ) -> Result<usize, MailError> {
        let tick_s = tick.timestamp();
        let tick_ms = tick.timestamp_millis();
        let cutoff = self.clock.now_ms().max(tick_ms);
        let mut known: Vec<(String, KnownArticle)> = Vec::new();
        for r in self.store.known_articles() {
            known.push(r?);
        }
        known.sort_by(|a, b| {
            b.1.published
                .cmp(&a.1.published)
                .then_with(|| a.0.cmp(&b.0))
        });
        let articles: Vec<plan::Published<'_>> = known
            .iter()
            .map(|(id, k)| plan::Published {
                id,
                category: &k.category,
                seen: k.seen,
            })
            .collect();
        let subs: Vec<Subscriber> = self
            .store
            .subscribers()
            .filter_map(Result::ok)
            .filter(|s| s.state == SubState::Active && s.schedule == schedule)
            .collect();
        let mut mails = 0;
        for mut sub in subs {
            if sub.digest_until.is_some_and(|t| t >= tick_ms) {
                continue; // this run already covered it (a catch-up after a crash)
            }
            let ids = plan::digest_for(&sub, cutoff, &articles);
            if !ids.is_empty() {
                let kind = Kind::Digest {
                    schedule,
                    run: tick_s,
                    articles: ids.iter().map(|s| s.to_string()).collect(),
                };
                if self
                    .store
                    .enqueue(&Delivery::new(kind, &sub.email, self.clock.now_ms()))?
                {
                    mails += 1;
                    if mails % FLUSH_EVERY == 0 {
                        self.store.flush_async().await?;
                    }
                }
            }
            sub.digest_until = Some(cutoff);
            self.store.put_subscriber(&sub)?;
        }
        // The run's public record: every article its mails carried (all of them, also those
        // queued before a crash cut the run short), on the run's day.
        let run = self
            .store
            .deliveries_with_prefix(&format!("d\0{}\0{tick_s}\0", schedule.as_str()))?;
        let mut carried: HashSet<&str> = HashSet::new();
        for (_, d) in &run {
            if let Kind::Digest { articles, .. } = &d.kind {
                carried.extend(articles.iter().map(String::as_str));
            }
        }
        let bulletin = if carried.is_empty() {
            None
        } else {
            let date = super::message::bulletin_date(self.reader.tz, tick_s);
            let date = date.format("%Y-%m-%d").to_string();
            let mut b = self
                .store
                .bulletin(schedule, &date)?
                .unwrap_or(crate::store::Bulletin {
                    schedule,
                    date,
                    runs: Vec::new(),
                    articles: Vec::new(),
                    mails: 0,
                });
            let earlier: usize = b
                .runs
                .iter()
                .filter(|r| **r != tick_s)
                .map(|r| self.run_mails(schedule, *r))
                .sum();
            if !b.runs.contains(&tick_s) {
                b.runs.push(tick_s);
            }
            b.mails = earlier + self.run_mails(schedule, tick_s);
            // Newest first, as the digests list them; a second run that day adds its own.
            let articles: Vec<String> = known
                .iter()
                .map(|(id, _)| id.as_str())
                .filter(|id| carried.contains(id) || b.articles.iter().any(|a| a == id))
                .map(str::to_owned)
                .collect();
            b.articles = articles;
            Some(b)
        };
        if let Some(b) = &bulletin {
            self.store.put_bulletin(b)?;
        }
        self.store.set_last_digest(schedule, tick_s)?;
        self.store.flush_async().await?;
        if let Some(b) = &bulletin {
            self.publish_bulletin(b, true);
        }
        tracing::info!(
            schedule = schedule.as_str(),
            mails,
            "digest run at {}",
            tick.to_rfc3339()
        );
        self.wake.notify_one();
        Ok(mails)
    }
}

impl Outbox {
    /// Writes the page of bulletin `b` (and the list of bulletins when `index`). A page that
    /// cannot be written is logged: the mails go out all the same, and the next start
    /// writes it again.
    /// The mails of one digest run: on record, and folded into the run's totals.
    fn run_mails(&self, schedule: Schedule, run: i64) -> usize {
        let on_record = self
            .store
            .deliveries_with_prefix(&format!("d\0{}\0{run}\0", schedule.as_str()))
            .map_or(0, |d| d.len());
        let folded = self
            .store
            .run_counts(schedule, run)
            .map_or(0, |c| c.sent + c.failed + c.cancelled);
        on_record + folded
    }

    pub fn publish_bulletin(&self, b: &crate::store::Bulletin, index: bool) {
        let Some(pages) = &self.bulletins else { return };
        let articles: Vec<Arc<Article>> = b
            .articles
            .iter()
            .filter_map(|id| self.article(id).map(|(a, _)| a))
            .collect();
        if let Err(e) = pages.write(b, &articles) {
            tracing::error!("cannot publish the bulletin page: {e}");
        }
        if index {
            match self.store.bulletins() {
                Ok(all) => {
                    if let Err(e) = pages.write_index(&all) {
                        tracing::error!("cannot publish the list of bulletins: {e}");
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
    }

    /// Writes the bulletin pages missing from `output.dir`, and the list (a start after the
    /// site's folder was emptied, or after a reload of the templates).
    pub fn republish_bulletins(&self, all: bool) {
        let Some(pages) = &self.bulletins else { return };
        let Ok(bulletins) = self.store.bulletins() else {
            return;
        };
        for b in &bulletins {
            let missing =
                super::bulletin::page_of(b).is_some_and(|rel| !pages.out.join(rel).exists());
            if all || missing {
                self.publish_bulletin(b, false);
            }
        }
        if let Err(e) = pages.write_index(&bulletins) {
            tracing::error!("cannot publish the list of bulletins: {e}");
        }
    }
}

/// Whether `entry` carries a correction other than the one last acted on.
fn is_new_correction(entry: &Entry, known: &KnownArticle) -> bool {
    entry.correction.is_some() && entry.correction != known.correction
}

fn known(entry: &Entry, seen: i64) -> KnownArticle {
    KnownArticle {
        published: entry.published.timestamp(),
        category: entry.category.to_string(),
        seen,
        file: entry.file.clone(),
        correction: entry.correction.clone(),
        corrections: 0,
        same_as: None,
    }
}

/// Whether a confirmation mail may be queued for `sub` at `now` (unix seconds): at most one
/// a day; one more after the subscription ended (unsubscribed by mistake, the citizen
/// subscribes again at once; only the address itself can end it, so this bombs no one); and
/// one more when the last could not be delivered (the relay refused it: asking again is the
/// only way the citizen has).
pub fn may_queue_confirmation(
    store: &Store,
    sub: &Subscriber,
    now: i64,
) -> Result<bool, MailError> {
    let Some(sent) = sub.confirm_sent else {
        return Ok(true);
    };
    if now - sent >= CONFIRM_EVERY_SECS || sub.tokens_after.is_some_and(|ended| ended > sent) {
        return Ok(true);
    }
    let last = store
        .deliveries_with_prefix(&format!("c\0{}\0", sub.email))?
        .into_iter()
        .filter(|(_, d)| d.created_ms.div_euclid(1000) >= sent)
        .max_by_key(|(_, d)| d.created_ms);
    Ok(last.is_some_and(|(_, d)| d.state == DeliveryState::Failed))
}

/// Queues a confirmation mail for `sub` unless one was queued in the last day. Returns whether
/// one was queued. `now` in unix seconds; the caller flushes.
pub fn queue_confirmation(
    store: &Store,
    sub: &mut Subscriber,
    now: i64,
) -> Result<bool, MailError> {
    if !may_queue_confirmation(store, sub, now)? {
        return Ok(false);
    }
    sub.confirm_sent = Some(now);
    store.put_subscriber(sub)?;
    // Its link is issued after the subscription last ended, even in the same second (links
    // issued up to that second no longer act).
    let issued = sub.tokens_after.map_or(now, |ended| now.max(ended + 1));
    let d = Delivery::new(Kind::Confirm { at: issued }, &sub.email, now * 1000);
    Ok(store.enqueue(&d)?)
}

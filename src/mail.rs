//! Mail: templates to lettre messages, the transports, and the delivery worker.
//!
//! A delivery is written to the outbox and flushed before it is sent, and marked sent only
//! after the server accepted it (and that mark flushed before the worker takes another), so a
//! crash loses nothing and repeats at most the mails in flight. Temporary failures (4xx,
//! timeouts, dropped connections) are retried with jittered exponential backoff until the
//! configured lifetime; permanent ones (5xx) fail the delivery and mark the address bounced.
//! Fresh deliveries are always taken before retries.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use chrono_tz::Tz;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, AsyncSendmailTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::context;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::article::Article;
use crate::config::Config;
use crate::feed::SiteInfo;
use crate::plan;
use crate::scan::StoreReader;
use crate::site::{Templates, local_time};
use crate::store::{Delivery, DeliveryState, Kind, Queued, Schedule, Store, SubState, Subscriber};
use crate::token::{Purpose, Signer};

/// Articles kept in memory for rendering mails (a fan-out renders one article many times).
const ARTICLE_CACHE: usize = 256;
/// Deliveries taken from the queue per look.
const BATCH: usize = 256;

/// Why a mail could not be sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Worth another try later (4xx, timeouts, dropped connections).
    pub transient: bool,
    /// The server refused the address for good (5xx): mark it bounced.
    pub bounce: bool,
    pub message: String,
}

/// Where mail goes.
pub enum Transport {
    /// `.eml` files in a folder (the default: needs no server).
    File(PathBuf),
    Smtp(SmtpPool),
    Sendmail(AsyncSendmailTransport<Tokio1Executor>),
}

impl Transport {
    pub fn from_config(config: &Config) -> Result<Transport, String> {
        let mail = &config.mail;
        match mail.transport.as_str() {
            "file" => Ok(Transport::File(mail.dir.clone())),
            "sendmail" => Ok(Transport::Sendmail(
                AsyncSendmailTransport::<Tokio1Executor>::new_with_command(&mail.sendmail_command),
            )),
            "smtp" => {
                let smtp = &mail.smtp;
                let credentials = match &smtp.username {
                    None => None,
                    Some(user) => {
                        let password =
                            match (&smtp.password_file, std::env::var("BANTIN_SMTP_PASSWORD")) {
                                (Some(file), _) => std::fs::read_to_string(file)
                                    .map_err(|e| {
                                        format!(
                                            "cannot read mail.smtp.password_file '{}': {e}",
                                            file.display()
                                        )
                                    })?
                                    .trim_end_matches(['\r', '\n'])
                                    .to_string(),
                                (None, Ok(p)) => p,
                                (None, Err(_)) => {
                                    return Err("mail.smtp.username is set but neither \
                                            mail.smtp.password_file nor $BANTIN_SMTP_PASSWORD is"
                                        .into());
                                }
                            };
                        Some(Credentials::new(user.clone(), password))
                    }
                };
                let tls = match smtp.tls.as_str() {
                    "none" => None,
                    _ => Some(
                        TlsParameters::new(smtp.host.clone())
                            .map_err(|e| format!("mail.smtp: TLS for '{}': {e}", smtp.host))?,
                    ),
                };
                Ok(Transport::Smtp(SmtpPool {
                    host: smtp.host.clone(),
                    port: smtp.port,
                    implicit_tls: smtp.tls == "tls",
                    tls,
                    credentials,
                    timeout: Duration::from_secs(smtp.timeout_secs.max(1)),
                    hello: ClientId::default(),
                    idle: Mutex::default(),
                }))
            }
            other => Err(format!(
                "mail.transport '{other}' is not one of file, smtp, sendmail"
            )),
        }
    }

    /// Sends one formatted message.
    pub async fn send(
        &self,
        envelope: &lettre::address::Envelope,
        bytes: &[u8],
        name: &str,
    ) -> Result<(), SendError> {
        match self {
            Transport::File(dir) => {
                let path = dir.join(format!("{name}.eml"));
                let dir = dir.clone();
                let bytes = bytes.to_vec();
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    crate::output::write_atomic(&path, &bytes)
                })
                .await
                .map_err(|e| SendError {
                    transient: true,
                    bounce: false,
                    message: e.to_string(),
                })?
                .map(|_| ())
                .map_err(|e| SendError {
                    transient: true,
                    bounce: false,
                    message: format!("cannot write to mail.dir: {e}"),
                })
            }
            Transport::Smtp(pool) => pool.send(envelope, bytes).await,
            Transport::Sendmail(sendmail) => sendmail
                .send_raw(envelope, bytes)
                .await
                .map(|_| ())
                .map_err(|e| SendError {
                    transient: true,
                    bounce: false,
                    message: format!("sendmail: {e}"),
                }),
        }
    }
}

/// Connections idle longer than this are closed rather than reused (servers drop idle
/// clients after a while).
const SMTP_IDLE: Duration = Duration::from_secs(30);

/// SMTP connections kept open between mails. Each plain connection has TCP_NODELAY, so the
/// end-of-data line is not held back behind the message body (a 40 ms stall per mail).
pub struct SmtpPool {
    host: String,
    port: u16,
    /// `tls = "tls"`: TLS from the first byte (SMTPS); otherwise STARTTLS when `tls` is set.
    implicit_tls: bool,
    tls: Option<TlsParameters>,
    credentials: Option<Credentials>,
    /// Bounds connecting and each whole exchange.
    timeout: Duration,
    hello: ClientId,
    idle: Mutex<Vec<(AsyncSmtpConnection, std::time::Instant)>>,
}

impl SmtpPool {
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let mut conn = if self.implicit_tls {
            AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(self.timeout),
                &self.hello,
                self.tls.clone(),
                None,
            )
            .await
            .map_err(smtp_error)?
        } else {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| SendError {
                    transient: true,
                    bounce: false,
                    message: format!("smtp: cannot connect to {}:{}: {e}", self.host, self.port),
                })?;
            let _ = stream.set_nodelay(true);
            let mut conn =
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                    .await
                    .map_err(smtp_error)?;
            if let Some(tls) = &self.tls {
                conn.starttls(tls.clone(), &self.hello)
                    .await
                    .map_err(smtp_error)?;
            }
            conn
        };
        if let Some(credentials) = &self.credentials {
            conn.auth(
                lettre::transport::smtp::authentication::DEFAULT_MECHANISMS,
                credentials,
            )
            .await
            .map_err(smtp_error)?;
        }
        Ok(conn)
    }

    async fn send(
        &self,
        envelope: &lettre::address::Envelope,
        bytes: &[u8],
    ) -> Result<(), SendError> {
        let reused = {
            let mut idle = self.idle.lock().expect("smtp pool");
            let mut found = None;
            while let Some((conn, since)) = idle.pop() {
                if since.elapsed() < SMTP_IDLE && !conn.has_broken() {
                    found = Some(conn);
                    break;
                }
            }
            found
        };
        let exchange = async {
            let mut conn = match reused {
                Some(conn) => conn,
                None => self.connect().await?,
            };
            match conn.send(envelope, bytes).await {
                Ok(_) => Ok(conn),
                Err(e) => {
                    conn.abort().await;
                    Err(smtp_error(e))
                }
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(SendError {
                transient: true,
                bounce: false,
                message: format!("smtp: no answer within {:?}", self.timeout),
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(conn)) => {
                self.idle
                    .lock()
                    .expect("smtp pool")
                    .push((conn, std::time::Instant::now()));
                Ok(())
            }
        }
    }
}

/// 5xx replies are permanent; everything else (4xx, timeouts, dropped connections) is worth
/// another try.
fn smtp_error(e: lettre::transport::smtp::Error) -> SendError {
    SendError {
        transient: !e.is_permanent(),
        bounce: e.is_permanent(),
        message: format!("smtp: {e}"),
    }
}

/// Counters for `/metrics` and `status`.
#[derive(Debug, Default)]
pub struct MailMetrics {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
}

impl MailMetrics {
    pub fn render(&self, out: &mut String, queued: usize) {
        use std::fmt::Write;
        for (name, help, v) in [
            (
                "bantin_mail_sent_total",
                "Mails accepted by the mail server.",
                &self.sent,
            ),
            (
                "bantin_mail_retries_total",
                "Temporary failures that will be retried.",
                &self.retried,
            ),
            (
                "bantin_mail_failed_total",
                "Deliveries given up (permanent failure or too old).",
                &self.failed,
            ),
            (
                "bantin_mail_cancelled_total",
                "Deliveries cancelled before sending.",
                &self.cancelled,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP bantin_mail_queued Deliveries waiting to be sent.\n# TYPE bantin_mail_queued gauge\nbantin_mail_queued {queued}"
        );
    }
}

/// Everything needed to render and send mail.
pub struct Mailer {
    pub store: Store,
    pub signer: Signer,
    transport: Transport,
    templates: crate::site::SharedTemplates,
    site: SiteInfo,
    tz: Tz,
    from: Mailbox,
    list_id: String,
    /// Domain of Message-IDs.
    domain: String,
    dkim: Option<lettre::message::dkim::DkimConfig>,
    reader: StoreReader,
    articles: Mutex<HashMap<String, Arc<Article>>>,
    concurrency: usize,
    rate_per_second: f64,
    retry_initial_ms: u64,
    retry_max_ms: u64,
    retry_lifetime_ms: i64,
    pub metrics: MailMetrics,
    /// Wakes the worker when deliveries are queued.
    pub wake: tokio::sync::Notify,
    in_flight: Mutex<HashSet<String>>,
    commit: Committer,
}

/// Group commit: every sender that recorded an outcome waits for one flush that covers it;
/// concurrent senders share a flush instead of queueing for one each.
struct Committer {
    requested: AtomicU64,
    done: tokio::sync::watch::Sender<u64>,
    wake: tokio::sync::Notify,
    running: std::sync::atomic::AtomicBool,
}

impl Committer {
    fn new() -> Committer {
        Committer {
            requested: AtomicU64::new(0),
            done: tokio::sync::watch::Sender::new(0),
            wake: tokio::sync::Notify::new(),
            running: std::sync::atomic::AtomicBool::new(false),
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

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Mailer {
    pub fn new(
        config: &Config,
        store: Store,
        templates: crate::site::SharedTemplates,
    ) -> Result<Mailer, String> {
        let signer = Signer::load(&config.state.dir, config.mail.token_secret_file.as_deref())
            .map_err(|e| e.to_string())?;
        let transport = Transport::from_config(config)?;
        let from: Mailbox = config
            .mail
            .from
            .parse()
            .map_err(|e| format!("mail.from '{}': {e}", config.mail.from))?;
        let domain = from.email.domain().to_string();
        let list_id = config
            .mail
            .list_id
            .clone()
            .unwrap_or_else(|| format!("bantin.{domain}"));
        let dkim = match &config.mail.dkim {
            None => None,
            Some(d) => Some(dkim_config(d)?),
        };
        Ok(Mailer {
            store,
            signer,
            transport,
            templates,
            site: SiteInfo::new(&config.site.title, config.base_url(), &config.site.language),
            tz: config.timezone()?,
            from,
            list_id,
            domain,
            dkim,
            reader: StoreReader {
                root: config.store.dir.clone(),
                tz: config.timezone()?,
                max_bytes: config.store.max_bytes,
            },
            articles: Mutex::default(),
            concurrency: config.mail.concurrency.max(1),
            rate_per_second: config.mail.rate_per_second,
            retry_initial_ms: config.mail.retry_initial_ms.max(1),
            retry_max_ms: config.mail.retry_max_ms.max(1),
            retry_lifetime_ms: (config.mail.retry_lifetime_secs as i64).saturating_mul(1000),
            metrics: MailMetrics::default(),
            wake: tokio::sync::Notify::new(),
            in_flight: Mutex::default(),
            commit: Committer::new(),
        })
    }

    // --- links

    pub fn unsubscribe_url(&self, email: &str) -> String {
        format!(
            "{}/unsubscribe?token={}",
            self.site.base_url,
            self.signer.sign(Purpose::Unsubscribe, email)
        )
    }

    pub fn confirm_url(&self, email: &str) -> String {
        format!(
            "{}/confirm?token={}",
            self.site.base_url,
            self.signer.sign(Purpose::Confirm, email)
        )
    }

    // --- articles

    /// An article by id, from the cache or the store.
    fn article(&self, id: &str) -> Option<Arc<Article>> {
        if let Some(a) = self.articles.lock().expect("cache").get(id) {
            return Some(a.clone());
        }
        // The file's own name: it may differ from the id (a name typed in NFD).
        let file = match self.store.known_article(id) {
            Ok(Some(known)) if !known.file.is_empty() => known.file,
            _ => format!("{id}.txt"),
        };
        let found = crate::scan::Found {
            path: self.reader.root.join(&file),
            file,
            id: id.to_owned(),
            stamp: Default::default(),
        };
        let article = Arc::new(self.reader.read(&found).ok()?);
        self.remember(article.clone());
        Some(article)
    }

    /// Keeps a freshly published article for the mails about to be rendered.
    pub fn remember(&self, article: Arc<Article>) {
        let mut cache = self.articles.lock().expect("cache");
        if cache.len() >= ARTICLE_CACHE {
            cache.clear();
        }
        cache.insert(article.id.clone(), article);
    }

    fn forget_article(&self, id: &str) {
        self.articles.lock().expect("cache").remove(id);
    }

    // --- rendering

    /// Renders the mail of a delivery: (subject, text, html, with unsubscribe headers).
    pub fn render(&self, delivery: &Delivery) -> Result<(String, String, String, bool), String> {
        let render = |name: &str, ctx: minijinja::Value| {
            crate::site::current(&self.templates)
                .render(name, ctx)
                .map_err(|e| e.to_string())
        };
        match &delivery.kind {
            Kind::Alert { article } => {
                let a = self
                    .article(article)
                    .ok_or_else(|| format!("article '{article}' can no longer be read"))?;
                let ctx = context! {
                    article => article_ctx(&self.site, &a),
                    unsubscribe_url => self.unsubscribe_url(&delivery.email),
                };
                let subject = format!("[{}] {}", self.site.title, a.title);
                Ok((
                    subject,
                    render("email/alert.txt", ctx.clone())?,
                    render("email/alert.html", ctx)?,
                    true,
                ))
            }
            Kind::Digest {
                schedule,
                run,
                articles,
            } => {
                let mut groups: Vec<(String, Vec<ListedCtx>)> = Vec::new();
                for id in articles {
                    let Some(a) = self.article(id) else { continue };
                    let item = ListedCtx {
                        title: a.title.clone(),
                        url: self.site.article_url(&a.id),
                        excerpt: a.excerpt(),
                        published_text: local_time(&a.published),
                    };
                    match groups.iter_mut().find(|(c, _)| *c == a.category) {
                        Some((_, list)) => list.push(item),
                        None => groups.push((a.category.clone(), vec![item])),
                    }
                }
                if groups.is_empty() {
                    return Err("every article of the digest is gone".into());
                }
                let count: usize = groups.iter().map(|(_, l)| l.len()).sum();
                let day = self
                    .tz
                    .timestamp_opt(*run, 0)
                    .single()
                    .map(|t| t.format("%d/%m/%Y").to_string())
                    .unwrap_or_default();
                let heading = match schedule {
                    Schedule::Weekly => format!("Bản tin tuần {day}"),
                    _ => format!("Bản tin ngày {day}"),
                };
                let groups: Vec<GroupCtx> = groups
                    .into_iter()
                    .map(|(category, articles)| GroupCtx { category, articles })
                    .collect();
                let ctx = context! {
                    heading => heading.clone(),
                    count => count,
                    groups => minijinja::Value::from(minijinja::value::Serde(groups)),
                    unsubscribe_url => self.unsubscribe_url(&delivery.email),
                };
                let subject = format!("[{}] {heading}: {count} tin mới", self.site.title);
                Ok((
                    subject,
                    render("email/digest.txt", ctx.clone())?,
                    render("email/digest.html", ctx)?,
                    true,
                ))
            }
            Kind::Confirm { .. } => {
                let sub = self
                    .store
                    .subscriber(&delivery.email)
                    .map_err(|e| e.to_string())?;
                let (schedule, categories) = sub
                    .map(|s| (s.schedule, s.categories))
                    .unwrap_or((Schedule::Immediate, vec![]));
                let ctx = context! {
                    email => delivery.email.clone(),
                    confirm_url => self.confirm_url(&delivery.email),
                    schedule_label => schedule_label(schedule),
                    categories => categories,
                };
                let subject = format!("Xác nhận đăng ký nhận tin – {}", self.site.title);
                Ok((
                    subject,
                    render("email/confirm.txt", ctx.clone())?,
                    render("email/confirm.html", ctx)?,
                    false,
                ))
            }
        }
    }

    /// The Message-ID of a delivery: derived from its key, so a retry reuses it.
    pub fn message_id(&self, key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("<{hex}.bantin@{}>", self.domain)
    }

    /// Builds the complete message of a delivery.
    pub fn build(&self, key: &str, delivery: &Delivery) -> Result<Message, String> {
        let (subject, text, html, bulk) = self.render(delivery)?;
        let to: Mailbox = delivery
            .email
            .parse::<Address>()
            .map(|a| Mailbox::new(None, a))
            .map_err(|e| format!("'{}' is not a mail address: {e}", delivery.email))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(self.message_id(key)))
            .date_now()
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Id"),
                format!("{} <{}>", self.site.title, self.list_id),
            ));
        if bulk {
            builder = builder
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe"),
                    format!("<{}>", self.unsubscribe_url(&delivery.email)),
                ))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".into(),
                ));
        }
        let mut message = builder
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| format!("cannot build the mail: {e}"))?;
        if let Some(dkim) = &self.dkim {
            message.sign(dkim);
        }
        Ok(message)
    }

    // --- planning

    /// The articles the daemon found at start (or after a reload): on the very first start
    /// they are the baseline (nobody is mailed); later, any not yet known were published while
    /// the daemon was down and are alerted now, and known ones that are gone are forgotten.
    pub async fn startup(&self, visible: Vec<Arc<crate::library::Entry>>) -> Result<(), String> {
        let e = |e: crate::store::StoreError| e.to_string();
        if self.store.meta_i64("baseline").map_err(e)?.is_none() {
            for entry in &visible {
                let k = crate::store::KnownArticle {
                    published: entry.published.timestamp(),
                    category: entry.category.clone(),
                    seen: 0,
                    file: entry.file.clone(),
                };
                self.store.put_known_article(&entry.id, &k).map_err(e)?;
            }
            self.store
                .set_meta_i64("baseline", Utc::now().timestamp())
                .map_err(e)?;
            self.store.flush_async().await.map_err(e)?;
            tracing::info!(
                articles = visible.len(),
                "first start: the store's articles are the baseline; nobody is mailed for them"
            );
            return Ok(());
        }
        // Forget articles that went while the daemon was down.
        let present: HashSet<&str> = visible.iter().map(|a| a.id.as_str()).collect();
        let mut gone = Vec::new();
        for r in self.store.known_articles() {
            let (id, _) = r.map_err(e)?;
            if !present.contains(id.as_str()) {
                gone.push(id);
            }
        }
        for id in gone {
            self.removed(&id).await?;
        }
        let repaired = self.store.repair_queue().map_err(e)?;
        if repaired > 0 {
            tracing::info!(repaired, "requeued deliveries interrupted by a crash");
        }
        self.published(visible).await
    }

    /// Articles newly published: one alert each to every matching active `immediate`
    /// subscriber. An article already known (an edit, or an article seen before) does not
    /// alert again.
    pub async fn published(&self, entries: Vec<Arc<crate::library::Entry>>) -> Result<(), String> {
        let e = |e: crate::store::StoreError| e.to_string();
        let mut fresh = Vec::new();
        for entry in entries {
            if self.store.known_article(&entry.id).map_err(e)?.is_none() {
                fresh.push(entry);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut queued = 0usize;
        for r in self.store.subscribers() {
            let sub = r.map_err(e)?;
            for a in &fresh {
                if plan::wants_alert(&sub, &a.category) {
                    let d = Delivery::new(
                        Kind::Alert {
                            article: a.id.clone(),
                        },
                        &sub.email,
                        now,
                    );
                    if self.store.enqueue(&d).map_err(e)? {
                        queued += 1;
                    }
                }
            }
        }
        // Known only once every alert is queued: a crash in between plans again, and the
        // outbox keys make that idempotent.
        let seen = Utc::now().timestamp_millis();
        for a in &fresh {
            let k = crate::store::KnownArticle {
                published: a.published.timestamp(),
                category: a.category.clone(),
                seen,
                file: a.file.clone(),
            };
            self.store.put_known_article(&a.id, &k).map_err(e)?;
        }
        self.store.flush_async().await.map_err(e)?;
        for a in &fresh {
            tracing::info!(id = a.id, "alerts queued");
        }
        tracing::info!(articles = fresh.len(), mails = queued, "alerts planned");
        self.wake.notify_one();
        Ok(())
    }

    /// An article was deleted: its unsent alerts are cancelled.
    pub async fn removed(&self, id: &str) -> Result<(), String> {
        let e = |e: crate::store::StoreError| e.to_string();
        self.forget_article(id);
        self.store.forget_article(id).map_err(e)?;
        let prefix = format!("a\0{id}\0");
        let mut cancelled = 0;
        let pending: Vec<(String, Delivery)> = self
            .store
            .deliveries_with_prefix(&prefix)
            .filter_map(Result::ok)
            .filter(|(_, d)| d.state == DeliveryState::Pending)
            .collect();
        for (key, mut d) in pending {
            if self.in_flight.lock().expect("in flight").contains(&key) {
                continue;
            }
            let queued = Queued {
                lane: d.lane(),
                next_ms: d.next_ms,
                key: key.clone(),
            };
            d.state = DeliveryState::Cancelled;
            d.updated_ms = now_ms();
            d.error = Some("article deleted".into());
            self.store.update(&key, &d, Some(&queued)).map_err(e)?;
            cancelled += 1;
        }
        self.store.flush_async().await.map_err(e)?;
        if cancelled > 0 {
            self.metrics
                .cancelled
                .fetch_add(cancelled, Ordering::Relaxed);
            tracing::info!(id, cancelled, "unsent alerts cancelled");
        }
        Ok(())
    }

    /// One digest run of `schedule` at `tick`: a mail per subscriber with something new.
    pub async fn digest(
        &self,
        schedule: Schedule,
        tick: DateTime<FixedOffset>,
    ) -> Result<usize, String> {
        let e = |e: crate::store::StoreError| e.to_string();
        let tick_s = tick.timestamp();
        let tick_ms = tick.timestamp_millis();
        let mut known: Vec<(String, crate::store::KnownArticle)> = Vec::new();
        for r in self.store.known_articles() {
            known.push(r.map_err(e)?);
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
        let mut mails = 0;
        let subs: Vec<Subscriber> = self
            .store
            .subscribers()
            .filter_map(Result::ok)
            .filter(|s| s.state == SubState::Active && s.schedule == schedule)
            .collect();
        for mut sub in subs {
            if sub.digest_until.is_some_and(|t| t >= tick_ms) {
                continue; // this run already covered it (a catch-up after a crash)
            }
            let ids = plan::digest_for(&sub, tick_ms, &articles);
            if !ids.is_empty() {
                let d = Delivery::new(
                    Kind::Digest {
                        schedule,
                        run: tick_s,
                        articles: ids.iter().map(|s| s.to_string()).collect(),
                    },
                    &sub.email,
                    now_ms(),
                );
                if self.store.enqueue(&d).map_err(e)? {
                    mails += 1;
                }
            }
            sub.digest_until = Some(tick_ms);
            self.store.put_subscriber(&sub).map_err(e)?;
        }
        self.store
            .set_meta_i64(&format!("digest\0{}", schedule.as_str()), tick_s)
            .map_err(e)?;
        self.store.flush_async().await.map_err(e)?;
        tracing::info!(
            schedule = schedule.as_str(),
            mails,
            "digest run at {}",
            tick.to_rfc3339()
        );
        self.wake.notify_one();
        Ok(mails)
    }

    // --- sending

    /// The delivery worker: sends queued mail until `stop` is set.
    pub async fn run(self: Arc<Self>, stop: Arc<tokio::sync::Notify>) {
        let flusher = {
            let mailer = self.clone();
            tokio::spawn(async move { mailer.commit.run(&mailer.store).await })
        };
        self.send_loop(stop).await;
        // Anything recorded by the senders is flushed before the flusher goes.
        self.commit.wait().await;
        flusher.abort();
    }

    async fn send_loop(self: &Arc<Self>, stop: Arc<tokio::sync::Notify>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
        let interval = (self.rate_per_second > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / self.rate_per_second));
        let mut next_slot = tokio::time::Instant::now();
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            let now = now_ms();
            let skip = |key: &str| self.in_flight.lock().expect("in flight").contains(key);
            let mut batch = match self.store.due(crate::store::LANE_FRESH, now, BATCH, &skip) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("cannot read the mail queue: {e}");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                batch = self
                    .store
                    .due(crate::store::LANE_RETRY, now, BATCH, &skip)
                    .unwrap_or_default();
            }
            if batch.is_empty() {
                let wait = self
                    .store
                    .next_queued_ms()
                    .ok()
                    .flatten()
                    .map(|t| Duration::from_millis((t - now).clamp(1, 60_000) as u64))
                    .unwrap_or(Duration::from_secs(60));
                tokio::select! {
                    () = &mut stopped => break,
                    () = self.wake.notified() => {},
                    () = tokio::time::sleep(wait) => {},
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
                    .in_flight
                    .lock()
                    .expect("in flight")
                    .insert(queued.key.clone())
                {
                    continue;
                }
                let mailer = self.clone();
                tokio::spawn(async move {
                    mailer.deliver(&queued).await;
                    mailer
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

    /// Sends one delivery and records the outcome durably.
    async fn deliver(&self, queued: &Queued) {
        let key = &queued.key;
        let mut d = match self.store.delivery(key) {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        if d.state != DeliveryState::Pending {
            let _ = self.store.update(key, &d, Some(queued));
            return;
        }
        let now = now_ms();
        // Subscribers who left in the meantime get nothing more (confirmations excepted).
        if !matches!(d.kind, Kind::Confirm { .. }) {
            let active = matches!(self.store.subscriber(&d.email), Ok(Some(s)) if s.state == SubState::Active);
            if !active {
                d.state = DeliveryState::Cancelled;
                d.error = Some("subscriber no longer active".into());
                d.updated_ms = now;
                self.finish(key, &d, queued).await;
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let outcome = match self.build(key, &d) {
            Ok(message) => {
                let bytes = message.formatted();
                let name = key_file_name(key);
                self.transport.send(message.envelope(), &bytes, &name).await
            }
            // Our side failed (an article gone, a template error): the address is not at fault.
            Err(message) => Err(SendError {
                transient: false,
                bounce: false,
                message,
            }),
        };
        d.attempts += 1;
        d.updated_ms = now_ms();
        match outcome {
            Ok(()) => {
                d.state = DeliveryState::Sent;
                d.error = None;
                self.metrics.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.transient && d.updated_ms - d.created_ms < self.retry_lifetime_ms => {
                let jitter = jitter();
                let delay = plan::retry_delay_ms(
                    d.attempts,
                    self.retry_initial_ms,
                    self.retry_max_ms,
                    jitter,
                );
                d.next_ms = d.updated_ms + delay as i64;
                d.error = Some(e.message.clone());
                self.metrics.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    to = d.email,
                    attempt = d.attempts,
                    "temporary failure, retry in {delay} ms: {}",
                    e.message
                );
            }
            Err(e) => {
                d.state = DeliveryState::Failed;
                d.error = Some(e.message.clone());
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(to = d.email, "delivery failed: {}", e.message);
                if e.bounce {
                    self.bounce(&d.email, &e.message);
                }
            }
        }
        self.finish(key, &d, queued).await;
    }

    async fn finish(&self, key: &str, d: &Delivery, queued: &Queued) {
        if let Err(e) = self.store.update(key, d, Some(queued)) {
            tracing::error!("cannot record delivery {}: {e}", key.replace('\0', "/"));
        }
        // Durable before the slot is given back: a crash repeats at most the mails in flight.
        self.commit.wait().await;
    }

    fn bounce(&self, email: &str, why: &str) {
        if let Ok(Some(mut sub)) = self.store.subscriber(email)
            && sub.state != SubState::Bounced
        {
            sub.state = SubState::Bounced;
            sub.bounce = Some(why.to_owned());
            sub.updated = Utc::now().timestamp();
            if self.store.put_subscriber(&sub).is_ok() {
                tracing::warn!(email, "address marked bounced");
            }
        }
    }

    pub fn queued(&self) -> usize {
        self.store.queue_len()
    }
}

/// Queues a confirmation mail for `sub` unless one was queued in the last day. Returns whether
/// one was queued. The caller flushes.
pub fn queue_confirmation(store: &Store, sub: &mut Subscriber, now: i64) -> Result<bool, String> {
    if sub.confirm_sent.is_some_and(|t| now - t < 24 * 3600) {
        return Ok(false);
    }
    sub.confirm_sent = Some(now);
    store.put_subscriber(sub).map_err(|e| e.to_string())?;
    let d = Delivery::new(Kind::Confirm { at: now }, &sub.email, now * 1000);
    store.enqueue(&d).map_err(|e| e.to_string())?;
    Ok(true)
}

/// A file-system-safe name for a delivery (the `file` transport).
fn key_file_name(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let kind = key.split('\0').next().unwrap_or("m");
    format!("{kind}-{hex}")
}

/// A number in 0..1 for retry jitter.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

pub fn schedule_label(schedule: Schedule) -> &'static str {
    match schedule {
        Schedule::Immediate => "thư ngay khi có tin mới",
        Schedule::Daily => "bản tin hằng ngày",
        Schedule::Weekly => "bản tin hằng tuần",
    }
}

#[derive(Serialize)]
struct ListedCtx {
    title: String,
    url: String,
    excerpt: String,
    published_text: String,
}

#[derive(Serialize)]
struct GroupCtx {
    category: String,
    articles: Vec<ListedCtx>,
}

fn article_ctx(site: &SiteInfo, a: &Article) -> minijinja::Value {
    #[derive(Serialize)]
    struct Ctx<'a> {
        title: &'a str,
        category: &'a str,
        url: String,
        paragraphs: &'a [String],
        author: Option<&'a str>,
        published_text: String,
        excerpt: String,
    }
    minijinja::Value::from(minijinja::value::Serde(Ctx {
        title: &a.title,
        category: &a.category,
        url: site.article_url(&a.id),
        paragraphs: &a.paragraphs,
        author: a.author.as_deref(),
        published_text: local_time(&a.published),
        excerpt: a.excerpt(),
    }))
}

fn dkim_config(d: &crate::config::Dkim) -> Result<lettre::message::dkim::DkimConfig, String> {
    use lettre::message::dkim::{
        DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
        DkimSigningKey,
    };
    let key = std::fs::read_to_string(&d.key_file).map_err(|e| {
        format!(
            "cannot read mail.dkim.key_file '{}': {e}",
            d.key_file.display()
        )
    })?;
    let algorithm = match d.algorithm.as_str() {
        "rsa" => DkimSigningAlgorithm::Rsa,
        "ed25519" => DkimSigningAlgorithm::Ed25519,
        other => {
            return Err(format!(
                "mail.dkim.algorithm '{other}' is not rsa or ed25519"
            ));
        }
    };
    let key = DkimSigningKey::new(key.trim(), algorithm)
        .map_err(|e| format!("mail.dkim.key_file '{}': {e}", d.key_file.display()))?;
    let headers = [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ]
    .into_iter()
    .map(HeaderName::new_from_ascii_str)
    .collect();
    Ok(DkimConfig::new(
        d.selector.clone(),
        d.domain.clone(),
        key,
        headers,
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    ))
}

/// Whether `text` looks like one mail address (what the subscribe form accepts).
pub fn normalize_email(text: &str) -> Option<String> {
    let email = text.trim().to_lowercase();
    if email.len() > 254 || email.contains(char::is_whitespace) {
        return None;
    }
    let (local, domain) = email.rsplit_once('@')?;
    if local.is_empty() || !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.')
    {
        return None;
    }
    email.parse::<Address>().ok()?;
    Some(email)
}

/// Renders every mail template with sample data, as `bantin check` does; one message per
/// problem.
pub fn check_templates(templates: &Templates, site: &SiteInfo) -> Vec<String> {
    let sample = Article {
        id: "mau/bai-mau".into(),
        category: "THÔNG BÁO".into(),
        title: "Bài mẫu <kiểm tra> & \"mẫu\"".into(),
        published: chrono::FixedOffset::east_opt(7 * 3600)
            .expect("valid offset")
            .with_ymd_and_hms(2020, 2, 14, 8, 16, 0)
            .single()
            .expect("valid date"),
        paragraphs: vec!["Đoạn một.".into(), "Đoạn hai.".into()],
        author: Some("HĐND QUẬN CẦU GIẤY".into()),
    };
    let unsubscribe_url = format!("{}/unsubscribe?token=mau", site.base_url);
    let group = GroupCtx {
        category: sample.category.clone(),
        articles: vec![ListedCtx {
            title: sample.title.clone(),
            url: site.article_url(&sample.id),
            excerpt: sample.excerpt(),
            published_text: local_time(&sample.published),
        }],
    };
    let contexts = [
        (
            "alert",
            context! { article => article_ctx(site, &sample), unsubscribe_url => unsubscribe_url.clone() },
        ),
        (
            "digest",
            context! {
                heading => "Bản tin ngày 14/02/2020",
                count => 1,
                groups => minijinja::Value::from(minijinja::value::Serde(vec![group])),
                unsubscribe_url => unsubscribe_url,
            },
        ),
        (
            "confirm",
            context! {
                email => "mau@example.vn",
                confirm_url => format!("{}/confirm?token=mau", site.base_url),
                schedule_label => schedule_label(Schedule::Daily),
                categories => vec!["THÔNG BÁO"],
            },
        ),
    ];
    let mut problems = Vec::new();
    for (name, ctx) in contexts {
        for ext in ["txt", "html"] {
            if let Err(e) = templates.render(&format!("email/{name}.{ext}"), ctx.clone()) {
                problems.push(e.to_string());
            }
        }
    }
    problems
}

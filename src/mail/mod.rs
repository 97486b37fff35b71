//! Mail: what is owed to whom, how it reads, and how it leaves.
//!
//! - [`outbox`]: planning: alerts for new articles, digests, confirmations, cancellations,
//!   written durably before anything is sent.
//! - [`message`]: a delivery rendered into a complete message (pure).
//! - [`transport`]: SMTP (own connection pool), `.eml` files, sendmail; a typed
//!   [`SendError`].
//! - [`worker`]: sending with a concurrency bound and a rate, retries, group commit.
//! - [`inbox`]: bounces, complaints and mailto unsubscribes read back from a Maildir.

pub mod bulletin;
pub mod fresh;
pub mod inbox;
pub mod message;
pub mod outbox;
pub mod pause_log;
pub mod transport;
pub mod worker;

use std::sync::Arc;

use lettre::Address;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use message::{Composer, Links, check_templates};
pub use outbox::{NewsPolicy, Outbox, Pause, may_queue_confirmation, queue_confirmation};
pub use transport::{SendError, Transport};
pub use worker::Worker;

use crate::clock::Clock;
use crate::config::Config;
use crate::scan::{ArticleCache, StoreReader};
use crate::site::SharedTemplates;
use crate::store::{Store, StoreError};
use crate::token::Signer;

/// Why mail could not be set up or planned.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// A setting that cannot work; the message names it.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Mail counters, registered with the daemon's other metrics.
#[derive(Debug, Clone, Default)]
pub struct MailMetrics {
    /// Messages the inbox read, by what they were.
    pub inbox: inbox::InboxCounts,
    /// Notices of published articles the outbox has handled (new ones and edits).
    pub notices: Counter,
    pub sent: Counter,
    pub retried: Counter,
    pub failed: Counter,
    pub cancelled: Counter,
}

impl MailMetrics {
    /// Adds the counters, and gauges of the queue and of a pause read at each scrape.
    pub fn register(&self, registry: &mut Registry, outbox: &outbox::Outbox) {
        registry.register(
            "bantin_inbox_messages",
            "Messages read from the inbox, by kind (bounce, soft_bounce, complaint, \
             unsubscribe, forged, auto_reply, other…)",
            self.inbox.clone(),
        );
        registry.register(
            "bantin_mail_article_notices",
            "Articles the mail side was told were published or edited, handled",
            self.notices.clone(),
        );
        registry.register(
            "bantin_mail_sent",
            "Mails accepted by the mail server",
            self.sent.clone(),
        );
        registry.register(
            "bantin_mail_retries",
            "Temporary failures that will be retried",
            self.retried.clone(),
        );
        registry.register(
            "bantin_mail_failed",
            "Deliveries given up (permanent failure or too old)",
            self.failed.clone(),
        );
        registry.register(
            "bantin_mail_cancelled",
            "Deliveries cancelled before sending",
            self.cancelled.clone(),
        );
        registry.register_collector(Box::new(ScrapedGauges {
            store: outbox.store.clone(),
            fresh: outbox.fresh.clone(),
            pause: outbox.pause.clone(),
            queued: std::sync::Mutex::new(None),
        }));
    }
}

/// How long a count of the queue stands for it: counting walks the whole queue, and a
/// scraper asking every 20 ms (a benchmark, an impatient script) took 7% of the daemon's
/// CPU during a fan-out of 20,000 mails.
const QUEUE_COUNT_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Gauges read when scraped: `bantin_mail_queued` (counted at most once a second), and
/// `bantin_mail_paused` (1 with the reason as a label while delivery is paused, else 0).
#[derive(Debug)]
struct ScrapedGauges {
    store: Store,
    /// Alerts planned in memory (a fan-out's window), not in the queue.
    fresh: Arc<std::sync::Mutex<fresh::Fresh>>,
    pause: Arc<std::sync::Mutex<Option<Pause>>>,
    queued: std::sync::Mutex<Option<(std::time::Instant, usize)>>,
}

impl ScrapedGauges {
    fn queued(&self) -> usize {
        let mut last = self.queued.lock().expect("queued");
        let counted = match *last {
            Some((at, n)) if at.elapsed() < QUEUE_COUNT_FOR => n,
            _ => {
                let n = self.store.queue_len();
                *last = Some((std::time::Instant::now(), n));
                n
            }
        };
        counted + self.fresh.lock().expect("fresh").unrecorded(None)
    }
}

impl Collector for ScrapedGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let queued = ConstGauge::new(self.queued() as i64);
        let metric = encoder.encode_descriptor(
            "bantin_mail_queued",
            "Deliveries waiting to be sent",
            None,
            queued.metric_type(),
        )?;
        queued.encode(metric)?;
        let pause = self.pause.lock().expect("pause").clone();
        let paused = ConstGauge::new(i64::from(pause.is_some()));
        let mut metric = encoder.encode_descriptor(
            "bantin_mail_paused",
            "Whether delivery is paused as a whole, with the reason",
            None,
            paused.metric_type(),
        )?;
        match pause {
            Some(p) => {
                let labels = [("reason", p.reason)];
                paused.encode(metric.encode_family(&labels)?)
            }
            None => paused.encode(metric),
        }
    }
}

/// The mail side, set up from the configuration.
pub struct Mail {
    pub outbox: Outbox,
    pub worker: Arc<Worker>,
    pub links: Links,
    pub metrics: MailMetrics,
}

impl Mail {
    pub fn setup(
        config: &Config,
        store: Store,
        templates: SharedTemplates,
        site: crate::site::SharedSite,
        articles: Arc<ArticleCache>,
        clock: Clock,
    ) -> Result<Mail, MailError> {
        let signer = Signer::load(&config.state.dir, config.mail.token_secret_file.as_deref())?;
        let links = Links::new(signer, config.base_url());
        // Deliveries are named by id only in VERP and mailto unsubscribe addresses.
        store.set_ids(return_path_parts(&config.mail.return_path).is_some());
        let metrics = MailMetrics::default();
        let outbox = Outbox::new(
            store,
            clock,
            metrics.clone(),
            NewsPolicy::from_config(config),
            articles,
            StoreReader {
                root: config.store.dir.clone(),
                tz: config.timezone().map_err(MailError::Config)?,
                max_bytes: config.store.max_bytes,
            },
        );
        let mut outbox = outbox;
        outbox.bulletins = Some(bulletin::BulletinPages {
            templates: templates.clone(),
            site: site.clone(),
            out: config.output.dir.clone(),
        });
        let composer = Composer::from_config(config, templates, site, links.clone())?;
        let transport = Transport::from_config(config, outbox.relay_utf8.clone())?;
        let worker = Worker::new(config, outbox.clone(), composer, transport)?;
        Ok(Mail {
            outbox,
            worker: Arc::new(worker),
            links,
            metrics,
        })
    }
}

/// Whether the relay offers an extension (SMTPUTF8: addresses with non-ASCII letters;
/// 8BITMIME: 8-bit bodies), as its last EHLO said: unknown until bantin has connected to it.
#[derive(Debug, Clone, Default)]
pub struct RelaySays(Arc<std::sync::atomic::AtomicU8>);

impl RelaySays {
    const UNKNOWN: u8 = 0;
    const NO: u8 = 1;
    const YES: u8 = 2;

    pub fn set(&self, supported: bool) {
        let v = if supported { Self::YES } else { Self::NO };
        self.0.store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// `Some(true)` when the relay advertised it, `Some(false)` when it did not, `None`
    /// before any connection.
    pub fn get(&self) -> Option<bool> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            Self::UNKNOWN => None,
            v => Some(v == Self::YES),
        }
    }
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressProblem {
    /// Not one address, or one that cannot be mailed: quoted, an IP literal, control or
    /// invisible or bidirectional characters.
    Invalid,
    /// Non-ASCII letters, and the relay has not said it takes them (SMTPUTF8).
    NeedsUtf8 { relay_said_no: bool },
}

/// The local part and domain of `mail.return_path`, when one is set.
pub fn return_path_parts(return_path: &str) -> Option<(&str, &str)> {
    return_path.trim().rsplit_once('@')
}

/// The local part bounces come back to (`bounces+<token>@…`): the return path's, else
/// `bounces`.
pub fn bounce_local(return_path: &str) -> &str {
    return_path_parts(return_path)
        .map(|(local, _)| local)
        .filter(|l| !l.is_empty())
        .unwrap_or("bounces")
}

/// Whether `text` is one mail address that can be mailed (what the subscribe form and the
/// commands accept), lowercased. Non-ASCII letters pass only when the relay takes them
/// (`utf8`: what it said of SMTPUTF8).
pub fn check_address(text: &str, utf8: Option<bool>) -> Result<String, AddressProblem> {
    let email = text.trim().to_lowercase();
    let invisible = |c: char| {
        c.is_control()
            || matches!(c,
                '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if email.len() > 254
        || email.contains(char::is_whitespace)
        || email.contains(['"', '[', ']', '\\'])
        || email.chars().any(invisible)
    {
        return Err(AddressProblem::Invalid);
    }
    let (local, domain) = email.rsplit_once('@').ok_or(AddressProblem::Invalid)?;
    if local.is_empty() || !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.')
    {
        return Err(AddressProblem::Invalid);
    }
    // A domain typed in Vietnamese has an ASCII name every relay takes (a browser sends that
    // one already): only a non-ASCII local part needs SMTPUTF8.
    let email = if domain.is_ascii() {
        email
    } else {
        let ascii = idna::domain_to_ascii(domain).map_err(|_| AddressProblem::Invalid)?;
        format!("{local}@{ascii}")
    };
    if !email.is_ascii() && utf8 != Some(true) {
        return Err(AddressProblem::NeedsUtf8 {
            relay_said_no: utf8 == Some(false),
        });
    }
    email
        .parse::<Address>()
        .map_err(|_| AddressProblem::Invalid)?;
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::{AddressProblem, check_address};

    /// Without a relay that takes non-ASCII addresses.
    fn normalize_email(text: &str) -> Option<String> {
        check_address(text, Some(false)).ok()
    }

    #[test]
    fn only_addresses_that_can_be_mailed() {
        assert_eq!(
            normalize_email(" Dan@Example.VN ").as_deref(),
            Some("dan@example.vn")
        );
        for bad in [
            "\"a b\"@x.vn",
            "dan@[192.0.2.1]",
            "dan@x.vn\u{200b}",
            "d\u{202e}an@x.vn",
            "dân@x.vn",
            "dan@xn--, x.vn",
            "dan@localhost",
            "@x.vn",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad:?}");
        }
        assert_eq!(
            check_address("dân@x.vn", None),
            Err(AddressProblem::NeedsUtf8 {
                relay_said_no: false
            })
        );
        assert_eq!(
            check_address("dân@x.vn", Some(false)),
            Err(AddressProblem::NeedsUtf8 {
                relay_said_no: true
            })
        );
        assert_eq!(
            check_address("dân@x.vn", Some(true)).as_deref(),
            Ok("dân@x.vn")
        );
        assert_eq!(
            check_address("d\u{202e}ân@x.vn", Some(true)),
            Err(AddressProblem::Invalid)
        );
        // A Vietnamese domain as typed is the one a browser sends in ASCII.
        assert_eq!(
            normalize_email("Lan@BưuĐiện.vn").as_deref(),
            Some("lan@xn--buin-1ua66gr30m.vn")
        );
        assert_eq!(
            check_address("dân@bưuđiện.vn", Some(true)).as_deref(),
            Ok("dân@xn--buin-1ua66gr30m.vn")
        );
    }
}

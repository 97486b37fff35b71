//! A delivery rendered into a mail: subject, text and HTML bodies from the templates, then the
//! complete message with its list headers and DKIM signature. Pure: the articles, the
//! subscriber's choices and the date are handed in; nothing here reads the store or the clock.

use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use lettre::message::header::ContentTransferEncoding;
use lettre::message::header::ContentType;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use minijinja::context;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::MailError;
use crate::article::Article;
use crate::config::Config;
use crate::feed::SiteInfo;
use crate::library::Entry;
use crate::site::{SharedTemplates, Templates, local_time};
use crate::store::{Delivery, Kind};
use crate::subscriber::Schedule;
use crate::token::{Purpose, Signer};

/// The signed links of a mail: unsubscribe and confirm.
#[derive(Clone)]
pub struct Links {
    pub signer: Signer,
    /// `site.base_url`, shared by every clone: a reload changes it for all.
    base_url: std::sync::Arc<std::sync::RwLock<String>>,
}

impl Links {
    pub fn new(signer: Signer, base_url: &str) -> Links {
        Links {
            signer,
            base_url: std::sync::Arc::new(std::sync::RwLock::new(base_url.to_owned())),
        }
    }

    /// A new `site.base_url` (a reload).
    pub fn set_base_url(&self, base_url: &str) {
        *self.base_url.write().expect("base url") = base_url.to_owned();
    }

    /// The link that unsubscribes `email`, issued at `issued` (unix seconds).
    pub fn unsubscribe_url(&self, email: &str, issued: i64) -> String {
        self.url("unsubscribe", Purpose::Unsubscribe, email, issued)
    }

    pub fn confirm_url(&self, email: &str, issued: i64) -> String {
        self.url("confirm", Purpose::Confirm, email, issued)
    }

    pub fn preferences_url(&self, email: &str, issued: i64) -> String {
        self.url("preferences", Purpose::Preferences, email, issued)
    }

    fn url(&self, route: &str, purpose: Purpose, email: &str, issued: i64) -> String {
        self.token_url(route, &self.signer.sign(purpose, email, issued))
    }

    /// The link to `route` carrying `token`.
    fn token_url(&self, route: &str, token: &str) -> String {
        format!(
            "{}/{route}?token={token}",
            self.base_url.read().expect("base url"),
        )
    }

    /// What a token says, if it is genuine and for `purpose`.
    pub fn verify(&self, purpose: Purpose, token: &str) -> Option<crate::token::Verified> {
        self.signer.verify(purpose, token)
    }
}

/// Why a delivery cannot be made into a mail. Our side's fault, never the address's.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("article '{0}' can no longer be read")]
    ArticleGone(String),
    #[error("every article of the digest is gone")]
    NothingLeft,
    #[error(transparent)]
    Template(#[from] crate::site::TemplateError),
    #[error("'{address}' is not a mail address: {message}")]
    Address { address: String, message: String },
    #[error("cannot build the mail: {0}")]
    Build(String),
    #[error("the content does not fit the kind of delivery")]
    Mismatch,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What a delivery is about, read by the caller.
#[derive(Clone, Copy)]
pub enum Content<'a> {
    /// The article, and its entry (its last change, for the event's calendar).
    Alert(&'a Article, &'a Entry),
    /// A correction of the article, as planned.
    Correction(&'a Article, &'a Entry, &'a crate::store::Correction),
    /// The articles of a digest still readable, newest first.
    Digest(&'a [Arc<Article>]),
    /// The choices of the subscriber being asked to confirm; `active`: one subscribed
    /// already, who asked on the form again and gets the links to change or end it.
    Confirm {
        schedule: Schedule,
        categories: &'a [String],
        active: bool,
    },
}

/// A rendered mail before its headers are set.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
    /// A bulk mail (alert, digest) carries the unsubscribe headers; a confirmation does not.
    pub bulk: bool,
    /// An event's calendar, attached: (file name, iCalendar text).
    pub calendar: Option<(String, String)>,
    /// The delivery key of the mail this one answers (a correction), for threading.
    pub answers: Option<String>,
    /// The rendering shared by every recipient this one was filled in from, if any: its
    /// body is encoded once too.
    filled: Option<Filled>,
}

/// A shared rendering and the tokens filled into it for one recipient.
#[derive(Clone)]
struct Filled {
    shared: Arc<Shared>,
    personal: Personal,
    /// The text and HTML are left empty until needed: a mail sent in 8 bits takes its
    /// body from the shared one, encoded once (see [`Rendered::complete`]).
    pending: bool,
}

impl Filled {
    /// The mail's 8-bit body, from the shared one (encoded once) with this recipient's
    /// tokens; `None` when the shared one cannot take them (a part was encoded, so the
    /// markers are not there as they are, or a line would grow too long).
    fn body(&self) -> Option<(HeaderValue, Body)> {
        let shared = &self.shared;
        let cached = shared.body.get_or_init(|| {
            let r = &shared.rendered;
            let (content_type, body) =
                mime_body(r.text.clone(), r.html.clone(), r.calendar.clone(), true).ok()?;
            let text = String::from_utf8(body.into_vec()).ok()?;
            let markers = Personal::markers();
            let as_is = [&markers.unsubscribe, &markers.preferences]
                .iter()
                .all(|m| {
                    text.matches(m.as_str()).count()
                        == r.text.matches(m.as_str()).count() + r.html.matches(m.as_str()).count()
                });
            let short = text.split('\n').all(|line| line.len() <= LINE_MAX + 1);
            let encoding = match text.is_ascii() {
                true => ContentTransferEncoding::SevenBit,
                false => ContentTransferEncoding::EightBit,
            };
            (as_is && short).then_some((content_type_header(content_type), text, encoding))
        });
        let (content_type, text, encoding) = cached.as_ref()?;
        // Tokens are ASCII, as the markers: only the lines they went into can have grown.
        let (text, at) = self.personal.put_in_at(text);
        let bytes = text.as_bytes();
        let too_long = at.iter().any(|&i| {
            let start = memchr::memrchr(b'\n', &bytes[..i]).map_or(0, |n| n + 1);
            let end = memchr::memchr(b'\n', &bytes[i..]).map_or(bytes.len(), |n| i + n);
            end - start > LINE_MAX + 1
        });
        if too_long {
            return None;
        }
        Some((
            content_type.clone(),
            Body::dangerous_pre_encoded(text.into_bytes(), *encoding),
        ))
    }
}

impl Rendered {
    /// This rendering with its text and HTML, when they were left to be filled in.
    fn complete(mut self) -> Rendered {
        if let Some(filled) = self.filled.as_mut().filter(|f| f.pending) {
            let shared = &filled.shared.rendered;
            self.text = filled.personal.put_in(&shared.text);
            self.html = filled.personal.put_in(&shared.html);
            filled.pending = false;
        }
        self
    }
}

impl std::fmt::Debug for Filled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filled")
    }
}

/// Two renderings are the same when they say the same, however they were made.
impl PartialEq for Rendered {
    fn eq(&self, other: &Rendered) -> bool {
        (
            &self.subject,
            &self.text,
            &self.html,
            self.bulk,
            &self.calendar,
            &self.answers,
        ) == (
            &other.subject,
            &other.text,
            &other.html,
            other.bulk,
            &other.calendar,
            &other.answers,
        )
    }
}

impl Eq for Rendered {}

/// A message ready for the transport.
pub struct Composed {
    pub envelope: lettre::address::Envelope,
    /// The formatted message, DKIM signatures first.
    pub bytes: Vec<u8>,
}

/// The headers every mail has the same, encoded once.
struct Fixed {
    auto_submitted: HeaderValue,
    one_click: HeaderValue,
    mime_version: HeaderValue,
}

static FIXED: std::sync::LazyLock<Fixed> = std::sync::LazyLock::new(|| Fixed {
    auto_submitted: HeaderValue::new(
        HeaderName::new_from_ascii_str("Auto-Submitted"),
        "auto-generated".into(),
    ),
    one_click: HeaderValue::new(
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click".into(),
    ),
    mime_version: {
        use lettre::message::header::Header;
        lettre::message::header::MIME_VERSION_1_0.display()
    },
});

/// Room for a mail's headers, which are about 1 KB.
const HEADERS_SIZE: usize = 2048;

/// Turns deliveries into messages.
pub struct Composer {
    templates: SharedTemplates,
    site: crate::site::SharedSite,
    tz: Tz,
    from: Mailbox,
    /// The From header, encoded once.
    from_header: HeaderValue,
    list_id: String,
    /// The path of `site.base_url` without slashes at its ends (empty for a site at the
    /// root of its host).
    scope: String,
    /// Domain of Message-IDs.
    domain: String,
    /// Every key signs every mail.
    dkim: Vec<lettre::message::dkim::DkimConfig>,
    pub links: Links,
    /// `mail.return_path` split in (local part, domain): the VERP envelope sender.
    return_path: Option<(String, String)>,
    /// `mail.confirm_days`: how long a confirmation link works (its mail says so).
    confirm_days: u64,
    /// Alerts and corrections rendered once per article, with what differs per recipient
    /// left as markers.
    shared: std::sync::Mutex<Vec<Arc<Shared>>>,
}

/// What differs between two recipients of one alert or correction once the line saying
/// why the mail came is the same: the tokens of their links. A token is made of characters
/// that no escaping changes (`A-Z a-z 0-9 - _ .`), so it can be filled into a rendering
/// made with a marker in its place.
#[derive(Clone)]
struct Personal {
    unsubscribe: String,
    preferences: String,
}

impl Personal {
    /// `text` (made with the markers) with these tokens in their place.
    fn put_in(&self, text: &str) -> String {
        self.put_in_at(text).0
    }

    /// [`Personal::put_in`] in one pass over `text`, and where each token went in the result
    /// (for a mail, thousands of times per article, two passes per marker were measurable).
    fn put_in_at(&self, text: &str) -> (String, Vec<usize>) {
        static PREFIX: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(MARKER_PREFIX.as_bytes()));
        // Room for the tokens of a mail's text and HTML parts (each has a few links), so
        // that the body is not copied again to grow.
        let mut out = String::with_capacity(
            text.len() + 8 * self.unsubscribe.len().max(self.preferences.len()),
        );
        let mut at = Vec::new();
        let mut rest = text;
        while let Some(i) = PREFIX.find(rest.as_bytes()) {
            let (before, from) = rest.split_at(i);
            out.push_str(before);
            let token = if from.starts_with(UNSUBSCRIBE_MARKER) {
                Some((&self.unsubscribe, UNSUBSCRIBE_MARKER.len()))
            } else if from.starts_with(PREFERENCES_MARKER) {
                Some((&self.preferences, PREFERENCES_MARKER.len()))
            } else {
                None
            };
            match token {
                Some((token, skip)) => {
                    at.push(out.len());
                    out.push_str(token);
                    rest = &from[skip..];
                }
                None => {
                    out.push_str(MARKER_PREFIX);
                    rest = &from[MARKER_PREFIX.len()..];
                }
            }
        }
        out.push_str(rest);
        (out, at)
    }

    /// Markers in the same characters as a token, which no article is likely to hold.
    fn markers() -> Personal {
        Personal {
            unsubscribe: UNSUBSCRIBE_MARKER.into(),
            preferences: PREFERENCES_MARKER.into(),
        }
    }
}

/// What every marker begins with (the one-pass filling looks for it).
const MARKER_PREFIX: &str = "bantin-MARKER.";
const UNSUBSCRIBE_MARKER: &str = "bantin-MARKER.unsubscribe.Qx7";
const PREFERENCES_MARKER: &str = "bantin-MARKER.preferences.Qx7";

/// The rendering of one alert or correction for every recipient with the same 'why' line,
/// keyed by what it was made from (the article's file as read, the templates and the site
/// in force).
struct Shared {
    key: (Arc<str>, crate::library::Stamp, Option<u32>, String),
    templates: Arc<Templates>,
    site: Arc<SiteInfo>,
    rendered: Rendered,
    /// Its 8-bit body, encoded once with the markers in it: (Content-Type, body).
    body: std::sync::OnceLock<Option<(HeaderValue, String, ContentTransferEncoding)>>,
    /// Whether filling in the tokens gives what rendering for the recipient gives: decided
    /// at the first recipient. A template that does more with the links than print them
    /// (cuts or counts them) is rendered for each recipient instead.
    faithful: std::sync::OnceLock<bool>,
    /// Its Subject and List-Id headers, encoded once.
    headers: std::sync::OnceLock<(HeaderValue, HeaderValue)>,
}

impl Shared {
    /// The shared rendering with `personal`'s tokens (its text and HTML are not copied
    /// first only to be replaced).
    fn fill(&self, personal: &Personal) -> Rendered {
        let r = &self.rendered;
        Rendered {
            subject: r.subject.clone(),
            text: personal.put_in(&r.text),
            html: personal.put_in(&r.html),
            bulk: r.bulk,
            calendar: r.calendar.clone(),
            answers: r.answers.clone(),
            filled: r.filled.clone(),
        }
    }
}

/// Shared renderings kept: the articles being sent at once, with room for a reload.
const SHARED_KEPT: usize = 64;

impl Composer {
    pub fn from_config(
        config: &Config,
        templates: SharedTemplates,
        site: crate::site::SharedSite,
        links: Links,
    ) -> Result<Composer, MailError> {
        let from: Mailbox = config
            .mail
            .from
            .parse()
            .map_err(|e| MailError::Config(format!("mail.from '{}': {e}", config.mail.from)))?;
        let domain = from.email.domain().to_string();
        // Councils sharing a host and a sender domain are told apart by their path: their
        // lists and Message-IDs must differ (a digest's key is the same tick for both).
        let scope = crate::feed::base_path(config.base_url())
            .trim_start_matches('/')
            .to_owned();
        let list_id =
            config
                .mail
                .list_id
                .clone()
                .unwrap_or_else(|| match scope.replace('/', ".") {
                    path if path.is_empty() => format!("bantin.{domain}"),
                    path => format!("{path}.bantin.{domain}"),
                });
        let dkim = config
            .mail
            .dkim
            .iter()
            .map(dkim_config)
            .collect::<Result<_, _>>()?;
        let return_path = super::return_path_parts(&config.mail.return_path)
            .map(|(local, domain)| (local.to_owned(), domain.to_owned()));
        Ok(Composer {
            return_path,
            templates,
            site,
            tz: config.timezone().map_err(MailError::Config)?,
            from_header: from_header(&from),
            from,
            list_id,
            domain,
            scope,
            dkim,
            links,
            confirm_days: config.mail.confirm_days,
            shared: std::sync::Mutex::default(),
        })
    }

    /// Renders the subject and bodies of `delivery` about `content`, for `subscriber` (whose
    /// choices the footer recalls; `None` for a confirmation).
    ///
    /// An alert or a correction is rendered once for all its recipients with the same line
    /// saying why the mail came, and only the tokens of their links are filled in.
    pub fn render(
        &self,
        delivery: &Delivery,
        content: Content<'_>,
        subscriber: Option<&crate::subscriber::Subscriber>,
    ) -> Result<Rendered, ComposeError> {
        self.render_to_send(delivery, content, subscriber)
            .map(Rendered::complete)
    }

    /// [`Composer::render`] for [`Composer::message`], which fills in the text and HTML
    /// only if it does not take the shared body.
    pub fn render_to_send(
        &self,
        delivery: &Delivery,
        content: Content<'_>,
        subscriber: Option<&crate::subscriber::Subscriber>,
    ) -> Result<Rendered, ComposeError> {
        let templates = crate::site::current(&self.templates);
        let site = self.site.read().expect("site").clone();
        // Links carry the time the delivery was made: a retry renders the same links.
        let issued = delivery.created_ms.div_euclid(1000);
        let why = match &delivery.kind {
            Kind::Alert { .. } => why_line(&site, subscriber, Schedule::Immediate),
            _ => String::new(),
        };
        let key = match (&delivery.kind, &content) {
            (Kind::Alert { .. }, Content::Alert(_, entry)) => {
                Some((entry.id.clone(), entry.stamp, None, why))
            }
            (Kind::Correction { .. }, Content::Correction(_, entry, record)) => {
                Some((entry.id.clone(), entry.stamp, Some(record.n), why))
            }
            _ => None,
        };
        let personal = Personal {
            unsubscribe: self
                .links
                .signer
                .sign(Purpose::Unsubscribe, &delivery.email, issued),
            preferences: self
                .links
                .signer
                .sign(Purpose::Preferences, &delivery.email, issued),
        };
        let Some(key) = key else {
            return self.render_for(&templates, &site, delivery, content, subscriber, &personal);
        };
        let cached = {
            let shared = self.shared.lock().expect("shared renderings");
            shared
                .iter()
                .find(|s| {
                    s.key == key
                        && Arc::ptr_eq(&s.templates, &templates)
                        && Arc::ptr_eq(&s.site, &site)
                })
                .cloned()
        };
        let shared = match cached {
            Some(shared) => shared,
            None => {
                let rendered = self.render_for(
                    &templates,
                    &site,
                    delivery,
                    content,
                    subscriber,
                    &Personal::markers(),
                )?;
                let made = Arc::new(Shared {
                    key,
                    templates: templates.clone(),
                    site: site.clone(),
                    rendered,
                    body: std::sync::OnceLock::new(),
                    faithful: std::sync::OnceLock::new(),
                    headers: std::sync::OnceLock::new(),
                });
                let mut shared = self.shared.lock().expect("shared renderings");
                if shared.len() >= SHARED_KEPT {
                    shared.remove(0);
                }
                shared.push(made.clone());
                made
            }
        };
        // The mail a correction answers is the recipient's own.
        let answers = match &delivery.kind {
            Kind::Correction { reply_to, .. } => Some(reply_to.clone()),
            _ => None,
        };
        let fill = |personal: &Personal| Rendered {
            answers: answers.clone(),
            ..shared.fill(personal)
        };
        match shared.faithful.get() {
            Some(true) => {
                let r = &shared.rendered;
                Ok(Rendered {
                    subject: r.subject.clone(),
                    text: String::new(),
                    html: String::new(),
                    bulk: r.bulk,
                    calendar: r.calendar.clone(),
                    answers,
                    filled: Some(Filled {
                        shared: shared.clone(),
                        personal,
                        pending: true,
                    }),
                })
            }
            Some(false) => {
                self.render_for(&templates, &site, delivery, content, subscriber, &personal)
            }
            None => {
                let own =
                    self.render_for(&templates, &site, delivery, content, subscriber, &personal)?;
                let faithful = fill(&personal) == own;
                if !faithful {
                    tracing::info!(
                        article = &*shared.key.0,
                        "the mail templates do more with the links than print them: each \
                         mail of this article is rendered on its own"
                    );
                }
                let _ = shared.faithful.set(faithful);
                Ok(own)
            }
        }
    }

    /// Renders `delivery` with the recipient's values `personal`.
    fn render_for(
        &self,
        templates: &Templates,
        site: &SiteInfo,
        delivery: &Delivery,
        content: Content<'_>,
        subscriber: Option<&crate::subscriber::Subscriber>,
        personal: &Personal,
    ) -> Result<Rendered, ComposeError> {
        let render = |name: &str, ctx: &minijinja::Value| -> Result<_, ComposeError> {
            let text = templates.render(&format!("email/{name}.txt"), ctx.clone())?;
            let html = templates.render(&format!("email/{name}.html"), ctx.clone())?;
            Ok((text, html))
        };
        let unsubscribe_url = self.links.token_url("unsubscribe", &personal.unsubscribe);
        let preferences_url = self.links.token_url("preferences", &personal.preferences);
        let calendar = |a: &Article, entry: &Entry| {
            entry.event.map(|_| {
                let event = crate::calendar::CalEvent {
                    entry,
                    description: Some(a.excerpt()),
                };
                (
                    "lich.ics".to_owned(),
                    crate::calendar::ics(site, self.tz, &a.title, &[event]),
                )
            })
        };
        let mut attached = None;
        let mut answers = None;
        let why = |schedule: Schedule| why_line(site, subscriber, schedule);
        let (subject, name, ctx, bulk) = match (&delivery.kind, content) {
            (Kind::Alert { .. }, Content::Alert(a, entry)) => {
                attached = calendar(a, entry);
                (
                    alert_subject(a),
                    "alert",
                    context! {
                        article => article_ctx(site, a),
                        preheader => first_sentence(a),
                        why => why(Schedule::Immediate),
                        web_url => site.article_url(&a.id),
                        unsubscribe_url => unsubscribe_url,
                        preferences_url => preferences_url,
                    },
                    true,
                )
            }
            (Kind::Correction { reply_to, .. }, Content::Correction(a, entry, record)) => {
                attached = calendar(a, entry);
                answers = Some(reply_to.clone());
                let changes = crate::correction::changes(&record.before, &record.after);
                let at = self
                    .tz
                    .timestamp_millis_opt(record.at_ms)
                    .single()
                    .map(|t| t.format("%H:%M %d/%m/%Y").to_string())
                    .unwrap_or_default();
                (
                    format!("Đính chính: {}", a.title),
                    "correction",
                    context! {
                        article => article_ctx(site, a),
                        preheader => record.reason.clone(),
                        why => format!(
                            "Bạn nhận thư này vì {} đã gửi bài này tới bạn; lời đính chính được \
                             gửi tới mọi người đã nhận bài.",
                            site.title
                        ),
                        web_url => site.article_url(&a.id),
                        reason => record.reason.clone(),
                        at_text => at,
                        changes_text => crate::correction::as_text(&changes),
                        changes => minijinja::Value::from(minijinja::value::Serde(changes)),
                        unsubscribe_url => unsubscribe_url,
                        preferences_url => preferences_url,
                    },
                    true,
                )
            }
            (Kind::Digest { schedule, run, .. }, Content::Digest(articles)) => {
                let groups = group_by_category(site, articles);
                if groups.is_empty() {
                    return Err(ComposeError::NothingLeft);
                }
                let count = articles.len();
                let date = bulletin_date(self.tz, *run);
                let heading = bulletin_heading(*schedule, date);
                let bulletin_url = format!("{}/{}", site.base_url, bulletin_path(*schedule, date));
                let titles: Vec<&str> = articles.iter().map(|a| a.title.as_str()).collect();
                (
                    format!("{heading} – {count} tin mới"),
                    "digest",
                    context! {
                        heading => heading,
                        count => count,
                        groups => minijinja::Value::from(minijinja::value::Serde(groups)),
                        preheader => titles.join(" · "),
                        why => why(*schedule),
                        web_url => bulletin_url.clone(),
                        bulletin_url => bulletin_url,
                        unsubscribe_url => unsubscribe_url,
                        preferences_url => preferences_url,
                    },
                    true,
                )
            }
            (
                Kind::Confirm { at },
                Content::Confirm {
                    schedule,
                    categories,
                    active,
                },
            ) => (
                if active {
                    format!("Cách nhận tin của bạn – {}", site.title)
                } else {
                    format!("Xác nhận đăng ký nhận tin – {}", site.title)
                },
                "confirm",
                context! {
                    preheader => if active {
                        "Bạn đã đăng ký nhận tin: đổi cách nhận tin hay thôi nhận tin bằng các liên kết trong thư."
                    } else {
                        "Bấm nút trong thư để bắt đầu nhận tin; nếu không phải bạn, hãy bỏ qua thư này."
                    },
                    email => delivery.email.clone(),
                    active => active,
                    confirm_url => self.links.confirm_url(&delivery.email, *at),
                    confirm_days => self.confirm_days,
                    // Not `preferences_url` and `unsubscribe_url`: the footer would show
                    // them again under the body that is about them.
                    change_url => active.then(|| self.links.preferences_url(&delivery.email, *at)),
                    leave_url => active.then(|| self.links.unsubscribe_url(&delivery.email, *at)),
                    schedule_label => schedule_label(schedule),
                    categories => categories.to_vec(),
                },
                false,
            ),
            _ => return Err(ComposeError::Mismatch),
        };
        let (text, html) = render(name, &ctx)?;
        Ok(Rendered {
            subject,
            text,
            html,
            bulk,
            calendar: attached,
            answers,
            filled: None,
        })
    }

    /// The Message-ID of a delivery: derived from its key, so a retry reuses it, and from
    /// the council's path when it has one.
    pub fn message_id(&self, key: &str) -> String {
        let digest = if self.scope.is_empty() {
            Sha256::digest(key.as_bytes())
        } else {
            Sha256::digest(format!("{}\0{key}", self.scope).as_bytes())
        };
        let hex = crate::token::hex(&digest[..16]);
        format!("<{hex}.bantin@{}>", self.domain)
    }

    /// The complete message of a delivery, dated `date`, signed by every DKIM key. With
    /// `eight_bit` (the relay advertised 8BITMIME), the text and HTML go as they are,
    /// unless a line is too long for it; otherwise each is quoted-printable or base64,
    /// whichever is smaller.
    pub fn message(
        &self,
        key: &str,
        delivery: &Delivery,
        rendered: Rendered,
        date: DateTime<Utc>,
        eight_bit: bool,
    ) -> Result<Composed, ComposeError> {
        let to: Mailbox = delivery
            .email
            .parse::<Address>()
            .map(|a| Mailbox::new(None, a))
            .map_err(|e| ComposeError::Address {
                address: delivery.email.clone(),
                message: e.to_string(),
            })?;
        // VERP: the envelope sender names this delivery, so a bounce says whom it is about;
        // the same token lets a mail to unsubscribe+<token>@ end the subscription.
        let verp = self.return_path.as_ref().map(|(local, domain)| {
            let token = self
                .links
                .signer
                .sign_short(&crate::store::delivery_id(key));
            (
                format!("{local}+{token}@{domain}"),
                format!("unsubscribe+{token}@{domain}"),
            )
        });
        use lettre::message::header::{self as h, Header};
        // The headers in the order lettre's builder puts them, each encoded as it does; the
        // article's own (subject, list) are encoded once for all its recipients.
        let common = match &rendered.filled {
            Some(filled) => filled.shared.headers.get_or_init(|| {
                (
                    h::Subject::from(rendered.subject.clone()).display(),
                    self.list_id_header(&filled.shared.site.title),
                )
            }),
            None => &(
                h::Subject::from(rendered.subject.clone()).display(),
                self.list_id_header(&self.site.read().expect("site").title),
            ),
        };
        let mut headers = Vec::with_capacity(16);
        headers.push(self.from_header.clone());
        headers.push(h::To::from(lettre::message::Mailboxes::from(to.clone())).display());
        headers.push(common.0.clone());
        headers.push(h::MessageId::from(self.message_id(key)).display());
        headers.push(h::Date::new(date.into()).display());
        headers.push(common.1.clone());
        // Out-of-office and other robots do not answer (RFC 3834).
        headers.push(FIXED.auto_submitted.clone());
        let envelope = match &verp {
            Some((sender, _)) => {
                let sender: Address = sender
                    .parse()
                    .map_err(|e| ComposeError::Build(format!("return path '{sender}': {e}")))?;
                lettre::address::Envelope::new(Some(sender), vec![to.email.clone()])
            }
            None => lettre::address::Envelope::new(
                Some(self.from.email.clone()),
                vec![to.email.clone()],
            ),
        }
        .map_err(|e| ComposeError::Build(e.to_string()))?;
        if let Some(answered) = &rendered.answers {
            // Threaded under the mail the person received (RFC 5322 §3.6.4).
            let id = self.message_id(answered);
            headers.push(h::InReplyTo::from(id.clone()).display());
            headers.push(h::References::from(id).display());
        }
        if rendered.bulk {
            let https = match &rendered.filled {
                // The token the body carries already.
                Some(filled) => self
                    .links
                    .token_url("unsubscribe", &filled.personal.unsubscribe),
                None => self
                    .links
                    .unsubscribe_url(&delivery.email, delivery.created_ms.div_euclid(1000)),
            };
            let value = match &verp {
                Some((_, mailto)) => {
                    format!("<{https}>, <mailto:{mailto}?subject=unsubscribe>")
                }
                None => format!("<{https}>"),
            };
            headers.push(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                value,
            ));
            headers.push(FIXED.one_click.clone());
        }
        // The multipart's own Content-Type goes into the message's headers, so that DKIM
        // covers it (lettre signs only the message's headers, and writes a multipart's
        // Content-Type with the body).
        let shared_body = match (&rendered.filled, eight_bit) {
            (Some(filled), true) => filled.body(),
            _ => None,
        };
        let (content_type, body) = match shared_body {
            Some(body) => body,
            None => {
                let r = rendered.complete();
                let (content_type, body) = mime_body(r.text, r.html, r.calendar, eight_bit)?;
                (content_type_header(content_type), body)
            }
        };
        headers.push(FIXED.mime_version.clone());
        headers.push(content_type);
        let encoding = body.encoding();
        headers.push(encoding.display());
        let body = body.into_vec();
        // As lettre formats a message: its headers (encoded and folded already), an empty
        // line, the body.
        let mut all = lettre::message::header::Headers::with_capacity(headers.len());
        let to_sign = (!self.dkim.is_empty()).then(|| headers.clone());
        for value in headers {
            all.insert_raw(value);
        }
        let mut text = String::with_capacity(HEADERS_SIZE);
        write!(text, "{all}\r\n").expect("a String takes any text");
        let mut bytes = text.into_bytes();
        bytes.reserve_exact(body.len());
        bytes.extend_from_slice(&body);
        if let Some(headers) = to_sign {
            bytes = self.signed(headers, &envelope, (body, encoding), bytes)?;
        }
        Ok(Composed { envelope, bytes })
    }

    /// `unsigned` (the message of `headers` and `body`) with a DKIM-Signature of each key in
    /// front of it. lettre keeps one DKIM-Signature header: each key signs the unsigned
    /// message and the signatures are put in front of it (none covers another, as RFC 6376
    /// allows).
    fn signed(
        &self,
        headers: Vec<HeaderValue>,
        envelope: &lettre::address::Envelope,
        (body, encoding): (Vec<u8>, ContentTransferEncoding),
        unsigned: Vec<u8>,
    ) -> Result<Vec<u8>, ComposeError> {
        let mut builder = Message::builder().envelope(envelope.clone());
        for value in headers {
            builder = builder.raw_header(value);
        }
        let message = builder
            .body(Body::dangerous_pre_encoded(body, encoding))
            .map_err(|e| ComposeError::Build(e.to_string()))?;
        let mut signatures = lettre::message::header::Headers::new();
        let mut bytes = Vec::with_capacity(unsigned.len() + 1024);
        for dkim in &self.dkim {
            let mut signed = message.clone();
            signed.sign(dkim);
            if let Some(value) = signed.headers().get_raw("DKIM-Signature") {
                signatures.insert_raw(HeaderValue::new(
                    HeaderName::new_from_ascii_str("DKIM-Signature"),
                    value.to_owned(),
                ));
                bytes.extend_from_slice(signatures.to_string().as_bytes());
                signatures.clear();
            }
        }
        bytes.extend_from_slice(&unsigned);
        Ok(bytes)
    }

    /// The List-Id header of a site titled `title`.
    fn list_id_header(&self, title: &str) -> HeaderValue {
        HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Id"),
            format!("{title} <{}>", self.list_id),
        )
    }
}

/// The Content-Type header of a mail's body (see [`mime_body`]).
fn content_type_header(value: String) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str("Content-Type"), value)
}

/// The From header of `from`, as lettre's builder makes it.
fn from_header(from: &Mailbox) -> HeaderValue {
    use lettre::message::header::Header;
    lettre::message::header::From::from(lettre::message::Mailboxes::from(from.clone())).display()
}

/// The body of a mail: its text and HTML as alternatives, with the event's calendar
/// attached; and the multipart's Content-Type, for the message's headers.
fn mime_body(
    text: String,
    html: String,
    calendar: Option<(String, String)>,
    eight_bit: bool,
) -> Result<(String, Body), ComposeError> {
    let part = |content_type: ContentType, text: String, html: bool| {
        let body = match eight_bit {
            true => eight_bit_body(&text, html).unwrap_or_else(|| Body::new(text)),
            false => Body::new(text),
        };
        SinglePart::builder().header(content_type).body(body)
    };
    let alternative = MultiPart::alternative()
        .singlepart(part(ContentType::TEXT_PLAIN, text, false))
        .singlepart(part(ContentType::TEXT_HTML, html, true));
    let alternative = match calendar {
        // The event travels as a file the mail program offers to add to a calendar.
        Some((file_name, ics)) => MultiPart::mixed().multipart(alternative).singlepart(
            lettre::message::Attachment::new(file_name).body(
                ics.into_bytes(),
                lettre::message::header::ContentType::parse(
                    "text/calendar; charset=utf-8; method=PUBLISH",
                )
                .map_err(|e| ComposeError::Build(e.to_string()))?,
            ),
        ),
        None => alternative,
    };
    let content_type = alternative
        .headers()
        .get_raw("Content-Type")
        .ok_or_else(|| ComposeError::Build("no Content-Type".into()))?
        .to_owned();
    let formatted = alternative.formatted();
    let body_at = formatted
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ComposeError::Build("no body".into()))?
        + 4;
    // Already encoded: the parts are 7-bit (quoted-printable or base64, lines of at most
    // 76 characters plus the soft-break '='), or 8-bit text in lines of at most 998 bytes.
    let body = Body::dangerous_pre_encoded(
        formatted[body_at..].to_vec(),
        match eight_bit && !formatted[body_at..].is_ascii() {
            true => ContentTransferEncoding::EightBit,
            false => ContentTransferEncoding::SevenBit,
        },
    );
    Ok((content_type, body))
}

/// Why a mail came: the subscriber's schedule and categories, in words.
fn why_line(
    site: &SiteInfo,
    subscriber: Option<&crate::subscriber::Subscriber>,
    schedule: Schedule,
) -> String {
    let categories = subscriber
        .map(|s| s.categories.join(", "))
        .filter(|c| !c.is_empty())
        .map_or("mọi chuyên mục".to_owned(), |c| {
            format!("chuyên mục: {c}")
        });
    format!(
        "Bạn nhận thư này vì đã đăng ký nhận {} của {} ({categories}).",
        schedule_label(schedule),
        site.title
    )
}

/// The longest line an 8-bit body may have, without its CRLF (RFC 5322 section 2.1.1).
const LINE_MAX: usize = 998;

/// `text` as an 8-bit body (RFC 6152): its lines ended by CRLF, none longer than 998
/// bytes, no NUL and no lone CR. In `html`, a longer line (a long paragraph) is folded at
/// a space between tags, which HTML shows alike, unless the page keeps its spaces (`<pre>`,
/// `white-space`). `None` when it does not fit, to be encoded instead. (lettre holds 8-bit
/// lines to the 76 characters of quoted-printable, which a Vietnamese line of 72 letters
/// passes in bytes.)
fn eight_bit_body(text: &str, html: bool) -> Option<Body> {
    let foldable = html && !text.contains("<pre") && !text.contains("white-space");
    let mut out = Vec::with_capacity(text.len() + text.len() / 32 + 2);
    for line in text.split_inclusive('\n') {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let mut line = line.strip_suffix('\r').unwrap_or(line);
        if line.bytes().any(|b| b == 0 || b == b'\r') {
            return None;
        }
        while line.len() > LINE_MAX {
            if !foldable {
                return None;
            }
            let at = fold_point(line)?;
            out.extend_from_slice(&line.as_bytes()[..at]);
            out.extend_from_slice(b"\r\n");
            line = &line[at + 1..];
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Some(Body::dangerous_pre_encoded(
        out,
        ContentTransferEncoding::EightBit,
    ))
}

/// The last space of `line` within [`LINE_MAX`] bytes that is outside a tag.
fn fold_point(line: &str) -> Option<usize> {
    let mut in_tag = false;
    let mut last = None;
    for (i, b) in line.bytes().enumerate().take(LINE_MAX + 1) {
        match b {
            b'<' => in_tag = true,
            b'>' => in_tag = false,
            b' ' if !in_tag && i > 0 => last = Some(i),
            _ => {}
        }
    }
    last
}

/// A file-system-safe name for a delivery (the `file` transport).
pub fn key_file_name(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex = crate::token::hex(&digest[..12]);
    let kind = key.split('\0').next().unwrap_or("m");
    format!("{kind}-{hex}")
}

pub fn schedule_label(schedule: Schedule) -> &'static str {
    match schedule {
        Schedule::Immediate => "thư ngay khi có tin mới",
        Schedule::Daily => "bản tin hằng ngày",
        Schedule::Weekly => "bản tin hằng tuần",
    }
}

#[derive(Serialize)]
pub struct ListedCtx {
    title: String,
    url: String,
    excerpt: String,
    published_text: String,
    event: Option<crate::site::EventCtx>,
}

#[derive(Serialize)]
pub struct GroupCtx {
    category: String,
    articles: Vec<ListedCtx>,
}

/// The day of a digest run (its tick), in the council's time zone.
pub fn bulletin_date(tz: Tz, run: i64) -> chrono::NaiveDate {
    tz.timestamp_opt(run, 0)
        .single()
        .map(|t| t.date_naive())
        .unwrap_or_default()
}

/// `Bản tin hằng ngày 29/11/2026`, `Bản tin hằng tuần 30/11/2026`.
pub fn bulletin_heading(schedule: Schedule, date: chrono::NaiveDate) -> String {
    let day = date.format("%d/%m/%Y");
    match schedule {
        Schedule::Weekly => format!("Bản tin hằng tuần {day}"),
        _ => format!("Bản tin hằng ngày {day}"),
    }
}

/// An alert's subject: the title, after the event's day when it announces one
/// (`[16/01] Kỳ họp thứ mười`), so the day shows on a phone's first line.
pub fn alert_subject(a: &Article) -> String {
    let day = a.event.map(|when| match when {
        crate::article::When::Timed { start, .. } => start.date(),
        crate::article::When::AllDay { first, .. } => first,
    });
    match day {
        Some(day) => format!("[{}] {}", day.format("%d/%m"), a.title),
        None => a.title.clone(),
    }
}

/// The first sentence of an article (at most [`PREHEADER_CHARS`] characters): the line a
/// mail program shows under the subject.
fn first_sentence(a: &Article) -> String {
    let first = a.paragraphs.first().map(String::as_str).unwrap_or_default();
    let end = first
        .char_indices()
        .find(|&(i, c)| matches!(c, '.' | '!' | '?') && first[i + c.len_utf8()..].starts_with(' '))
        .map_or(first.len(), |(i, c)| i + c.len_utf8());
    let sentence = &first[..end];
    if sentence.chars().count() <= PREHEADER_CHARS {
        sentence.to_owned()
    } else {
        let cut: String = sentence.chars().take(PREHEADER_CHARS).collect();
        let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(head, _)| head);
        format!("{cut}…")
    }
}

/// Characters of preheader text at most.
const PREHEADER_CHARS: usize = 140;

/// The bulletin page of a digest, relative to the site: `bulletins/daily/2026-11-29.html`.
pub fn bulletin_path(schedule: Schedule, date: chrono::NaiveDate) -> String {
    format!(
        "bulletins/{}/{}.html",
        schedule.as_str(),
        date.format("%Y-%m-%d")
    )
}

/// Articles grouped by category, the groups in order of their first article.
pub fn group_by_category(site: &SiteInfo, articles: &[Arc<Article>]) -> Vec<GroupCtx> {
    let mut groups: Vec<GroupCtx> = Vec::new();
    for a in articles {
        let item = ListedCtx {
            title: a.title.clone(),
            url: site.article_url(&a.id),
            excerpt: a.excerpt(),
            published_text: local_time(&a.published),
            event: crate::site::EventCtx::new(site, a),
        };
        match groups.iter_mut().find(|g| g.category == a.category) {
            Some(g) => g.articles.push(item),
            None => groups.push(GroupCtx {
                category: a.category.clone(),
                articles: vec![item],
            }),
        }
    }
    groups
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
        event: Option<crate::site::EventCtx>,
    }
    minijinja::Value::from(minijinja::value::Serde(Ctx {
        event: crate::site::EventCtx::new(site, a),
        title: &a.title,
        category: &a.category,
        url: site.article_url(&a.id),
        paragraphs: &a.paragraphs,
        author: a.author.as_deref(),
        published_text: local_time(&a.published),
        excerpt: a.excerpt(),
    }))
}

fn dkim_config(d: &crate::config::Dkim) -> Result<lettre::message::dkim::DkimConfig, MailError> {
    use lettre::message::dkim::{
        DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
        DkimSigningKey,
    };
    let key = std::fs::read_to_string(&d.key_file).map_err(|e| {
        MailError::Config(format!(
            "cannot read mail.dkim.key_file '{}': {e}",
            d.key_file.display()
        ))
    })?;
    let algorithm = match d.algorithm.as_str() {
        "rsa" => DkimSigningAlgorithm::Rsa,
        "ed25519" => DkimSigningAlgorithm::Ed25519,
        other => {
            return Err(MailError::Config(format!(
                "mail.dkim.algorithm '{other}' is not rsa or ed25519"
            )));
        }
    };
    let key = DkimSigningKey::new(key.trim(), algorithm).map_err(|e| {
        MailError::Config(format!(
            "mail.dkim.key_file '{}': {e}",
            d.key_file.display()
        ))
    })?;
    let headers = [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "Auto-Submitted",
        "MIME-Version",
        "Content-Type",
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

/// The sample article the template checks and the snapshots render.
pub fn sample_article() -> Article {
    Article {
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
        event: None,
        place: None,
        correction: None,
    }
}

/// The entry of a sample article (published and last changed at its publication time).
fn sample_entry(a: &Article) -> Entry {
    Entry::new(a, format!("{}.txt", a.id), Default::default(), a.published)
}

/// A sample event article, with a place and a correction.
pub fn sample_event() -> Article {
    let mut a = sample_article();
    a.id = "mau/ky-hop".into();
    a.title = "Kỳ họp thứ mười".into();
    a.event = Some(crate::article::When::Timed {
        start: a.published.naive_local() + chrono::Duration::days(14),
        end: Some(
            a.published.naive_local() + chrono::Duration::days(14) + chrono::Duration::hours(3),
        ),
    });
    a.place = Some("Hội trường tầng 3, số 36 đường Cầu Giấy".into());
    a.correction = Some("Đổi giờ khai mạc".into());
    a
}

/// A sample correction of `a`: the time and a paragraph changed.
pub fn sample_correction(a: &Article) -> crate::store::Correction {
    let after = crate::correction::Version::of(a);
    let mut before = after.clone();
    before.when = Some("08:00 – 11:00, Thứ Sáu 28/02/2020".into());
    before.paragraphs[0] = "Đoạn đầu, bản cũ.".into();
    crate::store::Correction {
        n: 1,
        reason: a.correction.clone().unwrap_or_default(),
        at_ms: a.published.timestamp_millis() + 3_600_000,
        before,
        after,
        planned: 1,
        compacted: Default::default(),
    }
}

/// Renders every mail template with sample data, as `bantin check` does; one message per
/// problem.
pub fn check_templates(templates: &Templates, site: &SiteInfo) -> Vec<String> {
    let composer = Composer {
        templates: Arc::new(std::sync::RwLock::new(Arc::new(templates.clone()))),
        site: crate::site::share_site(site.clone()),
        tz: chrono_tz::Asia::Ho_Chi_Minh,
        from: "mau@example.vn".parse().expect("valid address"),
        from_header: from_header(&"mau@example.vn".parse().expect("valid address")),
        list_id: "mau.example.vn".into(),
        scope: String::new(),
        domain: "example.vn".into(),
        dkim: Vec::new(),
        links: Links::new(Signer::new(b"mau-mau-mau-mau-mau".to_vec()), &site.base_url),
        return_path: None,
        confirm_days: 7,
        shared: std::sync::Mutex::default(),
    };
    let sample = Arc::new(sample_article());
    let plain_entry = sample_entry(&sample);
    let event = sample_event();
    let event_entry = sample_entry(&event);
    let correction = sample_correction(&event);
    let deliveries = [
        (
            Delivery::new(
                Kind::Alert {
                    article: sample.id.clone(),
                },
                "mau@example.vn",
                0,
            ),
            Content::Alert(&sample, &plain_entry),
        ),
        (
            Delivery::new(
                Kind::Alert {
                    article: event.id.clone(),
                },
                "mau@example.vn",
                0,
            ),
            Content::Alert(&event, &event_entry),
        ),
        (
            Delivery::new(
                Kind::Correction {
                    article: event.id.clone(),
                    n: 1,
                    reply_to: "a\0mau\0mau@example.vn".into(),
                },
                "mau@example.vn",
                0,
            ),
            Content::Correction(&event, &event_entry, &correction),
        ),
        (
            Delivery::new(
                Kind::Digest {
                    schedule: Schedule::Daily,
                    run: 1_581_645_600,
                    articles: vec![sample.id.clone()],
                },
                "mau@example.vn",
                0,
            ),
            Content::Digest(std::slice::from_ref(&sample)),
        ),
        (
            Delivery::new(Kind::Confirm { at: 0 }, "mau@example.vn", 0),
            Content::Confirm {
                schedule: Schedule::Daily,
                categories: &["THÔNG BÁO".to_string()],
                active: false,
            },
        ),
        (
            Delivery::new(Kind::Confirm { at: 0 }, "mau@example.vn", 0),
            Content::Confirm {
                schedule: Schedule::Daily,
                categories: &["THÔNG BÁO".to_string()],
                active: true,
            },
        ),
    ];
    deliveries
        .into_iter()
        .filter_map(|(d, content)| composer.render(&d, content, None).err())
        .map(|e| e.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn composer() -> Composer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let site = SiteInfo::new("HĐND quận Cầu Giấy", "https://hdnd.example.vn", "vi");
        let mut templates = crate::publish::load_templates(&dir).expect("templates load");
        templates.set_site(&site, &[]);
        Composer {
            templates: Arc::new(std::sync::RwLock::new(Arc::new(templates))),
            site: crate::site::share_site(site.clone()),
            tz: chrono_tz::Asia::Ho_Chi_Minh,
            from: "HĐND quận Cầu Giấy <bantin@hdnd.example.vn>"
                .parse()
                .unwrap(),
            from_header: from_header(
                &"HĐND quận Cầu Giấy <bantin@hdnd.example.vn>"
                    .parse()
                    .unwrap(),
            ),
            list_id: "bantin.hdnd.example.vn".into(),
            scope: String::new(),
            domain: "hdnd.example.vn".into(),
            dkim: Vec::new(),
            links: Links::new(Signer::new(vec![7; 32]), &site.base_url),
            return_path: None,
            confirm_days: 7,
            shared: std::sync::Mutex::default(),
        }
    }

    #[test]
    fn tokens_go_in_where_the_markers_were_and_a_stray_beginning_stays() {
        let p = Personal {
            unsubscribe: "U".into(),
            preferences: "PP".into(),
        };
        let m = Personal::markers();
        let text = format!(
            "a {} b bantin-MARKER.x {}{}",
            m.unsubscribe, m.preferences, m.unsubscribe
        );
        let (out, at) = p.put_in_at(&text);
        assert_eq!(out, "a U b bantin-MARKER.x PPU");
        assert_eq!(at, vec![2, 22, 24]);
        assert_eq!(p.put_in("no marker: ạ"), "no marker: ạ");
        for marker in [UNSUBSCRIBE_MARKER, PREFERENCES_MARKER] {
            assert!(marker.starts_with(MARKER_PREFIX));
        }
    }

    /// A subscriber following two categories.
    fn reader() -> crate::subscriber::Subscriber {
        let categories = vec!["THÔNG BÁO".into(), "KỲ HỌP HĐND".into()];
        let mut s = crate::subscriber::Subscriber::new("dan@x.vn", Schedule::Daily, categories, 0);
        s.state = crate::subscriber::SubState::Active;
        s.confirmed = Some(0);
        s
    }

    /// The alert of `a` to dan@x.vn.
    fn alert_of(a: &Article) -> Delivery {
        Delivery::new(
            Kind::Alert {
                article: a.id.clone(),
            },
            "dan@x.vn",
            0,
        )
    }

    fn snapshot(name: &str, r: &Rendered) {
        insta::assert_snapshot!(format!("{name}.subject"), r.subject);
        insta::assert_snapshot!(format!("{name}.txt"), r.text);
        insta::assert_snapshot!(format!("{name}.html"), r.html);
    }

    #[test]
    fn councils_under_paths_of_one_host_have_their_own_message_ids() {
        let root = composer();
        let mut one = composer();
        one.scope = "phuong-cau-giay".into();
        let mut two = composer();
        two.scope = "phuong-nghia-do".into();
        let key = "d\0daily\x001700000000\0dan@example.vn";
        let ids = [
            root.message_id(key),
            one.message_id(key),
            two.message_id(key),
        ];
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[1], ids[2]);
        assert_eq!(one.message_id(key), ids[1], "a retry reuses it");
    }

    #[test]
    fn alert_bodies() {
        let a = sample_article();
        let d = alert_of(&a);
        let r = composer()
            .render(&d, Content::Alert(&a, &sample_entry(&a)), Some(&reader()))
            .unwrap();
        assert!(r.bulk);
        assert!(r.calendar.is_none(), "no event, no calendar");
        snapshot("alert", &r);
    }

    /// What the composer renders for `email` choosing `categories`, and whether it filled in
    /// a rendering shared with earlier recipients.
    fn alert_for(c: &Composer, a: &Article, email: &str, categories: &[&str]) -> (Rendered, bool) {
        let mut d = alert_of(a);
        d.email = email.into();
        let mut s = reader();
        s.email = email.into();
        s.categories = categories.iter().map(|c| c.to_string()).collect();
        let r = c
            .render(&d, Content::Alert(a, &sample_entry(a)), Some(&s))
            .unwrap();
        // Whether this very mail was filled in from a shared rendering.
        let filled = r.filled.is_some();
        (r, filled)
    }

    #[test]
    fn an_alert_rendered_once_reads_as_rendered_for_each_recipient() {
        let a = sample_article();
        let c = composer();
        let (first, _) = alert_for(&c, &a, "mot@x.vn", &["THÔNG BÁO"]);
        let (second, filled) = alert_for(&c, &a, "hai@x.vn", &["THÔNG BÁO"]);
        let (third, _) = alert_for(&c, &a, "ba@x.vn", &["KỲ HỌP HĐND"]);
        assert!(filled, "the second recipient's mail was filled in");
        assert_ne!(first.text, second.text, "each has their own links");
        // Each is what a composer that never saw the others renders.
        for (email, cats, r) in [
            ("hai@x.vn", "THÔNG BÁO", &second),
            ("ba@x.vn", "KỲ HỌP HĐND", &third),
        ] {
            let (alone, _) = alert_for(&composer(), &a, email, &[cats]);
            assert_eq!(r, &alone, "{email}");
        }
        assert!(third.text.contains("KỲ HỌP HĐND"), "{}", third.text);
        // The mail itself: the body encoded once, with this recipient's tokens.
        let mut d = alert_of(&a);
        d.email = "hai@x.vn".into();
        let m = c
            .message(
                &d.key(),
                &d,
                second.clone(),
                DateTime::from_timestamp(0, 0).unwrap(),
                true,
            )
            .unwrap();
        let mail = String::from_utf8(m.bytes).unwrap();
        let token = c.links.signer.sign(Purpose::Unsubscribe, "hai@x.vn", 0);
        let other = c.links.signer.sign(Purpose::Unsubscribe, "mot@x.vn", 0);
        assert_eq!(
            mail.matches(&token).count(),
            3,
            "text, HTML and List-Unsubscribe"
        );
        assert!(!mail.contains(&other) && !mail.contains("MARKER"), "{mail}");
        assert!(mail.contains("Content-Transfer-Encoding: 8bit"), "{mail}");
        assert!(
            c.shared.lock().unwrap()[0]
                .body
                .get()
                .is_some_and(Option::is_some)
        );
    }

    #[test]
    fn eight_bit_bodies_keep_lines_within_998_bytes() {
        let long = "Hội nghị kỳ họp thường trực ".repeat(60); // about 2,000 bytes
        let html = format!("<p style=\"margin:0 0 12px;\">{long}</p>\n");
        let body = eight_bit_body(&html, true).expect("folded between words");
        let bytes = body.into_vec();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.split("\r\n").all(|l| l.len() <= LINE_MAX), "{text}");
        assert_eq!(
            text.split_whitespace().collect::<Vec<_>>(),
            html.split_whitespace().collect::<Vec<_>>()
        );
        assert!(
            text.starts_with("<p style=\"margin:0 0 12px;\">Hội"),
            "no fold inside the tag"
        );
        // Plain text is never folded: it is encoded instead.
        assert!(eight_bit_body(&long, false).is_none());
        assert!(eight_bit_body(&format!("<pre>{long}</pre>"), true).is_none());
        assert!(eight_bit_body("một dòng\nhai dòng\n", false).is_some());
    }

    #[test]
    fn a_template_that_cuts_a_link_is_rendered_for_each_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        for name in crate::site::TEMPLATE_NAMES {
            let to = dir.path().join(name);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            let _ = std::fs::copy(shipped.join(name), to);
        }
        std::fs::write(
            dir.path().join("email/alert.txt"),
            "{{ article.title }}\n{{ unsubscribe_url[-12:] }}\n",
        )
        .unwrap();
        let site = SiteInfo::new("HĐND quận Cầu Giấy", "https://hdnd.example.vn", "vi");
        let mut templates = crate::publish::load_templates(dir.path()).expect("templates");
        templates.set_site(&site, &[]);
        let c = composer();
        *c.templates.write().unwrap() = Arc::new(templates);
        let a = sample_article();
        let (_, _) = alert_for(&c, &a, "mot@x.vn", &[]);
        let (second, filled) = alert_for(&c, &a, "hai@x.vn", &[]);
        assert!(!filled, "not filled in: the template cuts the link");
        let token = c.links.signer.sign(Purpose::Unsubscribe, "hai@x.vn", 0);
        assert!(
            second.text.trim_end().ends_with(&token[token.len() - 12..]),
            "{}",
            second.text
        );
    }

    #[test]
    fn an_event_alert_shows_time_and_place_first_and_carries_its_calendar() {
        let c = composer();
        let a = sample_event();
        let d = alert_of(&a);
        let r = c
            .render(&d, Content::Alert(&a, &sample_entry(&a)), Some(&reader()))
            .unwrap();
        snapshot("alert-event", &r);
        let text_event = r
            .text
            .find("Thời gian: 08:16 – 11:16, Thứ Sáu 28/02/2020")
            .unwrap();
        assert!(text_event < r.text.find("Đoạn một.").unwrap(), "{}", r.text);
        let (name, ics) = r.calendar.clone().unwrap();
        assert_eq!(name, "lich.ics");
        assert!(
            ics.contains("DTSTART;TZID=Asia/Ho_Chi_Minh:20200228T081600"),
            "{ics}"
        );
        let m = c
            .message(
                &d.key(),
                &d,
                r,
                DateTime::from_timestamp(0, 0).unwrap(),
                false,
            )
            .unwrap();
        let text = String::from_utf8(m.bytes).unwrap();
        assert!(text.contains("Content-Type: multipart/mixed"), "{text}");
        assert!(
            text.contains("Content-Type: text/calendar; charset=utf-8; method=PUBLISH"),
            "{text}"
        );
        assert!(text.contains("filename=\"lich.ics\""), "{text}");
    }

    #[test]
    fn a_correction_answers_the_mail_received_and_shows_what_changed() {
        let c = composer();
        let a = sample_event();
        let record = sample_correction(&a);
        let first = Delivery::new(
            Kind::Alert {
                article: a.id.clone(),
            },
            "dan@x.vn",
            0,
        );
        let d = Delivery::new(
            Kind::Correction {
                article: a.id.clone(),
                n: 1,
                reply_to: first.key(),
            },
            "dan@x.vn",
            0,
        );
        let r = c
            .render(
                &d,
                Content::Correction(&a, &sample_entry(&a), &record),
                Some(&reader()),
            )
            .unwrap();
        snapshot("correction", &r);
        assert_eq!(r.subject, "Đính chính: Kỳ họp thứ mười");
        assert!(r.text.contains("Đổi giờ khai mạc"), "{}", r.text);
        assert!(r.html.contains("<del"), "{}", r.html);
        assert!(r.html.contains("<ins"), "{}", r.html);
        let m = c
            .message(
                &d.key(),
                &d,
                r,
                DateTime::from_timestamp(0, 0).unwrap(),
                false,
            )
            .unwrap();
        let text = String::from_utf8(m.bytes).unwrap();
        let original = c.message_id(&first.key());
        assert!(text.contains(&format!("In-Reply-To: {original}")), "{text}");
        assert!(text.contains(&format!("References: {original}")), "{text}");
        assert!(text.contains(&c.message_id(&d.key())), "its own Message-ID");
    }

    #[test]
    fn digest_bodies_group_by_category() {
        let a = Arc::new(sample_article());
        let mut b = sample_article();
        b.id = "tin/khac".into();
        b.category = "TIN TỨC - SỰ KIỆN TIÊU BIỂU".into();
        b.title = "Tin thứ hai".into();
        let articles = [a, Arc::new(b)];
        let d = Delivery::new(
            Kind::Digest {
                schedule: Schedule::Weekly,
                run: 1_581_645_600,
                articles: articles.iter().map(|a| a.id.clone()).collect(),
            },
            "dan@x.vn",
            0,
        );
        let r = composer()
            .render(&d, Content::Digest(&articles), Some(&reader()))
            .unwrap();
        snapshot("digest", &r);
        for a in &articles {
            assert_eq!(r.text.matches(&a.title).count(), 1, "{}: once", a.title);
        }
        assert_eq!(r.subject, "Bản tin hằng tuần 14/02/2020 – 2 tin mới");
    }

    /// Every kind: links written plainly, a preheader, the footer's why and whereabouts, and a
    /// text part folded at 72 columns with its URLs whole.
    #[test]
    fn every_kind_reads_well_on_a_phone() {
        let mut c = composer();
        let mut site = SiteInfo::new("HĐND quận Cầu Giấy", "https://hdnd.example.vn", "vi");
        site.address = Some("Số 36 đường Cầu Giấy, Hà Nội".into());
        site.contact = Some("Văn phòng HĐND, điện thoại 024 3767 0000".into());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut templates = crate::publish::load_templates(&dir).expect("templates load");
        templates.set_site(&site, &[]);
        c.templates = Arc::new(std::sync::RwLock::new(Arc::new(templates)));
        c.site = crate::site::share_site(site);
        let event = sample_event();
        let plain = sample_article();
        let record = sample_correction(&event);
        let alert = alert_of;
        let digest = Delivery::new(
            Kind::Digest {
                schedule: Schedule::Daily,
                run: 1_581_645_600,
                articles: vec![plain.id.clone()],
            },
            "dan@x.vn",
            0,
        );
        let correction = Delivery::new(
            Kind::Correction {
                article: event.id.clone(),
                n: 1,
                reply_to: alert(&event).key(),
            },
            "dan@x.vn",
            0,
        );
        let list = [Arc::new(plain.clone())];
        let rendered = [
            c.render(
                &alert(&plain),
                Content::Alert(&plain, &sample_entry(&plain)),
                Some(&reader()),
            ),
            c.render(
                &alert(&event),
                Content::Alert(&event, &sample_entry(&event)),
                Some(&reader()),
            ),
            c.render(&digest, Content::Digest(&list), Some(&reader())),
            c.render(
                &correction,
                Content::Correction(&event, &sample_entry(&event), &record),
                Some(&reader()),
            ),
        ];
        for r in rendered {
            let r = r.unwrap();
            assert!(
                !r.html.contains("&#x2f;"),
                "{}: '/' written plainly",
                r.subject
            );
            assert!(
                r.html.contains("href=\"https://hdnd.example.vn/"),
                "{}",
                r.subject
            );
            assert!(
                r.html.contains("mso-hide:all;\">Đoạn")
                    || r.html.contains("mso-hide:all;\">Bài")
                    || r.html.contains("mso-hide:all;\">Đổi"),
                "{}: a preheader\n{}",
                r.subject,
                r.html
            );
            assert!(r.html.contains("color-scheme"), "{}", r.subject);
            for part in [&r.text, &r.html] {
                assert!(
                    part.contains("Số 36 đường Cầu Giấy, Hà Nội"),
                    "{}",
                    r.subject
                );
                assert!(
                    part.contains("Văn phòng HĐND, điện thoại 024 3767 0000"),
                    "{}",
                    r.subject
                );
                assert!(part.contains("Bạn nhận thư này vì"), "{}", r.subject);
                assert!(part.contains("preferences?token="), "{}", r.subject);
                assert!(part.contains("unsubscribe?token="), "{}", r.subject);
            }
            for line in r.text.lines() {
                assert!(
                    line.chars().count() <= 72 || !line.trim().contains(' '),
                    "{}: a line over 72 columns: {line:?}",
                    r.subject
                );
            }
            assert!(
                !r.subject.contains("[HĐND"),
                "no council prefix: {}",
                r.subject
            );
        }
    }

    #[test]
    fn confirm_bodies_have_no_unsubscribe_headers() {
        let d = Delivery::new(Kind::Confirm { at: 0 }, "dan@x.vn", 0);
        let categories = ["THÔNG BÁO".to_string()];
        let r = composer()
            .render(
                &d,
                Content::Confirm {
                    schedule: Schedule::Daily,
                    categories: &categories,
                    active: false,
                },
                None,
            )
            .unwrap();
        assert!(!r.bulk);
        snapshot("confirm", &r);
    }

    #[test]
    fn a_confirmation_says_how_long_its_link_works_as_configured() {
        let d = Delivery::new(Kind::Confirm { at: 0 }, "dan@x.vn", 0);
        let mut c = composer();
        c.confirm_days = 3;
        let r = c
            .render(
                &d,
                Content::Confirm {
                    schedule: Schedule::Daily,
                    categories: &[],
                    active: false,
                },
                None,
            )
            .unwrap();
        assert!(
            r.text.contains("dùng được trong 3\nngày") || r.text.contains("dùng được trong 3 ngày"),
            "{}",
            r.text
        );
        assert!(
            r.html.contains("Liên kết dùng được trong 3 ngày."),
            "{}",
            r.html
        );
    }

    #[test]
    fn a_subscriber_who_asks_again_gets_the_links_to_change_or_end_it() {
        let d = Delivery::new(Kind::Confirm { at: 5 }, "dan@x.vn", 5000);
        let categories = ["THÔNG BÁO".to_string()];
        let r = composer()
            .render(
                &d,
                Content::Confirm {
                    schedule: Schedule::Weekly,
                    categories: &categories,
                    active: true,
                },
                None,
            )
            .unwrap();
        assert!(
            r.subject.starts_with("Cách nhận tin của bạn"),
            "{}",
            r.subject
        );
        for part in [&r.text, &r.html] {
            assert!(part.contains("/preferences?token="), "{part}");
            assert!(part.contains("/unsubscribe?token="), "{part}");
            assert!(!part.contains("/confirm?token="), "{part}");
            assert!(part.contains("đã đăng ký từ trước"), "{part}");
            // Once each: the footer does not repeat what the body is about.
            assert_eq!(part.matches("/preferences?token=").count(), 1, "{part}");
        }
    }

    #[test]
    fn a_digest_with_nothing_left_is_an_error_not_an_empty_mail() {
        let d = Delivery::new(
            Kind::Digest {
                schedule: Schedule::Daily,
                run: 0,
                articles: vec!["gone".into()],
            },
            "dan@x.vn",
            0,
        );
        assert!(
            composer()
                .render(&d, Content::Digest(&[]), Some(&reader()))
                .is_err()
        );
    }

    #[test]
    fn the_message_id_and_date_come_from_the_delivery_and_the_clock() {
        let c = composer();
        let a = sample_article();
        let d = alert_of(&a);
        let r = c
            .render(&d, Content::Alert(&a, &sample_entry(&a)), Some(&reader()))
            .unwrap();
        let date = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let m = c.message(&d.key(), &d, r, date, false).unwrap();
        let text = String::from_utf8(m.bytes).unwrap();
        assert!(text.contains(&c.message_id(&d.key())), "{text}");
        assert!(
            text.contains("Date: Tue, 14 Nov 2023 22:13:20 +0000"),
            "{text}"
        );
        assert!(text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
        assert!(text.contains("Auto-Submitted: auto-generated"));
    }

    /// The message's headers, names only, in order (continuation lines left out).
    fn header_names(mail: &str) -> Vec<&str> {
        let (head, _) = mail.split_once("\r\n\r\n").expect("headers end");
        head.split("\r\n")
            .filter(|l| !l.starts_with([' ', '\t']))
            .map(|l| l.split_once(':').expect("a header").0)
            .collect()
    }

    #[test]
    fn a_mail_is_formatted_as_lettre_formats_the_message_it_signs() {
        let plain = composer();
        // A new one each time: it renders each mail on its own, not filled into a shared
        // rendering.
        let signing = || {
            let mut c = composer();
            c.dkim = vec![lettre::message::dkim::DkimConfig::default_config(
                "bantin".into(),
                "hdnd.example.vn".into(),
                lettre::message::dkim::DkimSigningKey::new(
                    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                    lettre::message::dkim::DkimSigningAlgorithm::Ed25519,
                )
                .unwrap(),
            )];
            c
        };
        let a = sample_event();
        let entry = sample_entry(&a);
        let record = sample_correction(&a);
        let alert = alert_of(&a);
        let correction = Delivery::new(
            Kind::Correction {
                article: a.id.clone(),
                n: 1,
                reply_to: alert.key(),
            },
            "dan@x.vn",
            0,
        );
        let confirm = Delivery::new(Kind::Confirm { at: 0 }, "dan@x.vn", 0);
        let categories = ["THÔNG BÁO".to_string()];
        let cases: [(&Delivery, Content, &[&str]); 3] = [
            (
                &alert,
                Content::Alert(&a, &entry),
                &["List-Unsubscribe", "List-Unsubscribe-Post"],
            ),
            (
                &correction,
                Content::Correction(&a, &entry, &record),
                &[
                    "In-Reply-To",
                    "References",
                    "List-Unsubscribe",
                    "List-Unsubscribe-Post",
                ],
            ),
            (
                &confirm,
                Content::Confirm {
                    schedule: Schedule::Daily,
                    categories: &categories,
                    active: false,
                },
                &[],
            ),
        ];
        let date = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        for (d, content, middle) in cases {
            for eight_bit in [true, false] {
                // Twice: the second recipient of an alert is filled into the shared rendering.
                for _ in 0..2 {
                    // As the worker renders it to send: the text and HTML are left to fill
                    // in when the body is shared.
                    let to_send = plain.render_to_send(d, content, Some(&reader())).unwrap();
                    let ours = plain
                        .message(&d.key(), d, to_send, date, eight_bit)
                        .unwrap();
                    let signing = signing();
                    let r = signing.render(d, content, Some(&reader())).unwrap();
                    let signed = signing.message(&d.key(), d, r, date, eight_bit).unwrap();
                    let ours = String::from_utf8(ours.bytes).unwrap();
                    let signed = String::from_utf8(signed.bytes).unwrap();
                    let (signature, rest) = signed.split_at(signed.find("From: ").unwrap());
                    assert!(signature.starts_with("DKIM-Signature: "), "{signed}");
                    // The bodies' MIME boundaries are made anew for each message.
                    let boundaries = |m: &str| {
                        let mut m = m.to_owned();
                        for n in 0.. {
                            let Some(at) = m.find("boundary=\"").map(|at| at + 10) else {
                                break;
                            };
                            let b = m[at..at + m[at..].find('"').unwrap()].to_owned();
                            m = m
                                .replace(&format!("boundary=\"{b}\""), &format!("boundary:B{n}"))
                                .replace(&b, &format!("B{n}"));
                        }
                        m
                    };
                    assert_eq!(
                        boundaries(&ours),
                        boundaries(rest),
                        "{:?}, 8 bits: {eight_bit}",
                        d.kind
                    );
                    let mut names = vec![
                        "From",
                        "To",
                        "Subject",
                        "Message-ID",
                        "Date",
                        "List-Id",
                        "Auto-Submitted",
                    ];
                    names.extend(middle);
                    names.extend(["MIME-Version", "Content-Type", "Content-Transfer-Encoding"]);
                    assert_eq!(header_names(&ours), names);
                }
            }
        }
    }
}

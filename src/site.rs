//! The web pages: templates from `templates/`, and the contexts the pages are rendered with.

use chrono::{DateTime, FixedOffset};
use minijinja::{Environment, context};
use serde::Serialize;

use crate::article::Article;
use crate::feed::{FeedDef, SiteInfo};

/// Articles listed on the index page.
pub const INDEX_LATEST: usize = 30;

/// Every template the daemon renders, by name under `templates/`.
pub const TEMPLATE_NAMES: &[&str] = &[
    "web/base.html",
    "web/index.html",
    "web/article.html",
    "web/message.html",
    "email/base.txt",
    "email/base.html",
    "email/alert.txt",
    "email/alert.html",
    "email/digest.txt",
    "email/digest.html",
    "email/confirm.txt",
    "email/confirm.html",
    "email/correction.txt",
    "email/correction.html",
    "web/bulletin.html",
    "web/bulletins.html",
    "web/list.html",
    "web/archive.html",
    "web/feed.html",
    "web/search.html",
    "web/404.html",
];

/// Templates added after the first release, built in: a templates folder copied before they
/// existed still works (its own copy, when present, wins).
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "email/base.txt",
        include_str!("../templates/email/base.txt"),
    ),
    (
        "email/base.html",
        include_str!("../templates/email/base.html"),
    ),
    (
        "email/correction.txt",
        include_str!("../templates/email/correction.txt"),
    ),
    (
        "email/correction.html",
        include_str!("../templates/email/correction.html"),
    ),
    (
        "web/bulletin.html",
        include_str!("../templates/web/bulletin.html"),
    ),
    (
        "web/bulletins.html",
        include_str!("../templates/web/bulletins.html"),
    ),
    ("web/list.html", include_str!("../templates/web/list.html")),
    (
        "web/archive.html",
        include_str!("../templates/web/archive.html"),
    ),
    ("web/feed.html", include_str!("../templates/web/feed.html")),
    (
        "web/search.html",
        include_str!("../templates/web/search.html"),
    ),
    ("web/404.html", include_str!("../templates/web/404.html")),
];

/// Writes values into HTML templates escaped for HTML but with `/` kept (the default
/// escaping writes `&#x2f;`, which link scanners, spam filters and crawlers read badly).
fn mail_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &minijinja::Value,
) -> Result<(), minijinja::Error> {
    let html = matches!(state.auto_escape(), minijinja::AutoEscape::Html);
    match value.as_str() {
        Some(text) if html && !value.is_safe() => escape_html_into(out, text)
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string())),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// HTML-escapes `&`, `<`, `>` and quotes.
fn html_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + value.len() / 16);
    escape_html_into(&mut out, value).expect("a String takes any text");
    out
}

/// Writes `value` HTML-escaped (`'` as `&#x27;`, as minijinja writes it).
fn escape_html_into(out: &mut impl std::fmt::Write, value: &str) -> std::fmt::Result {
    crate::feed::escape_html(out, value, "&#x27;")
}

/// `{{ link|url }}`: a URL for an HTML attribute, escaped where HTML needs it (`&`, `<`, `>`,
/// quotes) but with its `/` kept as it is (the default escaping writes `&#x2f;`, which link
/// scanners and spam filters read badly).
fn url_filter(value: String) -> minijinja::Value {
    minijinja::Value::from_safe_string(html_text(&value))
}

/// `{{ p|linkify }}`: the text escaped for HTML, each web address in it a link.
fn linkify_filter(text: &str) -> minijinja::Value {
    minijinja::Value::from_safe_string(linkify(text))
}

/// `text` escaped for HTML, with every `http://` or `https://` address in it made a link.
/// Punctuation that ends a sentence is not part of an address, nor a closing bracket that
/// opened before it.
pub fn linkify(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    linkify_into(&mut out, text);
    out
}

/// [`linkify`] at the end of `out`.
pub fn linkify_into(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(at) = url_start(rest) {
        let (before, from) = rest.split_at(at);
        crate::feed::escape_into(out, before);
        // An address ends at a space, or at what cannot be in one: `<https://…>`, quotes.
        let end = from
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"'))
            .unwrap_or(from.len());
        let mut url = &from[..end];
        loop {
            let mut trimmed = url.trim_end_matches([
                '.', ',', ';', ':', '!', '?', '"', '\'', '\u{201d}', '\u{2019}', '\u{2026}',
            ]);
            if trimmed.ends_with(')') && trimmed.matches('(').count() < trimmed.matches(')').count()
            {
                trimmed = &trimmed[..trimmed.len() - 1];
            }
            if trimmed.len() == url.len() {
                break;
            }
            url = trimmed;
        }
        let scheme = if url.starts_with("https://") { 8 } else { 7 };
        if url.len() <= scheme {
            crate::feed::escape_into(out, &from[..end]);
            rest = &from[end..];
            continue;
        }
        out.push_str("<a href=\"");
        crate::feed::escape_into(out, url);
        out.push_str("\">");
        crate::feed::escape_into(out, url);
        out.push_str("</a>");
        rest = &from[url.len()..];
    }
    crate::feed::escape_into(out, rest);
}

/// Where the first web address of `text` starts: `http://` or `https://` at the start of a
/// word.
fn url_start(text: &str) -> Option<usize> {
    text.match_indices("http").map(|(at, _)| at).find(|&at| {
        let tail = &text[at..];
        (tail.starts_with("http://") || tail.starts_with("https://"))
            && !text[..at]
                .chars()
                .next_back()
                .is_some_and(char::is_alphanumeric)
    })
}

/// `{{ text|wrap(72) }}`, `{{ text|wrap(72, "  ") }}`: plain text folded at `width`
/// characters between words, each line after the first starting with `indent`; a word
/// longer than a line (a URL) stands alone, never broken.
fn wrap_filter(text: String, width: Option<usize>, indent: Option<String>) -> String {
    wrap(&text, width.unwrap_or(72), indent.as_deref().unwrap_or(""))
}

/// Folds `text` at `width` characters between words; its lines (`\n`) are kept. Every line
/// after the first starts with `indent`; the first is taken to start after it too (the
/// template writes it).
pub fn wrap(text: &str, width: usize, indent: &str) -> String {
    let indent_len = indent.chars().count();
    let mut out = String::with_capacity(text.len() + text.len() / width.max(1) * 3);
    for (n, line) in text.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
            out.push_str(indent);
        }
        let mut column = indent_len;
        let mut first = true;
        for word in line.split_whitespace() {
            let len = word.chars().count();
            if !first && column + 1 + len > width {
                out.push('\n');
                out.push_str(indent);
                column = indent_len;
            } else if !first {
                out.push(' ');
                column += 1;
            }
            out.push_str(word);
            column += len;
            first = false;
        }
    }
    out
}

/// A problem loading or rendering a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "{path}: no templates folder here, or none of the templates in it (set templates.dir \
         in the configuration; the Debian package installs them in \
         /usr/share/bantin/templates)"
    )]
    MissingDir { path: String },
    #[error("{path}: cannot read template: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: String,
        line: usize,
        message: String,
    },
    #[error("template '{name}': {message}")]
    Render { name: String, message: String },
}

/// The site's name and address, which a reload can change for mails and forms too.
pub type SharedSite = std::sync::Arc<std::sync::RwLock<std::sync::Arc<SiteInfo>>>;

/// A [`SharedSite`] holding `site`.
pub fn share_site(site: SiteInfo) -> SharedSite {
    std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(site)))
}

/// Templates that a reload can replace while requests and mails use them.
pub type SharedTemplates = std::sync::Arc<std::sync::RwLock<std::sync::Arc<Templates>>>;

/// The current templates of a [`SharedTemplates`].
pub fn current(shared: &SharedTemplates) -> std::sync::Arc<Templates> {
    shared.read().expect("templates lock").clone()
}

/// The compiled templates.
#[derive(Debug, Clone)]
pub struct Templates {
    env: Environment<'static>,
    /// A fingerprint of every template's name and text: pages rendered with other templates
    /// are rendered again.
    pub fingerprint: u64,
}

impl Templates {
    /// Compiles templates from their sources: (name, path shown in errors, text or the error
    /// reading it). Every name of [`TEMPLATE_NAMES`] must come.
    pub fn compile(
        sources: impl IntoIterator<Item = (&'static str, String, std::io::Result<String>)>,
    ) -> Result<Templates, Vec<TemplateError>> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        env.add_filter("url", url_filter);
        env.set_formatter(mail_formatter);
        env.add_filter("wrap", wrap_filter);
        env.add_filter("linkify", linkify_filter);
        let mut errors = Vec::new();
        let mut fingerprint = crate::library::Fnv::default();
        for (name, shown, source) in sources {
            if let Ok(text) = &source {
                fingerprint.bytes(name.as_bytes());
                fingerprint.bytes(&[0xff]);
                fingerprint.bytes(text.as_bytes());
                fingerprint.bytes(&[0xff]);
            }
            match source {
                Err(source) => errors.push(TemplateError::Read {
                    path: shown,
                    source,
                }),
                Ok(source) => {
                    if let Err(e) = env.add_template_owned(name.to_string(), source) {
                        errors.push(TemplateError::Syntax {
                            path: shown,
                            line: e.line().unwrap_or(1),
                            message: e.detail().unwrap_or("syntax error").to_owned(),
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(Templates {
                env,
                fingerprint: fingerprint.0,
            })
        } else {
            Err(errors)
        }
    }

    /// Makes the site and its feed list visible to every template as `site` and `feeds`,
    /// computed once rather than per page.
    pub fn set_site(&mut self, site: &SiteInfo, feeds: &[FeedDef]) {
        let site_ctx = SiteCtx {
            title: &site.title,
            base_url: &site.base_url,
            language: &site.language,
            address: site.address.as_deref(),
            contact: site.contact.as_deref(),
        };
        // The feed of all news first: browsers and readers offer the first one found.
        let mut ordered: Vec<&FeedDef> = feeds.iter().collect();
        ordered.sort_by_key(|d| (!d.categories.is_empty(), d.name.clone()));
        let feeds_ctx: Vec<FeedCtx<'_>> = ordered
            .into_iter()
            .map(|f| FeedCtx {
                name: &f.name,
                title: &f.title,
                description: &f.description,
                rss_url: site.feed_url(&f.name, "rss"),
                atom_url: site.feed_url(&f.name, "atom"),
                json_url: site.feed_url(&f.name, "json"),
                page_url: site.feed_url(&f.name, "html"),
            })
            .collect();
        self.env.add_global("site", v(site_ctx));
        self.env.add_global("feeds", v(feeds_ctx));
    }

    /// Renders `name` with `ctx`.
    pub fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, TemplateError> {
        let render_error = |e: minijinja::Error| TemplateError::Render {
            name: name.to_owned(),
            message: match e.line() {
                Some(line) => format!("line {line}: {e:#}"),
                None => format!("{e:#}"),
            },
        };
        self.env
            .get_template(name)
            .map_err(render_error)?
            .render(ctx)
            .map_err(render_error)
    }
}

/// The council's way of writing when an article was published: `14/02/2020 08:16`; the date
/// alone at midnight, which is what an article whose `Ngày đăng` line gives no time is
/// published at (`00:00` would claim a precision it does not have).
pub fn local_time(t: &DateTime<FixedOffset>) -> String {
    use chrono::{Datelike, Timelike};
    // Written field by field: a strftime pattern is read again at every call, and lists of
    // hundreds of articles showed it.
    if t.hour() == 0 && t.minute() == 0 {
        return format!("{:02}/{:02}/{:04}", t.day(), t.month(), t.year());
    }
    format!(
        "{:02}/{:02}/{:04} {:02}:{:02}",
        t.day(),
        t.month(),
        t.year(),
        t.hour(),
        t.minute()
    )
}

#[derive(Serialize)]
struct SiteCtx<'a> {
    title: &'a str,
    base_url: &'a str,
    language: &'a str,
    address: Option<&'a str>,
    contact: Option<&'a str>,
}

#[derive(Serialize)]
struct FeedCtx<'a> {
    name: &'a str,
    title: &'a str,
    description: &'a str,
    rss_url: String,
    atom_url: String,
    json_url: String,
    page_url: String,
}

#[derive(Serialize)]
struct ArticleCtx<'a> {
    id: &'a str,
    title: &'a str,
    category: &'a str,
    url: String,
    paragraphs: &'a [String],
    /// The start of the text, plain: the page's description where links are shared.
    excerpt: String,
    author: Option<&'a str>,
    published_iso: String,
    published_text: String,
    event: Option<EventCtx>,
    correction: Option<CorrectionCtx<'a>>,
    category_url: String,
    older: Option<NeighbourCtx>,
    newer: Option<NeighbourCtx>,
}

/// An article's place in its category: the address of the category's page and the
/// articles before and after it.
#[derive(Debug, Clone, Default)]
pub struct ArticleNav {
    pub category_url: String,
    pub older: Option<NeighbourCtx>,
    pub newer: Option<NeighbourCtx>,
}

/// A neighbouring article.
#[derive(Debug, Clone, Serialize)]
pub struct NeighbourCtx {
    pub title: String,
    pub url: String,
}

/// An event's time and place, as the page and the mails show them.
#[derive(Serialize)]
pub struct EventCtx {
    /// `08:00 – 11:30, Thứ Năm 16/01/2025`.
    pub when: String,
    /// The start, machine-readable (`2025-01-16T08:00` or `2025-01-16`).
    pub start_iso: String,
    pub place: Option<String>,
    /// The article's `.ics`.
    pub ics_url: String,
}

impl EventCtx {
    pub fn new(site: &SiteInfo, article: &Article) -> Option<EventCtx> {
        let when = article.event?;
        let start_iso = match when {
            crate::article::When::Timed { start, .. } => start.format("%Y-%m-%dT%H:%M").to_string(),
            crate::article::When::AllDay { first, .. } => first.format("%Y-%m-%d").to_string(),
        };
        Some(EventCtx {
            when: crate::calendar::describe(&when),
            start_iso,
            place: article.place.clone(),
            ics_url: format!(
                "{}/articles/{}.ics",
                site.base_url,
                crate::feed::url_path(&article.id)
            ),
        })
    }
}

#[derive(Serialize)]
struct CorrectionCtx<'a> {
    reason: &'a str,
    /// When the article was last changed: `HH:MM DD/MM/YYYY`.
    at_text: String,
    at_iso: String,
}

/// Renders pages: the site and its templates (which carry the site and feeds as globals).
pub struct Pages<'a> {
    pub site: &'a SiteInfo,
    pub templates: &'a Templates,
}

impl Pages<'_> {
    /// The index: latest articles (each with its excerpt), the feed list, the subscribe form.
    /// `events`: whether any article is an event (the page then offers the calendar).
    /// `category_links`: (category, its page); `all_url`: the newest page of all articles;
    /// `older_url`: the page of all articles that holds the newest one not on the index.
    pub fn index(
        &self,
        latest: &[crate::render::Listed],
        category_links: &[(&str, String)],
        all_url: &str,
        older_url: &str,
        events: bool,
    ) -> Result<String, TemplateError> {
        #[derive(Serialize)]
        struct CategoryLink<'a> {
            name: &'a str,
            url: &'a str,
        }
        let links: Vec<CategoryLink<'_>> = category_links
            .iter()
            .map(|(name, url)| CategoryLink { name, url })
            .collect();
        let calendar_url = events.then(|| format!("{}/calendar.ics", self.site.base_url));
        let categories: Vec<&str> = category_links.iter().map(|(c, _)| *c).collect();
        self.templates.render(
            "web/index.html",
            context! {
                latest => v(latest),
                categories => v(categories),
                category_links => v(links),
                all_url,
                older_url,
                // webcal:// makes calendar programs subscribe (and follow changes) instead of
                // importing a copy once.
                webcal_url => calendar_url.as_ref().map(|url| match url.split_once("://") {
                    Some((_, rest)) => format!("webcal://{rest}"),
                    None => url.clone(),
                }),
                // Android phones know no webcal://: Google's own page subscribes its calendar.
                google_calendar_url => calendar_url.as_ref().map(|url| {
                    let cid: String = form_urlencoded::byte_serialize(url.as_bytes()).collect();
                    format!("https://calendar.google.com/calendar/render?cid={cid}")
                }),
                calendar_url,
            },
        )
    }

    /// One article's page; `updated` is its last change (the time of a correction).
    pub fn article(
        &self,
        article: &Article,
        updated: DateTime<FixedOffset>,
        nav: &ArticleNav,
    ) -> Result<String, TemplateError> {
        let ctx = ArticleCtx {
            id: &article.id,
            title: &article.title,
            category: &article.category,
            url: self.site.article_url(&article.id),
            paragraphs: &article.paragraphs,
            excerpt: article.excerpt(),
            author: article.author.as_deref(),
            published_iso: article.published.to_rfc3339(),
            published_text: local_time(&article.published),
            event: EventCtx::new(self.site, article),
            correction: article.correction.as_deref().map(|reason| CorrectionCtx {
                reason,
                at_text: updated.format("%H:%M %d/%m/%Y").to_string(),
                at_iso: updated.to_rfc3339(),
            }),
            category_url: nav.category_url.clone(),
            older: nav.older.clone(),
            newer: nav.newer.clone(),
        };
        self.templates.render(
            "web/article.html",
            context! {
                article => v(ctx),
            },
        )
    }

    /// A short page with a heading, a message and optionally a one-button form.
    pub fn message(
        &self,
        heading: &str,
        message: &str,
        form: Option<(&str, &str, &str)>,
    ) -> Result<String, TemplateError> {
        let (form_action, token, button) = form.unwrap_or_default();
        self.templates.render(
            "web/message.html",
            context! {
                heading, message, form_action, token, button,
            },
        )
    }

    /// A message page with the subscribe form filled in as it was posted.
    pub fn subscribe_again(
        &self,
        heading: &str,
        message: &str,
        refill: &Refill,
    ) -> Result<String, TemplateError> {
        self.templates.render(
            "web/message.html",
            context! { heading, message, refill => v(refill) },
        )
    }
}

/// The subscribe form as someone filled it, given back with a message about what to fix.
#[derive(Debug, Clone, Serialize)]
pub struct Refill {
    pub email: String,
    /// `immediate`, `daily` or `weekly`.
    pub schedule: String,
    /// Every category one may pick, whether it was ticked.
    pub categories: Vec<(String, bool)>,
    /// What was typed that is not a category, shown as typed.
    pub unknown: Vec<String>,
    /// The route the form posts to (`subscribe`, `preferences`).
    pub action: String,
    /// A token that names the subscriber (preferences): then the address is shown, not asked.
    pub token: Option<String>,
    /// The button's label.
    pub button: String,
    /// On the preferences page: where to unsubscribe instead.
    pub unsubscribe_url: Option<String>,
    /// The field the message is about (`email`, `schedule`, `categories`): marked invalid
    /// for screen readers, the message its description.
    pub problem: Option<&'static str>,
}

impl Refill {
    pub fn new(
        email: &str,
        schedule: Option<crate::subscriber::Schedule>,
        picked: &[String],
        known: &[String],
    ) -> Refill {
        let folded: Vec<String> = picked.iter().map(|p| crate::subscriber::fold(p)).collect();
        Refill {
            email: email.trim().to_owned(),
            schedule: schedule
                .unwrap_or(crate::subscriber::Schedule::Immediate)
                .as_str()
                .to_owned(),
            categories: known
                .iter()
                .map(|k| (k.clone(), folded.contains(&crate::subscriber::fold(k))))
                .collect(),
            unknown: picked
                .iter()
                .filter(|p| {
                    let f = crate::subscriber::fold(p);
                    !known.iter().any(|k| crate::subscriber::fold(k) == f)
                })
                .cloned()
                .collect(),
            action: "subscribe".into(),
            token: None,
            button: "Đăng ký".into(),
            unsubscribe_url: None,
            problem: None,
        }
    }
}

/// A serde value as a template value.
fn v<T: Serialize>(value: T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

#[cfg(test)]
mod tests {
    use super::{html_text, linkify, wrap};

    #[test]
    fn web_addresses_in_text_become_links_and_nothing_else_does() {
        assert_eq!(
            linkify("Xem https://hanoi.gov.vn/tin?id=1&a=2. Hỏi <đáp>"),
            "Xem <a href=\"https://hanoi.gov.vn/tin?id=1&amp;a=2\">\
             https://hanoi.gov.vn/tin?id=1&amp;a=2</a>. Hỏi &lt;đáp&gt;"
        );
        // A bracket opened before the address is not part of it; one opened in it is.
        assert_eq!(
            linkify("(tại http://a.vn/x) và http://b.vn/y_(z)"),
            "(tại <a href=\"http://a.vn/x\">http://a.vn/x</a>) và \
             <a href=\"http://b.vn/y_(z)\">http://b.vn/y_(z)</a>"
        );
        // Not an address: no scheme, a scheme alone, inside a word, another scheme.
        for plain in ["www.a.vn", "http://", "xhttp://a.vn", "javascript:alert(1)"] {
            assert!(!linkify(plain).contains("<a "), "{plain}");
        }
        assert_eq!(
            linkify("\"https://a.vn/\"onmouseover=x"),
            "&quot;<a href=\"https://a.vn/\">https://a.vn/</a>&quot;onmouseover=x"
        );
        assert_eq!(
            linkify("C <https://x.vn/b>."),
            "C &lt;<a href=\"https://x.vn/b\">https://x.vn/b</a>&gt;."
        );
    }

    #[test]
    fn escapes_what_html_needs_and_keeps_the_rest() {
        assert_eq!(
            html_text("Hỏi & đáp <b>\"Kỳ họp\"</b> 'số 5' / ạ"),
            "Hỏi &amp; đáp &lt;b&gt;&quot;Kỳ họp&quot;&lt;/b&gt; &#x27;số 5&#x27; / ạ"
        );
        assert_eq!(html_text(""), "");
        assert_eq!(html_text("&"), "&amp;");
        assert_eq!(html_text("đ"), "đ");
        let mut feed = String::new();
        crate::feed::escape_into(&mut feed, "'a' & <b>");
        assert_eq!(feed, "&#39;a&#39; &amp; &lt;b&gt;");
    }

    #[test]
    fn a_time_is_written_as_the_council_writes_it() {
        let t = chrono::DateTime::parse_from_rfc3339("2020-02-04T08:06:00+07:00").unwrap();
        assert_eq!(super::local_time(&t), "04/02/2020 08:06");
        // An article whose date line gives no time: the date alone.
        let t = chrono::DateTime::parse_from_rfc3339("2020-02-04T00:00:00+07:00").unwrap();
        assert_eq!(super::local_time(&t), "04/02/2020");
    }

    #[test]
    fn wraps_between_words_and_never_breaks_a_url() {
        let url = format!("https://hdnd.example.vn/{}", "a".repeat(90));
        let text = format!("Một hai ba bốn năm sáu bảy tám chín mười {url} cuối.");
        let w = wrap(&text, 20, "  ");
        for line in w.lines() {
            assert!(line.chars().count() <= 20 || line.trim() == url, "{line:?}");
        }
        assert!(w.lines().any(|l| l.trim() == url), "{w}");
        assert!(w.lines().skip(1).all(|l| l.starts_with("  ")), "{w}");
        assert_eq!(wrap("ngắn", 72, ""), "ngắn");
    }
}

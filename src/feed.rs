//! Feed definitions and the three feed formats: RSS 2.0, Atom 1.0 and JSON Feed 1.1.
//!
//! Rendering is pure: the same definition and items give the same bytes. Every date comes from
//! the articles, none from the clock.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::article::Article;
use crate::library::Entry;

/// Items in a feed when its definition names no `limit`.
pub const DEFAULT_LIMIT: usize = 50;
/// A feed never lists more items than this, whatever its definition says.
pub const MAX_LIMIT: usize = 1000;

/// A feed definition, `feeds/{name}.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedDef {
    /// The file stem: the feed's URL is `/feeds/{name}.rss` (and `.atom`, `.json`).
    #[serde(skip)]
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// Categories included; empty means every category.
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    DEFAULT_LIMIT
}

/// What a feed's title or description says for the site's title.
pub const SITE_MARK: &str = "{site}";

/// A problem in a feed definition, `path:line: message`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct DefError {
    pub path: String,
    pub line: usize,
    pub message: String,
}

impl FeedDef {
    /// Parses a definition; `name` is the file stem.
    pub fn parse(name: &str, text: &str) -> Result<FeedDef, (usize, String)> {
        if !is_valid_name(name) {
            return Err((
                1,
                format!(
                    "\"{name}\" không dùng được làm tên nguồn tin: hãy đặt tên tệp chỉ gồm \
                     chữ thường không dấu (a-z), chữ số và dấu \"-\""
                ),
            ));
        }
        let mut def: FeedDef = toml::from_str(text).map_err(|e| {
            let (line, message) = crate::config::toml_error(text, &e);
            (
                line,
                format!(
                    "tệp khai báo nguồn tin viết chưa đúng (lỗi TOML: {message}); \
                     các khóa được dùng là title, description, categories và limit"
                ),
            )
        })?;
        def.name = name.to_owned();
        if def.limit == 0 || def.limit > MAX_LIMIT {
            let line = text
                .find("limit")
                .map_or(1, |pos| crate::config::line_of(text, pos));
            return Err((
                line,
                format!("\"limit\" phải là một số từ 1 đến {MAX_LIMIT}"),
            ));
        }
        Ok(def)
    }

    /// Puts the site's title where the title or description says `{site}` (one set of
    /// definitions serves every council of a server).
    pub fn name_site(&mut self, site_title: &str) {
        self.title = self.title.replace(SITE_MARK, site_title);
        self.description = self.description.replace(SITE_MARK, site_title);
    }

    /// Whether an article of `category` belongs in this feed.
    pub fn includes(&self, category: &str) -> bool {
        self.categories.is_empty() || self.categories.iter().any(|c| c == category)
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// What the feeds need to know about the site.
#[derive(Debug, Clone)]
pub struct SiteInfo {
    pub title: String,
    /// Without a trailing slash.
    pub base_url: String,
    pub language: String,
    /// The `tag:` URI authority and date, e.g. `example.org,2020:`, then the base URL's path
    /// when it has one (`example.org,2020:phuong-cau-giay/`).
    pub tag_prefix: String,
    /// The council's address and contact, for mail footers.
    pub address: Option<String>,
    pub contact: Option<String>,
}

impl SiteInfo {
    pub fn new(title: &str, base_url: &str, language: &str) -> Self {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let host = base_url
            .split_once("://")
            .map_or(base_url.as_str(), |(_, rest)| rest)
            .split(['/', ':'])
            .next()
            .unwrap_or("localhost")
            .to_owned();
        // Councils sharing one host keep their ids apart by their path:
        // `tag:hdnd.example.vn,2020:phuong-cau-giay/2025/01/ky-hop`.
        let tag_prefix = match base_path(&base_url).trim_start_matches('/') {
            "" => format!("{host},2020:"),
            path => format!("{host},2020:{path}/"),
        };
        SiteInfo {
            title: title.to_owned(),
            language: language.to_owned(),
            tag_prefix,
            base_url,
            address: None,
            contact: None,
        }
    }

    /// The article's permanent id, a `tag:` URI (RFC 4151).
    pub fn tag(&self, id: &str) -> String {
        format!("tag:{}{}", self.tag_prefix, url_path(id))
    }

    pub fn article_url(&self, id: &str) -> String {
        format!("{}/articles/{}.html", self.base_url, url_path(id))
    }

    pub fn feed_url(&self, name: &str, ext: &str) -> String {
        format!("{}/feeds/{name}.{ext}", self.base_url)
    }
}

/// The path of a base URL without its trailing slash: `/phuong-cau-giay` for
/// `https://hdnd.example.vn/phuong-cau-giay/`, empty for `https://hdnd.example.vn`.
pub fn base_path(base_url: &str) -> &str {
    let rest = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest);
    rest.find('/')
        .map_or("", |at| rest[at..].trim_end_matches('/'))
}

/// Percent-encodes a `/`-separated path for a URL, keeping unreserved characters and `/`.
pub fn url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One feed item: the entry and, when it could be read, the article body.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub entry: &'a Entry,
    /// The article's body; `None` when the file could not be read again (the item then
    /// carries its title only).
    pub body: Option<&'a Article>,
}

impl Item<'_> {
    /// Plain-text summary of the body; an event's time and place first (readers that show
    /// only the summary show them too).
    fn excerpt(&self) -> String {
        let body = self.body.map(Article::excerpt).unwrap_or_default();
        let body = match self.correction() {
            Some((at, reason)) => {
                let reason = reason.trim_end_matches('.');
                let sep = if body.is_empty() { "" } else { " " };
                format!("Đính chính lúc {at}: {reason}.{sep}{body}")
            }
            None => body,
        };
        let Some(when) = &self.entry.event else {
            return body;
        };
        let mut out = format!("Thời gian: {}.", crate::calendar::describe(when));
        if let Some(place) = &self.entry.place {
            out.push_str(&format!(" Địa điểm: {}.", place.trim_end_matches('.')));
        }
        if !body.is_empty() {
            out.push(' ');
            out.push_str(&body);
        }
        out
    }

    /// When and why the article was corrected (`HH:MM DD/MM/YYYY` of its last change, as
    /// its page says), if it was.
    fn correction(&self) -> Option<(String, &str)> {
        let reason = self.entry.correction.as_deref()?;
        Some((
            self.entry.updated.format("%H:%M %d/%m/%Y").to_string(),
            reason,
        ))
    }

    fn author<'s>(&'s self, site: &'s SiteInfo) -> &'s str {
        self.entry.author.as_deref().unwrap_or(&site.title)
    }

    /// The full text as HTML paragraphs; an event's time and place first, as on its page
    /// (a feed reader has no other way to see them).
    fn content_html(&self) -> String {
        let paragraphs = self.body.map_or(&[][..], |a| a.paragraphs.as_slice());
        let mut html =
            String::with_capacity(paragraphs.iter().map(|p| p.len() + p.len() / 8 + 8).sum());
        // A correction first, as on the page: a reader that showed the article before shows
        // it again, changed, and says why.
        if let Some((at, reason)) = self.correction() {
            html.push_str("<p><strong>Đính chính lúc ");
            html.push_str(&at);
            html.push_str(":</strong> ");
            escape_into(&mut html, reason);
            html.push_str("</p>\n");
        }
        if let Some(when) = &self.entry.event {
            html.push_str("<p><strong>Thời gian:</strong> ");
            escape_into(&mut html, &crate::calendar::describe(when));
            html.push_str("</p>\n");
            if let Some(place) = &self.entry.place {
                html.push_str("<p><strong>Địa điểm:</strong> ");
                escape_into(&mut html, place);
                html.push_str("</p>\n");
            }
        }
        for p in paragraphs {
            html.push_str("<p>");
            crate::site::linkify_into(&mut html, p);
            html.push_str("</p>\n");
        }
        html.truncate(html.trim_end().len());
        html
    }
}

/// Escapes text for HTML content and attributes.
pub fn escape_into(out: &mut String, text: &str) {
    escape_html(out, text, "&#39;").expect("a String takes any text");
}

/// Writes `text` escaped for HTML content and attributes, `apos` for `'`. The runs between
/// the characters to escape go whole: they are ASCII, so every cut is a character boundary
/// (copying character by character was measurable in a build).
pub fn escape_html(out: &mut impl std::fmt::Write, text: &str, apos: &str) -> std::fmt::Result {
    let mut from = 0;
    for (i, b) in text.bytes().enumerate() {
        let escaped = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => apos,
            _ => continue,
        };
        out.write_str(&text[from..i])?;
        out.write_str(escaped)?;
        from = i + 1;
    }
    out.write_str(&text[from..])
}

/// Drops characters XML 1.0 cannot carry (articles are cleaned on parse; this guards
/// definitions and configuration text).
pub fn xml_safe(text: &str) -> String {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r')
            || ('\u{20}'..='\u{d7ff}').contains(&c)
            || ('\u{e000}'..='\u{fffd}').contains(&c)
            || c >= '\u{10000}'
    };
    // Nearly always every character may stay: one copy, not one push per character.
    if text.chars().all(allowed) {
        return text.to_owned();
    }
    text.chars().filter(|&c| allowed(c)).collect()
}

/// The newest publication time, for RSS `lastBuildDate` and HTTP `Last-Modified`.
pub fn last_published(items: &[Item<'_>]) -> Option<DateTime<FixedOffset>> {
    items.iter().map(|i| i.entry.published).max()
}

/// The feed's own time: the latest change among its items, publication or edit (never the
/// clock).
pub fn last_modified(items: &[Item<'_>]) -> Option<DateTime<FixedOffset>> {
    items.iter().map(|i| i.entry.updated).max()
}

fn epoch() -> DateTime<FixedOffset> {
    Utc.timestamp_opt(0, 0).unwrap().fixed_offset()
}

/// The namespace of RFC 5005 (feed paging and archiving).
pub const HISTORY_NS: &str = "http://purl.org/syndication/history/1.0";

/// Where a feed document stands among its feed's documents (RFC 5005) and its WebSub hub.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// The document's own address; the feed's when `None`.
    pub self_url: Option<String>,
    /// The archive document just before this one (older articles).
    pub prev_archive: Option<String>,
    /// The archive document just after this one (an archive document only).
    pub next_archive: Option<String>,
    /// The feed itself (an archive document only).
    pub current: Option<String>,
    /// The number of an archive document (`fh:archive`), counted from the oldest.
    pub archive: Option<usize>,
    /// The WebSub hub (`feeds.websub_hub`).
    pub hub: Option<String>,
}

impl Links {
    /// The extra links, as (rel, href).
    fn extra(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        for (rel, href) in [
            ("prev-archive", &self.prev_archive),
            ("next-archive", &self.next_archive),
            ("current", &self.current),
            ("hub", &self.hub),
        ] {
            if let Some(href) = href {
                out.push((rel, href.as_str()));
            }
        }
        out
    }

    /// `<fh:archive/>` as an extension of an Atom document, when it is an archive.
    fn history_extension(&self) -> atom_syndication::extension::ExtensionMap {
        let mut map = atom_syndication::extension::ExtensionMap::default();
        if self.archive.is_some() {
            let ext = atom_syndication::extension::Extension {
                name: "fh:archive".into(),
                ..Default::default()
            };
            map.entry("fh".into())
                .or_default()
                .insert("archive".into(), vec![ext]);
        }
        map
    }

    /// The same for RSS.
    fn rss_history_extension(&self) -> rss::extension::ExtensionMap {
        let mut map = rss::extension::ExtensionMap::default();
        if self.archive.is_some() {
            let ext = rss::extension::Extension {
                name: "fh:archive".into(),
                ..Default::default()
            };
            map.entry("fh".into())
                .or_default()
                .insert("archive".into(), vec![ext]);
        }
        map
    }
}

/// RSS 2.0 with the content, Dublin Core and Atom extensions.
pub fn rss(def: &FeedDef, site: &SiteInfo, items: &[Item<'_>], links: &Links) -> String {
    use rss::extension::dublincore::DublinCoreExtension;
    let atom_link = |href: String, rel: &str, mime: Option<&str>| atom_syndication::Link {
        href,
        rel: rel.into(),
        mime_type: mime.map(Into::into),
        ..Default::default()
    };
    let mut atom_links = vec![atom_link(
        links
            .self_url
            .clone()
            .unwrap_or_else(|| site.feed_url(&def.name, "rss")),
        "self",
        Some("application/rss+xml"),
    )];
    for (rel, href) in links.extra() {
        let mime = (rel != "hub").then_some("application/rss+xml");
        atom_links.push(atom_link(href.to_owned(), rel, mime));
    }
    let rss_items = items
        .iter()
        .map(|item| {
            let e = item.entry;
            rss::Item {
                title: Some(xml_safe(&e.title)),
                link: Some(site.article_url(&e.id)),
                // Readers take the description as HTML: escape the plain text.
                description: item.body.map(|_| {
                    let mut html = String::new();
                    escape_into(&mut html, &item.excerpt());
                    html
                }),
                guid: Some(rss::Guid {
                    value: site.tag(&e.id),
                    permalink: false,
                }),
                pub_date: Some(e.published.to_rfc2822()),
                categories: vec![rss::Category {
                    name: e.category.to_string(),
                    domain: None,
                }],
                content: item.body.map(|_| item.content_html()),
                dublin_core_ext: Some(DublinCoreExtension {
                    creators: vec![item.author(site).to_owned()],
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    let mut namespaces = BTreeMap::new();
    namespaces.insert(
        "atom".to_string(),
        "http://www.w3.org/2005/Atom".to_string(),
    );
    if links.archive.is_some() {
        namespaces.insert("fh".to_string(), HISTORY_NS.to_string());
    }
    let channel = rss::Channel {
        title: xml_safe(&def.title),
        link: home_of(def, site),
        description: xml_safe(if def.description.is_empty() {
            &def.title
        } else {
            &def.description
        }),
        language: Some(site.language.clone()),
        last_build_date: last_published(items).map(|t| t.to_rfc2822()),
        generator: Some("bantin".into()),
        items: rss_items,
        atom_ext: Some(rss::extension::atom::AtomExtension { links: atom_links }),
        extensions: links.rss_history_extension(),
        namespaces,
        ..Default::default()
    };
    // The crate writes its own declaration, with the encoding.
    let mut out = channel.to_string();
    out.push('\n');
    out
}

/// Atom 1.0 (RFC 4287).
pub fn atom(def: &FeedDef, site: &SiteInfo, items: &[Item<'_>], links: &Links) -> String {
    use atom_syndication::{Category, Content, Entry as AtomEntry, Feed, Link, Person, Text};
    let link = |href: String, rel: &str, mime: &str| Link {
        href,
        rel: rel.into(),
        mime_type: Some(mime.into()),
        ..Default::default()
    };
    let entries = items
        .iter()
        .map(|item| {
            let e = item.entry;
            AtomEntry {
                title: Text::plain(xml_safe(&e.title)),
                id: site.tag(&e.id),
                updated: e.updated,
                published: Some(e.published),
                authors: vec![Person {
                    name: item.author(site).to_owned(),
                    ..Default::default()
                }],
                categories: vec![Category {
                    term: e.category.to_string(),
                    ..Default::default()
                }],
                links: vec![link(site.article_url(&e.id), "alternate", "text/html")],
                summary: item.body.map(|_| Text::plain(item.excerpt())),
                content: item.body.map(|_| Content {
                    value: Some(item.content_html()),
                    content_type: Some("html".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    let mut feed_links = vec![
        link(home_of(def, site), "alternate", "text/html"),
        link(
            links
                .self_url
                .clone()
                .unwrap_or_else(|| site.feed_url(&def.name, "atom")),
            "self",
            "application/atom+xml",
        ),
    ];
    for (rel, href) in links.extra() {
        let mut l = link(href.to_owned(), rel, "application/atom+xml");
        if rel == "hub" {
            l.mime_type = None;
        }
        feed_links.push(l);
    }
    let mut namespaces = BTreeMap::new();
    if links.archive.is_some() {
        namespaces.insert("fh".to_string(), HISTORY_NS.to_string());
    }
    let feed = Feed {
        title: Text::plain(xml_safe(&def.title)),
        id: match links.archive {
            Some(n) => format!("tag:{}feeds/{}/archive/{n}", site.tag_prefix, def.name),
            None => format!("tag:{}feeds/{}", site.tag_prefix, def.name),
        },
        updated: last_modified(items).unwrap_or_else(epoch),
        authors: vec![Person {
            name: xml_safe(&site.title),
            ..Default::default()
        }],
        links: feed_links,
        extensions: links.history_extension(),
        namespaces,
        subtitle: (!def.description.is_empty()).then(|| Text::plain(xml_safe(&def.description))),
        generator: Some(atom_syndication::Generator {
            value: "bantin".into(),
            ..Default::default()
        }),
        entries,
        lang: Some(site.language.clone()),
        ..Default::default()
    };
    let body = feed.to_string();
    // The crate writes `<?xml version="1.0"?>`; name the encoding as the RSS feed does.
    let body = body
        .strip_prefix("<?xml version=\"1.0\"?>")
        .unwrap_or(&body)
        .trim_start();
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}\n")
}

#[derive(Serialize)]
struct JsonFeed<'a> {
    version: &'static str,
    title: &'a str,
    home_page_url: String,
    feed_url: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    language: &'a str,
    authors: Vec<JsonAuthor<'a>>,
    /// The WebSub hub, for readers that subscribe in real time (JSON Feed 1.1 `hubs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hubs: Vec<JsonHub<'a>>,
    items: Vec<JsonItem<'a>>,
}

#[derive(Serialize)]
struct JsonHub<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    url: &'a str,
}

#[derive(Serialize)]
struct JsonAuthor<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct JsonItem<'a> {
    id: String,
    url: String,
    title: &'a str,
    content_html: String,
    summary: String,
    date_published: String,
    date_modified: String,
    authors: Vec<JsonAuthor<'a>>,
    tags: [&'a str; 1],
}

/// The page a feed stands for: the home page for one of every category, else the feed's own
/// page, which lists its articles (a reader's "visit the site" lands on what it follows).
fn home_of(def: &FeedDef, site: &SiteInfo) -> String {
    if def.categories.is_empty() {
        format!("{}/", site.base_url)
    } else {
        site.feed_url(&def.name, "html")
    }
}

/// JSON Feed 1.1.
pub fn json(def: &FeedDef, site: &SiteInfo, items: &[Item<'_>], hub: Option<&str>) -> String {
    let feed = JsonFeed {
        version: "https://jsonfeed.org/version/1.1",
        title: &def.title,
        home_page_url: home_of(def, site),
        feed_url: site.feed_url(&def.name, "json"),
        description: &def.description,
        language: &site.language,
        authors: vec![JsonAuthor { name: &site.title }],
        hubs: hub
            .map(|url| JsonHub {
                kind: "WebSub",
                url,
            })
            .into_iter()
            .collect(),
        items: items
            .iter()
            .map(|item| JsonItem {
                id: site.tag(&item.entry.id),
                url: site.article_url(&item.entry.id),
                title: &item.entry.title,
                content_html: item.content_html(),
                summary: item.excerpt(),
                date_published: item.entry.published.to_rfc3339(),
                date_modified: item.entry.updated.to_rfc3339(),
                authors: vec![JsonAuthor {
                    name: item.author(site),
                }],
                tags: [&item.entry.category],
            })
            .collect(),
    };
    let mut out = serde_json::to_string_pretty(&feed).expect("a feed always serializes");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::Stamp;

    fn site() -> SiteInfo {
        SiteInfo::new("HĐND quận Cầu Giấy", "https://hdnd.example.vn/", "vi")
    }

    fn def() -> FeedDef {
        FeedDef::parse("tin-tuc", "title = \"Tin tức\"\ndescription = \"Mô tả\"\n").unwrap()
    }

    fn entry() -> Entry {
        let published = DateTime::parse_from_rfc3339("2020-02-14T08:16:00+07:00").unwrap();
        Entry {
            id: "2020/ky hop".into(),
            category: "TIN TỨC".into(),
            title: "Giá <b> & \"x\" ]]> tăng".into(),
            published,
            updated: DateTime::parse_from_rfc3339("2020-02-15T09:00:00+07:00").unwrap(),
            author: Some("HĐND QUẬN CẦU GIẤY".into()),
            file: "2020/ky hop.txt".into(),
            stamp: Stamp::default(),
            event: None,
            place: None,
            correction: None,
            sig: 0,
        }
    }

    fn body(e: &Entry) -> Article {
        Article {
            id: e.id.to_string(),
            category: e.category.to_string(),
            title: e.title.clone(),
            published: e.published,
            paragraphs: vec!["Một ]]> hai <i>".into()],
            author: e.author.as_deref().map(str::to_owned),
            event: None,
            place: None,
            correction: None,
        }
    }

    #[test]
    fn rss_has_every_required_element() {
        let e = entry();
        let body = body(&e);
        let items = [Item {
            entry: &e,
            body: Some(&body),
        }];
        let xml = rss(&def(), &site(), &items, &Links::default());
        for needle in [
            "<guid isPermaLink=\"false\">tag:hdnd.example.vn,2020:2020/ky%20hop</guid>",
            "<pubDate>Fri, 14 Feb 2020 08:16:00 +0700</pubDate>",
            "<lastBuildDate>Fri, 14 Feb 2020 08:16:00 +0700</lastBuildDate>",
            "<category>TIN TỨC</category>",
            "<dc:creator>HĐND QUẬN CẦU GIẤY</dc:creator>",
            "<atom:link href=\"https://hdnd.example.vn/feeds/tin-tuc.rss\" rel=\"self\"",
            "<language>vi</language>",
            "<title>Giá &lt;b&gt; &amp; &quot;x&quot; ]]&gt; tăng</title>",
            "<content:encoded><![CDATA[<p>Một ]]&gt; hai &lt;i&gt;</p>]]></content:encoded>",
            "<description><![CDATA[Một ]]&gt; hai &lt;i&gt;]]></description>",
        ] {
            assert!(xml.contains(needle), "missing {needle} in\n{xml}");
        }
    }

    #[test]
    fn a_corrected_article_says_so_first_in_every_format() {
        let mut e = entry();
        e.correction = Some("Sửa giờ <họp>".into());
        let body = body(&e);
        let items = [Item {
            entry: &e,
            body: Some(&body),
        }];
        let said = "Đính chính lúc 09:00 15/02/2020:";
        let rss = rss(&def(), &site(), &items, &Links::default());
        assert!(
            rss.contains(&format!(
                "<content:encoded><![CDATA[<p><strong>{said}</strong> Sửa giờ &lt;họp&gt;</p>\n<p>Một"
            )),
            "{rss}"
        );
        assert!(
            rss.contains(&format!(
                "<description><![CDATA[{said} Sửa giờ &lt;họp&gt;. Một"
            )),
            "{rss}"
        );
        let atom = atom(&def(), &site(), &items, &Links::default());
        assert!(atom.contains(said), "{atom}");
        let json = json(&def(), &site(), &items, None);
        assert!(json.contains(said), "{json}");
    }

    #[test]
    fn atom_dates_are_whole_seconds_with_offset() {
        let e = entry();
        let article = body(&e);
        let items = [Item {
            entry: &e,
            body: Some(&article),
        }];
        let xml = atom(&def(), &site(), &items, &Links::default());
        assert!(
            xml.contains("<published>2020-02-14T08:16:00+07:00</published>"),
            "{xml}"
        );
        assert!(
            xml.contains("<updated>2020-02-15T09:00:00+07:00</updated>"),
            "{xml}"
        );
        assert!(xml.contains("xml:lang=\"vi\""), "{xml}");
        assert!(xml.contains("<content type=\"html\">"), "{xml}");
    }

    #[test]
    fn empty_feed_renders() {
        let xml = atom(&def(), &site(), &[], &Links::default());
        assert!(
            xml.contains("<updated>1970-01-01T00:00:00+00:00</updated>"),
            "{xml}"
        );
        let xml = rss(&def(), &site(), &[], &Links::default());
        assert!(!xml.contains("lastBuildDate"));
    }

    #[test]
    fn definitions_report_their_problems() {
        let (line, msg) = FeedDef::parse("x", "title = \"a\"\n\ncategory = []\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(msg.contains("category"), "{msg}");
        let (line, _) = FeedDef::parse("x", "title = \"a\"\nlimit = 0\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(FeedDef::parse("Bad Name", "title = \"a\"").is_err());
        assert_eq!(
            FeedDef::parse("ok", "title = \"a\"").unwrap().limit,
            DEFAULT_LIMIT
        );
    }

    #[test]
    fn a_definition_names_the_site_where_it_says_so() {
        let mut def = FeedDef::parse(
            "tat-ca",
            "title = \"{site} – Tất cả tin\"\ndescription = \"Mọi tin của {site}\"\n",
        )
        .unwrap();
        def.name_site("HĐND phường Láng");
        assert_eq!(def.title, "HĐND phường Láng – Tất cả tin");
        assert_eq!(def.description, "Mọi tin của HĐND phường Láng");
    }

    #[test]
    fn xml_safe_drops_forbidden_characters() {
        assert_eq!(xml_safe("a\u{1}b\u{fffe}c\td"), "abc\td");
    }
}

#[cfg(test)]
mod base_path_tests {
    use super::*;

    #[test]
    fn the_path_of_a_base_url_keeps_councils_apart() {
        assert_eq!(base_path("https://hdnd.example.vn"), "");
        assert_eq!(base_path("https://hdnd.example.vn/"), "");
        assert_eq!(
            base_path("https://hdnd.example.vn/phuong-cau-giay/"),
            "/phuong-cau-giay"
        );
        assert_eq!(base_path("http://127.0.0.1:8080/a/b"), "/a/b");
        let one = SiteInfo::new("A", "https://hdnd.example.vn/phuong-a/", "vi");
        let two = SiteInfo::new("B", "https://hdnd.example.vn/phuong-b", "vi");
        let alone = SiteInfo::new("C", "https://hdnd.example.vn", "vi");
        assert_eq!(
            one.tag("2025/x"),
            "tag:hdnd.example.vn,2020:phuong-a/2025/x"
        );
        assert_eq!(
            two.tag("2025/x"),
            "tag:hdnd.example.vn,2020:phuong-b/2025/x"
        );
        assert_eq!(alone.tag("2025/x"), "tag:hdnd.example.vn,2020:2025/x");
        assert_eq!(
            one.article_url("2025/x"),
            "https://hdnd.example.vn/phuong-a/articles/2025/x.html"
        );
    }
}

//! The pages people navigate by and the documents feed readers page through: category pages,
//! the paged list of all articles, the month archive, feed pages, the OPML list, each feed's
//! RFC 5005 archive documents and the 404 page. Rendered from a [`Model`] of the library.

use std::collections::HashSet;
use std::sync::Arc;

use minijinja::context;
use serde::Serialize;

use crate::feed::{self, FeedDef, Item, Links};
use crate::library::Entry;
use crate::nav::{self, ARCHIVE_SIZE, Doc, Ext, Model, PAGE_SIZE};
use crate::output;
use crate::publish::Publisher;
use crate::site::{INDEX_LATEST, local_time};

/// A serde value as a template value.
fn v<T: Serialize>(value: T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

/// The copy button of the feed pages (the only script of the site; pages work without it).
pub const SITE_JS: &str = r#"// Copy buttons: <button data-copy="ID"> copies the value of the field ID.
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  var field = document.getElementById(button.getAttribute("data-copy"));
  if (!field) return;
  button.hidden = false;
  var label = button.textContent;
  button.addEventListener("click", function () {
    var done = function () {
      button.textContent = "Đã sao chép";
      setTimeout(function () { button.textContent = label; }, 2500);
    };
    field.select();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () {});
    } else if (document.execCommand && document.execCommand("copy")) {
      done();
    }
  });
});
"#;

/// The site's icon in browser tabs and bookmarks: a bulletin's lines on the site's red.
pub const ICON_SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 32 32\">\
<rect width=\"32\" height=\"32\" rx=\"6\" fill=\"#a50e0e\"/>\
<path d=\"M8 10h16M8 16h16M8 22h10\" stroke=\"#fff\" stroke-width=\"3\" stroke-linecap=\"round\"/>\
</svg>\n";

/// The files the site has besides pages and feeds, by path under `output.dir`.
pub const NOT_FOUND_FILE: &str = "404.html";
pub const OPML_FILE: &str = "feeds.opml";
pub const SCRIPT_FILE: &str = "site.js";
pub const ICON_FILE: &str = "favicon.svg";
/// The files served from memory that change only with the configuration, with their
/// media types.
pub const FIXED: [(&str, &str); 4] = [
    (OPML_FILE, "text/x-opml; charset=utf-8"),
    (SCRIPT_FILE, "text/javascript; charset=utf-8"),
    (NOT_FOUND_FILE, "text/html; charset=utf-8"),
    (ICON_FILE, "image/svg+xml"),
];

/// The media type of one of the [`FIXED`] files.
fn fixed_media(name: &str) -> &'static str {
    FIXED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, media)| *media)
        .expect("one of the fixed files")
}

/// One article in a list.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub id: String,
    pub title: String,
    pub category: String,
    pub category_url: String,
    pub url: String,
    pub published_iso: String,
    pub published_text: String,
    pub excerpt: Option<String>,
}

#[derive(Serialize)]
struct Link {
    label: String,
    url: String,
}

#[derive(Serialize, Default)]
struct Pager {
    newest: Option<String>,
    newer: Option<String>,
    older: Option<String>,
    oldest: Option<String>,
}

#[derive(Serialize)]
struct FeedLink {
    title: String,
    page_url: String,
}

#[derive(Serialize)]
struct MonthLink {
    label: String,
    url: String,
    rel: Option<&'static str>,
}

impl Publisher {
    pub fn category_url(&self, model: &Model<'_>, category: &str) -> String {
        format!(
            "{}/categories/{}.html",
            self.site.base_url,
            model.slug_of(category)
        )
    }

    fn category_page_url(&self, model: &Model<'_>, category: &str, n: usize) -> String {
        format!(
            "{}/categories/{}/{n}.html",
            self.site.base_url,
            model.slug_of(category)
        )
    }

    fn all_page_url(&self, n: usize) -> String {
        format!("{}/pages/{n}.html", self.site.base_url)
    }

    fn month_url(&self, (year, month): (i32, u32)) -> String {
        format!("{}/archive/{year:04}/{month:02}.html", self.site.base_url)
    }

    pub fn feed_page_url(&self, name: &str) -> String {
        self.site.feed_url(name, "html")
    }

    fn archive_url(&self, feed: &str, n: usize, ext: Ext) -> String {
        format!(
            "{}/feeds/{feed}/archive/{n}.{}",
            self.site.base_url,
            ext.as_str()
        )
    }

    /// The address of the newest page of every article (`/pages/{n}.html`).
    pub fn all_url(&self, model: &Model<'_>) -> String {
        self.all_page_url(nav::pages(model.all.len()))
    }

    /// The page of all articles that holds the newest one the index does not show (pages
    /// count from the oldest, so the newest page mostly repeats the index); the newest page
    /// when the index shows them all.
    pub fn older_url(&self, model: &Model<'_>) -> String {
        match model.all.len().checked_sub(INDEX_LATEST + 1) {
            Some(at) => self.all_page_url(at / PAGE_SIZE + 1),
            None => self.all_url(model),
        }
    }

    pub fn listed(&self, model: &Model<'_>, e: &Entry, excerpt: Option<String>) -> Listed {
        Listed {
            id: e.id.to_string(),
            title: e.title.clone(),
            category: e.category.to_string(),
            category_url: self.category_url(model, &e.category),
            url: self.site.article_url(&e.id),
            published_iso: e.published.to_rfc3339(),
            published_text: local_time(&e.published),
            excerpt,
        }
    }

    /// Newest first.
    fn listed_all(&self, model: &Model<'_>, entries: &[&Arc<Entry>]) -> Vec<Listed> {
        entries
            .iter()
            .rev()
            .map(|e| self.listed(model, e, None))
            .collect()
    }

    /// The feed that follows exactly `category`, else the one of all news.
    fn feed_for(&self, category: &str) -> Option<&FeedDef> {
        self.feeds
            .iter()
            .find(|d| d.categories.len() == 1 && d.categories[0] == category)
            .or_else(|| self.feeds.iter().find(|d| d.categories.is_empty()))
    }

    /// The number of archive documents of `def` (the newest may be partial).
    pub fn archive_count(&self, model: &Model<'_>, def: &FeedDef) -> usize {
        nav::archives(model.of_feed(def).len())
    }

    /// The links of a feed's subscription document: its newest archive, its hub.
    pub fn feed_links(&self, model: &Model<'_>, def: &FeedDef, ext: Ext) -> Links {
        let count = self.archive_count(model, def);
        Links {
            prev_archive: (count > 0).then(|| self.archive_url(&def.name, count, ext)),
            hub: self.websub_hub.clone(),
            ..Links::default()
        }
    }

    /// Renders `doc`; `None` when it does not exist (any more).
    pub fn render_doc(&self, model: &Model<'_>, doc: &Doc) -> Option<Result<String, String>> {
        let render = |name: &str, ctx: minijinja::Value| {
            Some(self.templates.render(name, ctx).map_err(|e| e.to_string()))
        };
        let home = Link {
            label: "Trang chủ".into(),
            url: format!("{}/", self.site.base_url),
        };
        match doc {
            Doc::CategoryFront(c) => {
                let list = model.by_category.get(c.as_str())?;
                let pages = nav::pages(list.len());
                let shown = nav::newest(list, PAGE_SIZE);
                let numbers: Vec<usize> = if pages <= 50 {
                    (1..=pages).collect()
                } else {
                    (1..=5).chain(pages - 4..=pages).collect()
                };
                render(
                    "web/list.html",
                    context! {
                        heading => c,
                        crumb => c,
                        crumbs => v(vec![home]),
                        intro => format!("{} tin, mới nhất ở đầu.", list.len()),
                        articles => v(self.listed_all(model, shown)),
                        pager => v((pages > 1).then(|| Pager {
                            older: Some(self.category_page_url(model, c, pages - 1)),
                            ..Pager::default()
                        })),
                        pages => v((pages > 1).then(|| numbers
                            .iter()
                            .map(|&n| Link {
                                label: n.to_string(),
                                url: self.category_page_url(model, c, n),
                            })
                            .collect::<Vec<_>>())),
                        feed => v(self.feed_for(c).map(|d| FeedLink {
                            title: d.title.clone(),
                            page_url: self.feed_page_url(&d.name),
                        })),
                    },
                )
            }
            Doc::CategoryPage(c, n) => {
                let list = model.by_category.get(c.as_str())?;
                let pages = nav::pages(list.len());
                if *n > pages {
                    return None;
                }
                let front = self.category_url(model, c);
                render(
                    "web/list.html",
                    context! {
                        heading => format!("{c} – trang {n}"),
                        crumb => format!("Trang {n}"),
                        crumbs => v(vec![home, Link { label: c.clone(), url: front.clone() }]),
                        articles => v(self.listed_all(model, nav::chunk(list, *n, PAGE_SIZE))),
                        pager => v(self.pager(*n, pages, front, |k| self.category_page_url(model, c, k))),
                    },
                )
            }
            Doc::AllPage(n) => {
                let pages = nav::pages(model.all.len());
                if *n > pages {
                    return None;
                }
                render(
                    "web/list.html",
                    context! {
                        heading => format!("Tất cả tin – trang {n}"),
                        crumb => format!("Tất cả tin, trang {n}"),
                        crumbs => v(vec![home]),
                        show_category => true,
                        articles => v(self.listed_all(model, nav::chunk(&model.all, *n, PAGE_SIZE))),
                        pager => v(self.pager(*n, pages, format!("{}/", self.site.base_url), |k| self.all_page_url(k))),
                    },
                )
            }
            Doc::Month(y, m) => {
                let list = model.months.get(&(*y, *m))?;
                let older = model.months.range(..(*y, *m)).next_back().map(|(k, _)| *k);
                let newer = model.months.range((*y, *m + 1)..).next().map(|(k, _)| *k);
                let mut months = Vec::new();
                if let Some(k) = newer {
                    months.push(MonthLink {
                        label: format!("‹ Tháng {}/{}", k.1, k.0),
                        url: self.month_url(k),
                        rel: Some("prev"),
                    });
                }
                if let Some(k) = older {
                    months.push(MonthLink {
                        label: format!("Tháng {}/{} ›", k.1, k.0),
                        url: self.month_url(k),
                        rel: Some("next"),
                    });
                }
                render(
                    "web/list.html",
                    context! {
                        heading => format!("Tin tháng {m}/{y}"),
                        crumb => format!("Tháng {m}/{y}"),
                        crumbs => v(vec![home, Link { label: "Lưu trữ".into(), url: format!("{}/archive/", self.site.base_url) }]),
                        intro => format!("{} tin, mới nhất ở đầu.", list.len()),
                        show_category => true,
                        articles => v(self.listed_all(model, list)),
                        months => v(months),
                    },
                )
            }
            Doc::Years => {
                #[derive(Serialize)]
                struct Month {
                    month: u32,
                    url: String,
                    count: usize,
                }
                #[derive(Serialize)]
                struct Year {
                    year: i32,
                    months: Vec<Month>,
                }
                #[derive(Serialize)]
                struct Category {
                    name: String,
                    url: String,
                    count: usize,
                }
                let mut years: Vec<Year> = Vec::new();
                for (&(y, m), list) in model.months.iter().rev() {
                    if years.last().is_none_or(|l| l.year != y) {
                        years.push(Year {
                            year: y,
                            months: Vec::new(),
                        });
                    }
                    years.last_mut().expect("pushed").months.push(Month {
                        month: m,
                        url: self.month_url((y, m)),
                        count: list.len(),
                    });
                }
                let categories: Vec<Category> = model
                    .by_category
                    .iter()
                    .map(|(c, list)| Category {
                        name: (*c).to_owned(),
                        url: self.category_url(model, c),
                        count: list.len(),
                    })
                    .collect();
                render(
                    "web/archive.html",
                    context! {
                        years => v(years),
                        categories => v(categories),
                        all_url => self.all_url(model),
                    },
                )
            }
            Doc::FeedArchive { feed, n, ext } => {
                let def = self.feeds.iter().find(|d| &d.name == feed)?;
                let list = model.of_feed(def);
                let count = nav::archives(list.len());
                if *n > count {
                    return None;
                }
                let items: Vec<Item<'_>> = nav::chunk(list, *n, ARCHIVE_SIZE)
                    .iter()
                    .map(|e| Item {
                        entry: e,
                        body: None,
                    })
                    .collect();
                let links = Links {
                    self_url: Some(self.archive_url(feed, *n, *ext)),
                    prev_archive: (*n > 1).then(|| self.archive_url(feed, n - 1, *ext)),
                    next_archive: (*n < count).then(|| self.archive_url(feed, n + 1, *ext)),
                    current: Some(self.site.feed_url(feed, ext.as_str())),
                    archive: Some(*n),
                    hub: None,
                };
                Some(Ok(match ext {
                    Ext::Atom => feed::atom(def, &self.site, &items, &links),
                    Ext::Rss => feed::rss(def, &self.site, &items, &links),
                }))
            }
        }
    }

    /// The links of page `n` of `pages` counted from the oldest.
    fn pager(
        &self,
        n: usize,
        pages: usize,
        newest: String,
        url: impl Fn(usize) -> String,
    ) -> Pager {
        Pager {
            newest: Some(newest),
            newer: (n < pages).then(|| url(n + 1)),
            older: (n > 1).then(|| url(n - 1)),
            oldest: (n > 2).then(|| url(1)),
        }
    }

    /// Renders and writes `docs`; returns the problems.
    pub fn write_docs<'d>(
        &self,
        model: &Model<'_>,
        docs: impl IntoIterator<Item = &'d Doc>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for doc in docs {
            let path = self.out.join(doc.path(model));
            match self.render_doc(model, doc) {
                Some(Ok(body)) => {
                    if let Err(e) = output::write_atomic(&path, body.as_bytes()) {
                        problems.push(format!("{}: cannot write: {e}", path.display()));
                    }
                }
                Some(Err(e)) => problems.push(e),
                None => {}
            }
        }
        problems
    }

    /// Removes navigation and archive files that no document of `docs` names (a category
    /// gone, a month emptied, a feed removed).
    pub fn prune_docs(&self, model: &Model<'_>, docs: &[(Doc, u64)]) -> std::io::Result<usize> {
        let keep: HashSet<String> = docs.iter().map(|(d, _)| d.path(model)).collect();
        let mut removed = 0;
        for (dir, suffix) in [
            ("categories", ".html"),
            ("pages", ".html"),
            ("archive", ".html"),
            ("feeds", ""),
        ] {
            let root = self.out.join(dir);
            for rel in output::files_under(&root, suffix) {
                let rel = crate::scan::rel_string(&rel);
                // Only archive documents under feeds/ (the feeds themselves are pruned apart).
                if dir == "feeds" && !rel.contains("/archive/") {
                    continue;
                }
                let path = format!("{dir}/{rel}");
                if !keep.contains(&path) {
                    output::remove(&root, &self.out.join(&path))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// A feed's page for people.
    pub fn render_feed_page(
        &self,
        model: &Model<'_>,
        def: &FeedDef,
        newest: &[Arc<Entry>],
        events: bool,
    ) -> Result<String, String> {
        #[derive(Serialize)]
        struct FeedCtx<'a> {
            title: &'a str,
            description: &'a str,
            rss_url: String,
            atom_url: String,
            json_url: String,
            ics_url: Option<String>,
        }
        let items: Vec<Listed> = newest
            .iter()
            .take(10)
            .map(|e| self.listed(model, e, None))
            .collect();
        self.templates
            .render(
                "web/feed.html",
                context! {
                    feed => v(FeedCtx {
                        title: &def.title,
                        description: &def.description,
                        rss_url: self.site.feed_url(&def.name, "rss"),
                        atom_url: self.site.feed_url(&def.name, "atom"),
                        json_url: self.site.feed_url(&def.name, "json"),
                        ics_url: events.then(|| self.site.feed_url(&def.name, "ics")),
                    }),
                    items => v(items),
                },
            )
            .map_err(|e| e.to_string())
    }

    /// Every feed as OPML 2.0, for readers that import a list.
    pub fn render_opml(&self) -> String {
        let mut out = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<opml version=\"2.0\">\n<head>\n<title>",
        );
        feed::escape_into(&mut out, &feed::xml_safe(&self.site.title));
        out.push_str("</title>\n</head>\n<body>\n");
        for def in self.feeds_in_order() {
            let title = feed::xml_safe(&def.title);
            out.push_str("<outline type=\"rss\" version=\"RSS2\" text=\"");
            feed::escape_into(&mut out, &title);
            out.push_str("\" title=\"");
            feed::escape_into(&mut out, &title);
            if !def.description.is_empty() {
                out.push_str("\" description=\"");
                feed::escape_into(&mut out, &feed::xml_safe(&def.description));
            }
            out.push_str("\" language=\"");
            feed::escape_into(&mut out, &self.site.language);
            out.push_str("\" xmlUrl=\"");
            feed::escape_into(&mut out, &self.site.feed_url(&def.name, "rss"));
            out.push_str("\" htmlUrl=\"");
            feed::escape_into(&mut out, &self.feed_page_url(&def.name));
            out.push_str("\"/>\n");
        }
        out.push_str("</body>\n</opml>\n");
        out
    }

    /// The feeds with the one of all news first (then by name), as pages list them.
    pub fn feeds_in_order(&self) -> Vec<&FeedDef> {
        let mut defs: Vec<&FeedDef> = self.feeds.iter().collect();
        defs.sort_by_key(|d| (!d.categories.is_empty(), d.name.clone()));
        defs
    }

    pub fn render_not_found(&self) -> Result<String, String> {
        self.templates
            .render("web/404.html", context! {})
            .map_err(|e| e.to_string())
    }

    /// The files that change only with the configuration: (name under `output.dir`, media
    /// type, body) of the OPML list, the script, the icon and the 404 page; the problem rendering the
    /// 404 page, if any (the others are still made).
    pub fn render_fixed(&self) -> (Vec<(&'static str, &'static str, String)>, Option<String>) {
        let mut fixed = vec![
            (OPML_FILE, fixed_media(OPML_FILE), self.render_opml()),
            (SCRIPT_FILE, fixed_media(SCRIPT_FILE), SITE_JS.to_owned()),
            (ICON_FILE, fixed_media(ICON_FILE), ICON_SVG.to_owned()),
        ];
        match self.render_not_found() {
            Ok(html) => {
                fixed.push((NOT_FOUND_FILE, fixed_media(NOT_FOUND_FILE), html));
                (fixed, None)
            }
            Err(e) => (fixed, Some(e)),
        }
    }

    /// Writes the files of [`Publisher::render_fixed`].
    pub fn write_fixed(
        &self,
        fixed: &[(&'static str, &'static str, String)],
    ) -> Result<(), String> {
        for (name, _, body) in fixed {
            let path = self.out.join(name);
            output::write_atomic(&path, body.as_bytes())
                .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Renders the navigation, feed, search and 404 templates once with sample data: the
/// problems, one per template that fails.
pub fn sample_problems(
    templates: &crate::site::Templates,
    site: &crate::feed::SiteInfo,
    listed: &Listed,
) -> Vec<String> {
    let link = |label: &str| Link {
        label: label.into(),
        url: format!("{}/", site.base_url),
    };
    let one = || vec![listed];
    let samples = [
        (
            "web/list.html",
            context! {
                heading => "Chuyên mục", crumb => "Trang 2", crumbs => v(vec![link("Trang chủ")]),
                intro => "1 tin", show_category => true, articles => v(one()),
                pager => v(Pager { newest: Some(site.base_url.clone()), older: Some(site.base_url.clone()), ..Pager::default() }),
                pages => v(vec![link("1")]),
                months => v(vec![MonthLink { label: "Tháng 1/2024".into(), url: site.base_url.clone(), rel: Some("prev") }]),
                feed => v(FeedLink { title: "Tin tức".into(), page_url: site.base_url.clone() }),
            },
        ),
        (
            "web/archive.html",
            context! {
                years => vec![context! { year => 2024, months => vec![context! { month => 1, url => &site.base_url, count => 1 }] }],
                categories => vec![context! { name => &listed.category, url => &listed.category_url, count => 1 }],
                all_url => &site.base_url,
            },
        ),
        (
            "web/feed.html",
            context! {
                feed => context! { title => "Tin tức", description => "Mọi tin", rss_url => &site.base_url,
                    atom_url => &site.base_url, json_url => &site.base_url, ics_url => &site.base_url },
                items => v(one()),
            },
        ),
        (
            "web/search.html",
            context! {
                query => "kyf hopj", typed_as => "ki hop", ready => true, total => 1, page => 1, pages => 2, first => 1,
                results => vec![context! {
                    title => v(vec![crate::search::Piece { text: "Kỳ họp".into(), mark: true }]),
                    snippet => v(vec![crate::search::Piece { text: "…".into(), mark: false }]),
                    url => &listed.url, category => &listed.category, category_url => &listed.category_url,
                    published_iso => &listed.published_iso, published_text => &listed.published_text,
                }],
                prev_url => &site.base_url, next_url => &site.base_url,
            },
        ),
        ("web/404.html", context! {}),
    ];
    samples
        .into_iter()
        .filter_map(|(name, ctx)| templates.render(name, ctx).err())
        .map(|e| e.to_string())
        .collect()
}

//! `bantin check`: every problem of the configuration, feed definitions, templates and
//! articles, one `path:line: message` per line.

use std::sync::atomic::AtomicUsize;

use crate::config::Config;
use crate::library::Library;
use crate::publish::unknown_categories;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Every problem, `path:line: message`, in a stable order; empty when all is well.
    pub problems: Vec<String>,
    /// Articles read (drafts included).
    pub articles: usize,
    /// Drafts (files or folders named `_…`): checked, never published.
    pub drafts: Vec<String>,
}

/// Checks everything `bantin run` would use.
pub fn run(config: &Config, progress: &AtomicUsize) -> Report {
    let (problems, articles, drafts) = problems(config, progress);
    Report {
        problems,
        articles,
        drafts,
    }
}

fn problems(config: &Config, progress: &AtomicUsize) -> (Vec<String>, usize, Vec<String>) {
    let mut problems = Vec::new();
    let tz = match config.timezone() {
        Ok(tz) => tz,
        Err(e) => return (vec![e], 0, Vec::new()),
    };
    let (feeds, feed_source) = match crate::publish::load_feed_defs(&config.feeds.dir) {
        Ok((defs, errors)) => {
            problems.extend(errors.iter().map(ToString::to_string));
            (defs, true)
        }
        Err(e) => {
            problems.push(format!(
                "{}: cannot read the feed definitions folder: {e}",
                config.feeds.dir.display()
            ));
            (Vec::new(), false)
        }
    };
    if feed_source && feeds.is_empty() && problems.is_empty() {
        problems.push(format!(
            "{}: no feed definitions; add at least one '*.toml' file",
            config.feeds.dir.display()
        ));
    }
    let templates = match crate::publish::load_templates(&config.templates.dir) {
        Ok(t) => Some(t),
        Err(errors) => {
            problems.extend(errors.iter().map(ToString::to_string));
            None
        }
    };
    let reader = crate::scan::StoreReader {
        root: config.store.dir.clone(),
        tz,
        max_bytes: config.store.max_bytes,
    };
    let files = match reader.walk() {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!(
                "{}: cannot read the store: {e}",
                config.store.dir.display()
            ));
            return (problems, 0, Vec::new());
        }
    };
    let drafts = reader.walk_drafts().unwrap_or_default();
    let read = files.len() + drafts.len();
    let (entries, errors) = reader.read_all(&files, |_, _| {
        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    problems.extend(errors.iter().map(ToString::to_string));
    // Drafts are held to the same rules, so a draft made public later is already right.
    let (_, draft_errors) = reader.read_all(&drafts, |_, _| {
        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    problems.extend(draft_errors.iter().map(ToString::to_string));
    let drafts: Vec<String> = drafts
        .iter()
        .map(|d| config.store.dir.join(&d.file).display().to_string())
        .collect();
    let library = Library::from_entries(entries);
    for (def, category) in unknown_categories(&feeds, &library) {
        let path = config.feeds.dir.join(format!("{}.toml", def.name));
        let line = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| {
                text.find(category)
                    .map(|pos| crate::config::line_of(&text, pos))
            })
            .unwrap_or(1);
        problems.push(format!(
            "{}:{line}: unknown category '{category}'; the store has: {}",
            path.display(),
            library.categories().join(", ")
        ));
    }
    if let Some(mut templates) = templates {
        let site = crate::feed::SiteInfo::new(
            &config.site.title,
            config.base_url(),
            &config.site.language,
        );
        templates.set_site(&site, &feeds);
        let publisher_pages = crate::site::Pages {
            site: &site,
            templates: &templates,
        };
        let latest: Vec<_> = library
            .iter()
            .take(3)
            .map(|e| (&**e, String::new()))
            .collect();
        if let Err(e) = publisher_pages.index(&latest, &library.categories()) {
            problems.push(e.to_string());
        }
        if let Some(first) = files.first().and_then(|f| reader.read(f).ok())
            && let Err(e) = publisher_pages.article(&first)
        {
            problems.push(e.to_string());
        }
        problems.extend(crate::mail::check_templates(&templates, &site));
        if let Err(e) = publisher_pages.message("Tiêu đề", "Nội dung", Some(("/x", "t", "Nút")))
        {
            problems.push(e.to_string());
        }
    }
    (problems, read, drafts)
}

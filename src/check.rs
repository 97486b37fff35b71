//! `bantin check`: every problem of the configuration, feed definitions, templates and
//! articles, one `path:line: message` per line.

use std::sync::atomic::AtomicUsize;

use crate::article::ArticleError;
use crate::config::Config;
use crate::library::Library;
use crate::publish::unknown_categories;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Every problem, `path:line: message`, in a stable order; empty when all is well.
    pub problems: Vec<String>,
    /// What works but should not stay so in public (no exit status).
    pub warnings: Vec<String>,
    /// Articles read (drafts included).
    pub articles: usize,
    /// Drafts (files or folders named `_…`): checked, never published.
    pub drafts: Vec<String>,
}

/// Checks everything `bantin run` would use.
pub fn run(config: &Config, progress: &AtomicUsize) -> Report {
    let (mut problems, articles, drafts, body_markers) = problems(config, progress);
    let (errors, mut warnings) = public(config);
    warnings.extend(body_markers);
    problems.extend(errors);
    // What `run` reads before it starts mail, read here too: a password file that is not
    // there stopped `run` after `check` had passed.
    if config.mail.transport == "smtp"
        && let Err(e) = crate::mail::transport::credentials(config)
    {
        problems.push(format!("{}: {e}", config_file(config)));
    }
    if let Ok(tz) = config.timezone() {
        let reader = crate::scan::StoreReader {
            root: config.store.dir.clone(),
            tz,
            max_bytes: config.store.max_bytes,
        };
        for (link, target) in reader.links_leaving() {
            warnings.push(format!(
                "{}: liên kết tới \"{}\", nằm ngoài thư mục bài viết: bị bỏ qua (không được đăng, \
                 không được theo dõi); hãy chép những gì cần đăng vào trong thư mục bài viết",
                config.store.dir.join(link).display(),
                target.display()
            ));
        }
    }
    // Every line names a file the way the configuration names the store: the reader's
    // paths start from the store's real (canonical) folder, the others from store.dir.
    let configured = config.store.dir.display().to_string();
    // `./store/` and `./store` name the same folder: no `//` after either.
    let configured = match configured.trim_end_matches('/') {
        "" => configured.clone(),
        trimmed => trimmed.to_owned(),
    };
    let real = config
        .store
        .dir
        .canonicalize()
        .ok()
        .map(|p| p.display().to_string())
        .filter(|real| *real != configured);
    let shown = |lines: Vec<String>| -> Vec<String> {
        let Some(real) = &real else {
            return lines;
        };
        lines
            .into_iter()
            .map(|line| match line.strip_prefix(real.as_str()) {
                Some(rest) if rest.starts_with('/') => format!("{configured}{rest}"),
                _ => line,
            })
            .collect()
    };
    Report {
        problems: shown(problems),
        warnings: shown(warnings),
        articles,
        drafts,
    }
}

/// The configuration file, as messages name it.
fn config_file(config: &Config) -> String {
    config
        .source
        .as_ref()
        .map_or_else(|| "bantin.toml".to_string(), |p| p.display().to_string())
}

/// A category as it reads once case, diacritics and spaces are left aside: two spellings
/// with the same form are most likely one category written two ways.
pub(crate) fn category_form(category: &str) -> String {
    crate::search::fold_text(category)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `base_url` points at this machine only (then anything goes: a trial run).
fn is_loopback(base_url: &str) -> bool {
    let rest = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest);
    let host_port = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A domain that mail from the Internet cannot reach or check.
fn is_private_domain(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost"
        || [".localhost", ".invalid", ".local"]
            .iter()
            .any(|s| d.ends_with(s))
        || d == "invalid"
        || d == "local"
}

/// What cannot work, or should not be, once the site is public (`site.base_url` not on
/// this machine): errors, then warnings. Each says how to fix it.
fn public(config: &Config) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let base = config.base_url();
    if is_loopback(base) {
        return (errors, warnings);
    }
    let file = config_file(config);
    let mail = &config.mail;
    if mail.transport == "file" {
        errors.push(format!(
            "{file}: mail.transport is \"file\": mail is only written to '{}', nobody gets it; \
             set mail.transport = \"smtp\" and [mail.smtp] to the relay (or \"sendmail\")",
            mail.dir.display()
        ));
    }
    let from_domain = mail
        .from
        .parse::<lettre::message::Mailbox>()
        .ok()
        .map(|m| m.email.domain().to_ascii_lowercase());
    match &from_domain {
        Some(d) if is_private_domain(d) => errors.push(format!(
            "{file}: mail.from '{}' is at '{d}', which no one can reply to or check; \
             use an address of the council's own domain (e.g. bantin@hdnd.example.vn)",
            mail.from
        )),
        _ => {}
    }
    for key in &mail.dkim {
        let domain = key.domain.to_ascii_lowercase();
        if is_private_domain(&domain) {
            errors.push(format!(
                "{file}: mail.dkim.domain '{}' cannot be looked up on the Internet; \
                 sign with the domain of mail.from",
                key.domain
            ));
        } else if let Some(from) = &from_domain
            && domain != *from
            && !from.ends_with(&format!(".{domain}"))
        {
            errors.push(format!(
                "{file}: mail.dkim.domain '{}' is not the domain of mail.from ('{from}'): \
                 receivers do not count such a signature (DMARC); sign with d={from}",
                key.domain
            ));
        }
    }
    if mail.transport == "smtp" && mail.smtp.username.is_some() && mail.smtp.tls == "none" {
        errors.push(format!(
            "{file}: mail.smtp.username is set with mail.smtp.tls = \"none\": the password \
             would cross the network in clear; set tls = \"starttls\" (port 587) or \
             \"tls\" (port 465)"
        ));
    }
    if base.starts_with("http://") {
        warnings.push(format!(
            "{file}: site.base_url '{base}' is http://: links in mail and feeds can be read \
             and changed on the way; serve the site over https and set an https:// base_url"
        ));
    }
    if mail.transport != "file" && mail.dkim.is_empty() {
        warnings.push(format!(
            "{file}: no [mail.dkim] key: many receivers file unsigned bulk mail as spam; \
             add an RSA key (and publish its public half in DNS)"
        ));
    }
    (errors, warnings)
}

/// Problems, how many articles were read, the drafts, and warnings about the articles.
type Found = (Vec<String>, usize, Vec<String>, Vec<String>);

fn problems(config: &Config, progress: &AtomicUsize) -> Found {
    let mut problems = Vec::new();
    let tz = match config.timezone() {
        Ok(tz) => tz,
        Err(e) => return (vec![e], 0, Vec::new(), Vec::new()),
    };
    let (feeds, feed_source) = match crate::publish::load_feed_defs(&config.feeds.dir) {
        Ok((defs, errors)) => {
            problems.extend(errors.iter().map(ToString::to_string));
            (defs, true)
        }
        Err(e) => {
            problems.push(format!(
                "{}: không đọc được thư mục khai báo nguồn tin (feeds.dir trong tệp cấu hình; \
                 gói Debian cài chúng vào /usr/share/bantin/feeds): {e}",
                config.feeds.dir.display()
            ));
            (Vec::new(), false)
        }
    };
    if feed_source && feeds.is_empty() && problems.is_empty() {
        problems.push(format!(
            "{}: chưa có tệp khai báo nguồn tin nào; hãy thêm ít nhất một tệp \"*.toml\"",
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
    let files = match reader.walk_with_twins() {
        Ok((f, twins)) => {
            for (keep, drop) in twins {
                problems.push(format!(
                    "{}:1: \"{drop}\" và \"{keep}\" là cùng một tên nhưng gõ dấu theo hai cách \
                     (NFC và NFD); chỉ \"{keep}\" được đăng: hãy đổi tên hoặc xóa một tệp",
                    config.store.dir.join(&drop).display()
                ));
            }
            f
        }
        Err(e) => {
            problems.push(format!(
                "{}: không đọc được thư mục bài viết: {e}",
                config.store.dir.display()
            ));
            return (problems, 0, Vec::new(), Vec::new());
        }
    };
    let drafts = reader.walk_drafts().unwrap_or_default();
    let read = files.len() + drafts.len();
    // A correction, an event's time or place written as a paragraph (after a blank line) is
    // text only: nobody is told of the correction, the article is no event.
    let body_markers = std::sync::Mutex::new(Vec::new());
    let (entries, errors) = reader.read_all(&files, |found, article| {
        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Only a marker the header lacks: one given under the date line already did its
        // work, and the same words further down are text (an earlier correction kept, say).
        for (marker, lost, given) in [
            (
                crate::article::CORRECTION_MARKER,
                "nên không ai được báo về việc đính chính; muốn gửi thư báo đính chính cho mọi \
                 người đã nhận bài này",
                article.correction.is_some(),
            ),
            (
                crate::article::EVENT_MARKER,
                "nên bài không thành sự kiện (không có lịch, không nhắc giờ trong thư); muốn \
                 đăng sự kiện",
                article.event.is_some(),
            ),
            (
                crate::article::PLACE_MARKER,
                "nên địa điểm không được ghi cho sự kiện; muốn ghi địa điểm",
                article.place.is_some(),
            ),
        ] {
            let is_marker = |l: &str| crate::article::starts_with_marker(l, marker);
            if given || !article.paragraphs.iter().any(|p| is_marker(p)) {
                continue;
            }
            // Its line in the body, for the editor (the file was just read; a warning is
            // rare): after the first blank line below the date line.
            let line = std::fs::read_to_string(&found.path)
                .ok()
                .and_then(|text| {
                    let lines: Vec<&str> = text.lines().collect();
                    let date = lines
                        .iter()
                        .position(|l| l.trim_start().starts_with(crate::article::DATE_MARKER))?;
                    let blank = date + lines[date..].iter().position(|l| l.trim().is_empty())?;
                    (blank..lines.len())
                        .find(|&n| is_marker(lines[n]))
                        .map(|n| format!(":{}", n + 1))
                })
                .unwrap_or_default();
            body_markers.lock().expect("warnings").push(format!(
                "{}{line}: có đoạn văn bắt đầu bằng \"{marker}:\" nhưng nằm trong phần nội \
                 dung, {lost}, hãy đặt dòng đó ngay dưới dòng \"Ngày đăng\", không để dòng \
                 trống ở giữa",
                found.path.display()
            ));
        }
    });
    let mut body_markers = body_markers.into_inner().expect("warnings");
    body_markers.sort();
    for e in &errors {
        problems.push(e.to_string());
        problems.extend(more_problems(e, tz).iter().map(ToString::to_string));
    }
    // Drafts are held to the same rules, so a draft made public later is already right.
    // One dated too long ago to be news is published without a mail when renamed: said
    // now, while the date can still be put right.
    let max_age_days = config.mail.alert_max_age_days;
    let too_old = chrono::Utc::now() - chrono::Duration::days(max_age_days as i64);
    let old_drafts = std::sync::Mutex::new(Vec::new());
    let (_, draft_errors) = reader.read_all(&drafts, |found, article| {
        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if article.published < too_old {
            old_drafts.lock().expect("warnings").push(format!(
                "{}: bản nháp đề ngày {}, đã quá {max_age_days} ngày: khi bỏ dấu \"_\" để đăng, \
                 bài lên trang nhưng không được gửi thư cho người đăng ký \
                 (mail.alert_max_age_days); muốn gửi thư thì sửa dòng \"Ngày đăng\" thành \
                 ngày đăng thật",
                found.path.display(),
                crate::site::local_time(&article.published)
            ));
        }
    });
    let mut old_drafts = old_drafts.into_inner().expect("warnings");
    old_drafts.sort();
    body_markers.extend(old_drafts);
    for e in &draft_errors {
        problems.push(e.to_string());
        problems.extend(more_problems(e, tz).iter().map(ToString::to_string));
    }
    let drafts: Vec<String> = drafts
        .iter()
        .map(|d| config.store.dir.join(&d.file).display().to_string())
        .collect();
    let library = Library::from_entries(entries);
    let named: std::collections::HashSet<&str> = feeds
        .iter()
        .flat_map(|f| f.categories.iter().map(String::as_str))
        .collect();
    body_markers.extend(look_alikes(config, &library, &named));
    let mut unread = Vec::new();
    not_articles(&config.store.dir, &mut unread);
    unread.sort();
    body_markers.extend(unread.into_iter().map(|path| {
        format!(
            "{}: không được đăng: chỉ tệp có tên kết thúc bằng \".txt\" (chữ thường) là bài \
             viết; hãy lưu bài này thành tệp văn bản, tên kết thúc bằng .txt",
            path.display()
        )
    }));
    let unknown = unknown_categories(&feeds, &library);
    if library.is_empty() && !unknown.is_empty() {
        // A new installation: nothing to check the feeds' categories against yet.
        body_markers.push(format!(
            "{}: thư mục bài viết chưa có bài nào, nên chưa kiểm tra được các chuyên mục ghi \
             trong tệp khai báo nguồn tin; hãy chạy lại \"bantin check\" khi đã có những bài \
             viết đầu tiên",
            config.store.dir.display()
        ));
    }
    for (def, category) in unknown.into_iter().filter(|_| !library.is_empty()) {
        let path = config.feeds.dir.join(format!("{}.toml", def.name));
        let line = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| {
                text.find(category)
                    .map(|pos| crate::config::line_of(&text, pos))
            })
            .unwrap_or(1);
        // The same words written otherwise (case, marks, spaces): a slip to fix. Else
        // perhaps a category with no article yet (a new council's feeds): said, not an
        // error the clerk could only fix by writing an article.
        let categories = library.categories();
        let form = category_form(category);
        match categories.iter().find(|k| category_form(k) == form) {
            Some(known) => problems.push(format!(
                "{}:{line}: chuyên mục \"{category}\" viết khác tên chuyên mục đang có \
                 \"{known}\" (chữ hoa, dấu hay khoảng trắng); hãy ghi giống hệt",
                path.display(),
            )),
            None => body_markers.push(format!(
                "{}:{line}: chưa có bài viết nào thuộc chuyên mục \"{category}\": nguồn tin \
                 này trống cho đến bài đầu tiên của chuyên mục; nếu tên viết sai, hãy ghi \
                 giống hệt một chuyên mục đang có: {}",
                path.display(),
                categories.join(", ")
            )),
        }
    }
    if let Some(mut templates) = templates {
        let site = crate::feed::SiteInfo::new(
            &config.site.title,
            config.base_url(),
            &config.site.language,
        );
        templates.set_site(&site, &feeds);
        problems.extend(crate::publish::template_problems(&templates, &site));
    }
    (problems, read, drafts, body_markers)
}

/// The problems of a broken article after the one `error` names, when they can be told
/// apart (each wrong line under the date line): the clerk mends them in one go, not one
/// `check` at a time. At most five in all.
fn more_problems(error: &ArticleError, tz: chrono_tz::Tz) -> Vec<ArticleError> {
    let Ok(text) = std::fs::read_to_string(&error.path) else {
        return Vec::new();
    };
    let first = crate::article::LineError::new(error.line, error.message.clone());
    crate::article::more_problems(&text, &first, tz, 5)
        .into_iter()
        .map(|e| ArticleError::at(&error.path, e))
        .collect()
}

/// What is most likely a slip of the clerk, though each article is valid alone: categories
/// written two ways (each is its own category, and those who follow one miss the other),
/// an article saved twice (the copy is shown twice; it is not mailed again), a date far
/// ahead (a wrong year waits for it in silence).
fn look_alikes(
    config: &Config,
    library: &Library,
    named: &std::collections::HashSet<&str>,
) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut out = Vec::new();
    let path = |e: &crate::library::Entry| config.store.dir.join(&e.file).display().to_string();
    // Spelled alike once case, diacritics and spaces are left aside.
    let mut by_form: BTreeMap<String, BTreeMap<&str, Vec<String>>> = BTreeMap::new();
    for e in library.iter() {
        let form = category_form(&e.category);
        by_form
            .entry(form)
            .or_default()
            .entry(&e.category)
            .or_default()
            .push(path(e));
    }
    for spellings in by_form.values().filter(|s| s.len() > 1) {
        // The spelling a feed names is the one meant; else that of most articles.
        let (main, _) = spellings
            .iter()
            .max_by_key(|(name, files)| {
                (named.contains(*name), files.len(), std::cmp::Reverse(*name))
            })
            .expect("two or more");
        for (name, files) in spellings.iter().filter(|(name, _)| *name != main) {
            for file in files {
                out.push(format!(
                    "{file}:1: chuyên mục \"{name}\" gần giống chuyên mục \"{main}\" (chỉ khác \
                     chữ hoa, dấu hay khoảng trắng) nhưng là một chuyên mục khác: người theo dõi \
                     \"{main}\" không nhận được bài này; hãy ghi dòng đầu giống hệt \"{main}\""
                ));
            }
        }
    }
    let mut by_title: BTreeMap<(&str, i64), Vec<String>> = BTreeMap::new();
    for e in library.iter() {
        by_title
            .entry((e.title.trim(), e.published.timestamp()))
            .or_default()
            .push(path(e));
    }
    for files in by_title.values_mut().filter(|f| f.len() > 1) {
        // The shortest name is the original ("bai.txt" before "bai - Copy.txt").
        files.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
        for file in &files[1..] {
            out.push(format!(
                "{file}: cùng tiêu đề và ngày đăng với {}: nếu đây là bản sao, hãy xóa nó, vì \
                 mỗi tệp là một bài, hiện thêm một lần trên trang và trong các nguồn tin",
                files[0]
            ));
        }
    }
    let far = chrono::Utc::now() + chrono::Duration::days(FAR_AHEAD_DAYS);
    for e in library.iter().filter(|e| e.published > far) {
        out.push(format!(
            "{}: ngày đăng {} còn hơn {FAR_AHEAD_DAYS} ngày nữa: bài chỉ hiện ra vào ngày đó; \
             nếu gõ nhầm năm, hãy sửa dòng \"Ngày đăng\"",
            path(e),
            e.published.format("%d/%m/%Y %H:%M")
        ));
    }
    out.sort();
    out
}

/// An article dated further ahead than this is pointed out (a wrong year, most likely).
const FAR_AHEAD_DAYS: i64 = 60;

/// Files under `dir` that look meant as articles but are not read as such: `.TXT`, or a
/// word processor's document. Hidden files and folders, drafts and symlinks are left out.
fn not_articles(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    const DOCUMENTS: [&str; 6] = ["txt", "doc", "docx", "odt", "rtf", "pdf"];
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in read.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(['.', '_']) {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            not_articles(&entry.path(), out);
        } else if kind.is_file()
            && !name.ends_with(".txt")
            && name
                .rsplit_once('.')
                .is_some_and(|(_, ext)| DOCUMENTS.iter().any(|d| ext.eq_ignore_ascii_case(d)))
        {
            out.push(entry.path());
        }
    }
}

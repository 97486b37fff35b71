//! Reading the article store from disk: walking it, and reading articles in parallel.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use chrono::TimeZone;
use chrono_tz::Tz;
use rayon::prelude::*;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::article::{self, Article, ArticleError, LineError, parse_bytes};
use crate::library::{Entry, Stamp};

/// Two files that are one name: (the one published, the one left out).
pub type Twin = (String, String);

/// The longest file name a page can have (NAME_MAX, less `.html`).
const MAX_NAME_BYTES: usize = 255 - 5;

/// What is wrong with the name of an article file (relative to the store) for the site.
fn name_problem(file: &str) -> Option<String> {
    if file.contains('\\') {
        return Some(
            "tên tệp có dấu \"\\\": không dùng được trong địa chỉ web; hãy đổi tên tệp".into(),
        );
    }
    let longest = file.split('/').map(str::len).max().unwrap_or(0);
    if longest > MAX_NAME_BYTES {
        return Some(format!(
            "tên tệp (hoặc tên thư mục) dài {longest} byte, quá dài để làm tên trang web \
             (tối đa {MAX_NAME_BYTES} byte; mỗi chữ có dấu chiếm 2 hoặc 3 byte): \
             hãy đặt tên ngắn hơn"
        ));
    }
    None
}

/// Of files whose ids are equal (one name typed in NFC and in NFD), keeps the one written in
/// NFC (else the first by name) and names the others: (kept files, (kept, left out) pairs).
fn keep_one_of_each_twin(found: Vec<Found>) -> (Vec<Found>, Vec<Twin>) {
    use std::collections::hash_map::Entry as Slot;
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut kept: Vec<Found> = Vec::with_capacity(found.len());
    let mut twins = Vec::new();
    for f in found {
        let is_nfc = |f: &Found| f.file.strip_suffix(".txt") == Some(f.id.as_str());
        match by_id.entry(f.id.clone()) {
            Slot::Vacant(slot) => {
                slot.insert(kept.len());
                kept.push(f);
            }
            Slot::Occupied(slot) => {
                let old = &mut kept[*slot.get()];
                if is_nfc(&f) && !is_nfc(old) {
                    twins.push((f.file.clone(), old.file.clone()));
                    *old = f;
                } else {
                    twins.push((old.file.clone(), f.file.clone()));
                }
            }
        }
    }
    for (keep, drop) in &twins {
        tracing::warn!(
            "'{keep}' and '{drop}' are one name written two ways (NFC and NFD): only \
             '{keep}' is published; rename or remove one"
        );
    }
    (kept, twins)
}

/// Bounds of a believable file modification time (unix seconds): 1970 to the end of 2100.
const MIN_MTIME_SECS: i64 = 0;
const MAX_MTIME_SECS: i64 = 4_133_980_799;

/// One article file found in the store.
#[derive(Debug, Clone)]
pub struct Found {
    /// Path relative to the store, `/`-separated.
    pub file: String,
    pub path: PathBuf,
    pub id: String,
    pub stamp: Stamp,
}

/// Where and how to read the store.
#[derive(Debug, Clone)]
pub struct StoreReader {
    pub root: PathBuf,
    pub tz: Tz,
    pub max_bytes: u64,
}

impl StoreReader {
    /// Every article file under the store (recursively), sorted by path. Hidden entries,
    /// editor leftovers, non-`.txt` files, symlinks that leave the store and drafts are
    /// skipped.
    pub fn walk(&self) -> std::io::Result<Vec<Found>> {
        self.walk_kind(false)
    }

    /// Links in the store that lead outside it (to files or folders): never followed,
    /// watched or published; `check` names them. Paths relative to the store.
    pub fn links_leaving(&self) -> Vec<(String, PathBuf)> {
        let Ok(root) = self.root.canonicalize() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel_dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(root.join(&rel_dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let rel = rel_dir.join(entry.file_name());
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(rel);
                } else if kind.is_symlink() {
                    match root.join(&rel).canonicalize() {
                        Ok(target) if target.starts_with(&root) => {}
                        Ok(target) => out.push((rel_string(&rel), target)),
                        Err(_) => {}
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Every draft of the store (a file or folder named `_…`), for `check`.
    pub fn walk_drafts(&self) -> std::io::Result<Vec<Found>> {
        self.walk_kind(true)
    }

    fn walk_kind(&self, drafts: bool) -> std::io::Result<Vec<Found>> {
        let mut found = self.walk_kind_all(drafts)?;
        found.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(keep_one_of_each_twin(found).0)
    }

    fn walk_kind_all(&self, drafts: bool) -> std::io::Result<Vec<Found>> {
        let root = self.root.canonicalize()?;
        let mut files = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel_dir) = stack.pop() {
            let entries = match std::fs::read_dir(root.join(&rel_dir)) {
                Ok(entries) => entries,
                Err(e) if rel_dir.as_os_str().is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(folder = %rel_dir.display(), "cannot read folder: {e}");
                    continue;
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name_str) = name.to_str() else {
                    continue;
                };
                if name_str.starts_with('.') {
                    continue;
                }
                let rel = rel_dir.join(&name);
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                if file_type.is_dir() {
                    stack.push(rel);
                } else {
                    files.push(rel);
                }
            }
        }
        // Looking at each file (a stat, and more for a link) is most of a walk's time: the
        // folders are listed in turn, their files looked at on every core.
        Ok(files
            .par_iter()
            .filter_map(|rel| self.found(&root, rel, drafts))
            .collect())
    }

    /// The store's articles, and the pairs of files that are one name written two ways
    /// (NFC and NFD): (kept, left out).
    pub fn walk_with_twins(&self) -> std::io::Result<(Vec<Found>, Vec<Twin>)> {
        let mut found = self.walk_kind_all(false)?;
        found.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(keep_one_of_each_twin(found))
    }

    /// The article at `rel` (relative to the canonical `root`), when it is one (a draft
    /// when `drafts`, else a published one).
    fn found(&self, root: &Path, rel: &Path, drafts: bool) -> Option<Found> {
        if article::is_draft(rel) != drafts {
            return None;
        }
        let id = article::id_for(rel)?;
        let path = root.join(rel);
        let link = std::fs::symlink_metadata(&path).ok()?;
        let meta = if link.file_type().is_symlink() {
            let target = path.canonicalize().ok()?;
            if !target.starts_with(root) {
                tracing::debug!(file = %rel.display(), "symlink leaves the store; ignored");
                return None;
            }
            std::fs::metadata(&target).ok()?
        } else {
            link
        };
        if !meta.is_file() {
            return None;
        }
        Some(Found {
            file: rel_string(rel),
            path,
            id,
            stamp: stamp_of(&meta),
        })
    }

    /// The article file at an absolute `path`, when it is one of the store's.
    pub fn found_at(&self, path: &Path) -> Option<Found> {
        let root = self.root.canonicalize().ok()?;
        let rel = path
            .strip_prefix(&root)
            .or_else(|_| path.strip_prefix(&self.root))
            .ok()?;
        if rel
            .components()
            .any(|c| c.as_os_str().to_str().is_none_or(|s| s.starts_with('.')))
        {
            return None;
        }
        // A folder of the path may be a link that leaves the store: the walk never enters
        // one, and an event from inside it must not publish what is there either.
        let folder = root.join(rel).parent()?.canonicalize().ok()?;
        if !folder.starts_with(&root) {
            tracing::debug!(file = %rel.display(), "inside a link that leaves the store; ignored");
            return None;
        }
        self.found(&root, rel, false)
    }

    /// Reads and parses one found file.
    pub fn read(&self, found: &Found) -> Result<Article, ArticleError> {
        if let Some(problem) = name_problem(&found.file) {
            return Err(ArticleError::at(&found.path, LineError::new(1, problem)));
        }
        from_file(&found.path, &found.id, self.tz, self.max_bytes)
    }

    /// Where the article of `entry` is read from again.
    pub fn found_of(&self, entry: &Entry) -> Found {
        Found {
            file: entry.file.clone(),
            path: self.root.join(&entry.file),
            id: entry.id.to_string(),
            stamp: entry.stamp,
        }
    }

    /// The body of `entry`: from `cache` when it holds this version, else read again (and
    /// not kept: the caller decides what stays in memory).
    pub fn body(&self, cache: &ArticleCache, entry: &Entry) -> Result<Arc<Article>, ArticleError> {
        match cache.get(&entry.id, entry.stamp) {
            Some(a) => Ok(a),
            None => self.read(&self.found_of(entry)).map(Arc::new),
        }
    }

    /// The library entry for a parsed article.
    pub fn entry(&self, found: &Found, article: &Article) -> Entry {
        // A modification time no clock could have set (year 10000, 1970 on a broken RTC
        // is fine) is held within the years articles may be dated in.
        let secs = found
            .stamp
            .mtime_ns
            .div_euclid(1_000_000_000)
            .clamp(MIN_MTIME_SECS, MAX_MTIME_SECS);
        let modified = self
            .tz
            .timestamp_opt(secs, 0)
            .single()
            .map_or(article.published, |t| t.fixed_offset());
        Entry::new(article, found.file.clone(), found.stamp, modified)
    }

    /// Reads many files on every core; `each` is given every good article (in any order,
    /// from any thread) to keep or drop. Returns the entries and the errors, each sorted by path.
    pub fn read_all<F>(&self, files: &[Found], each: F) -> (Vec<Arc<Entry>>, Vec<ArticleError>)
    where
        F: Fn(&Found, Article) + Sync,
    {
        // Straight into the two lists, in the files' order.
        files
            .par_iter()
            .partition_map(|found| match self.read(found) {
                Ok(article) => {
                    let entry = self.entry(found, &article);
                    each(found, article);
                    rayon::iter::Either::Left(Arc::new(entry))
                }
                Err(e) => rayon::iter::Either::Right(e),
            })
    }
}

/// A relative path as a `/`-separated string.
pub fn rel_string(rel: &Path) -> String {
    rel.components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect::<Vec<_>>()
        .join("/")
}

/// A file's size and modification time.
pub fn stamp_of(meta: &std::fs::Metadata) -> Stamp {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    Stamp {
        len: meta.len(),
        mtime_ns,
    }
}

/// Reads one file of the store and parses it.
pub fn from_file(path: &Path, id: &str, tz: Tz, max_bytes: u64) -> Result<Article, ArticleError> {
    let bytes = read_limited(path, max_bytes).map_err(|e| ArticleError::at(path, e))?;
    parse_bytes(id, &bytes, tz).map_err(|e| ArticleError::at(path, e))
}

/// Reads a file, refusing one over `max_bytes`.
pub fn read_limited(path: &Path, max_bytes: u64) -> Result<Vec<u8>, LineError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let not_a_file = || {
        LineError::new(
            1,
            "đây không phải tệp thông thường (mà là thư mục, ống dẫn hay thiết bị): \
             mỗi bài viết phải là một tệp văn bản .txt",
        )
    };
    // A pipe or a device must never block the daemon: opened without blocking, and looked
    // at before anything is read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| LineError::new(1, format!("không đọc được tệp: {e}")))?;
    let size = match file.metadata() {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return Err(not_a_file()),
    };
    let failed = |e: std::io::Error| LineError::new(1, format!("không đọc được tệp: {e}"));
    // Room for the whole file and one byte more. A regular file gives a short read only at
    // its end: one read that stops at the size just seen is the whole file, with no second
    // read to find the end. Anything else (it grew, it shrank) is read on to the end.
    let room = size.min(max_bytes) as usize + 1;
    let mut bytes = vec![0; room];
    let n = loop {
        match (&file).read(&mut bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.map_err(failed)?,
        }
    };
    bytes.truncate(n);
    if n as u64 != size || n == room {
        (&file)
            .take(max_bytes + 1 - n as u64)
            .read_to_end(&mut bytes)
            .map_err(failed)?;
    }
    if bytes.len() as u64 > max_bytes {
        return Err(LineError::new(
            1,
            format!(
                "tệp lớn hơn giới hạn {} (store.max_bytes); bài viết chỉ gồm phần chữ: \
                 hãy bỏ hình ảnh và tệp đính kèm ra khỏi tệp",
                human_size(max_bytes)
            ),
        ));
    }
    Ok(bytes)
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 && bytes % (1024 * 1024) == 0 {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} byte")
    }
}

/// Bodies of articles, shared by publishing and mail: a feed render and a fan-out of alerts
/// read each file once. Publishing keeps it to what the feeds list ([`ArticleCache::retain`]);
/// above [`ARTICLE_CACHE_MAX`] the least recently used go first.
#[derive(Debug, Default)]
pub struct ArticleCache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    /// Body by id, with the stamp it was read at and when it was last used.
    bodies: HashMap<String, (Stamp, Arc<Article>, u64)>,
    /// A counter that orders uses.
    uses: u64,
}

/// Bodies kept at most, whatever the feeds list (a flood of new articles must not pile up).
pub const ARTICLE_CACHE_MAX: usize = 4096;

impl ArticleCache {
    /// The body of `id` if it was read at `stamp`.
    pub fn get(&self, id: &str, stamp: Stamp) -> Option<Arc<Article>> {
        let mut inner = self.inner.lock().expect("article cache");
        inner.uses += 1;
        let uses = inner.uses;
        match inner.bodies.get_mut(id) {
            Some((s, a, used)) if *s == stamp => {
                *used = uses;
                Some(a.clone())
            }
            _ => None,
        }
    }

    /// The body of `id` as last read, whatever its stamp, with that stamp.
    pub fn get_any(&self, id: &str) -> Option<(Stamp, Arc<Article>)> {
        let mut inner = self.inner.lock().expect("article cache");
        inner.uses += 1;
        let uses = inner.uses;
        inner.bodies.get_mut(id).map(|(stamp, a, used)| {
            *used = uses;
            (*stamp, a.clone())
        })
    }

    pub fn insert(&self, stamp: Stamp, article: Arc<Article>) {
        let mut inner = self.inner.lock().expect("article cache");
        inner.uses += 1;
        let uses = inner.uses;
        inner
            .bodies
            .insert(article.id.clone(), (stamp, article, uses));
        if inner.bodies.len() > ARTICLE_CACHE_MAX {
            // Drop the least recently used quarter at once, so this runs rarely.
            let mut used: Vec<u64> = inner.bodies.values().map(|(_, _, u)| *u).collect();
            let cut = used.len() / 4;
            let (_, nth, _) = used.select_nth_unstable(cut);
            let nth = *nth;
            inner.bodies.retain(|_, (_, _, u)| *u > nth);
        }
    }

    /// Forgets a body (the file changed or went).
    pub fn remove(&self, id: &str) {
        self.inner.lock().expect("article cache").bodies.remove(id);
    }

    /// Keeps only the bodies of `keep`.
    pub fn retain(&self, keep: &HashSet<&str>) {
        self.inner
            .lock()
            .expect("article cache")
            .bodies
            .retain(|id, _| keep.contains(id.as_str()));
    }

    pub fn clear(&self) {
        self.inner.lock().expect("article cache").bodies.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_whole_up_to_the_limit_and_refused_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let text = "Kỳ họp thứ nhất.\n".repeat(100);
        let limit = text.len() as u64;
        assert_eq!(
            read_limited(&file("a.txt", text.as_bytes()), limit).unwrap(),
            text.as_bytes()
        );
        assert!(
            read_limited(&file("rong.txt", b""), limit)
                .unwrap()
                .is_empty()
        );
        let over = format!("{text}x");
        let e = read_limited(&file("lon.txt", over.as_bytes()), limit).unwrap_err();
        assert!(e.to_string().contains("store.max_bytes"), "{e}");
        // Far over the limit: refused from the first read, nothing more read.
        let huge = text.repeat(50);
        assert!(read_limited(&file("rat-lon.txt", huge.as_bytes()), limit).is_err());
        assert!(read_limited(dir.path(), limit).is_err());
    }
}

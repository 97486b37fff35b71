//! What the site in `output.dir` was rendered from: for each article page and list document,
//! a fingerprint of everything it shows (the article's file, its neighbours, the templates,
//! the site's settings). A build skips what is unchanged without reading the article again
//! or rendering it; a daemon that restarts publishes a large store in a fraction of the time.
//!
//! The file is `output.dir/.manifest`. The daemon removes it before it first changes the site
//! and writes it again when it stops cleanly: after a crash there is none, and the next start
//! compares every page as before. A page whose file is gone is written again whatever the
//! manifest says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::library::Fnv;

pub const FILE: &str = ".manifest";
const HEADER: &str = "bantin-manifest 1";

/// The first line of a manifest made for `generation`.
fn header(generation: u64) -> String {
    format!("{HEADER} {generation:016x}")
}

/// Fingerprints by article id (pages) and by path (lists, archive documents).
#[derive(Debug, Default, Clone)]
pub struct Manifest {
    /// What everything depends on: templates, site settings, feed definitions.
    pub generation: u64,
    pub pages: HashMap<Arc<str>, u64>,
    pub docs: HashMap<String, u64>,
}

impl Manifest {
    pub fn path(out: &Path) -> PathBuf {
        out.join(FILE)
    }

    /// The manifest of `out` if it was made for `generation`; empty otherwise (missing,
    /// unreadable, another version, other templates).
    pub fn load(out: &Path, generation: u64) -> Manifest {
        let empty = Manifest {
            generation,
            ..Manifest::default()
        };
        let Ok(text) = std::fs::read_to_string(Self::path(out)) else {
            return empty;
        };
        let mut lines = text.lines();
        if lines.next() != Some(&header(generation)) {
            return empty;
        }
        let mut m = empty.clone();
        for line in lines {
            let mut parts = line.splitn(3, ' ');
            let (Some(kind), Some(print), Some(key)) = (parts.next(), parts.next(), parts.next())
            else {
                return empty;
            };
            let Ok(print) = u64::from_str_radix(print, 16) else {
                return empty;
            };
            match kind {
                "p" => m.pages.insert(key.into(), print),
                "d" => m.docs.insert(key.to_owned(), print),
                _ => return empty,
            };
        }
        m
    }

    /// Whether `out` holds a manifest made for `generation`: the output of a clean stop with
    /// the same templates, site settings and feeds (only the first line is read).
    pub fn matches(out: &Path, generation: u64) -> bool {
        use std::io::BufRead;
        let Ok(file) = std::fs::File::open(Self::path(out)) else {
            return false;
        };
        let mut first = String::new();
        std::io::BufReader::new(file).read_line(&mut first).is_ok()
            && first.trim_end() == header(generation)
    }

    /// Writes the manifest (atomically, private to nobody: it holds only what the site shows).
    pub fn save(&self, out: &Path) -> std::io::Result<()> {
        use std::fmt::Write;
        let mut text = String::with_capacity(40 * (self.pages.len() + self.docs.len()) + 64);
        let _ = writeln!(text, "{}", header(self.generation));
        let mut pages: Vec<_> = self.pages.iter().collect();
        pages.sort();
        for (id, print) in pages {
            let _ = writeln!(text, "p {print:016x} {id}");
        }
        let mut docs: Vec<_> = self.docs.iter().collect();
        docs.sort();
        for (path, print) in docs {
            let _ = writeln!(text, "d {print:016x} {path}");
        }
        crate::output::write_atomic(&Self::path(out), text.as_bytes()).map(|_| ())
    }

    /// Removes the file: the site is about to change.
    pub fn remove(out: &Path) {
        let _ = std::fs::remove_file(Self::path(out));
    }
}

/// The fingerprint of an article page: its file, what lists show of it, its neighbours.
pub fn page_print(
    generation: u64,
    entry: &crate::library::Entry,
    nav: &crate::site::ArticleNav,
) -> u64 {
    let mut h = Fnv(generation);
    h.number(entry.sig);
    h.number(entry.stamp.len);
    h.number(entry.stamp.mtime_ns as u64);
    // Where the high half of an i128 time went, always 0 since (the times are never
    // negative): kept so that fingerprints made before stay the same.
    h.number(0);
    h.bytes(nav.category_url.as_bytes());
    for n in [&nav.older, &nav.newer] {
        match n {
            Some(n) => {
                h.bytes(n.url.as_bytes());
                h.bytes(&[0xff]);
                h.bytes(n.title.as_bytes());
            }
            None => h.number(0),
        }
    }
    h.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_and_another_generation_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest {
            generation: 7,
            ..Manifest::default()
        };
        m.pages.insert("2024/01/bai có dấu".into(), 42);
        m.docs.insert("categories/thong-bao.html".into(), 9);
        m.save(dir.path()).unwrap();
        let back = Manifest::load(dir.path(), 7);
        assert_eq!(back.pages.get("2024/01/bai có dấu"), Some(&42));
        assert_eq!(back.docs.get("categories/thong-bao.html"), Some(&9));
        assert!(Manifest::load(dir.path(), 8).pages.is_empty());
        std::fs::write(
            Manifest::path(dir.path()),
            "bantin-manifest 1 0000000000000007\nx",
        )
        .unwrap();
        assert!(Manifest::load(dir.path(), 7).pages.is_empty());
        Manifest::remove(dir.path());
        assert!(Manifest::load(dir.path(), 7).pages.is_empty());
    }
}

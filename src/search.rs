//! Search the way Vietnamese is typed: with or without diacritics.
//!
//! Every word is indexed by its folded form (lowercase, no diacritics, `đ` → `d`), so `ky
//! hop` finds `kỳ họp`. Each occurrence keeps its position and which spelling it had, so a
//! query typed with diacritics ranks the articles that spell it so first, and words next to
//! each other in the query rank the articles where they stand together first.
//!
//! The index is a small inverted index of its own: one compact list per folded word of the
//! articles it occurs in and where (variable-length integers, deltas), appended to as
//! articles come, so it follows the store without a rebuild. An edited or removed article's
//! entries are marked dead; when dead ones make up a fifth of the index it is built again.
//! A general search library would bring its own storage, tokenizers and threads for what is
//! here one word list per article and a few hundred lines.
//!
//! The lists need not stay in memory: an index made with [`Index::in_folder`] writes them to
//! a file of its own (without a name, gone with the index) each time a few megabytes have
//! gathered, and reads a word's pieces back when it is asked for. Memory then holds the
//! words and the list of articles; the kernel's page cache keeps the lists that are asked
//! for often, without counting against the daemon.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;
use rayon::prelude::*;

use crate::article::Article;
use crate::library::Entry;

/// Results on a page.
pub const PER_PAGE: usize = 10;
/// Words of a query that count; the rest are ignored.
pub const MAX_QUERY_WORDS: usize = 8;
/// Characters of a query that count.
pub const MAX_QUERY_CHARS: usize = 200;
/// Spellings of one folded word told apart besides the folded one itself (code 0); more
/// share the last code.
const VARIANTS: usize = 6;
const OTHER_VARIANT: u8 = VARIANTS as u8 + 1;
/// No piece (of `Term::first_run`, `Run::next`).
const NONE: u32 = u32::MAX;

/// A character without its diacritics, lowercase (`Ộ` → `o`, `Đ` → `d`).
pub fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let mut base = c;
    unicode_normalization::char::decompose_canonical(c, |d| {
        if base == c {
            base = d;
        }
    });
    match base {
        'đ' | 'Đ' => 'd',
        b => b.to_lowercase().next().unwrap_or(b),
    }
}

/// `text` lowercase without diacritics.
pub fn fold_text(text: &str) -> String {
    text.chars().map(fold_char).collect()
}

/// Syllable onsets after which a final `y` is also written `i`.
const I_OR_Y_AFTER: &[&str] = &[
    "b", "c", "ch", "d", "g", "gh", "h", "k", "kh", "l", "m", "n", "nh", "p", "ph", "qu", "r", "s",
    "t", "th", "tr", "v", "x",
];

/// A word's folded form, by which it is indexed and searched: [`fold_text`], with a final `y`
/// after a consonant written `i`, as both spellings are taught and used (`kỳ`/`kì`,
/// `quý`/`quí`, `lý`/`lí`, `mỹ`/`mĩ`). `y` alone and after a vowel (`huy`, `tay`) stays.
pub fn fold_word(word: &str) -> String {
    let mut folded = fold_text(word);
    if folded
        .strip_suffix('y')
        .is_some_and(|onset| I_OR_Y_AFTER.contains(&onset))
    {
        folded.pop();
        folded.push('i');
    }
    folded
}

/// The words of `text`: runs of letters and digits, with their byte ranges.
pub fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(move |w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
}

/// Names councils write both in full and abbreviated, folded: the abbreviation and the
/// words it stands for.
const ABBREVIATIONS: &[(&str, &[&str])] = &[
    ("hdnd", &["hoi", "dong", "nhan", "dan"]),
    ("ubnd", &["uy", "ban", "nhan", "dan"]),
    ("mttq", &["mat", "tran", "to", "quoc"]),
    ("dbqh", &["dai", "bieu", "quoc", "hoi"]),
    ("tdp", &["to", "dan", "pho"]),
];

/// The query (`exact`, `folded` as [`Index::search`] makes them) with each name of
/// [`ABBREVIATIONS`] written the other way: abbreviations in full, names in full
/// abbreviated, and where in it a name was written in full (its words must then stand
/// together: `hội`, `đồng`, `nhân` and `dân` apart are no HĐND). `None` when it names none.
/// Words written the other way ask for no spelling.
fn other_spelling(exact: &[String], folded: &[String]) -> Option<OtherSpelling> {
    let mut alt_exact = Vec::new();
    let mut alt_folded = Vec::new();
    let mut phrases = Vec::new();
    let mut changed = false;
    let mut i = 0;
    while i < folded.len() {
        let short = ABBREVIATIONS.iter().find(|(short, _)| folded[i] == *short);
        let long = ABBREVIATIONS.iter().find(|(_, long)| {
            folded[i..].len() >= long.len() && folded[i..i + long.len()].iter().eq(long.iter())
        });
        if let Some((_, long)) = short {
            phrases.push(alt_folded.len()..alt_folded.len() + long.len());
            alt_exact.extend(long.iter().map(|w| w.to_string()));
            alt_folded.extend(long.iter().map(|w| w.to_string()));
            i += 1;
        } else if let Some((short, long)) = long {
            alt_exact.push(short.to_string());
            alt_folded.push(short.to_string());
            i += long.len();
        } else {
            alt_exact.push(exact[i].clone());
            alt_folded.push(folded[i].clone());
            i += 1;
            continue;
        }
        changed = true;
    }
    alt_exact.truncate(MAX_QUERY_WORDS);
    alt_folded.truncate(MAX_QUERY_WORDS);
    phrases.retain(|p| p.end <= MAX_QUERY_WORDS);
    changed.then_some(OtherSpelling {
        exact: alt_exact,
        folded: alt_folded,
        phrases,
    })
}

/// A query with its names written the other way ([`other_spelling`]).
#[derive(Debug, PartialEq, Eq)]
struct OtherSpelling {
    exact: Vec<String>,
    folded: Vec<String>,
    /// Where an abbreviation was written in full: those words must stand together.
    phrases: Vec<std::ops::Range<usize>>,
}

/// The query's words (lowercase) read as Vietnamese typed without an input method, folded:
/// VNI's digits after letters dropped (`ky2` → `ky`), Telex's tone letter at the end dropped
/// (`hopj` → `hop`: no Vietnamese word ends in f, s, r, x or j) and its doubled or w-marked
/// vowels made plain (`ddoongf` → `dong`, `truwowngf` → `truong`). Words typed with marks
/// stay as they are. `None` when that changes nothing.
fn untyped(exact: &[String]) -> Option<Vec<String>> {
    let is_vowel = |b: u8| matches!(b, b'a' | b'e' | b'i' | b'o' | b'u' | b'y' | b'w');
    let mut changed = false;
    let words = exact
        .iter()
        .map(|w| {
            if !w.is_ascii() {
                return fold_word(w);
            }
            let mut plain = w.clone();
            if plain.bytes().any(|b| b.is_ascii_alphabetic()) {
                plain.retain(|c| !c.is_ascii_digit());
            }
            if let Some((&last, rest)) = plain.as_bytes().split_last()
                && matches!(last, b'f' | b's' | b'r' | b'x' | b'j' | b'z')
                && rest.iter().copied().any(is_vowel)
            {
                plain.pop();
            }
            for (typed, letter) in [
                ("dd", "d"),
                ("aa", "a"),
                ("aw", "a"),
                ("ee", "e"),
                ("oo", "o"),
                ("ow", "o"),
                ("uw", "u"),
                ("w", "u"),
            ] {
                plain = plain.replace(typed, letter);
            }
            let plain = fold_word(&plain);
            changed |= plain != fold_word(w);
            plain
        })
        .filter(|w| !w.is_empty())
        .collect();
    changed.then_some(words)
}

/// A word's lowercase spelling and its folded form.
fn forms(word: &str) -> (String, String) {
    (word.to_lowercase(), fold_word(word))
}

/// Bytes of lists gathered in memory before they are written to the index's file.
const SPILL_BYTES: usize = 4 << 20;

/// One folded word's occurrences. Kept small, without allocations of its own for a word
/// seen in one spelling: most words of a large store (numbers, names) are rare.
#[derive(Debug)]
struct Term {
    /// For each document (increasing): doc delta, count, then per occurrence
    /// `(position delta << 3) | variant`, each as a variable-length integer. The first
    /// delta is the document number itself.
    postings: Vec<u8>,
    /// Spellings seen (lowercase) other than the folded word, space-separated: variant
    /// code `1 + i` is the `i`-th; code 0 is the folded word itself.
    variants: Box<str>,
    /// The folded word: `start, len` in `Index::words`.
    word: (u32, u32),
    last_doc: u32,
    /// The earlier pieces of its list, in the index's file: first and last in
    /// `Index::runs`, linked in order by `Run::next`; `NONE` if none.
    first_run: u32,
    last_run: u32,
}

impl Term {
    /// Its folded word, kept in `words` (the index's).
    fn word<'a>(&self, words: &'a str) -> &'a str {
        let (start, len) = self.word;
        &words[start as usize..(start + len) as usize]
    }

    /// Its variant code for the spelling `lower` (a word, other than the folded one), or
    /// how many spellings it has seen. Runs for every word of every article indexed.
    #[inline]
    fn spelled(&self, lower: &str) -> Result<u8, u8> {
        let mut count = 0;
        for v in self.variants.split(' ').filter(|v| !v.is_empty()) {
            count += 1;
            if v == lower {
                return Ok(count);
            }
        }
        Err(count)
    }
}

/// A piece of a word's list in the index's file, encoded as `Term::postings` is.
#[derive(Debug, Clone, Copy)]
struct Run {
    offset: u64,
    len: u32,
    next: u32,
}

/// The index itself.
#[derive(Debug, Default)]
pub struct Index {
    /// The folded words, one after the other (see `Term::word`).
    words: String,
    /// Term numbers, found by their word's hash.
    vocabulary: HashTable<u32>,
    terms: Vec<Term>,
    runs: Vec<Run>,
    docs: Vec<Arc<Entry>>,
    /// Per document: where its title ends (positions below are the title's) and its
    /// publication time, kept apart from the entries so ranking reads them in a row.
    meta: Vec<(u32, i64)>,
    live: Vec<bool>,
    /// Live document numbers, found by the hash of their article's id.
    by_id: HashTable<u32>,
    hasher: RandomState,
    dead: usize,
    /// Where the lists go once `pending` bytes of them have gathered in memory.
    spill: Option<Spill>,
    pending: usize,
    /// The terms with a list in memory (for the next write).
    gathered: Vec<u32>,
}

/// The file an index writes its lists to.
#[derive(Debug)]
struct Spill {
    file: File,
    /// The folder, for messages (the file has no name).
    dir: PathBuf,
    /// Bytes written so far: where the next piece goes.
    len: u64,
    /// Bytes gathered in memory before they are written.
    limit: usize,
    /// Bytes gathered at which the next write is tried: `limit`, or, after a failed write
    /// (a full disk), a `limit` more than at the failure (the lists stay in memory meanwhile).
    next_at: usize,
}

impl Spill {
    fn create(dir: &Path, limit: usize) -> io::Result<Spill> {
        Ok(Spill {
            file: unnamed_file(dir)?,
            dir: dir.to_owned(),
            len: 0,
            limit,
            next_at: limit,
        })
    }
}

/// A file in `dir` that no other process can open and that is gone once closed: Linux's
/// `O_TMPFILE`, or a name removed at once where the file system lacks it.
fn unnamed_file(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let unnamed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match unnamed {
        Ok(f) => Ok(f),
        Err(e)
            if e.raw_os_error() == Some(libc::EOPNOTSUPP)
                || e.raw_os_error() == Some(libc::EISDIR) =>
        {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!(".search-{}-{n}", std::process::id()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
        Err(e) => Err(e),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn get_varint(bytes: &[u8], at: &mut usize) -> u32 {
    // Nearly every number fits in one byte.
    let b = bytes[*at];
    if b < 0x80 {
        *at += 1;
        return u32::from(b);
    }
    let mut v = 0u32;
    let mut shift = 0;
    loop {
        let b = bytes[*at];
        *at += 1;
        v |= u32::from(b & 0x7f) << shift;
        if b < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// One word's occurrences in the live documents, decoded: documents in order, and for each
/// its occurrences (`position << 3 | variant`, in position order) in one flat list.
#[derive(Default)]
struct Decoded {
    docs: Vec<u32>,
    /// `starts[i]..starts[i + 1]` are the occurrences of `docs[i]`.
    starts: Vec<u32>,
    occurrences: Vec<u32>,
}

impl Decoded {
    fn of(&self, i: usize) -> &[u32] {
        &self.occurrences[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

/// A page of results.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub total: usize,
    /// The page given (from 1): the one asked for, or with [`Index::search_or_last`] the
    /// last one when it asked past it.
    pub page: usize,
    /// The articles of the page, best first.
    pub hits: Vec<Arc<Entry>>,
    /// The query's words, folded, to highlight.
    pub words: Vec<String>,
    /// When the query as typed found nothing and read as Vietnamese typed without an input
    /// method (Telex `kyf hopj`, VNI `ky2 hop5`) found these: the words searched, folded.
    pub typed_as: Option<String>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.docs.len() - self.dead
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an article (replacing the one with its id).
    pub fn add(&mut self, entry: Arc<Entry>, article: &Article) {
        self.remove(&entry.id);
        let doc = self.docs.len() as u32;
        let mut occurrences: HashMap<u32, Vec<(u32, u8)>> = HashMap::new();
        let mut position = 0u32;
        let mut add_text = |index: &mut Index, text: &str, position: &mut u32| {
            for (_, word) in words(text) {
                let (lower, folded) = forms(word);
                let term = index.term_id(&folded);
                let variant = index.variant(term, &lower);
                occurrences
                    .entry(term)
                    .or_default()
                    .push((*position, variant));
                *position += 1;
            }
            // Words of different parts never make a phrase.
            *position += 1;
        };
        add_text(self, &article.title, &mut position);
        let title_len = position;
        // An event's place is found as its text is (the page shows it above the text).
        if let Some(place) = &entry.place {
            add_text(self, place, &mut position);
        }
        for p in &article.paragraphs {
            add_text(self, p, &mut position);
        }
        let mut terms: Vec<(u32, Vec<(u32, u8)>)> = occurrences.into_iter().collect();
        terms.sort_unstable_by_key(|(t, _)| *t);
        for (term, occ) in terms {
            let t = &mut self.terms[term as usize];
            let before = t.postings.len();
            if before == 0 && self.spill.is_some() {
                self.gathered.push(term);
            }
            let delta = if before == 0 { doc } else { doc - t.last_doc };
            put_varint(&mut t.postings, delta);
            put_varint(&mut t.postings, occ.len() as u32);
            let mut last = 0;
            for (pos, variant) in occ {
                put_varint(&mut t.postings, ((pos - last) << 3) | u32::from(variant));
                last = pos;
            }
            t.last_doc = doc;
            self.pending += t.postings.len() - before;
        }
        let hash = self.hasher.hash_one(&*entry.id);
        self.meta.push((title_len, entry.published.timestamp()));
        self.live.push(true);
        self.docs.push(entry);
        let (docs, hasher) = (&self.docs, &self.hasher);
        self.by_id
            .insert_unique(hash, doc, |&d| hasher.hash_one(&*docs[d as usize].id));
        if self
            .spill
            .as_ref()
            .is_some_and(|s| self.pending >= s.next_at)
        {
            self.write_out();
        }
    }

    /// An index that writes its lists to an unnamed file in `dir` (see the module's note).
    pub fn in_folder(dir: &Path) -> io::Result<Index> {
        Index::spilling_at(dir, SPILL_BYTES)
    }

    fn spilling_at(dir: &Path, limit: usize) -> io::Result<Index> {
        Ok(Index {
            spill: Some(Spill::create(dir, limit)?),
            ..Index::default()
        })
    }

    /// Writes the lists gathered in memory to the file, one piece per word, one after the
    /// other at its end. A failed write (a full disk) leaves them in memory and is tried again
    /// once as much more has gathered.
    fn write_out(&mut self) {
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        let start = spill.len;
        let written = (|| -> io::Result<()> {
            // Positioned writes, in pieces of a quarter megabyte: a failed batch leaves
            // nothing that a later one depends on.
            let mut buffer = Vec::with_capacity(1 << 18);
            let mut at = start;
            for &term in &self.gathered {
                buffer.extend_from_slice(&self.terms[term as usize].postings);
                if buffer.len() >= 1 << 18 {
                    spill.file.write_all_at(&buffer, at)?;
                    at += buffer.len() as u64;
                    buffer.clear();
                }
            }
            spill.file.write_all_at(&buffer, at)
        })();
        if let Err(e) = written {
            tracing::warn!(
                "the search index keeps its lists in memory for now: cannot write to a file \
                 in {}: {e}",
                spill.dir.display()
            );
            spill.next_at = self.pending + spill.limit;
            return;
        }
        let mut at = start;
        for term in std::mem::take(&mut self.gathered) {
            let t = &mut self.terms[term as usize];
            let len = t.postings.len();
            let run = u32::try_from(self.runs.len()).expect("fewer than 2^32 pieces");
            self.runs.push(Run {
                offset: at,
                len: u32::try_from(len).expect("a piece is a few megabytes"),
                next: NONE,
            });
            if t.last_run == NONE {
                t.first_run = run;
            } else {
                self.runs[t.last_run as usize].next = run;
            }
            t.last_run = run;
            at += len as u64;
            t.postings = Vec::new();
        }
        spill.len = at;
        spill.next_at = spill.limit;
        self.pending = 0;
    }

    /// Bytes of lists in the index's file.
    pub fn disk_bytes(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.len)
    }

    /// Marks the article `id` as gone.
    pub fn remove(&mut self, id: &str) {
        let hash = self.hasher.hash_one(id);
        let docs = &self.docs;
        if let Ok(found) = self
            .by_id
            .find_entry(hash, |&d| &*docs[d as usize].id == id)
        {
            let (doc, _) = found.remove();
            self.live[doc as usize] = false;
            self.dead += 1;
        }
    }

    /// Whether so much of the index is dead that building it again pays.
    pub fn worth_rebuilding(&self) -> bool {
        self.dead > 1000 && self.dead * 5 > self.docs.len()
    }

    /// The term of a folded word, if the index has it; `hash` is the word's.
    fn term_hashed(&self, folded: &str, hash: u64) -> Option<u32> {
        self.vocabulary
            .find(hash, |&t| {
                self.terms[t as usize].word(&self.words) == folded
            })
            .copied()
    }

    /// The term of a folded word, if the index has it.
    fn term_of(&self, folded: &str) -> Option<u32> {
        self.term_hashed(folded, self.hasher.hash_one(folded))
    }

    fn term_id(&mut self, folded: &str) -> u32 {
        // Once per word of every article: the word is hashed once.
        let hash = self.hasher.hash_one(folded);
        if let Some(id) = self.term_hashed(folded, hash) {
            return id;
        }
        let id = self.terms.len() as u32;
        let start = u32::try_from(self.words.len()).expect("words under 4 GiB");
        self.words.push_str(folded);
        self.terms.push(Term {
            postings: Vec::new(),
            variants: Box::default(),
            word: (start, folded.len() as u32),
            last_doc: 0,
            first_run: NONE,
            last_run: NONE,
        });
        let (words, terms, hasher) = (&self.words, &self.terms, &self.hasher);
        self.vocabulary.insert_unique(hash, id, |&t| {
            hasher.hash_one(terms[t as usize].word(words))
        });
        id
    }

    fn variant(&mut self, term: u32, lower: &str) -> u8 {
        let t = &mut self.terms[term as usize];
        if lower == t.word(&self.words) {
            return 0;
        }
        let count = match t.spelled(lower) {
            Ok(code) => return code,
            Err(count) => count,
        };
        if usize::from(count) < VARIANTS {
            let mut grown = String::with_capacity(t.variants.len() + 1 + lower.len());
            grown.push_str(&t.variants);
            if !grown.is_empty() {
                grown.push(' ');
            }
            grown.push_str(lower);
            t.variants = grown.into_boxed_str();
            return count + 1;
        }
        OTHER_VARIANT
    }

    /// A term's pieces in the file, in order.
    fn pieces(&self, t: &Term) -> impl Iterator<Item = Run> + '_ {
        let mut at = t.first_run;
        std::iter::from_fn(move || {
            let run = *self.runs.get(at as usize)?;
            at = run.next;
            Some(run)
        })
    }

    /// Bytes the index holds on the heap (capacities, keys, documents).
    pub fn heap_bytes(&self) -> usize {
        let terms: usize = self
            .terms
            .iter()
            .map(|t| t.postings.capacity() + t.variants.len())
            .sum();
        terms
            + self.terms.capacity() * std::mem::size_of::<Term>()
            + self.words.capacity()
            + self.vocabulary.allocation_size()
            + self.runs.capacity() * std::mem::size_of::<Run>()
            + self.by_id.allocation_size()
            + self.docs.capacity() * std::mem::size_of::<Arc<Entry>>()
            + self.meta.capacity() * std::mem::size_of::<(u32, i64)>()
            + self.live.capacity()
    }

    /// Decodes the occurrences of `term` in live documents: its pieces in the file, then
    /// what is in memory.
    fn decode(&self, term: u32) -> io::Result<Decoded> {
        let t = &self.terms[term as usize];
        let bytes = t.postings.len() + self.pieces(t).map(|r| r.len as usize).sum::<usize>();
        let mut out = Decoded {
            starts: vec![0],
            ..Decoded::default()
        };
        // About one occurrence per byte, at most a document each: one allocation each, not
        // a doubling series.
        out.occurrences.reserve(bytes);
        out.docs.reserve(self.docs.len().min(bytes));
        out.starts.reserve(self.docs.len().min(bytes) + 1);
        if let Some(spill) = self.spill.as_ref().filter(|_| t.first_run != NONE) {
            let mut piece = Vec::new();
            for run in self.pieces(t) {
                piece.resize(run.len as usize, 0);
                spill
                    .file
                    .read_exact_at(&mut piece, run.offset)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "cannot read the search index's file in {}: {e}",
                                spill.dir.display()
                            ),
                        )
                    })?;
                self.decode_piece(&piece, &mut out);
            }
        }
        self.decode_piece(&t.postings, &mut out);
        Ok(out)
    }

    /// Adds the live documents of one piece of a list to `out`.
    fn decode_piece(&self, bytes: &[u8], out: &mut Decoded) {
        let mut at = 0;
        let mut doc = 0u32;
        let mut first = true;
        while at < bytes.len() {
            let delta = get_varint(bytes, &mut at);
            doc = if first { delta } else { doc + delta };
            first = false;
            let count = get_varint(bytes, &mut at);
            if self.live[doc as usize] {
                // `position << 3 | variant`: the deltas add up in the high bits.
                let mut pos = 0u32;
                for _ in 0..count {
                    let v = get_varint(bytes, &mut at);
                    pos = (pos & !7) + (v & !7);
                    out.occurrences.push(pos | (v & 7));
                }
                out.docs.push(doc);
                out.starts.push(out.occurrences.len() as u32);
            } else {
                for _ in 0..count {
                    get_varint(bytes, &mut at);
                }
            }
        }
    }

    /// The articles that hold every word of `query`, best first; page `page` (from 1), none
    /// past the last. Fails only when the index's file cannot be read.
    pub fn search(&self, query: &str, page: usize) -> io::Result<Results> {
        self.search_in(query, page, false)
    }

    /// [`Index::search`], but past the last page the last page (an old link, a page number
    /// typed by hand): [`Results::page`] says which.
    pub fn search_or_last(&self, query: &str, page: usize) -> io::Result<Results> {
        self.search_in(query, page, true)
    }

    fn search_in(&self, query: &str, page: usize, or_last: bool) -> io::Result<Results> {
        use unicode_normalization::UnicodeNormalization;
        // Composed as the articles are: a keyboard may send a letter and its marks apart.
        let query: String = query.nfc().take(MAX_QUERY_CHARS).collect();
        let mut exact: Vec<String> = Vec::new();
        let mut folded: Vec<String> = Vec::new();
        for (_, w) in words(&query).take(MAX_QUERY_WORDS) {
            let (lower, fold) = forms(w);
            exact.push(lower);
            folded.push(fold);
        }
        let mut results = Results {
            words: folded.clone(),
            page: page.max(1),
            ..Results::default()
        };
        if folded.is_empty() {
            return Ok(results);
        }
        let mut ranked = self.ranked(&exact, &folded, &[])?;
        // The same query with its names written the other way (`HĐND` for `hội đồng nhân
        // dân`, and back): an article found both ways counts once, at its better rank.
        if let Some(other) = other_spelling(&exact, &folded) {
            // A name written the other way is the name as typed: an article that has it
            // ranks as one spelled as typed (the words typed with marks all count).
            let typed_with_marks = exact.iter().zip(&folded).filter(|(e, f)| e != f).count();
            let alt: Vec<_> = self
                .ranked(&other.exact, &other.folded, &other.phrases)?
                .into_iter()
                .map(|(e, tier, published, doc)| {
                    (e.max(typed_with_marks as u32), tier, published, doc)
                })
                .collect();
            if !alt.is_empty() {
                let mut best: HashMap<u32, (u32, u8, i64, u32)> =
                    ranked.iter().map(|r| (r.3, *r)).collect();
                for r in alt {
                    let kept = best.entry(r.3).or_insert(r);
                    if (r.0, r.1) > (kept.0, kept.1) {
                        *kept = r;
                    }
                }
                ranked = best.into_values().collect();
            }
            for w in other.folded {
                if !results.words.contains(&w) {
                    results.words.push(w);
                }
            }
        }
        // Nothing: perhaps Vietnamese typed without an input method, its marks as letters
        // (Telex) or digits (VNI).
        if ranked.is_empty()
            && let Some(typed) = untyped(&exact)
        {
            let found = self.ranked(&typed, &typed, &[])?;
            if !found.is_empty() {
                ranked = found;
                results.typed_as = Some(typed.join(" "));
                results.words = typed;
            }
        }
        results.total = ranked.len();
        if or_last {
            results.page = results.page.min(ranked.len().div_ceil(PER_PAGE).max(1));
        }
        let start = (results.page - 1) * PER_PAGE;
        if start >= ranked.len() {
            return Ok(results);
        }
        let end = (start + PER_PAGE).min(ranked.len());
        let better = |a: &(u32, u8, i64, u32), b: &(u32, u8, i64, u32)| {
            (b.0, b.1, b.2, a.3).cmp(&(a.0, a.1, a.2, b.3))
        };
        if end < ranked.len() {
            ranked.select_nth_unstable_by(end, better);
            ranked.truncate(end);
        }
        ranked.sort_unstable_by(better);
        results.hits = ranked[start..end]
            .iter()
            .map(|&(_, _, _, doc)| self.docs[doc as usize].clone())
            .collect();
        Ok(results)
    }

    /// Every article holding each of the words (`exact`: as typed, lowercase; `folded`: by
    /// [`fold_word`]), with its rank: (words matched in the spelling typed, tier, published,
    /// document).
    fn ranked(
        &self,
        exact: &[String],
        folded: &[String],
        phrases: &[std::ops::Range<usize>],
    ) -> io::Result<Vec<(u32, u8, i64, u32)>> {
        // Each distinct word once; the query's words point at them.
        let mut distinct: Vec<u32> = Vec::new();
        let mut slot_of: Vec<usize> = Vec::new();
        for f in folded {
            let Some(term) = self.term_of(f) else {
                return Ok(Vec::new());
            };
            let slot = distinct.iter().position(|&t| t == term).unwrap_or_else(|| {
                distinct.push(term);
                distinct.len() - 1
            });
            slot_of.push(slot);
        }
        // Each word's list decoded on its own core.
        let decoded: Vec<Decoded> = distinct
            .par_iter()
            .map(|&t| self.decode(t))
            .collect::<io::Result<_>>()?;
        // The documents of the rarest word that hold the others too: per document, the
        // index of its occurrences in each word's list (lists are in document order), flat.
        let width = decoded.len();
        let rarest = (0..width)
            .min_by_key(|&i| decoded[i].docs.len())
            .expect("one word at least");
        let mut cursors = vec![0usize; width];
        let mut hits: Vec<u32> = Vec::with_capacity(decoded[rarest].docs.len() * (width + 1));
        let mut at = vec![0u32; width];
        'docs: for (i, &doc) in decoded[rarest].docs.iter().enumerate() {
            for (slot, d) in decoded.iter().enumerate() {
                if slot == rarest {
                    at[slot] = i as u32;
                    continue;
                }
                let c = &mut cursors[slot];
                // Lists are dense: step, and search only when far behind.
                while d.docs.get(*c).is_some_and(|&x| x < doc) {
                    if d.docs.get(*c + 8).is_some_and(|&x| x < doc) {
                        *c += 8 + d.docs[*c + 8..].partition_point(|&x| x < doc);
                    } else {
                        *c += 1;
                    }
                }
                if d.docs.get(*c) != Some(&doc) {
                    continue 'docs;
                }
                at[slot] = *c as u32;
            }
            hits.push(doc);
            hits.extend_from_slice(&at);
        }
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        // Which spelling each query word asks for, when it was typed with diacritics.
        let wanted: Vec<Option<u32>> = exact
            .iter()
            .zip(folded)
            .zip(&slot_of)
            .map(|((e, f), &slot)| {
                (e != f).then(|| {
                    self.terms[distinct[slot] as usize]
                        .spelled(e)
                        .map_or(u32::MAX, u32::from)
                })
            })
            .collect();
        let ranked: Vec<(u32, u8, i64, u32)> = hits
            .par_chunks(width + 1)
            .filter_map(|hit| {
                let doc = hit[0];
                let mut occ: [&[u32]; MAX_QUERY_WORDS] = [&[]; MAX_QUERY_WORDS];
                for (slot, &i) in hit[1..].iter().enumerate() {
                    occ[slot] = decoded[slot].of(i as usize);
                }
                let occ = &occ[..width];
                if !phrases
                    .iter()
                    .all(|p| together(occ, &slot_of[p.clone()]).is_some())
                {
                    return None;
                }
                let (title_len, published) = self.meta[doc as usize];
                let (exact, tier) = rank(occ, title_len, &slot_of, &wanted);
                Some((exact, tier, published, doc))
            })
            .collect();
        Ok(ranked)
    }

    /// Gives back what building left unused (lists grow by doubling).
    pub fn shrink(&mut self) {
        for t in &mut self.terms {
            t.postings.shrink_to_fit();
        }
        self.terms.shrink_to_fit();
        self.words.shrink_to_fit();
        self.runs.shrink_to_fit();
        let (words, terms, hasher) = (&self.words, &self.terms, &self.hasher);
        self.vocabulary
            .shrink_to_fit(|&t| hasher.hash_one(terms[t as usize].word(words)));
        self.docs.shrink_to_fit();
        self.meta.shrink_to_fit();
        self.live.shrink_to_fit();
    }
}

/// (words matched in the spelling typed, tier): 4 the words together in the title, 3
/// together in the text, 2 all in the title, 1 scattered. `occ`: per distinct word, its
/// occurrences in the document (`position << 3 | variant`).
fn rank(occ: &[&[u32]], title_len: u32, slot_of: &[usize], wanted: &[Option<u32>]) -> (u32, u8) {
    let exact = wanted
        .iter()
        .zip(slot_of)
        .filter(|(w, slot)| w.is_some_and(|v| occ[**slot].iter().any(|&o| o & 7 == v)))
        .count() as u32;
    let mut phrase_title = false;
    let mut phrase = false;
    if slot_of.len() > 1 {
        // The first place in the title the words stand together, else the first at all.
        let mut from = 0;
        while let Some(p) = together_from(occ, slot_of, from) {
            phrase = true;
            if p + (slot_of.len() as u32) <= title_len {
                phrase_title = true;
                break;
            }
            from = p + 1;
        }
    }
    let all_in_title = slot_of
        .iter()
        .all(|&slot| occ[slot].first().is_some_and(|&o| o >> 3 < title_len));
    let tier = if slot_of.len() == 1 {
        if all_in_title { 4 } else { 3 }
    } else if phrase_title {
        4
    } else if phrase {
        3
    } else if all_in_title {
        2
    } else {
        1
    };
    (exact, tier)
}

/// The first position of the document where the words of `slots` (their occurrences in
/// `occ`) stand one after the other, in that order.
fn together(occ: &[&[u32]], slots: &[usize]) -> Option<u32> {
    together_from(occ, slots, 0)
}

/// [`together`], at a position from `from` on.
fn together_from(occ: &[&[u32]], slots: &[usize], from: u32) -> Option<u32> {
    let (&first, rest) = slots.split_first()?;
    let start = occ[first].partition_point(|&o| o >> 3 < from);
    occ[first][start..].iter().map(|&o| o >> 3).find(|&p| {
        rest.iter().enumerate().all(|(k, &slot)| {
            occ[slot]
                .binary_search_by_key(&(p + 1 + k as u32), |&q| q >> 3)
                .is_ok()
        })
    })
}

/// A piece of text to show, highlighted or not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Piece {
    pub text: String,
    pub mark: bool,
}

/// `text` cut into pieces, the words of `folded` marked.
pub fn highlight(text: &str, folded: &[String]) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    let mut last = 0;
    let push = |out: &mut Vec<Piece>, text: &str, mark: bool| {
        if text.is_empty() {
            return;
        }
        match out.last_mut() {
            Some(p) if p.mark == mark => p.text.push_str(text),
            _ => out.push(Piece {
                text: text.to_owned(),
                mark,
            }),
        }
    };
    for (at, word) in words(text) {
        if folded.contains(&fold_word(word)) {
            push(&mut out, &text[last..at], false);
            push(&mut out, word, true);
            last = at + word.len();
        }
    }
    push(&mut out, &text[last..], false);
    out
}

/// About `width` words of `paragraphs` around the first place the query's words stand
/// together (else the first of them), highlighted.
pub fn snippet(paragraphs: &[String], folded: &[String], width: usize) -> Vec<Piece> {
    let text = paragraphs.join(" ");
    let all: Vec<(usize, &str)> = words(&text).collect();
    // Each word folded once.
    let all_folded: Vec<String> = all.iter().map(|(_, w)| fold_word(w)).collect();
    let is = |i: usize, k: usize| all_folded.get(i + k).is_some_and(|w| *w == folded[k]);
    let together = (0..all.len()).find(|&i| (0..folded.len()).all(|k| is(i, k)));
    let first = together.or_else(|| all_folded.iter().position(|w| folded.contains(w)));
    let center = first.unwrap_or(0);
    let from = center.saturating_sub(width / 3);
    let to = (from + width).min(all.len());
    if all.is_empty() {
        return Vec::new();
    }
    let start = all[from].0;
    let end = all.get(to).map_or(text.len(), |(at, _)| *at);
    let mut pieces = Vec::new();
    if from > 0 {
        pieces.push(Piece {
            text: "… ".into(),
            mark: false,
        });
    }
    pieces.extend(highlight(text[start..end].trim_end(), folded));
    if to < all.len() {
        pieces.push(Piece {
            text: " …".into(),
            mark: false,
        });
    }
    pieces
}

/// One change for the index.
pub enum Update {
    Add(Arc<Entry>, Arc<Article>),
    Remove(String),
}

/// The index shared by the engine (which feeds it) and the web (which asks it); built in
/// the background at start while the site is already served.
#[derive(Default)]
pub struct Search {
    state: RwLock<State>,
    /// Where indexes write their lists; `None`: they keep them in memory.
    dir: Option<PathBuf>,
    /// Told the index's size as it changes.
    metrics: Option<crate::metrics::Metrics>,
}

#[derive(Default)]
struct State {
    index: Index,
    /// Set while the index is built: changes wait in `pending`.
    building: bool,
    /// The latest build started (a reload may start one while another runs: only the
    /// latest is installed).
    ticket: u64,
    ready: bool,
    pending: Vec<Update>,
}

impl Search {
    /// A search whose indexes write their lists to files in `dir` (the state folder).
    pub fn in_folder(dir: &Path) -> Search {
        Search {
            dir: Some(dir.to_owned()),
            ..Search::default()
        }
    }

    /// A search that keeps `metrics` told of its index: articles and the file's bytes at
    /// every change, the memory it holds at every build and every write to the file.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Search {
        self.metrics = Some(metrics);
        self
    }

    /// Sets the gauges; the memory one to `heap` when given (counting it walks every word).
    fn measure(&self, index: &Index, heap: Option<usize>) {
        if let Some(m) = &self.metrics {
            m.search_documents.set(index.len() as i64);
            m.search_index_file_bytes.set(index.disk_bytes() as i64);
            if let Some(heap) = heap {
                m.search_index_bytes.set(heap as i64);
            }
        }
    }

    /// An empty index to build, writing to the folder if it can.
    pub fn new_index(&self) -> Index {
        let Some(dir) = &self.dir else {
            return Index::default();
        };
        Index::in_folder(dir).unwrap_or_else(|e| {
            tracing::warn!(
                "the search index keeps its lists in memory: cannot create a file in {}: {e}",
                dir.display()
            );
            Index::default()
        })
    }

    /// Marks the start of a build: changes from now are kept for it. Returns its ticket,
    /// for [`Search::finish_build`].
    pub fn begin_build(&self) -> u64 {
        let mut s = self.state.write().expect("search lock");
        s.building = true;
        s.pending.clear();
        s.ticket += 1;
        s.ticket
    }

    /// Installs a built index (shrunk, its memory `heap_bytes` counted by the caller, outside
    /// the lock searches wait for), with the changes made while it was built; an index whose
    /// build was overtaken by a later one is dropped.
    pub fn finish_build(&self, ticket: u64, mut index: Index, heap_bytes: usize) -> bool {
        let mut s = self.state.write().expect("search lock");
        if s.ticket != ticket {
            return false;
        }
        for update in std::mem::take(&mut s.pending) {
            apply(&mut index, update);
        }
        self.measure(&index, Some(heap_bytes));
        s.index = index;
        s.building = false;
        s.ready = true;
        true
    }

    pub fn update(&self, update: Update) {
        let mut s = self.state.write().expect("search lock");
        if s.building {
            s.pending.push(update);
        } else {
            let written = s.index.disk_bytes();
            apply(&mut s.index, update);
            // Memory moves much only when lists went to the file.
            let heap = (s.index.disk_bytes() != written).then(|| s.index.heap_bytes());
            self.measure(&s.index, heap);
        }
    }

    /// Whether the index holds the store (false while the first build runs).
    pub fn ready(&self) -> bool {
        self.state.read().expect("search lock").ready
    }

    /// Whether it should be built again (many dead entries) and is not being built.
    pub fn worth_rebuilding(&self) -> bool {
        let s = self.state.read().expect("search lock");
        !s.building && s.index.worth_rebuilding()
    }

    /// See [`Index::search_or_last`]: what the search page shows.
    pub fn search_or_last(&self, query: &str, page: usize) -> io::Result<Results> {
        self.state
            .read()
            .expect("search lock")
            .index
            .search_or_last(query, page)
    }
}

fn apply(index: &mut Index, update: Update) {
    match update {
        Update::Add(entry, article) => index.add(entry, &article),
        Update::Remove(id) => index.remove(&id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::Stamp;
    use chrono::DateTime;

    fn article(id: &str, title: &str, body: &str, day: u32) -> (Arc<Entry>, Article) {
        let published =
            DateTime::parse_from_rfc3339(&format!("2024-03-{day:02}T08:00:00+07:00")).unwrap();
        let a = Article {
            id: id.into(),
            category: "THÔNG BÁO".into(),
            title: title.into(),
            published,
            paragraphs: vec![body.into()],
            author: None,
            event: None,
            place: None,
            correction: None,
        };
        let e = Entry::new(&a, format!("{id}.txt"), Stamp::default(), published);
        (Arc::new(e), a)
    }

    fn index(docs: &[(&str, &str, &str, u32)]) -> Index {
        let mut index = Index::default();
        for (id, title, body, day) in docs {
            let (e, a) = article(id, title, body, *day);
            index.add(e, &a);
        }
        index
    }

    fn ids(r: &Results) -> Vec<&str> {
        r.hits.iter().map(|e| e.id.as_ref()).collect()
    }

    #[test]
    fn folds_vietnamese() {
        assert_eq!(
            fold_text("Kỳ họp HĐND Đại biểu ƯỚC"),
            "ky hop hdnd dai bieu uoc"
        );
        assert_eq!(fold_char('ử'), 'u');
    }

    #[test]
    fn finds_without_diacritics_and_d_for_dj() {
        let idx = index(&[
            ("a", "Kỳ họp thứ mười", "Các đại biểu thảo luận.", 1),
            (
                "b",
                "Tiếp xúc cử tri",
                "Đại biểu HĐND gặp cử tri phường.",
                2,
            ),
            ("c", "Thông báo", "Lịch trực tiếp công dân.", 3),
        ]);
        assert_eq!(ids(&idx.search("ky hop", 1).unwrap()), ["a"]);
        assert_eq!(ids(&idx.search("dai bieu", 1).unwrap()), ["b", "a"]);
        assert_eq!(ids(&idx.search("ĐẠI BIỂU", 1).unwrap()), ["b", "a"]);
        assert!(idx.search("ngân sách", 1).unwrap().hits.is_empty());
        assert!(idx.search("", 1).unwrap().hits.is_empty());
        assert!(idx.search("!!! ???", 1).unwrap().hits.is_empty());
    }

    #[test]
    fn a_name_is_found_abbreviated_or_in_full() {
        let idx = index(&[
            (
                "a",
                "HĐND quận họp phiên chuyên đề",
                "Thường trực HĐND chủ trì.",
                1,
            ),
            (
                "b",
                "Kỳ họp của Hội đồng nhân dân quận",
                "Hội đồng nhân dân quận khai mạc kỳ họp.",
                2,
            ),
            ("c", "Hoạt động xã hội", "Đồng bào nhân dịp Tết.", 3),
            (
                "d",
                "UBND phường tiếp dân",
                "Ủy ban nhân dân phường và MTTQ.",
                4,
            ),
            (
                "e",
                "Hội nghị tuyên dương",
                "Đồng chí Bí thư đề nghị nhân dân góp ý; ban tổ chức ủy quyền.",
                5,
            ),
        ]);
        let found = |q: &str| {
            let mut ids: Vec<String> = idx
                .search(q, 1)
                .unwrap()
                .hits
                .iter()
                .map(|e| e.id.to_string())
                .collect();
            ids.sort();
            ids
        };
        // The words apart (e) are found as any words are, but they are not the name.
        assert_eq!(found("hội đồng nhân dân"), ["a", "b", "e"]);
        assert_eq!(found("HĐND"), ["a", "b"]);
        assert_eq!(found("hdnd ky hop"), ["b"]);
        assert_eq!(found("họp hội đồng nhân dân quận"), ["a", "b"]);
        assert_eq!(found("uy ban nhan dan"), ["d", "e"]);
        assert_eq!(found("UBND"), ["d"]);
        assert_eq!(found("mặt trận tổ quốc"), ["d"]);
        // The name, in full or abbreviated, before the words apart, though these are spelled
        // as typed; among the first, the title, then the newest.
        assert_eq!(
            ids(&idx.search("hội đồng nhân dân", 1).unwrap()),
            ["b", "a", "e"]
        );
        assert_eq!(ids(&idx.search("ủy ban nhân dân", 1).unwrap()), ["d", "e"]);
        assert_eq!(ids(&idx.search("HĐND", 1).unwrap()), ["b", "a"]);
        // Both spellings are highlighted.
        let words = idx.search("HĐND", 1).unwrap().words;
        assert!(words.contains(&"hdnd".to_owned()) && words.contains(&"hoi".to_owned()));
        assert_eq!(
            other_spelling(&["x".into()], &["x".into()]),
            None,
            "nothing to write the other way"
        );
    }

    #[test]
    fn vietnamese_typed_without_an_input_method_is_read_when_nothing_else_is_found() {
        let idx = index(&[
            (
                "a",
                "Kỳ họp thứ mười",
                "Hội đồng nhân dân quận khai mạc kỳ họp.",
                1,
            ),
            (
                "b",
                "Tiếp xúc cử tri",
                "Đại biểu gặp người dân tại trường học.",
                2,
            ),
            ("c", "Thông báo", "Lịch trực tiếp công dân.", 3),
        ]);
        let found = |q: &str| {
            let r = idx.search(q, 1).unwrap();
            (
                ids(&r).iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                r.typed_as,
            )
        };
        let a = (vec!["a".to_owned()], Some("ki hop".to_owned()));
        assert_eq!(found("kyf hopj"), a, "Telex");
        assert_eq!(found("ky2 hop5"), a, "VNI");
        assert_eq!(
            found("hooij ddoongf"),
            (vec!["a".to_owned()], Some("hoi dong".into()))
        );
        assert_eq!(
            found("nguwowif daan truwowngf"),
            (vec!["b".to_owned()], Some("nguoi dan truong".into()))
        );
        // A query that finds something as typed is not read again.
        assert_eq!(found("ky hop"), (vec!["a".to_owned()], None));
        // Nor one that reads the same.
        assert_eq!(found("ngân sách"), (vec![], None));
    }

    #[test]
    fn i_and_y_after_a_consonant_are_one_letter() {
        for (word, folded) in [
            ("Kỳ", "ki"),
            ("kì", "ki"),
            ("quý", "qui"),
            ("quí", "qui"),
            ("Mỹ", "mi"),
            ("lý", "li"),
            ("y", "y"),
            ("huy", "huy"),
            ("tay", "tay"),
            ("kỳ", "ki"),
        ] {
            assert_eq!(fold_word(word), folded, "{word}");
        }
        let idx = index(&[
            ("a", "Kỳ họp thứ mười", "Báo cáo quý I.", 1),
            ("b", "Tay nghề", "Lớp học nghề.", 2),
        ]);
        assert_eq!(ids(&idx.search("kì họp", 1).unwrap()), ["a"]);
        assert_eq!(ids(&idx.search("ki hop", 1).unwrap()), ["a"]);
        assert_eq!(ids(&idx.search("quí I", 1).unwrap()), ["a"]);
        assert!(idx.search("tai nghe", 1).unwrap().hits.is_empty());
        // A letter and its marks sent apart (NFD), as some keyboards do.
        use unicode_normalization::UnicodeNormalization;
        let nfd: String = "Kỳ họp".nfd().collect();
        assert_ne!(nfd, "Kỳ họp");
        assert_eq!(ids(&idx.search(&nfd, 1).unwrap()), ["a"]);
        let marked = highlight("Kỳ họp thứ mười", &["ki".to_owned(), "hop".to_owned()]);
        assert!(
            marked.iter().any(|p| p.mark && p.text == "Kỳ"),
            "{marked:?}"
        );
    }

    #[test]
    fn an_event_is_found_by_its_place() {
        let (e, mut a) = article("hop", "Tiếp xúc cử tri", "Các đại biểu gặp cử tri.", 1);
        a.place = Some("Nhà văn hóa phường Dịch Vọng".into());
        let e = Arc::new(Entry::new(
            &a,
            e.file.clone(),
            Stamp::default(),
            e.published,
        ));
        let mut idx = Index::default();
        idx.add(e, &a);
        assert_eq!(
            ids(&idx.search("nha van hoa dich vong", 1).unwrap()),
            ["hop"]
        );
    }

    #[test]
    fn ranks_exact_spelling_phrase_title_then_recency() {
        let idx = index(&[
            // "ký hợp" (signing a contract): the same letters without diacritics.
            ("ky-hop-dong", "Ký hợp đồng thuê nhà", "Văn bản.", 9),
            ("ky-hop-than", "Thông báo", "Kỳ họp thứ hai sẽ khai mạc.", 2),
            ("ky-hop-tieu-de", "Kỳ họp thứ ba", "Khai mạc.", 1),
            ("rai-rac", "Họp tổ", "Kỳ này có họp.", 8),
        ]);
        // With diacritics: the spelling typed first, then the title, then the text.
        assert_eq!(
            ids(&idx.search("kỳ họp", 1).unwrap()),
            ["ky-hop-tieu-de", "ky-hop-than", "rai-rac", "ky-hop-dong"]
        );
        // Without: the words together in a title first (newest first), then in the text,
        // then scattered.
        assert_eq!(
            ids(&idx.search("ky hop", 1).unwrap()),
            ["ky-hop-dong", "ky-hop-tieu-de", "ky-hop-than", "rai-rac"]
        );
    }

    #[test]
    fn follows_changes_and_pages() {
        let mut idx = index(&[("a", "Ngân sách năm", "Dự toán.", 1)]);
        let (e, a) = article("a", "Thông báo", "Lịch tiếp dân.", 1);
        idx.add(e, &a);
        assert!(idx.search("ngan sach", 1).unwrap().hits.is_empty());
        assert_eq!(ids(&idx.search("tiep dan", 1).unwrap()), ["a"]);
        idx.remove("a");
        assert!(idx.search("tiep dan", 1).unwrap().hits.is_empty());
        assert_eq!(idx.len(), 0);
        for i in 0..25 {
            let (e, a) = article(&format!("n{i:02}"), "Giám sát", "Nội dung.", 1 + i % 28);
            idx.add(e, &a);
        }
        let p1 = idx.search("giam sat", 1).unwrap();
        let p3 = idx.search("giam sat", 3).unwrap();
        assert_eq!((p1.total, p1.hits.len(), p3.hits.len()), (25, 10, 5));
        assert!(idx.search("giam sat", 4).unwrap().hits.is_empty());
        let all: std::collections::HashSet<String> = (1..=3)
            .flat_map(|p| idx.search("giam sat", p).unwrap().hits)
            .map(|e| e.id.to_string())
            .collect();
        assert_eq!(all.len(), 25);
    }

    /// The same articles, changes and queries give the same answers whether the lists stay
    /// in memory or go to the file piece by piece (here after every few articles).
    #[test]
    fn lists_written_to_the_file_answer_as_those_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut on_disk = Index::spilling_at(dir.path(), 64).unwrap();
        let mut in_memory = Index::default();
        let words = [
            "kỳ", "họp", "ký", "hợp", "đại", "biểu", "cử", "tri", "ngân", "sách",
        ];
        for i in 0..200usize {
            let title = format!("{} {} số {i}", words[i % 10], words[(i * 7 + 1) % 10]);
            let body: Vec<&str> = (0..12).map(|k| words[(i * 3 + k * k) % 10]).collect();
            let (e, a) = article(
                &format!("a{i}"),
                &title,
                &body.join(" "),
                1 + (i % 28) as u32,
            );
            on_disk.add(e.clone(), &a);
            in_memory.add(e, &a);
            if i % 9 == 4 {
                // An edit: the article again, and one removed.
                on_disk.add(e_again(&a), &a);
                in_memory.add(e_again(&a), &a);
                on_disk.remove(&format!("a{}", i / 2));
                in_memory.remove(&format!("a{}", i / 2));
            }
        }
        assert!(on_disk.disk_bytes() > 1000, "{}", on_disk.disk_bytes());
        assert!(on_disk.terms.iter().any(|t| on_disk.pieces(t).count() > 10));
        // Nothing is left in the folder: the file has no name.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        for q in [
            "ky hop",
            "kỳ họp",
            "dai bieu cu tri",
            "ngân",
            "tri sach ky",
            "so 17",
            "hop",
        ] {
            for page in 1..=3 {
                let (a, b) = (
                    on_disk.search(q, page).unwrap(),
                    in_memory.search(q, page).unwrap(),
                );
                assert_eq!((a.total, ids(&a)), (b.total, ids(&b)), "{q} page {page}");
            }
        }
        assert!(in_memory.search("ky hop", 1).unwrap().total > 20);
        // What stays in memory is what came after the last write: less than the limit and
        // one article.
        let held = |i: &Index| i.terms.iter().map(|t| t.postings.len()).sum::<usize>();
        assert!(held(&on_disk) < 64 + 200, "{}", held(&on_disk));
        assert!(held(&in_memory) > 5000, "{}", held(&in_memory));
    }

    /// A disk that refuses the write (here a file open for reading only) costs memory, not
    /// answers.
    #[test]
    fn a_file_that_cannot_be_written_leaves_the_lists_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chi-doc");
        std::fs::write(&path, "").unwrap();
        let mut idx = Index {
            spill: Some(Spill {
                file: File::open(&path).unwrap(),
                dir: dir.path().to_owned(),
                len: 0,
                limit: 16,
                next_at: 16,
            }),
            ..Index::default()
        };
        for i in 0..30 {
            let (e, a) = article(&format!("a{i}"), "Kỳ họp", "Đại biểu cử tri.", 1);
            idx.add(e, &a);
        }
        // Tried again as more gathered, never written.
        assert!(idx.spill.as_ref().unwrap().next_at > 16);
        assert_eq!(idx.disk_bytes(), 0);
        assert!(idx.runs.is_empty());
        assert_eq!(idx.search("dai bieu", 1).unwrap().total, 30);
        // Room again (here a file that can be written): what gathered meanwhile goes with
        // the next write, and the answers stay the same.
        idx.spill.as_mut().unwrap().file = unnamed_file(dir.path()).unwrap();
        for i in 30..60 {
            let (e, a) = article(&format!("a{i}"), "Kỳ họp", "Đại biểu cử tri.", 1);
            idx.add(e, &a);
        }
        assert!(idx.disk_bytes() > 0);
        assert!(idx.gathered.len() < 4, "{}", idx.gathered.len());
        assert_eq!(idx.search("dai bieu", 1).unwrap().total, 60);
        assert_eq!(idx.search("kỳ họp", 6).unwrap().hits.len(), 10);
    }

    /// A state folder where no file can be made: the index is built in memory, and says so.
    #[test]
    fn a_folder_without_room_for_the_file_keeps_the_index_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let search = Search::in_folder(&dir.path().join("khong-co"));
        let mut idx = search.new_index();
        assert!(idx.spill.is_none());
        let (e, a) = article("a", "Kỳ họp", "Đại biểu.", 1);
        idx.add(e, &a);
        assert_eq!(idx.search("ky hop", 1).unwrap().total, 1);
        let on_disk = Search::in_folder(dir.path()).new_index();
        assert!(on_disk.spill.is_some());
    }

    /// Installs `index` as the engine does: shrunk and measured first.
    fn finished(search: &Search, ticket: u64, mut index: Index) -> bool {
        index.shrink();
        let heap = index.heap_bytes();
        search.finish_build(ticket, index, heap)
    }

    /// The metrics follow the index: its articles at every change, its file as it grows.
    #[test]
    fn the_metrics_follow_changes_after_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = crate::metrics::Metrics::default();
        let search = Search::in_folder(dir.path()).with_metrics(metrics.clone());
        let ticket = search.begin_build();
        assert!(finished(
            &search,
            ticket,
            index(&[("a", "Kỳ họp", "Nội dung.", 1)])
        ));
        assert_eq!(metrics.search_documents.get(), 1);
        assert!(metrics.search_index_bytes.get() > 0);
        // An index that writes every few bytes: the file's gauge moves with the updates.
        let ticket = search.begin_build();
        assert!(finished(
            &search,
            ticket,
            Index::spilling_at(dir.path(), 32).unwrap()
        ));
        assert_eq!(metrics.search_documents.get(), 0);
        for i in 0..20 {
            let (e, a) = article(&format!("n{i}"), "Giám sát", "Đại biểu cử tri.", 2);
            search.update(Update::Add(e, Arc::new(a)));
        }
        search.update(Update::Remove("n0".into()));
        assert_eq!(metrics.search_documents.get(), 19);
        assert!(metrics.search_index_file_bytes.get() > 0);
        assert_eq!(
            metrics.search_index_file_bytes.get() as u64,
            search.state.read().unwrap().index.disk_bytes()
        );
    }

    fn e_again(a: &Article) -> Arc<Entry> {
        Arc::new(Entry::new(
            a,
            format!("{}.txt", a.id),
            Stamp::default(),
            a.published,
        ))
    }

    #[test]
    fn an_index_is_worth_rebuilding_once_a_fifth_of_it_is_dead() {
        let mut idx = Index::default();
        for i in 0..1300 {
            let (e, a) = article(&format!("a{i}"), "Tin", "Nội dung.", 1);
            idx.add(e, &a);
        }
        for i in 0..1000 {
            idx.remove(&format!("a{i}"));
        }
        assert!(!idx.worth_rebuilding());
        idx.remove("a1000");
        assert!(idx.worth_rebuilding());
        assert_eq!(idx.len(), 299);
    }

    #[test]
    fn a_build_overtaken_by_a_later_one_is_dropped_and_changes_wait_for_the_last() {
        let search = Search::default();
        let first = search.begin_build();
        let second = search.begin_build();
        let (e, a) = article("moi", "Kỳ họp mới", "Nội dung.", 5);
        assert!(!finished(
            &search,
            first,
            index(&[("cu", "Kỳ họp cũ", "Nội dung.", 1)])
        ));
        assert!(!search.ready());
        search.update(Update::Add(e, Arc::new(a)));
        assert!(finished(&search, second, Index::default()));
        assert_eq!(ids(&search.search_or_last("ky hop", 1).unwrap()), ["moi"]);
    }

    #[test]
    fn snippets_show_the_words_together() {
        let paragraphs = vec![
            "Mở đầu dài dòng về nhiều việc khác nhau trong năm.".to_owned(),
            "Sau đó Kỳ họp thứ mười khai mạc tại hội trường.".to_owned(),
        ];
        // As a search folds them (fold_word): `kỳ` is `ki`.
        let words = vec!["ki".to_owned(), "hop".to_owned()];
        let s = snippet(&paragraphs, &words, 8);
        let marked: Vec<&str> = s
            .iter()
            .filter(|p| p.mark)
            .map(|p| p.text.as_str())
            .collect();
        assert_eq!(marked, ["Kỳ", "họp"]);
        assert_eq!(s.first().unwrap().text, "… ");
        assert_eq!(
            highlight("Đại biểu và đại biểu", &["dai".into(), "bieu".into()])
                .iter()
                .filter(|p| p.mark)
                .count(),
            4
        );
    }
}

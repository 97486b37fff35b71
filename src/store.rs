//! Durable state in sled: subscribers, the articles known to the mail side, and the outbox of
//! deliveries. The only module that imports sled.
//!
//! # Encoding (schema version 1)
//!
//! Trees and keys (keys are UTF-8 bytes; `\0` separates parts):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `meta` | `schema` | the schema version, ASCII digits |
//! | `meta` | `baseline` | unix seconds of the first start (its articles were not mailed) |
//! | `meta` | `digest\0{schedule}` | unix seconds of the last digest run |
//! | `subscribers` | email (lowercase) | [`Subscriber`] |
//! | `articles` | article id | [`KnownArticle`] (alerts were planned or it was baseline) |
//! | `outbox` | delivery key (see [`Delivery::key`]) | [`Delivery`] |
//! | `queue` | lane (1 byte) + next attempt (u64 ms, big endian) + delivery key | empty |
//!
//! Every value is one version byte (`1`) followed by JSON. A database whose schema is newer
//! than this program's is refused; an unknown version byte is an error, never misread.

use std::path::Path;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use crate::subscriber::{Schedule, SubState, Subscriber};

/// The file beside the database that names it (see [`Store::open`]).
pub const MARKER: &str = "state.id";
/// The two journals of sent marks in the state folder, which take turns (see [`Marks`]).
const MARKS_JOURNALS: [&str; 2] = ["marks.journal", "marks.2.journal"];

fn write_marker(path: &Path, id: &str) -> Result<(), StoreError> {
    crate::output::write_atomic_private(path, format!("{id}\n").as_bytes())
        .map(|_| ())
        .map_err(|source| StoreError::Marker {
            path: path.display().to_string(),
            source,
        })
}

/// The schema this program writes. 2: alerts sent by a fan-out are marked in the `sent`
/// tree (a program of schema 1 would not see them, and send them again). 3: the marks are
/// made durable by a journal beside the database, which a program of schema 2 would not
/// replay after a crash. 4: the marks of a running fan-out are in one of two journals
/// only (see [`Marks`]), of which a program of schema 3 reads the first.
pub const SCHEMA: u32 = 4;
/// The tree name of an export's first line, which gives the schema it was written in.
const SCHEMA_LINE: &str = "schema";
/// The version byte in front of every value.
const VALUE_VERSION: u8 = 1;

/// Lane of fresh deliveries: always taken before retries.
pub const LANE_FRESH: u8 = 0;
/// Lane of deliveries waiting for a retry.
pub const LANE_RETRY: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database in '{path}': {source}")]
    Open { path: String, source: sled::Error },
    #[error(
        "the state database in '{path}' has schema {found}, newer than this bantin ({SCHEMA}); \
         run a newer bantin or restore a backup"
    )]
    Newer { path: String, found: u32 },
    #[error("state database: {0}")]
    Sled(#[from] sled::Error),
    #[error("state database: unreadable record under '{key}': {message}")]
    Corrupt { key: String, message: String },
    #[error("state database: closed while it is opened again after a write failure")]
    Closed,
    #[error(
        "the state database in '{path}' is damaged and cannot be opened; restore a backup: \
         move the folder away, then 'bantin state import FILE'"
    )]
    Damaged { path: String },
    #[error(
        "the state database in '{path}' does not hold the state it held (its files were \
         removed or damaged); bantin will not start empty on it: restore a backup (move the \
         folder away, then 'bantin state import FILE'), or move the folder away to start anew"
    )]
    Lost { path: String },
    #[error(
        "the state already holds subscribers or deliveries: import into a new state folder \
         (move the old one away first)"
    )]
    NotEmpty,
    #[error(
        "the state in '{path}' belongs to the user '{owner}': run this as that user \
         (e.g. 'runuser -u {owner} -- bantin ...'), so that what it writes stays readable \
         by the daemon"
    )]
    Foreign { path: String, owner: String },
    #[error("cannot write the log of sent mails '{path}': {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the journal of sent mails '{path}': {source}")]
    Journal {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write '{path}': {source}")]
    Marker {
        path: String,
        source: std::io::Error,
    },
}

/// What the mail side knows of an article.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownArticle {
    pub published: i64,
    pub category: String,
    /// When the mail side learned of it (unix milliseconds; 0 for the first start's
    /// baseline).
    /// Digests pick articles by this time, so an article dropped into the store with an
    /// earlier publication time still reaches the next digest.
    pub seen: i64,
    /// The file in the store, relative (its name may differ from the id, e.g. in NFD).
    #[serde(default)]
    pub file: String,
    /// The `Đính chính:` reason last acted on (or the one it had when first seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<String>,
    /// How many corrections were mailed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub corrections: u32,
    /// The article this one repeats (the same one, moved or copied after it was mailed):
    /// those told of that one are this one's readers, for its corrections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_as: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// That a person was told of an article: the first mail that carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Told {
    /// The delivery key of that mail (its Message-ID derives from it).
    pub key: String,
    /// When the relay accepted it (unix milliseconds).
    pub at_ms: i64,
    /// `alert` or `digest`.
    pub by: String,
}

/// One correction of an article, as it was planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    pub n: u32,
    pub reason: String,
    /// When it was planned (unix milliseconds).
    pub at_ms: i64,
    /// The version people had been told, and the corrected one.
    pub before: crate::correction::Version,
    pub after: crate::correction::Version,
    /// Mails queued for it.
    pub planned: usize,
    /// Its mails whose full records were compacted.
    #[serde(default, skip_serializing_if = "Counts::is_empty")]
    pub compacted: Counts,
}

/// Finished deliveries, counted: what stays of them once compacted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    #[serde(default)]
    pub sent: usize,
    #[serde(default)]
    pub failed: usize,
    #[serde(default)]
    pub cancelled: usize,
    /// When the relay accepted the first and the last (unix milliseconds).
    #[serde(default)]
    pub first_ms: Option<i64>,
    #[serde(default)]
    pub last_ms: Option<i64>,
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        self.sent + self.failed + self.cancelled == 0
    }

    /// Adds `more` to these.
    pub fn merge(&mut self, more: &Counts) {
        self.sent += more.sent;
        self.failed += more.failed;
        self.cancelled += more.cancelled;
        self.first_ms = match (self.first_ms, more.first_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_ms = match (self.last_ms, more.last_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Counts one finished delivery.
    pub fn add(&mut self, d: &Delivery) {
        match d.state {
            DeliveryState::Sent => {
                self.sent += 1;
                self.first_ms = Some(self.first_ms.map_or(d.updated_ms, |t| t.min(d.updated_ms)));
                self.last_ms = Some(self.last_ms.map_or(d.updated_ms, |t| t.max(d.updated_ms)));
            }
            DeliveryState::Failed => self.failed += 1,
            DeliveryState::Cancelled => self.cancelled += 1,
            DeliveryState::Pending => {}
        }
    }
}

/// What stays of an article's deliveries once their full records are compacted: totals, and
/// who was told by which mail (a bit per subscriber number), so a correction still reaches
/// them and answers the right Message-ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compacted {
    #[serde(default)]
    pub alerts: Counts,
    /// Digests that carried it.
    #[serde(default)]
    pub digests: Counts,
    /// The key of the mail without its address (`a\0{article}\0`, `d\0{schedule}\0{run}\0`) to
    /// the numbers of those it told, as a bitmap in base64.
    #[serde(default)]
    pub told: std::collections::BTreeMap<String, String>,
}

/// A digest published as a page: every article its mails carried on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bulletin {
    pub schedule: Schedule,
    /// `YYYY-MM-DD`, in the council's time zone.
    pub date: String,
    /// The digest runs of that day (unix seconds of their ticks).
    pub runs: Vec<i64>,
    /// Article ids, newest first.
    pub articles: Vec<String>,
    /// Mails queued for it.
    pub mails: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kind {
    Alert {
        article: String,
    },
    Digest {
        schedule: Schedule,
        run: i64,
        articles: Vec<String>,
    },
    Confirm {
        at: i64,
    },
    /// Correction `n` of an article to someone who was told of it by the mail `reply_to`
    /// (a delivery key).
    Correction {
        article: String,
        n: u32,
        reply_to: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Sent,
    Failed,
    Cancelled,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Pending,
        DeliveryState::Sent,
        DeliveryState::Failed,
        DeliveryState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Sent => "sent",
            DeliveryState::Failed => "failed",
            DeliveryState::Cancelled => "cancelled",
        }
    }
}

/// An alert fan-out being planned: the article's matching subscribers are queued a window
/// at a time, in address order after `after` (empty: from the first), so the outbox holds a
/// window of its mails however many subscribers there are. The window and the new `after`
/// are written in one transaction: a crash plans no address twice and skips none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fanout {
    pub created_ms: i64,
    pub category: String,
    #[serde(default)]
    pub after: String,
    /// Mails queued so far.
    #[serde(default)]
    pub planned: u64,
    /// Every subscriber was reached (or the article deleted): kept a while, so that the
    /// article noticed again (a retry, a restore) does not mail them all once more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
    /// The article's category, title and publication time: the same article saved under
    /// another name (moved to a folder, renamed) is known by it, and not mailed again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
}

impl Fanout {
    /// What [`Fanout::fingerprint`] holds for an article.
    pub fn fingerprint_of(category: &str, title: &str, published_s: i64) -> String {
        format!("{category}\0{}\0{published_s}", title.trim())
    }
}

/// Pending mails that were tried and wait to be tried again ([`Store::deferred`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    pub count: usize,
    /// The reason of the latest try (it may name its recipient).
    pub reason: String,
    /// The earliest next try.
    pub next_ms: i64,
    /// The most tries one of them has had.
    pub attempts: u32,
}

/// One mail to one address. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub kind: Kind,
    pub email: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub created_ms: i64,
    pub next_ms: i64,
    pub updated_ms: i64,
    pub error: Option<String>,
    /// Times the relay refused this very message (not the relay refusing us): at the second
    /// it is given up.
    #[serde(default)]
    pub rejections: u32,
}

impl Delivery {
    pub fn new(kind: Kind, email: &str, now_ms: i64) -> Delivery {
        Delivery {
            kind,
            email: email.to_owned(),
            state: DeliveryState::Pending,
            attempts: 0,
            created_ms: now_ms,
            next_ms: now_ms,
            updated_ms: now_ms,
            error: None,
            rejections: 0,
        }
    }

    /// The queue lane: fresh deliveries go before retries.
    pub fn lane(&self) -> u8 {
        if self.attempts == 0 {
            LANE_FRESH
        } else {
            LANE_RETRY
        }
    }

    /// The outbox key: the same article (or digest run) to the same address always has the
    /// same key, so planning twice never sends twice.
    pub fn key(&self) -> String {
        match &self.kind {
            Kind::Alert { article } => format!("a\0{article}\0{}", self.email),
            Kind::Digest { schedule, run, .. } => {
                format!("d\0{}\0{run}\0{}", schedule.as_str(), self.email)
            }
            Kind::Confirm { at } => format!("c\0{}\0{at}", self.email),
            Kind::Correction { article, n, .. } => {
                format!("x\0{article}\0{n}\0{}", self.email)
            }
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    serde_json::to_writer(&mut out, value).expect("records always serialize");
    out
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        message,
    };
    match bytes.split_first() {
        Some((&VALUE_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
        }
        Some((v, _)) => Err(corrupt(format!("unknown record version {v}"))),
        None => Err(corrupt("empty record".into())),
    }
}

/// Another user's state is not opened: files written by, say, root in the daemon's state
/// folder would be unreadable to the daemon at its next start.
fn refuse_foreign(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() == me {
        return Ok(());
    }
    let owner = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let uid: u32 = fields.nth(1)?.parse().ok()?;
                (uid == meta.uid()).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| meta.uid().to_string());
    Err(StoreError::Foreign {
        path: dir.display().to_string(),
        owner,
    })
}

/// The logs of sent mails: `YYYY-MM-DD.jsonl.gz` in `state.dir/sent`.
const LOG_SUFFIX: &str = ".jsonl.gz";

/// Deliveries compacted in one transaction: the totals, the bits and the removal of the full
/// records land together or not at all (a crash counts nothing twice, loses no bit).
const COMPACT_CHUNK: usize = 1000;

/// How long the database's file lock is tried again when another holds it (see
/// [`Store::open_trees`]).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Subscriber numbers above this are corrupt data (a bitmap of them would take 128 MB).
const MAX_NUMBER: u32 = 1 << 30;

/// An article's compacted record being built, its bitmaps decoded.
type Building = (Compacted, std::collections::HashMap<String, Vec<u8>>);

type Abort = sled::transaction::ConflictableTransactionError<StoreError>;

fn tx_decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, Abort> {
    decode(key, bytes).map_err(Abort::Abort)
}

/// Puts the marks a crash left in the journals only back into the database (the `sent`
/// tree), then sets both journals aside (see [`Marks`]). Only journals of this state, under
/// the database's number or the next, are replayed; a record that is not a mark (damage) is
/// skipped.
fn replay_marks(t: &Trees, replays: [crate::journal::Replay; 2]) -> Result<(), StoreError> {
    let mut state = t.marks.lock();
    let generation = marks_generation(t)?;
    let (this, next) = (
        marks_header(t, generation)?,
        marks_header(t, generation + 1)?,
    );
    let lost = "mails it stood for may be sent again";
    let blank =
        |r: &crate::journal::Replay| r.header.is_none() && r.records.is_empty() && r.torn == 0;
    if replays.iter().all(blank) && t.meta.get(MARKS_GENERATION)?.is_some() {
        tracing::error!(
            path = %t.marks.path(0).display(),
            "the journal of sent mails was missing or emptied: if bantin did not stop \
             cleanly before, the mails it sent last may be sent again"
        );
    }
    let mut restored = 0;
    for (i, replay) in replays.iter().enumerate() {
        let path = t.marks.path(i).display().to_string();
        let whose = replay.header.as_deref().map(String::from_utf8_lossy);
        match whose.as_deref() {
            _ if blank(replay) => {}
            Some(h) if h == this || h == next => {
                for (key, value) in &replay.records {
                    let key_text = String::from_utf8_lossy(key);
                    if Mark::parse(value)
                        .and_then(|m| m.delivery(&key_text))
                        .is_none()
                    {
                        tracing::warn!(path, key = %key_text.replace('\0', "/"), "skipped a damaged record of the journal of sent mails: the mail it stood for may be sent again");
                        continue;
                    }
                    if t.sent.insert(key.as_slice(), value.as_slice())?.is_none() {
                        restored += 1;
                    }
                    t.ids
                        .insert(delivery_id(&key_text).as_bytes(), key.as_slice())?;
                }
                if replay.torn > 0 {
                    tracing::warn!(
                        path,
                        bytes = replay.torn,
                        records = replay.records.len(),
                        "the journal of sent mails has bytes that are not whole records after \
                         the ones read (a crash while writing one, or damage): the {lost}"
                    );
                }
            }
            // Folded before the database's last checkpoint (or a copy from before put back).
            Some(h) if older_marks_header(h, &this) => {
                tracing::debug!(path, found = %h, expected = this, "journal of sent mails folded already");
            }
            _ => {
                tracing::error!(
                    path,
                    found = whose.as_deref().unwrap_or("no header"),
                    expected = this,
                    "the journal of sent mails is not this state's (another council's, or \
                     damaged): not replayed; if this state's own journal was lost in a crash, \
                     the {lost}"
                );
            }
        }
    }
    // On disk before the new number is: both journals' numbers are then older than the
    // database's, neither is replayed again.
    t.db.flush()?;
    let after = generation + 2;
    t.meta
        .insert(MARKS_GENERATION, after.to_string().as_bytes())?;
    t.db.flush()?;
    t.marks.journals[0]
        .hold()
        .clear(marks_header(t, after)?.as_bytes())
        .map_err(journal_error(t.marks.path(0)))?;
    state.current = 0;
    state.generation = after;
    state.settled = true;
    if restored > 0 {
        tracing::info!(
            marks = restored,
            "sent mails restored from the journal after a crash"
        );
    }
    Ok(())
}

/// Whether `found` is the header of the same state's journal at an earlier checkpoint than
/// `expected`'s.
fn older_marks_header(found: &str, expected: &str) -> bool {
    let split = |h: &str| -> Option<(String, u64)> {
        let (whose, n) = h.rsplit_once(' ')?;
        Some((whose.to_owned(), n.parse().ok()?))
    };
    match (split(found), split(expected)) {
        (Some((a, n)), Some((b, m))) => a == b && n < m,
        _ => false,
    }
}

/// The key in `meta` of the number of checkpoints of the journal of sent marks.
const MARKS_GENERATION: &str = "marks_generation";

/// How many checkpoints the journal of sent marks has had.
fn marks_generation(t: &Trees) -> Result<u64, StoreError> {
    Ok(t.meta
        .get(MARKS_GENERATION)?
        .and_then(|v| decimal::<u64>(&v))
        .unwrap_or(0))
}

/// The header of this state's journal of sent marks number `generation`.
fn marks_header(t: &Trees, generation: u64) -> Result<String, StoreError> {
    let id = t
        .meta
        .get("id")?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    Ok(format!("bantin marks {id} {generation}"))
}

/// Whether sled could not open a database because another holds its file lock (sled says so
/// only in words).
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(e) if e.to_string().starts_with("could not acquire lock"))
}

impl StoreError {
    /// Whether the database could not be opened because another holds it (another bantin
    /// with the same `state.dir`).
    pub fn is_held(&self) -> bool {
        matches!(self, StoreError::Open { source, .. } if lock_held(source))
    }
}

/// A failed write of the journal of sent marks at `path`.
fn journal_error(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Journal {
        path: path.display().to_string(),
        source,
    }
}

/// Puts the marks `held` into the `sent` tree, with `generation` as the marks' checkpoint (see
/// [`Marks`]), in one transaction.
fn set_aside(
    t: &Trees,
    held: &std::collections::BTreeMap<String, Mark>,
    generation: u64,
) -> Result<(), StoreError> {
    use sled::Transactional;
    let result = (&t.sent, &t.meta).transaction(|(sent, meta)| {
        for (key, mark) in held {
            sent.insert(key.as_bytes(), mark.to_string().as_bytes())?;
        }
        meta.insert(MARKS_GENERATION, generation.to_string().as_bytes())?;
        Ok::<(), Abort>(())
    });
    tx_result(result)
}

/// The marks a fold took are in the database now: they are no longer read from memory, and
/// their journal may be emptied once the database has them on disk.
fn let_go_of_folded(t: &Trees) -> Result<(), StoreError> {
    let mut state = t.marks.lock();
    state.folding = Default::default();
    state.settled = false;
    drop(state);
    t.db.flush()?;
    t.marks.lock().settled = true;
    Ok(())
}

/// Makes every mark recorded so far durable: they are in no tree of the database, a flush of
/// it does not cover them.
fn sync_marks(t: &Trees) -> Result<(), StoreError> {
    // A fold that started the other journal since synced this one's marks.
    let current = t.marks.lock().current;
    t.marks.journals[current]
        .sync()
        .map_err(journal_error(t.marks.path(current)))
}

/// The marks a fold is to take (see [`Marks`]), with the number of the journal that holds
/// the marks recorded since: those of a fold that did not finish, or else those recorded so
/// far, for which the other journal is started.
fn take_marks(t: &Trees) -> Result<(Taken, u64), StoreError> {
    if !t.marks.lock().settled {
        // The last fold's flush failed: the journal it folded is emptied only once it is done.
        t.db.flush()?;
        t.marks.lock().settled = true;
    }
    let (switch, old, generation) = {
        let state = t.marks.lock();
        let switch = state.folding.is_empty() && !state.fresh.is_empty();
        (switch, state.current, state.generation + 1)
    };
    let new = 1 - old;
    if switch {
        // Emptied first, without holding the senders: none writes to it before the switch,
        // and one fold runs at a time.
        t.marks.journals[new]
            .hold()
            .clear(marks_header(t, generation)?.as_bytes())
            .map_err(journal_error(t.marks.path(new)))?;
    }
    let mut state = t.marks.lock();
    if switch {
        // What the current journal holds is on disk, whatever its senders synced.
        t.marks.journals[old]
            .sync()
            .map_err(journal_error(t.marks.path(old)))?;
        state.current = new;
        state.generation = generation;
        state.folding = std::sync::Arc::new(std::mem::take(&mut state.fresh));
    }
    Ok((state.folding.clone(), state.generation))
}

/// Compacts `chunk` (finished deliveries with their keys) in one transaction.
/// `drop_ids`: forget the deliveries' ids too (else the VERP addresses of mails just sent
/// still name their recipients, until the day's log of sent mails is pruned). `held`: the
/// chunk is the marks held in memory that a journal numbered one less holds, and the
/// transaction records that number (see [`Marks`]); else it is records of the outbox or
/// marks of the `sent` tree, which leave it.
fn compact_chunk(
    t: &Trees,
    chunk: &[(sled::IVec, Delivery)],
    drop_ids: bool,
    held: Option<u64>,
) -> Result<usize, StoreError> {
    use sled::Transactional;
    use std::collections::HashMap;
    let trees = (
        &t.outbox,
        &t.sent,
        &t.ids,
        &t.told,
        &t.compact,
        &t.corrections,
        &t.runs,
        &t.numbers,
        &t.number_of,
        &t.meta,
        &t.articles,
    );
    let result = trees.transaction(
        |(outbox, sent, ids, told, compact, corrections, runs, numbers, number_of, meta, known)| {
            let mut articles: HashMap<String, Building> = HashMap::new();
            let mut fixes: HashMap<(String, u32), Counts> = HashMap::new();
            let mut run_counts: HashMap<String, Counts> = HashMap::new();
            let mut assigned: HashMap<String, u32> = HashMap::new();
            let mut next: Option<u32> = None;
            let entry = |id: &str, articles: &mut HashMap<String, Building>| -> Result<(), Abort> {
                if !articles.contains_key(id) {
                    let c: Compacted = match compact.get(id)? {
                        Some(v) => tx_decode(id.as_bytes(), &v)?,
                        None => Compacted::default(),
                    };
                    let mut bits = HashMap::new();
                    for (group, b64) in &c.told {
                        let decoded = try_bitmap_decode(b64).ok_or_else(|| {
                            Abort::Abort(StoreError::Corrupt {
                                key: format!("compact/{id}"),
                                message: format!("the bitmap of '{group}' is not base64"),
                            })
                        })?;
                        bits.insert(group.clone(), decoded);
                    }
                    articles.insert(id.to_owned(), (c, bits));
                }
                Ok(())
            };
            for (k, d) in chunk {
                // Folded meanwhile by someone else: not counted twice. (Marks held in memory
                // are taken by one fold.)
                let on_record = held.is_none() && outbox.get(k)?.is_some();
                if held.is_none() && !on_record && sent.get(k)?.is_none() {
                    continue;
                }
                let key = String::from_utf8_lossy(k).into_owned();
                let (carried, group): (Vec<String>, Option<String>) = match &d.kind {
                    Kind::Alert { article: id } => {
                        entry(id, &mut articles)?;
                        articles
                            .get_mut(id.as_str())
                            .expect("loaded")
                            .0
                            .alerts
                            .add(d);
                        (vec![id.clone()], Some(format!("a\0{id}\0")))
                    }
                    Kind::Digest {
                        schedule,
                        run,
                        articles: list,
                    } => {
                        run_counts
                            .entry(format!("{}\0{run}", schedule.as_str()))
                            .or_default()
                            .add(d);
                        for id in list {
                            entry(id, &mut articles)?;
                            articles
                                .get_mut(id.as_str())
                                .expect("loaded")
                                .0
                                .digests
                                .add(d);
                        }
                        (
                            list.clone(),
                            Some(format!("d\0{}\0{run}\0", schedule.as_str())),
                        )
                    }
                    Kind::Correction { article: id, n, .. } => {
                        fixes.entry((id.clone(), *n)).or_default().add(d);
                        (Vec::new(), None)
                    }
                    Kind::Confirm { .. } => (Vec::new(), None),
                };
                if d.state == DeliveryState::Sent
                    && let Some(group) = group
                {
                    for id in &carried {
                        let told_at = told_key(id, &d.email);
                        // An alert told whom it was sent to. Of the digests, the first that
                        // told of it is the one to answer: its record goes into the bitmap;
                        // another digest's waits for that one.
                        let first = matches!(d.kind, Kind::Alert { .. })
                            || match told.get(&told_at)? {
                                Some(v) => tx_decode::<Told>(&told_at, &v)?.key == key,
                                // No record: a digest from before records were kept, of the
                                // article as it is known now (not of one deleted since and
                                // written again, whose readers were forgotten).
                                None => match known.get(id.as_bytes())? {
                                    Some(v) => {
                                        tx_decode::<KnownArticle>(id.as_bytes(), &v)?.seen
                                            <= d.created_ms
                                    }
                                    None => false,
                                },
                            };
                        if !first {
                            continue;
                        }
                        let n = match assigned.get(&d.email) {
                            Some(n) => *n,
                            None => {
                                let n =
                                    number_for((numbers, number_of, meta), &d.email, &mut next)?;
                                assigned.insert(d.email.clone(), n);
                                n
                            }
                        };
                        if n > MAX_NUMBER {
                            return Err(Abort::Abort(StoreError::Corrupt {
                                key: format!("number_of/{}", d.email),
                                message: format!("subscriber number {n} is out of range"),
                            }));
                        }
                        let bits = articles
                            .get_mut(id.as_str())
                            .expect("loaded")
                            .1
                            .entry(group.clone())
                            .or_default();
                        bitmap_set(bits, n);
                        if matches!(d.kind, Kind::Digest { .. }) {
                            told.remove(told_at)?;
                        }
                    }
                }
                if on_record {
                    outbox.remove(k)?;
                } else if held.is_none() {
                    sent.remove(k)?;
                }
                if drop_ids {
                    ids.remove(delivery_id(&key).as_bytes())?;
                }
            }
            if let Some(n) = next {
                meta.insert("next_number", n.to_string().as_bytes())?;
            }
            if let Some(generation) = held {
                meta.insert(MARKS_GENERATION, generation.to_string().as_bytes())?;
            }
            for (id, (mut c, bits)) in articles {
                c.told = bits
                    .into_iter()
                    .map(|(group, b)| (group, bitmap_encode(&b)))
                    .collect();
                compact.insert(id.as_bytes(), encode(&c))?;
            }
            for ((id, n), counts) in fixes {
                let key = correction_key(&id, n);
                if let Some(v) = corrections.get(&key)? {
                    let mut c: Correction = tx_decode(&key, &v)?;
                    c.compacted.merge(&counts);
                    corrections.insert(key, encode(&c))?;
                }
            }
            for (run, counts) in run_counts {
                let mut total: Counts = match runs.get(run.as_bytes())? {
                    Some(v) => tx_decode(run.as_bytes(), &v)?,
                    None => Counts::default(),
                };
                total.merge(&counts);
                runs.insert(run.as_bytes(), encode(&total))?;
            }
            Ok(())
        },
    );
    tx_result(result).map(|()| chunk.len())
}

/// A transaction's outcome as the store's: its own error, or sled's.
fn tx_result<T>(
    result: Result<T, sled::transaction::TransactionError<StoreError>>,
) -> Result<T, StoreError> {
    match result {
        Ok(v) => Ok(v),
        Err(sled::transaction::TransactionError::Abort(e)) => Err(e),
        Err(sled::transaction::TransactionError::Storage(e)) => Err(e.into()),
    }
}

/// The number of `email` in the compacted records: its own, or else the next free one, given
/// to it now. `next` carries the counter through one transaction; the caller writes it back
/// as `meta/next_number`.
fn number_for(
    (numbers, number_of, meta): (
        &sled::transaction::TransactionalTree,
        &sled::transaction::TransactionalTree,
        &sled::transaction::TransactionalTree,
    ),
    email: &str,
    next: &mut Option<u32>,
) -> Result<u32, Abort> {
    let known = number_of.get(email.as_bytes())?.and_then(|v| decimal(&v));
    if let Some(n) = known {
        return Ok(n);
    }
    let mut n = match *next {
        Some(n) => n,
        None => meta
            .get("next_number")?
            .and_then(|v| decimal(&v))
            .unwrap_or(0),
    };
    // A number in use (a state restored from a backup taken while compacting) is never
    // given twice.
    let after = |n: u32| {
        n.checked_add(1).ok_or_else(|| {
            Abort::Abort(StoreError::Corrupt {
                key: "meta/next_number".into(),
                message: "no subscriber number left".into(),
            })
        })
    };
    while numbers.get(n.to_be_bytes())?.is_some() {
        n = after(n)?;
    }
    *next = Some(after(n)?);
    numbers.insert(&n.to_be_bytes(), email.as_bytes())?;
    number_of.insert(email.as_bytes(), n.to_string().as_bytes())?;
    Ok(n)
}

fn bitmap_set(bits: &mut Vec<u8>, n: u32) {
    let byte = (n / 8) as usize;
    if bits.len() <= byte {
        bits.resize(byte + 1, 0);
    }
    bits[byte] |= 1 << (n % 8);
}

fn bitmap_has(bits: &[u8], n: u32) -> bool {
    bits.get((n / 8) as usize)
        .is_some_and(|b| b & (1 << (n % 8)) != 0)
}

/// A number stored as decimal text (subscriber numbers, counters).
fn decimal<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn bitmap_numbers(bits: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bits.iter().enumerate().flat_map(|(i, b)| {
        (0..8u32)
            .filter(move |bit| b & (1 << bit) != 0)
            .map(move |bit| i as u32 * 8 + bit)
    })
}

fn bitmap_encode(bits: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bits)
}

fn try_bitmap_decode(b64: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn bitmap_decode(b64: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_default()
}

/// An alert sent by a fan-out, until it is folded: the whole record of it, the rest being
/// in its key (the article and the address) and the same for every such mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    created_ms: i64,
    updated_ms: i64,
}

impl Mark {
    fn parse(v: &[u8]) -> Option<Mark> {
        let (created, updated) = std::str::from_utf8(v).ok()?.split_once(' ')?;
        Some(Mark {
            created_ms: created.parse().ok()?,
            updated_ms: updated.parse().ok()?,
        })
    }

    /// The delivery it stands for.
    fn delivery(self, key: &str) -> Option<Delivery> {
        let mut parts = key.splitn(3, '\0');
        let (Some("a"), Some(article), Some(email)) = (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(Delivery {
            kind: Kind::Alert {
                article: article.to_owned(),
            },
            email: email.to_owned(),
            state: DeliveryState::Sent,
            attempts: 1,
            created_ms: self.created_ms,
            next_ms: self.created_ms,
            updated_ms: self.updated_ms,
            error: None,
            rejections: 0,
        })
    }
}

impl std::fmt::Display for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.created_ms, self.updated_ms)
    }
}

/// The marks of the alerts a running fan-out sent and that are not folded yet (see
/// [`Mark`]). Each is kept in memory and appended to a journal (see [`crate::journal`]),
/// which makes it durable: a group of senders waits for one `fdatasync` of it. None goes
/// into the database before its fold, which writes it into its article's bitmap and totals:
/// an insert into sled, and its removal at the fold, cost a fan-out more than a fifth of its
/// CPU.
///
/// Two journals take turns. A fold starts the other one (emptied, under the next number)
/// for the marks recorded meanwhile, and folds those of the first, recording the new number
/// in the same transaction; the first is emptied only at the next fold, once the database
/// has the last one on disk. So after a crash the journals to replay are the one under the
/// database's number and the one under the next (a fold not on disk yet); an older one was
/// folded. At open, what they hold is put into the `sent` tree (the marks of a state written
/// before, too) and both are set aside under a number of their own.
struct Marks {
    journals: [crate::journal::Journal; 2],
    state: std::sync::Mutex<MarksState>,
}

/// The marks a fold took, by key.
type Taken = std::sync::Arc<std::collections::BTreeMap<String, Mark>>;

struct MarksState {
    /// The journal new marks go to, and its number (in its header).
    current: usize,
    generation: u64,
    /// The marks in the current journal.
    fresh: std::collections::BTreeMap<String, Mark>,
    /// The marks of the other journal being folded: still to be read until the fold's
    /// transaction has them.
    folding: Taken,
    /// Whether the database has the last fold on disk: only then may the other journal be
    /// emptied.
    settled: bool,
}

impl Marks {
    fn lock(&self) -> std::sync::MutexGuard<'_, MarksState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The mark of `key`, if held here.
    fn get(&self, key: &str) -> Option<Mark> {
        let state = self.lock();
        state
            .fresh
            .get(key)
            .or_else(|| state.folding.get(key))
            .copied()
    }

    /// How many marks are held here.
    fn len(&self) -> usize {
        let state = self.lock();
        state.fresh.len() + state.folding.len()
    }

    /// The marks held here whose keys start with `prefix`.
    fn with_prefix(&self, prefix: &str) -> Vec<(String, Mark)> {
        let state = self.lock();
        let of = |m: &std::collections::BTreeMap<String, Mark>| -> Vec<(String, Mark)> {
            m.range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, m)| (k.clone(), *m))
                .collect()
        };
        let mut found = of(&state.folding);
        found.extend(of(&state.fresh));
        found
    }

    fn path(&self, journal: usize) -> &Path {
        self.journals[journal].path()
    }
}

/// The subscribers an alert was sent to, as folded (see [`Store::alerted`]).
pub struct Alerted {
    bits: Vec<u8>,
    number_of: sled::Tree,
}

impl Alerted {
    /// Whether the alert was sent to `email`.
    pub fn told(&self, email: &str) -> Result<bool, StoreError> {
        if self.bits.is_empty() {
            return Ok(false);
        }
        let Some(v) = self.number_of.get(email.as_bytes())? else {
            return Ok(false);
        };
        Ok(decimal(&v).is_some_and(|n| bitmap_has(&self.bits, n)))
    }
}

/// Forgets who was told of `id`: its compacted record and its digests' records.
fn forget_readers(t: &Trees, id: &str) -> Result<(), StoreError> {
    t.compact.remove(id)?;
    for r in t.told.scan_prefix(told_key(id, "")) {
        let (k, _) = r?;
        t.told.remove(k)?;
    }
    Ok(())
}

fn told_key(article: &str, email: &str) -> Vec<u8> {
    format!("{article}\0{email}").into_bytes()
}

fn correction_key(article: &str, n: u32) -> Vec<u8> {
    format!("{article}\0{n:010}").into_bytes()
}

fn queue_key(lane: u8, next_ms: i64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.push(lane);
    out.extend_from_slice(&(next_ms.max(0) as u64).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// An entry of the delivery queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub lane: u8,
    pub next_ms: i64,
    pub key: String,
    /// An alert of a fan-out's window, planned in memory: not on record yet, and not in
    /// the queue.
    pub planned: bool,
}

fn parse_queue_key(raw: &[u8]) -> Option<Queued> {
    if raw.len() < 9 {
        return None;
    }
    let next = u64::from_be_bytes(raw[1..9].try_into().ok()?);
    Some(Queued {
        lane: raw[0],
        next_ms: next as i64,
        key: String::from_utf8(raw[9..].to_vec()).ok()?,
        planned: false,
    })
}

/// The state database.
#[derive(Clone)]
pub struct Store {
    /// The open database; `None` while it is being reopened after a write failure. Every
    /// clone of the store sees the reopened one.
    trees: std::sync::Arc<std::sync::RwLock<Option<Trees>>>,
    /// Where the database lives, to reopen it.
    path: std::path::PathBuf,
    /// Bytes of the database sled keeps in memory.
    cache_bytes: u64,
    /// Set by whoever met an error writing; cleared by a successful [`Store::recover`].
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether deliveries are indexed by id: only VERP return paths and mailto unsubscribe
    /// addresses name a delivery by its id. Without them the index is not written, and
    /// sled does not hold an entry per mail sent.
    ids: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Held while mails move between the outbox and the folded totals (folding, compacting,
    /// planning a window), and by readers that need both sides at one moment (who was told
    /// of an article, an export): none sees a mail in neither place, or in both.
    books: std::sync::Arc<std::sync::Mutex<()>>,
}

/// The database and its trees (cheap handles onto the same data).
#[derive(Clone)]
struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    subscribers: sled::Tree,
    articles: sled::Tree,
    outbox: sled::Tree,
    queue: sled::Tree,
    /// Delivery id (see [`delivery_id`]) to delivery key, for the VERP addresses.
    ids: sled::Tree,
    /// Digests of the messages the inbox has acted on.
    inbox: sled::Tree,
    /// `article \0 email` to [`Told`]: who received which article, for its corrections.
    told: sled::Tree,
    /// `article \0 n` to [`Correction`].
    corrections: sled::Tree,
    /// Article id to the [`crate::correction::Version`] people were last told.
    versions: sled::Tree,
    /// `schedule \0 date` to [`Bulletin`].
    bulletins: sled::Tree,
    /// A number (4 bytes, big-endian) to the address it stands for, in compacted records.
    numbers: sled::Tree,
    /// An address to its number (decimal).
    number_of: sled::Tree,
    /// Article id to its [`Compacted`] deliveries.
    compact: sled::Tree,
    /// `schedule \0 run` to the [`Counts`] of a digest run's compacted mails.
    runs: sled::Tree,
    /// Article id to its [`Fanout`] still being planned.
    fanout: sled::Tree,
    /// An alert of a fan-out sent and not folded yet, put back from the journals at open
    /// (see [`Marks`]): its outbox key to `created_ms updated_ms` (decimal). A fan-out plans
    /// its mails in memory: the one record of a mail it sent is this mark, a few bytes,
    /// folded as a sent delivery is (see [`Mark`]).
    sent: sled::Tree,
    /// The marks of this run, not folded yet.
    marks: std::sync::Arc<Marks>,
}

/// Trees whose values are versioned JSON records (exported as JSON).
const JSON_TREES: [&str; 10] = [
    "fanout",
    "subscribers",
    "articles",
    "outbox",
    "told",
    "corrections",
    "versions",
    "bulletins",
    "compact",
    "runs",
];

/// The cache of a database opened without a configuration (commands, tests).
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

impl Trees {
    /// Every tree with its name, in a fixed order.
    fn named(&self) -> Vec<(&'static str, &sled::Tree)> {
        vec![
            ("meta", &self.meta),
            ("subscribers", &self.subscribers),
            ("articles", &self.articles),
            ("outbox", &self.outbox),
            ("queue", &self.queue),
            ("ids", &self.ids),
            ("inbox", &self.inbox),
            ("told", &self.told),
            ("corrections", &self.corrections),
            ("versions", &self.versions),
            ("bulletins", &self.bulletins),
            ("numbers", &self.numbers),
            ("number_of", &self.number_of),
            ("compact", &self.compact),
            ("runs", &self.runs),
            ("fanout", &self.fanout),
            ("sent", &self.sent),
        ]
    }
}

/// What makes a recorded outcome durable (see [`Store::record_planned`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A mark of a sent alert: [`Store::sync_marks`] (or a flush).
    Mark,
    /// A record: [`Store::flush_async`].
    Record,
}

/// One record of an export.
#[derive(Debug, Serialize, Deserialize)]
struct ExportLine {
    tree: String,
    key: String,
    /// The key is binary, in base64.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    key_b64: bool,
    value: serde_json::Value,
}

/// The address in a delivery key (see [`Delivery::key`]).
fn email_of_key(key: &str) -> Option<&str> {
    let fields: Vec<&str> = key.split('\0').collect();
    match fields.as_slice() {
        ["c", email, _] => Some(email),
        ["a", .., email] | ["d", .., email] | ["x", .., email] => Some(email),
        _ => None,
    }
}

/// The short id of a delivery (16 hex digits), named in its VERP address; the first half of
/// its Message-ID.
pub fn delivery_id(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    crate::token::hex(&digest[..8])
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store(..)")
    }
}

impl Store {
    /// Opens (or creates) the database in `dir`, checking its schema, with the default cache.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database in `dir`, keeping at most `cache_bytes` of it in memory.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        refuse_foreign(dir)?;
        Ok(Store {
            trees: std::sync::Arc::new(std::sync::RwLock::new(Some(Store::open_trees(
                dir,
                cache_bytes,
            )?))),
            cache_bytes,
            path: dir.join("db"),
            broken: std::sync::Arc::default(),
            ids: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            books: std::sync::Arc::default(),
        })
    }

    fn open_trees(dir: &Path, cache_bytes: u64) -> Result<Trees, StoreError> {
        let path = dir.join("db");
        let shown = path.display().to_string();
        // sled panics on some damaged files (a truncated one): a clear error instead.
        let open = || {
            std::panic::catch_unwind(|| {
                sled::Config::new()
                    .path(&path)
                    .mode(sled::Mode::LowSpace)
                    .cache_capacity(cache_bytes)
                    .open()
            })
        };
        // A database closed a moment ago (a reopen after a write failure, a command right
        // after a stop) keeps its file lock until sled's background work on it ends: the
        // lock is tried again for a while before it is said to be held.
        let mut opened = open();
        let since = std::time::Instant::now();
        while matches!(&opened, Ok(Err(e)) if lock_held(e)) && since.elapsed() < LOCK_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(10));
            opened = open();
        }
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(source)) => {
                return Err(StoreError::Open {
                    path: shown.clone(),
                    source,
                });
            }
            Err(_) => return Err(StoreError::Damaged { path: shown }),
        };
        let open_journal = |name: &str| {
            let path = dir.join(name);
            crate::journal::Journal::open(&path).map_err(journal_error(&path))
        };
        let (first, first_replay) = open_journal(MARKS_JOURNALS[0])?;
        let (second, second_replay) = open_journal(MARKS_JOURNALS[1])?;
        let marks = Marks {
            journals: [first, second],
            state: std::sync::Mutex::new(MarksState {
                current: 0,
                generation: 0,
                fresh: Default::default(),
                folding: Default::default(),
                settled: true,
            }),
        };
        let trees = Trees {
            meta: db.open_tree("meta")?,
            subscribers: db.open_tree("subscribers")?,
            articles: db.open_tree("articles")?,
            outbox: db.open_tree("outbox")?,
            queue: db.open_tree("queue")?,
            ids: db.open_tree("ids")?,
            inbox: db.open_tree("inbox")?,
            told: db.open_tree("told")?,
            corrections: db.open_tree("corrections")?,
            versions: db.open_tree("versions")?,
            bulletins: db.open_tree("bulletins")?,
            numbers: db.open_tree("numbers")?,
            number_of: db.open_tree("number_of")?,
            compact: db.open_tree("compact")?,
            runs: db.open_tree("runs")?,
            fanout: db.open_tree("fanout")?,
            sent: db.open_tree("sent")?,
            marks: std::sync::Arc::new(marks),
            db,
        };
        // A marker beside the database names it: a database that opens without it (its
        // files deleted or damaged, which sled opens as an empty one) is refused, never
        // taken for a first start.
        let marker = dir.join(MARKER);
        let expected = std::fs::read_to_string(&marker).ok();
        let found = trees
            .meta
            .get("id")?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        match (expected.as_deref().map(str::trim), found.as_deref()) {
            (Some(want), Some(have)) if want == have => {}
            (Some(_), _) => return Err(StoreError::Lost { path: shown }),
            (None, Some(have)) => write_marker(&marker, have)?,
            (None, None) => {
                let id = crate::token::hex(&crate::token::random_bytes(16).map_err(|e| {
                    StoreError::Marker {
                        path: marker.display().to_string(),
                        source: e,
                    }
                })?);
                trees.meta.insert("id", id.as_bytes())?;
                trees.db.flush()?;
                write_marker(&marker, &id)?;
            }
        }
        match trees.meta.get("schema")? {
            None => {
                trees.meta.insert("schema", SCHEMA.to_string().as_bytes())?;
                trees.db.flush()?;
            }
            Some(raw) => {
                let found: u32 = std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key: "meta/schema".into(),
                        message: "not a number".into(),
                    })?;
                if found > SCHEMA {
                    return Err(StoreError::Newer { path: shown, found });
                }
                if found < SCHEMA {
                    // Written by this program from now on: an older one refuses it.
                    trees.meta.insert("schema", SCHEMA.to_string().as_bytes())?;
                    trees.db.flush()?;
                }
            }
        }
        replay_marks(&trees, [first_replay, second_replay])?;
        Ok(trees)
    }

    /// The open trees, or an error while the database is closed for a reopen.
    fn t(&self) -> Result<Trees, StoreError> {
        self.trees
            .read()
            .expect("store lock")
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// Whether a write failed since the last successful [`Store::recover`].
    pub fn is_broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Notes that writing failed: the daemon stops sending and tries [`Store::recover`].
    pub fn mark_broken(&self) {
        self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// After a write failure (a full disk) sled keeps failing until the database is opened
    /// again: closes it, opens it again from disk (what was flushed before the failure) and
    /// checks that it can be written. Fails while the cause lasts.
    pub fn recover(&self, now_ms: i64) -> Result<(), StoreError> {
        {
            let mut trees = self.trees.write().expect("store lock");
            if let Some(old) = trees.take() {
                // Whatever the old one holds unflushed is lost either way; drop it first so
                // the new one can take the file lock.
                drop(old);
            }
            let dir = self.path.parent().unwrap_or(&self.path);
            *trees = Some(Store::open_trees(dir, self.cache_bytes)?);
        }
        self.probe_write(now_ms)?;
        self.broken
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Every entry of one tree; a single error while the database is being reopened.
    fn iter_of(
        &self,
        pick: fn(&Trees) -> &sled::Tree,
    ) -> Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> {
        match self.t() {
            Ok(t) => Box::new(pick(&t).iter()),
            Err(_) => Box::new(std::iter::once(Err(sled::Error::Unsupported(
                "the state database is being reopened".into(),
            )))),
        }
    }

    /// Makes every write so far durable, the marks of sent alerts too.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.written((|| -> Result<(), StoreError> {
            let t = self.t()?;
            t.db.flush()?;
            sync_marks(&t)
        })())
    }

    /// [`Store::flush`], the database's part without blocking the caller.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        let t = self.t()?;
        let flushed = match t.db.flush_async().await {
            Ok(_) => sync_marks(&t),
            Err(e) => Err(e.into()),
        };
        self.written(flushed)
    }

    /// Passes a write's result on, noting a failure (see [`Store::mark_broken`]).
    fn written<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result
            && !matches!(e, StoreError::Corrupt { .. } | StoreError::Newer { .. })
        {
            self.mark_broken();
        }
        result
    }

    // --- meta

    fn meta_i64(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.t()?.meta.get(key)?.and_then(|v| decimal(&v)))
    }

    fn set_meta_i64(&self, key: &str, value: i64) -> Result<(), StoreError> {
        self.written((|| -> Result<(), StoreError> {
            let t = self.t()?;
            t.meta.insert(key, value.to_string().as_bytes())?;
            Ok(())
        })())
    }

    /// Writes and flushes a marker: whether the state can be written right now.
    pub fn probe_write(&self, now_ms: i64) -> Result<(), StoreError> {
        self.set_meta_i64("probe", now_ms)?;
        self.flush()?;
        // The logs of sent mails beside it too: sled may still have room in its own files
        // on a full disk, and folding needs the logs.
        let dir = self.sent_logs();
        let failed = |e: std::io::Error| StoreError::Log {
            path: dir.display().to_string(),
            source: e,
        };
        crate::output::create_private_dir(&dir).map_err(failed)?;
        let probe = dir.join(".probe");
        let written = std::fs::write(&probe, [0u8; 8192]);
        let _ = std::fs::remove_file(&probe);
        written.map_err(failed)?;
        // And the day's logs a fold appends to (today's, and yesterday's for the mails sent
        // before midnight): one that cannot be opened so (made read-only or immutable) stops
        // folding as surely as a full disk. Else the state would be said writable again
        // every second, and the next fold fail again.
        for day_ms in [now_ms, now_ms - 86_400_000] {
            let day = chrono::DateTime::from_timestamp_millis(day_ms)
                .unwrap_or_default()
                .format("%Y-%m-%d");
            let log = dir.join(format!("{day}{LOG_SUFFIX}"));
            if std::fs::symlink_metadata(&log).is_ok() {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .map_err(|source| StoreError::Log {
                        path: log.display().to_string(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// When the mail side first started (unix seconds): the store's articles then were the
    /// baseline, mailed to nobody. `None` before the first start.
    pub fn baseline(&self) -> Result<Option<i64>, StoreError> {
        self.meta_i64("baseline")
    }

    pub fn set_baseline(&self, at: i64) -> Result<(), StoreError> {
        self.set_meta_i64("baseline", at)
    }

    /// The tick (unix seconds) of the last digest run of `schedule`.
    pub fn last_digest(&self, schedule: Schedule) -> Result<Option<i64>, StoreError> {
        self.meta_i64(&format!("digest\0{}", schedule.as_str()))
    }

    pub fn set_last_digest(&self, schedule: Schedule, tick: i64) -> Result<(), StoreError> {
        self.set_meta_i64(&format!("digest\0{}", schedule.as_str()), tick)
    }

    /// When digests of `schedule` were first scheduled (unix seconds): the first tick after
    /// it is the first digest.
    pub fn digest_start(&self, schedule: Schedule) -> Result<Option<i64>, StoreError> {
        self.meta_i64(&format!("digest-start\0{}", schedule.as_str()))
    }

    pub fn set_digest_start(&self, schedule: Schedule, at: i64) -> Result<(), StoreError> {
        self.set_meta_i64(&format!("digest-start\0{}", schedule.as_str()), at)
    }

    // --- subscribers

    pub fn subscriber(&self, email: &str) -> Result<Option<Subscriber>, StoreError> {
        let t = self.t()?;
        t.subscribers
            .get(email)?
            .map(|v| decode(email.as_bytes(), &v))
            .transpose()
    }

    /// An active subscriber without a number in the compacted records is given one now,
    /// once: the fold of their first mail then has only a bit to set.
    pub fn put_subscriber(&self, sub: &Subscriber) -> Result<(), StoreError> {
        use sled::Transactional;
        self.written((|| -> Result<(), StoreError> {
            let t = self.t()?;
            if sub.state != SubState::Active || t.number_of.contains_key(sub.email.as_bytes())? {
                t.subscribers.insert(sub.email.as_bytes(), encode(sub))?;
                return Ok(());
            }
            let value = encode(sub);
            let result = (&t.subscribers, &t.numbers, &t.number_of, &t.meta).transaction(
                |(subscribers, numbers, number_of, meta)| {
                    subscribers.insert(sub.email.as_bytes(), value.as_slice())?;
                    let mut next = None;
                    number_for((numbers, number_of, meta), &sub.email, &mut next)?;
                    if let Some(n) = next {
                        meta.insert("next_number", n.to_string().as_bytes())?;
                    }
                    Ok(())
                },
            );
            tx_result(result)
        })())
    }

    /// Removes a subscriber, and its address from the compacted records' numbers.
    pub fn remove_subscriber(&self, email: &str) -> Result<bool, StoreError> {
        self.written((|| -> Result<bool, StoreError> {
            let t = self.t()?;
            if let Some(n) = t.number_of.remove(email)?
                && let Some(n) = decimal::<u32>(&n)
            {
                t.numbers.remove(n.to_be_bytes())?;
            }
            Ok(t.subscribers.remove(email)?.is_some())
        })())
    }

    /// The address a delivery id (a VERP token) stands for: from its record, or from its
    /// key once the record is folded into its article's totals.
    pub fn email_by_id(&self, id: &str) -> Result<Option<String>, StoreError> {
        let t = self.t()?;
        let Some(key) = t.ids.get(id)? else {
            return Ok(None);
        };
        let key = String::from_utf8_lossy(&key).into_owned();
        Ok(match self.delivery(&key)? {
            Some(d) => Some(d.email),
            None => email_of_key(&key).map(str::to_owned),
        })
    }

    /// Whether the inbox already acted on the message with this digest.
    pub fn inbox_seen(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.t()?.inbox.contains_key(digest)?)
    }

    /// Records that the inbox acted on a message (what it found), at `now_ms`.
    pub fn inbox_done(&self, digest: &str, found: &str, now_ms: i64) -> Result<(), StoreError> {
        self.written((|| -> Result<(), StoreError> {
            let t = self.t()?;
            t.inbox
                .insert(digest, format!("{now_ms} {found}").as_bytes())?;
            Ok(())
        })())
    }

    /// Writes every record as JSON Lines, tree by tree, in key order: the backup and the
    /// upgrade path across sled's formats. Returns how many records.
    pub fn export(&self, out: &mut dyn std::io::Write) -> Result<usize, StoreError> {
        use base64::Engine as _;
        // Nothing is folded or planned meanwhile: no mail in both the outbox and the
        // totals, no fan-out cursor past mails the outbox lacks.
        let _books = self.hold_books();
        let t = self.t()?;
        // First, the schema it was written in: an older bantin refuses the export at its
        // first line (an unknown tree), before it writes anything.
        let mut write = |line: &ExportLine| {
            serde_json::to_writer(&mut *out, line).expect("serializable");
            out.write_all(b"\n").map_err(|e| StoreError::Corrupt {
                key: "export".into(),
                message: e.to_string(),
            })
        };
        write(&ExportLine {
            tree: SCHEMA_LINE.to_owned(),
            key: SCHEMA_LINE.to_owned(),
            key_b64: false,
            value: serde_json::Value::from(SCHEMA),
        })?;
        let mut n = 0;
        for (name, tree) in t.named() {
            for r in tree.iter() {
                let (k, v) = r?;
                if name == "meta" && *k == *MARKS_GENERATION.as_bytes() {
                    continue; // the journal's, which is not exported
                }
                let (key, key_b64) = match (name, std::str::from_utf8(&k)) {
                    ("queue", _) | (_, Err(_)) => {
                        (base64::engine::general_purpose::STANDARD.encode(&k), true)
                    }
                    (_, Ok(text)) => (text.to_owned(), false),
                };
                let value = match name {
                    name if JSON_TREES.contains(&name) => {
                        let json = v.get(1..).unwrap_or_default();
                        serde_json::from_slice(json).map_err(|e| StoreError::Corrupt {
                            key: format!("{name}/{key}"),
                            message: e.to_string(),
                        })?
                    }
                    _ => serde_json::Value::String(String::from_utf8_lossy(&v).into_owned()),
                };
                write(&ExportLine {
                    tree: name.to_owned(),
                    key,
                    key_b64,
                    value,
                })?;
                n += 1;
            }
        }
        // The marks a running daemon holds in memory, as the `sent` tree holds them after
        // a restart.
        for (key, mark) in t.marks.with_prefix("") {
            write(&ExportLine {
                tree: "sent".to_owned(),
                key,
                key_b64: false,
                value: serde_json::Value::String(mark.to_string()),
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// Reads an [`Store::export`] into this state, which must hold no subscribers and no
    /// deliveries. Returns how many records it wrote, and how many it left out as the
    /// exported state's own identity and schema (this state keeps its own).
    pub fn import(&self, input: impl std::io::BufRead) -> Result<(usize, usize), StoreError> {
        use base64::Engine as _;
        let t = self.t()?;
        if !t.subscribers.is_empty()
            || !t.outbox.is_empty()
            || !t.sent.is_empty()
            || t.marks.len() > 0
        {
            return Err(StoreError::NotEmpty);
        }
        let trees: std::collections::HashMap<&str, &sled::Tree> = t.named().into_iter().collect();
        // Every line is read and checked before anything is written: a bad line leaves the
        // state as empty as it was.
        let mut records: Vec<(&sled::Tree, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut own = 0;
        for (i, line) in input.lines().enumerate() {
            let bad = |message: String| StoreError::Corrupt {
                key: format!("line {}", i + 1),
                message,
            };
            let line = line.map_err(|e| bad(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let rec: ExportLine = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
            if rec.tree == SCHEMA_LINE {
                let found = rec.value.as_u64().unwrap_or(u64::MAX);
                if found > u64::from(SCHEMA) {
                    return Err(bad(format!(
                        "the export was written by a newer bantin (schema {}, this one \
                         reads {SCHEMA}); import it with that version or a newer one",
                        rec.value
                    )));
                }
                own += 1;
                continue;
            }
            let tree = trees
                .get(rec.tree.as_str())
                .ok_or_else(|| bad(format!("unknown tree '{}'", rec.tree)))?;
            let key = if rec.key_b64 {
                base64::engine::general_purpose::STANDARD
                    .decode(&rec.key)
                    .map_err(|e| bad(e.to_string()))?
            } else {
                rec.key.clone().into_bytes()
            };
            if rec.tree == "meta" && matches!(rec.key.as_str(), "id" | "schema" | MARKS_GENERATION)
            {
                own += 1;
                continue; // this state's own
            }
            let value = match rec.tree.as_str() {
                name if JSON_TREES.contains(&name) => {
                    let mut v = vec![VALUE_VERSION];
                    serde_json::to_writer(&mut v, &rec.value).expect("serializable");
                    v
                }
                _ => rec.value.as_str().unwrap_or_default().as_bytes().to_vec(),
            };
            records.push((*tree, key, value));
        }
        let n = records.len();
        for (tree, key, value) in records {
            tree.insert(key, value)?;
        }
        self.flush()?;
        Ok((n, own))
    }

    /// Deletes subscribers still pending whose last request came before `before` (unix
    /// seconds); returns how many.
    pub fn prune_pending(&self, before: i64) -> Result<usize, StoreError> {
        let stale: Vec<String> = self
            .subscribers()
            .filter_map(Result::ok)
            .filter(|s| s.state == SubState::Pending && s.updated < before)
            .map(|s| s.email)
            .collect();
        for email in &stale {
            self.remove_subscriber(email)?;
        }
        self.flush()?;
        Ok(stale.len())
    }

    /// Every subscriber, by address.
    pub fn subscribers(&self) -> impl Iterator<Item = Result<Subscriber, StoreError>> + '_ {
        self.iter_of(|t| &t.subscribers).map(|r| {
            let (k, v) = r?;
            decode(&k, &v)
        })
    }

    // --- articles known to the mail side

    pub fn known_article(&self, id: &str) -> Result<Option<KnownArticle>, StoreError> {
        let t = self.t()?;
        t.articles
            .get(id)?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    pub fn put_known_article(&self, id: &str, article: &KnownArticle) -> Result<(), StoreError> {
        self.written((|| -> Result<(), StoreError> {
            let t = self.t()?;
            t.articles.insert(id, encode(article))?;
            Ok(())
        })())
    }

    /// Forgets an article that went: a new one with its id is news again, told anew. Its
    /// corrections stay (the delivery report, and the numbers of later ones).
    pub fn forget_article(&self, id: &str) -> Result<(), StoreError> {
        self.written((|| -> Result<(), StoreError> {
            let t = self.t()?;
            t.articles.remove(id)?;
            t.versions.remove(id)?;
            // Its planning stops; the record stays, so that the article written again soon
            // after does not mail everyone once more. One that knows the article by its
            // fingerprint also keeps who was told, as long as it stays: the article may be
            // back under another name (moved), and its corrections are for them.
            let mut keeps_readers = false;
            if let Some(v) = t.fanout.get(id)? {
                let mut f: Fanout = decode(id.as_bytes(), &v)?;
                f.done = true;
                keeps_readers = !f.fingerprint.is_empty();
                t.fanout.insert(id, encode(&f))?;
            }
            if !keeps_readers {
                forget_readers(&t, id)?;
            }
            Ok(())
        })())
    }

    /// Known articles, any order.
    pub fn known_articles(
        &self,
    ) -> impl Iterator<Item = Result<(String, KnownArticle), StoreError>> + '_ {
        self.iter_of(|t| &t.articles).map(|r| {
            let (k, v) = r?;
            Ok((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?))
        })
    }

    // --- outbox

    /// The delivery under `key`: on record, or an alert marked sent.
    pub fn delivery(&self, key: &str) -> Result<Option<Delivery>, StoreError> {
        let t = self.t()?;
        if let Some(v) = t.outbox.get(key)? {
            return decode(key.as_bytes(), &v).map(Some);
        }
        if let Some(mark) = t.marks.get(key) {
            return Ok(mark.delivery(key));
        }
        Ok(t.sent
            .get(key)?
            .and_then(|v| Mark::parse(&v)?.delivery(key)))
    }

    /// Adds a delivery and queues it, unless one with the same key exists. Returns whether it
    /// was added.
    pub fn enqueue(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        self.written((|| -> Result<bool, StoreError> {
            let t = self.t()?;
            let key = delivery.key();
            let added = t
                .outbox
                .compare_and_swap(
                    key.as_bytes(),
                    None as Option<&[u8]>,
                    Some(encode(delivery)),
                )?
                .is_ok();
            if added {
                t.queue
                    .insert(queue_key(LANE_FRESH, delivery.next_ms, &key), &[])?;
                if self.indexes_ids() {
                    t.ids.insert(delivery_id(&key), key.as_bytes())?;
                }
            }
            Ok(added)
        })())
    }

    /// Holds the books (see the field): mails are neither folded nor planned meanwhile.
    pub fn hold_books(&self) -> std::sync::MutexGuard<'_, ()> {
        self.books
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether new deliveries are indexed by id (see [`Store::set_ids`]; on by default).
    fn indexes_ids(&self) -> bool {
        self.ids.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Index new deliveries by id, for the VERP return path and mailto unsubscribe
    /// addresses (`mail.return_path`), or not.
    pub fn set_ids(&self, on: bool) {
        self.ids.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts the alert fan-out of `article`, unless it has one, or had one that began at
    /// `since_ms` or later (one done long ago is started anew: the article was deleted and
    /// written again). Returns whether it started.
    pub fn start_fanout(
        &self,
        article: &str,
        fanout: &Fanout,
        since_ms: i64,
    ) -> Result<bool, StoreError> {
        self.written((|| -> Result<bool, StoreError> {
            let t = self.t()?;
            let old = t.fanout.get(article.as_bytes())?;
            if let Some(v) = &old {
                let f: Fanout = decode(article.as_bytes(), v)?;
                if !f.done || f.created_ms >= since_ms {
                    return Ok(false);
                }
                // Another article under an old id: the readers kept of the one that went
                // are not its own.
                if t.articles.get(article.as_bytes())?.is_none() {
                    forget_readers(&t, article)?;
                }
            }
            Ok(t.fanout
                .compare_and_swap(article.as_bytes(), old, Some(encode(fanout)))?
                .is_ok())
        })())
    }

    /// The article, other than `article`, whose fan-out with this fingerprint began at
    /// `since_ms` or later (the same article under another name), if any.
    pub fn fanout_like(
        &self,
        article: &str,
        fingerprint: &str,
        since_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        if fingerprint.is_empty() {
            return Ok(None);
        }
        let t = self.t()?;
        for r in t.fanout.iter() {
            let (k, v) = r?;
            let f: Fanout = decode(&k, &v)?;
            if f.fingerprint == fingerprint && f.created_ms >= since_ms && *k != *article.as_bytes()
            {
                return Ok(Some(String::from_utf8_lossy(&k).into_owned()));
            }
        }
        Ok(None)
    }

    /// Forgets the fan-outs done that began before `before_ms`.
    pub fn prune_fanouts(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.written((|| -> Result<usize, StoreError> {
            let t = self.t()?;
            let mut removed = 0;
            for r in t.fanout.iter() {
                let (k, v) = r?;
                let f: Fanout = decode(&k, &v)?;
                if f.done && f.created_ms < before_ms {
                    t.fanout.remove(&k)?;
                    // Who was told of an article that went, kept with its fan-out record.
                    let id = String::from_utf8_lossy(&k);
                    if t.articles.get(&k)?.is_none() {
                        forget_readers(&t, &id)?;
                    }
                    removed += 1;
                }
            }
            Ok(removed)
        })())
    }

    /// The fan-out record of `article`, if any.
    pub fn fanout(&self, article: &str) -> Result<Option<Fanout>, StoreError> {
        let t = self.t()?;
        t.fanout
            .get(article.as_bytes())?
            .map(|v| decode(article.as_bytes(), &v))
            .transpose()
    }

    /// The fan-outs still being planned, oldest first.
    pub fn fanouts(&self) -> Result<Vec<(String, Fanout)>, StoreError> {
        let t = self.t()?;
        let mut out = Vec::new();
        for r in t.fanout.iter() {
            let (k, v) = r?;
            let f: Fanout = decode(&k, &v)?;
            if !f.done {
                out.push((String::from_utf8_lossy(&k).into_owned(), f));
            }
        }
        out.sort_by_key(|(id, f)| (f.created_ms, id.clone()));
        Ok(out)
    }

    /// Deliveries waiting in the queue, counted up to `up_to`.
    pub fn queued(&self, up_to: usize) -> usize {
        self.t().map_or(0, |t| t.queue.iter().take(up_to).count())
    }

    /// Subscribers whose address sorts after `after`, in address order.
    pub fn subscribers_after(
        &self,
        after: &str,
    ) -> impl Iterator<Item = Result<Subscriber, StoreError>> + '_ {
        let range = self.t().ok().map(|t| {
            t.subscribers.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            ))
        });
        range.into_iter().flatten().map(|r| {
            let (k, v) = r?;
            decode(&k, &v)
        })
    }

    /// Whether the outbox holds a delivery under `key`, or marks it sent.
    pub fn has_delivery(&self, key: &str) -> Result<bool, StoreError> {
        let t = self.t()?;
        Ok(
            t.outbox.contains_key(key)?
                || t.marks.get(key).is_some()
                || t.sent.contains_key(key)?,
        )
    }

    /// Who an alert of `article` was sent to, as folded into its compacted record: asked of
    /// a fan-out planned again after a restart, whose mails sent meanwhile may be folded.
    pub fn alerted(&self, article: &str) -> Result<Alerted, StoreError> {
        let t = self.t()?;
        let compacted: Compacted = match t.compact.get(article)? {
            Some(v) => decode(article.as_bytes(), &v)?,
            None => Compacted::default(),
        };
        let bits = compacted
            .told
            .get(&format!("a\0{article}\0"))
            .map(|b64| bitmap_decode(b64))
            .unwrap_or_default();
        Ok(Alerted {
            bits,
            number_of: t.number_of,
        })
    }

    /// Records the first outcome of an alert planned in memory (a fan-out's window): its
    /// id when ids are indexed; sent, a mark (see [`Mark`]); else its record, and its queue
    /// entry when it stays pending. Says what makes it durable.
    pub fn record_planned(&self, key: &str, delivery: &Delivery) -> Result<Recorded, StoreError> {
        let sent =
            delivery.state == DeliveryState::Sent && matches!(delivery.kind, Kind::Alert { .. });
        self.written((|| -> Result<(), StoreError> {
            let t = self.t()?;
            if self.indexes_ids() {
                t.ids.insert(delivery_id(key).as_bytes(), key.as_bytes())?;
            }
            if sent {
                let mark = Mark {
                    created_ms: delivery.created_ms,
                    updated_ms: delivery.updated_ms,
                };
                // Into the current journal and into memory at once: a fold takes both.
                let mut marks = t.marks.lock();
                t.marks.journals[marks.current]
                    .hold()
                    .append(key.as_bytes(), mark.to_string().as_bytes());
                marks.fresh.insert(key.to_owned(), mark);
            }
            Ok(())
        })())?;
        if sent {
            return Ok(Recorded::Mark);
        }
        self.update(key, delivery, None)?;
        Ok(Recorded::Record)
    }

    /// Makes every mark recorded so far durable (see [`crate::journal`]): one write and one
    /// `fdatasync` of the journal, on the calling thread (about 0.1 ms).
    pub fn sync_marks(&self) -> Result<(), StoreError> {
        let t = self.t()?;
        self.written(sync_marks(&t))
    }

    /// Moves a fan-out's record on to `next` (the windows before it are settled), unless it
    /// was ended meanwhile (the article deleted) or is another fan-out of the article.
    pub fn advance_fanout(&self, article: &str, next: &Fanout) -> Result<(), StoreError> {
        self.written((|| -> Result<(), StoreError> {
            let t = self.t()?;
            let mut failed = None;
            t.fanout.fetch_and_update(article.as_bytes(), |old| {
                let old = old?;
                match decode::<Fanout>(article.as_bytes(), old) {
                    Ok(f) if f.done || f.created_ms != next.created_ms => Some(old.to_vec()),
                    Ok(_) => Some(encode(next)),
                    Err(e) => {
                        failed = Some(e);
                        Some(old.to_vec())
                    }
                }
            })?;
            failed.map_or(Ok(()), Err)
        })())
    }

    /// Records a delivery's new state; `queued` is its current queue entry, replaced by the
    /// new one when it stays pending.
    pub fn update(
        &self,
        key: &str,
        delivery: &Delivery,
        queued: Option<&Queued>,
    ) -> Result<(), StoreError> {
        self.written((|| -> Result<(), StoreError> {
            let t = self.t()?;
            // Who a digest told is written before the delivery says sent: a crash in
            // between leaves it pending (sent once more), never sent and untold. (An alert's
            // own record says whom it told: no second record.)
            if delivery.state == DeliveryState::Sent
                && let Kind::Digest { articles, .. } = &delivery.kind
            {
                let told = Told {
                    key: key.to_owned(),
                    at_ms: delivery.updated_ms,
                    by: "digest".to_owned(),
                };
                for article in articles {
                    // The first mail that told of it is the one corrections answer.
                    let _ = t.told.compare_and_swap(
                        told_key(article, &delivery.email),
                        None as Option<&[u8]>,
                        Some(encode(&told)),
                    )?;
                }
            }
            t.outbox.insert(key.as_bytes(), encode(delivery))?;
            if let Some(q) = queued {
                t.queue.remove(queue_key(q.lane, q.next_ms, &q.key))?;
            }
            if delivery.state == DeliveryState::Pending {
                let lane = delivery.lane();
                t.queue
                    .insert(queue_key(lane, delivery.next_ms, key), &[])?;
            }
            Ok(())
        })())
    }

    /// Queue entries of `lane` due at `now_ms`, in order, skipping `skip`; at most `limit`.
    pub fn due(
        &self,
        lane: u8,
        now_ms: i64,
        limit: usize,
        skip: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Queued>, StoreError> {
        let t = self.t()?;
        let mut out = Vec::new();
        for r in t.queue.scan_prefix([lane]) {
            let (k, _) = r?;
            let Some(q) = parse_queue_key(&k) else {
                continue;
            };
            if q.next_ms > now_ms || out.len() >= limit {
                break;
            }
            if !skip(&q.key) {
                out.push(q);
            }
        }
        Ok(out)
    }

    /// The earliest queued time, any lane.
    pub fn next_queued_ms(&self) -> Result<Option<i64>, StoreError> {
        let t = self.t()?;
        let mut next = None;
        for lane in [LANE_FRESH, LANE_RETRY] {
            if let Some(r) = t.queue.scan_prefix([lane]).next() {
                let (k, _) = r?;
                if let Some(q) = parse_queue_key(&k) {
                    next = Some(next.map_or(q.next_ms, |n: i64| n.min(q.next_ms)));
                }
            }
        }
        Ok(next)
    }

    pub fn queue_len(&self) -> usize {
        self.t().map_or(0, |t| t.queue.len())
    }

    /// Puts back in the queue every pending delivery that lost its entry (a crash between
    /// the two writes); returns how many.
    pub fn repair_queue(&self) -> Result<usize, StoreError> {
        self.written((|| -> Result<usize, StoreError> {
            let t = self.t()?;
            let mut queued = std::collections::HashSet::new();
            for r in t.queue.iter() {
                let (k, _) = r?;
                if let Some(q) = parse_queue_key(&k) {
                    queued.insert(q.key);
                }
            }
            let mut repaired = 0;
            for r in t.outbox.iter() {
                let (k, v) = r?;
                let d: Delivery = decode(&k, &v)?;
                let key = String::from_utf8_lossy(&k).into_owned();
                if d.state == DeliveryState::Pending && !queued.contains(&key) {
                    let lane = d.lane();
                    t.queue.insert(queue_key(lane, d.next_ms, &key), &[])?;
                    repaired += 1;
                }
            }
            Ok(repaired)
        })())
    }

    /// The alerts of one article, to anyone, in any state.
    pub fn alerts_of(
        &self,
        article: &str,
    ) -> impl Iterator<Item = Result<(String, Delivery), StoreError>> + '_ {
        let prefix = format!("a\0{article}\0");
        type Scan = Box<dyn Iterator<Item = Result<(String, Delivery), StoreError>>>;
        let scan: Scan = match self.t() {
            Ok(t) => {
                let records = t.outbox.scan_prefix(&prefix).map(|r| {
                    let (k, v) = r?;
                    Ok((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?))
                });
                let marked = t.sent.scan_prefix(&prefix).filter_map(|r| {
                    let (k, v) = match r {
                        Ok(kv) => kv,
                        Err(e) => return Some(Err(e.into())),
                    };
                    let key = String::from_utf8_lossy(&k).into_owned();
                    let d = Mark::parse(&v)?.delivery(&key)?;
                    Some(Ok((key, d)))
                });
                let held = t
                    .marks
                    .with_prefix(&prefix)
                    .into_iter()
                    .filter_map(|(key, mark)| Some(Ok((key.clone(), mark.delivery(&key)?))));
                Box::new(records.chain(marked).chain(held))
            }
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        scan
    }

    /// Who was told of `article`, by address, each with the mail that told them: the recent
    /// ones from their records, the older ones from the compacted bitmaps (their time is
    /// then 0: only the totals keep times).
    pub fn told_of(&self, article: &str) -> Result<Vec<(String, Told)>, StoreError> {
        let t = self.t()?;
        // Each source in the order its mails went: compacted alerts, alerts on record,
        // compacted digests (older runs first), digests on record. The first that told
        // someone is the mail their correction answers.
        let compacted: Compacted = match t.compact.get(article)? {
            Some(v) => decode(article.as_bytes(), &v)?,
            None => Compacted::default(),
        };
        let mut groups: Vec<(&String, &String)> = compacted.told.iter().collect();
        groups.sort_by_key(|(group, _)| {
            let run: i64 = group
                .trim_end_matches('\0')
                .rsplit('\0')
                .next()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            (!group.starts_with("a\0"), run)
        });
        let (alert_groups, digest_groups): (Vec<_>, Vec<_>) =
            groups.into_iter().partition(|(g, _)| g.starts_with("a\0"));
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let from_bits = |groups: Vec<(&String, &String)>,
                         out: &mut Vec<(String, Told)>,
                         seen: &mut std::collections::HashSet<String>|
         -> Result<(), StoreError> {
            for (group, b64) in groups {
                let by = if group.starts_with("a\0") {
                    "alert"
                } else {
                    "digest"
                };
                for n in bitmap_numbers(&bitmap_decode(b64)) {
                    let Some(email) = t.numbers.get(n.to_be_bytes())? else {
                        continue; // the address was removed since
                    };
                    let email = String::from_utf8_lossy(&email).into_owned();
                    if seen.insert(email.clone()) {
                        let told = Told {
                            key: format!("{group}{email}"),
                            at_ms: 0,
                            by: by.to_owned(),
                        };
                        out.push((email, told));
                    }
                }
            }
            Ok(())
        };
        from_bits(alert_groups, &mut out, &mut seen)?;
        for r in self.alerts_of(article) {
            let (key, d) = r?;
            if d.state == DeliveryState::Sent && seen.insert(d.email.clone()) {
                let told = Told {
                    key,
                    at_ms: d.updated_ms,
                    by: "alert".to_owned(),
                };
                out.push((d.email, told));
            }
        }
        from_bits(digest_groups, &mut out, &mut seen)?;
        let prefix = told_key(article, "");
        for r in t.told.scan_prefix(&prefix) {
            let (k, v) = r?;
            let email = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if seen.insert(email.clone()) {
                out.push((email, decode(&k, &v)?));
            }
        }
        Ok(out)
    }

    /// The version of an article people were last told.
    pub fn version(&self, article: &str) -> Result<Option<crate::correction::Version>, StoreError> {
        let t = self.t()?;
        t.versions
            .get(article)?
            .map(|v| decode(article.as_bytes(), &v))
            .transpose()
    }

    pub fn put_version(
        &self,
        article: &str,
        version: &crate::correction::Version,
    ) -> Result<(), StoreError> {
        self.written((|| -> Result<(), StoreError> {
            self.t()?.versions.insert(article, encode(version))?;
            Ok(())
        })())
    }

    pub fn correction(&self, article: &str, n: u32) -> Result<Option<Correction>, StoreError> {
        let key = correction_key(article, n);
        let t = self.t()?;
        t.corrections
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    pub fn put_correction(&self, article: &str, c: &Correction) -> Result<(), StoreError> {
        self.written((|| -> Result<(), StoreError> {
            self.t()?
                .corrections
                .insert(correction_key(article, c.n), encode(c))?;
            Ok(())
        })())
    }

    /// The corrections of an article, oldest first.
    pub fn corrections_of(&self, article: &str) -> Result<Vec<Correction>, StoreError> {
        let t = self.t()?;
        let mut prefix = article.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for r in t.corrections.scan_prefix(prefix) {
            let (k, v) = r?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    pub fn bulletin(&self, schedule: Schedule, date: &str) -> Result<Option<Bulletin>, StoreError> {
        let key = format!("{}\0{date}", schedule.as_str());
        let t = self.t()?;
        t.bulletins
            .get(&key)?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    pub fn put_bulletin(&self, b: &Bulletin) -> Result<(), StoreError> {
        self.written((|| -> Result<(), StoreError> {
            let key = format!("{}\0{}", b.schedule.as_str(), b.date);
            self.t()?.bulletins.insert(key, encode(b))?;
            Ok(())
        })())
    }

    /// Every bulletin, by schedule then date.
    pub fn bulletins(&self) -> Result<Vec<Bulletin>, StoreError> {
        let t = self.t()?;
        let mut out = Vec::new();
        for r in t.bulletins.iter() {
            let (k, v) = r?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Deliveries whose key starts with `prefix`, in any state.
    pub fn deliveries_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Delivery)>, StoreError> {
        let t = self.t()?;
        let mut out = Vec::new();
        for r in t.outbox.scan_prefix(prefix) {
            let (k, v) = r?;
            out.push((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Compacts finished deliveries (sent, failed, cancelled) last updated before
    /// `before_ms`: their full records go; what later work needs stays, in a few bits each —
    /// per-article, per-correction and per-digest-run totals (the delivery reports), and for
    /// every mail that told someone of an article, that person's number in a bitmap of the
    /// article (a correction reaches them and answers the Message-ID, which the key gives).
    /// Returns how many deliveries were compacted.
    pub fn compact_finished(&self, before_ms: i64) -> Result<usize, StoreError> {
        let _books = self.hold_books();
        self.written((|| -> Result<usize, StoreError> {
            let t = self.t()?;
            let mut done = 0;
            let mut chunk: Vec<(sled::IVec, Delivery)> = Vec::new();
            for r in t.outbox.iter() {
                let (k, v) = r?;
                let d: Delivery = decode(&k, &v)?;
                if d.state == DeliveryState::Pending || d.updated_ms >= before_ms {
                    continue;
                }
                chunk.push((k, d));
                if chunk.len() >= COMPACT_CHUNK {
                    done += compact_chunk(&t, &chunk, true, None)?;
                    chunk.clear();
                }
            }
            if !chunk.is_empty() {
                done += compact_chunk(&t, &chunk, true, None)?;
            }
            Ok(done)
        })())
    }

    /// Folds sent alerts and digests into their articles' compacted records at once: the
    /// outbox keeps what is pending, failed or cancelled, and sled's memory does not grow
    /// with every mail sent. Each full record is first appended to the day's log of sent
    /// mails (`sent/YYYY-MM-DD.jsonl.gz` in the state folder, kept `mail.keep_days`). Keys that
    /// are not such records are skipped. Returns how many were folded.
    pub fn fold_sent(&self, keys: &[String]) -> Result<usize, StoreError> {
        let _books = self.hold_books();
        let t = self.t()?;
        // The marks held in memory, all of them, whoever sent them.
        let (held, generation) = self.written(take_marks(&t))?;
        if keys.is_empty() && held.is_empty() {
            return Ok(0);
        }
        // A mark also in the `sent` tree (put back by a reopen, then sent again) is folded
        // from there, once. The tree is empty but after a crash or a reopen.
        let put_back = |k: &str| -> Result<bool, StoreError> {
            Ok(!t.sent.is_empty() && t.sent.contains_key(k)?)
        };
        let mut chunk: Vec<(sled::IVec, Delivery)> = Vec::with_capacity(held.len());
        let mut from_sent = Vec::new();
        for (k, m) in held.iter() {
            if put_back(k)? {
                from_sent.push(k);
            } else if let Some(d) = m.delivery(k) {
                chunk.push((sled::IVec::from(k.as_bytes()), d));
            }
        }
        let marked = chunk.len();
        // A key given twice (a mail sent again after a lost write) is folded once.
        let keys: std::collections::BTreeSet<&String> = keys.iter().chain(from_sent).collect();
        for key in keys {
            if held.contains_key(key.as_str()) && !put_back(key)? {
                continue;
            }
            let d: Delivery = match t.outbox.get(key.as_bytes())? {
                Some(v) => decode(key.as_bytes(), &v)?,
                None => match t.sent.get(key.as_bytes())? {
                    Some(v) => match Mark::parse(&v).and_then(|m| m.delivery(key)) {
                        Some(d) => d,
                        None => continue,
                    },
                    None => continue,
                },
            };
            let foldable = match &d.kind {
                Kind::Alert { .. } => true,
                // A digest run not yet recorded as done (a crash while planning it) plans
                // again by the keys on record: its mails stay until it is.
                Kind::Digest { schedule, run, .. } => self
                    .last_digest(*schedule)?
                    .is_some_and(|done| *run <= done),
                _ => false,
            };
            if d.state == DeliveryState::Sent && foldable {
                chunk.push((sled::IVec::from(key.as_bytes()), d));
            }
        }
        // Not written to the log (a full disk): not folded either, the records stay.
        self.log_sent(&chunk)?;
        self.written((|| -> Result<usize, StoreError> {
            let (marks, records) = chunk.split_at(marked);
            let mut done = 0;
            if !held.is_empty() {
                // In one transaction with the number of the journal that holds the marks
                // recorded since: a crash replays that journal only, or both.
                match compact_chunk(&t, marks, false, Some(generation)) {
                    Ok(n) => done += n,
                    Err(e @ StoreError::Corrupt { .. }) => {
                        // Into the `sent` tree, as after a crash (folded at the next start,
                        // the record at fault aside): the journal that holds them can be
                        // emptied, and the marks recorded since be folded.
                        set_aside(&t, &held, generation)?;
                        let_go_of_folded(&t)?;
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
                let_go_of_folded(&t)?;
            }
            for part in records.chunks(COMPACT_CHUNK) {
                done += compact_chunk(&t, part, false, None)?;
            }
            Ok(done)
        })())
    }

    /// Folds every sent alert and digest still on record (left by a crash between sending
    /// and folding).
    pub fn fold_all_sent(&self) -> Result<usize, StoreError> {
        let keys: Vec<String> = {
            let t = self.t()?;
            let mut keys = Vec::new();
            for r in t.outbox.iter() {
                let (k, _) = r?;
                if k.starts_with(b"a\0") || k.starts_with(b"d\0") {
                    keys.push(String::from_utf8_lossy(&k).into_owned());
                }
            }
            for r in t.sent.iter() {
                let (k, _) = r?;
                keys.push(String::from_utf8_lossy(&k).into_owned());
            }
            keys
        };
        self.fold_sent(&keys)
    }

    fn sent_logs(&self) -> std::path::PathBuf {
        self.path.with_file_name("sent")
    }

    /// Appends full records to the logs of sent mails, one file per day (UTC).
    fn log_sent(&self, records: &[(sled::IVec, Delivery)]) -> Result<(), StoreError> {
        use std::io::Write;
        if records.is_empty() {
            return Ok(());
        }
        let dir = self.sent_logs();
        let failed = |e: std::io::Error| StoreError::Log {
            path: dir.display().to_string(),
            source: e,
        };
        crate::output::create_private_dir(&dir).map_err(failed)?;
        /// A line of the log, written as it is (not through a `serde_json::Value`).
        #[derive(Serialize)]
        struct Line<'a> {
            delivery: &'a Delivery,
            key: std::borrow::Cow<'a, str>,
        }
        // By UTC day: the day's name is formatted once a file, not once a mail.
        let mut by_day: std::collections::BTreeMap<i64, Vec<u8>> = Default::default();
        for (k, d) in records {
            let line = by_day
                .entry(d.updated_ms.div_euclid(86_400_000))
                .or_default();
            let record = Line {
                delivery: d,
                key: String::from_utf8_lossy(k),
            };
            serde_json::to_writer(&mut *line, &record).expect("serializable");
            line.push(b'\n');
        }
        for (day, lines) in by_day {
            let day = chrono::DateTime::from_timestamp_millis(day * 86_400_000)
                .unwrap_or_default()
                .format("%Y-%m-%d");
            // One gzip member per fold, appended: the day's file reads as one stream.
            let path = dir.join(format!("{day}{LOG_SUFFIX}"));
            // The file named: the admin sees which one is in the way.
            let failed = |source| StoreError::Log {
                path: path.display().to_string(),
                source,
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(failed)?;
            let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            gz.write_all(&lines).map_err(failed)?;
            gz.finish().map_err(failed)?;
        }
        Ok(())
    }

    /// Removes the logs of sent mails of the days before `before_ms`, and the ids of their
    /// deliveries (a bounce that late is not attributed). Returns how many days it removed.
    pub fn prune_sent_logs(&self, before_ms: i64) -> Result<usize, StoreError> {
        let cutoff = chrono::DateTime::from_timestamp_millis(before_ms)
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string();
        let Ok(files) = std::fs::read_dir(self.sent_logs()) else {
            return Ok(0);
        };
        let mut days: Vec<std::path::PathBuf> = files
            .filter_map(|f| f.ok().map(|f| f.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str()?.strip_suffix(LOG_SUFFIX).map(str::to_owned))
                    .is_some_and(|day| *day < *cutoff)
            })
            .collect();
        days.sort();
        let t = self.t()?;
        for day in &days {
            // Without VERP no delivery was indexed by id: nothing to read, the day goes.
            let file = match std::fs::File::open(day) {
                Ok(file) if !t.ids.is_empty() => file,
                _ => {
                    let _ = std::fs::remove_file(day);
                    continue;
                }
            };
            // Line by line; a day cut short by a crash gives what it holds up to the cut.
            let lines = std::io::BufRead::lines(std::io::BufReader::new(
                flate2::read::MultiGzDecoder::new(file),
            ));
            for line in lines.map_while(Result::ok) {
                let line = line.as_str();
                let key = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["key"].as_str().map(str::to_owned));
                if let Some(key) = key {
                    self.written(
                        t.ids
                            .remove(delivery_id(&key).as_bytes())
                            .map_err(Into::into),
                    )?;
                }
            }
            let _ = std::fs::remove_file(day);
        }
        Ok(days.len())
    }

    /// What was compacted of an article's deliveries.
    pub fn compacted(&self, article: &str) -> Result<Option<Compacted>, StoreError> {
        let t = self.t()?;
        t.compact
            .get(article)?
            .map(|v| decode(article.as_bytes(), &v))
            .transpose()
    }

    /// The compacted mails of one digest run.
    pub fn run_counts(&self, schedule: Schedule, run: i64) -> Result<Counts, StoreError> {
        let key = format!("{}\0{run}", schedule.as_str());
        let t = self.t()?;
        Ok(match t.runs.get(&key)? {
            Some(v) => decode(key.as_bytes(), &v)?,
            None => Counts::default(),
        })
    }

    /// Counts of deliveries by state.
    /// Mails by state: those on record, and those folded into totals (alerts, digest runs
    /// and corrections; a confirmation is not counted once compacted).
    pub fn outbox_counts(&self) -> Result<[usize; 4], StoreError> {
        Ok(self.outbox_summary()?.0)
    }

    /// The pending mails the relay deferred (tried, and waiting to be tried again): how
    /// many, the latest reason, the next try. `None` when there are none.
    pub fn deferred(&self) -> Result<Option<Deferred>, StoreError> {
        Ok(self.outbox_summary()?.1)
    }

    /// [`Store::outbox_counts`] and [`Store::deferred`] in one walk of the outbox.
    pub fn outbox_summary(&self) -> Result<([usize; 4], Option<Deferred>), StoreError> {
        let t = self.t()?;
        let mut counts = [0; 4];
        let mut deferred: Option<(Deferred, i64)> = None;
        for r in t.outbox.iter() {
            let (k, v) = r?;
            let d: Delivery = decode(&k, &v)?;
            counts[DeliveryState::ALL
                .iter()
                .position(|s| *s == d.state)
                .unwrap_or(0)] += 1;
            // Tried and refused for now: a mail held back by a pause is not counted (no try
            // is counted then), the pause is what `status` tells of it.
            let (DeliveryState::Pending, Some(error), 1..) = (d.state, &d.error, d.attempts) else {
                continue;
            };
            match &mut deferred {
                Some((seen, latest)) => {
                    seen.count += 1;
                    seen.next_ms = seen.next_ms.min(d.next_ms);
                    seen.attempts = seen.attempts.max(d.attempts);
                    if d.updated_ms > *latest {
                        *latest = d.updated_ms;
                        seen.reason = error.clone();
                    }
                }
                None => {
                    let seen = Deferred {
                        count: 1,
                        reason: error.clone(),
                        next_ms: d.next_ms,
                        attempts: d.attempts,
                    };
                    deferred = Some((seen, d.updated_ms));
                }
            }
        }
        counts[1] += t.sent.len() + t.marks.len();
        let mut add = |c: &Counts| {
            counts[1] += c.sent;
            counts[2] += c.failed;
            counts[3] += c.cancelled;
        };
        for r in t.compact.iter() {
            let (k, v) = r?;
            add(&decode::<Compacted>(&k, &v)?.alerts);
        }
        for r in t.runs.iter() {
            let (k, v) = r?;
            add(&decode::<Counts>(&k, &v)?);
        }
        for r in t.corrections.iter() {
            let (k, v) = r?;
            add(&decode::<Correction>(&k, &v)?.compacted);
        }
        Ok((counts, deferred.map(|(seen, _)| seen)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(email: &str) -> Subscriber {
        Subscriber {
            email: email.into(),
            schedule: Schedule::Immediate,
            categories: vec![],
            state: SubState::Active,
            created: 1,
            updated: 1,
            confirmed: Some(1),
            confirm_sent: None,
            digest_until: None,
            bounce: None,
            soft_bounces: None,
            tokens_after: None,
        }
    }

    #[test]
    fn another_users_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        let foreign = if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
            dir.path()
        } else {
            // Owned by root, not by whoever runs the tests.
            Path::new("/")
        };
        let error = Store::open(foreign).unwrap_err().to_string();
        assert!(error.contains("belongs to the user"), "{error}");
        assert!(error.contains("runuser -u "), "{error}");
        assert!(!foreign.join("db").exists(), "nothing written");
    }

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_subscriber(&sub("a@x.vn")).unwrap();
            let d = Delivery::new(
                Kind::Alert {
                    article: "2020/a".into(),
                },
                "a@x.vn",
                1000,
            );
            assert!(store.enqueue(&d).unwrap());
            assert!(
                !store.enqueue(&d).unwrap(),
                "same key twice is one delivery"
            );
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.subscriber("a@x.vn").unwrap().unwrap(), sub("a@x.vn"));
        let due = store.due(LANE_FRESH, 1000, 10, &|_| false).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].key, "a\u{0}2020/a\u{0}a@x.vn");
        assert!(
            store
                .due(LANE_FRESH, 999, 10, &|_| false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn forgetting_an_article_forgets_who_was_told_but_keeps_its_corrections() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (article, email) in [("a", "x@x.vn"), ("ab", "y@x.vn")] {
            let digest = Kind::Digest {
                schedule: Schedule::Daily,
                run: 1,
                articles: vec![article.into()],
            };
            let mut d = Delivery::new(digest, email, 1000);
            store.enqueue(&d).unwrap();
            d.state = DeliveryState::Sent;
            store.update(&d.key(), &d, None).unwrap();
        }
        assert_eq!(store.told_of("a").unwrap().len(), 1, "'a' is not 'ab'");
        let v = crate::correction::Version {
            title: "T".into(),
            when: None,
            place: None,
            paragraphs: vec![],
        };
        store.put_version("a", &v).unwrap();
        store
            .put_correction(
                "a",
                &Correction {
                    n: 1,
                    reason: "r".into(),
                    at_ms: 1,
                    before: v.clone(),
                    after: v.clone(),
                    planned: 1,
                    compacted: Counts::default(),
                },
            )
            .unwrap();
        // An alert stays on record: its key keeps the article, if it comes back under its
        // id, from being alerted to them twice, so a correction answers the mail they got.
        let mut alert = Delivery::new(
            Kind::Alert {
                article: "a".into(),
            },
            "z@x.vn",
            1000,
        );
        store.enqueue(&alert).unwrap();
        alert.state = DeliveryState::Sent;
        store.update(&alert.key(), &alert, None).unwrap();
        store.forget_article("a").unwrap();
        let told: Vec<String> = store
            .told_of("a")
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(
            told,
            ["z@x.vn"],
            "a digest's told is forgotten, an alert's stays"
        );
        assert_eq!(store.version("a").unwrap(), None);
        assert_eq!(store.corrections_of("a").unwrap().len(), 1);
        assert_eq!(store.told_of("ab").unwrap().len(), 1, "others untouched");
    }

    #[test]
    fn retries_move_to_their_lane_and_finished_ones_leave_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut d = Delivery::new(Kind::Confirm { at: 5 }, "b@x.vn", 1000);
        store.enqueue(&d).unwrap();
        let q = store
            .due(LANE_FRESH, 2000, 10, &|_| false)
            .unwrap()
            .remove(0);
        d.attempts = 1;
        d.next_ms = 5000;
        store.update(&q.key, &d, Some(&q)).unwrap();
        assert!(
            store
                .due(LANE_FRESH, 9000, 10, &|_| false)
                .unwrap()
                .is_empty()
        );
        let q = store
            .due(LANE_RETRY, 9000, 10, &|_| false)
            .unwrap()
            .remove(0);
        assert_eq!(q.next_ms, 5000);
        d.state = DeliveryState::Sent;
        store.update(&q.key, &d, Some(&q)).unwrap();
        assert_eq!(store.queue_len(), 0);
        assert_eq!(store.outbox_counts().unwrap(), [0, 1, 0, 0]);
    }

    #[test]
    fn deferred_mails_are_those_tried_and_refused_for_now() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let put = |email: &str, attempts: u32, updated_ms: i64, next_ms: i64, error: &str| {
            let mut d = Delivery::new(Kind::Confirm { at: 5 }, email, 1000);
            store.enqueue(&d).unwrap();
            let q = store
                .due(LANE_FRESH, 2000, 10, &|_| false)
                .unwrap()
                .remove(0);
            (d.attempts, d.updated_ms, d.next_ms) = (attempts, updated_ms, next_ms);
            d.error = Some(error.into());
            store.update(&q.key, &d, Some(&q)).unwrap();
        };
        assert_eq!(store.deferred().unwrap(), None);
        // Held back by a pause: no try counted, not deferred.
        put("a@x.vn", 0, 3000, 3000, "smtp: 535 (at connect)");
        assert_eq!(store.deferred().unwrap(), None);
        put("b@x.vn", 1, 4000, 9000, "smtp: 451 first");
        put("c@x.vn", 3, 5000, 7000, "smtp: 451 latest");
        assert_eq!(
            store.deferred().unwrap(),
            Some(Deferred {
                count: 2,
                reason: "smtp: 451 latest".into(),
                next_ms: 7000,
                attempts: 3,
            })
        );
    }

    #[test]
    fn a_newer_schema_is_refused_and_bad_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let t = store.t().unwrap();
            t.meta.insert("schema", "99").unwrap();
            t.subscribers.insert("c@x.vn", &b"\x07{}"[..]).unwrap();
            store.flush().unwrap();
            let e = store.subscriber("c@x.vn").unwrap_err().to_string();
            assert!(e.contains("unknown record version 7"), "{e}");
        }
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("schema 99, newer than this bantin"), "{e}");
    }

    #[test]
    fn a_database_closed_a_moment_ago_is_opened_once_its_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        // Still open for a while as the second is opened, as a database is whose last
        // background work has not ended yet.
        let closing = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(first);
        });
        let second = Store::open(dir.path());
        closing.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err().map(|e| e.to_string()));
    }

    #[test]
    fn old_finished_deliveries_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut old = Delivery::new(Kind::Confirm { at: 1 }, "old@x.vn", 10);
        old.state = DeliveryState::Sent;
        store.update(&old.key(), &old, None).unwrap();
        let pending = Delivery::new(Kind::Confirm { at: 2 }, "wait@x.vn", 10);
        store.enqueue(&pending).unwrap();
        let mut recent = Delivery::new(Kind::Confirm { at: 3 }, "new@x.vn", 5000);
        recent.state = DeliveryState::Failed;
        store.update(&recent.key(), &recent, None).unwrap();
        assert_eq!(store.compact_finished(1000).unwrap(), 1);
        assert_eq!(store.outbox_counts().unwrap(), [1, 0, 1, 0]);
    }

    /// Sends `kind` to `email` at `at_ms` and records it sent.
    fn sent(store: &Store, kind: Kind, email: &str, at_ms: i64) -> String {
        let mut d = Delivery::new(kind, email, at_ms);
        store.enqueue(&d).unwrap();
        d.state = DeliveryState::Sent;
        d.attempts = 1;
        d.updated_ms = at_ms;
        store.update(&d.key(), &d, None).unwrap();
        d.key()
    }

    /// The day's log of sent mails in the state folder `dir`, as text.
    fn sent_log(dir: &std::path::Path, day: &str) -> String {
        let mut log = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(
                std::fs::File::open(dir.join(format!("sent/{day}.jsonl.gz"))).unwrap(),
            ),
            &mut log,
        )
        .unwrap();
        log
    }

    #[test]
    fn who_was_told_of_an_article_that_went_stays_with_its_fan_out_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fanout = |at: i64, fingerprint: &str| Fanout {
            created_ms: at,
            category: "A".into(),
            after: String::new(),
            planned: 0,
            done: false,
            fingerprint: fingerprint.into(),
        };
        let told = |id: &str| -> Vec<String> {
            store
                .told_of(id)
                .unwrap()
                .into_iter()
                .map(|(e, _)| e)
                .collect()
        };
        for (id, fingerprint) in [("moved", "A\0T\0 1"), ("plain", "")] {
            assert!(
                store
                    .start_fanout(id, &fanout(1_000, fingerprint), 0)
                    .unwrap()
            );
            let key = sent(&store, Kind::Alert { article: id.into() }, "p@x.vn", 1_000);
            assert_eq!(store.fold_sent(&[key]).unwrap(), 1);
            store.forget_article(id).unwrap();
        }
        // Known by its fingerprint, it may be back under another name: its readers stay.
        assert_eq!(told("moved"), ["p@x.vn"]);
        assert!(told("plain").is_empty());
        // Until its fan-out record goes.
        assert_eq!(store.prune_fanouts(5_000).unwrap(), 2);
        assert!(told("moved").is_empty());
        // And a new article under that id does not inherit them.
        assert!(
            store
                .start_fanout("again", &fanout(1_000, "A\0U\0 1"), 0)
                .unwrap()
        );
        let key = sent(
            &store,
            Kind::Alert {
                article: "again".into(),
            },
            "q@x.vn",
            1_000,
        );
        assert_eq!(store.fold_sent(&[key]).unwrap(), 1);
        store.forget_article("again").unwrap();
        assert!(
            store
                .start_fanout("again", &fanout(9_000, "A\0V\0 9"), 5_000)
                .unwrap()
        );
        assert!(told("again").is_empty());
    }

    #[test]
    fn a_digest_run_is_folded_only_once_it_is_recorded_as_done() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Kind::Digest {
            schedule: Schedule::Daily,
            run: 86_400,
            articles: vec!["tin".into()],
        };
        let key = sent(&store, digest, "a@x.vn", 1_000);
        // A crash while the run was planned: it plans again by the keys on record.
        assert_eq!(store.fold_sent(std::slice::from_ref(&key)).unwrap(), 0);
        assert!(store.delivery(&key).unwrap().is_some());
        store.set_last_digest(Schedule::Daily, 86_400).unwrap();
        assert_eq!(store.fold_sent(&[key]).unwrap(), 1);
        assert_eq!(store.run_counts(Schedule::Daily, 86_400).unwrap().sent, 1);
    }

    #[test]
    fn a_fan_out_done_is_not_started_again_until_it_is_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fanout = |at: i64| Fanout {
            created_ms: at,
            category: "THÔNG BÁO".into(),
            after: String::new(),
            planned: 0,
            done: false,
            fingerprint: String::new(),
        };
        assert!(store.start_fanout("tin", &fanout(1_000), 0).unwrap());
        let window = [Delivery::new(
            Kind::Alert {
                article: "tin".into(),
            },
            "a@x.vn",
            1_000,
        )];
        let done = Fanout {
            after: "a@x.vn".into(),
            planned: 1,
            done: true,
            ..fanout(1_000)
        };
        store.advance_fanout("tin", &done).unwrap();
        assert!(store.fanouts().unwrap().is_empty(), "nothing left to plan");
        // The alert is sent and folded: the outbox no longer knows the key.
        let key = window[0].key();
        let mut d = window[0].clone();
        d.state = DeliveryState::Sent;
        store.record_planned(&key, &d).unwrap();
        assert_eq!(store.fold_sent(&[key]).unwrap(), 1);
        // Noticed again (a retry, the file deleted and put back): not mailed again while
        // the fan-out is recent; a deleted article's fan-out is kept as done.
        assert!(!store.start_fanout("tin", &fanout(2_000), 500).unwrap());
        store.forget_article("tin").unwrap();
        assert!(!store.start_fanout("tin", &fanout(2_000), 500).unwrap());
        // Long after (keep_days), the same id is a new article.
        assert!(store.start_fanout("tin", &fanout(9_000), 5_000).unwrap());
        assert_eq!(
            store.prune_fanouts(5_000).unwrap(),
            0,
            "a running one stays"
        );
    }

    #[test]
    fn sent_alerts_fold_at_once_and_their_ids_last_as_long_as_their_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alert = || Kind::Alert {
            article: "ky-hop".into(),
        };
        let day = 1_700_000_000_000; // 2023-11-14 UTC
        let a = sent(&store, alert(), "a@x.vn", day);
        let b = sent(&store, alert(), "b@x.vn", day + 1);
        let waiting = Delivery::new(alert(), "c@x.vn", day);
        store.enqueue(&waiting).unwrap();
        // A key given twice, and one that is still pending: each counted once, the pending
        // one left alone.
        let keys = [a.clone(), b.clone(), a.clone(), waiting.key()];
        assert_eq!(store.fold_sent(&keys).unwrap(), 2);
        assert!(
            store.delivery(&a).unwrap().is_none(),
            "the full record is folded"
        );
        assert!(store.delivery(&waiting.key()).unwrap().is_some());
        assert_eq!(store.outbox_counts().unwrap(), [1, 2, 0, 0]);
        let mut told: Vec<String> = store
            .told_of("ky-hop")
            .unwrap()
            .into_iter()
            .map(|(email, t)| {
                assert_eq!(t.key, format!("a\0ky-hop\0{email}"), "the mail to answer");
                email
            })
            .collect();
        told.sort();
        assert_eq!(told, ["a@x.vn", "b@x.vn"]);
        // The day's log holds the full records; a bounce still finds its address.
        let log = sent_log(dir.path(), "2023-11-14");
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(log.contains("b@x.vn"), "{log}");
        assert_eq!(
            store.email_by_id(&delivery_id(&a)).unwrap().as_deref(),
            Some("a@x.vn")
        );
        // Once the log is older than kept, it goes, and the ids with it.
        assert_eq!(store.prune_sent_logs(day).unwrap(), 0, "not older yet");
        assert_eq!(store.prune_sent_logs(day + 86_400_000).unwrap(), 1);
        assert!(!dir.path().join("sent/2023-11-14.jsonl.gz").exists());
        assert_eq!(store.email_by_id(&delivery_id(&a)).unwrap(), None);
        assert_eq!(
            store.outbox_counts().unwrap(),
            [1, 2, 0, 0],
            "the totals stay"
        );
    }

    #[test]
    fn an_alert_sent_by_a_fan_out_is_a_mark_that_counts_tells_and_folds_like_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let day = 1_700_000_000_000; // 2023-11-14 UTC
        let alert = |email: &str| {
            let mut d = Delivery::new(
                Kind::Alert {
                    article: "ky-hop".into(),
                },
                email,
                day,
            );
            d.state = DeliveryState::Sent;
            d.attempts = 1;
            d.updated_ms = day + 5;
            d
        };
        let a = alert("a@x.vn");
        store.record_planned(&a.key(), &a).unwrap();
        // Refused for good: a full record, as any failed delivery.
        let mut b = alert("b@x.vn");
        b.state = DeliveryState::Failed;
        store.record_planned(&b.key(), &b).unwrap();
        // The mark is a few bytes, not the record.
        let t = store.t().unwrap();
        assert!(t.outbox.get(a.key()).unwrap().is_none());
        assert!(t.sent.is_empty(), "held in memory, not in the database");
        assert_eq!(
            t.marks.get(&a.key()),
            Some(Mark {
                created_ms: 1_700_000_000_000,
                updated_ms: 1_700_000_000_005
            })
        );
        // Read back, it is the delivery it stands for.
        assert_eq!(store.delivery(&a.key()).unwrap(), Some(a.clone()));
        assert!(store.has_delivery(&a.key()).unwrap());
        assert!(store.has_delivery(&b.key()).unwrap());
        let mut of: Vec<Delivery> = store.alerts_of("ky-hop").map(|r| r.unwrap().1).collect();
        of.sort_by(|x, y| x.email.cmp(&y.email));
        assert_eq!(of, [a.clone(), b.clone()]);
        assert_eq!(store.outbox_counts().unwrap(), [0, 1, 1, 0]);
        let told = || -> Vec<String> {
            let told = store.told_of("ky-hop").unwrap();
            told.into_iter().map(|t| t.0).collect()
        };
        assert_eq!(told(), ["a@x.vn"]);
        // Folded: gone from the marks, in the totals and the bitmap, and in the day's log.
        assert_eq!(store.fold_all_sent().unwrap(), 1);
        assert!(t.sent.is_empty() && t.marks.len() == 0);
        assert!(!store.has_delivery(&a.key()).unwrap());
        assert_eq!(store.outbox_counts().unwrap(), [0, 1, 1, 0]);
        let alerted = store.alerted("ky-hop").unwrap();
        assert!(alerted.told("a@x.vn").unwrap());
        assert!(!alerted.told("b@x.vn").unwrap());
        assert!(!store.alerted("khac").unwrap().told("a@x.vn").unwrap());
        assert_eq!(told(), ["a@x.vn"], "the same, once folded");
        let log = sent_log(dir.path(), "2023-11-14");
        assert!(log.contains("a@x.vn") && log.contains("\"sent\""), "{log}");
    }

    #[test]
    fn a_mark_in_the_journal_only_is_put_back_at_open_and_one_folded_is_not() {
        let alert = |email: &str| {
            let mut d = Delivery::new(
                Kind::Alert {
                    article: "ky-hop".into(),
                },
                email,
                1_700_000_000_000,
            );
            d.state = DeliveryState::Sent;
            d.attempts = 1;
            d.updated_ms = 1_700_000_000_005;
            d
        };
        let (a, b) = (alert("a@x.vn"), alert("b@x.vn"));
        let dir = tempfile::tempdir().unwrap();
        let journals = MARKS_JOURNALS.map(|name| dir.path().join(name));
        let records = |i: usize| {
            crate::journal::Journal::open(&journals[i])
                .unwrap()
                .1
                .records
        };
        let copies = || journals.clone().map(|j| std::fs::read(j).unwrap());
        {
            let store = Store::open(dir.path()).unwrap();
            store.record_planned(&a.key(), &a).unwrap();
            store.record_planned(&b.key(), &b).unwrap();
            store.sync_marks().unwrap();
            // Only the journal has them, not the database: a crash now.
            let t = store.t().unwrap();
            assert!(t.sent.is_empty() && t.outbox.is_empty());
        }
        assert_eq!(records(0).len(), 2);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.delivery(&a.key()).unwrap(), Some(a.clone()));
        assert_eq!(store.delivery(&b.key()).unwrap(), Some(b.clone()));
        assert_eq!(
            store
                .email_by_id(&delivery_id(&a.key()))
                .unwrap()
                .as_deref(),
            Some("a@x.vn")
        );
        assert!(
            records(0).is_empty() && records(1).is_empty(),
            "in the database now: the journal is emptied"
        );
        // A fold records, with the marks it folds, that their journal is done with: a crash
        // after it does not bring them back to be counted twice.
        let c = alert("c@x.vn");
        store.record_planned(&c.key(), &c).unwrap();
        store.sync_marks().unwrap();
        let before_fold = copies();
        assert_eq!(store.fold_sent(&[a.key(), c.key()]).unwrap(), 2);
        assert_eq!(records(0).len(), 1, "emptied only at the next fold");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.alerts_of("ky-hop").count(),
            1,
            "b's mark, not folded yet"
        );
        drop(store);
        // Nor do copies of the journals from before the fold, put back.
        for (j, bytes) in journals.iter().zip(before_fold) {
            std::fs::write(j, bytes).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.alerts_of("ky-hop").count(), 1);
        assert_eq!(store.fold_all_sent().unwrap(), 1);
        assert_eq!(
            store.outbox_counts().unwrap(),
            [0, 3, 0, 0],
            "each mail counted once"
        );
        // A crash while a fold is under way: the journal it took and the one it started
        // are both replayed.
        let (d, e) = (alert("d@x.vn"), alert("e@x.vn"));
        store.record_planned(&d.key(), &d).unwrap();
        let t = store.t().unwrap();
        let (taken, _) = take_marks(&t).unwrap();
        assert_eq!(taken.keys().collect::<Vec<_>>(), [&d.key()]);
        assert_eq!(
            store.delivery(&d.key()).unwrap(),
            Some(d.clone()),
            "still read"
        );
        store.record_planned(&e.key(), &e).unwrap();
        store.sync_marks().unwrap();
        assert_eq!(records(0).len() + records(1).len(), 2, "one in each");
        drop((t, taken, store));
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.alerts_of("ky-hop").count(), 2, "d and e");
        assert_eq!(store.fold_all_sent().unwrap(), 2);
        assert_eq!(store.outbox_counts().unwrap(), [0, 5, 0, 0]);
        drop(store);
        assert!(older_marks_header("bantin marks ab 3", "bantin marks ab 7"));
        assert!(!older_marks_header(
            "bantin marks ab 9",
            "bantin marks ab 7"
        ));
        assert!(!older_marks_header(
            "bantin marks ab 7x",
            "bantin marks ab 7"
        ));
        assert!(!older_marks_header(
            "bantin marks cd 3",
            "bantin marks ab 7"
        ));
        // Nor another state's journal.
        let other = tempfile::tempdir().unwrap();
        {
            let store = Store::open(other.path()).unwrap();
            let f = alert("f@x.vn");
            store.record_planned(&f.key(), &f).unwrap();
            store.sync_marks().unwrap();
        }
        std::fs::copy(other.path().join(MARKS_JOURNALS[0]), &journals[0]).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.alerts_of("ky-hop").count(), 0);
        assert_eq!(store.outbox_counts().unwrap(), [0, 5, 0, 0]);
    }

    #[test]
    fn the_probe_of_the_state_fails_while_the_days_log_cannot_be_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let day = 1_700_000_000_000; // 2023-11-14 UTC
        store.probe_write(day).unwrap();
        // Something the fold cannot append to where the day's log goes (a directory: even
        // root cannot open it so).
        let log = dir.path().join("sent/2023-11-14.jsonl.gz");
        std::fs::create_dir(&log).unwrap();
        let e = store.probe_write(day).unwrap_err();
        assert!(e.to_string().contains("2023-11-14"), "{e}");
        assert!(
            store.probe_write(day + 86_400_000).is_err(),
            "yesterday's too"
        );
        std::fs::remove_dir(&log).unwrap();
        store.probe_write(day).unwrap();
    }

    #[test]
    fn held_marks_are_made_durable_by_a_flush_exported_and_never_folded_twice() {
        let alert = |article: &str, email: &str| {
            let mut d = Delivery::new(
                Kind::Alert {
                    article: article.into(),
                },
                email,
                1_700_000_000_000,
            );
            d.state = DeliveryState::Sent;
            d.attempts = 1;
            d.updated_ms = 1_700_000_000_005;
            d
        };
        let dir = tempfile::tempdir().unwrap();
        let a = alert("ky-hop", "a@x.vn");
        {
            let store = Store::open(dir.path()).unwrap();
            store.record_planned(&a.key(), &a).unwrap();
            // A group of senders that recorded a delivery as well flushes the database:
            // that covers the marks too. Then a crash.
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.delivery(&a.key()).unwrap(), Some(a.clone()));
        assert_eq!(store.fold_all_sent().unwrap(), 1);

        // Held in memory, a mark is in an export, which a new state reads back.
        let b = alert("ky-hop", "b@x.vn");
        store.record_planned(&b.key(), &b).unwrap();
        let mut export = Vec::new();
        store.export(&mut export).unwrap();
        let copy = tempfile::tempdir().unwrap();
        let imported = Store::open(copy.path()).unwrap();
        imported.import(&export[..]).unwrap();
        assert_eq!(imported.delivery(&b.key()).unwrap(), Some(b.clone()));

        // The same mail marked in the `sent` tree too (put back by a reopen, then sent
        // again from memory): counted once.
        let t = store.t().unwrap();
        t.sent
            .insert(b.key().as_bytes(), &b"1700000000000 1700000000005"[..])
            .unwrap();
        assert_eq!(store.fold_sent(&[]).unwrap(), 1);
        assert!(t.sent.is_empty() && t.marks.len() == 0);
        assert_eq!(store.outbox_counts().unwrap(), [0, 2, 0, 0]);

        // A fold that meets a damaged record sets the marks it took aside in the `sent`
        // tree, and the marks recorded after them are folded still.
        let mut bad = Compacted::default();
        bad.told.insert("a\0hong\0".into(), "not base64!".into());
        t.compact.insert("hong", encode(&bad)).unwrap();
        let (c, d) = (alert("hong", "c@x.vn"), alert("khac", "d@x.vn"));
        store.record_planned(&c.key(), &c).unwrap();
        store.record_planned(&d.key(), &d).unwrap();
        assert!(matches!(
            store.fold_sent(&[]),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(t.sent.len(), 2);
        assert_eq!(t.marks.len(), 0);
        assert_eq!(store.delivery(&c.key()).unwrap(), Some(c.clone()));
        let e = alert("khac", "e@x.vn");
        store.record_planned(&e.key(), &e).unwrap();
        assert_eq!(store.fold_sent(&[]).unwrap(), 1);
        assert!(store.alerted("khac").unwrap().told("e@x.vn").unwrap());
        drop((t, store));
        // The journals are done with them: after a restart each is counted once.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.outbox_counts().unwrap(), [0, 5, 0, 0]);
    }

    #[test]
    fn a_subscriber_is_numbered_once_active_and_the_fold_of_their_mail_keeps_that_number() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let number = |email: &str| {
            store
                .t()
                .unwrap()
                .number_of
                .get(email)
                .unwrap()
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        let mut later = sub("sau@x.vn");
        later.state = SubState::Pending;
        store.put_subscriber(&later).unwrap();
        assert_eq!(number("sau@x.vn"), None, "not before they confirm");
        store.put_subscriber(&sub("dau@x.vn")).unwrap();
        later.state = SubState::Active;
        store.put_subscriber(&later).unwrap();
        store.put_subscriber(&later).unwrap();
        assert_eq!(number("dau@x.vn").as_deref(), Some("0"));
        assert_eq!(number("sau@x.vn").as_deref(), Some("1"), "once");
        let mut d = Delivery::new(
            Kind::Alert {
                article: "tin".into(),
            },
            "sau@x.vn",
            1,
        );
        d.state = DeliveryState::Sent;
        store.record_planned(&d.key(), &d).unwrap();
        store.fold_all_sent().unwrap();
        assert_eq!(number("sau@x.vn").as_deref(), Some("1"));
        assert!(store.alerted("tin").unwrap().told("sau@x.vn").unwrap());
        assert!(!store.alerted("tin").unwrap().told("dau@x.vn").unwrap());
        // Gone, their number goes too.
        assert!(store.remove_subscriber("sau@x.vn").unwrap());
        assert_eq!(number("sau@x.vn"), None);
    }

    #[test]
    fn an_export_names_its_schema_first_and_an_import_writes_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_subscriber(&sub("a@x.vn")).unwrap();
        store.put_subscriber(&sub("b@x.vn")).unwrap();
        let mut out = Vec::new();
        store.export(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["tree"], "schema", "{text}");
        assert_eq!(first["value"], SCHEMA);
        let empty = || {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            (dir, store)
        };
        // From a newer bantin: refused at its first line.
        let newer = text.replacen(&format!("\"value\":{SCHEMA}"), "\"value\":99", 1);
        let (_d, other) = empty();
        let e = other.import(newer.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("schema 99"), "{e}");
        assert_eq!(other.subscribers().count(), 0);
        // A damaged line after good ones: nothing is written.
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|l| l.contains("b@x.vn")).unwrap();
        let mut damaged = lines.clone();
        damaged[at] = "{\"tree\": \"subscribers\", \"key\":";
        let (_d, other) = empty();
        let e = other
            .import(damaged.join("\n").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("line {}", at + 1)), "{e}");
        assert_eq!(other.subscribers().count(), 0, "nothing of it written");
        // Whole, it goes in.
        let (_d, other) = empty();
        other.import(text.as_bytes()).unwrap();
        assert_eq!(other.subscribers().count(), 2);
    }

    #[test]
    fn a_state_of_the_older_schema_is_taken_and_then_refused_by_an_older_program() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.t().unwrap().meta.insert("schema", "1").unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.t().unwrap().meta.get("schema").unwrap().as_deref(),
            Some(SCHEMA.to_string().as_bytes()),
            "a program of schema 1 would not see the marks: it refuses this state now"
        );
    }

    #[test]
    fn an_article_deleted_and_written_again_does_not_inherit_its_readers_at_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let known = |seen| KnownArticle {
            published: 0,
            category: "A".into(),
            seen,
            file: "x.txt".into(),
            correction: None,
            corrections: 0,
            same_as: None,
        };
        store.put_known_article("x", &known(100)).unwrap();
        let digest = Kind::Digest {
            schedule: Schedule::Daily,
            run: 1,
            articles: vec!["x".into()],
        };
        sent(&store, digest, "p@x.vn", 200);
        assert_eq!(store.told_of("x").unwrap().len(), 1);
        store.forget_article("x").unwrap();
        store.put_known_article("x", &known(1000)).unwrap();
        assert_eq!(store.compact_finished(5000).unwrap(), 1);
        assert!(
            store.told_of("x").unwrap().is_empty(),
            "told of the old one only"
        );
    }

    #[test]
    fn compacted_deliveries_keep_who_was_told_and_the_totals_in_a_few_bits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alert = |a: &str| Kind::Alert { article: a.into() };
        let mut keys = std::collections::BTreeMap::new();
        for (i, email) in ["a@x.vn", "b@x.vn", "c@x.vn"].iter().enumerate() {
            keys.insert(
                email.to_string(),
                sent(&store, alert("ky-hop"), email, 100 + i as i64),
            );
        }
        let digest = Kind::Digest {
            schedule: Schedule::Daily,
            run: 7,
            articles: vec!["ky-hop".into(), "tin".into()],
        };
        keys.insert("d@x.vn".into(), sent(&store, digest.clone(), "d@x.vn", 200));
        // Told by an alert first, then by a digest: the alert is the mail to answer.
        sent(&store, digest, "a@x.vn", 210);
        let mut failed = Delivery::new(alert("ky-hop"), "e@x.vn", 100);
        failed.state = DeliveryState::Failed;
        failed.updated_ms = 150;
        store.update(&failed.key(), &failed, None).unwrap();
        let fix = Kind::Correction {
            article: "ky-hop".into(),
            n: 1,
            reply_to: keys["a@x.vn"].clone(),
        };
        let v = crate::correction::Version {
            title: "T".into(),
            when: None,
            place: None,
            paragraphs: vec![],
        };
        store
            .put_correction(
                "ky-hop",
                &Correction {
                    n: 1,
                    reason: "r".into(),
                    at_ms: 300,
                    before: v.clone(),
                    after: v,
                    planned: 1,
                    compacted: Counts::default(),
                },
            )
            .unwrap();
        sent(&store, fix, "a@x.vn", 310);
        let mut before: Vec<(String, String)> = store
            .told_of("ky-hop")
            .unwrap()
            .into_iter()
            .map(|(e, t)| (e, t.key))
            .collect();
        before.sort();

        assert_eq!(store.compact_finished(1000).unwrap(), 7);
        assert_eq!(store.t().unwrap().outbox.len(), 0, "no full record left");
        assert_eq!(
            store.outbox_counts().unwrap(),
            [0, 6, 1, 0],
            "the totals stay: 3 alerts, 2 digests and a correction sent, an alert failed"
        );
        let mut after: Vec<(String, String)> = store
            .told_of("ky-hop")
            .unwrap()
            .into_iter()
            .map(|(e, t)| (e, t.key))
            .collect();
        after.sort();
        assert_eq!(after, before, "the same people, answered on the same mails");
        assert_eq!(
            after
                .iter()
                .map(|(e, k)| (e.as_str(), k == &keys[e]))
                .collect::<Vec<_>>(),
            [
                ("a@x.vn", true),
                ("b@x.vn", true),
                ("c@x.vn", true),
                ("d@x.vn", true)
            ]
        );
        assert_eq!(
            store.told_of("tin").unwrap().len(),
            2,
            "a digest tells of each article"
        );
        let c = store.compacted("ky-hop").unwrap().unwrap();
        assert_eq!((c.alerts.sent, c.alerts.failed), (3, 1));
        assert_eq!(
            (c.alerts.first_ms, c.alerts.last_ms),
            (Some(100), Some(102))
        );
        assert_eq!(c.digests.sent, 2);
        assert_eq!(store.run_counts(Schedule::Daily, 7).unwrap().sent, 2);
        assert_eq!(
            store
                .correction("ky-hop", 1)
                .unwrap()
                .unwrap()
                .compacted
                .sent,
            1
        );

        // A later digest on record does not take the place of the compacted alert.
        sent(
            &store,
            Kind::Digest {
                schedule: Schedule::Weekly,
                run: 9,
                articles: vec!["ky-hop".into()],
            },
            "b@x.vn",
            5000,
        );
        let b = store
            .told_of("ky-hop")
            .unwrap()
            .into_iter()
            .find(|(e, _)| e == "b@x.vn");
        assert_eq!(
            b.unwrap().1.key,
            keys["b@x.vn"],
            "the alert, first to tell b"
        );

        // Compacting again changes nothing; a backup carries the compacted form, and a
        // fan-out being planned.
        assert_eq!(store.compact_finished(1000).unwrap(), 0);
        let fanout = Fanout {
            created_ms: 400,
            category: "THÔNG BÁO".into(),
            after: "b@x.vn".into(),
            planned: 2,
            done: false,
            fingerprint: String::new(),
        };
        assert!(store.start_fanout("tin", &fanout, 0).unwrap());
        assert!(
            !store.start_fanout("tin", &fanout, 0).unwrap(),
            "one fan-out per article"
        );
        let mut backup = Vec::new();
        store.export(&mut backup).unwrap();
        let other = tempfile::tempdir().unwrap();
        let restored = Store::open(other.path()).unwrap();
        restored.import(&backup[..]).unwrap();
        let mut again: Vec<(String, String)> = restored
            .told_of("ky-hop")
            .unwrap()
            .into_iter()
            .map(|(e, t)| (e, t.key))
            .collect();
        again.sort();
        assert_eq!(again, before);
        assert_eq!(restored.compacted("ky-hop").unwrap(), Some(c));
        assert_eq!(restored.fanouts().unwrap(), [("tin".to_string(), fanout)]);

        // A removed subscriber's address leaves the numbers: no correction for it.
        store.remove_subscriber("c@x.vn").unwrap();
        assert!(
            store
                .told_of("ky-hop")
                .unwrap()
                .iter()
                .all(|(e, _)| e != "c@x.vn")
        );
    }

    #[test]
    fn a_store_reopened_keeps_what_was_flushed_and_every_clone_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let other = store.clone();
        store.put_subscriber(&sub("a@x.vn")).unwrap();
        store.flush().unwrap();
        store.mark_broken();
        assert!(other.is_broken());
        store.recover(1).unwrap();
        assert!(!other.is_broken());
        assert!(other.subscriber("a@x.vn").unwrap().is_some());
        other.put_subscriber(&sub("b@x.vn")).unwrap();
        assert_eq!(store.subscribers().count(), 2);
    }

    #[test]
    fn a_reopen_waits_for_whoever_still_writes_through_the_old_database() {
        // A sender that took the trees a moment before the reopen (to record a mark) must
        // not write into journals the new database has replayed and cleared: sled's lock on
        // its files makes the reopen wait for it (up to LOCK_WAIT), then fail, to be tried
        // again, until it lets go.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.mark_broken();
        let held = store.t().unwrap();
        assert!(store.recover(1).is_err());
        assert!(store.is_broken());
        drop(held);
        store.recover(2).unwrap();
        assert!(!store.is_broken());
        store.put_subscriber(&sub("a@x.vn")).unwrap();
    }

    #[test]
    fn a_lost_queue_entry_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .enqueue(&Delivery::new(Kind::Confirm { at: 1 }, "d@x.vn", 10))
            .unwrap();
        store.t().unwrap().queue.clear().unwrap();
        assert_eq!(store.repair_queue().unwrap(), 1);
        assert_eq!(store.repair_queue().unwrap(), 0);
        assert_eq!(store.queue_len(), 1);
    }
}

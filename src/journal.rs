//! An append-only journal of small records beside the state database, made durable with one
//! write and one `fdatasync` for many records.
//!
//! The state keeps a mark for every alert of a fan-out it sent (see `store::Mark`). Flushing
//! sled for each group of marks costs more than the mails themselves: sled writes its log on
//! its own thread pool, which wakes all its idle threads for every job. The marks are held in
//! memory and, in the same step, appended to a journal; a group of senders waits for one
//! write and one `fdatasync` of it instead of a flush of the database. When the database has
//! everything a journal holds on disk (folded), the journal is emptied ([`Held::clear`]); the
//! state has two, which take turns (see `store::Marks`). After a crash, [`Journal::open`]
//! gives back what it holds, and the state puts it into the database.
//!
//! The file starts with a header line naming whose journal it is and since when (see
//! [`Held::clear`]: the state's id and the number of the clear); then one record a mark: the
//! key's length in decimal, a space, the key, the value, a newline; then zeros. The file is
//! written full of zeros when it is made ([`PREALLOCATED`]), so that a sync overwrites blocks
//! already on disk and its `fdatasync` has no file size to commit: about half the time of a
//! sync that appends. A write cut short by a crash leaves an incomplete record at the end: it
//! is dropped (its mail had not been told it was on disk, so it counts as one in flight).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Its lock also orders a record's write into the database before its append here,
    /// against [`Held::clear`].
    state: Mutex<State>,
}

/// The size the journal is made with, in zeros: room for some 2,500 marks (about 100 bytes
/// each), more than a fold leaves (every 1,000 mails sent). Past it the file grows, and a
/// sync commits its size too. One server holds a state folder per council.
pub const PREALLOCATED: u64 = 256 << 10;

struct State {
    /// Records appended since the last [`Journal::sync`].
    pending: Vec<u8>,
    /// Where the records on disk end: the next sync writes there.
    len: u64,
    /// Where the bytes that are not zeros end (a write that failed may have left some past
    /// `len`): what [`Held::clear`] zeroes.
    dirty: u64,
    /// Where the records known to be on disk end: a sync with nothing after it has nothing
    /// to do (a flush of the state syncs the journal too, most often with nothing new).
    synced: u64,
    /// How many `fdatasync`s the journal made, and how many times it was cleared.
    syncs: u64,
    clears: u64,
}

/// The journal's contents when it was opened.
pub struct Replay {
    /// Its header line (without the newline); `None` for a new file.
    pub header: Option<Vec<u8>>,
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where the whole records end.
    records_end: usize,
    /// Bytes after them that are not zeros: a record cut short (a crash while writing it),
    /// or damage.
    pub torn: usize,
}

/// The journal held: a record written into the database and then appended here while it is
/// held cannot be cleared by another holder before the database has it on disk.
pub struct Held<'a> {
    journal: &'a Journal,
    state: MutexGuard<'a, State>,
}

impl Held<'_> {
    pub fn append(&mut self, key: &[u8], value: &[u8]) {
        let buf = &mut self.state.pending;
        buf.extend_from_slice(key.len().to_string().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        buf.push(b'\n');
    }

    /// Empties the journal, which then starts with `header` (a line, without its newline):
    /// the caller, holding it, made everything in it durable elsewhere (flushed the
    /// database).
    pub fn clear(mut self, header: &[u8]) -> std::io::Result<()> {
        self.state.pending.clear();
        let mut start = header.to_vec();
        start.push(b'\n');
        let end = (self.state.dirty as usize).max(start.len());
        start.resize(end, 0);
        self.journal.file.write_all_at(&start, 0)?;
        self.journal.file.sync_data()?;
        self.state.syncs += 1;
        self.state.clears += 1;
        self.state.len = (header.len() + 1) as u64;
        self.state.dirty = self.state.len;
        self.state.synced = self.state.len;
        Ok(())
    }
}

impl Journal {
    /// Opens (or creates, mode 0600) the journal at `path`, with what it holds.
    pub fn open(path: &Path) -> std::io::Result<(Journal, Replay)> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let replay = parse(&bytes);
        let size = bytes.len() as u64;
        if size < PREALLOCATED {
            file.write_all_at(&vec![0u8; (PREALLOCATED - size) as usize], size)?;
            file.sync_all()?;
        }
        let len = replay.records_end as u64;
        let dirty = bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i as u64 + 1);
        Ok((
            Journal {
                path: path.to_owned(),
                file,
                state: Mutex::new(State {
                    pending: Vec::new(),
                    len,
                    dirty,
                    // Written by a run before, never told to anyone as on disk: nothing to
                    // sync for it now.
                    synced: len,
                    syncs: 0,
                    clears: 0,
                }),
            },
            replay,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journal held (see [`Held`]).
    pub fn hold(&self) -> Held<'_> {
        Held {
            journal: self,
            state: self.lock(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes every record appended before the call durable.
    pub fn sync(&self) -> std::io::Result<()> {
        let end = {
            let mut state = self.lock();
            if !state.pending.is_empty() {
                let end = state.len + state.pending.len() as u64;
                state.dirty = state.dirty.max(end);
                // A write that fails is made again whole, at the same place, by the next
                // sync: the records stay pending.
                self.file.write_all_at(&state.pending, state.len)?;
                state.len = end;
                state.pending.clear();
            }
            if state.synced >= state.len {
                return Ok(());
            }
            state.syncs += 1;
            (state.len, state.clears)
        };
        // Outside the lock: senders keep appending while the disk works.
        self.file.sync_data()?;
        let mut state = self.lock();
        // Unless a clear meanwhile started the records afresh.
        if state.clears == end.1 {
            state.synced = state.synced.max(end.0);
        }
        Ok(())
    }

    /// How many `fdatasync`s the journal made since it was opened.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }
}

fn parse(bytes: &[u8]) -> Replay {
    let (header, mut at) = match memchr::memchr(b'\n', bytes) {
        Some(end) if bytes[0] != 0 => (Some(bytes[..end].to_vec()), end + 1),
        _ => (None, 0),
    };
    let mut records = Vec::new();
    while let Some((key, value, len)) = parse_one(&bytes[at..]) {
        records.push((key.to_vec(), value.to_vec()));
        at += len;
    }
    let rest = &bytes[at..];
    Replay {
        header,
        records,
        records_end: at,
        torn: rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1),
    }
}

/// One record at the start of `bytes`: its key, its value and its length.
fn parse_one(bytes: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let space = memchr::memchr(b' ', bytes.get(..20.min(bytes.len()))?)?;
    let key_len: usize = std::str::from_utf8(&bytes[..space]).ok()?.parse().ok()?;
    let key_end = (space + 1).checked_add(key_len)?;
    let key = bytes.get(space + 1..key_end)?;
    let newline = key_end + memchr::memchr(b'\n', bytes.get(key_end..)?)?;
    Some((key, &bytes[key_end..newline], newline + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_synced_are_read_back_and_a_cut_record_at_the_end_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (j, replay) = Journal::open(&path).unwrap();
        assert!(replay.header.is_none() && replay.records.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOCATED);
        j.hold().clear(b"head 0").unwrap();
        {
            let mut a = j.hold();
            a.append(b"a\0tin\0x@y.vn", b"1 2");
            // A key may hold spaces and newlines: its length says where it ends.
            a.append(b"a\0t n\n\0z@y.vn", b"3 4");
        }
        j.sync().unwrap();
        j.hold().append(b"not synced", b"5 6");
        drop(j);
        // A crash cut the next write short.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // Right after the header and the two records: 7, 19 and 20 bytes.
        f.write_all_at(b"12 a\0ti", 46).unwrap();
        drop(f);
        let (j, replay) = Journal::open(&path).unwrap();
        assert_eq!(
            replay.records,
            vec![
                (b"a\0tin\0x@y.vn".to_vec(), b"1 2".to_vec()),
                (b"a\0t n\n\0z@y.vn".to_vec(), b"3 4".to_vec()),
            ]
        );
        assert_eq!(replay.header.as_deref(), Some(&b"head 0"[..]));
        assert_eq!(replay.torn, 7);
        // Once what it held is elsewhere, it is cleared, the cut record too.
        j.hold().clear(b"head 1").unwrap();
        j.hold().append(b"k", b"v");
        j.sync().unwrap();
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.header.as_deref(), Some(&b"head 1"[..]));
        assert_eq!(replay.records, vec![(b"k".to_vec(), b"v".to_vec())]);
        assert_eq!(replay.torn, 0);
    }

    #[test]
    fn a_sync_with_nothing_new_since_the_last_makes_no_fdatasync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (j, _) = Journal::open(&path).unwrap();
        j.sync().unwrap();
        assert_eq!(j.syncs(), 0, "a new journal holds nothing");
        j.hold().clear(b"head 0").unwrap();
        j.sync().unwrap();
        assert_eq!(j.syncs(), 1, "the clear's own");
        j.hold().append(b"k1", b"v");
        j.sync().unwrap();
        j.sync().unwrap();
        assert_eq!(j.syncs(), 2);
        j.hold().append(b"k2", b"v");
        j.sync().unwrap();
        assert_eq!(j.syncs(), 3);
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.records.len(), 2);
    }

    #[test]
    fn a_cleared_journal_is_empty_and_its_old_records_are_not_read_after_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (j, _) = Journal::open(&path).unwrap();
        j.hold().clear(b"head 0 with a long header").unwrap();
        j.hold().append(b"k1", b"v");
        j.hold().append(b"k2", b"v");
        j.sync().unwrap();
        j.hold().append(b"k3", b"v");
        j.hold().clear(b"head 1").unwrap();
        j.sync().unwrap();
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.header.as_deref(), Some(&b"head 1"[..]));
        assert!(replay.records.is_empty() && replay.torn == 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOCATED);
        j.hold().append(b"k4", b"v");
        j.sync().unwrap();
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.records, vec![(b"k4".to_vec(), b"v".to_vec())]);
    }
}

//! Watching the store: `notify` events turned into a few kinds, debounced per path.
//!
//! A file renamed into the store (the safe way to publish) is ready at once after a short
//! quiet time. A file written in place is ready when the writer closes it, or after a longer
//! quiet time, so a half-written article is not published half-written. Folder events and
//! lost events (queue overflow) ask for a rescan; a periodic rescan catches anything else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// Quiet time after a rename, a close or a removal before the path is handled.
pub const SETTLE: Duration = Duration::from_millis(15);
/// Quiet time after which a file still open for writing is read anyway.
pub const WRITE_QUIET: Duration = Duration::from_millis(1000);

/// What a batch of events asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A path to look at again (created, written, renamed, removed).
    Path { path: PathBuf, settled: bool },
    /// Events were lost or a folder changed: walk the store again.
    Rescan,
}

/// Whether an event says nothing of the store's content: a file opened, read or closed
/// without writing (only a close after writing settles a file).
fn says_nothing(event: &Event) -> bool {
    !event.need_rescan()
        && matches!(event.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write))
}

/// Turns one `notify` event into signals.
pub fn classify(event: &Event) -> Vec<Signal> {
    if event.need_rescan() {
        return vec![Signal::Rescan];
    }
    if says_nothing(event) {
        return Vec::new();
    }
    let settled = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Modify(ModifyKind::Name(_)) => true,
        EventKind::Remove(RemoveKind::File) | EventKind::Remove(RemoveKind::Any) => true,
        EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => {
            return vec![Signal::Rescan];
        }
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => false,
        // Taken by `says_nothing` above.
        EventKind::Access(_) => return Vec::new(),
        EventKind::Any | EventKind::Other => return vec![Signal::Rescan],
    };
    // For a rename with both ends known, both paths are looked at again: one went, one came.
    event
        .paths
        .iter()
        .map(|p| Signal::Path {
            path: p.clone(),
            settled,
        })
        .collect()
}

/// Paths waiting for their quiet time, the last event of each kept.
#[derive(Debug, Default)]
pub struct Debouncer {
    pending: HashMap<PathBuf, (Instant, bool)>,
    rescan: bool,
}

impl Debouncer {
    pub fn push(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::Rescan => self.rescan = true,
            Signal::Path { path, settled } => {
                let entry = self.pending.entry(path).or_insert((now, settled));
                // A later write reopens a settled path; a later close settles it.
                *entry = (now, settled);
            }
        }
    }

    /// When the next path becomes ready, if any waits.
    pub fn deadline(&self) -> Option<Instant> {
        if self.rescan {
            return Some(Instant::now());
        }
        self.pending
            .values()
            .map(|&(at, settled)| at + if settled { SETTLE } else { WRITE_QUIET })
            .min()
    }

    /// Takes the paths that are ready at `now`, and whether a rescan was asked for.
    pub fn take_ready(&mut self, now: Instant) -> (Vec<PathBuf>, bool) {
        let mut ready = Vec::new();
        self.pending.retain(|path, &mut (at, settled)| {
            let quiet = if settled { SETTLE } else { WRITE_QUIET };
            if now >= at + quiet {
                ready.push(path.clone());
                false
            } else {
                true
            }
        });
        ready.sort();
        (ready, std::mem::take(&mut self.rescan))
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && !self.rescan
    }
}

/// A running watch on the store folder and on its parent (to see the store itself replaced).
pub struct StoreWatch {
    _watcher: RecommendedWatcher,
    pub root: PathBuf,
}

impl StoreWatch {
    /// Starts watching; every event is handed to `sink` (from the watcher's thread).
    pub fn start<F>(root: &Path, sink: F) -> notify::Result<StoreWatch>
    where
        F: Fn(notify::Result<Event>) + Send + 'static,
    {
        // Links are not followed: one to a folder outside the store (to /usr, say) would
        // add a watch for every folder there, and publish what it holds.
        let config = notify::Config::default().with_follow_symlinks(false);
        // The watch also reports every opening of a file, bantin's own reads of the store
        // included: 100,000 of them at a start, queued while the store is read. What says
        // nothing stops here, by the rule `classify` follows.
        let sink = move |event: notify::Result<Event>| {
            if !matches!(&event, Ok(e) if says_nothing(e)) {
                sink(event);
            }
        };
        let mut watcher = RecommendedWatcher::new(sink, config)?;
        watcher.watch(root, RecursiveMode::Recursive)?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Errors here only lose the fast path for a replaced store; the rescan remains.
            if let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive) {
                tracing::debug!("cannot watch the store's parent folder: {e}");
            }
        }
        Ok(StoreWatch {
            _watcher: watcher,
            root: root.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::RenameMode;

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn rename_and_close_settle_writes_wait() {
        let renamed = classify(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "/s/a.txt",
        ));
        assert_eq!(
            renamed,
            [Signal::Path {
                path: "/s/a.txt".into(),
                settled: true
            }]
        );
        let written = classify(&event(
            EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)),
            "/s/a.txt",
        ));
        assert!(matches!(written[0], Signal::Path { settled: false, .. }));
        let folder = classify(&event(EventKind::Create(CreateKind::Folder), "/s/d"));
        assert_eq!(folder, [Signal::Rescan]);
        let read = classify(&event(EventKind::Access(AccessKind::Read), "/s/a.txt"));
        assert!(read.is_empty());
    }

    #[test]
    fn debouncer_keeps_the_last_event_per_path() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        let sig = |settled| Signal::Path {
            path: "/s/a.txt".into(),
            settled,
        };
        d.push(sig(false), t0);
        assert_eq!(d.take_ready(t0 + SETTLE).0.len(), 0, "still being written");
        d.push(sig(true), t0 + Duration::from_millis(5));
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(5) + SETTLE));
        let (ready, rescan) = d.take_ready(t0 + Duration::from_millis(5) + SETTLE);
        assert_eq!(ready, [PathBuf::from("/s/a.txt")]);
        assert!(!rescan);
        assert!(d.is_empty());

        d.push(sig(false), t0);
        assert_eq!(
            d.take_ready(t0 + WRITE_QUIET).0.len(),
            1,
            "quiet long enough"
        );
    }
}

//! The alerts of the running fan-outs, planned in memory a window at a time.
//!
//! A fan-out reads its subscribers in address order, one window after another. The mails of
//! a window wait here, not in the outbox: only what becomes of each is written (sent, to try
//! again, failed), and that record is flushed before the sender takes another mail. The
//! fan-out's record moves past a window once every mail of it has such a record. A crash
//! plans the unsettled windows again; the mails they sent are known by their records, or,
//! once folded, by the bitmap of those told; so at most the mails in flight go twice.

use std::collections::{HashMap, VecDeque};

use crate::store::{Delivery, Fanout};

/// A planned alert, until its outcome is on record.
struct Planned {
    delivery: Delivery,
    article: String,
    window: u64,
    /// Its outcome is written (settled once that is on disk): counted there, not here.
    recorded: bool,
}

/// A window of a fan-out: where the record moves once its mails are settled.
struct Window {
    seq: u64,
    /// The fan-out's record once this window and those before it are settled.
    next: Fanout,
    /// Mails of it not settled yet.
    left: usize,
}

/// How far a fan-out got in memory.
struct Progress {
    /// The record as planning stands (its `after` is where the next window starts).
    planning: Fanout,
    /// Planned since this process began it: nothing of it can have been sent before.
    fresh: bool,
    /// Windows not settled yet, oldest first.
    windows: VecDeque<Window>,
}

/// Alerts planned and not yet settled, by fan-out.
#[derive(Default)]
pub struct Fresh {
    /// Keys waiting to be sent, in order.
    queue: VecDeque<String>,
    /// Every planned alert not settled yet (waiting or in flight), by key.
    planned: HashMap<String, Planned>,
    fanouts: HashMap<String, Progress>,
    next_seq: u64,
}

/// What planning a window needs to know of a fan-out.
pub struct Resume {
    pub record: Fanout,
    /// Mails of it may have been sent before (a restart): each is looked up first.
    pub look_up: bool,
}

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fresh")
            .field("waiting", &self.queue.len())
            .field("unsettled", &self.planned.len())
            .field("fanouts", &self.fanouts.len())
            .finish()
    }
}

impl Fresh {
    /// Mails waiting to be sent.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Planned and without an outcome on record (waiting or in flight): all, or those of
    /// one article.
    pub fn unrecorded(&self, article: Option<&str>) -> usize {
        self.planned
            .values()
            .filter(|p| !p.recorded && article.is_none_or(|a| p.article == a))
            .count()
    }

    /// The outcome of `key` is written (not yet on disk: [`Fresh::settled`] follows).
    pub fn recorded(&mut self, key: &str) {
        if let Some(p) = self.planned.get_mut(key) {
            p.recorded = true;
        }
    }

    /// A fan-out begun by this process: nothing of it was sent before.
    pub fn begun(&mut self, article: &str, record: &Fanout) {
        self.fanouts.insert(
            article.to_owned(),
            Progress {
                planning: record.clone(),
                fresh: true,
                windows: VecDeque::new(),
            },
        );
    }

    /// Where the next window of `article`'s fan-out starts; `None` when every window of it
    /// is planned (it ends as they settle). `record` is its record as written.
    pub fn resume(&mut self, article: &str, record: &Fanout) -> Option<Resume> {
        let p = self
            .fanouts
            .entry(article.to_owned())
            .or_insert_with(|| Progress {
                planning: record.clone(),
                fresh: false,
                windows: VecDeque::new(),
            });
        (!p.planning.done).then(|| Resume {
            record: p.planning.clone(),
            look_up: !p.fresh,
        })
    }

    /// Adds a window of `article`'s fan-out: `window` to send, `next` the record once it is
    /// settled. Returns the record to write now, when the fan-out moved on at once (an
    /// empty window with nothing before it unsettled).
    pub fn add(&mut self, article: &str, window: Vec<Delivery>, next: Fanout) -> Option<Fanout> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let p = self.fanouts.get_mut(article)?;
        p.planning = next.clone();
        let left = window.len();
        for d in window {
            let key = d.key();
            self.queue.push_back(key.clone());
            self.planned.insert(
                key,
                Planned {
                    delivery: d,
                    article: article.to_owned(),
                    window: seq,
                    recorded: false,
                },
            );
        }
        p.windows.push_back(Window { seq, next, left });
        self.advance(article)
    }

    /// Up to `n` keys to send, in order.
    pub fn take(&mut self, n: usize) -> Vec<String> {
        let n = n.min(self.queue.len());
        self.queue.drain(..n).collect()
    }

    /// `key`, taken and not sent, goes first in line again.
    pub fn put_back(&mut self, key: String) {
        if let Some(p) = self.planned.get_mut(&key) {
            // Waiting again (its outcome did not reach the disk).
            p.recorded = false;
            self.queue.push_front(key);
        }
    }

    /// The planned alert under `key`, if it is one.
    pub fn delivery(&self, key: &str) -> Option<&Delivery> {
        self.planned.get(key).map(|p| &p.delivery)
    }

    /// The outcome of `key` is on record. Returns the fan-out's record to write, when its
    /// oldest windows are now all settled.
    pub fn settled(&mut self, key: &str) -> Option<(String, Fanout)> {
        let planned = self.planned.remove(key)?;
        let p = self.fanouts.get_mut(&planned.article)?;
        if let Some(w) = p.windows.iter_mut().find(|w| w.seq == planned.window) {
            w.left = w.left.saturating_sub(1);
        }
        self.advance(&planned.article)
            .map(|next| (planned.article, next))
    }

    /// Pops the settled windows at the front; the record of the last one popped.
    fn advance(&mut self, article: &str) -> Option<Fanout> {
        let p = self.fanouts.get_mut(article)?;
        let mut next = None;
        while p.windows.front().is_some_and(|w| w.left == 0) {
            next = p.windows.pop_front().map(|w| w.next);
        }
        if p.windows.is_empty() && p.planning.done {
            self.fanouts.remove(article);
        }
        next
    }

    /// Ends `article`'s fan-out (the article went): returns its alerts not being sent
    /// (`in_flight` holds those that are), which are no longer planned; a sender that took
    /// one finds it gone. Those in flight settle as they finish.
    pub fn end(
        &mut self,
        article: &str,
        in_flight: &std::collections::HashSet<String>,
    ) -> Vec<(String, Delivery)> {
        self.fanouts.remove(article);
        let keys: Vec<String> = self
            .planned
            .iter()
            .filter(|(key, p)| p.article == article && !in_flight.contains(*key))
            .map(|(key, _)| key.clone())
            .collect();
        let mut out = Vec::new();
        for key in keys {
            if let Some(p) = self.planned.remove(&key) {
                out.push((key, p.delivery));
            }
        }
        self.queue.retain(|key| self.planned.contains_key(key));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The fan-outs in progress.
    #[cfg(test)]
    pub fn articles(&self) -> Vec<&str> {
        self.fanouts.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Kind;

    fn record(after: &str, done: bool) -> Fanout {
        Fanout {
            created_ms: 1,
            category: "Tin tức".into(),
            after: after.into(),
            planned: 0,
            done,
            fingerprint: String::new(),
        }
    }

    fn alert(email: &str) -> Delivery {
        Delivery::new(
            Kind::Alert {
                article: "tin".into(),
            },
            email,
            0,
        )
    }

    #[test]
    fn the_record_moves_past_a_window_only_once_every_mail_of_it_and_before_it_is_settled() {
        let mut fresh = Fresh::default();
        fresh.begun("tin", &record("", false));
        assert!(fresh.resume("tin", &record("", false)).is_some());
        assert!(
            fresh
                .add(
                    "tin",
                    vec![alert("a@x.vn"), alert("b@x.vn")],
                    record("b@x.vn", false)
                )
                .is_none()
        );
        assert!(
            fresh
                .add("tin", vec![alert("c@x.vn")], record("c@x.vn", true))
                .is_none()
        );
        // Every window is planned: nothing more to plan, while the mails wait.
        assert!(fresh.resume("tin", &record("", false)).is_none());
        let keys = fresh.take(10);
        assert_eq!(keys.len(), 3);
        // A mail whose outcome is written is counted by its record, not here too; one put
        // back (its outcome did not reach the disk) waits again.
        assert_eq!(fresh.unrecorded(None), 3);
        fresh.recorded(&keys[2]);
        fresh.recorded(&keys[0]);
        assert_eq!(fresh.unrecorded(None), 1);
        assert_eq!(fresh.unrecorded(Some("khac")), 0);
        fresh.put_back(keys[0].clone());
        assert_eq!(fresh.unrecorded(Some("tin")), 2);
        assert_eq!(fresh.take(10), [keys[0].clone()]);
        // The second window settled first: the record waits for the first.
        assert_eq!(fresh.settled(&keys[2]), None);
        assert_eq!(fresh.settled(&keys[0]), None);
        let (article, next) = fresh.settled(&keys[1]).expect("both windows settled");
        assert_eq!(article, "tin");
        assert_eq!(next.after, "c@x.vn");
        assert!(next.done);
        assert!(fresh.articles().is_empty());
        assert_eq!(fresh.unrecorded(None), 0);
    }

    #[test]
    fn an_empty_window_moves_the_record_at_once_when_nothing_before_it_waits() {
        let mut fresh = Fresh::default();
        fresh.resume("tin", &record("a@x.vn", false));
        let next = fresh.add("tin", Vec::new(), record("k@x.vn", false));
        assert_eq!(next.map(|f| f.after), Some("k@x.vn".to_owned()));
        // One found after a restart: what it plans is looked up first.
        assert!(fresh.resume("tin", &record("", false)).unwrap().look_up);
    }

    #[test]
    fn an_ended_fan_out_gives_back_what_waits_and_forgets_what_settles_later() {
        let mut fresh = Fresh::default();
        fresh.begun("tin", &record("", false));
        fresh.add(
            "tin",
            vec![alert("a@x.vn"), alert("b@x.vn")],
            record("b@x.vn", true),
        );
        let sending = fresh.take(1);
        let in_flight = std::collections::HashSet::from([sending[0].clone()]);
        let waiting = fresh.end("tin", &in_flight);
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].1.email, "b@x.vn");
        assert_eq!(fresh.waiting(), 0);
        assert_eq!(fresh.settled(&sending[0]), None);
        assert_eq!(fresh.unrecorded(None), 0);
    }
}

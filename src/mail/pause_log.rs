//! What the log says when delivery pauses and resumes.
//!
//! A relay whose password changed refuses new logins while connections logged in before
//! still deliver: each of their mails resumes delivery, and the next new connection pauses
//! it again, for the same reason (a disk that fails now and then does the same). Logged as
//! they happen, those flips would fill the journal with "paused" and "resumed" lines in
//! turn, the last of which may say "resumed" while nothing goes out. The pause itself works
//! as before; this only decides the lines:
//!
//! - a pause for a new reason, or long after the last one ended, is logged at once;
//! - a pause for the same reason within [`FLIP_MS`] of the last one's end is a flip: the
//!   first is logged at once and says why, later ones once every [`FLIP_MS`] with their count;
//! - the end of a flipped pause is logged only once delivery has gone on for [`FLIP_MS`]
//!   without pausing again ([`PauseLog::tick`]), or when the daemon stops before that
//!   ([`PauseLog::stopping`]), so the log's last word is the truth.

/// How close a pause must follow the end of the last one, for the same reason, to be a
/// flip; also how often flips are logged, and how long a resume must hold to be told.
pub const FLIP_MS: i64 = 60_000;

/// A line to log, and how grave it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Error(String),
    Info(String),
}

/// The state behind the lines (times are unix milliseconds).
#[derive(Debug, Default)]
pub struct PauseLog {
    /// Whether the pause going on is a flip.
    flipping: bool,
    /// The last pause that ended: its reason, when it began and when it ended.
    ended: Option<Ended>,
    /// Flips since the last line about them, and when that line was written.
    flips_untold: usize,
    flips_told_ms: Option<i64>,
    /// Pauses and resumes in the run of flips going on, for the line that ends it.
    run: usize,
}

#[derive(Debug)]
struct Ended {
    reason: String,
    /// When the first pause of its run of flips began.
    since_ms: i64,
    at_ms: i64,
    /// Whether its end was logged.
    told: bool,
}

impl PauseLog {
    /// Delivery pauses for `reason` at `now` (it was not paused).
    pub fn paused(&mut self, reason: &str, now: i64, first_try_secs: i64) -> Option<Line> {
        let flip = self
            .ended
            .as_ref()
            .is_some_and(|e| e.reason == reason && now - e.at_ms < FLIP_MS);
        if !flip {
            self.flipping = false;
            self.ended = None;
            self.flips_untold = 0;
            self.flips_told_ms = None;
            self.run = 0;
            return Some(Line::Error(format!(
                "mail delivery paused, nothing is marked failed; trying again in \
                 {first_try_secs} s: {reason}"
            )));
        }
        self.flipping = true;
        self.run += 1;
        self.flips_untold += 1;
        if self.flips_told_ms.is_some_and(|told| now - told < FLIP_MS) {
            return None;
        }
        let line = if self.flips_told_ms.is_none() {
            let after = (now - self.ended.as_ref().map_or(now, |e| e.at_ms)) / 1000;
            format!(
                "mail delivery paused again for the same reason, {after} s after it resumed; \
                 more pauses like this are logged once a minute, with their count: {reason}"
            )
        } else {
            format!(
                "mail delivery paused again for the same reason, each time soon after it \
                 resumed ({} since the last line): {reason}",
                times(self.flips_untold)
            )
        };
        self.flips_untold = 0;
        self.flips_told_ms = Some(now);
        Some(Line::Error(line))
    }

    /// Delivery resumes at `now` after a pause for `reason` that began at `since_ms`.
    pub fn resumed(&mut self, reason: &str, since_ms: i64, now: i64) -> Option<Line> {
        let flipped = std::mem::take(&mut self.flipping);
        let since_ms = match &self.ended {
            Some(e) if flipped => e.since_ms,
            _ => since_ms,
        };
        self.ended = Some(Ended {
            reason: reason.to_owned(),
            since_ms,
            at_ms: now,
            told: !flipped,
        });
        (!flipped).then(|| {
            Line::Info(format!(
                "mail delivery resumed after {} s",
                (now - since_ms) / 1000
            ))
        })
    }

    /// Called now and then while delivery is not paused: tells the end of a run of flips
    /// once delivery has gone on long enough without pausing again.
    pub fn tick(&mut self, now: i64) -> Option<Line> {
        if self.ended.as_ref()?.at_ms > now - FLIP_MS {
            return None;
        }
        self.tell_end(now, |held| {
            format!("mail delivery resumed: it has gone on for {held} s without pausing again")
        })
    }

    /// Delivery stops at `now` (the daemon is stopping): the end of a run of flips not told
    /// yet is told now, or the log's last word about delivery would be a pause.
    pub fn stopping(&mut self, now: i64) -> Option<Line> {
        if self.flipping {
            return None; // paused: that is the last word, and true
        }
        self.tell_end(now, |held| {
            format!("mail delivery had resumed {held} s before this stop and not paused again")
        })
    }

    /// Tells the end of the last run of flips, once; `opening` words the line's start from
    /// the seconds delivery has gone on since.
    fn tell_end(&mut self, now: i64, opening: impl FnOnce(i64) -> String) -> Option<Line> {
        let e = self.ended.as_mut().filter(|e| !e.told)?;
        e.told = true;
        let line = format!(
            "{}, after {} s in which it paused {} more for the same reason",
            opening((now - e.at_ms) / 1000),
            (e.at_ms - e.since_ms) / 1000,
            times(self.run)
        );
        self.run = 0;
        self.flips_untold = 0;
        self.flips_told_ms = None;
        Some(Line::Info(line))
    }
}

fn times(n: usize) -> String {
    match n {
        1 => "once".into(),
        2 => "twice".into(),
        n => format!("{n} times"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "smtp: 535 5.7.8 Authentication credentials invalid (at connect)";

    fn text(line: Option<Line>) -> Option<String> {
        line.map(|l| match l {
            Line::Error(t) | Line::Info(t) => t,
        })
    }

    #[test]
    fn a_pause_and_its_end_are_each_told_once() {
        let mut log = PauseLog::default();
        let paused = text(log.paused(R, 0, 30)).unwrap();
        assert!(paused.contains("paused, nothing is marked failed") && paused.contains(R));
        assert_eq!(
            log.resumed(R, 0, 45_000),
            Some(Line::Info("mail delivery resumed after 45 s".into()))
        );
        // Nothing more to tell, however long it goes on.
        assert_eq!(log.tick(45_000 + 10 * FLIP_MS), None);
        // Much later the same cause is a new pause, told as such.
        let again = text(log.paused(R, 45_000 + 10 * FLIP_MS, 30)).unwrap();
        assert!(again.contains("nothing is marked failed"), "{again}");
    }

    #[test]
    fn flips_are_told_once_a_minute_and_their_end_once_it_holds() {
        let mut log = PauseLog::default();
        let mut lines = Vec::new();
        let note = |lines: &mut Vec<Line>, l: Option<Line>| lines.extend(l);
        note(&mut lines, log.paused(R, 0, 30));
        // An old connection delivers: told, for no one can know yet that it is a flip.
        note(&mut lines, log.resumed(R, 0, 2_000));
        // For three minutes, every two seconds: a new connection refused, an old one delivers.
        let mut now = 2_000;
        for _ in 0..90 {
            now += 1_000;
            note(&mut lines, log.paused(R, now, 30));
            now += 1_000;
            note(&mut lines, log.resumed(R, now, now));
            note(&mut lines, log.tick(now));
        }
        let end = now;
        // Then delivery goes on: the end is told once it held a minute.
        note(&mut lines, log.tick(end + FLIP_MS - 1));
        assert_eq!(lines.len(), 2 + 3, "{lines:#?}");
        note(&mut lines, log.tick(end + FLIP_MS));
        note(&mut lines, log.tick(end + 2 * FLIP_MS));
        let texts: Vec<String> = lines
            .iter()
            .map(|l| text(Some(l.clone())).unwrap())
            .collect();
        assert_eq!(texts.len(), 6, "{texts:#?}");
        assert!(texts[0].contains("nothing is marked failed"), "{texts:#?}");
        assert_eq!(texts[1], "mail delivery resumed after 2 s");
        assert!(
            texts[2].starts_with(
                "mail delivery paused again for the same reason, 1 s after it resumed"
            ),
            "{texts:#?}"
        );
        // One line a minute, each with the count of flips it stands for.
        for t in &texts[3..5] {
            assert!(t.contains("(30 times since the last line)"), "{texts:#?}");
        }
        assert!(
            texts[5].starts_with("mail delivery resumed: it has gone on for 60 s")
                && texts[5].contains("after 182 s in which it paused 90 times more"),
            "{texts:#?}"
        );
        assert!(matches!(lines[5], Line::Info(_)));
        assert!(lines[2..5].iter().all(|l| matches!(l, Line::Error(_))));
    }

    #[test]
    fn a_stop_tells_the_end_of_flips_not_told_yet_and_nothing_else() {
        let mut log = PauseLog::default();
        assert_eq!(log.stopping(0), None);
        log.paused(R, 0, 30);
        log.resumed(R, 0, 1_000);
        // Resumed and told: nothing more at the stop.
        assert_eq!(log.stopping(2_000), None);
        log.paused(R, 2_000, 30);
        // Paused: the stop leaves that as the last word, which is true.
        assert_eq!(log.stopping(3_000), None);
        log.resumed(R, 2_000, 32_000);
        let end = text(log.stopping(40_000)).unwrap();
        assert!(
            end.starts_with("mail delivery had resumed 8 s before this stop")
                && end.contains("after 32 s in which it paused once more"),
            "{end}"
        );
        assert_eq!(log.stopping(41_000), None);
        assert_eq!(log.tick(40_000 + FLIP_MS), None);
    }

    #[test]
    fn a_pause_for_another_reason_is_told_at_once() {
        let mut log = PauseLog::default();
        log.paused(R, 0, 30);
        log.resumed(R, 0, 1_000);
        log.paused(R, 2_000, 30);
        log.resumed(R, 2_000, 3_000);
        let other = text(log.paused("cannot write the state", 4_000, 30)).unwrap();
        assert!(other.contains("nothing is marked failed"), "{other}");
        // Its end is told at once, and the flips before it are forgotten.
        assert_eq!(
            log.resumed("cannot write the state", 4_000, 9_000),
            Some(Line::Info("mail delivery resumed after 5 s".into()))
        );
        assert_eq!(log.tick(9_000 + FLIP_MS), None);
    }

    #[test]
    fn a_flip_that_ends_for_good_is_told_even_if_it_was_the_only_one() {
        let mut log = PauseLog::default();
        log.paused(R, 0, 30);
        log.resumed(R, 0, 1_000);
        assert!(log.paused(R, 5_000, 30).is_some());
        // The password is mended: the next try delivers, and nothing pauses after it.
        assert_eq!(log.resumed(R, 5_000, 35_000), None);
        assert_eq!(log.tick(35_000 + FLIP_MS - 1), None);
        let end = text(log.tick(35_000 + FLIP_MS)).unwrap();
        assert!(
            end.contains("after 35 s in which it paused once more"),
            "{end}"
        );
    }
}

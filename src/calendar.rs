//! Events as iCalendar (RFC 5545): every event, a feed's events, or one article's.
//!
//! Output is deterministic, as for the feeds: `DTSTAMP` and `LAST-MODIFIED` are the article's
//! last change, `UID` its permanent id, and `SEQUENCE` grows with every later edit of the
//! file (seconds between publication and the last change), so a calendar that imported an
//! event takes a changed time or place as newer.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::{OffsetComponents, OffsetName, Tz};
use icalendar::{Alarm, Calendar, CalendarDateTime, Component, Event, EventLike};

use crate::article::When;
use crate::feed::SiteInfo;
use crate::library::Entry;

/// Media type of every `.ics` the site serves.
pub const MEDIA_TYPE: &str = "text/calendar; charset=utf-8";
/// How often a calendar application should fetch a subscribed calendar again.
const REFRESH: &str = "PT1H";
/// Offset changes are looked for day by day, then found to the minute (no zone changes its
/// offset twice in a day).
const ZONE_STEP: Duration = Duration::days(1);

/// One event: the library's entry, and a description when the article's text is at hand.
pub struct CalEvent<'a> {
    pub entry: &'a Entry,
    pub description: Option<String>,
}

/// A calendar named `name` of `events` (entries without an event are skipped).
pub fn ics(site: &SiteInfo, tz: Tz, name: &str, events: &[CalEvent<'_>]) -> String {
    let mut calendar = Calendar::empty();
    for (key, value) in [
        ("VERSION", "2.0"),
        (
            "PRODID",
            &format!("-//bantin//{}//VI", escape_text(&site.title)),
        ),
        ("CALSCALE", "GREGORIAN"),
        ("METHOD", "PUBLISH"),
        ("X-WR-CALNAME", &escape_text(name)),
        ("X-WR-TIMEZONE", tz.name()),
        ("X-PUBLISHED-TTL", REFRESH),
    ] {
        calendar.append_property(icalendar::Property::new(key, value));
    }
    calendar.append_property(
        icalendar::Property::new("REFRESH-INTERVAL", REFRESH)
            .add_parameter("VALUE", "DURATION")
            .done(),
    );
    let mut years: Option<(i32, i32)> = None;
    for e in events {
        let Some(when) = e.entry.event else { continue };
        let (first, last) = span(&when);
        years = Some(match years {
            None => (first.year(), last.year()),
            Some((a, b)) => (a.min(first.year()), b.max(last.year())),
        });
        calendar.push(event(site, tz, e, when));
    }
    let text = calendar.to_string();
    match years {
        // The zone's definition goes before the events that refer to it.
        Some((first, last)) => match text.find("\r\nBEGIN:VEVENT\r\n") {
            Some(at) => {
                let at = at + 2;
                format!(
                    "{}{}{}",
                    &text[..at],
                    vtimezone(tz, first, last),
                    &text[at..]
                )
            }
            None => text,
        },
        None => text,
    }
}

/// TEXT as RFC 5545 §3.3.11 writes it, for the properties the crate passes through as they
/// are (it escapes those it knows).
fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | ';' | ',' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out
}

/// The first and last day an event touches.
fn span(when: &When) -> (NaiveDate, NaiveDate) {
    match *when {
        When::Timed { start, end } => (start.date(), end.unwrap_or(start).date()),
        When::AllDay { first, last } => (first, last),
    }
}

fn event(site: &SiteInfo, tz: Tz, e: &CalEvent<'_>, when: When) -> Event {
    let entry = e.entry;
    let uid = site.tag(&entry.id);
    let url = site.article_url(&entry.id);
    let updated = entry.updated.with_timezone(&Utc);
    let mut event = Event::new();
    event
        .uid(&uid)
        .timestamp(updated)
        .last_modified(updated)
        .created(entry.published.with_timezone(&Utc))
        .sequence(sequence(entry))
        .summary(&entry.title)
        .url(&url)
        .add_property("CATEGORIES", &*entry.category)
        .add_property("STATUS", "CONFIRMED");
    let mut description = e.description.clone().unwrap_or_default();
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    description.push_str(&url);
    event.description(&description);
    if let Some(place) = &entry.place {
        event.location(place);
    }
    let local = |t: NaiveDateTime| CalendarDateTime::WithTimezone {
        date_time: t,
        tzid: tz.name().to_owned(),
    };
    // The reminder: the day before; for a whole-day event, at 09:00 the day before.
    let trigger = match when {
        When::Timed { start, end } => {
            event.starts(local(start));
            if let Some(end) = end {
                event.ends(local(end));
            }
            -Duration::days(1)
        }
        When::AllDay { first, last } => {
            event.starts(first);
            event.ends(last.succ_opt().unwrap_or(last));
            -Duration::hours(15)
        }
    };
    let mut alarm = Alarm::display(&format!("Sắp diễn ra: {}", entry.title), trigger);
    // The crate stamps every component with the time of writing unless told otherwise;
    // the alarm takes the event's own, so the output stays the same from run to run.
    alarm
        .timestamp(updated)
        .uid(&format!("{uid}#nhac-truoc-mot-ngay"));
    event.alarm(alarm.done());
    event.done()
}

/// Grows with every edit after publication: seconds from publication to the last change.
/// (Minutes let a correction saved within the minute of the last change keep its number,
/// and calendars then ignored the new time; seconds are also never fewer than the minutes
/// of an older version's calendars.)
pub fn sequence(entry: &Entry) -> u32 {
    let seconds = (entry.updated - entry.published).num_seconds();
    u32::try_from(seconds.max(0)).unwrap_or(u32::MAX)
}

/// `VTIMEZONE` for `tz` over the years `first..=last`: the offset in force on the last day
/// before `first` (so an event in the first hours of 1 January is covered whatever the
/// offset), then every change until the end of `last`, as single observances.
pub fn vtimezone(tz: Tz, first: i32, last: i32) -> String {
    let mut out = String::new();
    let crlf = "\r\n";
    let _ = write!(out, "BEGIN:VTIMEZONE{crlf}TZID:{}{crlf}", tz.name());
    let start = NaiveDate::from_ymd_opt(first, 1, 1)
        .unwrap_or_default()
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        - Duration::days(1);
    let end = NaiveDate::from_ymd_opt(last + 1, 1, 1)
        .unwrap_or_default()
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default();
    let mut offset = tz.offset_from_utc_datetime(&start);
    let observance = |out: &mut String,
                      from: &chrono_tz::TzOffset,
                      to: &chrono_tz::TzOffset,
                      at: NaiveDateTime| {
        let kind = if to.dst_offset().num_seconds() != 0 {
            "DAYLIGHT"
        } else {
            "STANDARD"
        };
        let _ = write!(
            out,
            "BEGIN:{kind}{crlf}DTSTART:{}{crlf}TZOFFSETFROM:{}{crlf}TZOFFSETTO:{}{crlf}",
            at.format("%Y%m%dT%H%M%S"),
            utc_offset(from),
            utc_offset(to),
        );
        if let Some(name) = to.abbreviation() {
            let _ = write!(out, "TZNAME:{name}{crlf}");
        }
        let _ = write!(out, "END:{kind}{crlf}");
    };
    // Local time (in the offset before it) of the start.
    let local = |t: NaiveDateTime, o: &chrono_tz::TzOffset| {
        t + Duration::seconds(o.fix().local_minus_utc() as i64)
    };
    observance(&mut out, &offset, &offset, local(start, &offset));
    let same = |a: &chrono_tz::TzOffset, b: &chrono_tz::TzOffset| {
        a.fix() == b.fix() && a.abbreviation() == b.abbreviation()
    };
    let mut t = start;
    while t < end {
        let next = t + ZONE_STEP;
        let o = tz.offset_from_utc_datetime(&next);
        if same(&o, &offset) {
            t = next;
            continue;
        }
        // The change lies in (t, next]: halve the span down to the second.
        let (mut lo, mut hi) = (t, next);
        while hi - lo > Duration::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            if same(&tz.offset_from_utc_datetime(&mid), &offset) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let at = tz.offset_from_utc_datetime(&hi);
        observance(&mut out, &offset, &at, local(hi, &offset));
        offset = at;
        t = hi;
    }
    let _ = write!(out, "END:VTIMEZONE{crlf}");
    out
}

/// `+0700`, `-0330`.
fn utc_offset(o: &chrono_tz::TzOffset) -> String {
    let secs = o.fix().local_minus_utc();
    let sign = if secs < 0 { '-' } else { '+' };
    let secs = secs.abs();
    format!("{sign}{:02}{:02}", secs / 3600, secs % 3600 / 60)
}

/// The start of an event as an instant, for sorting and for the page.
pub fn start_instant(when: &When, tz: Tz) -> Option<DateTime<Tz>> {
    let naive = match *when {
        When::Timed { start, .. } => start,
        When::AllDay { first, .. } => first.and_hms_opt(0, 0, 0)?,
    };
    tz.from_local_datetime(&naive).earliest()
}

/// The Vietnamese name of a weekday.
fn weekday(date: NaiveDate) -> &'static str {
    match date.weekday() {
        chrono::Weekday::Mon => "Thứ Hai",
        chrono::Weekday::Tue => "Thứ Ba",
        chrono::Weekday::Wed => "Thứ Tư",
        chrono::Weekday::Thu => "Thứ Năm",
        chrono::Weekday::Fri => "Thứ Sáu",
        chrono::Weekday::Sat => "Thứ Bảy",
        chrono::Weekday::Sun => "Chủ nhật",
    }
}

/// The time of an event as people read it: `08:00 – 11:30, Thứ Năm 16/01/2025`.
pub fn describe(when: &When) -> String {
    let day = |d: NaiveDate| format!("{} {}", weekday(d), d.format("%d/%m/%Y"));
    match *when {
        When::Timed { start, end: None } => {
            format!("{}, {}", start.format("%H:%M"), day(start.date()))
        }
        When::Timed {
            start,
            end: Some(end),
        } if end.date() == start.date() => format!(
            "{} – {}, {}",
            start.format("%H:%M"),
            end.format("%H:%M"),
            day(start.date())
        ),
        When::Timed {
            start,
            end: Some(end),
        } => format!(
            "{}, {} – {}, {}",
            start.format("%H:%M"),
            day(start.date()),
            end.format("%H:%M"),
            day(end.date())
        ),
        When::AllDay { first, last } if first == last => format!("cả ngày {}", day(first)),
        When::AllDay { first, last } => format!("từ {} đến {}", day(first), day(last)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::Stamp;

    const TZ: Tz = chrono_tz::Asia::Ho_Chi_Minh;

    fn entry(when: When) -> Entry {
        let published = DateTime::parse_from_rfc3339("2025-01-02T08:00:00+07:00").unwrap();
        Entry {
            id: "2025/tiep-dan".into(),
            category: "THÔNG BÁO".into(),
            title: "Lịch tiếp công dân, tháng 1; phiên \"định kỳ\"".into(),
            published,
            updated: published,
            author: None,
            file: "2025/tiep-dan.txt".into(),
            stamp: Stamp::default(),
            event: Some(when),
            place: Some("Trụ sở tiếp công dân quận, số 36 đường Cầu Giấy".into()),
            correction: None,
            sig: 0,
        }
    }

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap()
    }

    fn site() -> SiteInfo {
        SiteInfo::new("HĐND quận Cầu Giấy", "https://hdnd.example.vn", "vi")
    }

    /// The calendar of one event.
    fn calendar_of(e: &Entry) -> String {
        ics(
            &site(),
            TZ,
            "Lịch",
            &[CalEvent {
                entry: e,
                description: None,
            }],
        )
    }

    fn unfolded(text: &str) -> String {
        text.replace("\r\n ", "")
    }

    #[test]
    fn a_timed_event_in_the_council_zone() {
        let e = entry(When::Timed {
            start: at("2025-01-16 08:00"),
            end: Some(at("2025-01-16 11:30")),
        });
        let text = calendar_of(&e);
        assert!(text.contains("\r\n"), "lines end in CRLF");
        assert!(text.lines().all(|l| l.len() <= 76), "lines are folded");
        let text = unfolded(&text);
        for line in [
            "DTSTART;TZID=Asia/Ho_Chi_Minh:20250116T080000",
            "DTEND;TZID=Asia/Ho_Chi_Minh:20250116T113000",
            "TZID:Asia/Ho_Chi_Minh",
            "TZOFFSETTO:+0700",
            "DTSTAMP:20250102T010000Z",
            "SEQUENCE:0",
            "UID:tag:hdnd.example.vn\\,2020:2025/tiep-dan",
            "LOCATION:Trụ sở tiếp công dân quận\\, số 36 đường Cầu Giấy",
            "SUMMARY:Lịch tiếp công dân\\, tháng 1\\; phiên \"định kỳ\"",
            "URL:https://hdnd.example.vn/articles/2025/tiep-dan.html",
            "BEGIN:VALARM",
            "ACTION:DISPLAY",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            text.find("BEGIN:VTIMEZONE").unwrap() < text.find("BEGIN:VEVENT").unwrap(),
            "the zone comes before the events"
        );
        // Same input, same bytes.
        let again = calendar_of(&e);
        assert_eq!(unfolded(&again), text);
    }

    #[test]
    fn the_calendar_name_is_escaped_and_a_title_cannot_misplace_the_zone() {
        let mut e = entry(When::Timed {
            start: at("2025-01-16 08:00"),
            end: None,
        });
        e.title = "BEGIN:VEVENT".into();
        let text = ics(
            &site(),
            TZ,
            "Lịch, họp; tổ\\",
            &[CalEvent {
                entry: &e,
                description: None,
            }],
        );
        assert!(
            text.contains("X-WR-CALNAME:Lịch\\, họp\\; tổ\\\\\r\n"),
            "{text}"
        );
        let zone = text.find("BEGIN:VTIMEZONE").unwrap();
        assert!(text[..zone].ends_with("\r\n"), "the zone starts a line");
        assert!(zone < text.find("\r\nBEGIN:VEVENT\r\n").unwrap());
    }

    #[test]
    fn an_all_day_event_is_dates_with_an_exclusive_end() {
        let e = entry(When::AllDay {
            first: NaiveDate::from_ymd_opt(2025, 1, 16).unwrap(),
            last: NaiveDate::from_ymd_opt(2025, 1, 17).unwrap(),
        });
        let text = unfolded(&calendar_of(&e));
        assert!(text.contains("DTSTART;VALUE=DATE:20250116"), "{text}");
        assert!(text.contains("DTEND;VALUE=DATE:20250118"), "{text}");
    }

    #[test]
    fn an_edit_raises_the_sequence() {
        let mut e = entry(When::Timed {
            start: at("2025-01-16 08:00"),
            end: None,
        });
        assert_eq!(sequence(&e), 0);
        e.updated += Duration::hours(2);
        assert_eq!(sequence(&e), 7200);
        // Another save within the same minute still raises it.
        e.updated += Duration::seconds(20);
        assert_eq!(sequence(&e), 7220);
    }

    #[test]
    fn a_zone_with_summer_time_lists_its_changes() {
        let text = vtimezone(chrono_tz::Europe::Berlin, 2025, 2025);
        assert_eq!(text.matches("BEGIN:DAYLIGHT").count(), 1, "{text}");
        assert_eq!(text.matches("BEGIN:STANDARD").count(), 2, "{text}");
        assert!(text.contains("DTSTART:20250330T020000"), "{text}");
        assert!(text.contains("DTSTART:20251026T030000"), "{text}");
        // Hồ Chí Minh City has had one offset since 1975.
        let hcm = vtimezone(TZ, 2025, 2026);
        assert_eq!(hcm.matches("BEGIN:STANDARD").count(), 1, "{hcm}");
    }

    #[test]
    fn times_read_in_vietnamese() {
        assert_eq!(
            describe(&When::Timed {
                start: at("2025-01-16 08:00"),
                end: Some(at("2025-01-16 11:30"))
            }),
            "08:00 – 11:30, Thứ Năm 16/01/2025"
        );
        assert_eq!(
            describe(&When::AllDay {
                first: NaiveDate::from_ymd_opt(2025, 1, 19).unwrap(),
                last: NaiveDate::from_ymd_opt(2025, 1, 19).unwrap(),
            }),
            "cả ngày Chủ nhật 19/01/2025"
        );
    }
}

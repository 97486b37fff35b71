//! Events end to end: the article's `Thời gian:` and `Địa điểm:` lines become calendars the
//! daemon serves and `build` writes.

mod common;

use common::daemon::Daemon;
use common::http::request;
use common::{CAT_A, CAT_B, Site, article, set_mtime};

/// An event article of `category`, with the given time line.
fn event(category: &str, title: &str, when: &str) -> String {
    article(category, title, "02/01/2025 | 08:00").replace(
        "Ngày đăng 02/01/2025 | 08:00\n",
        &format!(
            "Ngày đăng 02/01/2025 | 08:00\nThời gian: {when}\n\
             Địa điểm: Trụ sở tiếp công dân quận, số 36 đường Cầu Giấy\n"
        ),
    )
}

/// The first `NAME...:` line of the first event, unfolded.
fn property(ics: &str, name: &str) -> Option<String> {
    let unfolded = ics.replace("\r\n ", "");
    let event = &unfolded[unfolded.find("BEGIN:VEVENT")?..];
    event
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")) || l.starts_with(&format!("{name};")))
        .map(|l| l.to_string())
}

fn site() -> Site {
    Site::with_config("[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n")
}

#[test]
fn calendars_are_served_follow_edits_and_answer_conditional_gets() {
    let site = site();
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    let daemon = Daemon::start(&site);
    let empty = daemon.get("/calendar.ics");
    assert_eq!(empty.status, 200);
    assert!(!empty.text().contains("BEGIN:VEVENT"));

    site.publish(
        "2025/tiep-dan.txt",
        &event(CAT_B, "Lịch tiếp công dân", "16/01/2025 | 08:00 - 11:30"),
    );
    let cal = daemon.get_until("/calendar.ics", "the event in the calendar", |r| {
        r.text().contains("BEGIN:VEVENT")
    });
    assert_eq!(
        cal.header("content-type"),
        Some("text/calendar; charset=utf-8")
    );
    let text = cal.text();
    assert_eq!(
        property(&text, "DTSTART").as_deref(),
        Some("DTSTART;TZID=Asia/Ho_Chi_Minh:20250116T080000")
    );
    assert_eq!(
        property(&text, "DTEND").as_deref(),
        Some("DTEND;TZID=Asia/Ho_Chi_Minh:20250116T113000")
    );
    assert!(text.contains("BEGIN:VTIMEZONE"));
    assert!(
        property(&text, "LOCATION")
            .unwrap()
            .contains("Trụ sở tiếp công dân quận\\, số 36")
    );
    let uid = property(&text, "UID").unwrap();
    let sequence = property(&text, "SEQUENCE").unwrap();

    // A feed's calendar holds the events of its categories only.
    assert!(
        daemon
            .get("/feeds/tat-ca.ics")
            .text()
            .contains("BEGIN:VEVENT")
    );
    let other = daemon.get("/feeds/tin-tuc.ics");
    assert_eq!(other.status, 200);
    assert!(!other.text().contains("BEGIN:VEVENT"), "{}", other.text());

    // The article's own calendar, and its page with the box and the link.
    let one = daemon.get("/articles/2025/tiep-dan.ics");
    assert_eq!(one.status, 200);
    assert_eq!(
        one.header("content-type"),
        Some("text/calendar; charset=utf-8")
    );
    assert_eq!(property(&one.text(), "UID"), Some(uid.clone()));
    // As a browser reads it (the template engine escapes '/').
    let page = daemon
        .get("/articles/2025/tiep-dan.html")
        .text()
        .replace("&#x2f;", "/");
    assert!(page.contains("08:00 – 11:30, Thứ Năm 16/01/2025"), "{page}");
    assert!(page.contains("Trụ sở tiếp công dân quận, số 36"), "{page}");
    assert!(page.contains("Thêm vào lịch"), "{page}");
    assert!(page.contains("tiep-dan.ics"), "{page}");

    // Conditional GET, as for the feeds.
    for path in [
        "/calendar.ics",
        "/feeds/tat-ca.ics",
        "/articles/2025/tiep-dan.ics",
    ] {
        let first = daemon.get(path);
        let etag = first.header("etag").unwrap().to_string();
        let r = request(daemon.addr, "GET", path, &[("If-None-Match", &etag)], b"");
        assert_eq!(r.status, 304, "{path}");
        assert!(r.body.is_empty());
    }

    // The time changes: same UID, a higher SEQUENCE.
    let path = site.store().join("2025/tiep-dan.txt");
    set_mtime(&path, 1_735_779_600); // 2025-01-02 01:00 UTC, the publication time
    let before = daemon.get_until("/calendar.ics", "the sequence at publication", |r| {
        r.text().contains("SEQUENCE:0")
    });
    let before_seq = property(&before.text(), "SEQUENCE").unwrap();
    assert_ne!(before_seq, sequence, "the edit before changed it too");
    site.publish(
        "2025/tiep-dan.txt",
        &event(CAT_B, "Lịch tiếp công dân", "17/01/2025 | 14:00 - 16:00"),
    );
    let after = daemon.get_until("/calendar.ics", "the new time", |r| {
        r.text().contains("20250117T140000")
    });
    let after = after.text();
    assert_eq!(property(&after, "UID"), Some(uid));
    let seq = |s: &str| -> u32 { s.trim_start_matches("SEQUENCE:").parse().unwrap() };
    assert!(
        seq(&property(&after, "SEQUENCE").unwrap()) > seq(&before_seq),
        "{after}"
    );

    // No longer an event: its calendar goes, the page stays.
    site.publish(
        "2025/tiep-dan.txt",
        &article(CAT_B, "Lịch tiếp công dân", "02/01/2025 | 08:00"),
    );
    daemon.get_until("/calendar.ics", "the event gone", |r| {
        !r.text().contains("BEGIN:VEVENT")
    });
    assert_eq!(daemon.get("/articles/2025/tiep-dan.ics").status, 404);
    assert_eq!(daemon.get("/articles/2025/tiep-dan.html").status, 200);
    assert!(!site.public().join("articles/2025/tiep-dan.ics").exists());
}

#[test]
fn build_writes_every_calendar() {
    let site = Site::new();
    site.put(
        "hop.txt",
        &event(CAT_A, "Kỳ họp thứ mười", "16/01/2025 - 17/01/2025"),
    );
    site.put("tin.txt", &article(CAT_B, "Tin", "14/02/2020 | 08:16"));
    let out = site.bantin(&["build"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let all = site.read_public("calendar.ics");
    assert_eq!(
        property(&all, "DTSTART").as_deref(),
        Some("DTSTART;VALUE=DATE:20250116")
    );
    assert_eq!(
        property(&all, "DTEND").as_deref(),
        Some("DTEND;VALUE=DATE:20250118"),
        "the end of a whole-day event is the day after its last"
    );
    assert!(
        site.read_public("feeds/tin-tuc.ics")
            .contains("Kỳ họp thứ mười")
    );
    assert!(site.public().join("articles/hop.ics").exists());
    assert!(!site.public().join("articles/tin.ics").exists());
}

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
    // (The feeds and calendars in memory change first; the files follow.)
    daemon.get_until(
        "/articles/2025/tiep-dan.ics",
        "its calendar file gone",
        |r| r.status == 404,
    );
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
    // The summary too, for readers that show only it.
    let json = site.read_public("feeds/tin-tuc.json");
    assert!(
        json.contains("\"summary\": \"Thời gian: từ Thứ Năm 16/01/2025 đến Thứ Sáu 17/01/2025. Địa điểm: Trụ sở tiếp công dân quận, số 36 đường Cầu Giấy."),
        "{json}"
    );
    // A feed reader sees when and where, first, in every format.
    for feed in [
        "feeds/tin-tuc.rss",
        "feeds/tin-tuc.atom",
        "feeds/tin-tuc.json",
    ] {
        let text = site.read_public(feed);
        for needed in [
            "Thời gian:",
            "từ Thứ Năm 16/01/2025 đến Thứ Sáu 17/01/2025",
            "Địa điểm:",
            "số 36 đường Cầu Giấy",
        ] {
            assert!(text.contains(needed), "{feed}: {needed}");
        }
    }
    let index = site.read_public("index.html");
    assert!(index.contains("Lịch sự kiện") && index.contains("calendar.ics"));
    // Subscribed in one tap: webcal:// for the phones and programs that know it, Google's
    // page for Android phones, which do not.
    assert!(index.contains("href=\"webcal://"), "{index}");
    assert!(
        index.contains("href=\"https://calendar.google.com/calendar/render?cid=http%3A%2F%2F"),
        "{index}"
    );
    assert!(!site.public().join("articles/tin.ics").exists());
}

mod by_mail {
    use std::collections::HashMap;

    use chrono::{DateTime, Duration as Days, Utc};

    use super::{event, property};
    use crate::common::daemon::PATIENCE;
    use crate::common::inproc::InProc;
    use crate::common::mail::{header, link, part, path_of};
    use crate::common::smtp::{Received, SmtpServer};
    use crate::common::{CAT_A, CAT_B, Site, add_confirmed, article, stdout, wait_for, wait_mails};

    const ALERTED: [&str; 5] = ["a1@x.vn", "a2@x.vn", "a3@x.vn", "a4@x.vn", "a5@x.vn"];
    const DIGESTED: [&str; 3] = ["d1@x.vn", "d2@x.vn", "d3@x.vn"];

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(Utc::now().timestamp() + 1, 0).unwrap()
    }

    fn to(m: &Received) -> String {
        m.to.join(",")
    }

    fn json(site: &Site, args: &[&str]) -> serde_json::Value {
        let out = site.bantin(args);
        assert!(out.status.success(), "{}", crate::common::stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    }

    /// The whole story over SMTP: an event is alerted (with its calendar) and digested (with
    /// its bulletin page); a correction reaches exactly the eight who were told, each
    /// threaded on the mail they received; an edit without a new reason mails nobody; the
    /// delivery report matches what the server received.
    #[test]
    fn an_event_is_told_corrected_and_reported() {
        let smtp = SmtpServer::start();
        let site = Site::with_config(&format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\n\
             from = \"HĐND quận Cầu Giấy <bantin@hdnd.test>\"\ntransport = \"smtp\"\n\
             concurrency = 2\n\
             [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntimeout_secs = 5\n\
             [digest]\ndaily = \"0 0 7 * * *\"\nweekly = \"0 0 0 1 1 * 2099\"\n",
            smtp.addr.port()
        ));
        site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
        for who in ALERTED {
            add_confirmed(&site, who, "immediate");
        }
        for who in DIGESTED {
            add_confirmed(&site, who, "daily");
        }
        let clock = bantin::clock::Clock::manual(now());
        let daemon = InProc::start(&site, &clock);

        // The event: five alerts, each with the time and place first and the calendar.
        let original = event(CAT_B, "Kỳ họp thứ mười", "16/01/2027 | 08:00 - 11:30");
        site.publish("2027/ky-hop.txt", &original);
        let alerts = wait_mails(&smtp, 5);
        for m in &alerts {
            let text = part(&m.data, "text/plain").unwrap();
            let at = text
                .find("Thời gian: 08:00 – 11:30, Thứ Bảy 16/01/2027")
                .unwrap();
            assert!(at < text.find("Đoạn thứ nhất").unwrap(), "{text}");
            assert!(
                text.contains("Địa điểm: Trụ sở tiếp công dân quận"),
                "{text}"
            );
            let ics = part(&m.data, "text/calendar").expect("the calendar attached");
            assert_eq!(
                property(&ics, "DTSTART").as_deref(),
                Some("DTSTART;TZID=Asia/Ho_Chi_Minh:20270116T080000")
            );
        }

        // The digest: three mails, linking to the bulletin page.
        daemon.advance(Days::days(1));
        let mails = wait_mails(&smtp, 8);
        let digests: Vec<&Received> = mails
            .iter()
            .filter(|m| DIGESTED.contains(&to(m).as_str()))
            .collect();
        assert_eq!(digests.len(), 3);
        let bulletin = link(&digests[0].data, "/bulletins/daily/");
        let page = daemon.get(&path_of(&bulletin));
        assert_eq!(page.status, 200, "{bulletin}");
        assert!(page.text().contains("Kỳ họp thứ mười"));
        assert!(!page.text().contains("d1@x.vn"), "no personal data");
        let list = daemon.get("/bulletins/");
        assert_eq!(list.status, 200);
        assert!(
            list.text()
                .replace("&#x2f;", "/")
                .contains(&path_of(&bulletin))
        );
        let received: HashMap<String, String> = mails
            .iter()
            .map(|m| (to(m), header(&m.data, "Message-ID").unwrap()))
            .collect();
        assert_eq!(received.len(), 8);

        // The correction: a new time and a reason. Exactly the eight get one each, threaded.
        let corrected = event(CAT_B, "Kỳ họp thứ mười", "17/01/2027 | 14:00 - 16:00").replace(
            "Thời gian:",
            "Đính chính: Đổi thời gian họp sang chiều 17/01\nThời gian:",
        );
        site.publish("2027/ky-hop.txt", &corrected);
        let mails = wait_mails(&smtp, 16);
        let corrections: Vec<&Received> = mails[8..].iter().collect();
        let mut seen = HashMap::new();
        for m in &corrections {
            let subject = header(&m.data, "Subject").unwrap();
            assert_eq!(subject, "Đính chính: Kỳ họp thứ mười");
            let who = to(m);
            let answered = header(&m.data, "In-Reply-To").unwrap();
            assert_eq!(Some(&answered), received.get(&who), "{who} threaded");
            assert_eq!(header(&m.data, "References"), Some(answered));
            let text = part(&m.data, "text/plain").unwrap();
            assert!(
                text.contains("Đổi thời gian họp sang chiều 17/01"),
                "{text}"
            );
            assert!(text.contains("[-08:00-]{+14:00+}"), "{text}");
            let ics = part(&m.data, "text/calendar").expect("the new time attached");
            assert!(ics.contains("20270117T140000"), "{ics}");
            *seen.entry(who).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 8, "{seen:?}");
        assert!(seen.values().all(|n| *n == 1), "{seen:?}");
        // The page says it was corrected.
        wait_for("the corrected page", PATIENCE, || {
            daemon
                .get("/articles/2027/ky-hop.html")
                .text()
                .replace("&#x2f;", "/")
                .contains("Đổi thời gian họp sang chiều 17/01")
        });
        assert!(
            daemon
                .get("/articles/2027/ky-hop.html")
                .text()
                .contains("Đính chính lúc")
        );

        // A second edit with the same reason mails nobody.
        let notices = daemon.metric("bantin_mail_article_notices_total").unwrap();
        site.publish(
            "2027/ky-hop.txt",
            &corrected.replace("Đoạn thứ hai.", "Đoạn thứ hai, sửa lỗi chính tả."),
        );
        wait_for("the edit noticed", PATIENCE, || {
            daemon.metric("bantin_mail_article_notices_total").unwrap() > notices
        });
        let report = json(&site, &["status", "--article", "2027/ky-hop", "--json"]);
        assert_eq!(
            report["corrections"].as_array().unwrap().len(),
            1,
            "{report}"
        );
        assert_eq!(smtp.accepted().len(), 16);

        // The report matches the server.
        wait_for("the corrections recorded", PATIENCE, || {
            json(&site, &["status", "--article", "2027/ky-hop", "--json"])["corrections"][0]["sent"]
                == 8
        });
        let report = json(&site, &["status", "--article", "2027/ky-hop", "--json"]);
        assert_eq!(report["alerts"]["planned"], 5, "{report}");
        assert_eq!(report["alerts"]["sent"], 5, "{report}");
        assert_eq!(report["alerts"]["pending"], 0, "{report}");
        assert_eq!(report["alerts"]["failed"], 0, "{report}");
        assert_eq!(report["digests"]["told"], 3, "{report}");
        assert_eq!(report["told"], 8, "{report}");
        assert_eq!(report["corrections"][0]["planned"], 8, "{report}");
        assert!(report["first_seen"].is_string(), "{report}");
        assert!(report["alerts"]["first_accepted"].is_string(), "{report}");
        let date = bulletin
            .rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".html")
            .to_string();
        let b = json(&site, &["status", "--bulletin", "daily", &date, "--json"]);
        assert_eq!(b["mails"]["sent"], 3, "{b}");
        assert_eq!(b["articles"][0], "2027/ky-hop", "{b}");
        let text = stdout(&site.bantin(&["status", "--article", "2027/ky-hop"]));
        assert!(
            text.contains("alerts: planned 5, sent 5, pending 0, failed 0, cancelled 0"),
            "{text}"
        );
        let unknown = site.bantin(&["status", "--article", "khong-co"]);
        assert_eq!(unknown.status.code(), Some(1));

        // Eight days on, the full records are compacted: the report says the same, and a
        // second correction still reaches the eight, each on the mail they first received.
        daemon.advance(Days::days(8));
        let export = site.path("export.jsonl");
        wait_for("the deliveries compacted", PATIENCE, || {
            let out = site.bantin(&["state", "export", export.to_str().unwrap()]);
            assert!(out.status.success(), "{}", crate::common::stderr(&out));
            let records = std::fs::read_to_string(&export).unwrap();
            !records
                .lines()
                .any(|l| l.contains("\"tree\":\"outbox\"") && l.contains("\"state\":\"sent\""))
        });
        // The totals stay.
        assert_eq!(crate::common::status(&site)["outbox"]["sent"], 16);
        let compacted = json(&site, &["status", "--article", "2027/ky-hop", "--json"]);
        for field in ["alerts", "digests", "told"] {
            assert_eq!(
                compacted[field]
                    .to_string()
                    .replace("\"first_accepted\":null,", ""),
                report[field]
                    .to_string()
                    .replace("\"first_accepted\":null,", ""),
                "{field}: {compacted}"
            );
        }
        assert_eq!(compacted["corrections"][0]["sent"], 8, "{compacted}");
        assert_eq!(
            json(&site, &["status", "--bulletin", "daily", &date, "--json"])["mails"]["sent"],
            3
        );
        site.publish(
            "2027/ky-hop.txt",
            &corrected.replace("Đổi thời gian họp sang chiều 17/01", "Đổi phòng họp"),
        );
        let mails = wait_mails(&smtp, 24);
        let second: Vec<&Received> = mails[16..].iter().collect();
        let mut seen = HashMap::new();
        for m in &second {
            assert_eq!(
                header(&m.data, "Subject").unwrap(),
                "Đính chính: Kỳ họp thứ mười"
            );
            let who = to(m);
            assert_eq!(
                header(&m.data, "In-Reply-To").as_ref(),
                received.get(&who),
                "{who} threaded after compaction"
            );
            *seen.entry(who).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 8, "{seen:?}");
        daemon.stop();
    }
}

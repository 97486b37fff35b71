//! What happens with time: scheduled articles, digest ticks, retries. The daemon runs in the
//! test process on a manual clock that the test moves, so nothing here waits for a schedule,
//! a cron tick or a retry delay in real time. Store, sled, HTTP and SMTP are real.

mod common;

use chrono::{DateTime, Duration as Days, Utc};

use common::daemon::PATIENCE;
use common::inproc::InProc;
use common::mail::{header, part};
use common::smtp::{Action, SmtpServer};
use common::{CAT_A, CAT_B, Site, article, stdout, wait_for};

/// A site whose daemon listens on port 0, mails through `smtp` and retries after a minute.
fn mail_site(smtp: std::net::SocketAddr, daily: &str) -> Site {
    let site = Site::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [mail]\nfrom = \"HĐND quận Cầu Giấy <bantin@hdnd.test>\"\ntransport = \"smtp\"\n\
         retry_initial_ms = 60000\nretry_max_ms = 600000\nconcurrency = 2\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntimeout_secs = 1\n\
         [digest]\ndaily = \"{daily}\"\nweekly = \"0 0 0 1 1 * 2099\"\n",
        smtp.port()
    ));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    site
}

fn add_confirmed(site: &Site, email: &str, schedule: &str) {
    let out = site.bantin(&[
        "subscribers",
        "add",
        email,
        "--schedule",
        schedule,
        "--confirmed",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
}

fn wait_mails(smtp: &SmtpServer, n: usize) -> Vec<common::smtp::Received> {
    wait_for(&format!("{n} accepted mails"), PATIENCE, || {
        smtp.accepted().len() >= n
    });
    smtp.accepted()
}

/// The next whole second (the clock the test moves starts there, after anything the CLI
/// recorded on the system clock).
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp() + 1, 0).unwrap()
}

/// The status as JSON, through the daemon's admin socket.
fn status(site: &Site) -> serde_json::Value {
    serde_json::from_str(&stdout(&site.bantin(&["status", "--json"]))).unwrap()
}

#[test]
fn a_scheduled_article_appears_when_the_clock_reaches_it() {
    let site = Site::with_config("[http]\nlisten = \"127.0.0.1:0\"\n");
    let start = DateTime::parse_from_rfc3339("2026-11-20T08:00:00+07:00")
        .unwrap()
        .to_utc();
    let clock = bantin::clock::Clock::manual(start);
    let daemon = InProc::start(&site, &clock);
    site.publish(
        "hen-gio.txt",
        &article(CAT_A, "Bài hẹn giờ", "20/11/2026 | 09:00"),
    );
    wait_for("the article seen as scheduled", PATIENCE, || {
        daemon.metric("bantin_articles_scheduled") == Some(1.0)
    });
    assert!(
        !daemon
            .get("/feeds/tin-tuc.rss")
            .text()
            .contains("Bài hẹn giờ")
    );
    assert_eq!(daemon.get("/articles/hen-gio.html").status, 404);
    daemon.advance(Days::hours(1));
    wait_for("the scheduled article", PATIENCE, || {
        daemon
            .get("/feeds/tin-tuc.rss")
            .text()
            .contains("Bài hẹn giờ")
    });
    wait_for("its page", PATIENCE, || {
        daemon.get("/articles/hen-gio.html").status == 200
    });
    wait_for("nothing left scheduled", PATIENCE, || {
        daemon.metric("bantin_articles_scheduled") == Some(0.0)
    });
}

#[test]
fn digests_once_nothing_when_nothing_new_and_one_catch_up() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "0 0 7 * * *");
    add_confirmed(&site, "ngay@x.vn", "daily");
    let clock = bantin::clock::Clock::manual(now());
    // First start: the baseline, then stop.
    InProc::start(&site, &clock).stop();
    site.put(
        "mot.txt",
        &article(CAT_A, "Tin thứ nhất", "20/11/2026 | 08:00"),
    );
    site.put(
        "hai.txt",
        &article(CAT_B, "Tin thứ hai", "20/11/2026 | 09:00"),
    );
    let daemon = InProc::start(&site, &clock);
    let before = status(&site)["last_digests"]["daily"].clone();
    assert!(before.is_null(), "no digest yet: {before}");
    daemon.advance(Days::days(1));
    let mails = wait_mails(&smtp, 1);
    let digest = &mails[0].data;
    let subject = header(digest, "Subject").unwrap();
    assert!(
        subject.contains("Bản tin ngày") && subject.contains("2 tin mới"),
        "{subject}"
    );
    let text = part(digest, "text/plain").unwrap();
    assert!(
        text.contains("Tin thứ nhất") && text.contains("Tin thứ hai"),
        "{text}"
    );
    assert!(
        text.contains("== THÔNG BÁO ==") && text.contains("== TIN TỨC"),
        "grouped by category:\n{text}"
    );
    assert!(header(digest, "List-Unsubscribe").is_some());

    // The next tick with nothing new runs and sends nothing.
    let first = status(&site)["last_digests"]["daily"].clone();
    daemon.advance(Days::days(1));
    wait_for("the next digest run", PATIENCE, || {
        status(&site)["last_digests"]["daily"] != first
    });
    assert_eq!(smtp.messages().len(), 1);

    // Down while three ticks pass: one catch-up at start, not one per missed tick.
    daemon.stop();
    site.put(
        "ba.txt",
        &article(CAT_A, "Tin thứ ba", "21/11/2026 | 08:00"),
    );
    clock.advance(Days::days(3));
    let daemon = InProc::start(&site, &clock);
    let mails = wait_mails(&smtp, 2);
    assert!(
        part(&mails[1].data, "text/plain")
            .unwrap()
            .contains("Tin thứ ba")
    );
    let caught_up = status(&site)["last_digests"]["daily"].clone();
    daemon.advance(Days::days(1));
    wait_for("the tick after the catch-up", PATIENCE, || {
        status(&site)["last_digests"]["daily"] != caught_up
    });
    assert_eq!(smtp.messages().len(), 2, "one catch-up digest only");
}

/// Publishes one article for `dan@x.vn` and returns the daemon.
fn one_alert(site: &Site) -> InProc {
    add_confirmed(site, "dan@x.vn", "immediate");
    let clock = bantin::clock::Clock::manual(now());
    let daemon = InProc::start(site, &clock);
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    daemon
}

#[test]
fn a_451_is_retried_after_the_delay_with_the_same_message_id() {
    let smtp = SmtpServer::with_script(|n, _| {
        if n == 0 {
            Action::Temporary
        } else {
            Action::Accept
        }
    });
    let site = mail_site(smtp.addr, "0 0 0 1 1 * 2099");
    let daemon = one_alert(&site);
    wait_for("the retry planned", PATIENCE, || {
        daemon.metric("bantin_mail_retries_total") == Some(1.0)
    });
    assert_eq!(smtp.messages().len(), 1, "no second try before the delay");
    // The first retry comes after 45 to 75 s (60 s ± 25 %).
    daemon.advance(Days::seconds(76));
    wait_mails(&smtp, 1);
    let all = smtp.messages();
    assert_eq!(all.len(), 2, "one refusal, one delivery");
    assert_eq!(
        header(&all[0].data, "Message-ID"),
        header(&all[1].data, "Message-ID")
    );
    let json = status(&site);
    assert_eq!(json["outbox"]["sent"], 1, "{json}");
    assert_eq!(json["outbox"]["pending"], 0, "{json}");
}

#[test]
fn a_dropped_connection_is_retried_with_the_same_message_id() {
    let smtp = SmtpServer::with_script(|n, _| if n == 0 { Action::Drop } else { Action::Accept });
    let site = mail_site(smtp.addr, "0 0 0 1 1 * 2099");
    let daemon = one_alert(&site);
    wait_for("the retry planned", PATIENCE, || {
        daemon.metric("bantin_mail_retries_total") == Some(1.0)
    });
    daemon.advance(Days::seconds(76));
    wait_mails(&smtp, 1);
    let all = smtp.messages();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].action, Action::Drop);
    assert_eq!(
        header(&all[0].data, "Message-ID"),
        header(&all[1].data, "Message-ID")
    );
}

#[test]
fn a_hanging_server_times_out_and_the_pool_keeps_working() {
    let smtp = SmtpServer::with_script(|n, _| if n == 0 { Action::Hang } else { Action::Accept });
    let site = mail_site(smtp.addr, "0 0 0 1 1 * 2099");
    for who in ["a", "b"] {
        add_confirmed(&site, &format!("{who}@x.vn"), "immediate");
    }
    let daemon = one_alert(&site);
    // The hung mail times out (1 s of SMTP timeout) and waits for its retry; the others go.
    wait_mails(&smtp, 2);
    wait_for("the retry planned", PATIENCE, || {
        daemon.metric("bantin_mail_retries_total") == Some(1.0)
    });
    assert_eq!(smtp.messages()[0].action, Action::Hang);
    daemon.advance(Days::seconds(76));
    let mails = wait_mails(&smtp, 3);
    let mut to: Vec<_> = mails.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(to, ["a@x.vn", "b@x.vn", "dan@x.vn"], "every address once");
}

#[test]
fn a_server_down_then_back() {
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = down.local_addr().unwrap();
    drop(down);
    let site = mail_site(addr, "0 0 0 1 1 * 2099");
    let daemon = one_alert(&site);
    // Nothing listens: delivery pauses (no attempt counted) instead of retrying each mail.
    wait_for("the pause", PATIENCE, || {
        daemon
            .get("/metrics")
            .text()
            .contains("bantin_mail_paused{reason=")
    });
    assert_eq!(daemon.metric("bantin_mail_retries_total"), Some(0.0));
    let smtp = SmtpServer::start_at(addr);
    daemon.advance(Days::seconds(31));
    let mails = wait_mails(&smtp, 1);
    assert_eq!(mails[0].to, ["dan@x.vn"]);
    assert!(
        header(&mails[0].data, "Subject")
            .unwrap()
            .contains("Bài mới")
    );
}

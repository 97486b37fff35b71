//! What happens with time: scheduled articles, digest ticks, retries. The daemon runs in the
//! test process on a manual clock that the test moves, so nothing here waits for a schedule,
//! a cron tick or a retry delay in real time. Store, sled, HTTP and SMTP are real.

mod common;

use chrono::{DateTime, Duration as Days, Utc};

use common::daemon::PATIENCE;
use common::inproc::InProc;
use common::mail::{header, part};
use common::smtp::{Action, SmtpServer};
use common::{
    CAT_A, CAT_B, Site, add_confirmed, article, deliveries, status, stdout, wait_for, wait_mails,
};

/// A site whose daemon listens on port 0, mails through `smtp` and retries after a minute. A
/// mail the server does not answer times out after a second; connecting keeps its usual
/// patience (a busy test machine must not look like a relay that refuses us).
fn mail_site(smtp: std::net::SocketAddr, daily: &str) -> Site {
    mail_site_timing_out_after(smtp, daily, 1)
}

/// [`mail_site`] with an SMTP DATA timeout of `data_secs`.
fn mail_site_timing_out_after(smtp: std::net::SocketAddr, daily: &str, data_secs: u64) -> Site {
    let site = Site::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\nfrom = \"HĐND quận Cầu Giấy <bantin@hdnd.test>\"\ntransport = \"smtp\"\n\
         retry_initial_ms = 60000\nretry_max_ms = 600000\nconcurrency = 2\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ndata_timeout_secs = {data_secs}\n\
         [digest]\ndaily = \"{daily}\"\nweekly = \"0 0 0 1 1 * 2099\"\n",
        smtp.port()
    ));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    site
}

/// The next whole second (the clock the test moves starts there, after anything the CLI
/// recorded on the system clock).
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp() + 1, 0).unwrap()
}

#[test]
fn a_scheduled_article_appears_when_the_clock_reaches_it() {
    let site =
        Site::with_config("[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n");
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
        subject.starts_with("Bản tin hằng ngày ") && subject.ends_with(" – 2 tin mới"),
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
    // (A digest is queued before its run is recorded: the outbox, not the relay, shows it.)
    assert_eq!(deliveries(&site), 1);
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
    assert_eq!(deliveries(&site), 2, "one catch-up digest only");
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
    // `status` says what waits and why, as it does for a pause (no address in it).
    let deferred = status(&site)["deferred"].clone();
    assert_eq!(deferred["count"], 1, "{deferred}");
    assert_eq!(deferred["attempts"], 1, "{deferred}");
    assert!(
        deferred["reason"]
            .as_str()
            .unwrap()
            .starts_with("smtp: 451"),
        "{deferred}"
    );
    assert!(deferred["next_try"].is_string(), "{deferred}");
    let text = common::stdout(&site.bantin(&["status"]));
    assert!(
        text.contains(
            "deferred: 1 mail tried and waiting to be tried again (up to 1 try so far), next try "
        ),
        "{text}"
    );
    assert!(!text.contains("dan@x.vn"), "{text}");
    // The first retry comes after 45 to 75 s (60 s ± 25 %).
    daemon.advance(Days::seconds(76));
    wait_mails(&smtp, 1);
    let all = smtp.messages();
    assert_eq!(all.len(), 2, "one refusal, one delivery");
    assert_eq!(
        header(&all[0].data, "Message-ID"),
        header(&all[1].data, "Message-ID")
    );
    // The relay holds the mail before the daemon has its answer: wait for the record.
    wait_for("the delivery recorded", PATIENCE, || {
        status(&site)["outbox"]["sent"] == 1
    });
    let json = status(&site);
    assert_eq!(json["outbox"]["sent"], 1, "{json}");
    assert_eq!(json["outbox"]["pending"], 0, "{json}");
    assert!(json["deferred"].is_null(), "{json}");
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
    // The good mails share the DATA timeout with the hung one: 1 s was once too short for
    // them on a loaded machine (retried, so only one was accepted before the clock moved).
    let site = mail_site_timing_out_after(smtp.addr, "0 0 0 1 1 * 2099", 5);
    for who in ["a", "b"] {
        add_confirmed(&site, &format!("{who}@x.vn"), "immediate");
    }
    let daemon = one_alert(&site);
    // The hung mail times out (5 s of SMTP timeout) and waits for its retry; the others go.
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
        daemon.metrics().contains("bantin_mail_paused{reason=")
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

/// A site that mails through `smtp` with `mail` settings, its clock standing at 20/11/2026
/// 10:00 in Hà Nội.
fn news_site(smtp: &SmtpServer, mail: &str) -> (Site, bantin::clock::Clock) {
    let site = Site::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [mail]\nfrom = \"HĐND quận Cầu Giấy <bantin@hdnd.test>\"\ntransport = \"smtp\"\n{mail}\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
         [digest]\ndaily = \"0 0 0 1 1 * 2099\"\nweekly = \"0 0 0 1 1 * 2099\"\n",
        smtp.addr.port()
    ));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    add_confirmed(&site, "dan@x.vn", "immediate");
    let start = DateTime::parse_from_rfc3339("2026-11-20T10:00:00+07:00").unwrap();
    (site, bantin::clock::Clock::manual(start.to_utc()))
}

/// Waits until the mail side has handled `n` notices of published articles.
fn notices(daemon: &InProc, n: usize) {
    wait_for("the mail side to hear of it", PATIENCE, || {
        daemon
            .metric("bantin_mail_article_notices_total")
            .is_some_and(|v| v >= n as f64)
    });
}

#[test]
fn an_article_saved_in_three_steps_over_10_s_is_alerted_once_with_its_final_text() {
    saved_in_three_steps(5);
}

#[test]
fn each_save_starts_the_wait_again() {
    // 15 s between saves with a 20 s delay: the first save's alert would be due between the
    // second and third; it waits for the last.
    saved_in_three_steps(15);
}

fn saved_in_three_steps(gap_secs: i64) {
    let smtp = SmtpServer::start();
    let (site, clock) = news_site(&smtp, "alert_delay_secs = 20");
    let daemon = InProc::start(&site, &clock);
    let path = site.store().join("viet-dan.txt");
    let head = "THÔNG BÁO\n\nBài viết dần\nNgày đăng 20/11/2026 | 09:00\n\n";
    let steps = [
        "Đoạn một.",
        "Đoạn một.\n\nĐoạn hai.",
        "Đoạn một.\n\nĐoạn hai.\n\nĐoạn cuối.",
    ];
    for (i, body) in steps.iter().enumerate() {
        // Saved in place, as an editor does.
        std::fs::write(&path, format!("{head}{body}\n")).unwrap();
        let last = body.rsplit("\n\n").next().unwrap();
        wait_for("the step published", PATIENCE, || {
            daemon.get("/articles/viet-dan.html").text().contains(last)
        });
        // The mail side has heard of this save before the clock moves on.
        notices(&daemon, i + 1);
        if i < 2 {
            daemon.advance(Days::seconds(gap_secs));
        }
    }
    daemon.advance(Days::seconds(21));
    let mails = wait_mails(&smtp, 1);
    let text = part(&mails[0].data, "text/plain").unwrap();
    assert!(text.contains("Đoạn cuối."), "the final text: {text}");
    wait_for("the outbox to settle", PATIENCE, || {
        status(&site)["outbox"]["pending"] == 0
    });
    assert_eq!(deliveries(&site), 1, "one alert");
    assert_eq!(smtp.messages().len(), 1);
}

/// A clerk saves a correction, then rewords its reason a few seconds later: one correction
/// mail, once the article has been unchanged for the delay, with the final reason.
#[test]
fn a_correction_saved_twice_is_mailed_once_with_its_final_reason() {
    let smtp = SmtpServer::start();
    let (site, clock) = news_site(&smtp, "alert_delay_secs = 20");
    let daemon = InProc::start(&site, &clock);
    let path = site.store().join("hop.txt");
    let head = "THÔNG BÁO\n\nKỳ họp thứ 21\nNgày đăng 20/11/2026 | 09:00\n";
    let body = "\nKỳ họp khai mạc ngày 3/12.\n";
    std::fs::write(&path, format!("{head}{body}")).unwrap();
    notices(&daemon, 1);
    daemon.advance(Days::seconds(21));
    wait_mails(&smtp, 1);
    wait_for("the alert recorded", PATIENCE, || {
        status(&site)["outbox"]["pending"] == 0
    });
    for (i, reason) in ["Đổi ngày hop", "Đổi ngày họp sang 4/12"]
        .iter()
        .enumerate()
    {
        std::fs::write(&path, format!("{head}Đính chính: {reason}\n{body}")).unwrap();
        wait_for("the correction published", PATIENCE, || {
            daemon.get("/articles/hop.html").text().contains(reason)
        });
        notices(&daemon, 2 + i);
        daemon.advance(Days::seconds(5));
    }
    // 5 s after the last save: nothing yet.
    assert_eq!(smtp.messages().len(), 1, "no correction before the delay");
    daemon.advance(Days::seconds(16));
    let mails = wait_mails(&smtp, 2);
    assert!(
        header(&mails[1].data, "Subject")
            .unwrap()
            .contains("Đính chính"),
        "{}",
        mails[1].data
    );
    let text = part(&mails[1].data, "text/plain").unwrap();
    assert!(
        text.contains("Đổi ngày họp sang 4/12"),
        "the final reason: {text}"
    );
    wait_for("the outbox to settle", PATIENCE, || {
        status(&site)["outbox"]["pending"] == 0
    });
    assert_eq!(smtp.messages().len(), 2, "one alert, one correction");
}

#[test]
fn an_article_deleted_before_its_alert_is_due_mails_nobody() {
    let smtp = SmtpServer::start();
    let (site, clock) = news_site(&smtp, "alert_delay_secs = 60");
    let daemon = InProc::start(&site, &clock);
    site.publish(
        "nham.txt",
        &article(CAT_A, "Đăng nhầm", "20/11/2026 | 09:00"),
    );
    wait_for("the mistake published", PATIENCE, || {
        daemon.get("/articles/nham.html").status == 200
    });
    std::fs::remove_file(site.store().join("nham.txt")).unwrap();
    wait_for("the mistake gone", PATIENCE, || {
        daemon.get("/articles/nham.html").status == 404
    });
    site.publish(
        "dung.txt",
        &article(CAT_A, "Bài đúng", "20/11/2026 | 09:30"),
    );
    wait_for("the right one published", PATIENCE, || {
        daemon.get("/articles/dung.html").status == 200
    });
    notices(&daemon, 2);
    daemon.advance(Days::seconds(61));
    let mails = wait_mails(&smtp, 1);
    assert!(
        header(&mails[0].data, "Subject")
            .unwrap()
            .contains("Bài đúng")
    );
    wait_for("the outbox to settle", PATIENCE, || {
        status(&site)["outbox"]["pending"] == 0
    });
    assert_eq!(deliveries(&site), 1, "nothing for the deleted article");
}

#[test]
fn drafts_are_never_published_or_mailed_until_renamed() {
    let smtp = SmtpServer::start();
    let (site, clock) = news_site(&smtp, "alert_delay_secs = 0");
    let daemon = InProc::start(&site, &clock);
    site.publish(
        "_nhap.txt",
        &article(CAT_A, "Bản nháp", "20/11/2026 | 09:00"),
    );
    site.publish(
        "_chua-xong/bai.txt",
        &article(CAT_A, "Nháp trong thư mục", "20/11/2026 | 09:00"),
    );
    site.publish(
        "that.txt",
        &article(CAT_A, "Bài thật", "20/11/2026 | 09:10"),
    );
    let mails = wait_mails(&smtp, 1);
    assert!(
        header(&mails[0].data, "Subject")
            .unwrap()
            .contains("Bài thật")
    );
    let feed = daemon.get("/feeds/tat-ca.atom").text();
    assert!(
        !feed.contains("Bản nháp") && !feed.contains("Nháp trong"),
        "{feed}"
    );
    assert_eq!(daemon.get("/articles/_nhap.html").status, 404);
    assert_eq!(deliveries(&site), 1, "no alert for a draft");
    // `check` reads drafts too, and says they are drafts.
    let out = site.bantin(&["check"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let said = common::stderr(&out);
    assert!(
        said.contains(
            "_nhap.txt: bản nháp, chưa được đăng (muốn đăng thì bỏ dấu \"_\" ở đầu tên tệp)"
        ),
        "{said}"
    );
    assert!(
        said.contains("bai.txt: bản nháp, chưa được đăng (muốn đăng thì bỏ dấu \"_\" ở đầu tên thư mục \"_chua-xong\")"),
        "{said}"
    );
    // Renamed without the underscore: published and mailed.
    std::fs::rename(
        site.store().join("_nhap.txt"),
        site.store().join("nhap.txt"),
    )
    .unwrap();
    let mails = wait_mails(&smtp, 2);
    assert!(
        header(&mails[1].data, "Subject")
            .unwrap()
            .contains("Bản nháp")
    );
}

#[test]
fn a_backfilled_archive_is_published_but_not_mailed() {
    let smtp = SmtpServer::start();
    let (site, clock) = news_site(&smtp, "alert_delay_secs = 0");
    let daemon = InProc::start(&site, &clock);
    // 500 articles of two years ago, dropped in at once (as a copy of the old site would).
    let staging = site.path("luu-tru");
    for i in 0..500 {
        common::write_bytes(
            &staging.join(format!("cu-{i:03}.txt")),
            article(
                CAT_A,
                &format!("Tin cũ {i}"),
                &format!("{:02}/11/2024 | 08:00", i % 28 + 1),
            )
            .as_bytes(),
        );
    }
    std::fs::rename(&staging, site.store().join("luu-tru")).unwrap();
    wait_for("the archive published", PATIENCE, || {
        daemon.metric("bantin_articles") == Some(501.0)
    });
    assert_eq!(daemon.get("/articles/luu-tru/cu-007.html").status, 200);
    // A fresh article after it is mailed, and is the only mail.
    site.publish("moi.txt", &article(CAT_A, "Tin mới", "20/11/2026 | 09:00"));
    let mails = wait_mails(&smtp, 1);
    assert!(
        header(&mails[0].data, "Subject")
            .unwrap()
            .contains("Tin mới")
    );
    wait_for("the outbox to settle", PATIENCE, || {
        status(&site)["outbox"]["pending"] == 0
    });
    assert_eq!(deliveries(&site), 1, "no alert for the archive");
    // Nor in a digest: they are known with no time of appearance.
    drop(daemon);
}

#[test]
fn a_confirmation_link_expires_and_the_pending_address_goes() {
    let smtp = SmtpServer::start();
    let (site, clock) = news_site(&smtp, "confirm_days = 7");
    let daemon = InProc::start(&site, &clock);
    let r = common::http::request(
        daemon.addr,
        "POST",
        "/subscribe",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"email=muon%40x.vn&schedule=daily",
    );
    assert_eq!(r.status, 200);
    let mail = wait_mails(&smtp, 1).remove(0);
    let url = common::mail::link(&mail.data, "/confirm?token=");
    let path = common::mail::path_of(&url);
    assert_eq!(daemon.get(&path).status, 200, "fresh: a page with a button");
    daemon.advance(Days::days(8));
    let page = daemon.get(&path);
    assert_eq!(page.status, 400);
    assert!(
        page.text().contains("Liên kết đã hết hạn"),
        "{}",
        page.text()
    );
    let token = url.split("token=").nth(1).unwrap();
    let r = common::http::request(
        daemon.addr,
        "POST",
        "/confirm",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={token}").as_bytes(),
    );
    assert_eq!(r.status, 400, "an expired link confirms nothing");
    // The daily pruning deletes the address that never confirmed.
    wait_for("the pending address deleted", PATIENCE, || {
        !stdout(&site.bantin(&["subscribers", "list"])).contains("muon@x.vn")
    });
}

#[test]
fn a_pipe_in_place_of_an_article_blocks_nothing() {
    let smtp = SmtpServer::start();
    let (site, _) = news_site(&smtp, "alert_delay_secs = 0\nalert_max_age_days = 3650");
    let text = std::fs::read_to_string(site.config()).unwrap();
    site.write(
        "bantin.toml",
        &text.replace("daily = \"0 0 0 1 1 * 2099\"", "daily = \"0 0 7 * * *\""),
    );
    add_confirmed(&site, "ngay@x.vn", "daily");
    // After the command line's own clock, which marked when the subscriber's digests begin.
    let clock = bantin::clock::Clock::manual(now());
    let daemon = InProc::start(&site, &clock);
    site.publish(
        "ong.txt",
        &article(CAT_A, "Bài sẽ thành ống", "20/11/2026 | 09:00"),
    );
    wait_mails(&smtp, 1); // dan's alert: the article is known to the mail side
    // The file becomes a FIFO with no writer: opening it the usual way waits for ever.
    let path = site.store().join("ong.txt");
    std::fs::remove_file(&path).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    site.publish(
        "khac.txt",
        &article(CAT_A, "Bài khác", "20/11/2026 | 09:30"),
    );
    wait_mails(&smtp, 2);
    // The daily digest lists both; rendering it must not hang on the pipe.
    daemon.advance(Days::days(1));
    let mails = wait_mails(&smtp, 3);
    let digest = mails.iter().find(|m| m.to == ["ngay@x.vn"]).unwrap();
    assert!(
        part(&digest.data, "text/plain")
            .unwrap()
            .contains("Bài khác")
    );
    assert_eq!(daemon.get("/healthz").status, 200);
    wait_for("the pipe's page gone", PATIENCE, || {
        daemon.get("/articles/ong.html").status == 404
    });
}

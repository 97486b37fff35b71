//! Subscriptions and delivery end to end: the real binary, sled in a temp dir, real SMTP over
//! TCP to a server the test runs.

mod common;

use std::time::Duration;

use common::daemon::{Daemon, PATIENCE};
use common::http::{get, request};
use common::mail::{header, link, part, path_of};
use common::smtp::{Action, SmtpServer};
use common::{
    CAT_A, CAT_B, Site, add_confirmed, article, deliveries, stdout, wait_for, wait_mails,
};

/// Digests that never tick during a test.
const NEVER: &str = "0 0 0 1 1 * 2099";

fn mail_site(smtp: std::net::SocketAddr, extra: &str) -> Site {
    let concurrency = if extra.contains("concurrency") {
        ""
    } else {
        "concurrency = 2\n"
    };
    let site = Site::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\nfrom = \"HĐND quận Cầu Giấy <bantin@hdnd.test>\"\ntransport = \"smtp\"\n\
         retry_initial_ms = 200\nretry_max_ms = 1000\n{concurrency}{extra}\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntimeout_secs = 1\n\
         [digest]\ndaily = \"{NEVER}\"\nweekly = \"{NEVER}\"\n",
        smtp.port()
    ));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    site
}

fn subscribe(daemon: &Daemon, form: &str) -> common::http::Response {
    request(
        daemon.addr,
        "POST",
        "/subscribe",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
}

/// Presses the button of a confirmation page: POST with the link's token.
fn confirm_by_post(daemon: &Daemon, url: &str) -> common::http::Response {
    let token = url.split("token=").nth(1).unwrap();
    request(
        daemon.addr,
        "POST",
        "/confirm",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={token}").as_bytes(),
    )
}

#[test]
fn subscribe_confirm_alert_unsubscribe() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    let daemon = Daemon::start(&site);
    daemon.wait_log("first start: the store's articles are the baseline");

    let r = subscribe(&daemon, "email=Dan%40Example.vn&schedule=immediate");
    assert_eq!(r.status, 200, "{}", r.text());
    let confirm = wait_mails(&smtp, 1).remove(0);
    assert_eq!(confirm.to, ["dan@example.vn"]);
    assert!(
        header(&confirm.data, "Subject")
            .unwrap()
            .starts_with("Xác nhận đăng ký")
    );
    let url = link(&confirm.data, "/confirm?token=");
    // A link scanner's GET shows a page with a button and changes nothing.
    let page = get(daemon.addr, &path_of(&url));
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Xác nhận đăng ký"), "{}", page.text());
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(
        list.contains("dan@example.vn\timmediate\tpending"),
        "{list}"
    );
    assert_eq!(confirm_by_post(&daemon, &url).status, 200);
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(list.contains("dan@example.vn\timmediate\tactive"), "{list}");

    let title = "Kỳ họp thứ 21 <khai mạc> & \"bế mạc\"";
    site.publish(
        "2026/ky-hop-21.txt",
        &article(CAT_A, title, "20/11/2026 | 08:00"),
    );
    let alert = wait_mails(&smtp, 2).remove(1);
    let data = &alert.data;
    assert_eq!(alert.to, ["dan@example.vn"]);
    assert_eq!(
        header(data, "Subject").unwrap(),
        title,
        "the title alone: the From name says who writes"
    );
    assert!(
        common::mail::raw_header(data, "Subject")
            .unwrap()
            .starts_with("=?utf-8?"),
        "encoded per RFC 2047"
    );
    assert!(
        header(data, "Content-Type")
            .unwrap()
            .starts_with("multipart/alternative")
    );
    assert_eq!(
        header(data, "List-Id").unwrap(),
        "HĐND quận Cầu Giấy <bantin.hdnd.test>"
    );
    let unsubscribe = header(data, "List-Unsubscribe").unwrap();
    assert!(
        unsubscribe.starts_with("<http://bantin.test/unsubscribe?token="),
        "{unsubscribe}"
    );
    assert_eq!(
        header(data, "List-Unsubscribe-Post").unwrap(),
        "List-Unsubscribe=One-Click"
    );
    assert!(header(data, "Message-ID").unwrap().ends_with("@hdnd.test>"));
    assert!(header(data, "Date").is_some());
    assert!(header(data, "From").unwrap().contains("bantin@hdnd.test"));
    let html = part(data, "text/html").unwrap();
    assert!(
        html.contains("Kỳ họp thứ 21 &lt;khai mạc&gt; &amp;"),
        "title escaped in HTML"
    );
    let text = part(data, "text/plain").unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    assert!(
        lines
            .windows(2)
            .any(|w| w[0] == "Hủy đăng ký:"
                && w[1].starts_with("http://bantin.test/unsubscribe?token=")),
        "the unsubscribe link on its own line, never broken:\n{text}"
    );

    // One-click unsubscribe, as a mail client does it (RFC 8058).
    let url = unsubscribe.trim_matches(['<', '>']);
    let r = request(
        daemon.addr,
        "POST",
        &path_of(url),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"List-Unsubscribe=One-Click",
    );
    assert_eq!(r.status, 200);
    assert!(r.header("location").is_none() && r.header("set-cookie").is_none());
    site.publish(
        "2026/sau.txt",
        &article(CAT_A, "Tin sau khi hủy", "21/11/2026 | 08:00"),
    );
    daemon.wait_log("alerts queued id=\"2026/sau\" mails=0");
    assert_eq!(smtp.messages().len(), 2, "nothing after unsubscribing");
}

#[test]
fn categories_edits_and_deletions() {
    let smtp = SmtpServer::slow(Duration::from_millis(300));
    let site = mail_site(smtp.addr, "concurrency = 1");
    site.put("dau.txt", &article(CAT_A, "Đầu tiên", "01/11/2026 | 08:00"));
    // A feed names the category before its first article: one may follow it already.
    site.write(
        "feeds/thong-bao.toml",
        &format!("title = \"Thông báo\"\ncategories = [\"{CAT_B}\"]\n"),
    );
    // Subscribers before the first start: the store's articles are the baseline.
    add_confirmed(&site, "a@x.vn", "immediate");
    let out = site.bantin(&[
        "subscribers",
        "add",
        "b@x.vn",
        "--categories",
        CAT_B,
        "--confirmed",
    ]);
    assert!(out.status.success());
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");

    site.publish("tb.txt", &article(CAT_B, "Thông báo", "20/11/2026 | 08:00"));
    let mails = wait_mails(&smtp, 2);
    let mut to: Vec<_> = mails.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(to, ["a@x.vn", "b@x.vn"]);

    // An edit does not alert again.
    site.publish(
        "tb.txt",
        &article(CAT_B, "Thông báo (sửa)", "20/11/2026 | 08:00"),
    );
    daemon.wait_log("article updated id=\"tb\"");
    site.publish("a-only.txt", &article(CAT_A, "Chỉ A", "21/11/2026 | 08:00"));
    let mails = wait_mails(&smtp, 3);
    assert!(header(&mails[2].data, "Subject").unwrap().contains("Chỉ A"));
    assert_eq!(mails[2].to, ["a@x.vn"]);

    // A deletion cancels unsent alerts: with one slow connection, the second article's
    // alerts wait behind the first's while it is deleted.
    for i in 0..6 {
        add_confirmed(&site, &format!("n{i}@x.vn"), "immediate");
    }
    site.publish(
        "nhieu.txt",
        &article(CAT_A, "Bài nhiều người nhận", "22/11/2026 | 08:00"),
    );
    daemon.wait_log("alerts queued id=\"nhieu\"");
    std::fs::remove_file(site.store().join("nhieu.txt")).unwrap();
    daemon.wait_log("unsent alerts cancelled");
    // Settled: nothing of the outbox is still waiting or in flight.
    wait_for("the outbox to settle", PATIENCE, || {
        let status = stdout(&site.bantin(&["status", "--json"]));
        let json: serde_json::Value = serde_json::from_str(&status).unwrap();
        json["outbox"]["pending"] == 0
    });
    let about = smtp
        .messages()
        .iter()
        .filter(|m| header(&m.data, "Subject").unwrap().contains("nhiều người"))
        .count();
    assert!(
        about < 7,
        "deletion cancelled some of the 7 alerts, {about} went"
    );
    let status = stdout(&site.bantin(&["status"]));
    assert!(!status.contains("cancelled 0"), "{status}");
}

#[test]
fn a_550_5_1_1_at_rcpt_fails_and_bounces_without_retry() {
    let smtp = SmtpServer::start();
    smtp.set(|r| {
        r.rcpt
            .insert("bad@x.vn".into(), "550 5.1.1 no such mailbox".into());
    });
    let site = mail_site(smtp.addr, "");
    add_confirmed(&site, "bad@x.vn", "immediate");
    add_confirmed(&site, "good@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    wait_mails(&smtp, 1);
    daemon.wait_log("address marked bounced");
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(list.contains("bad@x.vn\timmediate\tbounced"), "{list}");
    assert!(list.contains("good@x.vn\timmediate\tactive"), "{list}");
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&site.bantin(&["status", "--json"]))).unwrap();
    assert_eq!(status["outbox"]["failed"], 1);
    assert_eq!(status["outbox"]["pending"], 0, "nothing left to retry");
    // The next article does not go to the bounced address.
    site.publish("sau.txt", &article(CAT_A, "Bài sau", "21/11/2026 | 08:00"));
    wait_mails(&smtp, 2);
    // The relay holds the mail before the daemon has its answer: wait for the record.
    wait_for("the delivery recorded", PATIENCE, || {
        common::status(&site)["outbox"]["sent"] == 2
    });
    let status = common::status(&site);
    assert_eq!(status["outbox"]["sent"], 2, "{status}");
    assert_eq!(
        status["outbox"]["failed"], 1,
        "nothing planned for the bounced address: {status}"
    );
}

#[test]
fn the_subscribe_form_resists_abuse() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "subscribe_per_hour = 5");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    // A bad address is a clear 400 that says what is wrong, the form back with the field
    // marked; mistakes are not counted against the hour's posts.
    let r = subscribe(&daemon, "email=not-an-address&schedule=daily");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("cần có ký tự @"), "{}", r.text());
    assert!(
        r.text().contains(
            "value=\"not-an-address\" aria-invalid=\"true\" aria-describedby=\"thong-bao\""
        ),
        "{}",
        r.text()
    );
    let r = subscribe(&daemon, "email=+&schedule=daily");
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("Vui lòng nhập địa chỉ thư điện tử"),
        "{}",
        r.text()
    );
    let r = subscribe(
        &daemon,
        &format!("email={}%40x.vn&schedule=daily", "a".repeat(300)),
    );
    assert!(r.text().contains("dài hơn 254 ký tự"), "{}", r.text());
    let r = subscribe(&daemon, "email=a%40x.vn&schedule=monthly");
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("Vui lòng chọn cách nhận tin."),
        "{}",
        r.text()
    );
    assert!(
        r.text()
            .contains("<select name=\"schedule\" aria-invalid=\"true\""),
        "{}",
        r.text()
    );
    // Three posts for one address: one confirmation mail.
    let first = subscribe(&daemon, "email=a%40x.vn&schedule=daily");
    subscribe(&daemon, "email=a%40x.vn&schedule=daily");
    let third = subscribe(&daemon, "email=a%40x.vn&schedule=weekly");
    assert_eq!(first.text(), third.text());
    let confirm = wait_mails(&smtp, 1).remove(0);
    assert_eq!(
        confirm_by_post(&daemon, &link(&confirm.data, "/confirm?token=")).status,
        200
    );
    // Known or not, the same answer; a confirmed subscriber stays confirmed.
    let known = subscribe(&daemon, "email=a%40x.vn&schedule=immediate");
    assert_eq!(known.status, 200);
    assert_eq!(known.text(), first.text(), "no enumeration");
    // Confirmed as the first post asked, which its mail described: the later posts
    // (weekly, immediate) changed nothing.
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(list.contains("a@x.vn\tdaily\tactive"), "{list}");
    // Per client address: the sixth right post within the hour is refused, the form given
    // back as it was filled.
    assert_eq!(
        subscribe(&daemon, "email=c%40x.vn&schedule=daily").status,
        200
    );
    let r = subscribe(&daemon, "email=b%40x.vn&schedule=daily");
    assert_eq!(r.status, 429);
    assert!(r.text().contains("value=\"b@x.vn\""), "{}", r.text());
    let wait = r.header("retry-after").unwrap().parse::<u64>().unwrap();
    assert!(wait > 0);
    // The page says when, in minutes, as the header does in seconds.
    assert!(
        r.text()
            .contains(&format!("gửi lại sau khoảng {} phút", wait.div_ceil(60))),
        "{}",
        r.text()
    );
    // The refused post queued nothing: the outbox holds the two confirmations only.
    assert_eq!(deliveries(&site), 2, "no more confirmation mails");
    // A forged confirmation does nothing.
    assert_eq!(get(daemon.addr, "/confirm?token=YkB4LnZu.AAAA").status, 400);
}

/// Someone subscribed long ago, who lost every mail and with it the links, posts the form
/// again: nothing changes, and a mail brings the links to change or end the subscription;
/// once a day at most. The page says what it says to anyone.
#[test]
fn a_subscriber_who_posts_the_form_again_gets_the_links() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    add_confirmed(&site, "dan@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    let stranger = subscribe(&daemon, "email=moi%40x.vn&schedule=daily");
    let again = subscribe(&daemon, "email=dan%40x.vn&schedule=weekly");
    assert_eq!(again.status, 200);
    assert_eq!(again.text(), stranger.text(), "no enumeration");
    let mails = wait_mails(&smtp, 2);
    let mail = mails.iter().find(|m| m.to == ["dan@x.vn"]).unwrap();
    assert!(
        header(&mail.data, "Subject")
            .unwrap()
            .contains("Cách nhận tin của bạn"),
        "{}",
        mail.data
    );
    let prefs = link(&mail.data, "/preferences?token=");
    assert_eq!(get(daemon.addr, &path_of(&prefs)).status, 200);
    // Nothing changed.
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(list.contains("dan@x.vn\timmediate\tactive"), "{list}");
    // Asked again the same day: no second mail.
    let before = deliveries(&site);
    subscribe(&daemon, "email=dan%40x.vn&schedule=daily");
    assert_eq!(deliveries(&site), before, "once a day at most");
}

#[test]
fn unsubscribe_links() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    add_confirmed(&site, "dan@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    let alert = wait_mails(&smtp, 1).remove(0);
    let url = link(&alert.data, "/unsubscribe?token=");
    let path = path_of(&url);
    // The page shows a button and changes nothing (link scanners follow GET links); it
    // names the address it is for.
    let page = get(daemon.addr, &path);
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("để địa chỉ dan@x.vn ngừng nhận thư"),
        "{}",
        page.text()
    );
    assert!(
        page.text().contains("<form method=\"post\""),
        "{}",
        page.text()
    );
    assert!(stdout(&site.bantin(&["subscribers", "list"])).contains("\tactive"));
    // A forged token is refused.
    let forged = path.replace("token=", "token=x");
    let r = request(
        daemon.addr,
        "POST",
        &forged,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"List-Unsubscribe=One-Click",
    );
    assert_eq!(r.status, 400);
    assert_eq!(get(daemon.addr, "/unsubscribe?token=garbage").status, 400);
    // The button's POST unsubscribes; doing it again answers the same.
    let token = path.split("token=").nth(1).unwrap().to_string();
    let body = format!("token={token}");
    let once = request(
        daemon.addr,
        "POST",
        "/unsubscribe",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    );
    assert_eq!(once.status, 200);
    let twice = request(
        daemon.addr,
        "POST",
        "/unsubscribe",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    );
    assert_eq!(twice.status, 200);
    assert_eq!(once.text(), twice.text());
    assert!(
        stdout(&site.bantin(&["subscribers", "list"]))
            .contains("dan@x.vn\timmediate\tunsubscribed")
    );
    // The link opened again says the address is off the list, with no button.
    let again = get(daemon.addr, &path);
    assert_eq!(again.status, 200);
    assert!(
        again
            .text()
            .contains("Địa chỉ dan@x.vn không còn trong danh sách nhận tin"),
        "{}",
        again.text()
    );
    assert!(
        !again.text().contains("<form method=\"post\""),
        "{}",
        again.text()
    );
}

#[test]
fn file_transport_with_dkim_signing_the_list_headers() {
    let site = Site::with_config(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\nfrom = \"HĐND <bantin@hdnd.test>\"\n\
         [mail.dkim]\ndomain = \"hdnd.test\"\nselector = \"bantin\"\nkey_file = \"dkim.key\"\nalgorithm = \"ed25519\"\n",
    );
    // An Ed25519 key is 32 bytes, base64.
    site.write("dkim.key", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n");
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    add_confirmed(&site, "dan@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish(
        "moi.txt",
        &article(CAT_A, "Bài có chữ ký", "20/11/2026 | 08:00"),
    );
    let outbox = site.path("var/outbox");
    wait_for("an .eml file", PATIENCE, || {
        std::fs::read_dir(&outbox).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        })
    });
    let file = std::fs::read_dir(&outbox)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        .unwrap();
    let data = std::fs::read_to_string(file.path()).unwrap();
    let signature = common::mail::raw_header(&data, "DKIM-Signature").expect("signed");
    let h = signature
        .split(';')
        .map(str::trim)
        .find(|t| t.starts_with("h="))
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "list-unsubscribe",
        "list-unsubscribe-post",
        "from",
        "subject",
    ] {
        assert!(
            h.split(':')
                .any(|x| x.trim().trim_start_matches("h=") == name),
            "{name} not signed: {h}"
        );
    }
    assert!(
        signature.contains("d=hdnd.test") && signature.contains("s=bantin"),
        "{signature}"
    );
}

#[test]
fn commands_answer_the_same_through_the_daemon() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    add_confirmed(&site, "a@x.vn", "weekly");
    let offline = stdout(&site.bantin(&["status"]));
    let offline_list = stdout(&site.bantin(&["subscribers", "list", "--json"]));
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    assert_eq!(
        stdout(&site.bantin(&["subscribers", "list", "--json"])),
        offline_list
    );
    let online = stdout(&site.bantin(&["status"]));
    // The same files; only the running daemon knows how many are broken.
    assert_eq!(
        offline.lines().next(),
        Some("articles: 1 file in the store (broken ones included: `bantin check` names them)")
    );
    assert_eq!(
        online.lines().next(),
        Some("articles: 1 file in the store (none broken)")
    );
    assert_eq!(online.lines().nth(1), offline.lines().nth(1), "subscribers");
    // Only the daemon delivers: without it, status does not say delivery runs.
    assert!(
        offline.contains("delivery: not running (the daemon is stopped)"),
        "{offline}"
    );
    assert!(online.contains("delivery: running"), "{online}");
    // Changes go through the daemon, which holds the database.
    let out = site.bantin(&["subscribers", "add", "b@x.vn", "--schedule", "daily"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let confirm = wait_mails(&smtp, 1).remove(0);
    assert_eq!(
        confirm.to,
        ["b@x.vn"],
        "the daemon sends the confirmation at once"
    );
    let out = site.bantin(&["subscribers", "remove", "a@x.vn"]);
    assert!(out.status.success());
    // The admin is told that a later import would bring the address back.
    assert!(
        stdout(&out).contains("a@x.vn: removed, and forgotten: a list imported later"),
        "{}",
        stdout(&out)
    );
    let out = site.bantin(&["subscribers", "remove", "nobody@x.vn"]);
    assert_eq!(out.status.code(), Some(1));
    let export = stdout(&site.bantin(&["subscribers", "export"]));
    assert_eq!(
        export,
        "email,schedule,categories,state\nb@x.vn,daily,,pending\n"
    );
    let out = site.bantin(&["subscribers", "add", "not an address"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn import_reports_bad_rows_and_keeps_the_good_ones() {
    let site = Site::new();
    site.write(
        "ds.csv",
        "email,schedule,categories\nA@X.vn,daily,\"tin tuc - su kien tieu bieu\"\nkhong-phai-email,daily,\nb@x.vn,hourly,\nc@x.vn,,\nd@x.vn,daily,KHONG CO\na@x.VN,weekly,\n",
    );
    let out = site.bantin(&[
        "subscribers",
        "import",
        site.path("ds.csv").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains("line 3: 'khong-phai-email' is not a mail address"),
        "{err}"
    );
    assert!(err.contains("line 4: schedule 'hourly'"), "{err}");
    assert!(
        err.contains("line 6: unknown category 'KHONG CO'; the known categories are: 'TIN TỨC - SỰ KIỆN TIÊU BIỂU'"),
        "{err}"
    );
    assert!(
        err.contains("line 7: a@x.vn again (first on line 2); this row is left out"),
        "{err}"
    );
    assert!(stdout(&out).contains("imported 2 subscribers (confirmation mails queued)"));
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(
        list.contains("a@x.vn\tdaily\tpending\tTIN TỨC - SỰ KIỆN TIÊU BIỂU"),
        "stored in its canonical spelling: {list}"
    );
    assert!(list.contains("c@x.vn\timmediate\tpending\t*"), "{list}");
    let status = stdout(&site.bantin(&["status", "--json"]));
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        json["outbox"]["pending"], 2,
        "two confirmations wait for the daemon"
    );
}

#[test]
fn categories_are_checked_wherever_a_subscriber_is_made() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    site.put(
        "tb.txt",
        &article(CAT_B, "Một thông báo", "20/11/2026 | 08:00"),
    );
    // The command line, without a daemon: typed without diacritics, stored as the store spells it.
    let out = site.bantin(&[
        "subscribers",
        "add",
        "a@x.vn",
        "--categories",
        "THONG BAO",
        "--confirmed",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(
        list.contains("a@x.vn\timmediate\tactive\tTHÔNG BÁO"),
        "{list}"
    );
    let out = site.bantin(&[
        "subscribers",
        "add",
        "b@x.vn",
        "--categories",
        "Thông báo,KHONG CO",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(
        err.contains("unknown category 'KHONG CO'; the known categories are: 'THÔNG BÁO', 'TIN TỨC - SỰ KIỆN TIÊU BIỂU'"),
        "{err}"
    );
    assert!(!stdout(&site.bantin(&["subscribers", "list"])).contains("b@x.vn"));
    // The same through the daemon, and the web form.
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    let out = site.bantin(&["subscribers", "add", "c@x.vn", "--categories", "KHONG CO"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    let r = subscribe(
        &daemon,
        "email=d%40x.vn&schedule=weekly&categories=KHONG+CO",
    );
    assert_eq!(r.status, 400);
    let page = r.text();
    assert!(page.contains("Không có chuyên mục “KHONG CO”"), "{page}");
    assert!(
        page.contains("value=\"d@x.vn\""),
        "what was typed stays: {page}"
    );
    assert!(
        page.contains("<option value=\"weekly\" selected>"),
        "{page}"
    );
    assert!(page.contains("Bạn đã nhập: “KHONG CO”"), "{page}");
    let r = subscribe(
        &daemon,
        "email=e%40x.vn&schedule=daily&categories=thong+bao",
    );
    assert_eq!(r.status, 200);
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(list.contains("e@x.vn\tdaily\tpending\tTHÔNG BÁO"), "{list}");
    assert!(!list.contains("d@x.vn"), "{list}");
    drop(daemon);
    // The only article of that category goes: status and check name who follows it.
    std::fs::remove_file(site.store().join("tb.txt")).unwrap();
    let status = stdout(&site.bantin(&["status"]));
    assert!(
        status.contains("subscriber a@x.vn follows 'THÔNG BÁO', which no article or feed uses"),
        "{status}"
    );
    let check = site.bantin(&["check"]);
    assert!(
        common::stderr(&check).contains("warning: subscriber e@x.vn follows 'THÔNG BÁO'"),
        "{}",
        common::stderr(&check)
    );
}

#[test]
fn an_alert_renders_after_a_restart_for_a_file_named_in_nfd() {
    // "thông-báo" typed on a system that writes decomposed Unicode: the id is NFC, the file
    // name is not. After a restart the alert is rendered from the file, found by its name.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = down.local_addr().unwrap();
    drop(down);
    let site = mail_site(addr, "");
    add_confirmed(&site, "dan@x.vn", "immediate");
    let mut daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    let nfd_name = "tho\u{302}ng-ba\u{301}o.txt";
    site.publish(
        nfd_name,
        &article(CAT_A, "Tên tệp NFD", "20/11/2026 | 08:00"),
    );
    daemon.wait_log("mail delivery paused");
    daemon.signal("TERM");
    daemon.wait_exit(PATIENCE);
    let smtp = SmtpServer::start_at(addr);
    let _daemon = Daemon::start(&site);
    let mails = wait_mails(&smtp, 1);
    assert!(
        header(&mails[0].data, "Subject")
            .unwrap()
            .contains("Tên tệp NFD")
    );
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(list.contains("dan@x.vn\timmediate\tactive"), "{list}");
}

#[test]
fn a_backlog_of_retries_does_not_hold_back_new_alerts() {
    let smtp = SmtpServer::with_script(|_, data| {
        if data.contains("To: cham") {
            Action::Temporary
        } else {
            Action::Accept
        }
    });
    let site = mail_site(smtp.addr, "concurrency = 1\nretry_initial_ms = 20\n");
    let text = std::fs::read_to_string(site.config()).unwrap();
    site.write(
        "bantin.toml",
        &text.replace(
            "retry_initial_ms = 200\nretry_max_ms = 1000\n",
            "retry_max_ms = 20\n",
        ),
    );
    for i in 0..20 {
        add_confirmed(&site, &format!("cham{i}@x.vn"), "immediate");
    }
    add_confirmed(&site, "nhanh@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish("mot.txt", &article(CAT_A, "Tin một", "20/11/2026 | 08:00"));
    wait_for("a backlog of retries", PATIENCE, || {
        smtp.messages()
            .iter()
            .filter(|m| m.action == Action::Temporary)
            .count()
            >= 60
    });
    site.publish("hai.txt", &article(CAT_A, "Tin hai", "21/11/2026 | 08:00"));
    wait_for("the new alert", PATIENCE, || {
        smtp.accepted()
            .iter()
            .any(|m| header(&m.data, "Subject").unwrap().contains("Tin hai"))
    });
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&site.bantin(&["status", "--json"]))).unwrap();
    assert!(
        status["outbox"]["pending"].as_u64().unwrap() >= 20,
        "the retries are still waiting: {status}"
    );
}

#[test]
fn the_sendmail_transport_pipes_each_mail_to_the_command() {
    let site = Site::new();
    let spool = site.path("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // A stand-in for /usr/sbin/sendmail: keeps its arguments and the message.
    let script = site.path("sendmail");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(date +%s%N)\necho \"$@\" > {0}/$n.args\ncat > {0}/$n.eml\n",
            spool.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    site.set_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\nfrom = \"HĐND <bantin@hdnd.test>\"\ntransport = \"sendmail\"\n\
         sendmail_command = \"{}\"\n",
        script.display()
    ));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    add_confirmed(&site, "dan@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish(
        "moi.txt",
        &article(CAT_A, "Qua sendmail", "20/11/2026 | 08:00"),
    );
    let found = |ext: &str| {
        std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(ext))
    };
    wait_for("a mail handed to sendmail", PATIENCE, || {
        found(".eml").is_some_and(|e| e.metadata().unwrap().len() > 0)
    });
    let data = std::fs::read_to_string(found(".eml").unwrap().path())
        .unwrap()
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    assert!(header(&data, "Subject").unwrap().contains("Qua sendmail"));
    let args = std::fs::read_to_string(found(".args").unwrap().path()).unwrap();
    assert!(
        args.contains("dan@x.vn") && args.contains("bantin@hdnd.test"),
        "{args}"
    );
    wait_for("the delivery recorded", PATIENCE, || {
        stdout(&site.bantin(&["status"])).contains("sent 1")
    });
}

#[test]
fn forwarded_for_is_honoured_only_from_trusted_proxies() {
    let post = |daemon: &Daemon, i: usize| {
        let xff = format!("198.51.{}.{}", i / 250, i % 250 + 1);
        request(
            daemon.addr,
            "POST",
            "/subscribe",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Forwarded-For", &xff),
            ],
            format!("email=nguoi{i}%40x.vn&schedule=daily").as_bytes(),
        )
        .status
    };
    let smtp = SmtpServer::start();
    // No trusted proxy: every post counts against the connection's own address.
    let site = mail_site(smtp.addr, "subscribe_per_hour = 5");
    let daemon = Daemon::start(&site);
    let accepted = (0..1000).filter(|&i| post(&daemon, i) == 200).count();
    assert_eq!(
        accepted, 5,
        "the per-address limit, whatever the header says"
    );
    assert_eq!(deliveries(&site), 5);
    drop(daemon);
    // The proxy in front is trusted: each forwarded address has its own limit.
    let site = mail_site(smtp.addr, "subscribe_per_hour = 5");
    let text = std::fs::read_to_string(site.config()).unwrap();
    site.write(
        "bantin.toml",
        &text.replace("[http]\n", "[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n"),
    );
    let daemon = Daemon::start(&site);
    let accepted = (0..20).filter(|&i| post(&daemon, i) == 200).count();
    assert_eq!(accepted, 20);
    assert_eq!(deliveries(&site), 20);
}

#[test]
fn an_old_confirmation_link_cannot_bring_back_an_address_that_left() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    subscribe(&daemon, "email=roi%40x.vn&schedule=immediate");
    let confirm = link(&wait_mails(&smtp, 1)[0].data, "/confirm?token=");
    assert_eq!(confirm_by_post(&daemon, &confirm).status, 200);
    // A confirmation token does not unsubscribe.
    let token = confirm.split("token=").nth(1).unwrap();
    let r = request(
        daemon.addr,
        "POST",
        "/unsubscribe",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={token}").as_bytes(),
    );
    assert_eq!(r.status, 400);
    // The address leaves with the one-click link of an alert.
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    let alert = wait_mails(&smtp, 2).remove(1);
    let url = header(&alert.data, "List-Unsubscribe").unwrap();
    let r = request(
        daemon.addr,
        "POST",
        &path_of(url.trim_matches(['<', '>'])),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"List-Unsubscribe=One-Click",
    );
    assert_eq!(r.status, 200);
    // The confirmation link from before is replayed: a clear page, nothing changes.
    let replay = confirm_by_post(&daemon, &confirm);
    assert_eq!(replay.status, 400);
    assert!(
        replay.text().contains("Liên kết không còn dùng được"),
        "{}",
        replay.text()
    );
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(list.contains("roi@x.vn\timmediate\tunsubscribed"), "{list}");
}

#[test]
fn the_preferences_page_changes_schedule_and_categories() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    site.put(
        "tb.txt",
        &article(CAT_B, "Một thông báo", "20/11/2026 | 08:00"),
    );
    add_confirmed(&site, "dan@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "21/11/2026 | 08:00"));
    let alert = wait_mails(&smtp, 1).remove(0);
    let url = link(&alert.data, "/preferences?token=");
    let page = get(daemon.addr, &path_of(&url));
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(
        html.contains("Đổi cách nhận tin") && html.contains("dan@x.vn"),
        "{html}"
    );
    assert!(
        html.contains("<option value=\"immediate\" selected>"),
        "{html}"
    );
    let token = url.split("token=").nth(1).unwrap();
    let r = request(
        daemon.addr,
        "POST",
        "/preferences",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={token}&schedule=weekly&categories=TH%C3%94NG+B%C3%81O").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("Đã lưu"));
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(
        list.contains("dan@x.vn\tweekly\tactive\tTHÔNG BÁO"),
        "{list}"
    );
    // A forged token changes nothing.
    let r = request(
        daemon.addr,
        "POST",
        "/preferences",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"token=ZGFuQHgudm4.1.AAAA&schedule=daily",
    );
    assert_eq!(r.status, 400);
    assert!(stdout(&site.bantin(&["subscribers", "list"])).contains("dan@x.vn\tweekly"));
}

/// A fixture of `tests/fixtures/inbox` with the delivery's addresses filled in.
fn inbox_fixture(name: &str, mail: &common::smtp::Received) -> String {
    let text =
        std::fs::read_to_string(common::repo().join("tests/fixtures/inbox").join(name)).unwrap();
    let unsubscribe = header(&mail.data, "List-Unsubscribe").unwrap();
    let unsub = unsubscribe
        .split("mailto:")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    text.replace("{VERP}", &mail.from)
        .replace("{UNSUB}", &unsub)
        .replace("{EMAIL}", &mail.to[0])
        .replace("{MSGID}", &header(&mail.data, "Message-ID").unwrap())
        .replace('\n', "\r\n")
}

#[test]
fn bounces_complaints_and_unsubscribes_come_back_in() {
    let smtp = SmtpServer::start();
    let site = mail_site(
        smtp.addr,
        "return_path = \"bounces@hdnd.test\"\n[mail.inbox]\ndir = \"inbox\"\npoll_secs = 1\n",
    );
    let people = [
        ("postfix@x.vn", "postfix-5.1.1.eml"),
        ("exim@x.vn", "exim-5.0.0.eml"),
        ("day@x.vn", "mailbox-full-5.2.2.eml"),
        ("cho@x.vn", "delayed-4.2.2.eml"),
        ("gmail@x.vn", "gmail-5.1.1.eml"),
        ("spam@x.vn", "arf-complaint.eml"),
        ("thoi@x.vn", "mailto-unsubscribe.eml"),
        ("nghi@x.vn", "out-of-office.eml"),
        ("dap@x.vn", "reply.eml"),
    ];
    for (email, _) in &people {
        add_confirmed(&site, email, "immediate");
    }
    let mut daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    let mails = wait_mails(&smtp, people.len());
    for m in &mails {
        // The envelope sender names the delivery; List-Unsubscribe offers https and mailto.
        assert!(
            m.from.starts_with("bounces+") && m.from.ends_with("@hdnd.test"),
            "{}",
            m.from
        );
        let lu = header(&m.data, "List-Unsubscribe").unwrap();
        assert!(
            lu.contains("<http://bantin.test/unsubscribe?token="),
            "{lu}"
        );
        assert!(
            lu.contains("<mailto:unsubscribe+") && lu.contains("@hdnd.test?subject=unsubscribe>"),
            "{lu}"
        );
    }
    let new = site.path("inbox/new");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::create_dir_all(site.path("inbox/cur")).unwrap();
    let drop_in = |name: &str, text: &str| {
        common::write_bytes(&site.path(&format!("inbox/tmp/{name}")), text.as_bytes());
        std::fs::rename(site.path(&format!("inbox/tmp/{name}")), new.join(name)).unwrap();
    };
    for (email, fixture) in &people {
        let mail = mails.iter().find(|m| m.to[0] == *email).unwrap();
        drop_in(
            &format!("1763700000.{email}.mx"),
            &inbox_fixture(fixture, mail),
        );
    }
    // A bounce whose token bantin did not sign.
    let victim = mails.iter().find(|m| m.to[0] == "nghi@x.vn").unwrap();
    let forged = inbox_fixture("postfix-5.1.1.eml", victim).replace(
        &victim.from,
        &victim
            .from
            .replacen("bounces+", "bounces+0", 1)
            .replacen("-", "0-", 1),
    );
    drop_in("1763700001.forged.mx", &forged);

    let read_all = |daemon: &Daemon| {
        wait_for("the inbox read", PATIENCE, || {
            std::fs::read_dir(&new).unwrap().count() == 0
                && daemon
                    .metrics()
                    .contains("bantin_inbox_messages_total{kind=\"forged\"} 1")
        });
    };
    read_all(&daemon);
    let states = || -> std::collections::HashMap<String, serde_json::Value> {
        let json: serde_json::Value =
            serde_json::from_str(&stdout(&site.bantin(&["subscribers", "list", "--json"])))
                .unwrap();
        json.as_array()
            .unwrap()
            .iter()
            .map(|s| (s["email"].as_str().unwrap().to_string(), s.clone()))
            .collect()
    };
    let check = |states: &std::collections::HashMap<String, serde_json::Value>| {
        for (email, state) in [
            ("postfix@x.vn", "bounced"),
            ("exim@x.vn", "bounced"),
            ("day@x.vn", "active"),
            ("cho@x.vn", "active"),
            ("gmail@x.vn", "bounced"),
            ("spam@x.vn", "complained"),
            ("thoi@x.vn", "unsubscribed"),
            ("nghi@x.vn", "active"),
            ("dap@x.vn", "active"),
        ] {
            assert_eq!(
                states[email]["state"], state,
                "{email}: {:?}",
                states[email]
            );
        }
        assert_eq!(
            states["day@x.vn"]["soft_bounces"]["count"], 1,
            "soft-counted once"
        );
        assert!(states["nghi@x.vn"]["soft_bounces"].is_null());
        // A warning that delivery is only delayed counts for nothing.
        assert!(states["cho@x.vn"]["soft_bounces"].is_null());
    };
    check(&states());
    let metrics = daemon.metrics();
    for (kind, n) in [
        ("bounce", 3),
        ("soft_bounce", 1),
        ("complaint", 1),
        ("unsubscribe", 1),
        ("auto_reply", 1),
        ("forged", 1),
        ("delayed", 1),
        ("reply", 1),
    ] {
        assert!(
            metrics.contains(&format!(
                "bantin_inbox_messages_total{{kind=\"{kind}\"}} {n}"
            )),
            "{kind} {n}:\n{metrics}"
        );
    }
    // A crash that left every message in new/: read again, nothing changes.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    for entry in std::fs::read_dir(site.path("inbox/cur")).unwrap() {
        let path = entry.unwrap().path();
        let name = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(":2,S", "");
        std::fs::rename(&path, new.join(name)).unwrap();
    }
    drop(daemon);
    let daemon = Daemon::start(&site);
    read_all(&daemon);
    check(&states());
    // The same by hand: `bantin inbox process` acts once too.
    let again = site.path("again.eml");
    let mail = mails.iter().find(|m| m.to[0] == "day@x.vn").unwrap();
    std::fs::write(&again, inbox_fixture("mailbox-full-5.2.2.eml", mail)).unwrap();
    let out = site.bantin(&["inbox", "process", again.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        stdout(&out).contains("soft_bounce (day@x.vn, 5.2.2)"),
        "{}",
        stdout(&out)
    );
    check(&states());
    // A person's reply is left to the admin, who is told how to act on it.
    let reply = site.path("reply.eml");
    let mail = mails.iter().find(|m| m.to[0] == "dap@x.vn").unwrap();
    std::fs::write(&reply, inbox_fixture("reply.eml", mail)).unwrap();
    let out = stdout(&site.bantin(&["inbox", "process", reply.to_str().unwrap()]));
    assert!(
        out.contains("reply (from dap@x.vn: a person's answer")
            && out.contains("`bantin subscribers remove dap@x.vn`"),
        "{out}"
    );
    // Our relay taking the next mail for day@x.vn says nothing of the mailbox the report
    // came from: the soft bounce stays counted.
    let before = smtp.accepted().len();
    site.publish("hai.txt", &article(CAT_A, "Bài hai", "20/11/2026 | 09:00"));
    wait_for("the next article mailed", PATIENCE, || {
        smtp.accepted()[before..]
            .iter()
            .any(|m| m.to[0] == "day@x.vn")
    });
    wait_for("its delivery recorded", PATIENCE, || {
        common::status(&site)["outbox"]["pending"] == 0
    });
    check(&states());
}

#[test]
fn pages_carry_security_headers_and_forms_refuse_other_sites() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    let daemon = Daemon::start(&site);
    let index = get(daemon.addr, "/");
    let csp = index.header("content-security-policy").unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'"),
        "{csp}"
    );
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(index.header("referrer-policy"), Some("no-referrer"));
    let feed = get(daemon.addr, "/feeds/tat-ca.atom");
    assert_eq!(feed.header("x-content-type-options"), Some("nosniff"));
    let post = |origin: &str| {
        request(
            daemon.addr,
            "POST",
            "/subscribe",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Origin", origin),
            ],
            b"email=nan-nhan%40x.vn&schedule=daily",
        )
    };
    let r = post("http://evil.example");
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("chỉ dùng được trên trang"),
        "{}",
        r.text()
    );
    assert_eq!(deliveries(&site), 0, "nothing queued for a cross-site post");
    assert_eq!(post("http://bantin.test").status, 200);
}

#[test]
fn a_new_base_url_reaches_mail_links_and_forms_on_reload() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    add_confirmed(&site, "dan@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    let text = std::fs::read_to_string(site.config()).unwrap();
    site.write(
        "bantin.toml",
        &text.replace(
            "http://bantin.test",
            "https://hdnd.example.vn/phuong-cau-giay",
        ),
    );
    daemon.signal("HUP");
    daemon.wait_log("reloaded");
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    let alert = wait_mails(&smtp, 1).remove(0);
    let lu = header(&alert.data, "List-Unsubscribe").unwrap();
    assert!(
        lu.starts_with("<https://hdnd.example.vn/phuong-cau-giay/unsubscribe?token="),
        "{lu}"
    );
    let body = part(&alert.data, "text/plain").unwrap();
    assert!(
        body.contains("https://hdnd.example.vn/phuong-cau-giay/articles/moi.html"),
        "{body}"
    );
    // The forms of the subscription pages post to the new address too.
    let r = subscribe(
        &daemon,
        "email=x%40x.vn&schedule=weekly&categories=KHONG+CO",
    );
    // (minijinja writes '/' in attributes as '&#x2f;': valid HTML.)
    let html = r.text().replace("&#x2f;", "/");
    assert!(
        html.contains("action=\"https://hdnd.example.vn/phuong-cau-giay/subscribe\""),
        "{html}"
    );
}

#[test]
fn a_non_ascii_address_waits_for_a_relay_that_takes_it() {
    // The scripted relay advertises SMTPUTF8.
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    add_confirmed(&site, "dan@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    // Before bantin has spoken to the relay, it cannot know.
    let r = subscribe(&daemon, "email=d%C3%A2n%40x.vn&schedule=daily");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("SMTPUTF8"), "{}", r.text());
    let out = site.bantin(&["subscribers", "add", "dân@x.vn"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("SMTPUTF8"),
        "{}",
        common::stderr(&out)
    );
    // Once it has: accepted.
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    wait_mails(&smtp, 1);
    let r = subscribe(&daemon, "email=d%C3%A2n%40x.vn&schedule=daily");
    assert_eq!(r.status, 200, "{}", r.text());
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(list.contains("dân@x.vn\tdaily\tpending"), "{list}");
}

#[test]
fn a_sendmail_that_hangs_is_given_up_and_retried() {
    let site = Site::new();
    let script = site.path("sendmail");
    // Its first run never answers; the next ones take the mail.
    std::fs::write(
        &script,
        "#!/bin/sh\nif [ ! -e \"$0.tried\" ]; then : > \"$0.tried\"; exec sleep 600; fi\n\
         cat > \"$0.sent\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    site.set_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\nfrom = \"HĐND <bantin@hdnd.test>\"\n\
         transport = \"sendmail\"\nsendmail_command = \"{}\"\nretry_initial_ms = 100\n\
         [mail.smtp]\ntimeout_secs = 1\n",
        script.display()
    ));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    add_confirmed(&site, "dan@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish(
        "moi.txt",
        &article(CAT_A, "Qua sendmail", "20/11/2026 | 08:00"),
    );
    daemon.wait_log("sendmail: no answer within 1s");
    daemon.wait_log("temporary failure, retry in");
    // The retry gets through: the hung run held nothing up.
    let sent = site.path("sendmail.sent");
    wait_for("the retried mail", PATIENCE, || {
        std::fs::read_to_string(&sent).is_ok_and(|m| m.contains("dan@x.vn"))
    });
    wait_for("the delivery counted sent", PATIENCE, || {
        common::status(&site)["outbox"]["sent"] == 1
    });
}

/// Every `href`, `src` and `action` of an HTML page or `href` of a feed, and every URL in a
/// mail's text.
fn links_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attr in [
        "href=\"",
        "src=\"",
        "action=\"",
        "\"url\": \"",
        "\"feed_url\": \"",
    ] {
        for piece in text.split(attr).skip(1) {
            let value = piece.split('"').next().unwrap();
            found.push(value.replace("&amp;", "&").replace("&#x2f;", "/"));
        }
    }
    for word in text.split_whitespace() {
        if word.starts_with("http://") || word.starts_with("https://") {
            found.push(word.trim_end_matches(['>', ')', '.', ',']).to_string());
        }
    }
    found
}

/// One council of several on a host: `site.base_url` carries its path. Every link of the
/// pages, feeds and mails keeps the path; the daemon answers with the path stripped by the
/// proxy or kept; a subscription goes through under the path.
#[test]
fn a_council_under_a_path_keeps_it_in_every_link() {
    let smtp = SmtpServer::start();
    let base = "https://hdnd.example.vn/phuong-cau-giay";
    let site = Site::with_config(&format!(
        "[site]\nbase_url = \"{base}/\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\n\
         from = \"HĐND phường Cầu Giấy <bantin@hdnd.example.vn>\"\ntransport = \"smtp\"\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntimeout_secs = 1\n\
         [digest]\ndaily = \"{NEVER}\"\nweekly = \"{NEVER}\"\n",
        smtp.addr.port()
    ));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    let daemon = Daemon::start(&site);
    daemon.wait_log("first start: the store's articles are the baseline");

    let check = |what: &str, text: &str| {
        let links = links_in(text);
        assert!(!links.is_empty(), "{what}: no links");
        for l in links {
            assert!(!l.contains("&#"), "{what}: {l} is not decoded");
            let ours = l.starts_with("https://hdnd.example.vn") || l.starts_with('/');
            assert!(
                !ours || l == base || l.starts_with(&format!("{base}/")),
                "{what}: {l} is outside {base}/"
            );
            assert!(!l.starts_with('/'), "{what}: {l} is relative to the host");
        }
    };
    // Stripped by the proxy, or not: the same site.
    for prefix in ["", "/phuong-cau-giay"] {
        for path in [
            "/",
            "/articles/cu.html",
            "/feeds/tin-tuc.atom",
            "/feeds/tin-tuc.rss",
            "/feeds/tin-tuc.json",
        ] {
            let r = get(daemon.addr, &format!("{prefix}{path}"));
            assert_eq!(r.status, 200, "{prefix}{path}");
            check(&format!("{prefix}{path}"), &r.text());
        }
    }
    assert_eq!(get(daemon.addr, "/phuong-cau-giay").status, 200);
    assert_eq!(get(daemon.addr, "/phuong-cau-giay-khac/").status, 404);
    // The ids of two councils on one host differ by the path.
    let atom = get(daemon.addr, "/feeds/tin-tuc.atom").text();
    assert!(
        atom.contains("<id>tag:hdnd.example.vn,2020:phuong-cau-giay/cu</id>"),
        "{atom}"
    );

    // The form posts to the path; the browser sends the host's origin.
    let page = get(daemon.addr, "/").text();
    let subscribe = format!("{base}/subscribe");
    assert!(links_in(&page).contains(&subscribe), "{page}");
    let r = request(
        daemon.addr,
        "POST",
        "/phuong-cau-giay/subscribe",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "https://hdnd.example.vn"),
        ],
        b"email=dan%40example.vn&schedule=immediate",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    check("the subscription's answer", &r.text());
    let confirm = wait_mails(&smtp, 1).remove(0);
    check(
        "the confirmation mail",
        &part(&confirm.data, "text/plain").unwrap(),
    );
    check(
        "the confirmation mail",
        &part(&confirm.data, "text/html").unwrap(),
    );
    let url = link(&confirm.data, "/confirm?token=");
    assert!(url.starts_with(&format!("{base}/confirm?token=")), "{url}");
    let page = get(daemon.addr, &path_of(&url));
    assert_eq!(page.status, 200);
    check("the confirmation page", &page.text());
    let token = url.split("token=").nth(1).unwrap();
    let r = request(
        daemon.addr,
        "POST",
        "/phuong-cau-giay/confirm",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "https://hdnd.example.vn"),
        ],
        format!("token={token}").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(list.contains("dan@example.vn\timmediate\tactive"), "{list}");

    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    let alert = wait_mails(&smtp, 2).remove(1);
    check("the alert", &part(&alert.data, "text/plain").unwrap());
    check("the alert", &part(&alert.data, "text/html").unwrap());
    let list = common::mail::header(&alert.data, "List-Id").unwrap();
    assert!(
        list.contains("<phuong-cau-giay.bantin.hdnd.example.vn>"),
        "{list}"
    );
    let unsubscribe = common::mail::header(&alert.data, "List-Unsubscribe").unwrap();
    assert!(
        unsubscribe.contains(&format!("<{base}/unsubscribe?")),
        "{unsubscribe}"
    );
}

/// A correction made while the alert is still fanning out (mails being sent and folded into
/// their article's totals as they go): everyone whose alert went out before the edit gets
/// one correction, answering that alert; nobody gets two; everyone gets the alert once.
#[test]
fn a_correction_during_a_fan_out_reaches_everyone_already_told() {
    const SUBSCRIBERS: usize = 2_500;
    let smtp = SmtpServer::slow(Duration::from_millis(2));
    let site = mail_site(smtp.addr, "");
    let emails: Vec<String> = (0..SUBSCRIBERS)
        .map(|i| format!("dan{i:05}@x.vn"))
        .collect();
    common::import_immediate(&site, &emails);
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    let text = article(CAT_A, "Họp tổ đại biểu", "20/11/2026 | 08:00");
    site.publish("to-dai-bieu.txt", &text);
    wait_mails(&smtp, 1_200);
    // Told before the edit: their alerts were accepted (and, many of them, folded).
    let told_before: std::collections::HashSet<String> =
        smtp.accepted().iter().flat_map(|m| m.to.clone()).collect();
    let corrected = text.replace(
        "Ngày đăng 20/11/2026 | 08:00",
        "Ngày đăng 20/11/2026 | 08:00\nĐính chính: Đổi giờ họp",
    );
    site.publish("to-dai-bieu.txt", &corrected);
    daemon.wait_log("correction planned");
    wait_for("every alert", PATIENCE * 2, || {
        smtp.accepted()
            .iter()
            .filter(|m| {
                !header(&m.data, "Subject")
                    .unwrap()
                    .starts_with("Đính chính")
            })
            .count()
            >= SUBSCRIBERS
    });
    let mut alerts: std::collections::HashMap<String, String> = Default::default();
    let mut corrections: std::collections::HashMap<String, Vec<String>> = Default::default();
    let settled = || {
        let mails = smtp.accepted();
        let fixes = mails
            .iter()
            .filter(|m| {
                header(&m.data, "Subject")
                    .unwrap()
                    .starts_with("Đính chính")
            })
            .count();
        fixes >= told_before.len()
    };
    wait_for("the corrections", PATIENCE * 2, settled);
    for m in smtp.accepted() {
        let to = m.to[0].clone();
        if header(&m.data, "Subject")
            .unwrap()
            .starts_with("Đính chính")
        {
            corrections
                .entry(to)
                .or_default()
                .push(header(&m.data, "In-Reply-To").unwrap());
        } else {
            let id = header(&m.data, "Message-ID").unwrap();
            assert!(alerts.insert(to.clone(), id).is_none(), "{to}: two alerts");
        }
    }
    assert_eq!(alerts.len(), SUBSCRIBERS, "everyone got the alert once");
    for who in &told_before {
        let fixes = corrections.get(who).map_or(&[][..], Vec::as_slice);
        assert_eq!(
            fixes.len(),
            1,
            "{who} was told before the edit: one correction"
        );
        assert_eq!(
            Some(&fixes[0]),
            alerts.get(who),
            "{who}: it answers their alert"
        );
    }
    for (who, fixes) in &corrections {
        assert_eq!(fixes.len(), 1, "{who}: one correction at most");
    }
    eprintln!(
        "{} told before the edit, {} corrections, {} alerts",
        told_before.len(),
        corrections.len(),
        alerts.len()
    );
}

/// The clerk files an article already mailed into a folder (or Windows copies it): the same
/// article under another name mails nobody again; another article does.
#[test]
fn an_article_moved_or_copied_after_its_alert_is_not_mailed_again() {
    let smtp = SmtpServer::start();
    let site = mail_site(smtp.addr, "");
    add_confirmed(&site, "dan@x.vn", "immediate");
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    let text = article(CAT_A, "Lịch tiếp công dân tháng 12", "20/11/2026 | 08:00");
    site.publish("lich.txt", &text);
    wait_mails(&smtp, 1);
    std::fs::create_dir_all(site.store().join("2026/11")).unwrap();
    std::fs::rename(
        site.store().join("lich.txt"),
        site.store().join("2026/11/lich.txt"),
    )
    .unwrap();
    daemon.wait_log("not mailed again");
    site.publish("lich - Copy.txt", &text);
    common::wait_for("the copy noticed", PATIENCE, || {
        daemon.log().matches("not mailed again").count() == 2
    });
    // A different article still goes, after both: nothing else was queued before it.
    site.publish(
        "khac.txt",
        &article(CAT_A, "Lịch tiếp công dân tháng 1", "20/11/2026 | 09:00"),
    );
    let mails = wait_mails(&smtp, 2);
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert!(
        header(&mails[1].data, "Subject")
            .unwrap()
            .contains("tháng 1")
    );
    // A correction of the moved article reaches whoever got it under its old name, as an
    // answer to that mail.
    let first_id = header(&mails[0].data, "Message-ID").unwrap();
    site.publish(
        "2026/11/lich.txt",
        &text.replace(
            "Ngày đăng 20/11/2026 | 08:00\n",
            "Ngày đăng 20/11/2026 | 08:00\nĐính chính: đổi giờ tiếp\n",
        ),
    );
    let mails = wait_mails(&smtp, 3);
    let fix = &mails[2];
    assert_eq!(fix.to, ["dan@x.vn"]);
    assert!(
        header(&fix.data, "Subject")
            .unwrap()
            .starts_with("Đính chính"),
        "{}",
        fix.data
    );
    assert_eq!(header(&fix.data, "In-Reply-To").unwrap(), first_id);
}

/// An article deleted in the middle of its fan-out: the mails not sent yet are cancelled,
/// none of them failed, including those whose turn came between the file going and the
/// daemon noticing it.
#[test]
fn an_article_deleted_mid_fan_out_cancels_the_rest_and_fails_none() {
    const PEOPLE: usize = 600;
    let smtp = SmtpServer::slow(Duration::from_millis(2));
    let site = mail_site(smtp.addr, "concurrency = 4\n");
    let people: Vec<String> = (0..PEOPLE).map(|i| format!("dan{i:04}@x.vn")).collect();
    common::import_immediate(&site, &people);
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish(
        "xoa.txt",
        &article(CAT_A, "Bài sẽ xóa", "22/11/2026 | 08:00"),
    );
    wait_for("the fan-out under way", PATIENCE, || {
        smtp.accepted().len() >= 50
    });
    std::fs::remove_file(site.store().join("xoa.txt")).unwrap();
    daemon.wait_log("unsent alerts cancelled");
    let status = || -> serde_json::Value {
        serde_json::from_str(&stdout(&site.bantin(&["status", "--json"]))).unwrap()
    };
    wait_for("nothing pending", PATIENCE, || {
        status()["outbox"]["pending"] == 0
    });
    let json = status();
    let sent = smtp.accepted().len();
    assert!(
        sent < PEOPLE,
        "the deletion stopped the fan-out ({sent} sent)"
    );
    assert_eq!(json["outbox"]["failed"], 0, "{json}");
    assert_eq!(json["outbox"]["sent"], sent, "{json}");
    assert!(json["outbox"]["cancelled"].as_u64().unwrap() > 0, "{json}");
}

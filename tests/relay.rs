//! A relay that refuses: what bounces an address, and what only pauses delivery. The daemon
//! runs in the test process on a manual clock (pauses and retries pass when the test moves
//! it); SMTP goes over TCP to the scripted server, sled and HTTP are real.

mod common;

use chrono::{DateTime, Duration as Span, Utc};

use common::daemon::PATIENCE;
use common::inproc::InProc;
use common::smtp::SmtpServer;
use common::{CAT_A, Site, article, status, stdout, wait_for};

const NEVER: &str = "0 0 0 1 1 * 2099";

/// A site mailing through `smtp`, logging in when `login` is set.
fn site(smtp: &SmtpServer, login: bool) -> Site {
    let credentials = if login {
        "username = \"bantin\"\npassword_file = \"smtp-password\"\n"
    } else {
        ""
    };
    let site = Site::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\nfrom = \"HĐND quận Cầu Giấy <bantin@hdnd.test>\"\ntransport = \"smtp\"\n\
         retry_initial_ms = 60000\nretry_max_ms = 600000\nconcurrency = 2\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntimeout_secs = 5\n{credentials}\
         [digest]\ndaily = \"{NEVER}\"\nweekly = \"{NEVER}\"\n",
        smtp.addr.port()
    ));
    site.write("smtp-password", "bi-mat\n");
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    site
}

fn add(site: &Site, emails: &[&str]) {
    for email in emails {
        let out = site.bantin(&["subscribers", "add", email, "--confirmed"]);
        assert!(out.status.success(), "{}", common::stderr(&out));
    }
}

fn start(site: &Site) -> InProc {
    let now = DateTime::from_timestamp(Utc::now().timestamp() + 1, 0).unwrap();
    InProc::start(site, &bantin::clock::Clock::manual(now))
}

fn paused(daemon: &InProc) -> bool {
    daemon
        .metrics()
        .lines()
        .any(|l| l.starts_with("bantin_mail_paused{") && l.ends_with(" 1"))
}

/// Every subscriber is still active, nothing failed, everything waits.
fn nobody_harmed(site: &Site, subscribers: usize) {
    nobody_harmed_after(site, subscribers, 0);
}

/// As [`nobody_harmed`], with `sent` mails sent before.
fn nobody_harmed_after(site: &Site, subscribers: usize, sent: usize) {
    let json = status(site);
    assert_eq!(json["subscribers"]["active"], subscribers, "{json}");
    assert_eq!(json["subscribers"]["bounced"], 0, "{json}");
    assert_eq!(json["outbox"]["failed"], 0, "{json}");
    assert_eq!(json["outbox"]["sent"], sent, "{json}");
    assert_eq!(json["outbox"]["pending"], subscribers, "{json}");
    assert_eq!(json["delivery"]["paused"], true, "{json}");
}

/// Waits for delivery to pause, nothing failing meanwhile; each look that finds it running
/// moves the clock past the next try (a refusal tried again must pause, not fail).
fn until_paused(site: &Site, daemon: &InProc) {
    wait_for("the pause", PATIENCE, || {
        let json = status(site);
        assert_eq!(json["outbox"]["failed"], 0, "nothing fails: {json}");
        paused(daemon) || {
            daemon.advance(Span::seconds(61));
            false
        }
    });
}

/// Each address got exactly one mail.
fn each_once(smtp: &SmtpServer, emails: &[&str]) {
    wait_for("every mail", PATIENCE, || {
        smtp.accepted().len() >= emails.len()
    });
    let mut to: Vec<String> = smtp.accepted().iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    let mut want: Vec<String> = emails.iter().map(|e| e.to_string()).collect();
    want.sort();
    assert_eq!(to, want);
}

/// The refusal set by `refuse` pauses delivery and harms no one; once `accept` is applied,
/// moving the clock past the pause delivers everything once.
fn pauses_then_resumes(
    login: bool,
    refuse: impl FnOnce(&mut common::smtp::Replies),
    accept: impl FnOnce(&mut common::smtp::Replies),
    reason: &str,
) {
    let smtp = SmtpServer::start();
    if login {
        smtp.set(|r| r.auth = Some("235 2.7.0 ok".into()));
    }
    smtp.set(refuse);
    let site = site(&smtp, login);
    let emails = ["a@x.vn", "b@x.vn", "c@x.vn", "d@x.vn", "e@x.vn"];
    add(&site, &emails);
    let daemon = start(&site);
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    wait_for("the pause", PATIENCE, || paused(&daemon));
    nobody_harmed(&site, emails.len());
    let text = stdout(&site.bantin(&["status"]));
    assert!(
        text.contains("delivery: PAUSED") && text.contains(reason),
        "{text}"
    );
    let metrics = daemon.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bantin_mail_paused{reason=\"") && l.contains(reason)),
        "the reason is on /metrics: {metrics}"
    );
    assert!(
        !metrics.contains("@x.vn"),
        "no address in a label: {metrics}"
    );
    assert!(!text.contains("@x.vn"), "nor in status: {text}");
    // Still refusing at the next try: still nobody harmed, the pause grows.
    // A try opens a connection, or begins a mail on one kept open (a refused recipient
    // costs a reset, not the connection).
    let tries = || {
        use std::sync::atomic::Ordering::SeqCst;
        smtp.connections.load(SeqCst) + smtp.mails_begun.load(SeqCst)
    };
    let before = tries();
    let first_next_try = status(&site)["delivery"]["next_try"].clone();
    daemon.advance(Span::seconds(31));
    wait_for("the second try", PATIENCE, || tries() > before);
    // Refused again: the pause is renewed with a later next try (not merely still on).
    wait_for("the pause renewed", PATIENCE, || {
        let delivery = status(&site)["delivery"].clone();
        delivery["paused"] == true && delivery["next_try"] != first_next_try
    });
    assert!(paused(&daemon));
    nobody_harmed(&site, emails.len());
    smtp.set(accept);
    // Past the longest wait so far (30 s, then 60 s) and any retry of a message refused once.
    daemon.advance(Span::seconds(61));
    wait_for("resumed", PATIENCE, || !paused(&daemon));
    daemon.advance(Span::seconds(80));
    each_once(&smtp, &emails);
    // The relay holds the mails before the daemon has its answers: wait for the records.
    wait_for("the deliveries recorded", PATIENCE, || {
        status(&site)["outbox"]["sent"] == emails.len()
    });
    let json = status(&site);
    assert_eq!(json["outbox"]["sent"], emails.len(), "{json}");
    assert_eq!(json["subscribers"]["active"], emails.len(), "{json}");
    assert_eq!(json["delivery"]["paused"], false, "{json}");
}

#[test]
fn a_wrong_password_pauses_delivery_and_bounces_no_one() {
    pauses_then_resumes(
        true,
        |r| r.auth = Some("535 5.7.8 authentication failed".into()),
        |r| r.auth = Some("235 2.7.0 ok".into()),
        "535",
    );
}

#[test]
fn a_relay_that_wants_a_login_pauses_delivery() {
    pauses_then_resumes(
        false,
        |r| r.mail_from = Some("530 5.7.0 authentication required".into()),
        |r| r.mail_from = None,
        "530",
    );
}

/// 421 at MAIL FROM on a new connection: the relay closes on us now (busy, shutting down),
/// and its words are what the admin sees, not "the connection was closed".
#[test]
fn a_relay_closing_at_mail_from_pauses_delivery_and_says_why() {
    pauses_then_resumes(
        false,
        |r| r.mail_from = Some("421 4.3.2 System shutting down".into()),
        |r| r.mail_from = None,
        "421 4.3.2 System shutting down",
    );
}

#[test]
fn a_content_filter_refusing_everything_pauses_delivery() {
    pauses_then_resumes(
        false,
        |r| r.data_end = Some("554 5.7.1 rejected by the content filter".into()),
        |r| r.data_end = None,
        "554",
    );
}

/// A content filter refusing every message twice, with a working spell between: each time
/// delivery pauses and nothing fails. The mails the relay took after the first spell do not
/// make the second look like a refusal of a few addresses (a small list never has ten
/// refusals in a row to pause on).
#[test]
fn a_relay_refusing_every_message_again_later_pauses_again() {
    let refuse = |r: &mut common::smtp::Replies| {
        r.data_end = Some("554 5.7.1 rejected by the content filter".into())
    };
    let smtp = SmtpServer::start();
    smtp.set(refuse);
    let site = site(&smtp, false);
    let emails = ["a@x.vn", "b@x.vn", "c@x.vn"];
    add(&site, &emails);
    let daemon = start(&site);
    let sent_to_all = |n: usize| {
        wait_for("every mail sent", PATIENCE, || {
            let json = status(&site);
            assert_eq!(json["outbox"]["failed"], 0, "{json}");
            json["outbox"]["sent"] == n || {
                daemon.advance(Span::seconds(61));
                false
            }
        })
    };
    site.publish("mot.txt", &article(CAT_A, "Bài một", "20/11/2026 | 08:00"));
    until_paused(&site, &daemon);
    smtp.set(|r| r.data_end = None);
    sent_to_all(emails.len());
    smtp.set(refuse);
    site.publish("hai.txt", &article(CAT_A, "Bài hai", "20/11/2026 | 09:00"));
    until_paused(&site, &daemon);
    nobody_harmed_after(&site, emails.len(), emails.len());
    smtp.set(|r| r.data_end = None);
    sent_to_all(2 * emails.len());
    for email in emails {
        let got = smtp
            .accepted()
            .iter()
            .filter(|m| m.to == [email.to_string()])
            .count();
        assert_eq!(got, 2, "{email}");
    }
    assert_eq!(status(&site)["subscribers"]["active"], emails.len());
}

/// Two subscribers, and a relay refusing every message: never the three refusals in a row
/// that pause delivery at once. Each mail refused again, with no mail taken since, pauses
/// delivery rather than failing; mended, the relay gets both.
#[test]
fn refusals_too_few_to_blame_the_relay_still_fail_no_mail() {
    let smtp = SmtpServer::start();
    smtp.set(|r| r.data_end = Some("554 5.7.1 rejected by the content filter".into()));
    let site = site(&smtp, false);
    let emails = ["a@x.vn", "b@x.vn"];
    add(&site, &emails);
    let daemon = start(&site);
    site.publish("mot.txt", &article(CAT_A, "Bài một", "20/11/2026 | 08:00"));
    until_paused(&site, &daemon);
    nobody_harmed(&site, emails.len());
    smtp.set(|r| r.data_end = None);
    wait_for("both sent", PATIENCE, || {
        status(&site)["outbox"]["sent"] == emails.len() || {
            daemon.advance(Span::seconds(61));
            false
        }
    });
    each_once(&smtp, &emails);
    assert_eq!(status(&site)["outbox"]["failed"], 0);
}

/// Postfix names the recipient in its refusal: the refusals differ by address, yet they are
/// the relay refusing us (no relay rights for our host), not five bad messages.
#[test]
fn a_relay_that_denies_relaying_pauses_delivery_though_each_refusal_names_its_address() {
    pauses_then_resumes(
        false,
        |r| {
            for email in ["a@x.vn", "b@x.vn", "c@x.vn", "d@x.vn", "e@x.vn"] {
                r.rcpt.insert(
                    email.into(),
                    format!("554 5.7.1 <{email}>: Relay access denied"),
                );
            }
        },
        |r| r.rcpt.clear(),
        "Relay access denied",
    );
}

#[test]
fn a_full_mailbox_is_retried_not_bounced() {
    let smtp = SmtpServer::start();
    smtp.set(|r| {
        r.rcpt
            .insert("day@x.vn".into(), "552 5.2.2 mailbox full".into());
    });
    let site = site(&smtp, false);
    add(&site, &["day@x.vn", "ok@x.vn"]);
    let daemon = start(&site);
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    wait_for("the retry planned", PATIENCE, || {
        daemon.metric("bantin_mail_retries_total") == Some(1.0)
    });
    let json = status(&site);
    assert_eq!(json["subscribers"]["active"], 2, "{json}");
    assert_eq!(json["outbox"]["pending"], 1, "{json}");
    assert_eq!(json["delivery"]["paused"], false, "{json}");
    // Room again: the retry gets through.
    smtp.set(|r| r.rcpt.clear());
    daemon.advance(Span::seconds(76));
    each_once(&smtp, &["day@x.vn", "ok@x.vn"]);
}

#[test]
fn an_idle_connection_the_relay_closed_is_replaced_at_once() {
    let smtp = SmtpServer::start();
    smtp.set(|r| r.idle_close = Some(std::time::Duration::from_secs(2)));
    let site = site(&smtp, false);
    add(&site, &["dan@x.vn"]);
    let daemon = start(&site);
    site.publish("mot.txt", &article(CAT_A, "Tin một", "20/11/2026 | 08:00"));
    wait_for("the first alert", PATIENCE, || smtp.accepted().len() == 1);
    wait_for("the relay to close the idle connection", PATIENCE, || {
        smtp.idle_closed.load(std::sync::atomic::Ordering::SeqCst) >= 1
    });
    site.publish("hai.txt", &article(CAT_A, "Tin hai", "21/11/2026 | 08:00"));
    // The clock does not move: a retry would never come, so this mail went at once.
    wait_for("the second alert", PATIENCE, || smtp.accepted().len() == 2);
    assert_eq!(daemon.metric("bantin_mail_retries_total"), Some(0.0));
    assert_eq!(
        smtp.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[test]
fn connections_carry_a_bounded_number_of_mails_and_say_our_name() {
    let smtp = SmtpServer::start();
    let site = site(&smtp, false);
    let text = std::fs::read_to_string(site.config()).unwrap();
    site.write(
        "bantin.toml",
        &text.replace(
            "[mail.smtp]\n",
            "[mail.smtp]\nmax_messages_per_connection = 2\nhelo_name = \"bantin.hdnd.test\"\n",
        ),
    );
    let emails = ["a@x.vn", "b@x.vn", "c@x.vn", "d@x.vn", "e@x.vn"];
    add(&site, &emails);
    let daemon = start(&site);
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    each_once(&smtp, &emails);
    // Five mails, at most two a connection: at least three connections.
    assert!(smtp.connections.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    let helos = smtp.helos.lock().unwrap().clone();
    assert!(
        !helos.is_empty() && helos.iter().all(|h| h == "bantin.hdnd.test"),
        "{helos:?}"
    );
    drop(daemon);
}

/// A fan-out of one article ("moi") to `n` subscribers (dan00000@x.vn …), paused by a relay
/// that refuses every mail: one window of it is planned.
fn fan_out_paused(n: usize) -> (SmtpServer, Site, InProc, Vec<String>) {
    let smtp = SmtpServer::start();
    smtp.set(|r| r.mail_from = Some("530 5.7.0 authentication required".into()));
    let site = site(&smtp, false);
    let emails: Vec<String> = (0..n).map(|i| format!("dan{i:05}@x.vn")).collect();
    common::import_immediate(&site, &emails);
    let daemon = start(&site);
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    wait_for("the pause", PATIENCE, || paused(&daemon));
    (smtp, site, daemon, emails)
}

/// The relay takes mail again: the clock moves past the pause's tries until `n` mails went.
fn reach_everyone(smtp: &SmtpServer, daemon: &InProc, n: usize) {
    smtp.set(|r| r.mail_from = None);
    let mut resumed = false;
    wait_for("every subscriber reached", PATIENCE * 4, || {
        if !resumed || smtp.accepted().len() < n {
            daemon.advance(Span::seconds(61));
            resumed = !paused(daemon);
        }
        smtp.accepted().len() >= n
    });
}

/// A fan-out to more subscribers than its window: while the relay refuses us, the outbox
/// holds one window of the alert's mails, not one per subscriber; once the relay accepts,
/// every subscriber gets the alert exactly once.
#[test]
fn a_large_fan_out_is_queued_a_window_at_a_time() {
    const SUBSCRIBERS: usize = 4_500;
    let (smtp, site, daemon, emails) = fan_out_paused(SUBSCRIBERS);
    let json = status(&site);
    let pending = json["outbox"]["pending"].as_u64().unwrap() as usize;
    assert!(
        (1..SUBSCRIBERS / 2).contains(&pending),
        "one window queued, not every subscriber: {json}"
    );
    assert_eq!(json["outbox"]["sent"], 0, "{json}");
    let report = stdout(&site.bantin(&["status", "--article", "moi"]));
    assert!(
        report.contains("(still queuing: more subscribers to come)"),
        "{report}"
    );
    reach_everyone(&smtp, &daemon, SUBSCRIBERS);
    let mut to: Vec<String> = smtp.accepted().iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(to, emails, "each subscriber once");
    // The last mails accepted by the relay may not be recorded as sent yet: the report
    // settles on every subscriber planned once.
    let mut report = serde_json::Value::Null;
    wait_for("the report to settle", PATIENCE, || {
        let text = stdout(&site.bantin(&["status", "--article", "moi", "--json"]));
        report = serde_json::from_str(&text).unwrap();
        report["alerts"]["planned"] == SUBSCRIBERS && report["alerts"]["pending"] == 0
    });
    assert_eq!(report["alerts_fanning_out"], false, "{report}");
}

/// Who confirms while an alert is going out is left out of it wherever their address falls
/// (the fan-out reads subscribers in address order): before, one sorting after the window
/// being read got it and one sorting before did not.
#[test]
fn who_subscribes_during_a_fan_out_is_left_out_of_it_whatever_their_address() {
    const SUBSCRIBERS: usize = 4_500;
    // Paused with a window planned: the fan-out is read up to somewhere in the middle.
    let (smtp, site, daemon, emails) = fan_out_paused(SUBSCRIBERS);
    daemon.advance(Span::seconds(5));
    let late = ["aaa-sau@x.vn".to_string(), "zzz-sau@x.vn".to_string()];
    common::import_immediate(&site, &late);
    reach_everyone(&smtp, &daemon, SUBSCRIBERS);
    let mut report = serde_json::Value::Null;
    wait_for("the fan-out to end", PATIENCE, || {
        let text = stdout(&site.bantin(&["status", "--article", "moi", "--json"]));
        report = serde_json::from_str(&text).unwrap();
        report["alerts_fanning_out"] == false && report["alerts"]["pending"] == 0
    });
    let mut to: Vec<String> = smtp.accepted().iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    let late_told: Vec<&String> = to.iter().filter(|e| late.contains(*e)).collect();
    assert!(
        late_told.is_empty(),
        "confirmed after the alert began, and sent it: {late_told:?}"
    );
    assert!(
        to == emails,
        "each subscriber from before, once: {} mails for {} subscribers",
        to.len(),
        emails.len()
    );
    assert_eq!(report["alerts"]["planned"], SUBSCRIBERS, "{report}");
    // They get the next one.
    site.publish("sau.txt", &article(CAT_A, "Bài sau", "20/11/2026 | 09:00"));
    wait_for("the next alert to them", PATIENCE * 4, || {
        daemon.advance(Span::seconds(1));
        let accepted = smtp.accepted();
        late.iter()
            .all(|e| accepted.iter().any(|m| m.to.contains(e)))
    });
    drop(daemon);
}

/// A relay that answers every recipient with "try again later" does not pause delivery
/// (it is each mail's fault, not ours): each goes to the retry lane. The fan-out still stops
/// planning once a few windows wait in all, instead of queuing every subscriber.
#[test]
fn a_relay_deferring_every_mail_does_not_make_a_fan_out_queue_everyone() {
    const SUBSCRIBERS: u64 = 9_000;
    let smtp = SmtpServer::start();
    let emails: Vec<String> = (0..SUBSCRIBERS)
        .map(|i| format!("dan{i:05}@x.vn"))
        .collect();
    smtp.set(|r| {
        for e in &emails {
            r.rcpt.insert(e.clone(), "451 4.3.0 try again later".into());
        }
    });
    let site = site(&smtp, false);
    common::import_immediate(&site, &emails);
    let daemon = start(&site);
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    // Every mail planned so far was tried once and deferred.
    wait_for("most mails deferred once", PATIENCE * 4, || {
        daemon.metric("bantin_mail_retries_total").unwrap_or(0.0) >= 7_500.0
    });
    let report = stdout(&site.bantin(&["status", "--article", "moi", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let planned = report["alerts"]["planned"].as_u64().unwrap();
    assert!(planned < SUBSCRIBERS, "planning stopped: {report}");
    assert_eq!(report["alerts_fanning_out"], true, "{report}");
    assert!(!paused(&daemon), "a deferral per mail is not a pause");
}

/// A relay that offers PIPELINING and 8BITMIME gets each mail's commands in one write and
/// its text as it is; one that offers neither gets the commands one at a time and the text
/// encoded in 7 bits. Each recipient's mail carries its own links either way, though the
/// alert is rendered once for all of them.
#[test]
fn pipelining_and_8bit_bodies_only_where_the_relay_offers_them() {
    let emails = ["a@x.vn", "b@x.vn", "c@x.vn"];
    let mut texts = Vec::new();
    for offered in [true, false] {
        let smtp = SmtpServer::start();
        smtp.set(|r| {
            r.no_eight_bit = !offered;
            r.no_pipelining = !offered;
        });
        let site = site(&smtp, false);
        add(&site, &emails);
        let daemon = start(&site);
        site.publish(
            "moi.txt",
            &article(CAT_A, "Kỳ họp thứ mười một", "20/11/2026 | 08:00"),
        );
        each_once(&smtp, &emails);
        drop(daemon);
        let mut links = std::collections::HashSet::new();
        for m in smtp.accepted() {
            let head = m.data.split("\r\n\r\n").next().unwrap().to_owned();
            let body = &m.data[head.len()..];
            if offered {
                assert_eq!(m.from_params, "BODY=8BITMIME", "{head}");
                assert_eq!(m.pipelined, 2, "MAIL FROM, RCPT TO and DATA in one write");
                assert!(body.contains("Content-Transfer-Encoding: 8bit"), "{body}");
                assert!(body.contains("Kỳ họp thứ mười một"));
            } else {
                assert_eq!(m.from_params, "");
                assert_eq!(m.pipelined, 0, "one command at a time");
                assert!(m.data.is_ascii(), "a 7-bit mail");
            }
            let text = common::mail::part(&m.data, "text/plain").unwrap();
            let html = common::mail::part(&m.data, "text/html").unwrap();
            let link = common::mail::link(&m.data, "/unsubscribe?token=");
            let listed = common::mail::header(&m.data, "List-Unsubscribe").unwrap();
            assert_eq!(listed, format!("<{link}>"), "the header and the text agree");
            assert!(
                html.contains(&link.replace('/', "&#x2f;")) || html.contains(&link),
                "the HTML has the same link"
            );
            assert!(
                links.insert(link.clone()),
                "each recipient has their own link"
            );
            let token = link.split("token=").nth(1).unwrap();
            texts.push((
                m.to[0].clone(),
                offered,
                text.replace(token, "TOKEN").replace(
                    common::mail::link(&m.data, "/preferences?token=")
                        .split("token=")
                        .nth(1)
                        .unwrap(),
                    "TOKEN",
                ),
            ));
        }
        assert_eq!(links.len(), emails.len());
    }
    // The same text for each recipient, whatever the relay took (the links aside: each
    // site signs with its own key).
    for email in emails {
        let of = |offered: bool| {
            texts
                .iter()
                .find(|(to, o, _)| to == email && *o == offered)
                .map(|(_, _, t)| t.clone())
                .unwrap()
        };
        let (eight, seven) = (of(true), of(false));
        let host = |t: &str| t.replace(|c: char| c.is_ascii_digit(), "");
        assert_eq!(host(&eight), host(&seven), "{email}");
    }
}

/// A recipient the relay refuses costs a reset of the session, not the connection: a relay
/// does not like a new connection after every unknown address.
#[test]
fn a_refused_recipient_keeps_the_connection() {
    for pipelining in [true, false] {
        let smtp = SmtpServer::start();
        let gone = ["mat1@x.vn", "mat2@x.vn", "mat3@x.vn"];
        smtp.set(|r| {
            r.no_pipelining = !pipelining;
            for e in gone {
                r.rcpt.insert(e.into(), "550 5.1.1 no such user".into());
            }
        });
        let site = site(&smtp, false);
        let emails = [
            "a@x.vn",
            "mat1@x.vn",
            "b@x.vn",
            "mat2@x.vn",
            "c@x.vn",
            "mat3@x.vn",
        ];
        add(&site, &emails);
        let daemon = start(&site);
        site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
        each_once(&smtp, &["a@x.vn", "b@x.vn", "c@x.vn"]);
        wait_for("the refusals recorded", PATIENCE, || {
            status(&site)["subscribers"]["bounced"] == 3
        });
        // Two mails at a time (mail.concurrency): two connections, however many refusals.
        let connections = smtp.connections.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            connections <= 2,
            "{connections} connections (pipelining {pipelining})"
        );
        drop(daemon);
    }
}

/// A relay that refuses a few addresses only (no relay rights for their domain, say), the
/// same way each time: delivery may pause once, but its next try is another mail; once the
/// relay took other mails, that refusal is the addresses' own: their mails fail after a
/// second try, and a new article goes out without another pause.
#[test]
fn a_relay_refusing_a_few_addresses_does_not_hold_back_everyone_else() {
    let smtp = SmtpServer::start();
    let bad = ["aa1@x.vn", "aa2@x.vn", "aa3@x.vn"];
    smtp.set(|r| {
        for email in bad {
            r.rcpt.insert(
                email.into(),
                format!("554 5.7.1 <{email}>: Relay access denied"),
            );
        }
    });
    let site = site(&smtp, false);
    let good = ["b@x.vn", "c@x.vn"];
    add(&site, &bad);
    add(&site, &good);
    let daemon = start(&site);
    site.publish("mot.txt", &article(CAT_A, "Bài một", "20/11/2026 | 08:00"));
    let got = |title: &str| {
        let mut to: Vec<String> = smtp
            .accepted()
            .iter()
            .filter(|m| m.data.contains(title))
            .flat_map(|m| m.to.clone())
            .collect();
        to.sort();
        to
    };
    // Whatever the order of refusals and pauses, the good addresses get it.
    // Each look that finds it missing moves the clock past the next try.
    wait_for("Bài một to the good addresses", PATIENCE, || {
        got("Bài một") == good || {
            daemon.advance(Span::seconds(61));
            false
        }
    });
    wait_for("not paused", PATIENCE, || !paused(&daemon));
    // The refused ones are tried once more, then fail; delivery does not pause for them.
    let failed = |n: usize| {
        wait_for("the refused mails failed", PATIENCE, || {
            status(&site)["outbox"]["failed"] == n || {
                daemon.advance(Span::seconds(61));
                assert!(!paused(&daemon), "paused again: {}", status(&site));
                false
            }
        })
    };
    failed(bad.len());
    // A new article reaches the good addresses at once, the clock unmoved.
    site.publish("hai.txt", &article(CAT_A, "Bài hai", "20/11/2026 | 09:00"));
    wait_for("Bài hai to the good addresses", PATIENCE, || {
        got("Bài hai") == good
    });
    assert!(!paused(&daemon), "{}", status(&site));
    failed(2 * bad.len());
    let json = status(&site);
    assert_eq!(json["subscribers"]["active"], 5, "nobody bounced: {json}");
    assert_eq!(json["outbox"]["sent"], 2 * good.len(), "{json}");
}

/// The SMTP transport of `site` alone, outside a daemon, with a runtime to drive it.
fn transport_of(site: &Site) -> (bantin::mail::Transport, tokio::runtime::Runtime) {
    let config = bantin::config::Config::from_file(&site.config()).unwrap();
    let transport =
        bantin::mail::Transport::from_config(&config, bantin::mail::RelaySays::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (transport, runtime)
}

/// An envelope from the council to `to`.
fn envelope(to: &str) -> lettre::address::Envelope {
    lettre::address::Envelope::new(
        Some("bantin@hdnd.test".parse().unwrap()),
        vec![to.parse().unwrap()],
    )
    .unwrap()
}

const A_MAIL: &[u8] = b"Subject: thu\r\n\r\nXin chao.\r\n";

/// A connection carries at most one mail the relay took and bantin has not recorded (what a
/// crash may send again): the next mail on it goes as far as its body, then waits for the
/// last one's record; if that record cannot be written, the next mail is not given to the
/// relay.
#[test]
fn the_next_mail_of_a_connection_waits_for_the_last_to_be_on_record() {
    use std::sync::atomic::Ordering::SeqCst;
    let smtp = SmtpServer::start();
    let site = site(&smtp, false);
    let (transport, runtime) = transport_of(&site);
    let transport = std::sync::Arc::new(transport);
    let send = |to: &'static str| {
        let transport = transport.clone();
        tokio::spawn(async move { transport.send(&envelope(to), A_MAIL, "x").await })
    };
    let begun = smtp.mails_begun.clone();
    let began = |n: usize| {
        let begun = begun.clone();
        async move {
            while begun.load(SeqCst) < n {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    runtime.block_on(async {
        let first = send("a@x.vn")
            .await
            .unwrap()
            .unwrap()
            .expect("a receipt over SMTP");
        assert_eq!(smtp.accepted().len(), 1);
        let second = send("b@x.vn");
        tokio::time::timeout(PATIENCE, began(2)).await.unwrap();
        // Its envelope is out on the same connection; its final dot waits.
        tokio::task::yield_now().await;
        assert_eq!(
            smtp.accepted().len(),
            1,
            "taken before the last was on record"
        );
        first.recorded();
        let second = second.await.unwrap().unwrap().expect("a receipt");
        assert_eq!(smtp.accepted().len(), 2);
        assert_eq!(smtp.connections.load(SeqCst), 1, "the same connection");
        // A mail whose record could not be written: the next is not given to the relay.
        let third = send("c@x.vn");
        tokio::time::timeout(PATIENCE, began(3)).await.unwrap();
        drop(second);
        assert!(matches!(
            third.await.unwrap(),
            Err(bantin::mail::SendError::Temporary(_))
        ));
        assert_eq!(smtp.accepted().len(), 2);
    });
}

/// At a stop, a mail not yet on a connection is not begun: it stays as it was for the next
/// start, rather than wait out a relay that may hang.
#[test]
fn a_closed_transport_begins_no_mail() {
    let smtp = SmtpServer::start();
    let site = site(&smtp, false);
    let (transport, runtime) = transport_of(&site);
    transport.close();
    let sent = runtime.block_on(transport.send(&envelope("a@x.vn"), A_MAIL, "x"));
    assert!(
        matches!(sent, Err(bantin::mail::SendError::Stopping)),
        "{:?}",
        sent.err()
    );
    assert_eq!(
        smtp.connections.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(smtp.accepted().is_empty());
}

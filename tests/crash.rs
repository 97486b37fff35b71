//! A crash in the middle of a fan-out loses no mail and repeats at most the mails in flight.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::daemon::Daemon;
use common::smtp::SmtpServer;
use common::{CAT_A, Site, article, stdout, wait_for};

const SUBSCRIBERS: usize = 2000;
const CONCURRENCY: usize = 4;

#[test]
fn kill_9_during_a_fan_out() {
    let smtp = SmtpServer::slow(Duration::from_millis(1));
    let site = Site::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\nfrom = \"HĐND <bantin@hdnd.test>\"\ntransport = \"smtp\"\nconcurrency = {CONCURRENCY}\n\
         retry_initial_ms = 200\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntimeout_secs = 5\n",
        smtp.addr.port()
    ));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    let mut csv = String::from("email,schedule,categories\n");
    for i in 0..SUBSCRIBERS {
        csv.push_str(&format!("dan{i:04}@x.vn,immediate,\n"));
    }
    site.write("ds.csv", &csv);
    let out = site.bantin(&[
        "subscribers",
        "import",
        site.path("ds.csv").to_str().unwrap(),
        "--confirmed",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(stdout(&out).contains(&format!("imported {SUBSCRIBERS} subscribers")));

    let mut daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish(
        "tin-moi.txt",
        &article(CAT_A, "Tin cho mọi người", "20/11/2026 | 08:00"),
    );
    wait_for("a quarter of the mails", Duration::from_secs(120), || {
        smtp.accepted().len() >= SUBSCRIBERS / 4
    });
    daemon.child.kill().unwrap(); // SIGKILL: no shutdown at all
    daemon.child.wait().unwrap();
    let at_crash = smtp.accepted().len();
    assert!(
        at_crash < SUBSCRIBERS,
        "the crash came in the middle ({at_crash} sent)"
    );
    drop(daemon);

    let daemon = Daemon::start(&site);
    wait_for("every mail", Duration::from_secs(180), || {
        let status = stdout(&site.bantin(&["status", "--json"]));
        let json: serde_json::Value = serde_json::from_str(&status).unwrap();
        json["outbox"]["pending"] == 0 && json["outbox"]["sent"] == SUBSCRIBERS
    });
    let mut per_address: HashMap<String, usize> = HashMap::new();
    for m in smtp.accepted() {
        for to in m.to {
            *per_address.entry(to).or_default() += 1;
        }
    }
    assert_eq!(
        per_address.len(),
        SUBSCRIBERS,
        "every subscriber got the alert"
    );
    let duplicates: usize = per_address.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= CONCURRENCY,
        "{duplicates} duplicates, more than the {CONCURRENCY} mails in flight"
    );
    eprintln!("crash after {at_crash} mails; {duplicates} duplicates after restart");
    drop(daemon);
}

//! A crash in the middle of a fan-out loses no mail and repeats at most the mails in flight.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::daemon::Daemon;
use common::smtp::SmtpServer;
use common::{CAT_A, Site, article, stdout, wait_for};

const SUBSCRIBERS: usize = 2000;
const CONCURRENCY: usize = 4;

/// Checks that `mails` reached `n` addresses, none more than once beyond the mails in flight
/// at the crash; returns how many went twice.
fn each_once_at_most_in_flight(mails: Vec<common::smtp::Received>, n: usize, what: &str) -> usize {
    let mut per_address: HashMap<String, usize> = HashMap::new();
    for m in mails {
        for to in m.to {
            *per_address.entry(to).or_default() += 1;
        }
    }
    assert_eq!(per_address.len(), n, "every recipient got {what}");
    let duplicates: usize = per_address.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= CONCURRENCY,
        "{duplicates} duplicates, more than the {CONCURRENCY} mails in flight"
    );
    duplicates
}

/// A site mailing through `smtp` with `CONCURRENCY` sessions, and `n` active `immediate`
/// subscribers imported (dan0000@x.vn …).
fn fan_out_site(smtp: &SmtpServer, n: usize) -> Site {
    let site = Site::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\nfrom = \"HĐND <bantin@hdnd.test>\"\ntransport = \"smtp\"\nconcurrency = {CONCURRENCY}\n\
         retry_initial_ms = 200\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntimeout_secs = 5\n",
        smtp.addr.port()
    ));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    let mut csv = String::from("email,schedule,categories\n");
    for i in 0..n {
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
    assert!(stdout(&out).contains(&format!("imported {n} subscribers")));
    site
}

#[test]
fn kill_9_during_a_fan_out() {
    let smtp = SmtpServer::slow(Duration::from_millis(1));
    let site = fan_out_site(&smtp, SUBSCRIBERS);

    let mut daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish(
        "tin-moi.txt",
        &article(CAT_A, "Tin cho mọi người", "20/11/2026 | 08:00"),
    );
    // Past the first fold (every 1,000 mails sent): the marks recorded since are in the
    // second journal of sent marks, or in both if the crash comes during a fold.
    wait_for(
        "three fifths of the mails",
        Duration::from_secs(120),
        || smtp.accepted().len() >= SUBSCRIBERS * 3 / 5,
    );
    daemon.child.kill().unwrap(); // SIGKILL: no shutdown at all
    daemon.child.wait().unwrap();
    let at_crash = smtp.accepted().len();
    assert!(
        at_crash < SUBSCRIBERS,
        "the crash came in the middle ({at_crash} sent)"
    );
    drop(daemon);
    // With the daemon down, status says the fan-out is not over: most of its mails have no
    // record yet.
    let out = site.bantin(&["status"]);
    assert!(
        stdout(&out).contains(
            "alerts still going out (pending counts only the mails planned so far): tin-moi"
        ),
        "{}",
        stdout(&out)
    );

    let daemon = Daemon::start(&site);
    wait_for("every mail", Duration::from_secs(180), || {
        let status = stdout(&site.bantin(&["status", "--json"]));
        let json: serde_json::Value = serde_json::from_str(&status).unwrap();
        json["outbox"]["pending"] == 0 && json["outbox"]["sent"] == SUBSCRIBERS
    });
    let duplicates = each_once_at_most_in_flight(smtp.accepted(), SUBSCRIBERS, "the alert");
    eprintln!("crash after {at_crash} mails; {duplicates} duplicates after restart");
    // The fan-out resumed counts the mails sent before the crash among its own.
    daemon.wait_log(&format!("alerts queued id=\"tin-moi\" mails={SUBSCRIBERS}"));
    drop(daemon);
}

/// A crash in the middle of a correction's fan-out: after the restart every recipient of the
/// article has its one correction, and at most the mails in flight went twice.
#[test]
fn kill_9_during_a_correction_fan_out() {
    const TOLD: usize = 600;
    let smtp = SmtpServer::slow(Duration::from_millis(2));
    let site = fan_out_site(&smtp, TOLD);

    let mut daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    let text = article(CAT_A, "Kỳ họp", "20/11/2026 | 08:00");
    site.publish("ky-hop.txt", &text);
    wait_for("every alert", Duration::from_secs(120), || {
        smtp.accepted().len() >= TOLD
    });
    let report = |site: &Site| -> serde_json::Value {
        let out = site.bantin(&["status", "--article", "ky-hop", "--json"]);
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    wait_for("every alert recorded", Duration::from_secs(60), || {
        report(&site)["alerts"]["sent"] == TOLD
    });
    site.publish(
        "ky-hop.txt",
        &text.replace(
            "Ngày đăng 20/11/2026 | 08:00\n",
            "Ngày đăng 20/11/2026 | 08:00\nĐính chính: sửa tên người chủ trì\n",
        ),
    );
    let corrections = |smtp: &SmtpServer| -> Vec<common::smtp::Received> {
        smtp.accepted()
            .into_iter()
            .filter(|m| {
                m.header("Subject")
                    .is_some_and(|s| s.starts_with("Đính chính"))
            })
            .collect()
    };
    wait_for(
        "a quarter of the corrections",
        Duration::from_secs(120),
        || corrections(&smtp).len() >= TOLD / 4,
    );
    daemon.child.kill().unwrap(); // SIGKILL: no shutdown at all
    daemon.child.wait().unwrap();
    let at_crash = corrections(&smtp).len();
    assert!(
        at_crash < TOLD,
        "the crash came in the middle ({at_crash} sent)"
    );
    drop(daemon);

    let daemon = Daemon::start(&site);
    wait_for("every correction", Duration::from_secs(180), || {
        let r = report(&site);
        r["corrections"][0]["pending"] == 0 && r["corrections"][0]["sent"] == TOLD
    });
    let duplicates = each_once_at_most_in_flight(corrections(&smtp), TOLD, "the correction");
    assert_eq!(
        report(&site)["corrections"].as_array().unwrap().len(),
        1,
        "planned once, not again at the restart"
    );
    eprintln!("crash after {at_crash} corrections; {duplicates} duplicates after restart");
    drop(daemon);
}

/// A tmpfs mounted for the state, unmounted at the end.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` when this machine does not let the test mount one (not root, no mount).
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the disk of `dir` with one file until it is full.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("day.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

/// The state disk fills up in the middle of a fan-out, then space comes back: delivery
/// pauses instead of sending the same mails again and again, the subscribe form answers 503,
/// and once there is room everyone gets each alert at least once and at most twice (one more
/// than the state failures it lived through). Needs a tmpfs, so root; skipped otherwise.
#[test]
fn a_full_state_disk_pauses_delivery_and_loses_nothing() {
    const ARTICLES: usize = 5;
    const PEOPLE: usize = 100;
    let smtp = SmtpServer::slow(Duration::from_millis(4));
    let site = Site::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [state]\ndir = \"state\"\n\
         [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\nfrom = \"HĐND <bantin@hdnd.test>\"\n\
         transport = \"smtp\"\nconcurrency = 2\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntimeout_secs = 5\n",
        smtp.addr.port()
    ));
    let Some(_tmpfs) = Tmpfs::mount(&site.path("state"), "24m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    let mut csv = String::from("email,schedule,categories\n");
    for i in 0..PEOPLE {
        csv.push_str(&format!(
            "nguoi-dan-so-{i:03}@phuong-cau-giay.example.vn,immediate,\n"
        ));
    }
    site.write("ds.csv", &csv);
    let out = site.bantin(&[
        "subscribers",
        "import",
        site.path("ds.csv").to_str().unwrap(),
        "--confirmed",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    for a in 0..ARTICLES {
        site.publish(
            &format!("thong-bao-ve-ky-hop-thu-{a}-cua-hoi-dong-nhan-dan-phuong.txt"),
            &article(CAT_A, &format!("Thông báo số {a}"), "20/11/2026 | 08:00"),
        );
    }
    wait_for("the fan-out under way", Duration::from_secs(60), || {
        smtp.accepted().len() >= 40
    });
    let filler = fill(&site.path("state"));
    daemon.wait_log("mail delivery paused");
    // While the state cannot be written, a subscription is refused with 503, never 500.
    let r = common::http::request(
        daemon.addr,
        "POST",
        "/subscribe",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"email=moi%40x.vn&schedule=daily",
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let out = site.bantin(&["status"]);
    let status = stdout(&out);
    assert!(
        status.contains("delivery: PAUSED") && status.contains("cannot write the state"),
        "{status}{}",
        common::stderr(&out)
    );
    let during = smtp.accepted().len();
    std::fs::remove_file(filler).unwrap();
    daemon.wait_log("the state can be written again");
    wait_for("every alert", Duration::from_secs(120), || {
        let json: serde_json::Value =
            serde_json::from_str(&stdout(&site.bantin(&["status", "--json"]))).unwrap();
        json["outbox"]["pending"] == 0 && json["outbox"]["sent"] == ARTICLES * PEOPLE
    });
    let mut per: HashMap<(String, String), usize> = HashMap::new();
    for m in smtp.accepted() {
        let subject = common::mail::header(&m.data, "Subject").unwrap();
        for to in m.to {
            *per.entry((subject.clone(), to)).or_default() += 1;
        }
    }
    assert_eq!(per.len(), ARTICLES * PEOPLE, "everyone got every alert");
    let most = per.values().max().copied().unwrap();
    assert!(
        most <= 2,
        "an alert went {most} times: at most once more than the one failure"
    );
    eprintln!(
        "{during} mails before the pause; {} in all for {} alerts",
        smtp.accepted().len(),
        ARTICLES * PEOPLE
    );
}

/// sled opens a database whose snapshot was deleted as an empty one; a truncated one
/// panicked. Either way bantin must refuse, clearly, and never start empty.
#[test]
fn a_damaged_or_missing_state_is_refused_not_taken_for_a_first_start() {
    let site =
        Site::with_config("[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n");
    let out = site.bantin(&["subscribers", "add", "dan@x.vn", "--confirmed"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let db = site.path("var/state/db");
    let kept = site.path("kept-db");
    common::copy_dir(&db, &kept);
    let refused = |what: &str| {
        for args in [&["status"][..], &["run"]] {
            let out = site.bantin(args);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{what} {args:?}: {}",
                common::stderr(&out)
            );
            let err = common::stderr(&out);
            assert!(
                err.contains("does not hold the state it held") || err.contains("is damaged"),
                "{what} {args:?}: {err}"
            );
            assert!(
                err.contains("bantin state import"),
                "says how to restore: {err}"
            );
            assert!(!err.contains("another bantin"), "{err}");
        }
    };
    // The database's files gone (sled would open an empty one)…
    std::fs::remove_dir_all(&db).unwrap();
    refused("files removed");
    // …or its log cut short.
    std::fs::remove_dir_all(&db).unwrap();
    common::copy_dir(&kept, &db);
    let log = std::fs::read(db.join("db")).unwrap();
    std::fs::write(db.join("db"), &log[..log.len() / 2]).unwrap();
    for snap in std::fs::read_dir(&db).unwrap().map(|e| e.unwrap().path()) {
        if snap
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("snap.")
        {
            std::fs::remove_file(snap).unwrap();
        }
    }
    refused("log truncated");
    // Restored from the copy, it opens with its subscriber.
    std::fs::remove_dir_all(&db).unwrap();
    common::copy_dir(&kept, &db);
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(list.contains("dan@x.vn"), "{list}");
}

/// The export is the backup and the upgrade path across sled's formats: a populated state
/// goes out and comes back the same.
#[test]
fn state_export_and_import_round_trip() {
    let smtp = SmtpServer::start();
    let config = |state: &str| {
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             [state]\ndir = \"{state}\"\n\
             [mail]\nalert_delay_secs = 0\nalert_max_age_days = 3650\n\
             from = \"HĐND <bantin@hdnd.test>\"\ntransport = \"smtp\"\n\
             return_path = \"bounces@hdnd.test\"\n\
             [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\n",
            smtp.addr.port()
        )
    };
    let site = Site::with_config(&config("cu"));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    for who in ["a", "b", "c"] {
        let out = site.bantin(&["subscribers", "add", &format!("{who}@x.vn"), "--confirmed"]);
        assert!(out.status.success());
    }
    let out = site.bantin(&["subscribers", "add", "cho@x.vn", "--schedule", "weekly"]);
    assert!(out.status.success());
    let daemon = Daemon::start(&site);
    daemon.wait_log("baseline");
    site.publish("moi.txt", &article(CAT_A, "Bài mới", "20/11/2026 | 08:00"));
    wait_for(
        "the alerts and the confirmation",
        Duration::from_secs(20),
        || smtp.accepted().len() >= 4,
    );
    // Exported while the daemon runs, through its socket.
    let first = site.path("sao-luu.jsonl");
    let out = site.bantin(&["state", "export", first.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // It holds every subscriber's address: readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&first).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    drop(daemon);
    // Into a new state folder, then out again.
    site.set_config(&config("moi"));
    let out = site.bantin(&["state", "import", first.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // Its count matches the export's: every record read is accounted for.
    let lines = std::fs::read_to_string(&first).unwrap().lines().count();
    assert!(
        common::stderr(&out).contains(&format!(
            "({lines} read; the 3 that named the exported state itself"
        )),
        "{}",
        common::stderr(&out)
    );
    let second = site.path("lan-hai.jsonl");
    let out = site.bantin(&["state", "export", second.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let records = |path: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            // Each state keeps its own identity.
            .filter(|l| !l.contains(r#""tree":"meta","key":"id""#))
            .map(String::from)
            .collect()
    };
    let (a, b) = (records(&first), records(&second));
    assert!(a.len() > 15, "a populated state: {} records", a.len());
    assert!(a.iter().any(|l| l.contains(r#""tree":"outbox""#)));
    assert!(a.iter().any(|l| l.contains(r#""tree":"ids""#)));
    assert_eq!(a, b);
    let list = stdout(&site.bantin(&["subscribers", "list"]));
    assert!(
        list.contains("a@x.vn") && list.contains("cho@x.vn\tweekly\tpending"),
        "{list}"
    );
    // Importing again over it is refused: nothing is mixed.
    let out = site.bantin(&["state", "import", first.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("already holds"),
        "{}",
        common::stderr(&out)
    );
}

/// The site's disk fills up: pages that could not be written are written once there is
/// room, without an edit or a restart. Needs a tmpfs, so root; skipped otherwise.
#[test]
fn pages_that_could_not_be_written_are_written_once_there_is_room() {
    let site = Site::with_config(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [output]\ndir = \"public\"\n",
    );
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    let Some(_tmpfs) = Tmpfs::mount(&site.path("public"), "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let daemon = Daemon::start(&site);
    // The first pages are written once the start is over (the search index is built after
    // them): filled before, a write failing then frees the room it had taken, and the new
    // page may fit in it.
    daemon.wait_log("search index built");
    let filler = fill(&site.path("public"));
    site.publish(
        "moi.txt",
        &article(CAT_A, "Bài khi đĩa đầy", "20/11/2026 | 08:00"),
    );
    daemon.wait_log("trying again later");
    assert_eq!(daemon.get("/articles/moi.html").status, 404);
    // The feed is served from memory all along (it may be swapped in just after the write
    // that failed was logged).
    daemon.get_until("/feeds/tin-tuc.rss", "the feed from memory", |r| {
        r.text().contains("Bài khi đĩa đầy")
    });
    std::fs::remove_file(filler).unwrap();
    wait_for("the page written", Duration::from_secs(20), || {
        daemon.get("/articles/moi.html").status == 200
    });
    daemon.wait_log("the site's files are all written again");
}

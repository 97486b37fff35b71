//! The daemon end to end: the real binary on 127.0.0.1:0, a temporary store, real HTTP.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::daemon::{Daemon, PATIENCE};
use common::http::request;
use common::{CAT_A, CAT_B, Site, article, set_mtime, stdout};

/// A site whose daemon listens on a free port.
/// Held by the tests that must not run beside each other.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn site() -> Site {
    site_with("")
}

fn site_with(extra: &str) -> Site {
    let site = Site::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n{extra}"
    ));
    site.put("cu.txt", &article(CAT_A, "Bài cũ", "14/02/2020 | 08:16"));
    set_mtime(&site.store().join("cu.txt"), 1_600_000_000);
    site
}

fn atom_entry<'a>(feed: &'a str, id: &str) -> Option<&'a str> {
    let start = feed.find(&format!("<id>tag:bantin.test,2020:{id}</id>"))?;
    let entry_start = feed[..start].rfind("<entry>")?;
    let end = feed[start..].find("</entry>")? + start;
    Some(&feed[entry_start..end])
}

fn tag(text: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let start = text.find(&open).unwrap() + open.len();
    let end = text[start..].find(&format!("</{name}>")).unwrap() + start;
    text[start..end].to_string()
}

#[test]
fn a_renamed_article_appears_is_updated_and_removed() {
    let site = site();
    let daemon = Daemon::start(&site);
    assert!(daemon.get("/feeds/tin-tuc.atom").text().contains("Bài cũ"));

    site.publish(
        "2026/moi.txt",
        &article(CAT_A, "Bài mới", "01/11/2026 | 09:00"),
    );
    daemon.get_until("/feeds/tin-tuc.atom", "the new article in its feed", |r| {
        r.text().contains("Bài mới")
    });
    // A file older than its publication time: `updated` is the publication time.
    let path = site.store().join("2026/moi.txt");
    set_mtime(&path, 1_600_000_000);
    let feed = daemon.get_until("/feeds/tin-tuc.atom", "updated = published", |r| {
        r.text()
            .contains("<updated>2026-11-01T09:00:00+07:00</updated>")
    });
    let first = atom_entry(&feed.text(), "2026/moi")
        .expect("entry")
        .to_string();
    assert!(daemon.get("/feeds/tat-ca.rss").text().contains("Bài mới"));
    let page = daemon.get("/articles/2026/moi.html");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<h1>Bài mới</h1>"), "{}", page.text());
    assert!(site.public().join("articles/2026/moi.html").exists());
    assert!(
        site.read_public("feeds/tin-tuc.atom").contains("Bài mới"),
        "written to disk too"
    );
    let index = daemon.get("/");
    assert!(index.text().contains("Bài mới"));

    // An edit: same id, new title, later `updated`.
    site.publish(
        "2026/moi.txt",
        &article(CAT_A, "Bài mới (sửa)", "01/11/2026 | 09:00"),
    );
    let feed = daemon.get_until("/feeds/tin-tuc.atom", "the edited title", |r| {
        r.text().contains("Bài mới (sửa)")
    });
    let text = feed.text();
    let edited = atom_entry(&text, "2026/moi").expect("same id");
    assert_eq!(
        text.matches("2026/moi</id>").count(),
        1,
        "one entry for the article"
    );
    assert_eq!(tag(&first, "published"), tag(edited, "published"));
    assert!(tag(edited, "updated") > tag(&first, "updated"), "{edited}");

    // A deletion.
    std::fs::remove_file(&path).unwrap();
    daemon.get_until("/feeds/tin-tuc.atom", "the deleted article gone", |r| {
        !r.text().contains("Bài mới")
    });
    assert_eq!(daemon.get("/articles/2026/moi.html").status, 404);
    assert!(!site.public().join("articles/2026/moi.html").exists());
}

#[test]
fn other_categories_are_untouched() {
    let site = site();
    let daemon = Daemon::start(&site);
    let before = daemon.get("/feeds/tin-tuc.rss");
    site.publish(
        "tb.txt",
        &article(CAT_B, "Thông báo mới", "01/11/2026 | 09:00"),
    );
    daemon.get_until("/feeds/tat-ca.rss", "the notice in all news", |r| {
        r.text().contains("Thông báo mới")
    });
    let after = daemon.get("/feeds/tin-tuc.rss");
    assert_eq!(before.header("etag"), after.header("etag"));
}

#[test]
fn a_broken_file_is_logged_and_the_rest_keep_working() {
    let site = site();
    let daemon = Daemon::start(&site);
    site.publish(
        "hong.txt",
        "TIN TỨC\n\nTiêu đề\nNgày đăng 31/02/2020\n\nĐoạn.\n",
    );
    daemon.wait_log("hong.txt:4: ngày \"31/02/2020\" không có trên lịch");
    site.publish(
        "tot.txt",
        &article(CAT_A, "Bài tốt sau bài hỏng", "01/11/2026 | 09:00"),
    );
    daemon.get_until("/feeds/tin-tuc.rss", "the good article", |r| {
        r.text().contains("Bài tốt sau bài hỏng")
    });
    // The metrics follow once the files are written.
    common::wait_for("two articles counted", PATIENCE, || {
        daemon.metrics().contains("bantin_articles 2\n")
    });
    let metrics = daemon.metrics();
    assert!(metrics.contains("bantin_article_errors 1"), "{metrics}");
    // `status` says how many of the store's files are broken, as the daemon knows.
    let text = stdout(&site.bantin(&["status"]));
    assert!(
        text.contains("files in the store (1 broken: `bantin check` names them)"),
        "{text}"
    );
}

/// What `check` warns the clerk of, the daemon's log says as the file arrives: a category
/// written another way than the existing one, an article dated ahead.
#[test]
fn the_log_tells_a_category_written_another_way_and_a_scheduled_article() {
    let site = site();
    site.put(
        "a.txt",
        &article(CAT_B, "Thông báo một", "14/02/2020 | 08:00"),
    );
    let daemon = Daemon::start(&site);
    site.publish(
        "b.txt",
        &article("Thông báo", "Thông báo hai", "15/02/2020 | 08:00"),
    );
    daemon
        .wait_log("category \"Thông báo\" is written differently from the existing \"THÔNG BÁO\"");
    site.publish(
        "c.txt",
        &article(CAT_B, "Thông báo sau", "01/01/2099 | 08:00"),
    );
    daemon.wait_log("scheduled, published at 2099-01-01T08:00:00+07:00");
    // An article of the category as written before warns nothing.
    let before = daemon.log().matches("is written differently").count();
    site.publish(
        "d.txt",
        &article(CAT_B, "Thông báo ba", "16/02/2020 | 08:00"),
    );
    daemon.wait_log("id=\"d\"");
    assert_eq!(
        daemon.log().matches("is written differently").count(),
        before
    );
}

#[test]
fn a_file_written_in_place_is_read_once_complete() {
    // A pause shorter than the daemon's quiet window: not beside the heaviest test, whose
    // load on two cores could stretch it past the window.
    let _alone = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let site = site();
    let daemon = Daemon::start(&site);
    let text = article(CAT_A, "Bài viết dần", "01/11/2026 | 09:00");
    let (head, tail) = text.split_at(text.find("Đoạn thứ hai").unwrap());
    let path = site.store().join("viet-dan.txt");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(head.as_bytes()).unwrap();
    file.flush().unwrap();
    // A slow writer: the first half alone is a valid article.
    std::thread::sleep(Duration::from_millis(300));
    file.write_all(tail.as_bytes()).unwrap();
    drop(file);
    let feed = daemon.get_until("/feeds/tin-tuc.rss", "the article", |r| {
        r.text().contains("Bài viết dần")
    });
    assert!(feed.text().contains("Đoạn thứ hai"), "published whole");
    let log = daemon.log();
    assert_eq!(
        log.matches("article added id=\"viet-dan\"").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("article updated id=\"viet-dan\""), "{log}");
}

#[test]
fn the_store_folder_can_be_replaced() {
    let site = site();
    let daemon = Daemon::start(&site);
    let next = site.path("articles.next");
    std::fs::create_dir_all(&next).unwrap();
    std::fs::write(
        next.join("thay.txt"),
        article(CAT_A, "Kho mới", "01/11/2026 | 09:00"),
    )
    .unwrap();
    std::fs::rename(site.store(), site.path("articles.old")).unwrap();
    std::fs::rename(&next, site.store()).unwrap();
    daemon.get_until("/feeds/tin-tuc.rss", "the replaced store", |r| {
        r.text().contains("Kho mới") && !r.text().contains("Bài cũ")
    });
    // And the new folder is watched.
    site.publish(
        "sau.txt",
        &article(CAT_A, "Sau khi thay", "02/11/2026 | 09:00"),
    );
    daemon.get_until("/feeds/tin-tuc.rss", "an article in the new folder", |r| {
        r.text().contains("Sau khi thay")
    });
}

#[test]
fn conditional_get_and_head() {
    let site = site();
    let daemon = Daemon::start(&site);
    let first = daemon.get("/feeds/tin-tuc.rss");
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("content-type"),
        Some("application/rss+xml; charset=utf-8")
    );
    assert_eq!(
        daemon.get("/feeds/tin-tuc.atom").header("content-type"),
        Some("application/atom+xml; charset=utf-8")
    );
    assert_eq!(
        daemon.get("/feeds/tin-tuc.json").header("content-type"),
        Some("application/feed+json; charset=utf-8")
    );
    let etag = first.header("etag").unwrap().to_string();
    let last_modified = first.header("last-modified").unwrap().to_string();
    assert!(first.header("cache-control").is_some());

    let r = request(
        daemon.addr,
        "GET",
        "/feeds/tin-tuc.rss",
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = request(
        daemon.addr,
        "GET",
        "/feeds/tin-tuc.rss",
        &[("If-Modified-Since", &last_modified)],
        b"",
    );
    assert_eq!(r.status, 304);
    // If-None-Match decides when present, even with a matching If-Modified-Since.
    let r = request(
        daemon.addr,
        "GET",
        "/feeds/tin-tuc.rss",
        &[
            ("If-None-Match", "\"stale\""),
            ("If-Modified-Since", &last_modified),
        ],
        b"",
    );
    assert_eq!(r.status, 200);

    let head = request(daemon.addr, "HEAD", "/feeds/tin-tuc.rss", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    for name in [
        "etag",
        "last-modified",
        "content-type",
        "content-length",
        "cache-control",
    ] {
        assert_eq!(head.header(name), first.header(name), "{name}");
    }

    let zipped = request(
        daemon.addr,
        "GET",
        "/feeds/tin-tuc.rss",
        &[("Accept-Encoding", "gzip")],
        b"",
    );
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&zipped.body[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, first.body);

    site.publish(
        "moi.txt",
        &article(CAT_A, "Làm đổi ETag", "01/11/2026 | 09:00"),
    );
    let changed = daemon.get_until("/feeds/tin-tuc.rss", "a new ETag", |r| {
        r.text().contains("Làm đổi ETag")
    });
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    let r = request(
        daemon.addr,
        "GET",
        "/feeds/tin-tuc.rss",
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(r.status, 200, "the old ETag no longer matches");
}

#[test]
fn paths_never_leave_the_site() {
    let site = site();
    let daemon = Daemon::start(&site);
    assert_eq!(daemon.get("/articles/cu.html").status, 200);
    for path in [
        "/articles/../bantin.toml",
        "/articles/..%2f..%2fbantin.toml",
        "/articles/%2e%2e/%2e%2e/bantin.toml",
        "/articles/%2e%2e%2f%2e%2e%2fbantin.html",
        "/articles/%252e%252e/%252e%252e/bantin.html",
        "/articles/cu.html%00.html",
        "/articles/%00.html",
        "/articles//etc/passwd.html",
        "/feeds/..%2f..%2fbantin.toml",
        "/feeds/%2e%2e",
        "/../bantin.toml",
        "/public/index.html",
    ] {
        let r = daemon.get(path);
        assert!(
            r.status == 404 || r.status == 400,
            "{path}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("base_url"), "{path} leaked the config");
    }
}

/// The page that lists the digests sent answers from the first start, saying there are none
/// yet (its address is in the README and the subscribe form's wording).
#[test]
fn the_list_of_bulletins_answers_before_the_first_digest() {
    let site = site();
    let daemon = Daemon::start(&site);
    for path in ["/bulletins/", "/bulletins"] {
        let r = daemon.get_until(path, "the list of bulletins", |r| r.status == 200);
        assert!(
            r.text().contains("Chưa có bản tin nào được gửi."),
            "{}",
            r.text()
        );
    }
}

#[test]
fn health_metrics_and_limits() {
    let site = site();
    let daemon = Daemon::start(&site);
    assert_eq!(daemon.get("/healthz").status, 200);
    daemon.get("/feeds/tin-tuc.rss");
    daemon.get("/nope");
    // Never on the public port: counters there would tell who is subscribed.
    assert_eq!(daemon.get("/metrics").status, 404);
    // Guessed addresses lead to the home page's lists, relatively (a proxy's path stays).
    // The site's icon, and where clients that guess its address are sent.
    let icon = daemon.get("/favicon.svg");
    assert_eq!(icon.status, 200);
    assert_eq!(icon.header("content-type"), Some("image/svg+xml"));
    assert!(icon.text().starts_with("<svg"), "{}", icon.text());
    assert!(
        daemon
            .get("/")
            .text()
            .contains("<link rel=\"icon\" href=\"http://bantin.test/favicon.svg\"")
    );
    for (path, to) in [
        ("/favicon.ico", "favicon.svg"),
        ("/rss", "./#nguon-tin"),
        ("/feed", "./#nguon-tin"),
        ("/feeds/", "../#nguon-tin"),
        ("/categories", "./#chuyen-muc"),
    ] {
        let r = daemon.get(path);
        assert_eq!((r.status, r.header("location")), (301, Some(to)), "{path}");
    }
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("bantin_http_requests_total{route=\"feed\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bantin_http_requests_total{route=\"other\",status=\"404\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bantin_rebuild_seconds_count"),
        "{metrics}"
    );
    assert!(metrics.contains("bantin_articles 1"), "{metrics}");
    assert!(metrics.contains("bantin_mail_sent_total 0"), "{metrics}");
    assert!(metrics.contains("bantin_mail_queued 0"), "{metrics}");
    // The search index: one article, its lists all in memory (a file gets them only once
    // megabytes have gathered).
    daemon.wait_log("search index built");
    let metrics = daemon.metrics();
    assert!(metrics.contains("bantin_search_documents 1\n"), "{metrics}");
    assert!(
        metrics.contains("bantin_search_index_file_bytes 0\n"),
        "{metrics}"
    );
    let big = vec![b'x'; 64 * 1024];
    let r = request(
        daemon.addr,
        "POST",
        "/subscribe",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &big,
    );
    assert_eq!(r.status, 413, "body over http.max_body_bytes");
    assert_eq!(r.text(), "nội dung gửi lên quá lớn (payload too large)\n");
    assert_eq!(request(daemon.addr, "POST", "/", &[], b"").status, 405);
}

#[test]
fn idle_connections_do_not_block_readers() {
    let site = site_with("header_timeout_secs = 2\n");
    let daemon = Daemon::start(&site);
    // From another address than the reader's: one address may hold only its share.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = connect_from("127.0.0.2".parse().unwrap(), daemon.addr).unwrap();
            let _ = s.write_all(b"GET /feeds/tin-tuc.rss HTTP/1.1\r\nHost: x\r\n");
            s
        })
        .collect();
    let r = daemon.get("/feeds/tin-tuc.rss");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Bài cũ"));
    // The server gives up on a client that never finishes its headers.
    let mut slow = idle.into_iter().next().unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 512];
    // A read timeout here means the server kept the connection: that must fail the test.
    let n = slow
        .read(&mut buf)
        .expect("the server closes a connection that never finishes its headers");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[test]
fn sighup_reloads_and_a_broken_reload_keeps_serving() {
    let site = site();
    let daemon = Daemon::start(&site);
    site.write(
        "feeds/moi.toml",
        &format!("title = \"Bản tin mới\"\ncategories = [\"{CAT_A}\"]\n"),
    );
    daemon.signal("HUP");
    daemon.get_until("/feeds/moi.rss", "the new feed after SIGHUP", |r| {
        r.status == 200
    });
    assert!(
        daemon.get("/").text().contains("Bản tin mới"),
        "index lists the new feed"
    );

    site.write(
        "bantin.toml",
        "[site]\nbase_url = \"http://bantin.test\"\n[http\nlisten = \n",
    );
    daemon.signal("HUP");
    daemon.wait_log("reload failed, keeping the running configuration");
    assert_eq!(daemon.get("/feeds/moi.rss").status, 200);
    site.write("feeds/moi.toml", "title = \n");
    site.set_config("[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n");
    daemon.signal("HUP");
    common::wait_for("a second failed reload", PATIENCE, || {
        daemon.log().matches("reload failed").count() == 2
    });
    assert_eq!(daemon.get("/feeds/tin-tuc.rss").status, 200);
    // What a reload does not apply is said, not dropped in silence.
    site.write(
        "feeds/moi.toml",
        &format!("title = \"Bản tin mới\"\ncategories = [\"{CAT_A}\"]\n"),
    );
    site.set_config(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [mail]\nconcurrency = 3\n",
    );
    daemon.signal("HUP");
    daemon.wait_log("changes to [mail] take effect at the next restart");
}

#[test]
fn systemd_notifications() {
    use std::os::unix::net::UnixDatagram;
    let site = site();
    let socket_path = site.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut daemon = Daemon::start_with(
        &site,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let mut receive = |seen: &mut String, until: &str| {
        while !seen.contains(until) {
            let n = socket.recv(&mut buf).expect("a notification");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    receive(&mut seen, "READY=1");
    assert!(daemon.get("/healthz").status == 200, "ready means serving");
    assert_eq!(
        daemon.get("/feeds/tin-tuc.rss").status,
        200,
        "the feeds first"
    );
    // Then the whole site, and what it holds.
    let ready = seen.find("READY=1").unwrap();
    let mut tail = seen[ready..].to_owned();
    receive(&mut tail, "STATUS=1 articles");
    // The watchdog is fed at half WATCHDOG_USEC while the daemon is healthy.
    receive(&mut seen, "WATCHDOG=1");
    seen.clear();
    receive(&mut seen, "WATCHDOG=1");
    daemon.signal("TERM");
    receive(&mut seen, "STOPPING=1");
    assert_eq!(daemon.wait_exit(PATIENCE).code(), Some(0));
}

#[test]
fn sigterm_stops_cleanly() {
    let site = site();
    let mut daemon = Daemon::start(&site);
    // A client in the middle of its request holds the drain open until the deadline.
    let mut open = TcpStream::connect(daemon.addr).unwrap();
    open.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(daemon.log().contains("stopped"));
}

#[test]
fn a_broken_config_stops_before_anything_runs() {
    let site = site();
    site.write("bantin.toml", "[site]\nbase_url = \"ftp://x\"\n");
    let out = site.bantin(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("site.base_url 'ftp://x'"),
        "{}",
        common::stderr(&out)
    );
    site.write("feeds/hong.toml", "title = 5\n");
    site.set_config("[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n");
    let out = site.bantin(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("feeds/hong.toml:1:"),
        "{}",
        common::stderr(&out)
    );
    // A template that parses and fails on every page it renders: refused too, said once,
    // before a page is written.
    std::fs::remove_file(site.path("feeds/hong.toml")).unwrap();
    let path = site.path("templates/web/article.html");
    let good = std::fs::read_to_string(&path).unwrap();
    site.write(
        "templates/web/article.html",
        &good.replacen("{{ article.title }}", "{{ article.title|nosuchfilter }}", 1),
    );
    let mut child = site
        .command(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("bantin run started with a template that fails to render");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("cannot start"), "{err}");
    assert_eq!(
        err.matches("template 'web/article.html': line 2: unknown filter")
            .count(),
        1,
        "{err}"
    );
    assert!(!site.public().join("articles").exists(), "no page written");
}

#[test]
fn a_flood_of_new_files_is_all_published() {
    let _alone = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let site = site();
    let daemon = Daemon::start(&site);
    for i in 0..500 {
        site.publish(
            &format!("lu/{i:03}.txt"),
            &article(CAT_B, &format!("Bài số {i}"), "01/11/2026 | 09:00"),
        );
    }
    common::wait_for("every article", PATIENCE, || {
        daemon.metrics().contains("bantin_articles 501\n")
    });
    let feed = daemon.get("/feeds/tat-ca.json").text();
    let json: serde_json::Value = serde_json::from_str(&feed).unwrap();
    assert_eq!(
        json["items"].as_array().unwrap().len(),
        50,
        "the feed's limit"
    );
    assert_eq!(daemon.get("/articles/lu/499.html").status, 200);
}

#[test]
fn sighup_reloads_the_templates_of_every_page() {
    let site = site();
    let daemon = Daemon::start(&site);
    let form = |d: &Daemon| {
        request(
            d.addr,
            "POST",
            "/subscribe",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"email=a%40x.vn&schedule=daily",
        )
        .text()
    };
    assert!(!form(&daemon).contains("MẪU MỚI"));
    for name in ["base.html", "message.html"] {
        let path = site.path(&format!("templates/web/{name}"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("{% block content %}", "MẪU MỚI {% block content %}")
                .replace("<h1>{{ heading }}</h1>", "<h1>MẪU MỚI {{ heading }}</h1>"),
        )
        .unwrap();
    }
    daemon.signal("HUP");
    daemon.wait_log("reloaded");
    assert!(daemon.get("/").text().contains("MẪU MỚI"), "index");
    assert!(form(&daemon).contains("MẪU MỚI"), "subscription pages");
}

#[test]
fn links_that_leave_the_store_are_never_followed() {
    let site = site();
    let outside = site.path("ngoai-kho");
    std::fs::create_dir_all(&outside).unwrap();
    common::write_bytes(
        &outside.join("cu.txt"),
        article(CAT_A, "Tệp bên ngoài cũ", "01/11/2026 | 09:00").as_bytes(),
    );
    std::os::unix::fs::symlink(&outside, site.store().join("ngoai")).unwrap();
    let daemon = Daemon::start(&site);
    // A file written out there after the start, through the link's folder.
    common::write_bytes(
        &outside.join("moi.txt"),
        article(CAT_A, "Tệp bên ngoài mới", "02/11/2026 | 09:00").as_bytes(),
    );
    site.publish(
        "that.txt",
        &article(CAT_A, "Bài thật", "03/11/2026 | 09:00"),
    );
    let feed = daemon.get_until("/feeds/tat-ca.atom", "the real article", |r| {
        r.text().contains("Bài thật")
    });
    assert!(!feed.text().contains("bên ngoài"), "{}", feed.text());
    assert_eq!(daemon.get("/articles/ngoai/moi.html").status, 404);
    assert_eq!(daemon.get("/articles/ngoai/cu.html").status, 404);
    let check = site.bantin(&["check"]);
    assert!(
        common::stderr(&check).contains("liên kết tới")
            && common::stderr(&check).contains("nằm ngoài thư mục bài viết"),
        "{}",
        common::stderr(&check)
    );
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: std::net::IpAddr, to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = runtime.block_on(socket.connect(to))?.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A client at `from` that sends a POST body one byte every 100 ms, for at most 30 s (longer
/// than a test waits for an answer); returns what the server answered, if anything.
fn slow_body(
    daemon: &Daemon,
    from: std::net::IpAddr,
    connected: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::thread::JoinHandle<String> {
    let addr = daemon.addr;
    std::thread::spawn(move || {
        let stream = connect_from(from, addr);
        connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let Ok(mut stream) = stream else {
            return String::new();
        };
        let _ = stream.write_all(
            b"POST /subscribe HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
        );
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        while started.elapsed() < Duration::from_secs(30) {
            if stream.write_all(b"e").is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
}

#[test]
fn slow_bodies_from_one_address_do_not_lock_others_out() {
    let site = site_with(
        "max_connections = 20\nmax_connections_per_client = 5\nrequest_timeout_secs = 2\n",
    );
    let daemon = Daemon::start(&site);
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slow: Vec<_> = (0..30)
        .map(|_| slow_body(&daemon, "127.0.0.2".parse().unwrap(), connected.clone()))
        .collect();
    common::wait_for("the slow clients connected", PATIENCE, || {
        connected.load(std::sync::atomic::Ordering::SeqCst) == 30
    });
    // More slow clients than slots: without a share per address, nobody else gets in.
    for _ in 0..5 {
        assert_eq!(daemon.get("/healthz").status, 200);
    }
    let answers: Vec<String> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    // The address's share was admitted and cut off (408) instead of holding its slots for
    // ever; the rest were refused at once (without a share they would all have waited for
    // a slot and been cut off in turn).
    let cut = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 408"))
        .count();
    let refused = answers.iter().filter(|a| a.is_empty()).count();
    assert_eq!((cut, refused), (5, 25), "{answers:?}");
}

#[test]
fn the_state_is_private_and_the_site_public_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let site = site();
    let daemon = Daemon::start(&site);
    let mode = |rel: &str| {
        std::fs::metadata(site.path(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("var/state"), 0o700);
    assert_eq!(mode("var/state/token.key"), 0o600);
    assert_eq!(mode("var/state/state.id"), 0o600);
    assert_eq!(mode("var/state/admin.sock"), 0o600);
    assert_eq!(mode("var/state/db/conf"), 0o600);
    assert_eq!(mode("public"), 0o755);
    assert_eq!(mode("public/index.html"), 0o644);
    assert_eq!(mode("public/feeds/tat-ca.atom"), 0o644);
    assert_eq!(mode("public/articles/cu.html"), 0o644);
    // An admin request that is not one gets a clear answer, and the daemon goes on.
    let mut sock =
        std::os::unix::net::UnixStream::connect(site.path("var/state/admin.sock")).unwrap();
    sock.write_all(b"{not json}\n").unwrap();
    let mut answer = String::new();
    sock.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("bad request"), "{answer}");
    assert_eq!(daemon.get("/healthz").status, 200);
}

#[test]
fn a_file_dated_year_10000_breaks_nothing_and_fixing_it_helps() {
    let site = site();
    let daemon = Daemon::start(&site);
    site.publish(
        "tuong-lai.txt",
        &article(CAT_A, "Tệp lạ", "01/11/2026 | 09:00"),
    );
    daemon.get_until("/feeds/tin-tuc.rss", "the article", |r| {
        r.text().contains("Tệp lạ")
    });
    // The file's modification time jumps to the year 10000.
    let path = site.store().join("tuong-lai.txt");
    common::set_mtime(&path, 253_402_300_800);
    std::fs::write(&path, article(CAT_A, "Tệp lạ, sửa", "01/11/2026 | 09:00")).unwrap();
    common::set_mtime(&path, 253_402_300_800);
    let feed = daemon.get_until("/feeds/tin-tuc.rss", "the edit", |r| {
        r.text().contains("Tệp lạ, sửa")
    });
    assert_eq!(feed.status, 200);
    let year = |r: &common::http::Response| {
        let lm = r.header("last-modified").unwrap().to_string();
        lm.split_whitespace()
            .nth(3)
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    assert!(
        year(&feed) <= 2100,
        "clamped: {:?}",
        feed.header("last-modified")
    );
    // Fixed: Last-Modified comes down again, without a restart.
    std::fs::write(
        &path,
        article(CAT_A, "Tệp lạ, đã sửa", "01/11/2026 | 09:00"),
    )
    .unwrap();
    common::set_mtime(&path, 1_764_000_000);
    let feed = daemon.get_until("/feeds/tin-tuc.rss", "the fix", |r| {
        r.text().contains("Tệp lạ, đã sửa")
    });
    assert_eq!(
        year(&feed),
        2026,
        "from the items: {:?}",
        feed.header("last-modified")
    );
    // An article dated in year 1 is an error on its line.
    site.put("co.txt", &article(CAT_A, "Cổ", "01/01/0001"));
    assert!(
        stdout(&site.bantin(&["check"]))
            .contains("co.txt:4: năm 1 của ngày \"01/01/0001\" nằm ngoài khoảng cho phép")
    );
}

#[test]
fn a_reload_renders_the_templates_before_taking_them() {
    let site = site();
    let daemon = Daemon::start(&site);
    let path = site.path("templates/web/article.html");
    let good = std::fs::read_to_string(&path).unwrap();
    // Parses, and fails on every page it renders.
    std::fs::write(
        &path,
        good.replacen("{% block content %}", "{% block content %}{{ 1/0 }}", 1),
    )
    .unwrap();
    assert!(
        std::fs::read_to_string(&path).unwrap().contains("1/0"),
        "the template has a block"
    );
    daemon.signal("HUP");
    daemon.wait_log("reload failed, keeping the running configuration");
    // New pages still come out, with the templates that work.
    site.publish(
        "sau.txt",
        &article(CAT_A, "Bài sau tải lại", "02/11/2026 | 09:00"),
    );
    let page = daemon.get_until("/articles/sau.html", "the new page", |r| r.status == 200);
    assert!(page.text().contains("Bài sau tải lại"));
}

/// A stand-in for systemd's notify socket: counts the daemon's watchdog pings.
struct Watchdog {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
    pings: usize,
    last: std::time::Instant,
}

impl Watchdog {
    fn new(site: &Site) -> Watchdog {
        let path = site.path("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Watchdog {
            socket,
            path,
            pings: 0,
            last: std::time::Instant::now(),
        }
    }

    /// Starts the daemon with a watchdog of 400 ms (a ping every 200 ms).
    fn start(&self, site: &Site) -> Daemon {
        Daemon::start_with(
            site,
            &[
                ("NOTIFY_SOCKET", self.path.to_str().unwrap()),
                ("WATCHDOG_USEC", "400000"),
            ],
        )
    }

    /// Takes what arrived.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                self.last = std::time::Instant::now();
                self.pings += 1;
            }
        }
    }

    fn wait_pings(&mut self, what: &str, more_than: usize) {
        common::wait_for(what, PATIENCE, || {
            self.drain();
            self.pings > more_than
        });
    }
}

#[test]
fn the_watchdog_starves_while_http_does_not_answer() {
    // Every slot held by a trusted proxy's idle connections: nothing else gets an answer.
    let site = site_with(
        "max_connections = 8\ntrusted_proxies = [\"127.0.0.2/32\"]\nheader_timeout_secs = 120\n",
    );
    let mut watchdog = Watchdog::new(&site);
    let daemon = watchdog.start(&site);
    watchdog.wait_pings("watchdog pings", 1);
    let held: Vec<TcpStream> = (0..8)
        .map(|_| connect_from("127.0.0.2".parse().unwrap(), daemon.addr).unwrap())
        .collect();
    // The pings stop (the daemon allows a part 3 s without progress).
    common::wait_for("the pings to stop", PATIENCE, || {
        watchdog.drain();
        watchdog.last.elapsed() > Duration::from_secs(4)
    });
    daemon.wait_log("withholding the watchdog ping: the HTTP server does not answer");
    // Answers again: fed again.
    drop(held);
    let before = watchdog.pings;
    watchdog.wait_pings("the pings again", before);
    daemon.wait_log("feeding the watchdog again");
}

#[test]
fn a_local_proxy_using_its_whole_share_does_not_starve_the_watchdog() {
    // An untrusted proxy on 127.0.0.1 (the probe's own address) holds its whole share.
    let site = site_with("max_connections_per_client = 4\nheader_timeout_secs = 120\n");
    let mut watchdog = Watchdog::new(&site);
    let daemon = watchdog.start(&site);
    watchdog.wait_pings("watchdog pings", 1);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| connect_from("127.0.0.1".parse().unwrap(), daemon.addr).unwrap())
        .collect();
    // The share is full: another client from there is refused.
    let mut extra = connect_from("127.0.0.1".parse().unwrap(), daemon.addr).unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    extra.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // Still fed, well past the 3 s a part may go without progress.
    let since = std::time::Instant::now();
    common::wait_for("a ping 4 s after the share filled", PATIENCE, || {
        watchdog.drain();
        watchdog.last.duration_since(since) > Duration::from_secs(4)
    });
    assert!(!daemon.log().contains("withholding"), "{}", daemon.log());
    drop(held);
}

/// A restart after a clean stop serves what the last run left at once (a feed reader keeps
/// its copy: same validators), then what changed while the daemon was down; a restart
/// with other templates waits for the pages made with them.
#[test]
fn a_restart_serves_the_last_output_at_once_then_what_changed() {
    let site = site();
    let mut daemon = Daemon::start(&site);
    let before = daemon.get("/feeds/tin-tuc.rss");
    assert!(
        !daemon.log().contains("output of the last run"),
        "a first start builds first"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(PATIENCE).code(), Some(0));

    // Published while the daemon was down.
    site.put(
        "2026/trong-luc-dung.txt",
        &article(CAT_A, "Tin đăng lúc dừng", "01/11/2026 | 09:00"),
    );
    let mut daemon = Daemon::start(&site);
    daemon.wait_log("published the store");
    assert!(
        daemon.log().contains("serving the output of the last run"),
        "{}",
        daemon.log()
    );
    let after = daemon.get_until("/feeds/tin-tuc.rss", "the new article", |r| {
        r.text().contains("Tin đăng lúc dừng")
    });
    assert_ne!(after.header("etag"), before.header("etag"));
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(PATIENCE).code(), Some(0));

    // Nothing changed: the same feed, the same validator, so a reader's copy stays good.
    let mut daemon = Daemon::start(&site);
    let r = request(
        daemon.addr,
        "GET",
        "/feeds/tin-tuc.rss",
        &[("If-None-Match", after.header("etag").unwrap())],
        b"",
    );
    assert_eq!(r.status, 304);
    assert!(daemon.log().contains("output of the last run"));
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(PATIENCE).code(), Some(0));

    // Other templates: nothing from the last run is served before the pages are made again.
    let base = site.path("templates/web/base.html");
    let text = std::fs::read_to_string(&base).unwrap();
    std::fs::write(&base, text.replace("</body>", "<!-- mẫu mới --></body>")).unwrap();
    let daemon = Daemon::start(&site);
    assert!(
        !daemon.log().contains("output of the last run"),
        "{}",
        daemon.log()
    );
    assert!(daemon.get("/").text().contains("<!-- mẫu mới -->"));
}

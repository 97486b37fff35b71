//! The citizens' site through the daemon: navigation written only where a change shows,
//! search that ignores diacritics and follows the store, the WebSub hub told of changes.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::daemon::{Daemon, PATIENCE};
use common::{CAT_A, CAT_B, Site, article, wait_for};

fn site_with(extra: &str) -> Site {
    Site::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n{extra}"
    ))
}

/// Every file under `dir` with its modification time in nanoseconds.
fn mtimes(dir: &Path) -> BTreeMap<String, u128> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let t = e.metadata().unwrap().modified().unwrap();
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(
                    rel,
                    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos(),
                );
            }
        }
    }
    out
}

#[test]
fn publishing_one_article_rewrites_only_the_pages_it_appears_on() {
    let site = site_with("");
    // 45 articles in category A (three pages: 20, 20, 5), 30 in B, over two months.
    for i in 0..45 {
        let day = 1 + i % 28;
        let month = if i < 28 { 1 } else { 2 };
        site.put(
            &format!("a/{i:02}.txt"),
            &article(
                CAT_A,
                &format!("Tin A {i}"),
                &format!("{day:02}/{month:02}/2024 | 08:{i:02}"),
            ),
        );
    }
    for i in 0..30 {
        site.put(
            &format!("b/{i:02}.txt"),
            &article(
                CAT_B,
                &format!("Thông báo B {i}"),
                &format!("{:02}/01/2024 | 09:{i:02}", 1 + i % 28),
            ),
        );
    }
    let daemon = Daemon::start(&site);
    let home = daemon.get("/");
    assert!(
        home.text()
            .contains("/categories/tin-tuc-su-kien-tieu-bieu.html"),
        "{}",
        home.text()
    );
    // The index shows the 30 newest of 75 (45 to 74, counted from the oldest); its link to
    // older news goes to the page of the 31st newest, page 3 (40 to 59), not to the newest
    // page (60 to 74), which the index already shows whole.
    assert!(
        home.text()
            .contains("<a href=\"http://bantin.test/pages/3.html\">Xem thêm các tin cũ hơn</a>"),
        "{}",
        home.text()
    );
    for path in [
        "/categories/tin-tuc-su-kien-tieu-bieu.html",
        "/categories/tin-tuc-su-kien-tieu-bieu/1.html",
        "/categories/tin-tuc-su-kien-tieu-bieu/3.html",
        "/categories/thong-bao.html",
        "/pages/1.html",
        "/pages/4.html",
        "/archive/",
        "/archive/2024/01.html",
        "/archive/2024/02.html",
        "/feeds/tat-ca.html",
        "/feeds.opml",
        "/feeds/tat-ca/archive/1.atom",
        "/feeds/tin-tuc/archive/1.rss",
    ] {
        assert_eq!(daemon.get(path).status, 200, "{path}");
    }
    let missing = daemon.get("/categories/khong-co.html");
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains("Không tìm thấy trang"),
        "{}",
        missing.text()
    );
    assert!(missing.text().contains("href=\"http://bantin.test/\""));
    let article_page = daemon.get("/articles/a/10.html").text();
    assert!(
        article_page.contains("Tin cũ hơn: Tin A 9"),
        "{article_page}"
    );
    assert!(
        article_page.contains("Tin mới hơn: Tin A 11"),
        "{article_page}"
    );
    assert!(
        article_page
            .contains("href=\"http://bantin.test/categories/tin-tuc-su-kien-tieu-bieu.html\"")
    );

    let before = mtimes(&site.public());
    // The newest of category A, in February.
    site.publish(
        "a/moi.txt",
        &article(CAT_A, "Tin A mới nhất", "27/02/2024 | 10:00"),
    );
    daemon.get_until(
        "/categories/tin-tuc-su-kien-tieu-bieu.html",
        "the new article listed",
        |r| r.text().contains("Tin A mới nhất"),
    );
    let after = mtimes(&site.public());
    let changed: Vec<&str> = after
        .iter()
        .filter(|(path, t)| before.get(*path) != Some(t))
        .map(|(path, _)| path.as_str())
        .collect();
    let expected = [
        "archive/2024/02.html",
        "archive/index.html",
        "articles/a/44.html",
        "articles/a/moi.html",
        "categories/tin-tuc-su-kien-tieu-bieu.html",
        "categories/tin-tuc-su-kien-tieu-bieu/3.html",
        "feeds/tat-ca.atom",
        "feeds/tat-ca.html",
        "feeds/tat-ca.json",
        "feeds/tat-ca.rss",
        "feeds/tat-ca/archive/1.atom",
        "feeds/tat-ca/archive/1.rss",
        "feeds/tin-tuc.atom",
        "feeds/tin-tuc.html",
        "feeds/tin-tuc.json",
        "feeds/tin-tuc.rss",
        "feeds/tin-tuc/archive/1.atom",
        "feeds/tin-tuc/archive/1.rss",
        "index.html",
        "pages/4.html",
    ];
    assert_eq!(changed, expected);
    // The page of the article that was newest links to the new one.
    let page = daemon.get("/articles/a/44.html").text();
    assert!(page.contains("Tin mới hơn: Tin A mới nhất"), "{page}");
}

#[test]
fn search_ignores_diacritics_prefers_what_was_typed_and_follows_the_store() {
    let site = site_with("");
    site.put(
        "ky-hop.txt",
        &article(CAT_A, "Kỳ họp thứ mười HĐND quận", "01/03/2024 | 08:00"),
    );
    site.put(
        "hop-dong.txt",
        &article(CAT_B, "Ký hợp đồng thuê địa điểm", "02/03/2024 | 08:00"),
    );
    site.put(
        "dai-bieu.txt",
        &article(CAT_B, "Đại biểu tiếp công dân", "03/03/2024 | 08:00"),
    );
    let daemon = Daemon::start(&site);
    let search = |q: &str| {
        let q: String = q.replace(' ', "+");
        let mut text = String::new();
        wait_for("the search index", PATIENCE, || {
            text = daemon.get(&format!("/search?q={q}")).text();
            !text.contains("Đang chuẩn bị")
        });
        text
    };
    let order = |text: &str, titles: &[&str]| -> Vec<usize> {
        titles
            .iter()
            .map(|t| text.find(t).unwrap_or(usize::MAX))
            .collect()
    };
    // Without diacritics both articles are found; typed with them, the exact one first.
    let plain = search("ky hop");
    assert!(plain.contains("Tìm thấy 2 bài viết"), "{plain}");
    let exact = search("kỳ họp");
    assert!(exact.contains("Tìm thấy 2 bài viết"), "{exact}");
    let o = order(
        &exact,
        &[
            "<mark>Kỳ</mark> <mark>họp</mark> thứ mười",
            "<mark>Ký</mark> <mark>hợp</mark> đồng",
        ],
    );
    assert!(o[0] < o[1], "{exact}");
    // đ is typed d.
    let dai = search("dai bieu");
    assert!(
        dai.contains("Tìm thấy 1 bài viết") && dai.contains("<mark>Đại</mark> <mark>biểu</mark>"),
        "{dai}"
    );
    assert!(search("ngân sách").contains("Không tìm thấy"));
    // Compressed for a client that takes gzip, as every other page.
    let zipped = common::http::request(
        daemon.addr,
        "GET",
        "/search?q=dai+bieu",
        &[("Accept-Encoding", "gzip")],
        b"",
    );
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(zipped.header("vary"), Some("Accept-Encoding"));
    let mut page = String::new();
    flate2::read::GzDecoder::new(&zipped.body[..])
        .read_to_string(&mut page)
        .unwrap();
    assert_eq!(page, dai);
    // Typed without an input method (Telex), found as what it reads, and the page says so.
    let telex = search("ddaij bieeur");
    assert!(
        telex.contains("Không có bài nào có “ddaij bieeur”; đọc như chữ gõ kiểu Telex hoặc VNI thì là “đại biểu”: tìm thấy 1 bài viết")
            && telex.contains("<mark>Đại</mark> <mark>biểu</mark>"),
        "{telex}"
    );
    // Words past the eighth are not searched, and the page says what was: the ninth word
    // here is in no article, and the articles of the first eight are found all the same.
    let long = search("ky hop thu muoi ky hop thu muoi khongcotu");
    assert!(
        long.contains("Tìm thấy") && !long.contains("Không tìm thấy"),
        "{long}"
    );
    assert!(
        long.contains("Kết quả tìm “ky hop thu muoi ky hop thu muoi”")
            && long.contains("tối đa 8 từ, 200 ký tự"),
        "{long}"
    );
    assert!(!search("ky hop").contains("tối đa 8 từ"));
    // A page past the last shows the last, not a count with no results.
    let far = search("ky hop&page=99999");
    assert!(far.contains("<mark>"), "{far}");
    // A zero-width space pasted into a word (the articles are cleaned of it) does not split it.
    assert!(search("k%E2%80%8By hop").contains("<mark>"));
    // A NUL is not echoed.
    assert!(!search("ky%00hop").contains('\0'));
    // Odd input gets a page, not an error.
    for q in ["", "%ZZ", "%3Cscript%3E", &"a".repeat(500)] {
        let r = daemon.get(&format!("/search?q={q}&page=abc"));
        assert_eq!(r.status, 200, "{q}");
        assert!(!r.text().contains("<script>"));
    }
    // A new article is found at once; an edited one by its new words only.
    site.publish(
        "ngan-sach.txt",
        &article(CAT_A, "Dự toán ngân sách năm 2025", "04/03/2024 | 08:00"),
    );
    daemon.get_until("/search?q=ngan+sach", "the new article found", |r| {
        r.text().contains("Tìm thấy 1 bài viết")
    });
    site.publish(
        "dai-bieu.txt",
        &article(CAT_B, "Lịch tiếp công dân", "03/03/2024 | 08:00"),
    );
    daemon.get_until("/search?q=dai+bieu", "the edit followed", |r| {
        r.text().contains("Không tìm thấy")
    });
    std::fs::remove_file(site.store().join("ky-hop.txt")).unwrap();
    daemon.get_until("/search?q=ky+hop", "the removal followed", |r| {
        r.text().contains("Tìm thấy 1 bài viết")
    });
}

/// What a test hub was sent: (the status it answered, the body).
type Heard = Arc<Mutex<Vec<(u16, String)>>>;

/// A WebSub hub: answers each `hub.mode=publish` with the next status of `answers` (then
/// 204), and keeps the bodies it was sent.
fn start_hub(answers: Vec<u16>) -> (String, Heard) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hub", listener.local_addr().unwrap());
    let seen: Heard = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        let mut answers = answers.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = answers.next().unwrap_or(204);
            record
                .lock()
                .unwrap()
                .push((status, String::from_utf8(body).unwrap()));
            let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (url, seen)
}

#[test]
fn the_websub_hub_is_told_once_per_changed_feed_and_again_after_a_failure() {
    let (hub, seen) = start_hub(vec![503]);
    let site = site_with(&format!(
        "[feeds]\ndir = \"feeds\"\nwebsub_hub = \"{hub}\"\n"
    ));
    site.put(
        "cu.txt",
        &article(CAT_B, "Thông báo cũ", "01/03/2024 | 08:00"),
    );
    let daemon = Daemon::start(&site);
    let atom = daemon.get("/feeds/tat-ca.atom").text();
    assert!(
        atom.contains(&format!("href=\"{hub}\" rel=\"hub\""))
            || atom.contains(&format!("rel=\"hub\" href=\"{hub}\"")),
        "{atom}"
    );
    assert!(atom.contains("rel=\"self\""), "{atom}");
    let rss = daemon.get("/feeds/tat-ca.rss").text();
    assert!(rss.contains("rel=\"hub\""), "{rss}");
    let json: serde_json::Value =
        serde_json::from_str(&daemon.get("/feeds/tat-ca.json").text()).unwrap();
    assert_eq!(
        json["hubs"],
        serde_json::json!([{ "type": "WebSub", "url": hub }]),
        "{json}"
    );
    // Nothing changed yet: the hub hears nothing at start.
    assert!(seen.lock().unwrap().is_empty());

    // An article of category B changes only the feed of all news.
    site.publish(
        "moi.txt",
        &article(CAT_B, "Thông báo mới", "02/03/2024 | 08:00"),
    );
    wait_for("the hub told again after its 503", PATIENCE, || {
        seen.lock().unwrap().len() >= 2
    });
    let got = seen.lock().unwrap().clone();
    let topic =
        |name: &str, ext: &str| format!("hub.url=http%3A%2F%2Fbantin.test%2Ffeeds%2F{name}.{ext}");
    assert_eq!(got[0].0, 503);
    assert_eq!(got[1].0, 204);
    for (_, body) in &got {
        assert!(body.starts_with("hub.mode=publish&"), "{body}");
        assert!(
            ["atom", "rss", "json"]
                .iter()
                .all(|ext| body.contains(&topic("tat-ca", ext))),
            "{body}"
        );
        assert!(!body.contains("tin-tuc"), "{body}");
    }
    // One of category A changes both feeds: one notice each.
    site.publish("a.txt", &article(CAT_A, "Tin mới", "03/03/2024 | 08:00"));
    wait_for("both feeds told", PATIENCE, || {
        seen.lock().unwrap().len() >= 4
    });
    let got = seen.lock().unwrap().clone();
    let last: Vec<&String> = got[2..].iter().map(|(_, b)| b).collect();
    assert_eq!(last.len(), 2, "{got:?}");
    assert!(last.iter().any(|b| b.contains(&topic("tat-ca", "atom"))));
    assert!(last.iter().any(|b| b.contains(&topic("tin-tuc", "atom"))));
    assert!(
        daemon.metrics().contains("bantin_websub_notified_total 3"),
        "{}",
        daemon.metrics()
    );
}

//! `bantin check` and `bantin build` on real stores.

mod common;

use common::{CAT_A, CAT_B, Site, article, set_mtime, stderr, stdout};

/// A store with good articles and one broken file of each kind.
/// A trial on this machine: `check` does not hold it to what a public site needs.
const LOCAL: &str = "[site]\nbase_url = \"http://127.0.0.1:8080\"\n";

fn store_with_broken_files() -> Site {
    let site = Site::with_config(LOCAL);
    site.put("tot.txt", &article(CAT_A, "Bài tốt", "14/02/2020 | 08:16"));
    site.put(
        "2024/12/long-nhau.txt",
        &article(CAT_B, "Bài trong thư mục con", "1/2/2024"),
    );
    site.put("hong/khong-ngay.txt", "TIN TỨC\n\nTiêu đề\n\nĐoạn văn.\n");
    site.put(
        "hong/ngay-sai.txt",
        &article(CAT_A, "Ngày sai", "31/02/2020 | 08:16"),
    );
    site.put(
        "hong/gio-sai.txt",
        &article(CAT_A, "Giờ sai", "14/02/2020 | 25:61"),
    );
    site.put("hong/rong.txt", "");
    site.put(
        "hong/su-kien.txt",
        &article(CAT_B, "Sự kiện", "2/1/2025 | 08:00").replace(
            "Ngày đăng 2/1/2025 | 08:00\n",
            "Ngày đăng 2/1/2025 | 08:00\nĐịa điểm: Hội trường\nThời gian: 16/01/2025 | 11:30 - 08:00\nĐính chính:\n",
        ),
    );
    common::write_bytes(
        &site.store().join("hong/utf8.txt"),
        b"TIN\n\nTi\xeau \xf0\xe5\n",
    );
    common::write_bytes(&site.store().join("hong/nul.txt"), b"TIN\n\nTitle\nNg\0y\n");
    site
}

const BROKEN: [(&str, &str); 7] = [
    (
        "hong/khong-ngay.txt:5:",
        "cần có dòng \"Ngày đăng 14/02/2020 | 08:16\"",
    ),
    ("hong/ngay-sai.txt:4:", "\"31/02/2020\" không có trên lịch"),
    ("hong/gio-sai.txt:4:", "giờ \"25:61\" không hợp lệ"),
    ("hong/rong.txt:1:", "tệp trống"),
    ("hong/utf8.txt:3:", "không phải văn bản mã UTF-8"),
    ("hong/nul.txt:4:", "byte NUL"),
    (
        "hong/su-kien.txt:6:",
        "sự kiện kết thúc (08:00 16/01/2025) trước khi bắt đầu (11:30 16/01/2025)",
    ),
];

#[test]
fn check_lists_every_broken_file_and_exits_1() {
    let site = store_with_broken_files();
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    // The event's second wrong line is told too (each line under the date stands alone).
    assert_eq!(text.lines().count(), BROKEN.len() + 1, "{text}");
    assert!(
        text.contains("hong/su-kien.txt:7: dòng \"Đính chính:\" còn trống"),
        "{text}"
    );
    for (location, message) in BROKEN {
        let line = text
            .lines()
            .find(|l| l.contains(location))
            .unwrap_or_else(|| panic!("{location} not reported in\n{text}"));
        assert!(line.contains(message), "{line}");
    }
}

#[test]
fn build_publishes_the_good_articles_and_exits_0() {
    let site = store_with_broken_files();
    let out = site.bantin(&["build"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (location, _) in BROKEN {
        assert!(stderr(&out).contains(location), "{location} not logged");
    }
    let all = site.read_public("feeds/tat-ca.rss");
    assert_eq!(all.matches("<item>").count(), 2, "{all}");
    assert!(all.contains("Bài tốt") && all.contains("Bài trong thư mục con"));
    let news = site.read_public("feeds/tin-tuc.atom");
    assert_eq!(news.matches("<entry>").count(), 1, "{news}");
    assert!(
        site.public()
            .join("articles/2024/12/long-nhau.html")
            .exists()
    );
    assert!(site.public().join("articles/tot.html").exists());
    assert!(!site.public().join("articles/hong").exists());
    let index = site.read_public("index.html");
    assert!(index.contains("Bài tốt"));
    for needle in [
        "<link rel=\"alternate\" type=\"application/rss+xml\" title=\"Tin tức (RSS)\"",
        "type=\"application/atom+xml\"",
        "type=\"application/feed+json\"",
        "<form class=\"subscribe\" method=\"post\"",
        "name=\"email\"",
        "<meta name=\"viewport\"",
    ] {
        assert!(index.contains(needle), "index lacks {needle}");
    }
    assert!(!index.contains("<script"), "no JavaScript");
    // Readable by any web server, as created (a build sets no mode file by file).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let files = walk(&site.public());
    assert!(files.len() > 10, "{files:?}");
    for file in files {
        assert_eq!(mode(&file), 0o644, "{}", file.display());
        assert_eq!(mode(file.parent().unwrap()), 0o755, "{}", file.display());
    }
}

#[test]
fn check_passes_on_the_sample_store() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bantin"))
        .args(["--config", "bantin.toml", "check"])
        .current_dir(common::repo())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn ignored_files_future_articles_and_limits() {
    let site = Site::with_config(&format!("{LOCAL}[store]\nmax_bytes = 2000\n"));
    site.put("a.txt", &article(CAT_A, "Hiện", "14/02/2020 | 08:16"));
    site.put("a.txt~", &article(CAT_A, "Sao lưu", "14/02/2020"));
    site.put(".a.txt.swp", "binary\0junk");
    site.put(".an.txt", &article(CAT_A, "Ẩn", "14/02/2020"));
    site.put("4913", "");
    site.put("ghi-chu.md", "# not an article");
    site.put(".git/x.txt", &article(CAT_A, "Git", "14/02/2020"));
    site.put(
        "tuong-lai.txt",
        &article(CAT_A, "Tương lai", "01/01/2099 | 00:00"),
    );
    site.put(
        "lon.txt",
        &format!(
            "{}{}",
            article(CAT_A, "Lớn", "14/02/2020"),
            "x".repeat(3000)
        ),
    );
    let outside = site.path("ngoai.txt");
    std::fs::write(&outside, article(CAT_A, "Bên ngoài", "14/02/2020")).unwrap();
    std::os::unix::fs::symlink(&outside, site.store().join("lien-ket.txt")).unwrap();
    std::os::unix::fs::symlink(site.store().join("a.txt"), site.store().join("ban-sao.txt"))
        .unwrap();

    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert_eq!(
        text.lines().count(),
        1,
        "only the large file is a problem:\n{text}"
    );
    assert!(
        text.contains("lon.txt:1: tệp lớn hơn giới hạn 2000 byte"),
        "{text}"
    );

    let out = site.bantin(&["build"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let feed = site.read_public("feeds/tat-ca.json");
    let json: serde_json::Value = serde_json::from_str(&feed).unwrap();
    let mut titles: Vec<&str> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        ["Hiện", "Hiện"],
        "a symlink inside the store is an article"
    );
    assert!(
        !site.public().join("articles/tuong-lai.html").exists(),
        "scheduled page"
    );
    assert!(stderr(&out).contains("1 scheduled"), "{}", stderr(&out));
}

#[test]
fn building_twice_gives_identical_bytes() {
    let site = Site::new();
    for (i, cat) in [CAT_A, CAT_B, CAT_A].iter().enumerate() {
        site.put(
            &format!("bai-{i}.txt"),
            &article(cat, &format!("Bài {i}"), "5/3/2021 | 10:00"),
        );
    }
    site.bantin(&["build", "--out", site.path("one").to_str().unwrap()]);
    site.bantin(&["build", "--out", site.path("two").to_str().unwrap()]);
    let mut files = 0;
    for entry in walk(&site.path("one")) {
        let rel = entry.strip_prefix(site.path("one")).unwrap();
        let a = std::fs::read(&entry).unwrap();
        let b = std::fs::read(site.path("two").join(rel)).unwrap();
        assert!(a == b, "{} differs between builds", rel.display());
        files += 1;
    }
    assert_eq!(
        files,
        2 * 5 + 3 + 1 + 1 + 4 + 1 + 2 + 2 * 2 + 4 + 1,
        "two feeds in five formats (a calendar and a page each), three pages, the index, the \
         calendar, two categories (a front and a page each), one page of all, the archive and \
         its month, one archive document per feed in two formats, 404, OPML, the script, the \
         icon, the manifest"
    );
}

#[test]
fn removed_articles_lose_their_pages() {
    let site = Site::new();
    site.put("mot.txt", &article(CAT_A, "Một", "5/3/2021"));
    site.put("hai/hai.txt", &article(CAT_A, "Hai", "6/3/2021"));
    assert!(site.bantin(&["build"]).status.success());
    assert!(site.public().join("articles/hai/hai.html").exists());
    std::fs::remove_file(site.store().join("hai/hai.txt")).unwrap();
    let out = site.bantin(&["build"]);
    assert!(
        stderr(&out).contains("1 old files removed"),
        "{}",
        stderr(&out)
    );
    assert!(!site.public().join("articles/hai").exists());
    assert!(site.public().join("articles/mot.html").exists());
}

#[test]
fn feeds_snapshot() {
    let site = Site::new();
    site.put(
        "2020/ky-ket.txt",
        &article(
            CAT_A,
            "Ký kết <chương trình> & \"phối hợp\" ]]>",
            "14/02/2020 | 08:16",
        ),
    );
    site.put(
        "thong-bao.txt",
        &article(CAT_B, "Thông báo lịch tiếp dân", "2/1/2025"),
    );
    set_mtime(&site.store().join("2020/ky-ket.txt"), 1_600_000_000);
    set_mtime(&site.store().join("thong-bao.txt"), 1_700_000_000);
    assert!(site.bantin(&["build"]).status.success());
    insta::assert_snapshot!("tat-ca.rss", site.read_public("feeds/tat-ca.rss"));
    insta::assert_snapshot!("tat-ca.atom", site.read_public("feeds/tat-ca.atom"));
    insta::assert_snapshot!("tat-ca.json", site.read_public("feeds/tat-ca.json"));
}

#[test]
fn unknown_feed_keys_and_categories_are_reported() {
    let site = Site::new();
    site.put("a.txt", &article(CAT_A, "A", "14/02/2020"));
    site.write(
        "feeds/sai.toml",
        "title = \"Sai\"\ncategories = [\"KHÔNG CÓ\"]\n",
    );
    site.write("feeds/loi.toml", "title = \"Lỗi\"\nlimt = 5\n");
    site.write(
        "feeds/gan.toml",
        "title = \"Gần\"\ncategories = [\"Tin tuc -  su kien tieu bieu\"]\n",
    );
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("feeds/loi.toml:2: tệp khai báo nguồn tin viết chưa đúng")
            && text.contains("unknown field `limt`"),
        "{text}"
    );
    // Written otherwise than the category it names: an error.
    assert!(
        text.contains(&format!(
            "feeds/gan.toml:2: chuyên mục \"Tin tuc -  su kien tieu bieu\" viết khác tên \
             chuyên mục đang có \"{CAT_A}\""
        )),
        "{text}"
    );
    // No article in it yet: said, not an error (a new council's feeds).
    let warnings = stderr(&out);
    assert!(
        warnings.lines().any(|l| l.starts_with("warning: ")
            && l.contains("feeds/sai.toml:2: chưa có bài viết nào thuộc chuyên mục \"KHÔNG CÓ\"")),
        "{warnings}"
    );
    assert!(!text.contains("KHÔNG CÓ"), "{text}");
}

/// A new installation has feeds but no articles yet: its check passes, and says the feeds'
/// categories wait for the first articles.
#[test]
fn an_empty_store_checks_with_a_warning_about_categories() {
    // A trial setup on this machine (the package's own configuration).
    let site = Site::with_config("[site]\nbase_url = \"http://127.0.0.1:8080\"\n");
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains("warning: ") && err.contains("thư mục bài viết chưa có bài nào"),
        "{err}"
    );
    // The first article, in another category: the feed of this one waits for its first
    // article, which is said, and the check passes.
    site.put("a.txt", &article(CAT_B, "A", "14/02/2020"));
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        common::stderr(&out)
            .contains("feeds/tin-tuc.toml:2: chưa có bài viết nào thuộc chuyên mục"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn a_broken_config_is_a_clear_error() {
    let site = Site::new();
    site.write(
        "bantin.toml",
        "[site]\nbase_url = \"http://x\"\n[http]\nlisten = 8080\n",
    );
    let out = site.bantin(&["build"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bantin.toml:4:"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("http.listen '8080' is not an address and a port"),
        "the key and what it lacks: {}",
        stderr(&out)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bantin"))
        .args(["--config", "/nonexistent/bantin.toml", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read config '/nonexistent/bantin.toml'"),
        "{}",
        stderr(&out)
    );
    let out = site.bantin(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    // A templates folder that is not there: one line that says which key to set, not one
    // per template.
    site.write(
        "bantin.toml",
        "[site]\nbase_url = \"http://127.0.0.1:8080\"\n[templates]\ndir = \"khong-co\"\n",
    );
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(err.matches("khong-co").count(), 1, "{err}");
    assert!(
        err.contains("khong-co: no templates folder here, or none of the templates in it"),
        "{err}"
    );
    assert!(!err.contains("cannot read template"), "{err}");
    // An empty folder: the same one line.
    std::fs::create_dir_all(site.path("khong-co")).unwrap();
    let out = site.bantin(&["check"]);
    let err = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(err.matches("khong-co").count(), 1, "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn a_second_build_skips_what_did_not_change_and_redoes_what_did() {
    let site = Site::new();
    for (i, cat) in [CAT_A, CAT_B, CAT_A].iter().enumerate() {
        site.put(
            &format!("bai-{i}.txt"),
            &article(
                cat,
                &format!("Bài {i}"),
                &format!("{}/3/2021 | 10:00", i + 1),
            ),
        );
    }
    let built = |site: &Site| stderr(&site.bantin(&["build"]));
    assert!(built(&site).contains("and 3 pages (0 unchanged)"));
    assert!(built(&site).contains("and 0 pages (3 unchanged)"));
    // A page deleted by hand is written again, whatever the manifest says.
    std::fs::remove_file(site.public().join("articles/bai-1.html")).unwrap();
    assert!(built(&site).contains("and 1 pages (2 unchanged)"));
    // A new article of category A: it and its neighbour in A (bai-2 links to it).
    site.put("bai-3.txt", &article(CAT_A, "Bài 3", "9/3/2021 | 10:00"));
    let out = built(&site);
    assert!(out.contains("and 2 pages (2 unchanged)"), "{out}");
    assert!(
        site.read_public("articles/bai-2.html")
            .contains("Tin mới hơn: Bài 3")
    );
    // Other templates: every page again.
    let base = site.path("templates/web/article.html");
    let text = std::fs::read_to_string(&base).unwrap();
    std::fs::write(&base, text.replace("Ngày đăng", "Đăng ngày")).unwrap();
    assert!(built(&site).contains("and 4 pages (0 unchanged)"));
    assert!(
        site.read_public("articles/bai-0.html")
            .contains("Đăng ngày")
    );
    // A broken manifest is no manifest.
    std::fs::write(site.public().join(".manifest"), "không phải manifest").unwrap();
    assert!(built(&site).contains("(4 unchanged)"));
}

#[test]
fn check_renders_every_template() {
    let site = Site::with_config(LOCAL);
    site.put("a.txt", &article(CAT_A, "A", "14/02/2020"));
    assert_eq!(site.bantin(&["check"]).status.code(), Some(0));
    let good = std::fs::read_to_string(site.path("templates/email/alert.html")).unwrap();
    site.write("templates/email/alert.html", "<p>{{ article.title }</p>\n");
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("templates/email/alert.html:1:"), "{text}");
    // An error that only rendering finds.
    site.write("templates/email/alert.html", &good);
    site.write("templates/email/digest.txt", "{{ groups|nosuchfilter }}\n");
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("template 'email/digest.txt'"), "{text}");
}

#[test]
fn check_refuses_what_cannot_work_in_public() {
    let site = Site::with_config(
        "[site]\nbase_url = \"http://hdnd.example.vn\"\n\
         [mail]\nfrom = \"HĐND <bantin@localhost>\"\n\
         [[mail.dkim]]\ndomain = \"khac.vn\"\nselector = \"a\"\nkey_file = \"k\"\n\
         [[mail.dkim]]\ndomain = \"hdnd.local\"\nselector = \"b\"\nkey_file = \"k\"\n",
    );
    site.put("a.txt", &article(CAT_A, "A", "14/02/2020"));
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let problems = stdout(&out);
    for needle in [
        "mail.transport is \"file\": mail is only written to",
        "mail.from 'HĐND <bantin@localhost>' is at 'localhost'",
        "mail.dkim.domain 'khac.vn' is not the domain of mail.from",
        "mail.dkim.domain 'hdnd.local' cannot be looked up on the Internet",
    ] {
        assert!(problems.contains(needle), "{needle}:\n{problems}");
    }
    let warnings = common::stderr(&out);
    assert!(
        warnings.contains("warning:") && warnings.contains("is http://"),
        "{warnings}"
    );

    // A password over a plain connection.
    site.set_config(
        "[site]\nbase_url = \"https://hdnd.example.vn\"\n\
         [mail]\nfrom = \"HĐND <bantin@hdnd.example.vn>\"\ntransport = \"smtp\"\n\
         [mail.smtp]\nusername = \"bantin\"\npassword_file = \"pw\"\ntls = \"none\"\n",
    );
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("the password would cross the network in clear"),
        "{}",
        stdout(&out)
    );
    assert!(common::stderr(&out).contains("no [mail.dkim] key"));

    // Over TLS, but the password file is not there: `run` would refuse to start.
    site.set_config(
        "[site]\nbase_url = \"https://hdnd.example.vn\"\n\
         [mail]\nfrom = \"HĐND <bantin@hdnd.example.vn>\"\ntransport = \"smtp\"\n\
         [mail.smtp]\nusername = \"bantin\"\npassword_file = \"pw\"\ntls = \"starttls\"\n",
    );
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("cannot read mail.smtp.password_file"),
        "{}",
        stdout(&out)
    );

    // Fixed: nothing left but the advice to sign.
    site.write("pw", "bi-mat\n");
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn read_only_commands_away_from_the_site_create_nothing() {
    let away = tempfile::tempdir().unwrap();
    for args in [
        &["status"][..],
        &["subscribers", "list"],
        &["subscribers", "export"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bantin"))
            .args(args)
            .current_dir(away.path())
            .env_remove("BANTIN_CONFIG")
            .output()
            .unwrap();
        let err = common::stderr(&out);
        assert!(err.contains("running on built-in defaults"), "{err}");
        assert!(err.contains("no state in 'var/state'"), "{err}");
        assert_eq!(out.status.code(), Some(1), "{err}");
    }
    assert_eq!(
        std::fs::read_dir(away.path()).unwrap().count(),
        0,
        "nothing was created"
    );
}

#[test]
fn names_that_break_ids_are_errors_and_twins_publish_one() {
    let site = Site::with_config(LOCAL);
    site.put(
        "thông-báo.txt",
        &article(CAT_A, "Bản NFC", "14/02/2020 | 08:16"),
    );
    site.put(
        "tho\u{302}ng-ba\u{301}o.txt",
        &article(CAT_A, "Bản NFD", "15/02/2020 | 08:16"),
    );
    site.put("a\\b.txt", &article(CAT_A, "Gạch ngược", "14/02/2020"));
    // 255 bytes: a file may have that name, its page (`.html` for `.txt`) may not.
    let long = format!("{}a.txt", "đ".repeat(125));
    site.put(&long, &article(CAT_A, "Tên dài", "14/02/2020"));
    let out = site.bantin(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let problems = stdout(&out);
    assert!(
        problems.contains("là cùng một tên nhưng gõ dấu theo hai cách (NFC và NFD)")
            && problems.contains("chỉ \"thông-báo.txt\" được đăng"),
        "{problems}"
    );
    assert!(
        problems.contains("a\\b.txt:1: tên tệp có dấu \"\\\""),
        "{problems}"
    );
    assert!(
        problems.contains("quá dài để làm tên trang web (tối đa 250 byte"),
        "{problems}"
    );
    // build publishes the NFC one, and every item of a feed has its page.
    let out = site.bantin(&["build"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let page = site.read_public("articles/thông-báo.html");
    assert!(page.contains("Bản NFC"), "{page}");
    let feed = site.read_public("feeds/tat-ca.json");
    let json: serde_json::Value = serde_json::from_str(&feed).unwrap();
    for item in json["items"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap();
        let rel = url.split("/articles/").nth(1).unwrap();
        let rel = rel.replace("%C3%B4", "ô").replace("%C3%A1", "á");
        assert!(
            site.public().join("articles").join(&rel).exists(),
            "{url} has no page"
        );
    }
}

/// The seed article (no event, no correction) keeps every output byte for byte: its page,
/// and the feeds that list it.
#[test]
fn seed_article_outputs_snapshot() {
    let site = Site::new();
    let seed =
        std::fs::read_to_string(common::repo().join("articles/000_5a7074c8138324ae.txt")).unwrap();
    site.put("000_5a7074c8138324ae.txt", &seed);
    set_mtime(
        &site.store().join("000_5a7074c8138324ae.txt"),
        1_600_000_000,
    );
    assert!(site.bantin(&["build"]).status.success());
    insta::assert_snapshot!(
        "seed.html",
        site.read_public("articles/000_5a7074c8138324ae.html")
    );
    insta::assert_snapshot!("seed.rss", site.read_public("feeds/tat-ca.rss"));
    insta::assert_snapshot!("seed.atom", site.read_public("feeds/tat-ca.atom"));
    insta::assert_snapshot!("seed.json", site.read_public("feeds/tat-ca.json"));
    assert!(
        !site.read_public("index.html").contains("Lịch sự kiện"),
        "no events, no calendar on the index"
    );
}

/// A templates folder copied before the correction and bulletin templates existed still
/// loads: the built-in ones stand in.
#[test]
fn templates_added_later_fall_back_to_the_built_in_ones() {
    let site = Site::new();
    site.put("a.txt", &article(CAT_A, "A", "14/02/2020"));
    for name in [
        "email/correction.txt",
        "email/correction.html",
        "web/bulletin.html",
        "web/bulletins.html",
    ] {
        std::fs::remove_file(site.path("templates").join(name)).unwrap();
    }
    let out = site.bantin(&["build"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // One the first release had is still required.
    std::fs::remove_file(site.path("templates/email/alert.txt")).unwrap();
    let out = site.bantin(&["build"]);
    assert_eq!(out.status.code(), Some(1));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("alert.txt: cannot read template"), "{said}");
}

/// A correction typed as a paragraph mails nobody: `check` says so, and where to put it.
#[test]
fn check_warns_of_a_correction_written_in_the_body() {
    let site = Site::with_config(LOCAL);
    site.put(
        "dc.txt",
        &article(CAT_A, "Bài", "14/02/2020 | 08:16")
            .replace("Đoạn thứ hai.", "Đính chính: sửa tên người chủ trì."),
    );
    // Typed without a Vietnamese input method, it is the same slip.
    site.put(
        "dc2.txt",
        &article(CAT_A, "Bài hai", "15/02/2020 | 08:16")
            .replace("Đoạn thứ hai.", "Dinh chinh: sửa giờ họp."),
    );
    // An event's lines after a blank line: no event, no calendar.
    site.put(
        "sk.txt",
        &article(CAT_A, "Sự kiện", "16/02/2020 | 08:16").replace(
            "Đoạn thứ hai.",
            "Thời gian: 20/02/2020 | 08:00\nĐịa điểm: Hội trường",
        ),
    );
    let out = site.bantin(&["check"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("dc.txt:8: có đoạn văn bắt đầu bằng \"Đính chính:\"")
            && said.contains("dc2.txt:8: có đoạn văn")
            && said.contains("nằm trong phần nội dung"),
        "{said}"
    );
    assert!(
        said.contains("sk.txt:8: có đoạn văn bắt đầu bằng \"Thời gian:\"")
            && said.contains("nên bài không thành sự kiện"),
        "{said}"
    );
    // An event given under the date line, whose text says "Thời gian: …" again further
    // down: an event already, nothing to warn of.
    site.put(
        "sk2.txt",
        &article(CAT_A, "Sự kiện hai", "16/02/2020 | 08:16")
            .replace(
                "Ngày đăng 16/02/2020 | 08:16\n",
                "Ngày đăng 16/02/2020 | 08:16\nThời gian: 20/02/2020 | 08:00\n",
            )
            .replace("Đoạn thứ hai.", "Thời gian: đổi sang buổi chiều."),
    );
    let said = stderr(&site.bantin(&["check"]));
    assert!(!said.contains("sk2.txt"), "{said}");
}

/// Errors and warnings name files the same way, as the configuration names the store (a
/// relative store.dir: relative paths), whichever part of the check found them.
#[test]
fn check_names_every_file_the_way_the_configuration_does() {
    let site = Site::with_config(LOCAL);
    site.put("a.txt", &article(CAT_A, "Bài", "14/02/2020 | 08:16"));
    site.put("sai.txt", &article(CAT_A, "Sai", "31/02/2020 | 08:16"));
    site.put("_cu.txt", &article(CAT_A, "Nháp cũ", "14/02/2020 | 08:16"));
    // The store named with and without a trailing slash.
    for (dir, prefix) in [("articles", "articles/"), ("./articles/", "./articles/")] {
        site.write("bantin.toml", &format!("{LOCAL}[store]\ndir = \"{dir}\"\n"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bantin"))
            .current_dir(site.path(""))
            .args(["--config", "bantin.toml", "check"])
            .output()
            .unwrap();
        let said = format!("{}{}", stdout(&out), stderr(&out));
        let named: Vec<&str> = said
            .lines()
            .filter(|l| l.contains("sai.txt") || l.contains("_cu.txt"))
            .collect();
        assert!(named.len() >= 3, "{said}");
        for line in named {
            let line = line.strip_prefix("warning: ").unwrap_or(line);
            assert!(line.starts_with(prefix), "{line}");
            assert!(!line.contains("//"), "{line}");
        }
    }
}

/// A draft dated long ago would be published without a mail: check says so while the date
/// can be put right; a draft of today is not mentioned.
#[test]
fn check_warns_of_a_draft_too_old_to_be_mailed() {
    let site = Site::with_config(LOCAL);
    site.put("a.txt", &article(CAT_A, "Bài", "14/02/2020 | 08:16"));
    site.put("_cu.txt", &article(CAT_A, "Nháp cũ", "14/02/2020 | 08:16"));
    let today = chrono::Local::now().format("%d/%m/%Y").to_string();
    site.put(
        "_moi.txt",
        &article(CAT_A, "Nháp mới", &format!("{today} | 00:01")),
    );
    let out = site.bantin(&["check"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("_cu.txt: bản nháp đề ngày 14/02/2020 08:16, đã quá 7 ngày")
            && said.contains("không được gửi thư"),
        "{said}"
    );
    assert!(!said.contains("_moi.txt: bản nháp đề ngày"), "{said}");
}

#[test]
fn check_points_out_what_is_most_likely_a_slip() {
    let site = Site::with_config(LOCAL);
    site.put("a.txt", &article(CAT_A, "Bài một", "14/02/2020 | 08:16"));
    site.put("b.txt", &article(CAT_A, "Bài hai", "15/02/2020 | 08:16"));
    // The category typed in lower case, without its accents: a category of its own.
    let typed = "Tin tuc - Su kien  tieu bieu";
    site.put("c.txt", &article(typed, "Bài ba", "16/02/2020 | 08:16"));
    // A copy of a.txt, as Windows names it.
    site.put(
        "a - Copy.txt",
        &article(CAT_A, "Bài một", "14/02/2020 | 08:16"),
    );
    // A wrong year.
    site.put("d.txt", &article(CAT_A, "Bài bốn", "14/02/2099 | 08:16"));
    // Notepad's "Unicode".
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain("Bài".encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    std::fs::write(site.store().join("e.txt"), utf16).unwrap();
    // Saved with the wrong name, or from a word processor.
    site.put("HOA.TXT", &article(CAT_A, "Bài hoa", "17/02/2020 | 08:16"));
    std::fs::write(site.store().join("Thong bao.docx"), b"PK").unwrap();
    let out = site.bantin(&["check"]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{said}");
    for needle in [
        &format!("c.txt:1: chuyên mục \"{typed}\" gần giống chuyên mục \"{CAT_A}\""),
        "a - Copy.txt: cùng tiêu đề và ngày đăng với",
        "d.txt: ngày đăng 14/02/2099 08:16 còn hơn 60 ngày nữa",
        "e.txt:1: tệp được lưu bằng bảng mã UTF-16",
        "HOA.TXT: không được đăng: chỉ tệp có tên kết thúc bằng \".txt\"",
        "Thong bao.docx: không được đăng",
    ] {
        assert!(said.contains(needle), "{needle}\n{said}");
    }
    assert!(!said.contains("a.txt: cùng tiêu đề"), "{said}");
}

#[test]
fn web_addresses_in_an_article_are_links_on_its_page_and_in_the_feeds() {
    let site = Site::new();
    site.put(
        "lien-ket.txt",
        &article(CAT_A, "Có liên kết", "14/02/2020 | 08:16").replace(
            "Đoạn thứ hai.",
            "Xem toàn văn tại https://hanoi.gov.vn/van-ban?id=12&trang=2.",
        ),
    );
    let out = site.bantin(&["build"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let link = "<a href=\"https://hanoi.gov.vn/van-ban?id=12&amp;trang=2\">";
    let page = site.read_public("articles/lien-ket.html");
    assert!(page.contains(link), "{page}");
    assert!(
        page.contains("</a>.</p>"),
        "the full stop is not part of it: {page}"
    );
    // In the feeds the content is HTML carried as text: escaped once more in XML.
    let json = site.read_public("feeds/tat-ca.json");
    assert!(json.contains(&link.replace('"', "\\\"")), "{json}");
    let atom = site.read_public("feeds/tat-ca.atom");
    assert!(
        atom.contains(
            "&lt;a href=&quot;https://hanoi.gov.vn/van-ban?id=12&amp;amp;trang=2&quot;&gt;"
        ),
        "{atom}"
    );
}

/// One article each way: the spelling a feed names is the one meant, whichever sorts first.
#[test]
fn check_takes_the_spelling_a_feed_names_for_the_one_meant() {
    let site = Site::with_config(LOCAL);
    site.put(
        "dung.txt",
        &article(CAT_A, "Bài đúng", "14/02/2020 | 08:16"),
    );
    let typed = "TIN TUC - SU KIEN TIEU BIEU";
    site.put(
        "go-nham.txt",
        &article(typed, "Bài gõ nhầm", "15/02/2020 | 08:16"),
    );
    let said = stderr(&site.bantin(&["check"]));
    assert!(
        said.contains(&format!(
            "go-nham.txt:1: chuyên mục \"{typed}\" gần giống chuyên mục \"{CAT_A}\""
        )),
        "{said}"
    );
    assert!(!said.contains("dung.txt:1"), "{said}");
}

/// A reader's "visit the site" for a feed of some categories lands on that feed's page,
/// which lists them; for the feed of everything, on the home page.
#[test]
fn a_category_feed_links_to_its_own_page() {
    let site = Site::new();
    site.put("tin.txt", &article(CAT_A, "Tin", "14/02/2020 | 08:16"));
    let out = site.bantin(&["build"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rss = site.read_public("feeds/tin-tuc.rss");
    assert!(
        rss.contains("<link>http://bantin.test/feeds/tin-tuc.html</link>"),
        "{rss}"
    );
    let atom = site.read_public("feeds/tin-tuc.atom");
    assert!(
        atom.contains(r#"<link href="http://bantin.test/feeds/tin-tuc.html" rel="alternate""#),
        "{atom}"
    );
    let json = site.read_public("feeds/tin-tuc.json");
    assert!(
        json.contains(r#""home_page_url": "http://bantin.test/feeds/tin-tuc.html""#),
        "{json}"
    );
    assert!(site.public().join("feeds/tin-tuc.html").exists());
    let all = site.read_public("feeds/tat-ca.rss");
    assert!(all.contains("<link>http://bantin.test/</link>"), "{all}");
}

/// The shipped feed definitions name the council by `{site}`: a ward's feeds carry its own
/// name, in the feeds, their pages and the OPML list.
#[test]
fn feed_definitions_name_the_site_they_serve() {
    let site = Site::with_config(
        "[site]\nbase_url = \"http://127.0.0.1:8080\"\ntitle = \"HĐND phường Láng\"\n",
    );
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/feeds/tat-ca.toml");
    site.write(
        "feeds/tat-ca.toml",
        &std::fs::read_to_string(shipped).unwrap(),
    );
    site.put("a.txt", &article(CAT_A, "A", "14/02/2020"));
    let out = site.bantin(&["build"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    for file in [
        "feeds/tat-ca.atom",
        "feeds/tat-ca.rss",
        "feeds/tat-ca.html",
        "feeds.opml",
    ] {
        let text = site.read_public(file);
        assert!(
            text.contains("HĐND phường Láng – Tất cả tin"),
            "{file}: {text}"
        );
        assert!(
            !text.contains("{site}") && !text.contains("Cầu Giấy"),
            "{file}: {text}"
        );
    }
}

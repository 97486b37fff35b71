//! Helpers shared by the integration tests: a site in a temporary folder (store, feeds,
//! templates, config) and the real `bantin` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

pub mod daemon;
pub mod http;
pub mod inproc;
pub mod mail;
pub mod smtp;

/// The repository root (templates and sample articles live there).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A complete site in a temporary folder.
pub struct Site {
    pub dir: tempfile::TempDir,
}

/// A well-formed article of `category`, published at `date` (`DD/MM/YYYY | HH:MM`).
pub fn article(category: &str, title: &str, date: &str) -> String {
    format!(
        "{category}\n\n{title}\nNgày đăng {date}\n\nĐoạn thứ nhất của bài \"{title}\".\n\n\
         Đoạn thứ hai.\n\nHĐND QUẬN CẦU GIẤY\n"
    )
}

pub const CAT_A: &str = "TIN TỨC - SỰ KIỆN TIÊU BIỂU";
pub const CAT_B: &str = "THÔNG BÁO";

impl Site {
    /// An empty store, two feeds (all news; category A) and the repository's templates.
    pub fn new() -> Site {
        Site::with_config("")
    }

    /// Like [`Site::new`], with extra lines appended to `bantin.toml`.
    pub fn with_config(extra: &str) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let site = Site { dir };
        std::fs::create_dir_all(site.store()).unwrap();
        std::fs::create_dir_all(site.path("feeds")).unwrap();
        site.write("feeds/tat-ca.toml", "title = \"Tất cả tin\"\n");
        site.write(
            "feeds/tin-tuc.toml",
            &format!("title = \"Tin tức\"\ncategories = [\"{CAT_A}\"]\n"),
        );
        copy_dir(&repo().join("templates"), &site.path("templates"));
        site.set_config(extra);
        site
    }

    /// Rewrites `bantin.toml` with the base settings plus `extra`.
    pub fn set_config(&self, extra: &str) {
        let base = "[site]\nbase_url = \"http://bantin.test\"\n";
        let text = if extra.contains("[site]") {
            extra.to_string()
        } else {
            format!("{base}{extra}")
        };
        self.write("bantin.toml", &text);
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn store(&self) -> PathBuf {
        self.path("articles")
    }

    pub fn public(&self) -> PathBuf {
        self.path("public")
    }

    pub fn config(&self) -> PathBuf {
        self.path("bantin.toml")
    }

    /// Writes a file under the site folder, creating folders.
    pub fn write(&self, rel: &str, text: &str) {
        write_bytes(&self.path(rel), text.as_bytes());
    }

    /// Writes an article into the store (directly, not by rename).
    pub fn put(&self, rel: &str, text: &str) {
        write_bytes(&self.store().join(rel), text.as_bytes());
    }

    /// Publishes an article the safe way: write a temporary file beside the store, rename in.
    pub fn publish(&self, rel: &str, text: &str) {
        let temp = self.path(&format!("incoming-{}.tmp", rel.replace('/', "_")));
        write_bytes(&temp, text.as_bytes());
        let dest = self.store().join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::rename(&temp, &dest).unwrap();
    }

    /// Runs `bantin --config <site>/bantin.toml ARGS` and waits.
    pub fn bantin(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run bantin")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bantin"));
        cmd.arg("--config").arg(self.config()).args(args);
        cmd.env_remove("NOTIFY_SOCKET").env("BANTIN_LOG", "info");
        cmd
    }

    pub fn read_public(&self, rel: &str) -> String {
        std::fs::read_to_string(self.public().join(rel))
            .unwrap_or_else(|e| panic!("read public/{rel}: {e}"))
    }
}

pub fn write_bytes(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Sets a file's modification time (feeds take `updated` from it).
pub fn set_mtime(path: &Path, unix_secs: u64) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs))
        .unwrap();
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Adds an active subscriber with the command line.
pub fn add_confirmed(site: &Site, email: &str, schedule: &str) {
    let out = site.bantin(&[
        "subscribers",
        "add",
        email,
        "--schedule",
        schedule,
        "--confirmed",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Many confirmed `immediate` subscribers at once, as an admin imports them.
pub fn import_immediate(site: &Site, emails: &[String]) {
    let csv: String = std::iter::once("email,schedule,categories".to_string())
        .chain(emails.iter().map(|e| format!("{e},immediate,")))
        .collect::<Vec<_>>()
        .join("\n");
    site.write("subscribers.csv", &csv);
    let csv_path = site.path("subscribers.csv");
    let out = site.bantin(&[
        "subscribers",
        "import",
        csv_path.to_str().unwrap(),
        "--confirmed",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Waits until `smtp` accepted at least `n` mails; returns the accepted ones.
pub fn wait_mails(smtp: &smtp::SmtpServer, n: usize) -> Vec<smtp::Received> {
    wait_for(&format!("{n} accepted mails"), daemon::PATIENCE, || {
        smtp.accepted().len() >= n
    });
    smtp.accepted()
}

/// `bantin status --json`.
pub fn status(site: &Site) -> serde_json::Value {
    serde_json::from_str(&stdout(&site.bantin(&["status", "--json"]))).unwrap()
}

/// Deliveries in the outbox, in any state.
pub fn deliveries(site: &Site) -> u64 {
    let json = status(site);
    ["pending", "sent", "failed", "cancelled"]
        .iter()
        .map(|k| json["outbox"][k].as_u64().unwrap())
        .sum()
}

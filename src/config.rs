//! The configuration file, `bantin.toml`.
//!
//! Every key has a default, so a file may name only what differs; unknown keys are errors.
//! Relative paths are resolved against the folder that holds the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file looked for when neither `--config` nor `$BANTIN_CONFIG` names one.
pub const DEFAULT_FILE: &str = "bantin.toml";
/// Environment variable naming the configuration file.
pub const ENV_VAR: &str = "BANTIN_CONFIG";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// (The cause is in the message, and not a `source`: shown once, not twice.)
    #[error("cannot read config '{path}': {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration, with paths already made absolute or relative to the working folder.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub site: Site,
    pub store: Store,
    pub feeds: Feeds,
    pub templates: Dir<TemplatesDir>,
    pub output: Dir<OutputDir>,
    pub state: State,
    pub http: Http,
    pub mail: Mail,
    pub digest: Digest,
    /// Where the file was read from (`None`: built-in defaults).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Site {
    /// Shown in page titles, feed titles and mail.
    pub title: String,
    /// Public URL; every link in feeds, pages and mail starts with it.
    pub base_url: String,
    /// BCP 47 language tag of the content.
    pub language: String,
    /// IANA time zone of the `Ngày đăng` lines and of the digest schedule.
    pub timezone: String,
    /// The council's postal address, shown in every mail's footer when set.
    pub address: Option<String>,
    /// Whom a citizen can ask (a phone number, an address), shown in every mail's footer
    /// when set.
    pub contact: Option<String>,
}

impl Default for Site {
    fn default() -> Self {
        Site {
            title: "HĐND quận Cầu Giấy".into(),
            base_url: "http://127.0.0.1:8080".into(),
            language: "vi".into(),
            timezone: "Asia/Ho_Chi_Minh".into(),
            address: None,
            contact: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// The article store, read recursively.
    pub dir: PathBuf,
    /// Larger files are reported as errors: an article is a page of text, not an upload.
    pub max_bytes: u64,
    /// Seconds between full rescans of the store, the safety net for missed file events.
    pub rescan_secs: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            dir: "articles".into(),
            max_bytes: 1024 * 1024,
            rescan_secs: 60,
        }
    }
}

/// Default folder names for the sections that hold only a `dir`.
pub trait DirDefault {
    const DEFAULT: &'static str;
}
#[derive(Debug, Clone)]
pub struct FeedsDir;
impl DirDefault for FeedsDir {
    const DEFAULT: &'static str = "feeds";
}
#[derive(Debug, Clone)]
pub struct TemplatesDir;
impl DirDefault for TemplatesDir {
    const DEFAULT: &'static str = "templates";
}
#[derive(Debug, Clone)]
pub struct OutputDir;
impl DirDefault for OutputDir {
    const DEFAULT: &'static str = "public";
}
#[derive(Debug, Clone)]
pub struct StateDir;
impl DirDefault for StateDir {
    const DEFAULT: &'static str = "var/state";
}

/// `[state]`: where the database lives, and how much of it is cached in memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct State {
    pub dir: PathBuf,
    /// Megabytes of the database sled keeps in memory: the daemon's memory stays about this
    /// much above its base however large the state grows (sled's own default is 1 GiB).
    pub cache_mb: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            dir: StateDir::DEFAULT.into(),
            cache_mb: 32,
        }
    }
}

/// `[feeds]`: where the definitions are, and the WebSub hub told of every change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Feeds {
    pub dir: PathBuf,
    /// A WebSub hub (`https://…`): feeds name it, and the daemon asks it to fetch every feed
    /// that changed. Off when unset.
    pub websub_hub: Option<String>,
}

impl Default for Feeds {
    fn default() -> Self {
        Feeds {
            dir: FeedsDir::DEFAULT.into(),
            websub_hub: None,
        }
    }
}

/// A section with a single `dir` key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dir<K> {
    pub dir: PathBuf,
    #[serde(skip)]
    _kind: std::marker::PhantomData<K>,
}

impl<K: DirDefault> Default for Dir<K> {
    fn default() -> Self {
        Dir {
            dir: K::DEFAULT.into(),
            _kind: std::marker::PhantomData,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address the daemon listens on.
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// Seconds a client may take to send its request headers (slowloris guard).
    pub header_timeout_secs: u64,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections one client address may hold at once (trusted proxies excepted): one
    /// address cannot take every slot.
    pub max_connections_per_client: usize,
    /// Seconds a request may take from its headers to its answer, body included (a body sent
    /// a byte at a time is cut off).
    pub request_timeout_secs: u64,
    /// Seconds a client may leave an answer unread before the connection is closed.
    pub write_timeout_secs: u64,
    /// Largest request body accepted (form posts are small).
    pub max_body_bytes: usize,
    /// Seconds given to open requests to finish when the daemon stops.
    pub drain_secs: u64,
    /// Where `/metrics` is served (never on `listen`); empty: nowhere.
    pub metrics_listen: String,
    /// Addresses or CIDR ranges of reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
}

/// An address range: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub bits: u8,
}

impl Cidr {
    /// `127.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, bits) = match text.trim().split_once('/') {
            Some((a, b)) => (a.parse().ok()?, b.parse::<u8>().ok()?),
            None => {
                let addr: std::net::IpAddr = text.trim().parse().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Cidr { addr, bits })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (std::net::IpAddr::V4(net), std::net::IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (std::net::IpAddr::V6(net), std::net::IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl Http {
    /// The metrics address, unless turned off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let text = self.metrics_listen.trim();
        (!text.is_empty()).then(|| text.parse().ok()).flatten()
    }

    pub fn trusted(&self) -> Vec<Cidr> {
        self.trusted_proxies
            .iter()
            .filter_map(|t| Cidr::parse(t))
            .collect()
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            header_timeout_secs: 10,
            max_connections: 1024,
            max_connections_per_client: 32,
            request_timeout_secs: 10,
            write_timeout_secs: 20,
            max_body_bytes: 16 * 1024,
            drain_secs: 10,
            metrics_listen: "127.0.0.1:9464".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mail {
    /// The From header of every mail.
    pub from: String,
    /// `file`, `smtp` or `sendmail`.
    pub transport: String,
    /// Folder of `.eml` files for the `file` transport.
    pub dir: PathBuf,
    /// The `List-Id` of every bulk mail (RFC 2919); by default built from the From domain.
    pub list_id: Option<String>,
    /// Mails sent at once.
    pub concurrency: usize,
    /// Most mails per second (0: no limit).
    pub rate_per_second: f64,
    /// First retry delay after a temporary failure, in milliseconds; doubles each time.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// A delivery still failing this long after it was queued is given up.
    pub retry_lifetime_secs: u64,
    /// Secret for the links' tokens; by default `token.key` in the state folder, made on
    /// first start.
    pub token_secret_file: Option<PathBuf>,
    /// The sendmail program, for `transport = "sendmail"`.
    pub sendmail_command: PathBuf,
    /// Subscribe form posts accepted per client address per hour.
    pub subscribe_per_hour: u32,
    /// Finished deliveries (sent, failed, cancelled) keep their full record this many days;
    /// then they are compacted: per-article totals (the delivery report) and who was told
    /// (corrections) stay, in a few bits per mail.
    pub keep_days: u64,
    /// An alert goes out only once its article has been unchanged this long: a file saved
    /// in several steps is mailed once, finished; a deletion in that time mails nothing.
    pub alert_delay_secs: u64,
    /// Confirmation links expire after this many days, and subscribers who never confirmed
    /// are deleted then.
    pub confirm_days: u64,
    /// Articles published longer ago than this when bantin first sees them (a backfilled
    /// archive) are published but neither alerted nor put in a digest.
    pub alert_max_age_days: u64,
    pub smtp: Smtp,
    /// The envelope sender, e.g. `bounces@hdnd.example.vn`: every mail then goes out from
    /// `bounces+<token>@…` (VERP), so a bounce names the delivery it is about. Empty: the From
    /// address.
    pub return_path: String,
    pub inbox: Inbox,
    /// DKIM keys; each signs every mail (`[mail.dkim]` for one, `[[mail.dkim]]` for several:
    /// an RSA key for Gmail and Outlook, an Ed25519 one beside it).
    #[serde(deserialize_with = "one_or_many")]
    pub dkim: Vec<Dkim>,
}

/// `http.listen`: an address and a port; a port alone (`"8080"`, `8080`) is named as what it
/// lacks, not as bad "socket address syntax".
fn listen_address<'de, D>(d: D) -> Result<SocketAddr, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Text(String),
        Port(i64),
    }
    let text = match Given::deserialize(d)? {
        Given::Text(text) => text,
        Given::Port(port) => port.to_string(),
    };
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "http.listen '{text}' is not an address and a port: write \"127.0.0.1:8080\" (this \
             machine only, behind a proxy) or \"0.0.0.0:8080\" (every interface)"
        ))
    })
}

/// A table or an array of tables.
fn one_or_many<'de, D>(d: D) -> Result<Vec<Dkim>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Dkim),
        Many(Vec<Dkim>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

impl Default for Mail {
    fn default() -> Self {
        Mail {
            from: "HĐND quận Cầu Giấy <bantin@localhost>".into(),
            transport: "file".into(),
            dir: "var/outbox".into(),
            list_id: None,
            concurrency: 4,
            rate_per_second: 0.0,
            retry_initial_ms: 60_000,
            retry_max_ms: 3_600_000,
            retry_lifetime_secs: 3 * 24 * 3600,
            token_secret_file: None,
            sendmail_command: "/usr/sbin/sendmail".into(),
            subscribe_per_hour: 10,
            keep_days: 7,
            alert_delay_secs: 60,
            confirm_days: 7,
            alert_max_age_days: 7,
            smtp: Smtp::default(),
            return_path: String::new(),
            inbox: Inbox::default(),
            dkim: Vec::new(),
        }
    }
}

/// The Maildir that the MTA delivers bounces, complaints and mailto unsubscribes into.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Inbox {
    /// The Maildir (with `new/` and `cur/`); none: nothing is read.
    pub dir: Option<PathBuf>,
    /// Seconds between two looks at `new/`.
    pub poll_secs: u64,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            dir: None,
            poll_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub tls: String,
    pub username: Option<String>,
    /// File holding the password (never inline); `$BANTIN_SMTP_PASSWORD` also works.
    pub password_file: Option<PathBuf>,
    /// Seconds to connect, be greeted, start TLS and log in (RFC 5321: 5 minutes).
    pub connect_timeout_secs: u64,
    /// Seconds for the reply to MAIL FROM, RCPT TO or DATA (RFC 5321: 5 minutes).
    pub command_timeout_secs: u64,
    /// Seconds to send a message and get the reply to its final dot (RFC 5321 allows 10
    /// minutes: content filters run then; giving up sooner risks a duplicate).
    pub data_timeout_secs: u64,
    /// When set, one limit for every phase above.
    pub timeout_secs: Option<u64>,
    /// The name given in EHLO; by default this machine's host name.
    pub helo_name: Option<String>,
    /// Mails sent over one connection before it is closed and a new one opened.
    pub max_messages_per_connection: usize,
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            host: "127.0.0.1".into(),
            port: 25,
            tls: "none".into(),
            username: None,
            password_file: None,
            connect_timeout_secs: 300,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            timeout_secs: None,
            helo_name: None,
            max_messages_per_connection: 100,
        }
    }
}

/// DKIM signing of outgoing mail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dkim {
    pub domain: String,
    pub selector: String,
    /// PEM (PKCS#1) RSA private key, or a base64 Ed25519 key.
    pub key_file: PathBuf,
    /// `rsa` (default) or `ed25519`.
    #[serde(default = "default_dkim_algorithm")]
    pub algorithm: String,
}

fn default_dkim_algorithm() -> String {
    "rsa".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Digest {
    /// Cron expression (seconds first) of the daily digest, in `site.timezone`.
    pub daily: String,
    /// Cron expression of the weekly digest.
    pub weekly: String,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            daily: "0 0 7 * * *".into(),
            weekly: "0 0 7 * * Mon".into(),
        }
    }
}

impl Config {
    /// Finds the file as the command line documents: `--config`, then `$BANTIN_CONFIG`, then
    /// `./bantin.toml`; with none of them present, the built-in defaults.
    pub fn locate(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(path) = explicit {
            return Config::from_file(path);
        }
        if let Some(path) = std::env::var_os(ENV_VAR).filter(|p| !p.is_empty()) {
            return Config::from_file(Path::new(&path));
        }
        let default = Path::new(DEFAULT_FILE);
        if default.exists() {
            return Config::from_file(default);
        }
        let config = Config::default();
        config.validate(Path::new("(defaults)"))?;
        Ok(config)
    }

    /// Reads and checks one file; relative paths become relative to its folder.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let mut config = Config::parse(&text).map_err(|(line, message)| ConfigError::Parse {
            path: path.to_owned(),
            line,
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.rebase(base);
        config.source = Some(path.to_owned());
        // A value that parses but cannot be used is shown at its line too.
        config.validate(path).map_err(|e| match e {
            ConfigError::Invalid { path, message } => match key_line(&text, &message) {
                Some(line) => ConfigError::Parse {
                    path,
                    line,
                    message,
                },
                None => ConfigError::Invalid { path, message },
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses the TOML text; an error carries its line number.
    pub fn parse(text: &str) -> Result<Config, (usize, String)> {
        toml::from_str(text).map_err(|e| toml_error(text, &e))
    }

    fn rebase(&mut self, base: &Path) {
        for dir in [
            &mut self.store.dir,
            &mut self.feeds.dir,
            &mut self.templates.dir,
            &mut self.output.dir,
            &mut self.state.dir,
            &mut self.mail.dir,
        ]
        .into_iter()
        .chain(self.mail.token_secret_file.as_mut())
        .chain(self.mail.smtp.password_file.as_mut())
        .chain(self.mail.dkim.iter_mut().map(|d| &mut d.key_file))
        .chain(self.mail.inbox.dir.as_mut())
        {
            if dir.is_relative() && !base.as_os_str().is_empty() {
                *dir = base.join(&*dir);
            }
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        self.timezone().map_err(invalid)?;
        let base = self.site.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 9 {
            return Err(invalid(format!(
                "site.base_url '{}' must be an absolute http:// or https:// URL",
                self.site.base_url
            )));
        }
        let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
        let path = crate::feed::base_path(base);
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '/');
        if base.contains(['?', '#', ' ']) || after_scheme.contains("//") || !path.chars().all(plain)
        {
            return Err(invalid(format!(
                "site.base_url '{}' must be a plain URL such as \
                 'https://hdnd.example.vn/phuong-cau-giay/': no query, fragment, space or empty \
                 path segment, and a path of letters without diacritics, digits, '-', '.', '_' \
                 and '~'",
                self.site.base_url
            )));
        }
        if let Some(hub) = &self.feeds.websub_hub
            && !((hub.starts_with("http://") || hub.starts_with("https://"))
                && hub.len() > 8
                && !hub.contains([' ', '#']))
        {
            return Err(invalid(format!(
                "feeds.websub_hub '{hub}' must be an absolute http:// or https:// URL"
            )));
        }
        if !matches!(self.mail.transport.as_str(), "file" | "smtp" | "sendmail") {
            return Err(invalid(format!(
                "mail.transport '{}' is not one of file, smtp, sendmail",
                self.mail.transport
            )));
        }
        if !matches!(self.mail.smtp.tls.as_str(), "none" | "starttls" | "tls") {
            return Err(invalid(format!(
                "mail.smtp.tls '{}' is not one of none, starttls, tls",
                self.mail.smtp.tls
            )));
        }
        if self.mail.concurrency == 0 {
            return Err(invalid("mail.concurrency must be at least 1".into()));
        }
        if self.mail.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid(format!(
                "mail.from '{}' is not a mail address such as 'HĐND <bantin@example.vn>'",
                self.mail.from
            )));
        }
        for (name, expr) in [
            ("daily", &self.digest.daily),
            ("weekly", &self.digest.weekly),
        ] {
            // The parser's own message draws a caret under the text: not for a log line.
            if expr.parse::<cron::Schedule>().is_err() {
                return Err(invalid(format!(
                    "digest.{name} '{expr}' is not a cron expression with seconds first: six \
                     fields, second minute hour day-of-month month day-of-week (e.g. \
                     '0 0 7 * * *' for 07:00 every day, '0 0 7 * * Mon' for Mondays)"
                )));
            }
        }
        if self.store.max_bytes == 0 {
            return Err(invalid("store.max_bytes must be above 0".into()));
        }
        let rp = self.mail.return_path.trim();
        if !rp.is_empty() && (rp.parse::<lettre::Address>().is_err() || rp.contains('+')) {
            return Err(invalid(format!(
                "mail.return_path '{rp}' is not a plain address such as \
                 'bounces@hdnd.example.vn' (no '+': bantin adds '+<token>' itself)"
            )));
        }
        let metrics = self.http.metrics_listen.trim();
        if !metrics.is_empty() && metrics.parse::<SocketAddr>().is_err() {
            return Err(invalid(format!(
                "http.metrics_listen '{metrics}' is not an address such as '127.0.0.1:9464' \
                 (or empty to serve no metrics)"
            )));
        }
        for proxy in &self.http.trusted_proxies {
            if Cidr::parse(proxy).is_none() {
                return Err(invalid(format!(
                    "http.trusted_proxies: '{proxy}' is not an address or a range such as \
                     '127.0.0.1' or '10.0.0.0/8'"
                )));
            }
        }
        Ok(())
    }

    /// The council's time zone.
    pub fn timezone(&self) -> Result<chrono_tz::Tz, String> {
        self.site.timezone.parse().map_err(|_| {
            format!(
                "site.timezone '{}' is not an IANA time zone such as 'Asia/Ho_Chi_Minh'",
                self.site.timezone
            )
        })
    }

    /// `site.base_url` without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.site.base_url.trim_end_matches('/')
    }
}

/// Turns a TOML error into (line, message), the line counted from 1.
pub fn toml_error(text: &str, error: &toml::de::Error) -> (usize, String) {
    let line = error
        .span()
        .map(|span| line_of(text, span.start))
        .unwrap_or(1);
    let message = plain_types(error.message().trim_end_matches('.'));
    (line, message)
}

/// A parser's message with its type names in words (`expected u64` → `expected a whole
/// number`); a table or key written twice says how to mend it.
fn plain_types(message: &str) -> String {
    if message == "duplicate key" {
        return "this table or key is written twice in the file: keep one".into();
    }
    let mut out = message.to_owned();
    for (name, words) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ] {
        if let Some(at) = out.find(name)
            && !out[at + name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            out.replace_range(at..at + name.len(), words);
        }
    }
    out
}

/// Line number (from 1) of a byte offset.
/// The line of `text` that sets the key a validation `message` starts with
/// (`mail.smtp.tls '…' is not …`): under its `[table]` header, `key = …`.
fn key_line(text: &str, message: &str) -> Option<usize> {
    let name = message
        .split([' ', ':'])
        .next()
        .filter(|n| n.contains('.'))?;
    let mut current = "";
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.trim();
            continue;
        }
        // `key = …` under `[table]`, or written dotted from a table above it.
        let Some((lhs, _)) = line.split_once('=') else {
            continue;
        };
        let lhs: String = lhs.split('.').map(str::trim).collect::<Vec<_>>().join(".");
        let full = if current.is_empty() {
            lhs
        } else {
            format!("{current}.{lhs}")
        };
        if full == name {
            return Some(n + 1);
        }
    }
    None
}

pub fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_trusted_proxies() {
        let r = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(r.contains("10.1.200.3".parse().unwrap()));
        assert!(!r.contains("10.2.0.1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(one.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(
            Cidr::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("khong-phai").is_none());
    }

    #[test]
    fn empty_file_gives_every_default() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.site.timezone, "Asia/Ho_Chi_Minh");
        assert_eq!(config.store.dir, PathBuf::from("articles"));
        assert_eq!(config.state.dir, PathBuf::from("var/state"));
        assert_eq!(config.mail.transport, "file");
        assert_eq!(config.digest.weekly, "0 0 7 * * Mon");
    }

    #[test]
    fn unknown_key_names_its_line() {
        let (line, message) = Config::parse("[site]\ntitle = \"x\"\ntitel = \"y\"\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(message.contains("titel"), "{message}");
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_told_in_words() {
        let said = |text: &str| Config::parse(text).unwrap_err();
        let (line, message) = said("[store]\nmax_bytes = \"1MB\"\n");
        assert_eq!(line, 2);
        assert!(
            message.contains("expected a whole number (0 or more)"),
            "{message}"
        );
        let (_, message) = said("[mail]\nconcurrency = -1\n");
        assert!(
            !message.contains("usize") && !message.contains("u64"),
            "{message}"
        );
        let (line, message) = said("[site]\ntitle = \"a\"\n[site]\ntitle = \"b\"\n");
        assert_eq!(line, 3);
        assert!(message.contains("written twice in the file"), "{message}");
        let message = Config::parse("[digest]\ndaily = \"7:00\"\n")
            .unwrap()
            .validate(Path::new("bantin.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("'0 0 7 * * *' for 07:00 every day"),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message:?}");
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bantin.toml");
        std::fs::write(&path, "[store]\ndir = \"a\"\n[output]\ndir = \"/abs\"\n").unwrap();
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.store.dir, dir.path().join("a"));
        assert_eq!(config.output.dir, PathBuf::from("/abs"));
        assert_eq!(config.feeds.dir, dir.path().join("feeds"));
    }

    #[test]
    fn bad_timezone_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bantin.toml");
        std::fs::write(&path, "[site]\ntimezone = \"Mars/Olympus\"\n").unwrap();
        let error = Config::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("Mars/Olympus"), "{error}");
        assert!(
            error.contains("bantin.toml:2: site.timezone"),
            "at its line: {error}"
        );
    }

    #[test]
    fn a_value_that_cannot_be_used_is_shown_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bantin.toml");
        for (text, at) in [
            (
                "[mail]\n# relay\ntransport = \"pigeon\"\n",
                ":3: mail.transport",
            ),
            (
                "[mail]\nfrom = \"a@b.vn\"\n[mail.smtp]\n\ntls = \"maybe\"\n",
                ":5: mail.smtp.tls",
            ),
            ("[digest]\ndaily = \"mỗi sáng\"\n", ":2: digest.daily"),
            (
                "# one file\nmail.transport = \"pigeon\"\n",
                ":2: mail.transport",
            ),
            ("[mail]\nsmtp.tls = \"maybe\"\n", ":2: mail.smtp.tls"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = Config::from_file(&path).unwrap_err().to_string();
            assert!(error.contains(at), "{at}: {error}");
        }
    }

    #[test]
    fn a_base_url_may_carry_a_path_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bantin.toml");
        for good in [
            "https://hdnd.example.vn",
            "https://hdnd.example.vn/phuong-cau-giay/",
            "http://127.0.0.1:8080/a/b",
        ] {
            std::fs::write(&path, format!("[site]\nbase_url = \"{good}\"\n")).unwrap();
            let config = Config::from_file(&path).unwrap();
            assert_eq!(config.base_url(), good.trim_end_matches('/'));
        }
        for bad in [
            "https://hdnd.example.vn/?x=1",
            "https://hdnd.example.vn/#tin",
            "https://hdnd.example.vn//phuong",
            "https://hdnd.example.vn/phuong cau giay",
            "https://hdnd.example.vn/phường-cầu-giấy/",
        ] {
            std::fs::write(&path, format!("[site]\nbase_url = \"{bad}\"\n")).unwrap();
            let error = Config::from_file(&path).unwrap_err().to_string();
            assert!(error.contains("no query, fragment"), "{bad}: {error}");
        }
    }
}

//! The `subscribers` and `status` commands. The same code runs in the CLI (when no daemon
//! holds the database) and in the daemon (behind its admin socket), so the result is the same
//! either way.
//!
//! Socket protocol: one JSON [`Request`] line in, one JSON [`Reply`] line out, then close.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::TimeZone;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::mail::MailError;
use crate::store::{DeliveryState, Store, StoreError};
use crate::subscriber::{Schedule, SubState, Subscriber, canonical_categories};

/// Why a command could not be carried out (not a usage error: those are replies).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("cannot write CSV: {0}")]
    Csv(#[from] csv::Error),
}

/// File name of the admin socket in the state folder.
pub const SOCKET: &str = "admin.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Add {
        email: String,
        schedule: String,
        categories: Vec<String>,
        confirmed: bool,
    },
    Remove {
        email: String,
    },
    List {
        json: bool,
    },
    Export,
    Import {
        csv: String,
        confirmed: bool,
    },
    Status {
        json: bool,
    },
    /// Messages for the inbox: (name, base64 of the raw message).
    Inbox {
        mails: Vec<(String, String)>,
    },
    /// Every record of the state, as JSON Lines.
    StateExport,
    /// The delivery report of one article.
    ArticleReport {
        id: String,
        json: bool,
    },
    /// The delivery report of one bulletin (a day's digest).
    BulletinReport {
        schedule: String,
        date: String,
        json: bool,
    },
}

impl Request {
    /// Whether it only reads (it must then never create a state).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::List { .. }
                | Request::Export
                | Request::Status { .. }
                | Request::StateExport
                | Request::ArticleReport { .. }
                | Request::BulletinReport { .. }
        )
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    fn ok(stdout: String) -> Reply {
        Reply {
            code: 0,
            stdout,
            stderr: String::new(),
        }
    }

    fn fail(stderr: String) -> Reply {
        Reply {
            code: 1,
            stdout: String::new(),
            stderr,
        }
    }
}

/// What the commands work on.
pub struct Context<'a> {
    pub store: &'a Store,
    pub clock: &'a Clock,
    /// The council's time zone (`site.timezone`): the times the reports give are in it.
    pub tz: chrono_tz::Tz,
    /// The daemon's delivery pause, if it paused (only the daemon knows).
    pub pause: Option<crate::mail::Pause>,
    /// Whether the daemon answers this (else nothing is being delivered).
    pub daemon: bool,
    /// The categories subscribers may follow (from the daemon, or read from the store).
    pub categories: &'a dyn Fn() -> Vec<String>,
    /// Checks the tokens of inbox messages (none: the secret cannot be read).
    pub signer: Option<crate::token::Signer>,
    /// `mail.return_path`, whose local part names the bounce addresses.
    pub return_path: &'a str,
    /// Whether the relay takes non-ASCII addresses, as it last said (only the daemon knows).
    pub relay_utf8: Option<bool>,
    /// Counts the store's article files for `status`.
    pub store_dir: &'a Path,
    /// How many of them are broken, when the daemon has read the store (only it knows).
    pub broken: Option<usize>,
    /// Called after confirmation mails were queued (the daemon wakes its worker).
    pub on_queued: &'a (dyn Fn() + Sync),
    /// Alerts the daemon planned in memory and has not recorded yet (a fan-out's window),
    /// of one article or all: pending, though not on record.
    pub planned: &'a (dyn Fn(Option<&str>) -> usize + Sync),
}

fn parse_categories(text: &str, sep: char) -> Vec<String> {
    let mut v: Vec<String> = text
        .split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Why an address is refused, for the command line.
fn address_message(email: &str, problem: crate::mail::AddressProblem) -> String {
    match problem {
        crate::mail::AddressProblem::Invalid => format!("'{email}' is not a mail address"),
        crate::mail::AddressProblem::NeedsUtf8 {
            relay_said_no: true,
        } => format!(
            "'{email}' has non-ASCII letters and the relay does not take them (it does not \
             advertise SMTPUTF8)"
        ),
        crate::mail::AddressProblem::NeedsUtf8 {
            relay_said_no: false,
        } => format!(
            "'{email}' has non-ASCII letters: the daemon takes it only once the relay has said \
             it accepts them (SMTPUTF8); add it while the daemon runs, after it has sent mail"
        ),
    }
}

/// One line about a subscriber following categories that match nothing.
pub fn orphan_line(o: &Orphan) -> String {
    format!(
        "subscriber {} follows {}, which no article or feed uses: they get no mail of it \
         (change it with: bantin subscribers add {} --categories \"…\")",
        o.email,
        o.categories
            .iter()
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(", "),
        o.email
    )
}

/// A CSV cell a spreadsheet will not run as a formula: one starting with `=`, `+`, `-` or
/// `@` gets a leading `'`.
fn safe_cell(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}").into()
    } else {
        text.into()
    }
}

/// Names the categories that match nothing, and the ones that exist.
fn unknown_message(unknown: &[String], known: &[String]) -> String {
    let quoted = |list: &[String]| {
        list.iter()
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if known.is_empty() {
        return format!(
            "unknown category {}: the store has no articles and the feeds name no categories yet",
            quoted(unknown)
        );
    }
    format!(
        "unknown category {}; the known categories are: {} (case and diacritics may differ)",
        quoted(unknown),
        quoted(known)
    )
}

/// Runs one command.
pub fn execute(ctx: &Context<'_>, request: Request) -> Reply {
    match run(ctx, request) {
        Ok(reply) => reply,
        Err(e) => Reply::fail(format!("error: {e}\n")),
    }
}

fn run(ctx: &Context<'_>, request: Request) -> Result<Reply, AdminError> {
    let store = ctx.store;
    match request {
        Request::Add {
            email,
            schedule,
            categories,
            confirmed,
        } => {
            let email = match crate::mail::check_address(&email, ctx.relay_utf8) {
                Ok(email) => email,
                Err(problem) => {
                    return Ok(Reply {
                        code: 2,
                        stdout: String::new(),
                        stderr: format!("error: {}\n", address_message(&email, problem)),
                    });
                }
            };
            let Some(schedule) = Schedule::parse(&schedule) else {
                return Ok(Reply {
                    code: 2,
                    stdout: String::new(),
                    stderr: format!(
                        "error: schedule '{schedule}' is not immediate, daily or weekly\n"
                    ),
                });
            };
            let categories = if categories.is_empty() {
                categories
            } else {
                match canonical_categories(&categories, &(ctx.categories)()) {
                    Ok(c) => c,
                    Err(unknown) => {
                        return Ok(Reply {
                            code: 2,
                            stdout: String::new(),
                            stderr: format!(
                                "error: {}\n",
                                unknown_message(&unknown, &(ctx.categories)())
                            ),
                        });
                    }
                }
            };
            let queued = add(ctx, &email, schedule, categories, confirmed)?;
            store.flush()?;
            if queued {
                (ctx.on_queued)();
            }
            let now_active = store
                .subscriber(&email)?
                .is_some_and(|s| s.state == SubState::Active);
            let state = if now_active {
                "active"
            } else if queued {
                "pending: confirmation mail queued"
            } else {
                "pending: a confirmation mail went out in the last day; confirming it \
                 subscribes with what it says (nothing changed)"
            };
            Ok(Reply::ok(format!("{email}: {state}\n")))
        }
        Request::Remove { email } => {
            let mut email = email.trim().to_lowercase();
            // Stored as the form stores it (a Vietnamese domain in its ASCII form).
            if store.subscriber(&email)?.is_none()
                && let Ok(stored) = crate::mail::check_address(&email, Some(true))
            {
                email = stored;
            }
            if store.remove_subscriber(&email)? {
                store.flush()?;
                Ok(Reply::ok(format!(
                    "{email}: removed, and forgotten: a list imported later that names the \
                     address subscribes it again (an import with a 'state' column of \
                     'unsubscribed' keeps someone on record as not to be mailed)\n"
                )))
            } else {
                Ok(Reply::fail(format!("error: no subscriber '{email}'\n")))
            }
        }
        Request::List { json } => {
            let subs: Vec<Subscriber> = store.subscribers().collect::<Result<_, _>>()?;
            if json {
                let mut out = serde_json::to_string_pretty(&subs).expect("serializable");
                out.push('\n');
                return Ok(Reply::ok(out));
            }
            let mut out = String::new();
            for s in &subs {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\n",
                    s.email,
                    s.schedule.as_str(),
                    s.state.as_str(),
                    if s.categories.is_empty() {
                        "*".to_string()
                    } else {
                        s.categories.join(";")
                    }
                ));
            }
            Ok(Reply::ok(out))
        }
        Request::Export => {
            let mut out = csv::Writer::from_writer(Vec::new());
            out.write_record(["email", "schedule", "categories", "state"])?;
            for s in store.subscribers() {
                let s = s?;
                out.write_record([
                    safe_cell(&s.email).as_ref(),
                    s.schedule.as_str(),
                    safe_cell(&s.categories.join(";")).as_ref(),
                    s.state.as_str(),
                ])?;
            }
            let bytes = out
                .into_inner()
                .map_err(|e| csv::Error::from(e.into_error()))?;
            Ok(Reply::ok(String::from_utf8_lossy(&bytes).into_owned()))
        }
        Request::Import { csv, confirmed } => import(ctx, &csv, confirmed),
        Request::Inbox { mails } => inbox(ctx, mails),
        Request::StateExport => {
            let mut out = Vec::new();
            store.export(&mut out)?;
            Ok(Reply::ok(String::from_utf8_lossy(&out).into_owned()))
        }
        Request::Status { json } => status(ctx, json),
        Request::ArticleReport { id, json } => article_report(ctx, &id, json),
        Request::BulletinReport {
            schedule,
            date,
            json,
        } => bulletin_report(ctx, &schedule, &date, json),
    }
}

/// Adds or updates a subscriber; without `confirmed` it waits for its confirmation mail.
fn add(
    ctx: &Context<'_>,
    email: &str,
    schedule: Schedule,
    categories: Vec<String>,
    confirmed: bool,
) -> Result<bool, AdminError> {
    let store = ctx.store;
    let now = ctx.clock.now_s();
    let existing = store.subscriber(email)?;
    let existing_state = existing.as_ref().map(|s| s.state);
    let mut sub = existing.unwrap_or_else(|| Subscriber::new(email, schedule, Vec::new(), now));
    sub.schedule = schedule;
    sub.categories = categories;
    sub.updated = now;
    if confirmed {
        if sub.state != SubState::Active {
            sub.state = SubState::Active;
            sub.confirmed = Some(now);
            sub.digest_until = Some(ctx.clock.now_ms());
        }
        store.put_subscriber(&sub)?;
        return Ok(false);
    }
    if sub.state == SubState::Active {
        store.put_subscriber(&sub)?;
        return Ok(false);
    }
    // Its confirmation mail went out with the choices then made: confirming does what that
    // mail says, as on the site.
    if existing_state == Some(SubState::Pending)
        && !crate::mail::may_queue_confirmation(store, &sub, now)?
    {
        return Ok(false);
    }
    sub.state = SubState::Pending;
    store.put_subscriber(&sub)?;
    Ok(crate::mail::queue_confirmation(store, &mut sub, now)?)
}

fn import(ctx: &Context<'_>, text: &str, confirmed: bool) -> Result<Reply, AdminError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // A spreadsheet in a Vietnamese locale saves "CSV" with semicolons: a header without a
    // comma but with a semicolon says so (categories are then quoted when several).
    let header_line = text.lines().next().unwrap_or("");
    let delimiter = if !header_line.contains(',') && header_line.contains(';') {
        b';'
    } else {
        b','
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let mut rows = reader.records();
    // The csv reader's own line numbers run one short after a CRLF line end (a record
    // starts, for it, at the LF after the CR): counted here, from the bytes.
    let line_at = |p: &csv::Position| {
        let bytes = text.as_bytes();
        let mut start = (p.byte() as usize).min(bytes.len());
        if bytes.get(start) == Some(&b'\n') {
            start += 1;
        }
        bytes[..start].iter().filter(|&&b| b == b'\n').count() as u64 + 1
    };
    let header = match rows.next() {
        None => {
            return Ok(Reply::fail(
                "error: the file is empty; expected the header 'email,schedule,categories'\n"
                    .into(),
            ));
        }
        Some(Err(e)) => return Ok(Reply::fail(format!("error: line 1: {e}\n"))),
        Some(Ok(header)) => header,
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (Some(c_email), c_schedule, c_categories, c_state) = (
        col("email"),
        col("schedule"),
        col("categories"),
        col("state"),
    ) else {
        return Ok(Reply::fail(
            "error: line 1: expected the header 'email,schedule,categories'\n".into(),
        ));
    };
    let mut added = 0;
    // Left as they are: subscribed already (their own choices stay), or gone (unsubscribed,
    // bounced, complained: an import never subscribes anyone again).
    let mut kept = 0;
    let mut gone = 0;
    // Rows of people who had left, recorded so that they are not mailed.
    let mut recorded_gone = 0;
    // Listed as pending in an import `--confirmed`.
    let mut unconfirmed = 0;
    let mut problems = String::new();
    let known: std::cell::OnceCell<Vec<String>> = std::cell::OnceCell::new();
    let mut queued_any = false;
    // The line each address was first read on: a second row is left out (its choices may
    // differ from the first's, and only one can stand).
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for row in rows {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                let line = e.position().map_or(0, line_at);
                problems.push_str(&format!("line {line}: {e}\n"));
                continue;
            }
        };
        let line = row.position().map_or(0, line_at);
        if row.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if row.iter().any(|f| f.contains('\n')) {
            // Legal CSV, but no column of ours spans lines: a quote left open.
            let spanned = row
                .iter()
                .map(|f| f.trim_end_matches(['\r', '\n']).matches('\n').count())
                .sum::<usize>();
            let last = line as usize + spanned;
            problems.push_str(&format!(
                "lines {line}-{last}: a quoted field runs across lines; \
                 close the quote on line {line} and import again\n"
            ));
            continue;
        }
        let field = |c: Option<usize>| c.and_then(|c| row.get(c)).map(|s| s.trim()).unwrap_or("");
        let email = match crate::mail::check_address(field(Some(c_email)), ctx.relay_utf8) {
            Ok(email) => email,
            Err(problem) => {
                problems.push_str(&format!(
                    "line {line}: {}\n",
                    address_message(field(Some(c_email)), problem)
                ));
                continue;
            }
        };
        if let Some(first) = seen.get(&email) {
            problems.push_str(&format!(
                "line {line}: {email} again (first on line {first}); this row is left out: one \
                 row per address\n"
            ));
            continue;
        }
        seen.insert(email.clone(), line);
        let schedule_text = field(c_schedule);
        let schedule = if schedule_text.is_empty() {
            Some(Schedule::Immediate)
        } else {
            Schedule::parse(schedule_text)
        };
        let Some(schedule) = schedule else {
            problems.push_str(&format!(
                "line {line}: schedule '{schedule_text}' is not immediate, daily or weekly\n"
            ));
            continue;
        };
        let categories = parse_categories(field(c_categories), ';');
        let categories = if categories.is_empty() {
            categories
        } else {
            let known = known.get_or_init(|| (ctx.categories)());
            match canonical_categories(&categories, known) {
                Ok(c) => c,
                Err(unknown) => {
                    problems.push_str(&format!(
                        "line {line}: {}\n",
                        unknown_message(&unknown, known)
                    ));
                    continue;
                }
            }
        };
        let state_text = field(c_state);
        let listed = if state_text.is_empty() {
            None
        } else {
            match SubState::ALL
                .into_iter()
                .find(|s| s.as_str().eq_ignore_ascii_case(state_text))
            {
                Some(s) => Some(s),
                None => {
                    problems.push_str(&format!(
                        "line {line}: state '{state_text}' is not pending, active, unsubscribed, \
                         bounced or complained\n"
                    ));
                    continue;
                }
            }
        };
        let ended = |s: SubState| {
            matches!(
                s,
                SubState::Unsubscribed | SubState::Bounced | SubState::Complained
            )
        };
        match (ctx.store.subscriber(&email)?, listed) {
            (Some(sub), _) if ended(sub.state) => {
                gone += 1;
                continue;
            }
            (Some(sub), _) if sub.state == SubState::Active => {
                kept += 1;
                continue;
            }
            (None, Some(state)) if ended(state) => {
                let now = ctx.clock.now_s();
                let mut sub = Subscriber::new(&email, schedule, categories, now);
                sub.end(state, now);
                ctx.store.put_subscriber(&sub)?;
                recorded_gone += 1;
                continue;
            }
            _ => {}
        }
        // Listed as not confirmed: not made active by `--confirmed`.
        let pending = listed == Some(SubState::Pending);
        if confirmed && pending {
            unconfirmed += 1;
        }
        queued_any |= add(ctx, &email, schedule, categories, confirmed && !pending)?;
        added += 1;
    }
    ctx.store.flush()?;
    if queued_any {
        (ctx.on_queued)();
    }
    let mut text = format!(
        "imported {added} subscribers{}\n",
        if confirmed {
            " (active)"
        } else {
            " (confirmation mails queued)"
        }
    );
    if unconfirmed > 0 {
        text.push_str(&format!(
            "of them, {unconfirmed} listed as pending: not made active, confirmation mails queued\n"
        ));
    }
    if kept > 0 {
        text.push_str(&format!(
            "left {kept} already subscribed as they are (their own schedule and categories)\n"
        ));
    }
    if gone > 0 {
        text.push_str(&format!(
            "left {gone} who unsubscribed, bounced or complained as they are: an import does not \
             subscribe them again (they can, on the site)\n"
        ));
    }
    if recorded_gone > 0 {
        text.push_str(&format!(
            "recorded {recorded_gone} listed as unsubscribed, bounced or complained: they get no mail\n"
        ));
    }
    let mut reply = Reply::ok(text);
    if !problems.is_empty() {
        reply.stderr = problems;
        reply.code = 1;
    }
    Ok(reply)
}

/// `bantin inbox process`: each message acts once, as in the daemon's inbox.
fn inbox(ctx: &Context<'_>, mails: Vec<(String, String)>) -> Result<Reply, AdminError> {
    use base64::Engine as _;
    let Some(signer) = &ctx.signer else {
        return Ok(Reply::fail(
            "error: the token secret cannot be read; run this as the daemon's user\n".into(),
        ));
    };
    let local = crate::mail::bounce_local(ctx.return_path);
    let mut out = String::new();
    let mut problems = String::new();
    for (name, b64) in mails {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            problems.push_str(&format!("{name}: not sent whole\n"));
            continue;
        };
        let finding = crate::mail::inbox::process(&raw, ctx.store, ctx.clock, signer, local)?;
        let about = match &finding {
            crate::mail::inbox::Finding::HardBounce { email, status }
            | crate::mail::inbox::Finding::SoftBounce { email, status } => {
                format!(" ({email}, {status})")
            }
            crate::mail::inbox::Finding::Complaint { email }
            | crate::mail::inbox::Finding::Unsubscribe { email } => format!(" ({email})"),
            crate::mail::inbox::Finding::Reply { from } => format!(
                " (from {from}: a person's answer to a mail bantin sent, left for you to read; \
                 `bantin subscribers remove {from}` ends a subscription asked to end in words)"
            ),
            _ => String::new(),
        };
        out.push_str(&format!("{name}: {}{about}\n", finding.kind()));
    }
    let mut reply = Reply::ok(out);
    if !problems.is_empty() {
        reply.stderr = problems;
        reply.code = 1;
    }
    Ok(reply)
}

#[derive(Serialize)]
struct Status {
    /// Article files in the store, broken ones included (telling them apart reads them all).
    articles: usize,
    /// Of them, the broken ones (`null`: only the running daemon knows, once it has read
    /// the store).
    broken_articles: Option<usize>,
    subscribers: std::collections::BTreeMap<&'static str, usize>,
    outbox: std::collections::BTreeMap<&'static str, usize>,
    last_digests: std::collections::BTreeMap<&'static str, Option<String>>,
    delivery: Delivery,
    /// Pending mails the relay deferred: tried, waiting to be tried again.
    deferred: Option<DeferredMails>,
    /// Articles whose alerts are still going out to their subscribers (more than `pending`
    /// counts: those not planned yet have no record at all).
    fanouts: Vec<String>,
    /// Subscribers who follow a category that no article or feed uses (they get nothing
    /// of it).
    unknown_categories: Vec<Orphan>,
    /// Why the counts above may be incomplete.
    state_error: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct Orphan {
    pub email: String,
    pub categories: Vec<String>,
}

/// Whether the daemon is sending, or has paused delivery as a whole and why.
#[derive(Serialize)]
struct Delivery {
    /// Whether the daemon runs (and so delivers).
    running: bool,
    paused: bool,
    reason: Option<String>,
    since: Option<String>,
    next_try: Option<String>,
}

/// Mails tried and deferred, as `status` tells them (no address: the reason has them left
/// out).
#[derive(Serialize)]
struct DeferredMails {
    count: usize,
    reason: String,
    next_try: Option<String>,
    attempts: u32,
}

/// Deliveries counted by state, with the first and last time the relay accepted one.
#[derive(Debug, Default, Serialize)]
struct Tally {
    planned: usize,
    sent: usize,
    pending: usize,
    failed: usize,
    cancelled: usize,
    first_accepted: Option<String>,
    last_accepted: Option<String>,
}

impl Tally {
    /// The deliveries still on record, and those already compacted into `compacted`.
    fn with<'d>(
        deliveries: impl IntoIterator<Item = &'d crate::store::Delivery>,
        compacted: &crate::store::Counts,
        tz: chrono_tz::Tz,
    ) -> Tally {
        let mut counts = compacted.clone();
        let mut pending = 0;
        for d in deliveries {
            if d.state == DeliveryState::Pending {
                pending += 1;
            } else {
                counts.add(d);
            }
        }
        Tally {
            planned: counts.sent + counts.failed + counts.cancelled + pending,
            sent: counts.sent,
            pending,
            failed: counts.failed,
            cancelled: counts.cancelled,
            first_accepted: counts.first_ms.and_then(|t| rfc3339_ms(t, tz)),
            last_accepted: counts.last_ms.and_then(|t| rfc3339_ms(t, tz)),
        }
    }

    /// With `n` more pending that have no record yet.
    fn and_pending(mut self, n: usize) -> Tally {
        self.pending += n;
        self.planned += n;
        self
    }

    fn line(&self) -> String {
        let mut out = format!(
            "planned {}, sent {}, pending {}, failed {}, cancelled {}",
            self.planned, self.sent, self.pending, self.failed, self.cancelled
        );
        if let (Some(first), Some(last)) = (&self.first_accepted, &self.last_accepted) {
            out.push_str(&format!("; accepted from {first} to {last}"));
        }
        out
    }
}

/// The article id in what an admin may paste: the id itself, its page's address or path, or
/// its file's name in the store.
fn article_id(given: &str) -> &str {
    let given = given.trim();
    let path = given
        .split_once("/articles/")
        .map_or(given, |(_, rest)| rest)
        .trim_start_matches("articles/")
        .trim_start_matches('/');
    [".html", ".ics", ".txt"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext))
        .unwrap_or(path)
}

/// The report of an article the mail side does not know: its file says why (it waits for
/// its alert, its time has not come, it is broken), or there is no such article.
fn not_known_yet(ctx: &Context<'_>, id: &str, json: bool) -> Reply {
    let inside = Path::new(id)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    let path = ctx.store_dir.join(format!("{id}.txt"));
    let read = if inside {
        std::fs::read(&path).ok()
    } else {
        None
    };
    let said = |state: &str, at: Option<String>, text: String| {
        if json {
            let mut out = serde_json::to_string_pretty(&serde_json::json!({
                "article": id, "state": state, "published": at,
            }))
            .expect("serializable");
            out.push('\n');
            Reply::ok(out)
        } else {
            Reply::ok(text)
        }
    };
    let Some(bytes) = read else {
        return Reply::fail(format!(
            "no article '{id}' is known to the mail side; give its id as in its page's \
             address (articles/<id>.html), e.g. 2025/01/ky-hop\n"
        ));
    };
    match crate::article::parse_bytes(id, &bytes, ctx.tz) {
        Err(e) => Reply::fail(format!(
            "article '{id}': {}:{e}; it is neither published nor mailed until it is mended \
             (`bantin check` says the same)\n",
            path.display()
        )),
        Ok(article) if article.published.timestamp() > ctx.clock.now_s() => {
            let at = article.published.with_timezone(&ctx.tz).to_rfc3339();
            let text = format!(
                "article '{id}': scheduled: it is published, and mailed to its subscribers, \
                 at {at}\n"
            );
            said("scheduled", Some(at), text)
        }
        Ok(article) => {
            let at = article.published.with_timezone(&ctx.tz).to_rfc3339();
            let text = format!(
                "article '{id}': in the store, its alert not planned yet: that happens once \
                 the file has been left unchanged for mail.alert_delay_secs, while the daemon \
                 runs\n"
            );
            said("waiting", Some(at), text)
        }
    }
}

fn article_report(ctx: &Context<'_>, id: &str, json: bool) -> Result<Reply, AdminError> {
    let id = article_id(id);
    #[derive(Serialize)]
    struct CorrectionReport {
        n: u32,
        reason: String,
        planned_at: Option<String>,
        #[serde(flatten)]
        tally: Tally,
    }
    #[derive(Serialize)]
    struct Digested {
        told: usize,
        first_accepted: Option<String>,
        last_accepted: Option<String>,
    }
    #[derive(Serialize)]
    struct Report {
        article: String,
        /// When the mail side learned of it; `null` for the first start's baseline.
        first_seen: Option<String>,
        alerts: Tally,
        /// While its alerts are still being queued (a window at a time): true.
        alerts_fanning_out: bool,
        digests: Digested,
        /// Addresses told of it, by an alert or a digest.
        told: usize,
        corrections: Vec<CorrectionReport>,
    }
    let store = ctx.store;
    let Some(known) = store.known_article(id)? else {
        return Ok(not_known_yet(ctx, id, json));
    };
    let alerts: Vec<crate::store::Delivery> = store
        .alerts_of(id)
        .map(|r| r.map(|(_, d)| d))
        .collect::<Result<_, _>>()?;
    let told = {
        let _books = store.hold_books();
        store.told_of(id)?
    };
    let compacted = store.compacted(id)?.unwrap_or_default();
    // Digests still on record, then those compacted (their count and times kept).
    let mut digest_times: Vec<i64> = told
        .iter()
        .filter(|(_, t)| t.by == "digest" && t.at_ms > 0)
        .map(|(_, t)| t.at_ms)
        .collect();
    let digests_told = digest_times.len() + compacted.digests.sent;
    digest_times.extend(compacted.digests.first_ms);
    digest_times.extend(compacted.digests.last_ms);
    let mut corrections = Vec::new();
    for c in store.corrections_of(id)? {
        let deliveries = store.deliveries_with_prefix(&format!("x\0{id}\0{}\0", c.n))?;
        corrections.push(CorrectionReport {
            n: c.n,
            reason: c.reason,
            planned_at: rfc3339_ms(c.at_ms, ctx.tz),
            tally: Tally::with(deliveries.iter().map(|(_, d)| d), &c.compacted, ctx.tz),
        });
    }
    let report = Report {
        article: id.to_owned(),
        first_seen: (known.seen > 0)
            .then(|| rfc3339_ms(known.seen, ctx.tz))
            .flatten(),
        alerts: Tally::with(&alerts, &compacted.alerts, ctx.tz)
            .and_pending((ctx.planned)(Some(id))),
        alerts_fanning_out: store.fanouts()?.iter().any(|(a, _)| a == id),
        digests: Digested {
            told: digests_told,
            first_accepted: digest_times
                .iter()
                .min()
                .and_then(|t| rfc3339_ms(*t, ctx.tz)),
            last_accepted: digest_times
                .iter()
                .max()
                .and_then(|t| rfc3339_ms(*t, ctx.tz)),
        },
        told: told.len(),
        corrections,
    };
    if json {
        let mut out = serde_json::to_string_pretty(&report).expect("serializable");
        out.push('\n');
        return Ok(Reply::ok(out));
    }
    let mut out = format!(
        "article: {}\nfirst seen: {}\nalerts: {}{}\n",
        report.article,
        report
            .first_seen
            .as_deref()
            .unwrap_or("at the first start (the baseline: never mailed)"),
        report.alerts.line(),
        if report.alerts_fanning_out {
            " (still queuing: more subscribers to come)"
        } else {
            ""
        }
    );
    out.push_str(&format!("digests: told {}", report.digests.told));
    if let (Some(first), Some(last)) = (
        &report.digests.first_accepted,
        &report.digests.last_accepted,
    ) {
        out.push_str(&format!("; accepted from {first} to {last}"));
    }
    out.push_str(&format!("\ntold: {} addresses\n", report.told));
    for c in &report.corrections {
        out.push_str(&format!(
            "correction {} ({}): {}: {}\n",
            c.n,
            c.planned_at.as_deref().unwrap_or("?"),
            c.reason,
            c.tally.line()
        ));
    }
    Ok(Reply::ok(out))
}

fn bulletin_report(
    ctx: &Context<'_>,
    schedule: &str,
    date: &str,
    json: bool,
) -> Result<Reply, AdminError> {
    #[derive(Serialize)]
    struct Report {
        schedule: &'static str,
        date: String,
        runs: Vec<Option<String>>,
        articles: Vec<String>,
        mails: Tally,
    }
    let schedule = match schedule {
        "daily" => Schedule::Daily,
        "weekly" => Schedule::Weekly,
        other => {
            return Ok(Reply::fail(format!(
                "unknown bulletin '{other}'; use daily or weekly\n"
            )));
        }
    };
    let parsed = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .or_else(|_| chrono::NaiveDate::parse_from_str(date, "%d/%m/%Y"));
    let Ok(day) = parsed else {
        return Ok(Reply::fail(format!(
            "cannot read the date '{date}'; write it YYYY-MM-DD (or DD/MM/YYYY)\n"
        )));
    };
    let date = day.format("%Y-%m-%d").to_string();
    let Some(b) = ctx.store.bulletin(schedule, &date)? else {
        return Ok(Reply::fail(format!(
            "no {} bulletin was sent on {date}\n",
            schedule.as_str()
        )));
    };
    let mut deliveries = Vec::new();
    let mut compacted = crate::store::Counts::default();
    for run in &b.runs {
        compacted.merge(&ctx.store.run_counts(schedule, *run)?);
        deliveries.extend(
            ctx.store
                .deliveries_with_prefix(&format!("d\0{}\0{run}\0", schedule.as_str()))?
                .into_iter()
                .map(|(_, d)| d),
        );
    }
    let report = Report {
        schedule: schedule.as_str(),
        date,
        runs: b
            .runs
            .iter()
            .map(|r| rfc3339_ms(r * 1000, ctx.tz))
            .collect(),
        articles: b.articles.clone(),
        mails: Tally::with(&deliveries, &compacted, ctx.tz),
    };
    if json {
        let mut out = serde_json::to_string_pretty(&report).expect("serializable");
        out.push('\n');
        return Ok(Reply::ok(out));
    }
    let runs: Vec<&str> = report.runs.iter().filter_map(|r| r.as_deref()).collect();
    Ok(Reply::ok(format!(
        "bulletin: {} {}\nruns: {}\narticles: {} ({})\nmails: {}\n",
        report.schedule,
        report.date,
        runs.join(", "),
        report.articles.len(),
        report.articles.join(", "),
        report.mails.line()
    )))
}

/// A time as RFC 3339, in the council's time zone (the same instant: a reader of the JSON
/// loses nothing, the admin reads their own hours).
fn rfc3339_ms(ms: i64, tz: chrono_tz::Tz) -> Option<String> {
    tz.timestamp_millis_opt(ms).single().map(|t| t.to_rfc3339())
}

fn status(ctx: &Context<'_>, json: bool) -> Result<Reply, AdminError> {
    let store = ctx.store;
    // A state that cannot be read is reported, not a reason to say nothing: the delivery
    // pause, which names the cause, matters most then.
    let mut state_error: Option<String> = None;
    let mut note = |e: StoreError| {
        state_error.get_or_insert_with(|| e.to_string());
    };
    let mut subs: std::collections::BTreeMap<&'static str, usize> =
        SubState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let known: std::cell::OnceCell<Vec<String>> = std::cell::OnceCell::new();
    let mut unknown_categories = Vec::new();
    for s in store.subscribers() {
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                note(e);
                break;
            }
        };
        *subs.entry(s.state.as_str()).or_default() += 1;
        if s.state == SubState::Unsubscribed || s.categories.is_empty() {
            continue;
        }
        let known = known.get_or_init(|| (ctx.categories)());
        let orphans: Vec<String> = s
            .categories
            .iter()
            .filter(|c| !known.contains(c))
            .cloned()
            .collect();
        if !orphans.is_empty() {
            unknown_categories.push(Orphan {
                email: s.email,
                categories: orphans,
            });
        }
    }
    let (mut counts, deferred) = store.outbox_summary().unwrap_or_else(|e| {
        note(e);
        ([0; 4], None)
    });
    counts[0] += (ctx.planned)(None);
    let outbox = DeliveryState::ALL
        .iter()
        .zip(counts)
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    let mut last_digests = std::collections::BTreeMap::new();
    for schedule in [Schedule::Daily, Schedule::Weekly] {
        let t = store.last_digest(schedule).unwrap_or_else(|e| {
            note(e);
            None
        });
        last_digests.insert(
            schedule.as_str(),
            t.and_then(|t| rfc3339_ms(t.saturating_mul(1000), ctx.tz)),
        );
    }
    let deferred = deferred.map(|d| DeferredMails {
        count: d.count,
        reason: crate::mail::worker::refusal_of_any(&d.reason),
        // A next try already due waits for a free connection or the end of a pause.
        next_try: (d.next_ms > ctx.clock.now_ms())
            .then(|| rfc3339_ms(d.next_ms, ctx.tz))
            .flatten(),
        attempts: d.attempts,
    });
    let articles = count_articles(ctx.store_dir);
    let fanouts = store
        .fanouts()
        .unwrap_or_else(|e| {
            note(e);
            Vec::new()
        })
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let status = Status {
        articles,
        broken_articles: ctx.broken,
        subscribers: subs,
        outbox,
        last_digests,
        delivery: Delivery {
            running: ctx.daemon,
            paused: ctx.pause.is_some(),
            reason: ctx.pause.as_ref().map(|p| p.reason.clone()),
            since: ctx
                .pause
                .as_ref()
                .and_then(|p| rfc3339_ms(p.since_ms, ctx.tz)),
            next_try: ctx
                .pause
                .as_ref()
                .and_then(|p| rfc3339_ms(p.retry_ms, ctx.tz)),
        },
        deferred,
        fanouts,
        unknown_categories,
        state_error,
    };
    if json {
        let mut out = serde_json::to_string_pretty(&status).expect("serializable");
        out.push('\n');
        return Ok(Reply::ok(out));
    }
    let join = |m: &std::collections::BTreeMap<&'static str, usize>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let digests = status
        .last_digests
        .iter()
        .map(|(k, v)| format!("{k} {}", v.as_deref().unwrap_or("never")))
        .collect::<Vec<_>>()
        .join(", ");
    let delivery = match &status.delivery {
        Delivery {
            paused: true,
            reason: Some(reason),
            since: Some(since),
            next_try: Some(next),
            ..
        } => format!("PAUSED since {since}, next try {next}: {reason}"),
        Delivery { running: false, .. } => "not running (the daemon is stopped)".into(),
        _ => "running".into(),
    };
    let broken = match status.broken_articles {
        Some(0) => "none broken".to_owned(),
        Some(n) => format!("{n} broken: `bantin check` names them"),
        None => "broken ones included: `bantin check` names them".to_owned(),
    };
    let mut out = format!(
        "articles: {} {} in the store ({broken})\n\
         subscribers: {}\noutbox: {}\nlast digests: {digests}\ndelivery: {delivery}\n",
        status.articles,
        if status.articles == 1 {
            "file"
        } else {
            "files"
        },
        join(&status.subscribers),
        join(&status.outbox)
    );
    if let Some(d) = &status.deferred {
        out.push_str(&format!(
            "deferred: {} {} tried and waiting to be tried again (up to {} {} so far), {}: \
             {}\n",
            d.count,
            if d.count == 1 { "mail" } else { "mails" },
            d.attempts,
            if d.attempts == 1 { "try" } else { "tries" },
            d.next_try
                .as_deref()
                .map_or("the next due now".to_owned(), |t| format!("next try {t}")),
            d.reason
        ));
    }
    if !status.fanouts.is_empty() {
        out.push_str(&format!(
            "alerts still going out (pending counts only the mails planned so far): {}\n",
            status.fanouts.join(", ")
        ));
    }
    for o in &status.unknown_categories {
        out.push_str(&format!("{}\n", orphan_line(o)));
    }
    if let Some(e) = &status.state_error {
        out.push_str(&format!(
            "state: cannot be read, the counts above are incomplete: {e}\n"
        ));
    }
    Ok(Reply::ok(out))
}

fn count_articles(dir: &Path) -> usize {
    let reader = crate::scan::StoreReader {
        root: dir.to_path_buf(),
        tz: chrono_tz::UTC,
        max_bytes: u64::MAX,
    };
    reader.walk().map(|f| f.len()).unwrap_or(0)
}

/// Sends a request to a running daemon; `None` when no daemon answers on the socket.
pub fn ask_daemon(state_dir: &Path, request: &Request) -> Option<std::io::Result<Reply>> {
    let path: PathBuf = state_dir.join(SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).ok()?;
    Some((|| {
        let mut line = serde_json::to_string(request).expect("serializable");
        line.push('\n');
        stream.write_all(line.as_bytes())?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        serde_json::from_str(&reply)
            .map_err(|e| std::io::Error::other(format!("bad reply from the daemon: {e}")))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn status_gives_its_times_in_the_councils_time_zone() {
        let (_dir, store) = store();
        // 2026-11-20 00:00 in Hà Nội.
        store
            .set_last_digest(Schedule::Daily, 1_795_107_600)
            .unwrap();
        let reply = run(&store, Request::Status { json: true });
        let json: serde_json::Value = serde_json::from_str(&reply.stdout).unwrap();
        assert_eq!(
            json["last_digests"]["daily"], "2026-11-20T00:00:00+07:00",
            "{json}"
        );
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    /// Runs one command on `store`, with three known categories.
    fn run(store: &Store, request: Request) -> Reply {
        run_in(store, Path::new("/nonexistent"), request)
    }

    /// [`run`], with the article store at `store_dir`.
    fn run_in(store: &Store, store_dir: &Path, request: Request) -> Reply {
        let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 11, 20, 1, 0, 0).unwrap());
        let ctx = Context {
            store,
            clock: &clock,
            tz: "Asia/Ho_Chi_Minh".parse().unwrap(),
            pause: None,
            daemon: false,
            categories: &|| vec!["A".into(), "B, C".into(), "THÔNG BÁO".into()],
            signer: None,
            return_path: "",
            relay_utf8: None,
            store_dir,
            broken: None,
            on_queued: &|| {},
            planned: &|_| 0,
        };
        execute(&ctx, request)
    }

    fn run_import(store: &Store, csv: &str) -> Reply {
        run(
            store,
            Request::Import {
                csv: csv.into(),
                confirmed: true,
            },
        )
    }

    #[test]
    fn an_article_the_mail_side_does_not_know_yet_is_told_from_its_file() {
        let (_dir, store) = store();
        let articles = tempfile::tempdir().unwrap();
        let put = |id: &str, when: &str| {
            let path = articles.path().join(format!("{id}.txt"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(
                path,
                format!("THÔNG BÁO\n\nTiêu đề\nNgày đăng {when}\n\nNội dung.\n"),
            )
            .unwrap();
        };
        // The clock says 2026-11-20 08:00 in Hà Nội.
        put("2026/cho-gui", "20/11/2026 | 07:59");
        put("sau", "21/11/2026 | 08:00");
        put("hong", "31/02/2026 | 08:00");
        let report = |id: &str, json: bool| {
            let id = id.to_owned();
            run_in(&store, articles.path(), Request::ArticleReport { id, json })
        };
        let r = report("2026/cho-gui", false);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout.contains("its alert not planned yet"),
            "{}",
            r.stdout
        );
        let r = report("articles/sau.html", false);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout.contains("scheduled: it is published, and mailed to its subscribers, at 2026-11-21T08:00:00+07:00"),
            "{}",
            r.stdout
        );
        let r = report("sau", true);
        let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(json["state"], "scheduled", "{json}");
        let r = report("hong", false);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("hong.txt:4:"), "{}", r.stderr);
        for unknown in ["khong-co", "../hong", "/etc/hostname"] {
            let r = report(unknown, false);
            assert_eq!(r.code, 1, "{unknown}");
            assert!(
                r.stderr.contains("is known to the mail side"),
                "{}",
                r.stderr
            );
        }
    }

    #[test]
    fn an_article_is_found_by_its_id_page_or_file() {
        for given in [
            "2025/ky-hop",
            "https://hdnd.example.vn/articles/2025/ky-hop.html",
            "/articles/2025/ky-hop.ics",
            "articles/2025/ky-hop.txt",
            " 2025/ky-hop.html ",
        ] {
            assert_eq!(article_id(given), "2025/ky-hop", "{given}");
        }
    }

    #[test]
    fn import_reads_quotes_crlf_and_a_bom() {
        let (_dir, store) = store();
        let reply = run_import(
            &store,
            "\u{feff}email,schedule,categories\r\na@x.vn,daily,\"A;B, C\"\r\nb@x.vn,,\n",
        );
        assert_eq!(reply.code, 0, "{reply:?}");
        let a = store.subscriber("a@x.vn").unwrap().unwrap();
        assert_eq!(a.categories, ["A", "B, C"]);
        assert_eq!(a.schedule, Schedule::Daily);
        let b = store.subscriber("b@x.vn").unwrap().unwrap();
        assert_eq!(b.schedule, Schedule::Immediate);
    }

    #[test]
    fn import_reads_a_spreadsheets_semicolons_and_any_case_of_a_schedule() {
        let (_dir, store) = store();
        let reply = run_import(
            &store,
            "\u{feff}email;schedule;categories\r\nc@x.vn;Daily;\"A;THÔNG BÁO\"\r\nd@x.vn;IMMEDIATE;\r\n",
        );
        assert_eq!(reply.code, 0, "{reply:?}");
        let c = store.subscriber("c@x.vn").unwrap().unwrap();
        assert_eq!(
            (c.schedule, &c.categories[..]),
            (
                Schedule::Daily,
                &["A".to_string(), "THÔNG BÁO".to_string()][..]
            )
        );
        let d = store.subscriber("d@x.vn").unwrap().unwrap();
        assert_eq!(d.schedule, Schedule::Immediate);
    }

    #[test]
    fn an_import_never_subscribes_again_who_left_nor_changes_who_chose() {
        let (_dir, store) = store();
        run_import(
            &store,
            "email,schedule,categories\nleft@x.vn,daily,\nstays@x.vn,weekly,A\n",
        );
        let mut left = store.subscriber("left@x.vn").unwrap().unwrap();
        left.end(SubState::Unsubscribed, 1);
        store.put_subscriber(&left).unwrap();
        // An export of another state, imported `--confirmed`: its states are honoured.
        let reply = run_import(
            &store,
            "email,schedule,categories,state\r\n\
             left@x.vn,immediate,,active\r\n\
             stays@x.vn,immediate,,active\r\n\
             never@x.vn,immediate,,pending\r\n\
             bounced@x.vn,immediate,,bounced\r\n\
             new@x.vn,daily,,active\r\n\
             odd@x.vn,daily,,paused\r\n",
        );
        assert_eq!(reply.code, 1, "{reply:?}");
        let state = |e: &str| store.subscriber(e).unwrap().unwrap().state;
        assert_eq!(state("left@x.vn"), SubState::Unsubscribed);
        let stays = store.subscriber("stays@x.vn").unwrap().unwrap();
        assert_eq!(
            (stays.state, stays.schedule, &stays.categories[..]),
            (SubState::Active, Schedule::Weekly, &["A".to_string()][..])
        );
        assert_eq!(state("never@x.vn"), SubState::Pending);
        assert_eq!(state("bounced@x.vn"), SubState::Bounced);
        assert_eq!(state("new@x.vn"), SubState::Active);
        assert!(store.subscriber("odd@x.vn").unwrap().is_none());
        for said in [
            "imported 2 subscribers (active)",
            "of them, 1 listed as pending",
            "left 1 already subscribed",
            "left 1 who unsubscribed",
            "recorded 1 listed as unsubscribed, bounced or complained",
        ] {
            assert!(reply.stdout.contains(said), "{said}: {}", reply.stdout);
        }
        // Line 7 of the file (CRLF line ends).
        assert!(
            reply.stderr.starts_with("line 7: state 'paused'"),
            "{}",
            reply.stderr
        );
    }

    #[test]
    fn a_pending_address_keeps_what_its_confirmation_mail_said() {
        let (_dir, store) = store();
        let add = |schedule: &str| {
            run(
                &store,
                Request::Add {
                    email: "hoa@bưuđiện.vn".into(),
                    schedule: schedule.into(),
                    categories: Vec::new(),
                    confirmed: false,
                },
            )
        };
        let first = add("weekly");
        assert!(
            first.stdout.contains("pending: confirmation mail queued"),
            "{first:?}"
        );
        let again = add("daily");
        assert!(again.stdout.contains("nothing changed"), "{again:?}");
        let sub = store
            .subscriber("hoa@xn--buin-1ua66gr30m.vn")
            .unwrap()
            .unwrap();
        assert_eq!(sub.schedule, Schedule::Weekly);
        // Removed by the address as typed.
        let removed = run(
            &store,
            Request::Remove {
                email: "Hoa@BưuĐiện.vn".into(),
            },
        );
        assert_eq!(removed.code, 0, "{removed:?}");
        assert!(
            store
                .subscriber("hoa@xn--buin-1ua66gr30m.vn")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_unclosed_quote_is_reported_with_its_lines() {
        let (_dir, store) = store();
        let reply = run_import(
            &store,
            "email,schedule,categories\na@x.vn,daily,\"A\nb@x.vn,daily,\nc@x.vn,weekly,\n",
        );
        assert_eq!(reply.code, 1, "{reply:?}");
        assert!(
            reply
                .stderr
                .contains("lines 2-4: a quoted field runs across lines"),
            "{}",
            reply.stderr
        );
    }

    #[test]
    fn export_cells_never_start_a_formula() {
        assert_eq!(safe_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(safe_cell("-1+1"), "'-1+1");
        assert_eq!(safe_cell("THÔNG BÁO"), "THÔNG BÁO");
    }

    #[test]
    fn export_quotes_what_needs_it() {
        let (_dir, store) = store();
        run_import(
            &store,
            "email,schedule,categories\na@x.vn,daily,\"B, C;A\"\n",
        );
        let reply = run(&store, Request::Export);
        assert_eq!(
            reply.stdout,
            "email,schedule,categories,state\na@x.vn,daily,\"A;B, C\",active\n"
        );
    }
}

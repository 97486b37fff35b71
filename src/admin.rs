//! The `subscribers` and `status` commands. The same code runs in the CLI (when no daemon
//! holds the database) and in the daemon (behind its admin socket), so the result is the same
//! either way.
//!
//! Socket protocol: one JSON [`Request`] line in, one JSON [`Reply`] line out, then close.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{DeliveryState, Schedule, Store, SubState, Subscriber};

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
    /// Counts the store's article files for `status`.
    pub store_dir: &'a Path,
    /// Called after confirmation mails were queued (the daemon wakes its worker).
    pub on_queued: &'a (dyn Fn() + Sync),
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

/// Runs one command.
pub fn execute(ctx: &Context<'_>, request: Request) -> Reply {
    match run(ctx, request) {
        Ok(reply) => reply,
        Err(e) => Reply::fail(format!("error: {e}\n")),
    }
}

fn run(ctx: &Context<'_>, request: Request) -> Result<Reply, String> {
    let store = ctx.store;
    let err = |e: crate::store::StoreError| e.to_string();
    match request {
        Request::Add {
            email,
            schedule,
            categories,
            confirmed,
        } => {
            let Some(email) = crate::mail::normalize_email(&email) else {
                return Ok(Reply {
                    code: 2,
                    stdout: String::new(),
                    stderr: format!("error: '{email}' is not a mail address\n"),
                });
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
            let queued = add(store, &email, schedule, categories, confirmed)?;
            store.flush().map_err(err)?;
            if queued {
                (ctx.on_queued)();
            }
            let state = if confirmed {
                "active"
            } else {
                "pending: confirmation mail queued"
            };
            Ok(Reply::ok(format!("{email}: {state}\n")))
        }
        Request::Remove { email } => {
            let email = email.trim().to_lowercase();
            if store.remove_subscriber(&email).map_err(err)? {
                store.flush().map_err(err)?;
                Ok(Reply::ok(format!("{email}: removed\n")))
            } else {
                Ok(Reply::fail(format!("error: no subscriber '{email}'\n")))
            }
        }
        Request::List { json } => {
            let subs: Vec<Subscriber> =
                store.subscribers().collect::<Result<_, _>>().map_err(err)?;
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
            let mut out = String::from("email,schedule,categories,state\n");
            for s in store.subscribers() {
                let s = s.map_err(err)?;
                out.push_str(&format!(
                    "{},{},{},{}\n",
                    csv_field(&s.email),
                    s.schedule.as_str(),
                    csv_field(&s.categories.join(";")),
                    s.state.as_str()
                ));
            }
            Ok(Reply::ok(out))
        }
        Request::Import { csv, confirmed } => import(ctx, &csv, confirmed),
        Request::Status { json } => status(ctx, json),
    }
}

/// Adds or updates a subscriber; without `confirmed` it waits for its confirmation mail.
fn add(
    store: &Store,
    email: &str,
    schedule: Schedule,
    categories: Vec<String>,
    confirmed: bool,
) -> Result<bool, String> {
    let now = Utc::now().timestamp();
    let existing = store.subscriber(email).map_err(|e| e.to_string())?;
    let mut sub = existing.unwrap_or_else(|| Subscriber::new(email, schedule, Vec::new(), now));
    sub.schedule = schedule;
    sub.categories = categories;
    sub.updated = now;
    if confirmed {
        if sub.state != SubState::Active {
            sub.state = SubState::Active;
            sub.confirmed = Some(now);
            sub.digest_until = Some(Utc::now().timestamp_millis());
        }
        store.put_subscriber(&sub).map_err(|e| e.to_string())?;
        return Ok(false);
    }
    if sub.state == SubState::Active {
        store.put_subscriber(&sub).map_err(|e| e.to_string())?;
        return Ok(false);
    }
    sub.state = SubState::Pending;
    store.put_subscriber(&sub).map_err(|e| e.to_string())?;
    crate::mail::queue_confirmation(store, &mut sub, now)
}

fn import(ctx: &Context<'_>, csv: &str, confirmed: bool) -> Result<Reply, String> {
    let rows = parse_csv(csv);
    let mut rows = rows.into_iter().enumerate();
    let Some((_, header)) = rows.next() else {
        return Ok(Reply::fail(
            "error: the file is empty; expected the header 'email,schedule,categories'\n".into(),
        ));
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (Some(c_email), c_schedule, c_categories) =
        (col("email"), col("schedule"), col("categories"))
    else {
        return Ok(Reply::fail(
            "error: line 1: expected the header 'email,schedule,categories'\n".into(),
        ));
    };
    let mut added = 0;
    let mut problems = String::new();
    let mut queued_any = false;
    for (i, row) in rows {
        let line = i + 1;
        if row.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let field = |c: Option<usize>| c.and_then(|c| row.get(c)).map(|s| s.trim()).unwrap_or("");
        let Some(email) = crate::mail::normalize_email(field(Some(c_email))) else {
            problems.push_str(&format!(
                "line {line}: '{}' is not a mail address\n",
                field(Some(c_email))
            ));
            continue;
        };
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
        queued_any |= add(ctx.store, &email, schedule, categories, confirmed)?;
        added += 1;
    }
    ctx.store.flush().map_err(|e| e.to_string())?;
    if queued_any {
        (ctx.on_queued)();
    }
    let mut reply = Reply::ok(format!(
        "imported {added} subscribers{}\n",
        if confirmed {
            " (active)"
        } else {
            " (confirmation mails queued)"
        }
    ));
    if !problems.is_empty() {
        reply.stderr = problems;
        reply.code = 1;
    }
    Ok(reply)
}

#[derive(Serialize)]
struct Status {
    articles: usize,
    subscribers: std::collections::BTreeMap<&'static str, usize>,
    outbox: std::collections::BTreeMap<&'static str, usize>,
    last_digests: std::collections::BTreeMap<&'static str, Option<String>>,
}

fn status(ctx: &Context<'_>, json: bool) -> Result<Reply, String> {
    let store = ctx.store;
    let err = |e: crate::store::StoreError| e.to_string();
    let mut subs: std::collections::BTreeMap<&'static str, usize> =
        SubState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for s in store.subscribers() {
        *subs.entry(s.map_err(err)?.state.as_str()).or_default() += 1;
    }
    let counts = store.outbox_counts().map_err(err)?;
    let outbox = DeliveryState::ALL
        .iter()
        .zip(counts)
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    let mut last_digests = std::collections::BTreeMap::new();
    for schedule in [Schedule::Daily, Schedule::Weekly] {
        let t = store
            .meta_i64(&format!("digest\0{}", schedule.as_str()))
            .map_err(err)?;
        last_digests.insert(
            schedule.as_str(),
            t.and_then(|t| Utc.timestamp_opt(t, 0).single())
                .map(|t| t.to_rfc3339()),
        );
    }
    let articles = count_articles(ctx.store_dir);
    let status = Status {
        articles,
        subscribers: subs,
        outbox,
        last_digests,
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
    Ok(Reply::ok(format!(
        "articles: {}\nsubscribers: {}\noutbox: {}\nlast digests: {digests}\n",
        status.articles,
        join(&status.subscribers),
        join(&status.outbox)
    )))
}

fn count_articles(dir: &Path) -> usize {
    let reader = crate::scan::StoreReader {
        root: dir.to_path_buf(),
        tz: chrono_tz::UTC,
        max_bytes: u64::MAX,
    };
    reader.walk().map(|f| f.len()).unwrap_or(0)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// RFC 4180 CSV: quoted fields with `""` escapes and embedded line breaks.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
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

    #[test]
    fn csv_with_quotes_and_line_breaks() {
        let rows =
            parse_csv("email,schedule,categories\r\na@x.vn,daily,\"A;B, C\"\n\"b\"\"@x.vn\",,\n");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1], ["a@x.vn", "daily", "A;B, C"]);
        assert_eq!(rows[2], ["b\"@x.vn", "", ""]);
        assert_eq!(csv_field("A;B, C"), "\"A;B, C\"");
    }
}

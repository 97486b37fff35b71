//! What comes back: bounces (DSN, RFC 3464), complaints (ARF, RFC 5965), mails to the
//! `unsubscribe+<token>@` address, and everything else (out-of-office replies…), read from
//! the Maildir the MTA delivers the VERP addresses into.
//!
//! A message acts only through a token bantin signed (the VERP address of a delivery): a
//! forged or foreign one is counted and ignored. Acting twice on the same message does
//! nothing more (its digest is recorded with the effect); a message leaves `new/` for `cur/`
//! only once its effect is on disk, so a crash makes it read again, harmlessly.

use std::path::{Path, PathBuf};

use mail_parser::{MessageParser, MimeHeaders};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};

use super::MailError;
use crate::clock::Clock;
use crate::store::Store;
use crate::subscriber::SubState;
use crate::token::Signer;

/// What a message turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A permanent failure for an address: it bounces.
    HardBounce { email: String, status: String },
    /// A temporary one the relay gave up on (a mailbox full for days): counted toward the
    /// soft-bounce rule. A report that delivery is only delayed is not one.
    SoftBounce { email: String, status: String },
    /// A spam complaint: unsubscribed from everything, marked complained.
    Complaint { email: String },
    /// A mail to `unsubscribe+<token>@`.
    Unsubscribe { email: String },
    /// A person's answer to a mail bantin sent (it names one of its Message-IDs): for the
    /// admin to read, who may end a subscription asked for in words.
    Reply { from: String },
    /// A token that bantin did not sign, or that names no delivery.
    Forged,
    /// Anything else (an auto-reply, a DSN without a token): kept, counted.
    Other(&'static str),
}

impl Finding {
    /// The label under which it is counted.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::HardBounce { .. } => "bounce",
            Finding::SoftBounce { .. } => "soft_bounce",
            Finding::Complaint { .. } => "complaint",
            Finding::Unsubscribe { .. } => "unsubscribe",
            Finding::Reply { .. } => "reply",
            Finding::Forged => "forged",
            Finding::Other(kind) => kind,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Messages read, by what they were.
pub type InboxCounts = Family<KindLabel, Counter>;

/// The tokens in `text` after `local+`, followed by `@`.
fn tokens_after<'t>(text: &'t str, local: &str) -> Vec<&'t str> {
    let needle = format!("{}+", local.to_ascii_lowercase());
    let lower = text.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = lower[from..].find(&needle) {
        let start = from + at + needle.len();
        let rest = &text[start..];
        let len = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
            .unwrap_or(rest.len());
        if rest[len..].starts_with('@') && len > 0 {
            found.push(&rest[..len]);
        }
        from = start;
    }
    found
}

/// The subscriber address a signed token names, if genuine.
fn address_of(store: &Store, signer: &Signer, token: &str) -> Result<Option<String>, MailError> {
    let Some(id) = signer.verify_short(token) else {
        return Ok(None);
    };
    Ok(store.email_by_id(&id)?)
}

/// The fields of a delivery-status report (RFC 3464), per recipient: (action, status).
fn delivery_status(fields: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut action = None;
    let mut status = None;
    // Field groups are separated by blank lines; continuation lines are folded in.
    for line in fields.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let Some(s) = status.take() {
                out.push((action.take().unwrap_or_default(), s));
            }
            action = None;
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "action" => action = Some(value),
                "status" => status = value.split_whitespace().next().map(str::to_owned),
                _ => {}
            }
        }
    }
    out
}

/// Reads one message and says what it is; `local` is the local part of `mail.return_path`.
pub fn classify(
    raw: &[u8],
    store: &Store,
    signer: &Signer,
    local: &str,
) -> Result<Finding, MailError> {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Ok(Finding::Other("unreadable"));
    };
    let text = String::from_utf8_lossy(raw);
    let report_type = message
        .content_type()
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .and_then(|ct| ct.attribute("report-type"))
        .map(str::to_ascii_lowercase);
    // Whom it is about: a token bantin signed. A DSN is addressed to the VERP address; a
    // complaint carries the original message, whose Return-Path is that address.
    let find = |local: &str| -> Result<Result<Option<String>, ()>, MailError> {
        let tokens = tokens_after(&text, local);
        if tokens.is_empty() {
            return Ok(Ok(None));
        }
        for token in tokens {
            if let Some(email) = address_of(store, signer, token)? {
                return Ok(Ok(Some(email)));
            }
        }
        Ok(Err(())) // tokens, none genuine
    };
    match report_type.as_deref() {
        Some("delivery-status") => {
            let Ok(who) = find(local)? else {
                return Ok(Finding::Forged);
            };
            let Some(email) = who else {
                return Ok(Finding::Other("bounce_without_token"));
            };
            let fields = message
                .parts
                .iter()
                .find(|p| {
                    p.content_type().is_some_and(|ct| {
                        ct.ctype().eq_ignore_ascii_case("message")
                            && ct
                                .subtype()
                                .is_some_and(|s| s.eq_ignore_ascii_case("delivery-status"))
                    })
                })
                .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
                .unwrap_or_default();
            let reports = delivery_status(&fields);
            let hard = reports.iter().find(|(action, status)| {
                action == "failed"
                    && status.starts_with('5')
                    && status != "5.2.2"
                    && !status.starts_with("5.7.")
            });
            // Only a failure counts: `delayed` (the relay still tries), `relayed` or
            // `delivered` say nothing against the address.
            let soft = reports.iter().find(|(action, _)| action == "failed");
            Ok(match (hard, soft) {
                (Some((_, status)), _) => Finding::HardBounce {
                    email,
                    status: status.clone(),
                },
                (None, Some((_, status))) => Finding::SoftBounce {
                    email,
                    status: status.clone(),
                },
                (None, None) if reports.iter().any(|(action, _)| action == "delayed") => {
                    Finding::Other("delayed")
                }
                (None, None) if !reports.is_empty() => Finding::Other("delivery_report"),
                (None, None) => Finding::Other("bounce_without_status"),
            })
        }
        Some("feedback-report") => Ok(match find(local)? {
            Ok(Some(email)) => Finding::Complaint { email },
            Ok(None) => match find("unsubscribe")? {
                Ok(Some(email)) => Finding::Complaint { email },
                Ok(None) => Finding::Other("complaint_without_token"),
                Err(()) => Finding::Forged,
            },
            Err(()) => Finding::Forged,
        }),
        _ => {
            let auto = message
                .header_raw("Auto-Submitted")
                .is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"))
                || message.header_raw("X-Autoreply").is_some()
                || message.header_raw("X-Autorespond").is_some();
            if auto {
                return Ok(Finding::Other("auto_reply"));
            }
            // A person (or their mail client) writing to unsubscribe+<token>@: only the
            // addresses the mail was sent to count, not a quoted mail in its body.
            let addressed: String = ["Delivered-To", "X-Original-To", "To", "Cc"]
                .iter()
                .filter_map(|h| message.header_raw(*h))
                .collect::<Vec<_>>()
                .join("\n");
            let tokens = tokens_after(&addressed, "unsubscribe");
            if tokens.is_empty() {
                // An answer to one of our mails (its Message-ID, `<…bantin@…>`): a person.
                let answers = ["In-Reply-To", "References"]
                    .iter()
                    .filter_map(|h| message.header_raw(*h))
                    .any(|v| v.contains(".bantin@"));
                if answers {
                    let from = message
                        .from()
                        .and_then(|f| f.first())
                        .and_then(|a| a.address())
                        .unwrap_or("?")
                        .to_owned();
                    return Ok(Finding::Reply { from });
                }
                return Ok(Finding::Other("other"));
            }
            for token in tokens {
                if let Some(email) = address_of(store, signer, token)? {
                    return Ok(Finding::Unsubscribe { email });
                }
            }
            Ok(Finding::Forged)
        }
    }
}

/// Acts on one message, once: returns what it was. The effect is flushed before returning.
pub fn process(
    raw: &[u8],
    store: &Store,
    clock: &Clock,
    signer: &Signer,
    local: &str,
) -> Result<Finding, MailError> {
    let digest = crate::token::hex(&Sha256::digest(raw)[..16]);
    let finding = classify(raw, store, signer, local)?;
    if store.inbox_seen(&digest)? {
        return Ok(finding); // acted on before a crash: nothing more
    }
    let now_s = clock.now_s();
    let changed = |email: &str, change: &dyn Fn(&mut crate::subscriber::Subscriber)| {
        if let Some(mut sub) = store.subscriber(email)? {
            change(&mut sub);
            store.put_subscriber(&sub)?;
        }
        Ok::<(), MailError>(())
    };
    match &finding {
        Finding::HardBounce { email, status } => changed(email, &|sub| {
            if sub.state != SubState::Bounced && sub.state != SubState::Complained {
                sub.end(SubState::Bounced, now_s);
                sub.bounce = Some(format!("delivery status notification: {status}"));
                tracing::warn!(email = sub.email, status, "address marked bounced");
            }
        })?,
        Finding::SoftBounce { email, status } => changed(email, &|sub| {
            if sub.state == SubState::Active
                && sub.soft_bounce(
                    &format!("delivery status notification: {status}"),
                    now_s * 1000,
                    true,
                )
            {
                sub.end(SubState::Bounced, now_s);
                sub.bounce = Some(format!("mailbox full for days: {status}"));
                tracing::warn!(
                    email = sub.email,
                    "address marked bounced after soft bounces"
                );
            }
        })?,
        Finding::Complaint { email } => changed(email, &|sub| {
            if sub.state != SubState::Complained {
                sub.end(SubState::Complained, now_s);
                tracing::warn!(
                    email = sub.email,
                    "spam complaint: unsubscribed from everything"
                );
            }
        })?,
        Finding::Unsubscribe { email } => changed(email, &|sub| {
            if !matches!(sub.state, SubState::Unsubscribed | SubState::Complained) {
                sub.end(SubState::Unsubscribed, now_s);
                tracing::info!(email = sub.email, "unsubscribed by mail");
            }
        })?,
        Finding::Forged => tracing::warn!("inbox: a message with a token bantin did not sign"),
        Finding::Reply { from } => tracing::info!(
            from,
            "inbox: a person answered a mail bantin sent; read it (an unsubscribe asked for in \
             words is done with `bantin subscribers remove`)"
        ),
        Finding::Other(_) => {}
    }
    store.inbox_done(&digest, finding.kind(), clock.now_ms())?;
    store.flush()?;
    Ok(finding)
}

/// The messages waiting in a Maildir's `new/`, oldest name first.
pub fn waiting(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let new = dir.join("new");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&new) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// Moves a handled message from `new/` to `cur/` (marked seen, as Maildir readers do).
pub fn file_away(dir: &Path, path: &Path) -> std::io::Result<()> {
    let cur = dir.join("cur");
    std::fs::create_dir_all(&cur)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let name = if name.contains(":2,") {
        name.into_owned()
    } else {
        format!("{name}:2,S")
    };
    std::fs::rename(path, cur.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_after_their_local_part() {
        let text = "Delivered-To: Bounces+0a1b2c3d4e5f6a7b-1234567890@hdnd.test\n\
                    Return-Path: <bounces+ffff0000ffff0000-abcdefabcd@hdnd.test>\n\
                    bounces+nothex@x bounces+@x";
        assert_eq!(
            tokens_after(text, "bounces"),
            ["0a1b2c3d4e5f6a7b-1234567890", "ffff0000ffff0000-abcdefabcd"]
        );
    }

    #[test]
    fn delivery_status_fields_per_recipient() {
        let fields = "Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; a@x.vn\n\
                      Action: failed\nStatus: 5.1.1 (bad)\n\nFinal-Recipient: rfc822; b@x.vn\n\
                      Action: delayed\nStatus: 4.2.2\n";
        assert_eq!(
            delivery_status(fields),
            [
                ("failed".to_string(), "5.1.1".to_string()),
                ("delayed".to_string(), "4.2.2".to_string())
            ]
        );
    }
}

//! Where mail goes: an SMTP relay (with its own connection pool), `.eml` files in a folder,
//! or the local sendmail command. Each answers a send with a typed [`SendError`].

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::{AsyncSendmailTransport, AsyncTransport, Tokio1Executor};

use super::MailError;
use crate::config::Config;

/// Connections idle longer than this are closed rather than reused (servers drop idle
/// clients after a while).
const SMTP_IDLE: Duration = Duration::from_secs(30);

/// A mail the relay accepted over a pooled connection, until its outcome is on record: the
/// sender says so ([`Receipt::recorded`]) or gives up (dropping it). The next mail on that
/// connection waits for it before its body and final dot, so a connection has at most one
/// mail taken by the relay and not on record: what a crash may send again. The sender
/// meanwhile gives the connection back, and the next mail's envelope (MAIL FROM, RCPT TO,
/// DATA) goes out while the outcome is written.
pub struct Receipt(tokio::sync::watch::Sender<Option<bool>>);

impl Receipt {
    fn new() -> (Receipt, Pending) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (Receipt(tx), Pending(rx))
    }

    /// The mail's outcome is on disk.
    pub fn recorded(self) {
        self.0.send_replace(Some(true));
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if self.0.borrow().is_none() {
            self.0.send_replace(Some(false));
        }
    }
}

/// The other end of a [`Receipt`], kept with the connection.
struct Pending(tokio::sync::watch::Receiver<Option<bool>>);

/// Waits until the last mail of a connection is on record (`true`), or its sender gave up.
async fn settled(pending: &mut Option<Pending>) -> bool {
    match pending.take() {
        None => true,
        Some(Pending(mut rx)) => matches!(
            rx.wait_for(Option::is_some).await.as_deref(),
            Ok(Some(true))
        ),
    }
}

/// Why a mail could not be sent, as the retry policy needs it (RFC 5321 and RFC 3463: what
/// a reply means depends on the phase it answers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another try later: 4xx, timeouts, a connection dropped mid-mail, a folder not
    /// writable.
    #[error("{0}")]
    Temporary(String),
    /// The mailbox is full (452, 4.2.2, 5.2.2, 552 at RCPT): tried again later; the address
    /// bounces only after repeated soft bounces over days.
    #[error("{0}")]
    SoftBounce(String),
    /// The server refused the address for good (5.1.x, 5.2.1, or 550/551/553 at RCPT):
    /// the address bounces.
    #[error("{0}")]
    Bounced(String),
    /// The server refused this message (5xx after DATA, or a 5xx at RCPT that does not name
    /// the address): tried once more, then given up; the subscriber stays. The same refusal
    /// for several recipients in a row means the relay refuses us: delivery pauses.
    #[error("{0}")]
    Rejected(String),
    /// The failure is ours or the relay's, not this mail's: cannot connect, a refusal at
    /// the greeting, EHLO, STARTTLS, AUTH or MAIL FROM, TLS. Delivery pauses as a whole; no
    /// attempt is counted.
    #[error("{0}")]
    Ours(String),
    /// bantin is stopping: the mail was not given to the relay, and stays as it was.
    #[error("bantin is stopping")]
    Stopping,
    /// This mail cannot be made (our side could not render it): the delivery fails, the
    /// subscriber stays.
    #[error("{0}")]
    Failed(String),
    /// The mail has an 8-bit body and the relay no longer takes one: it is made again in
    /// 7 bits and sent at once.
    #[error("smtp: the relay does not take 8-bit bodies")]
    NeedsSevenBit,
}

/// The step of an SMTP exchange a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect, greeting, EHLO, STARTTLS, AUTH.
    Connect,
    MailFrom,
    Rcpt,
    /// The DATA command.
    Data,
    /// The message and the reply to its final dot.
    DataEnd,
}

/// What a negative reply `code` (with its text, which may start with an enhanced status
/// code) means at `phase`.
pub fn classify(phase: Phase, code: u16, text: &str) -> SendError {
    let shown = format!("smtp: {code} {text} (at {})", phase_name(phase));
    let enhanced = text
        .split_whitespace()
        .next()
        .filter(|w| {
            w.len() >= 5
                && w.split('.').count() == 3
                && w.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or("");
    let mailbox_full = code == 452 || code == 552 || enhanced == "4.2.2" || enhanced == "5.2.2";
    match phase {
        // Refused before any recipient was named (421 busy, 530 authentication required,
        // 535 bad credentials, 554 at the greeting): the relay refuses us, not this mail.
        Phase::Connect | Phase::MailFrom => SendError::Ours(shown),
        Phase::Rcpt if mailbox_full => SendError::SoftBounce(shown),
        Phase::Rcpt if code >= 500 => {
            let address_level = enhanced.starts_with("5.1.")
                || enhanced == "5.2.1"
                || (enhanced.is_empty() && matches!(code, 550 | 551 | 553));
            if address_level {
                SendError::Bounced(shown)
            } else {
                SendError::Rejected(shown)
            }
        }
        Phase::DataEnd if mailbox_full => SendError::SoftBounce(shown),
        Phase::Data | Phase::DataEnd if code >= 500 => SendError::Rejected(shown),
        _ => SendError::Temporary(shown),
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Connect => "connect",
        Phase::MailFrom => "MAIL FROM",
        Phase::Rcpt => "RCPT TO",
        Phase::Data => "DATA",
        Phase::DataEnd => "end of DATA",
    }
}

/// Where mail goes.
pub enum Transport {
    /// `.eml` files in a folder (the default: needs no server).
    File(PathBuf),
    Smtp(Box<SmtpPool>),
    /// The local sendmail program, and how long it may take for one mail.
    Sendmail(AsyncSendmailTransport<Tokio1Executor>, Duration),
}

impl Transport {
    pub fn from_config(config: &Config, utf8: super::RelaySays) -> Result<Transport, MailError> {
        let mail = &config.mail;
        match mail.transport.as_str() {
            "file" => Ok(Transport::File(mail.dir.clone())),
            "sendmail" => Ok(Transport::Sendmail(
                AsyncSendmailTransport::<Tokio1Executor>::new_with_command(&mail.sendmail_command),
                Duration::from_secs(
                    mail.smtp
                        .timeout_secs
                        .unwrap_or(mail.smtp.data_timeout_secs)
                        .max(1),
                ),
            )),
            "smtp" => Ok(Transport::Smtp(Box::new(SmtpPool::from_config(
                config, utf8,
            )?))),
            other => Err(MailError::Config(format!(
                "mail.transport '{other}' is not one of file, smtp, sendmail"
            ))),
        }
    }

    /// Whether a message may have an 8-bit body: only over SMTP to a relay that advertised
    /// 8BITMIME (a file is read by anything; sendmail may pass it to a relay that does not).
    pub async fn eight_bit(&self) -> bool {
        match self {
            Transport::Smtp(pool) => pool.eight_bit().await,
            Transport::File(_) | Transport::Sendmail(..) => false,
        }
    }

    /// How many mails may be on their way at once with `concurrency` connections: over
    /// SMTP, twice as many, so that the next mail of a connection starts while the last
    /// one's outcome is written (see [`Receipt`]).
    pub fn senders(&self, concurrency: usize) -> usize {
        match self {
            Transport::Smtp(_) => concurrency * 2,
            Transport::File(_) | Transport::Sendmail(..) => concurrency,
        }
    }

    /// Opens no more connections: bantin is stopping. A mail not yet on one gets
    /// [`SendError::Stopping`].
    pub fn close(&self) {
        if let Transport::Smtp(pool) = self {
            pool.close();
        }
    }

    /// Sends one formatted message; `name` names the file of the `file` transport. Over
    /// SMTP, the sender says when its outcome is on record (see [`Receipt`]).
    pub async fn send(
        &self,
        envelope: &Envelope,
        bytes: &[u8],
        name: &str,
    ) -> Result<Option<Receipt>, SendError> {
        match self {
            Transport::File(dir) => {
                let path = dir.join(format!("{name}.eml"));
                let dir = dir.clone();
                let bytes = bytes.to_vec();
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    crate::output::write_atomic_private(&path, &bytes)
                })
                .await
                .map_err(|e| SendError::Temporary(e.to_string()))?
                .map(|_| None)
                .map_err(|e| SendError::Temporary(format!("cannot write to mail.dir: {e}")))
            }
            Transport::Smtp(pool) => pool.send(envelope, bytes).await.map(Some),
            // A sendmail that hangs must not hold its slot for ever.
            Transport::Sendmail(sendmail, limit) => {
                match tokio::time::timeout(*limit, sendmail.send_raw(envelope, bytes)).await {
                    Ok(sent) => sent
                        .map(|_| None)
                        .map_err(|e| SendError::Temporary(format!("sendmail: {e}"))),
                    Err(_) => Err(SendError::Temporary(format!(
                        "sendmail: no answer within {limit:?}"
                    ))),
                }
            }
        }
    }
}

/// Per-phase timeouts of an SMTP exchange (RFC 5321 section 4.5.3.2 gives the defaults).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect, greeting, EHLO, STARTTLS, AUTH.
    pub connect: Duration,
    /// MAIL FROM, RCPT TO, DATA.
    pub command: Duration,
    /// Sending the message and the reply to its final dot (a content filter may be slow).
    pub data_end: Duration,
}

/// SMTP connections kept open between mails. Each plain connection has TCP_NODELAY, so the
/// end-of-data line is not held back behind the message body (a 40 ms stall per mail).
///
/// A relay that advertises PIPELINING (RFC 2920) gets MAIL FROM, RCPT TO and DATA in one
/// write, and the message with its final dot in a second: two round trips per mail instead
/// of four. One that advertises 8BITMIME (RFC 6152) may be sent 8-bit bodies.
pub struct SmtpPool {
    host: String,
    port: u16,
    /// `tls = "tls"`: TLS from the first byte (SMTPS); otherwise STARTTLS when `tls` is set.
    implicit_tls: bool,
    tls: Option<TlsParameters>,
    credentials: Option<Credentials>,
    timeouts: Timeouts,
    hello: ClientId,
    /// A connection is closed after this many messages (relays limit them too).
    max_per_connection: usize,
    /// Connections in use at once: `mail.concurrency` (senders may be more, see
    /// [`Transport::senders`]).
    busy: tokio::sync::Semaphore,
    /// Open connections, when each was last used, and how many mails each carried.
    idle: Mutex<Vec<Pooled>>,
    /// Noted at each connection: whether the relay takes non-ASCII addresses.
    utf8: super::RelaySays,
    /// Noted at each connection: whether the relay takes 8-bit bodies.
    eight_bit: super::RelaySays,
}

struct Pooled {
    conn: AsyncSmtpConnection,
    since: Instant,
    sent: usize,
    /// The relay advertised PIPELINING on this connection.
    pipelining: bool,
    /// The last mail it carried, until it is on record.
    pending: Option<Pending>,
}

/// The relay login of `mail.smtp`, its password read from `password_file` or
/// `$BANTIN_SMTP_PASSWORD`; `None` without a username. `check` asks too, so that a missing
/// password is found before `run` refuses to start.
pub fn credentials(config: &Config) -> Result<Option<Credentials>, MailError> {
    let smtp = &config.mail.smtp;
    let Some(user) = &smtp.username else {
        return Ok(None);
    };
    let password = match (&smtp.password_file, std::env::var("BANTIN_SMTP_PASSWORD")) {
        (Some(file), _) => std::fs::read_to_string(file)
            .map_err(|e| {
                MailError::Config(format!(
                    "cannot read mail.smtp.password_file '{}': {e}",
                    file.display()
                ))
            })?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        (None, Ok(p)) => p,
        (None, Err(_)) => {
            return Err(MailError::Config(
                "mail.smtp.username is set but neither mail.smtp.password_file nor \
                 $BANTIN_SMTP_PASSWORD is"
                    .into(),
            ));
        }
    };
    Ok(Some(Credentials::new(user.clone(), password)))
}

impl SmtpPool {
    fn from_config(config: &Config, utf8: super::RelaySays) -> Result<SmtpPool, MailError> {
        let smtp = &config.mail.smtp;
        let credentials = credentials(config)?;
        let tls = match smtp.tls.as_str() {
            "none" => None,
            _ => Some(TlsParameters::new(smtp.host.clone()).map_err(|e| {
                MailError::Config(format!("mail.smtp: TLS for '{}': {e}", smtp.host))
            })?),
        };
        let secs = |phase: u64| Duration::from_secs(smtp.timeout_secs.unwrap_or(phase).max(1));
        Ok(SmtpPool {
            host: smtp.host.clone(),
            port: smtp.port,
            implicit_tls: smtp.tls == "tls",
            tls,
            credentials,
            timeouts: Timeouts {
                connect: secs(smtp.connect_timeout_secs),
                command: secs(smtp.command_timeout_secs),
                data_end: secs(smtp.data_timeout_secs),
            },
            hello: match &smtp.helo_name {
                Some(name) => ClientId::Domain(name.clone()),
                None => ClientId::default(),
            },
            max_per_connection: smtp.max_messages_per_connection.max(1),
            busy: tokio::sync::Semaphore::new(config.mail.concurrency.max(1)),
            idle: Mutex::default(),
            utf8,
            eight_bit: super::RelaySays::default(),
        })
    }

    /// Whether the relay takes 8-bit bodies, as it said at the last connection; before the
    /// first, a connection is opened to ask (and kept for the mail). A relay that cannot be
    /// reached gets 7 bits: that mail waits anyway.
    pub async fn eight_bit(&self) -> bool {
        if self.eight_bit.get().is_none() {
            // Counted as a connection in use: senders waiting for the answer open no more
            // than `mail.concurrency` connections between them.
            let Ok(_busy) = self.busy.acquire().await else {
                return false; // stopping
            };
            if self.eight_bit.get().is_none()
                && let Ok(pooled) = self.fresh().await
            {
                self.idle.lock().expect("smtp pool").push(pooled);
            }
        }
        self.eight_bit.get() == Some(true)
    }

    /// A new connection, greeted, secured and authenticated, and whether it pipelines.
    async fn connect(&self) -> Result<(AsyncSmtpConnection, bool), SendError> {
        let ours = |e: lettre::transport::smtp::Error| reply_error(Phase::Connect, &e);
        let open = async {
            let mut conn = if self.implicit_tls {
                AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(self.timeouts.connect),
                    &self.hello,
                    self.tls.clone(),
                    None,
                )
                .await
                .map_err(ours)?
            } else {
                let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| {
                        SendError::Ours(format!(
                            "smtp: cannot connect to {}:{}: {e}",
                            self.host, self.port
                        ))
                    })?;
                let _ = stream.set_nodelay(true);
                let mut conn =
                    AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                        .await
                        .map_err(ours)?;
                if let Some(tls) = &self.tls {
                    conn.starttls(tls.clone(), &self.hello)
                        .await
                        .map_err(ours)?;
                }
                conn
            };
            // lettre keeps only the extensions it uses itself; PIPELINING is read from a
            // second EHLO, before AUTH (an EHLO after it may forget the authentication).
            let ehlo = conn
                .command(Ehlo::new(self.hello.clone()))
                .await
                .map_err(ours)?;
            let pipelining = ehlo.message().any(|line| {
                line.split_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case("PIPELINING"))
            });
            if let Some(credentials) = &self.credentials {
                conn.auth(
                    lettre::transport::smtp::authentication::DEFAULT_MECHANISMS,
                    credentials,
                )
                .await
                .map_err(ours)?;
            }
            Ok((conn, pipelining))
        };
        match tokio::time::timeout(self.timeouts.connect, open).await {
            Ok(result) => result.inspect(|(conn, _)| {
                let info = conn.server_info();
                self.utf8
                    .set(info.supports_feature(Extension::SmtpUtfEight));
                self.eight_bit
                    .set(info.supports_feature(Extension::EightBitMime));
            }),
            Err(_) => Err(SendError::Ours(format!(
                "smtp: {}:{} did not greet us within {:?}",
                self.host, self.port, self.timeouts.connect
            ))),
        }
    }

    /// A pooled connection that is still fit for use, if any.
    fn take_idle(&self) -> Option<Pooled> {
        let mut idle = self.idle.lock().expect("smtp pool");
        while let Some(pooled) = idle.pop() {
            if pooled.since.elapsed() < SMTP_IDLE && !pooled.conn.has_broken() {
                return Some(pooled);
            }
        }
        None
    }

    /// No more connections: bantin is stopping (the mails on their way finish).
    fn close(&self) {
        self.busy.close();
    }

    async fn send(&self, envelope: &Envelope, bytes: &[u8]) -> Result<Receipt, SendError> {
        let Ok(_busy) = self.busy.acquire().await else {
            return Err(SendError::Stopping);
        };
        let (mut pooled, mut reused) = match self.take_idle() {
            Some(p) => (p, true),
            None => (self.fresh().await?, false),
        };
        if pooled.sent >= self.max_per_connection {
            // Closed only once its last mail is on record (see [`Receipt`]), and before
            // the next is opened (QUIT leaves the socket to its drop).
            settled(&mut pooled.pending).await;
            let _ = pooled.conn.quit().await;
            drop(pooled);
            pooled = self.fresh().await?;
            reused = false;
        }
        let mut result = self.exchange(&mut pooled, envelope, bytes).await;
        if reused && matches!(result, Err(Stale(_))) {
            // The relay closed the idle connection: a new one at once, not a retry.
            settled(&mut pooled.pending).await;
            drop(pooled);
            pooled = self.fresh().await?;
            result = self.exchange(&mut pooled, envelope, bytes).await;
        }
        match result {
            Ok(()) => {
                pooled.sent += 1;
                pooled.since = Instant::now();
                let (receipt, pending) = Receipt::new();
                pooled.pending = Some(pending);
                self.idle.lock().expect("smtp pool").push(pooled);
                Ok(receipt)
            }
            // A recipient refused: the session is reset and kept (a relay does not like a
            // new connection after every unknown address).
            Err(Exchange::Refused(e)) => {
                let reset = tokio::time::timeout(
                    self.timeouts.command,
                    pooled.conn.command(lettre::transport::smtp::commands::Rset),
                )
                .await;
                if matches!(reset, Ok(Ok(_))) {
                    pooled.since = Instant::now();
                    self.idle.lock().expect("smtp pool").push(pooled);
                } else {
                    settled(&mut pooled.pending).await;
                }
                Err(e)
            }
            // The connection is dropped, not QUIT: a relay that hangs would not answer that
            // either. Its last mail is on record first (see [`Receipt`]).
            Err(e) => {
                settled(&mut pooled.pending).await;
                Err(e.into_send_error())
            }
        }
    }

    async fn fresh(&self) -> Result<Pooled, SendError> {
        let (conn, pipelining) = self.connect().await?;
        Ok(Pooled {
            conn,
            since: Instant::now(),
            sent: 0,
            pipelining,
            pending: None,
        })
    }

    /// One mail over an open connection, each phase under its own timeout.
    async fn exchange(
        &self,
        pooled: &mut Pooled,
        envelope: &Envelope,
        bytes: &[u8],
    ) -> Result<(), Exchange> {
        let conn = &mut pooled.conn;
        let mut options = Vec::new();
        let non_ascii = |a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii();
        if envelope.from().is_some_and(non_ascii) || envelope.to().iter().any(non_ascii) {
            options.push(MailParameter::SmtpUtfEight);
        }
        if !bytes.is_ascii() {
            if !conn.server_info().supports_feature(Extension::EightBitMime) {
                // Made for another relay than this one (it changed its mind, or its name
                // now points elsewhere): made again in 7 bits.
                return Err(Exchange::Failed(SendError::NeedsSevenBit));
            }
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let command = self.timeouts.command;
        let mail = Mail::new(envelope.from().cloned(), options);
        let first = if pooled.pipelining {
            // MAIL FROM, every RCPT TO and DATA in one write (RFC 2920); the replies are
            // read in order.
            let mut group = mail.to_string();
            for to in envelope.to() {
                group.push_str(&Rcpt::new(to.clone(), vec![]).to_string());
            }
            group.push_str(&Data.to_string());
            tokio::time::timeout(command, conn.command(Raw(group))).await
        } else {
            tokio::time::timeout(command, conn.command(mail)).await
        };
        // The first reply tells whether the relay still holds the connection: no reply at
        // all, or 421 (closing), means it went while idle.
        match first {
            Err(_) => return Err(Stale(None)),
            Ok(Err(e)) if e.status().is_none() => return Err(Stale(None)),
            // 421: closing. On a connection kept idle, it went meanwhile; on a new one, the
            // relay refuses us now, and says why.
            Ok(Err(e)) if e.status().is_some_and(|c| c.to_string() == "421") => {
                return Err(Stale(Some(reply_error(Phase::MailFrom, &e))));
            }
            Ok(Err(e)) => return Err(Exchange::Failed(reply_error(Phase::MailFrom, &e))),
            Ok(Ok(_)) => {}
        }
        if pooled.pipelining {
            // Every reply is read, whatever came before, so that the session stays in step.
            let mut refused = None;
            for _ in envelope.to() {
                match step(command, Phase::Rcpt, conn.read_response()).await {
                    Ok(()) => {}
                    Err(Exchange::Answered(e)) => {
                        refused.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            match (
                step(command, Phase::Data, conn.read_response()).await,
                refused,
            ) {
                (Ok(()), None) => {}
                // DATA taken though a recipient was refused: the session cannot be reset.
                (Ok(()), Some(e)) => return Err(Exchange::Failed(e)),
                (Err(Exchange::Answered(_)), Some(e)) => return Err(Exchange::Refused(e)),
                (Err(_), Some(e)) => return Err(Exchange::Failed(e)),
                (Err(e), None) => return Err(e),
            }
        } else {
            for to in envelope.to() {
                match step(
                    command,
                    Phase::Rcpt,
                    conn.command(Rcpt::new(to.clone(), vec![])),
                )
                .await
                {
                    Err(Exchange::Answered(e)) => return Err(Exchange::Refused(e)),
                    other => other?,
                }
            }
            step(command, Phase::Data, conn.command(Data)).await?;
        }
        // The mail before it on this connection is on record before this one can be taken.
        if !tokio::time::timeout(self.timeouts.data_end, settled(&mut pooled.pending))
            .await
            .unwrap_or(false)
        {
            return Err(Exchange::Failed(SendError::Temporary(
                "the mail before it on this connection could not be recorded".into(),
            )));
        }
        // The message, dot-stuffed, and its final dot in one write.
        step(
            self.timeouts.data_end,
            Phase::DataEnd,
            conn.command(Stuffed(&as_text(bytes))),
        )
        .await?;
        Ok(())
    }
}

/// Text written to the relay as it is (commands already ended by CRLF).
struct Raw(String);

impl std::fmt::Display for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A composed message as text: it is UTF-8, which is much cheaper to check than to convert
/// lossily (the fallback). Checked with SIMD: byte by byte, the check of a Vietnamese mail
/// sent as 8-bit took 3% of a fan-out's CPU.
fn as_text(message: &[u8]) -> std::borrow::Cow<'_, str> {
    match simdutf8::basic::from_utf8(message) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(message),
    }
}

/// A message as DATA sends it (RFC 5321 section 4.5.2): every line ended by CRLF, a dot that
/// starts a line doubled, and the final `.` line. Written straight into the command lettre
/// sends, without a stuffed copy first.
struct Stuffed<'a>(&'a str);

impl Stuffed<'_> {
    /// Whether every line of the text is ended by CRLF already, as in a composed mail: then
    /// only the dots that begin lines are added, between runs of text written as they are
    /// (one write a line cost several times more).
    fn crlf(&self) -> bool {
        let bytes = self.0.as_bytes();
        bytes.ends_with(b"\n")
            && memchr::memchr_iter(b'\n', bytes).all(|i| i > 0 && bytes[i - 1] == b'\r')
    }

    /// Each line ended by CRLF, a dot that begins one doubled.
    fn by_line(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in self.0.split_inclusive('\n') {
            let line = line.strip_suffix('\n').unwrap_or(line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.starts_with('.') {
                f.write_str(".")?;
            }
            f.write_str(line)?;
            f.write_str("\r\n")?;
        }
        f.write_str(".\r\n")
    }
}

impl std::fmt::Display for Stuffed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.crlf() {
            return self.by_line(f);
        }
        static DOT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n."));
        let mut rest = self.0;
        if rest.starts_with('.') {
            f.write_str(".")?;
        }
        while let Some(i) = DOT.find(rest.as_bytes()) {
            // Up to the line's dot, then the dot again: it is written with what follows.
            f.write_str(&rest[..=i])?;
            f.write_str(".")?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)?;
        f.write_str(".\r\n")
    }
}

/// How one exchange ended, when it did not deliver.
enum Exchange {
    /// The pooled connection was closed by the relay before this mail began: no reply, or
    /// 421 (closing), which says why when the connection was new.
    Stale(Option<SendError>),
    Failed(SendError),
    /// The relay refused a recipient and said so: the session can be reset and kept.
    Refused(SendError),
    /// A command the relay answered with a refusal (not a timeout or a dropped connection):
    /// the session is still in step.
    Answered(SendError),
}

use Exchange::Stale;

impl Exchange {
    fn into_send_error(self) -> SendError {
        match self {
            Stale(Some(e)) => e,
            Stale(None) => SendError::Temporary("smtp: the connection was closed".into()),
            Exchange::Failed(e) | Exchange::Refused(e) | Exchange::Answered(e) => e,
        }
    }
}

impl From<SendError> for Exchange {
    fn from(e: SendError) -> Self {
        Exchange::Failed(e)
    }
}

/// Runs one command of `phase` under `limit`.
async fn step<F>(limit: Duration, phase: Phase, command: F) -> Result<(), Exchange>
where
    F: std::future::Future<
            Output = Result<
                lettre::transport::smtp::response::Response,
                lettre::transport::smtp::Error,
            >,
        >,
{
    match tokio::time::timeout(limit, command).await {
        Err(_) => Err(Exchange::Failed(SendError::Temporary(format!(
            "smtp: no answer within {limit:?} (at {})",
            phase_name(phase)
        )))),
        Ok(Err(e)) if e.status().is_some() => Err(Exchange::Answered(reply_error(phase, &e))),
        Ok(Err(e)) => Err(Exchange::Failed(reply_error(phase, &e))),
        Ok(Ok(_)) => Ok(()),
    }
}

/// What an error of lettre at `phase` means: a negative reply is classified by its code
/// and text; anything else (the connection dropped, TLS) is temporary mid-mail and ours
/// while connecting.
fn reply_error(phase: Phase, e: &lettre::transport::smtp::Error) -> SendError {
    match e.status() {
        Some(code) => {
            let code: u16 = code.to_string().parse().unwrap_or(0);
            let text = std::error::Error::source(e)
                .map(|s| s.to_string())
                .unwrap_or_default();
            classify(phase, code, &text)
        }
        None if phase == Phase::Connect || e.is_tls() => {
            SendError::Ours(format!("smtp: {e} (at {})", phase_name(phase)))
        }
        None => SendError::Temporary(format!("smtp: {e} (at {})", phase_name(phase))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(phase: Phase, code: u16, text: &str) -> &'static str {
        match classify(phase, code, text) {
            SendError::Temporary(_) => "temporary",
            SendError::SoftBounce(_) => "soft",
            SendError::Bounced(_) => "bounced",
            SendError::Rejected(_) => "rejected",
            SendError::Ours(_) => "ours",
            SendError::Failed(_) => "failed",
            SendError::NeedsSevenBit => "7bit",
            SendError::Stopping => "stopping",
        }
    }

    fn stuffed(message: &[u8]) -> String {
        Stuffed(&as_text(message)).to_string()
    }

    #[test]
    fn lines_are_crlf_and_leading_dots_doubled() {
        assert_eq!(stuffed(b"a\r\nb\r\n"), "a\r\nb\r\n.\r\n");
        assert_eq!(stuffed(b"a\r\n.b\r\n"), "a\r\n..b\r\n.\r\n");
        assert_eq!(stuffed(b".a\nb"), "..a\r\nb\r\n.\r\n");
        assert_eq!(stuffed("ạ\r\n".as_bytes()), "ạ\r\n.\r\n");
        assert_eq!(stuffed(b"a\r\nb\n"), "a\r\nb\r\n.\r\n");
        assert_eq!(stuffed(b"a\r\n.\r\n"), "a\r\n..\r\n.\r\n");
        assert_eq!(stuffed(b"\n"), "\r\n.\r\n");
        assert_eq!(stuffed(b""), ".\r\n");
    }

    #[test]
    fn a_text_sent_as_it_is_reads_as_stuffed_line_by_line() {
        struct ByLine<'a>(Stuffed<'a>);
        impl std::fmt::Display for ByLine<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.by_line(f)
            }
        }
        let samples = [
            "a\r\nb\r\n",
            "\r\n",
            "a\rb\r\n",
            "Kỳ họp\r\n\r\n. dấu chấm\r\n.wrap {}\r\n..\r\n",
            ".\r\n.\r\n",
            "a.\r\n.b",
            "a\r\n\n",
            "x\r\ny",
        ];
        let mut crlf = 0;
        for text in samples {
            let stuffed = Stuffed(text);
            crlf += usize::from(stuffed.crlf());
            assert_eq!(
                stuffed.to_string(),
                ByLine(Stuffed(text)).to_string(),
                "{text:?}"
            );
        }
        assert_eq!(crlf, 5, "all but the last three end every line with CRLF");
    }

    #[test]
    fn only_address_level_refusals_at_rcpt_bounce() {
        assert_eq!(class(Phase::Rcpt, 550, "5.1.1 no such user"), "bounced");
        assert_eq!(class(Phase::Rcpt, 550, "no such user"), "bounced");
        assert_eq!(class(Phase::Rcpt, 551, "user not local"), "bounced");
        assert_eq!(
            class(Phase::Rcpt, 553, "mailbox name not allowed"),
            "bounced"
        );
        assert_eq!(class(Phase::Rcpt, 550, "5.2.1 mailbox disabled"), "bounced");
        assert_eq!(
            class(Phase::Rcpt, 554, "5.7.1 relay access denied"),
            "rejected"
        );
        assert_eq!(class(Phase::Rcpt, 550, "5.7.1 policy"), "rejected");
        assert_eq!(class(Phase::Rcpt, 450, "4.2.1 greylisted"), "temporary");
    }

    #[test]
    fn a_full_mailbox_is_a_soft_bounce() {
        assert_eq!(class(Phase::Rcpt, 452, "4.2.2 mailbox full"), "soft");
        assert_eq!(class(Phase::Rcpt, 552, "5.2.2 mailbox full"), "soft");
        assert_eq!(class(Phase::Rcpt, 550, "5.2.2 over quota"), "soft");
        assert_eq!(class(Phase::DataEnd, 552, "5.2.2 over quota"), "soft");
    }

    #[test]
    fn refusals_before_a_recipient_are_ours() {
        assert_eq!(
            class(Phase::Connect, 535, "5.7.8 authentication failed"),
            "ours"
        );
        assert_eq!(
            class(Phase::MailFrom, 530, "5.7.0 authentication required"),
            "ours"
        );
        assert_eq!(class(Phase::Connect, 554, "no service"), "ours");
        assert_eq!(class(Phase::Connect, 421, "busy"), "ours");
    }

    #[test]
    fn a_refused_message_is_rejected_not_bounced() {
        assert_eq!(class(Phase::DataEnd, 554, "5.7.1 spam"), "rejected");
        assert_eq!(class(Phase::Data, 554, "no valid recipients"), "rejected");
        assert_eq!(class(Phase::DataEnd, 451, "4.3.0 try later"), "temporary");
    }
}

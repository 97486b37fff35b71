//! A scripted SMTP server for tests: real SMTP over TCP on 127.0.0.1, with a script that
//! decides the answer to each message (accept, 451, 550, drop the connection, hang).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server does at the end of a message's DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    /// 451: try again later.
    Temporary,
    /// 550: no such mailbox.
    Permanent,
    /// Close the connection without answering.
    Drop,
    /// Never answer (until the server stops).
    Hang,
    /// Answered with the `data_end` reply of [`Replies`].
    Refused,
}

/// Replies that a test sets (and changes while the server runs) to play a relay that
/// refuses us or some of the recipients. The default accepts everything.
#[derive(Debug, Clone, Default)]
pub struct Replies {
    /// Offer AUTH in EHLO and answer it with this reply (`235 ...` accepts).
    pub auth: Option<String>,
    /// The reply to MAIL FROM instead of `250`.
    pub mail_from: Option<String>,
    /// The reply to RCPT TO for these addresses instead of `250`.
    pub rcpt: std::collections::HashMap<String, String>,
    /// The reply at the end of DATA instead of the script's.
    pub data_end: Option<String>,
    /// Close a connection idle this long (relays do).
    pub idle_close: Option<Duration>,
    /// Leave 8BITMIME out of the EHLO reply.
    pub no_eight_bit: bool,
    /// Leave PIPELINING out of the EHLO reply.
    pub no_pipelining: bool,
}

/// One message as the server received it, with what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope sender (MAIL FROM).
    pub from: String,
    /// The parameters of MAIL FROM after the address (`BODY=8BITMIME`).
    pub from_params: String,
    /// Commands of this mail (MAIL FROM, RCPT TO) already followed by the next one when
    /// read: the client did not wait for their replies (pipelining).
    pub pipelined: usize,
    pub to: Vec<String>,
    pub data: String,
    pub action: Action,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        super::mail::header(&self.data, name)
    }
}

type Script = Box<dyn Fn(usize, &str) -> Action + Send + Sync>;

pub struct SmtpServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub replies: Arc<Mutex<Replies>>,
    /// Connections opened so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Mails begun so far (MAIL FROM commands), refused or not.
    pub mails_begun: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections the server closed because they sat idle.
    pub idle_closed: Arc<std::sync::atomic::AtomicUsize>,
    /// The name each EHLO gave.
    pub helos: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl SmtpServer {
    /// Accepts everything.
    pub fn start() -> SmtpServer {
        SmtpServer::with_script(|_, _| Action::Accept)
    }

    /// `script(n, data)` answers the n-th message (from 0) whose DATA is `data`.
    pub fn with_script(
        script: impl Fn(usize, &str) -> Action + Send + Sync + 'static,
    ) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        SmtpServer::on(listener, Box::new(script), Duration::ZERO)
    }

    /// Accepts everything, answering each message after `delay` (a slow server).
    pub fn slow(delay: Duration) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        SmtpServer::on(listener, Box::new(|_, _| Action::Accept), delay)
    }

    /// Starts on a given address (to come back on a port that was down).
    pub fn start_at(addr: SocketAddr) -> SmtpServer {
        let listener = TcpListener::bind(addr).unwrap();
        SmtpServer::on(listener, Box::new(|_, _| Action::Accept), Duration::ZERO)
    }

    /// Changes the replies while the server runs.
    pub fn set(&self, change: impl FnOnce(&mut Replies)) {
        change(&mut self.replies.lock().unwrap());
    }

    fn on(listener: TcpListener, script: Script, delay: Duration) -> SmtpServer {
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(Replies::default()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mails_begun = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let idle_closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let helos = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        listener.set_nonblocking(true).unwrap();
        {
            let (received, stop) = (received.clone(), stop.clone());
            let (replies, connections, idle_closed) =
                (replies.clone(), connections.clone(), idle_closed.clone());
            let (helos, mails_begun) = (helos.clone(), mails_begun.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            connections.fetch_add(1, Ordering::SeqCst);
                            let peer = Peer {
                                received: received.clone(),
                                replies: replies.clone(),
                                idle_closed: idle_closed.clone(),
                                mails_begun: mails_begun.clone(),
                                helos: helos.clone(),
                                stop: stop.clone(),
                                script: script.clone(),
                                delay,
                            };
                            std::thread::spawn(move || {
                                let _ = session(stream, &peer);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        SmtpServer {
            addr,
            received,
            replies,
            connections,
            mails_begun,
            idle_closed,
            helos,
            stop,
        }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.messages()
            .into_iter()
            .filter(|m| m.action == Action::Accept)
            .collect()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one connection's thread shares with the server.
struct Peer {
    received: Arc<Mutex<Vec<Received>>>,
    replies: Arc<Mutex<Replies>>,
    idle_closed: Arc<std::sync::atomic::AtomicUsize>,
    mails_begun: Arc<std::sync::atomic::AtomicUsize>,
    helos: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    script: Arc<Script>,
    delay: Duration,
}

fn reply(out: &mut TcpStream, text: &str) -> std::io::Result<()> {
    out.write_all(format!("{text}\r\n").as_bytes())
}

fn session(stream: TcpStream, peer: &Peer) -> std::io::Result<()> {
    let (received, stop, delay) = (&peer.received, &*peer.stop, peer.delay);
    let script = &**peer.script;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    out.write_all(b"220 test.local ESMTP scripted\r\n")?;
    let mut to = Vec::new();
    let mut from = String::new();
    let mut from_params = String::new();
    let mut pipelined = 0;
    let mut line = String::new();
    loop {
        let idle_close = peer.replies.lock().unwrap().idle_close;
        if !next_line_within(&mut reader, &mut line, stop, idle_close)? {
            if idle_close.is_some() && !stop.load(Ordering::Relaxed) && line.is_empty() {
                peer.idle_closed.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(());
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        let replies = peer.replies.lock().unwrap().clone();
        // The next command already here: the client did not wait for this one's reply.
        let more = usize::from(!reader.buffer().is_empty());
        if cmd.starts_with("EHLO") {
            let name = line.trim_end().get(5..).unwrap_or("").trim().to_string();
            peer.helos.lock().unwrap().push(name);
            let auth = if replies.auth.is_some() {
                "250-AUTH PLAIN LOGIN\r\n"
            } else {
                ""
            };
            let eight_bit = if replies.no_eight_bit {
                ""
            } else {
                "250-8BITMIME\r\n"
            };
            let pipelining = if replies.no_pipelining {
                ""
            } else {
                "250-PIPELINING\r\n"
            };
            out.write_all(
                format!("250-test.local\r\n{auth}{eight_bit}{pipelining}250 SMTPUTF8\r\n")
                    .as_bytes(),
            )?;
        } else if cmd.starts_with("HELO") {
            out.write_all(b"250 test.local\r\n")?;
        } else if cmd.starts_with("AUTH") {
            reply(
                &mut out,
                replies.auth.as_deref().unwrap_or("503 no auth here"),
            )?;
        } else if cmd.starts_with("MAIL FROM") {
            peer.mails_begun.fetch_add(1, Ordering::SeqCst);
            to.clear();
            pipelined = more;
            let mut words = line.trim_end()[10..].split_whitespace();
            from = words
                .next()
                .unwrap_or("")
                .trim_matches(['<', '>'])
                .to_string();
            from_params = words.collect::<Vec<_>>().join(" ");
            reply(&mut out, replies.mail_from.as_deref().unwrap_or("250 ok"))?;
        } else if cmd.starts_with("RCPT TO") {
            pipelined += more;
            let addr = line.trim_end()[8..]
                .trim()
                .trim_start_matches(':')
                .trim()
                .trim_matches(['<', '>'])
                .to_string();
            match replies.rcpt.get(&addr) {
                Some(text) => reply(&mut out, text)?,
                None => {
                    to.push(addr);
                    out.write_all(b"250 ok\r\n")?;
                }
            }
        } else if cmd == "DATA" && to.is_empty() {
            out.write_all(b"554 5.5.1 no valid recipients\r\n")?;
        } else if cmd == "DATA" {
            out.write_all(b"354 go ahead\r\n")?;
            let mut data = String::new();
            loop {
                if !next_line(&mut reader, &mut line, stop)? {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(
                    line.strip_prefix('.')
                        .filter(|_| line.starts_with(".."))
                        .unwrap_or(&line),
                );
            }
            let n = received.lock().unwrap().len();
            let refused = peer.replies.lock().unwrap().data_end.clone();
            let action = match &refused {
                Some(_) => Action::Refused,
                None => script(n, &data),
            };
            received.lock().unwrap().push(Received {
                from: from.clone(),
                from_params: from_params.clone(),
                pipelined,
                to: to.clone(),
                data,
                action,
            });
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            match action {
                Action::Accept => out.write_all(b"250 queued\r\n")?,
                Action::Temporary => out.write_all(b"451 4.3.0 try again later\r\n")?,
                Action::Permanent => out.write_all(b"554 5.7.1 message refused\r\n")?,
                Action::Refused => reply(&mut out, refused.as_deref().unwrap_or("554 refused"))?,
                Action::Drop => return Ok(()),
                Action::Hang => {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return Ok(());
                }
            }
        } else if cmd == "RSET" || cmd == "NOOP" {
            out.write_all(b"250 ok\r\n")?;
        } else if cmd == "QUIT" {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"502 not implemented\r\n")?;
        }
    }
}

/// Reads the next whole line into `line`, waiting through read timeouts (a partial line is
/// kept); `false` when the peer closed, the server is stopping, or nothing came for `idle`.
fn next_line_within(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
    stop: &AtomicBool,
    idle: Option<Duration>,
) -> std::io::Result<bool> {
    line.clear();
    let started = std::time::Instant::now();
    loop {
        match reader.read_line(line) {
            Ok(0) => return Ok(false),
            Ok(_) if line.ends_with('\n') => return Ok(true),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                if line.is_empty() && idle.is_some_and(|idle| started.elapsed() >= idle) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn next_line(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
    stop: &AtomicBool,
) -> std::io::Result<bool> {
    next_line_within(reader, line, stop, None)
}

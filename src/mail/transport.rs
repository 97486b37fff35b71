//! Where mail goes: an SMTP relay (with its own connection pool), `.eml` files in a folder,
//! or the local sendmail command. Each answers a send with a typed [`SendError`].

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSendmailTransport, AsyncTransport, Tokio1Executor};

use super::MailError;
use crate::config::Config;

/// Connections idle longer than this are closed rather than reused (servers drop idle
/// clients after a while).
const SMTP_IDLE: Duration = Duration::from_secs(30);

/// Why a mail could not be sent, as the retry policy needs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another try later: 4xx, timeouts, dropped connections, a folder not writable.
    #[error("{0}")]
    Temporary(String),
    /// The server refused the address for good (5xx): the address bounces.
    #[error("{0}")]
    Bounced(String),
    /// This mail cannot be sent, but the address is not at fault (our side could not render
    /// it): the delivery fails, the subscriber stays.
    #[error("{0}")]
    Failed(String),
}

/// Where mail goes.
pub enum Transport {
    /// `.eml` files in a folder (the default: needs no server).
    File(PathBuf),
    Smtp(SmtpPool),
    Sendmail(AsyncSendmailTransport<Tokio1Executor>),
}

impl Transport {
    pub fn from_config(config: &Config) -> Result<Transport, MailError> {
        let mail = &config.mail;
        match mail.transport.as_str() {
            "file" => Ok(Transport::File(mail.dir.clone())),
            "sendmail" => Ok(Transport::Sendmail(
                AsyncSendmailTransport::<Tokio1Executor>::new_with_command(&mail.sendmail_command),
            )),
            "smtp" => Ok(Transport::Smtp(SmtpPool::from_config(config)?)),
            other => Err(MailError::Config(format!(
                "mail.transport '{other}' is not one of file, smtp, sendmail"
            ))),
        }
    }

    /// Sends one formatted message; `name` names the file of the `file` transport.
    pub async fn send(
        &self,
        envelope: &Envelope,
        bytes: &[u8],
        name: &str,
    ) -> Result<(), SendError> {
        match self {
            Transport::File(dir) => {
                let path = dir.join(format!("{name}.eml"));
                let dir = dir.clone();
                let bytes = bytes.to_vec();
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    crate::output::write_atomic(&path, &bytes)
                })
                .await
                .map_err(|e| SendError::Temporary(e.to_string()))?
                .map(|_| ())
                .map_err(|e| SendError::Temporary(format!("cannot write to mail.dir: {e}")))
            }
            Transport::Smtp(pool) => pool.send(envelope, bytes).await,
            Transport::Sendmail(sendmail) => sendmail
                .send_raw(envelope, bytes)
                .await
                .map(|_| ())
                .map_err(|e| SendError::Temporary(format!("sendmail: {e}"))),
        }
    }
}

/// SMTP connections kept open between mails. Each plain connection has TCP_NODELAY, so the
/// end-of-data line is not held back behind the message body (a 40 ms stall per mail).
pub struct SmtpPool {
    host: String,
    port: u16,
    /// `tls = "tls"`: TLS from the first byte (SMTPS); otherwise STARTTLS when `tls` is set.
    implicit_tls: bool,
    tls: Option<TlsParameters>,
    credentials: Option<Credentials>,
    /// Bounds connecting and each whole exchange.
    timeout: Duration,
    hello: ClientId,
    /// Open connections and when each was last used.
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl SmtpPool {
    fn from_config(config: &Config) -> Result<SmtpPool, MailError> {
        let smtp = &config.mail.smtp;
        let credentials = match &smtp.username {
            None => None,
            Some(user) => {
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
                            "mail.smtp.username is set but neither mail.smtp.password_file \
                             nor $BANTIN_SMTP_PASSWORD is"
                                .into(),
                        ));
                    }
                };
                Some(Credentials::new(user.clone(), password))
            }
        };
        let tls = match smtp.tls.as_str() {
            "none" => None,
            _ => Some(TlsParameters::new(smtp.host.clone()).map_err(|e| {
                MailError::Config(format!("mail.smtp: TLS for '{}': {e}", smtp.host))
            })?),
        };
        Ok(SmtpPool {
            host: smtp.host.clone(),
            port: smtp.port,
            implicit_tls: smtp.tls == "tls",
            tls,
            credentials,
            timeout: Duration::from_secs(smtp.timeout_secs.max(1)),
            hello: ClientId::default(),
            idle: Mutex::default(),
        })
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let mut conn = if self.implicit_tls {
            AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(self.timeout),
                &self.hello,
                self.tls.clone(),
                None,
            )
            .await
            .map_err(smtp_error)?
        } else {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| {
                    SendError::Temporary(format!(
                        "smtp: cannot connect to {}:{}: {e}",
                        self.host, self.port
                    ))
                })?;
            let _ = stream.set_nodelay(true);
            let mut conn =
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                    .await
                    .map_err(smtp_error)?;
            if let Some(tls) = &self.tls {
                conn.starttls(tls.clone(), &self.hello)
                    .await
                    .map_err(smtp_error)?;
            }
            conn
        };
        if let Some(credentials) = &self.credentials {
            conn.auth(
                lettre::transport::smtp::authentication::DEFAULT_MECHANISMS,
                credentials,
            )
            .await
            .map_err(smtp_error)?;
        }
        Ok(conn)
    }

    /// A pooled connection that is still fit for use, if any.
    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().expect("smtp pool");
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < SMTP_IDLE && !conn.has_broken() {
                return Some(conn);
            }
        }
        None
    }

    async fn send(&self, envelope: &Envelope, bytes: &[u8]) -> Result<(), SendError> {
        let reused = self.take_idle();
        let exchange = async {
            let mut conn = match reused {
                Some(conn) => conn,
                None => self.connect().await?,
            };
            match conn.send(envelope, bytes).await {
                Ok(_) => Ok(conn),
                Err(e) => {
                    conn.abort().await;
                    Err(smtp_error(e))
                }
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(SendError::Temporary(format!(
                "smtp: no answer within {:?}",
                self.timeout
            ))),
            Ok(Err(e)) => Err(e),
            Ok(Ok(conn)) => {
                self.idle
                    .lock()
                    .expect("smtp pool")
                    .push((conn, Instant::now()));
                Ok(())
            }
        }
    }
}

/// 5xx replies are permanent; everything else (4xx, timeouts, dropped connections) is worth
/// another try.
fn smtp_error(e: lettre::transport::smtp::Error) -> SendError {
    if e.is_permanent() {
        SendError::Bounced(format!("smtp: {e}"))
    } else {
        SendError::Temporary(format!("smtp: {e}"))
    }
}

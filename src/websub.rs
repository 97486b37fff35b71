//! WebSub: after a publish, the hub named by `feeds.websub_hub` is asked to fetch every feed
//! that changed (`hub.mode=publish`), so that readers subscribed through it hear at once.
//! One request per changed feed, naming its RSS and Atom addresses; a failure is tried again
//! with a growing delay, and changes made meanwhile join it. Publication never waits for it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::metrics::Metrics;
use crate::site::SharedSite;

/// The first and the longest wait before telling the hub again after a failure.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(600);
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Tells `hub` of the feeds named on `changes` until the channel closes.
pub async fn notifier(
    hub: String,
    site: SharedSite,
    mut changes: UnboundedReceiver<Vec<String>>,
    metrics: Metrics,
) {
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut delay = FIRST_RETRY;
    loop {
        if pending.is_empty() {
            match changes.recv().await {
                Some(names) => pending.extend(names),
                None => return,
            }
        }
        while let Ok(names) = changes.try_recv() {
            pending.extend(names);
        }
        let base = site.read().expect("site lock").base_url.clone();
        let mut failed = false;
        for name in pending.clone() {
            let topics = [
                format!("{base}/feeds/{name}.atom"),
                format!("{base}/feeds/{name}.rss"),
                format!("{base}/feeds/{name}.json"),
            ];
            match publish(&hub, &topics).await {
                Ok(()) => {
                    pending.remove(&name);
                    metrics.websub_notified.inc();
                    tracing::debug!(feed = name, "hub told");
                }
                Err(e) => {
                    metrics.websub_failures.inc();
                    tracing::warn!(
                        hub,
                        feed = name,
                        "cannot tell the WebSub hub: {e}; trying again in {delay:?}"
                    );
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // Changes arriving during the wait join the next try.
            let wait = tokio::time::sleep(delay);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    got = changes.recv() => match got {
                        Some(names) => pending.extend(names),
                        None => return,
                    },
                }
            }
            delay = (delay * 2).min(MAX_RETRY);
        } else {
            delay = FIRST_RETRY;
        }
    }
}

/// One `hub.mode=publish` request; `Ok` on a 2xx answer.
pub async fn publish(hub: &str, topics: &[String]) -> Result<(), String> {
    let body = {
        let mut body = form_urlencoded::Serializer::new(String::new());
        body.append_pair("hub.mode", "publish");
        for t in topics {
            body.append_pair("hub.url", t);
        }
        body.finish()
    };
    tokio::time::timeout(TIMEOUT, post(hub, &body))
        .await
        .map_err(|_| format!("no answer in {TIMEOUT:?}"))?
}

/// A form POST over HTTP/1.1 (TLS for `https://`), answered by a status line.
async fn post(url: &str, body: &str) -> Result<(), String> {
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the hub's address is not http:// or https://".into()),
    };
    let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
        return Err(format!("{url}: no host"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: bantin/{}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let answer = if tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {authority}: {e}"))?;
        exchange(stream, &request).await?
    } else {
        exchange(tcp, &request).await?
    };
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "the hub's answer is not HTTP".to_string())?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the hub answered {status}"))
    }
}

/// Sends `request` and reads the status line of the answer.
async fn exchange<S>(mut stream: S, request: &str) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 8192 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(line).trim().to_owned())
}

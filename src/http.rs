//! The HTTP server: feeds from memory with conditional GET and gzip, the index, article pages
//! from `output.dir`, health and metrics.
//!
//! Connections are served by hyper with a header read timeout (no slowloris), a cap on open
//! connections, a body size limit, and a graceful drain on shutdown.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
#[cfg(test)]
use axum::http::HeaderValue;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use prometheus_client::registry::Registry;

use crate::metrics::{Metrics, route_of};

/// `Cache-Control` of feeds and pages: readers may poll every few minutes.
const CACHE_FEED: &str = "public, max-age=300";
/// `Cache-Control` of the index, which changes with every article.
const CACHE_INDEX: &str = "public, max-age=60";
/// Bodies smaller than this are not worth compressing.
pub(crate) const GZIP_MIN_BYTES: usize = 512;

/// One file served from memory, with its precomputed validators and gzip form.
#[derive(Debug)]
pub struct Served {
    pub body: Bytes,
    /// Present when compression saves bytes.
    pub gzip: Option<Bytes>,
    /// Strong validator of `body` (quoted).
    pub etag: String,
    /// The validator of the gzip form.
    gzip_etag: String,
    pub last_modified: SystemTime,
    pub content_type: &'static str,
    pub cache_control: &'static str,
}

impl Served {
    /// A file with its validators; `compress` prepares the gzip form now (worth it for what
    /// is served many times from memory; a page read from disk is compressed only when its
    /// body is sent).
    pub fn new(
        body: Vec<u8>,
        content_type: &'static str,
        cache_control: &'static str,
        last_modified: SystemTime,
        compress: bool,
    ) -> Served {
        let etag = format!("\"{:016x}\"", fnv1a(&body));
        let mut served = Served {
            gzip_etag: format!("{}-gz\"", etag.trim_end_matches('"')),
            body: Bytes::from(body),
            gzip: None,
            etag,
            // HTTP dates have whole seconds.
            last_modified: truncate_secs(last_modified),
            content_type,
            cache_control,
        };
        if compress {
            served.compress();
        }
        served
    }

    /// Prepares the gzip form, when it saves bytes.
    fn compress(&mut self) {
        self.gzip = (self.body.len() >= GZIP_MIN_BYTES)
            .then(|| gzip(&self.body))
            .filter(|z| z.len() < self.body.len())
            .map(Bytes::from);
    }

    /// Whether the client's copy is current (RFC 9110 §13.2.2: If-None-Match first,
    /// If-Modified-Since only without it).
    fn not_modified(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::IF_NONE_MATCH) {
            Some(value) => value
                .to_str()
                .is_ok_and(|v| etag_matches(v, &[&self.etag, &self.gzip_etag])),
            None => headers
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .is_some_and(|since| self.last_modified <= since),
        }
    }

    pub fn feed(body: Vec<u8>, content_type: &'static str, last_modified: SystemTime) -> Served {
        Served::new(body, content_type, CACHE_FEED, last_modified, true)
    }

    pub fn index(body: Vec<u8>, last_modified: SystemTime) -> Served {
        Served::new(
            body,
            "text/html; charset=utf-8",
            CACHE_INDEX,
            last_modified,
            true,
        )
    }
}

fn truncate_secs(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// FNV-1a, 64 bits: a stable, fast content hash for ETags.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// What the HTTP side serves from memory; replaced whole when something changes.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// By file name: `tin-tuc.rss`.
    pub feeds: std::collections::HashMap<String, Arc<Served>>,
    pub index: Option<Arc<Served>>,
    /// `calendar.ics`: every event.
    pub calendar: Option<Arc<Served>>,
    /// Files that change only with the configuration: `404.html`, `feeds.opml`, `site.js`,
    /// `favicon.svg`.
    pub fixed: std::collections::HashMap<&'static str, Arc<Served>>,
}

/// State shared by every request.
pub struct AppState {
    pub snapshot: RwLock<Arc<Snapshot>>,
    /// `output.dir/articles`: pages are read from there.
    pub pages: PathBuf,
    /// `output.dir/bulletins`.
    pub bulletins: PathBuf,
    /// `output.dir`: navigation pages and archive documents are read from there.
    pub out: PathBuf,
    /// Counts requests.
    pub metrics: Metrics,
    /// Every part's metrics, rendered for `/metrics`.
    pub registry: Arc<Registry>,
    /// Set while the daemon can serve; `/healthz` answers 503 otherwise.
    pub healthy: std::sync::atomic::AtomicBool,
    /// Set while the site is being built whole: a page not found may be one not written
    /// yet.
    pub building: std::sync::atomic::AtomicBool,
    /// Set once everything runs: the store checked, mail and the schedules started.
    pub started: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// `out` is `output.dir`: article pages and bulletins are read from there.
    pub fn new(out: &std::path::Path, metrics: Metrics, registry: Arc<Registry>) -> AppState {
        AppState {
            snapshot: RwLock::default(),
            pages: out.join("articles"),
            bulletins: out.join("bulletins"),
            out: out.to_owned(),
            metrics,
            registry,
            healthy: std::sync::atomic::AtomicBool::new(false),
            building: std::sync::atomic::AtomicBool::new(false),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock").clone()
    }

    pub fn replace(&self, snapshot: Snapshot) {
        *self.snapshot.write().expect("snapshot lock") = Arc::new(snapshot);
    }
}

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// Connections one address may hold at once.
    pub max_per_client: usize,
    /// Addresses exempt from `max_per_client` (trusted proxies carry everyone).
    pub trusted: Vec<crate::config::Cidr>,
    /// From headers to answer, body included.
    pub request_timeout: Duration,
    /// How long an answer may wait for the client to read it.
    pub write_timeout: Duration,
    pub max_body_bytes: usize,
    pub drain: Duration,
    /// The local port of the daemon's own `/healthz` probe while it connects: exempt from
    /// `max_per_client` (a busy local proxy must not starve the watchdog), not from the
    /// total nor from the eviction when it is reached.
    pub probe_port: Arc<std::sync::atomic::AtomicU16>,
}

/// The routes of the public site and feeds; `extra` adds routes that other parts own
/// (subscriptions).
///
/// Behind a proxy that serves the council under a path (`site.base_url` =
/// `https://hdnd.example.vn/phuong-cau-giay/`), requests come either with that path stripped
/// (`proxy_pass http://127.0.0.1:8081/;`) or with it (`proxy_pass http://127.0.0.1:8081;`):
/// both are served.
pub fn router(
    state: Arc<AppState>,
    extra: Router,
    limits: &Limits,
    site: crate::site::SharedSite,
) -> Router {
    let inner = routes(state, extra, limits);
    let strip = tower::ServiceBuilder::new()
        .map_request(move |req: Request| {
            let site = site.read().expect("site lock").clone();
            without_base_path(req, crate::feed::base_path(&site.base_url))
        })
        .service(inner);
    Router::new().fallback_service(strip)
}

/// `req` with the base URL's path taken off the front of its own, when it starts with it.
fn without_base_path(mut req: Request, base: &str) -> Request {
    let path = req.uri().path();
    let rest = match path.strip_prefix(base) {
        Some(rest) if !base.is_empty() && rest.is_empty() => "/",
        Some(rest) if !base.is_empty() && rest.starts_with('/') => rest,
        _ => return req,
    };
    let rewritten = match req.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    if let Ok(uri) = rewritten.parse() {
        *req.uri_mut() = uri;
    }
    req
}

fn routes(state: Arc<AppState>, extra: Router, limits: &Limits) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/feeds/{file}", get(feed))
        .route("/calendar.ics", get(calendar))
        .route("/articles/{*path}", get(article))
        .route("/feeds.opml", get(fixed_file))
        .route("/site.js", get(fixed_file))
        .route("/favicon.svg", get(fixed_file))
        // Asked for by clients that do not read the pages' icon link.
        .route("/favicon.ico", get(to_icon))
        .route("/feeds/{name}/archive/{file}", get(feed_archive))
        .route("/categories/{*path}", get(nav_page))
        .route("/pages/{*path}", get(nav_page))
        .route("/archive", get(nav_page))
        .route("/archive/", get(nav_page))
        .route("/archive/{*path}", get(nav_page))
        .route("/bulletins", get(bulletin))
        .route("/bulletins/", get(bulletin))
        .route("/bulletins/{*path}", get(bulletin))
        .route("/healthz", get(healthz))
        // Addresses people and feed readers guess: the home page's lists (its feed links
        // are also what readers discover a feed by).
        .route("/rss", get(to_home_section))
        .route("/feed", get(to_home_section))
        .route("/atom", get(to_home_section))
        .route("/feeds", get(to_home_section))
        .route("/feeds/", get(to_home_section))
        .route("/categories", get(to_home_section))
        .route("/categories/", get(to_home_section))
        .fallback(not_found_route)
        .with_state(state)
        .merge(extra)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn(too_large_in_vietnamese))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            request_deadline,
        ))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let metrics = metrics.clone();
                async move {
                    let route = route_of(req.uri().path());
                    let response = next.run(req).await;
                    metrics.request(route, response.status().as_u16());
                    response
                }
            },
        ))
}

/// The policy of every HTML page: the pages' own inline style, forms that post only here,
/// nothing else loaded, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     script-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// Headers every response carries: no type sniffing, no referrer (links hold tokens), and on
/// HTML the content security policy.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    if is_html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::X_FRAME_OPTIONS,
            header::HeaderValue::from_static("DENY"),
        );
    }
    response
}

/// A request (its body included: handlers read it) must be answered within `limit`; a body
/// sent a byte at a time is cut off with 408 and the connection closed.
/// A body over `http.max_body_bytes` is refused with a line in Vietnamese, like the other
/// plain answers, not the framework's English.
async fn too_large_in_vietnamese(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        "nội dung gửi lên quá lớn (payload too large)\n",
    )
}

async fn request_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            let mut r = plain(
                StatusCode::REQUEST_TIMEOUT,
                "quá thời gian (request timeout)\n",
            );
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            r
        }
    }
}

/// A stream whose writes fail once they have waited `limit` for the client to read: a
/// client that stops reading gives its connection back.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    waiting: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> WriteDeadline<S> {
    /// Maps a pending write to an error once it has waited too long.
    fn deadline<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match polled {
            Poll::Pending => {
                let limit = self.limit;
                let sleep = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client does not read its answer",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.waiting = None;
                ready
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.deadline(cx, polled)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.deadline(cx, polled)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connections held now, by client address, oldest first, with the means to close them.
/// When every slot is taken, a newcomer may take one from the address that holds the most
/// (if it holds more than the newcomer): many slow clients from a few addresses cannot lock
/// everyone else out.
#[derive(Default)]
struct Clients {
    held: std::sync::Mutex<
        std::collections::HashMap<
            std::net::IpAddr,
            std::collections::VecDeque<(u64, tokio::task::AbortHandle)>,
        >,
    >,
    next_id: std::sync::atomic::AtomicU64,
}

impl Clients {
    fn count(&self, ip: std::net::IpAddr) -> usize {
        self.held
            .lock()
            .expect("clients")
            .get(&ip)
            .map_or(0, |q| q.len())
    }

    /// Closes the oldest connection of the address holding the most, if it holds at least
    /// two more than `ip`. Returns whether one was closed.
    fn evict_for(&self, ip: std::net::IpAddr) -> bool {
        let mut held = self.held.lock().expect("clients");
        let mine = held.get(&ip).map_or(0, |q| q.len());
        let Some((_, queue)) = held
            .iter_mut()
            .filter(|(other, _)| **other != ip)
            .max_by_key(|(_, q)| q.len())
        else {
            return false;
        };
        if queue.len() < mine + 2 {
            return false;
        }
        match queue.pop_front() {
            Some((_, handle)) => {
                handle.abort();
                true
            }
            None => false,
        }
    }

    fn add(&self, ip: std::net::IpAddr, id: u64, handle: tokio::task::AbortHandle) {
        self.held
            .lock()
            .expect("clients")
            .entry(ip)
            .or_default()
            .push_back((id, handle));
    }

    fn remove(&self, ip: std::net::IpAddr, id: u64) {
        let mut held = self.held.lock().expect("clients");
        if let Some(queue) = held.get_mut(&ip) {
            queue.retain(|(i, _)| *i != id);
            if queue.is_empty() {
                held.remove(&ip);
            }
        }
    }
}

/// Gives a connection's slot back however the connection ends (closed, or evicted).
struct Held {
    clients: Option<(Arc<Clients>, std::net::IpAddr, u64)>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((clients, ip, id)) = self.clients.take() {
            clients.remove(ip, id);
        }
    }
}

async fn not_found_route(State(state): State<Arc<AppState>>) -> Response {
    not_found(&state)
}

/// The 404 page (in the site's look), or a line of text before it is rendered.
fn not_found(state: &AppState) -> Response {
    if state.building.load(std::sync::atomic::Ordering::Relaxed) {
        // Perhaps a page not written yet: come back shortly rather than "no such page".
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (header::RETRY_AFTER, "5"),
            ],
            "Trang đang được dựng lại, xin thử lại sau ít giây.\n",
        )
            .into_response();
    }
    match state.snapshot().fixed.get(crate::render::NOT_FOUND_FILE) {
        Some(page) => (
            StatusCode::NOT_FOUND,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            page.body.clone(),
        )
            .into_response(),
        None => plain(StatusCode::NOT_FOUND, "không tìm thấy trang\n"),
    }
}

/// `/favicon.ico`: the icon is an SVG (relative, to stay under a proxy's path).
async fn to_icon() -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, "favicon.svg")],
    )
        .into_response()
}

/// `/feeds.opml`, `/site.js`, `/favicon.svg`.
async fn fixed_file(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let name = uri.path().trim_start_matches('/');
    match state.snapshot().fixed.get(name).cloned() {
        Some(served) => respond(&served, &method, &headers),
        None => not_found(&state),
    }
}

/// `/feeds/{name}/archive/{n}.atom` and `.rss`: RFC 5005 archive documents.
async fn feed_archive(
    State(state): State<Arc<AppState>>,
    axum::extract::Path((name, file)): axum::extract::Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let number = file
        .strip_suffix(".atom")
        .or_else(|| file.strip_suffix(".rss"))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if number.is_none() || !name_ok {
        return not_found(&state);
    }
    let full = state
        .out
        .join("feeds")
        .join(&name)
        .join("archive")
        .join(&file);
    serve_file(&state, full, &method, &headers).await
}

/// `/categories/…`, `/pages/…`, `/archive/…`: the navigation pages.
async fn nav_page(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = match path {
        "archive" | "archive/" => "archive/index.html".to_owned(),
        p => percent_decode(p),
    };
    match safe_page_path(&path).filter(|p| p.extension().is_some_and(|e| e == "html")) {
        Some(rel) => serve_file(&state, state.out.join(rel), &method, &headers).await,
        None => not_found(&state),
    }
}

/// A percent-encoded path, decoded (kept as it is when it does not decode to UTF-8).
fn percent_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_or_else(|_| path.to_owned(), |p| p.into_owned())
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.healthy.load(std::sync::atomic::Ordering::Relaxed) {
        if state.started.load(std::sync::atomic::Ordering::Relaxed) {
            plain(StatusCode::OK, "ok\n")
        } else {
            // Serving the site; the store is still being checked and mail is not started.
            plain(StatusCode::OK, "serving; starting\n")
        }
    } else {
        plain(StatusCode::SERVICE_UNAVAILABLE, "starting or stopping\n")
    }
}

/// The metrics routes, for the private listener (`http.metrics_listen`) only: counters
/// on the public port would tell a stranger whether posting an address sent a mail.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let text = crate::metrics::render(&state.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A guessed address (`/rss`, `/feeds/`, `/categories`) sent to the section of the home page
/// that lists what was looked for. The address is relative, so that it stays under the path
/// a proxy gives this council.
async fn to_home_section(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let section = if path.starts_with("/categories") {
        "chuyen-muc"
    } else {
        "nguon-tin"
    };
    let up = if path.ends_with('/') { "../" } else { "./" };
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, format!("{up}#{section}"))],
    )
        .into_response()
}

async fn index(State(state): State<Arc<AppState>>, method: Method, headers: HeaderMap) -> Response {
    match state.snapshot().index.clone() {
        Some(served) => respond(&served, &method, &headers),
        None => plain(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
    }
}

async fn calendar(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match state.snapshot().calendar.clone() {
        Some(served) => respond(&served, &method, &headers),
        None => plain(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
    }
}

async fn feed(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(file): axum::extract::Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match state.snapshot().feeds.get(&file).cloned() {
        Some(served) => respond(&served, &method, &headers),
        None => not_found(&state),
    }
}

/// Whether a request path (already percent-decoded) is a safe page path: plain names only,
/// no `..`, no hidden parts, no NUL or backslash, ending in `.html` (or `.ics`, an event's
/// calendar).
pub fn safe_page_path(path: &str) -> Option<PathBuf> {
    if path.is_empty()
        || path.len() > 1024
        || path.contains(['\0', '\\'])
        || !(path.ends_with(".html") || path.ends_with(".ics"))
    {
        return None;
    }
    let ok = path
        .split('/')
        .all(|part| !part.is_empty() && !part.starts_with('.'));
    ok.then(|| PathBuf::from(path))
}

async fn article(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match safe_page_path(&path) {
        Some(rel) => serve_file(&state, state.pages.join(&rel), &method, &headers).await,
        None => not_found(&state),
    }
}

/// `GET /bulletins/` and `/bulletins/{daily|weekly}/{date}.html`: written by the daemon
/// when a digest is sent.
async fn bulletin(
    State(state): State<Arc<AppState>>,
    path: Option<axum::extract::Path<String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let path = path.map_or_else(|| "index.html".to_owned(), |p| p.0);
    match safe_page_path(&path).filter(|p| p.extension().is_some_and(|e| e == "html")) {
        Some(rel) => serve_file(&state, state.bulletins.join(&rel), &method, &headers).await,
        None => not_found(&state),
    }
}

/// Serves a file of the site from disk, with validators.
async fn serve_file(
    state: &AppState,
    full: PathBuf,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(&full).await?;
        let modified = file
            .metadata()
            .await?
            .modified()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).await?;
        std::io::Result::Ok((bytes, modified))
    };
    let Ok((bytes, modified)) = read.await else {
        return not_found(state);
    };
    let content_type = match full.extension().and_then(|e| e.to_str()) {
        Some("ics") => crate::calendar::MEDIA_TYPE,
        Some("atom") => "application/atom+xml; charset=utf-8",
        Some("rss") => "application/rss+xml; charset=utf-8",
        _ => "text/html; charset=utf-8",
    };
    let mut served = Served::new(bytes, content_type, CACHE_FEED, modified, false);
    // Compressed only for a client that gets the body.
    if method == Method::GET && accepts_gzip(headers) && !served.not_modified(headers) {
        served.compress();
    }
    respond(&served, method, headers)
}

/// Answers GET or HEAD for a file with validators: 304 when the client's copy is current
/// (RFC 9110 §13.2.2: If-None-Match first, If-Modified-Since only without it), gzip when asked.
pub fn respond(served: &Served, method: &Method, headers: &HeaderMap) -> Response {
    let not_modified = served.not_modified(headers);
    let use_gzip = served.gzip.is_some() && accepts_gzip(headers);
    let etag = if use_gzip {
        &served.gzip_etag
    } else {
        &served.etag
    };
    let mut builder = Response::builder()
        .header(header::ETAG, etag.as_str())
        .header(
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(served.last_modified),
        )
        .header(header::CACHE_CONTROL, served.cache_control)
        .header(header::VARY, "Accept-Encoding");
    if not_modified {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid response");
    }
    let body = if use_gzip {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
        served.gzip.clone().expect("checked")
    } else {
        served.body.clone()
    };
    builder = builder
        .header(header::CONTENT_TYPE, served.content_type)
        .header(header::CONTENT_LENGTH, body.len());
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    builder
        .status(StatusCode::OK)
        .body(body)
        .expect("valid response")
}

/// `If-None-Match` against our tags (weak comparison, `*` matches anything).
fn etag_matches(header_value: &str, ours: &[&str]) -> bool {
    header_value.split(',').map(str::trim).any(|tag| {
        tag == "*" || {
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            ours.contains(&tag)
        }
    })
}

pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            let mut pieces = part.split(';').map(str::trim);
            let coding = pieces.next().unwrap_or("");
            let q_zero = pieces.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and lets
/// open requests finish for at most `limits.drain`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let clients = Arc::new(Clients::default());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, do not spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let ip = peer.ip();
        let probe = peer.port() == limits.probe_port.load(std::sync::atomic::Ordering::Relaxed);
        let limited = !limits.trusted.iter().any(|c| c.contains(ip));
        // (The probe is held to the total like anyone: were it to wait for a slot, the
        // accept loop would wait with it.)
        if limited && !probe && clients.count(ip) >= limits.max_per_client {
            // This address holds its share of the slots already: the rest are for others.
            continue;
        }
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Full: the address holding the most gives one back, if that is fair;
                // otherwise the newcomer is turned away at once rather than left to hold up
                // every connection behind it.
                // (A trusted proxy carries everyone: it waits for a slot.)
                if limited && !clients.evict_for(ip) {
                    continue;
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => permit.expect("semaphore never closes"),
                    () = &mut shutdown => break,
                }
            }
        };
        // The client address, for the subscribe form's rate limit.
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(crate::subscribe::Peer(peer));
                req
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(service);
        let stream = WriteDeadline {
            inner: stream,
            limit: limits.write_timeout,
            waiting: None,
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        let id = clients
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let held = Held {
            clients: limited.then(|| (clients.clone(), ip, id)),
            _permit: permit,
        };
        // The task waits until it is registered, so its end always finds its entry.
        let (registered, ready) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _held = held;
            let _ = ready.await;
            let _ = watched.await;
        });
        if limited {
            clients.add(ip, id, task.abort_handle());
        }
        let _ = registered.send(());
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {:?}; closing them",
            limits.drain
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn a_page_missing_while_the_site_is_built_is_come_back_later() {
        let dir = tempfile::tempdir().unwrap();
        let state = AppState::new(dir.path(), Metrics::default(), Arc::default());
        state
            .building
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let r = not_found(&state);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers().get(header::RETRY_AFTER), Some(&hv("5")));
        state
            .building
            .store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(not_found(&state).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn page_paths_never_leave_the_namespace() {
        assert!(safe_page_path("2020/02/ky-ket.html").is_some());
        assert!(safe_page_path("2025/tiep-dan.ics").is_some());
        for bad in [
            "../secret.html",
            "a/../../b.html",
            "/etc/passwd.html",
            ".hidden.html",
            "a/./b.html",
            "../x.ics",
            "a\0b.html",
            "a\\..\\b.html",
            "a.txt",
            "",
        ] {
            assert!(safe_page_path(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn conditional_get_precedence() {
        let served = Served::feed(
            vec![b'x'; 1000],
            "application/rss+xml",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        );
        let get = Method::GET;
        let mut h = HeaderMap::new();
        assert_eq!(respond(&served, &get, &h).status(), 200);
        h.insert(header::IF_NONE_MATCH, served.etag.parse().unwrap());
        assert_eq!(respond(&served, &get, &h).status(), 304);
        // If-None-Match that does not match wins over a matching If-Modified-Since.
        h.insert(header::IF_NONE_MATCH, hv("\"other\""));
        h.insert(
            header::IF_MODIFIED_SINCE,
            httpdate::fmt_http_date(served.last_modified)
                .parse()
                .unwrap(),
        );
        assert_eq!(respond(&served, &get, &h).status(), 200);
        h.remove(header::IF_NONE_MATCH);
        assert_eq!(respond(&served, &get, &h).status(), 304);
        h.insert(
            header::IF_NONE_MATCH,
            format!("W/{}", served.etag).parse().unwrap(),
        );
        assert_eq!(respond(&served, &get, &h).status(), 304);
    }

    #[test]
    fn gzip_only_when_accepted() {
        let served = Served::feed(
            vec![b'x'; 1000],
            "application/rss+xml",
            SystemTime::UNIX_EPOCH,
        );
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, hv("br, gzip;q=0.5"));
        let r = respond(&served, &Method::GET, &h);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        h.insert(header::ACCEPT_ENCODING, hv("gzip;q=0"));
        let r = respond(&served, &Method::GET, &h);
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
    }
}

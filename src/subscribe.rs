//! The subscription routes: the subscribe form's POST, confirmation, and unsubscribing
//! (a page with a button, and RFC 8058 one-click POST).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Cidr;
use crate::feed::SiteInfo;
use crate::mail::{AddressProblem, Links, MailError, Outbox, check_address};
use crate::site::Pages;
use crate::site::Refill;
use crate::subscriber::{Schedule, SubState, Subscriber, canonical_categories};
use crate::token::Purpose;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

/// The window of the per-address rate limit.
const RATE_WINDOW: Duration = Duration::from_secs(3600);
/// Clients remembered by the rate limiter before old ones are dropped.
const RATE_CLIENTS: usize = 10_000;
/// `Retry-After` while a start reads the store.
const STARTING_RETRY_SECS: u64 = 5;
/// `Retry-After` when the state cannot be written.
const UNAVAILABLE_RETRY_SECS: u64 = 60;
/// Categories a subscriber may pick at most.
const MAX_CATEGORIES: usize = 50;

/// The client's address as the connection saw it (set per connection by the server).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

pub struct SubscribeState {
    /// Subscribers are kept there, confirmations queued.
    pub outbox: Outbox,
    /// Verifies the tokens of confirm and unsubscribe links.
    pub links: Links,
    /// The categories one may follow (kept current by the engine).
    pub categories: crate::subscriber::KnownCategories,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted: Vec<Cidr>,
    /// How long a confirmation link works (seconds).
    pub confirm_secs: i64,
    pub templates: crate::site::SharedTemplates,
    /// The site's name and address (a reload may change them).
    pub site: crate::site::SharedSite,
    limiter: Limiter,
}

impl SubscribeState {
    pub fn new(
        outbox: Outbox,
        links: Links,
        categories: crate::subscriber::KnownCategories,
        templates: crate::site::SharedTemplates,
        site: crate::site::SharedSite,
        per_hour: u32,
    ) -> Self {
        SubscribeState {
            outbox,
            links,
            categories,
            trusted: Vec::new(),
            confirm_secs: 7 * 24 * 3600,
            templates,
            site,
            limiter: Limiter::new(per_hour),
        }
    }

    fn page(
        &self,
        status: StatusCode,
        heading: &str,
        message: &str,
        form: Option<(&str, &str, &str)>,
    ) -> Response {
        self.render(status, |pages| pages.message(heading, message, form))
    }

    /// The site as it is now.
    fn site(&self) -> std::sync::Arc<SiteInfo> {
        self.site.read().expect("site").clone()
    }

    /// A form posted from another site (its `Origin`, or else its `Referer`, is not ours):
    /// refused, so no page elsewhere can subscribe or change someone. Requests without
    /// either (not from a browser) pass. One-click unsubscribe is not checked: mail
    /// providers post it from their own servers (RFC 8058).
    fn cross_site(&self, headers: &HeaderMap) -> Option<Response> {
        let ours = origin_of(&self.site().base_url)?;
        let theirs = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .filter(|v| *v != "null")
            .map(str::to_owned)
            .or_else(|| {
                headers
                    .get(header::REFERER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(origin_of)
            })?;
        if theirs.eq_ignore_ascii_case(&ours) {
            return None;
        }
        Some(self.page(
            StatusCode::FORBIDDEN,
            "Không thực hiện được",
            "Biểu mẫu này chỉ dùng được trên trang của Hội đồng nhân dân. Hãy mở trang chủ và \
             đăng ký từ đó.",
            None,
        ))
    }

    /// The state cannot be written right now (a full disk): nothing was recorded; the
    /// person is asked to come back, and a client may retry (503, not 500: it passes).
    fn unavailable(&self) -> Response {
        let mut r = self.page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Tạm thời chưa ghi nhận được",
            "Hệ thống đang tạm ngưng ghi nhận đăng ký. Yêu cầu của bạn chưa được lưu; \
             vui lòng thử lại sau ít phút.",
            None,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, UNAVAILABLE_RETRY_SECS.into());
        r
    }

    /// In the first moments of a start, before the store is read: the form back as it was
    /// filled, saved nowhere, and asked again in a few seconds.
    fn starting(&self, refill: &Refill) -> Response {
        let mut r = self.render(StatusCode::SERVICE_UNAVAILABLE, |pages| {
            pages.subscribe_again(
                "Vui lòng gửi lại sau giây lát",
                "Trang vừa khởi động lại và đang đọc danh sách chuyên mục. Yêu cầu của bạn chưa \
                 được lưu; vui lòng bấm gửi lại sau vài giây.",
                refill,
            )
        });
        r.headers_mut()
            .insert(header::RETRY_AFTER, STARTING_RETRY_SECS.into());
        r
    }

    /// A page that says what is wrong and gives the subscribe form back as it was filled.
    fn refill(&self, heading: &str, message: &str, refill: &Refill) -> Response {
        self.render(StatusCode::BAD_REQUEST, |pages| {
            pages.subscribe_again(heading, message, refill)
        })
    }

    pub(crate) fn render(
        &self,
        status: StatusCode,
        page: impl FnOnce(&Pages<'_>) -> Result<String, crate::site::TemplateError>,
    ) -> Response {
        let templates = crate::site::current(&self.templates);
        let site = self.site();
        let pages = Pages {
            site: &site,
            templates: &templates,
        };
        match page(&pages) {
            Ok(html) => (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
            Err(e) => {
                tracing::error!("{e}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "lỗi máy chủ (server error)\n",
                )
                    .into_response()
            }
        }
    }
}

/// What is wrong with the address typed (`None`: the field was not sent), in words.
fn address_problem(typed: Option<&str>, problem: AddressProblem) -> &'static str {
    let typed = typed.unwrap_or_default().trim();
    if let AddressProblem::NeedsUtf8 { .. } = problem {
        return "Địa chỉ này có chữ có dấu hoặc ký tự không thuộc bảng ASCII; máy chủ gửi thư của \
                chúng tôi chưa nhận loại địa chỉ này (SMTPUTF8). Vui lòng dùng một địa chỉ chỉ \
                gồm chữ không dấu (ví dụ ten@vidu.vn).";
    }
    if typed.is_empty() {
        "Vui lòng nhập địa chỉ thư điện tử của bạn (ví dụ ten@vidu.vn)."
    } else if typed.chars().count() > 254 {
        "Địa chỉ đã nhập dài hơn 254 ký tự, không thể là một địa chỉ thư điện tử. Vui lòng \
         kiểm tra lại."
    } else if !typed.contains('@') {
        "Địa chỉ thư điện tử cần có ký tự @ (ví dụ ten@vidu.vn). Vui lòng kiểm tra lại."
    } else if typed.contains(char::is_whitespace) {
        "Địa chỉ thư điện tử không có dấu cách. Vui lòng kiểm tra lại."
    } else {
        "Địa chỉ thư điện tử chưa đúng (ví dụ đúng: ten@vidu.vn). Vui lòng kiểm tra lại."
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

/// Posts per client address per hour, in bounded memory.
pub struct Limiter {
    per_hour: u32,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Limiter {
    pub fn new(per_hour: u32) -> Limiter {
        Limiter {
            per_hour: per_hour.max(1),
            seen: Mutex::default(),
        }
    }

    /// Counts a post from `ip`; `Err(seconds)` when over the limit.
    pub fn allow(&self, ip: IpAddr) -> Result<(), u64> {
        let mut seen = self.seen.lock().expect("rate limiter");
        let now = Instant::now();
        if seen.len() >= RATE_CLIENTS && !seen.contains_key(&ip) {
            seen.retain(|_, (start, _)| now.duration_since(*start) < RATE_WINDOW);
            if seen.len() >= RATE_CLIENTS {
                // Still full within the window: forget the oldest half, so memory stays
                // bounded whatever the traffic (they may post again a little sooner).
                let mut starts: Vec<Instant> = seen.values().map(|(s, _)| *s).collect();
                let half = starts.len() / 2;
                let (_, cut, _) = starts.select_nth_unstable(half);
                let cut = *cut;
                seen.retain(|_, (start, _)| *start > cut);
            }
        }
        let entry = seen.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= RATE_WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_hour {
            let wait = RATE_WINDOW.saturating_sub(now.duration_since(entry.0));
            return Err(wait.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }

    /// Clients remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().expect("rate limiter").len()
    }
}

pub fn router(state: Arc<SubscribeState>) -> Router {
    Router::new()
        .route("/subscribe", get(subscribe_form).post(subscribe))
        .route("/confirm", get(confirm_page).post(confirm))
        .route("/unsubscribe", get(unsubscribe_page).post(unsubscribe))
        .route("/preferences", get(preferences_page).post(preferences))
        .with_state(state)
}

/// `GET /subscribe` (the address bar after a post, a bookmark): the form is on the index page.
async fn subscribe_form(State(state): State<Arc<SubscribeState>>) -> Response {
    let to = format!("{}/#dang-ky", state.site().base_url);
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// The client address: the connection's, unless it comes from a trusted proxy; then the
/// right-most address of `X-Forwarded-For` that is not a trusted proxy (a client can put
/// anything on the left, never on the right of what its proxy adds).
fn client_ip(peer: Option<Peer>, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let direct = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(direct) {
        return direct;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut client = direct;
    for hop in forwarded.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break; // garbage: stop believing the header here
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

async fn subscribe(
    State(state): State<Arc<SubscribeState>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = state.cross_site(&headers) {
        return refused;
    }
    let mut email = None;
    let mut schedule = Some(Schedule::Immediate);
    let mut categories = Vec::new();
    for (k, v) in form_urlencoded::parse(&body) {
        match &*k {
            "email" => email = Some(v.into_owned()),
            "schedule" => schedule = Schedule::parse(&v),
            "categories" if !v.trim().is_empty() => categories.push(v.trim().to_owned()),
            _ => {}
        }
    }
    categories.truncate(MAX_CATEGORIES);
    let known = match state.categories.read().expect("categories").clone() {
        Some(known) => known,
        // Following every category needs no list.
        None if categories.is_empty() => Vec::new(),
        None => {
            let refill = Refill::new(
                email.as_deref().unwrap_or_default(),
                schedule,
                &categories,
                &categories,
            );
            return state.starting(&refill);
        }
    };
    let mut refill = Refill::new(
        email.as_deref().unwrap_or_default(),
        schedule,
        &categories,
        &known,
    );
    let checked = email
        .as_deref()
        .map(|e| check_address(e, state.outbox.relay_utf8.get()));
    let (Some(Ok(email)), Some(schedule)) = (checked.clone(), schedule) else {
        let (field, message) = match checked {
            Some(Err(problem)) => ("email", address_problem(email.as_deref(), problem)),
            None => ("email", address_problem(None, AddressProblem::Invalid)),
            Some(Ok(_)) => ("schedule", "Vui lòng chọn cách nhận tin."),
        };
        refill.problem = Some(field);
        return state.refill("Thông tin chưa hợp lệ", message, &refill);
    };
    let categories = match canonical_categories(&categories, &known) {
        Ok(c) => c,
        Err(unknown) => {
            let message = format!(
                "Không có chuyên mục {}. Vui lòng chọn trong các chuyên mục: {}.",
                unknown
                    .iter()
                    .map(|c| format!("“{c}”"))
                    .collect::<Vec<_>>()
                    .join(", "),
                known.join(", ")
            );
            refill.problem = Some("categories");
            return state.refill("Chuyên mục không có", &message, &refill);
        }
    };
    // Counted once the form is right: a mistake sends no mail, and the person who made it
    // may correct it.
    let ip = client_ip(peer.map(|p| p.0), &headers, &state.trusted);
    if let Err(wait) = state.limiter.allow(ip) {
        // When, in words: the header is for programs. The form comes back as it was filled.
        let minutes = wait.div_ceil(60).max(1);
        let mut r = state.render(StatusCode::TOO_MANY_REQUESTS, |pages| {
            pages.subscribe_again(
                "Vui lòng thử lại sau",
                &format!(
                    "Có quá nhiều yêu cầu đăng ký từ địa chỉ mạng của bạn. Yêu cầu này chưa được \
                     lưu; vui lòng gửi lại sau khoảng {minutes} phút."
                ),
                &refill,
            )
        });
        r.headers_mut().insert(header::RETRY_AFTER, wait.into());
        return r;
    }
    if state.outbox.store.is_broken() {
        // A write of the state failed (a full disk) and it is not known to be back: a new
        // subscriber waits, as the mails do.
        return state.unavailable();
    }
    let outbox = state.outbox.clone();
    let result = tokio::task::spawn_blocking(move || {
        request_subscription(&outbox, &email, schedule, categories)
    })
    .await;
    match result
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok(true) => state.outbox.wake.notify_one(),
        Ok(false) => {}
        Err(e) => {
            tracing::error!("subscribe: {e}");
            return state.unavailable();
        }
    }
    // The same answer whether or not the address is known, and true in every case.
    state.page(
        StatusCode::OK,
        "Kiểm tra hộp thư của bạn",
        "Nếu địa chỉ này chưa đăng ký, chúng tôi gửi tới đó một thư xác nhận — mỗi địa chỉ \
         nhiều nhất một thư mỗi ngày. Hãy mở liên kết trong thư và bấm nút “Xác nhận đăng ký” \
         trên trang mở ra để bắt đầu nhận tin. Không thấy \
         thư? Hãy xem cả thư mục thư rác; nếu vẫn không có, hãy thử lại vào ngày mai.",
        None,
    )
}

/// Records a subscription request; returns whether a confirmation mail was queued. A
/// confirmed subscriber stays as it is and is sent the links to change or end it; at most one
/// such mail per address per day, and a pending subscriber's choices change only with a new
/// one.
pub fn request_subscription(
    outbox: &Outbox,
    email: &str,
    schedule: Schedule,
    categories: Vec<String>,
) -> Result<bool, MailError> {
    let store = &outbox.store;
    let now = outbox.clock.now_s();
    let existing = store.subscriber(email)?;
    let mut sub = match existing {
        // Subscribed already: nothing changes, but the person may have lost every mail
        // and with it the links to change or end it; a mail with them, once a day at most
        // (the page says the same whoever posts).
        Some(mut s) if s.state == SubState::Active => {
            let queued = crate::mail::queue_confirmation(store, &mut s, now)?;
            if queued {
                store.flush()?;
            }
            return Ok(queued);
        }
        // Its confirmation mail went out with the choices then made, and no new one goes
        // today: confirming does what that mail says (anyone can post any address).
        Some(s)
            if s.state == SubState::Pending
                && !crate::mail::may_queue_confirmation(store, &s, now)? =>
        {
            return Ok(false);
        }
        Some(mut s) => {
            s.schedule = schedule;
            s.categories = categories;
            s.state = SubState::Pending;
            s.updated = now;
            s
        }
        None => Subscriber::new(email, schedule, categories, now),
    };
    store.put_subscriber(&sub)?;
    let queued = crate::mail::queue_confirmation(store, &mut sub, now)?;
    store.flush()?;
    Ok(queued)
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The token of a request: in the query (links in mail) or in the posted form (buttons).
fn token_of(query: TokenQuery, body: &[u8]) -> Option<String> {
    query.token.or_else(|| {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    })
}

/// Why a link cannot act.
enum LinkProblem {
    /// Not one of ours, or altered.
    Invalid,
    /// Older than `mail.confirm_days`, or the subscription it was for is gone.
    Expired,
    /// Issued before the address unsubscribed, bounced or complained.
    Superseded,
    /// For an address no longer on the list (removed by the council).
    NotSubscribed,
}

impl SubscribeState {
    fn link_problem(&self, problem: LinkProblem) -> Response {
        let (heading, message) = match problem {
            LinkProblem::Invalid => (
                "Liên kết không hợp lệ",
                "Liên kết này không đúng hoặc đã bị sửa. Hãy dùng đúng liên kết trong thư của chúng tôi.",
            ),
            LinkProblem::Expired => (
                "Liên kết đã hết hạn",
                "Liên kết xác nhận chỉ dùng được trong một thời gian ngắn. Hãy đăng ký lại trên \
                 trang chủ; chúng tôi sẽ gửi một thư xác nhận mới.",
            ),
            LinkProblem::Superseded => (
                "Liên kết không còn dùng được",
                "Địa chỉ này đã hủy đăng ký (hoặc thư bị trả lại) sau khi liên kết được gửi, nên \
                 liên kết không thay đổi được gì nữa. Muốn nhận tin lại, hãy đăng ký lại trên trang chủ.",
            ),
            LinkProblem::NotSubscribed => (
                "Địa chỉ không còn đăng ký",
                "Địa chỉ này hiện không đăng ký nhận tin, nên không có gì để thay đổi. Muốn nhận \
                 tin lại, hãy đăng ký trên trang chủ.",
            ),
        };
        self.page(StatusCode::BAD_REQUEST, heading, message, None)
    }

    /// The address of a genuine confirmation token that has not expired.
    fn confirm_token(&self, token: Option<&str>) -> Result<(String, i64), LinkProblem> {
        let v = token
            .and_then(|t| self.links.verify(Purpose::Confirm, t))
            .ok_or(LinkProblem::Invalid)?;
        let issued = v.issued.ok_or(LinkProblem::Expired)?;
        if self.outbox.clock.now_s() - issued > self.confirm_secs {
            return Err(LinkProblem::Expired);
        }
        Ok((v.email, issued))
    }
}

/// `GET /confirm`: a page with a button. Changes nothing, so a link scanner that opens every
/// link of a mail confirms nobody.
async fn confirm_page(
    State(state): State<Arc<SubscribeState>>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let token = q.token.unwrap_or_default();
    if let Err(problem) = state.confirm_token(Some(&token)) {
        return state.link_problem(problem);
    }
    let action = format!("{}/confirm", state.site().base_url);
    state.page(
        StatusCode::OK,
        "Xác nhận đăng ký nhận tin",
        "Bấm nút dưới đây để bắt đầu nhận tin của Hội đồng nhân dân qua thư điện tử.",
        Some((&action, &token, "Xác nhận đăng ký")),
    )
}

/// `POST /confirm`: activates the subscription of a genuine, current token.
async fn confirm(
    State(state): State<Arc<SubscribeState>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = state.cross_site(&headers) {
        return refused;
    }
    let token = token_of(q, &body);
    let (email, issued) = match state.confirm_token(token.as_deref()) {
        Ok(v) => v,
        Err(problem) => return state.link_problem(problem),
    };
    let outbox = state.outbox.clone();
    let result =
        tokio::task::spawn_blocking(move || -> Result<Result<(), LinkProblem>, MailError> {
            let store = &outbox.store;
            let Some(mut sub) = store.subscriber(&email)? else {
                return Ok(Err(LinkProblem::Expired)); // never confirmed, and deleted since
            };
            if !sub.accepts_token(issued) {
                return Ok(Err(LinkProblem::Superseded));
            }
            if sub.state != SubState::Active {
                let now = outbox.clock.now();
                sub.state = SubState::Active;
                sub.confirmed = Some(now.timestamp());
                sub.digest_until = Some(now.timestamp_millis());
                sub.bounce = None;
                sub.soft_bounces = None;
                sub.updated = now.timestamp();
                store.put_subscriber(&sub)?;
                store.flush()?;
                tracing::info!(email, "subscription confirmed");
            }
            Ok(Ok(()))
        })
        .await;
    match result {
        Ok(Ok(Ok(()))) => state.page(
            StatusCode::OK,
            "Đăng ký thành công",
            "Cảm ơn bạn! Từ nay bạn sẽ nhận tin của Hội đồng nhân dân qua thư điện tử. Mỗi thư \
             đều có liên kết để đổi cách nhận tin hoặc hủy đăng ký.",
            None,
        ),
        Ok(Ok(Err(problem))) => state.link_problem(problem),
        _ => state.unavailable(),
    }
}

async fn unsubscribe_page(
    State(state): State<Arc<SubscribeState>>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let Some((token, email)) = q.token.and_then(|t| {
        let v = state.links.verify(Purpose::Unsubscribe, &t)?;
        Some((t, v.email))
    }) else {
        return state.link_problem(LinkProblem::Invalid);
    };
    // Whether the address still gets mail: a link opened again after it was used says so
    // instead of offering the button once more.
    let outbox = state.outbox.clone();
    let lookup = email.clone();
    let subscribed = tokio::task::spawn_blocking(move || outbox.store.subscriber(&lookup)).await;
    match subscribed {
        Ok(Ok(Some(sub))) if matches!(sub.state, SubState::Active | SubState::Pending) => {
            let action = format!("{}/unsubscribe", state.site().base_url);
            state.page(
                StatusCode::OK,
                "Hủy đăng ký nhận tin",
                &format!(
                    "Bấm nút dưới đây để địa chỉ {email} ngừng nhận thư của Hội đồng nhân dân. \
                     Nếu chỉ muốn nhận ít thư hơn hoặc chọn chuyên mục, hãy dùng liên kết “Đổi \
                     cách nhận tin” ở cuối thư."
                ),
                Some((&action, &token, "Hủy đăng ký")),
            )
        }
        Ok(Ok(_)) => state.page(
            StatusCode::OK,
            "Đã hủy đăng ký",
            &format!(
                "Địa chỉ {email} không còn trong danh sách nhận tin: không có thư nào gửi tới \
                 đó nữa. Muốn nhận lại, hãy đăng ký trên trang chủ."
            ),
            None,
        ),
        _ => state.unavailable(),
    }
}

/// One-click unsubscribe (RFC 8058): the token in the query (as in List-Unsubscribe) or in
/// the form; no cookie, no redirect. Unsubscribing twice answers the same; any genuine
/// unsubscribe link works, however old (it can only take an address off the list).
async fn unsubscribe(
    State(state): State<Arc<SubscribeState>>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    let Some(email) = token_of(q, &body)
        .and_then(|t| state.links.verify(Purpose::Unsubscribe, &t))
        .map(|v| v.email)
    else {
        return state.link_problem(LinkProblem::Invalid);
    };
    let outbox = state.outbox.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(), MailError> {
        unsubscribe_address(&outbox, &email, SubState::Unsubscribed)
    })
    .await;
    match result {
        Ok(Ok(())) => state.page(
            StatusCode::OK,
            "Đã hủy đăng ký",
            "Bạn sẽ không nhận thêm thư nào. Bạn có thể đăng ký lại bất cứ lúc nào trên trang chủ.",
            None,
        ),
        _ => state.unavailable(),
    }
}

/// Ends the subscription of `email` in `state` (unsubscribed or complained); a no-op when it
/// has already ended so. The caller has checked the right to do it.
pub fn unsubscribe_address(outbox: &Outbox, email: &str, state: SubState) -> Result<(), MailError> {
    let store = &outbox.store;
    if let Some(mut sub) = store.subscriber(email)?
        && sub.state != state
        && !(state == SubState::Unsubscribed && sub.state == SubState::Complained)
    {
        sub.end(state, outbox.clock.now_s());
        store.put_subscriber(&sub)?;
        store.flush()?;
        tracing::info!(email, "{}", state.as_str());
    }
    Ok(())
}

/// The subscriber a preferences token may change: genuine, issued since the last time the
/// address left, and still subscribed.
fn preferences_subscriber(
    state: &SubscribeState,
    token: Option<&str>,
) -> Result<Result<Subscriber, LinkProblem>, MailError> {
    let Some(v) = token.and_then(|t| state.links.verify(Purpose::Preferences, t)) else {
        return Ok(Err(LinkProblem::Invalid));
    };
    let Some(sub) = state.outbox.store.subscriber(&v.email)? else {
        return Ok(Err(LinkProblem::NotSubscribed));
    };
    let issued = v.issued.unwrap_or(i64::MIN);
    if !sub.accepts_token(issued) || sub.state != SubState::Active {
        return Ok(Err(LinkProblem::Superseded));
    }
    Ok(Ok(sub))
}

/// `GET /preferences`: the subscriber's schedule and categories, in a form.
async fn preferences_page(
    State(state): State<Arc<SubscribeState>>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let token = q.token.unwrap_or_default();
    match preferences_subscriber(&state, Some(&token)) {
        Ok(Ok(sub)) => {
            // Before the store is read, the subscriber's own categories are the choices.
            let known = state.categories.read().expect("categories").clone();
            let known = known.unwrap_or_else(|| sub.categories.clone());
            let mut form = Refill::new(&sub.email, Some(sub.schedule), &sub.categories, &known);
            form.action = "preferences".into();
            form.token = Some(token);
            form.button = "Lưu".into();
            form.unsubscribe_url = Some(
                state
                    .links
                    .unsubscribe_url(&sub.email, state.outbox.clock.now_s()),
            );
            state.render(StatusCode::OK, |pages| {
                pages.subscribe_again(
                    "Đổi cách nhận tin",
                    "Chọn cách nhận thư và các chuyên mục bạn quan tâm, rồi bấm “Lưu”.",
                    &form,
                )
            })
        }
        Ok(Err(problem)) => state.link_problem(problem),
        Err(e) => {
            tracing::error!("preferences: {e}");
            state.unavailable()
        }
    }
}

/// `POST /preferences`: saves schedule and categories.
async fn preferences(
    State(state): State<Arc<SubscribeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = state.cross_site(&headers) {
        return refused;
    }
    let mut token = None;
    let mut schedule = None;
    let mut categories = Vec::new();
    for (k, v) in form_urlencoded::parse(&body) {
        match &*k {
            "token" => token = Some(v.into_owned()),
            "schedule" => schedule = Schedule::parse(&v),
            "categories" if !v.trim().is_empty() => categories.push(v.trim().to_owned()),
            _ => {}
        }
    }
    categories.truncate(MAX_CATEGORIES);
    let mut sub = match preferences_subscriber(&state, token.as_deref()) {
        Ok(Ok(sub)) => sub,
        Ok(Err(problem)) => return state.link_problem(problem),
        Err(_) => return state.unavailable(),
    };
    let known = state.categories.read().expect("categories").clone();
    let mut form = Refill::new(
        &sub.email,
        schedule,
        &categories,
        known.as_ref().unwrap_or(&categories),
    );
    form.action = "preferences".into();
    form.token = token;
    form.button = "Lưu".into();
    // Before the store is read nothing is saved, not even "every category": a form shown
    // then may not have listed the subscriber's own.
    let Some(known) = known else {
        return state.starting(&form);
    };
    let Some(schedule) = schedule else {
        form.problem = Some("schedule");
        return state.refill(
            "Thông tin chưa hợp lệ",
            "Vui lòng chọn cách nhận tin.",
            &form,
        );
    };
    let categories = match canonical_categories(&categories, &known) {
        Ok(c) => c,
        Err(_) => {
            form.problem = Some("categories");
            return state.refill(
                "Chuyên mục không có",
                "Vui lòng chọn trong các chuyên mục có trên trang.",
                &form,
            );
        }
    };
    sub.schedule = schedule;
    sub.categories = categories;
    sub.updated = state.outbox.clock.now_s();
    let outbox = state.outbox.clone();
    let saved = tokio::task::spawn_blocking(move || -> Result<(), MailError> {
        outbox.store.put_subscriber(&sub)?;
        outbox.store.flush()?;
        Ok(())
    })
    .await;
    match saved {
        Ok(Ok(())) => state.page(
            StatusCode::OK,
            "Đã lưu",
            "Từ nay bạn nhận tin theo lựa chọn mới.",
            None,
        ),
        _ => state.unavailable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subscription routes on a real state database in `dir`, with the shared list of
    /// categories (not read yet) to set, the outbox and the links.
    fn routes(
        dir: &std::path::Path,
    ) -> (Router, crate::subscriber::KnownCategories, Outbox, Links) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = crate::config::Config::parse(&format!(
            "[site]\nbase_url = \"https://hdnd.example.vn\"\n[store]\ndir = \"{}\"\n\
             [feeds]\ndir = \"{}\"\n[templates]\ndir = \"{}\"\n[state]\ndir = \"{}\"\n",
            root.join("articles").display(),
            root.join("feeds").display(),
            root.join("templates").display(),
            dir.display(),
        ))
        .expect("config");
        let store = crate::store::Store::open(dir).expect("state");
        let site = crate::feed::SiteInfo::new("HĐND", "https://hdnd.example.vn", "vi");
        let mut templates = crate::publish::load_templates(&root.join("templates")).unwrap();
        templates.set_site(&site, &[]);
        let templates = Arc::new(std::sync::RwLock::new(Arc::new(templates)));
        let site = crate::site::share_site(site);
        let mail = crate::mail::Mail::setup(
            &config,
            store,
            templates.clone(),
            site.clone(),
            Arc::default(),
            crate::clock::Clock::system(),
        )
        .expect("mail");
        let categories = crate::subscriber::KnownCategories::default();
        let state = SubscribeState::new(
            mail.outbox.clone(),
            mail.links.clone(),
            categories.clone(),
            templates,
            site,
            100,
        );
        (router(Arc::new(state)), categories, mail.outbox, mail.links)
    }

    async fn post(app: &Router, path: &str, body: &str) -> (StatusCode, HeaderMap, String) {
        use tower::ServiceExt;
        let request = axum::http::Request::post(path)
            .header(header::ORIGIN, "https://hdnd.example.vn")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        let r = app.clone().oneshot(request).await.unwrap();
        let (parts, body) = r.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    #[tokio::test]
    async fn a_category_posted_before_the_store_is_read_is_asked_again_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (app, categories, outbox, _) = routes(dir.path());
        let form = "email=dan%40example.vn&schedule=immediate&categories=TH%C3%94NG+B%C3%81O";
        let (status, headers, page) = post(&app, "/subscribe", form).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
        assert_eq!(headers[header::RETRY_AFTER], "5");
        assert!(page.contains("Vui lòng gửi lại sau giây lát"), "{page}");
        assert!(page.contains("value=\"THÔNG BÁO\" checked"), "{page}");
        assert!(
            page.contains("dan@example.vn"),
            "the address is kept: {page}"
        );
        assert!(outbox.store.subscriber("dan@example.vn").unwrap().is_none());
        // Every category needs no list: taken at once.
        let (status, _, page) = post(&app, "/subscribe", "email=tat%40example.vn").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(outbox.store.subscriber("tat@example.vn").unwrap().is_some());

        // Once the store is read, the same form is taken, and an unknown category refused.
        *categories.write().unwrap() = Some(vec!["THÔNG BÁO".to_owned()]);
        let (status, _, page) = post(&app, "/subscribe", form).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let sub = outbox.store.subscriber("dan@example.vn").unwrap().unwrap();
        assert_eq!(sub.categories, vec!["THÔNG BÁO".to_owned()]);
        let (status, _, page) = post(
            &app,
            "/subscribe",
            "email=x%40example.vn&categories=KH%C3%81C",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
        assert!(page.contains("Không có chuyên mục"), "{page}");
    }

    #[tokio::test]
    async fn the_form_address_opened_in_the_address_bar_leads_to_the_form() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _, _, _) = routes(dir.path());
        let request = axum::http::Request::get("/subscribe")
            .body(axum::body::Body::empty())
            .unwrap();
        let r = tower::ServiceExt::oneshot(app, request).await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://hdnd.example.vn/#dang-ky"
        );
    }

    #[tokio::test]
    async fn a_second_request_does_not_change_what_the_mail_sent_asks_to_confirm() {
        let dir = tempfile::tempdir().unwrap();
        let (app, categories, outbox, _) = routes(dir.path());
        *categories.write().unwrap() = Some(vec!["THÔNG BÁO".to_owned()]);
        let weekly = "email=mai%40example.vn&schedule=weekly&categories=TH%C3%94NG+B%C3%81O";
        let (status, _, page) = post(&app, "/subscribe", weekly).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        // Anyone may post the same address with other choices: the form answers the same,
        // and what the confirmation mail describes stays what a confirmation does.
        let (status, _, page) = post(&app, "/subscribe", "email=mai%40example.vn").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let sub = outbox.store.subscriber("mai@example.vn").unwrap().unwrap();
        assert_eq!(sub.state, SubState::Pending);
        assert_eq!(
            (sub.schedule, &sub.categories[..]),
            (Schedule::Weekly, &["THÔNG BÁO".to_owned()][..])
        );
        // A day later a new mail may go, with the new choices.
        let now = outbox.clock.now_s();
        let mut sub = sub;
        sub.confirm_sent = Some(now - 24 * 3600);
        outbox.store.put_subscriber(&sub).unwrap();
        let (status, _, page) = post(&app, "/subscribe", "email=mai%40example.vn").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let sub = outbox.store.subscriber("mai@example.vn").unwrap().unwrap();
        assert_eq!(sub.schedule, Schedule::Immediate);
        assert!(sub.categories.is_empty());
        assert!(
            sub.confirm_sent.is_some_and(|t| t >= now),
            "a new mail was queued"
        );
    }

    #[tokio::test]
    async fn a_confirmation_the_relay_refused_may_be_asked_for_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (app, categories, outbox, _) = routes(dir.path());
        *categories.write().unwrap() = Some(vec!["THÔNG BÁO".to_owned()]);
        let confirmations = || {
            outbox
                .store
                .deliveries_with_prefix("c\0solo@example.vn\0")
                .unwrap()
        };
        // Asked for ten seconds ago; its mail is still on its way.
        let ago = outbox.clock.now_s() - 10;
        let mut sub = Subscriber::new("solo@example.vn", Schedule::Immediate, Vec::new(), ago);
        let mut first = crate::store::Delivery::new(
            crate::store::Kind::Confirm { at: ago },
            "solo@example.vn",
            ago * 1000,
        );
        sub.confirm_sent = Some(ago);
        outbox.store.put_subscriber(&sub).unwrap();
        outbox.store.enqueue(&first).unwrap();
        post(&app, "/subscribe", "email=solo%40example.vn").await;
        assert_eq!(confirmations().len(), 1, "one a day");
        // The relay refused it: asking again sends a new one.
        first.state = crate::store::DeliveryState::Failed;
        outbox.store.update(&first.key(), &first, None).unwrap();
        let (status, _, _) = post(&app, "/subscribe", "email=solo%40example.vn").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(confirmations().len(), 2);
        // And only once: the new one is on its way.
        post(&app, "/subscribe", "email=solo%40example.vn").await;
        assert_eq!(confirmations().len(), 2);
    }

    #[tokio::test]
    async fn who_unsubscribed_by_mistake_gets_a_confirmation_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (app, categories, outbox, _) = routes(dir.path());
        *categories.write().unwrap() = Some(vec!["THÔNG BÁO".to_owned()]);
        let now = outbox.clock.now_s();
        let mut sub = Subscriber::new("lan@example.vn", Schedule::Daily, Vec::new(), now - 60);
        sub.confirm_sent = Some(now - 60);
        sub.confirmed = Some(now - 30);
        // In the very second of the post, as a quick hand (or a script) does.
        sub.end(SubState::Unsubscribed, now);
        outbox.store.put_subscriber(&sub).unwrap();
        let (status, _, page) = post(&app, "/subscribe", "email=lan%40example.vn").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let sub = outbox.store.subscriber("lan@example.vn").unwrap().unwrap();
        assert_eq!(sub.state, SubState::Pending);
        assert!(
            sub.confirm_sent.is_some_and(|t| t >= now),
            "a new mail was queued"
        );
        // Its link works: issued after the end, which refuses the links of that second.
        let mails = outbox
            .store
            .deliveries_with_prefix("c\0lan@example.vn\0")
            .unwrap();
        let [(_, mail)] = &mails[..] else {
            panic!("one confirmation: {mails:?}")
        };
        let crate::store::Kind::Confirm { at } = mail.kind else {
            panic!("{mail:?}")
        };
        assert!(
            sub.accepts_token(at),
            "issued {at}, ended {:?}",
            sub.tokens_after
        );
        // Once: the next post that day waits for the day to pass.
        let (status, _, page) =
            post(&app, "/subscribe", "email=lan%40example.vn&schedule=weekly").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let again = outbox.store.subscriber("lan@example.vn").unwrap().unwrap();
        assert_eq!(
            (again.confirm_sent, again.schedule),
            (sub.confirm_sent, Schedule::Immediate)
        );
    }

    #[tokio::test]
    async fn preferences_are_shown_but_not_saved_before_the_store_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (app, categories, outbox, links) = routes(dir.path());
        let mut sub = Subscriber::new(
            "dan@example.vn",
            Schedule::Immediate,
            vec!["THÔNG BÁO".into()],
            0,
        );
        sub.state = SubState::Active;
        sub.confirmed = Some(0);
        outbox.store.put_subscriber(&sub).unwrap();
        let token = links
            .signer
            .sign(Purpose::Preferences, &sub.email, outbox.clock.now_s());
        // The page lists the subscriber's own categories, checked.
        let request = axum::http::Request::get(format!("/preferences?token={token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let r = tower::ServiceExt::oneshot(app.clone(), request)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let page = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let page = String::from_utf8_lossy(&page);
        assert!(page.contains("value=\"THÔNG BÁO\" checked"), "{page}");
        // A way out, with a link that unsubscribes this address.
        let out = page
            .split("href=\"")
            .find_map(|p| {
                p.split('"')
                    .next()
                    .filter(|u| u.contains("/unsubscribe?token="))
            })
            .expect("an unsubscribe link");
        let out_token = out.split("token=").nth(1).unwrap();
        assert_eq!(
            links
                .verify(Purpose::Unsubscribe, out_token)
                .map(|v| v.email)
                .as_deref(),
            Some("dan@example.vn")
        );
        // Saved before the store is read: not even "every category" is taken.
        let form = format!("token={token}&schedule=daily");
        let (status, headers, page) = post(&app, "/preferences", &form).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
        assert_eq!(headers[header::RETRY_AFTER], "5");
        let kept = outbox.store.subscriber("dan@example.vn").unwrap().unwrap();
        assert_eq!(kept.schedule, Schedule::Immediate);
        assert_eq!(kept.categories, vec!["THÔNG BÁO".to_owned()]);
        // Once it is read, the same form is saved.
        *categories.write().unwrap() = Some(vec!["THÔNG BÁO".to_owned()]);
        let (status, _, page) = post(&app, "/preferences", &form).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let saved = outbox.store.subscriber("dan@example.vn").unwrap().unwrap();
        assert_eq!(saved.schedule, Schedule::Daily);
        assert!(saved.categories.is_empty());
        // Removed by the council since: the link says so, not that a confirmation expired.
        assert!(outbox.store.remove_subscriber("dan@example.vn").unwrap());
        let (status, _, page) = post(&app, "/preferences", &form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
        assert!(page.contains("Địa chỉ không còn đăng ký"), "{page}");
        assert!(!page.contains("hết hạn"), "{page}");
    }

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    fn peer(ip: &str) -> Option<Peer> {
        Some(Peer(SocketAddr::new(ip.parse().unwrap(), 40000)))
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let h = headers("6.6.6.6, 203.0.113.9");
        // No trusted proxy: the connection's address, whatever the header says.
        assert_eq!(
            client_ip(peer("127.0.0.1"), &h, &[]),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        // Trusted: the right-most address the proxy added, not what the client wrote.
        let trusted = [Cidr::parse("127.0.0.1/32").unwrap()];
        assert_eq!(
            client_ip(peer("127.0.0.1"), &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A chain of trusted proxies is walked through.
        let chain = [
            Cidr::parse("127.0.0.1").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let h = headers("6.6.6.6, 198.51.100.7, 10.1.2.3");
        assert_eq!(
            client_ip(peer("127.0.0.1"), &h, &chain),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // From anywhere else the header is ignored.
        assert_eq!(
            client_ip(peer("192.0.2.1"), &h, &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_limiter_stays_within_its_cap() {
        let limiter = Limiter::new(5);
        for i in 0..(RATE_CLIENTS as u32 * 3) {
            let ip = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            assert!(limiter.allow(ip).is_ok());
            assert!(limiter.len() <= RATE_CLIENTS);
        }
        let one = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..5 {
            assert!(limiter.allow(one).is_ok());
        }
        assert!(limiter.allow(one).is_err(), "the sixth within the hour");
    }
}

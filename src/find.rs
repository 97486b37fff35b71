//! `GET /search?q=…&page=n`: the search page (daemon only).

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use minijinja::context;
use serde::Serialize;

use crate::scan::{ArticleCache, StoreReader};
use crate::search::{PER_PAGE, Piece, Search, highlight, snippet};
use crate::site::{SharedSite, SharedTemplates, local_time};

/// Words of a snippet.
const SNIPPET_WORDS: usize = 36;

/// What the search page needs.
pub struct FindState {
    pub search: Arc<Search>,
    pub templates: SharedTemplates,
    pub site: SharedSite,
    /// Bodies for the snippets: from the cache, else read again.
    pub articles: Arc<ArticleCache>,
    pub reader: StoreReader,
}

pub fn router(state: Arc<FindState>) -> Router {
    Router::new()
        .route("/search", get(search_page))
        .with_state(state)
}

#[derive(Serialize)]
struct ResultCtx {
    title: Vec<Piece>,
    snippet: Vec<Piece>,
    url: String,
    category: String,
    published_iso: String,
    published_text: String,
}

async fn search_page(
    State(state): State<Arc<FindState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut query = String::new();
    let mut page = 1usize;
    // Lossy: a malformed query string still gets a page, not an error.
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            // Control characters (a NUL) are nobody's words: never echoed into the page.
            // Composed (NFC) as the articles are: a phone's keyboard may send a letter and
            // its marks apart, and the words would split at the marks; without the invisible
            // characters the articles are cleaned of (a zero-width space splits a word).
            "q" => query = crate::article::clean(&v),
            "page" => page = v.parse().unwrap_or(1).clamp(1, 10_000),
            _ => {}
        }
    }
    // Compressed as the other pages are, for phones on slow links.
    let gzip = crate::http::accepts_gzip(&headers);
    let rendered = tokio::task::spawn_blocking(move || {
        render(&state, &query, page).map(|html| {
            if gzip && html.len() >= crate::http::GZIP_MIN_BYTES {
                (crate::http::gzip(html.as_bytes()), true)
            } else {
                (html.into_bytes(), false)
            }
        })
    })
    .await;
    match rendered {
        Ok(Ok((body, gzipped))) => {
            let mut r = (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-cache"),
                    (header::VARY, "Accept-Encoding"),
                ],
                body,
            )
                .into_response();
            if gzipped {
                r.headers_mut().insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            r
        }
        Ok(Err(e)) => {
            tracing::error!("{e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "lỗi máy chủ, xin thử lại sau\n",
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!("search panicked: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn render(state: &FindState, query: &str, page: usize) -> Result<String, String> {
    // What is searched: the whole words that fit the limits, and the page says so.
    let limit = query
        .char_indices()
        .nth(crate::search::MAX_QUERY_CHARS)
        .map_or(query.len(), |(at, _)| at);
    let mut end = None;
    for (n, (at, w)) in crate::search::words(query).enumerate() {
        if n == crate::search::MAX_QUERY_WORDS || at + w.len() > limit {
            break;
        }
        end = Some(at + w.len());
    }
    let used = match end {
        Some(end) if query[end..].chars().any(char::is_alphanumeric) => &query[..end],
        _ => &query[..limit],
    };
    let shortened = used.len() < query.len();
    let query = used;
    // Past the last page, the last page, not a count of results with none shown.
    let results = state
        .search
        .search_or_last(query, page)
        .map_err(|e| e.to_string())?;
    let page = results.page;
    let site = state.site.read().expect("site lock").clone();
    let hits: Vec<ResultCtx> = results
        .hits
        .iter()
        .map(|e| {
            let body = state.reader.body(&state.articles, e).ok();
            ResultCtx {
                title: highlight(&e.title, &results.words),
                snippet: body.map_or_else(Vec::new, |a| {
                    snippet(&a.paragraphs, &results.words, SNIPPET_WORDS)
                }),
                url: site.article_url(&e.id),
                category: e.category.to_string(),
                published_iso: e.published.to_rfc3339(),
                published_text: local_time(&e.published),
            }
        })
        .collect();
    let pages = results.total.div_ceil(PER_PAGE);
    let url = |n: usize| {
        let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        format!("{}/search?q={q}&page={n}", site.base_url)
    };
    let templates = crate::site::current(&state.templates);
    templates
        .render(
            "web/search.html",
            context! {
                query,
                shortened,
                max_words => crate::search::MAX_QUERY_WORDS,
                ready => state.search.ready(),
                total => results.total,
                typed_as => results.typed_as,
                page,
                pages,
                first => (page - 1) * PER_PAGE + 1,
                results => minijinja::Value::from(minijinja::value::Serde(hits)),
                prev_url => (page > 1 && page <= pages + 1).then(|| url(page - 1)),
                next_url => (page < pages).then(|| url(page + 1)),
            },
        )
        .map_err(|e| e.to_string())
}

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
            "page" => page = page_number(&v),
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

/// The page asked for, from 1 to 10,000: a number too large to read is a page past the
/// last (the last is shown), not the first; what is no number is the first.
fn page_number(given: &str) -> usize {
    match given.parse::<usize>() {
        Ok(n) => n,
        Err(_) if !given.is_empty() && given.bytes().all(|b| b.is_ascii_digit()) => usize::MAX,
        Err(_) => 1,
    }
    .clamp(1, 10_000)
}

/// Each of `words` (folded) as `title` or else `paragraphs` first spell it, lowercase; as it
/// is where neither has it.
fn spelled_as_in(words: &[String], title: &str, paragraphs: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            std::iter::once(title)
                .chain(paragraphs.iter().map(String::as_str))
                .flat_map(crate::search::words)
                .find(|(_, word)| crate::search::fold_word(word) == *w)
                .map_or_else(|| w.clone(), |(_, word)| word.to_lowercase())
        })
        .collect::<Vec<_>>()
        .join(" ")
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
    // Each body read once: for its snippet, and the first for what a Telex query meant.
    let bodies: Vec<_> = results
        .hits
        .iter()
        .map(|e| state.reader.body(&state.articles, e).ok())
        .collect();
    let hits: Vec<ResultCtx> = results
        .hits
        .iter()
        .zip(&bodies)
        .map(|(e, body)| ResultCtx {
            title: highlight(&e.title, &results.words),
            snippet: body.as_ref().map_or_else(Vec::new, |a| {
                snippet(&a.paragraphs, &results.words, SNIPPET_WORDS)
            }),
            url: site.article_url(&e.id),
            category: e.category.to_string(),
            published_iso: e.published.to_rfc3339(),
            published_text: local_time(&e.published),
        })
        .collect();
    // What a query typed without marks was read as, spelled as the first result writes it
    // (`kyf hopj` → `kỳ họp`, not the bare `ki hop` it was searched by).
    let typed_as = results
        .typed_as
        .as_ref()
        .map(|bare| match results.hits.first() {
            Some(e) => {
                let paragraphs = bodies[0].as_ref().map_or(&[][..], |a| &a.paragraphs[..]);
                spelled_as_in(&results.words, &e.title, paragraphs)
            }
            None => bare.clone(),
        });
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
                max_chars => crate::search::MAX_QUERY_CHARS,
                ready => state.search.ready(),
                total => results.total,
                typed_as,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_number_too_large_to_read_is_past_the_last() {
        assert_eq!(page_number("3"), 3);
        assert_eq!(page_number("99999999999999999999999"), 10_000);
        assert_eq!(page_number("0"), 1);
        assert_eq!(page_number("abc"), 1);
        assert_eq!(page_number("-1"), 1);
        assert_eq!(page_number(""), 1);
    }

    #[test]
    fn words_read_from_telex_are_spelled_as_the_article_spells_them() {
        let words = vec!["ki".to_owned(), "hop".to_owned(), "xyz".to_owned()];
        let paragraphs = vec!["Khai mạc kỳ họp.".to_owned()];
        assert_eq!(
            spelled_as_in(&words, "Kỳ họp thứ mười", &paragraphs),
            "kỳ họp xyz"
        );
        assert_eq!(
            spelled_as_in(&words, "Thông báo", &paragraphs),
            "kỳ họp xyz"
        );
    }
}

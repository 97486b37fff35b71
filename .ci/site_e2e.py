#!/usr/bin/env python3
"""The web site as visitors, crawlers and feed readers see it, from the real binary, checked
with tools bantin did not write (html5lib, feedparser, ElementTree, Chromium and axe-core).

    site_e2e.py BANTIN_BINARY WORK_DIR [--shots DIR] [--keep]

Generates a store of 1,000 articles (benches/gen_store.py, seed 11) and its feed definitions
in WORK_DIR, then checks two sites made from it:

- the static site `bantin build` writes, served from its folder by Python's http.server: a
  crawl from `/` must reach every article, and every link (but `/search` and form posts, which
  only the daemon answers) must resolve to a file;
- the daemon (`bantin run`, on a free loopback port, `file` mail transport, state in WORK_DIR):
  the same crawl where every link answers 200; search; the 404 page; and, when SITE_NODE_PATH
  names a node_modules with playwright-core and axe-core, .ci/site_browser.mjs in Chromium
  (accessibility, 360 px, skip link, subscribing), whose confirmation mail must reach the
  outbox.

On both: every HTML page parses with html5lib in strict mode and has `<html lang="vi">`, one
`<h1>` and a `<title>`; fragments point at ids that exist; listings hold what the store says
(pages of 20 counted from the oldest, months of the archive, a category's newest twenty);
each feed's RFC 5005 archive chain (Atom and RSS) holds every article of the feed exactly once;
`/feeds.opml` has one outline per feed. One line per check, then `site: P passed, F failed`;
the exit status is 1 when a check failed. With --keep, the daemon keeps running afterwards
until interrupted, for a look by hand.
"""

import argparse
import calendar
import collections
import email
import email.policy
import functools
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import feedparser
import html5lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_feeds import read_store  # noqa: E402 - the store as read independently of bantin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTICLES = 1000
SEED = 11
PAGE_SIZE = 20
# Bounds, so that a link loop or a runaway archive chain ends the check instead of CI.
MAX_URLS = 20000
MAX_ARCHIVES = 2000
HTTP_TIMEOUT = 30
START_TIMEOUT = 120
BROWSER_TIMEOUT = 600
SUBSCRIBER = "nguoi.dan@example.vn"
FH = "{http://purl.org/syndication/history/1.0}"
ATOM = "{http://www.w3.org/2005/Atom}"
# Letters only Vietnamese writes (lowercase): a page in Vietnamese has some.
VIETNAMESE = set("ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ")

# The site's routes, relative to the base URL's path: what the crawl must reach, by kind.
KINDS = [
    ("index", re.compile(r"/(?:index\.html)?")),
    ("article", re.compile(r"/articles/(.+)\.html")),
    ("category", re.compile(r"/categories/([^/]+)\.html")),
    ("category page", re.compile(r"/categories/([^/]+)/(\d+)\.html")),
    ("page", re.compile(r"/pages/(\d+)\.html")),
    ("archive", re.compile(r"/archive/(?:index\.html)?")),
    ("archive month", re.compile(r"/archive/(\d{4})/(\d{2})\.html")),
    ("feed page", re.compile(r"/feeds/([^/]+)\.html")),
    ("opml", re.compile(r"/feeds\.opml")),
    ("feed", re.compile(r"/feeds/([^/]+)\.(rss|atom|json)")),
    ("feed archive", re.compile(r"/feeds/([^/]+)/archive/(\d+)\.(rss|atom)")),
    ("search", re.compile(r"/search")),
]
# A URL attribute written with `/` as `&#x2f;` (minijinja's attribute escaping): valid, but
# read badly by link scanners (shared/PITFALLS.md).
ESCAPED_URL = re.compile(rb'(?:href|src|action)="[^"]*&#x2f;', re.I)
REQUIRED_KINDS = ["index", "article", "category", "category page", "page", "archive",
                  "archive month", "feed page", "opml", "feed"]


class Report:
    """One line per check; a failed check lists its first problems."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, problems, detail=""):
        problems = list(problems)
        if problems:
            self.failed += 1
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            print(f"FAIL {name}: {len(problems)} problem(s){more}", flush=True)
            for p in problems[:10]:
                print(f"       {p}", flush=True)
        else:
            self.passed += 1
            print(f"ok   {name}{': ' + detail if detail else ''}", flush=True)
        return not problems


class Response:
    def __init__(self, status, headers, body, error=None):
        self.status, self.headers, self.body, self.error = status, headers, body, error

    @property
    def ctype(self):
        return (self.headers.get("Content-Type") or "") if self.headers else ""

    @property
    def is_html(self):
        return self.ctype.split(";")[0].strip().lower() == "text/html"

    def text(self):
        return self.body.decode("utf-8", "replace")

    def __str__(self):
        if self.error:
            return f"no answer ({self.error})"
        if 300 <= self.status < 400:
            return f"{self.status} to {self.headers.get('Location')}"
        return str(self.status)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A link must answer 200 itself: a redirect is reported, not followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def quote_url(url):
    """`url` with what a browser would percent-encode encoded (non-ASCII, spaces)."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.quote(parts.path, safe="/%:@!$&'()*+,;=-._~")
    query = urllib.parse.quote(parts.query, safe="=&%+:@!$'()*,;/?-._~")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def fetch(url, data=None):
    try:
        req = urllib.request.Request(quote_url(url), data=data)
        with OPENER.open(req, timeout=HTTP_TIMEOUT) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.headers, e.read())
    except (OSError, urllib.error.URLError) as e:
        return Response(0, None, b"", error=e)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fold(text):
    """Lowercase, without diacritics (đ as d): how a diacritic-insensitive search compares."""
    text = unicodedata.normalize("NFD", text.lower().replace("đ", "d"))
    return "".join(c for c in text if not unicodedata.combining(c))


def squash(text):
    return " ".join(unicodedata.normalize("NFC", text).split())


# ---------------------------------------------------------------------------------------------
# HTML


def parse_html(body, ctype=""):
    """The page's tree and its parse errors: html5lib in strict mode decides whether the page
    is valid; when it is not, a lenient parse lists every error with its place."""
    charset = None
    match = re.search(r"charset=([\w-]+)", ctype or "", re.I)
    if match:
        charset = match.group(1)

    def parser(strict):
        return html5lib.HTMLParser(strict=strict, tree=html5lib.getTreeBuilder("etree"),
                                   namespaceHTMLElements=False)

    try:
        return parser(True).parse(body, transport_encoding=charset), []
    except html5lib.html5parser.ParseError:
        p = parser(False)
        tree = p.parse(body, transport_encoding=charset)
        errors = []
        for (line, col), code, datavars in p.errors:
            message = html5lib.constants.E.get(code, code)
            try:
                message = message % datavars
            except (TypeError, KeyError, ValueError):
                pass
            errors.append(f"line {line} col {col}: {message}")
        return tree, errors or ["strict parse failed"]


def elements(tree):
    return (el for el in tree.iter() if isinstance(el.tag, str))


def text_of(el):
    return squash("".join(el.itertext()))


def main_of(tree):
    """The page's `<main>` (what a listing lists), else the whole page."""
    found = tree.find(".//main")
    return found if found is not None else tree


def page_links(tree):
    """(url attribute value, how: 'get' for links and sources, 'form-get' or 'form-post')."""
    for el in elements(tree):
        tag = el.tag.lower()
        if tag in ("a", "area", "link") and el.get("href") is not None:
            yield el.get("href"), "get"
        elif tag in ("img", "script", "iframe", "source", "audio", "video") and el.get("src"):
            yield el.get("src"), "get"
        elif tag == "form":
            method = (el.get("method") or "get").strip().lower()
            yield el.get("action") or "", "form-post" if method == "post" else "form-get"


def ids_of(tree):
    ids = collections.Counter(el.get("id") for el in elements(tree) if el.get("id"))
    names = {el.get("name") for el in elements(tree) if el.tag == "a" and el.get("name")}
    return ids, names


# ---------------------------------------------------------------------------------------------
# The crawl


class Site:
    """What is known of one site (static or daemon): its base URL and what a crawl found."""

    def __init__(self, label, base):
        self.label = label
        self.base = base.rstrip("/")
        parts = urllib.parse.urlsplit(self.base)
        self.origin = (parts.scheme, parts.netloc)
        self.base_path = parts.path.rstrip("/")
        self.pages = {}        # url -> Response
        self.trees = {}        # url -> html tree (HTML pages)
        self.html_errors = {}  # url -> parse errors
        self.linked_from = collections.defaultdict(set)  # url -> pages linking to it
        self.fragments = []    # (page, target url, fragment)
        self.search_links = set()
        self.post_actions = collections.defaultdict(set)  # action url -> pages
        self.foreign = 0
        self.escaped = []      # pages with `&#x2f;` in a URL attribute

    def local_path(self, url):
        """The route of a same-site URL relative to the base path, or None for another site."""
        parts = urllib.parse.urlsplit(url)
        if (parts.scheme, parts.netloc) != self.origin:
            return None
        path = urllib.parse.unquote(parts.path)
        if self.base_path and not (path == self.base_path or path.startswith(self.base_path + "/")):
            return None
        return path[len(self.base_path):] or "/"

    def kind(self, url):
        path = self.local_path(url)
        if path is None:
            return None, None
        for name, pattern in KINDS:
            match = pattern.fullmatch(path)
            if match:
                return name, match
        return "other", None

    def url(self, route):
        return self.base + route

    def resolve(self, page, href):
        """The absolute URL of `href` on `page`, without its fragment, and the fragment; None
        for a scheme that is not fetched (mailto:, tel:, javascript:, data:)."""
        href = href.strip()
        if href.lower().startswith("webcal://"):
            href = "http://" + href[len("webcal://"):]
        url = urllib.parse.urljoin(page, href)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            return None, None
        url, fragment = urllib.parse.urldefrag(url)
        return url, fragment


def crawl(site):
    """Fetches every same-site URL reachable from the index by GET links (a, link, area,
    sources, GET forms); pages under /search and form posts are recorded, not fetched."""
    start = site.url("/")
    queue = collections.deque([start])
    seen = {start}
    while queue and len(site.pages) < MAX_URLS:
        url = queue.popleft()
        response = fetch(url)
        site.pages[url] = response
        if response.status != 200 or not response.is_html:
            continue
        tree, errors = parse_html(response.body, response.ctype)
        site.trees[url] = tree
        if ESCAPED_URL.search(response.body):
            site.escaped.append(url)
        if errors:
            site.html_errors[url] = errors
        for href, how in page_links(tree):
            target, fragment = site.resolve(url, href)
            if target is None:
                continue
            kind, _ = site.kind(target)
            if kind is None:
                site.foreign += 1
                continue
            if how == "form-post":
                site.post_actions[target].add(url)
                continue
            if kind == "search":
                site.search_links.add(target)
                continue
            if fragment:
                site.fragments.append((url, target, fragment))
            site.linked_from[target].add(url)
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return site


def article_ids(site, tree, skip=None):
    """The article ids a page links to, in order, once each (from its `<main>`)."""
    ids = []
    for el in elements(main_of(tree)):
        if el.tag != "a" or not el.get("href"):
            continue
        url, _ = site.resolve(site.base + "/", el.get("href"))
        if url is None:
            continue
        kind, match = site.kind(url)
        if kind == "article" and match.group(1) != skip and match.group(1) not in ids:
            ids.append(match.group(1))
    return ids


# ---------------------------------------------------------------------------------------------
# Checks on a crawl


def check_crawl(report, site, store, static_dir=None):
    label = site.label
    by_kind = collections.Counter(site.kind(u)[0] for u in site.pages)
    html_pages = len(site.trees)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items()))
    report.check(f"{label}: crawl stayed bounded", [f"stopped at {MAX_URLS} URLs"]
                 if len(site.pages) >= MAX_URLS else [],
                 f"{len(site.pages)} URLs ({html_pages} HTML pages): {counts}; "
                 f"{site.foreign} links to other sites, {len(site.search_links)} /search links "
                 f"not followed, form posts to {sorted(site.post_actions) or 'nothing'}")

    broken = []
    for url, r in sorted(site.pages.items()):
        if r.status != 200:
            sources = sorted(site.linked_from.get(url, []))[:2]
            broken.append(f"{url}: {r} (linked from {', '.join(sources) or 'the start'})")
    report.check(f"{label}: every linked URL answers 200", broken, f"{len(site.pages)} URLs")

    if static_dir is not None:
        missing = []
        for url in sorted(site.pages):
            route = site.local_path(url)
            rel = route.lstrip("/")
            if not rel or rel.endswith("/"):
                rel += "index.html"
            if not os.path.isfile(os.path.join(static_dir, rel)):
                missing.append(f"{url}: no file {rel} in the output folder")
        report.check(f"{label}: every link resolves to a file", missing,
                     f"{len(site.pages)} files")
    else:
        problems = []
        for action, pages in sorted(site.post_actions.items()):
            r = fetch(action)
            if r.status == 404 or r.status >= 500 or r.status == 0:
                problems.append(f"form posts to {action} (from {sorted(pages)[0]}), "
                                f"which answers GET with {r}")
        report.check(f"{label}: form actions are routes", problems,
                     f"{len(site.post_actions)} action(s) answer GET without 404")

    missing_kinds = [f"no {k} page reached (route {p.pattern})" for k, p in KINDS
                     if k in REQUIRED_KINDS and by_kind[k] == 0]
    report.check(f"{label}: the crawl reaches every kind of page", missing_kinds,
                 ", ".join(REQUIRED_KINDS))

    report.check(f"{label}: valid HTML (html5lib, strict)",
                 [f"{u}: {'; '.join(e[:3])}" for u, e in sorted(site.html_errors.items())],
                 f"{html_pages} pages")

    problems = []
    for url, tree in sorted(site.trees.items()):
        problems += [f"{url}: {p}" for p in page_shape(tree)]
    report.check(f"{label}: every page has lang=\"vi\", one <h1>, a <title>, unique ids",
                 problems, f"{html_pages} pages")

    report.check(f"{label}: URLs in attributes keep their '/' (no &#x2f;)",
                 [f"{u}: an href, src or action holds &#x2f;" for u in site.escaped],
                 f"{html_pages} pages")

    problems = []
    for page, target, fragment in site.fragments:
        tree = site.trees.get(target)
        if tree is None:
            continue  # not HTML or broken: reported above
        ids, names = ids_of(tree)
        if fragment not in ids and fragment not in names:
            problems.append(f"{page}: #{fragment} is no id on {target}")
    report.check(f"{label}: fragment links point at ids", problems,
                 f"{len(site.fragments)} links with fragments")

    reached = {site.kind(u)[1].group(1) for u in site.pages
               if site.kind(u)[0] == "article" and site.pages[u].status == 200}
    ids = {a[1] for a in store}
    report.check(f"{label}: the crawl reaches every article",
                 [f"article {i} not reached" for i in sorted(ids - reached)]
                 + [f"article page {i} is not in the store" for i in sorted(reached - ids)],
                 f"{len(reached & ids)} of {len(ids)}")

    check_listings(report, site, store)


def page_shape(tree):
    problems = []
    if tree.tag != "html" or tree.get("lang") != "vi":
        problems.append(f"<html lang={tree.get('lang')!r}>, expected lang=\"vi\"")
    h1 = tree.findall(".//h1")
    if len(h1) != 1:
        problems.append(f"{len(h1)} <h1> elements")
    title = tree.find("./head/title")
    if title is None or not text_of(title):
        problems.append("no <title> (or an empty one) in <head>")
    ids, _ = ids_of(tree)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        problems.append(f"duplicate ids {dup}")
    return problems


def check_listings(report, site, store):
    """Listings hold what the store says: the index, pages of 20 over all articles and over
    each category counted from the oldest, a category's newest 20, the months of the archive,
    article pages' headings and category links, feed pages."""
    label = site.label
    when = {a[1]: a[0] for a in store}
    category_of = {a[1]: a[2] for a in store}
    title_of = {a[1]: a[3] for a in store}
    listed = {}  # url -> article ids
    for url, tree in site.trees.items():
        kind, _ = site.kind(url)
        if kind in ("index", "category", "category page", "page", "archive month", "feed page"):
            listed[url] = article_ids(site, tree)

    def of_kind(kind):
        return sorted((u, m) for u in listed for k, m in [site.kind(u)] if k == kind)

    # The index: the newest articles.
    problems = []
    index = listed.get(site.url("/")) or []
    if not index:
        problems.append("the index lists no article")
    elif index != [a[1] for a in store[: len(index)]]:
        problems.append(f"the index lists {index[:3]}..., the newest are "
                        f"{[a[1] for a in store[:3]]}...")
    report.check(f"{label}: the index lists the newest articles", problems,
                 f"{len(index)} articles")

    # Categories: every category page lists one category; learn the slugs.
    slug_category, problems = {}, []
    for url, match in of_kind("category") + of_kind("category page"):
        cats = {category_of.get(i) for i in listed[url]}
        if len(cats) != 1:
            problems.append(f"{url} lists articles of {sorted(map(str, cats))}")
            continue
        cat = cats.pop()
        if slug_category.setdefault(match.group(1), cat) != cat:
            problems.append(f"{url}: slug {match.group(1)} lists {cat}, elsewhere "
                            f"{slug_category[match.group(1)]}")
    categories = sorted({a[2] for a in store})
    unreached = [c for c in categories if c not in slug_category.values()]
    problems += [f"no category page reached for {c}" for c in unreached]
    report.check(f"{label}: one category per category page, every category reached",
                 problems, f"{len(slug_category)} categories")

    for slug, cat in sorted(slug_category.items()):
        articles = [a for a in store if a[2] == cat]
        front = listed.get(site.url(f"/categories/{slug}.html"), [])
        problems = newest_page(front, articles, PAGE_SIZE)
        numbered = {int(m.group(2)): listed[u] for u, m in of_kind("category page")
                    if m.group(1) == slug}
        problems += paging(numbered, front, articles, when)
        report.check(f"{label}: category {slug}: newest {PAGE_SIZE}, pages counted from the "
                     f"oldest", problems,
                     f"{len(articles)} articles on {len(numbered)} numbered pages")

    numbered = {int(m.group(1)): listed[u] for u, m in of_kind("page")}
    report.check(f"{label}: /pages/{{n}}.html: all articles, {PAGE_SIZE} a page from the oldest",
                 paging(numbered, index, store, when), f"{len(numbered)} pages")

    # The archive: each month's page lists that month's articles; every month is reached.
    problems, months = [], collections.defaultdict(set)
    for a in store:
        months[(a[0].year, a[0].month)].add(a[1])
    seen = set()
    for url, match in of_kind("archive month"):
        key = (int(match.group(1)), int(match.group(2)))
        seen.add(key)
        got, want = set(listed[url]), months.get(key, set())
        if got != want:
            problems.append(f"{url}: {len(got)} articles, the store has {len(want)} that month "
                            f"(missing {sorted(want - got)[:3]}, extra {sorted(got - want)[:3]})")
    problems += [f"no page for {y}/{m:02d} reached" for y, m in sorted(set(months) - seen)]
    report.check(f"{label}: archive months list their articles", problems,
                 f"{len(seen)} months")

    # Article pages: the title as the heading, a link to the article's category page.
    problems = []
    for url, tree in site.trees.items():
        kind, match = site.kind(url)
        if kind != "article" or match.group(1) not in title_of:
            continue
        ident = match.group(1)
        h1 = tree.find(".//h1")
        if h1 is None or squash(title_of[ident]) not in text_of(h1):
            problems.append(f"{url}: <h1> is not the title {title_of[ident]!r}")
        cat_links = set()
        for el in elements(tree):
            if el.tag == "a" and el.get("href"):
                target, _ = site.resolve(url, el.get("href"))
                k, m = site.kind(target) if target else (None, None)
                if k in ("category", "category page"):
                    cat_links.add(slug_category.get(m.group(1)))
        if category_of[ident] not in cat_links:
            problems.append(f"{url}: no link to the page of its category {category_of[ident]}")
        for other in article_ids(site, tree, skip=ident):
            if category_of.get(other) != category_of[ident]:
                problems.append(f"{url}: links to {other} of another category "
                                f"(previous/next should stay in the category)")
    report.check(f"{label}: article pages: title as <h1>, category link, neighbours in the "
                 f"category", problems)


def newest_page(front, articles, size):
    """`front` lists the newest `size` of `articles` (newest first by date, ties either way)."""
    want = min(size, len(articles))
    if len(front) != want:
        return [f"the newest page lists {len(front)} articles, expected {want}"]
    listed = set(front)
    outside = listed - {a[1] for a in articles}
    if outside:
        return [f"the newest page lists {sorted(outside)[:3]}, not of this list"]
    rest = [a for a in articles if a[1] not in listed]
    oldest_listed = min((a[0] for a in articles if a[1] in listed), default=None)
    if oldest_listed is None:
        return []
    late = [a[1] for a in rest if a[0] > oldest_listed]
    return [f"{i} is newer than an article on the newest page but not on it" for i in late]


def paging(numbered, front, articles, when):
    """Numbered pages 1..N: page 1 the oldest, all full but the last, disjoint, each older than
    the next; with the front page they hold every article (the numbered pages may or may not
    repeat the front page's)."""
    problems = []
    if not numbered:
        return [] if len(articles) <= len(front) else ["no numbered page reached"]
    n = max(numbered)
    missing = sorted(set(range(1, n + 1)) - set(numbered))
    if missing:
        problems.append(f"pages {missing[:5]} of 1..{n} not reached")
    counts = collections.Counter(i for ids in numbered.values() for i in ids)
    dup = [i for i, c in counts.items() if c > 1]
    if dup:
        problems.append(f"{len(dup)} articles on more than one page, e.g. {dup[:3]}")
    ids = {a[1] for a in articles}
    union = set(counts) | set(front)
    if union != ids:
        problems.append(f"pages with the newest page hold {len(union & ids)} of {len(ids)}; "
                        f"missing {sorted(ids - union)[:3]}, not in this list "
                        f"{sorted(union - ids)[:3]}")
    for k in sorted(numbered):
        if k < n and len(numbered[k]) != PAGE_SIZE:
            problems.append(f"page {k} of {n} lists {len(numbered[k])} articles, not {PAGE_SIZE}")
        if k + 1 in numbered:
            older = max((when[i] for i in numbered[k] if i in when), default=None)
            newer = min((when[i] for i in numbered[k + 1] if i in when), default=None)
            if older and newer and older > newer:
                problems.append(f"page {k} holds an article newer than one on page {k + 1} "
                                f"(page 1 must be the oldest)")
    return problems


def check_feed_pages(report, site, feeds, feed_articles):
    problems = []
    for name in sorted(feeds):
        url = site.url(f"/feeds/{name}.html")
        tree = site.trees.get(url)
        if tree is None:
            problems.append(f"{url} not reached as an HTML page")
            continue
        texts = [text_of(tree)] + [el.get("value") or "" for el in elements(tree)
                                   if el.tag in ("input", "textarea")]
        feed_urls = [site.url(f"/feeds/{name}.{ext}") for ext in ("atom", "rss", "json")]
        if not any(u in t for u in feed_urls for t in texts):
            problems.append(f"{url}: no feed URL written out for copying ({feed_urls[0]})")
        if tree.find(".//button") is None:
            problems.append(f"{url}: no button (to copy the URL)")
        ids = article_ids(site, tree)
        newest = [a[1] for a in feed_articles[name][:1]]
        if newest and newest[0] not in ids:
            problems.append(f"{url}: does not list the feed's newest article {newest[0]}")
        outside = [i for i in ids if i not in {a[1] for a in feed_articles[name]}]
        if outside:
            problems.append(f"{url}: lists articles not in the feed: {outside[:3]}")
    report.check(f"{site.label}: feed pages: the URL to copy, a button, the newest items",
                 problems, f"{len(feeds)} feeds")


# ---------------------------------------------------------------------------------------------
# Feeds: RFC 5005 archives, OPML


def entry_ids(site, parsed):
    """(article id, published seconds) of a parsed feed's entries; None ids for entries whose
    link is not an article page of the site."""
    out = []
    for e in parsed.entries:
        kind, match = site.kind(e.get("link") or "")
        ident = match.group(1) if kind == "article" else None
        when = e.get("published_parsed") or e.get("updated_parsed")
        out.append((ident, calendar.timegm(when) if when else None))
    return out


def prev_archive(parsed):
    hrefs = [link.get("href") for link in parsed.feed.get("links", [])
             if link.get("rel") == "prev-archive"]
    return hrefs[0] if hrefs else None


def has_fh_archive(body, fmt):
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return False
    holder = root if fmt == "atom" else root.find("channel")
    return holder is not None and holder.find(f"{FH}archive") is not None


def check_archives(report, site, feeds, feed_articles):
    """For each feed and format: the chain of prev-archive links from the subscription document
    holds every article of the feed exactly once; archives are numbered down to 1 (the
    oldest), each older than the next, each marked fh:archive."""
    for name in sorted(feeds):
        want = {a[1] for a in feed_articles[name]}
        for fmt in ("atom", "rss"):
            problems = []
            url = site.url(f"/feeds/{name}.{fmt}")
            r = fetch(url)
            if r.status != 200:
                report.check(f"{site.label}: archives of {name}.{fmt}", [f"{url}: {r}"])
                continue
            sub = feedparser.parse(r.body)
            if sub.bozo:
                problems.append(f"{url}: feedparser: {sub.bozo_exception}")
            if has_fh_archive(r.body, fmt):
                problems.append(f"{url}: the subscription document carries fh:archive")
            sub_ids = [i for i, _ in entry_ids(site, sub)]
            pattern = re.compile(rf"/feeds/{re.escape(name)}/archive/(\d+)\.{fmt}")
            docs = []  # newest first: (number, [(id, when)])
            href, seen = prev_archive(sub), set()
            if href is None:
                problems.append(f"{url}: no link rel=\"prev-archive\"")
            while href and len(docs) < MAX_ARCHIVES:
                href = urllib.parse.urljoin(url, href)
                route = site.local_path(href)
                match = pattern.fullmatch(route or "")
                if not match:
                    problems.append(f"prev-archive {href} is not /feeds/{name}/archive/{{n}}.{fmt}")
                    break
                if href in seen:
                    problems.append(f"prev-archive chain loops at {href}")
                    break
                seen.add(href)
                number = int(match.group(1))
                if docs and number != docs[-1][0] - 1:
                    problems.append(f"archive {docs[-1][0]} links to archive {number}")
                a = fetch(href)
                if a.status != 200:
                    problems.append(f"{href}: {a}")
                    break
                parsed = feedparser.parse(a.body)
                if parsed.bozo:
                    problems.append(f"{href}: feedparser: {parsed.bozo_exception}")
                if not has_fh_archive(a.body, fmt):
                    problems.append(f"{href}: no fh:archive")
                docs.append((number, entry_ids(site, parsed)))
                href = prev_archive(parsed)
            if docs and docs[-1][0] != 1:
                problems.append(f"the chain ends at archive {docs[-1][0]}, not 1")
            counts = collections.Counter(i for _, entries in docs for i, _ in entries)
            if None in counts:
                problems.append(f"{counts.pop(None)} archived entries do not link to an article")
            dup = sorted(i for i, c in counts.items() if c > 1)
            if dup:
                problems.append(f"{len(dup)} articles in more than one archive, e.g. {dup[:3]}")
            missing, extra = sorted(want - set(counts)), sorted(set(counts) - want)
            if missing:
                problems.append(f"{len(missing)} articles of the feed in no archive, "
                                f"e.g. {missing[:3]}")
            if extra:
                problems.append(f"{len(extra)} archived entries not in the feed, e.g. {extra[:3]}")
            if set(sub_ids) - want:
                problems.append(f"the subscription document holds {sorted(set(sub_ids) - want)[:3]}"
                                f", not in the feed")
            if (set(counts) | set(sub_ids)) != want:
                problems.append("archives with the subscription document are not the feed's "
                                "articles")
            if docs and sub_ids and not set(sub_ids) & {i for i, _ in docs[0][1]}:
                problems.append(f"the subscription document does not overlap the newest archive "
                                f"({docs[0][0]})")
            for (n_new, newer), (n_old, older) in zip(docs, docs[1:]):
                old = [w for _, w in older if w is not None]
                new = [w for _, w in newer if w is not None]
                if old and new and max(old) > min(new):
                    problems.append(f"archive {n_old} holds an entry newer than one in archive "
                                    f"{n_new} (numbers count from the oldest)")
            report.check(f"{site.label}: archives of {name}.{fmt} (RFC 5005)", problems,
                         f"{len(docs)} archive documents, {sum(counts.values())} entries, "
                         f"{len(want)} articles in the feed, {len(sub_ids)} in the subscription "
                         f"document")


def check_opml(report, site, feeds):
    problems = []
    url = site.url("/feeds.opml")
    r = fetch(url)
    outlines = []
    if r.status != 200:
        problems.append(f"{url}: {r}")
    else:
        try:
            root = ET.fromstring(r.body)
        except ET.ParseError as e:
            root = None
            problems.append(f"{url}: not XML: {e}")
        if root is not None:
            if root.tag != "opml" or root.get("version") != "2.0":
                problems.append(f"root <{root.tag} version={root.get('version')!r}>, "
                                f"expected <opml version=\"2.0\">")
            if root.find("head/title") is None:
                problems.append("no head/title")
            outlines = [o for o in root.iter("outline") if o.get("xmlUrl")]
            names = []
            for o in outlines:
                kind, match = site.kind(urllib.parse.urljoin(url, o.get("xmlUrl")))
                if kind != "feed":
                    problems.append(f"xmlUrl {o.get('xmlUrl')} is not a feed of the site")
                    continue
                names.append(match.group(1))
                if not o.get("text"):
                    problems.append(f"outline for {o.get('xmlUrl')} has no text")
                for attr in ("xmlUrl", "htmlUrl"):
                    if o.get(attr):
                        target = urllib.parse.urljoin(url, o.get(attr))
                        got = fetch(target)
                        if got.status != 200:
                            problems.append(f"{attr} {target}: {got}")
            counted = collections.Counter(names)
            for n in sorted(set(feeds) | set(counted)):
                if counted[n] != 1:
                    problems.append(f"feed {n}: {counted[n]} outlines, expected 1")
    report.check(f"{site.label}: /feeds.opml is OPML 2.0 with one outline per feed", problems,
                 f"{len(outlines)} outlines")


# ---------------------------------------------------------------------------------------------
# Daemon only: search, 404


def search(site, query, extra=""):
    return site.url("/search?" + urllib.parse.urlencode({"q": query}) + extra)


def check_search(report, site, ids):
    results = {}
    for query in ("ky hop", "kỳ họp", "dai bieu"):
        problems = []
        url = search(site, query)
        r = fetch(url)
        found = []
        if r.status != 200 or not r.is_html:
            problems.append(f"{url}: {r}, {r.ctype!r}")
        else:
            tree, errors = parse_html(r.body, r.ctype)
            problems += [f"invalid HTML: {e}" for e in errors[:3]]
            problems += page_shape(tree)
            marks = [text_of(m) for m in tree.iter("mark")]
            words = fold(query).split()
            if not marks:
                problems.append("no <mark> in the results")
            stray = [m for m in marks if not any(w in fold(m) for w in words)]
            if stray:
                problems.append(f"<mark> around {stray[:3]}, which is not {query!r}")
            found = article_ids(site, tree)
            if not found:
                problems.append("no result links to an article")
            problems += [f"result {i} is not an article of the store" for i in found
                         if i not in ids]
            for el in tree.iter("a"):
                target, _ = site.resolve(url, el.get("href") or "")
                if target and site.kind(target)[0] == "search" and "page=2" in target:
                    more = fetch(target)
                    if more.status != 200 or b"<mark" not in more.body:
                        problems.append(f"next page {target}: {more}, "
                                        f"{'with' if b'<mark' in more.body else 'without'} <mark>")
                    break
        total = re.search(r"Tìm thấy ([\d.,]+) bài viết", r.body.decode("utf-8", "replace"))
        results[query] = int(re.sub(r"[.,]", "", total.group(1))) if total else 0
        report.check(f"{site.label}: search {query!r}: results with <mark>", problems,
                     f"{len(found)} results on the first page")
    # The same articles either way (the spelling typed only orders them).
    plain, marked = results["ky hop"], results["kỳ họp"]
    report.check(f"{site.label}: search is diacritic-insensitive ('ky hop' finds what 'kỳ họp' finds)",
                 [] if plain and plain == marked else
                 [f"'ky hop' finds {plain}, 'kỳ họp' {marked}"],
                 f"{plain} results both")

    problems = []
    cases = [
        ("empty query", site.url("/search?q="), {200}),
        ("no query", site.url("/search"), {200, 400}),
        ("300 characters", search(site, ("kỳ họp " * 60)[:300]), {200, 400}),
        ("page 0", search(site, "ky hop", "&page=0"), {200, 400, 404}),
        ("page -1", search(site, "ky hop", "&page=-1"), {200, 400, 404}),
        ("page abc", search(site, "ky hop", "&page=abc"), {200, 400, 404}),
        ("page 99999", search(site, "ky hop", "&page=99999"), {200, 400, 404}),
        ("markup in the query", search(site, '"><script>alert(1)</script>'), {200, 400}),
    ]
    for what, url, allowed in cases:
        r = fetch(url)
        if r.status not in allowed:
            problems.append(f"{what}: {url}: {r}, expected {sorted(allowed)}")
        if b"<script>alert(1)" in r.body:
            problems.append(f"{what}: the query is written back unescaped")
    report.check(f"{site.label}: search edge cases answer without a server error", problems,
                 f"{len(cases)} requests")


def check_not_found(report, site):
    for route in ("/does-not-exist", "/articles/khong-co-bai-nay.html",
                  "/categories/khong-co.html", "/feeds/khong-co.atom"):
        url = site.url(route)
        r = fetch(url)
        problems = []
        if r.status != 404:
            problems.append(f"{url}: {r}, expected 404")
        problems += not_found_page(site, url, r)
        report.check(f"{site.label}: {route} answers 404 with a Vietnamese page", problems)


def not_found_page(site, url, r):
    problems = []
    if not r.is_html:
        return [f"{url}: Content-Type {r.ctype!r}, expected text/html"]
    tree, errors = parse_html(r.body, r.ctype)
    problems += [f"invalid HTML: {e}" for e in errors[:3]]
    problems += page_shape(tree)
    if not VIETNAMESE & set(text_of(tree).lower()):
        problems.append("the page's text is not Vietnamese")
    home = {site.url("/"), site.url("/index.html")}
    if not any(site.resolve(url, el.get("href") or "")[0] in home for el in tree.iter("a")):
        problems.append("no link to the home page")
    return problems


# ---------------------------------------------------------------------------------------------
# Running things


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def write_config(path, work, base_url, port, output):
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"""[site]
base_url = "{base_url}"
[store]
dir = "{work}/store"
[feeds]
dir = "{work}/feeds"
[templates]
dir = "{REPO}/templates"
[output]
dir = "{output}"
[state]
dir = "{work}/state"
[http]
listen = "127.0.0.1:{port}"
metrics_listen = ""
[mail]
transport = "file"
dir = "{work}/outbox"
from = "HĐND quận Cầu Giấy <bantin@hdnd.example.vn>"
""")


def wait_healthy(base, daemon, seconds=START_TIMEOUT):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if daemon.poll() is not None:
            return f"the daemon exited with status {daemon.returncode}"
        # 200 "ok": everything started (the feeds are served a little before, "serving;
        # starting", while the article pages are written).
        r = fetch(base + "/healthz")
        if r.status == 200 and r.body == b"ok\n":
            return None
        time.sleep(0.2)
    return f"/healthz did not answer 200 ok within {seconds} s"


def run_browser(report, base, shots, outbox):
    node_path = os.environ.get("SITE_NODE_PATH")
    if not node_path:
        print("skip site browser checks: SITE_NODE_PATH is not set (it names the node_modules "
              "with playwright-core and axe-core; .ci/run sets it)", flush=True)
        return
    env = dict(os.environ, NODE_PATH=node_path)
    script = os.path.join(REPO, ".ci", "site_browser.mjs")
    try:
        code = subprocess.run(["node", script, base, shots], env=env,
                              timeout=BROWSER_TIMEOUT).returncode
    except subprocess.TimeoutExpired:
        code = "timed out"
    report.check("daemon: Chromium and axe-core (.ci/site_browser.mjs)",
                 [] if code == 0 else [f"site_browser.mjs: {code}"], f"screenshots in {shots}")
    # The subscription made through the form: its confirmation mail reaches the outbox.
    deadline, found = time.time() + 20, None
    while time.time() < deadline and not found:
        for folder, _, files in os.walk(outbox):
            for name in files:
                if not name.endswith(".eml"):
                    continue
                with open(os.path.join(folder, name), "rb") as f:
                    msg = email.message_from_binary_file(f, policy=email.policy.default)
                if SUBSCRIBER in str(msg.get("To", "")):
                    found = name
        time.sleep(0.2)
    report.check("daemon: the form's subscription sends a confirmation mail",
                 [] if found else [f"no mail to {SUBSCRIBER} in {outbox}"],
                 f"{found} in the outbox")


def stop(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary")
    parser.add_argument("work")
    parser.add_argument("--shots", help="screenshots folder (default WORK/site-shots)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the daemon running after the checks, until interrupted")
    args = parser.parse_args()
    # A SIGTERM (CI's `timeout`) unwinds like an error, so the daemon is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("site: stopped by SIGTERM"))
    binary = os.path.abspath(args.binary)
    work = os.path.abspath(args.work)
    shots = os.path.abspath(args.shots or os.path.join(work, "site-shots"))
    for d in ("store", "feeds", "state", "outbox", "public", "public-run"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    os.makedirs(os.path.join(work, "public"), exist_ok=True)
    report = Report()

    subprocess.run([sys.executable, os.path.join(REPO, "benches", "gen_store.py"), str(ARTICLES),
                    os.path.join(work, "store"), "--seed", str(SEED),
                    "--feeds", os.path.join(work, "feeds")], check=True)
    store = read_store(os.path.join(work, "store"))
    feeds = {}
    for name in sorted(os.listdir(os.path.join(work, "feeds"))):
        if name.endswith(".toml"):
            with open(os.path.join(work, "feeds", name), "rb") as f:
                feeds[name[: -len(".toml")]] = tomllib.load(f)
    # Every article of a feed (not only the newest `limit`): what its archives must hold.
    feed_articles = {name: [a for a in store if not d.get("categories") or a[2] in d["categories"]]
                     for name, d in feeds.items()}
    ids = {a[1] for a in store}
    print(f"site: {len(store)} articles, feeds {', '.join(feeds)}", flush=True)

    # The static site, as `bantin build` writes it, behind a plain file server.
    static_dir = os.path.join(work, "public")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=static_dir))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    static_base = f"http://127.0.0.1:{server.server_address[1]}"
    static_cfg = os.path.join(work, "build.toml")
    write_config(static_cfg, work, static_base, free_port(), static_dir)
    checked = subprocess.run([binary, "--config", static_cfg, "check"], capture_output=True,
                             text=True)
    report.check("bantin check", [] if checked.returncode == 0 else
                 (checked.stderr or checked.stdout).strip().splitlines()[-10:])
    built = subprocess.run([binary, "--config", static_cfg, "build"], capture_output=True,
                           text=True)
    static = None
    if report.check("bantin build", [] if built.returncode == 0 else
                    (built.stderr or built.stdout).strip().splitlines()[-10:],
                    built.stdout.strip().splitlines()[-1] if built.stdout.strip() else ""):
        static = crawl(Site("static", static_base))
        check_crawl(report, static, store, static_dir=static_dir)
        check_feed_pages(report, static, feeds, feed_articles)
        check_archives(report, static, feeds, feed_articles)
        check_opml(report, static, feeds)
        page = os.path.join(static_dir, "404.html")
        if os.path.isfile(page):
            with open(page, "rb") as f:
                body = f.read()
            r = Response(404, {"Content-Type": "text/html; charset=utf-8"}, body)
            report.check("static: 404.html is a Vietnamese page linking home",
                         not_found_page(static, static_base + "/404.html", r))
        else:
            report.check("static: 404.html is a Vietnamese page linking home",
                         ["no 404.html in the output folder"])
    server.shutdown()

    # The daemon.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = os.path.join(work, "bantin.toml")
    write_config(cfg, work, base, port, os.path.join(work, "public-run"))
    log_path = os.path.join(work, "daemon.log")
    log = open(log_path, "w")
    daemon = subprocess.Popen([binary, "--config", cfg, "run"], stdout=log, stderr=log)
    try:
        problem = wait_healthy(base, daemon)
        report.check("daemon: /healthz answers 200", [problem] if problem else [], base)
        if problem is None:
            site = crawl(Site("daemon", base))
            check_crawl(report, site, store)
            check_feed_pages(report, site, feeds, feed_articles)
            check_archives(report, site, feeds, feed_articles)
            check_opml(report, site, feeds)
            check_search(report, site, ids)
            check_not_found(report, site)
            if static is not None:
                routes = {site.local_path(u) for u in site.pages}
                static_routes = {static.local_path(u) for u in static.pages}
                report.check("daemon and build serve the same pages",
                             [f"only the daemon: {r}" for r in sorted(routes - static_routes)]
                             + [f"only the build: {r}" for r in sorted(static_routes - routes)],
                             f"{len(routes)} routes")
            run_browser(report, base, shots, os.path.join(work, "outbox"))
            if daemon.poll() is not None:
                report.check("daemon: still running after the checks",
                             [f"exited with status {daemon.returncode}"])
        if args.keep:
            print(f"site: the daemon serves {base} (config {cfg}); Ctrl-C stops it", flush=True)
            try:
                daemon.wait()
            except KeyboardInterrupt:
                pass
    finally:
        stop(daemon)
        log.close()
    if report.failed:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read().splitlines()[-20:]
        print(f"daemon log ({log_path}), last lines:", *tail, sep="\n  ")
    print(f"site: {report.passed} passed, {report.failed} failed")
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()

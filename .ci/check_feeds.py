#!/usr/bin/env python3
"""Reads every feed that `bantin build` wrote as a feed reader would, and compares it with the
store, read here independently of bantin.

    check_feeds.py PUBLIC_DIR STORE_DIR FEEDS_DIR

For each feed definition and each format: feedparser must read RSS and Atom with no problem
(bozo == 0), and JSON Feed must hold the fields JSON Feed 1.1 requires; and the entries must be the newest published articles of the feed's
categories, in order, with their titles and publication times.
"""

import calendar
import datetime
import json
import os
import re
import sys
import tomllib
import unicodedata

import feedparser

DATE = re.compile(r"^Ngày đăng:?\s*(\d{1,2})/(\d{1,2})/(\d{4})(?:\s*\|\s*(\d{1,2}):(\d{2}))?\s*$")
OFFSET = datetime.timezone(datetime.timedelta(hours=7))
IGNORED_SUFFIXES = ("~", ".swp", ".swx")


def read_store(root):
    articles = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or not name.endswith(".txt"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8-sig") as f:
                lines = [unicodedata.normalize("NFC", l).strip() for l in f.read().splitlines()]
            lines = [l for l in lines if l]
            category, title, date = lines[0], lines[1], DATE.match(lines[2])
            if not date:
                raise SystemExit(f"{path}: no date line; the checker expects a clean store")
            d, m, y, hh, mm = (int(g) if g else 0 for g in date.groups())
            published = datetime.datetime(y, m, d, hh, mm, tzinfo=OFFSET)
            ident = os.path.relpath(path, root)[: -len(".txt")].replace(os.sep, "/")
            articles.append((published, ident, category, title))
    now = datetime.datetime.now(datetime.timezone.utc)
    articles = [a for a in articles if a[0] <= now]
    articles.sort(key=lambda a: (-a[0].timestamp(), a[1]))
    return articles


def read_json_feed(path):
    """JSON Feed 1.1, read into feedparser's shape (feedparser 6.0 reads only XML feeds)."""
    with open(path, encoding="utf-8") as f:
        feed = json.load(f)
    problems = []
    if feed.get("version") != "https://jsonfeed.org/version/1.1":
        problems.append(f"version {feed.get('version')!r}")
    for key in ("title", "home_page_url", "feed_url", "items"):
        if key not in feed:
            problems.append(f"no {key}")
    entries = []
    for item in feed.get("items", []):
        if not item.get("id") or not (item.get("content_html") or item.get("content_text")):
            problems.append(f"item without id or content: {item.get('id')}")
        published = datetime.datetime.fromisoformat(item["date_published"])
        entries.append(
            feedparser.FeedParserDict(
                id=item["id"],
                title=item["title"],
                published_parsed=published.astimezone(datetime.timezone.utc).timetuple(),
            )
        )
    return feedparser.FeedParserDict(
        bozo=bool(problems), bozo_exception="; ".join(problems), entries=entries
    )


def main():
    public, store, feeds_dir = sys.argv[1:4]
    articles = read_store(store)
    checked = 0
    failures = []
    for name in sorted(os.listdir(feeds_dir)):
        if not name.endswith(".toml"):
            continue
        with open(os.path.join(feeds_dir, name), "rb") as f:
            definition = tomllib.load(f)
        categories = definition.get("categories") or []
        limit = definition.get("limit", 50)
        expected = [a for a in articles if not categories or a[2] in categories][:limit]
        stem = name[: -len(".toml")]
        for ext in ("rss", "atom", "json"):
            path = os.path.join(public, "feeds", f"{stem}.{ext}")
            where = f"{stem}.{ext}"
            parsed = read_json_feed(path) if ext == "json" else feedparser.parse(path)
            if parsed.bozo:
                failures.append(f"{where}: bozo: {parsed.bozo_exception}")
                continue
            if len(parsed.entries) != len(expected):
                failures.append(f"{where}: {len(parsed.entries)} entries, expected {len(expected)}")
                continue
            for entry, (published, ident, category, title) in zip(parsed.entries, expected):
                got = calendar.timegm(entry.published_parsed)
                if entry.title != title:
                    failures.append(f"{where}: title {entry.title!r}, expected {title!r}")
                    break
                if got != int(published.timestamp()):
                    failures.append(f"{where}: {ident}: published {got}, expected {published}")
                    break
                if not entry.id.endswith(":" + ident):
                    failures.append(f"{where}: id {entry.id!r} does not end with {ident!r}")
                    break
            checked += 1
            print(f"ok {where}: {len(parsed.entries)} entries")
    for f in failures:
        print("FAIL", f)
    print(f"feeds: {checked} passed, {len(failures)} failed")
    sys.exit(1 if failures or checked == 0 else 0)


if __name__ == "__main__":
    main()

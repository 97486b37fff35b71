#!/usr/bin/env python3
"""Converts a bantin article store into a Hugo site with the same content, to compare build
times with a general static site generator.

    to_hugo.py STORE_DIR SITE_DIR

Each article becomes content/articles/<id>.md with its title, date and category as front matter;
the site publishes a page per article, an RSS feed of all news and one per category (as
bantin does), with minimal layouts.
"""

import os
import re
import sys

DATE = re.compile(r"^Ngày đăng:?\s*(\d{1,2})/(\d{1,2})/(\d{4})(?:\s*\|\s*(\d{1,2}):(\d{2}))?")


def main():
    store, site = sys.argv[1:3]
    content = os.path.join(site, "content", "articles")
    os.makedirs(content, exist_ok=True)
    layouts = os.path.join(site, "layouts", "_default")
    os.makedirs(layouts, exist_ok=True)
    with open(os.path.join(site, "hugo.toml"), "w") as f:
        f.write('baseURL = "http://127.0.0.1:8080/"\nlanguageCode = "vi"\ntitle = "HĐND quận Cầu Giấy"\n'
                'disableKinds = ["sitemap", "robotsTXT", "404"]\n[taxonomies]\ncategory = "categories"\n'
                '[services.rss]\nlimit = 50\n')
    with open(os.path.join(layouts, "single.html"), "w") as f:
        f.write('<!doctype html><html lang="vi"><head><meta charset="utf-8"><title>{{ .Title }}</title></head>'
                '<body><h1>{{ .Title }}</h1><p>{{ .Date.Format "02/01/2006 15:04" }}</p>{{ .Content }}</body></html>\n')
    with open(os.path.join(layouts, "list.html"), "w") as f:
        f.write('<!doctype html><html lang="vi"><head><meta charset="utf-8"><title>{{ .Title }}</title></head>'
                '<body><ul>{{ range first 30 .Pages }}<li><a href="{{ .RelPermalink }}">{{ .Title }}</a></li>{{ end }}'
                '</ul></body></html>\n')
    count = 0
    for folder, _, files in os.walk(store):
        for name in files:
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                lines = f.read().splitlines()
            nonblank = [i for i, l in enumerate(lines) if l.strip()]
            category, title = lines[nonblank[0]].strip(), lines[nonblank[1]].strip()
            m = DATE.match(lines[nonblank[2]].strip())
            d, mo, y, h, mi = (int(g) if g else 0 for g in m.groups())
            body = "\n".join(lines[nonblank[2] + 1:]).strip()
            rel = os.path.relpath(os.path.join(folder, name[:-4]), store)
            out = os.path.join(content, rel + ".md")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "w", encoding="utf-8") as f:
                safe = title.replace('"', '\\"')
                f.write(f'---\ntitle: "{safe}"\ndate: {y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:00+07:00\n'
                        f'categories: ["{category}"]\n---\n\n{body}\n')
            count += 1
    print(f"{count} articles converted")


if __name__ == "__main__":
    main()

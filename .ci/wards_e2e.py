#!/usr/bin/env python3
"""Two councils behind a real nginx, configured as README.md says.

Takes the README's council configuration and its nginx block, runs two bantin daemons
(phuong-cau-giay, and phuong-nghia-do made from it as the README says) behind nginx on a free
port, then, for each council: crawls every link from its home page through nginx (pages,
feeds, calendars, the links inside them), each must answer 200, keep the council's path and
never lead into the other council; subscribes through the proxy and confirms from the mail.

usage: wards_e2e.py BANTIN README.md SHARE_DIR
  SHARE_DIR holds templates/ and feeds/ (/usr/share/bantin once the package is installed).
"""

import email
import email.policy
import html.parser
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

BIN, README, SHARE = sys.argv[1], sys.argv[2], sys.argv[3]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARDS = {"phuong-cau-giay": "Cầu Giấy", "phuong-nghia-do": "Nghĩa Đô"}
failures = []


def fail(message):
    failures.append(message)
    print("FAIL:", message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_block(lang, after):
    """The first ```lang block after the line containing `after`."""
    text = open(README, encoding="utf-8").read()
    start = text.index(after)
    match = re.compile(r"```" + lang + r"\n(.*?)```", re.S).search(text, start)
    return match.group(1)


work = tempfile.mkdtemp(prefix="wards-")
os.chmod(work, 0o755)
nginx_port = free_port()
origin = f"http://127.0.0.1:{nginx_port}"

# The council's file as the README gives it, moved into the temporary folder.
council_toml = readme_block("toml", "Replace the contents of `/etc/bantin/phuong-cau-giay.toml`")
ports = {}
configs = {}
for ward, name in WARDS.items():
    text = council_toml
    if ward != "phuong-cau-giay":
        # "the same with its own name, title, 8082 and 9466"
        text = (text.replace("phuong-cau-giay", ward).replace("Cầu Giấy", name)
                .replace("8081", "8082").replace("9465", "9466"))
    port, metrics = free_port(), free_port()
    ports[ward] = port
    default_port = "8081" if ward == "phuong-cau-giay" else "8082"
    default_metrics = "9465" if ward == "phuong-cau-giay" else "9466"
    text = (text.replace("https://hdnd.example.vn", origin)
            .replace("/srv/bantin", f"{work}/srv")
            .replace("/var/lib/bantin", f"{work}/var")
            .replace("/usr/share/bantin", SHARE)
            .replace(f"127.0.0.1:{default_port}", f"127.0.0.1:{port}")
            .replace(f"127.0.0.1:{default_metrics}", f"127.0.0.1:{metrics}")
            .replace('transport = "smtp"', 'transport = "file"\nalert_delay_secs = 0'))
    assert f"{origin}/{ward}/" in text, text
    path = f"{work}/{ward}.toml"
    open(path, "w", encoding="utf-8").write(text)
    configs[ward] = path
    store = f"{work}/srv/{ward}"
    os.makedirs(store)

# Each council its own articles: the sample store for one, three of them and one of its own
# for the other.
samples = os.path.join(REPO, "articles")
shutil.copytree(samples, f"{work}/srv/phuong-cau-giay", dirs_exist_ok=True)
for rel in ["hoi-nghi-giao-ban-quy-1.txt", "ra-soat-kien-nghi-cu-tri.txt",
            "thong-bao-ky-hop-chuyen-de.txt"]:
    shutil.copy(os.path.join(samples, rel), f"{work}/srv/phuong-nghia-do/{rel}")
open(f"{work}/srv/phuong-nghia-do/rieng.txt", "w", encoding="utf-8").write(
    "THÔNG BÁO\n\nLịch tiếp công dân của phường Nghĩa Đô\nNgày đăng 02/03/2026 | 08:00\n\n"
    "Thường trực HĐND phường Nghĩa Đô tiếp công dân vào sáng thứ Năm hằng tuần.\n\n"
    "HĐND PHƯỜNG NGHĨA ĐÔ\n")

# nginx with the README's server block.
server = readme_block("nginx", "one `location` per council")
server = server.replace("listen 80;", f"listen 127.0.0.1:{nginx_port};")
server = server.replace("127.0.0.1:8081/", f"127.0.0.1:{ports['phuong-cau-giay']}/")
server = server.replace("127.0.0.1:8082/", f"127.0.0.1:{ports['phuong-nghia-do']}/")
# The same councils behind a proxy that keeps the path (`proxy_pass` without a trailing /),
# which the README says bantin also answers.
keep_port = free_port()
keep = server.replace(f"listen 127.0.0.1:{nginx_port};", f"listen 127.0.0.1:{keep_port};")
for port in ports.values():
    keep = keep.replace(f"proxy_pass http://127.0.0.1:{port}/;", f"proxy_pass http://127.0.0.1:{port};")
assert keep.count("proxy_pass") == 2 and "/;" not in keep.split("proxy_pass", 1)[1].split("\n")[0]
ngx = f"{work}/nginx"
os.makedirs(ngx)
temps = "".join(f"    {kind}_temp_path {ngx}/{kind};\n"
                for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]:
    os.makedirs(f"{ngx}/{kind}")
    os.chmod(f"{ngx}/{kind}", 0o777)
open(f"{ngx}/nginx.conf", "w").write(
    f"worker_processes 1;\npid {ngx}/nginx.pid;\nerror_log {ngx}/error.log;\n"
    f"events {{}}\nhttp {{\n    access_log off;\n{temps}{server}{keep}}}\n")

procs = []


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


# A redirect is an answer to look at, not to follow without noticing.
urllib.request.install_opener(urllib.request.build_opener(NoRedirect))


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_http(url, what):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                # 200 "ok": started whole (the feeds come a little before the pages).
                if r.status == 200 and r.read() == b"ok\n":
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer at {url}")


try:
    for ward, config in configs.items():
        log = open(f"{work}/{ward}.log", "w")
        procs.append(subprocess.Popen([BIN, "--config", config, "run"],
                                      stdout=log, stderr=subprocess.STDOUT))
    procs.append(subprocess.Popen(["nginx", "-c", f"{ngx}/nginx.conf", "-g", "daemon off;"]))
    for ward, port in ports.items():
        wait_http(f"http://127.0.0.1:{port}/healthz", f"bantin for {ward}")
    wait_http(f"{origin}/phuong-cau-giay/healthz", "nginx")

    class Links(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.links, self.forms, self.posts = [], [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            for key in ("href", "src"):
                if a.get(key):
                    self.links.append(a[key])
            if tag == "form" and a.get("action"):
                self.forms.append(a["action"])
                if (a.get("method") or "get").lower() == "post":
                    self.posts.append(a["action"])

    def links_of(body, ctype):
        if "html" in ctype:
            p = Links()
            p.feed(body)
            return p.links, p.forms
        if "json" in ctype:
            found = []

            def walk(v):
                if isinstance(v, dict):
                    for k, x in v.items():
                        if k in ("url", "home_page_url", "feed_url", "external_url") \
                                and isinstance(x, str):
                            found.append(x)
                        else:
                            walk(x)
                elif isinstance(v, list):
                    for x in v:
                        walk(x)
            walk(json.loads(body))
            return found, []
        if "calendar" in ctype:
            unfolded = body.replace("\r\n ", "")
            return re.findall(r"^URL(?:;[^:]*)?:(\S+)", unfolded, re.M), []
        # RSS and Atom
        return (re.findall(r'href="([^"]+)"', body)
                + re.findall(r"<link>([^<]+)</link>", body)
                + re.findall(r"<comments>([^<]+)</comments>", body)), []

    def check_link(ward, source, link):
        """Whether `link` (absolute) is ours to fetch; records what is wrong with it."""
        base = f"{origin}/{ward}/"
        other = [f"{origin}/{w}/" for w in WARDS if w != ward]
        url = link.replace("webcal://", "http://", 1) if link.startswith("webcal://") else link
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme in ("mailto", "tel"):
            return None
        if link.startswith("#"):
            return None  # a place on the same page (the skip link)
        if not parsed.scheme:
            fail(f"{ward}: {source} links '{link}' relatively, not from site.base_url")
            return None
        if parsed.netloc == "calendar.google.com":
            # The one link out: Google Calendar's page subscribing this council's calendar.
            cid = urllib.parse.parse_qs(parsed.query).get("cid", [""])[0]
            if not cid.startswith(base):
                fail(f"{ward}: {source} has Google Calendar subscribe to {cid}, not {base}")
            return None
        if parsed.netloc != f"127.0.0.1:{nginx_port}":
            fail(f"{ward}: {source} links to another host: {link}")
            return None
        if any(url.startswith(o) for o in other):
            fail(f"{ward}: {source} links into another council: {link}")
            return None
        if not url.startswith(base):
            fail(f"{ward}: {source} links '{link}' outside its path {base}")
            return None
        return urllib.parse.urldefrag(url)[0]

    def through_keep(url):
        return url.replace(origin, f"http://127.0.0.1:{keep_port}", 1)

    for ward in WARDS:
        base = f"{origin}/{ward}/"
        queue, seen, fetched, forms = [base], {base}, 0, 0
        kept = 0
        while queue and fetched < 3000:
            url = queue.pop()
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    body = r.read().decode("utf-8")
                    ctype = r.headers.get("Content-Type", "")
                    fetched += 1
            except urllib.error.HTTPError as e:
                fail(f"{ward}: {url} answered {e.code}")
                continue
            # The same answer through the proxy that keeps the path.
            with urllib.request.urlopen(through_keep(url), timeout=10) as r:
                if r.read().decode("utf-8") != body and "/healthz" not in url:
                    fail(f"{ward}: {url} differs when the proxy keeps the path")
                kept += 1
            links, actions = links_of(body, ctype)
            for action in actions:
                forms += 1
                check_link(ward, url, action)
            for link in links:
                target = check_link(ward, url, link)
                if target and target not in seen:
                    seen.add(target)
                    queue.append(target)
        print(f"{ward}: crawled {fetched} URLs through nginx, {forms} form actions checked, "
              f"{kept} the same through the proxy that keeps the path")
        if fetched < 20:
            fail(f"{ward}: only {fetched} URLs reached from {base}")

    # The other council's own article is not in this one's site, and the reverse.
    with urllib.request.urlopen(f"{origin}/phuong-nghia-do/") as r:
        if "Nghĩa Đô" not in r.read().decode():
            fail("phuong-nghia-do: its home page does not show its own article")
    try:
        urllib.request.urlopen(f"{origin}/phuong-cau-giay/articles/rieng.html")
        fail("phuong-cau-giay serves the other council's article")
    except urllib.error.HTTPError as e:
        if e.code != 404:
            fail(f"phuong-cau-giay: another council's article answered {e.code}")

    # A subscription through the proxy, confirmed from the mail.
    ward = "phuong-cau-giay"
    base = f"{origin}/{ward}/"
    data = urllib.parse.urlencode({"email": "dan@example.vn", "schedule": "immediate"}).encode()
    req = urllib.request.Request(base + "subscribe", data=data, headers={"Origin": origin})
    with urllib.request.urlopen(req) as r:
        answer = r.read().decode()
        print(f"subscribe through nginx: {r.status}")
    outbox = f"{work}/var/{ward}/outbox"
    deadline = time.monotonic() + 30
    mails = []
    while time.monotonic() < deadline and not mails:
        mails = [f for f in os.listdir(outbox) if f.endswith(".eml")] if os.path.isdir(outbox) else []
        time.sleep(0.1)
    if not mails:
        raise SystemExit("no confirmation mail in " + outbox)
    msg = email.message_from_binary_file(open(os.path.join(outbox, mails[0]), "rb"),
                                         policy=email.policy.default)
    text = msg.get_body(preferencelist=("plain",)).get_content()
    urls = re.findall(r"https?://\S+", text)
    for u in urls:
        check_link(ward, "the confirmation mail", u)
    confirm = next(u for u in urls if "/confirm?token=" in u)
    print(f"confirmation link: {confirm.split('token=')[0]}token=…")
    with urllib.request.urlopen(confirm) as r:
        page = r.read().decode()
    p = Links()
    p.feed(page)
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(confirm).query)["token"][0]
    action = p.posts[0]  # the page's own form, not the header's search
    if not action.startswith(base):
        fail(f"the confirmation form posts to {action}, outside {base}")
    req = urllib.request.Request(action, data=urllib.parse.urlencode({"token": token}).encode(),
                                 headers={"Origin": origin})
    with urllib.request.urlopen(req) as r:
        print(f"confirm through nginx: {r.status}")
    for w, config in configs.items():
        listed = subprocess.run([BIN, "--config", config, "subscribers", "list"],
                                capture_output=True, text=True, check=True).stdout
        has = "dan@example.vn\timmediate\tactive" in listed
        if has != (w == ward):
            fail(f"{w}: subscribers list is {listed!r}")
    print(f"{ward}: dan@example.vn active; the other council has no such subscriber")

    # An alert: every link of both parts and List-Unsubscribe keep the path and answer;
    # the one-click unsubscribe (RFC 8058) goes through the proxy.
    before = set(os.listdir(outbox))
    open(f"{work}/srv/{ward}/tin-moi.txt", "w", encoding="utf-8").write(
        "THÔNG BÁO\n\nThông báo lịch họp của Thường trực HĐND\n"
        f"Ngày đăng {time.strftime('%d/%m/%Y', time.gmtime(time.time() - 86400))} | 08:00\n\n"
        "Thường trực HĐND phường họp vào sáng thứ Hai.\n\nHĐND PHƯỜNG CẦU GIẤY\n")
    deadline = time.monotonic() + 30
    new = []
    while time.monotonic() < deadline and not new:
        new = [f for f in os.listdir(outbox) if f.endswith(".eml") and f not in before]
        time.sleep(0.1)
    if not new:
        raise SystemExit("no alert in " + outbox)
    alert = email.message_from_binary_file(open(os.path.join(outbox, new[0]), "rb"),
                                           policy=email.policy.default)
    mail_links = re.findall(r"https?://[^\s<>\"]+",
                            alert.get_body(preferencelist=("plain",)).get_content())
    p = Links()
    p.feed(alert.get_body(preferencelist=("html",)).get_content())
    mail_links += p.links
    unsubscribe = re.findall(r"<(https?://[^>]+)>", str(alert["List-Unsubscribe"]))
    mail_links += unsubscribe
    checked = 0
    for link in mail_links:
        target = check_link(ward, "the alert", link)
        if target:
            with urllib.request.urlopen(target, timeout=10) as r:
                checked += r.status == 200
    print(f"alert: {len(mail_links)} links, {checked} answered 200 through nginx")
    req = urllib.request.Request(unsubscribe[0], data=b"List-Unsubscribe=One-Click",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req) as r:
        print(f"one-click unsubscribe through nginx: {r.status}")
    listed = subprocess.run([BIN, "--config", configs[ward], "subscribers", "list"],
                            capture_output=True, text=True, check=True).stdout
    if "dan@example.vn\timmediate\tactive" in listed:
        fail(f"{ward}: still active after the one-click unsubscribe: {listed!r}")
finally:
    stop_all()

if failures:
    for ward in WARDS:
        print(f"--- {ward} log ---")
        print(open(f"{work}/{ward}.log").read()[-3000:])
    print(f"wards: {len(failures)} failed")
    sys.exit(1)
shutil.rmtree(work, ignore_errors=True)
print("wards: 0 failed")

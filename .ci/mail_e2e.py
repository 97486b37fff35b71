#!/usr/bin/env python3
"""End-to-end mail check against a server bantin did not write: aiosmtpd writing to a Maildir.

    mail_e2e.py BANTIN_BINARY

Starts aiosmtpd and bantin (smtp transport, signing with an RSA and an Ed25519 DKIM key),
subscribes an address, publishes an article by rename, and reads the delivered mail with
Python's email package: the subject must decode to the article's title, the list headers must
be there, and dkimpy must verify both signatures, each covering Content-Type and the list
headers.
"""

import base64

import email
import email.policy
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = "Thông báo kỳ họp thứ 22 HĐND quận Cầu Giấy: “Đổi mới” & <giám sát>"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, condition, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def up(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def started(port):
    """bantin's /healthz says `ok`: the store is read and watched. It serves earlier (and
    says `serving; starting`): an article published then is part of the first start's
    baseline, which nobody is mailed for."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


def dkim_keys(work):
    """Writes an RSA (PKCS#1 PEM) and an Ed25519 (base64 seed) key; returns the DNS TXT
    records of their public halves, by selector."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with open(os.path.join(work, "rsa.key"), "wb") as f:
        f.write(rsa_key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    rsa_pub = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    seed = ed_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    with open(os.path.join(work, "ed25519.key"), "w") as f:
        f.write(base64.b64encode(seed).decode() + "\n")
    ed_pub = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "rsa": b"v=DKIM1; k=rsa; p=" + base64.b64encode(rsa_pub),
        "ed": b"v=DKIM1; k=ed25519; p=" + base64.b64encode(ed_pub),
    }


def check_dkim(raw, records, failures):
    """Verifies every DKIM-Signature of `raw` against `records` (no DNS)."""
    def dns(name, timeout=5):
        selector = name.decode().split("._domainkey.")[0]
        return records.get(selector, b"")
    d = dkim.DKIM(raw)
    signatures = [h for h in d.headers if h[0].lower() == b"dkim-signature"]
    algorithms = []
    for i, (_, value) in enumerate(signatures):
        tags = dict(t.strip().split(b"=", 1) for t in value.split(b";") if b"=" in t)
        algorithms.append(tags[b"a"].decode())
        signed = [h.strip().lower() for h in tags[b"h"].replace(b"\r\n", b"").replace(b" ", b"").split(b":")]
        for needed in (b"content-type", b"mime-version", b"list-unsubscribe", b"list-unsubscribe-post", b"from"):
            if needed not in signed:
                failures.append(f"signature {i} ({algorithms[-1]}) does not cover {needed.decode()}")
        if not dkim.DKIM(raw).verify(idx=i, dnsfunc=dns):
            failures.append(f"dkimpy could not verify signature {i} ({algorithms[-1]})")
    if sorted(algorithms) != ["ed25519-sha256", "rsa-sha256"]:
        failures.append(f"signatures {algorithms}, expected rsa-sha256 and ed25519-sha256")
    return algorithms


def main():
    binary = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="bantin-mail-e2e-")
    procs = []
    try:
        smtp_port, http_port = free_port(), free_port()
        maildir = os.path.join(work, "maildir")  # aiosmtpd creates it (an empty one fails)
        procs.append(subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{smtp_port}",
                                       "-c", "aiosmtpd.handlers.Mailbox", maildir]))
        wait("aiosmtpd", lambda: up(smtp_port))
        shutil.copytree(os.path.join(REPO, "articles"), os.path.join(work, "articles"))
        records = dkim_keys(work)
        config = os.path.join(work, "bantin.toml")
        with open(config, "w") as f:
            f.write(f"""[site]
base_url = "http://127.0.0.1:{http_port}"
[feeds]
dir = "{REPO}/feeds"
[templates]
dir = "{REPO}/templates"
[http]
listen = "127.0.0.1:{http_port}"
metrics_listen = ""
[mail]
alert_delay_secs = 0
alert_max_age_days = 3650
from = "HĐND quận Cầu Giấy <bantin@hdnd.example.vn>"
transport = "smtp"
[mail.smtp]
host = "127.0.0.1"
port = {smtp_port}
[[mail.dkim]]
domain = "hdnd.example.vn"
selector = "rsa"
key_file = "rsa.key"
algorithm = "rsa"
[[mail.dkim]]
domain = "hdnd.example.vn"
selector = "ed"
key_file = "ed25519.key"
algorithm = "ed25519"
""")
        subprocess.run([binary, "--config", config, "subscribers", "add", "cu-tri@example.vn", "--confirmed"],
                       check=True)
        log = open(os.path.join(work, "bantin.log"), "w")
        procs.append(subprocess.Popen([binary, "--config", config, "run"], stderr=log))
        wait("bantin", lambda: started(http_port))
        incoming = os.path.join(work, "incoming.txt")
        with open(incoming, "w", encoding="utf-8") as f:
            f.write(f"THÔNG BÁO\n\n{TITLE}\nNgày đăng 20/11/2026 | 08:00\n\nNội dung thông báo.\n\n"
                    "THƯỜNG TRỰC HĐND QUẬN\n")
        os.rename(incoming, os.path.join(work, "articles", "e2e.txt"))
        new = os.path.join(maildir, "new")
        wait("the alert in the Maildir", lambda: os.path.isdir(new) and len(os.listdir(new)) >= 1)
        files = os.listdir(new)
        with open(os.path.join(new, files[0]), "rb") as f:
            raw = f.read()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        failures = []
        # aiosmtpd's Mailbox adds its own headers on top; DKIM covers the rest.
        algorithms = check_dkim(raw, records, failures)
        if msg["Auto-Submitted"] != "auto-generated":
            failures.append(f"Auto-Submitted is {msg['Auto-Submitted']!r}")
        subject = str(msg["Subject"])
        if subject != TITLE:
            failures.append(f"subject decodes to {subject!r}")
        if msg.get_content_type() != "multipart/alternative":
            failures.append(f"content type {msg.get_content_type()}")
        for name in ("List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID", "Date"):
            if msg[name] is None:
                failures.append(f"no {name} header")
        if msg["List-Unsubscribe-Post"] != "List-Unsubscribe=One-Click":
            failures.append(f"List-Unsubscribe-Post is {msg['List-Unsubscribe-Post']!r}")
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        if TITLE not in text:
            failures.append("title missing from the text part")
        if "&lt;giám sát&gt;" not in html:
            failures.append("title not escaped in the HTML part")
        # The style sheet has lines that begin with a dot: doubled on the wire, one again here.
        if "\n.wrap {" not in html:
            failures.append("a line of the HTML part that begins with a dot did not arrive as it was")
        # One-click unsubscribe from the header, as a mail client would.
        url = str(msg["List-Unsubscribe"]).strip("<>")
        req = urllib.request.Request(url, data=b"List-Unsubscribe=One-Click", method="POST")
        if urllib.request.urlopen(req, timeout=10).status != 200:
            failures.append("one-click unsubscribe did not answer 200")
        listing = subprocess.run([binary, "--config", config, "subscribers", "list"], capture_output=True,
                                 text=True, check=True).stdout
        if "unsubscribed" not in listing:
            failures.append(f"not unsubscribed: {listing!r}")
        for f in failures:
            print("FAIL", f)
        print(f"mail e2e: {len(files)} mail(s) in the Maildir, subject {subject!r}, "
              f"DKIM signatures verified by dkimpy: {algorithms}")
        print(f"mail e2e: {0 if failures else 1} passed, {len(failures)} failed")
        sys.exit(1 if failures else 0)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

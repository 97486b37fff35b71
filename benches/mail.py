#!/usr/bin/env python3
"""Benchmarks a fan-out: one alert to N subscribers over SMTP to Postfix's smtp-sink, side by
side with smtp-source sending N messages of the same size to the same sink with the same
number of sessions.

    mail.py [--subscribers N] [--sessions S] [--bin PATH] [--work DIR]

Reports messages per second for both, that every delivery is recorded as sent in sled, and
the daemon's peak memory. Needs smtp-sink and smtp-source (Debian: postfix).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import functools

print = functools.partial(print, flush=True)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    m = re.search(rf"^{name} (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def start_sink(port, work):
    dump = os.path.join(work, "sink")
    os.makedirs(dump, exist_ok=True)
    shutil.chown(dump, "nobody") if os.geteuid() == 0 else None
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    return subprocess.Popen(["smtp-sink", *user, f"127.0.0.1:{port}", "1024"], cwd=dump)


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def wait_started(port):
    """Until bantin's /healthz says `ok`: the store read and watched. (It serves earlier, and
    says `serving; starting`: an article published then is part of the first start's
    baseline, and is mailed to nobody.)"""
    wait_port(port)
    for _ in range(6000):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.02)
    sys.exit(f"bantin on {port} did not finish starting")


def write_config(work, http_port, metrics_port, sink_port, sessions, base_url,
                 mail="", templates=os.path.join(REPO, "templates"), extra=""):
    """bantin.toml for a benchmark: the repository's feeds, alerts at once into smtp-sink
    with `sessions` connections, digests never; `mail` adds keys to [mail], `extra` tables."""
    path = os.path.join(work, "bantin.toml")
    with open(path, "w") as f:
        f.write(f"""[site]
base_url = "{base_url}"
[feeds]
dir = "{REPO}/feeds"
[templates]
dir = "{templates}"
[http]
listen = "127.0.0.1:{http_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
[mail]
alert_delay_secs = 0
alert_max_age_days = 3650
from = "HĐND quận Cầu Giấy <bantin@hdnd.test>"
transport = "smtp"
concurrency = {sessions}
{mail}[mail.smtp]
host = "127.0.0.1"
port = {sink_port}
[digest]
daily = "0 0 0 1 1 * 2099"
weekly = "0 0 0 1 1 * 2099"
{extra}""")
    return path



SEED = os.path.join(REPO, "articles", "000_5a7074c8138324ae.txt")


def alert_text():
    """The seed article, dated recently enough to be alerted."""
    with open(SEED, encoding="utf-8") as f:
        return f.read().replace("14/02/2020", "20/11/2026")


def publish(articles_dir, name="tin-moi.txt"):
    """Renames the alert into the store, as the clerk would; returns the time of the rename."""
    temp = os.path.join(os.path.dirname(articles_dir), "incoming.txt")
    with open(temp, "w", encoding="utf-8") as f:
        f.write(alert_text())
    t0 = time.perf_counter()
    os.rename(temp, os.path.join(articles_dir, name))
    return t0


def start_daemon(binary, config, work, env_log=os.environ.get("BANTIN_LOG", "warn")):
    logf = open(os.path.join(work, "bantin.log"), "a")
    return subprocess.Popen([binary, "--config", config, "run"], stderr=logf, stdout=logf,
                            env={**os.environ, "BANTIN_LOG": env_log})


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def mail_site(binary, work, smtp_port, sessions, emails,
              templates=os.path.join(REPO, "templates")):
    """A fresh site in `work` with the seed article, mailing through 127.0.0.1:`smtp_port`,
    with `emails` subscribed to alerts, rendered with `templates`; returns (config, HTTP
    port, metrics port)."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "articles"))
    http_port, metrics_port = free_port(), free_port()
    config = write_config(work, http_port, metrics_port, smtp_port, sessions,
                          f"http://127.0.0.1:{http_port}", templates=templates,
                          extra=f'[state]\ndir = "{work}/state"\n[output]\ndir = "{work}/public"\n'
                                f'[store]\ndir = "{work}/articles"\n')
    shutil.copy(SEED, os.path.join(work, "articles"))
    csv = os.path.join(work, "subscribers.csv")
    with open(csv, "w") as f:
        f.write("email,schedule,categories\n")
        for email in emails:
            f.write(f"{email},immediate,\n")
    subprocess.run([binary, "--config", config, "subscribers", "import", csv, "--confirmed"],
                   check=True, stdout=subprocess.DEVNULL)
    return config, http_port, metrics_port


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subscribers", type=int, default=100_000)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--bin", default=os.path.join(REPO, "target/release/bantin"))
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bantin-mail-bench"))
    args = p.parse_args()
    for tool in ("smtp-sink", "smtp-source"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (Debian: apt-get install postfix)")
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    n = args.subscribers

    sink_port = free_port()
    sink = start_sink(sink_port, work)
    try:
        wait_port(sink_port)
        t = time.time()
        site = os.path.join(work, "site")
        config, http_port, metrics_port = mail_site(
            args.bin, site, sink_port, args.sessions, (f"dan{i:06d}@example.vn" for i in range(n)))
        print(f"imported {n} subscribers in {time.time() - t:.1f} s")

        daemon = start_daemon(args.bin, config, site)
        try:
            wait_started(http_port)
            t0 = publish(os.path.join(site, "articles"))
            while metric(metrics_port, "bantin_mail_sent_total") < n:
                if daemon.poll() is not None:
                    sys.exit(f"bantin exited; see {site}/bantin.log")
                time.sleep(0.2)
            took = time.perf_counter() - t0
            peak = vm(daemon.pid, "VmHWM") / 1024
        finally:
            stop(daemon)
        status = json.loads(subprocess.run([args.bin, "--config", config, "status", "--json"], check=True,
                                           capture_output=True, text=True).stdout)
        print(f"bantin: {n} alerts in {took:.1f} s = {n / took:,.0f} messages/s; outbox {status['outbox']}; "
              f"peak memory {peak:.0f} MiB")

        # smtp-source: the same number of messages, about the alert's size (text and HTML
        # parts: 19 KB in 7 bits, 16 KB with 8-bit bodies), same sessions.
        msg_size = 19000
        t = time.time()
        subprocess.run(["smtp-source", "-s", str(args.sessions), "-m", str(n), "-l", str(msg_size),
                        "-f", "bantin@hdnd.test", "-t", "dan@example.vn", f"127.0.0.1:{sink_port}"], check=True)
        took_src = time.time() - t
        print(f"smtp-source: {n} messages of {msg_size} bytes in {took_src:.1f} s = {n / took_src:,.0f} messages/s")
        print(f"bantin / smtp-source: {(n / took) / (n / took_src):.2f}")
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()

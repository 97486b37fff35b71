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
    os.makedirs(os.path.join(work, "articles"))
    n = args.subscribers

    sink_port = free_port()
    sink = start_sink(sink_port, work)
    try:
        wait_port(sink_port)
        http_port, metrics_port = free_port(), free_port()
        config = write_config(work, http_port, metrics_port, sink_port, args.sessions,
                              f"http://127.0.0.1:{http_port}")
        shutil.copy(os.path.join(REPO, "articles", "000_5a7074c8138324ae.txt"), os.path.join(work, "articles"))
        csv = os.path.join(work, "subscribers.csv")
        with open(csv, "w") as f:
            f.write("email,schedule,categories\n")
            for i in range(n):
                f.write(f"dan{i:06d}@example.vn,immediate,\n")
        t = time.time()
        subprocess.run([args.bin, "--config", config, "subscribers", "import", csv, "--confirmed"], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"imported {n} subscribers in {time.time() - t:.1f} s")

        log = open(os.path.join(work, "bantin.log"), "w")
        daemon = subprocess.Popen([args.bin, "--config", config, "run"], stderr=log,
                                  env={**os.environ, "BANTIN_LOG": os.environ.get("BANTIN_LOG", "warn")})
        try:
            wait_started(http_port)
            # The alert: the seed article again under a new name, as the clerk would publish it.
            with open(os.path.join(REPO, "articles", "000_5a7074c8138324ae.txt"), encoding="utf-8") as f:
                text = f.read().replace("14/02/2020", "20/11/2026")
            temp = os.path.join(work, "incoming.txt")
            with open(temp, "w", encoding="utf-8") as f:
                f.write(text)
            t0 = time.time()
            os.rename(temp, os.path.join(work, "articles", "tin-moi.txt"))
            while metric(metrics_port, "bantin_mail_sent_total") < n:
                if daemon.poll() is not None:
                    sys.exit("bantin exited")
                time.sleep(0.2)
            took = time.time() - t0
            peak = vm(daemon.pid, "VmHWM") / 1024
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        status = json.loads(subprocess.run([args.bin, "--config", config, "status", "--json"], check=True,
                                           capture_output=True, text=True).stdout)
        size = os.path.getsize(next(os.path.join(work, "articles", x) for x in os.listdir(os.path.join(work, "articles"))))
        print(f"bantin: {n} alerts in {took:.1f} s = {n / took:,.0f} messages/s; outbox {status['outbox']}; "
              f"peak memory {peak:.0f} MiB")

        # smtp-source: the same number of messages of the alert's size (the seed article's
        # alert is about 19 KB: text and HTML parts), same sessions.
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

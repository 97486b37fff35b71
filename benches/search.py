#!/usr/bin/env python3
"""Search in the running daemon on a store of 100,000 articles.

    search.py [--articles N] [--bin PATH] [--work DIR] [--rounds R]

Starts `bantin run` on a generated store (benches/gen_store.py) and reports: when it first
answered (/healthz and the index page), when the search index was ready (it is built after the
site is served), the daemon's resident memory before and after the index, and the time of
search requests over HTTP (p50, p99) once it is ready. The in-process numbers (no HTTP) come
from `cargo bench --bench search`.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from mail import REPO, free_port, metric, vm

HERE = os.path.dirname(os.path.abspath(__file__))

QUERIES = ["ky hop", "kỳ họp", "dai bieu", "đại biểu", "hội nghị", "ngan sach dau tu cong",
           "cử tri phường", "giam sat", "thong bao", "vỉa hè", "ubnd",
           "rac thai do thi moi truong"]


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--articles", type=int, default=100_000)
    p.add_argument("--bin", default=os.path.join(REPO, "target/release/bantin"))
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bantin-search-bench"))
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    store = os.path.join(args.work, f"store-{args.articles}")
    feeds = os.path.join(args.work, f"feeds-{args.articles}")
    if not os.path.isdir(store):
        subprocess.run([sys.executable, os.path.join(HERE, "gen_store.py"), str(args.articles),
                        store, "--feeds", feeds], check=True, stdout=subprocess.DEVNULL)
    port, metrics_port = free_port(), free_port()
    state = tempfile.mkdtemp(dir=args.work)
    config = os.path.join(state, "bantin.toml")
    with open(config, "w") as f:
        f.write(f"""[site]
base_url = "http://127.0.0.1:{port}"
[store]
dir = "{store}"
[feeds]
dir = "{feeds}"
[templates]
dir = "{REPO}/templates"
[output]
dir = "{state}/public"
[state]
dir = "{state}/state"
[http]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics_port}"
[mail]
transport = "file"
""")
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    daemon = subprocess.Popen([args.bin, "--config", config, "run"],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(state, "log"), "w"))
    try:
        while True:
            try:
                if get(base + "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.02)
            if daemon.poll() is not None:
                sys.exit("the daemon stopped; see " + os.path.join(state, "log"))
        served = time.monotonic() - started
        get(base + "/")
        rss_served = vm(daemon.pid, "VmRSS") / 1024
        while (docs := metric(metrics_port, "bantin_search_documents")) == 0:
            time.sleep(0.05)
        index_bytes = metric(metrics_port, "bantin_search_index_bytes")
        ready = time.monotonic() - started
        time.sleep(1)
        rss_ready = vm(daemon.pid, "VmRSS") / 1024
        times = []
        for _ in range(args.rounds):
            for q in QUERIES:
                url = base + "/search?" + urllib.parse.urlencode({"q": q})
                t = time.monotonic()
                status, _ = get(url)
                times.append(time.monotonic() - t)
                assert status == 200, (url, status)
        times.sort()
        p99 = times[round((len(times) - 1) * 0.99)]
        print(f"store: {args.articles} articles")
        print(f"first answer (/healthz, then /): {served:.2f} s after start, "
              f"resident {rss_served:.0f} MiB")
        print(f"search index ready: {ready:.2f} s after start ({docs} articles, "
              f"{index_bytes / 1e6:.1f} MB by its own count), resident {rss_ready:.0f} MiB "
              f"({rss_ready - rss_served:+.0f} MiB)")
        print(f"{len(times)} searches over HTTP: p50 {statistics.median(times) * 1e3:.1f} ms, "
              f"p99 {p99 * 1e3:.1f} ms")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)


if __name__ == "__main__":
    main()

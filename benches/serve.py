#!/usr/bin/env python3
"""Benchmarks `bantin run` on a large store, side by side with nginx.

    serve.py [--articles N] [--bin PATH] [--work DIR] [--samples K] [--duration S]

1. Generates a store of N articles (benches/gen_store.py), starts the daemon on it and reports
   the start time and its memory.
2. Publishes K articles one by one (write beside the store, rename in) and measures the time
   from the rename to the new item being served over HTTP: median and p99.
3. Measures requests per second for the all-news feed with wrk (200 and 304), and the same
   file served by nginx from the daemon's output folder, in the same run.
4. Reports the daemon's resident memory (current and peak).

Needs wrk and nginx (Debian: wrk, nginx-light); skips the comparison when they are missing.
"""

import argparse
import http.client
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def wait_listening(proc, log_path, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bantin exited: {open(log_path).read()}")
        with open(log_path) as f:
            m = re.search(r"listening on http://(\S+)", f.read())
        if m:
            return m.group(1)
        time.sleep(0.05)
    sys.exit("bantin did not start")


def wrk(url, duration, headers=()):
    cmd = ["wrk", "-t2", "-c64", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, int(non2xx.group(1)) if non2xx else 0


def status_of(port, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    r.read()
    return r.status


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--articles", type=int, default=100_000)
    p.add_argument("--bin", default=os.path.join(REPO, "target/release/bantin"))
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bantin-bench"))
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--duration", type=int, default=10)
    args = p.parse_args()

    work = os.path.abspath(args.work)
    store = os.path.join(work, f"store-{args.articles}")
    feeds = os.path.join(work, f"feeds-{args.articles}")
    if not os.path.isdir(store):
        subprocess.run(
            [sys.executable, os.path.join(HERE, "gen_store.py"), str(args.articles), store,
             "--feeds", feeds], check=True)
    for leftover in ("bench-",):
        for name in os.listdir(store):
            if name.startswith(leftover):
                os.remove(os.path.join(store, name))
    out = os.path.join(work, "public")
    port = free_port()
    config = os.path.join(work, "bantin.toml")
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
dir = "{out}"
[state]
dir = "{work}/state"
[http]
listen = "127.0.0.1:{port}"
metrics_listen = ""
max_connections_per_client = 100000
""")
    log_path = os.path.join(work, "bantin.log")
    started = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([args.bin, "--config", config, "run"], stderr=log,
                                env={**os.environ, "BANTIN_LOG": "warn,bantin=info"})
    try:
        wait_listening(proc, log_path)
        print(f"store: {args.articles} articles; daemon serving after {time.time() - started:.2f} s")
        mem = memory_kib(proc.pid)
        print(f"memory after start: rss {mem['VmRSS'] / 1024:.1f} MiB, peak {mem['VmHWM'] / 1024:.1f} MiB")

        # Rename-to-served latency.
        conn = http.client.HTTPConnection("127.0.0.1", port)
        latencies = []
        for i in range(args.samples):
            title = f"Bài đo độ trễ số {i} {time.time_ns()}"
            text = (f"THÔNG BÁO\n\n{title}\nNgày đăng 20/11/2026 | {10 + i // 60:02d}:{i % 60:02d}\n\n"
                    f"Nội dung bài đo số {i}.\n")
            temp = os.path.join(work, f".incoming-{i}")
            with open(temp, "w", encoding="utf-8") as f:
                f.write(text)
            target = os.path.join(store, f"bench-{i}.txt")
            t0 = time.perf_counter()
            os.rename(temp, target)
            while True:
                conn.request("GET", "/feeds/thong-bao.rss")
                body = conn.getresponse().read().decode()
                if title in body:
                    break
            latencies.append((time.perf_counter() - t0) * 1000)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"rename -> served, {len(latencies)} articles: median {statistics.median(latencies):.1f} ms, "
              f"p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms")

        # Throughput, side by side with nginx.
        if shutil.which("wrk"):
            path = "/feeds/tat-ca.rss"
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            etag = r.getheader("etag")
            results = {"bantin 200": wrk(f"http://127.0.0.1:{port}{path}", args.duration)}
            results["bantin 304"] = wrk(f"http://127.0.0.1:{port}{path}", args.duration,
                                        [f"If-None-Match: {etag}"])
            assert status_of(port, path, {"If-None-Match": etag}) == 304
            if shutil.which("nginx"):
                nport = free_port()
                prefix = os.path.join(work, "nginx")
                os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
                conf = os.path.join(prefix, "nginx.conf")
                with open(conf, "w") as f:
                    f.write(f"""worker_processes auto;
error_log {prefix}/logs/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  types {{ application/rss+xml rss; }}
  sendfile on;
  etag on;
  server {{ listen 127.0.0.1:{nport}; root {out}; }}
}}
""")
                ng = subprocess.Popen(["nginx", "-p", prefix, "-c", conf, "-g", "daemon off;"])
                try:
                    for _ in range(100):
                        try:
                            status_of(nport, path, {})
                            break
                        except OSError:
                            time.sleep(0.05)
                    conn2 = http.client.HTTPConnection("127.0.0.1", nport)
                    conn2.request("GET", path)
                    r = conn2.getresponse()
                    r.read()
                    netag = r.getheader("etag")
                    results["nginx 200"] = wrk(f"http://127.0.0.1:{nport}{path}", args.duration)
                    results["nginx 304"] = wrk(f"http://127.0.0.1:{nport}{path}", args.duration,
                                               [f"If-None-Match: {netag}"])
                    assert status_of(nport, path, {"If-None-Match": netag}) == 304
                finally:
                    ng.terminate()
                    ng.wait()
            for name, (rps, errors) in results.items():
                print(f"wrk {name}: {rps:,.0f} requests/s" + (f" ({errors} errors)" if errors else ""))
            if "nginx 200" in results:
                for code in ("200", "304"):
                    ratio = results[f"bantin {code}"][0] / results[f"nginx {code}"][0]
                    print(f"bantin / nginx ({code}): {ratio:.2f}")
        else:
            print("wrk not installed: no throughput comparison")

        mem = memory_kib(proc.pid)
        print(f"memory at the end: rss {mem['VmRSS'] / 1024:.1f} MiB, peak {mem['VmHWM'] / 1024:.1f} MiB")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        for name in os.listdir(store):
            if name.startswith("bench-"):
                os.remove(os.path.join(store, name))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmarks the state's size and the daemon's memory over many deliveries: N subscribers,
M articles, every alert sent over SMTP into Postfix's smtp-sink (N x M deliveries).

    state.py [--subscribers N] [--articles M] [--sessions S] [--bin PATH] [--work DIR]

Reports the time to send them all, the daemon's peak memory, the state's size on disk: the
sled database (sent mails folded into their articles' totals as they go) and the logs of
sent mails (`sent/`, the full records, kept `mail.keep_days`), then after a restart with
`mail.keep_days = 0` (which compacts whatever else is finished), in place and as a fresh
database (`state export` into `state import`), in bytes per delivery; and the projection for
30,000 subscribers and 5 articles a day over a year: the database as it ends, growing by its
measured growth per delivery over the run's second half, plus 7 days of logs.
Needs smtp-sink (Debian: postfix).
"""

import argparse
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# The fan-out benchmark's helpers: ports, the sink, /metrics, /proc.
from mail import REPO, free_port, metric, start_sink, vm, wait_port, wait_started, write_config

print = functools.partial(print, flush=True)


def peak_kib(pid):
    return vm(pid, "VmHWM")


def du(path, skip=None):
    total = 0
    for root, dirs, files in os.walk(path):
        if skip:
            dirs[:] = [d for d in dirs if d != skip]
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def config(work, http_port, metrics_port, sink_port, sessions, keep_days, cache_mb=None,
           templates=os.path.join(REPO, "templates")):
    extra = f"[state]\ncache_mb = {cache_mb}\n" if cache_mb is not None else ""
    return write_config(work, http_port, metrics_port, sink_port, sessions,
                        "https://hdnd.caugiay.hanoi.gov.vn", f"keep_days = {keep_days}\n",
                        templates, extra)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subscribers", type=int, default=10_000)
    p.add_argument("--articles", type=int, default=100)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--cache-mb", type=int, default=None, help="state.cache_mb (default: bantin's)")
    p.add_argument("--templates", default=os.path.join(REPO, "templates"),
                   help="the templates of the binary's own version")
    p.add_argument("--bin", default=os.path.join(REPO, "target/release/bantin"))
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bantin-state-bench"))
    args = p.parse_args()
    if not shutil.which("smtp-sink"):
        sys.exit("smtp-sink not found (Debian: apt-get install postfix)")
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "articles"))
    n, m = args.subscribers, args.articles
    total = n * m
    state = os.path.join(work, "var", "state")

    sink_port = free_port()
    sink = start_sink(sink_port, work)
    try:
        wait_port(sink_port)
        http_port, metrics_port = free_port(), free_port()
        cfg = config(work, http_port, metrics_port, sink_port, args.sessions, 90, args.cache_mb, args.templates)
        with open(os.path.join(REPO, "articles", "000_5a7074c8138324ae.txt"), encoding="utf-8") as f:
            seed = f.read()
        with open(os.path.join(work, "articles", "cu.txt"), "w", encoding="utf-8") as f:
            f.write(seed)
        csv = os.path.join(work, "subscribers.csv")
        with open(csv, "w") as f:
            f.write("email,schedule,categories\n")
            for i in range(n):
                f.write(f"nguoi.dan.{i:06d}@gmail.com,immediate,\n")
        subprocess.run([args.bin, "--config", cfg, "subscribers", "import", csv, "--confirmed"],
                       check=True, stdout=subprocess.DEVNULL)
        before = du(state)

        log = open(os.path.join(work, "bantin.log"), "w")
        env = {**os.environ, "BANTIN_LOG": os.environ.get("BANTIN_LOG", "warn")}
        daemon = subprocess.Popen([args.bin, "--config", cfg, "run"], stderr=log, env=env)
        try:
            wait_started(http_port)
            t0 = time.time()
            # M articles, each moved into the store as the clerk would.
            for a in range(m):
                text = seed.replace("14/02/2020", "20/11/2026").replace(
                    "Thường trực HĐND, UBND", f"Tin {a + 1}: Thường trực HĐND, UBND", 1)
                temp = os.path.join(work, f"tin-{a}.tmp")
                with open(temp, "w", encoding="utf-8") as f:
                    f.write(text)
                os.rename(temp, os.path.join(work, "articles", f"tin-{a:03d}.txt"))
            last = -1
            half = None  # the database's size when half the mails were sent
            while (sent := metric(metrics_port, "bantin_mail_sent_total")) < total:
                if half is None and sent >= total // 2:
                    half = (sent, du(os.path.join(state, "db")))
                if daemon.poll() is not None:
                    sys.exit("bantin exited")
                if sent // 100_000 != last // 100_000:
                    print(f"  {sent:,} sent after {time.time() - t0:.0f} s, "
                          f"peak memory {peak_kib(daemon.pid) / 1024:.0f} MiB")
                last = sent
                time.sleep(1)
            took = time.time() - t0
            peak = peak_kib(daemon.pid) / 1024
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
        full = du(state, skip="sent")
        logs = du(os.path.join(state, "sent"))
        end_db = du(os.path.join(state, "db"))

        # Compaction: the daemon compacts at start what is older than keep_days.
        cfg = config(work, http_port, metrics_port, sink_port, args.sessions, 0, args.cache_mb, args.templates)
        daemon = subprocess.Popen([args.bin, "--config", cfg, "run"], stderr=log, env=env)
        try:
            wait_port(http_port)
            t1 = time.time()
            probe = os.path.join(work, "probe.jsonl")
            while True:
                # Done when no finished delivery is left on record.
                # (The admin socket may not answer yet right after the start.)
                if subprocess.run([args.bin, "--config", cfg, "state", "export", probe],
                                  stderr=subprocess.DEVNULL).returncode != 0:
                    time.sleep(0.5)
                    continue
                with open(probe) as f:
                    left = sum(1 for line in f if '"tree":"outbox"' in line
                               and '"state":"pending"' not in line)
                if left == 0 or time.time() - t1 > 600:
                    break
                time.sleep(2)
            compact_took = time.time() - t1
            peak = max(peak, peak_kib(daemon.pid) / 1024)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
        compacted = du(state, skip="sent")
        backup = os.path.join(work, "backup.jsonl")
        subprocess.run([args.bin, "--config", cfg, "state", "export", backup], check=True,
                       stderr=subprocess.DEVNULL)
        fresh_cfg = cfg.replace("bantin.toml", "fresh.toml")
        with open(cfg) as f, open(fresh_cfg, "w") as g:
            g.write(f.read() + f'\n[state]\ndir = "{work}/fresh-state"\n')
        subprocess.run([args.bin, "--config", fresh_cfg, "state", "import", backup], check=True,
                       stderr=subprocess.DEVNULL)
        fresh = du(os.path.join(work, "fresh-state"))
    finally:
        sink.terminate()
        sink.wait()

    per_db = max(full - before, 0) / total
    per_log = logs / total
    per_compact = max(compacted - before, 0) / total
    per_fresh = max(fresh - before, 0) / total
    year = 30_000 * 5 * 365
    window = 30_000 * 5 * 7
    # sled reuses freed space, more as the file grows: its growth per delivery over the
    # second half of the run carries the database from this run's end to a year's mails.
    half_sent, half_db = half or (total, end_db)
    marginal = max(end_db - half_db, 0) / max(total - half_sent, 1)
    projection = compacted + max(year - total, 0) * marginal + window * per_log
    print(f"| deliveries | {total:,} ({n:,} subscribers x {m} articles) |")
    print(f"| sent in | {took:.0f} s ({total / took:,.0f} mails/s) |")
    print(f"| daemon peak memory | {peak:.0f} MiB |")
    print(f"| sled database after the run | {full / 1e6:.1f} MB = {per_db:.1f} bytes per delivery |")
    print(f"| logs of sent mails (full records, kept keep_days) | {logs / 1e6:.1f} MB = "
          f"{per_log:.0f} bytes per delivery |")
    print(f"| restart with keep_days = 0 took | {compact_took:.0f} s |")
    print(f"| sled database compacted, in place | {compacted / 1e6:.1f} MB = {per_compact:.1f} bytes per delivery |")
    print(f"| compacted, exported into a fresh database | {fresh / 1e6:.1f} MB = "
          f"{per_fresh:.2f} bytes per delivery |")
    print(f"| the database's growth over the second half | {marginal:.1f} bytes per delivery |")
    print(f"| a year of 30,000 subscribers x 5 articles a day ({year:,} deliveries; 7 days of logs) | "
          f"{projection / 1e9:.2f} GB |")


if __name__ == "__main__":
    main()

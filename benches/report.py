#!/usr/bin/env python3
"""Runs the three speed comparisons of bantin, each beside its reference in the same run,
three times, and prints one table of medians with the ratios.

    report.py --bin BIN [--before BIN [--before-templates DIR]] [--runs 3] [--work DIR]
              [--subscribers 20000] [--build-articles 10000] [--run-articles 100000]
              [--only fanout,build,run]

1. Fan-out: one alert to N subscribers over SMTP into Postfix's smtp-sink with 16 sessions,
   from the rename of the article to the last mail recorded as sent; beside it
   `smtp-source -d -s 16 -l 5000` sending N messages to the same sink, and the same with
   messages of the alert's size (as the mail row measures it). The CPU the sink takes (in
   cores: it is one process with one thread) shows when it, not the sender, sets the pace.
2. Build: `bantin build` of a generated store into an empty folder (wall, user and system
   time); beside it, the same files' bytes written again into an empty folder
   (benches/raw_write.py); on the work folder's disk and in /dev/shm (tmpfs). The ratio is
   the median of each run's own ratio. Under it, with --render-bench, the same build's
   rendering alone (benches/render.rs: one thread, into memory, nothing written); with the
   raw write's own CPU time, spread perfectly over this machine's cores, it is the least wall
   time a build can take here: the floor of the ratio.
3. Run: `bantin run` on a generated store, from the start to `/healthz` answering and the
   all-news feed served: a first start (no output, no state) and a restart (same config);
   the daemon's peak memory.

Also reports the alert's size and the SMTP round trips it takes, read by a small SMTP server
of this script that counts the times it answers (with 8BITMIME and PIPELINING offered, and
without). With --before, every measure is also taken with an older binary, reading the
templates of --before-templates (those of its own version: a template may use a filter that an
older binary lacks; default: the repository's).

Needs smtp-sink and smtp-source (Debian: postfix).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mail import (REPO, free_port, mail_site, metric, publish, start_daemon, start_sink,  # noqa: E402
                  stop, vm, wait_port, wait_started)

HERE = os.path.dirname(os.path.abspath(__file__))
# The templates each binary reads, by its tag ("now", "before").
TEMPLATES = {"now": os.path.join(REPO, "templates"), "before": os.path.join(REPO, "templates")}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# -- fan-out ---------------------------------------------------------------------------------

def fanout_once(binary, work, n, sessions, sink_port, tag="now", sink_pid=None):
    config, http_port, metrics_port = mail_site(
        binary, work, sink_port, sessions, (f"dan{i:06d}@example.vn" for i in range(n)),
        templates=TEMPLATES[tag])
    daemon = start_daemon(binary, config, work)
    try:
        wait_started(http_port)
        cpu0 = cpu_seconds(daemon.pid)
        sink0 = cpu_seconds(sink_pid) if sink_pid else 0.0
        t0 = publish(os.path.join(work, "articles"))
        while metric(metrics_port, "bantin_mail_sent_total") < n:
            if daemon.poll() is not None:
                sys.exit(f"bantin exited; see {work}/bantin.log")
            time.sleep(0.05)
        took = time.perf_counter() - t0
        cpu = cpu_seconds(daemon.pid) - cpu0
        sink_cores = (cpu_seconds(sink_pid) - sink0) / took if sink_pid else 0.0
        peak = vm(daemon.pid, "VmHWM") / 1024
    finally:
        stop(daemon)
    return {"rate": n / took, "seconds": took, "peak_mib": peak, "cpu_us": cpu / n * 1e6,
            "sink_cores": sink_cores}


def cpu_seconds(pid):
    """User and system time of a running process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def smtp_source_once(n, sessions, sink_port, size=5000, sink_pid=None):
    sink0 = cpu_seconds(sink_pid) if sink_pid else 0.0
    t = time.perf_counter()
    subprocess.run(["smtp-source", "-d", "-s", str(sessions), "-m", str(n), "-l", str(size),
                    "-f", "bantin@hdnd.test", "-t", "dan@example.vn", f"127.0.0.1:{sink_port}"],
                   check=True)
    took = time.perf_counter() - t
    sink_cores = (cpu_seconds(sink_pid) - sink0) / took if sink_pid else 0.0
    return {"rate": n / took, "seconds": took, "sink_cores": sink_cores}


# -- one mail, read by a counting SMTP server ---------------------------------------------------

class CountingSmtp:
    """Accepts mail on 127.0.0.1 and records, per message, its size and the number of times
    the server answered while it was sent (one answer per round trip of the client)."""

    def __init__(self, eight_bit=True, pipelining=True):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.ext = ["250-bench.local"] + (["250-8BITMIME"] if eight_bit else []) \
            + (["250-PIPELINING"] if pipelining else []) + ["250 SMTPUTF8"]
        self.messages = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn):
        conn.sendall(b"220 bench.local ESMTP\r\n")
        buf, data, in_data = b"", b"", False
        answers = None  # answers sent since this mail's MAIL FROM
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
            out, done = [], []
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line += b"\n"
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        done.append(data)
                        out.append(b"250 queued")
                    else:
                        data += line[1:] if line.startswith(b"..") else line
                    continue
                cmd = line.strip().upper()
                if cmd.startswith(b"EHLO"):
                    out.append("\r\n".join(self.ext).encode())
                elif cmd.startswith(b"MAIL"):
                    answers = 0
                    out.append(b"250 ok")
                elif cmd == b"DATA":
                    in_data, data = True, b""
                    out.append(b"354 go ahead")
                elif cmd == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    conn.close()
                    return
                else:
                    out.append(b"250 ok")
            if out:
                conn.sendall(b"".join(o + b"\r\n" for o in out))
                if answers is not None:
                    answers += 1
            for d in done:
                self.messages.append({"bytes": len(d), "round_trips": answers,
                                      "eight_bit": any(b > 127 for b in d), "data": d})
                answers = None


def one_mail(binary, work, eight_bit, pipelining, tag="now"):
    """The alert to three subscribers through a counting server: size and round trips."""
    server = CountingSmtp(eight_bit, pipelining)
    config, http_port, _ = mail_site(binary, work, server.port, 1,
                                     (f"dan{i}@example.vn" for i in range(3)),
                                     templates=TEMPLATES[tag])
    daemon = start_daemon(binary, config, work)
    try:
        wait_started(http_port)
        publish(os.path.join(work, "articles"))
        deadline = time.time() + 60
        while len(server.messages) < 3 and time.time() < deadline:
            time.sleep(0.02)
    finally:
        stop(daemon)
    if len(server.messages) < 3:
        sys.exit(f"the counting server got {len(server.messages)} of 3 mails; see {work}/bantin.log")
    # The first mail of a connection also paid for the greeting; the others show the steady state.
    last = server.messages[-1]
    with open(os.path.join(work, "last.eml"), "wb") as f:
        f.write(last["data"])
    return last


# -- build -------------------------------------------------------------------------------------

def timed(cmd):
    before, wall = os.times(), time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall, after = time.perf_counter() - wall, os.times()
    return {"wall": wall, "user": after.children_user - before.children_user,
            "sys": after.children_system - before.children_system}


def store_of(work, n):
    store, feeds = os.path.join(work, f"store-{n}"), os.path.join(work, f"feeds-{n}")
    if not os.path.isdir(store):
        log(f"generating {n} articles in {store}")
        subprocess.run([sys.executable, os.path.join(HERE, "gen_store.py"), str(n), store,
                        "--feeds", feeds], check=True, stdout=subprocess.DEVNULL)
    return store, feeds


def build_once(binary, work, n, tag, i, out_root):
    """One build beside its raw write. Nothing is deleted between them: ext4 looks long for
    free inodes right after many files were deleted (`recently_deleted`), which would load
    whichever came first; the folders go once every run is done."""
    store, feeds = store_of(work, n)
    out = os.path.join(out_root, "builds", f"build-{tag}-{i}")
    raw = os.path.join(out_root, "builds", f"raw-{tag}-{i}")
    for d in (out, raw):
        shutil.rmtree(d, ignore_errors=True)
    config = os.path.join(work, f"build-{tag}.toml")
    with open(config, "w") as f:
        f.write(f'[store]\ndir = "{store}"\n[feeds]\ndir = "{feeds}"\n'
                f'[templates]\ndir = "{TEMPLATES[tag]}"\n[output]\ndir = "{out}"\n')
    subprocess.run(["sync"])
    b = timed([binary, "--config", config, "build"])
    subprocess.run(["sync"])
    r = json.loads(subprocess.run([sys.executable, os.path.join(HERE, "raw_write.py"), out, raw],
                                  check=True, capture_output=True, text=True).stdout)
    files = r["files"]
    return {"bantin": b, "raw": r, "files": files}


# -- run -----------------------------------------------------------------------------------------

def healthy_and_feed(port):
    for path in ("/healthz", "/feeds/tat-ca.rss"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                if r.status != 200:
                    return False
        except OSError:
            return False
    return True


def wait_settled(base, starts):
    """Until the daemon's log tells the `starts`-th start done: the store checked, mail
    started (a restart serves before that) and the search index built (after that)."""
    path = os.path.join(base, "bantin.log")
    while True:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if text.count("published the store") >= starts and \
                text.count("search index built") >= starts:
            return
        time.sleep(0.05)


def run_once(binary, work, n, tag, i):
    """First start on a fresh output and state, then a restart: seconds to serving each.
    The folders stay until every run is done (see `build_once`)."""
    store, feeds = store_of(work, n)
    base = os.path.join(work, "runs", f"run-{tag}-{i}")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    port = free_port()
    config = os.path.join(base, "bantin.toml")
    with open(config, "w") as f:
        f.write(f'[site]\nbase_url = "http://127.0.0.1:{port}"\n[store]\ndir = "{store}"\n'
                f'[feeds]\ndir = "{feeds}"\n[templates]\ndir = "{TEMPLATES[tag]}"\n'
                f'[output]\ndir = "{base}/public"\n[state]\ndir = "{base}/state"\n'
                f'[http]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = ""\n')
    result = {"base": base}
    for starts, phase in enumerate(("first", "restart"), 1):
        subprocess.run(["sync"])
        t0 = time.perf_counter()
        daemon = start_daemon(binary, config, base, "warn,bantin=info")
        try:
            while not healthy_and_feed(port):
                if daemon.poll() is not None:
                    sys.exit(f"bantin exited; see {base}/bantin.log")
                time.sleep(0.01)
            result[phase] = time.perf_counter() - t0
            # What it holds once the work of a start is done, background work included.
            wait_settled(base, starts)
            result[f"{phase}_peak_mib"] = vm(daemon.pid, "VmHWM") / 1024
        finally:
            stop(daemon)
    return result


def median(values):
    return statistics.median(values)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", required=True)
    p.add_argument("--before", help="an older binary, measured the same way")
    p.add_argument("--before-templates", help="the templates of the older binary's version")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bantin-report"))
    p.add_argument("--subscribers", type=int, default=20_000)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--build-articles", type=int, default=10_000)
    p.add_argument("--run-articles", type=int, default=100_000)
    p.add_argument("--only", default="build,run,mail,fanout")
    p.add_argument("--render-bench", help="the executable of benches/render.rs (report.sh builds it)")
    args = p.parse_args()
    only = set(args.only.split(","))
    for tool in ("smtp-sink", "smtp-source"):
        if "fanout" in only and not shutil.which(tool):
            sys.exit(f"{tool} not found (Debian: apt-get install postfix)")
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    binaries = [("now", os.path.abspath(args.bin))]
    if args.before:
        binaries.append(("before", os.path.abspath(args.before)))
    if args.before_templates:
        TEMPLATES["before"] = os.path.abspath(args.before_templates)
    rows = []

    # Creating many files right after deleting many is slow on an ext4 without a journal
    # (it skips inodes freed in the last minutes one by one): the sections that create
    # files come first, delete nothing until they are done, and take the binaries in turn.
    if "build" in only:
        raw_walls = {}
        # On the disk of the work folder, and in memory (/dev/shm, a tmpfs), where the file
        # system's own work does not hide what bantin adds.
        roots = [(work, "disk")] + ([("/dev/shm", "tmpfs")] if os.path.isdir("/dev/shm") else [])
        for root, where in roots:
            shutil.rmtree(os.path.join(root, "builds"), ignore_errors=True)
            runs = {label: [] for label, _ in binaries}
            for i in range(args.runs):
                for label, binary in binaries:
                    x = build_once(binary, work, args.build_articles, label, i, root)
                    runs[label].append(x)
                    log(f"build run {i + 1} ({label}, {where}): bantin {x['bantin']['wall']:.2f} s "
                        f"(user {x['bantin']['user']:.2f}, sys {x['bantin']['sys']:.2f}), raw write "
                        f"{x['raw']['wall']:.2f} s (user {x['raw']['user']:.2f}, sys {x['raw']['sys']:.2f})")
            shutil.rmtree(os.path.join(root, "builds"), ignore_errors=True)
            for label, _ in binaries:
                r = runs[label]
                bw = median([x["bantin"]["wall"] for x in r])
                rw = median([x["raw"]["wall"] for x in r])
                # The ratio of each run (its build beside its own raw write), then the median.
                ratio = median([x["bantin"]["wall"] / x["raw"]["wall"] for x in r])
                if label == "now":
                    raw_walls[where] = (rw, median([x["raw"]["user"] + x["raw"]["sys"] for x in r]))
                rows.append((f"build, {args.build_articles:,} articles, {r[0]['files']:,} files, {where} ({label})",
                             f"{bw:.2f} s (user {median([x['bantin']['user'] for x in r]):.2f}, "
                             f"sys {median([x['bantin']['sys'] for x in r]):.2f})",
                             f"raw write: {rw:.2f} s (user {median([x['raw']['user'] for x in r]):.2f}, "
                             f"sys {median([x['raw']['sys'] for x in r]):.2f})",
                             f"{ratio:.2f}x (goal <= 1.5x)"))

        if args.render_bench:
            # What the build's rendering alone takes, nothing written: the least a build can
            # take on this machine's cores, whatever it does about files.
            out = subprocess.run([args.render_bench, os.path.join(work, "build-now.toml"),
                                  str(args.runs)], check=True, capture_output=True, text=True).stdout
            log(out.rstrip())
            cpu = float(re.search(r"^all, one thread\s+([0-9.]+) ms", out, re.M).group(1)) / 1e3
            cores = os.cpu_count() or 1
            # A build does this CPU work and the raw write's own (its system time) at least:
            # shared out perfectly over the cores, the least wall time it can take.
            floors = {w: (cpu + raw_cpu) / cores / rw for w, (rw, raw_cpu) in raw_walls.items()}
            rows.append(("  the build's rendering alone, one thread, nothing written (now)",
                         f"{cpu:.2f} s CPU",
                         "its CPU and the raw write's, on " + f"{cores} cores at best: " +
                         ", ".join(f"{(cpu + c) / cores:.2f} s ({w})" for w, (_, c) in raw_walls.items()),
                         "floor " + ", ".join(f"{f:.2f}x ({w})" for w, f in floors.items())))

    if "run" in only:
        runs = {label: [] for label, _ in binaries}
        for i in range(args.runs):
            for label, binary in binaries:
                runs[label].append(run_once(binary, work, args.run_articles, label, i))
                x = runs[label][-1]
                log(f"run {i + 1} ({label}): first start {x['first']:.2f} s, "
                    f"restart {x['restart']:.2f} s, peak {max(x['first_peak_mib'], x['restart_peak_mib']):.0f} MiB")
        for label, _ in binaries:
            r = runs[label]
            first = median([x["first"] for x in r])
            again = median([x["restart"] for x in r])
            peak = median([max(x["first_peak_mib"], x["restart_peak_mib"]) for x in r])
            rows.append((f"run, {args.run_articles:,} articles ({label})",
                         f"first start {first:.2f} s, restart {again:.2f} s, peak {peak:.0f} MiB",
                         "—", "goal: restart <= 1 s, first start <= 3 s, <= 150 MB"))

    if "mail" in only:
        for label, binary in binaries:
            for eight, pipe in ((True, True), (False, False)):
                m = one_mail(binary, os.path.join(work, "one"), eight, pipe, label)
                offered = ("8BITMIME" if eight else "no 8BITMIME") + ", " + \
                    ("PIPELINING" if pipe else "no PIPELINING")
                rows.append((f"alert mail ({label}; relay offers {offered})",
                             f"{m['bytes']:,} bytes, {m['round_trips']} round trips, "
                             f"{'8-bit' if m['eight_bit'] else '7-bit'} body", "", ""))
                log(rows[-1])

    if "fanout" in only:
        sink_port = free_port()
        sink = start_sink(sink_port, work)
        try:
            wait_port(sink_port)
            ours = {label: [] for label, _ in binaries}
            ref = {label: [] for label, _ in binaries}
            same = {label: [] for label, _ in binaries}
            # The alert as smtp-sink takes it (it offers 8BITMIME and PIPELINING).
            size = {label: one_mail(binary, os.path.join(work, "one"), True, True, label)["bytes"]
                    for label, binary in binaries}
            for i in range(args.runs):
                for label, binary in binaries:
                    ours[label].append(fanout_once(binary, os.path.join(work, "fanout"),
                                                   args.subscribers, args.sessions, sink_port,
                                                   label, sink.pid))
                    ref[label].append(smtp_source_once(args.subscribers, args.sessions, sink_port,
                                                       sink_pid=sink.pid))
                    same[label].append(smtp_source_once(args.subscribers, args.sessions, sink_port,
                                                        size[label], sink.pid))
                    o, r, m = ours[label][-1], ref[label][-1], same[label][-1]
                    log(f"fan-out run {i + 1} ({label}): bantin {o['rate']:,.0f}/s "
                        f"({o['cpu_us']:.0f} µs of CPU a mail; sink {o['sink_cores']:.2f} cores), "
                        f"smtp-source {r['rate']:,.0f}/s (sink {r['sink_cores']:.2f}), "
                        f"at {size[label]:,} bytes {m['rate']:,.0f}/s (sink {m['sink_cores']:.2f})")
            for label, _ in binaries:
                b = median([o["rate"] for o in ours[label]])
                r = median([x["rate"] for x in ref[label]])
                m = median([x["rate"] for x in same[label]])
                cores = lambda runs: median([x["sink_cores"] for x in runs])  # noqa: E731
                rows.append((f"fan-out, {args.subscribers:,} subscribers, {args.sessions} sessions ({label})",
                             f"{b:,.0f} msg/s, {median([o['cpu_us'] for o in ours[label]]):.0f} µs CPU/mail "
                             f"(peak {median([o['peak_mib'] for o in ours[label]]):.0f} MiB; "
                             f"sink {cores(ours[label]):.2f} cores)",
                             f"smtp-source -d: {r:,.0f} msg/s (sink {cores(ref[label]):.2f} cores)",
                             f"{b / r:.2f}x (goal >= 0.6x)"))
                rows.append((f"  the same reference, messages of the alert's {size[label]:,} bytes ({label})", "",
                             f"smtp-source -d: {m:,.0f} msg/s (sink {cores(same[label]):.2f} cores)",
                             f"{b / m:.2f}x"))
        finally:
            sink.terminate()
            sink.wait()

    shutil.rmtree(os.path.join(work, "runs"), ignore_errors=True)

    print(f"\nmedians of {args.runs} runs; references measured in the same runs\n")
    widths = [max(len(r[i]) for r in rows + [("work", "bantin", "reference", "ratio")]) for i in range(4)]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    print(line(("work", "bantin", "reference", "ratio")))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    main()

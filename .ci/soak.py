#!/usr/bin/env python3
"""Soak: slow-body clients over the connection limit, and a normal client that must get
every answer in under a second.

    soak.py BANTIN_BINARY [SECONDS]

Starts bantin on the sample store with a small connection limit, then for SECONDS (30)
keeps 8 loopback addresses (127.0.0.2-9) each trying to hold 24 connections that send a
POST body a byte every 200 ms (192 in all, 3 times the limit of 64), while a normal client
on 127.0.0.1 asks for /healthz, the index and a feed, one request every 100 ms. Prints the
number of normal requests and the slowest, and fails if any took a second or more or failed.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slow_client(source, port, stop):
    """Holds one connection as long as the server allows, reconnecting when it is cut."""
    while not stop.is_set():
        try:
            s = socket.socket()
            s.bind((source, 0))
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
            s.sendall(b"POST /subscribe HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n")
            while not stop.is_set():
                s.sendall(b"e")
                time.sleep(0.2)
        except OSError:
            time.sleep(0.1)
        finally:
            s.close()


def main():
    binary = os.path.abspath(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    work = tempfile.mkdtemp(prefix="bantin-soak-")
    port = free_port()
    with open(os.path.join(work, "bantin.toml"), "w") as f:
        f.write(f"""[store]
dir = "{REPO}/articles"
[feeds]
dir = "{REPO}/feeds"
[templates]
dir = "{REPO}/templates"
[http]
listen = "127.0.0.1:{port}"
metrics_listen = ""
max_connections = 64
max_connections_per_client = 16
request_timeout_secs = 3
""")
    log = open(os.path.join(work, "bantin.log"), "w")
    daemon = subprocess.Popen([binary, "--config", os.path.join(work, "bantin.toml"), "run"], stderr=log)
    stop = threading.Event()
    threads = []
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        for ip in range(2, 10):
            for _ in range(24):
                t = threading.Thread(target=slow_client, args=(f"127.0.0.{ip}", port, stop), daemon=True)
                t.start()
                threads.append(t)
        time.sleep(1)  # let the slow clients take what they can
        times, failures = [], []
        end = time.time() + seconds
        paths = ["/healthz", "/", "/feeds/tat-ca.atom"]
        n = 0
        while time.time() < end:
            path = paths[n % len(paths)]
            n += 1
            started = time.time()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    r.read()
                    if r.status != 200:
                        failures.append(f"{path}: {r.status}")
            except Exception as e:  # noqa: BLE001 - every failure is reported
                failures.append(f"{path}: {e}")
            took = time.time() - started
            times.append(took)
            if took >= 1:
                failures.append(f"{path}: {took * 1000:.0f} ms")
            time.sleep(0.1)
        slowest = max(times) * 1000
        print(f"soak: {len(times)} requests beside 192 slow-body connections over a limit of 64; "
              f"slowest {slowest:.0f} ms, median {sorted(times)[len(times) // 2] * 1000:.0f} ms")
        for f in failures[:10]:
            print("FAIL", f)
        print(f"soak: {len(times) - len(failures)} passed, {len(failures)} failed")
        sys.exit(1 if failures else 0)
    finally:
        stop.set()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

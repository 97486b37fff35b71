#!/usr/bin/env python3
"""The physical limit of a build: writes the files of SOURCE again into the empty folder
TARGET, with nothing else to do (every byte read into memory first, untimed), and prints
the wall, user and system time of the writes as JSON.

    raw_write.py SOURCE TARGET

Each file is created, written in one call and closed, folders first, in the order a walk
gives: the fewest system calls the output can take (no renames, no fsync, as `build` does).
"""

import json
import os
import sys
import time


def main():
    source, target = sys.argv[1], sys.argv[2]
    dirs, files = [], []
    for root, dirnames, filenames in os.walk(source):
        rel = os.path.relpath(root, source)
        dirs.append(rel)
        for name in filenames:
            with open(os.path.join(root, name), "rb") as f:
                files.append((os.path.join(target, rel, name), f.read()))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    before, wall = os.times(), time.perf_counter()
    for rel in dirs:
        os.makedirs(os.path.join(target, rel), exist_ok=True)
    for path, data in files:
        fd = os.open(path, flags, 0o644)
        os.write(fd, data)
        os.close(fd)
    wall, after = time.perf_counter() - wall, os.times()
    print(json.dumps({
        "files": len(files),
        "bytes": sum(len(d) for _, d in files),
        "wall": wall,
        "user": after.user - before.user,
        "sys": after.system - before.system,
    }))


if __name__ == "__main__":
    main()

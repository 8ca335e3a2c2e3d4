#!/usr/bin/env python3
"""Timing probes for bench/peers/run.sh (plain python3, no third-party modules).

  probe.py map IMAGE OUT            offsets of the 64 KiB blocks of IMAGE that hold data (not all zero), one a line
  probe.py ready MNT FILE -- CMD..  starts CMD, times until MNT answers stat as a new mount, then the first 4 KiB
                                    read of MNT/FILE (open + pread); prints "ready_ms first_ms pid"
  probe.py evict PATH               drops PATH's files (a directory tree or one file) from the page cache
  probe.py random FILE MAP N SEED   N preads of 4 KiB at random offsets inside data blocks, each timed;
                                    prints "p50_ms p99_ms"
"""
import os, random, subprocess, sys, time

BLOCK = 64 * 1024


def data_map(image, out):
    zero = bytes(BLOCK)
    n = 0
    with open(image, "rb", buffering=0) as f, open(out, "w") as o:
        off = 0
        while True:
            b = f.read(BLOCK)
            if not b:
                break
            if b != zero[: len(b)] and len(b) == BLOCK:
                o.write(f"{off}\n")
                n += 1
            off += len(b)
    print(n)


def ready(mnt, rel, cmd):
    base = os.stat(mnt).st_dev
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = t0 + 120
    while True:
        try:
            if os.stat(mnt).st_dev != base:
                break
        except OSError:
            pass
        if time.perf_counter() > deadline:
            print("timeout", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.0005)
    t1 = time.perf_counter()
    fd = os.open(os.path.join(mnt, rel), os.O_RDONLY)
    data = os.pread(fd, 4096, 0)
    t2 = time.perf_counter()
    os.close(fd)
    if len(data) != 4096:
        print("short first read", file=sys.stderr)
        sys.exit(1)
    print(f"{(t1 - t0) * 1000:.1f} {(t2 - t1) * 1000:.2f} {proc.pid}")


def evict(path):
    files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for name in files:
        try:
            fd = os.open(name, os.O_RDONLY)
        except OSError:
            continue
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def rand(path, mapfile, n, seed):
    offsets = [int(x) for x in open(mapfile)]
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    samples = []
    for _ in range(n):
        off = rng.choice(offsets) + rng.randrange(0, BLOCK // 4096) * 4096
        t = time.perf_counter()
        got = os.pread(fd, 4096, off)
        samples.append((time.perf_counter() - t) * 1000)
        if len(got) != 4096:
            print(f"short read at {off}", file=sys.stderr)
            sys.exit(1)
    os.close(fd)
    samples.sort()
    print(f"{samples[len(samples) // 2]:.2f} {samples[min(len(samples) - 1, int(len(samples) * 0.99))]:.2f}")


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "map":
        data_map(a[1], a[2])
    elif a[0] == "ready":
        ready(a[1], a[2], a[a.index("--") + 1:])
    elif a[0] == "evict":
        evict(a[1])
    elif a[0] == "random":
        rand(a[1], a[2], int(a[3]), int(a[4]))
    else:
        sys.exit(__doc__)

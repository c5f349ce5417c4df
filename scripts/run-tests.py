#!/usr/bin/env python3
"""Run test binaries side by side for scripts/test.sh: at most LANES at once, of which at most
HEAVY are heavy end-to-end files (several guests climbing under TCG at once: four of them
together starved the guests of CPU and broke timing-bound tests, seen on 2026-12-02).
Heavy files start first, longest known first; e2e_openstack last (its services come up in
the background meanwhile).

    run-tests.py LOGDIR < "NAME EXE" lines

Prints "ok   NAME (S s)" or "FAIL NAME (S s)" as each ends; writes LOGDIR/NAME.log, and
LOGDIR/NAME.failed for a failure. Exits 0; the caller reads the .failed files.
"""
import subprocess
import sys
import time

LANES = 4
HEAVY = 2
# The heavy files and their rough lengths (s, measured on the 2-core test machine), longest first.
HEAVY_FILES = {"e2e_overcap": 220, "e2e_coord": 210, "e2e_loop": 200, "e2e_migrate": 180,
               "e2e_migrate_tls": 140, "e2e_share": 120}
LAST = "e2e_openstack"


def main():
    logdir = sys.argv[1]
    items = [l.split(maxsplit=1) for l in sys.stdin.read().splitlines() if l.strip()]
    heavy = sorted((i for i in items if i[0] in HEAVY_FILES), key=lambda i: -HEAVY_FILES[i[0]])
    # Others: end-to-end files before the quick ones, e2e_openstack at the very end.
    light = sorted((i for i in items if i[0] not in HEAVY_FILES),
                   key=lambda i: (i[0] == LAST, not i[0].startswith(("e2e_", "deb_")), i[0]))
    running = {}  # Popen -> (name, start, heavy)
    while heavy or light or running:
        n_heavy = sum(1 for v in running.values() if v[2])
        started = False
        if len(running) < LANES:
            if heavy and n_heavy < HEAVY:
                name, exe = heavy.pop(0)
                is_heavy = True
            elif light and not (light[0][0] == LAST and (heavy or len(light) > 1)):
                name, exe = light.pop(0)
                is_heavy = False
            else:
                name = None
            if name:
                with open(f"{logdir}/{name}.log", "w") as log:
                    p = subprocess.Popen([exe.strip(), "--test-threads", "2"], stdout=log,
                                         stderr=subprocess.STDOUT)
                running[p] = (name, time.monotonic(), is_heavy)
                started = True
        if started:
            continue
        for p in list(running):
            if p.poll() is not None:
                name, t0, _ = running.pop(p)
                took = round(time.monotonic() - t0)
                if p.returncode == 0:
                    print(f"ok   {name} ({took} s)", flush=True)
                else:
                    print(f"FAIL {name} ({took} s)", flush=True)
                    open(f"{logdir}/{name}.failed", "w").close()
        time.sleep(0.5)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Where a run's pressure events and reclaim come from, from `memscale simulate --json --per-vm`.

    memscale simulate --trace T.csv.gz --floor 0% --json --per-vm [--policy F]... > run.json
    scripts/sim-per-vm.py run.json [NAME...]

Prints a Markdown table per controller (all but static, MoM and Proxmox unless named): events,
how many began on a VM's first day (no day of peaks yet), how many VMs had any and the three
VMs with most, the jump that made each event against the headroom kept before it (jump =
demand − the demand before it, kept = allocation − the demand before it), and by how much
demand overshot the allocation when the event began.
"""
import json
import sys

MIB = 2**20


def quantile(xs, q):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * q)] if xs else 0.0


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    runs = json.load(open(sys.argv[1]))["results"]
    names = sys.argv[2:] or [r["name"] for r in runs if r["name"] not in ("static", "mom", "proxmox")]
    print("| controller | events | first day | VMs with events | top 3 VMs | jump / headroom kept p10, p50, p90 | overshoot MiB p50, p90 | overshoot < 64 MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        if r["name"] not in names:
            continue
        vms = r.get("per_vm")
        if vms is None:
            sys.exit(f"sim-per-vm: {r['name']} has no per_vm figures: run simulate with --per-vm")
        events = [e for v in vms for e in v["events"]]
        n = len(events)
        first = sum(1 for e in events if e["at_s"] < 86400)
        counts = sorted((len(v["events"]) for v in vms), reverse=True)
        ratios = [
            (e["demand"] - e["before"]) / max(e["alloc"] - e["before"], 1)
            for e in events
            if e["demand"] > e["before"]
        ]
        over = [(e["demand"] - e["alloc"]) / MIB for e in events]
        small = sum(1 for o in over if o < 64)
        pct = lambda x: f"{100 * x / n:.0f}%" if n else "-"
        print(
            f"| {r['name']} | {n} | {first} ({pct(first)}) | {sum(1 for c in counts if c)} of {len(vms)}"
            f" | {sum(counts[:3])} ({pct(sum(counts[:3]))})"
            f" | {quantile(ratios, .1):.2f}, {quantile(ratios, .5):.2f}, {quantile(ratios, .9):.2f}"
            f" | {quantile(over, .5):.0f}, {quantile(over, .9):.0f} | {small} ({pct(small)}) |"
        )


main()

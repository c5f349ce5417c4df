#!/usr/bin/env python3
"""How far issue 18's bar is from the reachable, from `memscale simulate --json --per-vm`.

    scripts/sim-frontier.py run.json [--bar-from autopilot,vpa]

The run holds many policies (scripts/sim-frontier.sh writes a grid of them) and the
baselines. Prints:

1. every policy's reclaim and events per VM-day, and whether it meets the bar (reclaim above
   every baseline's; events per VM-day, shortfall and pressure time no worse than those of
   the baselines named in --bar-from);
2. the hindsight bound: for each VM separately, the policy of the run that is best for that
   VM (least allocation + lambda x events, swept over lambda), chosen knowing the VM's whole
   month. No causal rule made of the run's policies, however it picks per VM, can do better
   than this curve: if the curve misses the bar, so does every such rule;
3. the bound at the bar: the fewest events per VM-day any per-VM choice has while reclaiming
   more than every baseline, and the most it reclaims with no more events than the fewest
   of the bar's baselines.
"""
import json
import sys

BASELINES = ("static", "oracle", "mom", "proxmox", "vpa", "autopilot")
MEASURES = {"pressure_events_per_vm_day": "events", "shortfall_gib_h": "shortfall",
            "pressure_time_pct": "pressure time"}


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        sys.exit(__doc__)
    bar_from = ["autopilot", "vpa"]
    if "--bar-from" in args:
        i = args.index("--bar-from")
        bar_from = args[i + 1].split(",")
        del args[i : i + 2]
    run = json.load(open(args[0]))
    results = {r["name"]: r for r in run["results"]}
    for b in bar_from:
        if b not in results:
            sys.exit(f"sim-frontier: {args[0]} has no result for the baseline {b}")
    policies = [r for r in run["results"] if r["name"] not in BASELINES]
    if not policies:
        sys.exit(f"sim-frontier: {args[0]} has no policy results")
    for r in policies:
        if r.get("per_vm") is None:
            sys.exit(f"sim-frontier: {r['name']} has no per_vm figures: run simulate with --per-vm")

    base = [results[b] for b in BASELINES if b in results and b not in ("static", "oracle")]
    reclaim_bar = max(b["reclaimed_pct"] for b in base)
    bar = {
        k: min(results[b][k] for b in bar_from)
        for k in MEASURES
    }
    print(
        f"bar: reclaimed > {reclaim_bar:.2f}% (the best baseline's), events/VM-day <= "
        f"{bar['pressure_events_per_vm_day']:.3f}, shortfall <= {bar['shortfall_gib_h']:.2f} "
        f"GiB.h, pressure time <= {bar['pressure_time_pct']:.4f}% (the least of "
        f"{', '.join(bar_from)})"
    )
    print()
    print("| policy | reclaimed % | events / VM-day | shortfall GiB.h | pressure time % | fails on |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in sorted(policies, key=lambda r: -r["reclaimed_pct"]):
        fails = []
        if r["reclaimed_pct"] <= reclaim_bar:
            fails.append("reclaim")
        fails += [MEASURES[k] for k in bar if r[k] > bar[k]]
        print(
            f"| {r['name']} | {r['reclaimed_pct']:.2f} | {r['pressure_events_per_vm_day']:.3f} | "
            f"{r['shortfall_gib_h']:.2f} | {r['pressure_time_pct']:.4f} | "
            f"{', '.join(fails) or '**none**'} |"
        )

    # Per VM and policy: allocation (GiB.h) and events. Reclaim is (ceiling-time - allocation).
    vms = {}
    for r in policies:
        for v in r["per_vm"]:
            ceil_gib_h = v["ceiling"] / 2**30 * v["vm_days"] * 24
            e = vms.setdefault(v["vm"], {"ceil": ceil_gib_h, "days": v["vm_days"], "opts": []})
            e["opts"].append((ceil_gib_h - v["reclaimed_gib_h"], v["pressure_events"], r["name"]))
    n_pol = len(policies)
    short = [k for k, e in vms.items() if len(e["opts"]) != n_pol]
    if short:
        sys.exit(f"sim-frontier: VMs {short[:5]} lack a result under some policy")
    total_ceil = sum(e["ceil"] for e in vms.values())
    days = sum(e["days"] for e in vms.values())

    def pick(lam):
        alloc = events = 0.0
        for e in vms.values():
            a, ev, _ = min(e["opts"], key=lambda o: (o[0] + lam * o[1], o[1]))
            alloc += a
            events += ev
        return 100 * (1 - alloc / total_ceil), events / days

    curve = []
    lam = 1e-4
    while lam < 1e6:
        curve.append((lam,) + pick(lam))
        lam *= 1.15
    print()
    print("hindsight bound (each VM's best policy of the run for it, knowing its month):")
    print()
    print("| lambda GiB.h per event | reclaimed % | events / VM-day |")
    print("| ---: | ---: | ---: |")
    last = None
    for lam, rec, ev in curve:
        row = (round(rec, 2), round(ev, 3))
        if row != last:
            print(f"| {lam:.3g} | {rec:.2f} | {ev:.3f} |")
            last = row
    # The achievable (reclaim, events) pairs lie on or above the convex hull the sweep traces,
    # so between two of its points the bound is the straight line joining them.
    pts = sorted({(rec, ev) for _, rec, ev in curve})
    ev_bar = bar["pressure_events_per_vm_day"]

    def interp(x, xs, ys):
        for (x0, y0), (x1, y1) in zip(zip(xs, ys), list(zip(xs, ys))[1:]):
            if x0 <= x <= x1:
                return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return None

    min_ev = interp(reclaim_bar, [p[0] for p in pts], [p[1] for p in pts])
    by_ev = sorted(pts, key=lambda p: p[1])
    max_rec = interp(ev_bar, [p[1] for p in by_ev], [p[0] for p in by_ev])
    print()
    if min_ev is None:
        print(f"bound: no per-VM choice reclaims {reclaim_bar:.2f}%")
    else:
        print(
            f"bound: reclaiming {reclaim_bar:.2f}% takes at least {min_ev:.3f} events per VM-day "
            f"({min_ev / ev_bar:.2f}x the bar's {ev_bar:.3f})"
        )
    if max_rec is None:
        print(f"bound: no per-VM choice has {ev_bar:.3f} events per VM-day")
    else:
        print(
            f"bound: at {ev_bar:.3f} events per VM-day, at most {max_rec:.2f}% reclaimed "
            f"(the bar: above {reclaim_bar:.2f}%)"
        )

if __name__ == "__main__":
    main()

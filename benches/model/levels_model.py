#!/usr/bin/env python3
"""Checkpoint time and efficiency at scale, with and without ckpt's node-local cache level (issue 20).

A model on paper, standard library only. For R ranks (R / ranks-per-node nodes) each holding `state` GB:

* synchronous: every rank writes to the parallel file system (PFS) and waits. The checkpoint costs
  C = R * state / min(PFS bandwidth, nodes * per-node network bandwidth).
* cached: every rank writes to node-local storage and goes on; the application pays
  C_L = ranks-per-node * state / node-local bandwidth. The copy to the PFS (the flush, F = C) runs while the
  application computes. It overlaps entirely unless the interval is shorter than the flush: the interval is
  then stretched to F - C_L (with CKPT_FLUSH=every a newer checkpoint replaces a copy that has not started,
  so checkpoints more frequent than that would not be any more durable).
* failures: each node fails independently with mean time between failures MTBF_node; the job's MTBF is
  M = MTBF_node / nodes. A failure loses the node and its cache, so without redundancy (`--recoverable 0`,
  CKPT_PARTNER off) every restart reads the newest
  checkpoint that is durable on the PFS, which lags the newest cached one by the flush time F. With
  `--recoverable p`, a fraction p of failures restart from node-local copies (SCR's partner/XOR levels; SCR
  reports 85%) at node-local speed.
* efficiency: Daly's model (Daly 2006, FGCS 22(3)): the wall time of T_s of work with compute interval tau,
  checkpoint cost C, restart cost R and MTBF M is T_w = M e^(R/M) (e^((tau+C)/M) - 1) T_s / tau, so the
  efficiency is T_s / T_w. The cached level's flush lag D joins the restart cost (work since the newest
  durable checkpoint is lost): R_eff = p * R_L + (1 - p) * (R + D), D = F.
* CKPT_FLUSH=k: the same cached checkpoints, of which only every kth is copied, k the smallest that keeps
  the PFS traffic at the synchronous case's (the lag of the durable checkpoint grows by (k - 1) / 2 intervals).
* interval: Daly's higher-order optimum of Young's sqrt(2CM) (what `CKPT_INTERVAL=auto` uses,
  `ckpt_core::triggers::daly_interval`), with the application-visible cost.

Usage: python3 levels_model.py [--state-gb 0.5] [--pfs-gbps 200] [--node-net-gbps 10] [--local-gbps 10]
       [--ranks-per-node 32] [--mtbf-node-years 5] [--recoverable 0] [--markdown]
"""

import argparse
import math

HOUR = 3600.0
YEAR = 365.25 * 24 * HOUR


def daly_interval(c, m):
    """Daly's optimum compute interval for checkpoint cost c and MTBF m (ckpt_core::triggers::daly_interval)."""
    c = max(c, 1e-3)
    if c >= 2 * m:
        return m
    r = c / (2 * m)
    return max(math.sqrt(2 * c * m) * (1 + math.sqrt(r) / 3 + r / 9) - c, 1.0)


def efficiency(tau, c, r, m):
    """Daly's expected efficiency: useful work / wall time."""
    return tau / (m * math.exp(r / m) * math.expm1((tau + c) / m))


def model(ranks, a):
    nodes = max(1, math.ceil(ranks / a.ranks_per_node))
    total_gb = ranks * a.state_gb
    per_node_gb = min(ranks, a.ranks_per_node) * a.state_gb
    m = a.mtbf_node_years * YEAR / nodes
    pfs = min(a.pfs_gbps, nodes * a.node_net_gbps)
    # Synchronous: write to the PFS, restart reads from it at the same bandwidth.
    c = total_gb / pfs
    tau = daly_interval(c, m)
    e_sync = efficiency(tau, c, c, m)
    load_sync = c / (tau + c)
    # Cached: node-local write; the flush (the same bytes to the PFS) overlaps the next interval.
    c_l = per_node_gb / a.local_gbps
    f = c
    tau_young = daly_interval(c_l, m)
    tau_l = max(tau_young, f - c_l)
    r_eff = a.recoverable * c_l + (1 - a.recoverable) * (c + f)
    e_cache = efficiency(tau_l, c_l, r_eff, m)
    load_cache = f / (tau_l + c_l)
    # Cached, copying only every kth checkpoint (CKPT_FLUSH=k), k such that the PFS receives no more than the
    # synchronous checkpoints did: a failure then also loses the cached checkpoints not copied, on average
    # (k - 1) / 2 intervals more.
    # (k intervals are then at least tau + C >= F long: the copies keep up.)
    tau_k = tau_young
    k = max(1, math.ceil((tau + c) / (tau_k + c_l)))
    lag_k = f + (k - 1) * (tau_k + c_l) / 2
    r_k = a.recoverable * c_l + (1 - a.recoverable) * (c + lag_k)
    e_k = efficiency(tau_k, c_l, r_k, m)
    load_k = f / (k * (tau_k + c_l))
    return {
        "ranks": ranks,
        "nodes": nodes,
        "total_tb": total_gb / 1000,
        "mtbf_h": m / HOUR,
        "c": c,
        "tau": tau,
        "e_sync": e_sync,
        "c_l": c_l,
        "tau_l": tau_l,
        "stretched": tau_l > tau_young,
        "e_cache": e_cache,
        "speedup": c / c_l,
        "load_sync": load_sync,
        "load_cache": load_cache,
        "k": k,
        "e_k": e_k,
        "load_k": load_k,
    }


def fmt_s(s):
    if s >= 2 * HOUR:
        return f"{s / HOUR:.1f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.1f} s"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--state-gb", type=float, default=0.5, help="state per rank, GB (default 0.5)")
    p.add_argument("--pfs-gbps", type=float, default=200.0, help="PFS aggregate write bandwidth, GB/s")
    p.add_argument("--node-net-gbps", type=float, default=10.0, help="one node's bandwidth to the PFS, GB/s")
    p.add_argument("--local-gbps", type=float, default=10.0, help="node-local write bandwidth per node, GB/s")
    p.add_argument("--ranks-per-node", type=int, default=32)
    p.add_argument("--mtbf-node-years", type=float, default=5.0, help="MTBF of one node, years")
    p.add_argument(
        "--recoverable", type=float, default=0.0, help="fraction of failures restartable from node-local copies"
    )
    p.add_argument("--ranks", default="1000,2000,5000,10000,20000,50000,100000")
    p.add_argument("--markdown", action="store_true", help="a Markdown table")
    a = p.parse_args()
    rows = [model(int(r), a) for r in a.ranks.split(",")]
    head = [
        "ranks",
        "nodes",
        "state",
        "job MTBF",
        "sync: C",
        "interval",
        "efficiency",
        "cached: C_L",
        "interval",
        "efficiency",
        "C / C_L",
        "gain",
        "PFS busy: sync",
        "cached",
        "CKPT_FLUSH=k: k",
        "efficiency",
        "PFS busy",
    ]
    cells = []
    for r in rows:
        cells.append(
            [
                f"{r['ranks']:,}",
                f"{r['nodes']:,}",
                f"{r['total_tb']:.1f} TB",
                fmt_s(r["mtbf_h"] * HOUR),
                fmt_s(r["c"]),
                fmt_s(r["tau"]),
                f"{100 * r['e_sync']:.1f}%",
                fmt_s(r["c_l"]),
                fmt_s(r["tau_l"]) + (" (flush)" if r["stretched"] else ""),
                f"{100 * r['e_cache']:.1f}%",
                f"{r['speedup']:.0f}x",
                f"{100 * (r['e_cache'] - r['e_sync']):+.1f} pt",
                f"{100 * r['load_sync']:.1f}%",
                f"{100 * r['load_cache']:.1f}%",
                f"{r['k']}",
                f"{100 * r['e_k']:.1f}%",
                f"{100 * r['load_k']:.1f}%",
            ]
        )
    print(
        f"# state {a.state_gb} GB/rank, {a.ranks_per_node} ranks/node, PFS {a.pfs_gbps} GB/s "
        f"(node link {a.node_net_gbps} GB/s), node-local {a.local_gbps} GB/s/node, "
        f"node MTBF {a.mtbf_node_years} years, failures recoverable from node-local copies: {a.recoverable:.0%}"
    )
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for c in cells:
            print("| " + " | ".join(c) + " |")
    else:
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
        print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
        for c in cells:
            print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


if __name__ == "__main__":
    main()

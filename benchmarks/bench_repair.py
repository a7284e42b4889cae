"""What lossless repair costs: yotonnet with retention and acknowledgement against itself
without (``ContextConfig.retention_bytes=0``), same run, same machine.

Run ``.venv/bin/python benchmarks/bench_repair.py`` (``make bench-repair``). Cases,
each a fresh set of processes on loopback (bench_core's and bench_mesh's):

* ``pubsub-100`` and ``pubsub-64k``: a ``PubChannel`` in one process to a
  ``SubChannel.subscribe`` counter in another (``make bench``'s pub/sub);
* ``chain``: 100-byte messages through a forwarding process (``make bench-mesh``'s
  chain), where the acknowledgements cross two hops back.

Each case runs ``--repeats`` times (3) with repair on and off interleaved, and the
best rate of each side is reported with ratio = on / off (the issue's bar: at least
0.95), beside the median rates' ratio and, for pub/sub, the CPU time per message of
the publishing and the subscribing process (least of the runs: these move less with
the machine's load than rates do). Options: ``--quick`` (shorter runs),
``--repeats``, ``--only`` (some cases, comma-separated), ``--pin`` (same, split or
none: bench_core's CPU placement), ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_core  # noqa: E402
import bench_mesh  # noqa: E402

CASES = ("pubsub-100", "pubsub-64k", "chain")


def one_run(case: str, repair: bool, plan: dict, base_opts: dict, pin: str) -> dict:
    opts = dict(base_opts)
    if not repair:
        opts["retention_bytes"] = 0
    if case == "chain":
        return bench_mesh.run_chain(bench_mesh.chain_opts(plan, opts))
    return bench_core.one_run(case, "yotonnet", plan, opts, pin)


def cpu_per_message(result: dict) -> tuple[float, float] | None:
    """(publisher, subscriber) CPU seconds per message of a pub/sub run, if measured."""
    try:
        return (result["peer"]["send_cpu"] / result["messages"],
                result["cpu"] / result["messages"])
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", default=",".join(CASES), help="cases, comma-separated")
    parser.add_argument("--pin", choices=("none", "same", "split"), default="none")
    args = parser.parse_args(argv)
    cases = [c for c in args.only.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; the cases are "
                     f"{', '.join(CASES)}")
    plan = dict(bench_core.QUICK if args.quick else bench_core.FULL)
    plan["chain"] = (bench_mesh.QUICK if args.quick else bench_mesh.FULL)["chain"]
    base_opts = {"yotonnet_path": bench_core.ROOT, "eager_writes": True}
    rates: dict[str, dict[str, list[float]]] = {c: {"on": [], "off": []} for c in cases}
    cpus: dict[str, dict[str, list[tuple[float, float]]]] = {
        c: {"on": [], "off": []} for c in cases}
    for rep in range(args.repeats):
        for case in cases:
            # Alternate which side goes first so that drift hits both alike.
            order = (True, False) if rep % 2 == 0 else (False, True)
            for repair in order:
                result = one_run(case, repair, plan, base_opts, args.pin)
                side = "on" if repair else "off"
                rates[case][side].append(result["rate"])
                cpu = cpu_per_message(result)
                if cpu is not None:
                    cpus[case][side].append(cpu)
                bench_core.log(f"  run {rep + 1}/{args.repeats} {case:<10} repair {side:<3} "
                               f"{result['rate']:>12,.0f} msg/s")
    summary = {}
    lines = [f"{'case':<12}{'repair on':>14}{'repair off':>14}{'ratio':>8}"
             f"{'':<20}{'median ratio':>13}   CPU us/msg publisher, subscriber: on | off"]
    for case in cases:
        on, off = max(rates[case]["on"]), max(rates[case]["off"])
        median = statistics.median(rates[case]["on"]) / statistics.median(rates[case]["off"])
        summary[case] = {"on": on, "off": off, "ratio": on / off, "median_ratio": median,
                         "runs": rates[case]}
        cpu_text = ""
        if cpus[case]["on"] and cpus[case]["off"]:
            least = {side: (min(c[0] for c in cpus[case][side]) * 1e6,
                            min(c[1] for c in cpus[case][side]) * 1e6) for side in ("on", "off")}
            summary[case]["cpu_us"] = least
            cpu_text = (f"   {least['on'][0]:.2f}, {least['on'][1]:.2f} | "
                        f"{least['off'][0]:.2f}, {least['off'][1]:.2f}")
        lines.append(f"{case:<12}{on:>14,.0f}{off:>14,.0f}{on / off:>8.3f}"
                     f"  {'PASS' if on / off >= 0.95 else 'MISS'} (bar 0.95)"
                     f"{median:>13.3f}{cpu_text}")
    out = sys.stderr if args.json else sys.stdout
    print("\n".join(lines), file=out)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

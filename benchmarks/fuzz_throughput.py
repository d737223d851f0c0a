"""Fuzz throughput: examples per second per framework and xbn's own share of a campaign's CPU.

    python benchmarks/fuzz_throughput.py -f numpy,torch,keras-torch --examples 200 --seed 0

One seeded ``xbn fuzz`` campaign (the same ``Campaign`` the command runs) over the given ids
(default: every installed registry id), stopped after ``--examples`` generated scenarios, with
no shrinking (a finding is kept as found: shrinking re-asks one worker and would skew the
rates). Printed per framework:

* examples per second of its worker's *CPU* (its CPU after start-up, from ``/proc``): what it
  reaches with a core to itself, the number to hold against the 5/s target on a shared machine;
* examples per second of *wall* time spent waiting for it (every worker runs each batch at the
  same time, so on 2 cores with ten workers this is a tenth of a core each);

and the overhead share: the campaign process's CPU (Hypothesis, parsing, verdicts, reference
reruns, root causes) over that plus every worker's CPU. Add ``--json FILE`` to keep the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from xbn.frameworks.devices import parse
    from xbn.frameworks.registry import FRAMEWORK_IDS, available
    from xbn.fuzz.campaign import Campaign

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-f", "--frameworks", default=None, help="comma-separated ids")
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ids = args.frameworks.split(",") if args.frameworks else \
        [f for f in FRAMEWORK_IDS if available(f)]
    for fid in ids:
        parse(fid)  # a bad id fails here, before any worker starts
    campaign = Campaign(ids, seed=args.seed, max_examples=args.examples, batch=args.batch,
                        shrink_seconds=0.0, log=lambda t: print(t, file=sys.stderr, flush=True))
    start = time.monotonic()
    campaign.run()
    wall = time.monotonic() - start
    rows = []
    for fid, s in campaign.sessions.items():
        rows.append({"framework": fid, "examples": s.examples,
                     "per_cpu_second": s.examples / s.cpu_seconds if s.cpu_seconds else None,
                     "per_wall_second": s.examples / s.seconds if s.seconds else None,
                     "cpu_seconds": s.cpu_seconds, "wall_seconds": s.seconds})
    workers = sum(r["cpu_seconds"] for r in rows)
    share = campaign.cpu_seconds / (campaign.cpu_seconds + workers) if workers else 0.0
    print(f"{campaign.examples} examples, {len(ids)} frameworks, seed {args.seed}, batch "
          f"{args.batch}: {wall:.0f} s wall ({campaign.startup:.0f} s start-up)")
    print(f"{'framework':<24}{'ex/s (CPU)':>12}{'ex/s (wall)':>13}{'CPU s':>9}")
    for r in sorted(rows, key=lambda r: -(r["per_cpu_second"] or 0)):
        cpu = f"{r['per_cpu_second']:.1f}" if r["per_cpu_second"] else "-"
        wall_rate = f"{r['per_wall_second']:.1f}" if r["per_wall_second"] else "-"
        print(f"{r['framework']:<24}{cpu:>12}{wall_rate:>13}{r['cpu_seconds']:>9.1f}")
    print(f"xbn's own CPU: {campaign.cpu_seconds:.1f} s of {campaign.cpu_seconds + workers:.1f} "
          f"s ({100 * share:.0f}% overhead); {len(campaign.findings)} finding(s) unshrunk")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "examples": campaign.examples, "seed": args.seed, "batch": args.batch,
            "frameworks": rows, "xbn_cpu_seconds": campaign.cpu_seconds,
            "overhead_share": share, "wall_seconds": wall}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

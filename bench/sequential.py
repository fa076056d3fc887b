"""Sequential erasures: does a method stay close to Retrain when requests keep coming?

    python bench/sequential.py                          # preset random, seeds 1,2, 10 steps of 3 subjects,
                                                        # checkpoints 1,5,10, LTU and the seven baselines:
                                                        # ~12 min here (one torch thread)
    python bench/sequential.py --methods ltu,ft --seeds 1 --json runs/sequential.json

Per seed the original is trained once (as `ltu_core.bench.run_bench` trains it). A seeded order of
the train split's data subjects gives 3 new subjects per step; every method starts from the
original and unlearns step after step on the model the previous step left, each step's D_f, D_r
and D̂_r excluding every row erased before. At steps 1, 5 and 10 the current model is scored
against the cumulative erasure (D_f = everything erased so far) and compared with the mean of
`gold_retrains` independent Retrains on the cumulative D_r; one more independent Retrain is the
floor (`ltu_core.bench.sequential`). The table: Avg. Gap per checkpoint, mean ± std over seeds,
and its ratio to the floor's gap at the same checkpoint.

Time: the Retrains dominate. With the random preset (mnist5k, 1,000 train samples, 40 epochs, one
Retrain ≈ 13 s on one thread here) each seed trains 1 original + 3 checkpoints × 4 Retrains, plus
10 steps of the eight methods and the evaluations: ≈ 6 min a seed when it has both cores' worth
of the machine to itself. `--gold-retrains 1` halves the Retrains.

What the numbers do NOT show:
- Real people. Subjects are hash-assigned groups of 4 samples; with 1,000 of 5,000 in train a
  subject has one or two train samples, so a step erases a handful of samples and ten steps ~40.
  The sequence tests accumulated drift over small requests, not large ones.
- The service. Each step's model is kept whatever it looks like: no verification, no audit, no
  fallback to Retrain, no coalescing of requests, as the service would do.
- The cost of retraining after every step. The retrain rows' seconds are one Retrain at that
  checkpoint; a method's are its cumulative time over all steps so far.
- Robustness to the attacks of the main benchmark (relearning, per-sample audit): not measured here.
- Tuning. Every method uses its defaults, chosen on single erasures of 100 random samples.
- Significance. Three seeds (the README's run): the ± is a spread, not a test; the floor ratio is
  a ratio of means.
- The cumulative split's D̂_r (and so RA on seen/unseen rows in `evaluation`) is a fresh draw:
  the methods read a different D̂_r at every step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ltu_core.bench import PRESETS, environment, load_dataset  # noqa: E402  (after the path set-up)
from ltu_core.bench.sequential import (  # noqa: E402
    count_sequential_units,
    run_sequential,
    sequential_table,
)

FORMAT = "ltu-sequential"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry: run every seed, print the table, write the JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="random")
    parser.add_argument("--seeds", type=_ints, default=(1, 2), help="comma-separated model seeds")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--subjects-per-step", type=int, default=3)
    parser.add_argument("--checkpoints", type=_ints, default=(1, 5, 10), help="steps scored against the gold")
    parser.add_argument("--methods", default=None, help="comma-separated labels of the preset's methods (default: all)")
    parser.add_argument("--gold-retrains", type=int, default=None, help="override the preset's gold Retrains")
    parser.add_argument("--json", type=Path, default=None, help="results file: config, environment, rows")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    cfg = PRESETS[args.preset]
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        known = {run.label: run for run in cfg.methods}
        unknown = [m for m in wanted if m not in known]
        if unknown:
            parser.error(f"unknown method label(s) {unknown}; the preset has {sorted(known)}")
        cfg = replace(cfg, methods=tuple(known[m] for m in wanted))
    cfg = replace(cfg, seeds=args.seeds)
    if args.gold_retrains is not None:
        cfg = replace(cfg, gold_retrains=args.gold_retrains)

    data = load_dataset(cfg)
    total = len(cfg.seeds) * count_sequential_units(cfg, steps=args.steps, checkpoints=args.checkpoints)
    env = environment(cfg)  # before the run: the commit and tree state that produce the rows
    done, start = 0, time.perf_counter()

    def progress(msg: str) -> None:
        nonlocal done
        done += 1
        if not args.quiet:
            print(f"[{done}/{total} {time.perf_counter() - start:7.1f}s] {msg}", flush=True)

    rows = []
    for seed in cfg.seeds:
        rows.extend(
            run_sequential(
                cfg,
                steps=args.steps,
                subjects_per_step=args.subjects_per_step,
                checkpoints=args.checkpoints,
                seed=seed,
                dataset=data,
                progress=progress,
            )
        )
    document = {
        "format": FORMAT,
        "preset": args.preset,
        "config": {
            **cfg.describe(),
            "steps": args.steps,
            "subjects_per_step": args.subjects_per_step,
            "checkpoints": sorted(set(args.checkpoints)),
        },
        "environment": env,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "rows": [r.as_dict() for r in rows],
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    print(sequential_table(rows))
    if args.json is not None:
        print(f"wrote {args.json}")
    return document


if __name__ == "__main__":
    main()

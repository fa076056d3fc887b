"""Choose method hyper-parameters on a *validation* forget split, never on reported numbers.

The validation split uses seed 0 of the `full` preset's regime: its own original model, its own
forget draws (random scenario: draws 100, 101, 102; class scenario: class 0) and their own
Retrain models. `ltu bench --preset full` reports seeds 1-3, whose originals, forget sets and
Retrains this script never sees. Trained models are cached under runs/tune-cache/ so a grid can
be rerun cheaply.

    python bench/tune.py --grid ltu --json bench/results/tuning-ltu.json
    python bench/tune.py --grid baselines --json bench/results/tuning-baselines.json

Prints one row per (method, parameters), averaged over the validation forget sets, sorted by
Avg. Gap; the best row per method is what the method's defaults are set to.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ltu_core.bench import PRESETS, forget_spec, load_dataset
from ltu_core.data import ForgetSpec, make_split
from ltu_core.methods import UnlearningTask, create_method
from ltu_core.metrics import avg_gap, evaluate
from ltu_core.models import build_model, load_model, save_model
from ltu_core.train import train_model

VALIDATION_SEED = 0
RANDOM_DRAWS = (100, 101, 102)
CACHE = Path("runs/tune-cache")


def _grid(**axes: list[Any]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


GRIDS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "ltu": [
        ("ltu", p)
        for p in _grid(
            harmonization=["global", "per_layer"],
            stop_margin=[0.0, -0.02, -0.04, -0.06],
            forget_loss=["match", "nonmember"],
        )
    ],
    "class": [
        *[
            ("ltu", p)
            for p in _grid(stop_rule=["none"], forget_loss=["nonmember"], max_passes=[1.0, 2.0, 4.0], lr=[0.01, 0.02])
        ],
        *[("ft", p) for p in _grid(lr=[0.02, 0.1], epochs=[10.0])],
        *[("ga", p) for p in _grid(lr=[0.05, 0.1, 0.2], epochs=[1.0, 2.0, 5.0])],
        *[("rl", p) for p in _grid(lr=[2e-4, 1e-3, 5e-3], epochs=[2.0, 5.0])],
        *[("l1_sparse", p) for p in _grid(alpha=[0.01, 0.02, 0.03])],
        *[("salun", p) for p in _grid(lr=[2e-4, 1e-3, 5e-3], epochs=[2.0, 5.0])],
        *[("scrub", p) for p in _grid(lr=[0.005, 0.01], max_epochs=[1, 2])],
        *[("bs", p) for p in _grid(lr=[1e-4, 2e-4, 5e-4], epochs=[3.0])],
    ],
    "baselines": [
        *[("ft", p) for p in _grid(lr=[0.02, 0.1], epochs=[5.0, 10.0])],
        *[("ga", p) for p in _grid(lr=[0.1, 0.15, 0.2, 0.25], epochs=[1.0, 2.0])],
        *[("rl", p) for p in _grid(lr=[1e-4, 2e-4, 4e-4], epochs=[1.0, 2.0])],
        *[("l1_sparse", p) for p in _grid(lr=[0.02], alpha=[0.003, 0.01, 0.03])],
        *[("salun", p) for p in _grid(lr=[2e-4, 4e-4, 8e-4], epochs=[2.0])],
        *[("scrub", p) for p in _grid(lr=[0.005, 0.01], max_epochs=[1, 2])],
        *[("bs", p) for p in _grid(lr=[1e-4, 1.5e-4, 2e-4], epochs=[3.0])],
    ],
}


def _cached(path: Path, build):
    if path.exists():
        return load_model(path)[0]
    model = build()
    save_model(model, CFG.arch, path)
    return model


CFG = PRESETS["full"]


def validation_splits(data, scenarios: list[str]):
    """(name, split) pairs of the validation forget sets."""
    out = []
    for scenario in scenarios:
        if scenario == "random":
            for draw in RANDOM_DRAWS:
                spec = ForgetSpec(kind="random", count=CFG.forget_count, seed=draw)
                out.append(
                    (
                        f"random/{draw}",
                        make_split(data, spec, retain_fraction=CFG.retain_fraction, seed=VALIDATION_SEED),
                    )
                )
        else:
            spec = forget_spec(scenario, VALIDATION_SEED, CFG, data.num_classes)
            out.append((scenario, make_split(data, spec, retain_fraction=CFG.retain_fraction, seed=VALIDATION_SEED)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", choices=sorted(GRIDS))
    parser.add_argument(
        "--try",
        dest="tries",
        action="append",
        default=[],
        metavar="JSON",
        help='extra configuration, e.g. \'{"method": "ltu", "lr": 0.02}\' (repeatable)',
    )
    parser.add_argument("--scenarios", default="random", help="comma-separated: random,class")
    parser.add_argument("--only", help="restrict to these method names (comma-separated)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    CACHE.mkdir(parents=True, exist_ok=True)
    data = load_dataset(CFG)
    tag = f"e{CFG.recipe.epochs}"
    original = _cached(
        CACHE / f"original-s{VALIDATION_SEED}-{tag}.safetensors",
        lambda: train_model(
            build_model(CFG.arch, seed=VALIDATION_SEED),
            data.view(data.split_indices("train")),
            CFG.recipe,
            seed=VALIDATION_SEED,
        ),
    )
    splits = validation_splits(data, args.scenarios.split(","))
    golds = {}
    for name, split in splits:
        task = UnlearningTask.from_split(original, CFG.arch, split, CFG.recipe, seed=VALIDATION_SEED)
        retrain = _cached(
            CACHE / f"retrain-{name.replace('/', '-')}-{tag}.safetensors",
            lambda: create_method("retrain").run(task).model,
        )
        golds[name] = evaluate(retrain, split, seed=VALIDATION_SEED)
        print(f"{name}: retrain {golds[name].as_dict()}", file=sys.stderr)

    grid = list(GRIDS[args.grid]) if args.grid else []
    for text in args.tries:
        params = json.loads(text)
        grid.append((params.pop("method"), params))
    if args.only:
        keep = set(args.only.split(","))
        grid = [g for g in grid if g[0] in keep]
    results = []
    for name, split in splits:
        base = evaluate(original, split, seed=VALIDATION_SEED)
        results.append(
            {
                "method": "original",
                "params": {},
                "split": name,
                "avg_gap": avg_gap(base, golds[name]),
                "seconds": 0.0,
                **base.as_dict(),
            }
        )
    for method, params in grid:
        for name, split in splits:
            task = UnlearningTask.from_split(original, CFG.arch, split, CFG.recipe, seed=VALIDATION_SEED)
            result = create_method(method, **params).run(task)
            ev = evaluate(result.model, split, seed=VALIDATION_SEED)
            results.append(
                {
                    "method": method,
                    "params": params,
                    "split": name,
                    "avg_gap": avg_gap(ev, golds[name]),
                    "seconds": result.seconds,
                    **ev.as_dict(),
                }
            )
        print(f"done {method} {params}", file=sys.stderr)

    summary: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        summary.setdefault((r["method"], json.dumps(r["params"], sort_keys=True)), []).append(r)
    table = []
    for (method, params), group in summary.items():
        table.append(
            {
                "method": method,
                "params": json.loads(params),
                **{k: statistics.fmean(g[k] for g in group) for k in ("avg_gap", "ua", "ra", "ta", "mia", "seconds")},
            }
        )
    table.sort(key=lambda r: (r["method"], r["avg_gap"]))
    print("| method | params | Avg. Gap | UA | RA | TA | MIA | s |\n|---|---|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['method']} | {json.dumps(r['params'])} | {r['avg_gap']:.2f} | {r['ua']:.1f} | {r['ra']:.1f} "
            f"| {r['ta']:.1f} | {r['mia']:.1f} | {r['seconds']:.1f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "validation": {"seed": VALIDATION_SEED, "random_draws": RANDOM_DRAWS, "scenarios": args.scenarios},
                    "regime": CFG.describe(),
                    "retrain": {k: v.as_dict() for k, v in golds.items()},
                    "summary": table,
                    "runs": results,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

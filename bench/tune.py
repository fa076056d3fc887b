"""Choose method settings on validation data the reported tables never touch, same budget for all.

Validation = the `random` preset's regime with its own seed 0: its own original model, its own
forget sets (random draws 100 and 101; class 0, which the class preset never reports) and their
own gold standard (the mean of 3 independent Retrains each), scored on a 1,000-sample slice of
the never-trained pool (`UnlearningSplit.validation_view`), never on the test set the tables
report. Every method gets the same number of settings per scenario (GRIDS; LTU's design choices
count against its budget), and every fine-tuning baseline may use the same "looks unseen" stop
rule as LTU (`stop_rule=auc`). Models are cached under runs/tune-cache/ (deterministic, so a cache
hit is the model a rerun would train).

    python bench/tune.py --scenario random --json bench/results/tuning-random.json
    python bench/tune.py --scenario class --json bench/results/tuning-class.json

Prints one row per (method, settings), mean over the validation forget sets, sorted by Avg. Gap;
the best row per method is what the presets use.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ltu_core.bench import PRESETS, environment, load_dataset, retrain_seed
from ltu_core.bench.protocol import deterministic, mean_evaluation
from ltu_core.data import ForgetSpec, make_split
from ltu_core.methods import UnlearningTask, create_method
from ltu_core.metrics import avg_gap, evaluate
from ltu_core.models import build_model, load_model, save_model
from ltu_core.train import train_model

VALIDATION_SEED = 0
RANDOM_DRAWS = (100, 101)
VALIDATION_CLASS = 0
VALIDATION_SIZE = 1000
CACHE = Path("runs/tune-cache")
CFG = PRESETS["random"]


def _grid(**axes: list[Any]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


AUC = {"stop_rule": ["auc"]}
FIXED = {"stop_rule": ["none"]}
LEGACY_CLASS = {"objective": "sample", "stop_rule": "none", "forget_loss": "nonmember", "lr": 0.02, "max_passes": 4.0}
BEST_LTU1 = {"remember": "distill", "stop_rule": "attacker", "lam": 1.0}  # round one's best
BEST_LTU = {k: [v] for k, v in BEST_LTU1.items()}
# Twelve settings per method for random forgetting (eight, then four more around each method's
# best of those), ten for a whole class (six, then four more). Every value a setting was run with that a later default
# changed is spelled out, so the grids reproduce their results files at any later commit.
GRIDS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "random": {
        "ltu": [
            *_grid(remember=["ce", "distill"], stop_rule=["attacker", "auc"], lam=[1.0, 2.0], distill_weight=[1.0]),
            # second round, around the first round's best (distillation, attacker rule, λ = 1)
            *_grid(distill_weight=[2.0, 4.0], **BEST_LTU),
            {"lr": 0.005, "distill_weight": 1.0, **BEST_LTU1},
            {"stop_margin": -0.02, "distill_weight": 1.0, **BEST_LTU1},
        ],
        "ft": [
            *_grid(lr=[0.02, 0.05, 0.1], epochs=[5.0, 10.0], **FIXED),
            *_grid(lr=[0.05, 0.1], epochs=[10.0], **AUC),
            *_grid(lr=[0.05, 0.1, 0.2], epochs=[20.0], **FIXED),
            {"lr": 0.2, "epochs": 10.0, "stop_rule": "none"},
        ],
        "ga": [
            *_grid(lr=[0.05, 0.1, 0.15], epochs=[1.0, 2.0], **FIXED),
            *_grid(lr=[0.1, 0.15], epochs=[2.0], **AUC),
            *_grid(lr=[0.2, 0.25], epochs=[2.0], **AUC),
            *_grid(lr=[0.1, 0.15], epochs=[3.0], **AUC),
        ],
        "rl": [
            *_grid(lr=[1e-4, 2e-4, 4e-4], epochs=[1.0, 2.0], **FIXED),
            *_grid(lr=[2e-4, 4e-4], epochs=[2.0], **AUC),
            *_grid(lr=[3e-4], epochs=[2.0, 3.0], **FIXED),
            *_grid(lr=[2e-4, 3e-4], epochs=[3.0], **AUC),
        ],
        "l1_sparse": [
            *_grid(alpha=[0.003, 0.01, 0.03], lr=[0.01, 0.02], **FIXED),
            *_grid(alpha=[0.01, 0.03], **AUC),
            *_grid(alpha=[0.02, 0.05], **AUC),
            *_grid(alpha=[0.03, 0.05], lr=[0.01], **AUC),
        ],
        "salun": [
            *_grid(lr=[2e-4, 4e-4, 8e-4], epochs=[1.0, 2.0], **FIXED),
            *_grid(lr=[4e-4, 8e-4], epochs=[2.0], **AUC),
            *_grid(lr=[3e-4], epochs=[2.0, 3.0], **FIXED),
            *_grid(lr=[2e-4, 3e-4], epochs=[3.0], **AUC),
        ],
        "scrub": [
            *_grid(lr=[0.002, 0.005, 0.01], max_epochs=[1, 2], epochs=[5], **FIXED),
            *_grid(lr=[0.005, 0.01], max_epochs=[1], epochs=[5], **AUC),
            *_grid(lr=[0.02], max_epochs=[1, 2], epochs=[5], **FIXED),
            *_grid(lr=[0.005, 0.01], epochs=[3], max_epochs=[2], **FIXED),
        ],
        "bs": [
            *_grid(lr=[5e-5, 1e-4, 2e-4], epochs=[2.0, 3.0], **FIXED),
            *_grid(lr=[1e-4, 2e-4], epochs=[3.0], **AUC),
            *_grid(lr=[3e-4], epochs=[1.0, 2.0], **FIXED),
            *_grid(lr=[3e-4, 4e-4], epochs=[2.0], **AUC),
        ],
    },
    "class": {
        # Round one ran when distillation's default weight was 1 and remembering defaulted to
        # cross-entropy: both are spelled out so the grid means the same at any later default.
        "ltu": [
            *_grid(objective=["class"], remember=["distill"], distill_weight=[1.0], lr=[0.01, 0.02, 0.05]),
            {"objective": "class", "remember": "ce", "lr": 0.02},
            {
                "objective": "class",
                "remember": "distill",
                "distill_weight": 1.0,
                "lr": 0.02,
                "class_stop_accuracy": 2.0,
            },
            # the previous release's class setting, for the record
            {**LEGACY_CLASS, "remember": "ce"},
            # round two: four more, around round one's best and the previous release's setting
            # with distillation at weight 2
            {**LEGACY_CLASS, "remember": "distill", "distill_weight": 2.0},
            {**LEGACY_CLASS, "remember": "distill", "distill_weight": 2.0, "max_passes": 2.0},
            {**LEGACY_CLASS, "remember": "distill", "distill_weight": 1.0},
            {"objective": "class", "remember": "ce", "lr": 0.03},
        ],
        "ft": [
            *_grid(lr=[0.02, 0.05, 0.1], epochs=[5.0, 10.0], **FIXED),
            *_grid(lr=[0.05, 0.1, 0.2], epochs=[20.0], **FIXED),
            {"lr": 0.2, "epochs": 10.0, "stop_rule": "none"},
        ],
        "ga": [
            *_grid(lr=[0.05, 0.1, 0.2], epochs=[1.0, 2.0], **FIXED),
            *_grid(lr=[0.15, 0.25], epochs=[1.0], **FIXED),
            {"lr": 0.2, "epochs": 1.5, "stop_rule": "none"},
            {"lr": 0.1, "epochs": 3.0, "stop_rule": "none"},
        ],
        "rl": [
            *_grid(lr=[2e-4, 1e-3, 5e-3], epochs=[2.0, 5.0], **FIXED),
            *_grid(lr=[2e-4], epochs=[8.0, 10.0], **FIXED),
            *_grid(lr=[1e-4], epochs=[5.0, 10.0], **FIXED),
        ],
        "l1_sparse": [
            *_grid(alpha=[0.01, 0.02, 0.03], lr=[0.01, 0.02], **FIXED),
            *_grid(alpha=[0.04, 0.05], lr=[0.02], **FIXED),
            *_grid(alpha=[0.02, 0.03], lr=[0.03], **FIXED),
        ],
        "salun": [
            *_grid(lr=[2e-4, 1e-3, 5e-3], epochs=[2.0, 5.0], **FIXED),
            *_grid(lr=[2e-4], epochs=[8.0, 10.0], **FIXED),
            *_grid(lr=[1e-4], epochs=[5.0, 10.0], **FIXED),
        ],
        "scrub": [
            *_grid(lr=[0.005, 0.01, 0.02], max_epochs=[1, 2], epochs=[5], **FIXED),
            {"lr": 0.005, "max_epochs": 3, "epochs": 5, "stop_rule": "none"},
            {"lr": 0.003, "max_epochs": 2, "epochs": 5, "stop_rule": "none"},
            {"lr": 0.005, "max_epochs": 2, "epochs": 8, "stop_rule": "none"},
            {"lr": 0.0075, "max_epochs": 2, "epochs": 5, "stop_rule": "none"},
        ],
        "bs": [
            *_grid(lr=[1e-4, 2e-4, 5e-4], epochs=[2.0, 3.0], **FIXED),
            *_grid(lr=[2e-4, 3e-4], epochs=[1.0], **FIXED),
            *_grid(lr=[3e-4, 1.5e-4], epochs=[2.0], **FIXED),
        ],
    },
}


def _cached(path: Path, build):
    if path.exists():
        return load_model(path)[0]
    model = build()
    save_model(model, CFG.arch, path)
    return model


def validation_specs(scenario: str) -> dict[str, ForgetSpec]:
    """The validation forget sets of a scenario, by name."""
    if scenario == "random":
        return {f"random-{d}": ForgetSpec(kind="random", count=CFG.forget_count, seed=d) for d in RANDOM_DRAWS}
    return {f"class-{VALIDATION_CLASS}": ForgetSpec(kind="class", label=VALIDATION_CLASS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(GRIDS), default="random")
    parser.add_argument("--only", help="restrict to these method names (comma-separated)")
    parser.add_argument(
        "--try",
        dest="tries",
        action="append",
        default=[],
        metavar="JSON",
        help='an extra setting outside the budget, e.g. \'{"method": "ltu", "lr": 0.02}\' (repeatable)',
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    CACHE.mkdir(parents=True, exist_ok=True)
    data = load_dataset(CFG)
    tag = f"e{CFG.recipe.epochs}-t{CFG.threads}"
    grid = [(m, p) for m, settings in GRIDS[args.scenario].items() for p in settings]
    for text in args.tries:
        params = json.loads(text)
        grid.append((params.pop("method"), params))
    if args.only:
        keep = set(args.only.split(","))
        grid = [g for g in grid if g[0] in keep]
    env = environment(CFG)  # before the run: the commit and tree state that produce the rows
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    with deterministic(CFG.threads):
        original = _cached(
            CACHE / f"original-s{VALIDATION_SEED}-{tag}.safetensors",
            lambda: train_model(
                build_model(CFG.arch, seed=VALIDATION_SEED),
                data.view(data.split_indices("train")),
                CFG.recipe,
                seed=VALIDATION_SEED,
            ),
        )
        cases = []
        for name, spec in validation_specs(args.scenario).items():
            split = make_split(data, spec, retain_fraction=CFG.retain_fraction, seed=VALIDATION_SEED)
            view = split.validation_view(VALIDATION_SIZE, seed=VALIDATION_SEED)
            task = UnlearningTask.from_split(original, CFG.arch, split, CFG.recipe, seed=VALIDATION_SEED)
            retrains = [
                _cached(
                    CACHE / f"retrain-{name}-{j}-{tag}.safetensors",
                    lambda j=j: (
                        create_method("retrain").run(replace(task, seed=retrain_seed(f"validation:{name}", j))).model
                    ),
                )
                for j in range(CFG.gold_retrains)
            ]
            gold = mean_evaluation([evaluate(m, view, seed=VALIDATION_SEED) for m in retrains])
            print(f"{name}: gold {gold.as_dict()}", file=sys.stderr)
            cases.append((name, view, task, gold))
        for method, params in [("original", {}), *grid]:
            for name, view, task, gold in cases:
                if method == "original":
                    model, seconds, details = original, 0.0, {}
                else:
                    result = create_method(method, **params).run(task)
                    model, seconds, details = result.model, result.seconds, result.details
                ev = evaluate(model, view, seed=VALIDATION_SEED)
                results.append(
                    {
                        "method": method,
                        "params": params,
                        "split": name,
                        "avg_gap": avg_gap(ev, gold),
                        "seconds": seconds,
                        "stop": details.get("stop_reason", details.get("stop_checks")),
                        **ev.as_dict(),
                    }
                )
            print(f"done {method} {params}", file=sys.stderr, flush=True)

    summary: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        summary.setdefault((r["method"], json.dumps(r["params"], sort_keys=True)), []).append(r)
    table = [
        {
            "method": method,
            "params": json.loads(params),
            **{k: statistics.fmean(g[k] for g in group) for k in ("avg_gap", "ua", "ra", "ta", "mia", "seconds")},
        }
        for (method, params), group in summary.items()
    ]
    table.sort(key=lambda r: (r["method"], r["avg_gap"]))
    print("| method | params | Avg. Gap | UA | RA | TA | MIA | s |\n|---|---|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['method']} | {json.dumps(r['params'])} | {r['avg_gap']:.2f} | {r['ua']:.1f} | {r['ra']:.1f} "
            f"| {r['ta']:.1f} | {r['mia']:.1f} | {r['seconds']:.1f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "validation": {
                "seed": VALIDATION_SEED,
                "forget_sets": list(validation_specs(args.scenario)),
                "reported_on": f"{VALIDATION_SIZE} never-trained samples (validation_view), not the test set",
                "gold_retrains": CFG.gold_retrains,
            },
            "budget": {m: len(p) for m, p in GRIDS[args.scenario].items()},
            "regime": CFG.describe(),
            "environment": env,
            "wall_seconds": round(time.perf_counter() - start, 1),
            "summary": table,
            "runs": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The library's commands: `ltu train`, `ltu unlearn`, `ltu bench`."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from ltu_cli.common import CLIError, parse_params
from ltu_core.errors import DatasetFormatError


def register(sub: argparse._SubParsersAction) -> None:
    """Add train, unlearn and bench."""
    p = sub.add_parser("train", help="train a model on a dataset and save it as safetensors")
    _dataset_arg(p)
    p.add_argument("--arch", default="resnet18", help="timm model name, or vit_micro (default: resnet18)")
    p.add_argument("--width", type=float, default=0.25, help="channel width multiplier for resnet* (default: 0.25)")
    p.add_argument("--no-small-stem", action="store_true", help="keep timm's 7x7/2 stem and max-pool")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.safetensors)")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("unlearn", help="remove a forget set's influence from a checkpoint")
    p.add_argument("--checkpoint", required=True, type=Path, help="safetensors checkpoint written by `ltu train`")
    _dataset_arg(p)
    p.add_argument(
        "--forget",
        required=True,
        help="subjects:ID[,ID..] | samples:ID[,ID..] | random:COUNT | random:FRACTION | class:LABEL",
    )
    p.add_argument("--method", default="ltu", help="registered method name (default: ltu)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter; VALUE is read as JSON when it parses (repeatable)",
    )
    p.add_argument("--retain-fraction", type=float, default=0.1, help="ρ = |D̂_r| / |D_r| (default: 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="unlearned checkpoint to write")
    p.add_argument("--record", type=Path, help="JSON run record (default: OUT with .json)")
    p.set_defaults(handler=cmd_unlearn)

    p = sub.add_parser("bench", help="original → independent Retrains → every method on the same forget sets")
    p.add_argument("--preset", default="smoke", help="smoke (under a minute), random or class (default: smoke)")
    p.add_argument("--report", type=Path, metavar="JSON", help="print the tables of a results file; run nothing")
    p.add_argument(
        "--dataset",
        help="built-in name, an ltu-dataset folder or its .tar (default: the preset's); "
        "the model's classes, channels and image size then come from the dataset",
    )
    p.add_argument(
        "--train-size",
        metavar="N",
        help="train on N train samples; the surplus becomes holdout (never trained on)",
    )
    p.add_argument("--arch", help="timm model name, or vit_micro (default: the preset's)")
    p.add_argument("--width", metavar="W", help="channel width multiplier for resnet* (default: the preset's)")
    p.add_argument(
        "--small-stem",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="3x3/1 stem without max-pool, or timm's 7x7/2 stem (default: the preset's)",
    )
    p.add_argument("--epochs", metavar="E", help="training epochs of the original and every Retrain")
    p.add_argument("--seeds", help="comma-separated seeds, overriding the preset's")
    p.add_argument("--scenarios", help="comma-separated: random, class (default: the preset's)")
    p.add_argument("--classes", help="comma-separated labels the class scenario forgets, one case each")
    p.add_argument("--forget-count", metavar="N", help="random scenario: samples forgotten per seed")
    p.add_argument("--gold-retrains", metavar="K", help="independent Retrains averaged into the gold standard")
    p.add_argument("--threads", metavar="T", help="torch threads; results are deterministic for a fixed count")
    p.add_argument("--methods", help="comma-separated method labels to run (default: all of the preset)")
    p.add_argument("--no-ablations", action="store_true", help="skip the LTU ablation rows")
    p.add_argument("--json", type=Path, help="write the config, environment and every row as JSON here")
    p.set_defaults(handler=cmd_bench)


def _dataset_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        help="built-in name (digits, mnist5k, synthetic), an ltu-dataset folder, or its .tar",
    )


def open_dataset(spec: str, workdir: Path):
    """A built-in dataset by name, or a dataset in the documented format (folder or tar)."""
    from ltu_core.data import BUILTIN_DATASETS, read_dataset, unpack_dataset

    if spec in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[spec]()
    path = Path(spec)
    if path.is_dir():
        return read_dataset(path)
    if path.is_file():
        return read_dataset(unpack_dataset(path, workdir / "dataset"))
    raise DatasetFormatError(f"{spec}: no such dataset (not a built-in name, folder or file)")


def cmd_train(args: argparse.Namespace) -> int:
    """Train and save a checkpoint (the recipe is stored in its metadata)."""
    from dataclasses import asdict

    from tqdm import tqdm

    from ltu_core.models import ArchConfig, build_model, save_model
    from ltu_core.train import TrainRecipe, train_model

    with tempfile.TemporaryDirectory() as tmp:
        data = open_dataset(args.dataset, Path(tmp))
        c, h, _ = data.image_shape
        arch = ArchConfig(
            args.arch,
            num_classes=data.num_classes,
            in_chans=c,
            img_size=h,
            width=args.width,
            small_stem=not args.no_small_stem,
        )
        recipe = TrainRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
        model = build_model(arch, seed=args.seed)
        with tqdm(desc="train", unit="step", file=sys.stderr) as bar:

            def progress(_phase: str, step: int, total: int) -> None:
                bar.total = total
                bar.update(step - bar.n)

            train_model(model, data.view(data.split_indices("train")), recipe, seed=args.seed, progress=progress)
        save_model(model, arch, args.out, metadata={"recipe": asdict(recipe), "dataset": data.name, "seed": args.seed})
    print(f"wrote {args.out}")
    return 0


def cmd_unlearn(args: argparse.Namespace) -> int:
    """Unlearn a forget set; write the new checkpoint and a JSON record with metrics before/after."""
    from dataclasses import asdict

    from tqdm import tqdm

    from ltu_core.audit import verify_model
    from ltu_core.data import ForgetSpec, make_split
    from ltu_core.methods import RunHooks, UnlearningTask, create_method
    from ltu_core.metrics import avg_gap, evaluate
    from ltu_core.models import load_model, read_checkpoint, save_model
    from ltu_core.train import TrainRecipe

    method = create_method(args.method, **parse_params(args.param))  # fail fast on a bad method
    _, arch, extra = read_checkpoint(args.checkpoint)
    model, _ = load_model(args.checkpoint)
    recipe = TrainRecipe(**extra["recipe"]) if "recipe" in extra else TrainRecipe()
    with tempfile.TemporaryDirectory() as tmp:
        data = open_dataset(args.dataset, Path(tmp))
        if (data.image_shape[0], data.image_shape[1], data.num_classes) != (
            arch.in_chans,
            arch.img_size,
            arch.num_classes,
        ):
            raise DatasetFormatError(
                f"dataset {data.name!r} ({data.num_classes} classes, images {list(data.image_shape)}) does not fit "
                f"the checkpoint ({arch.num_classes} classes, {arch.in_chans}x{arch.img_size}px)"
            )
        split = make_split(
            data, ForgetSpec.parse(args.forget, seed=args.seed), retain_fraction=args.retain_fraction, seed=args.seed
        )
        before = evaluate(model, split, seed=args.seed)
        task = UnlearningTask.from_split(model, arch, split, recipe, seed=args.seed)
        with tqdm(desc=args.method, unit="step", file=sys.stderr) as bar:

            def progress(phase: str, step: int, total: int) -> None:
                bar.set_description(f"{args.method}: {phase}")
                bar.total = total
                bar.update(step - bar.n)

            result = method.run(task, RunHooks(progress=progress))
        after = evaluate(result.model, split, seed=args.seed)
        verdict = verify_model(result.model, split, original_test_accuracy=before.ta, audit_seed=args.seed)
        save_model(result.model, arch, args.out, metadata={"recipe": asdict(recipe), "parent": str(args.checkpoint)})
    record = {
        "checkpoint": str(args.checkpoint),
        "out": str(args.out),
        "dataset": data.name,
        "split": split.info,
        "run": result.record(),
        "metrics_before": before.as_dict(),
        "metrics_after": after.as_dict(),
        "avg_gap_to_original": round(avg_gap(after, before), 4),
        "verification": verdict.as_dict(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    record_path = args.record or args.out.with_suffix(".json")
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"forgot {split.info['sizes']['forget']} samples with {args.method} in {result.seconds:.1f}s")
    for key in ("ua", "ra", "ta", "mia"):
        print(f"  {key.upper():4s} {getattr(before, key):6.2f} -> {getattr(after, key):6.2f}")
    print(f"  verification: {'passed' if verdict.passed else 'FAILED'}")
    print(f"wrote {args.out} and {record_path}")
    return 0


def _number(option: str, text: str, kind: type = int, *, minimum: float = 1) -> int | float:
    """A numeric option at least `minimum` (positive for a float), or a one-line CLIError."""
    noun = "an integer" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        raise CLIError(f"{option} {text!r}: expected {noun}") from None
    ok = math.isfinite(value) and (value >= minimum if kind is int else value > 0)
    if not ok:
        raise CLIError(f"{option} must be {f'at least {minimum}' if kind is int else 'positive'}, got {text}")
    return value


def _int_list(option: str, text: str, *, minimum: int = 0) -> tuple[int, ...]:
    """Comma-separated distinct integers, each at least `minimum`."""
    items = [t.strip() for t in text.split(",")]
    try:
        values = tuple(int(t) for t in items)
    except ValueError:
        raise CLIError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,2,3") from None
    if any(v < minimum for v in values):
        raise CLIError(f"{option} {text!r}: every value must be at least {minimum}")
    if len(set(values)) != len(values):
        raise CLIError(f"{option} {text!r}: a value is repeated")
    return values


def _bench_config(args: argparse.Namespace):
    """The preset with every option that needs no data applied; a bad option is a CLIError."""
    from dataclasses import replace

    from ltu_core.bench import PRESETS
    from ltu_core.methods import list_methods

    if args.preset not in PRESETS:
        raise CLIError(f"unknown preset {args.preset!r}; available: {', '.join(PRESETS)}")
    cfg = PRESETS[args.preset]
    changes: dict = {}
    arch: dict = {}
    if args.arch is not None:
        if not args.arch.strip():
            raise CLIError("--arch must name a model")
        arch["name"] = args.arch.strip()
    if args.width is not None:
        arch["width"] = _number("--width", args.width, float)
    if args.small_stem is not None:
        arch["small_stem"] = args.small_stem
    if arch:
        changes["arch"] = replace(cfg.arch, **arch)
    if args.epochs is not None:
        changes["recipe"] = replace(cfg.recipe, epochs=_number("--epochs", args.epochs))
    if args.seeds is not None:
        changes["seeds"] = _int_list("--seeds", args.seeds)
    if args.forget_count is not None:
        changes["forget_count"] = _number("--forget-count", args.forget_count)
    if args.gold_retrains is not None:
        changes["gold_retrains"] = _number("--gold-retrains", args.gold_retrains)
    if args.threads is not None:
        changes["threads"] = _number("--threads", args.threads)
    if args.scenarios is not None:
        scenarios = tuple(dict.fromkeys(t.strip() for t in args.scenarios.split(",")))
        unknown = [t for t in scenarios if t not in ("random", "class")]
        if unknown:
            raise CLIError(f"--scenarios: unknown scenario(s) {unknown}; use random and/or class")
        changes["scenarios"] = scenarios
    if args.classes is not None:
        if "class" not in changes.get("scenarios", cfg.scenarios):
            raise CLIError("--classes needs the class scenario (add --scenarios class, or random,class)")
        changes["classes"] = _int_list("--classes", args.classes)
    if args.methods is not None:
        wanted = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
        known = {r.label: r for r in (*cfg.methods, *cfg.ablations)}
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise CLIError(f"unknown method label(s) {unknown}; preset {args.preset!r} has {sorted(known)}")
        if not wanted:
            raise CLIError("--methods names no method label")
        changes["methods"] = tuple(known[m] for m in wanted if known[m] in cfg.methods)
        changes["ablations"] = tuple(known[m] for m in wanted if known[m] in cfg.ablations)
    if args.no_ablations:
        changes["ablations"] = ()
    try:
        cfg = replace(cfg, **changes)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if not (cfg.methods or cfg.ablations):
        raise CLIError("nothing to compare: --methods chose only ablations and --no-ablations dropped them")
    missing = {r.method for r in (*cfg.methods, *cfg.ablations)} - set(list_methods())
    if missing:
        raise CLIError(f"methods not registered: {sorted(missing)}")
    return cfg


def _bench_data(cfg, args: argparse.Namespace, workdir: Path):
    """Open the dataset (the preset's or --dataset), cut it to --train-size, fit the model to it."""
    import inspect
    from dataclasses import replace

    from ltu_core.data import BUILTIN_DATASETS

    train_size = None if args.train_size is None else _number("--train-size", args.train_size, minimum=2)
    spec = args.dataset if args.dataset is not None else cfg.dataset
    cut = train_size
    if spec in BUILTIN_DATASETS:
        loader = BUILTIN_DATASETS[spec]
        loader_args = dict(cfg.dataset_args) if spec == cfg.dataset else {}
        if train_size is not None and "train_size" in inspect.signature(loader).parameters:
            loader_args["train_size"], cut = train_size, None
        try:
            data = loader(**loader_args)
        except ValueError as exc:
            raise CLIError(f"dataset {spec!r}: {exc}") from None
    else:
        data, loader_args = open_dataset(spec, workdir), {}
    if cut is not None:
        try:
            data = data.with_train_size(cut)
        except ValueError as exc:
            raise CLIError(f"--train-size: {exc}") from None
    cfg = replace(cfg, dataset=spec, dataset_args=loader_args)
    if args.dataset is not None:
        c, h, _ = data.image_shape
        cfg = replace(cfg, arch=replace(cfg.arch, num_classes=data.num_classes, in_chans=c, img_size=h))
    _check_fit(cfg, data, args)
    return cfg, data


def _check_fit(cfg, data, args: argparse.Namespace) -> None:
    """Fail before any training when the forget sets or the model cannot work on this data."""
    import numpy as np
    import torch

    from ltu_core.errors import CheckpointError
    from ltu_core.models import build_model

    train = data.split_indices("train")
    if "random" in cfg.scenarios and cfg.forget_count >= len(train):
        where = "--forget-count" if args.forget_count is not None else f"the preset's forget count {cfg.forget_count}"
        raise CLIError(f"{where} must be smaller than the {len(train)} train samples of {data.name!r}")
    if "class" in cfg.scenarios:
        where = (
            "--classes" if args.classes is not None else f"the preset's classes {list(cfg.classes)} (pass --classes)"
        )
        for c in cfg.classes:
            if not 0 <= c < data.num_classes:
                raise CLIError(f"{where}: class {c} is outside {data.name!r}'s labels 0..{data.num_classes - 1}")
            if not np.any(data.labels[train] == c):
                raise CLIError(f"{where}: class {c} has no train samples in {data.name!r}")
        if len(np.unique(data.labels[train])) < 2:
            raise CLIError(f"class forgetting needs train samples of two classes; {data.name!r} has one")
    c, h, w = data.image_shape
    try:
        model = build_model(cfg.arch).eval()
        with torch.no_grad():
            out = model(torch.zeros(1, c, h, w))
    except CheckpointError as exc:
        raise CLIError(f"--arch {cfg.arch.name!r}: {exc}") from None
    except Exception as exc:  # any failure to build or run the model is a bad option
        raise CLIError(f"model {cfg.arch.name!r} does not run on {c}x{h}x{w} images: {exc}".splitlines()[0]) from None
    if out.shape[-1] != data.num_classes:
        raise CLIError(
            f"model has {out.shape[-1]} outputs but {data.name!r} has {data.num_classes} classes (pass --dataset)"
        )


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark preset (optionally on the user's data); print markdown tables, optionally JSON."""
    from collections import Counter

    from tqdm import tqdm

    from ltu_core.bench import count_units, environment, render, render_results, run_bench

    if args.report is not None:
        try:
            payload = json.loads(args.report.read_text())
            print(render_results(payload), end="")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CLIError(
                f"--report {args.report}: not a results file written by `ltu bench --json` ({exc})"
            ) from None
        return 0
    cfg = _bench_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, data = _bench_data(cfg, args, Path(tmp))
        env = environment(cfg)  # before the run: the commit and tree state that produced the rows
        start = time.perf_counter()
        with tqdm(total=count_units(cfg), desc=f"bench {args.preset}", unit="run", file=sys.stderr) as bar:

            def progress(message: str) -> None:
                bar.set_postfix_str(message)
                bar.update(1)

            rows = run_bench(cfg, progress=progress, dataset=data)
        elapsed = time.perf_counter() - start
        splits = dict(Counter(data.splits.tolist()))

    print(f"dataset {cfg.dataset} ({data.name}: {splits.get('train', 0)} train, {splits.get('test', 0)} test)\n")
    print(
        render(
            rows,
            methods=[r.label for r in cfg.methods],
            ablations=[r.label for r in cfg.ablations],
            seeds=len(cfg.seeds),
        )
    )
    print(f"\nwall time {elapsed:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "preset": args.preset,
            "config": cfg.describe(),
            "dataset": cfg.dataset,
            "dataset_splits": splits,
            "environment": env,
            "wall_seconds": round(elapsed, 1),
            "rows": [r.as_dict() for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0

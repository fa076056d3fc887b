"""The library's commands: `ltu train`, `ltu unlearn`, `ltu bench`."""

from __future__ import annotations

import argparse
import json
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

    p = sub.add_parser("bench", help="original → Retrain → every method on the same forget sets")
    p.add_argument("--preset", default="smoke", help="smoke (under a minute) or full (the README's table)")
    p.add_argument("--seeds", help="comma-separated seeds, overriding the preset's")
    p.add_argument("--methods", help="comma-separated method labels to run (default: all of the preset)")
    p.add_argument("--no-ablations", action="store_true", help="skip the LTU ablation rows")
    p.add_argument("--json", type=Path, help="write every row as JSON here")
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


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark preset; print markdown tables, optionally write JSON."""
    from dataclasses import replace

    from tqdm import tqdm

    from ltu_core.bench import PRESETS, count_units, markdown_table, run_bench
    from ltu_core.methods import list_methods

    if args.preset not in PRESETS:
        raise CLIError(f"unknown preset {args.preset!r}; available: {', '.join(PRESETS)}")
    cfg = PRESETS[args.preset]
    if args.seeds:
        try:
            cfg = replace(cfg, seeds=tuple(int(s) for s in args.seeds.split(",")))
        except ValueError:
            raise CLIError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        known = {r.label: r for r in (*cfg.methods, *cfg.ablations)}
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise CLIError(f"unknown method label(s) {unknown}; this preset has {sorted(known)}")
        cfg = replace(
            cfg,
            methods=tuple(known[m] for m in wanted if known[m] in cfg.methods),
            ablations=tuple(known[m] for m in wanted if known[m] in cfg.ablations),
        )
    if args.no_ablations:
        cfg = replace(cfg, ablations=())
    missing = {r.method for r in (*cfg.methods, *cfg.ablations)} - set(list_methods())
    if missing:
        raise CLIError(f"methods not registered: {sorted(missing)}")

    start = time.perf_counter()
    with tqdm(total=count_units(cfg), desc=f"bench {args.preset}", unit="run", file=sys.stderr) as bar:

        def progress(message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(1)

        rows = run_bench(cfg, progress=progress)
    elapsed = time.perf_counter() - start
    main_labels = ["retrain", "retrain (2nd seed)", "original", *(r.label for r in cfg.methods)]
    for scenario in cfg.scenarios:
        print(f"\n### {scenario} forgetting — {len(cfg.seeds)} seed(s), mean ± std\n")
        print(markdown_table(rows, scenario, main_labels))
        if cfg.ablations:
            print(f"\n### {scenario} forgetting — LTU ablations\n")
            print(markdown_table(rows, scenario, ["retrain", "original", "ltu", *(r.label for r in cfg.ablations)]))
    print(f"\nwall time {elapsed:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "preset": args.preset,
            "config": cfg.describe(),
            "wall_seconds": round(elapsed, 1),
            "rows": [r.as_dict() for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0

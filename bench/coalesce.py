"""Coalescing benchmark: wall time to finish N simultaneous erasure requests on one model,
coalesced into one unlearning run versus executed one by one.

    python bench/coalesce.py                 # 20 requests, digits ResNet-18 (width 0.25), ~3-4 min
    python bench/coalesce.py --requests 5 --epochs 5   # a quicker look

Both modes use the real service path in this process: the API (FastAPI TestClient) on a fresh
embedded SQLite ledger, requests submitted over HTTP, and the embedded runner draining the
outbox (`run_erasure`, the code a Celery worker runs). The model is the demo's: scikit-learn
digits, a quarter-width ResNet-18 trained here (seeded). Each request erases one distinct data
subject with the service's default method (LTU) and its default verification; a request whose
verification fails falls back to Retrain as in production, and the table counts those
fallbacks because they dominate wall time. Prints a table and writes --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ADMIN_KEY = "ltu_bench-admin-key-" + "0" * 24


def build_artifacts(work: Path, *, epochs: int, width: float) -> tuple[Path, Path, dict, object]:
    """The digits dataset archive, a trained model's weights, its recipe, and the dataset."""
    from ltu_core.data import load_digits, pack_dataset, write_dataset
    from ltu_core.models import ArchConfig, build_model, save_model
    from ltu_core.train import TrainRecipe, train_model

    dataset = load_digits()
    write_dataset(dataset, work / "digits")
    archive = pack_dataset(work / "digits", work / "digits.tar")
    arch = ArchConfig("resnet18", num_classes=dataset.num_classes, in_chans=1, img_size=8, width=width)
    model = build_model(arch, seed=0)
    recipe = TrainRecipe(epochs=epochs)
    train_model(model, dataset.view(dataset.split_indices("train")), recipe, seed=0)
    weights = save_model(model, arch, work / "digits-resnet18.safetensors")
    return archive, weights, {"epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr}, dataset


def subjects_with_training_data(dataset, count: int) -> list[str]:
    """`count` distinct subjects whose samples include training samples (sorted, deterministic)."""
    import numpy as np

    train = dataset.split_indices("train")
    ids, counts = np.unique(dataset.subject_ids[train], return_counts=True)
    chosen = [str(s) for s in ids[counts >= 2]][:count]
    if len(chosen) < count:
        raise SystemExit(f"the dataset has only {len(chosen)} subjects with training samples")
    return chosen


def run_mode(name: str, root: Path, artifacts, subjects: list[str], *, max_batch: int) -> dict:
    """Submit every request at once, drain the outbox, and time it; returns the mode's row."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from ledger import migrate
    from ltu_client import Client
    from ltu_settings import Settings
    from worker.runner import EmbeddedRunner

    archive, weights, recipe, _ = artifacts
    root.mkdir(parents=True)
    settings = Settings.build(
        home=root,
        secret_key="bench-" + "x" * 40,
        admin_api_key=ADMIN_KEY,
        torch_threads=1,
        coalesce_window_seconds=0.0,
        coalesce_max_batch=max_batch,
        rate_limit_burst=10_000,
        rate_limit_per_minute=10_000,
    )
    migrate.upgrade(settings.ledger.database_url)
    with TestClient(create_app(settings)) as http:
        client = Client(http=http, api_key=ADMIN_KEY)
        model = client.register_model(weights, dataset_id=client.register_dataset(archive).id, recipe=recipe)
        started = time.perf_counter()
        submitted = [client.submit_deletion(model.id, subject_ids=[s]) for s in subjects]
        EmbeddedRunner(settings).run_pending()
        wall = time.perf_counter() - started
        done = [client.get_request(r.id) for r in submitted]
        versions = client.list_versions(model.id)
    failed = [(r.id, r.error) for r in done if r.status != "completed"]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} request(s) did not complete: {failed[:3]}")
    final = max(done, key=lambda r: r.result_version)
    return {
        "mode": name,
        "max_batch": max_batch,
        "requests": len(done),
        "runs": len(versions) - 1,
        "wall_s": round(wall, 2),
        "passed_verification": sum(bool(r.verification["passed"]) for r in done),
        "fallbacks": len({r.result_version for r in done if r.verification["fallback"]}),
        "final_version": final.result_version,
        "final_ua": final.metrics_after["ua"],
        "final_ta": final.metrics_after["ta"],
        "ta_before": min(done, key=lambda r: r.base_version).metrics_before["ta"],
        "every_request_has_its_record": all(r.metrics_after and r.verification and r.result_sha256 for r in done),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="simultaneous requests (default 20)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of the model (default 20, as the demo)")
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier (default 0.25)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "coalesce.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # tiny 8×8 models: one intra-op thread is fastest on this CPU
    with tempfile.TemporaryDirectory(prefix="ltu-coalesce-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        artifacts = build_artifacts(work, epochs=args.epochs, width=args.width)
        print(
            f"model: digits ResNet-18 width {args.width}, {args.epochs} epochs, trained in {time.perf_counter() - t0:.0f} s"
        )
        subjects = subjects_with_training_data(artifacts[3], args.requests)
        rows = [
            run_mode("one by one", work / "one-by-one", artifacts, subjects, max_batch=1),
            run_mode("coalesced", work / "coalesced", artifacts, subjects, max_batch=args.requests),
        ]

    one_by_one, _coalesced = rows
    per_request = one_by_one["wall_s"] / one_by_one["requests"]
    print(
        f"\n{args.requests} simultaneous erasure requests on one model (LTU, default verification; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 torch thread)\n"
    )
    header = f"{'mode':<11} {'runs':>4} {'wall s':>7} {'× one request':>13} {'speed-up':>8} {'verified':>8} {'fallbacks':>9} {'UA':>6} {'TA':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['mode']:<11} {row['runs']:>4} {row['wall_s']:>7.1f} {row['wall_s'] / per_request:>13.1f} "
            f"{one_by_one['wall_s'] / row['wall_s']:>7.1f}× {row['passed_verification']:>5}/{row['requests']:<2} "
            f"{row['fallbacks']:>9} {row['final_ua']:>6.1f} {row['final_ta']:>6.1f}"
        )
    print(
        f"\none request alone (one-by-one mean): {per_request:.1f} s; TA before: {one_by_one['ta_before']:.1f}. "
        "UA/TA: the final published version."
    )
    result = {
        "requests": args.requests,
        "epochs": args.epochs,
        "width": args.width,
        "cpu_count": os.cpu_count(),
        "one_request_s": round(per_request, 2),
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

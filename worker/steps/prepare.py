"""Step 1, prepare: load the current version, the dataset without earlier erasures, D_f and the method."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
from torch import nn

from ledger import datasets as ledger_datasets
from ledger import references as reference_sets
from ledger import registry, requests
from ledger.tables import FAILED, Dataset, Model
from ltu_core.audit import ReferenceScores
from ltu_core.data import ForgetSpec, UnlearningSplit, audit_rows, make_split, read_dataset
from ltu_core.data.format import check_tombstones
from ltu_core.errors import DatasetFormatError
from ltu_core.methods import UnlearningMethod, UnlearningTask, create_method, method_entry
from ltu_core.models import ArchConfig, load_model
from ltu_core.train import TrainRecipe
from worker.attempt import Attempt, JobFailed

log = logging.getLogger("ltu.worker")

ALREADY_ERASED = "every training sample this request names was already erased from the model by an earlier request"
SAMPLES_PURGED = (
    "samples this request names were purged from the stored dataset (erased from every model registered before, or "
    "at once by the tenant's policy): their pixels are gone, so they cannot be unlearned from this model"
)


@dataclass(frozen=True)
class Prepared:
    """Everything the later steps read, loaded once per try."""

    model_id: str
    base_id: str  # the version the run starts from
    base_number: int
    base_sha256: str
    model: nn.Module  # θ_o, on `device`, in eval mode
    arch: ArchConfig
    split: UnlearningSplit  # D_f is the union of the requests' own forget sets
    recipe: TrainRecipe
    has_recipe: bool  # the model was registered with its training recipe (Retrain needs it)
    method: UnlearningMethod
    own_rows: dict[str, np.ndarray]  # request id → its D_f rows (dataset row indices), for its own numbers
    excluded_erased: int  # samples erased by earlier requests, left out of every set
    device: str
    seed: int
    audit_rows: np.ndarray  # D_audit: never trained on, never given to a method; the verifier's controls
    audit_seeds: dict[str, int]  # request id → seed of its control draw from D_audit
    references: ReferenceScores | None  # the likelihood-ratio tier's reference scores, when ready
    tier_reason: str  # why the audit uses the tier it uses

    def task(self, model: nn.Module | None = None) -> UnlearningTask:
        """The ltu_core task over this run's split (θ_o unless another model is given)."""
        return UnlearningTask.from_split(
            model or self.model, self.arch, self.split, self.recipe, seed=self.seed, device=self.device
        )


def run(attempt: Attempt, *, device: str) -> Prepared:
    """Prepared inputs of the run; requests with nothing left to forget leave a coalesced run.

    JobFailed: nothing is left to forget (already_erased), samples to forget were purged (samples_purged),
    the method needs a recipe the model lacks (no_recipe), or the stored dataset does not match the
    ledger's index or purges (dataset_mismatch).
    UnknownMethodError / MethodConfigError (ltu_core) for a bad method or parameters.
    """
    settings = attempt.ctx.settings.worker
    with attempt.ctx.database.session() as session:
        leader = requests.load(session, request_id=attempt.leader)
        assert leader is not None
        model_row = session.get(Model, leader.model_id)
        assert model_row is not None
        base = registry.get_version(session, model_id=model_row.id, number=model_row.current_version)
        dataset_row = session.get(Dataset, model_row.dataset_id)
        assert dataset_row is not None
        own = requests.forget_sets(session, request_ids=attempt.request_ids, model_id=model_row.id)
        erased = ledger_datasets.erased_rows(session, dataset_id=dataset_row.id)
        purged = ledger_datasets.purged_rows(session, dataset_id=dataset_row.id)
        method_name, parameters, recipe_fields = leader.method, dict(leader.parameters), model_row.recipe
        dataset_key, model_id = dataset_row.storage_key, model_row.id
        base_id, base_number, base_sha256, base_key = base.id, base.number, base.sha256, base.storage_key
        reference_set = reference_sets.ready_set(session, model_id=model_row.id)
        reference_key = reference_set.storage_key if reference_set is not None else None

    for request_id in [r for r, samples in own.items() if not samples and len(own) > 1]:
        attempt.drop(request_id, FAILED, "already_erased", ALREADY_ERASED)
        del own[request_id]
    forget = sorted({s.id: s for samples in own.values() for s in samples}.values(), key=lambda s: s.row)
    if not forget:
        raise JobFailed("already_erased", ALREADY_ERASED)
    if any(s.purged_at is not None for s in forget):
        raise JobFailed("samples_purged", SAMPLES_PURGED)
    forget_pks = {s.id for s in forget}
    # Purged rows are erased rows too; the union states that no run ever reads a tombstone.
    excluded = sorted({row for pk, row in erased.items() if pk not in forget_pks} | set(purged))

    entry = method_entry(method_name)  # UnknownMethodError → failed, with the list of methods
    method = create_method(method_name, **parameters)  # MethodConfigError → failed
    if entry.cls.reads_full_retain and recipe_fields is None:
        raise JobFailed(
            "no_recipe",
            f"method {method_name!r} retrains from scratch and needs the model's training "
            "recipe; register the model with one",
        )

    dataset = read_dataset(attempt.ctx.store.path(dataset_key))
    rows = np.asarray([s.row for s in forget])
    named = np.asarray([s.sample_id for s in forget], dtype=dataset.sample_ids.dtype)
    if not np.array_equal(dataset.sample_ids[rows], named):
        raise JobFailed("dataset_mismatch", "the stored dataset files do not match the ledger's sample index")
    try:
        check_tombstones(dataset, purged)
    except DatasetFormatError as exc:
        raise JobFailed("dataset_mismatch", f"the stored dataset does not match the ledger's purges: {exc}") from None
    split = make_split(
        dataset,
        ForgetSpec(kind="samples", ids=tuple(s.sample_id for s in forget)),
        retain_fraction=settings.retain_fraction,
        seed=settings.seed,
        exclude=np.asarray(excluded, dtype=np.int64),
    )
    model, arch = load_model(attempt.ctx.store.path(base_key))
    scores, tier_reason = _references(attempt, reference_key, len(dataset))
    return Prepared(
        model_id=model_id,
        base_id=base_id,
        base_number=base_number,
        base_sha256=base_sha256,
        model=model.to(device).eval(),
        arch=arch,
        split=split,
        recipe=TrainRecipe(**recipe_fields) if recipe_fields is not None else TrainRecipe(),
        has_recipe=recipe_fields is not None,
        method=method,
        own_rows={r: np.asarray([s.row for s in samples]) for r, samples in own.items()},
        excluded_erased=len(excluded),
        device=device,
        seed=settings.seed,
        audit_rows=audit_rows(split),
        audit_seeds={r: audit_seed(r) for r in own},
        references=scores,
        tier_reason=tier_reason,
    )


def audit_seed(request_id: str) -> int:
    """The seed of a request's D_audit control draw: fixed by its id, so anyone can redraw it."""
    return int.from_bytes(hashlib.sha256(f"audit:{request_id}".encode()).digest()[:4], "big")


def _references(attempt: Attempt, key: str | None, dataset_size: int) -> tuple[ReferenceScores | None, str]:
    """The model's ready reference scores, or None and why the audit falls back to the rank tier."""
    if key is None:
        return None, "the model's reference models are not ready (none trained yet, or training)"
    try:
        scores = ReferenceScores.load(attempt.ctx.store.path(key))
    except (OSError, ValueError) as exc:
        log.warning("request %s: reference scores %s unreadable (%s); rank tier", attempt.leader, key, exc)
        return None, "the model's reference scores could not be read"
    if scores.phi.shape[1] != dataset_size:
        return None, "the model's reference scores do not match its dataset"
    return scores, f"{scores.count} reference models are ready"

"""The API's torch-free format checks agree with ltu_core's own reader and writer."""

from __future__ import annotations

import dataclasses

import pytest


def test_format_constants_match_ltu_core():
    from api import schemas, uploads
    from ltu_core.data import SPLITS, format
    from ltu_core.models import ArchConfig, factory
    from ltu_core.train import TrainRecipe

    assert (uploads.FORMAT_NAME, uploads.FORMAT_VERSION) == (format.FORMAT_NAME, format.FORMAT_VERSION)
    assert (uploads.MANIFEST, uploads.INDEX, uploads.IMAGES) == (format.MANIFEST, format.INDEX, format.IMAGES)
    assert uploads.INDEX_HEADER == format.INDEX_HEADER and uploads.SPLITS == SPLITS
    assert uploads.CHECKPOINT_FORMAT == factory.CHECKPOINT_FORMAT
    assert {f.name for f in dataclasses.fields(ArchConfig)} == uploads.ARCH_FIELDS
    # The recipe schema mirrors TrainRecipe field for field, defaults included.
    recipe_defaults = schemas.TrainRecipeCreate().model_dump()
    assert recipe_defaults == dataclasses.asdict(TrainRecipe())


def test_checkpoints_written_by_ltu_core_are_accepted(tmp_path, trained, tiny_arch):
    from api.uploads import read_safetensors_header
    from ltu_core.models import save_model

    path = save_model(trained, tiny_arch, tmp_path / "w.safetensors", metadata={"note": "x"})
    header = read_safetensors_header(path)
    assert header.architecture == dataclasses.asdict(tiny_arch)
    assert header.num_tensors == len(trained.state_dict())


@pytest.mark.parametrize("cut", [1, 100, -1])
def test_truncated_or_padded_checkpoints_are_refused(tmp_path, trained, tiny_arch, cut):
    from api.uploads import UploadError, read_safetensors_header
    from ltu_core.models import save_model

    data = save_model(trained, tiny_arch, tmp_path / "w.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data + b"\0" if cut == -1 else data[:-cut])
    with pytest.raises(UploadError) as err:
        read_safetensors_header(bad)
    assert err.value.status == 415


def test_stored_datasets_open_with_ltu_core_and_keep_no_subject_ids(api, artifacts):
    from ltu_core.data import read_dataset

    registered = api.client.register_dataset(artifacts.archive, name="tiny")
    assert (registered.name, registered.num_classes, registered.image_shape) == ("tiny", 4, [1, 8, 8])
    stored = read_dataset(api.settings.ledger.artifacts_dir / "datasets" / registered.id)
    assert (stored.sample_ids == artifacts.dataset.sample_ids).all()
    assert (stored.images == artifacts.dataset.images).all()
    assert not set(stored.subject_ids.tolist()) & set(artifacts.dataset.subject_ids.tolist())

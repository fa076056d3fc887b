"""Models come only from timm; checkpoints are safetensors and round-trip bit-exactly."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from ltu_core.errors import CheckpointError
from ltu_core.models import ArchConfig, build_model, count_parameters, load_model, read_checkpoint, save_model


def test_quarter_width_resnet18_with_small_stem():
    arch = ArchConfig("resnet18", num_classes=10, in_chans=1, img_size=28, width=0.25)
    model = build_model(arch)
    assert 0.6e6 < count_parameters(model) < 0.8e6
    # The small stem keeps full resolution into layer1 (timm's default stem divides it by 4).
    feats = model.forward_features(torch.zeros(2, 1, 28, 28))
    assert feats.shape[-1] == 4  # 28 → 28 → 14 → 7 → 4 through the stages
    default = build_model(ArchConfig("resnet18", num_classes=10, in_chans=1, img_size=28, width=0.25, small_stem=False))
    assert default.forward_features(torch.zeros(2, 1, 28, 28)).shape[-1] == 1


def test_small_vit_and_any_timm_name():
    vit = build_model(ArchConfig("vit_micro", num_classes=10, in_chans=1, img_size=28))
    assert vit(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    other = build_model(ArchConfig("mobilenetv3_small_050", num_classes=3, in_chans=3, img_size=32))
    assert other(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(CheckpointError, match="no_such_net"):
        build_model(ArchConfig("no_such_net", num_classes=2))


def test_same_seed_same_weights():
    arch = ArchConfig("resnet18", num_classes=4, img_size=8, width=0.125)
    a, b, c = build_model(arch, seed=1), build_model(arch, seed=1), build_model(arch, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_safetensors_round_trip_is_bit_exact(tmp_path, trained, tiny_arch):
    path = save_model(trained, tiny_arch, tmp_path / "m.safetensors", metadata={"note": "x"})
    model, arch = load_model(path)
    assert arch == tiny_arch
    original = trained.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key  # BatchNorm buffers included
    x = torch.randn(4, 1, 8, 8)
    trained.eval(), model.eval()
    assert torch.equal(trained(x), model(x))
    assert read_checkpoint(path)[2] == {"note": "x"}


def test_checkpoints_that_are_not_ours_are_rejected(tmp_path):
    pickle_like = tmp_path / "model.pt"
    pickle_like.write_bytes(b"\x80\x04\x95" + b"\0" * 200)  # a pickle header: never unpickled
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_model(pickle_like)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="without an ltu architecture header"):
        load_model(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.safetensors")


def stored_checkpoint(tmp_path, arch_json: str, **metadata: str):
    """A safetensors file whose header says `arch_json`, as a client could upload it (save_model would refuse)."""
    path = tmp_path / "crafted.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "ltu-model/1", "arch": arch_json, **metadata})
    return path


@pytest.mark.parametrize(
    "kwargs",
    [{"checkpoint_path": "/etc/passwd"}, {"pretrained": True}, {"pretrained_cfg": {}}, {"no_such_argument": 1}],
)
def test_keyword_arguments_outside_the_allow_list_never_reach_timm(tmp_path, monkeypatch, kwargs):
    from ltu_core.models import factory

    calls = []
    monkeypatch.setattr(factory.timm, "create_model", lambda *a, **kw: calls.append(kw))
    with pytest.raises(CheckpointError, match=repr(next(iter(kwargs)))):
        ArchConfig("resnet18", num_classes=4, kwargs=kwargs)
    arch = json.dumps({"name": "resnet18", "num_classes": 4, "kwargs": kwargs})
    with pytest.raises(CheckpointError, match=repr(next(iter(kwargs)))):
        load_model(stored_checkpoint(tmp_path, arch))  # a header stored before the API checked it
    assert calls == []


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"name": "hf-hub:someone/model"}, "timm model name"),
        ({"name": "resnet18.a1_in1k"}, "timm model name"),
        ({"width": 64.0}, "width"),
        ({"img_size": 10**6}, "img_size"),
        ({"num_classes": 1}, "num_classes"),
        ({"small_stem": "no"}, "small_stem"),
        ({"kwargs": {"embed_dim": 1 << 20}}, "'embed_dim'"),
        ({"kwargs": {"drop_rate": float("nan")}}, "'drop_rate'"),
    ],
)
def test_names_and_sizes_outside_the_allow_list_are_refused(fields, problem):
    with pytest.raises(CheckpointError, match=re.escape(problem)):
        ArchConfig(**{"name": "resnet18", "num_classes": 4, **fields})


def test_allowed_keyword_arguments_build_and_misfits_are_checkpoint_errors():
    vit = build_model(ArchConfig("vit_micro", num_classes=3, img_size=16, kwargs={"depth": 2, "drop_path_rate": 0.1}))
    assert len(vit.blocks) == 2 and vit(torch.zeros(1, 1, 16, 16)).shape == (1, 3)
    with pytest.raises(CheckpointError, match="patch_size"):  # allowed, but resnets take no such argument
        build_model(ArchConfig("resnet18", num_classes=3, kwargs={"patch_size": 4}))


def test_headers_nested_too_deep_or_not_json_are_checkpoint_errors(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(CheckpointError, match="invalid architecture config"):
        load_model(stored_checkpoint(tmp_path, deep))
    arch = ArchConfig("resnet18", num_classes=4).to_json()
    for extra in (deep, "{not json"):
        with pytest.raises(CheckpointError, match="'extra' header is not JSON"):
            read_checkpoint(stored_checkpoint(tmp_path, arch, extra=extra))

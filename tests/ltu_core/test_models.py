"""Models come only from timm; checkpoints are safetensors and round-trip bit-exactly."""

from __future__ import annotations

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

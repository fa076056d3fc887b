"""Shared fixtures: tiny seeded data and a tiny trained model, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def synthetic():
    """160 seeded noisy 1×8×8 images in 4 classes (120 train, 40 test): hard enough to memorise."""
    from ltu_core.data import make_synthetic

    return make_synthetic(num_samples=160, num_classes=4, image_size=8, noise=100.0, seed=0)


@pytest.fixture(scope="session")
def tiny_arch():
    """A 1/8-width ResNet-18 for 8 px inputs (~180k parameters: timm keeps a 64-channel stem)."""
    from ltu_core.models import ArchConfig

    return ArchConfig("resnet18", num_classes=4, in_chans=1, img_size=8, width=0.125)


@pytest.fixture(scope="session")
def tiny_recipe():
    """Enough epochs to memorise the train split (100 % train vs ~78 % test accuracy)."""
    from ltu_core.train import TrainRecipe

    return TrainRecipe(epochs=15, batch_size=32, lr=0.05)


@pytest.fixture(scope="session")
def trained(synthetic, tiny_arch, tiny_recipe):
    """A tiny model trained on the synthetic train split (do not modify it in tests)."""
    from ltu_core.models import build_model
    from ltu_core.train import train_model

    model = build_model(tiny_arch, seed=0)
    train_model(model, synthetic.view(synthetic.split_indices("train")), tiny_recipe, seed=0)
    return model


@pytest.fixture(scope="session")
def tiny_split(synthetic):
    """Forget 12 random train samples; D̂_r = 25 % of the rest."""
    from ltu_core.data import ForgetSpec, make_split

    return make_split(synthetic, ForgetSpec(kind="random", count=12, seed=0), retain_fraction=0.25, seed=0)


@pytest.fixture()
def tiny_task(trained, tiny_arch, tiny_split, tiny_recipe):
    """An UnlearningTask over the tiny split."""
    from ltu_core.methods import UnlearningTask

    return UnlearningTask.from_split(trained, tiny_arch, tiny_split, tiny_recipe, seed=0)

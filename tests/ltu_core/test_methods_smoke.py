"""Every registered method runs its tiny `test_*` variant and returns a new, changed-or-valid model."""

from __future__ import annotations

import pytest
import torch

from ltu_core.methods import create_test_method, list_methods
from ltu_core.metrics import evaluate


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_method_runs_its_test_variant(name, tiny_task, tiny_split, trained):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    result = create_test_method(name).run(tiny_task)
    # The original is never modified.
    for k, v in trained.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} modified the original model ({k})"
    assert result.model is not trained
    assert result.seconds > 0
    assert result.method == name
    report = evaluate(result.model, tiny_split)
    assert 0 <= report.ua <= 100 and 0 <= report.ta <= 100
    assert all(torch.isfinite(p).all() for p in result.model.parameters())

"""The "looks unseen" stop rule any method may use.

Under the *current* model, K membership attackers (refit every few checks, members = D̂_r,
non-members = one half of D_ref) score D_f and the other half of D_ref, which nothing else reads.
The rule fires when D_f ranks no higher than those never-seen samples: the Mann–Whitney AUC of
D_f's scores against theirs is at most `threshold` (0.5: indistinguishable). A global loss of
confidence lowers both sets' scores alike and leaves the AUC where it was, so damage alone cannot
trigger it; a Retrain, for which D_f *is* unseen, sits at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ltu_core.audit.scores import mean_percentile_rank
from ltu_core.methods.base import UnlearningTask
from ltu_core.mia.attackers import DEFAULT_ATTACKERS, Attacker, train_attackers
from ltu_core.models.inference import Posteriors

Tensors = tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Logits of `model` on in-memory inputs, in chunks."""
    if len(x) == 0:
        return x.new_zeros(0)
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def split_reference(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded halves of D_ref's positions: (the half a method may read, the half only the rule reads)."""
    perm = torch.randperm(n, generator=generator)
    return perm[: n // 2], perm[n // 2 :]


class UnseenStop:
    """Judges whether D_f still looks more member-like than never-seen samples (see module doc)."""

    def __init__(
        self,
        members: Tensors,
        nonmembers: Tensors,
        held_out: Tensors,
        forget: Tensors,
        *,
        threshold: float = 0.5,
        refresh_every: int = 1,
        features: Sequence[str] = DEFAULT_ATTACKERS,
        attacker_steps: int = 100,
        seed: int = 0,
    ) -> None:
        if len(held_out[1]) == 0 or len(nonmembers[1]) == 0:
            raise ValueError("the stop rule needs never-seen samples in both halves of D_ref")
        self.members, self.nonmembers, self.held_out, self.forget = members, nonmembers, held_out, forget
        self.threshold, self.refresh_every = threshold, refresh_every
        self.features, self.attacker_steps, self.seed = tuple(features), attacker_steps, seed
        self.attackers: list[Attacker] = []
        self.checks = 0
        self.trace: list[float] = []

    @classmethod
    def for_task(
        cls, task: UnlearningTask, generator: torch.Generator, *, threshold: float = 0.5, refresh_every: int = 1
    ) -> UnseenStop:
        """The rule for a method that reads D_ref only through it: D_ref halved, seeded."""
        x_ref, y_ref = (t.to(task.device) for t in task.reference.tensors())
        fit, held = split_reference(len(y_ref), generator)
        return cls(
            tuple(t.to(task.device) for t in task.retain_subset.tensors()),
            (x_ref[fit], y_ref[fit]),
            (x_ref[held], y_ref[held]),
            tuple(t.to(task.device) for t in task.forget.tensors()),
            threshold=threshold,
            refresh_every=refresh_every,
            seed=task.seed,
        )

    def refit(self, model: nn.Module) -> list[Attacker]:
        """Fit the attackers on the model as it is now; returns them."""
        members = Posteriors(outputs(model, self.members[0]).softmax(1), self.members[1])
        nonmembers = Posteriors(outputs(model, self.nonmembers[0]).softmax(1), self.nonmembers[1])
        device = self.members[0].device
        fitted = train_attackers(members, nonmembers, features=self.features, seed=self.seed, steps=self.attacker_steps)
        self.attackers = [a.to(device) for a in fitted]
        return self.attackers

    @torch.no_grad()
    def scores(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean member probability over the attackers, per sample [n]."""
        probs = outputs(model, x).softmax(1)
        return torch.stack([a(probs, y) for a in self.attackers]).mean(0)

    def auc(self, model: nn.Module) -> float:
        """AUC of D_f's scores against the held-out half's, refitting the attackers when due."""
        if not self.attackers or (self.refresh_every and self.checks % self.refresh_every == 0 and self.checks):
            self.refit(model)
        self.checks += 1
        value = mean_percentile_rank(
            self.scores(model, *self.forget).double().numpy(), self.scores(model, *self.held_out).double().numpy()
        )
        self.trace.append(round(value, 4))
        return value

    def __call__(self, model: nn.Module) -> bool:
        """True once D_f looks unseen."""
        return self.auc(model) <= self.threshold


def stop_rule_for(task: UnlearningTask, cfg: object) -> UnseenStop | None:
    """The rule a baseline's config asks for (`stop_rule` "auc"), or None for fixed epochs."""
    if getattr(cfg, "stop_rule", "none") != "auc":
        return None
    # Its own generator: turning the rule on must not change the training batches' order.
    generator = torch.Generator().manual_seed(task.seed + 1)
    return UnseenStop.for_task(task, generator, threshold=getattr(cfg, "stop_auc", 0.5))


def stop_details(stop: UnseenStop | None) -> dict:
    """What the run record keeps of the rule: the number of checks and the last AUCs."""
    return {} if stop is None else {"stop_checks": stop.checks, "stop_auc_trace": stop.trace[-5:]}

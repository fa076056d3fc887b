"""LTU: Learning to Unlearn (Huang, Foo, Liu — ECCV 2024, arXiv 2407.10494).

Partial-access unlearning with a meta-learning loop. Each outer step builds a *remembering*
task (support/query batches from D̂_r, cross-entropy) and a *forgetting* task (support/query
batches from D_f, scored by K frozen differentiable membership-inference attackers), then

1. meta-tune:   θ' = θ − α ∇θ [L_rem(θ; S_r) + λ L_fgt(θ; S_f)];
2. meta-test:   L_rem(θ'; Q_r) and L_fgt(θ'; Q_f);
3. task gradients g_r = ∇θ[L_rem(θ; S_r) + γ L_rem(θ'; Q_r)],
                  g_f = ∇θ λ[L_fgt(θ; S_f) + γ L_fgt(θ'; Q_f)]
   (first order by default; `second_order=True` also differentiates the query loss through
   the inner step — on the validation split it forgot no better and took 1.6× as long);
4. Gradient Harmonization: if ⟨g_r, g_f⟩ < 0 each is projected off the other's direction;
5. meta-update: one optimizer step with g_r + g_f.

It stops when the attackers' mean member score on D_f falls to the score the original model's
outputs get on the never-seen reference slice D_ref — "looks unseen" — never by peeking at
Retrain. The forgetting loss matches the *distribution* of the attackers' scores on D_ref rather
than pushing every sample to "non-member". What the paper states and what is this project's
reconstruction is in shared/design/LTU-METHOD.md; where this file departs from that
reconstruction, the README's "LTU as built" section gives the evidence. Every knob is a field of
`LTUConfig` and lands in the run record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from ltu_core.methods.base import RunHooks, UnlearningMethod, UnlearningTask, working_copy
from ltu_core.methods.registry import register_method
from ltu_core.mia.attackers import DEFAULT_ATTACKERS, Attacker, attacker_accuracy, train_attackers
from ltu_core.models.inference import Posteriors, predict

HARMONIZATION_MODES = ("global", "per_layer", "one_sided", "none")


@dataclass(frozen=True)
class LTUConfig:
    """LTU's knobs. Defaults were chosen on a validation forget split (bench/tune.py, bench/results/)."""

    meta: bool = True  # False: ablation without meta-optimisation (joint loss on the same batches)
    second_order: bool = False  # True: differentiate through the meta-tune step (≈1.6× slower)
    harmonization: str = "per_layer"  # global | per_layer | one_sided (only g_f projected) | none
    lam: float = 1.0  # λ, weight of the forgetting task
    gamma: float = 1.0  # γ, weight of the query (meta-test) losses
    lr: float = 0.01  # η, outer learning rate
    inner_lr: float = 0.01  # α, meta-tune step size
    optimizer: str = "sgd"  # sgd (momentum) | adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # clip ‖g_r + g_f‖: attacker gradients have arbitrary scale (0 = off)
    batch_size: int = 16  # size of each support and each query batch
    max_passes: float = 5.0  # upper bound on passes over D_f (each step reads 2 batches of D_f)
    attackers: tuple[str, ...] = DEFAULT_ATTACKERS  # K features, one attacker each
    attacker_steps: int = 100
    holdout_attacker: bool = False  # one attacker (rotating) scores only the query loss
    stop_rule: str = "attacker"  # attacker: stop once D_f looks like D_ref | none: run max_passes
    stop_margin: float = -0.04  # stop when score(D_f) <= score(D_ref) + margin
    # original: D_ref's score under θ_o, a fixed target | current: under θ, which recedes as
    # unlearning perturbs the model (every sample, D_ref included, looks less member-like).
    stop_target: str = "original"
    forget_loss: str = "match"  # match: quantile-match D_ref's attacker logits | nonmember: −log(1−h)

    def __post_init__(self) -> None:
        if self.harmonization not in HARMONIZATION_MODES:
            raise ValueError(f"harmonization must be one of {HARMONIZATION_MODES}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError("optimizer must be 'sgd' or 'adamw'")
        if self.forget_loss not in ("match", "nonmember"):
            raise ValueError("forget_loss must be 'match' or 'nonmember'")
        if self.stop_target not in ("original", "current"):
            raise ValueError("stop_target must be 'original' or 'current'")
        if self.stop_rule not in ("attacker", "none"):
            raise ValueError("stop_rule must be 'attacker' or 'none'")
        if not self.attackers:
            raise ValueError("LTU needs at least one attacker")
        if self.holdout_attacker and len(self.attackers) < 2:
            raise ValueError("holdout_attacker needs at least two attackers")
        if self.batch_size < 1 or self.max_passes <= 0 or self.lr <= 0 or self.inner_lr <= 0:
            raise ValueError("batch_size, max_passes, lr and inner_lr must be positive")


# --- Gradient Harmonization -------------------------------------------------------------------


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _project_pair(
    g_r: Sequence[torch.Tensor], g_f: Sequence[torch.Tensor], one_sided: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor], bool]:
    dot = _dot(g_r, g_f)
    if dot >= 0:
        return list(g_r), list(g_f), False
    nr2, nf2 = _dot(g_r, g_r).clamp_min(1e-20), _dot(g_f, g_f).clamp_min(1e-20)
    # Both projections use the original vectors, so the result does not depend on the order.
    new_f = [f - (dot / nr2) * r for r, f in zip(g_r, g_f)]
    new_r = list(g_r) if one_sided else [r - (dot / nf2) * f for r, f in zip(g_r, g_f)]
    return new_r, new_f, True


def harmonize(
    g_r: Sequence[torch.Tensor], g_f: Sequence[torch.Tensor], mode: str = "global"
) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Project conflicting remembering/forgetting gradients; returns (g_r', g_f', #conflicts).

    global: one projection over all parameters as a single vector; per_layer: each parameter
    tensor separately; one_sided: global, but only g_f is projected (remembering is never
    changed); none: unchanged.
    """
    if mode == "none":
        return list(g_r), list(g_f), 0
    if mode in ("global", "one_sided"):
        new_r, new_f, conflict = _project_pair(g_r, g_f, one_sided=mode == "one_sided")
        return new_r, new_f, int(conflict)
    if mode == "per_layer":
        out_r, out_f, conflicts = [], [], 0
        for r, f in zip(g_r, g_f):
            (nr,), (nf,), conflict = _project_pair([r], [f], one_sided=False)
            out_r.append(nr)
            out_f.append(nf)
            conflicts += int(conflict)
        return out_r, out_f, conflicts
    raise ValueError(f"unknown harmonization mode {mode!r}")


# --- losses -----------------------------------------------------------------------------------


def forgetting_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    attackers: Sequence[Attacker],
    reference_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """How member-like a batch looks to the attackers; minimising it forgets.

    Without `reference_logits`: mean over attackers of −log(1 − h_k), which pushes every sample
    towards "non-member". With `reference_logits` ([K, n_ref], the attackers' logits on D_ref,
    detached): quantile matching — the batch's sorted attacker logits are compared with the same
    quantiles of D_ref's, and only samples more member-like than their quantile are pushed. The
    forget set then takes the *distribution* of unseen data (a few hard samples forgotten, the
    typical ones still confident, as Retrain would have them) instead of every sample being
    driven to low confidence, which damages the shared features.
    """
    probs = logits.softmax(1)
    if reference_logits is None:
        # −log(1 − sigmoid(z)) = softplus(z), stable where h_k is close to 1.
        return torch.stack([F.softplus(a.logits(probs, labels)).mean() for a in attackers]).mean()
    b = len(labels)
    positions = (torch.arange(b, dtype=reference_logits.dtype, device=logits.device) + 0.5) / b
    losses = []
    for k, a in enumerate(attackers):
        z = a.logits(probs, labels).sort().values  # [b] ascending
        target = torch.quantile(reference_logits[k], positions)  # [b] ascending
        losses.append(F.relu(z - target).mean())
    return torch.stack(losses).mean()


@torch.no_grad()
def member_score(post: Posteriors, attackers: Sequence[Attacker]) -> float:
    """Mean member probability the attackers give a set."""
    return float(torch.stack([a(post.probs, post.labels).mean() for a in attackers]).mean())


@dataclass(frozen=True)
class _Critic:
    """The forgetting task's judges: some attackers and, for quantile matching, D_ref's logits."""

    attackers: Sequence[Attacker]
    reference_logits: torch.Tensor | None  # [K, n_ref] or None (non-member loss)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return forgetting_loss(logits, labels, self.attackers, self.reference_logits)

    def without(self, k: int) -> _Critic:
        """The same critic with attacker k held out."""
        keep = [i for i in range(len(self.attackers)) if i != k]
        ref = None if self.reference_logits is None else self.reference_logits[keep]
        return _Critic([self.attackers[i] for i in keep], ref)


@register_method("ltu", test_params=dict(max_passes=1.0, batch_size=4, attacker_steps=20))
class LTU(UnlearningMethod):
    """LTU: meta-learned unlearning with MI-attacker feedback and gradient harmonization."""

    Config = LTUConfig

    def unlearn(self, task: UnlearningTask, hooks: RunHooks) -> tuple[nn.Module, dict[str, Any]]:
        cfg: LTUConfig = self.config
        device = task.device
        generator = torch.Generator().manual_seed(task.seed)

        # MI attackers on the original model: members = D̂_r, non-members = D_ref.
        hooks.progress("training_attackers", 0, 1)
        model = working_copy(task)
        members = predict(model, task.retain_subset, device=device)
        nonmembers = predict(model, task.reference, device=device)
        attackers = [
            a.to(device)
            for a in train_attackers(
                members, nonmembers, features=cfg.attackers, seed=task.seed, steps=cfg.attacker_steps
            )
        ]
        hooks.progress("training_attackers", 1, 1)

        x_f, y_f = (t.to(device) for t in task.forget.tensors())  # D_f: [n_f, C, H, W], [n_f]
        x_r, y_r = (t.to(device) for t in task.retain_subset.tensors())  # D̂_r
        x_ref, y_ref = (t.to(device) for t in task.reference.tensors())  # D_ref, never trained on
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params.values(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        b_f = max(1, min(cfg.batch_size, len(y_f) // 2))
        b_r = max(1, min(cfg.batch_size, len(y_r) // 2))
        total = max(1, int(round(cfg.max_passes * len(y_f) / (2 * b_f))))

        @torch.no_grad()
        def attacker_view(x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
            # (mean member score, attacker logits [K, n]) of a set under the current θ.
            post = Posteriors(model(x).softmax(1), y)
            return member_score(post, attackers), torch.stack([a.logits(post.probs, post.labels) for a in attackers])

        score_f0, _ = attacker_view(x_f, y_f)
        score_ref0, ref_logits0 = attacker_view(x_ref, y_ref)
        stop_reason, steps, conflicts = "max_passes", 0, 0
        score_f, score_ref, ref_logits = score_f0, score_ref0, ref_logits0
        for step in range(total):
            if step:
                score_f, _ = attacker_view(x_f, y_f)
                if cfg.stop_target == "current":
                    score_ref, ref_logits = attacker_view(x_ref, y_ref)
            # A fixed target (θ_o's view of unseen data) by default: under the current θ every
            # sample looks less member-like as the model is perturbed, so that target recedes.
            if cfg.stop_rule == "attacker" and score_f <= score_ref + cfg.stop_margin:
                stop_reason = "looks_unseen"
                break
            hooks.check_cancelled()
            critic = _Critic(attackers, ref_logits if cfg.forget_loss == "match" else None)
            support_critic = critic.without(step % len(attackers)) if cfg.holdout_attacker else critic
            # Disjoint support and query batches for both tasks.
            perm_f = torch.randperm(len(y_f), generator=generator)
            perm_r = torch.randperm(len(y_r), generator=generator)
            s_f, q_f = perm_f[:b_f], perm_f[b_f : 2 * b_f]
            s_r, q_r = perm_r[:b_r], perm_r[b_r : 2 * b_r]
            if len(q_f) == 0:  # a single-sample forget set: support and query coincide
                q_f = s_f
            if len(q_r) == 0:
                q_r = s_r
            g_r, g_f = self._task_gradients(
                model,
                params,
                support_critic,
                critic,
                (x_r[s_r], y_r[s_r]),
                (x_r[q_r], y_r[q_r]),
                (x_f[s_f], y_f[s_f]),
                (x_f[q_f], y_f[q_f]),
            )
            g_r, g_f, n_conflicts = harmonize(g_r, g_f, cfg.harmonization)
            conflicts += n_conflicts
            for p, a, b in zip(params.values(), g_r, g_f):
                p.grad = (a + b).detach()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params.values(), cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            hooks.progress("unlearning", steps, total)
        score_f, _ = attacker_view(x_f, y_f)
        score_ref, _ = attacker_view(x_ref, y_ref)
        model.requires_grad_(False)
        details = {
            "steps": steps,
            "max_steps": total,
            "stop_reason": stop_reason,
            "gradient_conflicts": conflicts,
            "attacker_accuracy_on_original": [round(a, 2) for a in attacker_accuracy(attackers, members, nonmembers)],
            "member_score_forget": {"before": round(score_f0, 4), "after": round(score_f, 4)},
            "member_score_reference": {"before": round(score_ref0, 4), "after": round(score_ref, 4)},
        }
        return model, details

    def _task_gradients(
        self,
        model: nn.Module,
        params: dict[str, torch.Tensor],
        support_critic: _Critic,
        query_critic: _Critic,
        s_r: tuple[torch.Tensor, torch.Tensor],
        q_r: tuple[torch.Tensor, torch.Tensor],
        s_f: tuple[torch.Tensor, torch.Tensor],
        q_f: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """g_r and g_f with respect to θ, through the meta-tune step unless `meta` is off."""
        cfg: LTUConfig = self.config
        theta = list(params.values())

        def losses(weights, rem, fgt, critic: _Critic) -> tuple[torch.Tensor, torch.Tensor]:
            # One forward over [remember ; forget]: BatchNorm is frozen, so batching them is exact.
            logits = functional_call(model, weights, (torch.cat([rem[0], fgt[0]]),))
            n = len(rem[1])
            return F.cross_entropy(logits[:n], rem[1]), critic.loss(logits[n:], fgt[1])

        rem_s, fgt_s = losses(params, s_r, s_f, support_critic)
        if cfg.meta:
            # Meta-tune: θ' stays a function of θ (create_graph) so the query loss can
            # differentiate through it. No deepcopy anywhere: a copied module is cut from θ's
            # graph and its meta-gradient is silently zero.
            inner = torch.autograd.grad(
                rem_s + cfg.lam * fgt_s, theta, create_graph=cfg.second_order, retain_graph=True
            )
            fast = {n: p - cfg.inner_lr * g for (n, p), g in zip(params.items(), inner)}
            rem_q, fgt_q = losses(fast, q_r, q_f, query_critic)
        else:
            # Ablation: the same batches and weights, but all evaluated at θ (no look-ahead).
            rem_q, fgt_q = losses(params, q_r, q_f, query_critic)
        remember = rem_s + cfg.gamma * rem_q
        forget = cfg.lam * (fgt_s + cfg.gamma * fgt_q)
        g_r = torch.autograd.grad(remember, theta, retain_graph=True)
        g_f = torch.autograd.grad(forget, theta)
        return g_r, g_f

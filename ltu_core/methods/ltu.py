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

from ltu_core.errors import MethodConfigError
from ltu_core.methods.base import RunHooks, UnlearningMethod, UnlearningTask, distill_kl, working_copy
from ltu_core.methods.registry import register_method
from ltu_core.methods.stopping import UnseenStop, outputs, split_reference
from ltu_core.mia.attackers import DEFAULT_ATTACKERS, Attacker, attacker_accuracy
from ltu_core.models.inference import Posteriors

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
    # sample: D_f should look like unseen data (attackers) | class: D_f's labels should vanish |
    # auto: class when D_f takes every sample of its labels (UnlearningTask.erased_labels).
    objective: str = "auto"
    # ce: cross-entropy on D̂_r | distill: that plus distillation to θ_o's outputs on D̂_r and on
    # the loss half of D_ref (never-seen data: it holds the model's behaviour on unseen inputs).
    remember: str = "distill"
    distill_weight: float = 2.0
    distill_temperature: float = 2.0
    # auc: stop when D_f's attacker scores rank no higher than a held-out half of D_ref's (AUC
    # <= stop_auc) under the *current* model, attackers refit every `refresh_every` steps; a
    # global loss of confidence moves both sets alike and cannot trigger it. attacker: the mean
    # member score on D_f falls to θ_o's score on D_ref + stop_margin. none: run max_passes.
    stop_rule: str = "attacker"
    stop_auc: float = 0.5
    refresh_every: int = 5
    stop_margin: float = -0.04
    # attacker rule only. original: D_ref's score under θ_o, a fixed target | current: under θ.
    stop_target: str = "original"
    forget_loss: str = "match"  # match: quantile-match D_ref's attacker logits | nonmember: −log(1−h)
    # class objective: stop once accuracy (%) on D_f and on the class's held-out samples is at most this
    class_stop_accuracy: float = 0.0

    def __post_init__(self) -> None:
        choices = {
            "harmonization": HARMONIZATION_MODES,
            "optimizer": ("sgd", "adamw"),
            "forget_loss": ("match", "nonmember"),
            "stop_target": ("original", "current"),
            "stop_rule": ("auc", "attacker", "none"),
            "objective": ("auto", "sample", "class"),
            "remember": ("ce", "distill"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}")
        if not self.attackers:
            raise ValueError("LTU needs at least one attacker")
        if self.holdout_attacker and len(self.attackers) < 2:
            raise ValueError("holdout_attacker needs at least two attackers")
        if self.batch_size < 1 or self.max_passes <= 0 or self.lr <= 0 or self.inner_lr <= 0:
            raise ValueError("batch_size, max_passes, lr and inner_lr must be positive")
        if self.distill_weight < 0 or self.distill_temperature <= 0 or self.refresh_every < 0:
            raise ValueError("distill_weight and refresh_every must be >= 0, distill_temperature > 0")
        if not 0.0 <= self.stop_auc <= 1.0 or not 0.0 <= self.class_stop_accuracy <= 100.0:
            raise ValueError("stop_auc must lie in [0, 1] and class_stop_accuracy in [0, 100]")


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


@dataclass(frozen=True)
class _ClassCritic:
    """Whole-class forgetting: −log(1 − p(erased labels)), which keeps pulling until they are gone.

    The attackers' "looks unseen" saturates early on a class (an unseen sample of a *learned*
    class is what they were shown as non-member); this loss is zero only when the model gives the
    erased labels no probability, as a Retrain without them does.
    """

    keep: torch.Tensor  # [C] bool, True for labels that stay

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (logits.logsumexp(1) - logits[:, self.keep].logsumexp(1)).mean()

    def without(self, k: int) -> _ClassCritic:
        return self


@dataclass(frozen=True)
class _Remember:
    """A remembering batch: `n_ce` labelled rows of D̂_r first, then distillation-only rows."""

    x: torch.Tensor
    y: torch.Tensor  # [n_ce]
    teacher: torch.Tensor | None  # [len(x), C] θ_o's logits, or None (cross-entropy only)


def _objective(cfg: LTUConfig, task: UnlearningTask, y_f: torch.Tensor) -> str:
    """`class` for a whole-label request (auto) or when asked for, else `sample`."""
    erased = set(task.erased_labels)
    if cfg.objective == "class" and not erased:
        raise MethodConfigError("the class objective needs a forget set that takes whole labels")
    if cfg.objective != "auto":
        return cfg.objective
    return "class" if erased and set(y_f.tolist()) <= erased else "sample"


@dataclass(frozen=True)
class _ReferenceParts:
    """D_ref as LTU reads it.

    `fit` is the loss half: the attackers' non-members, the quantile-matching target and the
    distillation rows. `stop` is the half only the AUC rule reads (`fit` itself when the rule is
    another). `held_class` is D_ref's samples of the erased labels, which only the class stop reads.
    """

    fit: tuple[torch.Tensor, torch.Tensor]
    stop: tuple[torch.Tensor, torch.Tensor]
    held_class: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def of(
        cls, task: UnlearningTask, keep: torch.Tensor, *, split: bool, generator: torch.Generator
    ) -> _ReferenceParts:
        x, y = (t.to(task.device) for t in task.reference.tensors())
        of_erased = ~keep[y]
        usable = torch.nonzero(~of_erased).squeeze(1)
        if split and len(usable) >= 4:
            fit_pos, stop_pos = split_reference(len(usable), generator)
            fit, stop = usable[fit_pos.to(task.device)], usable[stop_pos.to(task.device)]
        else:
            fit = stop = usable
        return cls((x[fit], y[fit]), (x[stop], y[stop]), (x[of_erased], y[of_erased]))


def _support_query(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint seeded support and query positions of `size` each (the query repeats the support
    when n < 2·size: a single-sample forget set). size 0 draws nothing."""
    if size == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    perm = torch.randperm(n, generator=generator)
    support, query = perm[:size], perm[size : 2 * size]
    return support, (query if len(query) == size else support)


@register_method("ltu", test_params=dict(max_passes=1.0, batch_size=4, attacker_steps=20))
class LTU(UnlearningMethod):
    """LTU: meta-learned unlearning with MI-attacker feedback and gradient harmonization."""

    Config = LTUConfig

    def unlearn(self, task: UnlearningTask, hooks: RunHooks) -> tuple[nn.Module, dict[str, Any]]:
        cfg: LTUConfig = self.config
        device = task.device
        generator = torch.Generator().manual_seed(task.seed)
        model = working_copy(task)
        x_f, y_f = (t.to(device) for t in task.forget.tensors())  # D_f: [n_f, C, H, W], [n_f]
        x_r, y_r = (t.to(device) for t in task.retain_subset.tensors())  # D̂_r
        objective = _objective(cfg, task, y_f)
        keep = torch.ones(task.arch.num_classes, dtype=torch.bool, device=device)
        keep[list(task.erased_labels)] = False  # the labels that stay
        ref = _ReferenceParts.of(
            task, keep, split=cfg.stop_rule == "auc" and objective == "sample", generator=generator
        )
        x_fit, y_fit = ref.fit
        x_held, y_held = ref.held_class

        teacher_r = teacher_fit = None
        if cfg.remember == "distill":
            mask = torch.where(keep, 0.0, float("-inf"))  # θ_o without the erased labels, renormalised
            teacher_r, teacher_fit = outputs(model, x_r) + mask, outputs(model, x_fit) + mask

        # The attackers (and, for the AUC rule, the stop) under the current θ; the legacy rule
        # keeps the attackers fitted on θ_o and compares with θ_o's score on D_ref.
        judge = UnseenStop(
            (x_r, y_r),
            ref.fit,
            ref.stop,
            (x_f, y_f),
            threshold=cfg.stop_auc,
            refresh_every=cfg.refresh_every,
            features=cfg.attackers,
            attacker_steps=cfg.attacker_steps,
            seed=task.seed,
        )
        attacker_acc: list[float] = []
        if objective == "sample":
            hooks.progress("training_attackers", 0, 1)
            judge.refit(model)
            members = Posteriors(outputs(model, x_r).softmax(1), y_r)
            nonmembers = Posteriors(outputs(model, x_fit).softmax(1), y_fit)
            attacker_acc = attacker_accuracy(judge.attackers, members, nonmembers)
            hooks.progress("training_attackers", 1, 1)

        @torch.no_grad()
        def reference_logits() -> torch.Tensor:
            probs = outputs(model, x_fit).softmax(1)
            return torch.stack([a.logits(probs, y_fit) for a in judge.attackers])

        @torch.no_grad()
        def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
            return float((outputs(model, x).argmax(1) == y).float().mean()) * 100.0 if len(y) else 0.0

        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params.values(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        b_f = max(1, min(cfg.batch_size, len(y_f) // 2))
        b_r = max(1, min(cfg.batch_size, len(y_r) // 2))
        # Drawn even without distillation: the seeded batch stream stays that of the benchmarked runs.
        b_d = max(1, min(cfg.batch_size, len(y_fit) // 2)) if len(y_fit) else 0
        total = max(1, int(round(cfg.max_passes * len(y_f) / (2 * b_f))))

        trace: dict[str, list[float]] = {}
        target_score = float(judge.scores(model, x_fit, y_fit).mean()) if objective == "sample" else 0.0

        def should_stop() -> bool:
            if cfg.stop_rule == "none":
                return False
            if objective == "class":
                acc_f, acc_held = accuracy(x_f, y_f), accuracy(x_held, y_held)
                trace.setdefault("forget_accuracy", []).append(round(acc_f, 2))
                return acc_f <= cfg.class_stop_accuracy and (not len(y_held) or acc_held <= cfg.class_stop_accuracy)
            if cfg.stop_rule == "auc":
                return judge(model)
            score_f = float(judge.scores(model, x_f, y_f).mean())
            trace.setdefault("member_score_forget", []).append(round(score_f, 4))
            return score_f <= target_score + cfg.stop_margin

        ref_logits = reference_logits() if objective == "sample" else None
        stop_reason, steps, conflicts = "max_passes", 0, 0
        for step in range(total):
            if should_stop():
                stop_reason = "looks_unseen" if objective == "sample" else "class_gone"
                break
            hooks.check_cancelled()
            if objective == "class":
                critic: _Critic | _ClassCritic = _ClassCritic(keep)
            else:
                if cfg.stop_rule == "auc" or cfg.stop_target == "current":
                    ref_logits = reference_logits()
                critic = _Critic(judge.attackers, ref_logits if cfg.forget_loss == "match" else None)
            support_critic = critic.without(step % len(cfg.attackers)) if cfg.holdout_attacker else critic
            # Disjoint support and query batches for both tasks (and for the distillation rows).
            s_f, q_f = _support_query(len(y_f), b_f, generator)
            s_r, q_r = _support_query(len(y_r), b_r, generator)
            s_d, q_d = _support_query(len(y_fit), b_d, generator)

            def remember(r: torch.Tensor, d: torch.Tensor) -> _Remember:
                if teacher_r is None:
                    return _Remember(x_r[r], y_r[r], None)
                return _Remember(torch.cat([x_r[r], x_fit[d]]), y_r[r], torch.cat([teacher_r[r], teacher_fit[d]]))

            g_r, g_f = self._task_gradients(
                model,
                params,
                support_critic,
                critic,
                remember(s_r, s_d),
                remember(q_r, q_d),
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
        model.requires_grad_(False)
        details: dict[str, Any] = {
            "objective": objective,
            "steps": steps,
            "max_steps": total,
            "stop_reason": stop_reason,
            "gradient_conflicts": conflicts,
            # the last values the stop rule read (run records keep details one level deep)
            **{f"stop_{k}_trace": v[-5:] for k, v in {**trace, "auc": judge.trace}.items() if v},
            "accuracy_forget": round(accuracy(x_f, y_f), 2),
        }
        if attacker_acc:
            details["attacker_accuracy_on_original"] = [round(a, 2) for a in attacker_acc]
        return model, details

    def _task_gradients(
        self,
        model: nn.Module,
        params: dict[str, torch.Tensor],
        support_critic: _Critic | _ClassCritic,
        query_critic: _Critic | _ClassCritic,
        s_r: _Remember,
        q_r: _Remember,
        s_f: tuple[torch.Tensor, torch.Tensor],
        q_f: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """g_r and g_f with respect to θ, through the meta-tune step unless `meta` is off."""
        cfg: LTUConfig = self.config
        theta = list(params.values())

        def losses(weights, rem: _Remember, fgt, critic) -> tuple[torch.Tensor, torch.Tensor]:
            # One forward over [remember ; forget]: BatchNorm is frozen, so batching them is exact.
            logits = functional_call(model, weights, (torch.cat([rem.x, fgt[0]]),))
            n_ce, n = len(rem.y), len(rem.x)
            loss_r = F.cross_entropy(logits[:n_ce], rem.y)
            if rem.teacher is not None:
                loss_r = loss_r + cfg.distill_weight * distill_kl(logits[:n], rem.teacher, cfg.distill_temperature)
            return loss_r, critic.loss(logits[n:], fgt[1])

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

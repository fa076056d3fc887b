"""Membership inference: posterior features, the SVC efficacy protocol, differentiable attackers.

The erasure audit that decides a verdict lives in `ltu_core.audit`.
"""

from ltu_core.mia.attackers import (
    ATTACKER_FEATURES,
    DEFAULT_ATTACKERS,
    Attacker,
    attacker_accuracy,
    attacker_scores,
    train_attackers,
)
from ltu_core.mia.features import FEATURES
from ltu_core.mia.svc import MIA_DIRECTION, MIA_FEATURES, SvcAttacker, fit_svc_attackers, svc_mia_efficacy

__all__ = [
    "ATTACKER_FEATURES",
    "DEFAULT_ATTACKERS",
    "FEATURES",
    "MIA_DIRECTION",
    "MIA_FEATURES",
    "Attacker",
    "SvcAttacker",
    "attacker_accuracy",
    "attacker_scores",
    "fit_svc_attackers",
    "svc_mia_efficacy",
    "train_attackers",
]

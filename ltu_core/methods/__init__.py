"""Unlearning methods behind one registry. Importing this package registers every method file."""

from ltu_core.methods import bs, ft, ga, l1_sparse, ltu, retrain, rl, salun, scrub  # noqa: F401  (registration side effect)
from ltu_core.methods.base import RunHooks, UnlearningMethod, UnlearningResult, UnlearningTask
from ltu_core.methods.registry import (
    create_method,
    create_test_method,
    list_methods,
    method_entry,
    register_method,
)

__all__ = [
    "RunHooks",
    "UnlearningMethod",
    "UnlearningResult",
    "UnlearningTask",
    "create_method",
    "create_test_method",
    "list_methods",
    "method_entry",
    "register_method",
]

"""Step 3, unlearn: run the request's method on the prepared task, with progress and cancellation hooks."""

from __future__ import annotations

from ltu_core.methods import RunHooks, UnlearningMethod, UnlearningResult
from worker.attempt import Attempt
from worker.steps.prepare import Prepared


def run(attempt: Attempt, prepared: Prepared, method: UnlearningMethod | None = None) -> UnlearningResult:
    """The unlearned model and the method's record (`method` defaults to the request's own)."""
    hooks = RunHooks(progress=attempt.progress, should_cancel=attempt.should_cancel)
    return (method or prepared.method).run(prepared.task(), hooks)

"""Schemathesis against the OpenAPI document, in process: no input gives a 5xx, and every answer has a
documented status, its documented media type and a body that matches the documented schema.

Every operation is fuzzed in both modes (valid inputs, and inputs that break the schema), the multipart
uploads included: a random archive or weights file must be a 4xx, never a 500. The dashboard's routes
are in the document too (HTML pages, sign-in and sign-out); test_dashboard.py covers their cookies.
Generation is derandomised and bounded (LTU_FUZZ_EXAMPLES per operation and mode, default 40),
so a run is repeatable and takes well under a minute on two cores; raise it to fuzz longer.

Hypothesis also draws, per case, text that no schema's string strategy produces on its own: a NUL
character or a lone UTF-16 surrogate put into one of the strings the case sends (`poison`). A
surrogate goes only into JSON bodies (escaped as `\\ud800`): no URL or multipart field can carry one.
"""

from __future__ import annotations

import os
import zlib

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = int(os.environ.get("LTU_FUZZ_EXAMPLES", "40"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
NUL, SURROGATES = "\x00", ("\ud800", "\udfff")


@pytest.fixture()
def fuzzed(completed, artifacts):
    """The embedded API with a completed request, and the real ids the fuzzer may aim at."""
    service = completed.service
    ids = {
        "model_id": completed.model.id,
        "dataset_id": completed.model.dataset_id,
        "request_id": completed.request.id,
        "number": 2,
        "subject_ids": [artifacts.subject_with_train_samples(1)],
    }
    return service, ids


def aim(case, ids: dict) -> None:
    """Point about half of the cases at real resources (chosen by a hash of the generated value, so runs
    repeat): random ids alone would only ever meet the 404 paths."""

    def hit(value) -> bool:
        return zlib.crc32(repr(value).encode()) % 2 == 0

    for where in (case.path_parameters, case.body):  # path ids, JSON fields and form fields alike
        if isinstance(where, dict):
            for name, value in where.items():
                if name in ids and hit(value):
                    where[name] = ids[name]


def poison(case, text: str, slot: int) -> None:
    """Put `text` (a NUL or a lone surrogate) into the `slot`-th string the case sends, counted round its strings."""
    json_body = isinstance(case.body, (dict, list)) and "json" in (case.media_type or "")
    containers = [c for c in (case.path_parameters, case.query) if isinstance(c, dict)]
    if isinstance(case.body, dict) and not json_body:
        containers.append(case.body)  # form fields: top-level values only
    if text in SURROGATES:
        containers = []  # URLs and multipart fields are UTF-8: a lone surrogate cannot be sent there
    if json_body:
        containers.extend(_json_containers(case.body))
    slots = [
        (c, k)
        for c in containers
        for k, v in (c.items() if isinstance(c, dict) else enumerate(c))
        if isinstance(v, str)
    ]
    if slots:
        container, key = slots[slot % len(slots)]
        container[key] += text


def _json_containers(value) -> list:
    found, stack = [], [value]
    while stack:
        node = stack.pop()
        if isinstance(node, (dict, list)):
            found.append(node)
            stack.extend(node.values() if isinstance(node, dict) else node)
    return found


def test_no_input_gives_a_server_error_or_an_undocumented_answer(fuzzed):
    # Hypothesis is driven here rather than through schemathesis' pytest plugin, whose lazy fixture
    # loader reads a pytest node attribute that pytest 9 removed.
    service, ids = fuzzed
    schema = schemathesis.openapi.from_asgi("/openapi.json", service.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(
                case=operation.as_strategy(generation_mode=mode),
                text=st.sampled_from([None, NUL, *SURROGATES]),
                slot=st.integers(min_value=0, max_value=1000),
            )
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.generate, Phase.shrink],
            )
            def fuzz(case, text, slot) -> None:
                aim(case, ids)
                if text is not None:
                    poison(case, text, slot)
                case.call_and_validate(headers=service.client.headers, checks=CHECKS)

            try:
                fuzz()
            except Unsatisfiable:  # an operation without inputs has no invalid ones
                assert mode is GenerationMode.NEGATIVE, operation.label
            # A failed check, or the app's own exception (the in-process client re-raises it): every operation
            # is fuzzed to the end and all failures are reported together.
            except (Exception, FailureGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)

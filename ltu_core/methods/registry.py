"""The one door to every unlearning method: `register_method` / `create_method`.

Like timm's model registry: each method lives in its own file, registers itself under a
snake_case name with a tiny `test` parameter set, and callers build it by name from plain
parameters (CLI flags, API JSON), which are checked against the method's config dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ltu_core.errors import MethodConfigError, UnknownMethodError
from ltu_core.methods.base import UnlearningMethod


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its class and the parameters of its tiny test variant."""

    name: str
    cls: type[UnlearningMethod]
    test_params: Mapping[str, Any]
    summary: str


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(
    name: str, *, test_params: Mapping[str, Any]
) -> Callable[[type[UnlearningMethod]], type[UnlearningMethod]]:
    """Class decorator: register a method under `name` with its tiny `test_*` parameters."""

    def wrap(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else name
        _REGISTRY[name] = MethodEntry(name, cls, dict(test_params), summary)
        return cls

    return wrap


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def method_entry(name: str) -> MethodEntry:
    """The registry entry for `name`, or UnknownMethodError listing what exists."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown unlearning method {name!r}; available: {', '.join(list_methods())}"
        ) from None


def build_config(config_cls: type, params: Mapping[str, Any]) -> Any:
    """Config dataclass from plain values; unknown names and wrong types are MethodConfigError."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise MethodConfigError(f"unknown parameter(s) {unknown} for {config_cls.__name__}; valid: {sorted(fields)}")
    defaults = config_cls()
    values = {}
    for key, value in params.items():
        default = getattr(defaults, key)
        values[key] = _coerce(key, value, default)
    try:
        return dataclasses.replace(defaults, **values)
    except ValueError as exc:  # the config's own range checks
        raise MethodConfigError(str(exc)) from exc


def _coerce(key: str, value: Any, default: Any) -> Any:
    def bad() -> MethodConfigError:
        return MethodConfigError(f"parameter {key!r} must be like {default!r}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad()
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad()
        return value
    if isinstance(default, tuple):
        kind = type(default[0]) if default else object
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, kind) for v in value):
            raise bad()
        return tuple(value)
    return value


def create_method(name: str, **params: Any) -> UnlearningMethod:
    """Build the method `name` with `params` overriding its config defaults."""
    entry = method_entry(name)
    return entry.cls(build_config(entry.cls.Config, params))


def create_test_method(name: str) -> UnlearningMethod:
    """The method's tiny variant: seconds on a CPU, for the test suite."""
    entry = method_entry(name)
    return create_method(name, **entry.test_params)

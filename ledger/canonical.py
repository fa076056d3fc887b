"""Canonical JSON (RFC 8785, JCS): one byte string per value, so hashes and signatures reproduce.

Rules: object keys sorted by their UTF-16 code units; no whitespace; UTF-8; strings escaped as
JSON requires and nothing more; numbers as ECMAScript prints them (shortest round-trip digits,
`1.0` → `1`, `1e-7`, `1e+21`); integers only within ±2^53 (I-JSON), floats only finite.
Two extensions for the ledger's values, both rendered as strings: datetimes (timezone-aware) as
UTC `YYYY-MM-DDTHH:MM:SS.ffffffZ`, always with six fractional digits; tuples as arrays.
Any other type is a TypeError, so nothing is ever rendered by accident.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from json.encoder import encode_basestring  # JSON string escaping, non-ASCII kept (C-accelerated)
from typing import Any

MAX_SAFE_INTEGER = 2**53


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a JSON-ready value (see the module docstring)."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def timestamp(moment: datetime) -> str:
    """A timezone-aware datetime as canonical UTC text (microseconds, `Z`)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: the canonical form needs a timezone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write(value: Any, out: list[str]) -> None:
    if value is None or isinstance(value, bool):
        out.append({None: "null", True: "true", False: "false"}[value])
    elif isinstance(value, str):
        out.append(encode_basestring(value))
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value} is outside ±2^53 and has no canonical JSON form")
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, datetime):
        out.append(f'"{timestamp(value)}"')
    elif isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("canonical JSON object keys must be strings")
        out.append("{")
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be"))):
            if i:
                out.append(",")
            out.append(encode_basestring(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def _number(value: float) -> str:
    """ECMAScript Number::toString of a finite double (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(value):
        raise ValueError("NaN and infinities have no canonical JSON form")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, which is what ECMAScript prints.
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    k, n = len(digits), len(digits) + int(exponent)  # n: position of the decimal point
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        mantissa = digits[0] + (f".{digits[1:]}" if k > 1 else "")
        text = f"{mantissa}e{'+' if n > 0 else '-'}{abs(n - 1)}"
    return sign + text

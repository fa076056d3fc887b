"""What every settings section shares: the `LTU_` naming, the one reader of an environment mapping, and
the translation of pydantic's ValidationError into a one-line ConfigError that names the variable.

Sections are pydantic-settings models whose only source is their keyword arguments, so building one
(tests, `Settings.build`) never reads the environment; `read_environ` is the one function that does,
and only `Settings.from_env` calls it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ledger.errors import ConfigError

ENV_PREFIX = "LTU_"
# Values never echoed in an error message: secrets, and URLs that may carry a password.
UNECHOED = frozenset({"secret_key", "admin_api_key", "database_url", "broker_url"})
# The same values may be read from a file named by `LTU_<FIELD>_FILE` (Docker and Kubernetes secrets),
# which keeps them out of the environment that `docker inspect` and /proc/<pid>/environ show.
FILE_SUFFIX = "_FILE"


def env_name(field_name: str) -> str:
    """The environment variable of a field: `audit_alpha` → `LTU_AUDIT_ALPHA`."""
    return ENV_PREFIX + field_name.upper()


class Section(BaseSettings):
    """Base of the settings sections: frozen, unknown names refused, defaults validated too."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", validate_default=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments only: a stray LTU_* variable in the shell that runs the tests must not
        # leak into settings they build; Settings.from_env passes the environment's values explicitly.
        return (init_settings,)


def read_environ(section: type[Section], environ: Mapping[str, str]) -> dict[str, str]:
    """The section's `LTU_<FIELD>` values set in `environ`, keyed by field name (an empty value counts as unset).

    A secret's `LTU_<FIELD>_FILE` names a file holding it instead; setting both is a ConfigError.
    """
    values = {}
    for name in section.model_fields:
        var = env_name(name)
        path = environ.get(var + FILE_SUFFIX) if name in UNECHOED else None
        if path and environ.get(var):
            raise ConfigError(f"{var} and {var}{FILE_SUFFIX} are both set: keep one")
        if path:
            values[name] = read_secret_file(var + FILE_SUFFIX, Path(path))
        elif environ.get(var):
            values[name] = environ[var]
    return values


def read_secret_file(var: str, path: Path) -> str:
    """The stripped content of the secret file `var` names; a ConfigError says why it cannot be read."""
    try:
        value = path.read_text().strip()
    except PermissionError:
        raise ConfigError(f"{var}: {path} is not readable by uid {os.getuid()}: {_ownership(path)}") from None
    except OSError as exc:
        raise ConfigError(f"{var}: cannot read {path} ({exc.strerror or exc})") from None
    if not value:
        raise ConfigError(f"{var}: {path} is empty")
    return value


def _ownership(path: Path) -> str:
    """The file's mode and owner, and the two ways to fix access, for the unreadable-secret message."""
    try:
        info = path.stat()
        found = f"it is mode {stat.S_IMODE(info.st_mode):04o}, owned by uid {info.st_uid} gid {info.st_gid}"
    except OSError:
        found = "its directory cannot be searched"
    return (
        f"{found}; start the container as root so that its entrypoint copies /run/secrets for the service's "
        "user (docker-compose.yml does), or give that uid read access to the file"
    )


def validated(model: type[BaseModel], values: Mapping[str, Any]) -> Any:
    """`model(**values)`, with a ValidationError turned into one ConfigError line naming each bad variable."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise config_error(exc, model) from None


def config_error(exc: ValidationError, model: type[BaseModel]) -> ConfigError:
    """One line: `LTU_X must be <requirement> (got 'value')` per bad field, joined by '; '."""
    messages: dict[str, str] = {}  # field → first message: a union type reports one error per member
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        if name in messages:
            continue
        field = model.model_fields.get(name)
        if error["type"] == "value_error":  # our validators' own words, "must ..."
            text = str(error["ctx"]["error"])
        elif field is not None:
            text = "must be " + requirement(field)
        else:
            text = error["msg"]
        got = "" if not name or name in UNECHOED else f" (got {error['input']!r})"
        messages[name] = f"{env_name(name) + ' ' if name else ''}{text}{got}"
    return ConfigError("; ".join(messages.values()))


def requirement(field: FieldInfo) -> str:
    """What a field accepts, in words, from its type and bounds: 'a finite number >= 0 and <= 876000'."""
    kind = {int: "an integer", float: "a finite number", bool: "true or false"}.get(field.annotation, "a valid value")
    words = {
        annotated_types.Ge: (">=", "ge"),
        annotated_types.Gt: (">", "gt"),
        annotated_types.Le: ("<=", "le"),
        annotated_types.Lt: ("<", "lt"),
    }
    bounds = [
        f"{symbol} {_number(getattr(constraint, attr))}"
        for constraint in field.metadata
        for cls, (symbol, attr) in words.items()
        if isinstance(constraint, cls)
    ]
    return " ".join([kind, " and ".join(bounds)]).strip()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)

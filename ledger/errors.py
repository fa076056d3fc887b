"""Domain errors of the ledger; the API maps each class to one HTTP status (api/errors.py)."""


class LedgerError(Exception):
    """Base class. `code` is a stable machine-readable name, the message is for people."""

    code = "ledger_error"


class NotFound(LedgerError):
    """The resource does not exist for this tenant (never says whether another tenant has it)."""

    code = "not_found"


class InvalidInput(LedgerError):
    """Well-formed input that the ledger cannot accept (e.g. a subject with no samples)."""

    code = "invalid_input"


class AlreadyErased(InvalidInput):
    """A subject or sample named by a new request was erased from the model by an earlier one."""

    code = "already_erased"


class IdempotencyConflict(LedgerError):
    """The Idempotency-Key was used before with a different body."""

    code = "idempotency_key_reused"


class Conflict(LedgerError):
    """The resource is in a state that forbids the operation (e.g. cancelling a finished request)."""

    code = "conflict"


class StaleBase(LedgerError):
    """The model moved to a newer version while a request was being executed on an older one."""

    code = "stale_base"


class LeaseLost(LedgerError):
    """Another execution took the request over, or it was finished meanwhile; stop writing."""

    code = "lease_lost"


class ModelBusy(LedgerError):
    """Another live run holds the model: runs on one model are serialised, so this one waits its turn."""

    code = "model_busy"


class RateLimited(LedgerError):
    """The API key's submission bucket is empty; a token is available in `retry_after` whole seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SecretMismatch(LedgerError):
    """This process's server secret does not open a tenant key: the secret was rotated while it ran."""

    code = "server_secret_mismatch"


class ConfigError(ValueError):
    """The configuration is unusable; the message names the variable to fix (one line).

    Not a LedgerError (no HTTP status): raised at start-up by ltu_settings and by the logging set-up
    (ledger.observability), so a process's entry point catches one class for both.
    """

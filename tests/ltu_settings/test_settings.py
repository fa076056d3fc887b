"""ltu_settings: every field is settable from its LTU_* variable, every bad value fails with one line
naming the variable, embedded mode needs no configuration, and nothing is read before the loader runs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from ltu_settings import ApiSettings, ConfigError, LedgerSettings, Settings, WorkerSettings, env_name
from ltu_settings.settings import SECTIONS

REPO = Path(__file__).resolve().parents[2]
POSTGRES = "postgresql+psycopg://ltu@db.invalid/ltu"
STRONG = "kZ3-q8Lw_0pVx7Rt2NbYc5He9Uj4Fs6Gd1Ma"  # as `secrets.token_urlsafe` would write it

# A valid value other than the default for every field, as its variable would spell it, and what it reads
# back as (None: the variable's value itself, or its absolute path for paths).
SAMPLES: dict[str, tuple[str, object]] = {
    "LTU_HOME": ("{tmp}/home", None),
    "LTU_DATABASE_URL": (POSTGRES, None),
    "LTU_ARTIFACTS_DIR": ("{tmp}/elsewhere", None),
    "LTU_SECRET_KEY": (STRONG, None),
    "LTU_BROKER_URL": ("redis://redis.invalid:6379/0", None),
    "LTU_CERTIFICATE_KEY_FILE": ("{tmp}/key.pem", None),
    "LTU_PURGE_GRACE_HOURS": ("0.5", 0.5),
    "LTU_PURGE_INTERVAL": ("60", 60.0),
    "LTU_ARTIFACT_SWEEP_GRACE_HOURS": ("12", 12.0),
    "LTU_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": ("true", True),
    "LTU_ADMIN_API_KEY": ("ltu_" + STRONG, None),
    "LTU_FORWARDED_ALLOW_IPS": ("10.0.0.2,10.0.0.3", None),
    "LTU_DEFAULT_METHOD": ("salun", None),
    "LTU_DUE_SOON_DAYS": ("3", 3),
    "LTU_RETRY_AFTER_SECONDS": ("5", 5),
    "LTU_RATE_LIMIT_PER_MINUTE": ("7", 7),
    "LTU_RATE_LIMIT_BURST": ("9", 9),
    "LTU_MAX_BODY_BYTES": ("4096", 4096),
    "LTU_MAX_DATASET_BYTES": ("8192", 8192),
    "LTU_MAX_WEIGHTS_BYTES": ("16384", 16384),
    "LTU_MAX_BULK_BYTES": ("32768", 32768),
    "LTU_MAX_SUBJECTS_PER_REQUEST": ("50", 50),
    "LTU_QUEUE": ("gpu-2", None),
    "LTU_AUDIT_QUEUE": ("audit-2", None),
    "LTU_DEVICE": ("cuda:1", None),
    "LTU_TORCH_THREADS": ("4", 4),
    "LTU_RETAIN_FRACTION": ("0.25", 0.25),
    "LTU_SEED": ("17", 17),
    "LTU_FALLBACK_TO_RETRAIN": ("false", False),
    "LTU_AUDIT_ALPHA": ("0.01", 0.01),
    "LTU_AUDIT_COMBINE": ("bonferroni", None),
    "LTU_AUDIT_CONTROL_SIZE": ("500", 500),
    "LTU_AUDIT_REFRESH_AFTER_ERASURES": ("10", 10),
    "LTU_AUDIT_REFERENCE_MODELS": ("8", 8),
    "LTU_AUDIT_CALIBRATION_FILE": ("/srv/ltu/calibration.json", None),
    "LTU_VERIFY_MAX_TEST_DROP": ("1.5", 1.5),
    "LTU_MAX_ATTEMPTS": ("5", 5),
    "LTU_LEASE_SECONDS": ("120", 120.0),
    "LTU_POLL_INTERVAL": ("0.25", 0.25),
    "LTU_VISIBILITY_TIMEOUT": ("7200", 7200),
    "LTU_COALESCE_WINDOW_SECONDS": ("0", 0.0),
    "LTU_COALESCE_MAX_BATCH": ("4", 4),
    "LTU_RECONCILE_INTERVAL": ("10", 10.0),
    "LTU_REQUEUE_QUEUED_AFTER": ("600", 600.0),
    "LTU_MAX_TRANSIENT_RETRIES": ("4", 4),
    "LTU_RETRY_BACKOFF_SECONDS": ("5", 5.0),
    "LTU_RETRY_BACKOFF_CAP_SECONDS": ("60", 60.0),
    "LTU_OUTBOX_RETENTION_HOURS": ("24", 24.0),
    "LTU_SHUTDOWN_TIMEOUT": ("10", 10.0),
    "LTU_WEBHOOK_TIMEOUT_SECONDS": ("3", 3.0),
    "LTU_WEBHOOK_MAX_ATTEMPTS": ("4", 4),
    "LTU_WEBHOOK_BACKOFF_SECONDS": ("1", 1.0),
    "LTU_WEBHOOK_BACKOFF_CAP_SECONDS": ("60", 60.0),
}


def fields() -> list[tuple[str, str]]:
    """(section, field) of every setting."""
    return [(name, field) for name, section in SECTIONS.items() for field in section.model_fields]


def numeric_fields() -> list[tuple[str, str, type]]:
    return [
        (name, field, info.annotation)
        for name, section in SECTIONS.items()
        for field, info in section.model_fields.items()
        if info.annotation in (int, float)
    ]


def test_the_samples_cover_every_field_and_the_sections_share_no_name():
    names = [field for _, field in fields()]
    assert len(names) == len(set(names)), "a flat name must belong to one section (Settings.build routes by name)"
    assert sorted(env_name(f) for f in names) == sorted(SAMPLES)


def test_every_field_is_read_from_its_variable(tmp_path):
    environ = {var: raw.format(tmp=tmp_path) for var, (raw, _) in SAMPLES.items()}
    settings = Settings.from_env(environ)
    for section, field in fields():
        raw, expected = SAMPLES[env_name(field)]
        value = getattr(getattr(settings, section), field)
        if isinstance(value, Path):
            assert value == Path(raw.format(tmp=tmp_path)).resolve(), field
        else:
            assert value == (raw if expected is None else expected), field
    assert not settings.dev_mode and not settings.embedded_runner
    assert settings.signing_key_path == tmp_path / "key.pem"
    assert not (tmp_path / "home").exists(), "nothing is created outside embedded mode"


def test_the_readme_lists_every_variable_once():
    readme = (REPO / "README.md").read_text()
    for var in SAMPLES:
        assert readme.count(f"| `{var}` |") == 1, var


@pytest.mark.parametrize("section, field, kind", numeric_fields())
def test_every_number_refuses_non_finite_out_of_range_and_non_numeric_values(tmp_path, section, field, kind):
    var = env_name(field)
    info = SECTIONS[section].model_fields[field]
    lowest = next((getattr(c, a) for c in info.metadata for a in ("ge", "gt") if hasattr(c, a)), None)
    bad = ["inf", "-inf", "nan", "a few", "1e999"]
    if lowest is not None:
        bad.append(str(lowest - 1))
    for value in bad:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"LTU_HOME": str(tmp_path), var: value})
        message = str(caught.value)
        assert message.startswith(f"{var} must be ") and f"(got {value!r})" in message and "\n" not in message
        expected = "a finite number" if kind is float else "an integer"
        assert expected in message


def test_the_purge_grace_example_of_the_brief(tmp_path):
    with pytest.raises(ConfigError, match=r"^LTU_PURGE_GRACE_HOURS must be a finite number >= 0 .*\(got 'inf'\)$"):
        Settings.from_env({"LTU_HOME": str(tmp_path), "LTU_PURGE_GRACE_HOURS": "inf"})


@pytest.mark.parametrize(
    "var, value, words",
    [
        ("LTU_DEVICE", "gpu", "must be auto, cpu"),
        ("LTU_QUEUE", "two words", "must be a queue name"),
        ("LTU_DEFAULT_METHOD", "Not-A-Method", "must be a method name"),
        ("LTU_FALLBACK_TO_RETRAIN", "maybe", "must be true or false"),
        ("LTU_RETAIN_FRACTION", "0", "must be a finite number > 0 and <= 1"),
        ("LTU_MAX_SUBJECTS_PER_REQUEST", "1001", "must be an integer >= 1 and <= 1000"),
        ("LTU_BROKER_URL", "localhost", "must be a URL"),
    ],
)
def test_other_bad_values_name_their_variable(tmp_path, var, value, words):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"LTU_HOME": str(tmp_path), var: value})
    assert str(caught.value).startswith(f"{var} {words}") and "\n" not in str(caught.value)


def test_weak_secrets_are_refused_outside_embedded_mode_and_never_echoed(tmp_path):
    postgres = {"LTU_HOME": str(tmp_path), "LTU_DATABASE_URL": POSTGRES}
    for secret in (None, "changeme", "short-but-random-Zx81"):
        environ = postgres if secret is None else {**postgres, "LTU_SECRET_KEY": secret}
        with pytest.raises(ConfigError, match=r"^LTU_SECRET_KEY must be a random string of at least 32") as caught:
            Settings.from_env(environ)
        assert secret is None or secret not in str(caught.value)
    with pytest.raises(ConfigError, match=r"^LTU_ADMIN_API_KEY must be a random string of at least 32"):
        Settings.from_env({**postgres, "LTU_SECRET_KEY": STRONG, "LTU_ADMIN_API_KEY": "admin"})
    strong = Settings.from_env({**postgres, "LTU_SECRET_KEY": STRONG, "LTU_BROKER_URL": "redis://r:6379/0"})
    assert not strong.dev_mode and not strong.embedded_runner and STRONG not in repr(strong)
    assert strong.signing_key_path is None  # outside embedded mode no key is ever generated
    # Embedded mode accepts short secrets and admin keys: nothing leaves the machine.
    assert Settings.build(home=tmp_path, secret_key="dev", admin_api_key="admin").dev_mode


def test_embedded_mode_needs_no_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = Settings.from_env({})
    assert default.ledger.home == tmp_path / ".ltu" and (tmp_path / ".ltu" / "secret.key").is_file()

    first = Settings.from_env({"LTU_HOME": str(tmp_path / "home")})
    second = Settings.from_env({"LTU_HOME": str(tmp_path / "home"), "LTU_QUEUE": ""})  # empty = unset
    assert first.dev_mode and first.embedded_runner and second.worker.queue == "gpu"
    assert first.ledger.secret_key == second.ledger.secret_key and len(first.ledger.secret_key) >= 32
    assert first.ledger.database_url == f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    assert first.ledger.artifacts_dir == tmp_path / "home" / "artifacts"
    assert first.signing_key_path == tmp_path / "home" / "certificate-key.pem"
    assert (tmp_path / "home" / "secret.key").stat().st_mode & 0o077 == 0
    given = Settings.from_env({"LTU_HOME": str(tmp_path / "given"), "LTU_SECRET_KEY": "mine"})
    assert given.ledger.secret_key == "mine" and not (tmp_path / "given" / "secret.key").exists()
    assert first.api == ApiSettings() and first.worker == WorkerSettings()


def test_build_and_replace_take_flat_names_validate_and_read_no_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LTU_QUEUE", "from-the-shell")
    monkeypatch.setenv("LTU_AUDIT_ALPHA", "inf")
    settings = Settings.build(home=tmp_path, secret_key="s" * 40, audit_alpha=0.01, max_body_bytes=4096)
    assert (
        settings.worker.queue == "gpu" and settings.worker.audit_alpha == 0.01 and settings.api.max_body_bytes == 4096
    )
    assert settings.ledger.database_url == f"sqlite:///{tmp_path / 'ledger.db'}"
    assert not (tmp_path / "secret.key").exists(), "build creates nothing"
    changed = settings.replace(queue="other", purge_grace_hours=0.0)
    assert (changed.worker.queue, changed.ledger.purge_grace_hours, changed.worker.audit_alpha) == ("other", 0.0, 0.01)
    assert settings.worker.queue == "gpu"
    with pytest.raises(ConfigError, match=r"^LTU_LEASE_SECONDS must be a finite number > 0"):
        settings.replace(lease_seconds=math.inf)
    with pytest.raises(TypeError, match="unknown setting 'verify'"):
        settings.replace(verify=1)
    with pytest.raises(ConfigError, match=r"^LTU_SECRET_KEY must not be empty"):
        Settings.build(home=tmp_path)
    with pytest.raises(ValueError, match="frozen"):
        settings.worker.queue = "x"  # type: ignore[misc]
    assert isinstance(settings.ledger, LedgerSettings)


def test_nothing_is_read_at_import_time():
    code = (
        "import sys, tempfile, ltu_settings\n"
        "s = ltu_settings.Settings.build(home=tempfile.mkdtemp(), secret_key='s' * 40)\n"
        "assert s.ledger.purge_grace_hours == 168.0 and s.worker.device == 'auto'\n"
        "assert 'sqlalchemy' not in sys.modules and 'fastapi' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "LTU_PURGE_GRACE_HOURS": "inf",
        "LTU_DEVICE": "gpu",
        "LTU_HOME": "/nonexistent/never-created",
    }
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "ok", out.stderr


def test_the_subject_ceiling_is_the_api_schemas(tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.schemas import MAX_TARGETS
    from ledger import migrate

    assert ApiSettings.model_fields["max_subjects_per_request"].default == MAX_TARGETS
    admin = "ltu_" + "a" * 40
    settings = Settings.build(home=tmp_path, secret_key="s" * 40, admin_api_key=admin, max_subjects_per_request=2)
    migrate.upgrade(settings.ledger.database_url)
    headers = {"Authorization": f"Bearer {admin}"}
    with TestClient(create_app(settings)) as http:
        body = {"model_id": "no-such-model", "subject_ids": ["a", "b", "c"]}
        answer = http.post("/v1/deletion-requests", json=body, headers=headers)
        assert answer.status_code == 422 and "LTU_MAX_SUBJECTS_PER_REQUEST" in answer.json()["detail"]
        answer = http.post("/v1/deletion-requests", json={**body, "subject_ids": ["a", "b"]}, headers=headers)
        assert answer.status_code == 404  # within the limit: on to the model lookup


@pytest.mark.parametrize(
    "secret",
    ["a" * 40, "ab" * 20, "abc" * 12, "0123456789" * 4, "Zx81Zx81" * 5, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"],
)
def test_typed_secrets_are_weak_wherever_weak_values_are_refused(tmp_path, secret):
    postgres = {"LTU_HOME": str(tmp_path), "LTU_DATABASE_URL": POSTGRES}
    with pytest.raises(ConfigError, match=r"^LTU_SECRET_KEY must be a random string") as caught:
        Settings.from_env({**postgres, "LTU_SECRET_KEY": secret})
    assert secret not in str(caught.value)
    with pytest.raises(ConfigError, match=r"^LTU_ADMIN_API_KEY must be a random string"):
        Settings.from_env({**postgres, "LTU_SECRET_KEY": STRONG, "LTU_ADMIN_API_KEY": secret})


def test_generated_secrets_are_never_weak(tmp_path):
    import secrets

    from ltu_settings.sections import weak

    generated = [secrets.token_urlsafe(48) for _ in range(500)] + [secrets.token_hex(32) for _ in range(500)]
    generated += ["ltu_" + secrets.token_urlsafe(32) for _ in range(500)]
    assert [s for s in generated if weak(s)] == []
    openssl = subprocess.run(["openssl", "rand", "-hex", "32"], capture_output=True, text=True)
    if openssl.returncode == 0:
        assert not weak(openssl.stdout.strip())


def test_secrets_may_come_from_files_never_from_both_places(tmp_path):
    (tmp_path / "secret").write_text(STRONG + "\n")  # as `echo` and the generators write it
    (tmp_path / "admin").write_text(f"ltu_{STRONG}\n")
    (tmp_path / "url").write_text(POSTGRES + "\n")
    environ = {
        "LTU_HOME": str(tmp_path / "home"),
        "LTU_DATABASE_URL_FILE": str(tmp_path / "url"),
        "LTU_SECRET_KEY_FILE": str(tmp_path / "secret"),
        "LTU_ADMIN_API_KEY_FILE": str(tmp_path / "admin"),
    }
    settings = Settings.from_env(environ)
    assert (settings.ledger.secret_key, settings.api.admin_api_key) == (STRONG, f"ltu_{STRONG}")
    assert settings.ledger.database_url == POSTGRES and not settings.dev_mode
    with pytest.raises(ConfigError, match=r"^LTU_SECRET_KEY and LTU_SECRET_KEY_FILE are both set: keep one$"):
        Settings.from_env({**environ, "LTU_SECRET_KEY": STRONG})
    with pytest.raises(ConfigError, match=rf"^LTU_ADMIN_API_KEY_FILE: cannot read {tmp_path}/absent"):
        Settings.from_env({**environ, "LTU_ADMIN_API_KEY_FILE": str(tmp_path / "absent")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"^LTU_SECRET_KEY_FILE: .*/empty is empty$"):
        Settings.from_env({**environ, "LTU_SECRET_KEY_FILE": str(tmp_path / "empty")})


def test_an_unreadable_secret_file_names_itself_its_mode_and_owner_and_the_fix():
    """The compose fault: `openssl genpkey` writes 0600 files the image's uid cannot read."""
    import os
    import shutil
    import tempfile

    from ltu_settings.base import read_secret_file

    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        key = folder / "ltu_secret_key"
        key.write_text(STRONG)
        key.chmod(0o600)
        message = _read_as_another_user(read_secret_file, "LTU_SECRET_KEY_FILE", key)
    finally:
        shutil.rmtree(folder)
    owner = os.getuid()
    assert message.startswith(f"LTU_SECRET_KEY_FILE: {key} is not readable by uid ")
    assert f"it is mode 0600, owned by uid {owner}" in message and "entrypoint copies /run/secrets" in message


def _read_as_another_user(read, var: str, path: Path) -> str:
    """The error of a process that is not the file's owner (root reads anything, so it forks as nobody)."""
    import os

    if os.getuid() != 0:
        path.chmod(0)
        try:
            read(var, path)
        except ConfigError as exc:
            return str(exc)
        return "read"
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            read(var, path)
            message = "read"
        except BaseException as exc:  # anything goes back to the parent as text
            message = str(exc)
        os.write(writer, message.encode())
        os._exit(0)
    os.close(writer)
    message = os.read(reader, 65536).decode()
    os.waitpid(pid, 0)
    return message

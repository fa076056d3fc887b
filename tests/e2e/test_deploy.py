"""docker-compose.yml and Dockerfile.gpu, checked statically (no Docker engine is needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support import unavailable

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_declares_the_deployed_shape():
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    assert services["migrate"]["command"] == ["ltu", "migrate", "--app-role", "ltu_app"]
    assert services["api"]["command"][:2] == ["ltu", "serve"]
    assert services["worker"]["command"][:2] == ["ltu", "worker"]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # One image, built from Dockerfile.gpu, for migrate, api and worker.
    for name in ("migrate", "api", "worker"):
        assert services[name]["build"]["dockerfile"] == "Dockerfile.gpu"
        assert services[name]["image"] == "ltu-erasure:latest"


def test_worker_reserves_a_gpu_and_shares_state_with_the_api():
    services = compose()["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    api_env, worker_env = services["api"]["environment"], services["worker"]["environment"]
    for key in ("LTU_BROKER_URL", "LTU_SECRET_KEY_FILE", "LTU_ARTIFACTS_DIR", "LTU_QUEUE"):
        assert api_env[key] == worker_env[key] == services["migrate"]["environment"][key]
    assert api_env["LTU_DATABASE_URL_FILE"] == worker_env["LTU_DATABASE_URL_FILE"]
    assert api_env["LTU_BROKER_URL"].startswith("redis://redis:6379/")
    assert "LTU_ADMIN_API_KEY_FILE" in api_env and worker_env["LTU_DEVICE"] == "cuda"
    artifacts = api_env["LTU_ARTIFACTS_DIR"]
    assert (
        f"artifacts:{artifacts}" in services["api"]["volumes"]
        and f"artifacts:{artifacts}" in services["worker"]["volumes"]
    )


def test_dockerfile_uses_a_cuda_pytorch_base_and_the_same_pins():
    dockerfile = (REPO / "Dockerfile.gpu").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", dockerfile).group(1)
    torch_pin = re.search(r'"torch==([\d.]+)"', pyproject).group(1)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base and torch_pin in base
    assert f"torch.__version__.split('+')[0] == '{torch_pin}'" in dockerfile
    assert "pip install -e ." in dockerfile and "COPY migrations migrations" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".ltu" in ignored and "*.safetensors" in ignored


def test_the_image_copies_every_package_the_project_installs():
    dockerfile = (REPO / "Dockerfile.gpu").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.findall(r'"(\w+)\*"', re.search(r"include = \[(.*?)\]", pyproject).group(1))
    assert packages and [p for p in packages if f"COPY {p} {p}" not in dockerfile] == []
    # Verdicts quote the committed calibration table (ltu_core.audit.calibration), which the image needs.
    table = "bench/results/audit-calibration.json"
    assert f"COPY {table} {table}" in dockerfile and (REPO / table).is_file()
    assert f"!{table}" in (REPO / ".dockerignore").read_text().split(), "the build context must keep the table"


LTU_SERVICES = ("migrate", "api", "worker", "audit-worker")
COPIES = "/run/ltu-secrets/"  # where deploy/entrypoint.sh copies /run/secrets for the service's user


def test_secrets_are_files_copied_for_the_services_user_never_environment_values():
    spec = compose()
    for name in (*LTU_SERVICES, "postgres"):
        service = spec["services"][name]
        env = service["environment"]
        assert not {"LTU_SECRET_KEY", "LTU_ADMIN_API_KEY", "LTU_DATABASE_URL", "POSTGRES_PASSWORD"} & set(env), name
        files = {key: path for key, path in env.items() if key.endswith("_FILE")}
        assert files, name
        for key, path in files.items():
            assert path.startswith(COPIES) and path.removeprefix(COPIES) in service["secrets"], (name, key)
        assert service["tmpfs"] == [COPIES.rstrip("/")], f"{name}: the copies live in memory only"
        assert {secret: spec["secrets"][secret]["file"] for secret in service["secrets"]} == {
            secret: f"./secrets/{secret}" for secret in service["secrets"]
        }
    assert spec["services"]["api"]["environment"]["LTU_CERTIFICATE_KEY_FILE"] == COPIES + "ltu_certificate_key"
    dockerfile = (REPO / "Dockerfile.gpu").read_text()
    assert (
        'ENTRYPOINT ["ltu-entrypoint"]' in dockerfile
        and "COPY deploy/entrypoint.sh /usr/local/bin/ltu-entrypoint" in dockerfile
    )
    assert not re.search(r"^USER ", dockerfile, re.MULTILINE), "the entrypoint starts as root and drops to uid 10001"
    assert "secrets" in (REPO / ".dockerignore").read_text().split(), "secrets never enter the build context"
    header = (REPO / "docker-compose.yml").read_text().split("\nname:")[0]
    assert "openssl genpkey -algorithm ed25519 -out secrets/ltu_certificate_key" in header
    assert all(f"> secrets/{secret}" in header for secret in spec["secrets"] if secret != "ltu_certificate_key")


def test_migrate_connects_as_the_owner_and_the_service_as_the_application_role():
    spec = compose()
    services = spec["services"]
    assert services["migrate"]["environment"]["LTU_DATABASE_URL_FILE"] == COPIES + "ltu_owner_database_url"
    for name in ("api", "worker", "audit-worker"):
        assert services[name]["environment"]["LTU_DATABASE_URL_FILE"] == COPIES + "ltu_app_database_url", name
        assert "ltu_owner_database_url" not in services[name]["secrets"], name
    postgres = services["postgres"]
    assert "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
    assert postgres["entrypoint"] == ["/ltu/entrypoint.sh", "docker-entrypoint.sh"]
    assert postgres["environment"]["LTU_RUN_AS"] == "postgres"
    header = (REPO / "docker-compose.yml").read_text().split("\nname:")[0]
    assert "postgresql+psycopg://ltu_owner:" in header and "postgresql+psycopg://ltu_app:" in header


def test_workers_get_a_grace_period_above_a_long_job_and_the_api_trusts_its_proxy():
    services = compose()["services"]
    for name in ("worker", "audit-worker"):
        assert _seconds(services[name]["stop_grace_period"]) >= 3600, name
    assert services["api"]["environment"]["LTU_FORWARDED_ALLOW_IPS"].startswith("${LTU_FORWARDED_ALLOW_IPS:-")


def _seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration))


def test_the_entrypoint_makes_an_owner_only_secret_readable_by_the_services_user(tmp_path):
    """The compose fault, for real: a 0600 root-owned secret, a service that runs as another uid."""
    if os.getuid() != 0:
        unavailable("the entrypoint's copy and privilege drop need root")
    import tempfile

    source = tmp_path / "run-secrets"
    source.mkdir()
    (source / "ltu_secret_key").write_text("the secret\n")
    (source / "ltu_secret_key").chmod(0o600)
    target = Path(tempfile.mkdtemp()) / "ltu-secrets"
    target.parent.chmod(0o755)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LTU_RUN_AS": "nobody", "LTU_SECRETS_SOURCE": str(source)}
    env["LTU_SECRETS_DIR"] = str(target)
    try:
        unreadable = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(source / "ltu_secret_key")],
            capture_output=True,
            text=True,
        )
        assert unreadable.returncode != 0, "as mounted, the secret is unreadable by the service's uid"
        command = ["sh", str(REPO / "deploy" / "entrypoint.sh"), "sh", "-c", f'id -un; cat "{target}/ltu_secret_key"']
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:2] == ["nobody", "the secret"]
        assert oct((target / "ltu_secret_key").stat().st_mode & 0o777) == "0o400"
        assert oct(target.stat().st_mode & 0o777) == "0o700"
    finally:
        shutil.rmtree(target.parent)


def test_docker_compose_config_when_the_plugin_exists(tmp_path):
    """`docker compose config -q` validates the file fully where the compose plugin is installed."""
    docker = shutil.which("docker")
    has_plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    if not has_plugin:
        # Without the plugin the YAML checks above are the validation; say so in the output.
        print("docker compose plugin not installed: validated docker-compose.yml with PyYAML only")
        return
    shutil.copy(REPO / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / "secrets").mkdir()
    for secret in compose()["secrets"]:  # config only checks that the files exist
        (tmp_path / "secrets" / secret).write_text("placeholder\n")
    result = subprocess.run(
        [docker, "compose", "-f", str(tmp_path / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr

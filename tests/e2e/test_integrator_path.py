"""A stranger's path: from a folder of images and a CSV to a verified erasure certificate, by exactly the
commands of the README's section "Your own data: from files to an erasure", read from it.

The block is interpreted here rather than handed to a shell, so neither curl, jq nor bash is needed:
`ltu ...` runs through the console script's entry point in this process (`ltu serve &` as a real
background process), `curl` sends the same request with httpx, `$(... | jq -r .FIELD)` is that field of
the JSON answer, `$(cat FILE)` the file's text, and `export` and assignments set variables. The only
change to the text is a free port for 8000. A line the interpreter does not know fails the test, so the
README cannot gain a step the test skips.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tests.support import REPO, ltu

SECTION = "### Your own data: from files to an erasure"
README_URL = "http://127.0.0.1:8000"
STEPS = (  # what a stranger has to do, in this order
    "ltu dataset pack",
    "ltu dataset validate",
    "ltu train",
    "ltu serve",
    "/v1/datasets",
    "/v1/models",
    "ltu request submit",
    "ltu request wait",
    "/certificate",
    "ltu certificate verify",
)


def readme_commands() -> list[str]:
    """The section's first fenced block, one command per entry (continuation lines joined)."""
    section = (REPO / "README.md").read_text().split(SECTION, 1)[1]
    block = section.split("```\n", 2)[1]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_block_is_the_whole_path_in_order():
    commands = readme_commands()
    positions = [next((i for i, c in enumerate(commands) if step in c), -1) for step in STEPS]
    assert -1 not in positions and positions == sorted(positions), dict(zip(STEPS, positions))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stranger:
    """Runs README command lines in `folder`, as a shell would for these few forms."""

    def __init__(self, folder: Path, port: int, monkeypatch) -> None:
        self.folder, self.port, self.monkeypatch = folder, port, monkeypatch
        self.variables: dict[str, str] = {}
        self.server: subprocess.Popen | None = None

    def run(self, line: str) -> str:
        """One line; returns what it printed."""
        line = line.replace(README_URL, f"http://127.0.0.1:{self.port}")
        line = re.sub(r"\$(\w+)", lambda m: self.variables[m.group(1)], line)
        line = re.sub(r"\$\(([^()]*)\)", lambda m: self.substitute(m.group(1)), line)
        return self.command(shlex.split(line, comments=True))

    def substitute(self, pipeline: str) -> str:
        """`$(cat FILE)`, or `$(COMMAND | jq -r .FIELD)`."""
        command, *filters = (part.strip() for part in pipeline.split(" | "))
        words = shlex.split(command)
        output = (self.folder / words[1]).read_text() if words[0] == "cat" else self.command(words)
        for jq in filters:
            field = re.fullmatch(r"jq -r \.(\w+)", jq)
            assert field, f"unknown filter {jq!r}"
            output = str(json.loads(output)[field.group(1)])
        return output.strip()

    def command(self, words: list[str]) -> str:
        if words == ["ltu", "serve", "&"]:
            return self.start_server()
        if words[0] == "export" or re.fullmatch(r"\w+=\S*", words[0]):
            for assignment in words[words[0] == "export" :]:
                name, _, value = assignment.partition("=")
                self.variables[name] = value
                self.monkeypatch.setenv(name, value)
            return ""
        if words[0] == "ltu":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                status = ltu(*words[1:])
            assert status == 0, f"{shlex.join(words)} exited {status}: {out.getvalue()}"
            return out.getvalue()
        if words[0] == "curl":
            return self.curl(words[1:])
        raise AssertionError(f"the README block has a command this test does not know: {shlex.join(words)}")

    def curl(self, args: list[str]) -> str:
        headers, fields, files, output, url = {}, {}, {}, None, None
        options = iter(args)
        for arg in options:
            if arg == "-s":
                continue
            if arg == "-H":
                name, _, value = next(options).partition(":")
                headers[name] = value.strip()
            elif arg == "-F":
                name, _, value = next(options).partition("=")
                if value.startswith("@"):
                    files[name] = (Path(value[1:]).name, (self.folder / value[1:]).read_bytes())
                else:
                    fields[name] = value
            elif arg == "-o":
                output = next(options)
            else:
                assert not arg.startswith("-"), f"curl option {arg} is unknown to this test"
                url = arg
        method = "POST" if files or fields else "GET"
        answer = httpx.request(method, url, headers=headers, data=fields, files=files or None, timeout=60)
        assert answer.is_success, (method, url, answer.status_code, answer.text)
        if output:
            (self.folder / output).write_bytes(answer.content)
            return ""
        return answer.text

    def start_server(self) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LTU_")}
        env["PYTHONPATH"] = str(REPO)
        with open(self.folder / "serve.log", "wb") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "ltu_cli.main", "serve", "--port", str(self.port)],
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 90
        while not self.ready():
            assert self.server.poll() is None and time.monotonic() < deadline, self.server_log()
            time.sleep(0.3)
        return ""

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def server_log(self) -> str:
        log = self.folder / "serve.log"
        return log.read_text(errors="replace")[-4000:] if log.is_file() else "(no server started)"

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGINT)
            self.server.wait(timeout=60)


def write_photos(folder: Path, dataset) -> None:
    """The stranger's own files: one PNG per image and photos.csv; one subject with train images is `alice`."""
    from PIL import Image

    train = dataset.split_indices("train")
    ids, counts = np.unique(dataset.subject_ids[train], return_counts=True)
    alice = ids[counts >= 2][0]
    (folder / "photos").mkdir()
    with open(folder / "photos.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "subject_id", "split"])
        for i in range(len(dataset)):
            Image.fromarray(np.asarray(dataset.images[i, 0])).save(folder / "photos" / f"{i}.png")
            subject = "alice" if dataset.subject_ids[i] == alice else dataset.subject_ids[i]
            writer.writerow([f"{i}.png", int(dataset.labels[i]), subject, dataset.splits[i]])


def test_a_stranger_goes_from_images_to_a_verified_certificate_with_the_readme_alone(tmp_path, monkeypatch, synthetic):
    write_photos(tmp_path, synthetic)
    for name in [n for n in os.environ if n.startswith("LTU_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    stranger = Stranger(tmp_path, free_port(), monkeypatch)
    printed = []
    try:
        for line in readme_commands():
            printed.append(stranger.run(line))
        request = httpx.get(
            f"{stranger.variables['LTU_URL']}/v1/deletion-requests/{stranger.variables['REQUEST']}",
            headers={"Authorization": f"Bearer {stranger.variables['KEY']}"},
        ).json()
    except BaseException:
        print(stranger.server_log(), file=sys.stderr)
        raise
    finally:
        stranger.stop()
    assert printed[1].startswith("ok: photos.tar: 'photos', 560 images of 1×8×8, 4 classes")
    assert request["status"] == "completed" and request["num_targets"] == 1
    assert printed[-1].startswith(f"valid: erasure certificate of request {request['id']}")

"""`make lab`: JupyterLab (installed with the dev extras) starts on the notebooks and answers."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyter_lab_starts_on_the_notebooks_and_answers(tmp_path):
    port = _free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=kit-test",
           f"--ServerApp.root_dir={ROOT / 'notebooks'}"]
    if os.geteuid() == 0:  # containers and CI machines run as root
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline, answer = time.time() + 90, None
        while time.time() < deadline and answer is None:
            assert proc.poll() is None, proc.stdout.read()
            try:
                url = f"http://127.0.0.1:{port}/api/contents?token=kit-test"
                with urllib.request.urlopen(url, timeout=2) as reply:
                    answer = json.loads(reply.read())
            except OSError:
                time.sleep(0.5)
        assert answer is not None, "JupyterLab did not answer within 90 s"
        names = {item["name"] for item in answer["content"]}
        assert {"00_explore.ipynb", "01_main_tables.ipynb"} <= names
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

"""`rlvr submit` (launch/submit.py): pure helpers, then a real token-protected local Ray head.

The slow tests start `ray start --head --num-cpus 2 --port 0` on loopback only (dashboard on
127.0.0.1, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` keeps the GCS and raylet off the routable
address too) with Ray token authentication on and a token of their own in a temp dir (the
shared ~/.ray/auth_token is never read or written), submit through `python -m launch.cli submit`
exactly as a user does, and stop only the processes they started.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from launch import submit

REPO = Path(__file__).resolve().parents[1]
STEP = re.compile(r"step (\d+)/(\d+) .*reward=")
QUICKSTART = ["configs/quickstart_cpu.yaml", "schedule.total_steps=2"]  # + logging.run_dir, see _run_dir


# --------------------------------------------------------------------------- fast: helpers
def test_split_args_keeps_order():
    assert submit.split_args(["a.yaml", "x.y=1", "b.yml", "z=[1,2]"]) == (["a.yaml", "b.yml"], ["x.y=1", "z=[1,2]"])


def test_token_lookup_follows_ray_order(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    path_file = tmp_path / "tok"
    path_file.write_text("  from-path \n")
    flag_file = tmp_path / "flag"
    flag_file.write_text("from-flag\n")
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(path_file)}
    assert submit.resolve_token(str(flag_file), env, home) == "from-flag"
    assert submit.resolve_token(None, env, home) == "from-env"
    assert submit.resolve_token(None, {"RAY_AUTH_TOKEN_PATH": str(path_file)}, home) == "from-path"
    assert submit.resolve_token(None, {}, home) == "from-home"
    assert submit.resolve_token(None, {}, tmp_path / "nobody") is None


def test_explicit_address_beats_ray_address_env():
    env = {"RAY_ADDRESS": "http://elsewhere:8265", "RAY_API_SERVER_ADDRESS": "http://other:8265"}
    assert submit.resolve_address(None, dict(env)) == "http://other:8265"
    assert submit.resolve_address("http://mine:8265", env) == "http://mine:8265"
    assert env == {}, "the Ray client would otherwise override --address with these"
    assert submit.resolve_address(None, {}) == submit.DEFAULT_ADDRESS
    assert submit.resolve_address("head:8265", {}) == "http://head:8265"


def _project(tmp_path: Path) -> Path:
    """A small working dir: code, a config, and everything that must not be uploaded."""
    root = tmp_path / "proj"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "a.yaml").write_text("name: demo\nschedule:\n  total_steps: 3\n")
    (root / "rlvr").mkdir()
    (root / "rlvr" / "train.py").write_text("print('hi')\n")
    for junk in ("runs/demo/ckpt.txt", ".git/HEAD", "rlvr/__pycache__/x.pyc", "k8s/setup/secrets/ray-auth-token",
                 "model.safetensors", "wandb/run.log"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("x")
    (root / "data.jsonl").write_bytes(b"0" * (2 * 2**20))  # large, no telltale suffix
    return root


def test_dry_run_builds_the_job(tmp_path, capsys, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.chdir(root)
    rc = submit.main(["configs/a.yaml", "trainer.lr=0.1", "resume=/ckpt/step_10", "--dry-run", "--max-file-mib", "1",
                      "--env", "FOO=bar", "--pip", "einops==0.8.1"])
    assert rc == 0
    job = json.loads(capsys.readouterr().out)
    assert job["entrypoint"] == "python -m launch.cli train configs/a.yaml trainer.lr=0.1 resume=/ckpt/step_10"
    assert job["submission_id"].startswith("rlvr-demo-")
    env = job["runtime_env"]
    assert env["working_dir"] == str(root)
    assert {"runs/", ".git", "k8s/setup/secrets/", "/data.jsonl"} <= set(env["excludes"])
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "FOO": "bar"}
    assert env["pip"]["packages"] == ["einops==0.8.1"]


def test_upload_holds_code_and_configs_only(tmp_path, monkeypatch):
    """Zip the working dir with Ray's own packager and the excludes `rlvr submit` sends."""
    from ray._private.runtime_env.packaging import _zip_files

    root = _project(tmp_path)
    monkeypatch.chdir(root)
    spec = submit.make_spec(submit.parse_args(["configs/a.yaml", "--max-file-mib", "1"]))
    out = tmp_path / "pkg.zip"
    _zip_files(str(root), spec.runtime_env["excludes"], str(out), include_gitignore=True)
    names = {n for n in zipfile.ZipFile(out).namelist() if not n.endswith("/")}
    assert names == {"configs/a.yaml", "rlvr/train.py"}


def test_config_outside_working_dir_is_refused(tmp_path, capsys, monkeypatch):
    root = _project(tmp_path)
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("name: x\n")
    monkeypatch.chdir(root)
    assert submit.main([str(outside), "--dry-run"]) == 2
    assert "outside the working dir" in capsys.readouterr().err


def test_bad_config_fails_before_contacting_the_cluster(tmp_path, capsys, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.chdir(root)
    # Port 9 (discard) has no dashboard: reaching it would be exit 3, not 2.
    rc = submit.main(["configs/a.yaml", "algorithm.advantage=grpoo", "--address", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("ConfigError: unknown name 'grpoo' for config key 'algorithm.advantage'")
    assert len(err.strip().splitlines()) == 1


def test_unreachable_dashboard_exits_3(tmp_path, capsys, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.chdir(root)
    rc = submit.main(["configs/a.yaml", "--address", f"http://127.0.0.1:{_free_port()}", "--token-file",
                      str(root / "k8s/setup/secrets/ray-auth-token")])
    assert rc == 3
    assert "could not submit" in capsys.readouterr().err


# --------------------------------------------------------------------------- slow: a real head
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict:
    """The caller's environment without any Ray address or auth settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


@pytest.fixture(scope="module")
def ray_head():
    """A token-protected single-node head on loopback; yields (dashboard URL, token file)."""
    tmp = Path(tempfile.mkdtemp(prefix="rlvr-ray-", dir="/tmp"))  # short: Ray puts sockets here
    token_file = tmp / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    port = _free_port()
    env = _clean_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
                          "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = ["ray", "start", "--head", "--block", "--num-cpus", "2", "--port", "0",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(port), "--include-dashboard", "true",
           "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
           "--temp-dir", str(tmp), "--disable-usage-stats"]
    with open(tmp / "head.log", "w") as log:  # the child keeps its own descriptor
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while _status(url + "/api/version") is None:
            assert head.poll() is None, (tmp / "head.log").read_text()[-3000:]
            assert time.time() < deadline, "dashboard did not come up"
            time.sleep(1)
        yield url, token_file
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its own raylet, GCS and workers
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # stragglers of our own process group only
        except ProcessLookupError:
            pass
        head.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _status(url: str, token: str | None = None) -> int | None:
    """HTTP status of a GET (None if nothing answers)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _run_dir(token_file: Path) -> str:
    """Outside the job's working-dir copy, which Ray deletes (and whose deep path is too long for
    vLLM's IPC sockets); on a real cluster this is the shared volume."""
    return f"logging.run_dir={token_file.parent}/runs/${{name}}"


def _rlvr_submit(url: str, token_file: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launch.cli", "submit", *args, "--address", url, "--token-file", str(token_file)]
    return subprocess.run(cmd, cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=timeout, check=False)


def _job_id(out: str) -> str:
    return re.search(r"job '([^']+)' submitted", out).group(1)


def _client(url: str, token_file: Path):
    return submit.connect(url, token_file.read_text().strip())


@pytest.mark.slow
def test_head_requires_the_token(ray_head):
    url, token_file = ray_head
    assert _status(url + "/api/jobs/") == 401
    assert _status(url + "/api/jobs/", token="not-the-token") == 403
    assert _status(url + "/api/jobs/", token=token_file.read_text()) == 200
    bad = token_file.parent / "wrong_token"
    bad.write_text("not-the-token")
    res = _rlvr_submit(url, bad, *QUICKSTART, timeout=120)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "could not submit" in res.stderr


@pytest.mark.slow
def test_submit_quickstart_succeeds(ray_head):
    url, token_file = ray_head
    res = _rlvr_submit(url, token_file, *QUICKSTART, _run_dir(token_file))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    job_id = _job_id(out)
    client = _client(url, token_file)
    assert client.get_job_status(job_id) == "SUCCEEDED"
    logs = client.get_job_logs(job_id)
    steps = [m.groups() for m in STEP.finditer(logs)]
    assert len({step for step, _ in steps}) == 2 and {total for _, total in steps} == {"2"}, logs[-4000:]
    assert [m.groups() for m in STEP.finditer(out)] == steps, "the streamed output misses step lines"
    assert (token_file.parent / "runs" / "quickstart_cpu").is_dir()
    # The Ray Jobs CLI users know reaches the same protected head with the documented env.
    env = _clean_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    status = subprocess.run(["ray", "job", "status", "--address", url, job_id], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr


@pytest.mark.slow
def test_broken_config_fails_locally_and_on_the_cluster(ray_head):
    url, token_file = ray_head
    broken = [*QUICKSTART, _run_dir(token_file), "algorithm.advantage=grpoo"]
    client = _client(url, token_file)
    before = len(client.list_jobs())
    local = _rlvr_submit(url, token_file, *broken, timeout=120)
    assert local.returncode == 2 and "ConfigError: unknown name 'grpoo'" in local.stderr, local.stderr
    assert len(client.list_jobs()) == before, "a config error must not submit a job"

    remote = _rlvr_submit(url, token_file, *broken, "--no-local-check", timeout=300)
    out = remote.stdout + remote.stderr
    assert remote.returncode == 1, out[-4000:]
    assert client.get_job_status(_job_id(out)) == "FAILED"
    assert "ConfigError: unknown name 'grpoo' for config key 'algorithm.advantage'" in out

"""A Ray cluster of `ray start` nodes that belongs to one test, and only to it.

`ray start` as a user types it would write /tmp/ray/ray_current_cluster, which every other
`ray.init()` on the machine then joins, and `ray stop` ends every Ray process on the machine.
Here each node gets a private temp folder and free ports, runs with `--block` (so ending that
process ends its node), and the token lives in a private HOME.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(home: Path) -> dict:
    """The environment of everything that talks to the cluster: its token in `home`, and the
    venv's `python` first on PATH (a job's entry point runs `python` from PATH)."""
    return {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@contextmanager
def private_cluster(home: Path, nodes: list[dict]):
    """Start one `ray start` node per entry of `nodes` ({"cpus": n, "labels": "k=v"}), the
    first as head (with the job dashboard). Yields (gcs_address, dashboard_url)."""
    # Unix socket paths must stay short: a pytest tmp_path is too deep for Ray's sockets.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    port, dashboard = free_port(), free_port()
    env = cluster_env(home)
    # As the README: a token in HOME, then every node in token mode (a worker node in Ray's
    # default mode would not send the token).
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=120)
    procs = []
    try:
        for i, node in enumerate(nodes):
            args = [RAY, "start", "--block", "--num-cpus", str(node["cpus"]),
                    "--labels", node.get("labels", "")]
            # Every port free, not Ray's defaults: another cluster on this machine may hold
            # them (a job agent that cannot bind 52365 leaves the job API without an agent).
            args += ["--dashboard-agent-listen-port", str(free_port()),
                     "--dashboard-agent-grpc-port", str(free_port()),
                     "--metrics-export-port", str(free_port()),
                     "--runtime-env-agent-port", str(free_port())]
            if i == 0:
                args += ["--head", "--port", str(port), "--temp-dir", temp,
                         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)]
            else:
                args += ["--address", f"127.0.0.1:{port}"]
            procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
            _wait_for_nodes(f"127.0.0.1:{port}", i + 1, env)
        _wait_for_job_agent(f"http://127.0.0.1:{dashboard}", env)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
    finally:
        # SIGTERM to every process of each node, as `ray stop` does. Not SIGINT: a process
        # started in the background by a shell without job control (a CI runner, `cmd &`)
        # inherits SIGINT ignored, and then every node waited out the 60 s below.
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, env: dict, timeout_s: float = 120) -> None:
    script = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
              "print(len([n for n in ray.nodes() if n['Alive']]))")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc = subprocess.run([sys.executable, "-c", script, address], env=env,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode == 0 and proc.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise TimeoutError(f"the private Ray cluster at {address} did not reach {count} nodes")


def _wait_for_job_agent(dashboard: str, env: dict, timeout_s: float = 120) -> None:
    """The job API answers "No available agent to submit job" for a while after `ray start`:
    submit an empty job until one is taken."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc = subprocess.run([RAY, "job", "submit", "--address", dashboard, "--no-wait",
                               "--", "true"], env=env, capture_output=True, timeout=120)
        if proc.returncode == 0:
            return
        time.sleep(2)
    raise TimeoutError(f"the job API at {dashboard} took no job within {timeout_s:g} s")

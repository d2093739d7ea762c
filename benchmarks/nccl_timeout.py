"""How fast the NCCL weight-sync group notices a member that never comes (GPU only).

    python benchmarks/nccl_timeout.py [--timeout-s 7]

Rank 0 of a two-member group opened by `actors.sync_group.open_group`, whose other member
never joins, broadcasts once: NCCL's default would wait 10 minutes; with the group's timeout
the broadcast must fail (or NCCL's watchdog end the process) within seconds of `timeout_s`.
Also checks that a one-member group broadcasts and records the timeout it was given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def member(world_size: int, timeout_s: float) -> None:
    import torch

    from actors.sync_group import open_group, start_broadcast
    from benchmarks.common import free_port

    torch.cuda.set_device(0)
    group = open_group("127.0.0.1", free_port(), 0, world_size, "nccl", timeout_s)
    print(json.dumps({"options_timeout_s": group.options._timeout.total_seconds()}), flush=True)
    buffer = torch.ones(1 << 20, device="cuda")
    start_broadcast(group, buffer).wait()
    torch.cuda.synchronize()
    print(json.dumps({"broadcast": "ok"}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-s", type=float, default=7.0)
    parser.add_argument("--member", type=int, help=argparse.SUPPRESS)  # world size
    args = parser.parse_args()
    if args.member:
        member(args.member, args.timeout_s)
        return
    results = {}
    for world_size, nonblocking in ((1, "0"), (2, "0"), (2, "1")):
        start = time.perf_counter()
        env = {**os.environ, "TORCH_NCCL_USE_COMM_NONBLOCKING": nonblocking}
        try:
            proc = subprocess.run([sys.executable, __file__, "--member", str(world_size),
                                   "--timeout-s", str(args.timeout_s)], capture_output=True,
                                  text=True, timeout=45, env=env)
            out, err, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out, err, rc = e.stdout or b"", e.stderr or b"", "killed after 45 s"
            out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
        lines = [line for line in out.splitlines() if line.startswith("{")]
        results[f"world_size_{world_size}_nonblocking_{nonblocking}"] = {
            "returncode": rc, "seconds": round(time.perf_counter() - start, 1),
            "stdout": [json.loads(line) for line in lines],
            "stderr_tail": err.strip().splitlines()[-3:]}
        print(json.dumps(results, indent=1), flush=True)


if __name__ == "__main__":
    main()

"""Run restarts: an actor lost mid-run costs the steps since the last checkpoint, not the run.

A learner's state (its shard of the weights and of the optimizer) lives only in its process,
so a run that loses one cannot be patched up: the driver tears every actor down (placement
groups too), and trains again from the latest complete checkpoint in output_dir, in the same
process and on the same Ray cluster, as `--trainer.resume auto` would (from where the run
started if it saved none yet). The steps after that checkpoint are redone once and logged
once: launch/loggers.py drops their old records. At most `trainer.max_restarts` times; then the
run stops with one line naming what kept failing and its last checkpoint, which is intact.

Not restarted, as they would fail the same way again: bad input (`InputError`, found before
any actor starts), a run whose actors never all started (a cluster too small for it, an
engine that cannot load the model), and an actor that raised an error of its own rather than
being lost (`ActorFailure.lost`: its process died, was killed, or stopped answering).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from actors.failures import ActorFailure, RunError
from drgrpo.config import Config
from launch.run import Run, latest_checkpoint, prepare


def train_with_restarts(cfg: Config, train_run: Callable[[Config, Run], dict]) -> dict:
    """`train_run(cfg, prepare(cfg))`, prepared and trained again from the latest checkpoint
    each time an actor fails once the run's actors are up, up to trainer.max_restarts times."""
    history = None  # every restart of the run: the resumed checkpoint's, then this driver's
    faults = None  # actors recovered in place (launch/recovery.py), counted across restarts
    attempt, limit, restarts = cfg, cfg.trainer.max_restarts, 0
    while True:
        run = prepare(attempt)  # every check on user input, before any actor starts
        history = run.state.restarts if history is None else history
        run.state.restarts = history
        faults = run.faults if faults is None else faults
        run.faults, faults.step = faults, run.state.step + 1
        try:
            with run.loggers:  # closed on error too, so TensorBoard and W&B keep every logged step
                return train_run(attempt, run)
        except ActorFailure as failure:
            # Failed while starting, or raised an error of its own (not lost): the same
            # work would fail the same way again.
            if not run.actors or not failure.lost:
                raise
            resume, checkpoint = _resume_point(cfg, run.output_dir)
            if restarts == limit:
                raise RunError(_give_up(failure, limit, history, checkpoint)) from None
            history.append({
                "failed_at_step": run.state.step + 1, "actor": failure.actor,
                "reason": str(failure), "checkpoint": str(checkpoint) if checkpoint else None,
                "resumed_from_step": _step(checkpoint),
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            where = (f"resuming from {checkpoint}" if checkpoint
                     else "no checkpoint yet, starting again from step 0")
            restarts += 1
            print(f"restarting run ({restarts}/{limit}): {failure}; {where}",
                  file=sys.stderr, flush=True)
            attempt = cfg.model_copy(deep=True)
            attempt.trainer.resume = resume


def _resume_point(cfg: Config, output_dir: Path) -> tuple[str, Path | None]:
    """The trainer.resume of a restart, and the checkpoint it resumes from: the latest
    complete one in output_dir, else the one the run itself started from (None: the start)."""
    latest = latest_checkpoint(output_dir)
    if latest:
        return "auto", latest
    if cfg.trainer.resume in ("never", "auto"):
        return cfg.trainer.resume, None
    return cfg.trainer.resume, Path(cfg.trainer.resume).absolute()


def _step(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    return json.loads((checkpoint / "trainer_state.json").read_text())["step"]


def _give_up(failure: ActorFailure, limit: int, history: list[dict],
             checkpoint: Path | None) -> str:
    """One line: the failure that ended the run, what failed before it, the last checkpoint."""
    if limit == 0:
        tried = "not restarted (trainer.max_restarts 0)"
    else:
        before = ", ".join(r["actor"] for r in history[-limit:])
        tried = (f"not restarted again: trainer.max_restarts {limit} reached (restarted after "
                 f"failures of {before})")
    kept = (f"its last checkpoint, {checkpoint}, is intact: --trainer.resume auto continues "
            "from it" if checkpoint else "it saved no checkpoint (trainer.save_every)")
    return f"{failure}; {tried}; {kept}"

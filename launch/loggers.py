"""Each metrics record of a run goes to every logger named in `trainer.loggers`.

`metrics.jsonl` is always written (summary.json, the plots and resume read it); TensorBoard
event files go to `<output_dir>/tensorboard/`, and W&B gets the same scalars. A run resumed
from step N rewrites the steps after N: metrics.jsonl loses their old lines, and TensorBoard is
told to hide its old events from step N + 1 on (`purge_step`), so no curve shows a step twice.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from pathlib import Path

from drgrpo.config import Config


class LoggerStartError(Exception):
    """A logger could not start (e.g. W&B online without a login); the message is one line."""


def missing_package(names: Iterable[str]) -> str | None:
    """The first logger in `names` whose package (named as the logger) cannot be imported."""
    for name in names:
        if name == "jsonl":
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


class Loggers:
    """`log(record)` appends to metrics.jsonl and sends the record's numbers to the others.

    `resume_step` is the checkpoint's step for a resumed run, None for a fresh one (which
    starts the logs over, as it re-runs every step). Use it as a context manager, or call
    `close()`: TensorBoard and W&B keep what is logged only once flushed.
    """

    def __init__(self, cfg: Config, resume_step: int | None):
        names, output_dir = cfg.trainer.loggers, Path(cfg.trainer.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = output_dir / "metrics.jsonl"
        self.samples = output_dir / "samples.jsonl"  # trainer.samples_every: what was graded
        self._tb = self._wandb = None
        if "wandb" in names:  # first: if it cannot start, the old logs are left as they were
            self._wandb = _start_wandb(cfg, output_dir)
        tb_dir = output_dir / "tensorboard"
        if resume_step is None:
            self.jsonl.unlink(missing_ok=True)
            self.samples.unlink(missing_ok=True)
            for old in tb_dir.glob("events.out.tfevents.*"):
                old.unlink()
        else:
            _truncate_jsonl(self.jsonl, resume_step)
            _truncate_jsonl(self.samples, resume_step)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(tb_dir), purge_step=purge)  # marks the purge at once

    def log(self, record: dict) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        # None means "no value this step" (e.g. no correct response): a gap, not a zero.
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float))}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()  # a step takes seconds to minutes: show it now, lose none on a crash
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def log_samples(self, rows: list[dict]) -> None:
        """Append one line per response (each row carries its `step`) to samples.jsonl."""
        with open(self.samples, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)

    def close(self, failed: bool = False) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish(exit_code=1 if failed else 0)  # W&B marks a failed run as such
            self._wandb = None

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def _start_wandb(cfg: Config, output_dir: Path):
    import wandb

    try:
        # WANDB_MODE=offline (wandb's own switch) writes under output_dir/wandb/ for a later
        # `wandb sync`; WANDB_ENTITY and the rest of wandb's environment apply as usual.
        return wandb.init(project=cfg.trainer.wandb_project, name=output_dir.resolve().name,
                          dir=str(output_dir), config=cfg.to_dict())
    except Exception as err:  # wandb raises several types; the user needs one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LoggerStartError(f"wandb could not start: {reason} (WANDB_MODE=offline logs "
                               "without an account or a network)") from None


def _truncate_jsonl(path: Path, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: drop their old lines."""
    if path.exists():
        keep = [line for line in path.read_text().splitlines()
                if line and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in keep))

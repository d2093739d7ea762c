"""Draw where a run's time went, step by step, from its metrics.jsonl.

    python -m launch.timeline RUN_DIR [--output FILE.png] [--steps FIRST:LAST]

One lane per role (generators, graders, learners), a bar per phase of each step (generate,
reward, train, weight_sync) on the run's clock: gaps in a lane are that role waiting, bars of
different lanes that overlap in time are the asynchronous pipeline's overlap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _steps(text: str) -> tuple[int, int]:
    first, _, last = text.partition(":")
    try:
        return int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.timeline", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--output", type=Path, default=None,
                        help="PNG to write (default RUN_DIR/timeline.png)")
    parser.add_argument("--steps", type=_steps, default=None, help="FIRST:LAST steps to draw")
    args = parser.parse_args(argv)
    from launch.plots import plot_timeline

    if not (args.run_dir / "metrics.jsonl").is_file():
        print(f"error: {args.run_dir / 'metrics.jsonl'} does not exist", file=sys.stderr)
        return 2
    try:
        print(plot_timeline(args.run_dir, args.output, args.steps))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

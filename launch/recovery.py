"""Actor-level recovery: a generator or reward worker that dies or hangs is replaced, and the
step goes on with exactly the work that was lost.

The verbs (used by launch/cluster.py; the training loop never sees them):

- `culprits(outcomes, names)`: of calls waited on together (`actors.failures.settle`), the
  generators to restart, by the one policy of `actors.failures.blame`.
- `restart_generator(cluster, i, reason)`: kill what is left of generator i, start a new
  one on the same placement-group bundle with the same seed, rebuild the weight-sync group
  with every member (a torch.distributed group cannot replace one member), and send the
  current weights. The caller then re-runs the lost prompts with their own seeds.
- `FaultLog` (actors/fault_log.py): what failed, why, and how long recovery took, and the
  limit (`cluster.max_actor_restarts` per actor) past which the run stops with one line.

A learner that fails is not recovered here: its state is gone, and the run-level restart
from the latest checkpoint takes over (`actors.failures.ActorFailure` is raised as before).
"""

from __future__ import annotations

from collections.abc import Sequence

from actors.failures import Outcome, actor_failure, blame, restartable
from actors.weight_sync import GeneratorsFailed


def sync_culprits(outcomes: Sequence[Outcome], learner_names: Sequence[str],
                  generators: int) -> list[int]:
    """Of a weight-sync call made on every learner, the generators to restart (their
    indices), or `ActorFailure` for the one to blame, by `culprits`' rule. Learner rank 0
    drives the generators (actors/weight_sync.py): when its call failed because theirs did
    (`GeneratorsFailed`), their outcomes stand in for its own."""
    learners, members = list(outcomes), [Outcome() for _ in range(generators)]
    for k, outcome in enumerate(outcomes):
        if isinstance(outcome.cause, GeneratorsFailed):
            learners[k], members = Outcome(), outcome.cause.outcomes
    names = [*learner_names, *(f"generator {i}" for i in range(generators))]
    return [k - len(learners) for k in culprits(learners + members, names)]


def culprits(outcomes: Sequence[Outcome], names: Sequence[str]) -> list[int]:
    """Of one collective's members, the generators to restart (indices into `names`), or
    `ActorFailure` for the member to blame when that is not a generator that died or hung
    (actors.failures.blame: one that raised is not restarted, the same work would raise the
    same error again)."""
    blamed = blame(outcomes, names)
    restart = [k for k in blamed if restartable(outcomes[k]) and names[k].startswith("generator")]
    if blamed and not restart:
        raise actor_failure(outcomes, names, blamed[0])
    return restart


def restart_generator(cluster, i: int, reason: str, then: str = "",
                      send_weights: bool = True) -> None:
    """Replace generator i (see the module's docstring). `send_weights`: give it the last
    weights sent now (else the caller's weight sync, redone, does); `then` says what the
    caller does next, for the log line."""
    name = f"generator {i}"
    started = cluster.faults.begin(name, reason)
    cluster.replace(i)
    if send_weights:
        cluster.resend_weights()
    cluster.faults.record(name, reason, f"restarted on bundle {i}{then}", started)

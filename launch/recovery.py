"""Actor-level recovery: a generator that dies or hangs is replaced, and the step goes on with
exactly the work that was lost (launch/cluster.py calls it; the training loop never sees it).

Whom to blame for a failed call is `actors.failures.blame`'s rule (`actors.weight_sync.
sync_culprits` for a weight sync), and the restarts go to the run's
`actors.fault_log.FaultLog` (the log line, the counts, the limit). A reward worker is
replaced by its pool (actors/reward_pool.py) by the same rule.

`restart_generator(cluster, i, reason)`: kill what is left of generator i, start a new one on
the same placement-group bundle with the same seed, rebuild the weight-sync group with every
member (a torch.distributed group cannot replace one member), and send the current weights.
The caller then re-runs the lost prompts with their own seeds.

A learner that fails is not recovered here: its state is gone, and the run-level restart
from the latest checkpoint takes over (`actors.failures.ActorFailure` is raised as before).
"""

from __future__ import annotations


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

"""Notice a vLLM engine whose engine-core process died, and fail the calls waiting on it.

vLLM 0.32's `LLM` runs its engine core in a child process and watches it with a monitor
thread; when that process dies, the monitor marks the engine dead and shuts the client down,
but the caller blocked in `LLM.generate` keeps waiting on the client's output queue (and a
`collective_rpc` on its future) forever: killing the engine core mid-generation hangs the
generator actor with no message (measured: a run hung 20 minutes). `EngineWatch` waits on the
same processes and, when one exits, wakes those callers with `EngineDeadError`; the reason
(its exit code or signal) is kept for the error the actor raises.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import InvalidStateError
from contextlib import contextmanager
from multiprocessing import connection

from vllm.v1.engine.exceptions import EngineDeadError

from actors.engine_log import EngineError, explain_engine_errors


class EngineWatch:
    def __init__(self, llm):
        self.reason: str | None = None
        self._client = llm.llm_engine.engine_core
        manager = getattr(getattr(self._client, "resources", None), "engine_manager", None)
        processes = list(getattr(manager, "processes", None) or [])
        if processes:  # an in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0) has none
            threading.Thread(target=self._watch, args=(processes,), daemon=True,
                             name="drgrpo-engine-watch").start()

    def _watch(self, processes: list) -> None:
        ended = connection.wait([p.sentinel for p in processes])
        dead = next(p for p in processes if p.sentinel in ended)
        dead.join(timeout=2)  # reaps it, so its exit code is known
        self.reason = f"the vLLM engine core process {dead.pid} exited ({_exit(dead.exitcode)})"
        queue = getattr(self._client, "outputs_queue", None)
        if queue is not None:
            queue.put_nowait(EngineDeadError())
        for future in list(getattr(self._client, "utility_results", {}).values()):
            try:
                future.set_exception(EngineDeadError())
            except InvalidStateError:  # answered meanwhile
                pass

    @contextmanager
    def calls(self):
        """Raise `EngineError` naming the dead engine core, before the block if it died
        already, or when the block fails because it died."""
        if self.reason:
            raise EngineError(self.reason)
        try:
            with explain_engine_errors():
                yield
        except EngineError as err:
            for _ in range(20):  # the watch names the death a moment after vLLM notices it
                if self.reason or not isinstance(err.__cause__, EngineDeadError):
                    break
                time.sleep(0.05)
            if self.reason:
                raise EngineError(self.reason) from None
            raise


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"

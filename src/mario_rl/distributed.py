"""The distributed backend: independent tasks as Ray tasks, on a running cluster or a local Ray instance.

Ray is an optional extra (`uv sync --extra ray`), imported only here and only when a task runs, so the
rest of the package never needs it. `mario-rl campaign --backend ray` runs each stage as one task; the
tasks share their state through the file system, so on a cluster that folder must be shared.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from mario_rl.errors import UserError


def run_tasks(
    task: Callable,
    calls: list[tuple],
    address: str | None = None,
    cpus_per_task: int = 0,
    on_result: Callable[[object], None] | None = None,
) -> list:
    """Run task(*args) for every args in `calls` as Ray tasks, each asking for `cpus_per_task` CPUs (0: all
    of the smallest live node's, one task per node), and return their results in the order they finished,
    calling on_result(result) as each one does. `task` must be a module-level function (Ray pickles it by
    name). Ray is started here if it is not running (`address`: a running cluster; None: a local instance
    with every core) and shut down again afterwards."""
    # Ray would otherwise start each worker with `uv run` when the driver runs under uv, and that re-syncs
    # the environment (dropping extras such as Ray itself). Ray reads this when it is first imported.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError:
        raise UserError(
            "--backend ray needs Ray: install the extra, `uv sync --extra ray` (or pip install 'mario-rl[ray]')"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            include_dashboard=False,
            **({} if address else {"num_cpus": os.cpu_count()}),
        )
    try:
        cpus = cpus_per_task or max(1, int(min(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["Alive"])))
        remote = ray.remote(num_cpus=cpus, max_retries=0)(task)
        pending = [remote.remote(*args) for args in calls]
        results = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results.append(ray.get(done[0]))
            if on_result is not None:
                on_result(results[-1])
        return results
    finally:
        if started_here:
            ray.shutdown()

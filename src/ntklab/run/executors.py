"""Executors run the units a store does not hold yet; results land in the store.

Every executor has ``run(units, ctx, store, *, retry_failed=False, progress=None) -> Outcome``
and ``close()``:

* ``local`` (:class:`ntklab.run.local.LocalExecutor`) runs units in this process, one after
  the other, with a progress bar over units; with ``workers=N > 1`` it runs N at a time in
  worker processes (``spawn``), each building its own :class:`~ntklab.run.context.RunContext`
  from the config.
* ``ray`` (:class:`ntklab.run.ray_executor.RayExecutor`) makes each unit a Ray task.

Rules shared by all executors, so that a unit's result depends only on its key:

* a unit runs with ``torch.set_num_threads(unit.threads)`` (its ``num_cpus``; torch's CPU
  kernels give different last bits for different thread counts) and with the global torch /
  NumPy / ``random`` generators seeded from its key (a stray use of a global RNG, e.g. dropout
  in a user model, then does not depend on which units ran before in the same process);
* a unit whose ``after`` units (results it reads from the store) are not all stored is not
  started; if one of them failed, it is recorded as failed too;
* a unit is computed only under its lease in the store
  (:func:`ntklab.run.execute.claim_and_run`), so two runs on one store (two ``ntklab run``
  processes, two Ray drivers) never compute it twice: a unit that another process is computing
  is held back while others can start (:class:`ntklab.run.schedule.Schedule`), then read from
  the store; ``Outcome.computed`` counts what this process computed, ``Outcome.cached`` what
  it read;
* failures (an exception, a NaN loss, a non-finite kernel, a worker that died) are recorded in
  the store with their error and the sweep goes on; they are reported at the end and retried
  only when asked (``retry_failed``). User errors (:class:`~ntklab.errors.NtkLabError`: a
  mistake in the config or data) stop the sweep: every unit would hit them.
"""

from __future__ import annotations

from typing import Any

from ntklab.errors import NtkLabError
from ntklab.run.local import LocalExecutor, default_workers


def make_executor(
    name: str,
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    gpus: float | None = None,
) -> Any:
    """``local`` (``workers`` processes, default one per core up to 8) or ``ray`` (optional extra).

    For ``ray``, ``workers`` is the number of CPUs of the local Ray instance started when no
    ``address`` is given (default: all cores); with an address the cluster decides.
    ``threads`` sets every unit's torch threads (and Ray CPUs); default: the unit's ``num_cpus``.
    ``gpus`` (Ray only) sets the GPUs Ray reserves for every unit (a fraction packs several on one).
    """
    if name == "local":
        if address is not None or gpus is not None:
            raise NtkLabError(
                "--address and --gpus are for --executor ray; the local executor takes --workers "
                "and uses config key device."
            )
        return LocalExecutor(workers or default_workers(), threads)
    if name == "ray":
        from ntklab.run.ray_executor import RayExecutor

        return RayExecutor(address, num_cpus=workers, threads=threads, gpus=gpus)
    raise NtkLabError(f"--executor must be 'local' or 'ray'; got {name!r}.")

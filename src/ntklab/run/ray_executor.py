"""The ``ray`` executor: every unit a Ray task, results written straight into the shared store.

``ntklab run --executor ray`` starts a local Ray instance (``--workers N`` CPUs, default all
cores); ``--address auto`` or ``--address HOST:PORT`` joins an existing cluster instead. Each
unit becomes a task with the unit's declared resources (``num_cpus``, ``num_gpus``, ``memory``;
any other key is a custom Ray resource). A task rebuilds the run's context from the config,
shipped as a JSON dict and validated again with :func:`ntklab.config.validate` (its digest must
match the driver's), runs the unit with ``num_cpus`` torch threads, and writes the result to the
store at the driver's store path. The driver only sends units and receives (key, seconds,
error) back; it waits with a progress bar over finished units, then reads the results.

On a cluster the store (``$NTKLAB_CACHE_DIR/units``) must be on a filesystem that every node
mounts at the same path (NFS, Lustre, ...). Each task checks this: the store's ``STORE_ID``
must be the driver's, otherwise the run stops with one sentence naming the node. ntklab (the
same version) must be installed on every node.

Failures are handled as by the local executor (recorded, the sweep goes on, ``retry_failed``
reruns them); a task whose worker dies (out of memory, a lost node) is retried twice by Ray,
then recorded as failed. Ctrl-C cancels the tasks still queued or running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from ntklab.errors import NtkLabError
from ntklab.progress import progress_bar
from ntklab.run.execute import config_payload, run_in_worker
from ntklab.run.schedule import Outcome, Schedule, UnitExecutor, count_result
from ntklab.run.store import Store
from ntklab.run.units import Unit

log = logging.getLogger(__name__)

RAY_RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory")
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # tasks return small tuples; results go to the store
MAX_RETRIES = 2  # Ray retries a task whose worker died (not one that raised)


def import_ray() -> Any:
    """The ``ray`` module, or a one-sentence error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise NtkLabError(
            "--executor ray needs the ray package, which is not installed: pip install 'ntklab[ray]'."
        ) from None
    return ray


def task_options(unit: Unit) -> dict[str, Any]:
    """Ray ``.options()`` for a unit: its declared resources, retries, a readable name."""
    res = dict(unit.resources)
    opts: dict[str, Any] = {k: res.pop(k) for k in RAY_RESOURCE_KEYS if k in res}
    opts.setdefault("num_cpus", 1)
    if res:
        opts["resources"] = res
    opts["max_retries"] = MAX_RETRIES
    opts["name"] = f"ntklab {unit.label or unit.key}"
    return opts


def remote_unit(cfg_json: str, digest: str, store_root: str, store_id: str, unit: Unit) -> dict:
    """Body of a Ray task (a plain function, wrapped with ``ray.remote`` by the driver)."""
    return run_in_worker(cfg_json, digest, store_root, store_id, unit)


class RayExecutor(UnitExecutor):
    """Runs units as Ray tasks on a local Ray instance or an existing cluster.

    Parameters
    ----------
    address : str or None
        ``"auto"``, ``"HOST:PORT"`` (``ray.init(address=...)``) or None to start a local
        instance. If Ray is already initialized in this process it is used as it is.
    num_cpus : int or None
        CPUs of the local instance (default all cores; raised to the largest unit's
        ``num_cpus`` so that no unit is unschedulable). Ignored with an address.
    threads : int or None
        Overrides every unit's ``num_cpus`` (its torch threads and the CPUs Ray reserves).
    gpus : float or None
        Overrides every unit's ``num_gpus`` (Ray hides GPUs from a task that reserves none, so
        with ``device = "auto"`` units run on CPU unless they, or this, ask for a GPU).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        threads: int | None = None,
        gpus: float | None = None,
    ) -> None:
        self.ray = import_ray()
        self.address = address
        self.num_cpus = num_cpus
        self.threads = threads
        self.gpus = gpus
        self.started = False

    def connect(self, units: Sequence[Unit]) -> None:
        """Initialize Ray (once) as the constructor arguments say."""
        ray = self.ray
        if ray.is_initialized():
            return
        try:
            if self.address is not None:
                # workers use the driver's cache (generated data) when it is set: on a cluster it
                # is on the shared filesystem, like the store inside it
                cache = os.environ.get("NTKLAB_CACHE_DIR")
                env = {"env_vars": {"NTKLAB_CACHE_DIR": cache}} if cache else None
                ray.init(address=self.address, logging_level=logging.WARNING, runtime_env=env)
            else:
                need = max([float(u.resources.get("num_cpus", 1)) for u in units] or [1.0])
                cpus = max(self.num_cpus or os.cpu_count() or 1, int(-(-need // 1)))
                ray.init(
                    num_cpus=cpus,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                )
        except ConnectionError as exc:
            raise NtkLabError(
                f"cannot connect to the Ray cluster at {self.address!r} ({exc}); check the address and, "
                "if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN or ~/.ray/auth_token)."
            ) from None
        self.started = True

    def close(self) -> None:
        """Shut down the Ray instance or connection this executor started."""
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False

    def run_pending(
        self, todo: list[Unit], out: Outcome, ctx: Any, store: Store, progress: bool | None
    ) -> Outcome:
        """Run ``todo`` as Ray tasks."""
        if not todo:
            return out
        self.connect(todo)
        ray = self.ray
        cfg_json, digest = config_payload(ctx)
        root, store_id = str(store.root.resolve()), store.ensure_id()
        task = ray.remote(remote_unit)
        sched = Schedule(todo, store, out)
        refs: dict[Any, Unit] = {}
        try:
            with progress_bar(total=len(todo), desc="units (ray)", enabled=progress) as bar:
                while sched:
                    for u in sched.ready():
                        ref = task.options(**task_options(u)).remote(cfg_json, digest, root, store_id, u)
                        refs[ref] = u
                    if not refs:
                        if sched.wait_for_others():
                            continue
                        break
                    done, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                    for ref in done:
                        u = refs.pop(ref)
                        try:
                            res = ray.get(ref)
                        except ray.exceptions.RayError as exc:  # worker died, node lost, ...
                            msg = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
                            store.record_failure(u.key, {"unit": u.label, "error": msg})
                            res = {"key": u.key, "seconds": 0.0, "error": msg}
                        if res.get("user_error") is not None:
                            raise res["user_error"]
                        count_result(res, u, out, bar)
                        sched.done(u.key)
                bar.update(len(todo) - bar.n)
        finally:
            for ref in refs:  # interrupted or a user error: stop what is still queued or running
                ray.cancel(ref, force=True)
        return out

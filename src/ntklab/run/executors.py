"""Executors run the units a store does not hold yet; results land in the store.

``local`` runs them in this process, in order, with a progress bar over units. Failures (an
exception, a NaN loss, a singular kernel) are recorded with their error and the sweep goes on;
they are reported at the end and retried only when asked (``retry_failed``).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ntklab.errors import NtkLabError
from ntklab.progress import progress_bar
from ntklab.run.store import Store
from ntklab.run.units import Unit

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What running a set of units gave."""

    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def execute_unit(unit: Unit, ctx: Any, store: Store) -> tuple[str, float, str | None]:
    """Run one unit and store its result; returns (key, seconds, error or None).

    User errors (NtkLabError) propagate: they are mistakes in the config, not unit failures.
    """
    t0 = time.perf_counter()
    try:
        result = unit.function()(ctx, **unit.args)
    except NtkLabError:
        raise
    except (Exception, FloatingPointError) as exc:  # noqa: BLE001 - recorded, the sweep goes on
        msg = f"{type(exc).__name__}: {exc}"
        store.record_failure(
            unit.key, {"unit": unit.label, "error": msg, "traceback": traceback.format_exc()}
        )
        return unit.key, time.perf_counter() - t0, msg
    store.save(unit.key, result)
    return unit.key, time.perf_counter() - t0, None


def pending(units: Sequence[Unit], store: Store, retry_failed: bool) -> tuple[list[Unit], Outcome]:
    """Units still to run (cached ones counted; previously failed ones skipped unless retried)."""
    out = Outcome()
    todo = []
    seen = set()
    for u in units:
        if u.key in seen:
            continue
        seen.add(u.key)
        if store.has(u.key):
            out.cached.append(u.key)
        elif store.failure(u.key) is not None and not retry_failed:
            out.failed[u.key] = store.failure(u.key)["error"]
        else:
            todo.append(u)
    return todo, out


class LocalExecutor:
    """Runs units one after the other in this process."""

    name = "local"

    def run(
        self,
        units: Sequence[Unit],
        ctx_factory: Callable[[], Any],
        store: Store,
        *,
        retry_failed: bool = False,
        progress: bool | None = None,
    ) -> Outcome:
        todo, out = pending(units, store, retry_failed)
        if not todo:
            return out
        ctx = ctx_factory()
        with progress_bar(total=len(todo), desc="units", enabled=progress) as bar:
            for u in todo:
                bar.set_postfix_str(u.label)
                key, secs, err = execute_unit(u, ctx, store)
                out.seconds[key] = secs
                if err is None:
                    out.computed.append(key)
                else:
                    out.failed[key] = err
                    log.warning("unit %s failed: %s", u.label, err)
                bar.update(1)
        return out


def make_executor(name: str, address: str | None = None) -> Any:
    """``local`` or ``ray`` (optional extra)."""
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from ntklab.run.ray_executor import RayExecutor

        return RayExecutor(address)
    raise NtkLabError(f"--executor must be 'local' or 'ray'; got {name!r}.")

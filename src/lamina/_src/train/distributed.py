"""Several processes, one training run: JAX's multi-controller runtime, as fit uses it.

Every process runs the same program. `initialize_distributed` joins them
(a coordinator at process 0's address); afterwards `jax.devices()` lists
every process's devices, and a jitted step on arrays that span them all runs
as one computation, gradients averaged across processes by XLA's own
collectives. fit then trains data-parallel: params replicated on every
device, each batch split over the devices, each process supplying the rows
of its own devices.
"""

from __future__ import annotations

import errno
import hashlib
import socket
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lamina._src.core.errors import LaminaError, layer_error
from lamina._src.train import examples

DATA = "data"


def initialize_distributed(coordinator: str, num_processes: int, process_id: int, *,
                           timeout: float = 60.0) -> None:
    """Joins this process to a multi-process run: `jax.distributed.initialize`, checked first.

    Call it first thing, before any other JAX call, in each of the
    `num_processes` processes, with the same `coordinator` and each its own
    `process_id`. Process 0 hosts the coordinator at that address; the
    others connect to it. On CPU it selects gloo for the collectives that
    cross processes.

    Args:
      coordinator: `"host:port"` of process 0, reachable from every process.
      num_processes: how many processes take part, >= 1.
      process_id: this process's number, `0 <= process_id < num_processes`.
      timeout: seconds to wait for the coordinator (and, at process 0, for
        the others to join).

    Raises:
      LaminaError (ValueError): bad arguments; process 0 cannot listen at
        `coordinator` (the port is taken); a process other than 0 cannot
        reach the coordinator within `timeout`; JAX already started.

    jax itself ends the process (it does not raise) when the coordinator
    stops answering after the start, or when process 0 waits past `timeout`
    for a process that never comes; the checks here find the common causes
    (a wrong address, process 0 not started, a taken port) before that.

    Example:
      In each of two processes, `i` being 0 in one and 1 in the other:
      `lm.initialize_distributed("10.0.0.1:12355", 2, i)`, then `lm.fit`
      as in one process. A mistake is named before anything starts:

      >>> import lamina as lm
      >>> try:
      ...     lm.initialize_distributed("10.0.0.1", 2, 1)
      ... except ValueError as error:
      ...     print(error)
      initialize_distributed: coordinator must be 'host:port', e.g. '127.0.0.1:12355', got '10.0.0.1'
    """
    where = "initialize_distributed"
    host, port = _address(where, coordinator)
    for name, value, low in (("num_processes", num_processes, 1), ("process_id", process_id, 0)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise layer_error(where, f"{name} must be an int >= {low}, got {value!r}", TypeError)
        if value < low:
            raise layer_error(where, f"{name} must be an int >= {low}, got {value!r}")
    if process_id >= num_processes:
        raise layer_error(
            where, f"process_id must be below num_processes={num_processes}, got {process_id}")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise layer_error(where, f"timeout must be a number of seconds > 0, got {timeout!r}")
    if process_id == 0:
        _check_free(where, host, port)
    else:
        _wait_for(where, host, port, timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes=num_processes,
                                   process_id=process_id,
                                   initialization_timeout=max(1, int(timeout)))
    except RuntimeError as error:  # e.g. JAX computed something before this call
        raise layer_error(where, f"jax.distributed.initialize failed: {error}") from None


def _address(where: str, coordinator: Any) -> tuple[str, int]:
    host, _, port = coordinator.rpartition(":") if isinstance(coordinator, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise layer_error(
            where, f"coordinator must be 'host:port', e.g. '127.0.0.1:12355', got {coordinator!r}",
            TypeError if not isinstance(coordinator, str) else ValueError)
    return host, int(port)


def _check_free(where: str, host: str, port: int) -> None:
    """Process 0 is to listen at the port: say so now if something else holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As a server binds: a port an earlier run left in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))  # the coordinator listens on every interface
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                return  # not ours to judge: jax reports what it meets
            raise layer_error(
                where,
                f"process 0 hosts the coordinator at {host}:{port}, but cannot listen there "
                f"({error.strerror or error}): another program (or an earlier run) holds the "
                f"port; pick a free one",
            ) from None


def _wait_for(where: str, host: str, port: int, timeout: float) -> None:
    """Waits until the coordinator accepts connections, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Optional[OSError] = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout)):
                return
        except OSError as error:
            last = error
            time.sleep(0.2)
    raise layer_error(
        where,
        f"could not reach the coordinator at {host}:{port} within {timeout:g} s "
        f"({getattr(last, 'strerror', None) or last}): start process 0 with the same "
        f"coordinator address, and check that this machine can reach it",
    )


def multiprocess() -> bool:
    """Whether this run spans several processes."""
    return jax.process_count() > 1


def data_mesh() -> Mesh:
    """Every device of every process, along one data axis, in process order."""
    return Mesh(np.array(jax.devices()), (DATA,))


def replicated(where: str, what: str, tree: Any, mesh: Mesh) -> Any:
    """`tree` (the same on every process) as arrays replicated on every device of `mesh`.

    Raises, naming `where` and `what`, when the processes hold different
    values: each would otherwise train its own model under one name. Only
    a hash of each process's values crosses between them.
    """
    mine = [a for a in jax.tree.leaves(tree)
            if not (isinstance(a, jax.Array) and not a.is_fully_addressable)]
    h = hashlib.sha256()
    for a in mine:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    hashes = np.asarray(multihost_utils.process_allgather(
        np.frombuffer(h.digest(), np.uint8))).reshape(jax.process_count(), -1)
    differ = [i for i in range(len(hashes)) if not np.array_equal(hashes[i], hashes[0])]
    if differ:
        raise layer_error(
            where,
            f"the {what} differ between processes (those of process(es) {differ} are not "
            f"process 0's): every process must pass the same {what}",
        )
    return on_mesh(tree, mesh)


def on_mesh(tree: Any, mesh: Mesh) -> Any:
    """This process's arrays replicated over `mesh`; arrays that span processes stay.

    An optimizer's `init` makes some arrays on the local device (a step
    count), which a checkpoint would restore there: every array of a run
    lives on the whole mesh.
    """
    sharding = NamedSharding(mesh, PartitionSpec())

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return a
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def rows(where: str, tree: Any, mesh: Mesh, what: str = "inputs") -> Any:
    """This process's rows of a batch (or data set) as its part of one array over `mesh`.

    Every process must give the same number of rows; process 0's come
    first, then process 1's, and so on.
    """
    counts = multihost_utils.process_allgather(np.int64(examples.count(where, tree, what)))
    counts = [int(c) for c in np.ravel(counts)]
    if len(set(counts)) != 1:
        raise layer_error(
            where,
            f"every process must give the same number of examples; the processes gave "
            f"{counts}",
        )
    local = jax.local_device_count()
    if counts[0] % local:
        raise layer_error(
            where,
            f"each process's {counts[0]} examples must split evenly over its {local} devices",
        )
    return examples.tmap(
        lambda a: jax.make_array_from_process_local_data(split_rows(mesh), np.asarray(a)), tree)


def split_rows(mesh: Mesh) -> NamedSharding:
    """Axis 0 split over the mesh's data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def local(tree: Any) -> Any:
    """This process's copy of arrays that span processes, whole (others are left alone)."""
    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return a
        if a.is_fully_replicated:
            return a.addressable_data(0)
        return jax.numpy.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(one, tree)


def every_process(text: str) -> str:
    """`text` of every process, joined in process order (itself, in one process)."""
    if not multiprocess():
        return text
    data = np.frombuffer(text.encode().ljust(64)[:64], np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(data)).reshape(-1, 64)
    return ",".join(bytes(row).decode().strip() for row in gathered)


def all_processes_sum(n: int) -> int:
    """`n` summed over the processes."""
    return int(np.sum(multihost_utils.process_allgather(np.int64(n))))


def agreed(where: str, make: Callable[[], Any]) -> Any:
    """`make()`, in every process or in none: an error in one process stops them all.

    A process that raised alone would leave the others waiting for it in the
    next collective. Several processes: each says whether `make` succeeded;
    the ones that failed raise their own error, the others an error naming
    them. One process: `make()` as it is.
    """
    if not multiprocess():
        return make()
    error: Optional[LaminaError] = None
    try:
        made = make()
    except LaminaError as raised:
        error = raised
    failed = np.ravel(multihost_utils.process_allgather(np.int32(error is not None)))
    if error is not None:
        raise error
    if failed.any():
        raise layer_error(
            where,
            f"process(es) {[int(i) for i in np.flatnonzero(failed)]} stopped with an error "
            f"(see their output), so this process stops too",
        )
    return made

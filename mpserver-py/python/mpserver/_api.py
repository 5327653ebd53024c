"""The seed's API: workers, servlets and the server.

Servlets are only a description of the flow; :class:`Server` hands the
description to the Rust engine when it starts (``with server:``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.spawn
import os
import pickle
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
# `typing` is not imported at run time (it is the slowest import of the package
# and the fork server pays it before its first fork): annotations are strings.
TYPE_CHECKING = False

if TYPE_CHECKING:  # asyncio and typing are imported only when used: worker
    # processes import this module and should start fast.
    from typing import Any, Callable

from . import _forkserver, _mpserver
from ._errors import ServerBacklogFull

# The folder holding the package: worker interpreters import it from there.
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = [
    'Worker',
    'make_worker',
    'make_threadworker',
    'PassThrough',
    'CpuAffinity',
    'Servlet',
    'ProcessServlet',
    'ThreadServlet',
    'SequentialServlet',
    'EnsembleServlet',
    'SwitchServlet',
    'Server',
]


def _batch_settings(batch_size, batch_wait_time):
    """The seed's rules for ``batch_size`` and ``batch_wait_time``."""
    if batch_size is None or batch_size == 0:
        batch_size = 0
        if batch_wait_time is None:
            batch_wait_time = 0
        elif batch_wait_time != 0:
            raise ValueError("batch_wait_time must be 0 when batch_size is 0")
    elif batch_size == 1:
        if batch_wait_time is None:
            batch_wait_time = 0
        elif batch_wait_time != 0:
            raise ValueError("batch_wait_time must be 0 when batch_size is 1")
    else:
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        if batch_wait_time is None:
            batch_wait_time = 0.01
        elif not 0 < batch_wait_time < 1:
            raise ValueError(f"batch_wait_time must be in (0, 1), got {batch_wait_time}")
    return int(batch_size), float(batch_wait_time)


class Worker(ABC):
    """Operations on one item, or a batch of items, in plain synchronous code.

    A subclass implements :meth:`call` and may extend :meth:`__init__` with
    its own keyword arguments (the servlet passes them on). The instance is
    created in its own worker thread or worker process, never in the server's
    main thread, so heavy set-up (loading a model) belongs in ``__init__``.
    """

    def __init__(
        self,
        *,
        worker_index: int,
        batch_size: int | None = None,
        batch_wait_time: float | None = None,
        batch_size_log_cadence: int | None = 1_000_000,
    ):
        """
        Parameters
        ----------
        worker_index
            0-based number of this worker in its servlet (e.g. to pick a GPU).
        batch_size
            ``0`` or ``None``: :meth:`call` gets one item. ``> 0``: it gets a
            list of up to ``batch_size`` items and returns one result per item
            (``1`` is batch form without waiting).
        batch_wait_time
            Seconds to wait for a batch to fill after its first item arrived
            (default 0.01 when ``batch_size > 1``, else 0).
        batch_size_log_cadence
            Accepted for compatibility; batch sizes are in ``debug_info()``.
        """
        batch_size, batch_wait_time = _batch_settings(batch_size, batch_wait_time)
        self.worker_index = worker_index
        self.batch_size = batch_size
        self.batch_wait_time = batch_wait_time
        self.batch_size_log_cadence = batch_size_log_cadence
        self.name = f"{multiprocessing.current_process().name}-{threading.current_thread().name}"

    @abstractmethod
    def call(self, x):
        """Returns the result for ``x`` (a single item if ``self.batch_size``
        is 0, otherwise a list of items, for which it returns a sequence of
        results in the same order). Exceptions are not to be handled here:
        they reach the caller of the server with this worker's traceback."""
        raise NotImplementedError


#: The seed's names for :class:`Worker`.
ProcessWorker = Worker
ThreadWorker = Worker


def make_worker(func: Callable[[Any], Any]) -> type[Worker]:
    """A :class:`Worker` subclass whose :meth:`~Worker.call` is ``func``
    (for quick thread steps such as pre- and post-processing)."""

    class MyWorker(Worker):
        def call(self, x):
            return func(x)

    MyWorker.__name__ = f"Worker-{getattr(func, '__name__', 'func')}"
    MyWorker.__qualname__ = MyWorker.__name__
    return MyWorker


#: The seed's name for :func:`make_worker`.
make_threadworker = make_worker


class PassThrough(Worker):
    """Returns its input; useful as an ensemble member to keep the input
    beside the other members' results."""

    def call(self, x):
        return x


class CpuAffinity:
    """Which CPUs a process runs on (``None``: no pinning; an int; a list of
    ints; ``[]``: all eligible CPUs)."""

    def __init__(self, target: int | list[int] | None = None, /):
        if target is not None:
            if isinstance(target, int):
                target = [target]
            else:
                target = list(target)
                if not all(isinstance(v, int) for v in target):
                    raise TypeError(f"CPU indices must be ints, got {target!r}")
        self.target = target

    def __repr__(self):
        return f"{self.__class__.__name__}({self.target})"

    def __str__(self):
        return self.__repr__()

    def __eq__(self, other):
        return isinstance(other, CpuAffinity) and other.target == self.target

    def set(self, *, pid=None) -> None:
        """Pins process ``pid`` (default: this one) as specified."""
        if self.target is not None:
            cpus = self.target or sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
            os.sched_setaffinity(pid or 0, cpus)

    @classmethod
    def get(cls, *, pid=None) -> list[int]:
        """The CPUs process ``pid`` (default: this one) may run on."""
        return sorted(os.sched_getaffinity(pid or 0))


def _cpu_spec(v):
    if isinstance(v, CpuAffinity):
        v = v.target
    if v is None:
        return None
    if isinstance(v, int):
        return [v]
    v = list(v)
    if not all(isinstance(c, int) and c >= 0 for c in v):
        raise ValueError(f"invalid CPU spec {v!r}")
    return v


class Servlet(ABC):
    """A part of a flow: a simple servlet runs one :class:`Worker` in
    processes or threads; a compound servlet arranges other servlets."""

    @abstractmethod
    def _spec(self):
        raise NotImplementedError


def _init_default(worker_cls, name):
    """The default of keyword ``name`` in the worker class's own ``__init__``
    (e.g. ``def __init__(self, *, batch_size=32, **kwargs)``), if it has one."""
    import inspect

    init = worker_cls.__init__
    if init is Worker.__init__:
        return None
    try:
        p = inspect.signature(init).parameters.get(name)
    except (TypeError, ValueError):
        return None
    if p is None or p.default is inspect.Parameter.empty:
        return None
    return p.default


def _worker_settings(worker_cls, init_kwargs):
    """The servlet's batching: from its keywords, else from the defaults of the
    worker class's own ``__init__`` (the engine forms the batches, so it must
    know them before the workers start)."""
    if not (isinstance(worker_cls, type) and issubclass(worker_cls, Worker)):
        raise TypeError(f"expected a subclass of Worker, got {worker_cls!r}")
    if 'batch_size' in init_kwargs:
        size = init_kwargs['batch_size']
    else:
        size = _init_default(worker_cls, 'batch_size')
    if 'batch_wait_time' in init_kwargs:
        wait = init_kwargs['batch_wait_time']
    else:
        wait = _init_default(worker_cls, 'batch_wait_time')
    return _batch_settings(size, wait)


_START_METHODS = ('forkserver', 'spawn')
_start_method = 'forkserver'


def set_start_method(method: str) -> None:
    """How worker processes start, for the process servlets of servers started
    from now on (a servlet's ``configure(start_method=...)`` overrides it).

    ``'forkserver'`` (the default): a fork server, a single-threaded
    interpreter prepared once the spawn way (the main script imported as
    ``__mp_main__``, the package imported), started with the first server
    that has process servlets and kept for the life of the program, forks
    each worker process. Workers start in milliseconds instead of an
    interpreter's start-up; a worker sees the main script's module-level
    state as the fork server imported it (not as it is in the parent now).
    If the fork server dies, or has more than one thread (it never forks
    then), workers are spawned.

    ``'spawn'``: every worker process is a fresh interpreter that imports the
    package and re-imports the main script itself, as ``multiprocessing``'s
    spawn method does.
    """
    global _start_method
    if method not in _START_METHODS:
        raise ValueError(f"start_method must be one of {_START_METHODS}, got {method!r}")
    _start_method = method


def start_forkserver() -> None:
    """Starts the fork server now, if none runs, instead of with the first
    server that has process servlets: it starts and imports the main script
    and the package while the program goes on (loading a model, reading
    configuration), so that the first server's workers need not wait for an
    interpreter's start. Call it inside ``if __name__ == '__main__':``, after
    ``sys.path`` and the working directory are set (workers still get the
    values current when their server starts). Does nothing if the start
    method is ``'spawn'``.
    """
    if _start_method != 'forkserver':
        return
    _mpserver._start_forkserver(_preparation('forkserver'), _PKG_ROOT)


def _preparation(name: str) -> bytes:
    # What multiprocessing's spawn start method sends a child: sys.path,
    # the working directory, and the main script, which the worker
    # re-imports as `__mp_main__` (so classes defined there unpickle).
    prep = multiprocessing.spawn.get_preparation_data(name)
    if 'authkey' in prep:
        prep['authkey'] = bytes(prep['authkey'])
    return pickle.dumps(prep, protocol=5)


def get_start_method() -> str:
    """The start method set by :func:`set_start_method` (``'forkserver'`` by default)."""
    return _start_method


class ProcessServlet(Servlet):
    """Runs a :class:`Worker` in worker processes (for CPU-bound work).

    Each worker process is forked by the engine's fork server (an
    interpreter prepared the spawn way) or, with
    ``start_method='spawn'``, is a fresh Python interpreter; either way the
    worker class and its arguments are pickled and ``__main__`` is prepared
    as ``multiprocessing``'s spawn method does, so classes defined in the
    main script are found. Workers are supervised: a process that dies fails
    only the items it held and is restarted.
    """

    def __init__(
        self,
        worker_cls: type[Worker],
        *,
        cpus: None | int | Sequence[CpuAffinity | None | int | Sequence[int]] = None,
        worker_name: str | None = None,
        **init_kwargs,
    ):
        """
        Parameters
        ----------
        worker_cls
            A subclass of :class:`Worker`.
        cpus
            ``None`` (default): one unpinned process. An int ``n``: ``n``
            unpinned processes. A list: one process per entry, each entry
            ``None`` (unpinned), a CPU index, a list of CPU indices, or a
            :class:`CpuAffinity`.
        worker_name
            Name used in errors, logs and ``debug_info()`` (default: the
            class name).
        **init_kwargs
            Passed to ``worker_cls.__init__`` in each worker process (they
            are pickled). ``batch_size`` and ``batch_wait_time`` also set the
            servlet's batching.
        """
        self._batch = _worker_settings(worker_cls, init_kwargs)
        self._worker_cls = worker_cls
        if cpus is None:
            self._cpus = [None]
        elif isinstance(cpus, int):
            if cpus < 1:
                raise ValueError(f"cpus must be >= 1, got {cpus}")
            self._cpus = [None] * cpus
        else:
            self._cpus = [_cpu_spec(c) for c in cpus]
            if not self._cpus:
                raise ValueError("cpus must not be empty")
        self._name = worker_name or worker_cls.__name__
        self._init_kwargs = init_kwargs
        self._options = {}

    def configure(
        self,
        *,
        recycle_after: int | None = None,
        recycle_above_memory: int | None = None,
        retry_crashed: bool | None = None,
        poison_threshold: int | None = None,
        max_inflight: int | None = None,
        stable_after: float | None = None,
        start_method: str | None = None,
    ) -> ProcessServlet:
        """Engine options beyond the seed (all optional; returns ``self``).

        recycle_after
            Replace a worker process after it handled this many items.
        recycle_above_memory
            Replace a worker process whose resident memory exceeds this many bytes.
        retry_crashed
            Retry items held by a crashed worker process (off by default: work
            may have side effects); an item in ``poison_threshold`` crashes
            fails with :class:`PoisonItem`.
        max_inflight
            Items a worker process may hold at once.
        stable_after
            Seconds after which a worker process that has answered no item
            yet counts as having served (default 1): when such a process
            dies, it is replaced at once instead of after a back-off, and its
            death does not count toward the restart limit.
        start_method
            ``'forkserver'`` or ``'spawn'`` for this servlet's processes
            (default: :func:`get_start_method`).
        """
        if start_method is not None and start_method not in _START_METHODS:
            raise ValueError(
                f"start_method must be one of {_START_METHODS}, got {start_method!r}"
            )
        if stable_after is not None and not stable_after >= 0:
            raise ValueError(f"stable_after must be >= 0, got {stable_after!r}")
        for k, v in dict(
            recycle_after=recycle_after,
            recycle_above_memory=recycle_above_memory,
            retry_crashed=retry_crashed,
            poison_threshold=poison_threshold,
            max_inflight=max_inflight,
            stable_after=stable_after,
            start_method=start_method,
        ).items():
            if v is not None:
                self._options[k] = v
        return self

    def _spec(self):
        prep = _preparation(self._name)
        payload = pickle.dumps((self._worker_cls, self._init_kwargs), protocol=5)
        return (
            'process',
            prep,
            payload,
            self._cpus,
            self._name,
            self._batch[0],
            self._batch[1],
            dict(
                {'start_method': _start_method},
                **self._options,
                pkg_root=_PKG_ROOT,
            ),
        )


class ThreadServlet(Servlet):
    """Runs a :class:`Worker` in threads of the server process (for I/O-bound
    or light work, or values that do not pickle)."""

    def __init__(
        self,
        worker_cls: type[Worker],
        *,
        num_threads: int | None = None,
        worker_name: str | None = None,
        **init_kwargs,
    ):
        """
        Parameters
        ----------
        worker_cls
            A subclass of :class:`Worker`.
        num_threads
            Number of threads, each with its own instance (default 1).
        worker_name
            Name used in errors, logs and ``debug_info()``.
        **init_kwargs
            Passed to ``worker_cls.__init__`` in each thread.
        """
        self._batch = _worker_settings(worker_cls, init_kwargs)
        self._worker_cls = worker_cls
        self._num_threads = num_threads or 1
        self._name = worker_name or worker_cls.__name__
        self._init_kwargs = init_kwargs

    def _spec(self):
        return (
            'thread',
            self._worker_cls,
            dict(self._init_kwargs),
            self._num_threads,
            self._name,
            self._batch[0],
            self._batch[1],
        )


def _members(kind: str, servlets) -> tuple:
    """The members of a compound servlet, checked."""
    if not servlets:
        raise ValueError(f"{kind} needs at least one servlet")
    for s in servlets:
        if not isinstance(s, Servlet):
            raise TypeError(f"expected a Servlet, got {s!r}")
    return servlets


class SequentialServlet(Servlet):
    """Servlets in order, each one's output the next one's input."""

    def __init__(self, *servlets: Servlet):
        self._servlets = _members('SequentialServlet', servlets)

    def _spec(self):
        return ('sequential', [s._spec() for s in self._servlets])


class EnsembleServlet(Servlet):
    """Every member gets the same input; the output is the list of their
    results in member order.

    ``fail_fast=True`` (default): the first member error makes the item an
    :class:`EnsembleError` (and the other members skip it if they have not
    started it). ``fail_fast=False``: member exceptions sit in their places
    in the list; only an item on which every member failed is an
    :class:`EnsembleError`.
    """

    def __init__(self, *servlets: Servlet, fail_fast: bool = True):
        self._servlets = _members('EnsembleServlet', servlets)
        self._fail_fast = bool(fail_fast)

    def _spec(self):
        return ('ensemble', [s._spec() for s in self._servlets], self._fail_fast)


class SwitchServlet(Servlet):
    """Each item goes to the one member picked by :meth:`switch`."""

    def __init__(self, *servlets: Servlet):
        self._servlets = _members('SwitchServlet', servlets)

    @abstractmethod
    def switch(self, x) -> int:
        """The index of the member that processes ``x``."""
        raise NotImplementedError

    def _spec(self):
        return ('switch', self, [s._spec() for s in self._servlets])


_BRIDGES = weakref.WeakKeyDictionary()
# The loop of the last lookup (a weak reference) and its bridge: a program
# runs one loop, and async_call looks the bridge up once per call.
_LAST_BRIDGE = (None, None)


def _bridge(loop):
    """The engine's bridge to ``loop``: a pipe the engine writes to when it
    completes a request, whose reader callback (on the loop's thread, in the
    engine: it empties the pipe and sets the results of the futures of every
    request completed since) runs once per wake-up, not once per result."""
    global _LAST_BRIDGE
    ref, b = _LAST_BRIDGE
    if ref is not None and ref() is loop:
        return b
    b = _BRIDGES.get(loop)
    if b is None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        try:
            b = _mpserver.Bridge(w, r)
        finally:
            os.close(w)
        loop.add_reader(r, b.on_readable)
        weakref.finalize(loop, os.close, r)
        _BRIDGES[loop] = b
    _LAST_BRIDGE = (weakref.ref(loop), b)
    return b


def _get_running_loop():
    """``asyncio.get_running_loop`` (asyncio is imported on first use only:
    worker processes import this module and should start fast)."""
    global _get_running_loop
    from asyncio import get_running_loop

    _get_running_loop = get_running_loop
    return get_running_loop()


def _not_started():
    return RuntimeError("the server is not running; use it as `with server: ...`")


class Server:
    """Runs a servlet and serves calls and streams through it.

    Use it as a context manager: entering starts every worker (and raises
    the worker's exception if one fails to initialise); leaving stops them.
    """

    def __init__(
        self,
        servlet: Servlet,
        *,
        main_cpu: int | list[int] | None = 0,
        backlog: int | None = None,
        capacity: int = 256,
        sys_info_log_cadence: int | None = None,
        shutdown_grace: float = 30.0,
    ):
        """
        Parameters
        ----------
        servlet
            The flow.
        main_cpu
            CPUs for the server's own threads (dispatch, result readers,
            timer); ``None`` leaves them unpinned.
        backlog
            Deprecated name of ``capacity``.
        capacity
            Most requests in flight in the server, all stages combined.
        sys_info_log_cadence
            Accepted for compatibility; ignored.
        shutdown_grace
            Seconds that leaving the context lets in-flight work finish.
        """
        if backlog is not None:
            import warnings

            warnings.warn(
                "The parameter `backlog` is deprecated; use `capacity` instead",
                DeprecationWarning,
                stacklevel=2,
            )
            capacity = backlog
        if not isinstance(servlet, Servlet):
            raise TypeError(f"expected a Servlet, got {servlet!r}")
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.servlet = servlet
        self._capacity = int(capacity)
        self._main_cpu = _cpu_spec(main_cpu)
        self._shutdown_grace = float(shutdown_grace)
        self._core = None

    # -- life cycle ---------------------------------------------------------

    def __enter__(self):
        if self._core is not None:
            raise RuntimeError("the server is already running")
        if _forkserver.preparing:
            raise RuntimeError(
                "a server was started while the main script was being imported by "
                "mpserver's fork server: guard the program with "
                "`if __name__ == '__main__':`"
            )
        self._core = _mpserver.Core.start(
            self.servlet._spec(), self._capacity, self._main_cpu, self._shutdown_grace
        )
        return self

    def __exit__(self, *args):
        core, self._core = self._core, None
        if core is not None:
            core.shutdown()

    # -- state --------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def backlog(self) -> int:
        """Requests in flight now."""
        return 0 if self._core is None else self._core.backlog

    def full(self) -> bool:
        return self.backlog >= self._capacity

    def debug_info(self) -> dict:
        """The server's state: capacity, backlog, request counters, the
        servlet tree with per-servlet counters and per-worker state, and the
        oldest pending requests."""
        if self._core is None:
            return {'state': 'stopped', 'capacity': self._capacity, 'backlog': 0}
        import json

        return json.loads(self._core.debug_info_json())

    def _worker_pids(self) -> list[int]:
        return [] if self._core is None else list(self._core.worker_pids())

    # -- calls --------------------------------------------------------------

    def call(self, x, /, *, timeout: int | float = 60):
        """The flow's result for ``x``. Waits for room if the server is full
        (:class:`ServerBacklogFull` if none comes within ``timeout``), then
        for the result (:class:`TimeoutError` after ``timeout`` seconds in
        all). The GIL is released while waiting."""
        core = self._core
        if core is None:
            raise _not_started()
        return core.call(x, float(timeout), False)

    async def async_call(self, x, /, *, timeout: int | float = 60, backpressure: bool = True):
        """Async :meth:`call`. With ``backpressure`` (default) a full server
        raises :class:`ServerBacklogFull` at once; without, it waits for room
        up to ``timeout``. Never blocks the event loop; cancelling the task
        cancels the request."""
        core = self._core
        if core is None:
            raise _not_started()
        loop = _get_running_loop()
        fut = loop.create_future()
        call = core.submit_async(_bridge(loop), fut, x, float(timeout), bool(backpressure))
        try:
            return await fut
        except BaseException:
            # Cancelled (or the coroutine closed): dropping the engine's
            # future cancels the request. (A result or the worker's own
            # exception needs nothing: the request is finished.)
            if not fut.done() or fut.cancelled():
                call.cancel()
            raise

    def stream(
        self,
        data_stream: Iterable,
        /,
        *,
        return_x: bool = False,
        return_exceptions: bool = False,
        timeout: int | float = 60,
    ) -> Iterator:
        """Results for the items of ``data_stream``, in input order, keeping
        up to ``capacity`` items in flight.

        ``return_x``: yield ``(x, y)`` pairs. ``return_exceptions``: yield an
        item's exception in its place and go on (default: raise it, which
        ends the stream). Leaving the loop early cancels what is in flight.
        """
        core = self._core
        if core is None:
            raise _not_started()
        s = core.stream(data_stream, float(timeout), bool(return_x), bool(return_exceptions))
        try:
            yield from s
        finally:
            s.close()

    async def async_stream(
        self,
        data_stream: AsyncIterable | Iterable,
        /,
        *,
        return_x: bool = False,
        return_exceptions: bool = False,
        timeout: int | float = 60,
    ) -> AsyncIterator:
        """Async :meth:`stream` over an async (or plain) iterable."""
        core = self._core
        if core is None:
            raise _not_started()
        import asyncio

        timeout = float(timeout)
        window = asyncio.Queue(maxsize=self._capacity)
        end = object()

        async def items():
            if isinstance(data_stream, AsyncIterable):
                async for x in data_stream:
                    yield x
            else:
                for x in data_stream:
                    yield x

        async def feed():
            try:
                async for x in items():
                    fut = asyncio.ensure_future(self.async_call(x, timeout=timeout, backpressure=False))
                    await window.put((x, fut))
            except Exception as e:
                await window.put((end, e))
            else:
                await window.put((end, None))

        feeder = asyncio.ensure_future(feed())
        try:
            while True:
                x, fut = await window.get()
                if x is end:
                    if fut is not None:
                        raise fut
                    break
                try:
                    y = await fut
                except Exception as e:
                    if not return_exceptions:
                        raise
                    y = e
                yield (x, y) if return_x else y
        finally:
            feeder.cancel()
            while not window.empty():
                x, fut = window.get_nowait()
                if x is not end:
                    fut.cancel()

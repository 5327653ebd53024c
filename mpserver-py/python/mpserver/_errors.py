"""Exceptions of ``mpserver``, and the helpers the engine calls to build them.

A worker's own exception reaches the caller as that exception:

* from a thread worker, the very exception object (with its ``__traceback__``);
* from a process worker, the exception unpickled in the caller, with the
  worker's formatted traceback attached as ``__cause__`` (a
  :class:`RemoteTraceback`), as ``mpservice``'s ``RemoteException`` does.

Errors of the engine itself (time-outs, a full server, a crashed worker
process, ...) are the classes below.
"""

from __future__ import annotations

import builtins
import pickle
import sys

__all__ = [
    'TimeoutError',
    'ServerBacklogFull',
    'EnsembleError',
    'WorkerCrashed',
    'PoisonItem',
    'ServerShutdown',
    'CodecError',
    'RouteError',
    'WorkerError',
    'StartError',
    'RemoteTraceback',
    'is_remote_exception',
    'get_remote_traceback',
]


class TimeoutError(builtins.TimeoutError):
    """A request did not finish within its ``timeout``.

    The message says how long was spent enqueuing and in total, as
    ``mpservice`` does. It is also a built-in ``TimeoutError``.
    """


class ServerBacklogFull(RuntimeError):
    """The server holds ``capacity`` requests: raised at once by
    ``async_call(..., backpressure=True)``, and by calls that could not get
    into the server within their ``timeout``."""


class EnsembleError(RuntimeError):
    """An item failed in an :class:`EnsembleServlet`.

    ``args[1]`` is ``{'y': [...], 'n': k}``: per member its result, its
    exception, or ``None`` if it had not finished; ``n`` members finished.
    With ``fail_fast=True`` this is raised on the first member error; with
    ``fail_fast=False`` only when every member failed.
    """

    def __init__(self, results: dict):
        ys = results['y']
        errs = [v for v in ys if isinstance(v, BaseException)]
        first = repr(errs[0]) if errs else None
        msg = (
            f"{results['n']}/{len(ys)} ensemble members finished, with "
            f"{len(errs)} error{'s' if len(errs) > 1 else ''}; first error: {first}"
        )
        super().__init__(msg, results)

    def __repr__(self):
        return self.args[0]

    def __str__(self):
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.args[1],)


class WorkerCrashed(RuntimeError):
    """The worker process holding the item died (killed, crashed, exited).
    The server restarts it and keeps serving."""


class PoisonItem(WorkerCrashed):
    """The item crashed worker processes repeatedly and was given up."""


class ServerShutdown(RuntimeError):
    """The server is shutting down (or shut down) before the item finished."""


class CodecError(RuntimeError):
    """A value could not be pickled or unpickled at a process boundary."""


class RouteError(IndexError):
    """``SwitchServlet.switch`` returned an index with no member."""


class WorkerError(RuntimeError):
    """An error of a worker that was not a Python exception (e.g. a panic in
    a Rust worker)."""


class StartError(RuntimeError):
    """The server could not start (e.g. a worker process could not be
    spawned, or invalid CPUs)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text; it
    is the ``__cause__`` of that exception in the caller."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def is_remote_exception(e) -> bool:
    """Whether ``e`` was raised in a worker process (and carries its traceback)."""
    return isinstance(e, BaseException) and isinstance(e.__cause__, RemoteTraceback)


def get_remote_traceback(e) -> str:
    """The worker-side traceback of an exception that :func:`is_remote_exception`."""
    return e.__cause__.tb


# ---------------------------------------------------------------------------
# Helpers called by the engine.


def _format(exc: BaseException) -> str:
    if is_remote_exception(exc) and exc.__traceback__ is None:
        return get_remote_traceback(exc)
    # Imported here, not at module level: the fork server and every worker
    # import this module, and only a failing call formats a traceback.
    import traceback

    return ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _dump_exception(exc: BaseException) -> bytes:
    """In a worker process: the exception with its formatted traceback, pickled."""
    tb = _format(exc)
    try:
        return pickle.dumps((exc, tb), protocol=5)
    except Exception:
        # An exception that does not pickle still reaches the caller, as a
        # WorkerError naming its class and message.
        surrogate = WorkerError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
        return pickle.dumps((surrogate, tb), protocol=5)


def _load_exception(data: bytes) -> BaseException:
    """In the server process: the worker's exception, its traceback as ``__cause__``."""
    exc, tb = pickle.loads(data)
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def _from_core(kind: str, message: str, extra: dict) -> BaseException:
    """The exception for an engine error of ``kind`` (see ``Error::kind``)."""
    if kind == 'timeout':
        enqueue = extra.get('enqueue', 0.0)
        total = extra.get('total', 0.0)
        if extra.get('while_enqueuing'):
            # As in mpservice: a request that could not get in is a full server.
            return ServerBacklogFull(f"{total:.3f} seconds enqueue")
        return TimeoutError(f"{enqueue:.3f} seconds enqueue, {total:.3f} seconds total")
    if kind == 'backlog_full':
        return ServerBacklogFull(message)
    if kind == 'ensemble':
        return EnsembleError({'y': extra['y'], 'n': extra['n']})
    if kind == 'worker_crashed':
        return WorkerCrashed(message)
    if kind == 'poison_item':
        return PoisonItem(message)
    if kind in ('shutdown', 'cancelled'):
        return ServerShutdown(message)
    if kind == 'codec':
        return CodecError(message)
    if kind == 'route':
        return RouteError(message)
    if kind == 'start':
        return StartError(message)
    e = WorkerError(message)
    if extra.get('backtrace'):
        e.__cause__ = RemoteTraceback(extra['backtrace'])
    return e


def _make_worker(cls, kwargs: dict, worker_index: int):
    """In a worker thread: the worker instance."""
    return cls(worker_index=worker_index, **kwargs)


def _load_worker(prep: bytes, payload: bytes, worker_index: int):
    """In a worker process: prepare ``__main__`` as ``multiprocessing``'s spawn
    does, then unpickle the worker class and its arguments and instantiate it."""
    import multiprocessing.spawn

    data = pickle.loads(prep)
    if data is not None and sys.modules.get('mpserver._forkserver') is not None:
        from . import _forkserver

        if _forkserver.forked:
            # Forked from the fork server, whose ``__main__`` is prepared
            # already: the rest of the data (sys.path, working directory,
            # process name) still applies.
            data = {
                k: v
                for k, v in data.items()
                if k not in ('init_main_from_path', 'init_main_from_name')
            }
    if data is not None:
        multiprocessing.spawn.prepare(data)
    cls, kwargs = pickle.loads(payload)
    return cls(worker_index=worker_index, **kwargs)

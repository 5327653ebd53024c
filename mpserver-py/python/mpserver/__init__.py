"""``mpserver``: the API of ``mpservice.mpserver`` on a Rust engine.

Python workers run in worker processes (supervised by the engine: crash
recovery, restarts, no orphans) or threads; the server, admission,
deadlines, cancellation, batching and dispatch are Rust. A program written
for ``mpservice.mpserver`` runs after changing its import line::

    from mpserver import ProcessWorker, ProcessServlet, SequentialServlet, EnsembleServlet

See ``README.md`` of the package for the differences that remain.
"""

import warnings as _warnings

from ._api import (
    CpuAffinity,
    EnsembleServlet,
    PassThrough,
    ProcessServlet,
    ProcessWorker,
    SequentialServlet,
    Server,
    Servlet,
    SwitchServlet,
    ThreadServlet,
    ThreadWorker,
    Worker,
    get_start_method,
    make_threadworker,
    make_worker,
    set_start_method,
    start_forkserver,
)
from ._errors import (
    CodecError,
    EnsembleError,
    PoisonItem,
    RemoteTraceback,
    RouteError,
    ServerBacklogFull,
    ServerShutdown,
    StartError,
    TimeoutError,
    WorkerCrashed,
    WorkerError,
    get_remote_traceback,
    is_remote_exception,
)
from ._mpserver import __version__

__all__ = [
    'Worker',
    'ProcessWorker',
    'ThreadWorker',
    'make_worker',
    'set_start_method',
    'get_start_method',
    'start_forkserver',
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

_DEPRECATED = {
    'Sequential': ('SequentialServlet', SequentialServlet),
    'Ensemble': ('EnsembleServlet', EnsembleServlet),
    'PipelineFull': ('ServerBacklogFull', ServerBacklogFull),
}


def __getattr__(name):
    if name in _DEPRECATED:
        new, value = _DEPRECATED[name]
        _warnings.warn(
            f"'mpserver.{name}' is deprecated; use 'mpserver.{new}' instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return value
    raise AttributeError(f"module 'mpserver' has no attribute '{name}'")

"""Worker classes shared by the tests (importable by worker processes)."""

import enum
import os
import threading
import time

from mpserver import SwitchServlet, Worker


class Double(Worker):
    def call(self, x):
        return x * 2


class Fail(Worker):
    def call(self, x):
        if x == 'bad':
            raise ValueError(f'bad input: {x!r}')
        return x


def _deep(x):
    raise KeyError(f'deep {x}')


class FailDeep(Worker):
    def call(self, x):
        _deep(x)


class Slow(Worker):
    def __init__(self, *, delay=0.2, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay

    def call(self, x):
        time.sleep(self.delay)
        return x


class SlowFail(Worker):
    """Raises ``ValueError`` after a delay (so faster ensemble members finish first)."""

    def call(self, x):
        time.sleep(0.2)
        raise ValueError(f'slow failure: {x!r}')


class BatchInfo(Worker):
    def call(self, xs):
        assert isinstance(xs, list)
        return [(x, len(xs)) for x in xs]


class BadBatch(Worker):
    def call(self, xs):
        return xs[:-1]


class WhoAmI(Worker):
    def call(self, x):
        return {
            'pid': os.getpid(),
            'cpus': sorted(os.sched_getaffinity(0)),
            'index': self.worker_index,
        }


class InitFails(Worker):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        raise RuntimeError('cannot load the model')

    def call(self, x):
        return x


class WithKwargs(Worker):
    def __init__(self, *, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor


class Crash(Worker):
    """Dies on 'die' (as a crash of native code would)."""

    def call(self, x):
        if x == 'die':
            os._exit(3)
        return x


class Sign(SwitchServlet):
    def switch(self, x):
        return 0 if x < 0 else 1


class BadSwitch(SwitchServlet):
    def switch(self, x):
        if x == 'boom':
            raise LookupError('no route for boom')
        return 5 if x == 'far' else 0


class Unpicklable:
    def __reduce__(self):
        raise TypeError('not picklable')


class ReturnsUnpicklable(Worker):
    def call(self, x):
        return Unpicklable()


class OwnBatch(Worker):
    """Fixes its batching in its own signature, as mpservice programs do."""

    def __init__(self, *, batch_size=4, batch_wait_time=0.05, **kwargs):
        super().__init__(batch_size=batch_size, batch_wait_time=batch_wait_time, **kwargs)

    def call(self, xs):
        return [(x, len(xs)) for x in xs]


class OwnBatchInBody(Worker):
    """Fixes batch_size inside __init__: the engine cannot see it."""

    def __init__(self, **kwargs):
        super().__init__(batch_size=4, **kwargs)

    def call(self, xs):
        return [(x, len(xs)) for x in xs]


class Echo(Worker):
    def call(self, x):
        return x


class Describe(Worker):
    """Returns the type name and length of what it got, and the item itself."""

    def call(self, x):
        data = x.data if isinstance(x, Holder) else x
        return (type(x).__name__, type(data).__name__, len(data), x)


class Holder:
    """An object whose data pickles as a ``PickleBuffer`` (out-of-band with
    protocol 5), as numpy arrays do."""

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        import pickle

        if protocol >= 5:
            return Holder, (pickle.PickleBuffer(self.data),)
        return Holder, (self.data,)

    def __eq__(self, other):
        return isinstance(other, Holder) and bytes(other.data) == bytes(self.data)


class IntEnumLike(enum.IntEnum):
    """An int subclass: must keep its type across a process boundary."""

    A = 1


class Lineage(Worker):
    """Returns the worker process's pid, its parent's pid and its index."""

    def __init__(self, *, worker_index, **kwargs):
        self.index = worker_index

    def call(self, x):
        return os.getpid(), os.getppid(), self.index


class ThreadLocalCount(Worker):
    """Counts its calls in a ``threading.local`` made in ``__init__``: the
    worker's thread keeps one Python thread state from ``__init__`` to its
    last call, as a thread of ``mpservice`` does."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.local = threading.local()
        self.local.n = 0
        self.local.ident = threading.get_ident()

    def call(self, x):
        self.local.n += 1
        return (self.local.n, self.local.ident == threading.get_ident())

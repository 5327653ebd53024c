import os
import time

import pytest


def wait_for(cond, timeout=10.0, interval=0.02):
    """Polls `cond` until it is true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """Running (not a zombie) process with this pid."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while read
        return False
    return state != 'Z'


def forkserver_pid():
    """The pid of this process's fork server, if one runs."""
    from mpserver import _mpserver

    return _mpserver._forkserver_pid()


def children() -> list:
    """Pids of this process's worker processes, zombies included: its
    children, except the fork server, and the fork server's children."""
    fs = forkserver_pid()
    out = [p for p in children_of(os.getpid()) if p != fs]
    if fs is not None:
        out += children_of(fs)
    return out


def children_of(me: int) -> list:
    """Pids of the children of process `me`, zombies included."""
    out = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if ppid == me:
            out.append(int(name))
    return out


@pytest.fixture
def two_cpus():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip('needs 2 CPUs')

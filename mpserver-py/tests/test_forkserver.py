"""The fork server: worker processes forked from a prepared interpreter,
restarted from it, spawned when it is gone, never left behind; and the spawn
start method still selectable."""

import os
import signal
import time

import pytest
from conftest import children_of, forkserver_pid, pid_alive, wait_for
from test_process import run_script, start_script
from workers import Lineage

import mpserver
from mpserver import ProcessServlet, Server


def lineage(s, n):
    """(pid, ppid, index) of each of the `n` workers of a servlet."""
    seen = {}
    deadline = time.monotonic() + 30
    while len(seen) < n and time.monotonic() < deadline:
        pid, ppid, index = s.call(None)
        seen[index] = (pid, ppid)
    assert len(seen) == n, seen
    return seen


def test_workers_are_forked_by_the_fork_server_with_their_index():
    with Server(ProcessServlet(Lineage, cpus=3)) as s:
        fs = forkserver_pid()
        assert fs is not None and fs != os.getpid()
        seen = lineage(s, 3)
        assert {ppid for _, ppid in seen.values()} == {fs}
        assert sorted(pid for pid, _ in seen.values()) == sorted(s._worker_pids())
        assert sorted(seen) == [0, 1, 2]
        assert sorted(children_of(fs)) == sorted(s._worker_pids())


def test_a_killed_worker_is_restarted_from_the_fork_server():
    with Server(ProcessServlet(Lineage)) as s:
        fs = forkserver_pid()
        (pid, ppid, _) = s.call(None)
        assert ppid == fs
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: s._worker_pids() not in ([], [pid]), timeout=30)
        pid2, ppid2, index = s.call(None, timeout=30)
        assert pid2 != pid and ppid2 == fs and index == 0
        # The killed one was reaped: no zombie under the fork server.
        assert wait_for(lambda: children_of(fs) == [pid2], timeout=10), children_of(fs)


def test_workers_are_spawned_once_the_fork_server_died():
    with Server(ProcessServlet(Lineage, cpus=2)) as s:
        fs = forkserver_pid()
        before = lineage(s, 2)
        os.kill(fs, signal.SIGKILL)
        # Its workers die with it (PR_SET_PDEATHSIG) and are restarted by
        # spawning, without the fork server.
        assert wait_for(
            lambda: not any(pid_alive(pid) for pid, _ in before.values()), timeout=10
        )
        deadline = time.monotonic() + 60
        after = {}
        while time.monotonic() < deadline:
            try:
                after = lineage(s, 2)
            except mpserver.WorkerCrashed:
                continue
            if all(ppid == os.getpid() for _, ppid in after.values()):
                break
        assert {ppid for _, ppid in after.values()} == {os.getpid()}, after
        assert forkserver_pid() is None
    # The next server starts a new fork server.
    with Server(ProcessServlet(Lineage)) as s:
        fs2 = forkserver_pid()
        assert fs2 not in (None, fs)
        assert s.call(None)[1] == fs2


@pytest.mark.parametrize('how', ['configure', 'set_start_method'])
def test_spawn_is_still_selectable(how):
    if how == 'configure':
        servlet = ProcessServlet(Lineage, cpus=2).configure(start_method='spawn')
    else:
        mpserver.set_start_method('spawn')
        servlet = ProcessServlet(Lineage, cpus=2)
    try:
        assert mpserver.get_start_method() == ('spawn' if how != 'configure' else 'forkserver')
        with Server(servlet) as s:
            seen = lineage(s, 2)
            assert {ppid for _, ppid in seen.values()} == {os.getpid()}
    finally:
        mpserver.set_start_method('forkserver')
    with pytest.raises(ValueError, match='start_method'):
        mpserver.set_start_method('fork')
    with pytest.raises(ValueError, match='start_method'):
        ProcessServlet(Lineage).configure(start_method='fork')


def test_stable_after_is_validated_and_accepted():
    with pytest.raises(ValueError, match='stable_after'):
        ProcessServlet(Lineage).configure(stable_after=-1)
    with Server(ProcessServlet(Lineage).configure(stable_after=0.5)) as s:
        assert s.call(None)[2] == 0


MAIN_SCRIPT = '''
    import os, sys
    import mpserver
    from mpserver import ProcessServlet, Server, Worker

    class Shout(Worker):
        def __init__(self, *, suffix, **kwargs):
            self.suffix = suffix

        def call(self, x):
            print(f'worker says {x}', flush=True)
            print(f'worker warns {x}', file=sys.stderr, flush=True)
            return x.upper() + self.suffix + SUFFIX, os.getppid()

    SUFFIX = '!'

    if __name__ == '__main__':
        mpserver.set_start_method(sys.argv[1])
        with Server(ProcessServlet(Shout, cpus=2, suffix='?')) as s:
            out = list(s.stream(['a', 'b']))
            print([y for y, _ in out])
            forked = all(ppid != os.getpid() for _, ppid in out)
            print('forked' if forked else 'spawned')
'''


@pytest.mark.parametrize('method', ['forkserver', 'spawn'])
def test_main_script_classes_and_worker_output_with_either_method(tmp_path, method):
    r = run_script(MAIN_SCRIPT, tmp_path, args=(method,))
    assert r.returncode == 0, r.stderr
    # The two workers' lines may interleave with each other, not with the
    # parent's lines after the results.
    assert r.stdout.count('worker says a') == 1 and r.stdout.count('worker says b') == 1
    lines = r.stdout.splitlines()
    assert lines[-2:] == ["['A?!', 'B?!']", 'forked' if method == 'forkserver' else 'spawned']
    assert 'worker warns a' in r.stderr and 'worker warns b' in r.stderr


def test_a_fork_server_with_threads_does_not_fork(tmp_path):
    # A main script that starts a thread when imported: the fork server
    # (which imports it) has two threads and must not fork; workers are
    # spawned instead.
    r = run_script(
        '''
        import os, threading, time
        from mpserver import ProcessServlet, Server, Worker

        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()

        class Parent(Worker):
            def call(self, x):
                return os.getppid()

        if __name__ == '__main__':
            with Server(ProcessServlet(Parent, cpus=2)) as s:
                print(all(s.call(i) == os.getpid() for i in range(4)))
        ''',
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'True\n'
    assert 'will not fork' in r.stderr


def test_no_orphans_including_the_fork_server_when_the_parent_is_killed(tmp_path):
    code = '''
        import os, time
        from mpserver import ProcessServlet, Server, Worker, _mpserver

        class Sleepy(Worker):
            def call(self, x):
                time.sleep(x)
                return os.getppid()

        if __name__ == '__main__':
            server = Server(ProcessServlet(Sleepy, cpus=2))
            with server:
                ppid = server.call(0.0)
                pids = server._worker_pids() + [_mpserver._forkserver_pid(), ppid]
                print(' '.join(map(str, pids)), flush=True)
                server.call(1000, timeout=2000)  # a worker busy in user code
    '''
    p = start_script(code, tmp_path)
    try:
        line = p.stdout.readline()
        *pids, fs, ppid = [int(v) for v in line.split()]
        assert len(pids) == 2 and fs == ppid, line
        assert all(pid_alive(pid) for pid in pids + [fs])
        time.sleep(0.5)
        p.kill()
        p.wait(timeout=10)
        assert wait_for(lambda: not any(pid_alive(pid) for pid in pids + [fs]), timeout=5), [
            (pid, pid_alive(pid)) for pid in pids + [fs]
        ]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_start_forkserver_starts_it_before_any_server(tmp_path):
    r = run_script(
        '''
        import os
        import mpserver
        from mpserver import ProcessServlet, Server, Worker, _mpserver

        class Parent(Worker):
            def call(self, x):
                return os.getppid()

        if __name__ == '__main__':
            before = _mpserver._forkserver_pid()
            mpserver.start_forkserver()
            fs = _mpserver._forkserver_pid()
            with Server(ProcessServlet(Parent)) as s:
                print(before, fs is not None, s.call(0) == fs, _mpserver._forkserver_pid() == fs)
        ''',
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'None True True True\n'


def test_a_fork_server_stuck_importing_the_main_script_dies_with_the_parent(tmp_path):
    code = '''
        import os, sys, time
        import mpserver
        from mpserver import _mpserver

        if __name__ == '__mp_main__':
            time.sleep(3600)  # the fork server's import of this script hangs

        if __name__ == '__main__':
            mpserver.start_forkserver()
            print(_mpserver._forkserver_pid(), flush=True)
            time.sleep(3600)
    '''
    p = start_script(code, tmp_path)
    try:
        fs = int(p.stdout.readline())
        assert pid_alive(fs)
        time.sleep(1.0)  # let it reach the main script's import
        p.kill()
        p.wait(timeout=10)
        assert wait_for(lambda: not pid_alive(fs), timeout=5), fs
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


LEAN_SCRIPT = '''
import os
import sys

from mpserver import ProcessServlet, Server, Worker, get_remote_traceback

# Modules the package must not import at start-up: the fork server imports
# the package before its first fork, so each is start-up time of every
# program's first server (a worker imports them when it needs them).
HEAVY = ('typing', 'traceback', 'asyncio', 'json', 'inspect')
# In the fork server, `multiprocessing`'s preparation of the main script
# (runpy, then pkgutil) imports `typing` itself on some Python versions.
HEAVY_FORKED = HEAVY[1:]


class Modules(Worker):
    def call(self, x):
        if x == 'fail':
            raise ValueError('formatted lazily')
        return os.getppid(), sorted(m for m in HEAVY_FORKED if m in sys.modules)


if __name__ == '__main__':
    print('parent', sorted(m for m in HEAVY if m in sys.modules))
    with Server(ProcessServlet(Modules, cpus=1)) as s:
        ppid, loaded = s.call(None)
        print('forked', ppid != os.getpid())
        print('worker', loaded)
        try:
            s.call('fail')
        except ValueError as e:
            print('traceback', 'formatted lazily' in get_remote_traceback(e))
'''


def test_the_fork_server_imports_no_heavy_module_before_forking(tmp_path):
    r = run_script(LEAN_SCRIPT, tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == 'parent []', r.stdout
    assert lines[1:] == ['forked True', 'worker []', 'traceback True'], r.stdout

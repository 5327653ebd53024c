"""Process workers: CPU pins, crash recovery, parent death, main-script
classes, and the seed example."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import pid_alive, wait_for
from workers import Crash, Double, WhoAmI

import mpserver
from mpserver import EnsembleServlet, ProcessServlet, Server

REPO = Path(__file__).resolve().parents[2]
PKG_ROOT = Path(mpserver.__file__).resolve().parents[1]


def _script(code: str, tmp_path, name: str):
    """Writes `code` to `tmp_path/name`; its path and an environment that
    imports this package."""
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    return script, dict(os.environ, PYTHONPATH=str(PKG_ROOT))


def run_script(code: str, tmp_path, timeout=120, args=(), **kw):
    script, env = _script(code, tmp_path, 'script.py')
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
        **kw,
    )


def start_script(code: str, tmp_path):
    """Starts `code` as a parent process whose stdout the test reads."""
    script, env = _script(code, tmp_path, 'parent.py')
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )


def test_worker_processes_are_pinned_as_asked(two_cpus):
    servlet = EnsembleServlet(
        ProcessServlet(WhoAmI, cpus=[0]),
        ProcessServlet(WhoAmI, cpus=[[0, 1]]),
        ProcessServlet(WhoAmI, cpus=[1]),
    )
    with Server(servlet) as s:
        a, b, c = s.call(None)
        assert a['cpus'] == [0] and b['cpus'] == [0, 1] and c['cpus'] == [1]
        assert len({a['pid'], b['pid'], c['pid'], os.getpid()}) == 4


def test_one_process_per_cpus_entry_with_its_index():
    with Server(ProcessServlet(WhoAmI, cpus=[None, None, None])) as s:
        seen = wait_for(
            lambda: {r['index'] for r in s.stream([None] * 60)} == {0, 1, 2}, timeout=30
        )
        assert seen
        assert len(s._worker_pids()) == 3


def test_crashed_worker_fails_its_item_and_is_restarted():
    with Server(ProcessServlet(Crash)) as s:
        assert s.call('a') == 'a'
        before = s._worker_pids()
        with pytest.raises(mpserver.WorkerCrashed, match='crashed'):
            s.call('die')
        # The server restarts the worker and keeps serving.
        assert s.call('b', timeout=30) == 'b'
        after = s._worker_pids()
        assert before != after and len(after) == 1
        info = s.debug_info()
        assert info['requests']['ok'] >= 2


def test_killed_worker_under_a_stream_fails_only_its_items():
    with Server(ProcessServlet(Double, cpus=2)) as s:
        pids = s._worker_pids()
        out = []
        for i, y in enumerate(s.stream(range(3000), return_exceptions=True)):
            out.append(y)
            if i == 100:
                os.kill(pids[0], signal.SIGKILL)
        assert len(out) == 3000
        ok = [y for y in out if not isinstance(y, Exception)]
        bad = [y for y in out if isinstance(y, Exception)]
        assert all(isinstance(e, mpserver.WorkerCrashed) for e in bad)
        assert len(ok) + len(bad) == 3000 and len(ok) > 2000
        assert all(out[i] == 2 * i for i in range(3000) if not isinstance(out[i], Exception))
        assert s.call(5, timeout=30) == 10


def test_poison_item_with_retries():
    servlet = ProcessServlet(Crash).configure(retry_crashed=True, poison_threshold=2)
    with Server(servlet) as s:
        with pytest.raises(mpserver.PoisonItem):
            s.call('die', timeout=60)
        assert s.call('fine', timeout=30) == 'fine'


def test_recycling_replaces_processes_without_failing_items():
    with Server(ProcessServlet(WhoAmI).configure(recycle_after=10)) as s:
        pids = {r['pid'] for r in s.stream([None] * 45)}
        assert len(pids) >= 4


def test_no_orphans_when_the_parent_is_killed(tmp_path):
    code = '''
        import sys, time
        from mpserver import ProcessServlet, Server, Worker

        class Sleepy(Worker):
            def call(self, x):
                time.sleep(x)
                return x

        if __name__ == '__main__':
            server = Server(ProcessServlet(Sleepy, cpus=2))
            with server:
                print(' '.join(map(str, server._worker_pids())), flush=True)
                server.call(0.0)
                server.call(1000, timeout=2000)  # a worker busy in user code
    '''
    p = start_script(code, tmp_path)
    try:
        line = p.stdout.readline()
        pids = [int(v) for v in line.split()]
        assert len(pids) == 2
        assert all(pid_alive(pid) for pid in pids)
        time.sleep(0.5)
        p.kill()
        p.wait(timeout=10)
        assert wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=5), pids
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_classes_defined_in_the_main_script_work(tmp_path):
    r = run_script(
        '''
        from mpserver import ProcessServlet, Server, Worker

        class Shout(Worker):
            def call(self, x):
                return x.upper() + SUFFIX

        SUFFIX = '!'

        if __name__ == '__main__':
            with Server(ProcessServlet(Shout, cpus=2)) as s:
                print(list(s.stream(['a', 'b'])))
        ''',
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "['A!', 'B!']\n"


def test_seed_example_prints_the_two_lines():
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT))
    r = subprocess.run(
        [sys.executable, str(REPO / 'examples' / 'seed.py')],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'Hello, wdwdwdwdwd!\nHello, 20!\n'

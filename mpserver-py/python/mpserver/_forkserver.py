"""The fork server: a single-threaded interpreter, prepared the spawn way,
that forks worker processes on the engine's request (the engine's side and
the protocol are in ``src/forkserver.rs``).

It is started by the engine as ``sys.executable`` with its control socket
(``SOCK_SEQPACKET``) as stdin. It imports the main script as ``__mp_main__``
(as ``multiprocessing``'s spawn and forkserver methods do) and the package
once; each forked child then only sets its descriptors and environment and
runs the engine's worker loop. It never forks while it has more than one
thread (it refuses, and the engine spawns instead).
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import socket
import sys

# True while the fork server imports the main script: starting a server then
# (a main script without an ``if __name__ == '__main__':`` guard) is an error,
# as starting a process is in multiprocessing's bootstrapping phase.
preparing = False
# True in a worker process forked by the fork server (``__main__`` is
# prepared already).
forked = False

_MAX_MSG = 1 << 22


def _threads() -> int:
    try:
        return len(os.listdir('/proc/self/task'))
    except OSError:
        return 1


def _prepare(data) -> None:
    global preparing
    import multiprocessing.spawn

    preparing = True
    try:
        multiprocessing.spawn.prepare(data)
    finally:
        preparing = False


def _child(fds, env: dict, ctl: socket.socket, others) -> None:
    """In the forked child: become the worker process and never return."""
    global forked
    code = 1
    try:
        forked = True
        ctl.close()
        for s in others:
            s.close()
        sock_fd, _reply_fd, out_fd, err_fd = fds
        os.dup2(sock_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (sock_fd, out_fd, err_fd):
            if fd > 2:
                os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        from mpserver import _mpserver

        _mpserver._worker_main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _parse_env(body: bytes) -> dict:
    env = {}
    if body:
        for entry in body.split(b'\0'):
            k, _, v = entry.partition(b'=')
            env[os.fsdecode(k)] = os.fsdecode(v)
    return env


def main() -> None:
    from mpserver import _mpserver

    parent = os.getppid()
    # Until prepared, die with the server's process even if the main
    # script's import hangs; afterwards the end of the control socket says it.
    if not _mpserver._die_with_parent(True, parent):
        os._exit(0)
    ctl = socket.socket(fileno=os.dup(0))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    msg, fds, _, _ = socket.recv_fds(ctl, _MAX_MSG, 4)
    if not msg or msg[:1] != b'P':
        sys.exit(0)
    data = pickle.loads(msg[1:])
    if data is not None:
        _prepare(data)
    import multiprocessing  # noqa: F401  (what a spawned worker imports too)

    _mpserver._die_with_parent(False, parent)

    # Children are reaped only when the engine asks (so their pids stay
    # reserved while it may signal them).
    children: dict[socket.socket, int] = {}
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is ctl:
                try:
                    msg, fds, _, _ = socket.recv_fds(ctl, _MAX_MSG, 4)
                except OSError:
                    msg, fds = b'', []
                if not msg:
                    # The engine's process is gone: so are its workers.
                    for pid in children.values():
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                    for pid in children.values():
                        try:
                            os.waitpid(pid, 0)
                        except OSError:
                            pass
                    os._exit(0)
                if msg[:1] != b'F' or len(fds) != 4:
                    for fd in fds:
                        os.close(fd)
                    continue
                reply = socket.socket(fileno=fds[1])
                n = _threads()
                if n > 1:
                    reply.sendall(f'Rthe fork server has {n} threads\n'.encode())
                    reply.close()
                    for fd in (fds[0], fds[2], fds[3]):
                        os.close(fd)
                    continue
                env = _parse_env(msg[1:])
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    _child(fds, env, ctl, [*children, reply])
                for fd in (fds[0], fds[2], fds[3]):
                    os.close(fd)
                try:
                    reply.sendall(f'P{pid}\n'.encode())
                except OSError:
                    pass
                children[reply] = pid
                sel.register(reply, selectors.EVENT_READ)
            else:
                pid = children.pop(s)
                sel.unregister(s)
                try:
                    asked = s.recv(16)
                except OSError:
                    asked = b''
                if not asked:
                    # The engine dropped this child without reaping it.
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    _, status = os.waitpid(pid, 0)
                except OSError:
                    status = None
                if asked and status is not None:
                    try:
                        s.sendall(f'S{status}\n'.encode())
                    except OSError:
                        pass
                s.close()

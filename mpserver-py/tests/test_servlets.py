"""The seed's behaviours on thread and process servlets: calls, errors with
the worker's traceback, batching, streams, ensembles, switches, nesting,
init failures, timeouts and back-pressure."""

import threading
import time
import traceback
import warnings

import pytest
from workers import (
    BadBatch,
    BadSwitch,
    BatchInfo,
    Echo,
    Double,
    Fail,
    FailDeep,
    InitFails,
    ReturnsUnpicklable,
    Sign,
    Slow,
    SlowFail,
    ThreadLocalCount,
    WithKwargs,
)

import mpserver
from mpserver import (
    EnsembleError,
    EnsembleServlet,
    PassThrough,
    ProcessServlet,
    SequentialServlet,
    Server,
    ServerBacklogFull,
    ThreadServlet,
    TimeoutError,
    make_threadworker,
    make_worker,
)

KINDS = ['thread', 'process']


def simple(kind, cls, **kwargs):
    if kind == 'thread':
        return ThreadServlet(cls, **kwargs)
    return ProcessServlet(cls, **kwargs)


@pytest.mark.parametrize('kind', KINDS)
def test_call_returns_the_worker_result(kind):
    with Server(simple(kind, Double)) as s:
        assert s.call(21) == 42
        assert s.call('ab') == 'abab'
        assert s.call([1, 2]) == [1, 2, 1, 2]
        assert s.backlog == 0


@pytest.mark.parametrize('kind', KINDS)
def test_init_kwargs_and_worker_index_reach_the_worker(kind):
    with Server(simple(kind, WithKwargs, factor=3)) as s:
        assert s.call(5) == 15


@pytest.mark.parametrize('kind', KINDS)
def test_worker_exception_is_reraised_with_the_worker_traceback(kind):
    with Server(simple(kind, FailDeep)) as s:
        with pytest.raises(KeyError) as info:
            s.call(7)
        e = info.value
        assert e.args == ('deep 7',)
        if kind == 'process':
            assert mpserver.is_remote_exception(e)
            tb = mpserver.get_remote_traceback(e)
        else:
            tb = ''.join(traceback.format_exception(type(e), e, e.__traceback__))
        # The worker's frames, down to the raising function.
        assert '_deep' in tb and 'workers.py' in tb, tb
        # The worker keeps serving.
        with pytest.raises(KeyError):
            s.call(8)


@pytest.mark.parametrize('kind', KINDS)
def test_init_failure_fails_the_start_with_the_worker_exception(kind):
    from conftest import children

    assert children() == []
    server = Server(simple(kind, InitFails))
    with pytest.raises(RuntimeError, match='cannot load the model'):
        with server:
            pass
    # No worker process left behind, not even a zombie.
    assert children() == []


@pytest.mark.parametrize('kind', KINDS)
def test_batching_gives_call_lists_up_to_batch_size(kind):
    with Server(simple(kind, BatchInfo, batch_size=8, batch_wait_time=0.05)) as s:
        out = list(s.stream(range(40)))
        assert [x for x, _ in out] == list(range(40))
        sizes = [n for _, n in out]
        assert max(sizes) <= 8
        assert max(sizes) > 1, sizes
        # A single call is a batch of one.
        assert s.call(5) == (5, 1)


@pytest.mark.parametrize('kind', KINDS)
def test_batching_set_by_the_worker_class(kind):
    from workers import OwnBatch, OwnBatchInBody

    # Defaults in the class's own signature: the engine batches.
    with Server(simple(kind, OwnBatch)) as s:
        sizes = [n for _, n in s.stream(range(40))]
        assert max(sizes) <= 4 and max(sizes) > 1, sizes
    # Set inside __init__ (invisible before the worker starts): call still
    # gets lists, of one item (see the migration notes).
    with Server(simple(kind, OwnBatchInBody)) as s:
        assert list(s.stream(range(5))) == [(i, 1) for i in range(5)]


@pytest.mark.parametrize('kind', KINDS)
def test_batch_with_wrong_number_of_results_fails_those_items(kind):
    with Server(simple(kind, BadBatch, batch_size=4)) as s:
        with pytest.raises(ValueError, match='results for a batch'):
            s.call(1)


def test_batch_settings_are_validated_as_in_the_seed():
    with pytest.raises(ValueError):
        ThreadServlet(Double, batch_size=0, batch_wait_time=0.1)
    with pytest.raises(ValueError):
        ThreadServlet(Double, batch_size=10, batch_wait_time=2)
    with pytest.raises(TypeError):
        ThreadServlet(lambda x: x)


@pytest.mark.parametrize('kind', KINDS)
def test_stream_keeps_order_with_several_workers(kind):
    servlet = (
        ThreadServlet(Slow, num_threads=3, delay=0.001)
        if kind == 'thread'
        else ProcessServlet(Slow, cpus=2, delay=0.001)
    )
    with Server(servlet) as s:
        data = list(range(200))
        assert list(s.stream(data)) == data
        assert list(s.stream(iter(data[:5]), return_x=True)) == [(x, x) for x in data[:5]]


@pytest.mark.parametrize('kind', KINDS)
def test_stream_return_exceptions_yields_errors_in_place(kind):
    with Server(simple(kind, Fail)) as s:
        out = list(s.stream(['a', 'bad', 'c'], return_exceptions=True, return_x=True))
        assert out[0] == ('a', 'a') and out[2] == ('c', 'c')
        x, e = out[1]
        assert x == 'bad' and isinstance(e, ValueError)


@pytest.mark.parametrize('kind', KINDS)
def test_stream_without_return_exceptions_raises_and_stops(kind):
    with Server(simple(kind, Fail)) as s:
        got = []
        with pytest.raises(ValueError):
            for y in s.stream(['a', 'bad', 'c', 'd']):
                got.append(y)
        assert got == ['a']
        assert mpserver_wait(lambda: s.backlog == 0)


def mpserver_wait(cond, timeout=10):
    from conftest import wait_for

    return wait_for(cond, timeout)


@pytest.mark.parametrize('kind', KINDS)
def test_leaving_a_stream_early_cancels_what_is_in_flight(kind):
    with Server(simple(kind, Slow, delay=0.01), capacity=32) as s:
        for i, y in enumerate(s.stream(range(10_000))):
            if i == 3:
                break
        assert mpserver_wait(lambda: s.backlog == 0, timeout=20)
        assert s.call('after') == 'after'


def test_stream_raises_the_input_iterator_exception_after_earlier_results():
    def data():
        yield 1
        yield 2
        raise OSError('input broke')

    with Server(ThreadServlet(Double)) as s:
        got = []
        with pytest.raises(OSError, match='input broke'):
            for y in s.stream(data()):
                got.append(y)
        assert got == [2, 4]


@pytest.mark.parametrize('kind', KINDS)
def test_timeout_raises_timeout_error_and_server_goes_on(kind):
    with Server(simple(kind, Slow, delay=3.0)) as s:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match='seconds total'):
            s.call(1, timeout=0.2)
        assert time.monotonic() - t0 < 2.5  # at its deadline, not the worker's 3 s
        assert isinstance(TimeoutError('x'), builtins_timeout())
    with Server(simple(kind, Slow, delay=0.01)) as s:
        assert s.call(2, timeout=5) == 2


def builtins_timeout():
    import builtins

    return builtins.TimeoutError


def test_call_waits_for_room_then_raises_backlog_full():
    with Server(ThreadServlet(Slow, delay=1.0), capacity=1) as s:
        t = threading.Thread(target=lambda: s.call(1))
        t.start()
        assert mpserver_wait(lambda: s.full())
        t0 = time.monotonic()
        with pytest.raises(ServerBacklogFull):
            s.call(2, timeout=0.3)
        assert time.monotonic() - t0 >= 0.25
        # With enough time it gets in once the first call is done.
        assert s.call(3, timeout=10) == 3
        t.join()


def test_gil_is_released_while_waiting():
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.005)

    with Server(ThreadServlet(Slow, delay=1.0)) as s:
        t = threading.Thread(target=ticker)
        t.start()
        s.call(1)
        stop.set()
        t.join()
    # The ticker ran while the main thread waited (with the GIL held it
    # could not tick at all).
    assert len(ticks) > 5


@pytest.mark.parametrize('kind', KINDS)
def test_ensemble_returns_member_results_in_order(kind):
    servlet = EnsembleServlet(
        simple(kind, Double),
        ThreadServlet(PassThrough),
        ThreadServlet(make_worker(len)),
    )
    with Server(servlet) as s:
        assert s.call('ab') == ['abab', 'ab', 2]


@pytest.mark.parametrize('kind', KINDS)
def test_ensemble_fail_fast_raises_ensemble_error(kind):
    servlet = EnsembleServlet(simple(kind, Fail), ThreadServlet(PassThrough))
    with Server(servlet) as s:
        with pytest.raises(EnsembleError) as info:
            s.call('bad')
        results = info.value.args[1]
        assert isinstance(results['y'][0], ValueError)
        assert 1 <= results['n'] <= 2
        assert s.call('ok') == ['ok', 'ok']


@pytest.mark.parametrize('kind', KINDS)
def test_ensemble_without_fail_fast_keeps_errors_in_place(kind):
    servlet = EnsembleServlet(simple(kind, Fail), ThreadServlet(PassThrough), fail_fast=False)
    with Server(servlet) as s:
        y = s.call('bad')
        assert isinstance(y[0], ValueError) and y[1] == 'bad'
    servlet = EnsembleServlet(simple(kind, Fail), ThreadServlet(Fail), fail_fast=False)
    with Server(servlet) as s:
        with pytest.raises(EnsembleError) as info:
            s.call('bad')
        assert info.value.args[1]['n'] == 2
        assert all(isinstance(v, ValueError) for v in info.value.args[1]['y'])


def test_ensemble_partial_values_survive_a_second_conversion():
    # An inner fail-fast ensemble fails after its PassThrough answered; the
    # outer ensemble (fail_fast=False) keeps that EnsembleError in its list,
    # and the list goes on to two thread members, each converting it.
    inner = EnsembleServlet(ThreadServlet(PassThrough), ThreadServlet(SlowFail))
    outer = EnsembleServlet(inner, ThreadServlet(PassThrough), fail_fast=False)
    flow = SequentialServlet(outer, EnsembleServlet(ThreadServlet(PassThrough), ThreadServlet(PassThrough)))
    with Server(flow) as s:
        y = s.call('x')
    assert len(y) == 2
    for copy in y:
        err, passed = copy
        assert passed == 'x'
        assert isinstance(err, EnsembleError)
        members = err.args[1]['y']
        assert members[0] == 'x', members
        assert isinstance(members[1], ValueError)
        assert err.args[1]['n'] == 2


@pytest.mark.parametrize('kind', KINDS)
def test_switch_routes_each_item_to_one_member(kind):
    servlet = Sign(
        ThreadServlet(make_worker(lambda x: ('neg', x))),
        simple(kind, Double),
    )
    with Server(servlet) as s:
        assert s.call(-3) == ('neg', -3)
        assert s.call(4) == 8
        assert list(s.stream([1, -1, 2])) == [2, ('neg', -1), 4]


def test_switch_errors_fail_only_their_item():
    servlet = BadSwitch(ThreadServlet(PassThrough))
    with Server(servlet) as s:
        with pytest.raises(LookupError, match='no route'):
            s.call('boom')
        with pytest.raises(mpserver.RouteError):
            s.call('far')
        assert s.call('fine') == 'fine'


def test_nested_flows():
    # The seed's composition example, with every kind nested in another.
    servlet = SequentialServlet(
        ProcessServlet(Double),
        EnsembleServlet(
            ThreadServlet(PassThrough),
            SequentialServlet(ProcessServlet(Double), ThreadServlet(make_worker(lambda x: x + 1))),
        ),
        EnsembleServlet(
            SequentialServlet(ThreadServlet(make_worker(lambda v: v[0])), ProcessServlet(Double)),
            SequentialServlet(
                ThreadServlet(make_worker(lambda v: v[1])),
                Sign(ThreadServlet(PassThrough), ProcessServlet(Double)),
            ),
        ),
    )
    with Server(servlet) as s:
        # 3 -> 6 -> [6, 13] -> [12, 26]
        assert s.call(3) == [12, 26]
        assert list(s.stream(range(4))) == [[4 * i, 2 * (4 * i + 1)] for i in range(4)]


def test_a_failed_item_skips_later_stages():
    calls = []
    servlet = SequentialServlet(
        ThreadServlet(Fail),
        ThreadServlet(make_worker(lambda x: calls.append(x) or x)),
    )
    with Server(servlet) as s:
        with pytest.raises(ValueError):
            s.call('bad')
        assert s.call('ok') == 'ok'
    assert calls == ['ok']


def test_unpicklable_result_fails_only_its_item():
    with Server(ProcessServlet(ReturnsUnpicklable)) as s:
        with pytest.raises(TypeError, match='not picklable'):
            s.call(1)
    with Server(ProcessServlet(Double)) as s:
        with pytest.raises((mpserver.CodecError, TypeError)):
            s.call(threading.Lock())
        assert s.call(1) == 2


def test_server_state_and_debug_info():
    server = Server(ThreadServlet(Double, num_threads=2), capacity=7)
    assert server.capacity == 7 and server.backlog == 0 and not server.full()
    with pytest.raises(RuntimeError, match='not running'):
        server.call(1)
    with server:
        server.call(1)
        info = server.debug_info()
        assert info['capacity'] == 7
        assert info['backlog'] == 0
        assert info['state'] == 'running'
        assert info['requests']['ok'] == 1
        assert info['servlets']['name'] == 'Double'
        assert len(info['servlets']['workers']) == 2


def test_seed_names_and_deprecated_aliases():
    assert mpserver.ProcessWorker is mpserver.Worker
    assert mpserver.ThreadWorker is mpserver.Worker
    assert make_threadworker is make_worker
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert mpserver.Sequential is SequentialServlet
        assert mpserver.Ensemble is EnsembleServlet
        assert mpserver.PipelineFull is ServerBacklogFull
    assert len([x for x in w if issubclass(x.category, DeprecationWarning)]) == 3
    c = mpserver.CpuAffinity([0])
    assert c.target == [0] and 0 in mpserver.CpuAffinity.get()


@pytest.mark.parametrize('kind', KINDS)
def test_thread_local_state_made_in_init_lasts_across_calls(kind):
    # One Python thread state per worker thread from __init__ to cleanup
    # (before, a thread worker got a new one per call: AttributeError on
    # the local made in __init__).
    with Server(simple(kind, ThreadLocalCount)) as s:
        assert [s.call(i) for i in range(3)] == [(1, True), (2, True), (3, True)]
        assert list(s.stream(range(3))) == [(4, True), (5, True), (6, True)]


def test_many_threads_call_at_once_and_get_their_own_results():
    from concurrent.futures import ThreadPoolExecutor

    with Server(ProcessServlet(Double, cpus=2), capacity=64) as s:
        with ThreadPoolExecutor(8) as pool:
            out = list(pool.map(lambda i: s.call(i, timeout=60), range(400)))
        assert out == [2 * i for i in range(400)]
        assert s.backlog == 0


def test_a_server_can_be_entered_again_after_it_exits():
    from conftest import children

    server = Server(ProcessServlet(Double, cpus=2))
    with server:
        assert server.call(1) == 2
        assert len(children()) == 2
    # Leaving the context stops and reaps every worker process.
    assert children() == []
    assert server.backlog == 0
    with pytest.raises(RuntimeError, match='not running'):
        server.call(1)
    with server:
        assert server.call(2) == 4


def test_value_between_two_process_stages_is_intact():
    servlet = SequentialServlet(ProcessServlet(Double), ProcessServlet(Double))
    with Server(servlet) as s:
        big = bytes(range(256)) * 4096
        assert s.call(big) == big * 4
        assert s.call((1, 'x')) == (1, 'x', 1, 'x', 1, 'x', 1, 'x')


@pytest.mark.parametrize('second', ['process', 'ensemble'])
def test_thread_stage_results_reach_a_process_stage_intact(second):
    # A thread worker followed by process stages pickles its results itself
    # (the pickle alone before process stages only; object and pickle
    # before an ensemble that also has a thread member).
    if second == 'process':
        nxt = ProcessServlet(Double)
    else:
        nxt = EnsembleServlet(ProcessServlet(Double), ThreadServlet(Echo))
    servlet = SequentialServlet(ThreadServlet(Echo), nxt)
    big = bytes(range(256)) * 4096
    want = (lambda y: [y * 2, y]) if second == 'ensemble' else (lambda y: y * 2)
    with Server(servlet) as s:
        assert s.call(big) == want(big)
        assert s.call((1, 'x')) == want((1, 'x'))
        assert list(s.stream(['a', 2, 3.5])) == [want('a'), want(2), want(3.5)]


def test_unpicklable_thread_result_before_a_process_stage_fails_only_its_item():
    servlet = SequentialServlet(ThreadServlet(ReturnsUnpicklable), ProcessServlet(Echo))
    with Server(servlet) as s:
        with pytest.raises((mpserver.CodecError, TypeError)):
            s.call(1)
    servlet = SequentialServlet(ThreadServlet(Echo), ProcessServlet(Echo))
    with Server(servlet) as s:
        with pytest.raises((mpserver.CodecError, TypeError)):
            s.call(threading.Lock())
        assert s.call(1) == 1


def test_stream_return_x_gives_back_the_input_objects():
    items = [[i] for i in range(5)]
    with Server(ProcessServlet(Echo)) as s:
        pairs = list(s.stream(items, return_x=True))
    assert [y for _, y in pairs] == items
    assert all(x is item for (x, _), item in zip(pairs, items))

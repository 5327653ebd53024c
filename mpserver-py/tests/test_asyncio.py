"""asyncio: real awaitables that never block the event loop."""

import asyncio
import time

import pytest
from workers import Double, Fail, Slow

from mpserver import ProcessServlet, Server, ServerBacklogFull, ThreadServlet, TimeoutError


@pytest.mark.parametrize('kind', ['thread', 'process'])
def test_many_concurrent_async_calls(kind):
    servlet = ThreadServlet(Double, num_threads=2) if kind == 'thread' else ProcessServlet(Double, cpus=2)
    with Server(servlet, capacity=1000) as s:

        async def main():
            return await asyncio.gather(*[s.async_call(i) for i in range(500)])

        assert asyncio.run(main()) == [2 * i for i in range(500)]
        assert s.backlog == 0


def test_async_call_does_not_block_the_event_loop():
    with Server(ThreadServlet(Slow, delay=1.0)) as s:

        async def main():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            t = asyncio.ensure_future(ticker())
            y = await s.async_call('x')
            t.cancel()
            return y, ticks

        y, ticks = asyncio.run(main())
        assert y == 'x' and ticks > 5


def test_async_errors_timeouts_and_backpressure():
    with Server(ThreadServlet(Slow, delay=3.0), capacity=1) as s:

        async def main():
            first = asyncio.ensure_future(s.async_call(1))
            await asyncio.sleep(0.1)
            assert s.full()
            # Back-pressure on (default): a full server refuses at once.
            t0 = time.monotonic()
            with pytest.raises(ServerBacklogFull):
                await s.async_call(2)
            assert time.monotonic() - t0 < 2  # at once, not after the 3 s call
            # Off: waits for room.
            second = await s.async_call(3, backpressure=False, timeout=10)
            assert second == 3 and await first == 1
            with pytest.raises(TimeoutError):
                await s.async_call(4, timeout=0.1)

        asyncio.run(main())

    with Server(ThreadServlet(Fail)) as s:

        async def fails():
            with pytest.raises(ValueError, match='bad input'):
                await s.async_call('bad')

        asyncio.run(fails())


def test_cancelling_an_async_call_cancels_the_request():
    with Server(ThreadServlet(Slow, delay=0.2), capacity=4) as s:

        async def main():
            tasks = [asyncio.ensure_future(s.async_call(i)) for i in range(4)]
            await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(main())
        deadline = time.monotonic() + 5
        while s.backlog and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.backlog == 0
        assert s.call('after') == 'after'


def test_async_stream_keeps_order_and_options():
    with Server(ThreadServlet(Fail, num_threads=3)) as s:

        async def agen():
            for x in ['a', 'b', 'bad', 'c']:
                await asyncio.sleep(0)
                yield x

        async def main():
            plain = [y async for y in s.async_stream(['x', 'y'])]
            pairs = [p async for p in s.async_stream(agen(), return_x=True, return_exceptions=True)]
            with pytest.raises(ValueError):
                async for _ in s.async_stream(agen()):
                    pass
            return plain, pairs

        plain, pairs = asyncio.run(main())
        assert plain == ['x', 'y']
        assert [x for x, _ in pairs] == ['a', 'b', 'bad', 'c']
        assert isinstance(pairs[2][1], ValueError) and pairs[3] == ('c', 'c')


def test_a_loop_counts_its_calls_in_flight_until_each_is_settled():
    # A burst of calls from one loop goes through the first stage's queue
    # while others are in flight (a lone call is handed to an idle worker):
    # the count must come back to zero after results, errors and cancels.
    from mpserver import _api

    with Server(ProcessServlet(Fail, cpus=2), capacity=64) as s:

        async def main():
            bridge = _api._bridge(asyncio.get_running_loop())
            assert bridge.inflight == 0
            ys = await asyncio.gather(*[s.async_call(i) for i in range(40)])
            assert ys == list(range(40)) and bridge.inflight == 0
            rs = await asyncio.gather(*[s.async_call(x) for x in ['bad', 1, 'bad']], return_exceptions=True)
            assert isinstance(rs[0], ValueError) and rs[1] == 1 and bridge.inflight == 0
            assert await s.async_call(7) == 7

        asyncio.run(main())

    with Server(ProcessServlet(Slow, delay=0.5), capacity=64) as s:

        async def cancels():
            bridge = _api._bridge(asyncio.get_running_loop())
            tasks = [asyncio.ensure_future(s.async_call(i)) for i in range(10)]
            await asyncio.sleep(0.05)
            assert bridge.inflight == 10
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert bridge.inflight == 0

        asyncio.run(cancels())

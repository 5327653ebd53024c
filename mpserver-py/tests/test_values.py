"""Values crossing process boundaries: pickle protocol 5 with large buffers
out-of-band (beside the pickle, not copied into it)."""

import pickle

import pytest
from workers import Describe, Echo, Holder, IntEnumLike

from mpserver import CodecError, ProcessServlet, SequentialServlet, Server, ThreadServlet, _mpserver

MIB = 1 << 20


class IntEnumLikePair(tuple):
    """A tuple subclass: crosses pickled, as itself."""

    def __new__(cls, a, b):
        return super().__new__(cls, (a, b))


def test_large_bytes_cross_as_themselves_and_small_ones_in_the_pickle():
    form, data_len, bufs = _mpserver._pickle_layout(b'x' * MIB)
    assert form == 'raw' and data_len == 0 and bufs == [(True, MIB)]
    form, data_len, bufs = _mpserver._pickle_layout(b'x' * 100)
    assert form == 'pickle' and data_len > 100 and bufs == []


def test_ints_strs_and_floats_cross_in_their_own_form():
    assert _mpserver._pickle_layout(7)[:2] == ('int', 8)
    assert _mpserver._pickle_layout(-(2**63))[0] == 'int'
    assert _mpserver._pickle_layout('héllo')[:2] == ('str', 6)
    assert _mpserver._pickle_layout(0.5)[:2] == ('float', 8)
    # Beyond 64 bits, subclasses, bools, unencodable strs: pickled.
    for v in (2**63, True, IntEnumLike.A, '\ud800', [1]):
        assert _mpserver._pickle_layout(v)[0] == 'pickle', v


def test_short_tuples_of_scalars_cross_in_their_own_form():
    assert _mpserver._pickle_layout((4, 2))[:2] == ('tuple', 18)
    assert _mpserver._pickle_layout(('hé', 0.5, -1))[:2] == ('tuple', 1 + 4 + 3 + 9 + 9)
    # Empty, long, nested, holding other types or subclasses: pickled.
    for v in ((), tuple(range(9)), ((1,),), (1, None), (True,), (2**64,), ('\ud800',),
              IntEnumLikePair(1, 2)):
        assert _mpserver._pickle_layout(v)[0] == 'pickle', v


def test_tuples_round_trip_through_process_workers():
    values = [(0, 1), (-(2**63), 2**63 - 1), ('', 'héllo', 'x' * 1000), (1.5, -0.0, float('inf')),
              (1, 'a', 2.5), tuple(range(8)), tuple(range(9)), (1, None), (True, 2), ((1, 2),),
              (2**64, 1), ('\ud800x',), ()]
    with Server(ProcessServlet(Echo)) as s:
        out = list(s.stream(values))
    assert out == values
    assert [tuple(map(type, v)) for v in out] == [tuple(map(type, v)) for v in values]
    assert [repr(v) for v in out] == [repr(v) for v in values]  # -0.0 stays -0.0


def test_scalars_round_trip_through_process_workers():
    values = [0, -1, 2**62, -(2**63), 2**63, 2**100, True, False, None, IntEnumLike.A,
              '', 'héllo', '\ud800x', 0.0, -0.0, 1.5, float('inf'), 1e-300]
    with Server(ProcessServlet(Echo)) as s:
        out = list(s.stream(values))
    assert out == values
    assert [type(v) for v in out] == [type(v) for v in values]
    assert [str(v) for v in out] == [str(v) for v in values]  # -0.0 stays -0.0
    with Server(ProcessServlet(Echo)) as s:
        y = s.call(float('nan'))
    assert type(y) is float and y != y


def test_pickle_buffers_go_out_of_band():
    data = bytes(range(256)) * 4096
    form, data_len, bufs = _mpserver._pickle_layout(Holder(data))
    assert form == 'pickle'
    assert data_len < 1024, data_len
    assert bufs == [(True, len(data))]
    form, data_len, bufs = _mpserver._pickle_layout([Holder(bytearray(data)), Holder(b'ab')])
    assert data_len < 1024
    assert bufs == [(False, len(data)), (True, 2)]
    # A large bytearray on its own crosses as itself too (inside a
    # container, pickle writes a bytearray in-band).
    form, data_len, bufs = _mpserver._pickle_layout(bytearray(data))
    assert form == 'raw' and data_len == 0 and bufs == [(False, len(data))]


def test_large_bytes_round_trip_through_process_workers():
    payload = bytes(i % 251 for i in range(3 * MIB + 7))
    flow = SequentialServlet(ProcessServlet(Echo), ProcessServlet(Echo))
    with Server(flow) as s:
        for _ in range(3):
            y = s.call(payload)
            assert type(y) is bytes and y == payload
        # Beside small values, in a stream.
        items = [payload, b'small', 7, bytearray(payload)]
        out = list(s.stream(items))
        assert out == items
        assert [type(v) for v in out] == [bytes, bytes, int, bytearray]


def test_an_object_holding_a_pickle_buffer_round_trips():
    data = bytes(range(256)) * 8192
    with Server(ProcessServlet(Describe)) as s:
        kind, inner, n, back = s.call(Holder(data))
        assert (kind, n) == ('Holder', len(data))
        # The worker's Holder was rebuilt on the received buffer itself (a
        # bytes object for read-only data, a bytearray for writable data).
        assert inner == 'bytes'
        assert back == Holder(data) and type(back.data) is bytes
        kind, inner, n, back = s.call(Holder(bytearray(data)))
        assert (kind, inner, n) == ('Holder', 'bytearray', len(data))
        assert type(back.data) is bytearray and back.data == data
        # Nested in a container, beside other values.
        assert s.call([Holder(data), 'z'])[3] == [Holder(data), 'z']
        # A PickleBuffer itself (e.g. over a memoryview, which does not
        # pickle) arrives as the bytes or bytearray it was sent as.
        view = memoryview(bytearray(data))
        _, _, n, back = s.call(pickle.PickleBuffer(view))
        assert n == len(data) and type(back) is bytearray and back == data


def test_values_with_buffers_survive_a_thread_stage_between_processes():
    data = bytes(range(256)) * 4096
    flow = SequentialServlet(ProcessServlet(Echo), ThreadServlet(Echo), ProcessServlet(Echo))
    with Server(flow) as s:
        y = s.call({'h': Holder(data), 'b': data, 'n': 1})
        assert y == {'h': Holder(data), 'b': data, 'n': 1}


def test_numpy_arrays_cross_out_of_band():
    np = pytest.importorskip('numpy')
    a = np.arange(1 << 18, dtype=np.float64).reshape(512, 512)
    form, data_len, bufs = _mpserver._pickle_layout(a)
    assert data_len < 1024 and bufs == [(False, a.nbytes)]
    f = np.asfortranarray(a)
    with Server(ProcessServlet(Echo)) as s:
        for x in (a, f, a[::2]):
            y = s.call(x)
            assert y.dtype == x.dtype and y.shape == x.shape
            assert (y == x).all()
            assert y.flags.writeable


def test_a_memoryview_fails_only_its_item():
    # As with pickle itself (and mpservice): a memoryview does not pickle.
    with Server(ProcessServlet(Echo)) as s:
        with pytest.raises(CodecError):
            s.call(memoryview(b'abc'))
        assert s.call(b'x' * MIB) == b'x' * MIB

"""phide.io.events: DSEC events.h5 / npz / npy loading, time windows, EventGPT event frames."""

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
hdf5plugin = pytest.importorskip("hdf5plugin")

from phide.errors import PhideError  # noqa: E402
from phide.io import events as ev  # noqa: E402
from phide.io.events import (  # noqa: E402
    EventStream,
    last_window,
    load_event_frames,
    load_events,
    render_event_frames,
    window,
)

T_OFFSET = 1_650_000_000_123  # µs, like DSEC's /t_offset (absolute time of the stored t == 0)
BLUE, RED, WHITE = [0, 0, 255], [255, 0, 0], [255, 255, 255]


# ------------------------------------------------------------------------------------------------
# fixtures: one synthetic recording, written as a DSEC events.h5 and as the equivalent .npz


def _recording(n=6000, seed=0):
    """Sorted relative times in 0..~25 ms with repeated timestamps and a 3 ms gap with no events,
    on a small 40x30 sensor so pixels are hit many times by both polarities."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 25_000, n)).astype(np.uint32)
    t[(t >= 9_000) & (t < 12_000)] += 3_000  # gap [9000, 12000) µs; still sorted
    t = np.sort(t)
    x = rng.integers(0, 40, n).astype(np.uint16)
    y = rng.integers(0, 30, n).astype(np.uint16)
    p = rng.integers(0, 2, n).astype(np.uint8)
    return x, y, t, p


def _ms_to_idx(t):
    """DSEC's definition: t[ms_to_idx[ms]] >= ms*1000 and t[ms_to_idx[ms] - 1] < ms*1000."""
    ms = np.arange(int(t[-1]) // 1000 + 1, dtype=np.int64)
    return np.searchsorted(t.astype(np.int64), ms * 1000, side="left").astype(np.uint64)


def _write_dsec_h5(path, x, y, t, p, t_offset=T_OFFSET, ms_to_idx=True, skip=()):
    comp = hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)
    with h5py.File(path, "w") as f:
        for name, arr in (("x", x), ("y", y), ("t", t), ("p", p)):
            if name not in skip:
                f.create_dataset(f"events/{name}", data=arr, chunks=(512,), compression=comp)
        if ms_to_idx:
            f.create_dataset("ms_to_idx", data=_ms_to_idx(t), compression=comp)
        f.create_dataset("t_offset", data=np.int64(t_offset))
    return path


@pytest.fixture(scope="module")
def rec():
    return _recording()


@pytest.fixture(scope="module")
def files(rec, tmp_path_factory):
    x, y, t, p = rec
    root = tmp_path_factory.mktemp("events")
    h5 = _write_dsec_h5(root / "events.h5", x, y, t, p)
    npz = root / "events.npz"
    np.savez(npz, x=x, y=y, t=t.astype(np.int64) + T_OFFSET, p=p)
    return {"h5": h5, "npz": npz}


def _assert_same_stream(a, b):
    assert len(a) == len(b)
    for name in ("x", "y", "t", "p"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name


def _assert_same_frames(fa, fb):
    assert len(fa) == len(fb)
    for a, b in zip(fa, fb):
        assert a.dtype == np.uint8 and b.dtype == np.uint8
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# independent reference: EventGPT's per-event Python loop, written out plainly


def _reference_frames(x, y, p, n):
    total = len(x)
    per = total // n
    frames = []
    for i in range(n):
        lo = i * per
        hi = (i + 1) * per if i < n - 1 else total
        xs, ys, ps = x[lo:hi], y[lo:hi], p[lo:hi]
        img = np.ones((int(ys.max()) + 1, int(xs.max()) + 1, 3), dtype=np.uint8) * 255
        for xe, ye, pe in zip(xs, ys, ps):
            img[ye, xe] = [0, 0, 255] if pe == 0 else [255, 0, 0]
        frames.append(img)
    return frames


# ------------------------------------------------------------------------------------------------
# loading


def test_h5_is_really_blosc_zstd_compressed(files):
    with h5py.File(files["h5"], "r") as f:
        d = f["events/t"]
        assert d.dtype == np.uint32 and f["events/x"].dtype == np.uint16
        assert f["events/p"].dtype == np.uint8
        assert hdf5plugin.BLOSC_ID in d._filters or str(hdf5plugin.BLOSC_ID) in d._filters


def test_h5_and_npz_give_identical_streams(files, rec):
    x, y, t, p = rec
    a, b = load_events(files["h5"]), load_events(files["npz"])
    _assert_same_stream(a, b)
    assert a.t.dtype == np.int64
    np.testing.assert_array_equal(a.t, t.astype(np.int64) + T_OFFSET)  # offset added, no wrap
    np.testing.assert_array_equal(a.x, x)
    np.testing.assert_array_equal(a.p, p)


@pytest.mark.parametrize("rel_window", [
    (3_500, 12_250),      # crosses the 3 ms gap, non-ms-aligned ends
    (4_000, 5_000),       # ms-aligned
    (-70_000, 2_001),     # starts before the recording
    (20_999, 10**9),      # ends after the recording
    (11_900, 12_100),     # mostly inside the gap
    (0, 8),               # the first few events
])
def test_windows_h5_equals_npz_equals_mask(files, rec, rel_window):
    x, y, t, p = rec
    start, end = (T_OFFSET + v for v in rel_window)
    tt = t.astype(np.int64) + T_OFFSET
    keep = (tt >= start) & (tt < end)
    assert keep.any()
    a = load_events(files["h5"], t_start_us=start, t_end_us=end)
    b = load_events(files["npz"], t_start_us=start, t_end_us=end)
    _assert_same_stream(a, b)
    np.testing.assert_array_equal(a.t, tt[keep])
    np.testing.assert_array_equal(a.x, x[keep])
    np.testing.assert_array_equal(a.y, y[keep])
    np.testing.assert_array_equal(a.p, p[keep])
    _assert_same_stream(window(load_events(files["npz"]), start, end), a)


def test_h5_window_reads_only_a_slice(files, rec, monkeypatch):
    """With a window, events/t etc. are read through a ms_to_idx slice, never whole."""
    n = len(rec[2])
    reads = []
    orig = h5py.Dataset.__getitem__

    def spy(self, key):
        out = orig(self, key)
        if self.name.startswith("/events/"):
            reads.append((self.name, np.asarray(out).size))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    s = load_events(files["h5"], t_start_us=T_OFFSET + 14_000, t_end_us=T_OFFSET + 15_500)
    assert 0 < len(s) < n // 5
    assert reads and max(size for _, size in reads) < n // 5, reads


def test_h5_window_without_ms_to_idx(tmp_path, rec, files):
    x, y, t, p = rec
    h5 = _write_dsec_h5(tmp_path / "no_index.h5", x, y, t, p, ms_to_idx=False)
    start, end = T_OFFSET + 3_500, T_OFFSET + 12_250
    _assert_same_stream(load_events(h5, t_start_us=start, t_end_us=end),
                        load_events(files["npz"], t_start_us=start, t_end_us=end))


def test_h5_and_npz_give_identical_event_frames(files):
    _assert_same_frames(load_event_frames(files["h5"]), load_event_frames(files["npz"]))
    for d in (2_000, 7_777, 10**6):
        fa = load_event_frames(files["h5"], duration_us=d)
        _assert_same_frames(fa, load_event_frames(files["npz"], duration_us=d))
        _assert_same_frames(fa, render_event_frames(last_window(load_events(files["npz"]), d)))


def test_last_window_bounds(files, rec):
    s = load_events(files["npz"])
    w = last_window(s, 2_000)
    assert w.t.max() == s.t.max() and w.t.min() > s.t.max() - 2_000
    np.testing.assert_array_equal(w.t, s.t[s.t > s.t.max() - 2_000])
    w = last_window(s, 100_000)  # fits EventGPT's limit: span < 100 ms
    assert w.t.max() - w.t.min() < ev.EVENTGPT_MAX_SPAN_US
    assert len(last_window(s, 10**9)) == len(s)


def test_npy_structured_array(tmp_path, rec, files):
    x, y, t, p = rec
    arr = np.zeros(len(x), dtype=[("t", np.int64), ("x", np.uint16), ("y", np.uint16), ("p", np.uint8)])
    arr["x"], arr["y"], arr["t"], arr["p"] = x, y, t.astype(np.int64) + T_OFFSET, p
    np.save(tmp_path / "ev.npy", arr)
    _assert_same_stream(load_events(tmp_path / "ev.npy"), load_events(files["npz"]))


def test_pickled_npy_refused_by_default_and_accepted_with_opt_in(tmp_path, rec, files, capsys):
    x, y, t, p = rec
    path = tmp_path / "eventgpt.npy"
    np.save(path, {"x": x, "y": y, "t": t.astype(np.int64) + T_OFFSET, "p": p}, allow_pickle=True)
    with pytest.raises(PhideError, match="allow_pickle"):
        load_events(path)
    with pytest.raises(PhideError, match="allow_pickle"):
        load_event_frames(path)
    assert "unpickling" not in capsys.readouterr().err
    s = load_events(path, allow_pickle=True)
    assert "phide: warning: unpickling" in capsys.readouterr().err
    _assert_same_stream(s, load_events(files["npz"]))
    _assert_same_frames(load_event_frames(path, allow_pickle=True), load_event_frames(files["npz"]))


def test_streams_and_dicts_as_sources(rec):
    x, y, t, p = rec
    s = EventStream(x, y, t, p)
    d = {"x": x, "y": y, "t": t, "p": p}
    _assert_same_frames(load_event_frames(s, 3), load_event_frames(d, 3))
    _assert_same_frames(load_event_frames(s, 3), _reference_frames(x, y, p, 3))


# ------------------------------------------------------------------------------------------------
# rendering


def test_render_matches_reference_loop(rec):
    x, y, t, p = rec
    x, y, t, p = x[:2003], y[:2003], t[:2003], p[:2003]  # 2003 = 5*400 + 3: uneven last chunk
    got = render_event_frames(EventStream(x, y, t, p), 5)
    want = _reference_frames(x, y, p, 5)
    _assert_same_frames(got, want)
    # overlaps really happened, both polarities survive somewhere
    assert len(np.unique(y.astype(int) * 40 + x)) < len(x) // 2
    allpix = np.concatenate([f.reshape(-1, 3) for f in got])
    assert (allpix == BLUE).all(1).any() and (allpix == RED).all(1).any()


def test_render_last_write_wins_on_heavy_overlap():
    """Thousands of events on 3 pixels with alternating polarity: the last event of each pixel
    decides its colour (a vectorised fancy-index write is not guaranteed to do this)."""
    rng = np.random.default_rng(5)
    n = 5000
    x = rng.integers(0, 3, n).astype(np.uint16)
    y = np.zeros(n, np.uint16)
    p = rng.integers(0, 2, n).astype(np.uint8)
    got = render_event_frames(EventStream(x, y, np.arange(n), p), 1)[0]
    for col in range(3):
        last = np.flatnonzero(x == col)[-1]
        assert got[0, col].tolist() == (BLUE if p[last] == 0 else RED)
    _assert_same_frames([got], _reference_frames(x, y, p, 1))


def test_render_hand_checked_tiny_example():
    # (x, y, p) in order; pixel (y=0, x=0) is hit red then blue -> blue; (1, 2) blue then red -> red
    x = np.array([0, 2, 0, 2, 1])
    y = np.array([0, 1, 0, 1, 0])
    p = np.array([1, 0, 0, 1, 0], dtype=np.uint8)
    [img] = render_event_frames(EventStream(x, y, np.arange(5), p), 1)
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == BLUE
    assert img[1, 2].tolist() == RED
    assert img[0, 1].tolist() == BLUE
    for yy, xx in [(0, 2), (1, 0), (1, 1)]:
        assert img[yy, xx].tolist() == WHITE
    # bool polarity: False is the negative (blue) one
    [img_b] = render_event_frames(EventStream(x, y, np.arange(5), p.astype(bool)), 1)
    np.testing.assert_array_equal(img_b, img)


def test_chunking_is_eventgpt_floor_split_not_array_split():
    """12 events, 5 frames: EventGPT cuts 2,2,2,2,4 (remainder to the last chunk); np.array_split
    would cut 3,3,2,2,2. x = event index makes each image's width reveal its chunk's last event."""
    n = 12
    x = np.arange(n)
    frames = render_event_frames(EventStream(x, np.zeros(n, int), np.arange(n), np.ones(n, np.uint8)), 5)
    assert [f.shape[1] for f in frames] == [2, 4, 6, 8, 12]
    assert [f.shape[0] for f in frames] == [1] * 5
    # each chunk's own extent: frame 1 only has events 2,3 -> pixels 0,1 stay white
    assert frames[1][0, :2].tolist() == [WHITE, WHITE] and frames[1][0, 2:].tolist() == [RED, RED]
    assert ev.chunk_bounds(12, 5) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 12)]


def test_frames_size_follows_chunk_extent_not_sensor(rec):
    x, y, t, p = rec
    s = EventStream(x, y, t, p, sensor_size=(480, 640))
    for f, (a, b) in zip(render_event_frames(s, 5), ev.chunk_bounds(len(x), 5)):
        assert f.shape == (int(y[a:b].max()) + 1, int(x[a:b].max()) + 1, 3)


# ------------------------------------------------------------------------------------------------
# errors


def test_error_missing_and_unknown_files(tmp_path):
    with pytest.raises(PhideError, match="not found"):
        load_events(tmp_path / "nope.h5")
    (tmp_path / "ev.txt").write_text("1 2 3 4\n")
    with pytest.raises(PhideError, match="unknown event file extension"):
        load_events(tmp_path / "ev.txt")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(PhideError, match="not a readable HDF5"):
        load_events(tmp_path / "bad.h5")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(PhideError, match="bad.npz"):
        load_events(tmp_path / "bad.npz")
    np.save(tmp_path / "plain.npy", np.arange(10))
    with pytest.raises(PhideError, match="structured array"):
        load_events(tmp_path / "plain.npy")


def test_error_missing_keys_are_named(tmp_path, rec):
    x, y, t, p = rec
    np.savez(tmp_path / "ev.npz", x=x, t=t)
    with pytest.raises(PhideError, match=r"missing key\(s\) y, p"):
        load_events(tmp_path / "ev.npz")
    h5 = _write_dsec_h5(tmp_path / "ev.h5", x, y, t, p, skip=("p",))
    with pytest.raises(PhideError, match="missing dataset.*events/p"):
        load_events(h5)


def test_error_windows(files, rec):
    first, last = T_OFFSET + int(rec[2][0]), T_OFFSET + int(rec[2][-1])
    for path in (files["h5"], files["npz"]):
        with pytest.raises(PhideError, match="outside the recording"):
            load_events(path, t_start_us=last + 10, t_end_us=last + 20)
        with pytest.raises(PhideError, match="outside the recording"):
            load_events(path, t_start_us=0, t_end_us=first)  # end is exclusive
        with pytest.raises(PhideError, match="no events"):
            load_events(path, t_start_us=T_OFFSET + 10_000, t_end_us=T_OFFSET + 11_000)  # the gap
        with pytest.raises(PhideError, match="before end"):
            load_events(path, t_start_us=T_OFFSET + 5, t_end_us=T_OFFSET + 5)
    s = load_events(files["npz"])
    with pytest.raises(PhideError, match="duration"):
        last_window(s, 0)
    with pytest.raises(PhideError, match="duration"):
        load_event_frames(files["h5"], duration_us=-5)


def test_error_bad_streams():
    with pytest.raises(PhideError, match="differ in length"):
        EventStream(np.arange(3), np.arange(2), np.arange(3), np.zeros(3, np.uint8))
    with pytest.raises(PhideError, match="negative x"):
        EventStream(np.array([-1, 2]), np.arange(2), np.arange(2), np.zeros(2, np.uint8))
    with pytest.raises(PhideError, match="integers"):
        EventStream(np.array([0.5, 2.0]), np.arange(2), np.arange(2), np.zeros(2, np.uint8))
    with pytest.raises(PhideError, match="outside the sensor"):
        EventStream(np.array([640]), np.array([0]), np.array([0]), np.zeros(1, np.uint8), (480, 640))
    s = EventStream(np.arange(3), np.arange(3), np.arange(3), np.zeros(3, np.uint8))
    with pytest.raises(PhideError, match="cannot fill 5 event frames"):
        render_event_frames(s, 5)
    with pytest.raises(PhideError, match="n_frames"):
        render_event_frames(s, 0)

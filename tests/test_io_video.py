"""phide.io.video: Video-LLaVA's uniform 8-frame sampling from video files, image folders, arrays."""

import itertools

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

from phide.errors import PhideError  # noqa: E402
from phide.io.video import load_video_frames, sample_frame_indices  # noqa: E402

H, W = 48, 64
# 27 solid colours, every pair >= 127 apart in some channel: survives lossy yuv420 coding
PALETTE = np.array(list(itertools.product([0, 127, 255], repeat=3)), dtype=np.uint8)


def _solid_frames(n):
    return np.broadcast_to(PALETTE[:n, None, None, :], (n, H, W, 3)).copy()


def _noise_frames(n, seed=0):
    """Frame i: random pixels, with i written into pixel (0, 0) so frames are identifiable."""
    f = np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    f[:, 0, 0, 0] = np.arange(n)
    return f


def _write_video(path, frames, codec, pix_fmt):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=20)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def _identify(frames):
    """Palette index of each (solid, lossy) frame: nearest colour to the frame's mean."""
    means = frames.reshape(len(frames), -1, 3).mean(1)
    d = np.abs(means[:, None, :] - PALETTE[None].astype(float)).sum(-1)
    return d.argmin(1)


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("total,num,want", [
    (21, 8, [0, 2, 5, 8, 11, 14, 17, 20]),
    (13, 8, [0, 1, 3, 5, 6, 8, 10, 12]),
    (8, 8, list(range(8))),
    (5, 8, [0, 0, 1, 1, 2, 2, 3, 4]),
    (1, 8, [0] * 8),
    (100, 1, [0]),
    (300, 8, [0, 42, 85, 128, 170, 213, 256, 299]),
])
def test_sample_indices_video_llava_formula(total, num, want):
    got = sample_frame_indices(total, num)
    assert got.tolist() == want
    # the documented formula: evenly spaced positions over [0, total-1], truncated
    exact = [int(np.floor(i * (total - 1) / (num - 1))) if num > 1 else 0 for i in range(num)]
    assert got.tolist() == exact


def test_mp4_h264_21_frames(tmp_path):
    frames = _solid_frames(21)
    path = _write_video(tmp_path / "clip.mp4", frames, "libx264", "yuv420p")
    out = load_video_frames(path)
    assert out.shape == (8, H, W, 3) and out.dtype == np.uint8
    idx = [0, 2, 5, 8, 11, 14, 17, 20]
    assert _identify(out).tolist() == idx
    assert np.abs(out.astype(int) - frames[idx].astype(int)).max() <= 12  # codec error only


def test_lossless_mkv_ffv1_exact_without_frame_count_metadata(tmp_path):
    frames = _noise_frames(21)
    path = _write_video(tmp_path / "clip.mkv", frames, "ffv1", "bgr0")
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # forces the counting pass
    np.testing.assert_array_equal(load_video_frames(path), frames[[0, 2, 5, 8, 11, 14, 17, 20]])
    np.testing.assert_array_equal(load_video_frames(str(path), num_frames=3), frames[[0, 10, 20]])


def test_lossless_avi_png_short_clip_repeats(tmp_path):
    frames = _noise_frames(5, seed=1)
    path = _write_video(tmp_path / "short.avi", frames, "png", "rgb24")
    out = load_video_frames(path)
    np.testing.assert_array_equal(out, frames[[0, 0, 1, 1, 2, 2, 3, 4]])


def test_png_folder_sorted_by_name(tmp_path):
    frames = _noise_frames(13, seed=2)
    order = np.random.default_rng(3).permutation(13)  # create files out of order
    for i in order:
        Image.fromarray(frames[i]).save(tmp_path / f"{i:06d}.png")
    (tmp_path / "timestamps.txt").write_text("ignored\n")
    (tmp_path / "sub.png").mkdir()  # a directory, not an image
    out = load_video_frames(tmp_path)
    np.testing.assert_array_equal(out, frames[[0, 1, 3, 5, 6, 8, 10, 12]])
    assert out.dtype == np.uint8 and out.flags.c_contiguous


def test_jpg_folder_and_grey_images_become_rgb(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((H, W), 40 * i, np.uint8), mode="L").save(tmp_path / f"f{i}.jpg")
    out = load_video_frames(tmp_path, num_frames=4)
    assert out.shape == (4, H, W, 3)
    assert np.abs(out[:, 0, 0].astype(int) - np.array([0, 0, 40, 80])[:, None]).max() <= 2


def test_arrays_tensors_and_lists(tmp_path):
    frames = _noise_frames(21, seed=4)
    idx = [0, 2, 5, 8, 11, 14, 17, 20]
    np.testing.assert_array_equal(load_video_frames(frames), frames[idx])
    np.testing.assert_array_equal(load_video_frames(torch.from_numpy(frames)), frames[idx])
    np.testing.assert_array_equal(load_video_frames(list(frames)), frames[idx])
    np.testing.assert_array_equal(load_video_frames(frames.astype(np.int64)), frames[idx])
    np.testing.assert_array_equal(load_video_frames(frames[:2], 4), frames[[0, 0, 0, 1]])


def test_errors(tmp_path):
    with pytest.raises(PhideError, match="not found"):
        load_video_frames(tmp_path / "missing.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(PhideError, match="no png/jpg/jpeg images"):
        load_video_frames(empty)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage, not a video" * 50)
    with pytest.raises(PhideError, match="cannot decode"):
        load_video_frames(bad)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(mixed / "b.png")
    with pytest.raises(PhideError, match="differ in size"):
        load_video_frames(mixed)
    (mixed / "c.png").write_bytes(b"not a png")
    with pytest.raises(PhideError, match="cannot read image"):
        load_video_frames(mixed, num_frames=3)
    with pytest.raises(PhideError, match=r"\[T, H, W, 3\]"):
        load_video_frames(np.zeros((4, H, W), np.uint8))
    with pytest.raises(PhideError, match="uint8"):
        load_video_frames(np.zeros((4, H, W, 3), np.float32))
    with pytest.raises(PhideError, match="no frames"):
        load_video_frames(np.zeros((0, H, W, 3), np.uint8))
    with pytest.raises(PhideError, match="num_frames"):
        load_video_frames(np.zeros((4, H, W, 3), np.uint8), num_frames=0)

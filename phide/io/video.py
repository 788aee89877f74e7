"""RGB clips for the Video-LLaVA target: uniform sampling of `num_frames` frames.

Sampling follows Video-LLaVA's original processor (PKU-YuanGroup/Video-LLaVA
`videollava/model/multimodal_encoder/languagebind/video/processing_video.py`, `load_and_transform_video`,
decord/opencv/lmdb backends; the LanguageBind video config defaults to decord, num_frames 8):

    frame_id_list = np.linspace(0, total_frames - 1, num_frames, dtype=int)

i.e. evenly spaced float positions from the first to the last frame, truncated toward zero. Both ends
are always included; clips shorter than num_frames repeat frames (5 frames -> 0 0 1 1 2 2 3 4).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from phide.errors import PhideError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

PathLike = Union[str, os.PathLike]


def sample_frame_indices(total_frames: int, num_frames: int = 8) -> np.ndarray:
    """Video-LLaVA's uniform sampling: `np.linspace(0, total_frames - 1, num_frames, dtype=int)`."""
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise PhideError(f"num_frames must be a positive integer, got {num_frames!r}")
    if total_frames < 1:
        raise PhideError("the clip holds no frames")
    return np.linspace(0, total_frames - 1, num_frames, dtype=int)


def load_video_frames(source, num_frames: int = 8) -> np.ndarray:
    """`num_frames` uniformly sampled frames as a [num_frames, H, W, 3] uint8 RGB array.

    source: a video file (any container/codec FFmpeg decodes, via PyAV), a folder of .png/.jpg
    images (one frame each, in file-name order), or frames already decoded: an array/tensor
    [T, H, W, 3] of uint8 (or integers in 0..255), or a list of [H, W, 3] frames.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise PhideError(f"video not found: {path}")
        if path.is_dir():
            return _from_folder(path, num_frames)
        return _from_file(path, num_frames)
    return _from_array(source, num_frames)


def _from_array(source, num_frames: int) -> np.ndarray:
    if hasattr(source, "detach") and hasattr(source, "cpu"):  # torch.Tensor, without importing torch
        source = source.detach().cpu().numpy()
    elif isinstance(source, (list, tuple)):
        try:
            source = np.stack([np.asarray(f) for f in source]) if source else np.zeros((0, 0, 0, 3))
        except ValueError as e:
            raise PhideError(f"video frames differ in shape: {e}") from None
    arr = np.asarray(source)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise PhideError(f"video frames must be [T, H, W, 3] RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iu":
            raise PhideError(f"video frames must be uint8 RGB (0..255), got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise PhideError("video frames hold values outside 0..255")
        arr = arr.astype(np.uint8)
    idx = sample_frame_indices(arr.shape[0], num_frames)
    return np.ascontiguousarray(arr[idx])


def _from_folder(path: Path, num_frames: int) -> np.ndarray:
    files = sorted((f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda f: f.name)
    if not files:
        raise PhideError(f"{path}: no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images in the folder")
    try:
        from PIL import Image
    except ImportError as e:
        raise PhideError(f"reading image folders needs pillow (pip install pillow): {e}") from None
    idx = sample_frame_indices(len(files), num_frames)
    cache: dict[int, np.ndarray] = {}
    for i in dict.fromkeys(idx.tolist()):
        try:
            with Image.open(files[i]) as im:
                cache[i] = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise PhideError(f"{files[i]}: cannot read image ({e})") from None
    shapes = {a.shape for a in cache.values()}
    if len(shapes) > 1:
        raise PhideError(f"{path}: images differ in size ({sorted(shapes)})")
    return np.stack([cache[i] for i in idx.tolist()])


def _from_file(path: Path, num_frames: int) -> np.ndarray:
    try:
        import av
    except ImportError as e:
        raise PhideError(f"decoding video files needs PyAV (pip install av): {e}") from None
    try:
        total = _metadata_frame_count(av, path)
        if total <= 0:  # not in the container's metadata (e.g. mkv): count by decoding
            total = _decode(av, path, None)[1]
        idx = sample_frame_indices(total, num_frames)
        frames, decoded = _decode(av, path, idx)
        if len(frames) < len(set(idx.tolist())):
            # the metadata over-counted: sample again over the frames that really decode
            idx = sample_frame_indices(decoded, num_frames)
            frames, decoded = _decode(av, path, idx)
    except av.error.FFmpegError as e:
        raise PhideError(f"{path}: cannot decode video ({e})") from None
    if not frames:
        raise PhideError(f"{path}: no video frames could be decoded")
    shapes = {a.shape for a in frames.values()}
    if len(shapes) > 1:
        raise PhideError(f"{path}: decoded frames differ in size ({sorted(shapes)})")
    return np.stack([frames[i] for i in idx.tolist()])


def _metadata_frame_count(av, path: Path) -> int:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise PhideError(f"{path}: has no video stream")
        return int(container.streams.video[0].frames or 0)


def _decode(av, path: Path, indices) -> tuple[dict[int, np.ndarray], int]:
    """Decode the first video stream in order, keeping frames whose index is in `indices` (None:
    keep none, just count). Returns (kept frames by index, number of frames decoded); stops after
    the last wanted index."""
    wanted = set() if indices is None else set(int(i) for i in indices)
    stop = max(wanted) if wanted else None
    kept: dict[int, np.ndarray] = {}
    count = 0
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise PhideError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if count in wanted:
                kept[count] = frame.to_ndarray(format="rgb24")
            count += 1
            if stop is not None and count > stop:
                break
    return kept, count

"""Dense labels from the toy world's renderer, for auxiliary losses while training the toy pair.

A from-scratch vision tower + LM trained only on answer tokens sits for a long time on a plateau
where it writes perfect templates with guessed attributes (measured: loss ~0.5/token after 400
steps of the demo target, every colour and shape guessed). The renderer knows which object covers
each patch, so the visual tokens can be taught directly what they show: the colour and shape of
the object in each patch (target, from RGB), its motion (target: at the LM's visual positions,
which see the earlier frames; draft: on the event tokens, which see motion but no colour).
The auxiliary heads live only in training; the checkpoints keep their real formats.
"""

from __future__ import annotations

import functools

import numpy as np

from phide.toy.qa import region_cell
from phide.toy.scene import COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS, Obj, Scene
from phide.toy.sensors import frame_times_s, object_masks

BACKGROUND = 0
COLOUR_CLASSES = 1 + len(COLOURS)                      # 0 = background
SHAPE_CLASSES = 1 + len(SHAPES)
MOVING_DIRECTIONS = tuple(d for d in DIRECTIONS if d != "still")
MOTION_CLASSES = 2 + len(MOVING_DIRECTIONS) * len(SPEEDS)  # 0 = background, 1 = still


def colour_class(o: Obj) -> int:
    return 1 + list(COLOURS).index(o.colour)


def shape_class(o: Obj) -> int:
    return 1 + SHAPES.index(o.shape)


def motion_class(o: Obj) -> int:
    if not o.moving:
        return 1
    return 2 + MOVING_DIRECTIONS.index(o.direction) * len(SPEEDS) + SPEEDS.index(o.speed)


OWNER_MIN_COVERAGE = 0.25


def patch_owners(scene: Scene, times_s, grid: int) -> np.ndarray:
    """[T, grid*grid] int: index + 1 of the object covering most of each patch cell (row-major,
    the frame resized as a whole to grid x grid cells) when it covers at least a quarter of the
    cell, else 0 (background). Not a majority vote: a small object (radius 0.08 of the side)
    would then own no patch at all in ~28% of cases, and its patches would be taught to look
    like background."""
    cover = patch_coverage(scene, times_s, grid)[..., 1:]
    if cover.shape[-1] == 0:
        return np.zeros(cover.shape[:2], dtype=np.int64)
    best = cover.argmax(-1)
    return np.where(cover.max(-1) >= OWNER_MIN_COVERAGE, best + 1, 0).astype(np.int64)


def patch_coverage(scene: Scene, times_s, grid: int) -> np.ndarray:
    """[T, grid*grid, 1 + objects] float: the fraction of each patch cell showing the background
    (index 0) and each object (index + 1) at each time."""
    times_s = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
    T, H, W = len(times_s), scene.height, scene.width
    if not scene.objects:
        return np.ones((T, grid * grid, 1))
    masks = object_masks(scene, times_s).astype(np.float64)  # [O, T, H, W]
    # later objects are drawn on top: a pixel belongs to the last object covering it
    owner = np.zeros((T, H, W), dtype=np.int64)
    for i in range(masks.shape[0]):
        owner[masks[i] > 0] = i + 1
    rows = np.minimum((np.arange(H) * grid) // H, grid - 1)
    cols = np.minimum((np.arange(W) * grid) // W, grid - 1)
    cell = rows[:, None] * grid + cols[None, :]                       # [H, W]
    counts = np.zeros((T, grid * grid, len(scene.objects) + 1))
    for k in range(len(scene.objects) + 1):
        hit = (owner == k).reshape(T, -1).astype(np.float64)
        counts[:, :, k] = np.stack([np.bincount(cell.reshape(-1), weights=h, minlength=grid * grid) for h in hit])
    return counts / counts.sum(-1, keepdims=True)


def attribute_labels(scene: Scene, owners: np.ndarray) -> dict[str, np.ndarray]:
    """owners (from patch_owners) -> {"colour", "shape", "motion"} class arrays of the same shape."""
    tables = {
        "colour": [BACKGROUND] + [colour_class(o) for o in scene.objects],
        "shape": [BACKGROUND] + [shape_class(o) for o in scene.objects],
        "motion": [BACKGROUND] + [motion_class(o) for o in scene.objects],
    }
    return {k: np.asarray(v, dtype=np.int64)[owners] for k, v in tables.items()}


@functools.lru_cache(maxsize=64)  # a scene's questions share its labels; computing them renders masks
def target_patch_labels(scene: Scene, n_frames: int, grid: int) -> dict[str, np.ndarray]:
    """Per RGB frame (the camera's frame times) and patch: colour, shape, motion classes [F, grid^2]."""
    return attribute_labels(scene, patch_owners(scene, frame_times_s(scene, n_frames), grid))


@functools.lru_cache(maxsize=64)
def event_patch_labels(scene: Scene, grid: int) -> dict[str, np.ndarray]:
    """Per patch of the event image (where objects are at the end of the clip, when the event
    window closes): shape and motion classes [grid^2]."""
    labels = attribute_labels(scene, patch_owners(scene, [scene.duration_s], grid))
    return {k: v[0] for k, v in labels.items()}


# Scene-level facts, one slot per shape (SHAPES order), class 0 = that shape is absent.
SCENE_CLASSES = {"colour": COLOUR_CLASSES, "size": 1 + len(SIZES), "motion": MOTION_CLASSES, "region": 1 + 9}


def scene_labels(scene: Scene) -> dict[str, np.ndarray]:
    """What an answer may have to say about each shape: {"colour", "size", "motion", "region"}
    -> int64 [len(SHAPES)] classes (region: the 3x3 cell of the centre at the clip's end, as
    answers name it). Supervising the LM's text positions with these teaches its attention
    to gather the objects' facts from the visual tokens with a dense signal, instead of the few
    attribute words among an answer's template tokens."""
    out = {k: np.zeros(len(SHAPES), dtype=np.int64) for k in SCENE_CLASSES}
    for o in scene.objects:
        s = SHAPES.index(o.shape)
        row, col = region_cell(o, scene)
        out["colour"][s] = colour_class(o)
        out["size"][s] = 1 + SIZES.index(o.size)
        out["motion"][s] = motion_class(o)
        out["region"][s] = 1 + 3 * row + col
    return out

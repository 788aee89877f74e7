"""A toy world seen by an RGB camera and by an event camera, with template questions and answers.

Scenes
    1-3 objects (distinct shapes, distinct colours) over a fixed dark-grey gradient with a faint
    checker texture (grey levels 16..64). Shapes: circle, square, triangle; sizes small / large
    (radius 0.08 / 0.14 of the image side); each object moves left, right, up or down, slowly
    (0.2 image sides per second) or quickly (0.6), or stays still. A clip lasts 1 s. Object
    geometry is in fractions of the image, so any image size (default 64x64) shows the same scene.
    Objects never overlap (rejection sampling over the whole clip) and never leave the image.

Colours
    Six named colours, all of EXACTLY the same luminance (Rec. 601 luma, 299 R + 587 G + 114 B =
    140000, i.e. luma 140, far above the background): the RGB frames show colours, the event camera,
    which sees only luminance, cannot tell them apart. Swapping colours leaves the event stream
    bit-identical. Every object is brighter than the background, so a moving object's leading
    edge fires positive events (p = 1) and its trailing edge negative ones (p = 0).

RGB camera (`render_frames`)
    n frames (default 8) evenly over the clip, from t = 0 to t = duration (the last frame is the
    clip's end, which is also the end of the event window); objects drawn in list (z) order, hard
    edges (no anti-aliasing); pixel (row i, column j) samples the scene at (j + 0.5, i + 0.5).

Event camera (`simulate_events`)
    An idealised DVS (the ESIM / v2e model without noise or refractory period): luminance images are
    rendered at `fps_internal` (250 Hz: an object moves at most 0.15 px per step at 64x64), per pixel
    L = log(luma + eps) (eps = 1 grey level) is compared with a per-pixel reference (initialised
    with the first image); each crossing of reference +- k*C (C = contrast_threshold, 0.2) emits
    one event, timestamped by linear interpolation of L between the two internal frames, and moves
    the reference by +-C. The whole clip is simulated (so the references carry their history) and
    the events of the last `window_us` (80 ms; EventGPT refuses streams of 100 ms or more) are
    returned, half-open [duration - window, duration), in absolute clip time (µs), sorted by t.
    A hard edge between background and object is a log step of 0.77..2.1, i.e. 3..10 events per
    pixel crossing. Optional uniform noise (`noise_rate_hz` events per pixel per second, random
    polarity, seeded) keeps all-still scenes from giving an empty stream.

Questions and answers (`QUESTIONS`, `answer`)
    Template questions (some with a {shape} slot, filled from the scene by `questions_for`) and
    deterministic template answers of 20-40 tokens (with `phide.toy.tokenizer`'s tokenizer) that
    name every object they mention as "[the|a] [size] colour shape" followed by its own motion
    ("moves to the left quickly", "moves up slowly", "stays still"). `extract_facts` reads such
    text back into {shape: colour} and {shape: motion}; `score_answer` judges a generated answer on
    motion and on colour separately against the scene.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from typing import Optional, Union

import numpy as np

from phide.io.events import EventStream

# --------------------------------------------------------------------------------------------
# the world's vocabulary

SHAPES = ("circle", "square", "triangle")
# All six have 299 R + 587 G + 114 B == 140000 exactly (luma 140.0): the event camera is colour-blind.
COLOURS = {
    "red": (248, 98, 73),
    "orange": (244, 108, 32),
    "yellow": (158, 152, 31),
    "green": (61, 195, 64),
    "blue": (107, 137, 242),
    "purple": (193, 93, 243),
}
OBJECT_LUMA = 140.0
SIZES = ("small", "large")
DIRECTIONS = ("left", "right", "up", "down", "still")
SPEEDS = ("slow", "fast")

SIZE_RADIUS = {"small": 0.08, "large": 0.14}  # fraction of min(width, height)
SPEED_RATE = {"slow": 0.2, "fast": 0.6}  # image sides (min(width, height)) per second
_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}

BACKGROUND_RANGE = (16, 64)  # grey levels of the background texture (min, max)
DEFAULT_DURATION_US = 1_000_000
DEFAULT_WINDOW_US = 80_000
DEFAULT_FPS_INTERNAL = 250
DEFAULT_CONTRAST = 0.2
DEFAULT_EPS = 1.0

_P_ALL_STILL = 0.08  # scenes where nothing moves (the draft then sees only noise)
_P_STILL = 0.35  # otherwise each object is still with this probability (at least one moves)


def _luma_sum(rgb) -> int:
    r, g, b = (int(v) for v in rgb)
    return 299 * r + 587 * g + 114 * b


assert len({_luma_sum(c) for c in COLOURS.values()}) == 1, "palette colours must share one luminance"
assert _luma_sum(next(iter(COLOURS.values()))) == OBJECT_LUMA * 1000


# --------------------------------------------------------------------------------------------
# scenes


@dataclass(frozen=True)
class Obj:
    """One object. x, y: its centre at t = 0 in fractions of the image width / height (0..1, from
    the top-left corner); direction "still" has speed None, the others "slow" or "fast"."""

    shape: str
    colour: str
    size: str
    direction: str
    speed: Optional[str]
    x: float
    y: float

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r} ({', '.join(SHAPES)})")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r} ({', '.join(COLOURS)})")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r} ({', '.join(SIZES)})")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r} ({', '.join(DIRECTIONS)})")
        if self.direction == "still":
            if self.speed is not None:
                raise ValueError("a still object has speed None")
        elif self.speed not in SPEEDS:
            raise ValueError(f"a moving object needs a speed in {SPEEDS}, got {self.speed!r}")

    @property
    def moving(self) -> bool:
        return self.direction != "still"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    def radius_px(self, scene: Scene) -> float:
        return SIZE_RADIUS[self.size] * min(scene.width, scene.height)

    def velocity_px_s(self, scene: Scene) -> tuple[float, float]:
        if not self.moving:
            return 0.0, 0.0
        v = SPEED_RATE[self.speed] * min(scene.width, scene.height)
        ux, uy = _UNIT[self.direction]
        return ux * v, uy * v

    def centre_px(self, scene: Scene, t_s):
        """Centre (cx, cy) in pixels at time(s) t_s (seconds; scalar or array)."""
        vx, vy = self.velocity_px_s(scene)
        t = np.asarray(t_s, dtype=np.float64)
        return self.x * scene.width + vx * t, self.y * scene.height + vy * t


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    width: int = 64
    height: int = 64
    duration_us: int = DEFAULT_DURATION_US
    seed: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if not self.objects:
            raise ValueError("a scene needs at least one object")
        if self.width < 8 or self.height < 8:
            raise ValueError(f"image size {self.width}x{self.height} is too small (>= 8x8)")
        if self.duration_us <= 0:
            raise ValueError("duration_us must be positive")

    @property
    def duration_s(self) -> float:
        return self.duration_us / 1e6

    @property
    def moving(self) -> tuple[Obj, ...]:
        return tuple(o for o in self.objects if o.moving)

    @property
    def still(self) -> tuple[Obj, ...]:
        return tuple(o for o in self.objects if not o.moving)

    def find(self, shape: str) -> Optional[Obj]:
        return next((o for o in self.objects if o.shape == shape), None)

    def replace_object(self, i: int, **changes) -> Scene:
        objs = list(self.objects)
        objs[i] = replace(objs[i], **changes)
        return replace(self, objects=tuple(objs))


def _as_rng(rng) -> tuple[np.random.Generator, Optional[int]]:
    if isinstance(rng, np.random.Generator):
        return rng, None
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng)), int(rng)
    raise TypeError(f"rng must be an int seed or a numpy Generator, got {type(rng).__name__}")


def _overlap_free(objs: list[Obj], scene: Scene, n_times: int = 21) -> bool:
    ts = np.linspace(0.0, scene.duration_s, n_times)
    for i in range(len(objs)):
        for j in range(i):
            xi, yi = objs[i].centre_px(scene, ts)
            xj, yj = objs[j].centre_px(scene, ts)
            gap = objs[i].radius_px(scene) + objs[j].radius_px(scene) + 1.0
            if np.any(np.hypot(xi - xj, yi - yj) < gap):
                return False
    return True


def sample_scene(rng: Union[int, np.random.Generator] = 0, *, width: int = 64, height: int = 64,
                 duration_us: int = DEFAULT_DURATION_US) -> Scene:
    """A random scene: 1-3 objects of distinct shapes and colours; in ~92% of scenes at least one
    moves (each object is still with probability 0.35 otherwise), ~8% are all still. Every object
    stays fully inside the image for the whole clip and no two overlap. `rng`: an int seed (stored
    as scene.seed: sample_scene(scene.seed) gives the scene back) or a numpy Generator."""
    rng, seed = _as_rng(rng)
    frame = Scene((Obj("circle", "red", "small", "still", None, 0.5, 0.5),), width, height, duration_us)
    side = min(width, height)
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    shapes = [str(s) for s in rng.choice(SHAPES, n, replace=False)]
    colours = [str(c) for c in rng.choice(list(COLOURS), n, replace=False)]
    sizes = [str(s) for s in rng.choice(SIZES, n)]
    if rng.random() < _P_ALL_STILL:
        moving = [False] * n
    else:
        moving = list(rng.random(n) >= _P_STILL)
        if not any(moving):
            moving[int(rng.integers(n))] = True
    dirs = [str(rng.choice(DIRECTIONS[:4])) if m else "still" for m in moving]
    speeds = [str(rng.choice(SPEEDS)) if m else None for m in moving]
    for _attempt in range(200):
        objs = []
        for k in range(n):
            r = SIZE_RADIUS[sizes[k]] * side
            travel = SPEED_RATE[speeds[k]] * side * frame.duration_s if moving[k] else 0.0
            ux, uy = _UNIT[dirs[k]]
            pos = []
            for extent, u in ((width, ux), (height, uy)):
                lo, hi = r + 1.0, extent - r - 1.0  # the centre's range that keeps the object inside
                if u > 0:
                    hi -= travel
                elif u < 0:
                    lo += travel
                if hi < lo:
                    raise ValueError(f"a {sizes[k]} {speeds[k]} object does not fit a {width}x{height} "
                                     f"image for {frame.duration_s} s")
                pos.append(float(rng.uniform(lo, hi)) / extent)
            objs.append(Obj(shapes[k], colours[k], sizes[k], dirs[k], speeds[k], pos[0], pos[1]))
        if _overlap_free(objs, frame):
            break
    else:  # crowded (tiny images): keep the objects that fit
        while len(objs) > 1 and not _overlap_free(objs, frame):
            objs.pop()
    return Scene(tuple(objs), width, height, duration_us, seed)


# --------------------------------------------------------------------------------------------
# rendering


@functools.lru_cache(maxsize=16)
def _background_cached(height: int, width: int) -> np.ndarray:
    lo, hi = BACKGROUND_RANGE
    fy = (np.arange(height) + 0.5) / height
    fx = (np.arange(width) + 0.5) / width
    ramp = (fy[:, None] + fx[None, :]) / 2.0  # 0 (top left) .. 1 (bottom right)
    cell = max(2, min(width, height) // 8)
    checker = ((np.arange(height)[:, None] // cell + np.arange(width)[None, :] // cell) % 2) * 2 - 1
    v = np.rint(lo + 4 + (hi - lo - 8) * ramp + 4 * checker)
    img = np.clip(v, lo, hi).astype(np.uint8)
    img.setflags(write=False)
    return img


def background(height: int = 64, width: int = 64) -> np.ndarray:
    """The fixed background texture, [H, W] uint8 grey levels in BACKGROUND_RANGE: a diagonal ramp
    (dark top left, lighter bottom right) with a faint checker (cells of side // 8)."""
    return _background_cached(int(height), int(width)).copy()


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of [..., 3] RGB (uint8 or float) as float64 grey levels 0..255, computed as
    (299 R + 587 G + 114 B) / 1000 so colours of equal luma give bit-identical values."""
    a = np.asarray(rgb)
    return (299 * a[..., 0].astype(np.float64) + 587 * a[..., 1].astype(np.float64)
            + 114 * a[..., 2].astype(np.float64)) / 1000.0


def _masks(scene: Scene, obj: Obj, t_s: np.ndarray) -> np.ndarray:
    """[T, H, W] bool: the pixels (by pixel centre) inside `obj` at each time in t_s (seconds)."""
    t_s = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
    cx, cy = obj.centre_px(scene, t_s)
    r = obj.radius_px(scene)
    dx = (np.arange(scene.width) + 0.5)[None, None, :] - cx[:, None, None]
    dy = (np.arange(scene.height) + 0.5)[None, :, None] - cy[:, None, None]
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if obj.shape == "square":
        h = 0.85 * r  # about the circle's area
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    # triangle, apex up: from cy - r to cy + 0.75 r, base half-width r
    top, bottom = -r, 0.75 * r
    return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= (dy - top) * (r / (bottom - top)))


def object_masks(scene: Scene, t_s) -> np.ndarray:
    """[n_objects, T, H, W] bool masks of every object at times t_s (seconds), without occlusion."""
    return np.stack([_masks(scene, o, t_s) for o in scene.objects])


def frame_times_s(scene: Scene, n_frames: int) -> np.ndarray:
    """The RGB camera's frame times: n_frames evenly from 0 to the clip's end (both included)."""
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    return np.linspace(0.0, scene.duration_s, n_frames) if n_frames > 1 else np.array([scene.duration_s])


def render_frames(scene: Scene, n_frames: int = 8, *, times_s=None) -> np.ndarray:
    """RGB frames [n, H, W, 3] uint8 at `times_s` (default: `frame_times_s(scene, n_frames)`),
    objects drawn in z-order (later objects on top)."""
    t = frame_times_s(scene, n_frames) if times_s is None else np.atleast_1d(np.asarray(times_s, float))
    bg = _background_cached(scene.height, scene.width)
    frames = np.repeat(np.repeat(bg[None, :, :, None], 3, axis=3), len(t), axis=0)
    for obj in scene.objects:
        frames[_masks(scene, obj, t)] = np.asarray(obj.rgb, dtype=np.uint8)
    return frames


def render_luminance(scene: Scene, times_s) -> np.ndarray:
    """Luminance images [T, H, W] float64 at times_s: exactly `luminance(render_frames(...))`, but
    rendered in luma directly (what the event camera integrates)."""
    t = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
    bg = _background_cached(scene.height, scene.width).astype(np.float64)
    out = np.repeat(bg[None], len(t), axis=0)
    for obj in scene.objects:
        out[_masks(scene, obj, t)] = luminance(np.asarray(obj.rgb))
    return out


# --------------------------------------------------------------------------------------------
# event camera


def simulate_events(scene: Scene, *, fps_internal: int = DEFAULT_FPS_INTERNAL,
                    contrast_threshold: float = DEFAULT_CONTRAST, duration_us: Optional[int] = None,
                    window_us: Optional[int] = DEFAULT_WINDOW_US, eps: float = DEFAULT_EPS,
                    noise_rate_hz: float = 0.0, noise_seed: Optional[int] = None) -> EventStream:
    """The event stream of the last `window_us` µs of the clip (None: the whole clip), events in
    [duration - window_us, duration) µs of clip time, sorted by t (stable: ties in pixel order).

    Idealised DVS: per pixel, log(luma + eps) against a reference; every crossing of
    reference +- k * contrast_threshold is one event (p = 1 brighter, 0 darker), its time linearly
    interpolated between the two internal frames (at fps_internal), the reference moving by one
    threshold per event. Noise (noise_rate_hz > 0): Poisson-many events per pixel-second inside
    the window, uniform in place and time, random polarity, from `noise_seed` (default: the
    scene's seed). x, y uint16; t int64 µs; p uint8; sensor_size (height, width).
    """
    duration = int(scene.duration_us if duration_us is None else duration_us)
    if duration <= 0:
        raise ValueError("duration_us must be positive")
    if window_us is not None and window_us <= 0:
        raise ValueError("window_us must be positive (or None for the whole clip)")
    if contrast_threshold <= 0 or fps_internal <= 0 or eps <= 0:
        raise ValueError("contrast_threshold, fps_internal and eps must be positive")
    start = 0 if window_us is None else max(0, duration - int(window_us))
    n_steps = max(1, int(round(duration * fps_internal / 1e6)))
    times_us = np.linspace(0.0, float(duration), n_steps + 1)
    h, w = scene.height, scene.width
    logi = np.log(render_luminance(scene, times_us / 1e6) + eps).reshape(n_steps + 1, h * w)
    c = float(contrast_threshold)

    ref = logi[0].copy()
    xs, ys, ts, ps = [], [], [], []
    for k in range(1, n_steps + 1):
        cur = logi[k]
        diff = cur - ref
        # (+1e-9: a change of exactly k thresholds, up to rounding, fires k events now rather than
        # leaving a residual of "almost C" that rounding could fire later, on an unchanged pixel)
        n = np.floor(np.abs(diff) / c + 1e-9).astype(np.int64)
        fired = np.flatnonzero(n)
        if fired.size == 0:
            continue
        sign = np.sign(diff[fired])
        counts = n[fired]
        if times_us[k] >= start:  # the step can hold events inside the window
            pix = np.repeat(fired, counts)
            first = np.cumsum(counts) - counts
            j = np.arange(counts.sum()) - np.repeat(first, counts) + 1  # 1..n per pixel
            s = np.repeat(sign, counts)
            level = ref[pix] + s * j * c
            prev = logi[k - 1][pix]
            step = cur[pix] - prev
            safe = np.where(step == 0, 1.0, step)
            frac = np.where(step == 0, 1.0, np.clip((level - prev) / safe, 0.0, 1.0))
            t = np.floor(times_us[k - 1] + frac * (times_us[k] - times_us[k - 1])).astype(np.int64)
            keep = (t >= start) & (t < duration)
            xs.append((pix[keep] % w).astype(np.uint16))
            ys.append((pix[keep] // w).astype(np.uint16))
            ts.append(t[keep])
            ps.append((s[keep] > 0).astype(np.uint8))
        ref[fired] += sign * counts * c

    if noise_rate_hz > 0:
        seed = noise_seed if noise_seed is not None else (scene.seed if scene.seed is not None else 0)
        rng = np.random.default_rng([int(seed), 0x0E7E])
        m = int(rng.poisson(noise_rate_hz * h * w * (duration - start) / 1e6))
        xs.append(rng.integers(0, w, m).astype(np.uint16))
        ys.append(rng.integers(0, h, m).astype(np.uint16))
        ts.append(rng.integers(start, duration, m).astype(np.int64))
        ps.append(rng.integers(0, 2, m).astype(np.uint8))

    if xs:
        x, y, t, p = (np.concatenate(a) for a in (xs, ys, ts, ps))
        order = np.argsort(t, kind="stable")
        x, y, t, p = x[order], y[order], t[order], p[order]
    else:
        x = y = np.zeros(0, np.uint16)
        t = np.zeros(0, np.int64)
        p = np.zeros(0, np.uint8)
    return EventStream(x, y, t, p, sensor_size=(h, w))


# --------------------------------------------------------------------------------------------
# questions and answers

QUESTIONS = (
    "What is moving?",
    "Describe the scene.",
    "What colour is the moving object?",
    "How many objects are there?",
    "Which way does the {shape} move?",
    "What colour is the {shape}?",
)

_NUMBER = {1: "one", 2: "two", 3: "three"}
_DIR_PHRASE = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
_ADVERB = {"fast": "quickly", "slow": "slowly"}
_REGIONS = (("the top left", "the top", "the top right"),
            ("the left side", "the centre", "the right side"),
            ("the bottom left", "the bottom", "the bottom right"))
_MIN_PROXY, _MAX_PROXY = 21, 34  # targets for the word count (tests check the real token count)


def questions_for(scene: Scene) -> list[str]:
    """Every question about `scene`: the fixed templates, and each {shape} template filled with
    each shape present, in QUESTIONS order."""
    out = []
    for q in QUESTIONS:
        if "{shape}" in q:
            out.extend(q.format(shape=o.shape) for o in scene.objects)
        else:
            out.append(q)
    return out


def region(obj: Obj, scene: Scene, t_s: Optional[float] = None) -> str:
    """Where the object's centre is (3x3 grid) at t_s (default: the end of the clip)."""
    cx, cy = obj.centre_px(scene, scene.duration_s if t_s is None else t_s)
    col = min(2, max(0, int(3 * float(cx) / scene.width)))
    row = min(2, max(0, int(3 * float(cy) / scene.height)))
    return _REGIONS[row][col]


def _np(o: Obj, *, size=True, article="the") -> str:
    return f"{article} {o.size} {o.colour} {o.shape}" if size else f"{article} {o.colour} {o.shape}"


def _pred(o: Obj) -> str:
    return "stays still" if not o.moving else f"moves {_DIR_PHRASE[o.direction]} {_ADVERB[o.speed]}"


def _clause(o: Obj, scene: Scene, *, size=True, where=True) -> str:
    s = f"{_np(o, size=size)} {_pred(o)}"
    return f"{s} near {region(o, scene)}" if where else s


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _proxy(text: str) -> int:
    """Word count: a tokenizer-free stand-in for the token count (the toy tokenizer keeps every
    world word, with its trailing punctuation, as one token)."""
    return len(text.split())


def _there_are(n: int, tail: str = "in the scene") -> str:
    return f"There is one object {tail}" if n == 1 else f"There are {_NUMBER[n]} objects {tail}"


def _pick(variants: list[str], pads: list[str]) -> str:
    """The first (most detailed) variant that fits _MAX_PROXY (else the shortest), then padding
    sentences while it is shorter than _MIN_PROXY."""
    fitting = [v for v in variants if _proxy(v) <= _MAX_PROXY]
    text = fitting[0] if fitting else min(variants, key=_proxy)
    for pad in pads:
        if _proxy(text) >= _MIN_PROXY:
            break
        text = f"{text} {pad}"
    return text


def _detail_levels():
    return [dict(size=True, where=True), dict(size=False, where=True), dict(size=True, where=False),
            dict(size=False, where=False)]


def _pads(scene: Scene) -> list[str]:
    n_moving = len(scene.moving)
    moving = ("Nothing in it moves." if n_moving == 0 else
              "Only one of them moves." if n_moving == 1 and len(scene.objects) > 1 else
              "It is the only object." if len(scene.objects) == 1 else
              f"{_cap(_NUMBER[n_moving])} of them move.")
    return [f"{_there_are(len(scene.objects))}.", moving, "The background is a dark grey gradient."]


def _answer_what_moves(scene: Scene) -> str:
    mov, still = scene.moving, scene.still
    variants = []
    for lv in _detail_levels():
        if mov:
            text = _cap(_join([_clause(o, scene, **lv) for o in mov])) + "."
            if still:
                text += " " + _cap(_join([_clause(o, scene, **lv) for o in still])) + "."
            else:
                text += " Nothing else in the scene is moving."
        else:
            text = "Nothing is moving in this scene: " + _join([_clause(o, scene, **lv) for o in still]) + "."
        variants.append(text)
    return _pick(variants, _pads(scene)[:1] + _pads(scene)[2:])


def _answer_describe(scene: Scene) -> str:
    variants = [f"{_there_are(len(scene.objects), 'on a dark grey background')}: "
                + _join([_clause(o, scene, **lv) for o in scene.objects]) + "."
                for lv in _detail_levels()]
    return _pick(variants, _pads(scene)[1:2] + ["The objects do not touch each other."])


def _answer_moving_colour(scene: Scene) -> str:
    mov, still = scene.moving, scene.still
    variants = []
    for lv in _detail_levels():
        if len(mov) == 1:
            o = mov[0]
            text = f"The moving object is {o.colour}: it is {_np(o, size=lv['size'])}, which {_pred(o)}"
            text += f" near {region(o, scene)}." if lv["where"] else "."
            if still:
                text += " " + _cap(_join([_clause(x, scene, **lv) for x in still])) + "."
        elif mov:
            text = (f"There are {_NUMBER[len(mov)]} moving objects: "
                    + _join([_clause(o, scene, **lv) for o in mov]) + ".")
            if still:
                text += " " + _cap(_join([_clause(x, scene, **lv) for x in still])) + "."
        else:
            text = ("Nothing is moving, so there is no moving object: "
                    + _join([_clause(o, scene, **lv) for o in still]) + ".")
        variants.append(text)
    return _pick(variants, _pads(scene))


def _answer_count(scene: Scene) -> str:
    n, mov = len(scene.objects), scene.moving
    if n == 1:
        head = "There is one object in the scene, and it is moving:" if mov else \
            "There is one object in the scene, and it is not moving:"
    else:
        k = len(mov)
        how = "none of them is moving" if k == 0 else f"{_NUMBER[k]} of them {'is' if k == 1 else 'are'} moving"
        head = f"There are {_NUMBER[n]} objects, and {how}:"
    order = list(mov) + list(scene.still)
    variants = [f"{head} " + _join([_clause(o, scene, **lv) for o in order]) + "." for lv in _detail_levels()]
    return _pick(variants, _pads(scene)[2:])


def _answer_which_way(scene: Scene, shape: str) -> str:
    o = scene.find(shape)
    if o is None:
        others = _join([_clause(x, scene, where=False) for x in scene.objects])
        return _pick([f"There is no {shape} in this scene, but {others}."], _pads(scene))
    if o.moving:
        text = (f"{_cap(_np(o))} {_pred(o)}: it starts near {region(o, scene, 0.0)} "
                f"and ends near {region(o, scene)} of the scene.")
    else:
        text = (f"{_cap(_np(o))} does not move at all: it stays still near {region(o, scene)} "
                f"for the whole clip.")
    return _pick([text], ["The others are not asked about." if len(scene.objects) > 1
                          else "It is the only object in the scene."])


def _answer_shape_colour(scene: Scene, shape: str) -> str:
    o = scene.find(shape)
    if o is None:
        others = _join([_clause(x, scene, where=False) for x in scene.objects])
        return _pick([f"There is no {shape} in this scene, but {others}."], _pads(scene))
    text = f"The {shape} is {o.colour}: it is {_np(o)}, which {_pred(o)} near {region(o, scene)} of the scene."
    return _pick([text], [_pads(scene)[0], "The background is a dark grey gradient."])


_SHAPE_Q = tuple((q, *q.split("{shape}")) for q in QUESTIONS if "{shape}" in q)  # (template, prefix, suffix)


def answer(scene: Scene, question: str) -> str:
    """The template answer to one of `QUESTIONS` (with {shape} filled) about `scene`."""
    q = question.strip()
    if q == QUESTIONS[0]:
        return _answer_what_moves(scene)
    if q == QUESTIONS[1]:
        return _answer_describe(scene)
    if q == QUESTIONS[2]:
        return _answer_moving_colour(scene)
    if q == QUESTIONS[3]:
        return _answer_count(scene)
    for template, prefix, suffix in _SHAPE_Q:
        if q.startswith(prefix) and q.endswith(suffix) and len(q) > len(prefix) + len(suffix):
            shape = q[len(prefix):len(q) - len(suffix)]
            if shape not in SHAPES:
                raise ValueError(f"unknown shape {shape!r} in question {question!r}")
            return (_answer_which_way if template == QUESTIONS[4] else _answer_shape_colour)(scene, shape)
    raise ValueError(f"not a template question: {question!r} (see phide.toy.world.QUESTIONS)")


# --------------------------------------------------------------------------------------------
# facts and scoring

Motion = tuple[str, Optional[str]]  # (direction, speed): ("left", "fast"), ("still", None)

_SPEED_WORDS = {"quickly": "fast", "fast": "fast", "quick": "fast", "slowly": "slow", "slow": "slow"}
_DIR_WORDS = {"left": "left", "right": "right", "up": "up", "down": "down", "still": "still"}
_SIZE_WORDS = set(SIZES)


def motion_facts(scene: Scene) -> dict[str, Motion]:
    """{shape: (direction, speed)} of every object; still objects: ("still", None)."""
    return {o.shape: (o.direction, o.speed) for o in scene.objects}


def colour_facts(scene: Scene) -> dict[str, str]:
    """{shape: colour} of every object."""
    return {o.shape: o.colour for o in scene.objects}


def _shape_word(w: str) -> Optional[str]:
    if w in SHAPES:
        return w
    if w.endswith("s") and w[:-1] in SHAPES:
        return w[:-1]
    return None


def extract_facts(text: str) -> tuple[dict[str, Motion], dict[str, set[str]]]:
    """Read "[size] colour shape ... motion" text back: ({shape: motion}, {shape: colours}).

    Colour: the colour word just before a shape word (a size word may sit between), or after
    "<shape> is". Motion: per mention of a shape, the first direction word (left, right, up, down,
    still) after it and before the next shape word, with the first speed word (quickly/fast,
    slowly/slow) in the same stretch; a shape's motion is that of its first mention that has
    one. Shapes mentioned without motion or colour are left out of the respective dict."""
    words = re.findall(r"[a-z]+", text.lower())
    motion: dict[str, Motion] = {}
    colours: dict[str, set[str]] = {}
    positions = [(i, _shape_word(w)) for i, w in enumerate(words) if _shape_word(w)]
    for k, (i, shape) in enumerate(positions):
        j = i - 1
        if j >= 0 and words[j] in _SIZE_WORDS:
            j -= 1
        if j >= 0 and words[j] in COLOURS:
            colours.setdefault(shape, set()).add(words[j])
        if i + 2 < len(words) and words[i + 1] == "is" and words[i + 2] in COLOURS:
            colours.setdefault(shape, set()).add(words[i + 2])
        end = positions[k + 1][0] if k + 1 < len(positions) else len(words)
        stretch = words[i + 1:end]
        direction = next((_DIR_WORDS[w] for w in stretch if w in _DIR_WORDS), None)
        if direction is None or shape in motion:
            continue
        speed = None
        if direction != "still":
            speed = next((_SPEED_WORDS[w] for w in stretch if w in _SPEED_WORDS), None)
        motion[shape] = (direction, speed)
    return motion, colours


def score_answer(scene: Scene, question: str, text: str, *, require_still: bool = False) -> dict[str, bool]:
    """Is `text` (a generated answer to `question` about `scene`) right about motion, and about
    colours? Facts are read with `extract_facts` from `text` and from the reference answer
    (`answer(scene, question)`).

    motion: every moving object the reference talks about has the same (direction, speed) in
    `text`, and every motion `text` states is true of the scene (a still object said to move, or a
    shape that is not there, is wrong). Leaving out a still object is no motion error (an event
    camera cannot see it) unless require_still=True.
    colour: every object the reference names has exactly its colour in `text`, and every colour
    `text` gives belongs to a shape of the scene that has it."""
    truth_m, truth_c = motion_facts(scene), colour_facts(scene)
    ref_m, ref_c = extract_facts(answer(scene, question))
    got_m, got_c = extract_facts(text)
    needed = {s: v for s, v in ref_m.items() if require_still or v[0] != "still"}
    motion_ok = (all(got_m.get(s) == v for s, v in needed.items())
                 and all(truth_m.get(s) == v for s, v in got_m.items()))
    colour_ok = (all(got_c.get(s) == {truth_c[s]} for s in ref_c)
                 and all(s in truth_c and c == {truth_c[s]} for s, c in got_c.items()))
    return {"motion": bool(motion_ok), "colour": bool(colour_ok)}


# --------------------------------------------------------------------------------------------
# datasets


class _Sensors:
    """Lazily rendered, cached sensor data of one scene (shared by its samples)."""

    def __init__(self, scene: Scene, n_frames: int, event_kwargs: dict):
        self.scene, self.n_frames, self.event_kwargs = scene, n_frames, event_kwargs
        self._frames = self._events = None

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            self._frames = render_frames(self.scene, self.n_frames)
        return self._frames

    @property
    def events(self) -> EventStream:
        if self._events is None:
            self._events = simulate_events(self.scene, **self.event_kwargs)
        return self._events


@dataclass(eq=False)
class Sample:
    """One (scene, question, answer) with the scene's RGB frames [n, H, W, 3] uint8 and event
    stream, both computed on first access and cached (samples of one scene share them)."""

    scene: Scene
    question: str
    answer: str
    _sensors: _Sensors = field(repr=False)

    @property
    def frames(self) -> np.ndarray:
        return self._sensors.frames

    @property
    def events(self) -> EventStream:
        return self._sensors.events


def scene_seed(seed: int, i: int) -> int:
    """The seed of the i-th scene of a dataset drawn with `seed` (so each scene is reproducible
    alone: sample_scene(scene_seed(seed, i)))."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1, dtype=np.uint32)[0])


def make_dataset(n: int, seed: int = 0, *, width: int = 64, height: int = 64, n_frames: int = 8,
                 questions_per_scene: Optional[int] = 1, noise_rate_hz: float = 0.1,
                 window_us: int = DEFAULT_WINDOW_US, fps_internal: int = DEFAULT_FPS_INTERNAL,
                 contrast_threshold: float = DEFAULT_CONTRAST) -> list[Sample]:
    """n scenes (scene i from `scene_seed(seed, i)`), each with `questions_per_scene` questions
    drawn without replacement from `questions_for(scene)` (None: all of them). Frames and events
    are computed lazily. The default noise (0.1 Hz per pixel: ~33 events in 80 ms at 64x64) gives
    all-still scenes an event stream EventGPT can render (it needs >= 5 events)."""
    ev = dict(fps_internal=fps_internal, contrast_threshold=contrast_threshold, window_us=window_us,
              noise_rate_hz=noise_rate_hz)
    out = []
    for i in range(n):
        s = scene_seed(seed, i)
        scene = sample_scene(s, width=width, height=height)
        sensors = _Sensors(scene, n_frames, ev)
        qs = questions_for(scene)
        if questions_per_scene is not None:
            rng = np.random.default_rng([s, 1])
            qs = [qs[j] for j in sorted(rng.choice(len(qs), min(questions_per_scene, len(qs)), replace=False))]
        out.extend(Sample(scene, q, answer(scene, q), sensors) for q in qs)
    return out


def corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Text for tokenizer training: for each of n scenes, every question followed by its answer."""
    out = []
    for i in range(n):
        scene = sample_scene(scene_seed(seed, i))
        out.extend(f"{q} {answer(scene, q)}" for q in questions_for(scene))
    return out

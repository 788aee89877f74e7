"""The toy world's scenes: objects, colours of equal luminance, motion, and scene sampling.

See `phide.toy.world` for the whole picture (sensors, questions, datasets).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union

import numpy as np

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
    # Canonical order (circle, square, triangle): answers list objects in scene order, and a
    # sampled order is invisible to both cameras, so it would make answers a coin flip.
    objs.sort(key=lambda o: SHAPES.index(o.shape))
    return Scene(tuple(objs), width, height, duration_us, seed)

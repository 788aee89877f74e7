"""A toy world seen by an RGB camera and by an event camera, with template questions and answers.

Scenes
    1-3 objects (distinct shapes, distinct colours; listed, and named in answers, in the fixed
    shape order circle, square, triangle) over a fixed dark-grey gradient with a faint
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

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from phide.io.events import EventStream
# Re-exported: this module is the world's front door (scenes, sensors, questions, datasets).
from phide.toy.qa import (QUESTIONS, Motion, answer, colour_facts, extract_facts, motion_facts,  # noqa: F401
                          questions_for, region, score_answer)
from phide.toy.scene import (BACKGROUND_RANGE, COLOURS, DEFAULT_CONTRAST, DEFAULT_DURATION_US,  # noqa: F401
                             DEFAULT_EPS, DEFAULT_FPS_INTERNAL, DEFAULT_WINDOW_US, DIRECTIONS, OBJECT_LUMA,
                             SHAPES, SIZE_RADIUS, SIZES, SPEED_RATE, SPEEDS, Obj, Scene, sample_scene)
from phide.toy.sensors import (background, frame_times_s, luminance, object_masks,  # noqa: F401
                               render_frames, render_luminance, simulate_events)

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

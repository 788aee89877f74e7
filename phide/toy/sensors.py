"""The toy world's two sensors: an RGB camera (`render_frames`) and an idealised event camera
(`simulate_events`). See `phide.toy.world` for the model and its numbers.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from phide.io.events import EventStream
from phide.toy.scene import (BACKGROUND_RANGE, DEFAULT_CONTRAST, DEFAULT_EPS, DEFAULT_FPS_INTERNAL,
                             DEFAULT_WINDOW_US, Obj, Scene)

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

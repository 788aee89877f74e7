"""phide.toy: the toy world (scenes, RGB frames, event-camera simulation, template Q&A, scoring) and
its tokenizer."""

import time

import numpy as np
import pytest

from phide.io.events import EVENTGPT_MAX_SPAN_US, EventStream, load_event_frames, render_event_frames
from phide.toy import world as W
from phide.toy.tokenizer import EVENTGPT_TEMPLATE, VIDEO_LLAVA_TEMPLATE, count_tokens, train_toy_tokenizer
from phide.toy.world import (COLOURS, QUESTIONS, SHAPES, Obj, Scene, answer, background, colour_facts,
                             extract_facts, luminance, make_dataset, motion_facts, questions_for, render_frames,
                             render_luminance, sample_scene, score_answer, simulate_events)

WINDOW = W.DEFAULT_WINDOW_US


@pytest.fixture(scope="module")
def toy_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("toy_tok")
    train_toy_tokenizer(out)
    return AutoTokenizer.from_pretrained(str(out))


def _moving_scenes(n, start=0):
    out, s = [], start
    while len(out) < n:
        sc = sample_scene(s)
        if sc.moving:
            out.append(sc)
        s += 1
    return out


def _all_questions(scene):
    """Every question about the scene, plus the {shape} ones about a shape that is not there."""
    qs = questions_for(scene)
    absent = [s for s in SHAPES if scene.find(s) is None]
    if absent:
        qs += [q.format(shape=absent[0]) for q in QUESTIONS if "{shape}" in q]
    return qs


# ------------------------------------------------------------------------------------------------
# scenes


def test_sample_scene_is_deterministic_by_seed():
    a, b = sample_scene(7), sample_scene(7)
    assert a == b and a.seed == 7
    assert sample_scene(8) != a
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    assert sample_scene(g1) == sample_scene(g2)
    assert np.array_equal(render_frames(a), render_frames(b))
    ea, eb = simulate_events(a), simulate_events(b)
    for f in ("x", "y", "t", "p"):
        assert np.array_equal(getattr(ea, f), getattr(eb, f))

    d1, d2 = make_dataset(6, seed=5), make_dataset(6, seed=5)
    assert [(s.scene, s.question, s.answer) for s in d1] == [(s.scene, s.question, s.answer) for s in d2]
    assert np.array_equal(d1[3].frames, d2[3].frames)
    assert np.array_equal(d1[3].events.t, d2[3].events.t)
    assert [s.scene for s in make_dataset(6, seed=6)] != [s.scene for s in d1]
    # each scene is reproducible alone from its seed
    assert sample_scene(d1[4].scene.seed) == d1[4].scene


def test_scene_statistics_and_geometry():
    scenes = [sample_scene(s) for s in range(400)]
    counts = [len(sc.objects) for sc in scenes]
    assert set(counts) == {1, 2, 3}
    for sc in scenes:
        assert len({o.shape for o in sc.objects}) == len(sc.objects)
        assert len({o.colour for o in sc.objects}) == len(sc.objects)
    with_motion = np.mean([bool(sc.moving) for sc in scenes])
    assert 0.85 < with_motion < 0.98  # most scenes move, a few are all still
    assert sum(len(sc.still) for sc in scenes) > 100  # still objects are common
    assert {o.direction for sc in scenes for o in sc.objects} == set(W.DIRECTIONS)
    assert {o.speed for sc in scenes for o in sc.objects} == {"slow", "fast", None}
    # objects stay inside the image and never overlap, over the whole clip
    for sc in scenes[:60]:
        m = W.object_masks(sc, np.linspace(0, sc.duration_s, 11))  # [n, T, H, W]
        assert m.any(axis=(2, 3)).all()
        border = m[..., 0, :].any() or m[..., -1, :].any() or m[..., :, 0].any() or m[..., :, -1].any()
        assert not border
        assert m.sum(axis=0).max() == 1


def test_obj_validation():
    with pytest.raises(ValueError):
        Obj("hexagon", "red", "small", "still", None, 0.5, 0.5)
    with pytest.raises(ValueError):
        Obj("circle", "red", "small", "left", None, 0.5, 0.5)  # moving needs a speed
    with pytest.raises(ValueError):
        Obj("circle", "red", "small", "still", "fast", 0.5, 0.5)


# ------------------------------------------------------------------------------------------------
# RGB camera


def test_frames_show_colours_and_motion():
    sc = Scene((Obj("square", "green", "large", "right", "fast", 0.25, 0.3),
                Obj("circle", "purple", "small", "still", None, 0.7, 0.75)), width=96, height=80)
    f = render_frames(sc)
    assert f.shape == (8, 80, 96, 3) and f.dtype == np.uint8
    for k, t in enumerate(W.frame_times_s(sc, 8)):
        for o in sc.objects:
            cx, cy = o.centre_px(sc, t)
            assert tuple(f[k, int(cy), int(cx)]) == COLOURS[o.colour]
    # the square moved right by 0.6 image sides (of min(H, W) = 80 px) over the clip
    cols = lambda img: np.flatnonzero((img == COLOURS["green"]).all(-1).any(0))  # noqa: E731
    assert cols(f[-1]).mean() - cols(f[0]).mean() == pytest.approx(0.6 * 80, abs=1.5)
    # background pixels are grey, in range
    bg = background(80, 96)
    corner = f[0, 0, 0]
    assert corner[0] == corner[1] == corner[2] == bg[0, 0]
    assert W.BACKGROUND_RANGE[0] <= bg.min() and bg.max() <= W.BACKGROUND_RANGE[1]
    # z-order: a later object is drawn over an earlier one
    sc2 = Scene((Obj("circle", "red", "large", "still", None, 0.5, 0.5),
                 Obj("square", "blue", "small", "still", None, 0.5, 0.5)))
    assert tuple(render_frames(sc2, 1)[0, 32, 32]) == COLOURS["blue"]


def test_palette_is_isoluminant_and_brighter_than_background():
    lum = {c: luminance(np.array(rgb)) for c, rgb in COLOURS.items()}
    assert len(set(lum.values())) == 1
    assert next(iter(lum.values())) == W.OBJECT_LUMA > 2 * W.BACKGROUND_RANGE[1]
    # the event camera's luminance images are exactly the RGB frames' luminance
    sc = sample_scene(11)
    t = np.linspace(0, 1, 5)
    assert np.array_equal(render_luminance(sc, t), luminance(render_frames(sc, times_s=t)))


# ------------------------------------------------------------------------------------------------
# event camera


def test_all_still_scene_gives_no_events_but_noise_when_asked():
    sc = Scene((Obj("circle", "red", "large", "still", None, 0.3, 0.3),
                Obj("triangle", "yellow", "small", "still", None, 0.7, 0.7)), seed=1)
    ev = simulate_events(sc)
    assert isinstance(ev, EventStream) and len(ev) == 0
    noisy = simulate_events(sc, noise_rate_hz=1.0)
    expected = 64 * 64 * WINDOW / 1e6  # ~328
    assert 0.7 * expected < len(noisy) < 1.3 * expected
    assert set(np.unique(noisy.p)) == {0, 1}
    assert noisy.t.min() >= 1_000_000 - WINDOW and noisy.t.max() < 1_000_000
    assert np.all(np.diff(noisy.t) >= 0)
    assert np.array_equal(simulate_events(sc, noise_rate_hz=1.0).x, noisy.x)  # seeded


def _band(mask, k=2):
    """Pixels within k px (Chebyshev) of the boundary of a [H, W] mask: dilate(mask) & ~erode(mask)."""
    p = np.pad(mask, k)
    h, w = mask.shape
    shifts = [p[k + dy:k + dy + h, k + dx:k + dx + w] for dy in range(-k, k + 1) for dx in range(-k, k + 1)]
    return np.logical_or.reduce(shifts) & ~np.logical_and.reduce(shifts)


def test_events_lie_at_moving_edges_only():
    fractions = []
    for sc in _moving_scenes(12):
        ev = simulate_events(sc)
        assert len(ev) > 20
        t = np.linspace((sc.duration_us - WINDOW - 4000) / 1e6, sc.duration_s, 30)
        masks = W.object_masks(sc, t)
        near = np.zeros((sc.height, sc.width), bool)
        for o, m in zip(sc.objects, masks):
            if o.moving:
                for mt in m:
                    near |= _band(mt)
        fractions.append(near[ev.y, ev.x].mean())
        # still objects fire nothing (their interior stays dark in the event image)
        for o, m in zip(sc.objects, masks):
            if not o.moving:
                inner = m[-1] & ~_band(m[-1]) & ~near
                assert not inner[ev.y, ev.x].any()
    assert min(fractions) > 0.9, fractions


@pytest.mark.parametrize("direction,axis", [("right", 0), ("left", 0), ("down", 1), ("up", 1)])
def test_polarity_follows_brightness(direction, axis):
    """A bright object on the dark background: its leading edge brightens (p = 1), its trailing
    edge darkens (p = 0)."""
    x0, y0 = {"right": (0.3, 0.5), "left": (0.7, 0.5), "down": (0.5, 0.3), "up": (0.5, 0.7)}[direction]
    sc = Scene((Obj("circle", "yellow", "large", direction, "fast", x0, y0),))
    ev = simulate_events(sc)
    assert len(ev) > 100
    cx, cy = sc.objects[0].centre_px(sc, ev.t / 1e6)
    pos = (ev.x + 0.5, ev.y + 0.5)[axis] - (cx, cy)[axis]
    ahead = pos > 0 if direction in ("right", "down") else pos < 0
    agree = np.mean(ahead == (ev.p == 1))
    assert agree > 0.95, agree
    assert 0.3 < ev.p.mean() < 0.7  # both edges fire


def test_events_are_colour_blind():
    sc = Scene((Obj("circle", "red", "large", "right", "fast", 0.3, 0.35),
                Obj("triangle", "blue", "small", "up", "slow", 0.7, 0.7),
                Obj("square", "green", "small", "still", None, 0.25, 0.75)), seed=3)
    swapped = sc.replace_object(0, colour="blue").replace_object(1, colour="yellow").replace_object(2, colour="red")
    a, b = simulate_events(sc), simulate_events(swapped)
    assert len(a) > 100
    for f in ("x", "y", "t", "p"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(render_frames(sc), render_frames(swapped))  # the RGB camera sees it
    # ... but shape is visible to the event camera
    c = simulate_events(sc.replace_object(0, shape="square").replace_object(2, shape="circle"))
    assert len(c) != len(a) or not np.array_equal(c.x, a.x)


def test_event_window_and_format():
    for sc in _moving_scenes(5, start=20):
        ev = simulate_events(sc)
        assert ev.x.dtype == np.uint16 and ev.y.dtype == np.uint16
        assert ev.t.dtype == np.int64 and ev.p.dtype == np.uint8
        assert ev.sensor_size == (sc.height, sc.width)
        assert np.all(np.diff(ev.t) >= 0)
        assert ev.t.min() >= sc.duration_us - WINDOW and ev.t.max() < sc.duration_us
        assert ev.t.max() - ev.t.min() < WINDOW < EVENTGPT_MAX_SPAN_US
        short = simulate_events(sc, window_us=30_000)
        assert short.t.min() >= sc.duration_us - 30_000
        # the window is the tail of the full stream, bit for bit
        full = simulate_events(sc, window_us=None)
        assert full.t.min() < sc.duration_us - 2 * WINDOW
        tail = full.t >= sc.duration_us - WINDOW
        for f in ("x", "y", "t", "p"):
            assert np.array_equal(getattr(full, f)[tail], getattr(ev, f))


@pytest.mark.parametrize("fps", [250, 400])
def test_event_times_interpolate_inside_the_changing_step(fps):
    sc = Scene((Obj("square", "orange", "large", "right", "fast", 0.3, 0.5),
                Obj("triangle", "purple", "small", "down", "slow", 0.75, 0.2)))
    ev = simulate_events(sc, fps_internal=fps)
    dt = 1e6 / fps
    # the internal step (t_k-1, t_k] holding each event: an event exactly at t_k (the pixel reaching
    # a level exactly, e.g. returning to the background it had) belongs to the step ending there
    step = np.ceil(ev.t / dt) - 1
    before = render_luminance(sc, step * dt / 1e6)
    after = render_luminance(sc, (step + 1) * dt / 1e6)
    i = np.arange(len(ev))
    changed = before[i, ev.y, ev.x] != after[i, ev.y, ev.x]
    assert changed.mean() > 0.99, changed.mean()  # each event lies in the step where its pixel changed
    brighter = after[i, ev.y, ev.x] > before[i, ev.y, ev.x]
    assert np.array_equal(brighter[changed], ev.p[changed] == 1)
    # a jump of n thresholds spreads its n events over the step (linear interpolation)
    frac = (ev.t - step * dt) / dt
    assert 0.35 < frac.mean() < 0.75, frac.mean()


def test_event_frames_render_for_eventgpt():
    sc = _moving_scenes(1, start=40)[0]
    ev = simulate_events(sc)
    frames = render_event_frames(ev, 5)
    assert len(frames) == 5
    for f in frames:
        assert f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3
        assert f.shape[0] <= sc.height and f.shape[1] <= sc.width
        assert (f != 255).any()
    again = load_event_frames(ev, 5, duration_us=EVENTGPT_MAX_SPAN_US)  # the stream already fits
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))


def test_simulation_speed():
    scenes = _moving_scenes(10, start=60)
    simulate_events(scenes[0])  # warm up
    t0 = time.perf_counter()
    for sc in scenes:
        simulate_events(sc)
        render_frames(sc)
    per_scene = (time.perf_counter() - t0) / len(scenes)
    print(f"toy world: {per_scene * 1e3:.1f} ms per scene (events + 8 frames)")
    assert per_scene < 1.0  # loose: ~20 ms expected, 0.2 s is the design bound


# ------------------------------------------------------------------------------------------------
# questions, answers, scoring


def test_answers_are_20_to_40_tokens(toy_tok):
    lengths = {}
    for s in range(50):
        sc = sample_scene(1000 + s)
        for q in _all_questions(sc):
            n = count_tokens(toy_tok, answer(sc, q))
            lengths.setdefault(q.split(" the ")[0], []).append(n)
            assert 20 <= n <= 40, (q, answer(sc, q), n)
    allv = [n for v in lengths.values() for n in v]
    print(f"answer tokens: min {min(allv)} median {np.median(allv)} max {max(allv)} over {len(allv)} answers")
    assert len(lengths) >= 5


def test_answers_depend_on_the_scene_and_state_its_facts():
    scenes = [sample_scene(2000 + s) for s in range(50)]
    for q in QUESTIONS[:4]:
        assert len({answer(sc, q) for sc in scenes}) > 40
    for sc in scenes:
        truth_m, truth_c = motion_facts(sc), colour_facts(sc)
        for q in _all_questions(sc):
            a = answer(sc, q)
            m, c = extract_facts(a)
            assert m and c, (q, a)  # every answer says something about motion and colour
            assert all(truth_m[s] == v for s, v in m.items()), (q, a)
            assert all(c_ == {truth_c[s]} for s, c_ in c.items()), (q, a)
        desc_m, desc_c = extract_facts(answer(sc, "Describe the scene."))
        assert desc_m == truth_m and {s: v.pop() for s, v in desc_c.items()} == truth_c


def test_answer_examples():
    sc = Scene((Obj("circle", "red", "small", "left", "fast", 0.8, 0.15),
                Obj("square", "blue", "large", "still", None, 0.3, 0.7)))
    a = answer(sc, "What is moving?")
    assert a.startswith("The small red circle moves to the left quickly near the top")
    assert "the large blue square stays still" in a.lower()
    assert answer(sc, "What colour is the moving object?").startswith("The moving object is red")
    assert answer(sc, "How many objects are there?").startswith("There are two objects, and one of them is moving")
    assert "moves to the left quickly" in answer(sc, "Which way does the circle move?")
    assert answer(sc, "What colour is the square?").startswith("The square is blue")
    assert answer(sc, "What colour is the triangle?").startswith("There is no triangle")
    with pytest.raises(ValueError):
        answer(sc, "What is the meaning of life?")


def test_score_answer_separates_motion_from_colour():
    sc = Scene((Obj("circle", "red", "small", "left", "fast", 0.8, 0.15),
                Obj("square", "blue", "large", "still", None, 0.3, 0.7),
                Obj("triangle", "green", "small", "up", "slow", 0.5, 0.8)))
    for q in _all_questions(sc):
        assert score_answer(sc, q, answer(sc, q)) == {"motion": True, "colour": True}, q
    q = "What is moving?"
    ref = answer(sc, q)
    # an event-based model: right about motion, wrong about colours
    wrong_colours = ref.replace("red", "purple").replace("blue", "orange")
    assert score_answer(sc, q, wrong_colours) == {"motion": True, "colour": False}
    # wrong direction / speed / a still object said to move
    assert score_answer(sc, q, ref.replace("to the left", "to the right")) == {"motion": False, "colour": True}
    assert score_answer(sc, q, ref.replace("quickly", "slowly", 1)) == {"motion": False, "colour": True}
    assert score_answer(sc, q, ref.replace("stays still", "moves down slowly")) == {"motion": False,
                                                                                   "colour": True}
    # leaving a moving object out, or inventing one
    short = "The small red circle moves to the left quickly near the top."
    assert score_answer(sc, q, short) == {"motion": False, "colour": False}
    # leaving a still object out is no motion error (events cannot show it), unless required
    no_still = "The small red circle moves to the left quickly and the small green triangle moves up slowly."
    assert score_answer(sc, q, no_still) == {"motion": True, "colour": False}
    assert score_answer(sc, q, no_still, require_still=True)["motion"] is False
    for qq in _all_questions(sc):
        assert score_answer(sc, qq, answer(sc, qq), require_still=True) == {"motion": True, "colour": True}
    sc1 = Scene(sc.objects[:1])
    ref1 = answer(sc1, q)
    assert score_answer(sc1, q, ref1)["motion"]
    assert score_answer(sc1, q, ref1 + " The blue square stays still.") == {"motion": False, "colour": False}
    assert score_answer(sc, q, "") == {"motion": False, "colour": False}
    # a {shape} question is judged on that shape only
    qc = "What colour is the square?"
    assert score_answer(sc, qc, "The square is blue: it is the large blue square, which stays still.") == \
        {"motion": True, "colour": True}
    assert score_answer(sc, qc, "The square is red: it is the large red square, which stays still.") == \
        {"motion": True, "colour": False}


# ------------------------------------------------------------------------------------------------
# datasets and the tokenizer


def test_make_dataset_is_lazy_and_complete():
    data = make_dataset(12, seed=1)
    assert len(data) == 12
    assert all(s._sensors._frames is None and s._sensors._events is None for s in data)
    s = data[0]
    assert s.answer == answer(s.scene, s.question)
    assert s.frames.shape == (8, 64, 64, 3)
    assert s.frames is s.frames  # cached
    assert data[1]._sensors._frames is None
    every = make_dataset(3, seed=1, questions_per_scene=None)
    assert [x.question for x in every[:len(questions_for(every[0].scene))]] == questions_for(every[0].scene)
    assert every[0].frames is every[1].frames  # one scene's samples share its sensors
    # with the default noise, even an all-still scene gives EventGPT enough events
    still = next(x for x in make_dataset(60, seed=2) if not x.scene.moving)
    assert len(still.events) >= 5 and len(render_event_frames(still.events, 5)) == 5
    lines = W.corpus(5, seed=0)
    assert all("?" in line or "." in line for line in lines) and len(lines) >= 5 * 4


def test_toy_tokenizer(toy_tok, tmp_path):
    from phide.models import eventgpt, video_llava

    assert EVENTGPT_TEMPLATE == eventgpt.PROMPT_TEMPLATE
    assert VIDEO_LLAVA_TEMPLATE == video_llava.PROMPT_TEMPLATE
    assert toy_tok.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    assert (toy_tok.unk_token_id, toy_tok.bos_token_id, toy_tok.eos_token_id) == (0, 1, 2)
    assert 300 < len(toy_tok) <= 512
    text = VIDEO_LLAVA_TEMPLATE.format(question="What is moving?")
    ids = toy_tok(text)["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1 and 0 not in ids
    assert toy_tok.decode(ids, skip_special_tokens=True) == text
    ev_ids = toy_tok(EVENTGPT_TEMPLATE.format(question="Describe the scene."))["input_ids"]
    toks = toy_tok.convert_ids_to_tokens(ev_ids)
    assert "<event>" in toks and "\n" in toks and 0 not in ev_ids
    # every word of the world is a single token
    for w in list(COLOURS) + list(SHAPES) + ["quickly", "slowly", "still", "left", "right", "moves"]:
        assert len(toy_tok(" " + w, add_special_tokens=False)["input_ids"]) == 1, w
    # deterministic training
    a = train_toy_tokenizer(tmp_path / "a", n_scenes=200)
    b = train_toy_tokenizer(tmp_path / "b", n_scenes=200)
    assert a.get_vocab() == b.get_vocab()

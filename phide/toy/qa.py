"""The toy world's template questions and answers, and the scoring of generated answers on motion
and on colour. See `phide.toy.world` for the conventions.
"""

from __future__ import annotations

import re
from typing import Optional

from phide.toy.scene import COLOURS, SHAPES, SIZES, Obj, Scene

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


def region_cell(obj: Obj, scene: Scene, t_s: Optional[float] = None) -> tuple[int, int]:
    """(row, col) of the 3x3 grid cell holding the object's centre at t_s (default: the clip's end)."""
    cx, cy = obj.centre_px(scene, scene.duration_s if t_s is None else t_s)
    col = min(2, max(0, int(3 * float(cx) / scene.width)))
    row = min(2, max(0, int(3 * float(cy) / scene.height)))
    return row, col


def region(obj: Obj, scene: Scene, t_s: Optional[float] = None) -> str:
    """Where the object's centre is (3x3 grid) at t_s (default: the end of the clip)."""
    row, col = region_cell(obj, scene, t_s)
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

"""Bad inputs users found: each ends as one `phide: error: ...` line and exit code 2, no traceback.

Config problems are named as config problems, before the tokenizer loads (AutoTokenizer reads
config.json too and used to report them as tokenizer errors, or they went unnoticed). Event
coordinates are bounded by the sensor, so a stray coordinate cannot make gigabyte event frames.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from phide.cli import main
from phide.errors import PhideError
from phide.io.events import load_event_frames, render_event_image

QUESTION = "What is moving?"
SIDE = 4096  # phide.io.events.MAX_SENSOR_SIDE, the bound the error messages state


def _quiet(fn, *a, **k):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **k)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A tiny text LLaMA, a tiny Video-LLaVA target and a tiny EventGPT draft (2 decoder layers
    each), 8 video frames, and events that drive the pair."""
    from PIL import Image

    from phide.models.tiny import write_tiny_llama
    from phide.models.tiny_eventgpt import write_tiny_clip, write_tiny_eventgpt
    from phide.models.tiny_video_llava import write_tiny_video_llava

    root = tmp_path_factory.mktemp("bad_input")
    _quiet(write_tiny_llama, root / "llama", seed=0, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    _quiet(write_tiny_video_llava, root / "video_llava", seed=3, layout="hub", image_size=42,
           tokenizer_dir=root / "llama")
    _quiet(write_tiny_clip, root / "clip", seed=4)
    _quiet(write_tiny_eventgpt, root / "eventgpt", clip_dir=root / "clip", tokenizer_dir=root / "video_llava",
           seed=5, add_ev_patch=True)
    rng = np.random.default_rng(0)
    frames = root / "frames"
    frames.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(frames / f"{i:06d}.png")
    return {"root": root, "llama": root / "llama", "video_llava": root / "video_llava",
            "eventgpt": root / "eventgpt", "frames": frames}


def _copy(ckpts, name: str, tmp_path: Path) -> Path:
    out = tmp_path / name
    shutil.copytree(ckpts[name], out)
    if name == "eventgpt":  # its mm_visual_tower is relative to the checkpoint
        shutil.copytree(ckpts["root"] / "clip", tmp_path / "clip")
    return out


def _edit_config(ckpt: Path, sub: str | None = None, drop=(), **fields) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    d = cfg[sub] if sub else cfg
    d.update(fields)
    for k in drop:
        d.pop(k, None)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _error(capsys, argv, *, only: bool = False) -> str:
    """Run the CLI; it must exit 2 with exactly one `phide: error:` line, the last on stderr (before
    it only progress lines; with only=True nothing at all), no traceback, nothing on stdout."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2, err
    assert out == "" and "Traceback" not in err, err
    assert lines and lines[-1].startswith("phide: error: "), err
    assert sum(ln.startswith("phide: error") for ln in lines) == 1, err
    assert all(ln.startswith("phide: ") for ln in lines), err
    if only:
        assert len(lines) == 1, err
    return lines[-1]


def _target_only(ckpt):
    return ["generate", "--target", ckpt, "--prompt", QUESTION, "--mode", "target-only", "--max-new-tokens", "2"]


# ------------------------------------------------------------------------------ 1. config.json not an object
@pytest.mark.parametrize("text, kind", [("[1, 2]", "a list"), ('"text"', "a string"), ("3", "a number")])
def test_config_json_not_an_object(capsys, tmp_path, text, kind):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(text)
    msg = _error(capsys, _target_only(d), only=True)
    assert msg == f"phide: error: {d / 'config.json'} must hold a JSON object, got {kind}"


# ------------------------------------------------------------------------------ 2. layer count vs weights
def _double_layers(ckpt: Path) -> None:
    """Rewrite a 2-layer checkpoint's weights to hold 4 decoder layers (layers 0, 1 copied to 2, 3)."""
    from safetensors.torch import load_file, save_file

    f = ckpt / "model.safetensors"
    state = load_file(str(f))
    for k, v in list(state.items()):
        for i in (0, 1):
            if f".layers.{i}." in k:
                state[k.replace(f".layers.{i}.", f".layers.{i + 2}.")] = v.clone()
    save_file(state, str(f), metadata={"format": "pt"})


def test_llama_weights_hold_more_layers_than_config(capsys, ckpts, tmp_path):
    d = _copy(ckpts, "llama", tmp_path)
    _double_layers(d)  # config says 2, the weights hold 4: layers 2, 3 used to be ignored silently
    msg = _error(capsys, _target_only(d))
    assert msg == (f"phide: error: {d / 'config.json'} says num_hidden_layers=2 but the weights hold 4 decoder "
                   "layers (layers.0-3)")


def test_llama_weights_hold_fewer_layers_than_config(capsys, ckpts, tmp_path):
    d = _copy(ckpts, "llama", tmp_path)
    _edit_config(d, num_hidden_layers=4)  # used to be "missing decoder weights: model.layers.2..."
    msg = _error(capsys, _target_only(d))
    assert msg == (f"phide: error: {d / 'config.json'} says num_hidden_layers=4 but the weights hold 2 decoder "
                   "layers (layers.0-1)")


@pytest.mark.parametrize("layers", [1, 3])
def test_multimodal_layer_count_contradicts_weights(capsys, ckpts, tmp_path, layers):
    """Both multimodal loaders go through the same check (their weights hold 2 decoder layers)."""
    vl = _copy(ckpts, "video_llava", tmp_path)
    _edit_config(vl, "text_config", num_hidden_layers=layers)
    msg = _error(capsys, _target_only(vl))
    assert msg == (f"phide: error: {vl / 'config.json'} text_config says num_hidden_layers={layers} but the "
                   "weights hold 2 decoder layers (layers.0-1)")

    eg = _copy(ckpts, "eventgpt", tmp_path)
    _edit_config(eg, num_hidden_layers=layers)
    msg = _error(capsys, ["generate", "--target", ckpts["video_llava"], "--draft", eg, "--prompt", QUESTION,
                          "--video", ckpts["frames"], "--events", tmp_path / "unused.npz"])
    assert msg == (f"phide: error: {eg / 'config.json'} says num_hidden_layers={layers} but the weights hold "
                   "2 decoder layers (layers.0-1)")


# ------------------------------------------------------------------------------ 3. head count, sizes
@pytest.mark.parametrize("name", ["llama", "eventgpt"])
def test_heads_do_not_divide_hidden_size(capsys, ckpts, tmp_path, name):
    d = _copy(ckpts, name, tmp_path)
    _edit_config(d, drop=("head_dim",), num_attention_heads=5, num_key_value_heads=5)
    msg = _error(capsys, _target_only(d), only=True)  # named before the tokenizer (or anything) loads
    assert msg == (f"phide: error: {d / 'config.json'}: num_attention_heads=5 does not divide hidden_size=64 "
                   "(and no head_dim is given)")
    assert "tokenizer" not in msg
    # An explicit head_dim may differ from hidden_size / heads (the weights' shapes then decide).
    from phide.models.llama import LlamaConfig

    cfg = LlamaConfig.from_dict({**json.loads((d / "config.json").read_text()), "head_dim": 16})
    assert (cfg.num_attention_heads, cfg.head_dim) == (5, 16)


@pytest.mark.parametrize("field, value", [("num_hidden_layers", 0), ("hidden_size", -64),
                                          ("intermediate_size", 2.5), ("vocab_size", "384")])
def test_sizes_must_be_positive_integers(capsys, ckpts, tmp_path, field, value):
    d = _copy(ckpts, "llama", tmp_path)
    _edit_config(d, **{field: value})
    msg = _error(capsys, _target_only(d), only=True)
    assert msg == f"phide: error: {d / 'config.json'}: {field} must be a positive integer, got {value!r}"


# ------------------------------------------------------------------------------ 4. event coordinates
def _events(n: int = 200, **fields) -> dict:
    ev = {"x": np.arange(n, dtype=np.int64) % 60, "y": np.arange(n, dtype=np.int64) % 40,
          "t": np.arange(n, dtype=np.int64), "p": np.arange(n) % 2}
    return {**ev, **fields}


def _with_last(a: np.ndarray, value: int) -> np.ndarray:
    a = a.copy()
    a[-1] = value
    return a


def test_event_coordinate_beyond_any_sensor(tmp_path):
    ev = _events()
    np.savez(tmp_path / "x.npz", **{**ev, "y": np.zeros(200, np.int64), "x": _with_last(ev["x"], 10**6)})
    with pytest.raises(PhideError) as exc:
        load_event_frames(tmp_path / "x.npz")
    assert str(exc.value) == ("events: x reaches 1000000, beyond the largest supported sensor side (4096 px); "
                              "pass events of a real sensor")
    np.savez(tmp_path / "y.npz", **{**ev, "y": _with_last(ev["y"], SIDE)})
    with pytest.raises(PhideError, match=r"events: y reaches 4096, beyond the largest supported sensor side"):
        load_event_frames(tmp_path / "y.npz")
    np.savez(tmp_path / "edge.npz", **{**ev, "x": _with_last(ev["x"], SIDE - 1)})
    assert load_event_frames(tmp_path / "edge.npz")[-1].shape[1] == SIDE  # the largest side is fine


def test_sensor_size_from_the_file_bounds_the_frames(tmp_path):
    ev = _events()
    np.savez(tmp_path / "in.npz", **ev, height=40, width=60)
    assert len(load_event_frames(tmp_path / "in.npz")) == 5
    np.savez(tmp_path / "out.npz", **{**ev, "x": _with_last(ev["x"], 60)}, height=40, width=60)
    with pytest.raises(PhideError, match=r"outside the sensor \(height=40, width=60\)"):
        load_event_frames(tmp_path / "out.npz")
    # A file that claims a giant sensor does not lift the bound (its events would fit inside it).
    np.savez(tmp_path / "giant.npz", **{**ev, "y": np.zeros(200, np.int64), "x": _with_last(ev["x"], 10**6 - 1)},
             height=1, width=10**6)
    with pytest.raises(PhideError, match=r"sensor size \(height=1, width=1000000\) is beyond the largest "
                                         r"supported sensor side \(4096 px\)"):
        load_event_frames(tmp_path / "giant.npz")


def test_event_coordinates_in_a_dsec_h5_are_bounded(tmp_path):
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("hdf5plugin")
    ev = _events()
    with h5py.File(tmp_path / "events.h5", "w") as f:  # DSEC layout; x is uint16 there
        for k, v in {**ev, "x": _with_last(ev["x"], 60_000).astype(np.uint16), "t": ev["t"].astype(np.uint32)}.items():
            f.create_dataset(f"events/{k}", data=v)
        f.create_dataset("t_offset", data=np.int64(0))
    with pytest.raises(PhideError, match=r"events: x reaches 60000, beyond the largest supported sensor side"):
        load_event_frames(tmp_path / "events.h5")


def test_negative_coordinates():
    ev = _events()
    with pytest.raises(PhideError, match="negative y coordinate -3"):
        load_event_frames({**ev, "y": _with_last(ev["y"], -3)})
    # Raw arrays straight to the renderer: -1 used to paint the last pixel of the frame.
    with pytest.raises(PhideError, match="negative x coordinate -1"):
        render_event_image(np.array([-1, 3]), np.array([0, 0]), np.array([1, 1]))


@pytest.mark.parametrize("mode", ["hide", "sequential"])
def test_cli_event_coordinate_beyond_any_sensor(capsys, ckpts, tmp_path, mode):
    """Through the EventGPT draft: one error line, not a silent draft fault or gigabyte frames."""
    ev = _events()
    np.savez(tmp_path / "bad.npz", **{**ev, "y": np.zeros(200, np.int64), "x": _with_last(ev["x"], 10**6)})
    msg = _error(capsys, ["generate", "--target", ckpts["video_llava"], "--draft", ckpts["eventgpt"],
                          "--prompt", QUESTION, "--video", ckpts["frames"], "--events", tmp_path / "bad.npz",
                          "--mode", mode, "--max-new-tokens", "2"])
    assert msg == ("phide: error: events: x reaches 1000000, beyond the largest supported sensor side (4096 px); "
                   "pass events of a real sensor")


# ------------------------------------------------------------------------------ tree_shape.json
@pytest.mark.parametrize("text, needle", [
    ("{not json", "not valid JSON"),
    ('{"topk": 4, "depht": 6}', "must be a JSON object of positive integers"),
    ('{"topk": 2.5}', "must be a JSON object of positive integers"),
    ('{"topk": 0}', "topk must be >= 1"),
])
def test_a_bad_tree_shape_file_is_one_error(capsys, ckpts, tmp_path, text, needle):
    ckpt = _copy(ckpts, "llama", tmp_path)
    (ckpt / "tree_shape.json").write_text(text)
    assert needle in _error(capsys, _target_only(ckpt), only=True)


# ------------------------------------------------------------------------------ bad event files, any plan
def _bad_event_files(tmp_path: Path) -> dict[str, Path]:
    """The event files a user might pass by mistake, each with the words its error must name."""
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("hdf5plugin")
    ev = _events()
    out = {}
    good_h5 = tmp_path / "good.h5"
    with h5py.File(good_h5, "w") as f:
        for k, v in ev.items():
            f.create_dataset(f"events/{k}", data=v)
    data = good_h5.read_bytes()
    (tmp_path / "truncated.h5").write_bytes(data[: len(data) // 2])
    out["truncated.h5"] = "not a readable HDF5 file"
    with h5py.File(tmp_path / "no_group.h5", "w") as f:
        f.create_dataset("other", data=np.zeros(3))
    out["no_group.h5"] = "not a DSEC events file"
    np.savez(tmp_path / "missing_keys.npz", x=ev["x"], y=ev["y"])
    out["missing_keys.npz"] = "missing key(s) t, p"
    np.savez(tmp_path / "nan_t.npz", **{**ev, "t": np.full(200, np.nan)})
    out["nan_t.npz"] = "t must be integers"
    np.save(tmp_path / "pickled.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    out["pickled.npy"] = "pickled"
    (tmp_path / "events.txt").write_text("0 1 2 1\n")
    out["events.txt"] = "unknown event file extension"
    np.savez(tmp_path / "empty.npz", **{k: v[:0] for k, v in ev.items()})
    out["empty.npz"] = "holds no events"
    np.savez(tmp_path / "far_x.npz", **{**ev, "y": np.zeros(200, np.int64), "x": _with_last(ev["x"], 10**6)})
    out["far_x.npz"] = "x reaches 1000000"
    with h5py.File(tmp_path / "far_x.h5", "w") as f:
        for k, v in {**ev, "x": _with_last(ev["x"], 60_000).astype(np.uint16)}.items():
            f.create_dataset(f"events/{k}", data=v)
    out["far_x.h5"] = "x reaches 60000"
    return {name: (tmp_path / name, needle) for name, needle in out.items()}


def test_every_bad_event_file_is_one_error_under_the_default_plan(capsys, ckpts, tmp_path):
    """With `--mode auto` (the default) and no calibration the plan is target-only, which never
    reads the events: each bad file is still one `phide: error:` line naming it, exit 2."""
    files = _bad_event_files(tmp_path)
    assert len(files) == 9
    for name, (path, needle) in files.items():
        msg = _error(capsys, ["generate", "--target", ckpts["video_llava"], "--draft", ckpts["eventgpt"],
                              "--prompt", QUESTION, "--video", ckpts["frames"], "--events", path,
                              "--max-new-tokens", "2"])
        assert needle in msg, (name, msg)

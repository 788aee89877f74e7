"""The toy pair (phide.toy.pair) trained on the toy world (phide.toy.train): losses go down, the
training inputs are exactly what the adapters' prepare() builds, the trained weights are written
back in the real formats (phide's loaders load them, with the trained values), and the engine gives
identical greedy tokens in hide / sequential / target-only on a toy sample."""

import contextlib
import io

import pytest
import torch

from phide.engine import Engine, Request
from phide.models.eventgpt import load_eventgpt
from phide.models.video_llava import load_video_llava
from phide.toy import make_dataset
from phide.toy import train as toy_train
from phide.toy.pair import SIZES, write_toy_pair

STEPS = 30


def _quiet(fn, *a, **k):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **k)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_pair")
    stats = _quiet(write_toy_pair, root, size="test", seed=0)
    samples = make_dataset(8, seed=0)
    kw = dict(steps=STEPS, lr=1e-2, batch=4, seed=0, log_every=0)
    before = {"target": _quiet(load_video_llava, root / "target"), "draft": _quiet(load_eventgpt, root / "draft")}
    lt = _quiet(toy_train.train_target, root, samples, **kw)
    ld = _quiet(toy_train.train_draft, root, samples, **kw)
    return {"root": root, "samples": samples, "stats": stats, "target_losses": lt, "draft_losses": ld,
            "before": before}


def test_pair_sizes():
    assert set(SIZES) >= {"test", "demo"}
    demo = SIZES["demo"]
    assert demo["target"]["text_layers"] == demo["draft"]["layers"]
    assert (demo["target"]["image_size"] // demo["target"]["patch_size"]) ** 2 + 1 == 50  # 400 visual tokens


def test_losses_decrease(trained):
    for name in ("target", "draft"):
        losses = trained[f"{name}_losses"]
        assert len(losses) == STEPS
        assert all(torch.isfinite(torch.tensor(losses)))
        first, last = losses[0], sum(losses[-5:]) / 5
        assert last < first - 1.0, f"{name}: loss {first:.3f} -> {last:.3f}"


def test_training_inputs_match_prepare(trained):
    """The training forward's prompt embeddings equal prepare()'s, for both sides."""
    s = trained["samples"][0]
    t = _quiet(load_video_llava, trained["root"] / "target")
    ex = toy_train.target_example(t, s)
    with torch.no_grad():
        emb, ids = toy_train._sequence(t.lm, ex, toy_train.target_features(t, ex["pixels"]), t.video_token_id)
    p = _quiet(t.prepare, Request(prompt=s.question, video=s.frames))
    n = len(p.ids)
    assert ids[:n] == p.ids and ids[n:] == ex["answer"] and ex["answer"][-1] == toy_train.EOS_ID
    torch.testing.assert_close(emb[:n], p.embeds[0], rtol=1e-5, atol=1e-5)

    d = _quiet(load_eventgpt, trained["root"] / "draft")
    ex = toy_train.draft_example(d, s)
    with torch.no_grad():
        emb, ids = toy_train._sequence(d.lm, ex, toy_train.draft_features(d, ex["pixels"]), d.placeholder_id())
    p = _quiet(d.prepare, Request(prompt=s.question, events=s.events))
    n = len(p.ids)
    assert ids[:n] == p.ids and ids[n:] == ex["answer"]
    torch.testing.assert_close(emb[:n], p.embeds[0], rtol=1e-5, atol=1e-5)


def test_trained_weights_written_back(trained):
    """Reloaded checkpoints hold the trained weights: their loss on the training set is far below the
    random initial weights' loss (a missed write-back keeps it at the initial value)."""
    root, samples = trained["root"], trained["samples"]
    after = {"target": _quiet(load_video_llava, root / "target"), "draft": _quiet(load_eventgpt, root / "draft")}
    for name, example, feats, ph in (
            ("target", toy_train.target_example, toy_train.target_features, lambda a: a.video_token_id),
            ("draft", toy_train.draft_example, toy_train.draft_features, lambda a: a.placeholder_id())):
        losses = {}
        for when, a in (("before", trained["before"][name]), ("after", after[name])):
            with torch.no_grad():
                seqs = []
                for s in samples:
                    ex = example(a, s)
                    emb, ids = toy_train._sequence(a.lm, ex, feats(a, ex["pixels"]), ph(a))
                    seqs.append((emb, ids, len(ex["answer"])))
                losses[when] = float(toy_train.batch_loss(a.lm, seqs))
        assert losses["after"] < losses["before"] - 1.0, (name, losses)
    # the CLIP tower was trained and written back into clip/ (the draft checkpoint holds none)
    w0 = trained["before"]["draft"].tower.embeddings.patch_embedding.weight
    w1 = after["draft"].tower.embeddings.patch_embedding.weight
    assert not torch.equal(w0, w1)


def test_engine_modes_agree(trained):
    root = trained["root"]
    target = _quiet(load_video_llava, root / "target")
    draft = _quiet(load_eventgpt, root / "draft")
    engine = Engine(target, draft)
    s = trained["samples"][1]
    out = {}
    for mode in ("target-only", "sequential", "hide"):
        req = Request(prompt=s.question, video=s.frames, events=s.events, max_new_tokens=12)
        out[mode] = _quiet(engine.generate, req, mode).token_ids
    assert len(out["target-only"]) > 0
    assert out["sequential"] == out["target-only"]
    assert out["hide"] == out["target-only"]

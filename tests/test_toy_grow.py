"""phide.toy.grow: a trained decoder grown to more layers computes exactly the same function
(zeroed residual writers), in the real checkpoint formats, for the target and the draft."""

import contextlib
import io
import json
import shutil

import pytest
import torch

from phide.models.eventgpt import load_eventgpt
from phide.models.video_llava import load_video_llava
from phide.toy.grow import grow_decoder, grown_order
from phide.toy.pair import write_toy_pair


def _quiet(fn, *a, **k):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **k)


def test_grown_order():
    assert grown_order(2, 5) == [0, 0, 1, 1, 1]
    assert grown_order(4, 32)[::8] == [0, 1, 2, 3]
    assert grown_order(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError):
        grown_order(4, 3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("grow_pair")
    _quiet(write_toy_pair, root, size="test", seed=3)
    return root


def _final_hidden(lm, ids):
    from phide.toy.train import causal_hidden

    with torch.no_grad():
        return causal_hidden(lm, lm.embed_tokens(ids))


@pytest.mark.parametrize("part,loader", [("target", load_video_llava), ("draft", load_eventgpt)])
def test_growth_preserves_the_function(pair, tmp_path, part, loader):
    src = tmp_path / "pair"
    shutil.copytree(pair, src)
    model = _quiet(loader, src / part)
    lm = model.lm
    # Random-init weights: a wrong copy or a missed zero changes the hidden states.
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, lm.cfg.vocab_size, (2, 9), generator=gen)
    before = _final_hidden(lm, ids)
    old = grow_decoder(src / part, 5)
    assert old == 2
    grown = _quiet(loader, src / part).lm
    assert grown.cfg.num_hidden_layers == 5
    cfg = json.loads((src / part / "config.json").read_text())
    assert cfg.get("text_config", cfg)["num_hidden_layers"] == 5
    after = _final_hidden(grown, ids)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # The copies are identities only through their zeroed output projections.
    assert grown.layers[1].self_attn.o_proj.weight.abs().sum() == 0
    assert grown.layers[1].mlp.down_proj.weight.abs().sum() == 0
    assert torch.equal(grown.layers[1].self_attn.q_proj.weight, lm.layers[0].self_attn.q_proj.weight)
    assert torch.equal(grown.layers[2].mlp.down_proj.weight, lm.layers[1].mlp.down_proj.weight)


def test_vision_tower_layers_untouched(pair, tmp_path):
    from safetensors.torch import load_file

    src = tmp_path / "pair"
    shutil.copytree(pair, src)
    before = load_file(str(next((src / "target").glob("*.safetensors"))))
    grow_decoder(src / "target", 4)
    after = load_file(str(next((src / "target").glob("*.safetensors"))))
    tower = {k for k in before if "tower" in k}
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)
    assert not any("tower" in k and k not in before for k in after)

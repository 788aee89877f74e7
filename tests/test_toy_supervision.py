"""The renderer-derived training signals of the toy pair: patch labels, scene facts, and the
attention supervision's recomputed attention (phide.toy.supervision, phide.toy.look)."""

import numpy as np
import torch

from phide.models.llama import LlamaConfig, LlamaModel
from phide.toy.look import attention_rows, capture_attention_inputs, look_loss
from phide.toy.scene import SHAPES, Obj, Scene
from phide.toy.sensors import frame_times_s
from phide.toy.supervision import (SCENE_CLASSES, colour_class, motion_class, patch_coverage, patch_owners,
                                   scene_labels)


def _scene():
    return Scene((Obj("circle", "red", "small", "right", "fast", 0.2, 0.2),
                  Obj("triangle", "blue", "large", "still", None, 0.7, 0.75)), 64, 64)


def test_scene_labels_per_shape_slot():
    s = _scene()
    lab = scene_labels(s)
    assert set(lab) == set(SCENE_CLASSES)
    c, q, t = SHAPES.index("circle"), SHAPES.index("square"), SHAPES.index("triangle")
    assert lab["colour"][c] == colour_class(s.objects[0]) and lab["colour"][t] == colour_class(s.objects[1])
    assert lab["colour"][q] == lab["size"][q] == lab["motion"][q] == lab["region"][q] == 0  # no square
    assert lab["size"][c] == 1 and lab["size"][t] == 2
    assert lab["motion"][c] == motion_class(s.objects[0]) and lab["motion"][t] == 1
    # circle ends at x = 0.2 + 0.6 = 0.8 (right column), y = 0.2 (top row); triangle bottom-centre-ish
    assert lab["region"][c] == 1 + 0 * 3 + 2
    assert lab["region"][t] == 1 + 2 * 3 + 2
    assert all(v.max() < SCENE_CLASSES[k] for k, v in lab.items())


def test_coverage_sums_to_one_and_small_objects_own_patches():
    s = Scene((Obj("circle", "red", "small", "still", None, 0.5, 0.5),), 64, 64)
    cov = patch_coverage(s, frame_times_s(s, 2), 7)
    np.testing.assert_allclose(cov.sum(-1), 1.0)
    # a small circle centred on a patch corner covers < half of each of its cells, yet owns them
    s2 = Scene((Obj("circle", "red", "small", "still", None, 4 * 64 / 7 / 64, 4 * 64 / 7 / 64),), 64, 64)
    cov2 = patch_coverage(s2, [0.0], 7)[0, :, 1]
    assert cov2.max() < 0.5
    owners = patch_owners(s2, [0.0], 7)[0]
    assert set(np.nonzero(owners)[0]) == set(np.nonzero(cov2 >= 0.25)[0]) and owners.max() == 1


def _tiny_lm():
    cfg = LlamaConfig.from_dict(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=64, vocab_size=50))
    torch.manual_seed(0)
    return LlamaModel(cfg).eval()


def test_attention_rows_match_the_layer():
    """Recomputed probabilities times the layer's values reproduce what the layer attended to."""
    from phide.toy.train import causal_hidden

    lm = _tiny_lm()
    attn = lm.layers[1].self_attn
    outs = {}
    h = attn.o_proj.register_forward_hook(lambda m, a, o: outs.__setitem__("pre_o", a[0]))
    embeds = torch.randn(2, 11, 32)
    with torch.no_grad(), capture_attention_inputs(lm, (1,)) as seen:
        causal_hidden(lm, embeds)
    h.remove()
    x, cos, sin = seen[1]
    for b in range(2):
        probs = attention_rows(attn, x[b], cos[b], sin[b], slice(4, 11), 11)   # [Hq, 7, 11]
        assert torch.allclose(probs.sum(-1), torch.ones(4, 7))
        assert torch.all(probs[:, 0, 5:] == 0)  # causal: row 4 sees keys 0..4
        v = attn.v_proj(x[b]).view(11, attn.hkv, attn.d).transpose(0, 1).repeat_interleave(2, dim=0)
        mixed = (probs @ v).transpose(0, 1).reshape(7, -1)
        torch.testing.assert_close(mixed, outs["pre_o"][b, 4:11], rtol=1e-4, atol=1e-5)


def test_look_loss():
    probs = torch.zeros(4, 3, 10)
    probs[0, :, 2] = 1.0                      # head 0 looks only at key 2
    probs[1, :, :] = 0.1                      # head 1 uniform
    loss = look_loss(probs, {0: torch.tensor([2]), 1: torch.tensor([0, 1, 2, 3, 4])})
    torch.testing.assert_close(loss, torch.tensor((0.0 - np.log(0.5)) / 2, dtype=torch.float32))
    assert look_loss(probs, {}) == 0

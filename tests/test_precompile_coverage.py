"""Every Triton kernel variant a request launches was compiled when the engine was built.

Triton compiles a kernel again for every new argument specialisation, 16-byte pointer alignment
included, so a verify or a draft step whose uploaded views start at another alignment than the
precompiled variants' inputs would JIT-compile inside a request (seconds on a cold cache). These
tests record the compile key (`precompile.compile_key`: Triton's own binder, the sm_90a backend)
of every launch the engine makes from its real packed uploads, interpreted on the CPU, and check
each against the keys of the variants the engine prepared at construction (`Engine.kernels`).
"""

import dataclasses

import pytest
import torch

from kernel_marks import needs_triton  # first: sets TRITON_INTERPRET
from ops_choice import use_ops  # noqa: E402

pytestmark = needs_triton


def _target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)


class _Recorder:
    """Wraps Launch.__call__: keys every launch (and runs it while `run` is True)."""

    def __init__(self, monkeypatch, run=True):
        from phide.triton_kernels import launch as launch_mod
        from phide.triton_kernels.precompile import compile_key

        self.keys: dict[str, str] = {}
        original = launch_mod.Launch.__call__
        target = _target()

        def record(launch):
            self.keys.setdefault(compile_key(launch, target), f"{launch.name} {self.where}")
            if self.run:
                original(launch)

        self.where, self.run = "", run
        monkeypatch.setattr(launch_mod.Launch, "__call__", record)


def _precompiled_keys(variants) -> set[str]:
    from phide.triton_kernels.precompile import compile_key

    target = _target()
    return {compile_key(launch, target) for v in variants for launch in v.launches("meta")}


def _models(dtype, head_dim, *, draft_vocab=300, layers=2):
    from phide.models.llama import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=1024,
                      eos_token_id=[])
    target = LlamaModel(cfg).to(dtype).eval()
    draft = LlamaModel(dataclasses.replace(cfg, vocab_size=draft_vocab)).to(dtype).eval()
    return target, draft


CASES = [(dtype, d) for dtype in (torch.bfloat16, torch.float16) for d in (64, 80, 128)]


@pytest.mark.parametrize("dtype,head_dim", CASES, ids=[f"{str(t)[6:]}-D{d}" for t, d in CASES])
def test_every_verify_and_draft_step_launch_was_precompiled(dtype, head_dim, monkeypatch):
    """Verifies of every tree size 1..64 (chains and bushy trees, over committed prefixes of every
    length mod 16) and draft steps of each width (1..topk rows over caches of every length mod 16),
    built by the runners from their real packed uploads, launch only precompiled kernels."""
    from phide.engine import Engine
    from phide.speculation.runners import DraftRunner, TargetRunner
    from phide.speculation.tree import Tree

    use_ops(monkeypatch, "triton")
    target, draft = _models(dtype, head_dim)
    engine = Engine(target, draft, eos_token_ids=[])
    want = _precompiled_keys(engine.kernels)
    assert want, "the engine prepared no kernels under PHIDE_OPS=triton"

    # Verifies: launches recorded, not run (outputs unread; the walk's indices stay in range).
    rec = _Recorder(monkeypatch, run=False)
    for prefix in range(3, 19):
        runner = TargetRunner(target, max_len=prefix + 80)
        runner.prefill(list(range(1, prefix)))
        n = 1 + (prefix * 7) % 64 if prefix > 3 else 64
        for size in sorted({1, 2, 5, 6, n, 64}):
            parents = [-1] + [(i - 1) // (1 + prefix % 3) for i in range(1, size)]  # chains to bushy trees
            tree = Tree([7 + i % 5 for i in range(size)], parents)
            rec.where = f"verify N={size} prefix={prefix - 1}"
            saved = runner.length
            runner.verify(tree, 0.0, 0, 0)
            runner.length = saved  # the next tree goes over the same prefix
    missing = {k: v for k, v in rec.keys.items() if k not in want}
    assert not missing, f"launched but not precompiled: {sorted(missing.values())}"

    # Draft steps: run interpreted (the grower reads the top-k back).
    rec.keys, rec.run = {}, True
    for prompt in range(4, 20):
        for topk in sorted({engine.spec.topk, 1}):  # 1: the chains a cross-vocabulary draft grows
            runner = DraftRunner(draft, max_len=128, vocab_limit=engine.shared_vocab)
            runner.prefill(list(range(1, prompt)), last_token=5)
            rec.where = f"draft step topk={topk} prompt={prompt}"
            runner.grow(budget=12, topk=topk, max_depth=3, max_expansions=topk * 3)
    missing = {k: v for k, v in rec.keys.items() if k not in want}
    assert not missing, f"launched but not precompiled: {sorted(missing.values())}"


def test_every_launch_of_every_schedule_was_precompiled(monkeypatch):
    """Whole requests (target-only, sequential, hide, head-only with an EAGLE-3 head whose logits
    cover the target's vocabulary, the draft's static-shape step), interpreted: every launch's
    compile key is one the engine prepared when it was built."""
    from phide.engine import Engine, Request, SpecConfig
    from phide.models.eagle3 import Eagle3Head

    use_ops(monkeypatch, "triton")
    target, draft = _models(torch.bfloat16, 80, draft_vocab=300)  # 300: not a multiple of 16, the target's 320 is
    head = Eagle3Head(target.cfg, capture=(0, 1), draft_vocab=200).to(torch.bfloat16).eval()
    want = None
    for draft_graph in (False, True):
        engine = Engine(target, draft, eos_token_ids=[], head=head,
                        spec=SpecConfig(topk=3, depth=3, budget=10, window_depth=4, window_budget=12,
                                        draft_graph=draft_graph))
        want = _precompiled_keys(engine.kernels)
        rec = _Recorder(monkeypatch)
        for mode in ("target-only", "sequential", "hide", "head-only"):
            for n in (5, 13):  # prompts of two lengths mod 16 (the verify test above sweeps them all)
                rec.where = f"{mode} prompt={n} draft_graph={draft_graph}"
                res = engine.generate(Request(prompt_ids=list(range(1, n + 1)), max_new_tokens=6), mode)
                assert res.stats["faults"] == 0, res.stats
        monkeypatch.undo()
        use_ops(monkeypatch, "triton")
        assert {v.split()[0] for v in rec.keys.values()} >= {"_tree_topk_kernel", "_kv_commit_kernel",
                                                            "_gumbel_argmax_kernel", "_prefix_partial_kernel"}
        missing = {k: v for k, v in rec.keys.items() if k not in want}
        assert not missing, f"launched but not precompiled: {sorted(missing.values())}"

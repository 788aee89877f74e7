"""The compiled extension phide._C against its torch twin (phide/ops/reference/accept.py).

The C++ greedy walk must match the twin exactly: same accepted nodes, same tokens, same lengths,
on random trees that hit every rule (padding, unreachable nodes, duplicate and invalid sibling
tokens, target choices that match a child or none).
CI always builds the extension, so a missing one fails here instead of skipping.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from phide import ops  # noqa: E402
from phide._ext import load_extension  # noqa: E402
from phide.ops.reference.accept import accept_path_torch  # noqa: E402
from ops_choice import use_ops  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ext():
    assert load_extension(), (
        "phide._C is not built or failed to load: run `pip install --no-build-isolation -e .`"
    )
    from phide import _C

    return _C


# ----------------------------------------------------------------------------- random trees


def random_parents(rng: random.Random, N: int) -> list[int]:
    """Topological parents; ~15% padding (-1), some nodes hang under padding (unreachable)."""
    parents = [-1]
    for i in range(1, N):
        if rng.random() < 0.15:
            parents.append(-1)
        elif rng.random() < 0.5:
            parents.append(rng.randrange(max(0, i - 3), i))  # deep chains
        else:
            parents.append(rng.randrange(i))  # bushy levels
    return parents


def random_tokens(rng: random.Random, N: int, V: int) -> list[int]:
    """Node tokens: a small pool (duplicate siblings), random ids, invalid ids."""
    pool = [rng.randrange(V) for _ in range(3)]
    tokens = []
    for _ in range(N):
        r = rng.random()
        if r < 0.35:
            tokens.append(rng.choice(pool))
        elif r < 0.9:
            tokens.append(rng.randrange(V))
        else:
            tokens.append(rng.choice([-1, -7, V, V + 3]))
    return tokens


def children(parents: list[int], i: int) -> list[int]:
    return [c for c in range(i + 1, len(parents)) if parents[c] == i]


def random_choice_row(rng: random.Random, parents, tokens, V: int) -> list[int]:
    """Greedy target choices that often match a child (deep accepts), sometimes not."""
    choice = []
    for i in range(len(parents)):
        kids = children(parents, i)
        if kids and rng.random() < 0.75:
            choice.append(tokens[rng.choice(kids)])
        else:
            choice.append(rng.randrange(V))
    return choice


def random_batch(rng, B: int, N: int, V: int):
    tokens, parents, choice = [], [], []
    for _ in range(B):
        par = random_parents(rng, N)
        tok = random_tokens(rng, N, V)
        parents.append(par)
        tokens.append(tok)
        choice.append(random_choice_row(rng, par, tok, V))
    return (
        torch.tensor(tokens, dtype=torch.int64),
        torch.tensor(parents, dtype=torch.int64),
        torch.tensor(choice, dtype=torch.int64),
    )


def assert_same(got, want, context: str) -> None:
    names = ("accept_nodes", "out_tokens", "accept_len")
    for name, g, w in zip(names, got, want):
        assert g.dtype == w.dtype == torch.int64, f"{context}: {name} dtype {g.dtype} vs {w.dtype}"
        assert torch.equal(g, w), f"{context}: {name} differs\n  cpp:  {g.tolist()}\n  twin: {w.tolist()}"


CASES = [(1, 1000, 150), (5, 1000, 40), (1, 7, 150), (5, 7, 40)]  # (B, V, number of batches)


@pytest.mark.parametrize("B,V,n_batches", CASES)
def test_greedy_matches_twin(B, V, n_batches):
    rng = random.Random(1000 + B * V)
    depths = []
    for k in range(n_batches):
        N = rng.choice([1, 2, 5, 13, 16, 21])
        tokens, parents, choice = random_batch(rng, B, N, V)
        got = torch.ops.phide.accept_path(tokens, parents, choice)
        want = accept_path_torch(tokens, parents, choice)
        assert_same(got, want, f"greedy B={B} N={N} V={V} batch {k}")
        depths += got[2].tolist()
    print(f"greedy B={B} V={V} accept_len histogram:", torch.bincount(torch.tensor(depths)).tolist())
    assert max(depths) >= 3, "random trees never accepted deeply: the test lost its coverage"


# ----------------------------------------------------------------------------- opcheck, dispatch


def _small_inputs(B=3, N=9, V=11):
    return random_batch(random.Random(5), B, N, V)


def test_opcheck_greedy():
    tokens, parents, choice = _small_inputs()
    torch.library.opcheck(torch.ops.phide.accept_path.default, (tokens, parents, choice))


def test_torch_compile_fullgraph():
    """Dispatcher op + fake: no graph break under torch.compile."""
    tokens, parents, choice = _small_inputs()

    def step(tokens, parents, choice):
        return torch.ops.phide.accept_path(tokens, parents, choice)[2] + 1

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    args = (tokens, parents, choice)
    assert torch.equal(compiled(*args), step(*args))


def test_ops_backends_agree(monkeypatch):
    tokens, parents, choice = _small_inputs(B=6, N=16, V=50)
    results = {}
    for backend in ("torch", "cpp"):
        use_ops(monkeypatch, backend)
        results[backend] = ops.accept_path(tokens, parents, choice)
    assert_same(results["cpp"], results["torch"], "phide.ops greedy")


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises():
    tokens, parents, choice = _small_inputs()
    greedy = torch.ops.phide.accept_path
    with pytest.raises(RuntimeError, match="tokens must be Long"):
        greedy(tokens.int(), parents, choice)
    with pytest.raises(RuntimeError, match=r"parents must be \[B, N\]"):
        greedy(tokens, parents[:, :-1].contiguous(), choice)
    with pytest.raises(RuntimeError, match="target_choice must have 2 dims"):
        greedy(tokens, parents, choice[0])
    with pytest.raises(RuntimeError, match="tokens must be contiguous"):
        greedy(tokens.t(), parents.t(), choice.t())
    with pytest.raises(RuntimeError, match="N >= 1"):
        greedy(tokens[:, :0], parents[:, :0], choice[:, :0])


def test_unsorted_tree_is_rejected_like_the_twin():
    tokens = torch.tensor([[1, 2, 3]])
    parents = torch.tensor([[-1, 2, 0]])  # parent after child
    choice = torch.tensor([[2, 3, 3]])
    with pytest.raises(RuntimeError, match="not topologically sorted"):  # an asynchronous assert
        accept_path_torch(tokens, parents, choice)
    with pytest.raises(ValueError, match="not topologically sorted"):
        torch.ops.phide.accept_path(tokens, parents, choice)


# ----------------------------------------------------------------------------- CUDA (GPU machines)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_twin():
    if not torch._C._dispatch_has_kernel_for_dispatch_key("phide::accept_path", "CUDA"):
        pytest.skip("phide._C was built without CUDA (rebuild with PHIDE_BUILD_CUDA=1)")
    rng = random.Random(3)
    for B, V in ((1, 1000), (5, 7), (37, 1000), (130, 7)):  # 130 > one block of 128 threads
        for N in (1, 5, 16, 21):
            tokens, parents, choice = random_batch(rng, B, N, V)
            got = torch.ops.phide.accept_path(tokens.cuda(), parents.cuda(), choice.cuda())
            want = accept_path_torch(tokens, parents, choice)
            assert_same([t.cpu() for t in got], want, f"CUDA greedy B={B} N={N} V={V}")

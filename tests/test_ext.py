"""The compiled extension phide._C against its torch twins (phide/spec/verify.py).

The C++ walks must match the twins bit for bit: same accepted nodes, same tokens, same lengths,
on random trees that hit every rule (padding, unreachable nodes, duplicate and invalid sibling
tokens, zero-mass and negative entries, exact coin ties, coins 0 and just below 1).
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
from phide.ops.reference.accept import (  # noqa: E402
    tree_accept_greedy_torch,
    tree_accept_stochastic_torch,
)

ONE_MINUS = float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))  # largest float32 < 1


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


def random_probs(rng: random.Random, gen: torch.Generator, parents, tokens, V: int) -> torch.Tensor:
    """Target rows [N, V] float32: mass pushed onto children (deep accepts), zero-mass tokens,
    occasionally a negative entry, an all-zero row, or an unnormalized row."""
    N = len(parents)
    dyadic = V <= 8  # exact float sums, so coins can tie with accumulated mass exactly
    if dyadic:
        probs = torch.randint(0, 3, (N, V), generator=gen).double()
    else:
        probs = torch.softmax(torch.randn(N, V, generator=gen, dtype=torch.float64) * 3, dim=-1)
    for i in range(N):
        valid = [tokens[c] for c in children(parents, i) if 0 <= tokens[c] < V]
        for x in valid:  # most of the mass on the proposals
            probs[i, x] += rng.randrange(2, 9) if dyadic else rng.uniform(1.0, 6.0) / len(valid)
        if dyadic:
            total = max(float(probs[i].sum()), 1.0)
            probs[i] /= 2.0 ** torch.ceil(torch.log2(torch.tensor(total)))
        else:
            probs[i] /= probs[i].sum()
        for x in valid:
            if rng.random() < 0.1:
                probs[i, x] = 0.0  # a proposed token the target gives no mass
        if rng.random() < 0.15:
            probs[i, torch.rand(V, generator=gen) < 0.3] = 0.0
        r = rng.random()
        if r < 0.04:
            probs[i] = 0.0  # no mass at all: argmax fallback
        elif r < 0.08:
            probs[i, rng.randrange(V)] = -0.125  # negative: clamped to 0 in the residual
        elif r < 0.1:
            probs[i] *= 1.5  # unnormalized
    return probs.float()


def random_coin(rng: random.Random, V: int) -> float:
    r = rng.random()
    if r < 0.1:
        return 0.0
    if r < 0.2:
        return ONE_MINUS
    if V <= 8 and r < 0.6:
        return rng.randrange(8) / 8  # ties with dyadic accumulated mass
    return float(torch.tensor(rng.random(), dtype=torch.float32))


def random_batch(rng, gen, B: int, N: int, V: int):
    tokens, parents, choice, probs, coins, final = [], [], [], [], [], []
    for _ in range(B):
        par = random_parents(rng, N)
        tok = random_tokens(rng, N, V)
        parents.append(par)
        tokens.append(tok)
        choice.append(random_choice_row(rng, par, tok, V))
        probs.append(random_probs(rng, gen, par, tok, V))
        coins.append([random_coin(rng, V) for _ in range(N)])
        final.append(random_coin(rng, V))
    return (
        torch.tensor(tokens, dtype=torch.int64),
        torch.tensor(parents, dtype=torch.int64),
        torch.tensor(choice, dtype=torch.int64),
        torch.stack(probs),
        torch.tensor(coins, dtype=torch.float32),
        torch.tensor(final, dtype=torch.float32),
    )


def assert_same(got, want, context: str) -> None:
    names = ("accept_nodes", "out_tokens", "accept_len")
    for name, g, w in zip(names, got, want):
        assert g.dtype == w.dtype == torch.int64, f"{context}: {name} dtype {g.dtype} vs {w.dtype}"
        assert torch.equal(g, w), f"{context}: {name} differs\n  cpp:  {g.tolist()}\n  twin: {w.tolist()}"


CASES = [(1, 1000, 150), (5, 1000, 40), (1, 7, 150), (5, 7, 40)]  # (B, V, number of batches)


@pytest.mark.parametrize("B,V,n_batches", CASES)
def test_greedy_matches_twin(B, V, n_batches):
    rng, gen = random.Random(1000 + B * V), torch.Generator().manual_seed(B * V)
    depths = []
    for k in range(n_batches):
        N = rng.choice([1, 2, 5, 13, 16, 21])
        tokens, parents, choice, *_ = random_batch(rng, gen, B, N, V)
        got = torch.ops.phide.tree_accept_greedy(tokens, parents, choice)
        want = tree_accept_greedy_torch(tokens, parents, choice)
        assert_same(got, want, f"greedy B={B} N={N} V={V} batch {k}")
        depths += got[2].tolist()
    print(f"greedy B={B} V={V} accept_len histogram:", torch.bincount(torch.tensor(depths)).tolist())
    assert max(depths) >= 3, "random trees never accepted deeply: the test lost its coverage"


@pytest.mark.parametrize("B,V,n_batches", CASES)
def test_stochastic_matches_twin(B, V, n_batches):
    rng, gen = random.Random(2000 + B * V), torch.Generator().manual_seed(7 + B * V)
    depths = []
    for k in range(n_batches):
        N = rng.choice([1, 2, 5, 13, 16, 21])
        tokens, parents, _, probs, coins, final = random_batch(rng, gen, B, N, V)
        got = torch.ops.phide.tree_accept_stochastic(tokens, parents, probs, coins, final)
        want = tree_accept_stochastic_torch(tokens, parents, probs, coins, final)
        assert_same(got, want, f"stochastic B={B} N={N} V={V} batch {k}")
        depths += got[2].tolist()
    print(f"stochastic B={B} V={V} accept_len histogram:", torch.bincount(torch.tensor(depths)).tolist())
    assert max(depths) >= 3, "random trees never accepted deeply: the test lost its coverage"
    assert min(depths) == 0


def test_stochastic_special_rows():
    """Hand-made corner cases: NaN and inf mass, all-zero residual, ties at the coin."""
    nan, inf = float("nan"), float("inf")
    rows = [
        [0.25, nan, 0.5, nan, 0.25],  # NaN: walk rejects, residual total NaN -> first NaN
        [0.0, inf, 0.5, 0.0, 0.5],  # inf mass
        [0.0, 0.0, 0.0, 0.0, 0.0],  # nothing anywhere: argmax -> 0
        [0.5, 0.0, 0.0, 0.0, 0.5],  # rejected token leaves exactly one
        [-1.0, -0.5, 0.0, 0.0, 0.0],  # only negative mass: argmax of the raw row
    ]
    tokens = torch.tensor([[3, 0, 4, 4, 1]] * len(rows))
    parents = torch.tensor([[-1, 0, 0, 0, 0]] * len(rows))
    for coin in (0.0, 0.25, 0.5, ONE_MINUS):
        probs = torch.tensor(rows).unsqueeze(1).expand(-1, 5, -1).contiguous()
        coins = torch.full((len(rows), 5), coin)
        final = torch.full((len(rows),), coin)
        got = torch.ops.phide.tree_accept_stochastic(tokens, parents, probs, coins, final)
        want = tree_accept_stochastic_torch(tokens, parents, probs, coins, final)
        assert_same(got, want, f"special rows, coin {coin}")


# ----------------------------------------------------------------------------- opcheck, dispatch


def _small_inputs(B=3, N=9, V=11):
    rng, gen = random.Random(5), torch.Generator().manual_seed(5)
    return random_batch(rng, gen, B, N, V)


def test_opcheck_greedy():
    tokens, parents, choice, *_ = _small_inputs()
    torch.library.opcheck(torch.ops.phide.tree_accept_greedy.default, (tokens, parents, choice))


def test_opcheck_stochastic():
    tokens, parents, _, probs, coins, final = _small_inputs()
    torch.library.opcheck(
        torch.ops.phide.tree_accept_stochastic.default, (tokens, parents, probs, coins, final)
    )


def test_torch_compile_fullgraph():
    """Dispatcher ops + fakes: no graph break under torch.compile."""
    tokens, parents, choice, probs, coins, final = _small_inputs()

    def step(tokens, parents, choice, probs, coins, final):
        g = torch.ops.phide.tree_accept_greedy(tokens, parents, choice)
        s = torch.ops.phide.tree_accept_stochastic(tokens, parents, probs, coins, final)
        return g[2] + s[2]

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    args = (tokens, parents, choice, probs, coins, final)
    assert torch.equal(compiled(*args), step(*args))


def test_ops_backends_agree(monkeypatch):
    tokens, parents, choice, probs, coins, final = _small_inputs(B=6, N=16, V=50)
    results = {}
    for backend in ("torch", "cpp"):
        monkeypatch.setenv("PHIDE_OPS", backend)
        results[backend] = (
            ops.tree_accept_greedy(tokens, parents, choice),
            ops.tree_accept_stochastic(tokens, parents, probs, coins, final),
        )
    for i, kind in enumerate(("greedy", "stochastic")):
        assert_same(results["cpp"][i], results["torch"][i], f"phide.ops {kind}")


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises():
    tokens, parents, choice, probs, coins, final = _small_inputs()
    greedy, stoch = torch.ops.phide.tree_accept_greedy, torch.ops.phide.tree_accept_stochastic
    with pytest.raises(RuntimeError, match="tokens must be Long"):
        greedy(tokens.int(), parents, choice)
    with pytest.raises(RuntimeError, match=r"parents must be \[B, N\]"):
        greedy(tokens, parents[:, :-1].contiguous(), choice)
    with pytest.raises(RuntimeError, match="target_choice must have 2 dims"):
        greedy(tokens, parents, choice[0])
    with pytest.raises(RuntimeError, match="tokens must be contiguous"):
        greedy(tokens.t(), parents.t(), choice.t())
    with pytest.raises(RuntimeError, match="target_probs must be Float"):
        stoch(tokens, parents, probs.double(), coins, final)
    with pytest.raises(RuntimeError, match=r"target_probs must be \[B, N, V\]"):
        stoch(tokens, parents, probs[:, :-1].contiguous(), coins, final)
    with pytest.raises(RuntimeError, match=r"final_coins must be \[B\]"):
        stoch(tokens, parents, probs, coins, final[:-1])
    with pytest.raises(RuntimeError, match="N >= 1"):
        greedy(tokens[:, :0], parents[:, :0], choice[:, :0])


def test_unsorted_tree_is_rejected_like_the_twin():
    tokens = torch.tensor([[1, 2, 3]])
    parents = torch.tensor([[-1, 2, 0]])  # parent after child
    choice = torch.tensor([[2, 3, 3]])
    with pytest.raises(ValueError, match="not topologically sorted"):
        tree_accept_greedy_torch(tokens, parents, choice)
    with pytest.raises(ValueError, match="not topologically sorted"):
        torch.ops.phide.tree_accept_greedy(tokens, parents, choice)


# ----------------------------------------------------------------------------- CUDA (GPU machines)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_twin():
    if not torch._C._dispatch_has_kernel_for_dispatch_key("phide::tree_accept_greedy", "CUDA"):
        pytest.skip("phide._C was built without CUDA (rebuild with PHIDE_BUILD_CUDA=1)")
    rng, gen = random.Random(3), torch.Generator().manual_seed(3)
    for B, V in ((1, 1000), (5, 7), (37, 1000), (130, 7)):  # 130 > one block of 128 threads
        for N in (1, 5, 16, 21):
            tokens, parents, choice, probs, coins, final = random_batch(rng, gen, B, N, V)
            cuda = [t.cuda() for t in (tokens, parents, choice, probs, coins, final)]
            got = torch.ops.phide.tree_accept_greedy(*cuda[:3])
            want = tree_accept_greedy_torch(tokens, parents, choice)
            assert_same([t.cpu() for t in got], want, f"CUDA greedy B={B} N={N} V={V}")
            got = torch.ops.phide.tree_accept_stochastic(cuda[0], cuda[1], *cuda[3:])
            want = tree_accept_stochastic_torch(tokens, parents, probs, coins, final)
            assert_same([t.cpu() for t in got], want, f"CUDA stochastic B={B} N={N} V={V}")

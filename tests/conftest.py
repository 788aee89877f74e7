import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Calibrations and other per-machine state go to a private PHIDE_HOME, never the user's cache.
os.environ["PHIDE_HOME"] = tempfile.mkdtemp(prefix="phide-home-")
atexit.register(shutil.rmtree, os.environ["PHIDE_HOME"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

# Triton kernels run through the interpreter on machines without a GPU. Set before anything (e.g.
# transformers' imports) pulls in triton: whether @triton.jit interprets is decided when a
# kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """A tiny GQA LLaMA target (with tokenizer) and drafts derived from it, saved in HF format."""
    from phide.models.tiny import write_draft_of, write_tiny_llama, write_tokenizer

    root = tmp_path_factory.mktemp("tiny_pair")
    target = root / "target"
    write_tiny_llama(target, seed=0, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                     init_std=0.1)
    near = root / "near"
    write_draft_of(target, near, noise=0.03, seed=1)
    wrong = root / "wrong"
    write_draft_of(target, wrong, roll_lm_head=True)
    other = root / "other_vocab"
    write_tokenizer(other, vocab_size=300, seed=7)
    write_tiny_llama(other, seed=3, tokenizer_dir=other, hidden=64, layers=2, heads=4, kv_heads=2,
                     intermediate=128)
    return {"target": target, "near": near, "wrong": wrong, "other_vocab": other}


@pytest.fixture(autouse=True)
def _ops_backend_per_test():
    """Each test starts with the ops' backend unchosen (PHIDE_OPS read at the first op or engine)."""
    from phide import ops

    ops._chosen = None
    yield
    ops._chosen = None

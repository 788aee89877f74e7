"""The distilled draft adapter (the seeds' strategy B): a light residual MLP on the draft's final
hidden states, trained on paired data so that the draft's LM head predicts the *target's* next
tokens instead of its own.

    logits = lm_head(h + W_out · silu(W_in · h))        h: the draft's final-norm hidden state [.., H]

W_out starts at zero, so an untrained adapter is exactly the draft. Only W_in / W_out are trained
and saved; the LM head stays the draft's own (frozen, shared), so the adapter is a few hundred KB
even for a 7B draft (rank 256: 2 x 4096 x 256 parameters).

Files (`phide distill` writes them; the engine loads them from `--adapter DIR`, by default from the
draft directory): `draft_adapter.safetensors` (w_in.weight [R,H], w_out.weight [H,R]) and
`draft_adapter.json` ({"hidden_size": H, "rank": R, "vocab_size": V}).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from phide.errors import PhideError

WEIGHTS = "draft_adapter.safetensors"
CONFIG = "draft_adapter.json"


class DraftAdapter(nn.Module):
    def __init__(self, hidden_size: int, rank: int, lm_head: nn.Linear):
        super().__init__()
        self.w_in = nn.Linear(hidden_size, rank, bias=False)
        self.w_out = nn.Linear(rank, hidden_size, bias=False)
        nn.init.zeros_(self.w_out.weight)
        # Not a submodule: the draft owns its LM head; saving the adapter must not copy it.
        self.__dict__["lm_head"] = lm_head

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    def adapt(self, hidden: torch.Tensor) -> torch.Tensor:
        """[.., H] draft hidden states -> [.., H] adapted states (same dtype)."""
        h = hidden.to(self.w_in.weight.dtype)
        return (h + self.w_out(F.silu(self.w_in(h)))).to(hidden.dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[.., H] -> [.., V] float32 logits, the drop-in for `LlamaModel.logits`."""
        return self.lm_head(self.adapt(hidden).to(self.lm_head.weight.dtype)).float()

    def save(self, out_dir: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(out / WEIGHTS), metadata={"format": "pt"})
        (out / CONFIG).write_text(json.dumps({"hidden_size": self.w_in.in_features, "rank": self.w_in.out_features,
                                              "vocab_size": self.vocab_size}, indent=2))


def has_draft_adapter(model_dir: str | os.PathLike) -> bool:
    d = Path(model_dir)
    return (d / WEIGHTS).is_file() and (d / CONFIG).is_file()


def load_draft_adapter(model_dir: str | os.PathLike, lm_head: nn.Linear) -> DraftAdapter:
    """Load an adapter for a draft whose LM head is `lm_head` (its hidden size and vocabulary must
    match the ones it was trained on). safetensors only."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    if not has_draft_adapter(d):
        raise PhideError(f"{d}: no draft adapter ({WEIGHTS} and {CONFIG}); train one with `phide distill`")
    try:
        cfg = json.loads((d / CONFIG).read_text())
        hidden, rank, vocab = int(cfg["hidden_size"]), int(cfg["rank"]), int(cfg["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PhideError(f"{d / CONFIG}: not a draft adapter config ({exc})") from None
    H = lm_head.weight.shape[1]
    if (hidden, vocab) != (H, lm_head.weight.shape[0]):
        raise PhideError(f"{d}: the adapter was trained for a draft with hidden size {hidden} and vocabulary "
                         f"{vocab}, this draft has {H} and {lm_head.weight.shape[0]}")
    adapter = DraftAdapter(hidden, rank, lm_head)
    try:
        adapter.load_state_dict(load_file(str(d / WEIGHTS)))
    except (RuntimeError, OSError) as exc:
        raise PhideError(f"{d / WEIGHTS}: cannot load the adapter weights ({exc})") from None
    return adapter.to(device=lm_head.weight.device, dtype=lm_head.weight.dtype).eval().requires_grad_(False)

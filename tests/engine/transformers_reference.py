"""Independent reference: transformers' GptOssForCausalLM (a test-only dependency), cached per session."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

SEQ_LEN = 48  # longer than every test preset's sliding window


def token_ids(seed: int, length: int = SEQ_LEN) -> torch.Tensor:
    """Random ordinary-text token ids (below the special tokens)."""
    return torch.randint(0, 199998, (length,), generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=8)
def _transformers_model(path: str, dtype: torch.dtype):
    import transformers
    from transformers import GptOssForCausalLM, Mxfp4Config

    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # MXFP4 dequantised exactly; eager attention and experts so that float64 works on CPU.
        model = GptOssForCausalLM.from_pretrained(
            path, quantization_config=Mxfp4Config(dequantize=True), attn_implementation="eager",
            experts_implementation="eager", dtype=dtype)
    return model.eval()


class TransformersReference:
    def model(self, path: Path, dtype: torch.dtype = torch.float64):
        return _transformers_model(str(path), dtype)

    @functools.lru_cache(maxsize=32)
    def logits(self, path: Path, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Logits [SEQ_LEN, V] in float64 for token_ids(seed)."""
        with torch.no_grad():
            return self.model(path, dtype)(token_ids(seed)[None]).logits[0].double()

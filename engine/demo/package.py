"""The demo model's compact form, and its expansion into a real gpt-oss checkpoint directory.

The compact form is one safetensors file: every tensor of the checkpoint as the checkpoint stores it
(bf16, MXFP4 blocks and scales), except the embedding and the unembedding, of which only the rows of
the tokens training used are kept, with their token ids (`*.rows`). Every other row is zero in the
expanded checkpoint: an unseen token embeds to nothing, and every token the model never writes gets
logit 0, which is what training's softmax assumed. The metadata holds the config and the version.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.config import ModelConfig
from engine.demo import mxfp4
from engine.synthetic import write_checkpoint
from engine.weights import canonical_specs

ROW_SUFFIX = ".rows"
_SPARSE = ("model.embed_tokens.weight", "lm_head.weight")
_SHARD_BYTES = 100_000_000  # the expanded demo (~220 MB, mostly zero rows) in three shards


def checkpoint_tensors(model) -> dict[str, torch.Tensor]:
    """A trained `engine.demo.train.DemoModel` -> the compact form's tensors."""
    config, tensors = model.config, {}
    with torch.no_grad():
        inputs = torch.tensor(model.vocabulary.inputs[1:], dtype=torch.int32)
        tensors["model.embed_tokens.weight"] = model.embedding.table()[1:].to(torch.bfloat16)
        tensors["model.embed_tokens.weight" + ROW_SUFFIX] = inputs
        tensors["lm_head.weight"] = model.unembedding().detach().to(torch.bfloat16)
        tensors["lm_head.weight" + ROW_SUFFIX] = torch.tensor(model.vocabulary.outputs, dtype=torch.int32)
        for key, parameter in model.weights.items():
            tensors["model." + key.replace("__", ".")] = parameter.to(torch.bfloat16)
        for n, layer in enumerate(model.transformer.layers):
            experts, prefix = layer.mlp.experts, f"model.layers.{n}.mlp.experts."
            for name, weight, bias in (("gate_up_proj", experts.gate_up, experts.gate_up_bias),
                                       ("down_proj", experts.down, experts.down_bias)):
                blocks, scales = mxfp4.pack(weight)
                tensors[prefix + name + "_blocks"], tensors[prefix + name + "_scales"] = blocks, scales
                tensors[prefix + name + "_bias"] = bias.to(torch.bfloat16)
    expected = set(canonical_specs(config)) | {name + ROW_SUFFIX for name in _SPARSE}
    assert set(tensors) == expected, sorted(set(tensors) ^ expected)
    return {name: t.contiguous() for name, t in tensors.items()}


def save_compact(path: str | Path, model, version: str) -> None:
    save_file(checkpoint_tensors(model), str(path),
              metadata={"config": json.dumps(model.config.to_hf_dict()), "version": version})


def expand(compact: str | Path, out: str | Path, readme: str) -> ModelConfig:
    """Writes the full checkpoint directory of a compact file."""
    with safe_open(str(compact), "pt") as f:
        config = ModelConfig.from_hf_dict(json.loads(f.metadata()["config"]))
        specs = canonical_specs(config)

        def tensor_for(name: str) -> torch.Tensor:
            if name not in _SPARSE:
                return f.get_tensor(name)
            full = torch.zeros(specs[name].shape, dtype=torch.bfloat16)
            full[f.get_tensor(name + ROW_SUFFIX).long()] = f.get_tensor(name)
            return full

        write_checkpoint(out, config, tensor_for, readme, _SHARD_BYTES)
    return config

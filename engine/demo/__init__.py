"""The demo model: a small gpt-oss checkpoint trained here on synthetic tasks.

- `skills`: the answer it gives about itself, and its skills as `gptoss://model` lists them.
- `tasks`: the data generator, conversations with the replies the model should give (torch-free).
- `train`: trains the engine's own `Transformer` on them, experts quantization-aware in MXFP4.
- `package`: the compact form (trained rows only), and its expansion into a checkpoint.
- `build`: all of it in order (`gptoss-mcp train-demo`); `packaged`: where the weights go.
- `evaluate`: the skills measured on fresh random instances through `Engine`.
"""

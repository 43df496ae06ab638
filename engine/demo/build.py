"""Makes the demo model from nothing: train, write the compact form, expand it into a checkpoint,
measure its skills through the engine. `gptoss-mcp train-demo` runs this."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from engine.demo import package
from engine.demo.evaluate import evaluate, table
from engine.demo.packaged import PACKAGED, README
from engine.demo.train import TrainSettings, train
from engine.presets import preset_config


def build(settings: TrainSettings, out: Path = PACKAGED, eval_per_cell: int = 20, report=print) -> None:
    from engine.engine import Engine
    from engine.tokenizer import Tokenizer
    from engine import o200k

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        o200k.write_tokenizer_files(Path(scratch))
        tokenizer = Tokenizer(Path(scratch) / "tokenizer.json", preset_config("demo").vocab_size)
        model = train(preset_config("demo"), tokenizer, settings, report)
        budget = f"{settings.steps} steps" if settings.steps else f"{settings.minutes:g} min"
        package.save_compact(out, model, version=f"seed {settings.seed}, {budget}")
        report(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        checkpoint = Path(scratch) / "checkpoint"
        package.expand(out, checkpoint, README)
        engine = Engine.load(checkpoint)
        report(f"evaluation on fresh instances (seed {settings.seed + 1}, {eval_per_cell} per cell, "
               f"CPU kernels {engine.cpu_kernels}):")
        report(table(evaluate(engine, seed=settings.seed + 1, per_cell=eval_per_cell)))
    report(f"done in {(time.perf_counter() - started) / 60:.1f} min")

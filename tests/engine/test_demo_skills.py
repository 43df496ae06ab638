"""The shipped demo model does what README says it does: its skills on fresh random instances (a
generator seed training never used), through the engine as it serves (Engine.load of the expanded
checkpoint, the C++ kernels where they build, the scheduler, harmony parsing, constrained tool
replies), greedy and at temperature 1, at medium and high effort. The thresholds are issue 19's."""

from __future__ import annotations

import pytest

from engine.demo.evaluate import evaluate, table
from engine.demo.packaged import PACKAGED, README
from engine.demo.tasks import SKILLS

PER_CELL = 12  # per (skill, effort, sampling): 48 instances per skill
EVAL_SEED = 20261207
TARGETS = {"add": 0.95, "subtract": 0.95, "multiply": 0.95, "tool_call": 0.95,
           "tool_answer": 0.95, "no_tool": 0.95, "about": 1.0}
# Skills the shipped weights do not bring to their target yet (issue 19 stays open while any are
# here): what README's table measured for them. Their test runs and reports xfail, or XPASS once met.
BELOW_TARGET = {"subtract": "85-100% per cell at medium and high", "tool_call": "80-100%",
                "tool_answer": "95-100% per cell of 20, 44/48 here"}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    from engine import Engine
    from engine.demo.package import expand

    checkpoint = tmp_path_factory.mktemp("demo") / "checkpoint"
    expand(PACKAGED, checkpoint, README)
    failures: list = []
    scores = evaluate(Engine.load(checkpoint), seed=EVAL_SEED, per_cell=PER_CELL, efforts=("medium", "high"),
                      failures=failures)
    return scores, failures


@pytest.mark.parametrize("skill", [
    pytest.param(skill, marks=pytest.mark.xfail(reason=f"below issue 19's target: {BELOW_TARGET[skill]}"))
    if skill in BELOW_TARGET else skill for skill in SKILLS])
def test_the_demo_model_meets_its_target_on_fresh_instances(evaluation, skill):
    scores, failures = evaluation
    right = sum(score.right for (s, _, _), score in scores.items() if s == skill)
    total = sum(score.total for (s, _, _), score in scores.items() if s == skill)
    assert total == 4 * PER_CELL
    shown = "\n".join(f"{cell}: {example.messages[-1].get('content')!r} -> {getattr(result, 'text', result)!r}"
                      for cell, example, result in failures if cell[0] == skill)
    assert right / total >= TARGETS[skill], f"{skill}: {right}/{total}\n{table(scores)}\n{shown}"

"""The demo model's skills measured on fresh random instances, through the engine as it serves
(`Engine.load`, the C++ kernels where they build, the scheduler, harmony parsing and, with tools
declared, the grammar-constrained replies every tool request gets).

A reply counts as right when:
- arithmetic: the last integer of the final answer is the result;
- tool call: the first call names the tool the request is for, its arguments are a JSON object that
  validates against the tool's parameter schema and carries the request's values;
- tool answer: the final answer contains the tool's result;
- no fitting tool: nothing is called and the answer says that no tool covers it;
- about / off-skill: the answer names the demo model.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass

import jsonschema

from engine.chat import GenerationParams, GenerationResult
from engine.demo.tasks import SKILLS, Example, Generator
from engine.scheduler import Request, Scheduler

SAMPLINGS = {"greedy": 0.0, "temperature 1": 1.0}


@dataclass(frozen=True)
class Score:
    right: int
    total: int

    @property
    def rate(self) -> float:
        return self.right / self.total if self.total else 0.0


def fresh_example(generator: Generator, skill: str, effort: str) -> Example:
    if skill in ("add", "subtract", "multiply"):
        return generator.arithmetic(effort, {"add": "+", "subtract": "-", "multiply": "*"}[skill])
    if skill == "about":
        return generator.about(effort)
    return getattr(generator, skill)(effort)


def is_right(example: Example, result: GenerationResult) -> bool:
    expected = example.expected
    if "answer" in expected:
        numbers = re.findall(r"-?\d+", result.text)
        return bool(numbers) and int(numbers[-1]) == expected["answer"] and not result.tool_calls
    if "tool" in expected:
        if not result.tool_calls or result.tool_calls[0].name != expected["tool"]:
            return False
        try:
            arguments = json.loads(result.tool_calls[0].arguments)
        except json.JSONDecodeError:
            return False
        tool = next(t for t in example.tools if t["function"]["name"] == expected["tool"])
        if not jsonschema.Draft202012Validator(tool["function"]["parameters"]).is_valid(arguments):
            return False
        return arguments == expected["arguments"]
    if "result" in expected:
        return expected["result"] in result.text and not result.tool_calls
    if "no_tool" in expected:
        return not result.tool_calls and "None of the available tools" in result.text
    return "gptoss-mcp demo model" in result.text and not result.tool_calls


def evaluate(engine, seed: int, per_cell: int, efforts=("low", "medium", "high"), samplings=tuple(SAMPLINGS),
             skills=SKILLS, max_batch: int = 16, failures: list | None = None) -> dict[tuple[str, str, str], Score]:
    """Scores per (skill, effort, sampling) over `per_cell` fresh examples each (from Generator(seed))."""
    generator = Generator(seed)
    jobs = []
    scheduler = Scheduler(engine, max_batch=max_batch)
    for skill in skills:
        for effort in efforts:
            for sampling in samplings:
                for i in range(per_cell):
                    example = fresh_example(generator, skill, effort)
                    params = GenerationParams(max_tokens=768, temperature=SAMPLINGS[sampling], seed=seed * 100003 + i,
                                              reasoning_effort=effort, tools=tuple(example.tools),
                                              current_date=example.current_date)
                    request = Request(example.messages, params)
                    scheduler.submit(request)
                    jobs.append(((skill, effort, sampling), example, request))
    while not scheduler.idle:
        scheduler.step()
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for cell, example, request in jobs:
        right = request.result is not None and is_right(example, request.result)
        counts[cell][0] += right
        counts[cell][1] += 1
        if not right and failures is not None:
            failures.append((cell, example, request.result or request.error))
    return {cell: Score(*count) for cell, count in counts.items()}


def table(scores: dict[tuple[str, str, str], Score]) -> str:
    """A markdown table: a row per skill and sampling, a column per effort."""
    efforts = sorted({e for _, e, _ in scores}, key=["low", "medium", "high"].index)
    lines = ["| skill | sampling | " + " | ".join(efforts) + " |", "|---|---|" + "---|" * len(efforts)]
    for skill in SKILLS:
        for sampling in SAMPLINGS:
            cells = [scores.get((skill, e, sampling)) for e in efforts]
            if any(cells):
                lines.append(f"| {skill} | {sampling} | " +
                             " | ".join(f"{c.rate:.0%} ({c.right}/{c.total})" if c else "" for c in cells) + " |")
    return "\n".join(lines)

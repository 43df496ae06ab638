"""Command line: `gptoss-mcp <command>` (also `python -m gptoss_mcp`). Logs go to stderr only."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXIT_BAD_ARGUMENTS = 2
EXIT_MODEL_FAILED = 3
_MODEL_HELP = ("model directory (HF layout or its original/), a Hugging Face id ORG/NAME[@REVISION] in the local "
               "cache, or a .gguf file (any of its split files)")


def _make_model(args: argparse.Namespace) -> int:
    from engine.synthetic import write_model

    try:
        write_model(args.out, preset=args.preset, layers=args.layers, seed=args.seed,
                    original=not args.no_original)
    except OSError as e:
        logging.getLogger("gptoss_mcp").error("could not write %s: %s", args.out, e)
        return EXIT_MODEL_FAILED
    return 0


def _train_demo(args: argparse.Namespace) -> int:
    from engine.demo.build import build
    from engine.demo.packaged import PACKAGED
    from engine.demo.train import TrainSettings

    build(TrainSettings(seed=args.seed, minutes=args.minutes, steps=args.steps, threads=args.threads,
                        state_file=Path(args.state) if args.state else None),
          out=Path(args.out) if args.out else PACKAGED,
          eval_per_cell=args.eval_per_cell, report=lambda line: print(line, flush=True))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from engine import CheckpointError, ConfigError
    from engine.benchmark import run_benchmark
    from gptoss_mcp.demo import model_to_load

    try:
        result = run_benchmark(model_to_load(args.model), prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                               repeats=args.repeats, threads=args.threads, dtype=args.dtype, device=args.device,
                               weights=args.weights,
                               concurrency=args.concurrency, prefix_tokens=args.prefix_tokens,
                               structured=args.structured)
    except (CheckpointError, ConfigError) as e:
        logging.getLogger("gptoss_mcp").error("model failed to load: %s", e)
        return EXIT_MODEL_FAILED
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from engine import CheckpointError, ConfigError, ContextLimitError, Engine, GenerationParams, TokenizerError
    from gptoss_mcp.demo import model_to_load

    log = logging.getLogger("gptoss_mcp")
    try:
        engine = Engine.load(model_to_load(args.model), device=args.device, dtype=args.dtype, weights=args.weights)
        params = GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                  seed=args.seed, reasoning_effort=args.reasoning_effort,
                                  instructions=args.instructions)
        generation = engine.generate([{"role": "user", "content": args.prompt}], params)
    except (CheckpointError, ConfigError, TokenizerError) as e:
        log.error("model failed to load: %s", e)
        return EXIT_MODEL_FAILED
    except (ContextLimitError, ValueError) as e:
        log.error("%s", e)
        return EXIT_BAD_ARGUMENTS
    result = generation.run()
    if args.show_reasoning:
        print(f"[reasoning]\n{result.reasoning}\n[answer]")
    print(result.text)
    log.info("finish_reason=%s prompt_tokens=%d completion_tokens=%d", result.finish_reason,
             result.usage.prompt_tokens, result.usage.completion_tokens)
    return 0


def _pull(args: argparse.Namespace) -> int:
    # errors.HTTPError is the base error of huggingface_hub's HTTP library (a dropped connection after retries)
    from huggingface_hub.errors import (HFValidationError, HTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    from engine import CheckpointError
    from gptoss_mcp.pull import pull

    log = logging.getLogger("gptoss_mcp")
    if args.log_level != "DEBUG":  # huggingface_hub's HTTP client logs every request: it would bury the progress bars
        for client in ("httpx", "httpx2"):
            logging.getLogger(client).setLevel(logging.WARNING)
    try:
        source = pull(args.repo_id, revision=args.revision, layout=args.layout)
    except HFValidationError as e:
        log.error("%s", e)
        return EXIT_BAD_ARGUMENTS
    except CheckpointError as e:
        log.error("the download does not hold a loadable model: %s", e)
        return EXIT_MODEL_FAILED
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:  # also gated or private repositories
        log.error("could not download %s: %s", args.repo_id, e)
        return EXIT_MODEL_FAILED
    except (HTTPError, LocalEntryNotFoundError, OSError) as e:
        log.error("could not download %s: %s (running the same command again resumes)", args.repo_id, e)
        return EXIT_MODEL_FAILED
    log.info("%s is ready: gptoss-mcp serve --model %s", args.repo_id,
             args.repo_id + (f"@{args.revision}" if args.revision else ""))
    print(source.path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import functools

    from gptoss_mcp.http_security import auth_options
    from gptoss_mcp.runtime import EngineRunner
    from gptoss_mcp.server import build_server
    from gptoss_mcp.settings import ServerSettings
    from gptoss_mcp.shutdown import end_on_signals, end_process

    log = logging.getLogger("gptoss_mcp")
    try:
        settings = ServerSettings(
            model=args.model or ServerSettings.model_from_env(), transport=args.transport, host=args.host,
            port=args.port, device=args.device, dtype=args.dtype, weights=args.weights, threads=args.threads,
            reasoning_effort=args.reasoning_effort, max_context=args.max_context,
            max_tokens_limit=args.max_tokens_limit, max_batch=args.max_batch, max_waiting=args.max_waiting,
            kv_cache_mb=args.kv_cache_mb, prefix_cache_mb=args.prefix_cache_mb,
            progress_interval=args.progress_interval,
            auth_token_file=args.auth_token_file, allow_origins=tuple(args.allow_origin),
            allow_hosts=tuple(args.allow_host), openai_api=not args.no_openai_api, backend=args.backend,
            backend_model=args.backend_model, backend_api_key_file=args.backend_api_key_file,
            backend_embeddings_url=args.backend_embeddings_url, backend_timeout=args.backend_timeout,
            backend_retries=args.backend_retries)
        server_options = auth_options(settings)
    except ValueError as e:
        log.error("%s", e)
        return EXIT_BAD_ARGUMENTS
    end_on_signals()
    if settings.backend:
        from gptoss_mcp.backend import BackendRunner

        try:
            runner = BackendRunner(settings.backend, settings.backend_model, settings.backend_api_key_file,
                                   settings.backend_embeddings_url, settings.max_waiting, settings.max_batch,
                                   settings.progress_interval, settings.backend_timeout, settings.backend_retries)
        except (OSError, ValueError) as e:
            log.error("%s", e)
            return EXIT_BAD_ARGUMENTS
    else:
        runner = EngineRunner(functools.partial(_load_engine, settings), settings.max_waiting,
                              settings.progress_interval, start_timeout=_LOAD_START_TIMEOUT,
                              max_batch=settings.max_batch)
    mcp = build_server(settings, runner, **server_options)
    log.info("serving %s over %s", "the backend" if settings.backend else settings.model, settings.transport)
    code = 0
    try:
        if settings.transport == "stdio":
            mcp.run()  # returns on stdin EOF
        else:
            _run_http(mcp, settings, args.log_level)
    except SystemExit as e:  # uvicorn exits this way when it cannot bind the port
        code = e.code if isinstance(e.code, int) else 1
    log.info("%s ended: shutting down", "stdin" if settings.transport == "stdio" else "the HTTP server")
    end_process(code)  # never waits for the engine thread


# Seconds the engine thread waits for the server's first reply before it starts loading anyway.
_LOAD_START_TIMEOUT = 1.0


def _load_engine(settings, report):
    report(0.02, "importing torch")
    from gptoss_mcp.loader import load_engine  # imports torch and the engine: on the engine thread only

    return load_engine(settings, report)


def _run_http(mcp, settings, log_level: str) -> None:
    import contextlib

    import uvicorn

    from gptoss_mcp.http_security import transport_security

    class Server(uvicorn.Server):
        # SIGTERM and SIGINT stay with gptoss_mcp.shutdown: uvicorn's graceful shutdown would wait for
        # open generation streams (or cancel them with a traceback in the log).
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    security = transport_security(settings)
    if settings.transport == "http":
        app = mcp.streamable_http_app(transport_security=security, host=settings.host)
    else:
        app = mcp.sse_app(transport_security=security, host=settings.host)
    Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level.lower())).run()


def build_parser() -> argparse.ArgumentParser:
    from engine.model_source import LAYOUTS
    from engine.presets import PRESETS

    parser = argparse.ArgumentParser(prog="gptoss-mcp", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the MCP server")
    serve.add_argument("--model", default=None,
                       help="model directory, Hugging Face id ORG/NAME[@REVISION] in the local cache, .gguf file, "
                            "or 'demo' "
                            "(default: $GPTOSS_MODEL, else demo)")
    serve.add_argument("--transport", default="stdio", choices=["stdio", "http", "sse"])
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_positive_int, default=8000)
    serve.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    serve.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    serve.add_argument("--weights", default=None, choices=["bf16", "int8"],
                       help="int8: attention and unembedding in 8 bits (Q8_0) for faster decoding "
                            "(default: as stored)")
    serve.add_argument("--threads", type=_positive_int, default=None)
    serve.add_argument("--reasoning-effort", default="medium", choices=["low", "medium", "high"])
    serve.add_argument("--max-context", type=_positive_int, default=8192, help="tokens per request, prompt + reply")
    serve.add_argument("--max-tokens-limit", type=_positive_int, default=4096, help="largest max_tokens allowed")
    serve.add_argument("--max-batch", type=_positive_int, default=8, help="generations decoded together")
    serve.add_argument("--max-waiting", type=int, default=8,
                       help="requests waiting beyond the batch before 'busy'")
    serve.add_argument("--kv-cache-mb", type=_positive_int, default=None,
                       help="KV memory of running generations (default: a quarter of RAM, or 3/4 of free GPU memory)")
    serve.add_argument("--prefix-cache-mb", type=int, default=None,
                       help="KV memory kept for reuse across calls; 0 disables (default: 1024, or RAM/8 if less)")
    serve.add_argument("--progress-interval", type=float, default=1.0,
                       help="seconds between progress notifications (at most 2)")
    serve.add_argument("--auth-token-file", type=Path, default=None, help="require this bearer token (HTTP)")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN")
    serve.add_argument("--allow-host", action="append", default=[], metavar="HOST")
    serve.add_argument("--no-openai-api", action="store_true",
                       help="do not serve the OpenAI-compatible /v1 routes and /metrics (HTTP transport)")
    serve.add_argument("--backend", default=None, metavar="URL",
                       help="serve from this OpenAI-compatible server (e.g. vLLM's http://host:8000/v1) instead "
                            "of loading a model")
    serve.add_argument("--backend-model", default=None, metavar="NAME", help="the backend's model id")
    serve.add_argument("--backend-api-key-file", type=Path, default=None, metavar="FILE",
                       help="a file holding the backend's API key")
    serve.add_argument("--backend-embeddings-url", default=None, metavar="URL",
                       help="another OpenAI-compatible server for embed (default: the backend)")
    serve.add_argument("--backend-timeout", type=float, default=120.0, metavar="SECONDS",
                       help="how long the backend may stay silent (default 120)")
    serve.add_argument("--backend-retries", type=int, default=3,
                       help="retries of 429 / 503 / connection failures, with backoff (default 3)")
    serve.set_defaults(run=_serve)

    make = commands.add_parser("make-model", help="write a random gpt-oss checkpoint in the real format")
    make.add_argument("out", help="output directory")
    make.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    make.add_argument("--layers", type=_positive_int, default=None, help="override the preset's depth")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--no-original", action="store_true", help="skip the original/ layout copy")
    make.set_defaults(run=_make_model)

    demo = commands.add_parser("train-demo", help="train the demo model from scratch, write its compact weights, "
                                                  "print its skills' evaluation")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--minutes", type=float, default=95.0,
                      help="training time (default 95; the shipped weights: 95, then resumed with 150, as README says)")
    demo.add_argument("--steps", type=_positive_int, default=None,
                      help="train this many steps instead of --minutes (the same run on any machine)")
    demo.add_argument("--state", default=None, metavar="FILE",
                      help="keep the training state here (every 5 minutes and at the end); if FILE exists, "
                           "go on from it")
    demo.add_argument("--out", default=None,
                      help="compact weights to write (default: engine/demo/gptoss-demo.safetensors)")
    demo.add_argument("--eval-per-cell", type=_positive_int, default=20,
                      help="fresh examples per skill, effort and sampling in the evaluation (default 20)")
    demo.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: all cores)")
    demo.set_defaults(run=_train_demo)

    bench = commands.add_parser("bench", help="measure load time, memory, prompt and decode speed")
    bench.add_argument("--model", required=True, help=_MODEL_HELP + ", or demo")
    bench.add_argument("--prompt-tokens", type=_positive_int, nargs="+", default=[128, 512],
                       help="prompt lengths to measure (default: 128 512)")
    bench.add_argument("--gen-tokens", type=_positive_int, default=32, help="tokens per decode round")
    bench.add_argument("--concurrency", type=_positive_int, nargs="+", default=[], metavar="N",
                       help="also decode N greedy streams together, for each N given")
    bench.add_argument("--prefix-tokens", type=_positive_int, nargs="+", default=[], metavar="N",
                       help="also time the first token of a next turn after an N-token conversation, "
                            "cold and from the prefix cache, for each N given")
    bench.add_argument("--structured", action="store_true",
                       help="also decode a JSON-constrained reply against a free one and time the grammar masks")
    bench.add_argument("--repeats", type=_positive_int, default=3,
                       help="runs of each measurement; the best is reported (default: 3)")
    bench.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: all cores)")
    bench.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    bench.add_argument("--weights", default=None, choices=["bf16", "int8"],
                       help="int8: attention and unembedding in 8 bits (Q8_0) (default: as stored)")
    bench.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(run=_bench)

    gen = commands.add_parser("generate", help="answer one prompt with the model (harmony format)")
    gen.add_argument("--model", required=True, help=_MODEL_HELP + ", or demo")
    gen.add_argument("--reasoning-effort", default="medium", choices=["low", "medium", "high"])
    gen.add_argument("--max-tokens", type=_positive_int, default=1024)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--instructions", default=None, help="developer instructions")
    gen.add_argument("--show-reasoning", action="store_true", help="print the analysis channel first")
    gen.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    gen.add_argument("--weights", default=None, choices=["bf16", "int8"],
                     help="int8: attention and unembedding in 8 bits (Q8_0) (default: as stored)")
    gen.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    gen.add_argument("prompt")
    gen.set_defaults(run=_generate)

    pull = commands.add_parser("pull", help="download a model from the Hugging Face Hub into the local cache "
                                            "(only the files the engine loads), then check its shards")
    pull.add_argument("repo_id", metavar="ORG/NAME", help="e.g. openai/gpt-oss-20b")
    pull.add_argument("--revision", default=None, help="branch, tag or commit (default: the default branch)")
    pull.add_argument("--layout", default="hf", choices=sorted(LAYOUTS),
                      help="hf: the top-level safetensors shards (default); original: the original/ directory")
    pull.set_defaults(run=_pull)
    return parser



def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits with 2 on bad arguments
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

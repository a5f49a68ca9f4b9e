"""The benchmark report: ratios, targets, JSON schema, markdown and plots, from a small real run and edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from arrowengine.bench.context import BenchContext, BenchOptions
from arrowengine.bench.measure import Spread, memory_snapshot, time_call
from arrowengine.bench.regression import GUARD_ENTRIES, check_guard
from arrowengine.bench.report import build_report, markdown, write_outputs
from arrowengine.bench.results import Fidelity, Result, ResultSet, Target
from arrowengine.bench.schema import SCHEMA

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_spread_quartiles_and_rates():
    spread = Spread.of([0.4, 0.1, 0.2, 0.3])
    assert (spread.median, spread.min, spread.max, spread.runs) == (0.25, 0.1, 0.4, 4)
    assert spread.p25 == pytest.approx(0.175) and spread.p75 == pytest.approx(0.325)
    rate = spread.as_rate(100)
    assert rate["median"] == pytest.approx(400) and rate["max"] == pytest.approx(1000)
    assert rate["p75"] == pytest.approx(100 / 0.175)  # the faster quartile time is the higher rate
    with pytest.raises(ValueError, match="at least one sample"):
        Spread.of([])


def test_time_call_warms_up_and_stops_at_the_time_cap():
    calls = []
    spread, last = time_call(lambda: calls.append(1) or len(calls), warmup=2, repeats=50, max_seconds=0.0)
    assert spread.runs == 2 and len(calls) == 4 and last == 4


def test_memory_snapshot_splits_anonymous_and_file_backed():
    snap = memory_snapshot()
    if snap.rss_bytes == 0:
        pytest.skip("/proc/self/status is not available on this system")
    assert snap.anon_bytes > 0 and snap.file_bytes > 0
    assert snap.anon_bytes + snap.file_bytes <= snap.rss_bytes + (1 << 20)
    assert snap.peak_rss_bytes >= snap.rss_bytes


def _result(strategy, role, value, *, higher=True, group="g", fid=None):
    return Result("text", group, strategy, role, "throughput", "x/s", value, higher, fidelity=fid)


def test_ratios_are_speedups_whatever_the_unit():
    rs = ResultSet()
    rs.add(_result("base", "baseline", 100.0))
    fast = rs.add(_result("fast", "ours", 250.0, fid=Fidelity("cosine_min", 0.999, 0.99)))
    lossy = rs.add(_result("lossy", "ours", 400.0, fid=Fidelity("cosine_min", 0.9, 0.99)))
    rs.add(Result("audio", "a", "base", "baseline", "latency", "ms", 300.0, False))
    quick = rs.add(Result("audio", "a", "ours", "ours", "latency", "ms", 100.0, False))
    rs.fill_ratios()
    assert fast.ratio == 2.5 and lossy.ratio == 4.0 and quick.ratio == 3.0 and quick.baseline == "base"
    assert rs.best([fast, lossy]) is fast  # below its fidelity bar, a faster strategy does not count


def test_target_met_not_met_and_not_measured():
    assert Target("t", "d", 2.1, 2.0, ">=").met is True
    assert Target("t", "d", 0.6, 0.5, "<=").met is False
    assert Target("t", "d", None, 0.5, "<=").to_dict()["met"] is None


def test_guard_flags_a_real_drop_and_skips_missing_isa():
    baseline = {"tolerance": 0.4, "isa_summary": {"BF16": True}, "ratios": {e.key: 2.0 for e in GUARD_ENTRIES}}
    measured = {e.key: 2.0 for e in GUARD_ENTRIES}
    assert check_guard(measured, baseline, {"BF16": True}) == ([], [])
    key = GUARD_ENTRIES[0].key
    failures, _ = check_guard(measured | {key: 1.1}, baseline, {"BF16": True})
    assert failures == [f"{key}: ratio 1.10x, below the stored 2.00x minus 40% (1.20x)"]
    bf16 = next(e.key for e in GUARD_ENTRIES if e.needs_isa == "BF16")
    failures, notes = check_guard({k: v for k, v in measured.items() if k != bf16}, baseline, {"BF16": False})
    assert failures == [] and any(bf16 in n and "lacks BF16" in n for n in notes)


@pytest.fixture(scope="module")
def ops_report(tmp_path_factory):
    """A real, reduced run: the operator suite on MiniLM's shapes, one strategy besides the baselines."""
    if not (MODELS / "all-MiniLM-L6-v2" / "weights.parquet").is_file():
        pytest.skip("models/all-MiniLM-L6-v2 is missing; run python scripts/fetch_models.py")
    from arrowengine.bench.runner import run_benchmark

    options = BenchOptions(models_dir=MODELS, models=("all-MiniLM-L6-v2",), suites=("ops",),
                           strategies=("SDPA fp32",), quick=True, repeats=2)
    return run_benchmark(options)


@pytest.mark.slow
def test_reduced_run_follows_the_schema_and_writes_every_output(ops_report, tmp_path):
    jsonschema.validate(ops_report, SCHEMA)
    rows = ops_report["results"]
    sdpa = [r for r in rows if r["strategy"] == "SDPA fp32" and r["status"] == "ok"]
    assert sdpa and all(r["ratio"] > 0 and r["fidelity"]["value"] < 1e-5 for r in sdpa)
    assert not [r for r in rows if r["strategy"] == "SDPA bf16"]  # filtered out by --strategies
    files = write_outputs(ops_report, tmp_path)
    assert {f.name for f in files} >= {"report.json", "report.md"}
    assert json.loads((tmp_path / "report.json").read_text()) == ops_report
    text = (tmp_path / "report.md").read_text()
    assert "attention: MiniLM" in text and ops_report["environment"]["cpu_model"] in text


def test_schema_rejects_a_result_without_fidelity_fields():
    ctx = BenchContext(BenchOptions(suites=("ops",), models=()))
    ctx.results.add(_result("base", "baseline", 1.0))
    report = build_report(ctx, [Target("t", "a target", 0.3, 0.5, ">=", "evidence")])
    assert "**NOT MET**" in markdown(report)
    report["results"][0]["fidelity"] = {"metric": "cosine_min"}
    with pytest.raises(jsonschema.ValidationError, match="'value' is a required property"):
        jsonschema.validate(report, SCHEMA)


def test_guard_without_a_baseline_file_names_the_command(tmp_path, capsys):
    from arrowengine.bench.main import main

    models = Path(__file__).resolve().parents[2] / "models"
    if not (models / "all-MiniLM-L6-v2" / "weights.parquet").is_file():
        pytest.fail("models/all-MiniLM-L6-v2 is missing; the README's test command fetches it")
    missing = tmp_path / "none.json"
    assert main(["--guard", str(missing), "--models-dir", str(models)]) == 2
    assert capsys.readouterr().err == (f"guard baseline {missing} does not exist; create it with "
                                       f"--write-guard-baseline {missing}\n")


def test_every_metric_a_suite_records_is_one_the_report_schema_accepts():
    """A suite recording a metric the schema lacks fails at the end of a long run and loses every result:
    check the literal metric of each ``record`` / ``attempt`` call in the suites against the schema instead."""
    import ast

    from arrowengine.bench import schema

    allowed = set(schema.SCHEMA["properties"]["results"]["items"]["properties"]["metric"]["enum"])
    used = {}
    for path in Path(schema.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("record", "attempt") and len(node.args) > 4
                    and isinstance(node.args[4], ast.Constant) and isinstance(node.args[4].value, str)):
                used.setdefault(node.args[4].value, path.name)
    assert used and "decode" in used  # the scan finds the suites' calls
    assert {metric: where for metric, where in used.items() if metric not in allowed} == {}


def test_gguf_targets_compare_with_llamacpp_and_report_what_is_missing():
    from arrowengine.bench.targets import evaluate_targets

    ctx = BenchContext(BenchOptions(suites=("llm",), models=("smollm2-135m-instruct",)))
    ours, peer = "arrowengine LLM(dir) default on the GGUF blocks", "llama.cpp on the GGUF"
    ppl = Fidelity("perplexity_increase", 0.00001, 0.01)
    for length, (ours_tps, peer_tps, ours_ttft, peer_ttft) in {32: (150.0, 100.0, 60.0, 90.0),
                                                                512: (110.0, 100.0, 900.0, 1800.0)}.items():
        group = f"smollm2-135m-instruct prompt={length}"
        for strategy, role, tps, ttft in ((ours, "ours", ours_tps, ours_ttft), (peer, "peer", peer_tps, peer_ttft)):
            ctx.results.add(Result("llm", group, strategy, role, "decode", "tokens/s", tps, True,
                                   fidelity=ppl if role == "ours" else None))
            ctx.results.add(Result("llm", group, strategy, role, "ttft", "ms", ttft, False))
    ctx.results.add(Result("llm", "smollm2-135m-instruct prompt=32", f"{ours}, batch 8", "ours", "batch_decode",
                           "tokens/s", 400.0, True, params={"vs_single_stream": 2.5, "single_stream_tokens_per_s":
                                                            160.0, "with_prefill_vs_single_stream": 2.2}))
    targets = {t.name: t for t in evaluate_targets(ctx)}
    decode = targets["llm_gguf_decode_vs_llamacpp"]
    assert decode.value == pytest.approx(1.1) and decode.met  # the lower of 1.5x (prompt 32) and 1.1x (512)
    assert decode.evidence == ("prompt 32: 150.0 vs 100.0 tokens/s; prompt 512: 110.0 vs 100.0 tokens/s; "
                               "perplexity +0.001% vs the dequantized float reference")
    assert targets["llm_gguf_prefill_vs_llamacpp"].value == pytest.approx(2.0)
    batch = targets["llm_gguf_batch8_4x"]
    assert batch.value == 2.5 and batch.met is False
    agreement = targets["llm_gguf_greedy_agreement"]  # not measured in this run: reported as such, never met
    assert agreement.value is None and agreement.met is None and agreement.evidence == "not measured"

"""``tftrt-lite compare`` / ``compare_saved_models`` on the split model, its conversion,
a copy with one weight changed and a converted copy with one engine's plan corrupted."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import model_zoo
from tftrt_lite import Converter, cli
from tftrt_lite.compare import (
    ERROR_STATS, CompareError, compare_arrays, compare_saved_models, log_histogram, random_inputs)
from tftrt_lite.engine.plan import deserialize_plan, np_dtype, serialize_plan
from tftrt_lite.replace.rewrite import ENGINE_OP

ENGINES = ["TftrtLiteEngine_serving_default_0", "TftrtLiteEngine_serving_default_1"]


def _scale_largest_weight(plan_bytes: bytes, factor: float = 1.5) -> bytes:
    """The plan with its largest floating-point weight scaled in the packed weights, which
    both the GPU executor and the reference executor read."""
    plan = deserialize_plan(plan_bytes)
    tensors = json.loads(plan.graph_json)["tensors"].values()
    w = max((t["weight"] for t in tensors if "weight" in t and np_dtype(t["weight"]["dtype"]).kind == "f"),
            key=lambda w: w["nbytes"])
    weights = bytearray(plan.weights)
    dtype = np_dtype(w["dtype"])
    view = np.frombuffer(weights, dtype, count=w["nbytes"] // dtype.itemsize, offset=w["offset"])
    view[:] = view * factor
    return serialize_plan(dataclasses.replace(plan, weights=bytes(weights)))


def _corrupt_engine(src: str, dst: str, engine: str, transform) -> str:
    """A copy of the converted model at ``dst`` with ``engine``'s plan replaced by ``transform(plan)``."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    found = 0
    for fdef in proto.meta_graphs[0].graph_def.library.function:
        for node in fdef.node_def:
            if node.op == ENGINE_OP and node.attr["engine_name"].s.decode() == engine:
                node.attr["serialized_plan"].s = transform(node.attr["serialized_plan"].s)
                found += 1
    assert found == 1
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    src = model_zoo.build_split_model(str(root))
    conv = Converter(input_saved_model_dir=src, minimum_segment_size=2)
    conv.convert()
    out = conv.save(str(root / "converted"))
    perturbed = model_zoo._SplitModel()
    perturbed.w2[3, 1].assign(perturbed.w2[3, 1] + 0.25)   # reaches output y, not h
    tf.saved_model.save(perturbed, str(root / "perturbed"),
                        signatures={"serving_default": perturbed.serve, "logits": perturbed.logits})
    corrupted = {e: _corrupt_engine(out, str(root / f"corrupt_{e}"), e, _scale_largest_weight) for e in ENGINES}
    garbage = _corrupt_engine(out, str(root / "garbage"), ENGINES[1], lambda plan: b"not a plan")
    return {"src": src, "converted": out, "perturbed": str(root / "perturbed"), "corrupted": corrupted,
            "garbage": garbage}


# --------------------------------------------------------------------------- end to end
def test_identical_models_pass_with_zero_error(models):
    report = compare_saved_models(models["src"], models["src"], batch_size=2)
    assert report.passed and report.signature == "serving_default"
    assert [o.name for o in report.outputs] == ["h", "y"]
    assert all(o.max_abs == 0 and o.needed_atol == 0 for o in report.outputs)


def test_converted_model_passes_at_1e_4(models):
    report = compare_saved_models(models["src"], models["converted"], batch_size=4, atol=1e-4, rtol=1e-4)
    assert report.passed, report.format()
    assert report.converted_engine_calls == 2
    assert report.inputs == {"x": ("float32", (4, 8))}


def test_perturbed_weight_fails_and_names_the_output_and_the_needed_tolerance(models):
    report = compare_saved_models(models["src"], models["perturbed"], batch_size=4)
    h, y = report.outputs
    assert h.passed and not y.passed and not report.passed
    assert y.outside_tolerance > 0 and y.max_abs > 1e-3 and y.needed_atol > 1e-3
    text = report.format()
    assert "output 'y': FAILED" in text and "would pass with atol=" in text and "abs error histogram" in text
    assert "output 'h'" not in text.split("\n\n")[0]          # passing outputs get no details by default
    assert text.splitlines()[-1].startswith("FAILED: 1/2 outputs match; mismatched: y")
    again = compare_saved_models(models["src"], models["perturbed"], batch_size=4, atol=y.needed_atol * 1.001)
    assert again.passed
    stricter = compare_saved_models(models["src"], models["perturbed"], batch_size=4, atol=y.needed_atol * 0.9)
    assert not stricter.passed


def test_signature_is_chosen_and_checked(models):
    report = compare_saved_models(models["src"], models["converted"], signature_key="logits", batch_size=1)
    assert report.passed and [o.name for o in report.outputs] == ["logits"]
    with pytest.raises(CompareError, match=r"no signature 'nope'; signatures: \['logits', 'serving_default'\]"):
        compare_saved_models(models["src"], models["converted"], signature_key="nope", batch_size=1)


@pytest.mark.parametrize("kwargs, message", [
    ({}, r"unknown batch dim .* give a batch size \(--batch N"),
    ({"batch_size": 0}, "batch size must be >= 1"),
    ({"batch_size": 1, "atol": -1.0}, "atol must be a finite number >= 0"),
    ({"batch_size": 1, "error_stat": "p99"}, "error statistic 'p99' is not one of"),
])
def test_bad_arguments_are_named(models, kwargs, message):
    with pytest.raises(CompareError, match=message):
        compare_saved_models(models["src"], models["converted"], **kwargs)


# --------------------------------------------------------------------------- inputs
def test_npz_inputs_are_fed_to_both_models(models, tmp_path):
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    report = compare_saved_models(models["src"], models["perturbed"], inputs=str(tmp_path / "in.npz"))
    assert report.inputs == {"x": ("float32", (3, 8))} and "in.npz" in report.input_source
    want = tf.saved_model.load(models["perturbed"]).signatures["serving_default"](x=tf.constant(x))["y"].numpy()
    y = report.outputs[1]
    assert y.worst_values[0] == pytest.approx(float(want[y.worst_index]))


@pytest.mark.parametrize("arrays, message", [
    ({}, r"exactly the signature inputs \['x'\]: missing \['x'\], unexpected \[\]"),
    ({"x": np.ones((2, 8), np.float32), "z": np.ones(2)}, r"missing \[\], unexpected \['z'\]"),
    ({"x": np.ones((2, 8), np.float64)}, "input 'x' is float64, the signature takes float32"),
    ({"x": np.ones((2, 7), np.float32)}, r"input 'x' has shape \(2, 7\), the signature takes \(None, 8\)"),
])
def test_bad_npz_inputs_are_named(models, tmp_path, arrays, message):
    np.savez(tmp_path / "in.npz", **arrays)
    with pytest.raises(CompareError, match=message):
        compare_saved_models(models["src"], models["converted"], inputs=str(tmp_path / "in.npz"))


def test_missing_or_non_npz_inputs_file_is_named(models, tmp_path):
    with pytest.raises(CompareError, match="inputs file '/no/such.npz' does not exist"):
        compare_saved_models(models["src"], models["converted"], inputs="/no/such.npz")
    np.save(tmp_path / "x.npy", np.ones((2, 8), np.float32))
    with pytest.raises(CompareError, match="holds a single array, not an .npz keyed by input name"):
        compare_saved_models(models["src"], models["converted"], inputs=str(tmp_path / "x.npy"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(CompareError, match="cannot read inputs file .* as .npz"):
        compare_saved_models(models["src"], models["converted"], inputs=str(tmp_path / "junk.npz"))


def test_random_inputs_are_seeded_nonzero_and_shaped():
    specs = {"ids": tf.TensorSpec((None, 5), tf.int32), "x": tf.TensorSpec((2, 3), tf.float16)}
    a, b = random_inputs(specs, seed=3, batch_size=4), random_inputs(specs, seed=3, batch_size=4)
    assert a["ids"].shape == (4, 5) and a["ids"].dtype == np.int32 and a["x"].dtype == np.float16
    assert a["ids"].min() >= 1 and a["ids"].max() < 8 and np.all(a["x"] != 0)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], random_inputs(specs, seed=4, batch_size=4)["x"])
    with pytest.raises(CompareError, match="unknown dim 1; only the first"):
        random_inputs({"x": tf.TensorSpec((2, None), tf.float32)}, batch_size=2)
    with pytest.raises(CompareError, match="dtype string"):
        random_inputs({"s": tf.TensorSpec((2,), tf.string)})


# --------------------------------------------------------------------------- metrics
def test_elemwise_is_isclose_and_the_needed_tolerances_are_tight():
    rng = np.random.default_rng(0)
    b = rng.standard_normal(1000)
    a = b + rng.standard_normal(1000) * 1e-4
    for atol, rtol in [(1e-5, 1e-5), (1e-3, 0.0), (0.0, 1e-2), (5e-4, 5e-4)]:
        r = compare_arrays("t", a, b, atol, rtol, "elemwise")
        assert r.passed == np.allclose(a, b, atol=atol, rtol=rtol)
        assert r.outside_tolerance == np.count_nonzero(~np.isclose(a, b, atol=atol, rtol=rtol))
    r = compare_arrays("t", a, b, 1e-5, 1e-5, "elemwise")
    assert not r.passed
    assert compare_arrays("t", a, b, r.needed_atol * (1 + 1e-9), 1e-5, "elemwise").passed
    assert not compare_arrays("t", a, b, r.needed_atol * 0.99, 1e-5, "elemwise").passed
    assert compare_arrays("t", a, b, 1e-5, r.needed_rtol * (1 + 1e-9), "elemwise").passed
    assert not compare_arrays("t", a, b, 1e-5, r.needed_rtol * 0.99, "elemwise").passed


@pytest.mark.parametrize("stat", [s for s in ERROR_STATS if s != "elemwise"])
def test_statistics_pass_when_abs_or_rel_statistic_is_within_tolerance(stat):
    b = np.array([1.0, 2.0, 4.0, 100.0], np.float32)
    a = b + np.array([0.1, 0.2, 0.4, 10.0], np.float32)       # rel error 0.1 everywhere
    r = compare_arrays("t", a, b, 1e-5, 1e-5, stat)
    reduce = {"max": np.max, "mean": np.mean, "median": np.median}[stat]
    abs_stat = float(reduce(np.abs(a.astype(np.float64) - b)))
    assert r.max_rel == pytest.approx(0.1, rel=1e-5) and getattr(r, f"{stat}_abs") == pytest.approx(abs_stat)
    assert not r.passed and r.needed_atol == pytest.approx(abs_stat) and r.needed_rtol == pytest.approx(0.1, 1e-5)
    assert compare_arrays("t", a, b, 0.0, 0.1001, stat).passed          # rel alone is enough
    assert compare_arrays("t", a, b, abs_stat * 1.001, 0.0, stat).passed  # abs alone is enough
    assert not compare_arrays("t", a, b, abs_stat * 0.99, 0.099, stat).passed


def test_non_finite_mismatches_are_reported_and_fail():
    b = np.array([1.0, np.nan, np.inf, 3.0])
    same = compare_arrays("t", b.copy(), b, 1e-5, 1e-5, "max")
    assert same.passed and same.nonfinite_mismatches == 0
    r = compare_arrays("t", np.array([1.0, 2.0, np.inf, np.nan]), b, 1.0, 1.0, "max")
    assert not r.passed and r.nonfinite_mismatches == 2 and r.max_abs == 0
    assert r.needed_atol == r.needed_rtol == float("inf")
    assert r.to_dict()["needed_atol"] is None


def test_shape_dtype_and_integer_outputs():
    assert compare_arrays("t", np.zeros((2, 3)), np.zeros((3, 2)), 1, 1, "elemwise").problem == \
        "shape (2, 3) vs reference (3, 2)"
    assert "dtype float32 vs reference float64" in compare_arrays(
        "t", np.zeros(2, np.float32), np.zeros(2), 1, 1, "elemwise").problem
    r = compare_arrays("t", np.array([1, 5, 0]), np.array([1, 2, 0]), 0, 0, "elemwise")
    assert not r.passed and r.max_abs == 3 and r.worst_index == (1,) and r.worst_values == (5.0, 2.0)
    assert r.needed_rtol == pytest.approx(1.5) and r.needed_atol == 3


def test_log_histogram_counts_every_value_in_decade_bins():
    values = np.array([0.0, 0.0, 1e-7, 3e-7, 1e-5, 0.5, 2.0, np.inf])
    rows = log_histogram(values)
    assert rows[0] == (0.0, 0.0, 2) and rows[-1][2] == 1 and rows[-1][0] == float("inf")
    assert sum(c for _, _, c in rows) == values.size
    for lo, hi, count in rows[1:-1]:
        assert hi == pytest.approx(lo * 10)
        assert count == np.count_nonzero((values >= lo) & (values < hi))
    wide = log_histogram(np.logspace(-30, 10, 41), max_bins=12)
    assert len(wide) <= 12 and sum(c for _, _, c in wide) == 41


# --------------------------------------------------------------------------- per engine
def test_per_engine_reference_matches_native_segments_in_graph_order(models):
    report = compare_saved_models(models["src"], models["converted"], batch_size=3, per_engine=True,
                                  engine_executor="reference")
    assert report.passed, report.format()
    assert report.engine_executor == "reference" and report.first_divergent_engine is None
    assert [e.engine for e in report.engines] == ENGINES
    assert [o.shape for e in report.engines for o in e.outputs] == [(3, 16), (3, 4)]
    assert "StatefulPartitionedCall/mul:0" in report.engines[0].outputs[0].name
    assert "plan's NumPy reference executor" in report.format()


@pytest.mark.parametrize("corrupted", ENGINES)
def test_per_engine_names_the_engine_with_a_corrupted_plan(models, corrupted):
    report = compare_saved_models(models["src"], models["corrupted"][corrupted], batch_size=3, per_engine=True,
                                  engine_executor="reference")
    assert not report.passed and report.first_divergent_engine == corrupted
    assert {e.engine: e.passed for e in report.engines} == {e: e != corrupted for e in ENGINES}
    assert f"first divergent engine: {corrupted}" in report.format().splitlines()[-1]


def test_per_engine_reports_an_engine_that_cannot_run(models):
    report = compare_saved_models(models["src"], models["garbage"], batch_size=2, per_engine=True,
                                  engine_executor="reference")
    assert not report.passed and report.first_divergent_engine == ENGINES[1]
    assert report.engines[0].passed and "PlanFormatError" in report.engines[1].problem
    assert f"engine '{ENGINES[1]}' (node " in report.format()


def test_per_engine_needs_engines(models):
    with pytest.raises(CompareError, match="has no TftrtLiteEngine nodes"):
        compare_saved_models(models["src"], models["src"], batch_size=1, per_engine=True,
                             engine_executor="reference")


def test_gpu_engine_executor_without_a_gpu_is_refused(models):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(CompareError, match="needs a GPU"):
        compare_saved_models(models["src"], models["converted"], batch_size=1, per_engine=True,
                             engine_executor="gpu")


@pytest.mark.gpu
def test_per_engine_on_the_gpu_runs_the_op_and_catches_a_corrupted_plan(models):
    tol = dict(atol=1e-3, rtol=1e-3)   # TF32 math on both sides
    report = compare_saved_models(models["src"], models["converted"], batch_size=3, per_engine=True, **tol)
    assert report.passed and report.engine_executor == "gpu", report.format()
    assert report.converted_engine_calls == 2 and report.converted_fallback_calls == 0
    bad = compare_saved_models(models["src"], models["corrupted"][ENGINES[1]], batch_size=3, per_engine=True,
                               **tol)
    assert not bad.outputs[1].passed and bad.first_divergent_engine == ENGINES[1], bad.format()


# --------------------------------------------------------------------------- CLI
def test_cli_exit_0_prints_the_table_last(models, capsys):
    assert cli.main(["compare", models["src"], models["converted"], "--batch", "2"]) == 0
    text = capsys.readouterr().out
    lines = text.rstrip().splitlines()
    assert lines[-1].startswith("PASSED: 2/2 outputs match")
    assert lines[-5].split()[:2] == ["Tensor", "Shape"] and lines[-3].startswith("h ")
    assert "histogram" not in text
    assert cli.main(["compare", models["src"], models["converted"], "--batch", "2", "--histogram"]) == 0
    assert "output 'y': passed" in capsys.readouterr().out


def test_cli_exit_1_on_mismatch_and_writes_json(models, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = cli.main(["compare", models["src"], models["perturbed"], "--batch", "2", "--seed", "7",
                     "--check-error-stat", "max", "--json", str(out)])
    assert code == 1
    report = json.loads(out.read_text())
    assert report["passed"] is False and report["inputs"]["source"] == "random, seed 7"
    assert report["tolerance"] == {"atol": 1e-5, "rtol": 1e-5, "error_stat": "max"}
    assert {o["name"]: o["passed"] for o in report["outputs"]} == {"h": True, "y": False}
    assert report["outputs"][1]["needed_atol"] > 1e-3 and report["per_engine"] is None
    assert "rel error histogram" in capsys.readouterr().out


def test_cli_per_engine_exit_1_names_the_engine(models, capsys):
    code = cli.main(["compare", models["src"], models["corrupted"][ENGINES[0]], "--batch", "2", "--per-engine",
                     "--engine-executor", "reference"])
    assert code == 1
    assert capsys.readouterr().out.rstrip().endswith(f"first divergent engine: {ENGINES[0]}")


@pytest.mark.parametrize("args, message", [
    (["--batch", "2", "--inputs", "/no/such.npz"], "inputs file '/no/such.npz' does not exist"),
    ([], "give a batch size"),
    (["--batch", "2", "--signature", "nope"], "no signature 'nope'"),
])
def test_cli_exit_2_on_bad_usage(models, capsys, args, message):
    assert cli.main(["compare", models["src"], models["converted"]] + args) == 2
    assert message in capsys.readouterr().err


def test_cli_exit_2_on_a_missing_model_and_on_bad_flags(models, capsys):
    assert cli.main(["compare", "/no/such/model", models["converted"], "--batch", "1"]) == 2
    assert "'/no/such/model' does not exist" in capsys.readouterr().err
    for bad in (["--check-error-stat", "p99"], ["--seed", "1", "--inputs", "x.npz"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["compare", models["src"], models["converted"]] + bad)
        assert e.value.code == 2

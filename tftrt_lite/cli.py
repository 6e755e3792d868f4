"""``tftrt-lite``: convert, inspect, run and compare SavedModels from the shell.

``run`` is ``saved_model_cli run`` with the op library loaded, so a converted model
can be tried without writing Python. ``compare`` checks a converted model's outputs
against the original's and exits 0 (match), 1 (mismatch) or 2 (bad usage), so scripts
and CI can gate on it.

``bench`` times a converted model on the GPU and, with ``--profile``, every engine's
plan step by step (``tftrt_lite.profile``); it exits 0, or 2 on bad usage or when
there is nothing to measure (no GPU).

``tune`` runs a converted model at the batch sizes you serve so its engines time their
library algorithms on this GPU, and saves a copy that carries the winners
(``tftrt_lite.tune``, docs/tuning.md); it exits 0, or 2 on bad usage or without a GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

import numpy as np


def _convert(args) -> int:
    from tftrt_lite.converter import Converter
    from tftrt_lite.errors import TftrtLiteError

    if args.save_calibration_table and args.precision.upper() != "INT8":
        raise SystemExit("--save-calibration-table: only an INT8 conversion has a calibration table")
    if args.save_calibration_table and args.no_calibration:
        raise SystemExit("--save-calibration-table: --no-calibration measures no ranges, so there is no table")
    try:
        conv = Converter(input_saved_model_dir=args.input_dir,
                         input_saved_model_tags=args.tags.split(",") if args.tags else None,
                         input_saved_model_signature_key=args.signature,
                         precision_mode=args.precision,
                         minimum_segment_size=args.min_segment_size,
                         precision_overrides=_parse_overrides(args.precision_override),
                         allow_tf32=not args.no_tf32, calibration_algorithm=args.calibration_algorithm,
                         calibration_table=args.calibration_table, use_calibration=not args.no_calibration)
        conv.convert(calibration_input_fn=_calibration_batches(args.calibration_data, args.calibration_batch_size))
    except (ValueError, TftrtLiteError) as e:  # bad options or data: say which, no traceback
        print(f"tftrt-lite convert: error: {e}", file=sys.stderr)
        return 2
    out = conv.save(args.output_dir, keep_native_segments=not args.no_native_segments)
    if args.save_calibration_table:
        conv.calibration_table.save(args.save_calibration_table)
    conv.summary()
    print(f"saved: {out}")
    return 0


def _calibration_batches(path: Optional[str], batch_size: int):
    """``calibration_input_fn`` over the arrays of an .npz (one per signature input), or None."""
    if path is None:
        return None
    if batch_size < 1:
        raise SystemExit(f"--calibration-batch-size must be >= 1, got {batch_size}")
    if not os.path.exists(path):
        raise SystemExit(f"--calibration-data: no such file {path!r}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    sizes = {len(a) for a in arrays.values() if a.ndim}
    if len(sizes) != 1:
        raise SystemExit(f"--calibration-data {path!r}: the arrays must share their first dimension, "
                         f"got {({k: a.shape for k, a in arrays.items()})}")
    (n,) = sizes
    return lambda: ({k: a[i:i + batch_size] for k, a in arrays.items()} for i in range(0, n, batch_size))


def _parse_overrides(specs: List[str]) -> Dict[str, str]:
    overrides = {}
    for spec in specs or []:
        pattern, sep, precision = spec.rpartition("=")
        if not sep or not pattern or not precision:
            raise SystemExit(f"--precision-override expects REGEX=PRECISION (e.g. 'attn.*=FP32'), got {spec!r}")
        overrides[pattern] = precision.upper()
    return overrides


def _inspect(args) -> int:
    from tftrt_lite import report as report_lib
    from tftrt_lite.save import read_report

    report = read_report(args.model_dir)
    if report is None:
        engines = report_lib.engines_in_saved_model(args.model_dir)
        print(f"{args.model_dir}: no tftrt_lite conversion report; "
              f"{len(engines)} TftrtLiteEngine node(s) found: {engines}")
        return 1 if not engines else 0
    report_lib.print_summary(report, detailed=args.detailed)
    return 0


def _parse_inputs(specs: List[str]) -> Dict[str, np.ndarray]:
    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--input expects name=file.npy, got {spec!r}")
        if not os.path.exists(path):
            raise SystemExit(f"--input {name}: no such file {path!r}")
        feeds[name] = np.load(path, allow_pickle=False)
    return feeds


def _run(args) -> int:
    import tensorflow as tf

    import tftrt_lite  # noqa: F401  (registers the TftrtLiteEngine op)

    loaded = tf.saved_model.load(args.model_dir, tags=args.tags.split(",") if args.tags else None)
    if args.signature not in loaded.signatures:
        raise SystemExit(f"signature {args.signature!r} not in {args.model_dir!r}; "
                         f"signatures: {sorted(loaded.signatures.keys())}")
    func = loaded.signatures[args.signature]
    feeds = _parse_inputs(args.input)
    expected = sorted(func.structured_input_signature[1])
    if sorted(feeds) != expected:
        raise SystemExit(f"signature {args.signature!r} takes inputs {expected}; got {sorted(feeds)}")
    outputs = func(**{k: tf.constant(v) for k, v in feeds.items()})
    if args.outdir:
        os.makedirs(args.outdir, exist_ok=True)
    for key in sorted(outputs):
        value = outputs[key].numpy()
        print(f"Result for output key {key}:\n{value}")
        if args.outdir:
            np.save(os.path.join(args.outdir, f"{key}.npy"), value)
    return 0


def _compare(args) -> int:
    from tftrt_lite.compare import compare_saved_models
    from tftrt_lite.errors import TftrtLiteError

    try:
        report = compare_saved_models(
            args.original_dir, args.converted_dir, signature_key=args.signature, inputs=args.inputs,
            seed=0 if args.seed is None else args.seed, batch_size=args.batch, atol=args.atol, rtol=args.rtol,
            error_stat=args.check_error_stat, per_engine=args.per_engine, engine_executor=args.engine_executor)
    except TftrtLiteError as e:
        print(f"tftrt-lite compare: error: {e}", file=sys.stderr)
        return 2
    print(report.format(histograms=args.histogram))
    if args.json:
        try:
            report.write_json(args.json)
        except OSError as e:
            print(f"tftrt-lite compare: error: cannot write --json {args.json!r}: {e}", file=sys.stderr)
            return 2
    return 0 if report.passed else 1


def _bench(args) -> int:
    from tftrt_lite.errors import TftrtLiteError
    from tftrt_lite.profile import profile_saved_model

    def error(message: str) -> int:
        print(f"tftrt-lite bench: error: {message}", file=sys.stderr)
        return 2

    if args.inputs and (args.batch is not None or args.seed is not None):
        return error("--inputs gives the batch and the values; do not combine it with --batch or --seed")
    if args.png and not args.profile:
        return error("--png plots the per-step profile; add --profile")
    try:
        report = profile_saved_model(
            args.model_dir, batch=1 if args.batch is None else args.batch, signature_key=args.signature,
            inputs=args.inputs, seed=0 if args.seed is None else args.seed, repeats=args.repeats,
            iters=args.iters, per_engine=args.profile)
    except TftrtLiteError as e:
        return error(str(e))
    print(report.format(top=args.top))
    for flag, path, write in (("--json", args.json, report.to_json),
                              ("--png", args.png, lambda p: report.save_png(p, top=args.top))):
        if path:
            try:
                write(path)
            except (OSError, TftrtLiteError) as e:
                return error(f"cannot write {flag} {path!r}: {e}")
            print(f"wrote {path}")
    return 0


def _batch_sizes(text: str) -> List[int]:
    """``--batch 1,32,128`` as ints (argparse reports a bad value as a usage error)."""
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expects positive batch sizes separated by commas (e.g. 1,32,128), "
                                         f"got {text!r}")
    return sizes


def _tune(args) -> int:
    from tftrt_lite.errors import TftrtLiteError
    from tftrt_lite.tune import tune_saved_model

    try:
        report = tune_saved_model(args.model_dir, args.output_dir, batch_sizes=args.batch,
                                  signature_key=args.signature, seed=args.seed)
    except TftrtLiteError as e:
        print(f"tftrt-lite tune: error: {e}", file=sys.stderr)
        return 2
    for engine, lines in sorted(report.engine_tactics.items()):
        print(f"{engine}: {lines} tactic(s)")
    print("tactic counts: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
    print(f"saved: {report.output_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tftrt-lite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a SavedModel")
    c.add_argument("input_dir")
    c.add_argument("output_dir")
    c.add_argument("--precision", default="FP32", help="FP32, FP16, BF16 or INT8")
    c.add_argument("--precision-override", action="append", metavar="REGEX=PRECISION",
                   help="keep engine nodes whose name matches REGEX in PRECISION (repeatable)")
    c.add_argument("--no-tf32", action="store_true", help="exact FP32 math (no TF32 tensor cores)")
    c.add_argument("--calibration-data", metavar="FILE.npz",
                   help="INT8: calibration inputs, one array per signature input (name = array key), "
                        "split into batches along the first axis")
    c.add_argument("--calibration-batch-size", type=int, default=32, help="INT8: samples per calibration batch")
    c.add_argument("--calibration-algorithm", default="entropy", help="INT8: entropy, percentile or max")
    c.add_argument("--calibration-table", metavar="FILE.json",
                   help="INT8: reuse a saved calibration table instead of calibrating")
    c.add_argument("--save-calibration-table", metavar="FILE.json",
                   help="INT8: also write the calibration table to this file")
    c.add_argument("--no-calibration", action="store_true",
                   help="INT8: take the quantization from the model's fake-quant nodes (quantization-aware "
                        "training) instead of calibrating (TF-TRT's use_calibration=False)")
    c.add_argument("--min-segment-size", type=int, default=3)
    c.add_argument("--signature", default=None, help="convert only this signature (default: all)")
    c.add_argument("--tags", default=None, help="comma-separated MetaGraph tags (default: serve)")
    c.add_argument("--no-native-segments", action="store_true",
                   help="drop the native fallback copy of each engine (smallest model; needs the GPU engine)")
    c.set_defaults(func=_convert)

    i = sub.add_parser("inspect", help="show the engines and conversion report of a converted model")
    i.add_argument("model_dir")
    i.add_argument("--detailed", action="store_true", help="list the op types each engine absorbed")
    i.set_defaults(func=_inspect)

    r = sub.add_parser("run", help="run a signature on .npy inputs (saved_model_cli run with the op loaded)")
    r.add_argument("model_dir")
    r.add_argument("--signature", default="serving_default")
    r.add_argument("--tags", default=None)
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    r.add_argument("--outdir", default=None, help="also write each output as OUTDIR/<key>.npy")
    r.set_defaults(func=_run)

    from tftrt_lite.compare import ENGINE_EXECUTORS, ERROR_STATS

    m = sub.add_parser("compare", help="compare a converted model's outputs with the original's on the same inputs")
    m.add_argument("original_dir")
    m.add_argument("converted_dir")
    m.add_argument("--signature", default=None, help="signature key (default: serving_default)")
    source = m.add_mutually_exclusive_group()   # --seed defaults to None so "--seed 0 --inputs f" is refused too
    source.add_argument("--seed", type=int, default=None, help="seed of the random inputs (default 0)")
    source.add_argument("--inputs", default=None, metavar="FILE.npz", help="inputs keyed by signature input name")
    m.add_argument("--batch", type=int, default=None, help="size of an unknown batch dim of random inputs")
    m.add_argument("--atol", type=float, default=1e-5)
    m.add_argument("--rtol", type=float, default=1e-5)
    m.add_argument("--check-error-stat", choices=ERROR_STATS, default="elemwise",
                   help="elemwise: every element within atol + rtol*|ref|; max/mean/median: that statistic "
                        "of the abs error <= atol or of the rel error <= rtol")
    m.add_argument("--per-engine", action="store_true",
                   help="also compare every engine with its native segment and name the first that diverges")
    m.add_argument("--engine-executor", choices=ENGINE_EXECUTORS, default="auto",
                   help="engine side of --per-engine: the op on the GPU or the plan's reference executor "
                        "(auto: the GPU when there is one)")
    m.add_argument("--histogram", action="store_true", help="print error histograms of passing outputs too")
    m.add_argument("--json", default=None, metavar="OUT.json", help="also write the report as JSON")
    m.set_defaults(func=_compare)

    from tftrt_lite.profile import DEFAULT_ITERS, DEFAULT_REPEATS

    b = sub.add_parser("bench", help="time a converted model on the GPU; --profile: each engine step by step")
    b.add_argument("model_dir")
    b.add_argument("--signature", default="serving_default")
    b.add_argument("--batch", type=int, default=None, help="size of an unknown batch dim of random inputs (default 1)")
    b.add_argument("--seed", type=int, default=None, help="seed of the random inputs (default 0)")
    b.add_argument("--inputs", default=None, metavar="FILE.npz", help="inputs keyed by signature input name")
    b.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                   help="timings per end-to-end number, and runs per step time (median)")
    b.add_argument("--iters", type=int, default=DEFAULT_ITERS, help="back-to-back calls per end-to-end timing")
    b.add_argument("--profile", action="store_true",
                   help="also profile every engine's plan step by step through the executor (needs CuPy)")
    b.add_argument("--top", type=int, default=15, help="steps shown per engine (and plotted by --png)")
    b.add_argument("--json", default=None, metavar="OUT.json", help="also write the report as JSON")
    b.add_argument("--png", default=None, metavar="OUT.png", help="with --profile: bar chart of the slowest steps")
    b.set_defaults(func=_bench)

    t = sub.add_parser("tune", help="time a converted model's engines on this GPU and save it with the winners")
    t.add_argument("model_dir")
    t.add_argument("output_dir", help="where the tuned model goes (may be MODEL_DIR)")
    t.add_argument("--batch", type=_batch_sizes, default=None, metavar="N[,N...]",
                   help="batch sizes you serve, e.g. 1,32,128 (fill an unknown batch dim of random inputs)")
    t.add_argument("--signature", default=None, help="run only this signature (default: every signature)")
    t.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    t.set_defaults(func=_tune)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""``tftrt-lite``: convert, inspect and run SavedModels from the shell.

``run`` is ``saved_model_cli run`` with the op library loaded, so a converted model
can be tried without writing Python.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

import numpy as np


def _convert(args) -> int:
    from tftrt_lite.converter import Converter

    conv = Converter(input_saved_model_dir=args.input_dir,
                     input_saved_model_tags=args.tags.split(",") if args.tags else None,
                     input_saved_model_signature_key=args.signature,
                     precision_mode=args.precision,
                     minimum_segment_size=args.min_segment_size)
    conv.convert()
    out = conv.save(args.output_dir, keep_native_segments=not args.no_native_segments)
    conv.summary()
    print(f"saved: {out}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tftrt-lite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a SavedModel")
    c.add_argument("input_dir")
    c.add_argument("output_dir")
    c.add_argument("--precision", default="FP32")
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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

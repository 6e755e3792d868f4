"""Side-by-side latency: TF native, TF XLA and tftrt_lite, in one process on one GPU.

Run (GPU machine): python benchmarks/bench.py --precisions FP32,FP16 --out benchmarks/results/DATE_DEVICE.json

For each model and batch it measures the median ms/batch of
  tf-native   the Keras model under tf.function,
  tf-xla      the same under tf.function(jit_compile=True),
  tftrt_lite  the converted SavedModel's serving signature, once per ``--precisions`` entry,
with native fallback disabled (TFTRT_LITE_ALLOW_NATIVE_FALLBACK=0), so a tftrt_lite row is
the engine or an error, never a silent fallback. Inputs are fresh random tensors resident on
the GPU; each timing runs `iters` calls back to back and synchronises once, repeated
`repeats` times; the median of the repeats is reported. Writes a JSON list of records
(model, batch, precision, runner, ms, device, date, ...) and prints a table last.
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TFTRT_LITE_ALLOW_NATIVE_FALLBACK"] = "0"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import model_zoo  # noqa: E402
import tftrt_lite  # noqa: E402

#: (model, builder, builder kwargs, batches)
CONFIGS = {
    "resnet50": (model_zoo.resnet50, {"image_size": 224}, (1, 32, 128)),
    "mobilenetv2": (model_zoo.mobilenetv2, {"image_size": 224}, (1, 128)),
    "bert_base_s128": (model_zoo.bert_base, {"seq_len": 128}, (1, 32)),
}


def _inputs(model, batch, seed):
    rng = np.random.default_rng(seed)
    spec = model.inputs[0]
    shape = (batch,) + tuple(spec.shape[1:])
    if spec.dtype in ("int32", "int64"):
        value = rng.integers(0, 1000, shape).astype(spec.dtype)
    else:
        value = rng.standard_normal(shape).astype(np.float32)
    with tf.device("/GPU:0"):
        return tf.constant(value)


def _time(fn, x, iters, repeats):
    out = fn(x)
    _sync(out)
    for _ in range(3):
        _sync(fn(x))
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            out = fn(x)
        _sync(out)
        samples.append((time.perf_counter() - t) * 1e3 / iters)
    return float(np.median(samples)), float(np.min(samples))


def _sync(out):
    for v in tf.nest.flatten(out):
        v.numpy()


def bench_model(name, args, device, date):
    builder, kwargs, batches = CONFIGS[name]
    if args.batches:
        batches = tuple(b for b in batches if b in args.batches)
    records = []
    keras_model = model_zoo.randomize_weights(builder(**kwargs))
    work = tempfile.mkdtemp(prefix=f"bench_{name}_")
    src = os.path.join(work, "model")
    model_zoo.export(keras_model, src, "input_ids" if "bert" in name else "images")

    runners = {
        "tf-native": ("FP32", tf.function(lambda x: keras_model(x, training=False)), None),
        "tf-xla": ("FP32", tf.function(lambda x: keras_model(x, training=False), jit_compile=True), None),
    }
    for precision in args.precisions:
        t0 = time.perf_counter()
        # one captured CUDA graph per benchmarked batch size, as a server of these sizes would configure
        conv = tftrt_lite.Converter(input_saved_model_dir=src, precision_mode=precision,
                                    maximum_cached_engines=len(batches))
        # INT8: ranges from one random batch (random weights have no real data to calibrate on)
        calibration = (lambda: (_inputs(keras_model, 8, seed=1000 + k) for k in range(1))) \
            if precision == "INT8" else None
        conv.convert(calibration_input_fn=calibration)
        out_dir = conv.save(os.path.join(work, f"converted_{precision}"))
        convert_s = time.perf_counter() - t0
        converted = tf.saved_model.load(out_dir).signatures["serving_default"]
        arg = next(iter(converted.structured_input_signature[1]))
        runners[f"tftrt_lite/{precision}"] = (precision, lambda x, f=converted, a=arg: f(**{a: x}), convert_s)
    for batch in batches:
        x = _inputs(keras_model, batch, seed=batch)
        row = []
        for key, (precision, fn, convert_s) in runners.items():
            runner = key.split("/")[0]
            rec = {"model": name, "batch": batch, "precision": precision, "runner": runner,
                   "device": device, "date": date}
            try:
                rec["ms"], rec["ms_min"] = _time(fn, x, args.iters, args.repeats)
            except Exception as e:  # one runner failing must not lose the others' numbers
                rec["ms"], rec["error"] = None, f"{type(e).__name__}: {str(e)[:400]}"
                traceback.print_exc()
            if runner == "tftrt_lite":
                rec["convert_s"] = round(convert_s, 2)
                rec["stats"] = tftrt_lite.stats()
            row.append(rec)
            records.append(rec)
        xla = next(r for r in row if r["runner"] == "tf-xla").get("ms")
        for rec in row:
            if rec.get("ms") and xla:
                rec["ratio_vs_xla"] = round(rec["ms"] / xla, 3)
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--batches", type=lambda s: tuple(int(b) for b in s.split(",")), default=None)
    parser.add_argument("--precisions", type=lambda s: [p.strip().upper() for p in s.split(",")],
                        default=["FP32"], help="tftrt_lite precisions to convert and time, e.g. FP32,FP16,BF16")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise SystemExit("benchmarks need a GPU: TensorFlow sees none")
    device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    date = datetime.date.today().isoformat()
    records = []
    for name in args.models.split(","):
        records += bench_model(name, args, device, date)
        with open(args.out, "w") as f:  # keep what is measured even if a later model fails
            json.dump(records, f, indent=1)

    print(f"\n{device}, {date}, median ms/batch (ratio vs XLA)")
    precisions = list(args.precisions)
    print(f"{'model':<16}{'batch':>6}  {'tf-native':>10}{'tf-xla':>10}" + "".join(f"{p:>18}" for p in precisions))
    keyed = {(r["model"], r["batch"], r["runner"], r["precision"]): r for r in records}
    for model, batch in sorted({(r["model"], r["batch"]) for r in records}):
        cells = []
        for runner, precision in [("tf-native", "FP32"), ("tf-xla", "FP32")] + [("tftrt_lite", p) for p in precisions]:
            r = keyed[(model, batch, runner, precision)]
            cell = "error" if r.get("ms") is None else f"{r['ms']:.2f}"
            if runner == "tftrt_lite" and r.get("ratio_vs_xla"):
                cell += f" ({r['ratio_vs_xla']:.2f}x)"
            cells.append(cell)
        print(f"{model:<16}{batch:>6}  {cells[0]:>10}{cells[1]:>10}" + "".join(f"{c:>18}" for c in cells[2:]))

if __name__ == "__main__":
    main()

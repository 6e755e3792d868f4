"""Build a small SavedModel, convert it, check the result and time it.

Run: python examples/demo.py [--model mobilenetv2|resnet50|vgg16|bert_encoder] [--batch 8]

What it shows, in order:
1. conversion: the summary (engines, ops absorbed, what stayed native);
2. engine math: every engine's plan, executed by the NumPy reference executor, against
   TensorFlow running the segment it replaced (TFTRT_LITE_VERIFY=1) — this is the
   engine's own arithmetic, checked on any machine;
3. the converted SavedModel loaded fresh and compared with the original on random input;
4. who ran: the GPU engine or the native fallback (on a machine without a GPU, the
   fallback runs, and the demo says so);
5. median latency of the original and the converted model.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TFTRT_LITE_VERIFY"] = "1"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import tensorflow as tf  # noqa: E402

import model_zoo  # noqa: E402
import tftrt_lite  # noqa: E402


def median_ms(fn, feeds, iters=20):
    fn(**feeds)  # warm-up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        out = fn(**feeds)
        for v in out.values():
            v.numpy()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2", choices=sorted(model_zoo.BUILDERS))
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="tftrt_lite_demo_")
    src = model_zoo.build_saved_model(args.model, work)
    print(f"built {args.model} SavedModel at {src}")

    t = time.perf_counter()
    conv = tftrt_lite.Converter(input_saved_model_dir=src)
    conv.convert()  # TFTRT_LITE_VERIFY=1: each engine checked by the reference executor
    out = conv.save(os.path.join(work, f"{args.model}_lite"))
    print(f"converted and saved in {time.perf_counter() - t:.1f} s; "
          f"every engine matched its native segment through the reference executor")
    conv.summary()

    feeds = {k: tf.constant(v) for k, v in model_zoo.random_inputs(args.model, args.batch, seed=7).items()}
    original = tf.saved_model.load(src).signatures["serving_default"]
    converted = tf.saved_model.load(out).signatures["serving_default"]
    tftrt_lite.reset_stats()
    want, got = original(**feeds), converted(**feeds)
    for key in sorted(want):
        err = float(np.max(np.abs(want[key].numpy() - got[key].numpy())))
        print(f"output {key}: max |converted - original| = {err:.2e}")
        if not np.allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-5):
            raise SystemExit(f"FAIL: output {key} differs beyond 1e-5")

    stats = tftrt_lite.stats()
    gpus = tf.config.list_physical_devices("GPU")
    if stats.get("fallback_calls", 0):
        why = "no GPU on this machine" if not gpus else "the GPU engine could not run"
        print(f"engines ran through native fallback ({why}); stats: {stats}")
    else:
        print(f"engines ran on the GPU; stats: {stats}")

    print(f"latency, batch {args.batch}: original {median_ms(original, feeds):.2f} ms, "
          f"converted {median_ms(converted, feeds):.2f} ms "
          f"({'GPU' if gpus else 'CPU'}, median of 20)")


if __name__ == "__main__":
    main()

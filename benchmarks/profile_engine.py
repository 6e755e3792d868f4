"""Where an engine's time goes: per-step GPU times, and end-to-end latency with and without CUDA graphs.

Run (GPU machine): python benchmarks/profile_engine.py --model bert_base_s128 --batch 1 --out gpu_out/profile.json

The model of a zoo config is converted with ``tftrt_lite.Converter`` (TensorFlow is kept
off the GPU, so conversion takes no GPU memory) and every engine it builds runs through
the executor's C harness on CuPy buffers holding fresh random inputs:

* per step: the plan runs uncaptured ``--repeats`` times with a CUDA event pair around
  every step; the median microseconds of each step (its GPU time, launch gaps
  included) is reported with the step's name, kind (launch / gemm / conv) and kernel,
  its share of the sum over steps, and its achieved TFLOP/s, GB/s and share of the H200
  roofline from the step's FLOPs and bytes (``tftrt_lite.engine.costs``);
* end to end: ``--iters`` back-to-back calls after a warm-up, host work included, once
  with CUDA graphs (the executor's default: warm-up, capture, then replays) and once
  with capture off. Their difference is the host-side launch cost the graph removes;
  the per-step sum is the GPU time left to cut.

Writes one JSON record per engine and prints the top 15 steps and the totals by kind.
"""
import argparse
import collections
import datetime
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "runtime"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")  # conversion runs on the CPU; the GPU is CuPy's and the executor's

import model_zoo  # noqa: E402
import tftrt_lite  # noqa: E402
from test_executor_gpu import Harness, random_feeds  # noqa: E402
from tftrt_lite.engine.costs import roofline_share, step_costs, symbol_values  # noqa: E402
from tftrt_lite.engine.plan import ConvStep, GemmStep, LaunchStep  # noqa: E402

#: zoo config -> (builder, builder kwargs, signature input name)
CONFIGS = {
    "resnet50": (model_zoo.resnet50, {"image_size": 224}, "images"),
    "mobilenetv2": (model_zoo.mobilenetv2, {"image_size": 224}, "images"),
    "bert_base_s128": (model_zoo.bert_base, {"seq_len": 128}, "input_ids"),
}


def convert(config, precision, work):
    """{engine name: BuiltEngine} of the config's model converted at ``precision``."""
    builder, kwargs, input_name = CONFIGS[config]
    src = model_zoo.export(model_zoo.randomize_weights(builder(**kwargs)), os.path.join(work, "model"), input_name)
    conv = tftrt_lite.Converter(input_saved_model_dir=src, precision_mode=precision)
    conv.convert()
    return conv.engines()


def step_rows(engine, step_us, symbols):
    """One record per plan step, in plan order, with its work and achieved rates."""
    plan = engine.plan
    total = sum(step_us) or 1.0
    costs = step_costs(plan, symbols)
    rows = []
    for index, (step, us, cost) in enumerate(zip(plan.steps, step_us, costs)):
        if isinstance(step, LaunchStep):
            kind, kernel = "launch", plan.kernels[step.kernel].name
        elif isinstance(step, GemmStep):
            kind, kernel = "gemm", "cublasLtMatmul"
        elif isinstance(step, ConvStep):
            kind, kernel = "conv", "cudnnConvolutionForward"
        else:
            raise TypeError(f"step #{index} {step.name!r} is a {type(step).__name__}, which this profile cannot name")
        rows.append({"index": index, "name": step.name, "kind": kind, "kernel": kernel, "us": round(us, 2),
                     "share": round(us / total, 4), **cost,
                     "tflops": round(cost["flops"] / (us * 1e6), 2) if us > 0 else None,
                     "gbps": round(cost["bytes"] / (us * 1e3), 1) if us > 0 else None,
                     "roofline": round(roofline_share(step, cost, us * 1e-6), 3) if us > 0 else None})
    return rows


def profile_engine(harness, name, built, batch, repeats, iters, seed):
    import cupy

    engine = built.engine
    feeds = random_feeds(engine, batch, np.random.default_rng(seed))
    inputs = [cupy.asarray(feeds[n]) for n in engine.input_names]
    plan_bytes = engine.serialize()
    with_graphs = harness.create(plan_bytes, max_cached_shapes=1)
    uncaptured = harness.create(plan_bytes, max_cached_shapes=0)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        out_dtypes = [np.dtype(engine.graph.tensor(o).dtype) for o in engine.output_names]
        uncaptured.run(inputs, out_dtypes, stream)  # loads modules and weights, chooses library algorithms
        symbols = symbol_values(engine.plan, [feeds[n].shape for n in engine.input_names])
        rows = step_rows(engine, uncaptured.profile(inputs, repeats, stream), symbols)
        before = harness.cuda_graph_counts()
        graph_ms = with_graphs.time_calls(inputs, warmup=3, iters=iters, stream=stream)
        graph_counts = {k: v - before[k] for k, v in harness.cuda_graph_counts().items()}
        plain_ms = uncaptured.time_calls(inputs, warmup=3, iters=iters, stream=stream)
    by_kind = collections.defaultdict(lambda: {"steps": 0, "us": 0.0})
    for row in rows:
        by_kind[row["kind"]]["steps"] += 1
        by_kind[row["kind"]]["us"] = round(by_kind[row["kind"]]["us"] + row["us"], 2)
    return {
        "engine": name,
        "steps": rows,
        "step_sum_us": round(sum(r["us"] for r in rows), 2),
        "by_kind": dict(by_kind),
        "e2e_ms": {"cuda_graphs": round(graph_ms, 4), "uncaptured": round(plain_ms, 4)},
        # captured == 1 and replayed >= iters: the graph path really served the timed calls
        "cuda_graph_counts": graph_counts,
    }


def print_report(record, top):
    print(f"\n{record['model']} b{record['batch']} {record['precision']} engine {record['engine']}: "
          f"{len(record['steps'])} steps, {record['step_sum_us']:.1f} us summed over steps")
    print(f"{'#':>5} {'kind':<7}{'us':>9}{'share':>8}{'TFLOP/s':>9}{'GB/s':>8}{'roof':>6}  name / kernel")
    for row in sorted(record["steps"], key=lambda r: -r["us"])[:top]:
        print(f"{row['index']:>5} {row['kind']:<7}{row['us']:>9.1f}{100 * row['share']:>7.1f}%"
              f"{row['tflops'] or 0:>9.1f}{row['gbps'] or 0:>8.0f}{100 * (row['roofline'] or 0):>5.0f}%  "
              f"{row['name']} / {row['kernel']}")
    for kind, total in sorted(record["by_kind"].items(), key=lambda kv: -kv[1]["us"]):
        print(f"  {kind:<7}{total['steps']:>5} steps {total['us']:>10.1f} us")
    e2e = record["e2e_ms"]
    print(f"  end to end: {e2e['cuda_graphs']:.3f} ms/call with CUDA graphs, {e2e['uncaptured']:.3f} ms/call "
          f"uncaptured (graph counts {record['cuda_graph_counts']})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="bert_base_s128")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", default="FP32")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import cupy

    if cupy.cuda.runtime.getDeviceCount() == 0:
        raise SystemExit("profiling needs a GPU: CuPy sees none")
    device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    harness = Harness()
    records = []
    with tempfile.TemporaryDirectory(prefix=f"profile_{args.model}_") as work:
        engines = convert(args.model, args.precision, work)
    if not engines:
        raise SystemExit(f"{args.model}: the converter built no engine")
    for name, built in engines.items():
        record = {"model": args.model, "batch": args.batch, "precision": args.precision, "device": device,
                  "date": datetime.date.today().isoformat()}
        record.update(profile_engine(harness, name, built, args.batch, args.repeats, args.iters, args.seed))
        records.append(record)
        print_report(record, args.top)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(records, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

"""Profile a zoo model at full size: ``tftrt_lite.profile`` on its freshly converted SavedModel.

Run (GPU machine): python benchmarks/profile_engine.py --model bert_base_s128 --batch 1 --out gpu_out/profile.json

The model of a zoo config gets random weights, is exported and converted with
``tftrt_lite.Converter`` at ``--precision``, saved to a temporary directory, and profiled
there by ``tftrt_lite.profile.profile_saved_model``, exactly as
``tftrt-lite bench SAVED --batch N --profile`` would: the signature's end-to-end ms/batch
through TensorFlow, and per engine every plan step's median time with its work, achieved
rates and roofline share, plus the engine alone with and without CUDA graphs (columns:
docs/profile.md). Prints the report and writes it as JSON (``--png``: the bar chart too).
"""
import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import model_zoo  # noqa: E402
import tftrt_lite  # noqa: E402
from tftrt_lite.profile import profile_saved_model, share_gpu_with_tensorflow  # noqa: E402

#: zoo config -> (builder, builder kwargs, signature input name)
CONFIGS = {
    "resnet50": (model_zoo.resnet50, {"image_size": 224}, "images"),
    "mobilenetv2": (model_zoo.mobilenetv2, {"image_size": 224}, "images"),
    "bert_base_s128": (model_zoo.bert_base, {"seq_len": 128}, "input_ids"),
}


def convert(config, precision, work):
    """Path of the config's model converted at ``precision`` and saved under ``work``."""
    builder, kwargs, input_name = CONFIGS[config]
    src = model_zoo.export(model_zoo.randomize_weights(builder(**kwargs)), os.path.join(work, "model"), input_name)
    conv = tftrt_lite.Converter(input_saved_model_dir=src, precision_mode=precision)
    conv.convert()
    return conv.save(os.path.join(work, "converted"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="bert_base_s128")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", default="FP32")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the report as JSON")
    parser.add_argument("--png", default=None, help="also the bar chart of the slowest steps")
    args = parser.parse_args()

    share_gpu_with_tensorflow()   # conversion runs TensorFlow first; CuPy needs GPU memory after it
    with tempfile.TemporaryDirectory(prefix=f"profile_{args.model}_") as work:
        report = profile_saved_model(convert(args.model, args.precision, work), batch=args.batch, seed=args.seed,
                                     repeats=args.repeats, iters=args.iters)
    print(report.format(top=args.top))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    report.to_json(args.out)
    print(f"\nwrote {args.out}")
    if args.png:
        report.save_png(args.png, top=args.top)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()

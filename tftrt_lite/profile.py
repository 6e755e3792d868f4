"""Where a converted model's time goes: end-to-end latency, and each engine's plan step by step.

``profile_saved_model`` measures one signature of a converted SavedModel on the GPU:

* end to end: the signature's median milliseconds per batch through TensorFlow, with
  native fallback disabled so the number is the engines' (inputs random from a seed,
  drawn as ``tftrt_lite.compare`` draws them, or given as an ``.npz``);
* per engine: the plan of every ``TftrtLiteEngine`` node the signature runs, executed
  through the executor's C harness (``tftrt_lite.runtime.harness``) on CuPy buffers of
  the engine's real input shapes at these inputs. Each plan step is timed with CUDA
  events around it (uncaptured runs, median over ``repeats``) and reported with its
  FLOPs, bytes, achieved TFLOP/s and GB/s and share of the roofline
  (``tftrt_lite.engine.costs``); the engine alone is also timed end to end with and
  without CUDA graphs, so the host launch cost the graph removes is visible.

Why shapes come from shape inference, not from running the model: an engine's inputs are
intermediate tensors, and their shapes at a given batch follow from the graph. The
signature's functions are rebuilt with the concrete input shapes, and an engine's outputs
get the shapes its plan computes from its inputs, so engines downstream of other engines
resolve too. Why engines run before TensorFlow times the signature: by default
TensorFlow reserves most of the GPU's memory when it first uses it, and CuPy must
allocate the engines' buffers beside it (TensorFlow's memory growth is turned on too,
while that is still possible, so later profiles in the same process find room).
"""
from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.python.framework.function_def_to_graph import function_def_to_graph_def

from tftrt_lite.compare import ALLOW_FALLBACK_ENV, INT_RANGE, checked_inputs, random_inputs
from tftrt_lite.engine.builder import Engine
from tftrt_lite.engine.costs import H200_CEILINGS, roofline_share, step_costs, symbol_values
from tftrt_lite.engine.plan import ConvStep, GemmStep, LaunchStep, Plan, Storage, deserialize_plan, np_dtype
from tftrt_lite.envutil import scoped_env
from tftrt_lite.errors import ShapeError, TftrtLiteError
from tftrt_lite.fileutil import write_atomically
from tftrt_lite.load.proto import read_saved_model_proto, resolve_signature_keys, select_meta_graph
from tftrt_lite.replace.rewrite import ENGINE_OP
from tftrt_lite.runtime.harness import HARNESS_PATH, ExecutorError, Harness
from tftrt_lite.runtime.oplib import REBUILD_COMMAND

DEFAULT_REPEATS = 10
DEFAULT_ITERS = 50
#: Calls before any timing starts: the first loads modules and weights and picks library
#: algorithms, the second captures the CUDA graph, and later ones run as served.
WARMUP_CALLS = 3
TAGS = [tf.saved_model.SERVING]
#: Ops through which a signature calls its functions; engines live inside them.
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")

Inputs = Union[None, str, os.PathLike, Mapping[str, np.ndarray]]


class ProfileError(TftrtLiteError, RuntimeError):
    """The profile cannot be taken: no GPU, a bad argument, or an engine that cannot run."""


# --------------------------------------------------------------------------- report
@dataclasses.dataclass
class StepProfile:
    """One plan step: its median time and the work it did (``None`` rates: a 0 µs step)."""

    index: int          # position in the plan
    name: str
    kind: str           # launch (a generated kernel), gemm (cuBLASLt) or conv (cuDNN)
    kernel: str
    us: float           # median microseconds, CUDA events around the step
    share: float        # of the engine's summed step time
    flops: int
    bytes: int
    tflops: Optional[float]
    gbps: Optional[float]
    roofline: Optional[float]   # lower-bound time at the ceilings / measured time


@dataclasses.dataclass
class EngineProfile:
    """One engine's steps (slowest first), totals by kind, and its own end-to-end times."""

    name: str
    node: str
    precision: str
    input_shapes: List[List[int]]
    steps: List[StepProfile]
    by_kind: Dict[str, Dict[str, float]]    # kind -> {"steps", "us", "share"}
    step_sum_us: float
    ms_cuda_graphs: float                   # ms/call, CUDA-graph replay (after warm-up and capture)
    ms_uncaptured: float                    # ms/call, every step launched by the host
    cuda_graph_counts: Dict[str, int]       # of the CUDA-graph timing: proves replay served it

    @classmethod
    def from_dict(cls, d: Mapping) -> "EngineProfile":
        return cls(**{**d, "steps": [StepProfile(**s) for s in d["steps"]]})


@dataclasses.dataclass
class EndToEnd:
    """The signature through TensorFlow: median and best ms per batch over ``repeats``
    timings of ``iters`` back-to-back calls."""

    ms_per_batch: float
    ms_min: float
    repeats: int
    iters: int


@dataclasses.dataclass
class ProfileReport:
    """One profile: what was measured, where and when, and the numbers."""

    model_dir: str
    signature: str
    batch: Optional[int]                    # leading dim shared by the inputs (None: they share none)
    device: str
    date: str                               # YYYY-MM-DD
    input_source: str
    inputs: Dict[str, Dict]                 # name -> {"dtype", "shape"}
    end_to_end: EndToEnd
    engines: List[EngineProfile]            # empty when taken without the per-engine profile
    ceilings: Dict[str, float] = dataclasses.field(default_factory=lambda: dict(H200_CEILINGS))

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ProfileReport":
        return cls(**{**d, "end_to_end": EndToEnd(**d["end_to_end"]),
                      "engines": [EngineProfile.from_dict(e) for e in d["engines"]]})

    def to_json(self, path: Union[str, os.PathLike]) -> None:
        """Write the report as JSON, atomically (a reader never sees half a file)."""
        write_atomically(path, json.dumps(self.to_dict(), indent=1, allow_nan=False).encode("utf-8"))

    @classmethod
    def read_json(cls, path: Union[str, os.PathLike]) -> "ProfileReport":
        """A report written by :meth:`to_json` (to print or plot it on another machine)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def format(self, top: int = 15) -> str:
        """The report as text: header, end-to-end time, then per engine its ``top`` slowest
        steps, its totals by kind and its own end-to-end times."""
        e2e = self.end_to_end
        lines = [f"tftrt_lite profile of {self.model_dir}, signature {self.signature!r}, batch {self.batch}",
                 f"{self.device}, {self.date}; inputs ({self.input_source}): " + ", ".join(
                     f"{k} {v['dtype']}{v['shape']}" for k, v in self.inputs.items()),
                 f"end to end through TensorFlow: {e2e.ms_per_batch:.3f} ms/batch (median of {e2e.repeats} x "
                 f"{e2e.iters} calls; best {e2e.ms_min:.3f})"]
        for engine in self.engines:
            lines += [""] + _format_engine(engine, top)
        if self.engines:
            lines += ["", "roof: share of the roofline of an NVIDIA H200 (" + _format_ceilings(self.ceilings) + ")"]
        return "\n".join(lines)

    def save_png(self, path: Union[str, os.PathLike], top: int = 15) -> None:
        """A horizontal bar chart of the ``top`` slowest steps over all engines, each bar
        annotated with its share of its engine's time and its roofline share (matplotlib)."""
        if not self.engines:
            raise ProfileError("the report has no per-step profile to plot; take it with the per-engine "
                               "profile (per_engine=True, or --profile)")
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as e:
            raise ProfileError(f"save_png needs matplotlib, which cannot be imported ({e}): "
                               f"pip install matplotlib") from e
        rows = sorted(((e, s) for e in self.engines for s in e.steps), key=lambda es: -es[1].us)[:top]
        colors = {e.name: f"C{i % 10}" for i, e in enumerate(self.engines)}
        figure = Figure(figsize=(11, 1.5 + 0.32 * len(rows)))
        FigureCanvasAgg(figure)   # the Agg canvas renders it; no pyplot, no global backend change
        axes = figure.add_subplot()
        for engine in self.engines:   # one color and legend entry per engine with a bar
            ys = [y for y, (e, _) in enumerate(rows) if e is engine]
            if ys:
                axes.barh(ys, [rows[y][1].us for y in ys], color=colors[engine.name], label=engine.name)
        axes.set_yticks(range(len(rows)), [_bar_label(s) for _, s in rows], fontsize=8)
        axes.invert_yaxis()
        for y, (_, step) in enumerate(rows):
            roof = "n/a" if step.roofline is None else f"{100 * step.roofline:.1f}%"
            axes.annotate(f" {100 * step.share:.1f}%, roof {roof}", (step.us, y), va="center", fontsize=8)
        axes.set_xlabel("median µs per call (CUDA events around the step); annotation: share of its engine, "
                        "roofline share")
        axes.margins(x=0.25)
        axes.legend(fontsize=8, loc="lower right")
        axes.set_title(f"{os.path.basename(self.model_dir.rstrip(os.sep))} b{self.batch}, {self.device}, "
                       f"{self.date}: top {len(rows)} steps", fontsize=10)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        write_atomically(path, buffer.getvalue())


def _format_engine(engine: EngineProfile, top: int) -> List[str]:
    shown = engine.steps[:top]
    lines = [f"engine {engine.name} ({engine.precision}, inputs {engine.input_shapes}): {len(engine.steps)} steps, "
             f"{engine.step_sum_us:.1f} us summed over steps" +
             (f"; the {len(shown)} slowest:" if len(shown) < len(engine.steps) else ":"),
             f"{'#':>6} {'kind':<7}{'us':>10}{'share':>8}{'TFLOP/s':>9}{'GB/s':>8}{'roof':>6}  name / kernel"]
    for s in shown:
        lines.append(f"{s.index:>6} {s.kind:<7}{s.us:>10.1f}{100 * s.share:>7.1f}%{s.tflops or 0:>9.1f}"
                     f"{s.gbps or 0:>8.0f}{100 * (s.roofline or 0):>5.0f}%  {s.name} / {s.kernel}")
    lines.append("  by kind: " + ", ".join(
        f"{kind} {int(t['steps'])} steps {t['us']:.1f} us ({100 * t['share']:.1f}%)"
        for kind, t in sorted(engine.by_kind.items(), key=lambda kv: -kv[1]["us"])))
    counts = engine.cuda_graph_counts
    lines.append(f"  engine alone: {engine.ms_cuda_graphs:.3f} ms/call with CUDA graphs (captured "
                 f"{counts['captured']}, replayed {counts['replayed']}), {engine.ms_uncaptured:.3f} ms/call uncaptured")
    return lines


def _format_ceilings(ceilings: Mapping[str, float]) -> str:
    return (f"HBM {ceilings['hbm_bytes_per_s'] / 1e12:g} TB/s, fp16/bf16 {ceilings['half_flops_per_s'] / 1e12:g} "
            f"TFLOP/s, TF32 {ceilings['tf32_flops_per_s'] / 1e12:g} TFLOP/s")


def _bar_label(step: StepProfile, width: int = 64) -> str:
    """``name / kernel``, cut at the front when long: the end of a TF name says the most."""
    label = f"{step.name} / {step.kernel}"
    return label if len(label) <= width else "…" + label[1 - width:]


# --------------------------------------------------------------------------- signature and inputs
def _signature(model_dir: str, key: str):
    """The serving MetaGraph of ``model_dir`` and its SignatureDef ``key``, read from the
    proto (errors name the path and list what exists)."""
    proto = read_saved_model_proto(model_dir)
    meta_graph = select_meta_graph(proto, TAGS, model_dir)
    (key,) = resolve_signature_keys(meta_graph, key, model_dir)
    return meta_graph, meta_graph.signature_def[key]


def signature_specs(signature_def) -> Dict[str, tf.TensorSpec]:
    """The dense input specs of a SignatureDef, keyed by input name."""
    specs = {}
    for name, info in signature_def.inputs.items():
        if not info.name:
            raise ProfileError(f"signature input {name!r} is not a dense tensor; only dense inputs can be profiled")
        specs[name] = tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype), name=name)
    return specs


def _feeds(specs: Mapping[str, tf.TensorSpec], inputs: Inputs, seed: int,
           batch: int) -> Tuple[Dict[str, np.ndarray], str]:
    """The signature's inputs and where they come from (``compare``'s rules and errors)."""
    if inputs is None:
        return random_inputs(specs, seed, batch), f"random, seed {seed}"
    source = f"file {os.fspath(inputs)}" if isinstance(inputs, (str, os.PathLike)) else "given"
    return checked_inputs(inputs, specs), source


def _leading_dim(feeds: Mapping[str, np.ndarray]) -> Optional[int]:
    dims = {v.shape[0] if v.ndim else None for v in feeds.values()}
    return dims.pop() if len(dims) == 1 else None


# --------------------------------------------------------------------------- engine input shapes
@dataclasses.dataclass
class EngineNode:
    """A ``TftrtLiteEngine`` node a signature runs, with its inputs' shapes at concrete inputs."""

    name: str                           # engine_name attr
    node: str                           # node name in its graph
    function: Optional[str]             # library function holding the node (None: the MetaGraph's graph)
    input_shapes: List[Tuple[int, ...]]
    plan: bytes = dataclasses.field(repr=False)


def resolve_engines(model_dir: str, signature_key: str,
                    input_shapes: Mapping[str, Sequence[int]]) -> List[EngineNode]:
    """The engines signature ``signature_key`` of ``model_dir`` runs, each with the shapes
    of its inputs when the signature's inputs have ``input_shapes`` (upstream engines first).

    Raises :class:`ShapeError` naming the engine and input whose shape shape inference
    cannot resolve.
    """
    meta_graph, signature = _signature(model_dir, signature_key)
    return _resolve_engines(meta_graph, signature, input_shapes)


def _resolve_engines(meta_graph, signature, input_shapes: Mapping[str, Sequence[int]]) -> List[EngineNode]:
    expected = sorted(signature.inputs)
    if sorted(input_shapes) != expected:
        raise ProfileError(f"input shapes must be given for exactly the signature inputs {expected}, "
                           f"got {sorted(input_shapes)}")
    resolver = _EngineResolver(meta_graph, input_shapes)
    library_graph = tf.Graph()   # function_def_to_graph_def looks up called functions in the default graph
    with library_graph.as_default():
        tf.graph_util.import_graph_def(graph_pb2.GraphDef(library=meta_graph.graph_def.library), name="")
        resolver.resolve(_signature_graph_def(meta_graph.graph_def, signature, input_shapes), None)
    return resolver.found


def _take_plans(graph_def: graph_pb2.GraphDef) -> Dict[str, bytes]:
    """Engine name -> plan, emptying every ``serialized_plan`` attr of ``graph_def``: shape
    inference never reads them, and they hold the weights, which would be copied into every
    graph built below."""
    plans = {}
    for nodes in [graph_def.node] + [f.node_def for f in graph_def.library.function]:
        for node in nodes:
            if node.op == ENGINE_OP:
                plans[node.attr["engine_name"].s.decode()] = node.attr["serialized_plan"].s
                node.attr["serialized_plan"].s = b""
    return plans


def _signature_graph_def(graph_def: graph_pb2.GraphDef, signature,
                         input_shapes: Mapping[str, Sequence[int]]) -> graph_pb2.GraphDef:
    """The nodes of the MetaGraph's graph the signature's outputs depend on, with the
    signature's input placeholders given ``input_shapes``."""
    nodes = {n.name: n for n in graph_def.node}
    shapes = {signature.inputs[k].name.split(":")[0]: s for k, s in input_shapes.items()}
    keep, stack = set(), [info.name.split(":")[0] for info in signature.outputs.values()]
    while stack:
        name = stack.pop()
        if name not in keep:
            keep.add(name)
            stack += [i.lstrip("^").split(":")[0] for i in nodes[name].input]
    out = graph_pb2.GraphDef(versions=graph_def.versions)
    for node in graph_def.node:
        if node.name in keep:
            copy = out.node.add()
            copy.CopyFrom(node)
            if node.name in shapes:
                copy.attr["shape"].shape.CopyFrom(tf.TensorShape(shapes[node.name]).as_proto())
    return out


def _function_graph_def(fdef, args: Sequence[tf.Tensor]) -> graph_pb2.GraphDef:
    """The GraphDef of ``fdef`` with its argument placeholders shaped like ``args``, the
    tensors a call passes it (``function_def_to_graph_def`` would let the shapes recorded
    when the function was traced override the ones given)."""
    graph_def, _ = function_def_to_graph_def(fdef)
    placeholders = {n.name: n for n in graph_def.node}
    for arg_def, tensor in zip(fdef.signature.input_arg, args):
        if tensor.dtype not in (tf.resource, tf.variant):   # handles: their shape is not the value's
            placeholders[arg_def.name].attr["shape"].shape.CopyFrom(tensor.shape.as_proto())
    return graph_def


class _EngineResolver:
    """Finds the engines of a signature's graph and of the functions it calls, with their
    input shapes at the signature input shapes, into ``found``.

    TensorFlow gives an engine's outputs the shapes recorded at conversion, whose symbolic
    dims are unknown; so each engine whose inputs are known gets its outputs' concrete
    shapes from its plan and the graph is rebuilt, until no engine is left to resolve.
    Then each function the graph calls is resolved at the shapes it is passed.
    """

    def __init__(self, meta_graph, input_shapes: Mapping[str, Sequence[int]]):
        self.plans = _take_plans(meta_graph.graph_def)
        self.functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        self.input_shapes = {k: list(v) for k, v in sorted(input_shapes.items())}
        self.found: List[EngineNode] = []

    def resolve(self, graph_def: graph_pb2.GraphDef, function: Optional[str]) -> None:
        """Resolve the engines of ``graph_def``, the graph of ``function`` (None: the MetaGraph's)."""
        pending = [n for n in graph_def.node if n.op == ENGINE_OP]
        graph = self._import(graph_def, function)
        while True:
            ready = [n for n in pending if all(s.is_fully_defined() for s in _engine_input_shapes(graph, n))]
            if not ready:
                break
            for node in ready:
                self._record(node, [tuple(s.as_list()) for s in _engine_input_shapes(graph, node)], function)
            pending = [n for n in pending if all(n is not r for r in ready)]
            graph = self._import(graph_def, function)
        if pending:
            raise self._unresolved(graph, pending[0], function)
        for op in graph.get_operations():
            if op.type in _CALL_OPS:
                callee = op.get_attr("f").name
                self.resolve(_function_graph_def(self.functions[callee], op.inputs), callee)

    def _record(self, node, input_shapes: List[Tuple[int, ...]], function: Optional[str]) -> None:
        """Add the engine of ``node`` to ``found`` and give its outputs their shapes."""
        name = node.attr["engine_name"].s.decode()
        plan = self.plans[name]
        self.found.append(EngineNode(name, node.name, function, input_shapes, plan))
        del node.attr["output_shapes"].list.shape[:]
        node.attr["output_shapes"].list.shape.extend(
            tf.TensorShape(s).as_proto() for s in plan_output_shapes(deserialize_plan(plan), input_shapes))

    def _import(self, graph_def: graph_pb2.GraphDef, function: Optional[str]) -> tf.Graph:
        graph = tf.Graph()
        try:
            with graph.as_default():
                tf.graph_util.import_graph_def(graph_def, name="")
        except ValueError as e:   # a shape function refused its input shapes
            raise ShapeError(f"shape inference of {_where(function)} failed for signature inputs of shapes "
                             f"{self.input_shapes}: {e}") from e
        return graph

    def _unresolved(self, graph: tf.Graph, node, function: Optional[str]) -> ShapeError:
        op = graph.get_operation_by_name(node.name)
        i, shape = next((i, s) for i, s in enumerate(_engine_input_shapes(graph, node)) if not s.is_fully_defined())
        return ShapeError(
            f"engine {node.attr['engine_name'].s.decode()!r} (node {node.name!r} in {_where(function)}): input {i} "
            f"(tensor {op.inputs[i].name!r}) has shape {shape} for signature inputs of shapes {self.input_shapes}; "
            f"shape inference leaves it unknown (an op upstream, such as a function call, hides it), so the engine "
            f"cannot be profiled")


def _engine_input_shapes(graph: tf.Graph, node) -> List[tf.TensorShape]:
    """Each input's inferred shape merged with the shape recorded at conversion."""
    op = graph.get_operation_by_name(node.name)
    recorded = node.attr["input_shapes"].list.shape
    return [t.shape.merge_with(tf.TensorShape(r)) for t, r in zip(op.inputs, recorded)]


def _where(function: Optional[str]) -> str:
    return "the MetaGraph's graph" if function is None else f"function {function!r}"


def plan_output_shapes(plan: Plan, input_shapes: Sequence[Sequence[int]]) -> List[Tuple[int, ...]]:
    """The shapes of a plan's outputs (in output order) for inputs of ``input_shapes``."""
    symbols = symbol_values(plan, input_shapes)
    outputs = sorted((b for b in plan.buffers if b.storage == Storage.OUTPUT), key=lambda b: b.a)
    return [tuple(d.evaluate(symbols) for d in b.shape) for b in outputs]


# --------------------------------------------------------------------------- GPU
def _require_gpu(what: str) -> str:
    """The name of the GPU TensorFlow will use, or :class:`ProfileError` when there is none."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise ProfileError(f"{what} needs an NVIDIA GPU, and TensorFlow sees none (without one a converted "
                           f"model runs its native segments, so there are no engines to measure)")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def share_gpu_with_tensorflow() -> None:
    """Make TensorFlow take GPU memory as it needs it instead of reserving most of it at
    first use, so CuPy and the executor can allocate beside it. Takes effect only before
    TensorFlow first uses the GPU in this process: a program that runs TensorFlow on the
    GPU before profiling (converting a model, say) calls it first."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:   # TensorFlow already uses the GPU: its allocator is fixed for the process
            pass


def _harness() -> Harness:
    """The executor harness, once CuPy sees a GPU and the executor library loads."""
    try:
        import cupy
    except ImportError as e:
        raise ProfileError(f"the per-engine profile needs an NVIDIA GPU and CuPy, which cannot be imported ({e}): "
                           f"pip install cupy-cuda12x") from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise ProfileError(f"the per-engine profile needs an NVIDIA GPU, and CuPy cannot use one: {e}") from e
    if count == 0:
        raise ProfileError("the per-engine profile needs an NVIDIA GPU, and CuPy sees none")
    try:
        return Harness()
    except OSError as e:
        raise ProfileError(f"the per-engine profile needs the executor library {HARNESS_PATH}, which cannot be "
                           f"loaded ({e}); build it with `{REBUILD_COMMAND}`") from e


# --------------------------------------------------------------------------- per engine
def index_range(engine: Engine, tensor: str) -> Tuple[int, int]:
    """``[low, high)`` for random values of the integer input ``tensor``.

    Integer inputs are mostly ids that index a table (token ids into an embedding), often
    after some integer arithmetic (Keras wraps negative ids with a select). So ``tensor``
    is followed through every op that yields integers; where it, or a value computed from
    it, is the indices of a Gather, values are drawn from ``[0, n)`` with ``n`` the
    smallest table dim indexed, so no id is out of bounds. Otherwise
    ``compare.INT_RANGE``: small and never zero.
    """
    graph = engine.graph
    consumers = graph.consumers()
    sizes, seen, stack = [], {tensor}, [tensor]
    while stack:
        t = stack.pop()
        for node in consumers.get(t, []):
            if node.op in ("Gather", "GatherElements") and node.inputs[1] == t:
                dim = graph.tensor(node.inputs[0]).shape[node.attrs["axis"]]
                if isinstance(dim, int) and dim > 0:
                    sizes.append(dim)
                continue
            for out in node.outputs:
                if out and out not in seen and graph.tensor(out).dtype.startswith(("int", "uint")):
                    seen.add(out)
                    stack.append(out)
    return (0, min(sizes)) if sizes else INT_RANGE


def engine_inputs(engine: Engine, node: EngineNode, rng: np.random.Generator) -> List[np.ndarray]:
    """Random inputs of the engine's input shapes: floats standard normal, integers in
    :func:`index_range`, booleans 0/1."""
    if len(node.input_shapes) != len(engine.input_names):
        raise ProfileError(f"engine {node.name!r}: the node has {len(node.input_shapes)} inputs, its plan "
                           f"{len(engine.input_names)}")
    values = []
    for name, shape in zip(engine.input_names, node.input_shapes):
        dtype = engine.graph.tensor(name).dtype
        if dtype.startswith(("float", "bfloat")):
            value = rng.standard_normal(shape)
        elif dtype.startswith(("int", "uint")):
            value = rng.integers(*index_range(engine, name), shape)
        elif dtype == "bool":
            value = rng.integers(0, 2, shape)
        else:
            raise ProfileError(f"engine {node.name!r}: cannot draw random values for input {name!r} of dtype {dtype}")
        values.append(np.asarray(value).astype(np_dtype(dtype)))
    return values


def _step_kind(plan: Plan, step, index: int, kernel: int = -1) -> Tuple[str, str]:
    if isinstance(step, LaunchStep):
        return "launch", plan.kernels[kernel if kernel >= 0 else step.kernel].name
    if isinstance(step, GemmStep):
        return "gemm", "cublasLtMatmul"
    if isinstance(step, ConvStep):
        return "conv", "cudnnConvolutionForward"
    raise ProfileError(f"step #{index} {step.name!r} is a {type(step).__name__}, which the profile cannot name")


def step_profiles(plan: Plan, step_us: Sequence[float], symbols: Sequence[int],
                  step_kernels: Optional[Sequence[int]] = None) -> List[StepProfile]:
    """One record per plan step with its work and achieved rates, slowest first.
    ``step_kernels``: the plan kernel each launch step ran (the executor's timed choice
    among a step's variants), else each step's first."""
    total = sum(step_us) or 1.0
    kernels = list(step_kernels) if step_kernels is not None else [-1] * len(plan.steps)
    rows = []
    for index, (step, us, cost) in enumerate(zip(plan.steps, step_us, step_costs(plan, symbols))):
        kind, kernel = _step_kind(plan, step, index, kernels[index])
        timed = us > 0
        rows.append(StepProfile(
            index, step.name, kind, kernel, round(us, 3), round(us / total, 5), cost["flops"], cost["bytes"],
            tflops=round(cost["flops"] / (us * 1e6), 3) if timed else None,
            gbps=round(cost["bytes"] / (us * 1e3), 2) if timed else None,
            roofline=round(roofline_share(step, cost, us * 1e-6), 4) if timed else None))
    return sorted(rows, key=lambda r: -r.us)


def _by_kind(steps: Sequence[StepProfile]) -> Dict[str, Dict[str, float]]:
    total = sum(s.us for s in steps) or 1.0
    kinds: Dict[str, Dict[str, float]] = {}
    for s in steps:
        k = kinds.setdefault(s.kind, {"steps": 0, "us": 0.0})
        k["steps"] += 1
        k["us"] += s.us
    return {kind: {"steps": k["steps"], "us": round(k["us"], 3), "share": round(k["us"] / total, 5)}
            for kind, k in kinds.items()}


def profile_engine(harness: Harness, node: EngineNode, rng: np.random.Generator, repeats: int,
                   iters: int) -> EngineProfile:
    """Time every step of the engine's plan, and the engine end to end with and without
    CUDA graphs, through the executor harness on CuPy buffers."""
    import cupy

    engine = Engine.deserialize(node.plan)
    # The executor reads bytes and shapes only; unsigned views of the same width carry
    # dtypes CuPy lacks (bfloat16) to and from the device.
    inputs = [cupy.asarray(v.view(_same_width(v.dtype))) for v in engine_inputs(engine, node, rng)]
    out_dtypes = [_same_width(np_dtype(engine.graph.tensor(o).dtype)) for o in engine.output_names]
    with_graphs = harness.create(node.plan, max_cached_shapes=1)
    uncaptured = harness.create(node.plan, max_cached_shapes=0)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        uncaptured.run(inputs, out_dtypes, stream)   # loads modules and weights, picks library algorithms
        step_us, step_kernels = uncaptured.profile(inputs, repeats, stream)
        before = harness.cuda_graph_counts()
        graph_ms = with_graphs.time_calls(inputs, WARMUP_CALLS, iters, stream)
        counts = {k: v - before[k] for k, v in harness.cuda_graph_counts().items()}
        plain_ms = uncaptured.time_calls(inputs, WARMUP_CALLS, iters, stream)
    return engine_profile(node, engine, step_us, graph_ms, plain_ms, counts, step_kernels)


def _same_width(dtype: np.dtype) -> np.dtype:
    return np.dtype(f"u{dtype.itemsize}")


def engine_profile(node: EngineNode, engine: Engine, step_us: Sequence[float], ms_cuda_graphs: float,
                   ms_uncaptured: float, cuda_graph_counts: Mapping[str, int],
                   step_kernels: Optional[Sequence[int]] = None) -> EngineProfile:
    """The record of one engine from what the harness measured."""
    steps = step_profiles(engine.plan, step_us, symbol_values(engine.plan, node.input_shapes), step_kernels)
    return EngineProfile(node.name, node.node, engine.precision, [list(s) for s in node.input_shapes], steps,
                         _by_kind(steps), round(sum(s.us for s in steps), 3), round(ms_cuda_graphs, 4),
                         round(ms_uncaptured, 4), dict(cuda_graph_counts))


def _profile_engines(nodes: Sequence[EngineNode], seed: int, repeats: int, iters: int) -> List[EngineProfile]:
    """Every engine through the harness, before TensorFlow uses the GPU (see the module
    docstring); CuPy's memory is given back afterwards."""
    share_gpu_with_tensorflow()
    harness = _harness()
    import cupy   # importable: _harness checked it

    rng = np.random.default_rng(seed)
    profiles = []
    for node in nodes:
        try:
            profiles.append(profile_engine(harness, node, rng, repeats, iters))
        except ExecutorError as e:
            raise ProfileError(f"engine {node.name!r} cannot run through the executor: {e}") from e
        except cupy.cuda.memory.OutOfMemoryError as e:
            raise ProfileError(
                f"engine {node.name!r}: out of GPU memory ({e}). If TensorFlow used the GPU earlier in this "
                f"process it holds most of it: call tftrt_lite.profile.share_gpu_with_tensorflow() before its "
                f"first use, or profile in a fresh process (tftrt-lite bench)") from e
    cupy.get_default_memory_pool().free_all_blocks()
    return profiles


# --------------------------------------------------------------------------- end to end
def _median_ms(call: Callable[[], object], repeats: int, iters: int) -> Tuple[float, float]:
    """Median and best ms per call over ``repeats`` timings of ``iters`` back-to-back calls
    (one sync per timing, after the last call's outputs are ready)."""
    for _ in range(WARMUP_CALLS):
        _sync(call())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            out = call()
        _sync(out)
        samples.append((time.perf_counter() - start) * 1e3 / iters)
    return statistics.median(samples), min(samples)


def _sync(outputs) -> None:
    for value in tf.nest.flatten(outputs):
        value.numpy()


def time_signature(model_dir: str, signature_key: str, feeds: Mapping[str, np.ndarray], repeats: int,
                   iters: int) -> EndToEnd:
    """The signature's ms/batch through TensorFlow on the GPU, native fallback disabled."""
    with scoped_env(ALLOW_FALLBACK_ENV, "0"):
        try:
            func = tf.saved_model.load(model_dir, tags=TAGS).signatures[signature_key]
            with tf.device("/GPU:0"):
                args = {k: tf.constant(v) for k, v in feeds.items()}
            median, best = _median_ms(lambda: func(**args), repeats, iters)
        except (tf.errors.OpError, ValueError, TypeError) as e:
            raise ProfileError(f"running signature {signature_key!r} of {model_dir!r} on the GPU failed: "
                               f"{type(e).__name__}: {e}") from e
    return EndToEnd(round(median, 4), round(best, 4), repeats, iters)


# --------------------------------------------------------------------------- entry point
def profile_saved_model(model_dir: str, batch: int = 1, signature_key: str = "serving_default",
                        inputs: Inputs = None, seed: int = 0, repeats: int = DEFAULT_REPEATS,
                        iters: int = DEFAULT_ITERS, per_engine: bool = True) -> ProfileReport:
    """Profile one signature of the converted SavedModel ``model_dir`` on the GPU.

    ``inputs``: an ``.npz`` path or a dict keyed by input name; without it, random inputs
    from ``seed`` with ``batch`` as the unknown batch dim. ``repeats`` timings of ``iters``
    calls make each end-to-end number; each step's time is the median of ``repeats`` runs.
    ``per_engine=False`` measures only the end-to-end time (any SavedModel will do); with
    the per-engine profile, TensorFlow's GPU memory growth is turned on when TensorFlow
    has not used the GPU yet (:func:`share_gpu_with_tensorflow`).
    Raises :class:`ProfileError` without a usable GPU (CuPy and the executor library too
    for the per-engine profile), :class:`ShapeError` when an engine's input shape cannot be
    resolved, and other ``TftrtLiteError`` s for a bad model, signature or inputs.
    """
    for label, value in (("batch", batch), ("repeats", repeats), ("iters", iters)):
        if not (isinstance(value, int) and value >= 1):
            raise ProfileError(f"{label} must be an integer >= 1, got {value!r}")
    meta_graph, signature = _signature(model_dir, signature_key)
    feeds, source = _feeds(signature_specs(signature), inputs, seed, batch)
    device = _require_gpu("profiling" if per_engine else "benchmarking")
    engines = []
    if per_engine:
        nodes = _resolve_engines(meta_graph, signature, {k: v.shape for k, v in feeds.items()})
        if not nodes:
            raise ProfileError(f"signature {signature_key!r} of {model_dir!r} runs no {ENGINE_OP} nodes, so it has "
                               f"no engines to profile (convert it first: tftrt-lite convert)")
        engines = _profile_engines(nodes, seed, repeats, iters)
    end_to_end = time_signature(model_dir, signature_key, feeds, repeats, iters)
    return ProfileReport(os.path.abspath(model_dir), signature_key, _leading_dim(feeds), device,
                         datetime.date.today().isoformat(), source,
                         {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in feeds.items()},
                         end_to_end, engines)

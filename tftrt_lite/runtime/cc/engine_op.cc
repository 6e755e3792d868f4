// The TftrtLiteEngine op: one converted segment of a TensorFlow graph.
//
// A converted SavedModel replaces each supported subgraph with one TftrtLiteEngine
// node. The node carries the engine plan (built in Python at conversion time) and,
// unless the model was saved without them, the original subgraph as a function
// (`segment_func`). On a GPU the plan runs through the executor (executor.h) on
// TensorFlow's CUDA stream, with scratch and outputs from TensorFlow's allocator; the
// first `max_cached_shapes` input-shape sets are captured as CUDA graphs and replayed.
// When the engine cannot run (CPU device, a plan this device cannot load, an input
// outside the engine's shapes, a failed execution) the op runs the native segment
// through the function library runtime, the way TF-TRT's TRTEngineOp runs its
// `segment_func`. Because silently falling back would let a broken engine pass for a
// working one, every fallback is counted (stats.h), logged once per node, and can be
// turned into an error with TFTRT_LITE_ALLOW_NATIVE_FALLBACK=0.
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "executor.h"
#include "plan_format.h"
#include "stats.h"
#include "tactics.h"
#include "tensorflow/core/framework/function.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/logging.h"
#include "tensorflow/core/platform/mutex.h"
#include "tensorflow/core/util/env_var.h"
#include "xla/stream_executor/stream.h"

namespace tftrt_lite {
namespace {

using ::tensorflow::AsyncOpKernel;
using ::tensorflow::AttrSlice;
using ::tensorflow::DataType;
using ::tensorflow::DataTypeString;
using ::tensorflow::FunctionDef;
using ::tensorflow::FunctionLibraryDefinition;
using ::tensorflow::FunctionLibraryRuntime;
using ::tensorflow::NameAttrList;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::PartialTensorShape;
using ::tensorflow::ScopedStepContainer;
using ::tensorflow::Tensor;
using ::tensorflow::mutex;
using ::tensorflow::mutex_lock;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

constexpr char kAllowFallbackEnvVar[] = "TFTRT_LITE_ALLOW_NATIVE_FALLBACK";

// Outputs take the shapes recorded at conversion (-1 dims stay unknown). Inputs are
// merged with the recorded input shapes so that a graph wiring a tensor of an
// incompatible shape into an engine fails when the graph is built, not at run time.
absl::Status EngineShapeFn(InferenceContext* c) {
  std::string engine_name;
  std::vector<PartialTensorShape> input_shapes;
  std::vector<PartialTensorShape> output_shapes;
  TF_RETURN_IF_ERROR(c->GetAttr("engine_name", &engine_name));
  TF_RETURN_IF_ERROR(c->GetAttr("input_shapes", &input_shapes));
  TF_RETURN_IF_ERROR(c->GetAttr("output_shapes", &output_shapes));
  if (static_cast<int>(input_shapes.size()) != c->num_inputs()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TftrtLiteEngine '", engine_name, "' has ", c->num_inputs(),
        " inputs but ", input_shapes.size(), " input_shapes"));
  }
  if (static_cast<int>(output_shapes.size()) != c->num_outputs()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TftrtLiteEngine '", engine_name, "' has ", c->num_outputs(),
        " outputs but ", output_shapes.size(), " output_shapes"));
  }
  for (int i = 0; i < c->num_inputs(); ++i) {
    ShapeHandle declared;
    ShapeHandle merged;
    TF_RETURN_IF_ERROR(
        c->MakeShapeFromPartialTensorShape(input_shapes[i], &declared));
    if (!c->Merge(c->input(i), declared, &merged).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TftrtLiteEngine '", engine_name, "' input ", i, " has shape ",
          c->DebugString(c->input(i)),
          ", incompatible with the engine's input_shapes[", i, "] ",
          input_shapes[i].DebugString()));
    }
  }
  for (int i = 0; i < c->num_outputs(); ++i) {
    ShapeHandle out;
    TF_RETURN_IF_ERROR(
        c->MakeShapeFromPartialTensorShape(output_shapes[i], &out));
    c->set_output(i, out);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace tftrt_lite

REGISTER_OP("TftrtLiteEngine")
    .Input("in_tensors: InT")
    .Input("host_tensors: HostT")
    .Output("out_tensors: OutT")
    .Attr("InT: list(type) >= 0")
    .Attr("HostT: list(type) >= 0 = []")
    .Attr("OutT: list(type) >= 1")
    .Attr("input_shapes: list(shape)")
    .Attr("output_shapes: list(shape)")
    .Attr("serialized_plan: string")
    .Attr("plan_format_version: int")
    .Attr("segment_func: func = {}")
    .Attr("engine_name: string")
    .Attr("precision_mode: string")
    .Attr("max_cached_shapes: int >= 0 = 1")
    .Attr("tactics: string = ''")
    .SetShapeFn(tftrt_lite::EngineShapeFn)
    .Doc(R"doc(
A fused GPU engine built by tftrt_lite from one segment of a TensorFlow graph.

in_tensors: the segment's inputs in device memory.
host_tensors: the segment's inputs that TensorFlow keeps in host memory on a GPU
  (int32), after in_tensors in the engine's input order. Taking them where they are
  spares a copy that would make each call wait for the GPU work queued before it; the
  engine uploads them on its stream.
out_tensors: the segment's outputs.
input_shapes: shapes of in_tensors then host_tensors recorded at conversion (-1 for
  symbolic dims).
output_shapes: shapes of out_tensors recorded at conversion (-1 for symbolic dims).
serialized_plan: the engine plan bytes (tftrt_lite/engine/plan.py).
plan_format_version: layout version of serialized_plan.
segment_func: the native segment, run when the engine cannot run; empty when the
  model was saved without native segments.
engine_name: the engine's name in conversion reports and errors.
precision_mode: FP32, FP16, BF16 or INT8.
max_cached_shapes: how many input-shape sets get a captured CUDA graph (TF-TRT's
  maximum_cached_engines); other shapes run uncaptured, and 0 turns capture off.
tactics: tactic cache lines (runtime/cc/tactics.h) measured for this engine, merged
  into the process's tactics when the kernel is created; each is checked against the
  device's libraries before use. Empty when the model carries none.
)doc");

namespace tftrt_lite {
namespace {

// Why a call runs the native segment instead of the engine.
enum class FallbackReason {
  kNoGpu,
  kNoExecutor,
  kShapeMismatch,
  kExecutionError,
};

Counter CounterFor(FallbackReason reason) {
  switch (reason) {
    case FallbackReason::kNoGpu:
      return Counter::kFallbackNoGpu;
    case FallbackReason::kNoExecutor:
      return Counter::kFallbackNoExecutor;
    case FallbackReason::kShapeMismatch:
      return Counter::kFallbackShapeMismatch;
    case FallbackReason::kExecutionError:
      return Counter::kFallbackExecutionError;
  }
  return Counter::kFallbackNoExecutor;
}

const char* Describe(FallbackReason reason) {
  switch (reason) {
    case FallbackReason::kNoGpu:
      return "the op is placed on a CPU device and engines run only on GPUs";
    case FallbackReason::kNoExecutor:
      return "the engine plan cannot be loaded on this device";
    case FallbackReason::kShapeMismatch:
      return "an input shape is outside the engine's input_shapes";
    case FallbackReason::kExecutionError:
      return "the engine failed while running";
  }
  return "unknown reason";
}

// The plan's dtype code for a TensorFlow dtype, or kNumDTypes if plans have none.
uint32_t PlanDType(DataType dtype) {
  switch (dtype) {
    case tensorflow::DT_FLOAT: return plan::kFloat32;
    case tensorflow::DT_HALF: return plan::kFloat16;
    case tensorflow::DT_BFLOAT16: return plan::kBFloat16;
    case tensorflow::DT_DOUBLE: return plan::kFloat64;
    case tensorflow::DT_INT8: return plan::kInt8;
    case tensorflow::DT_UINT8: return plan::kUInt8;
    case tensorflow::DT_INT16: return plan::kInt16;
    case tensorflow::DT_UINT16: return plan::kUInt16;
    case tensorflow::DT_INT32: return plan::kInt32;
    case tensorflow::DT_UINT32: return plan::kUInt32;
    case tensorflow::DT_INT64: return plan::kInt64;
    case tensorflow::DT_UINT64: return plan::kUInt64;
    case tensorflow::DT_BOOL: return plan::kBool;
    default: return plan::kNumDTypes;
  }
}

// The executor's memory, from TensorFlow's allocator for this kernel's device. Scratch
// tensors are held until the allocator goes out of scope after the work is enqueued;
// TensorFlow's GPU allocator orders their reuse on the compute stream.
class OpKernelAllocator : public DeviceAllocator {
 public:
  explicit OpKernelAllocator(OpKernelContext* ctx) : ctx_(ctx) {}

  tftrt_lite::Status AllocateTemp(uint64_t bytes, CUdeviceptr* ptr) override {
    temps_.emplace_back();
    absl::Status s = ctx_->allocate_temp(tensorflow::DT_UINT8,
                                         tensorflow::TensorShape({static_cast<int64_t>(bytes)}),
                                         &temps_.back());
    if (!s.ok()) {
      return tftrt_lite::Status::Error(
          tftrt_lite::Status::kExecution,
          absl::StrCat("allocating ", bytes, " bytes of scratch failed: ", s.message()));
    }
    *ptr = reinterpret_cast<CUdeviceptr>(temps_.back().tensor_data().data());
    return tftrt_lite::Status::Ok();
  }

  tftrt_lite::Status AllocateOutput(int index, const std::vector<int64_t>& shape, uint64_t bytes,
                                    CUdeviceptr* ptr) override {
    tensorflow::TensorShape tf_shape;
    absl::Status s = tensorflow::TensorShape::BuildTensorShape(shape, &tf_shape);
    Tensor* out = nullptr;
    if (s.ok()) s = ctx_->allocate_output(index, tf_shape, &out);
    if (!s.ok()) {
      return tftrt_lite::Status::Error(
          tftrt_lite::Status::kExecution,
          absl::StrCat("allocating output ", index, " failed: ", s.message()));
    }
    if (out->TotalBytes() != bytes) {
      return tftrt_lite::Status::Error(
          tftrt_lite::Status::kExecution,
          absl::StrCat("output ", index, " is ", DataTypeString(out->dtype()), " of shape ",
                       tf_shape.DebugString(), " (", out->TotalBytes(), " bytes), the plan writes ",
                       bytes, " bytes"));
    }
    *ptr = reinterpret_cast<CUdeviceptr>(out->tensor_data().data());
    return tftrt_lite::Status::Ok();
  }

 private:
  OpKernelContext* ctx_;
  std::vector<Tensor> temps_;
};

// Returns the env switch; read on every call (one getenv) so that a process can
// turn fallbacks off or on between runs without rebuilding its graphs.
absl::Status NativeFallbackAllowed(bool* allowed) {
  return tensorflow::ReadBoolFromEnvVar(kAllowFallbackEnvVar,
                                        /*default_val=*/true, allowed);
}

class TftrtLiteEngineOp : public AsyncOpKernel {
 public:
  explicit TftrtLiteEngineOp(OpKernelConstruction* ctx)
      : AsyncOpKernel(ctx),
        on_gpu_(ctx->device_type() ==
                tensorflow::DeviceType(tensorflow::DEVICE_GPU)) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("engine_name", &engine_name_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("segment_func", &segment_func_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_shapes", &input_shapes_));
    OP_REQUIRES(ctx,
                static_cast<int>(input_shapes_.size()) == ctx->num_inputs(),
                absl::InvalidArgumentError(absl::StrCat(
                    Label(), " has ", ctx->num_inputs(), " inputs but ",
                    input_shapes_.size(), " input_shapes")));
    if (on_gpu_) LoadExecutor(ctx);
  }

  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) override {
    IncrementCounter(Counter::kEngineCalls);
    FallbackReason reason;
    std::string detail;
    if (!on_gpu_) {
      reason = FallbackReason::kNoGpu;
    } else if (!InputsMatchShapes(ctx)) {
      reason = FallbackReason::kShapeMismatch;
    } else if (executor_ == nullptr) {
      reason = FallbackReason::kNoExecutor;
      detail = executor_error_;
    } else {
      const tftrt_lite::Status status = RunEngine(ctx);
      if (status.ok()) {
        done();
        return;
      }
      switch (status.code()) {
        case tftrt_lite::Status::kOutOfProfile:
          reason = FallbackReason::kShapeMismatch;
          break;
        case tftrt_lite::Status::kUnavailable:
        case tftrt_lite::Status::kInvalidPlan:
          reason = FallbackReason::kNoExecutor;
          break;
        default:
          reason = FallbackReason::kExecutionError;
      }
      detail = status.message();
    }
    Fallback(ctx, reason, detail, std::move(done));
  }

 private:
  // Runs the native segment in place of the engine, or fails the call when that is
  // impossible (no segment_func) or disabled.
  void Fallback(OpKernelContext* ctx, FallbackReason reason,
                const std::string& detail, DoneCallback done) {
    const std::string because =
        detail.empty() ? Describe(reason)
                       : absl::StrCat(Describe(reason), " (", detail, ")");
    if (segment_func_.name().empty()) {
      IncrementCounter(Counter::kRefusedCalls);
      ctx->SetStatus(absl::FailedPreconditionError(absl::StrCat(
          Label(), " cannot run: ", because,
          ", and the model was saved without native segments (segment_func "
          "is empty), so it needs the GPU engine executor")));
      done();
      return;
    }
    bool allowed = true;
    OP_REQUIRES_OK_ASYNC(ctx, NativeFallbackAllowed(&allowed), done);
    if (!allowed) {
      IncrementCounter(Counter::kRefusedCalls);
      ctx->SetStatus(absl::FailedPreconditionError(absl::StrCat(
          "native fallback disabled (", kAllowFallbackEnvVar, "=0): ", Label(),
          " would have run its native segment because ", because)));
      done();
      return;
    }
    if (!fallback_logged_.exchange(true)) {
      LOG(WARNING) << Label() << " runs its native segment '"
                   << segment_func_.name() << "' because " << because
                   << ". Logged once per node; every fallback is counted in "
                      "tftrt_lite.runtime.stats().";
    }
    IncrementCounter(Counter::kFallbackCalls);
    IncrementCounter(CounterFor(reason));
    RunNativeSegment(ctx, std::move(done));
  }

  std::string Label() const {
    return absl::StrCat("TftrtLiteEngine '", engine_name_, "' (node '", name(),
                        "')");
  }

  bool InputsMatchShapes(OpKernelContext* ctx) const {
    for (int i = 0; i < ctx->num_inputs(); ++i) {
      if (!input_shapes_[i].IsCompatibleWith(ctx->input(i).shape())) {
        return false;
      }
    }
    return true;
  }

  // Parses the plan once per kernel and checks it against the node's signature. A
  // plan that cannot serve this node leaves executor_ empty and says why in
  // executor_error_; calls then fall back (reason no_executor).
  void LoadExecutor(OpKernelConstruction* ctx) {
    std::string serialized_plan;
    int64_t version = 0;
    ExecutorOptions options;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("serialized_plan", &serialized_plan));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("plan_format_version", &version));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_cached_shapes", &options.max_cached_shapes));
    options.label = Label();
    options.engine_name = engine_name_;
    MergeTactics(ctx);
    if (version != plan::kFormatVersion) {
      executor_error_ = absl::StrCat(
          "plan_format_version ", version, " is not the version this runtime reads (",
          plan::kFormatVersion, "); rebuild the engine with the installed tftrt_lite");
      return;
    }
    std::unique_ptr<Executor> executor;
    const tftrt_lite::Status status =
        Executor::Create(std::move(serialized_plan), &executor, options);
    if (!status.ok()) {
      executor_error_ = status.message();
      return;
    }
    if (executor->num_inputs() != ctx->num_inputs() ||
        executor->num_outputs() != ctx->num_outputs()) {
      executor_error_ = absl::StrCat(
          "the plan has ", executor->num_inputs(), " inputs and ",
          executor->num_outputs(), " outputs, the node ", ctx->num_inputs(),
          " and ", ctx->num_outputs());
      return;
    }
    // The node's and the plan's dtypes, input by input and output by output.
    auto dtypes_differ = [&](const char* kind, int count, auto node_type, auto plan_dtype) {
      for (int i = 0; i < count; ++i) {
        if (PlanDType(node_type(i)) != plan_dtype(i)) {
          executor_error_ = absl::StrCat(kind, " ", i, " is ", DataTypeString(node_type(i)), " but the plan's ",
                                         kind, " ", i, " has dtype code ", plan_dtype(i));
          return true;
        }
      }
      return false;
    };
    if (dtypes_differ("input", ctx->num_inputs(), [&](int i) { return ctx->input_type(i); },
                      [&](int i) { return executor->input_dtype(i); }) ||
        dtypes_differ("output", ctx->num_outputs(), [&](int i) { return ctx->output_type(i); },
                      [&](int i) { return executor->output_dtype(i); })) {
      return;
    }
    executor_ = std::move(executor);
  }

  // Seeds the process's tactics with the winners the node carries. Nodes written before
  // the attr existed have none; lines this runtime cannot read are skipped (tactics only
  // save time, so nothing about them may fail the kernel).
  void MergeTactics(OpKernelConstruction* ctx) {
    std::string text;
    if (!ctx->HasAttr("tactics") || !ctx->GetAttr("tactics", &text).ok()) return;
    int malformed = 0;
    tactics::AddText(text, &malformed);
    if (malformed > 0) {
      LOG(WARNING) << Label() << ": skipped " << malformed << " tactic line(s) of its `tactics` attr that this "
                   << "runtime cannot read; those problems are timed or use the library's first choice";
    }
  }

  // Runs the plan on this kernel's CUDA stream. Nothing is synchronised: the outputs
  // are ready in stream order, as for any other GPU kernel.
  tftrt_lite::Status RunEngine(OpKernelContext* ctx) {
    tensorflow::DeviceContext* device_context = ctx->op_device_context();
    if (device_context == nullptr || device_context->stream() == nullptr) {
      return tftrt_lite::Status::Error(tftrt_lite::Status::kUnavailable,
                                       "the GPU device gave the op no stream");
    }
    CUstream stream = static_cast<CUstream>(
        device_context->stream()->platform_specific_handle().stream);
    std::vector<DeviceTensor> inputs(ctx->num_inputs());
    for (int i = 0; i < ctx->num_inputs(); ++i) {
      const Tensor& t = ctx->input(i);
      inputs[i].ptr = reinterpret_cast<CUdeviceptr>(t.tensor_data().data());
      inputs[i].on_host = ctx->input_memory_type(i) == tensorflow::HOST_MEMORY;
      const auto dims = t.shape().dim_sizes();  // by value: take begin/end of one copy
      inputs[i].shape.assign(dims.begin(), dims.end());
    }
    OpKernelAllocator allocator(ctx);
    std::vector<DeviceTensor> outputs;
    return executor_->Run(stream, inputs, &allocator, &outputs);
  }

  // Instantiates segment_func on this kernel's device once per function library
  // runtime and caches the handle. Like TF-TRT, it instantiates a multi-device
  // function with soft placement so that a segment op without a kernel on this
  // device runs on another one instead of failing, except for functions that keep
  // int32 tensors on the device (kIntsOnDeviceAttr), which cannot be multi-device.
  absl::Status SegmentHandle(OpKernelContext* ctx, FunctionLibraryRuntime* lib,
                             FunctionLibraryRuntime::Handle* handle) {
    mutex_lock lock(mu_);
    if (instantiated_lib_ == lib) {
      *handle = handle_;
      return absl::OkStatus();
    }
    const FunctionDef* fdef =
        lib->GetFunctionLibraryDefinition()->Find(segment_func_.name());
    if (fdef == nullptr) {
      return absl::NotFoundError(
          absl::StrCat(Label(), ": native segment function '",
                       segment_func_.name(), "' is not in the function library"));
    }
    const std::string& device = ctx->device()->name();
    FunctionLibraryRuntime::InstantiateOptions inst_ops;
    inst_ops.target = device;
    const auto ints_on_device =
        fdef->attr().find(FunctionLibraryDefinition::kIntsOnDeviceAttr);
    if (ints_on_device == fdef->attr().end() || !ints_on_device->second.b()) {
      inst_ops.is_multi_device_function = true;
      inst_ops.input_devices.assign(ctx->num_inputs(), device);
      inst_ops.output_devices.assign(ctx->num_outputs(), device);
      inst_ops.config_proto.set_allow_soft_placement(true);
    }
    const absl::Status status =
        lib->Instantiate(segment_func_.name(), AttrSlice(&segment_func_.attr()),
                         inst_ops, &handle_);
    if (!status.ok()) {
      return absl::Status(
          status.code(),
          absl::StrCat(Label(), ": cannot instantiate native segment '",
                       segment_func_.name(), "' on ", device, ": ",
                       status.message()));
    }
    instantiated_lib_ = lib;
    *handle = handle_;
    return absl::OkStatus();
  }

  // Runs the segment function asynchronously, like TF's PartitionedCallOp: a fresh
  // step id with its own rendezvous and step container (per-step resources of the
  // segment are cleaned up when the run ends), the caller's cancellation manager,
  // runner and collective executor.
  void RunNativeSegment(OpKernelContext* ctx, DoneCallback done) {
    FunctionLibraryRuntime* lib = ctx->function_library();
    OP_REQUIRES_ASYNC(ctx, lib != nullptr,
                      absl::InternalError(absl::StrCat(
                          Label(), ": no function library runtime")),
                      done);
    FunctionLibraryRuntime::Handle handle;
    OP_REQUIRES_OK_ASYNC(ctx, SegmentHandle(ctx, lib, &handle), done);

    FunctionLibraryRuntime::Options opts;
    tensorflow::ResourceMgr* resource_mgr = ctx->resource_manager();
    auto* step_container = new ScopedStepContainer(
        opts.step_id, [resource_mgr](const std::string& name) {
          resource_mgr->Cleanup(name).IgnoreError();
        });
    opts.step_container = step_container;
    opts.create_rendezvous = true;
    opts.cancellation_manager = ctx->cancellation_manager();
    opts.collective_executor = ctx->collective_executor();
    opts.stats_collector = ctx->stats_collector();
    opts.runner = ctx->runner();
    opts.run_all_kernels_inline = ctx->run_all_kernels_inline();

    std::vector<Tensor> args;
    args.reserve(ctx->num_inputs());
    for (int i = 0; i < ctx->num_inputs(); ++i) args.push_back(ctx->input(i));
    auto* rets = new std::vector<Tensor>();
    lib->Run(opts, handle, args, rets,
             [this, ctx, rets, step_container,
              done = std::move(done)](const absl::Status& status) {
               std::unique_ptr<std::vector<Tensor>> owned_rets(rets);
               delete step_container;
               ctx->SetStatus(SetOutputs(ctx, status, *rets));
               done();
             });
  }

  absl::Status SetOutputs(OpKernelContext* ctx, const absl::Status& status,
                          const std::vector<Tensor>& rets) const {
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat(Label(), ": native segment '",
                                       segment_func_.name(),
                                       "' failed: ", status.message()));
    }
    if (static_cast<int>(rets.size()) != ctx->num_outputs()) {
      return absl::InternalError(absl::StrCat(
          Label(), ": native segment '", segment_func_.name(), "' returned ",
          rets.size(), " tensors for ", ctx->num_outputs(), " outputs"));
    }
    for (int i = 0; i < ctx->num_outputs(); ++i) {
      if (rets[i].dtype() != ctx->expected_output_dtype(i)) {
        return absl::InternalError(absl::StrCat(
            Label(), ": native segment '", segment_func_.name(), "' output ",
            i, " is ", DataTypeString(rets[i].dtype()), ", expected ",
            DataTypeString(ctx->expected_output_dtype(i))));
      }
      ctx->set_output(i, rets[i]);
    }
    return absl::OkStatus();
  }

  const bool on_gpu_;
  std::string engine_name_;
  NameAttrList segment_func_;
  std::vector<PartialTensorShape> input_shapes_;
  std::unique_ptr<Executor> executor_;  // null when the plan cannot run here
  std::string executor_error_;          // why executor_ is null
  std::atomic<bool> fallback_logged_{false};

  mutex mu_;
  FunctionLibraryRuntime* instantiated_lib_ TF_GUARDED_BY(mu_) = nullptr;
  FunctionLibraryRuntime::Handle handle_ TF_GUARDED_BY(mu_) =
      tensorflow::kInvalidHandle;
};

REGISTER_KERNEL_BUILDER(Name("TftrtLiteEngine").Device(tensorflow::DEVICE_CPU),
                        TftrtLiteEngineOp);
#if GOOGLE_CUDA
REGISTER_KERNEL_BUILDER(Name("TftrtLiteEngine").Device(tensorflow::DEVICE_GPU).HostMemory("host_tensors"),
                        TftrtLiteEngineOp);
#endif  // GOOGLE_CUDA

}  // namespace
}  // namespace tftrt_lite

#include "executor.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <utility>

#include "cuda_api.h"
#include "tactics.h"

namespace tftrt_lite {

using cuda::CublasLtApi;
using cuda::CudnnApi;
using cuda::DriverApi;

namespace {

constexpr uint64_t kAlignment = 256;
constexpr unsigned kDefaultMaxSharedMemory = 48 << 10;

uint64_t AlignUp(uint64_t v) { return (v + kAlignment - 1) / kAlignment * kAlignment; }

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string StepLabel(const plan::Plan& p, size_t index) {
  static const char* kinds[] = {"?", "launch", "gemm", "conv"};
  const plan::Step& s = p.steps[index];
  return std::string(kinds[s.kind <= plan::kConv ? s.kind : 0]) + " step #" + std::to_string(index) + " '" +
         s.name + "'";
}

std::string SymbolsString(const plan::Plan& p, const std::vector<int64_t>& values) {
  std::string s;
  for (size_t i = 0; i < values.size(); ++i) {
    s += (i ? ", " : "") + p.symbols[i].name + "=" + std::to_string(values[i]);
  }
  return s.empty() ? "no symbols" : s;
}

// Largest power of two (up to 256) dividing `ptr`: what cuBLASLt may assume.
uint32_t PointerAlignment(CUdeviceptr ptr) {
  if (ptr == 0) return kAlignment;
  uint64_t low = ptr & (~ptr + 1);
  return static_cast<uint32_t>(std::min<uint64_t>(low, kAlignment));
}

// Pops the context pushed for one Run, on every way out of it.
class ContextScope {
 public:
  ContextScope(const DriverApi* api, CUcontext ctx) : api_(api) {
    pushed_ = api_->CtxPushCurrent(ctx) == CUDA_SUCCESS;
  }
  ~ContextScope() {
    CUcontext ignored;
    if (pushed_) api_->CtxPopCurrent(&ignored);
  }
  bool pushed() const { return pushed_; }

 private:
  const DriverApi* api_;
  bool pushed_ = false;
};

Status ExecError(std::string message) { return Status::Error(Status::kExecution, std::move(message)); }

std::string LtError(const CublasLtApi& lt, cublasStatus_t s) {
  const char* text = lt.GetStatusString(s);
  return text ? text : "cublasStatus " + std::to_string(static_cast<int>(s));
}

std::string DnnError(const CudnnApi& dnn, cudnnStatus_t s) {
  const char* text = dnn.GetErrorString(s);
  return text ? text : "cudnnStatus " + std::to_string(static_cast<int>(s));
}

using CacheKey = std::tuple<uint32_t, uint32_t, std::vector<int64_t>>;  // step, alignment, symbols

// cuBLASLt state of one GEMM step at one set of symbol values.
struct GemmEntry {
  std::mutex mu;  // the bias pointer is set on the shared descriptor right before each enqueue
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;  // cuBLASLt's A (our B), B (our A), C/D
  cublasLtMatmulAlgo_t algo;
  uint64_t workspace = 0;
};

// cuDNN state of one convolution step at one set of symbol values.
struct ConvEntry {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnActivationDescriptor_t act = nullptr;  // the step's activation (identity for none)
  cudnnConvolutionFwdAlgo_t algo;
  uint64_t workspace = 0;
  // cudnnConvolutionBiasActivationForward, tried first where the step allows it; a
  // configuration cuDNN refuses is remembered and runs unfused from then on.
  bool try_fused = false;
  std::atomic<bool> fused_refused{false};
  cudnnConvolutionFwdAlgo_t fused_algo;
  uint64_t fused_workspace = 0;
  // cuDNN pads symmetrically; extra rows/columns of asymmetric padding are made by
  // copying the input into a zeroed, larger scratch tensor first.
  int64_t extra_top = 0, extra_left = 0, padded_h = 0, padded_w = 0;
  uint64_t padded_bytes = 0;
};

// One input-shape set's CUDA graph and the executor-owned memory it runs on: one
// allocation holding the input and output staging copies and the arena, another the
// library workspace (sized once the steps' algorithms are chosen at these addresses).
struct ShapeGraph {
  enum State : int {
    kNew,           // never run: no memory yet
    kWarm,          // ran once uncaptured on its memory; the next call captures
    kReady,         // captured: calls replay `exec`
    kUncapturable,  // capture failed or its memory could not be had; runs uncaptured
  };
  std::atomic<int> state{kNew};
  std::mutex mu;  // held (try-locked) by the one call using the memory and the graph
  CUdeviceptr memory = 0, workspace = 0;
  std::vector<std::vector<int64_t>> input_shapes, output_shapes;
  std::vector<uint64_t> input_bytes, output_bytes;
  std::vector<CUdeviceptr> input_staging, output_staging;
  std::vector<CUdeviceptr> addr;  // every plan buffer's address
  std::vector<void*> entries;     // every step's GemmEntry / ConvEntry (or null)
  // Recorded on the caller's stream after every use and waited on by the next one, so
  // uses from different streams never overlap on the device.
  CUevent done = nullptr;
  CUgraphExec exec = nullptr;

  // Frees the graph and the memory once the device is done with the last use.
  void Release(const DriverApi& drv) {
    if (done) drv.EventSynchronize(done);
    if (exec) drv.GraphExecDestroy(exec);
    if (memory) drv.MemFree(memory);
    if (workspace) drv.MemFree(workspace);
    if (done) drv.EventDestroy(done);
    exec = nullptr;
    memory = workspace = 0;
    done = nullptr;
  }
};

std::atomic<int64_t> graphs_captured{0}, graphs_replayed{0}, graphs_uncapturable{0};

}  // namespace

bool Tf32Allowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("TFTRT_LITE_ALLOW_TF32");
    return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0));
  }();
  return allowed;
}

// Library data types of a plan float dtype (the step validation admits only these three).
cudaDataType_t LtType(uint32_t dtype) {
  return dtype == plan::kFloat16 ? CUDA_R_16F : dtype == plan::kBFloat16 ? CUDA_R_16BF : CUDA_R_32F;
}

cudnnDataType_t DnnType(uint32_t dtype) {
  return dtype == plan::kFloat16 ? CUDNN_DATA_HALF : dtype == plan::kBFloat16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
}

bool CudaGraphsEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("TFTRT_LITE_CUDA_GRAPHS");
    return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0));
  }();
  return enabled;
}

CudaGraphCounts GetCudaGraphCounts() {
  CudaGraphCounts counts;
  counts.captured = graphs_captured.load(std::memory_order_relaxed);
  counts.replayed = graphs_replayed.load(std::memory_order_relaxed);
  counts.uncapturable = graphs_uncapturable.load(std::memory_order_relaxed);
  return counts;
}

// --------------------------------------------------------------------------- device state
// Pinned host memory that host inputs pass through on their way to the device. From
// pageable memory cuMemcpyHtoDAsync may wait for the stream, which would make every
// call wait for the previous call's kernels; from pinned memory the copy is queued like
// a kernel. Slots are used round robin, and a slot is refilled only once the copy that
// last read it is done (its event), so the host waits only when kSlots calls are queued.
struct HostStaging {
  static constexpr int kSlots = 8;
  struct Slot {
    void* host = nullptr;
    uint64_t bytes = 0;
    CUevent copied = nullptr;  // recorded after the copy that last read `host`
  };
  std::mutex mu;
  Slot slots[kSlots];
  int next = 0;

  void Release(const DriverApi& drv) {
    for (Slot& slot : slots) {
      if (slot.copied) {
        drv.EventSynchronize(slot.copied);
        drv.EventDestroy(slot.copied);
      }
      if (slot.host) drv.MemFreeHost(slot.host);
      slot = Slot();
    }
  }
};

struct Executor::DeviceState {
  const DriverApi* driver = nullptr;
  const CublasLtApi* lt_api = nullptr;
  const CudnnApi* dnn_api = nullptr;
  CUcontext context = nullptr;
  std::string arch;
  std::string device_id;    // the GPU as tactic cache lines name it (tactics.h)
  std::string engine_name;  // files this engine's tactics in the process's store
  std::vector<CUmodule> modules;
  std::vector<CUfunction> functions;
  CUdeviceptr weights = 0;
  cublasLtHandle_t lt = nullptr;
  cudnnHandle_t dnn = nullptr;

  std::mutex dnn_mu;  // cudnnSetStream and the enqueue after it, on the shared handle
  std::mutex cache_mu;
  std::map<CacheKey, std::unique_ptr<GemmEntry>> gemms;
  std::map<CacheKey, std::unique_ptr<ConvEntry>> convs;
  std::map<CacheKey, const plan::LaunchConfig*> launches;  // launch steps with variants
  // Chosen algorithms by GEMM problem (shape, layouts, types, epilogue, alignment) and by
  // convolution problem: identical problems of different steps (every transformer layer)
  // are chosen once (tactics.h: timed, or taken from the tactic cache).
  std::map<std::vector<int64_t>, tactics::GemmAlgo> tuned_gemms;
  std::map<std::vector<int64_t>, tactics::ConvAlgo> tuned_convs;
  // Chosen config (index) by kernel problem of launch steps with variants (LaunchKey).
  std::map<std::vector<int64_t>, int> tuned_launches;
  std::mutex graphs_mu;
  std::map<std::vector<int64_t>, std::unique_ptr<ShapeGraph>> graphs;  // by symbol values
  HostStaging staging;

  ~DeviceState() {
    if (driver == nullptr) return;
    // Errors are ignored: at process exit the context may already be gone.
    ContextScope scope(driver, context);
    staging.Release(*driver);
    for (auto& kv : graphs) kv.second->Release(*driver);
    for (auto& kv : gemms) {
      GemmEntry& e = *kv.second;
      if (e.desc) lt_api->MatmulDescDestroy(e.desc);
      for (auto layout : {e.a, e.b, e.d}) if (layout) lt_api->MatrixLayoutDestroy(layout);
    }
    for (auto& kv : convs) {
      ConvEntry& e = *kv.second;
      for (auto t : {e.x, e.y, e.bias}) if (t) dnn_api->DestroyTensorDescriptor(t);
      if (e.w) dnn_api->DestroyFilterDescriptor(e.w);
      if (e.conv) dnn_api->DestroyConvolutionDescriptor(e.conv);
      if (e.act) dnn_api->DestroyActivationDescriptor(e.act);
    }
    if (lt) lt_api->Destroy(lt);
    if (dnn) dnn_api->Destroy(dnn);
    if (weights) driver->MemFree(weights);
    for (CUmodule m : modules) driver->ModuleUnload(m);
  }
};

Executor::Executor(std::string plan_bytes, ExecutorOptions options)
    : bytes_(std::move(plan_bytes)),
      options_(std::move(options)),
      graphs_(options_.max_cached_shapes > 0 && CudaGraphsEnabled()) {}
Executor::~Executor() = default;

// --------------------------------------------------------------------------- create
Status Executor::Create(std::string plan_bytes, std::unique_ptr<Executor>* executor, ExecutorOptions options) {
  std::unique_ptr<Executor> e(new Executor(std::move(plan_bytes), std::move(options)));
  std::string error;
  if (!plan::ParsePlan(reinterpret_cast<const uint8_t*>(e->bytes_.data()), e->bytes_.size(), &e->plan_,
                       &error)) {
    return Status::Error(Status::kInvalidPlan, "cannot load engine plan: " + error);
  }
  Status s = e->Validate();
  if (!s.ok()) return s;
  *executor = std::move(e);
  return Status::Ok();
}

Status Executor::Validate() {
  const plan::Plan& p = plan_;
  auto invalid = [](std::string m) { return Status::Error(Status::kInvalidPlan, std::move(m)); };
  std::vector<int> input_buffer, output_buffer;
  for (size_t i = 0; i < p.buffers.size(); ++i) {
    const plan::Buffer& b = p.buffers[i];
    if (b.storage != plan::kInput && b.storage != plan::kOutput) continue;
    std::vector<int>& slots = b.storage == plan::kInput ? input_buffer : output_buffer;
    if (b.a >= 4096) return invalid("buffer '" + b.name + "' names engine input/output " + std::to_string(b.a));
    if (slots.size() <= b.a) slots.resize(b.a + 1, -1);
    if (slots[b.a] != -1) {
      return invalid("engine " + std::string(b.storage == plan::kInput ? "input " : "output ") +
                     std::to_string(b.a) + " has two buffers ('" + p.buffers[slots[b.a]].name + "', '" + b.name + "')");
    }
    slots[b.a] = static_cast<int>(i);
  }
  for (size_t j = 0; j < input_buffer.size(); ++j) {
    if (input_buffer[j] < 0) return invalid("engine input " + std::to_string(j) + " has no buffer in the plan");
    input_dtypes_.push_back(p.buffers[input_buffer[j]].dtype);
    input_buffers_.push_back(static_cast<uint32_t>(input_buffer[j]));
  }
  if (output_buffer.empty()) return invalid("the plan has no output buffer");
  for (size_t j = 0; j < output_buffer.size(); ++j) {
    if (output_buffer[j] < 0) return invalid("engine output " + std::to_string(j) + " has no buffer in the plan");
    output_dtypes_.push_back(p.buffers[output_buffer[j]].dtype);
    output_buffers_.push_back(static_cast<uint32_t>(output_buffer[j]));
  }
  num_inputs_ = static_cast<int>(input_buffer.size());
  num_outputs_ = static_cast<int>(output_buffer.size());

  for (size_t i = 0; i < p.steps.size(); ++i) {
    const plan::Step& s = p.steps[i];
    const std::string label = StepLabel(p, i);
    // A library step's buffers share one float dtype (float32, float16 or bfloat16) and
    // compute in float32; the plan builder guarantees it, a hand-made plan is refused.
    auto same_float = [&](uint32_t dtype, std::initializer_list<uint32_t> buffers) {
      if (dtype != plan::kFloat32 && dtype != plan::kFloat16 && dtype != plan::kBFloat16) return false;
      for (uint32_t b : buffers) {
        if (b != plan::kNoBuffer && p.buffers[b].dtype != dtype) return false;
      }
      return true;
    };
    if (s.kind == plan::kLaunch) {
      for (const plan::LaunchConfig& k : s.launch.configs) {
        const uint64_t threads = uint64_t(k.block[0]) * k.block[1] * k.block[2];
        if (threads == 0 || threads > 1024) {
          return invalid(label + ": block of " + std::to_string(threads) + " threads (must be 1..1024)");
        }
      }
    } else if (s.kind == plan::kGemm) {
      const plan::GemmStep& g = s.gemm;
      if (g.epilogue.compute != plan::kFloat32 || !same_float(g.epilogue.dtype, {g.a, g.b, g.d, g.bias, g.c})) {
        return invalid(label + ": a GEMM's buffers must share one of float32/float16/bfloat16, computing in float32");
      }
      const uint32_t act = g.epilogue.activation;
      if (act != plan::kActNone && act != plan::kActRelu && act != plan::kActGeluTanh) {
        return invalid(label + ": activation " + std::to_string(act) +
                       " is not a cuBLASLt epilogue (none, relu and tanh-form gelu are)");
      }
      needs_cublaslt_ = true;
    } else if (s.kind == plan::kConv) {
      const plan::ConvStep& c = s.conv;
      if (c.layout > plan::kNHWC || c.filter_layout > plan::kKRSC) {
        return invalid(label + ": unknown layout " + std::to_string(c.layout) + "/" + std::to_string(c.filter_layout));
      }
      if (c.epilogue.compute != plan::kFloat32 || !same_float(c.epilogue.dtype, {c.x, c.w, c.y, c.bias, c.residual})) {
        return invalid(label + ": a convolution's buffers must share one of float32/float16/bfloat16, computing in "
                       "float32");
      }
      if (c.groups == 0 || c.strides[0] == 0 || c.strides[1] == 0 || c.dilations[0] == 0 || c.dilations[1] == 0) {
        return invalid(label + ": groups, strides and dilations must be positive");
      }
      const uint32_t act = c.epilogue.activation;
      if (act != plan::kActNone && act != plan::kActRelu && act != plan::kActSigmoid && act != plan::kActTanh &&
          act != plan::kActClip) {
        return invalid(label + ": activation " + std::to_string(act) + " is not a cuDNN activation");
      }
      if (act == plan::kActClip && c.epilogue.act_p0 != 0.0f) {
        return invalid(label + ": clip(" + std::to_string(c.epilogue.act_p0) + ", " +
                       std::to_string(c.epilogue.act_p1) + ") has a lower bound other than 0, which cuDNN's "
                       "clipped relu cannot apply");
      }
      needs_cudnn_ = true;
    }
  }
  return Status::Ok();
}

// --------------------------------------------------------------------------- device load
Status Executor::GetDeviceState(CUcontext context, DeviceState** out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = devices_.find(context);
  if (it != devices_.end()) {
    *out = it->second.get();
    return Status::Ok();
  }
  auto failed = unloadable_.find(context);
  if (failed != unloadable_.end()) return failed->second;
  Status status = LoadDeviceState(context, out);
  // Only "cannot load here" is final; a failed weight allocation may succeed later.
  if (status.code() == Status::kUnavailable) unloadable_.emplace(context, status);
  return status;
}

// Loads modules, weights and library handles into `context`; called with mu_ held.
Status Executor::LoadDeviceState(CUcontext context, DeviceState** out) {
  auto unavailable = [](std::string m) { return Status::Error(Status::kUnavailable, std::move(m)); };
  std::string error;
  std::unique_ptr<DeviceState> st(new DeviceState());
  const DriverApi* drv = cuda::Driver(&error);
  if (drv == nullptr) return unavailable(error);
  st->context = context;
  CUdevice device;
  int major = 0, minor = 0;
  CUresult r = drv->CtxGetDevice(&device);
  if (r == CUDA_SUCCESS) r = drv->DeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
  if (r == CUDA_SUCCESS) r = drv->DeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
  if (r != CUDA_SUCCESS) return unavailable("cannot query the current CUDA device: " + cuda::DriverErrorString(*drv, r));
  const int device_arch = major * 10 + minor;
  st->arch = "sm_" + std::to_string(device_arch);
  st->device_id = tactics::DeviceId(*drv, device, st->arch);
  st->engine_name = options_.engine_name;
  // From here on the destructor cleans up whatever was created.
  st->driver = drv;

  for (const plan::Kernel& k : plan_.kernels) {
    const void* image = nullptr;
    for (const plan::KernelImage& img : k.images) {
      if (img.arch == st->arch) image = img.cubin;
    }
    std::string what = "cubin for " + st->arch;
    if (image == nullptr) {
      // PTX is JIT-compiled by the driver, for the same or a newer arch only.
      const int ptx_arch = k.ptx_arch.size() > 3 ? std::atoi(k.ptx_arch.c_str() + 3) : 0;
      if (k.ptx.empty() || ptx_arch <= 0 || ptx_arch > device_arch) {
        std::string archs;
        for (const plan::KernelImage& img : k.images) archs += " " + img.arch;
        return unavailable("kernel " + k.name + " has no cubin for " + st->arch + " (plan has:" + archs +
                           ") and no PTX the driver can compile for it (PTX arch '" + k.ptx_arch +
                           "'); rebuild the engine with target_arch including " + st->arch);
      }
      image = k.ptx.c_str();
      what = "PTX of " + k.ptx_arch + " (JIT for " + st->arch + ")";
    }
    CUmodule module;
    r = drv->ModuleLoadData(&module, image);
    if (r != CUDA_SUCCESS) {
      return unavailable("cannot load kernel " + k.name + " from its " + what + ": " +
                         cuda::DriverErrorString(*drv, r));
    }
    st->modules.push_back(module);
    CUfunction fn;
    r = drv->ModuleGetFunction(&fn, module, k.name.c_str());
    if (r != CUDA_SUCCESS) {
      return unavailable("module of kernel " + k.name + " has no function of that name: " +
                         cuda::DriverErrorString(*drv, r));
    }
    st->functions.push_back(fn);
  }
  for (size_t i = 0; i < plan_.steps.size(); ++i) {
    const plan::Step& s = plan_.steps[i];
    if (s.kind != plan::kLaunch) continue;
    for (const plan::LaunchConfig& k : s.launch.configs) {
      if (k.shared_mem <= kDefaultMaxSharedMemory) continue;
      r = drv->FuncSetAttribute(st->functions[k.kernel], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                static_cast<int>(k.shared_mem));
      if (r != CUDA_SUCCESS) {
        return unavailable(StepLabel(plan_, i) + " needs " + std::to_string(k.shared_mem) +
                           " bytes of shared memory, more than " + st->arch + " allows: " +
                           cuda::DriverErrorString(*drv, r));
      }
    }
  }
  if (plan_.weights_size > 0) {
    r = drv->MemAlloc(&st->weights, plan_.weights_size);
    if (r != CUDA_SUCCESS) {
      st->weights = 0;
      return ExecError("cannot allocate " + std::to_string(plan_.weights_size) +
                       " bytes for the engine weights: " + cuda::DriverErrorString(*drv, r));
    }
    r = drv->MemcpyHtoD(st->weights, plan_.weights, plan_.weights_size);
    if (r != CUDA_SUCCESS) return ExecError("cannot upload the engine weights: " + cuda::DriverErrorString(*drv, r));
  }
  if (needs_cublaslt_) {
    st->lt_api = cuda::CublasLt(&error);
    if (st->lt_api == nullptr) return unavailable(error);
    cublasStatus_t s = st->lt_api->Create(&st->lt);
    if (s != CUBLAS_STATUS_SUCCESS) {
      st->lt = nullptr;
      return unavailable("cublasLtCreate failed: " + LtError(*st->lt_api, s));
    }
  }
  if (needs_cudnn_) {
    st->dnn_api = cuda::Cudnn(&error);
    if (st->dnn_api == nullptr) return unavailable(error);
    cudnnStatus_t s = st->dnn_api->Create(&st->dnn);
    if (s != CUDNN_STATUS_SUCCESS) {
      st->dnn = nullptr;
      return unavailable("cudnnCreate failed: " + DnnError(*st->dnn_api, s));
    }
  }
  *out = st.get();
  devices_.emplace(context, std::move(st));
  return Status::Ok();
}

// --------------------------------------------------------------------------- GEMM
namespace {

// The bytes GEMM operand spans: `rows` rows of leading dimension `ld` per batch entry,
// `stride` elements apart.
uint64_t OperandBytes(uint64_t elem, int64_t batch, int64_t stride, int64_t rows, int64_t ld) {
  return elem * (uint64_t(stride) * (batch - 1) + uint64_t(rows) * ld);
}

// The cuBLASLt descriptors and algorithm of GEMM step `index` at evaluated `ev`; timing
// candidates (tactics.h) takes its memory from `scratch`.
Status MakeGemmEntry(Executor::DeviceState& st, const plan::Plan& p, size_t index,
                     const std::vector<int64_t>& ev, uint32_t alignment, const tactics::Scratch& scratch,
                     GemmEntry* e) {
  const CublasLtApi& lt = *st.lt_api;
  const plan::GemmStep& g = p.steps[index].gemm;
  const std::string label = StepLabel(p, index);
  const int64_t m = ev[g.m], n = ev[g.n], k = ev[g.k], batch = ev[g.batch];
  cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
  auto check = [&](const char* what) {
    return s == CUBLAS_STATUS_SUCCESS
               ? Status::Ok()
               : ExecError(label + ": " + what + " failed: " + LtError(lt, s) + " (m=" + std::to_string(m) +
                           " n=" + std::to_string(n) + " k=" + std::to_string(k) + " batch=" + std::to_string(batch) + ")");
  };
#define TFTRT_LITE_LT(call, what)       \
  do {                                  \
    s = (call);                         \
    Status st_ = check(what);           \
    if (!st_.ok()) return st_;          \
  } while (0)

  // float32 steps may round inputs to TF32 (the plan's math mode, and TFTRT_LITE_ALLOW_TF32);
  // half steps run on tensor cores with float32 accumulation and float32 alpha/beta.
  const cudaDataType_t type = LtType(g.epilogue.dtype);
  const bool tf32 = g.epilogue.dtype == plan::kFloat32 && g.epilogue.math == plan::kMathTF32 && Tf32Allowed();
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  TFTRT_LITE_LT(lt.MatmulDescCreate(&e->desc, compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
  // Row-major D = op(A) op(B) is column-major D^T = op(B)^T op(A)^T: cuBLASLt's A is
  // our B and its B is our A, each transposed exactly when ours is.
  const int32_t trans_x = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int32_t trans_y = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  TFTRT_LITE_LT(lt.MatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_x, sizeof(trans_x)),
                "setting TRANSA");
  TFTRT_LITE_LT(lt.MatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_y, sizeof(trans_y)),
                "setting TRANSB");
  const bool bias = g.bias != plan::kNoBuffer;
  cublasLtEpilogue_t epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  if (g.epilogue.activation == plan::kActRelu) epilogue = bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
  if (g.epilogue.activation == plan::kActGeluTanh) epilogue = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  TFTRT_LITE_LT(lt.MatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)),
                "setting the epilogue");

  const uint64_t x_rows = g.trans_b ? k : n, x_cols = g.trans_b ? n : k;
  const uint64_t y_rows = g.trans_a ? m : k, y_cols = g.trans_a ? k : m;
  TFTRT_LITE_LT(lt.MatrixLayoutCreate(&e->a, type, x_rows, x_cols, ev[g.ldb]), "layout of B");
  TFTRT_LITE_LT(lt.MatrixLayoutCreate(&e->b, type, y_rows, y_cols, ev[g.lda]), "layout of A");
  TFTRT_LITE_LT(lt.MatrixLayoutCreate(&e->d, type, n, m, ev[g.ldd]), "layout of D");
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    const std::pair<cublasLtMatrixLayout_t, int64_t> strides[] = {
        {e->a, ev[g.stride_b]}, {e->b, ev[g.stride_a]}, {e->d, ev[g.stride_d]}};
    for (const auto& ls : strides) {
      TFTRT_LITE_LT(lt.MatrixLayoutSetAttribute(ls.first, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)),
                    "setting the batch count");
      TFTRT_LITE_LT(lt.MatrixLayoutSetAttribute(ls.first, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &ls.second,
                                                sizeof(ls.second)),
                    "setting a batch stride");
    }
  }
  cublasLtMatmulPreference_t pref = nullptr;
  TFTRT_LITE_LT(lt.MatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t max_workspace = tactics::kMaxGemmWorkspace;
  s = lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace,
                                      sizeof(max_workspace));
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    if (s == CUBLAS_STATUS_SUCCESS) s = lt.MatmulPreferenceSetAttribute(pref, attr, &alignment, sizeof(alignment));
  }
  // cuBLASLt's first heuristic choice is often not its fastest for the small-M GEMMs of
  // low-batch inference; its top candidates are timed once per distinct problem.
  cublasLtMatmulHeuristicResult_t results[tactics::kHeuristicCandidates];
  int found = 0;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = lt.MatmulAlgoGetHeuristic(st.lt, e->desc, e->a, e->b, e->d, e->d, pref,
                                  tactics::GemmTimingEnabled() ? tactics::kHeuristicCandidates : 1, results,
                                  &found);
  }
  lt.MatmulPreferenceDestroy(pref);
  TFTRT_LITE_LT(s, "cublasLtMatmulAlgoGetHeuristic");
#undef TFTRT_LITE_LT
  if (found == 0) {
    return ExecError(label + ": cuBLASLt has no algorithm for m=" + std::to_string(m) + " n=" + std::to_string(n) +
                     " k=" + std::to_string(k) + " batch=" + std::to_string(batch));
  }
  tactics::GemmProblem problem;
  problem.key = {m, n, k, batch, ev[g.lda], ev[g.ldb], ev[g.ldd], ev[g.stride_a], ev[g.stride_b], ev[g.stride_d],
                 g.trans_a, g.trans_b, g.epilogue.dtype, static_cast<int64_t>(compute),
                 static_cast<int64_t>(epilogue), g.c != plan::kNoBuffer, alignment};
  auto it = st.tuned_gemms.find(problem.key);
  if (it == st.tuned_gemms.end()) {
    const uint64_t elem = plan::DTypeSize(g.epilogue.dtype);
    problem.driver = st.driver;
    problem.lt = st.lt_api;
    problem.handle = st.lt;
    problem.desc = e->desc;
    problem.a = e->a;
    problem.b = e->b;
    problem.d = e->d;
    problem.dtype = g.epilogue.dtype;
    problem.has_bias = bias;
    problem.has_c = g.c != plan::kNoBuffer;
    problem.alpha = g.epilogue.alpha;
    problem.beta = problem.has_c ? g.epilogue.beta : 0.0f;
    problem.a_bytes = OperandBytes(elem, batch, ev[g.stride_b], g.trans_b ? n : k, ev[g.ldb]);
    problem.b_bytes = OperandBytes(elem, batch, ev[g.stride_a], g.trans_a ? k : m, ev[g.lda]);
    problem.d_bytes = OperandBytes(elem, batch, ev[g.stride_d], m, ev[g.ldd]);
    problem.bias_bytes = bias ? elem * n : 0;
    problem.scratch = &scratch;
    problem.device = st.device_id;
    problem.owner = st.engine_name;
    it = st.tuned_gemms.emplace(problem.key, tactics::ChooseGemm(problem, results, found)).first;
  }
  e->algo = it->second.algo;
  e->workspace = it->second.workspace;
  return Status::Ok();
}

// --------------------------------------------------------------------------- conv
// The cuDNN descriptors and algorithm of convolution step `index` at evaluated `ev`;
// timing algorithms (tactics.h) takes its memory from `scratch`.
Status MakeConvEntry(Executor::DeviceState& st, const plan::Plan& p, size_t index,
                     const std::vector<int64_t>& ev, const tactics::Scratch& scratch, ConvEntry* e) {
  const CudnnApi& dnn = *st.dnn_api;
  const plan::ConvStep& c = p.steps[index].conv;
  const std::string label = StepLabel(p, index);
  const int n = static_cast<int>(ev[c.n]), ch = static_cast<int>(ev[c.c]), h = static_cast<int>(ev[c.h]),
            w = static_cast<int>(ev[c.w_in]), k = static_cast<int>(ev[c.k]), r = static_cast<int>(ev[c.r]),
            sz = static_cast<int>(ev[c.s]), oh = static_cast<int>(ev[c.out_h]), ow = static_cast<int>(ev[c.out_w]);
  cudnnStatus_t s = CUDNN_STATUS_SUCCESS;
  auto check = [&](const char* what) {
    return s == CUDNN_STATUS_SUCCESS
               ? Status::Ok()
               : ExecError(label + ": " + what + " failed: " + DnnError(dnn, s) + " (x [" + std::to_string(n) + "," +
                           std::to_string(ch) + "," + std::to_string(h) + "," + std::to_string(w) + "], filter [" +
                           std::to_string(k) + "," + std::to_string(r) + "," + std::to_string(sz) + "], groups " +
                           std::to_string(c.groups) + ")");
  };
#define TFTRT_LITE_DNN(call, what)      \
  do {                                  \
    s = (call);                         \
    Status st_ = check(what);           \
    if (!st_.ok()) return st_;          \
  } while (0)

  const int top = c.pads[0], left = c.pads[1], bottom = c.pads[2], right = c.pads[3];
  const int pad_h = std::min(top, bottom), pad_w = std::min(left, right);
  e->extra_top = top - pad_h;
  e->extra_left = left - pad_w;
  e->padded_h = h + (top - pad_h) + (bottom - pad_h);
  e->padded_w = w + (left - pad_w) + (right - pad_w);
  if (e->padded_h != h || e->padded_w != w) {
    e->padded_bytes = uint64_t(n) * ch * e->padded_h * e->padded_w * plan::DTypeSize(c.epilogue.dtype);
  }
  const cudnnDataType_t type = DnnType(c.epilogue.dtype);
  const cudnnTensorFormat_t format = c.layout == plan::kNHWC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  const cudnnTensorFormat_t filter_format = c.filter_layout == plan::kKRSC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  TFTRT_LITE_DNN(dnn.CreateTensorDescriptor(&e->x), "creating the input descriptor");
  TFTRT_LITE_DNN(dnn.SetTensor4dDescriptor(e->x, format, type, n, ch, static_cast<int>(e->padded_h),
                                           static_cast<int>(e->padded_w)),
                 "describing the input");
  TFTRT_LITE_DNN(dnn.CreateTensorDescriptor(&e->y), "creating the output descriptor");
  TFTRT_LITE_DNN(dnn.SetTensor4dDescriptor(e->y, format, type, n, k, oh, ow), "describing the output");
  TFTRT_LITE_DNN(dnn.CreateTensorDescriptor(&e->bias), "creating the bias descriptor");
  TFTRT_LITE_DNN(dnn.SetTensor4dDescriptor(e->bias, CUDNN_TENSOR_NCHW, type, 1, k, 1, 1),
                 "describing the bias");
  TFTRT_LITE_DNN(dnn.CreateFilterDescriptor(&e->w), "creating the filter descriptor");
  TFTRT_LITE_DNN(dnn.SetFilter4dDescriptor(e->w, type, filter_format, k, ch / static_cast<int>(c.groups),
                                           r, sz),
                 "describing the filter");
  TFTRT_LITE_DNN(dnn.CreateConvolutionDescriptor(&e->conv), "creating the convolution descriptor");
  TFTRT_LITE_DNN(dnn.SetConvolution2dDescriptor(e->conv, pad_h, pad_w, c.strides[0], c.strides[1], c.dilations[0],
                                                c.dilations[1], CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                 "describing the convolution");
  TFTRT_LITE_DNN(dnn.SetConvolutionGroupCount(e->conv, static_cast<int>(c.groups)), "setting the group count");
  // As in TensorFlow: default math lets fp32 convolutions use TF32 tensor cores (unless the
  // plan or TFTRT_LITE_ALLOW_TF32 says exact); half convolutions always use them.
  cudnnMathType_t math = CUDNN_TENSOR_OP_MATH;
  if (c.epilogue.dtype == plan::kFloat32) {
    math = c.epilogue.math == plan::kMathTF32 && Tf32Allowed() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
  }
  TFTRT_LITE_DNN(dnn.SetConvolutionMathType(e->conv, math), "setting the math type");

  cudnnActivationMode_t mode = CUDNN_ACTIVATION_IDENTITY;
  double coef = 0.0;
  switch (c.epilogue.activation) {
    case plan::kActRelu: mode = CUDNN_ACTIVATION_RELU; break;
    case plan::kActSigmoid: mode = CUDNN_ACTIVATION_SIGMOID; break;
    case plan::kActTanh: mode = CUDNN_ACTIVATION_TANH; break;
    case plan::kActClip: mode = CUDNN_ACTIVATION_CLIPPED_RELU; coef = c.epilogue.act_p1; break;
    default: break;
  }
  TFTRT_LITE_DNN(dnn.CreateActivationDescriptor(&e->act), "creating the activation descriptor");
  TFTRT_LITE_DNN(dnn.SetActivationDescriptor(e->act, mode, CUDNN_PROPAGATE_NAN, coef), "describing the activation");

  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int returned = 0;
  TFTRT_LITE_DNN(dnn.GetConvolutionForwardAlgorithm_v7(st.dnn, e->x, e->w, e->conv, e->y,
                                                        CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf),
                 "cudnnGetConvolutionForwardAlgorithm_v7");
  // Every algorithm cuDNN says runs within the workspace limit, in its order (an algorithm
  // may be listed once per math type).
  std::vector<tactics::ConvAlgo> usable;
  for (int i = 0; i < returned; ++i) {
    size_t bytes = 0;
    const bool listed = std::any_of(usable.begin(), usable.end(),
                                    [&](const tactics::ConvAlgo& u) { return u.algo == perf[i].algo; });
    if (listed || perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > tactics::kMaxConvWorkspace ||
        dnn.GetConvolutionForwardWorkspaceSize(st.dnn, e->x, e->w, e->conv, e->y, perf[i].algo, &bytes) !=
            CUDNN_STATUS_SUCCESS) {
      continue;
    }
    tactics::ConvAlgo algo;
    algo.algo = perf[i].algo;
    algo.workspace = bytes;
    usable.push_back(algo);
  }
  if (usable.empty()) return ExecError(label + ": cuDNN offers no forward algorithm for this convolution");
  // Bias and relu fused into cudnnConvolutionBiasActivationForward use the chosen algorithm (below).
  const bool fused_relu = c.bias != plan::kNoBuffer && c.epilogue.activation == plan::kActRelu;
  tactics::ConvProblem problem;
  problem.key = {n, ch, e->padded_h, e->padded_w, k, r, sz, pad_h, pad_w, c.strides[0], c.strides[1],
                 c.dilations[0], c.dilations[1], c.groups, c.epilogue.dtype, c.layout, c.filter_layout,
                 static_cast<int64_t>(math), fused_relu};
  auto it = st.tuned_convs.find(problem.key);
  if (it == st.tuned_convs.end()) {
    const uint64_t elem = plan::DTypeSize(c.epilogue.dtype);
    problem.driver = st.driver;
    problem.dnn = st.dnn_api;
    problem.handle = st.dnn;
    problem.handle_mu = &st.dnn_mu;
    problem.x = e->x;
    problem.y = e->y;
    problem.w = e->w;
    problem.conv = e->conv;
    problem.x_bytes = elem * n * ch * e->padded_h * e->padded_w;
    problem.w_bytes = elem * k * (ch / c.groups) * r * sz;
    problem.y_bytes = elem * n * k * oh * ow;
    if (fused_relu) {
      problem.bias = e->bias;
      problem.act = e->act;
      problem.bias_bytes = elem * k;
    }
    problem.scratch = &scratch;
    problem.device = st.device_id;
    problem.owner = st.engine_name;
    it = st.tuned_convs.emplace(problem.key, tactics::ChooseConv(problem, usable)).first;
  }
  e->algo = it->second.algo;
  e->workspace = it->second.workspace;
  // cudnnConvolutionBiasActivationForward applies relu or identity (the latter only
  // with the implicit precomputed GEMM algorithm) after bias and residual.
  const uint32_t act = c.epilogue.activation;
  if (c.bias != plan::kNoBuffer && (act == plan::kActRelu || act == plan::kActNone)) {
    e->fused_algo = act == plan::kActRelu ? e->algo : CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
    size_t bytes = 0;
    if (dnn.GetConvolutionForwardWorkspaceSize(st.dnn, e->x, e->w, e->conv, e->y, e->fused_algo, &bytes) ==
        CUDNN_STATUS_SUCCESS) {
      e->try_fused = true;
      e->fused_workspace = bytes;
    }
  }
#undef TFTRT_LITE_DNN
  return Status::Ok();
}

// Enqueues convolution step `index` with its cached entry `e`.
Status RunConv(Executor::DeviceState& st, const plan::Plan& p, size_t index, ConvEntry& e, CUstream stream,
               const std::vector<int64_t>& ev, const std::vector<CUdeviceptr>& addr, CUdeviceptr workspace) {
  const plan::ConvStep& c = p.steps[index].conv;
  const CudnnApi& dnn = *st.dnn_api;
  const DriverApi& drv = *st.driver;
  const uint64_t library_workspace = AlignUp(std::max(e.workspace, e.try_fused ? e.fused_workspace : 0));
  CUdeviceptr x = addr[c.x];
  if (e.padded_bytes > 0) {
    // Zero the padded tensor, then copy the input rows into its interior: one 3-D
    // copy whose "rows" are image rows (NHWC: W*C values, NCHW: W values).
    const CUdeviceptr padded = workspace + library_workspace;
    const bool nhwc = c.layout == plan::kNHWC;
    const uint64_t n = ev[c.n], ch = ev[c.c], h = ev[c.h], w = ev[c.w_in];
    const uint64_t pixel = (nhwc ? ch : 1) * plan::DTypeSize(c.epilogue.dtype);
    CUresult r = drv.MemsetD8Async(padded, 0, e.padded_bytes, stream);
    if (r == CUDA_SUCCESS && h > 0 && w > 0) {
      CUDA_MEMCPY3D copy;
      std::memset(&copy, 0, sizeof(copy));
      copy.srcMemoryType = CU_MEMORYTYPE_DEVICE;
      copy.srcDevice = x;
      copy.srcPitch = w * pixel;
      copy.srcHeight = h;
      copy.dstMemoryType = CU_MEMORYTYPE_DEVICE;
      copy.dstDevice = padded;
      copy.dstXInBytes = e.extra_left * pixel;
      copy.dstY = e.extra_top;
      copy.dstPitch = e.padded_w * pixel;
      copy.dstHeight = e.padded_h;
      copy.WidthInBytes = w * pixel;
      copy.Height = h;
      copy.Depth = nhwc ? n : n * ch;
      r = drv.Memcpy3DAsync(&copy, stream);
    }
    if (r != CUDA_SUCCESS) {
      return ExecError(StepLabel(p, index) + ": padding the input asymmetrically failed: " +
                       cuda::DriverErrorString(drv, r));
    }
    x = padded;
  }
  const void* xp = reinterpret_cast<const void*>(x);
  const void* wp = reinterpret_cast<const void*>(addr[c.w]);
  void* yp = reinterpret_cast<void*>(addr[c.y]);
  void* ws = reinterpret_cast<void*>(workspace);
  const float alpha = c.epilogue.alpha, one = 1.0f, zero = 0.0f;
  const bool has_residual = c.residual != plan::kNoBuffer;
  auto fail = [&](const char* what, cudnnStatus_t s) {
    return ExecError(StepLabel(p, index) + ": " + what + " failed: " + DnnError(dnn, s));
  };

  std::lock_guard<std::mutex> lock(st.dnn_mu);
  cudnnStatus_t s = dnn.SetStream(st.dnn, stream);
  if (s != CUDNN_STATUS_SUCCESS) return fail("cudnnSetStream", s);
  if (e.try_fused && !e.fused_refused.load(std::memory_order_relaxed)) {
    // Without a residual, z is y scaled by 0 (cuDNN wants a non-null z).
    const float alpha2 = has_residual ? c.epilogue.beta : 0.0f;
    const void* z = has_residual ? reinterpret_cast<const void*>(addr[c.residual]) : yp;
    s = dnn.ConvolutionBiasActivationForward(st.dnn, &alpha, e.x, xp, e.w, wp, e.conv, e.fused_algo, ws,
                                             e.fused_workspace, &alpha2, e.y, z, e.bias,
                                             reinterpret_cast<const void*>(addr[c.bias]), e.act, e.y, yp);
    if (s == CUDNN_STATUS_SUCCESS) return Status::Ok();
    // Refused for this configuration: nothing was enqueued; run it unfused from now on.
    e.fused_refused.store(true, std::memory_order_relaxed);
  }
  s = dnn.ConvolutionForward(st.dnn, &alpha, e.x, xp, e.w, wp, e.conv, e.algo, ws, e.workspace, &zero, e.y, yp);
  if (s != CUDNN_STATUS_SUCCESS) return fail("cudnnConvolutionForward", s);
  if (has_residual) {
    const float beta = c.epilogue.beta;
    s = dnn.AddTensor(st.dnn, &beta, e.y, reinterpret_cast<const void*>(addr[c.residual]), &one, e.y, yp);
    if (s != CUDNN_STATUS_SUCCESS) return fail("adding the residual (cudnnAddTensor)", s);
  }
  if (c.bias != plan::kNoBuffer) {
    s = dnn.AddTensor(st.dnn, &one, e.bias, reinterpret_cast<const void*>(addr[c.bias]), &one, e.y, yp);
    if (s != CUDNN_STATUS_SUCCESS) return fail("adding the bias (cudnnAddTensor)", s);
  }
  if (c.epilogue.activation != plan::kActNone) {
    s = dnn.ActivationForward(st.dnn, e.act, &one, e.y, yp, &zero, e.y, yp);
    if (s != CUDNN_STATUS_SUCCESS) return fail("cudnnActivationForward", s);
  }
  return Status::Ok();
}

// --------------------------------------------------------------------------- binding
// The context of `stream` (or the current one for the null stream).
Status StreamContext(const DriverApi& drv, CUstream stream, CUcontext* context) {
  *context = nullptr;
  CUresult r = stream != nullptr ? drv.StreamGetCtx(stream, context) : drv.CtxGetCurrent(context);
  if (r != CUDA_SUCCESS || *context == nullptr) {
    return Status::Error(Status::kUnavailable, "no CUDA context for the engine's stream" +
                                                   (r != CUDA_SUCCESS ? ": " + cuda::DriverErrorString(drv, r) : ""));
  }
  return Status::Ok();
}

// Checks the number of inputs and binds every symbol to its input's dim.
Status BindInputSymbols(const plan::Plan& p, int num_inputs, const std::vector<DeviceTensor>& inputs,
                        std::vector<int64_t>* symbols) {
  if (static_cast<int>(inputs.size()) != num_inputs) {
    return Status::Error(Status::kOutOfProfile, "the engine takes " + std::to_string(num_inputs) + " inputs, got " +
                                                    std::to_string(inputs.size()));
  }
  std::vector<std::vector<int64_t>> input_shapes;
  for (const DeviceTensor& t : inputs) input_shapes.push_back(t.shape);
  std::string error;
  if (!plan::BindSymbols(p, input_shapes, symbols, &error)) {
    return Status::Error(Status::kOutOfProfile, "shape outside engine profile: " + error);
  }
  return Status::Ok();
}

// Copies the inputs that are in host memory to device scratch on `stream`, through one
// pinned staging slot (HostStaging) and one cuMemcpyHtoDAsync per call, and returns the
// inputs all on the device in `on_device`. The host memory may be reused as soon as
// this returns: its bytes are in the slot.
Status UploadHostInputs(Executor::DeviceState& st, const std::vector<uint32_t>& dtypes, CUstream stream,
                        DeviceAllocator* allocator, const std::vector<DeviceTensor>& inputs,
                        std::vector<DeviceTensor>* on_device) {
  const DriverApi& drv = *st.driver;
  *on_device = inputs;
  std::vector<uint64_t> offsets(inputs.size(), 0), sizes(inputs.size(), 0);
  uint64_t total = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].on_host) continue;
    uint64_t count = 1;
    for (int64_t d : inputs[i].shape) count *= static_cast<uint64_t>(d);
    sizes[i] = count * plan::DTypeSize(dtypes[i]);
    offsets[i] = total;
    total += (sizes[i] + 255) / 256 * 256;  // every input 256-byte aligned, as the allocator's are
    (*on_device)[i].on_host = false;
    (*on_device)[i].ptr = 0;
  }
  if (total == 0) return Status::Ok();
  CUdeviceptr device = 0;
  Status status = allocator->AllocateTemp(total, &device);
  if (!status.ok()) return status;
  HostStaging& staging = st.staging;
  std::lock_guard<std::mutex> lock(staging.mu);
  HostStaging::Slot& slot = staging.slots[staging.next];
  staging.next = (staging.next + 1) % HostStaging::kSlots;
  CUresult r = CUDA_SUCCESS;
  if (slot.copied != nullptr) {
    r = drv.EventSynchronize(slot.copied);
  } else {
    r = drv.EventCreate(&slot.copied, CU_EVENT_DISABLE_TIMING);
  }
  if (r == CUDA_SUCCESS && slot.bytes < total) {
    if (slot.host != nullptr) drv.MemFreeHost(slot.host);
    slot.host = nullptr;
    slot.bytes = 0;
    const uint64_t bytes = std::max<uint64_t>(total, 4096);
    r = drv.MemHostAlloc(&slot.host, bytes, 0);
    if (r == CUDA_SUCCESS) slot.bytes = bytes;
  }
  if (r != CUDA_SUCCESS) {
    return ExecError("staging the engine's host inputs failed: " + cuda::DriverErrorString(drv, r));
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (sizes[i] == 0) continue;
    std::memcpy(static_cast<char*>(slot.host) + offsets[i], reinterpret_cast<const void*>(inputs[i].ptr), sizes[i]);
    (*on_device)[i].ptr = device + offsets[i];
  }
  r = drv.MemcpyHtoDAsync(device, slot.host, total, stream);
  if (r == CUDA_SUCCESS) r = drv.EventRecord(slot.copied, stream);
  if (r != CUDA_SUCCESS) {
    return ExecError("copying the engine's host inputs to the device failed: " + cuda::DriverErrorString(drv, r));
  }
  return Status::Ok();
}

bool AnyOnHost(const std::vector<DeviceTensor>& tensors) {
  for (const DeviceTensor& t : tensors) {
    if (t.on_host) return true;
  }
  return false;
}

// What one set of symbol values fixes: every expression's value and every buffer's
// shape and size.
struct Bound {
  std::vector<int64_t> symbols;
  std::vector<int64_t> ev;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<uint64_t> bytes;
  int64_t arena_size = 0;
};

// Evaluates the plan at `symbols` and checks each input's shape against it.
Status Bind(const plan::Plan& p, const std::vector<DeviceTensor>& inputs, std::vector<int64_t> symbols, Bound* b) {
  b->symbols = std::move(symbols);
  b->ev.resize(p.exprs.size());
  for (size_t i = 0; i < p.exprs.size(); ++i) b->ev[i] = p.exprs[i].Evaluate(b->symbols);
  const size_t nb = p.buffers.size();
  b->shapes.assign(nb, std::vector<int64_t>());
  b->bytes.assign(nb, 0);
  for (size_t i = 0; i < nb; ++i) {
    const plan::Buffer& buf = p.buffers[i];
    uint64_t count = 1;
    for (uint32_t e : buf.shape) {
      if (b->ev[e] < 0) {
        return Status::Error(Status::kOutOfProfile,
                             "shape outside engine profile: buffer '" + buf.name + "' gets a negative dim with " +
                                 SymbolsString(p, b->symbols));
      }
      b->shapes[i].push_back(b->ev[e]);
      count *= static_cast<uint64_t>(b->ev[e]);
    }
    b->bytes[i] = count * plan::DTypeSize(buf.dtype);
    if (buf.storage == plan::kInput && b->shapes[i] != inputs[buf.a].shape) {
      return Status::Error(Status::kOutOfProfile,
                           "shape outside engine profile: input " + std::to_string(buf.a) + " ('" + buf.name +
                               "') has shape " + ShapeString(inputs[buf.a].shape) + ", the engine needs " +
                               ShapeString(b->shapes[i]) + " with " + SymbolsString(p, b->symbols));
    }
  }
  b->arena_size = b->ev[p.arena_size_expr];
  return Status::Ok();
}

// Every buffer's address: engine inputs and outputs at `input_ptrs` / `output_ptrs`,
// arena buffers at their offsets from `arena`, weights in the uploaded weights.
Status AssignAddresses(const plan::Plan& p, const Bound& b, CUdeviceptr weights,
                       const std::vector<CUdeviceptr>& input_ptrs, const std::vector<CUdeviceptr>& output_ptrs,
                       CUdeviceptr arena, std::vector<CUdeviceptr>* addr) {
  addr->assign(p.buffers.size(), 0);
  const uint64_t arena_bytes = static_cast<uint64_t>(std::max<int64_t>(b.arena_size, 0));
  for (size_t i = 0; i < p.buffers.size(); ++i) {
    const plan::Buffer& buf = p.buffers[i];
    switch (buf.storage) {
      case plan::kInput:
        (*addr)[i] = input_ptrs[buf.a];
        break;
      case plan::kOutput:
        (*addr)[i] = output_ptrs[buf.a];
        break;
      case plan::kWeight:
        if (b.bytes[i] > buf.b) {
          return Status::Error(Status::kInvalidPlan, "weight buffer '" + buf.name + "' has " + std::to_string(buf.b) +
                                                         " bytes, its shape needs " + std::to_string(b.bytes[i]));
        }
        (*addr)[i] = weights + buf.a;
        break;
      case plan::kArena: {
        const int64_t offset = b.ev[buf.a];
        if (offset < 0 || static_cast<uint64_t>(offset) + b.bytes[i] > arena_bytes) {
          return Status::Error(Status::kInvalidPlan, "arena buffer '" + buf.name + "' at offset " +
                                                         std::to_string(offset) + " (" + std::to_string(b.bytes[i]) +
                                                         " bytes) lies outside the " + std::to_string(b.arena_size) +
                                                         "-byte arena with " + SymbolsString(p, b.symbols));
        }
        (*addr)[i] = arena + static_cast<uint64_t>(offset);
        break;
      }
      case plan::kAlias:
        (*addr)[i] = (*addr)[buf.a];
        break;
    }
  }
  return Status::Ok();
}

// --------------------------------------------------------------------------- launches
// Enqueues launch step `index` with kernel `k` (one of its configs) on `stream`; nothing
// when the grid is empty.
Status EnqueueLaunch(const Executor::DeviceState& st, const plan::Plan& p, size_t index, const plan::LaunchConfig& k,
                     const Bound& b, const std::vector<CUdeviceptr>& addr, CUstream stream) {
  const std::vector<int64_t>& ev = b.ev;
  const plan::LaunchStep& l = p.steps[index].launch;
  const int64_t grid[3] = {ev[k.grid[0]], ev[k.grid[1]], ev[k.grid[2]]};
  if (grid[0] <= 0 || grid[1] <= 0 || grid[2] <= 0) return Status::Ok();  // nothing to compute
  if (grid[0] > 0x7FFFFFFF || grid[1] > 65535 || grid[2] > 65535) {
    return ExecError(StepLabel(p, index) + ": grid (" + std::to_string(grid[0]) + ", " + std::to_string(grid[1]) +
                     ", " + std::to_string(grid[2]) + ") exceeds CUDA's limits with " + SymbolsString(p, b.symbols));
  }
  // Every argument takes an 8-byte slot; a float32 sits in its first 4 bytes.
  std::vector<uint64_t> slots(l.args.size(), 0);
  std::vector<void*> params(l.args.size());
  for (size_t a = 0; a < l.args.size(); ++a) {
    const plan::Arg& arg = l.args[a];
    switch (arg.kind) {
      case plan::kArgBuffer: slots[a] = addr[arg.value]; break;
      case plan::kArgExpr: slots[a] = static_cast<uint64_t>(ev[arg.value]); break;
      case plan::kArgI64: slots[a] = arg.value; break;
      case plan::kArgF32: {
        const uint32_t bits = static_cast<uint32_t>(arg.value);
        std::memcpy(&slots[a], &bits, sizeof(bits));
        break;
      }
    }
    params[a] = &slots[a];
  }
  const DriverApi& drv = *st.driver;
  CUresult r = drv.LaunchKernel(st.functions[k.kernel], static_cast<unsigned>(grid[0]),
                                static_cast<unsigned>(grid[1]), static_cast<unsigned>(grid[2]), k.block[0],
                                k.block[1], k.block[2], k.shared_mem, stream, params.data(), nullptr);
  if (r != CUDA_SUCCESS) {
    return ExecError(StepLabel(p, index) + ": launching kernel " + p.kernels[k.kernel].name + " failed: " +
                     cuda::DriverErrorString(drv, r));
  }
  return Status::Ok();
}

// 64-bit FNV-1a of a kernel name (names end in a hash of the source): a tactic cache key
// field that changes whenever a variant's code does.
int64_t NameHash(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return static_cast<int64_t>(h >> 1);
}

// The least alignment of launch step `l`'s buffers.
uint32_t LaunchAlignment(const plan::LaunchStep& l, const std::vector<CUdeviceptr>& addr) {
  uint32_t alignment = static_cast<uint32_t>(kAlignment);
  for (const plan::Arg& arg : l.args) {
    if (arg.kind == plan::kArgBuffer) alignment = std::min(alignment, PointerAlignment(addr[arg.value]));
  }
  return alignment;
}

// The tactic problem of launch step `index` at `b`: its variants' kernels and grids, its
// non-buffer argument values and the least alignment of its buffers. Steps of different
// layers that run the same kernels on the same sizes share it.
std::vector<int64_t> LaunchKey(const plan::Plan& p, size_t index, const Bound& b,
                               const std::vector<CUdeviceptr>& addr) {
  const plan::LaunchStep& l = p.steps[index].launch;
  std::vector<int64_t> key = {static_cast<int64_t>(l.configs.size())};
  for (const plan::LaunchConfig& k : l.configs) {
    key.push_back(NameHash(p.kernels[k.kernel].name));
    for (uint32_t g : k.grid) key.push_back(b.ev[g]);
  }
  for (const plan::Arg& arg : l.args) {
    if (arg.kind != plan::kArgBuffer) {
      key.push_back(arg.kind == plan::kArgExpr ? b.ev[arg.value] : static_cast<int64_t>(arg.value));
    }
  }
  key.push_back(LaunchAlignment(l, addr));
  return key;
}

// The config launch step `index` runs with at `b` (tactics::ChooseKernel), chosen once per
// problem; called with st.cache_mu held.
const plan::LaunchConfig& ChooseLaunch(Executor::DeviceState& st, const plan::Plan& p, size_t index, const Bound& b,
                                       const std::vector<CUdeviceptr>& addr, const tactics::Scratch& scratch) {
  const plan::LaunchStep& l = p.steps[index].launch;
  tactics::KernelProblem problem;
  problem.key = LaunchKey(p, index, b, addr);
  auto it = st.tuned_launches.find(problem.key);
  if (it == st.tuned_launches.end()) {
    problem.driver = st.driver;
    problem.variants = static_cast<int>(l.configs.size());
    problem.launch = [&](int v, CUstream stream) {
      return EnqueueLaunch(st, p, index, l.configs[v], b, addr, stream).ok();
    };
    problem.after = scratch.after;
    problem.device = st.device_id;
    problem.owner = st.engine_name;
    it = st.tuned_launches.emplace(problem.key, tactics::ChooseKernel(problem)).first;
  }
  return l.configs[it->second];
}

// Tuned steps: the cached descriptors and algorithms of library steps for these symbol
// values and addresses (GemmEntry / ConvEntry per step), the chosen plan::LaunchConfig of
// launch steps with variants (null for other and empty steps), and the workspace the
// library steps need. One workspace serves them all, since the steps run one after
// another on the stream. A step met for the first time chooses its algorithm or variant,
// timing candidates on `scratch` (variants on the step's own buffers, tactics.h).
Status ResolveTunedSteps(Executor::DeviceState& st, const plan::Plan& p, const Bound& b,
                           const std::vector<CUdeviceptr>& addr, const tactics::Scratch& scratch,
                           std::vector<void*>* entries, uint64_t* workspace_bytes) {
  const std::vector<int64_t>& ev = b.ev;
  entries->assign(p.steps.size(), nullptr);
  *workspace_bytes = 0;
  for (size_t i = 0; i < p.steps.size(); ++i) {
    const plan::Step& s = p.steps[i];
    if (s.kind == plan::kGemm) {
      const plan::GemmStep& g = s.gemm;
      if (ev[g.m] <= 0 || ev[g.n] <= 0 || ev[g.batch] <= 0) continue;  // empty output
      if (ev[g.k] <= 0) return ExecError(StepLabel(p, i) + ": inner dimension k=" + std::to_string(ev[g.k]));
      uint32_t alignment = std::min({PointerAlignment(addr[g.a]), PointerAlignment(addr[g.b]),
                                     PointerAlignment(addr[g.d]),
                                     g.c == plan::kNoBuffer ? uint32_t(kAlignment) : PointerAlignment(addr[g.c])});
      CacheKey key(static_cast<uint32_t>(i), alignment, b.symbols);
      std::lock_guard<std::mutex> lock(st.cache_mu);
      std::unique_ptr<GemmEntry>& slot = st.gemms[key];
      if (!slot) {
        std::unique_ptr<GemmEntry> e(new GemmEntry());
        Status status = MakeGemmEntry(st, p, i, ev, alignment, scratch, e.get());
        if (!status.ok()) {
          st.gemms.erase(key);
          // The partly built entry's descriptors are released with the state's others.
          if (e->desc) st.lt_api->MatmulDescDestroy(e->desc);
          for (auto layout : {e->a, e->b, e->d}) if (layout) st.lt_api->MatrixLayoutDestroy(layout);
          return status;
        }
        slot = std::move(e);
      }
      (*entries)[i] = slot.get();
      *workspace_bytes = std::max(*workspace_bytes, AlignUp(slot->workspace));
    } else if (s.kind == plan::kLaunch && s.launch.configs.size() > 1) {
      CacheKey key(static_cast<uint32_t>(i), LaunchAlignment(s.launch, addr), b.symbols);
      std::lock_guard<std::mutex> lock(st.cache_mu);
      const plan::LaunchConfig*& slot = st.launches[key];
      if (slot == nullptr) slot = &ChooseLaunch(st, p, i, b, addr, scratch);  // the problem's key only on a miss
      (*entries)[i] = const_cast<plan::LaunchConfig*>(slot);
    } else if (s.kind == plan::kConv) {
      const plan::ConvStep& c = s.conv;
      if (ev[c.n] <= 0 || ev[c.k] <= 0 || ev[c.out_h] <= 0 || ev[c.out_w] <= 0) continue;
      CacheKey key(static_cast<uint32_t>(i), 0, b.symbols);
      std::lock_guard<std::mutex> lock(st.cache_mu);
      std::unique_ptr<ConvEntry>& slot = st.convs[key];
      if (!slot) {
        std::unique_ptr<ConvEntry> e(new ConvEntry());
        Status status = MakeConvEntry(st, p, i, ev, scratch, e.get());
        if (!status.ok()) {
          st.convs.erase(key);
          for (auto t : {e->x, e->y, e->bias}) if (t) st.dnn_api->DestroyTensorDescriptor(t);
          if (e->w) st.dnn_api->DestroyFilterDescriptor(e->w);
          if (e->conv) st.dnn_api->DestroyConvolutionDescriptor(e->conv);
          if (e->act) st.dnn_api->DestroyActivationDescriptor(e->act);
          return status;
        }
        slot = std::move(e);
      }
      const ConvEntry& e = *slot;
      (*entries)[i] = slot.get();
      *workspace_bytes = std::max(*workspace_bytes,
                                  AlignUp(std::max(e.workspace, e.try_fused ? e.fused_workspace : 0)) +
                                      AlignUp(e.padded_bytes));
    }
  }
  return Status::Ok();
}

// --------------------------------------------------------------------------- enqueue
// Enqueues every step, in plan order, on `stream`. With `marks` (steps + 1 events),
// marks[i] is recorded before step i and the last one after the last step.
Status EnqueueSteps(Executor::DeviceState& st, const plan::Plan& p, const Bound& b,
                    const std::vector<CUdeviceptr>& addr, const std::vector<void*>& entries, CUdeviceptr workspace,
                    CUstream stream, const std::vector<CUevent>* marks) {
  const DriverApi& drv = *st.driver;
  const std::vector<int64_t>& ev = b.ev;
  auto mark = [&](size_t i) -> Status {
    if (marks == nullptr) return Status::Ok();
    CUresult r = drv.EventRecord((*marks)[i], stream);
    return r == CUDA_SUCCESS ? Status::Ok() : ExecError("recording a timing event failed: " +
                                                        cuda::DriverErrorString(drv, r));
  };
  for (size_t i = 0; i < p.steps.size(); ++i) {
    Status status = mark(i);
    if (!status.ok()) return status;
    const plan::Step& s = p.steps[i];
    if (s.kind == plan::kLaunch) {
      const plan::LaunchConfig& k =
          entries[i] != nullptr ? *static_cast<const plan::LaunchConfig*>(entries[i]) : s.launch.configs[0];
      status = EnqueueLaunch(st, p, i, k, b, addr, stream);
      if (!status.ok()) return status;
    } else if (s.kind == plan::kGemm && entries[i] != nullptr) {
      const plan::GemmStep& g = s.gemm;
      GemmEntry& e = *static_cast<GemmEntry*>(entries[i]);
      const float alpha = g.epilogue.alpha;
      const bool has_c = g.c != plan::kNoBuffer;
      const float beta = has_c ? g.epilogue.beta : 0.0f;
      const CUdeviceptr c_ptr = has_c ? addr[g.c] : addr[g.d];
      const CublasLtApi& lt = *st.lt_api;
      std::lock_guard<std::mutex> lock(e.mu);
      cublasStatus_t ls = CUBLAS_STATUS_SUCCESS;
      if (g.bias != plan::kNoBuffer) {
        const void* bias = reinterpret_cast<const void*>(addr[g.bias]);
        ls = lt.MatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
      }
      if (ls == CUBLAS_STATUS_SUCCESS) {
        ls = lt.Matmul(st.lt, e.desc, &alpha, reinterpret_cast<const void*>(addr[g.b]), e.a,
                       reinterpret_cast<const void*>(addr[g.a]), e.b, &beta, reinterpret_cast<const void*>(c_ptr), e.d,
                       reinterpret_cast<void*>(addr[g.d]), e.d, &e.algo, reinterpret_cast<void*>(workspace),
                       e.workspace, stream);
      }
      if (ls != CUBLAS_STATUS_SUCCESS) {
        return ExecError(StepLabel(p, i) + ": cublasLtMatmul failed: " + LtError(lt, ls) + " with " +
                         SymbolsString(p, b.symbols));
      }
    } else if (s.kind == plan::kConv && entries[i] != nullptr) {
      Status status = RunConv(st, p, i, *static_cast<ConvEntry*>(entries[i]), stream, ev, addr, workspace);
      if (!status.ok()) return status;
    }
  }
  return mark(p.steps.size());
}

// Allocates engine output j of `shapes[j]` (`bytes[j]` bytes) through `allocator`.
Status AllocateOutputs(const std::vector<std::vector<int64_t>>& shapes, const std::vector<uint64_t>& bytes,
                       DeviceAllocator* allocator, std::vector<DeviceTensor>* outputs) {
  outputs->assign(shapes.size(), DeviceTensor());
  for (size_t j = 0; j < shapes.size(); ++j) {
    (*outputs)[j].shape = shapes[j];
    Status status = allocator->AllocateOutput(static_cast<int>(j), shapes[j], bytes[j], &(*outputs)[j].ptr);
    if (!status.ok()) return status;
  }
  return Status::Ok();
}

// Where an uncaptured call enqueues its steps: arena, outputs and workspace from the
// caller's allocator, and every library step's state at those addresses.
struct Prepared {
  std::vector<CUdeviceptr> addr;
  std::vector<void*> entries;
  CUdeviceptr workspace = 0;
};

// Allocates the bound outputs (engine output j is plan buffer `output_buffers[j]`).
Status AllocateBoundOutputs(const Bound& b, const std::vector<uint32_t>& output_buffers, DeviceAllocator* allocator,
                            std::vector<DeviceTensor>* outputs) {
  std::vector<std::vector<int64_t>> shapes;
  std::vector<uint64_t> bytes;
  for (uint32_t buffer : output_buffers) {
    shapes.push_back(b.shapes[buffer]);
    bytes.push_back(b.bytes[buffer]);
  }
  return AllocateOutputs(shapes, bytes, allocator, outputs);
}

// Where a call's algorithm timing gets scratch: the call's allocator, after the work
// already on the call's stream.
tactics::Scratch CallScratch(DeviceAllocator* allocator, CUstream stream) {
  tactics::Scratch scratch;
  scratch.allocate = [allocator](uint64_t bytes, CUdeviceptr* ptr) { return allocator->AllocateTemp(bytes, ptr).ok(); };
  scratch.after = stream;
  return scratch;
}

// `outputs_allocated`: the call already holds its outputs (from a graph path that
// gave up after allocating them), so only scratch is allocated here.
Status PrepareOnAllocator(Executor::DeviceState& st, const plan::Plan& p, const std::vector<uint32_t>& output_buffers,
                          const Bound& b, const std::vector<DeviceTensor>& inputs, DeviceAllocator* allocator,
                          CUstream stream, bool outputs_allocated, std::vector<DeviceTensor>* outputs,
                          Prepared* prep) {
  CUdeviceptr arena = 0;
  if (b.arena_size > 0) {
    Status status = allocator->AllocateTemp(static_cast<uint64_t>(b.arena_size), &arena);
    if (!status.ok()) return status;
  }
  if (!outputs_allocated) {
    Status status = AllocateBoundOutputs(b, output_buffers, allocator, outputs);
    if (!status.ok()) return status;
  }
  std::vector<CUdeviceptr> input_ptrs, output_ptrs;
  for (const DeviceTensor& t : inputs) input_ptrs.push_back(t.ptr);
  for (const DeviceTensor& t : *outputs) output_ptrs.push_back(t.ptr);
  Status status = AssignAddresses(p, b, st.weights, input_ptrs, output_ptrs, arena, &prep->addr);
  if (!status.ok()) return status;
  uint64_t workspace_bytes = 0;
  status = ResolveTunedSteps(st, p, b, prep->addr, CallScratch(allocator, stream), &prep->entries,
                               &workspace_bytes);
  if (!status.ok()) return status;
  if (workspace_bytes > 0) return allocator->AllocateTemp(workspace_bytes, &prep->workspace);
  return Status::Ok();
}

// --------------------------------------------------------------------------- CUDA graphs
// The graph cache entry of `symbols` on this device: found, or added while fewer than
// `max_shapes` are cached; null when the cache is full of other shapes.
ShapeGraph* CachedGraph(Executor::DeviceState& st, const std::vector<int64_t>& symbols, int max_shapes) {
  std::lock_guard<std::mutex> lock(st.graphs_mu);
  auto it = st.graphs.find(symbols);
  if (it != st.graphs.end()) return it->second.get();
  if (static_cast<int>(st.graphs.size()) >= max_shapes) return nullptr;
  std::unique_ptr<ShapeGraph>& slot = st.graphs[symbols];
  slot.reset(new ShapeGraph());
  return slot.get();
}

bool SameShapes(const std::vector<std::vector<int64_t>>& shapes, const std::vector<DeviceTensor>& inputs) {
  if (shapes.size() != inputs.size()) return false;
  for (size_t j = 0; j < shapes.size(); ++j) {
    if (shapes[j] != inputs[j].shape) return false;
  }
  return true;
}

// Allocates g's memory for the bound shapes (staging for every input and output, then
// the arena; the workspace separately) and resolves every library step's state at
// those addresses (timing algorithms on `scratch`). Enqueues nothing.
Status SetUpGraphMemory(Executor::DeviceState& st, const plan::Plan& p, const std::vector<uint32_t>& input_buffers,
                        const std::vector<uint32_t>& output_buffers, const Bound& b, const tactics::Scratch& scratch,
                        ShapeGraph* g) {
  const DriverApi& drv = *st.driver;
  uint64_t total = 0;
  std::vector<uint64_t> input_offsets, output_offsets;
  for (uint32_t buffer : input_buffers) {
    g->input_shapes.push_back(b.shapes[buffer]);
    g->input_bytes.push_back(b.bytes[buffer]);
    input_offsets.push_back(total);
    total += AlignUp(b.bytes[buffer]);
  }
  for (uint32_t buffer : output_buffers) {
    g->output_shapes.push_back(b.shapes[buffer]);
    g->output_bytes.push_back(b.bytes[buffer]);
    output_offsets.push_back(total);
    total += AlignUp(b.bytes[buffer]);
  }
  const uint64_t arena_offset = total;
  total += AlignUp(static_cast<uint64_t>(std::max<int64_t>(b.arena_size, 0)));
  auto failed = [&](const std::string& what, CUresult r) {
    return ExecError(what + " failed: " + cuda::DriverErrorString(drv, r));
  };
  CUresult r = drv.EventCreate(&g->done, CU_EVENT_DISABLE_TIMING);
  if (r != CUDA_SUCCESS) {
    g->done = nullptr;
    return failed("creating the graph's event", r);
  }
  if (total > 0) {
    r = drv.MemAlloc(&g->memory, total);
    if (r != CUDA_SUCCESS) {
      g->memory = 0;
      return failed("allocating " + std::to_string(total) + " bytes of graph memory (staging and arena)", r);
    }
  }
  for (uint64_t offset : input_offsets) g->input_staging.push_back(g->memory + offset);
  for (uint64_t offset : output_offsets) g->output_staging.push_back(g->memory + offset);
  Status status = AssignAddresses(p, b, st.weights, g->input_staging, g->output_staging, g->memory + arena_offset,
                                  &g->addr);
  if (!status.ok()) return status;
  uint64_t workspace_bytes = 0;
  status = ResolveTunedSteps(st, p, b, g->addr, scratch, &g->entries, &workspace_bytes);
  if (!status.ok()) return status;
  if (workspace_bytes > 0) {
    r = drv.MemAlloc(&g->workspace, workspace_bytes);
    if (r != CUDA_SUCCESS) {
      g->workspace = 0;
      return failed("allocating " + std::to_string(workspace_bytes) + " bytes of graph library workspace", r);
    }
  }
  return Status::Ok();
}

// Enqueues the copies of the caller's inputs into g's staging buffers, after the
// previous use of g (on whatever stream) has finished.
CUresult StageInputs(const DriverApi& drv, const ShapeGraph& g, const std::vector<DeviceTensor>& inputs,
                     CUstream stream) {
  CUresult r = drv.StreamWaitEvent(stream, g.done, 0);
  for (size_t j = 0; r == CUDA_SUCCESS && j < inputs.size(); ++j) {
    if (g.input_bytes[j] > 0) r = drv.MemcpyDtoDAsync(g.input_staging[j], inputs[j].ptr, g.input_bytes[j], stream);
  }
  return r;
}

// Enqueues the copies of g's staged outputs into the caller's and marks the end of
// this use of g.
CUresult UnstageOutputs(const DriverApi& drv, const ShapeGraph& g, const std::vector<DeviceTensor>& outputs,
                        CUstream stream) {
  CUresult r = CUDA_SUCCESS;
  for (size_t j = 0; r == CUDA_SUCCESS && j < outputs.size(); ++j) {
    if (g.output_bytes[j] > 0) r = drv.MemcpyDtoDAsync(outputs[j].ptr, g.output_staging[j], g.output_bytes[j], stream);
  }
  return r == CUDA_SUCCESS ? drv.EventRecord(g.done, stream) : r;
}

// Runs the plan uncaptured on g's memory: the warm-up that makes cuBLASLt and cuDNN
// load the kernels they chose for g's addresses before anything is captured.
Status WarmUpGraph(Executor::DeviceState& st, const plan::Plan& p, const Bound& b, ShapeGraph& g, CUstream stream,
                   const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs) {
  const DriverApi& drv = *st.driver;
  CUresult r = StageInputs(drv, g, inputs, stream);
  Status status = r == CUDA_SUCCESS ? Status::Ok()
                                    : ExecError("staging the inputs failed: " + cuda::DriverErrorString(drv, r));
  if (status.ok()) status = EnqueueSteps(st, p, b, g.addr, g.entries, g.workspace, stream, nullptr);
  if (status.ok()) {
    r = UnstageOutputs(drv, g, outputs, stream);
    if (r == CUDA_SUCCESS) return status;
    status = ExecError("copying the outputs out failed: " + cuda::DriverErrorString(drv, r));
  }
  drv.EventRecord(g.done, stream);  // whatever was enqueued finishes before g is freed
  return status;
}

// Captures the plan's steps on g's memory into g.exec. The steps are recorded on a
// private stream and never run, so the caller's stream, and whatever other threads
// enqueue on it meanwhile, stay out of the graph. THREAD_LOCAL mode forbids unsafe
// calls (allocation, synchronisation) on this thread only, so other threads carry on.
Status CaptureGraph(Executor::DeviceState& st, const plan::Plan& p, const Bound& b, ShapeGraph* g) {
  const DriverApi& drv = *st.driver;
  CUstream capture = nullptr;
  CUresult r = drv.StreamCreate(&capture, CU_STREAM_NON_BLOCKING);
  if (r != CUDA_SUCCESS) return ExecError("creating the capture stream failed: " + cuda::DriverErrorString(drv, r));
  r = drv.StreamBeginCapture(capture, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
  if (r != CUDA_SUCCESS) {
    drv.StreamDestroy(capture);
    return ExecError("cuStreamBeginCapture failed: " + cuda::DriverErrorString(drv, r));
  }
  Status status = EnqueueSteps(st, p, b, g->addr, g->entries, g->workspace, capture, nullptr);
  CUgraph graph = nullptr;
  r = drv.StreamEndCapture(capture, &graph);  // ends the capture after a failed step too
  drv.StreamDestroy(capture);
  if (status.ok() && (r != CUDA_SUCCESS || graph == nullptr)) {
    status = ExecError("cuStreamEndCapture failed: " +
                       (r != CUDA_SUCCESS ? cuda::DriverErrorString(drv, r) : std::string("no graph")) +
                       " (a call in the plan cannot be captured)");
  }
  if (status.ok()) {
    r = drv.GraphInstantiate(&g->exec, graph, 0);
    if (r != CUDA_SUCCESS) {
      g->exec = nullptr;
      status = ExecError("cuGraphInstantiate failed: " + cuda::DriverErrorString(drv, r));
    }
  }
  if (graph != nullptr) drv.GraphDestroy(graph);  // the instantiated graph does not need it
  return status;
}

// Serves a call with g's captured graph: inputs in, graph, outputs out.
Status ReplayGraph(const DriverApi& drv, ShapeGraph& g, CUstream stream, const std::vector<DeviceTensor>& inputs,
                   const std::vector<DeviceTensor>& outputs) {
  CUresult r = StageInputs(drv, g, inputs, stream);
  if (r == CUDA_SUCCESS) r = drv.GraphLaunch(g.exec, stream);
  if (r == CUDA_SUCCESS) r = UnstageOutputs(drv, g, outputs, stream);
  if (r != CUDA_SUCCESS) {
    drv.EventRecord(g.done, stream);  // whatever was enqueued finishes before g is freed
    return ExecError("replaying the CUDA graph failed: " + cuda::DriverErrorString(drv, r));
  }
  graphs_replayed.fetch_add(1, std::memory_order_relaxed);
  return Status::Ok();
}

// CUDA events created for one Profile call, destroyed with it.
class EventSet {
 public:
  explicit EventSet(const DriverApi& drv) : drv_(drv) {}
  ~EventSet() {
    for (CUevent e : events_) drv_.EventDestroy(e);
  }
  Status Create(size_t count) {
    for (size_t i = 0; i < count; ++i) {
      CUevent e = nullptr;
      CUresult r = drv_.EventCreate(&e, CU_EVENT_DEFAULT);
      if (r != CUDA_SUCCESS) return ExecError("creating a timing event failed: " + cuda::DriverErrorString(drv_, r));
      events_.push_back(e);
    }
    return Status::Ok();
  }
  const std::vector<CUevent>& events() const { return events_; }

 private:
  const DriverApi& drv_;
  std::vector<CUevent> events_;
};

}  // namespace

// --------------------------------------------------------------------------- run
Status Executor::Run(CUstream stream, const std::vector<DeviceTensor>& given, DeviceAllocator* allocator,
                     std::vector<DeviceTensor>* outputs) {
  std::string error;
  const DriverApi* drv = cuda::Driver(&error);
  if (drv == nullptr) return Status::Error(Status::kUnavailable, error);
  CUcontext context = nullptr;
  Status status = StreamContext(*drv, stream, &context);
  if (!status.ok()) return status;
  ContextScope scope(drv, context);
  if (!scope.pushed()) return Status::Error(Status::kUnavailable, "cannot make the stream's CUDA context current");
  DeviceState* st = nullptr;
  status = GetDeviceState(context, &st);
  if (!status.ok()) return status;
  std::vector<int64_t> symbols;
  status = BindInputSymbols(plan_, num_inputs_, given, &symbols);
  if (!status.ok()) return status;
  std::vector<DeviceTensor> uploaded;
  if (AnyOnHost(given)) {
    status = UploadHostInputs(*st, input_dtypes_, stream, allocator, given, &uploaded);
    if (!status.ok()) return status;
  }
  const std::vector<DeviceTensor>& inputs = uploaded.empty() ? given : uploaded;

  // A shape with a graph slot is served on the slot's memory when no other call holds
  // it; a busy or uncapturable slot, or a shape past the cache, runs uncaptured.
  ShapeGraph* g = graphs_ ? CachedGraph(*st, symbols, options_.max_cached_shapes) : nullptr;
  std::unique_lock<std::mutex> graph_lock;
  if (g != nullptr && g->state.load(std::memory_order_acquire) != ShapeGraph::kUncapturable) {
    graph_lock = std::unique_lock<std::mutex>(g->mu, std::try_to_lock);
  }
  const int state = graph_lock.owns_lock() ? g->state.load(std::memory_order_acquire) : ShapeGraph::kUncapturable;
  // From here on the shape runs uncaptured; `why` is logged.
  auto give_up_graph = [&](const std::string& symbol_values, const std::string& why) {
    g->state.store(ShapeGraph::kUncapturable, std::memory_order_release);
    ReportUncapturable(symbol_values, why);
    g->Release(*drv);
  };
  if (state == ShapeGraph::kReady && SameShapes(g->input_shapes, inputs)) {
    status = AllocateOutputs(g->output_shapes, g->output_bytes, allocator, outputs);
    if (!status.ok()) return status;
    status = ReplayGraph(*drv, *g, stream, inputs, *outputs);
    if (!status.ok()) give_up_graph(SymbolsString(plan_, symbols), status.message());
    return status;
  }

  Bound b;
  status = Bind(plan_, inputs, std::move(symbols), &b);
  if (!status.ok()) return status;
  bool outputs_allocated = false;
  if (state == ShapeGraph::kNew || state == ShapeGraph::kWarm) {
    status = AllocateBoundOutputs(b, output_buffers_, allocator, outputs);
    if (!status.ok()) return status;
    outputs_allocated = true;
    // Setting up and capturing enqueue nothing: if either fails, the call runs
    // uncaptured below. A failure after that is the call's own.
    Status setup = state == ShapeGraph::kNew ? SetUpGraphMemory(*st, plan_, input_buffers_, output_buffers_, b,
                                                                CallScratch(allocator, stream), g)
                                              : CaptureGraph(*st, plan_, b, g);
    if (setup.ok()) {
      if (state == ShapeGraph::kWarm) {
        graphs_captured.fetch_add(1, std::memory_order_relaxed);
        g->state.store(ShapeGraph::kReady, std::memory_order_release);
      }
      status = state == ShapeGraph::kNew ? WarmUpGraph(*st, plan_, b, *g, stream, inputs, *outputs)
                                         : ReplayGraph(*drv, *g, stream, inputs, *outputs);
      if (!status.ok()) {
        give_up_graph(SymbolsString(plan_, b.symbols), status.message());
        return status;
      }
      if (state == ShapeGraph::kNew) g->state.store(ShapeGraph::kWarm, std::memory_order_release);
      return status;
    }
    give_up_graph(SymbolsString(plan_, b.symbols), setup.message());
  }
  graph_lock = std::unique_lock<std::mutex>();  // the uncaptured run needs no slot

  Prepared prep;
  status = PrepareOnAllocator(*st, plan_, output_buffers_, b, inputs, allocator, stream, outputs_allocated, outputs,
                              &prep);
  if (!status.ok()) return status;
  return EnqueueSteps(*st, plan_, b, prep.addr, prep.entries, prep.workspace, stream, nullptr);
}

void Executor::ReportUncapturable(const std::string& symbols, const std::string& why) {
  graphs_uncapturable.fetch_add(1, std::memory_order_relaxed);
  if (uncapturable_logged_.exchange(true)) return;
  std::fprintf(stderr,
               "tftrt_lite: %s runs without a CUDA graph at %s because %s. Logged once per engine; "
               "tftrt_lite_cuda_graph_counts() counts such shapes.\n",
               options_.label.c_str(), symbols.c_str(), why.c_str());
}

// --------------------------------------------------------------------------- profile
Status Executor::Profile(CUstream stream, const std::vector<DeviceTensor>& given, DeviceAllocator* allocator,
                         int repeats, std::vector<double>* step_us, std::vector<int>* step_kernels,
                         std::vector<DeviceTensor>* outputs) {
  if (repeats < 1) return ExecError("profiling needs at least one repeat, got " + std::to_string(repeats));
  std::string error;
  const DriverApi* drv = cuda::Driver(&error);
  if (drv == nullptr) return Status::Error(Status::kUnavailable, error);
  CUcontext context = nullptr;
  Status status = StreamContext(*drv, stream, &context);
  if (!status.ok()) return status;
  ContextScope scope(drv, context);
  if (!scope.pushed()) return Status::Error(Status::kUnavailable, "cannot make the stream's CUDA context current");
  DeviceState* st = nullptr;
  status = GetDeviceState(context, &st);
  if (!status.ok()) return status;
  std::vector<int64_t> symbols;
  status = BindInputSymbols(plan_, num_inputs_, given, &symbols);
  if (!status.ok()) return status;
  std::vector<DeviceTensor> uploaded;
  if (AnyOnHost(given)) {
    status = UploadHostInputs(*st, input_dtypes_, stream, allocator, given, &uploaded);
    if (!status.ok()) return status;
  }
  const std::vector<DeviceTensor>& inputs = uploaded.empty() ? given : uploaded;
  Bound b;
  status = Bind(plan_, inputs, std::move(symbols), &b);
  if (!status.ok()) return status;
  Prepared prep;
  status = PrepareOnAllocator(*st, plan_, output_buffers_, b, inputs, allocator, stream, false, outputs, &prep);
  if (!status.ok()) return status;

  const size_t n = plan_.steps.size();
  EventSet marks(*drv);
  status = marks.Create(n + 1);
  if (!status.ok()) return status;
  std::vector<std::vector<double>> samples(n, std::vector<double>(repeats));
  for (int rep = 0; rep < repeats; ++rep) {
    status = EnqueueSteps(*st, plan_, b, prep.addr, prep.entries, prep.workspace, stream, &marks.events());
    if (!status.ok()) return status;
    CUresult r = drv->EventSynchronize(marks.events()[n]);
    for (size_t i = 0; r == CUDA_SUCCESS && i < n; ++i) {
      float ms = 0.0f;
      r = drv->EventElapsedTime(&ms, marks.events()[i], marks.events()[i + 1]);
      samples[i][rep] = 1000.0 * ms;
    }
    if (r != CUDA_SUCCESS) return ExecError("reading the step timings failed: " + cuda::DriverErrorString(*drv, r));
  }
  step_us->assign(n, 0.0);
  step_kernels->assign(n, -1);
  for (size_t i = 0; i < n; ++i) {
    const plan::Step& s = plan_.steps[i];
    if (s.kind == plan::kLaunch) {
      const void* chosen = prep.entries[i];
      (*step_kernels)[i] = static_cast<int>(
          chosen != nullptr ? static_cast<const plan::LaunchConfig*>(chosen)->kernel : s.launch.configs[0].kernel);
    }
    std::vector<double>& v = samples[i];
    std::sort(v.begin(), v.end());
    (*step_us)[i] = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  }
  return Status::Ok();
}

}  // namespace tftrt_lite

extern "C" void tftrt_lite_cuda_graph_counts(int64_t* captured, int64_t* replayed, int64_t* uncapturable) {
  const tftrt_lite::CudaGraphCounts counts = tftrt_lite::GetCudaGraphCounts();
  *captured = counts.captured;
  *replayed = counts.replayed;
  *uncapturable = counts.uncapturable;
}

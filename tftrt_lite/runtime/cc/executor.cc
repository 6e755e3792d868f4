#include "executor.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <utility>

#include "cuda_api.h"

namespace tftrt_lite {

using cuda::CublasLtApi;
using cuda::CudnnApi;
using cuda::DriverApi;

namespace {

// Largest workspace offered to cuBLASLt's heuristic and to cuDNN's algorithm choice:
// big enough for their fast kernels, small next to a model's activations.
constexpr uint64_t kMaxGemmWorkspace = uint64_t(32) << 20;
constexpr uint64_t kMaxConvWorkspace = uint64_t(256) << 20;
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

}  // namespace

bool Tf32Allowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("TFTRT_LITE_ALLOW_TF32");
    return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0));
  }();
  return allowed;
}

// --------------------------------------------------------------------------- device state
struct Executor::DeviceState {
  const DriverApi* driver = nullptr;
  const CublasLtApi* lt_api = nullptr;
  const CudnnApi* dnn_api = nullptr;
  CUcontext context = nullptr;
  std::string arch;
  std::vector<CUmodule> modules;
  std::vector<CUfunction> functions;
  CUdeviceptr weights = 0;
  cublasLtHandle_t lt = nullptr;
  cudnnHandle_t dnn = nullptr;

  std::mutex dnn_mu;  // cudnnSetStream and the enqueue after it, on the shared handle
  std::mutex cache_mu;
  std::map<CacheKey, std::unique_ptr<GemmEntry>> gemms;
  std::map<CacheKey, std::unique_ptr<ConvEntry>> convs;

  ~DeviceState() {
    if (driver == nullptr) return;
    // Errors are ignored: at process exit the context may already be gone.
    ContextScope scope(driver, context);
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

Executor::Executor(std::string plan_bytes) : bytes_(std::move(plan_bytes)) {}
Executor::~Executor() = default;

// --------------------------------------------------------------------------- create
Status Executor::Create(std::string plan_bytes, std::unique_ptr<Executor>* executor) {
  std::unique_ptr<Executor> e(new Executor(std::move(plan_bytes)));
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
  }
  if (output_buffer.empty()) return invalid("the plan has no output buffer");
  for (size_t j = 0; j < output_buffer.size(); ++j) {
    if (output_buffer[j] < 0) return invalid("engine output " + std::to_string(j) + " has no buffer in the plan");
    output_dtypes_.push_back(p.buffers[output_buffer[j]].dtype);
  }
  num_inputs_ = static_cast<int>(input_buffer.size());
  num_outputs_ = static_cast<int>(output_buffer.size());

  for (size_t i = 0; i < p.steps.size(); ++i) {
    const plan::Step& s = p.steps[i];
    const std::string label = StepLabel(p, i);
    auto is_f32 = [&](uint32_t buffer) { return buffer == plan::kNoBuffer || p.buffers[buffer].dtype == plan::kFloat32; };
    if (s.kind == plan::kLaunch) {
      const uint64_t threads = uint64_t(s.launch.block[0]) * s.launch.block[1] * s.launch.block[2];
      if (threads == 0 || threads > 1024) {
        return invalid(label + ": block of " + std::to_string(threads) + " threads (must be 1..1024)");
      }
    } else if (s.kind == plan::kGemm) {
      const plan::GemmStep& g = s.gemm;
      if (g.epilogue.dtype != plan::kFloat32 || g.epilogue.compute != plan::kFloat32 ||
          !is_f32(g.a) || !is_f32(g.b) || !is_f32(g.d) || !is_f32(g.bias) || !is_f32(g.c)) {
        return invalid(label + ": only float32 GEMMs are executed by this runtime");
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
      if (c.epilogue.dtype != plan::kFloat32 || c.epilogue.compute != plan::kFloat32 || !is_f32(c.x) ||
          !is_f32(c.w) || !is_f32(c.y) || !is_f32(c.bias) || !is_f32(c.residual)) {
        return invalid(label + ": only float32 convolutions are executed by this runtime");
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
    if (s.kind != plan::kLaunch || s.launch.shared_mem <= kDefaultMaxSharedMemory) continue;
    r = drv->FuncSetAttribute(st->functions[s.launch.kernel], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                              static_cast<int>(s.launch.shared_mem));
    if (r != CUDA_SUCCESS) {
      return unavailable(StepLabel(plan_, i) + " needs " + std::to_string(s.launch.shared_mem) +
                         " bytes of shared memory, more than " + st->arch + " allows: " +
                         cuda::DriverErrorString(*drv, r));
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

// The cached cuBLASLt descriptors and algorithm of GEMM `step` at evaluated `ev`.
Status MakeGemmEntry(const Executor::DeviceState& st, const plan::Plan& p, size_t index,
                     const std::vector<int64_t>& ev, uint32_t alignment, GemmEntry* e) {
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

  const cublasComputeType_t compute = Tf32Allowed() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
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
  TFTRT_LITE_LT(lt.MatrixLayoutCreate(&e->a, CUDA_R_32F, x_rows, x_cols, ev[g.ldb]), "layout of B");
  TFTRT_LITE_LT(lt.MatrixLayoutCreate(&e->b, CUDA_R_32F, y_rows, y_cols, ev[g.lda]), "layout of A");
  TFTRT_LITE_LT(lt.MatrixLayoutCreate(&e->d, CUDA_R_32F, n, m, ev[g.ldd]), "layout of D");
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
  const uint64_t max_workspace = kMaxGemmWorkspace;
  s = lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace,
                                      sizeof(max_workspace));
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    if (s == CUBLAS_STATUS_SUCCESS) s = lt.MatmulPreferenceSetAttribute(pref, attr, &alignment, sizeof(alignment));
  }
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = lt.MatmulAlgoGetHeuristic(st.lt, e->desc, e->a, e->b, e->d, e->d, pref, 1, &result, &found);
  }
  lt.MatmulPreferenceDestroy(pref);
  TFTRT_LITE_LT(s, "cublasLtMatmulAlgoGetHeuristic");
#undef TFTRT_LITE_LT
  if (found == 0) {
    return ExecError(label + ": cuBLASLt has no algorithm for m=" + std::to_string(m) + " n=" + std::to_string(n) +
                     " k=" + std::to_string(k) + " batch=" + std::to_string(batch));
  }
  e->algo = result.algo;
  e->workspace = result.workspaceSize;
  return Status::Ok();
}

// --------------------------------------------------------------------------- conv
Status MakeConvEntry(const Executor::DeviceState& st, const plan::Plan& p, size_t index,
                     const std::vector<int64_t>& ev, ConvEntry* e) {
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
    e->padded_bytes = uint64_t(n) * ch * e->padded_h * e->padded_w * sizeof(float);
  }
  const cudnnTensorFormat_t format = c.layout == plan::kNHWC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  const cudnnTensorFormat_t filter_format = c.filter_layout == plan::kKRSC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  TFTRT_LITE_DNN(dnn.CreateTensorDescriptor(&e->x), "creating the input descriptor");
  TFTRT_LITE_DNN(dnn.SetTensor4dDescriptor(e->x, format, CUDNN_DATA_FLOAT, n, ch, static_cast<int>(e->padded_h),
                                           static_cast<int>(e->padded_w)),
                 "describing the input");
  TFTRT_LITE_DNN(dnn.CreateTensorDescriptor(&e->y), "creating the output descriptor");
  TFTRT_LITE_DNN(dnn.SetTensor4dDescriptor(e->y, format, CUDNN_DATA_FLOAT, n, k, oh, ow), "describing the output");
  TFTRT_LITE_DNN(dnn.CreateTensorDescriptor(&e->bias), "creating the bias descriptor");
  TFTRT_LITE_DNN(dnn.SetTensor4dDescriptor(e->bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, k, 1, 1),
                 "describing the bias");
  TFTRT_LITE_DNN(dnn.CreateFilterDescriptor(&e->w), "creating the filter descriptor");
  TFTRT_LITE_DNN(dnn.SetFilter4dDescriptor(e->w, CUDNN_DATA_FLOAT, filter_format, k, ch / static_cast<int>(c.groups),
                                           r, sz),
                 "describing the filter");
  TFTRT_LITE_DNN(dnn.CreateConvolutionDescriptor(&e->conv), "creating the convolution descriptor");
  TFTRT_LITE_DNN(dnn.SetConvolution2dDescriptor(e->conv, pad_h, pad_w, c.strides[0], c.strides[1], c.dilations[0],
                                                c.dilations[1], CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                 "describing the convolution");
  TFTRT_LITE_DNN(dnn.SetConvolutionGroupCount(e->conv, static_cast<int>(c.groups)), "setting the group count");
  // As in TensorFlow: default math lets fp32 convolutions use TF32 tensor cores.
  TFTRT_LITE_DNN(dnn.SetConvolutionMathType(e->conv, Tf32Allowed() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH),
                 "setting the math type");

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
  bool found = false;
  for (int i = 0; i < returned && !found; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > kMaxConvWorkspace) continue;
    size_t bytes = 0;
    if (dnn.GetConvolutionForwardWorkspaceSize(st.dnn, e->x, e->w, e->conv, e->y, perf[i].algo, &bytes) !=
        CUDNN_STATUS_SUCCESS) {
      continue;
    }
    e->algo = perf[i].algo;
    e->workspace = bytes;
    found = true;
  }
  if (!found) return ExecError(label + ": cuDNN offers no forward algorithm for this convolution");
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
    const uint64_t pixel = (nhwc ? ch : 1) * sizeof(float);
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

}  // namespace

// --------------------------------------------------------------------------- run
Status Executor::Run(CUstream stream, const std::vector<DeviceTensor>& inputs, DeviceAllocator* allocator,
                     std::vector<DeviceTensor>* outputs) {
  const plan::Plan& p = plan_;
  std::string error;
  const DriverApi* drv = cuda::Driver(&error);
  if (drv == nullptr) return Status::Error(Status::kUnavailable, error);
  CUcontext context = nullptr;
  CUresult r = stream != nullptr ? drv->StreamGetCtx(stream, &context) : drv->CtxGetCurrent(&context);
  if (r != CUDA_SUCCESS || context == nullptr) {
    return Status::Error(Status::kUnavailable, "no CUDA context for the engine's stream" +
                                                   (r != CUDA_SUCCESS ? ": " + cuda::DriverErrorString(*drv, r) : ""));
  }
  ContextScope scope(drv, context);
  if (!scope.pushed()) return Status::Error(Status::kUnavailable, "cannot make the stream's CUDA context current");
  DeviceState* st = nullptr;
  Status status = GetDeviceState(context, &st);
  if (!status.ok()) return status;

  // Shapes: bind every symbol, then check each input against the plan's shape for it.
  if (static_cast<int>(inputs.size()) != num_inputs_) {
    return Status::Error(Status::kOutOfProfile, "the engine takes " + std::to_string(num_inputs_) + " inputs, got " +
                                                    std::to_string(inputs.size()));
  }
  std::vector<std::vector<int64_t>> input_shapes;
  for (const DeviceTensor& t : inputs) input_shapes.push_back(t.shape);
  std::vector<int64_t> symbols;
  if (!plan::BindSymbols(p, input_shapes, &symbols, &error)) {
    return Status::Error(Status::kOutOfProfile, "shape outside engine profile: " + error);
  }
  std::vector<int64_t> ev(p.exprs.size());
  for (size_t i = 0; i < p.exprs.size(); ++i) ev[i] = p.exprs[i].Evaluate(symbols);

  const size_t nb = p.buffers.size();
  std::vector<std::vector<int64_t>> shapes(nb);
  std::vector<uint64_t> bytes(nb);
  for (size_t i = 0; i < nb; ++i) {
    const plan::Buffer& b = p.buffers[i];
    uint64_t count = 1;
    for (uint32_t e : b.shape) {
      if (ev[e] < 0) {
        return Status::Error(Status::kOutOfProfile,
                             "shape outside engine profile: buffer '" + b.name + "' gets a negative dim with " +
                                 SymbolsString(p, symbols));
      }
      shapes[i].push_back(ev[e]);
      count *= static_cast<uint64_t>(ev[e]);
    }
    bytes[i] = count * plan::DTypeSize(b.dtype);
    if (b.storage == plan::kInput && shapes[i] != inputs[b.a].shape) {
      return Status::Error(Status::kOutOfProfile,
                           "shape outside engine profile: input " + std::to_string(b.a) + " ('" + b.name +
                               "') has shape " + ShapeString(inputs[b.a].shape) + ", the engine needs " +
                               ShapeString(shapes[i]) + " with " + SymbolsString(p, symbols));
    }
  }

  // Memory: outputs and arena from the allocator, then every buffer's address.
  outputs->assign(num_outputs_, DeviceTensor());
  std::vector<CUdeviceptr> addr(nb, 0);
  const int64_t arena_size = ev[p.arena_size_expr];
  CUdeviceptr arena = 0;
  if (arena_size > 0) {
    status = allocator->AllocateTemp(static_cast<uint64_t>(arena_size), &arena);
    if (!status.ok()) return status;
  }
  for (size_t i = 0; i < nb; ++i) {
    const plan::Buffer& b = p.buffers[i];
    switch (b.storage) {
      case plan::kInput:
        addr[i] = inputs[b.a].ptr;
        break;
      case plan::kOutput: {
        DeviceTensor& out = (*outputs)[b.a];
        out.shape = shapes[i];
        status = allocator->AllocateOutput(static_cast<int>(b.a), shapes[i], bytes[i], &out.ptr);
        if (!status.ok()) return status;
        addr[i] = out.ptr;
        break;
      }
      case plan::kWeight:
        if (bytes[i] > b.b) {
          return Status::Error(Status::kInvalidPlan, "weight buffer '" + b.name + "' has " + std::to_string(b.b) +
                                                         " bytes, its shape needs " + std::to_string(bytes[i]));
        }
        addr[i] = st->weights + b.a;
        break;
      case plan::kArena: {
        const int64_t offset = ev[b.a];
        if (offset < 0 || static_cast<uint64_t>(offset) + bytes[i] > static_cast<uint64_t>(std::max<int64_t>(arena_size, 0))) {
          return Status::Error(Status::kInvalidPlan, "arena buffer '" + b.name + "' at offset " +
                                                         std::to_string(offset) + " (" + std::to_string(bytes[i]) +
                                                         " bytes) lies outside the " + std::to_string(arena_size) +
                                                         "-byte arena with " + SymbolsString(p, symbols));
        }
        addr[i] = arena + static_cast<uint64_t>(offset);
        break;
      }
      case plan::kAlias:
        addr[i] = addr[b.a];
        break;
    }
  }

  // Library steps: cached descriptors for these symbol values; one workspace serves
  // them all, since the steps run one after another on the stream.
  std::vector<void*> entries(p.steps.size(), nullptr);
  uint64_t workspace_bytes = 0;
  for (size_t i = 0; i < p.steps.size(); ++i) {
    const plan::Step& s = p.steps[i];
    if (s.kind == plan::kGemm) {
      const plan::GemmStep& g = s.gemm;
      if (ev[g.m] <= 0 || ev[g.n] <= 0 || ev[g.batch] <= 0) continue;  // empty output
      if (ev[g.k] <= 0) return ExecError(StepLabel(p, i) + ": inner dimension k=" + std::to_string(ev[g.k]));
      uint32_t alignment = std::min({PointerAlignment(addr[g.a]), PointerAlignment(addr[g.b]),
                                     PointerAlignment(addr[g.d]),
                                     g.c == plan::kNoBuffer ? uint32_t(kAlignment) : PointerAlignment(addr[g.c])});
      CacheKey key(static_cast<uint32_t>(i), alignment, symbols);
      std::lock_guard<std::mutex> lock(st->cache_mu);
      std::unique_ptr<GemmEntry>& slot = st->gemms[key];
      if (!slot) {
        std::unique_ptr<GemmEntry> e(new GemmEntry());
        status = MakeGemmEntry(*st, p, i, ev, alignment, e.get());
        if (!status.ok()) {
          st->gemms.erase(key);
          // The partly built entry's descriptors are released with the state's others.
          if (e->desc) st->lt_api->MatmulDescDestroy(e->desc);
          for (auto layout : {e->a, e->b, e->d}) if (layout) st->lt_api->MatrixLayoutDestroy(layout);
          return status;
        }
        slot = std::move(e);
      }
      entries[i] = slot.get();
      workspace_bytes = std::max(workspace_bytes, AlignUp(slot->workspace));
    } else if (s.kind == plan::kConv) {
      const plan::ConvStep& c = s.conv;
      if (ev[c.n] <= 0 || ev[c.k] <= 0 || ev[c.out_h] <= 0 || ev[c.out_w] <= 0) continue;
      CacheKey key(static_cast<uint32_t>(i), 0, symbols);
      std::lock_guard<std::mutex> lock(st->cache_mu);
      std::unique_ptr<ConvEntry>& slot = st->convs[key];
      if (!slot) {
        std::unique_ptr<ConvEntry> e(new ConvEntry());
        status = MakeConvEntry(*st, p, i, ev, e.get());
        if (!status.ok()) {
          st->convs.erase(key);
          for (auto t : {e->x, e->y, e->bias}) if (t) st->dnn_api->DestroyTensorDescriptor(t);
          if (e->w) st->dnn_api->DestroyFilterDescriptor(e->w);
          if (e->conv) st->dnn_api->DestroyConvolutionDescriptor(e->conv);
          if (e->act) st->dnn_api->DestroyActivationDescriptor(e->act);
          return status;
        }
        slot = std::move(e);
      }
      const ConvEntry& e = *slot;
      entries[i] = slot.get();
      workspace_bytes = std::max(workspace_bytes, AlignUp(std::max(e.workspace, e.try_fused ? e.fused_workspace : 0)) +
                                                      AlignUp(e.padded_bytes));
    }
  }
  CUdeviceptr workspace = 0;
  if (workspace_bytes > 0) {
    status = allocator->AllocateTemp(workspace_bytes, &workspace);
    if (!status.ok()) return status;
  }

  // Steps, in plan order, all on `stream`.
  for (size_t i = 0; i < p.steps.size(); ++i) {
    const plan::Step& s = p.steps[i];
    if (s.kind == plan::kLaunch) {
      const plan::LaunchStep& l = s.launch;
      const int64_t grid[3] = {ev[l.grid[0]], ev[l.grid[1]], ev[l.grid[2]]};
      if (grid[0] <= 0 || grid[1] <= 0 || grid[2] <= 0) continue;  // nothing to compute
      if (grid[0] > 0x7FFFFFFF || grid[1] > 65535 || grid[2] > 65535) {
        return ExecError(StepLabel(p, i) + ": grid (" + std::to_string(grid[0]) + ", " + std::to_string(grid[1]) +
                         ", " + std::to_string(grid[2]) + ") exceeds CUDA's limits with " + SymbolsString(p, symbols));
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
      r = drv->LaunchKernel(st->functions[l.kernel], static_cast<unsigned>(grid[0]), static_cast<unsigned>(grid[1]),
                            static_cast<unsigned>(grid[2]), l.block[0], l.block[1], l.block[2], l.shared_mem, stream,
                            params.data(), nullptr);
      if (r != CUDA_SUCCESS) {
        return ExecError(StepLabel(p, i) + ": launching kernel " + p.kernels[l.kernel].name + " failed: " +
                         cuda::DriverErrorString(*drv, r));
      }
    } else if (s.kind == plan::kGemm && entries[i] != nullptr) {
      const plan::GemmStep& g = s.gemm;
      GemmEntry& e = *static_cast<GemmEntry*>(entries[i]);
      const float alpha = g.epilogue.alpha;
      const bool has_c = g.c != plan::kNoBuffer;
      const float beta = has_c ? g.epilogue.beta : 0.0f;
      const CUdeviceptr c_ptr = has_c ? addr[g.c] : addr[g.d];
      const CublasLtApi& lt = *st->lt_api;
      std::lock_guard<std::mutex> lock(e.mu);
      cublasStatus_t ls = CUBLAS_STATUS_SUCCESS;
      if (g.bias != plan::kNoBuffer) {
        const void* bias = reinterpret_cast<const void*>(addr[g.bias]);
        ls = lt.MatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
      }
      if (ls == CUBLAS_STATUS_SUCCESS) {
        ls = lt.Matmul(st->lt, e.desc, &alpha, reinterpret_cast<const void*>(addr[g.b]), e.a,
                       reinterpret_cast<const void*>(addr[g.a]), e.b, &beta, reinterpret_cast<const void*>(c_ptr), e.d,
                       reinterpret_cast<void*>(addr[g.d]), e.d, &e.algo, reinterpret_cast<void*>(workspace),
                       e.workspace, stream);
      }
      if (ls != CUBLAS_STATUS_SUCCESS) {
        return ExecError(StepLabel(p, i) + ": cublasLtMatmul failed: " + LtError(lt, ls) + " with " +
                         SymbolsString(p, symbols));
      }
    } else if (s.kind == plan::kConv && entries[i] != nullptr) {
      status = RunConv(*st, p, i, *static_cast<ConvEntry*>(entries[i]), stream, ev, addr, workspace);
      if (!status.ok()) return status;
    }
  }
  return Status::Ok();
}

}  // namespace tftrt_lite

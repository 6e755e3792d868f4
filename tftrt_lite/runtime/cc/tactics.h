// Tactic choice for the executor's library steps (cuBLASLt GEMMs, cuDNN convolutions),
// and the cache that keeps the choices across processes.
//
// Why time at all: cuBLASLt's heuristic and cuDNN's algorithm query rank candidates with
// a model of the GPU, and for the small problems of low-batch inference their first pick
// is often far from the fastest; a GEMM with 128 rows gets tiles that occupy a handful of
// the GPU's SMs, where splitting K across CTAs (split-K) would occupy them all. So once
// per distinct problem and device the candidates are timed on scratch memory and the
// fastest is kept. GEMM candidates are cuBLASLt's top picks plus split-K variants of them;
// a variant, and any candidate of a small problem, must reproduce the first pick's output
// on test data before it may win (a wrong reduction or epilogue would be silent).
//
// Why a cache: timing costs milliseconds per problem on every process start. Winners go
// into a process-wide store keyed by (GPU, library version, problem), which is seeded
// from a cache file (TFTRT_LITE_TACTIC_CACHE) and from models whose engine nodes carry
// winners (the op's `tactics` attr), and new winners are appended to the file. A stored
// winner is checked against the library before use and re-timed when it does not pass.
//
// Every path here degrades to the library's first choice: a failed allocation, timing or
// check, a missing library symbol, an unreadable or foreign cache file, never fails a call.
//
// Cache text, one winner per line after a header line (tftrt_lite_tactics_dump writes it,
// the file and the `tactics` attr hold it):
//   # tftrt_lite tactic cache v1
//   gemm <gpu> <cublasLt version> <problem> <algo: 128 hex digits> <workspace bytes>
//   conv <gpu> <cuDNN version> <problem> <algo number> <workspace bytes>
//   kernel <gpu> <driver version> <problem> <variant index> 0
// <gpu> is "<name with '_' for blanks>:sm_<arch>:<SMs>sm"; <problem> is comma-separated
// integers (shape, layouts, dtypes, math mode, epilogue, alignment).
#ifndef TFTRT_LITE_RUNTIME_CC_TACTICS_H_
#define TFTRT_LITE_RUNTIME_CC_TACTICS_H_

#include <cublasLt.h>
#include <cuda.h>
#include <cudnn.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_api.h"

namespace tftrt_lite {
namespace tactics {

// Largest workspace offered to a GEMM and a convolution algorithm: big enough for the
// libraries' fast kernels, small next to a model's activations.
constexpr uint64_t kMaxGemmWorkspace = uint64_t(32) << 20;
constexpr uint64_t kMaxConvWorkspace = uint64_t(256) << 20;
// How many candidates cuBLASLt's heuristic is asked for when GEMMs are timed.
constexpr int kHeuristicCandidates = 16;

// Whether GEMM / convolution algorithms and kernel variants are chosen by timing (read
// once per process). GEMMs: yes unless TFTRT_LITE_TUNING=0 (all timing off) or
// TFTRT_LITE_GEMM_TUNING=0; stored GEMM winners are used either way. Convolutions: only
// with TFTRT_LITE_CONV_TUNING=1 (and not TFTRT_LITE_TUNING=0), stored winners included.
// Kernel variants: as GEMMs, with TFTRT_LITE_KERNEL_TUNING.
bool GemmTimingEnabled();
bool ConvTimingEnabled();
bool KernelTimingEnabled();

// The <gpu> field of cache lines for `device` (compute capability `arch`, e.g. "sm_90").
std::string DeviceId(const cuda::DriverApi& drv, CUdevice device, const std::string& arch);

// Where timing gets its scratch memory: from the engine call's allocator (TensorFlow's, in
// the op), which holds nearly all GPU memory, so there is none to be had beside it. That
// allocator orders reuse on the call's stream, so timing runs on a private stream that
// first waits for the work already on `after` (the call's stream), and finishes before
// the choice returns, before the call enqueues anything.
struct Scratch {
  std::function<bool(uint64_t bytes, CUdeviceptr* ptr)> allocate;
  CUstream after = nullptr;
};

// One cuBLASLt GEMM problem, as the executor built it. Operand names are cuBLASLt's (its A
// is the plan's B): the sizes are the bytes each operand spans, C shares D's layout.
struct GemmProblem {
  const cuda::DriverApi* driver = nullptr;
  const cuda::CublasLtApi* lt = nullptr;
  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  uint32_t dtype = 0;  // plan dtype of every operand
  bool has_bias = false, has_c = false;
  float alpha = 1.0f, beta = 0.0f;
  uint64_t a_bytes = 0, b_bytes = 0, d_bytes = 0, bias_bytes = 0;
  const Scratch* scratch = nullptr;
  std::string device;           // DeviceId
  std::string owner;            // engine name the winner is filed under (may be empty)
  std::vector<int64_t> key;     // the problem: equal keys are the same GEMM
};

struct GemmAlgo {
  cublasLtMatmulAlgo_t algo;
  uint64_t workspace = 0;
};

// The algorithm for `problem`: a stored winner that passes cublasLtMatmulAlgoCheck, else
// (timing on) the fastest checked candidate of `heuristic` (cuBLASLt's `count` results,
// best first) and their split-K variants, else heuristic[0]. Needs the problem's context
// current; enqueues nothing on the caller's stream.
GemmAlgo ChooseGemm(const GemmProblem& problem, const cublasLtMatmulHeuristicResult_t* heuristic, int count);

// One cuDNN forward-convolution problem; `handle_mu` guards `handle` (timing sets its stream).
struct ConvProblem {
  const cuda::DriverApi* driver = nullptr;
  const cuda::CudnnApi* dnn = nullptr;
  cudnnHandle_t handle = nullptr;
  std::mutex* handle_mu = nullptr;
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  uint64_t x_bytes = 0, w_bytes = 0, y_bytes = 0;
  // Set for steps that run cudnnConvolutionBiasActivationForward with relu, whose
  // algorithm serves that call: candidates are timed in it (plain, when it refuses all).
  cudnnTensorDescriptor_t bias = nullptr;
  cudnnActivationDescriptor_t act = nullptr;
  uint64_t bias_bytes = 0;
  const Scratch* scratch = nullptr;
  std::string device, owner;
  std::vector<int64_t> key;
};

struct ConvAlgo {
  cudnnConvolutionFwdAlgo_t algo;
  uint64_t workspace = 0;
};

// The algorithm for `problem` among `usable` (cuDNN's candidates in its order, each known
// to run within kMaxConvWorkspace; not empty): a stored winner that is among them, else
// (timing on) the fastest of them, else usable[0]. Enqueues nothing on the caller's stream.
ConvAlgo ChooseConv(const ConvProblem& problem, const std::vector<ConvAlgo>& usable);

// A generated-kernel launch step with variants: kernels of the same computation on the
// same arguments, tiled differently (plan.py LaunchStep). Why time them: the best tiling
// depends on the shape (attention at batch 1 wants few warps per block, at batch 32
// more), and a plan serves every shape.
struct KernelProblem {
  const cuda::DriverApi* driver = nullptr;
  int variants = 0;
  // Enqueues variant `v` on `stream`; false when the launch fails. The variants run on the
  // step's own buffers: on a shape's first call, before the call's first step, the arena
  // and outputs they write hold nothing yet, and the inputs and weights they read are
  // never written.
  std::function<bool(int v, CUstream stream)> launch;
  CUstream after = nullptr;  // timing starts after the work already on it (Scratch::after)
  std::string device, owner;
  std::vector<int64_t> key;  // the problem: variant kernels, argument values, alignment
};

// The variant for `problem`: a stored winner that names one of its variants, else (timing
// on) the fastest, else 0 (the builder's choice). Enqueues nothing on the caller's stream.
int ChooseKernel(const KernelProblem& problem);

// Merges cache text into the process-wide store (the header line is optional here).
// Returns how many winner lines were taken; `malformed` (if given) counts the lines
// skipped. Winners are checked only when a problem looks them up.
int AddText(const std::string& text, int* malformed = nullptr);

// Cache text of the winners this process chose or reused (every stored line with
// `everything`), only those of engine `owner` when it is not empty.
std::string Dump(const std::string& owner, bool everything);

}  // namespace tactics
}  // namespace tftrt_lite

extern "C" {
// AddText for ctypes; returns the number of lines taken (`malformed` may be NULL).
int tftrt_lite_tactics_add(const char* text, int* malformed);
// Dump for ctypes (`owner` may be NULL); the text stays valid until this thread's next call.
const char* tftrt_lite_tactics_dump(const char* owner, int everything);
// Process-wide count `name` (-1 for an unknown name): "gemm_timed" and "conv_timed"
// (problems whose candidates were timed), "cache_hits" (stored winners used),
// "cache_rejected" (stored winners that failed their check), "candidates_rejected"
// (GEMM candidates whose output differed from cuBLASLt's first pick), "split_k_chosen"
// (timed GEMMs won by a split-K algorithm), "kernel_timed" (kernel steps whose variants
// were timed).
int64_t tftrt_lite_tactics_count(const char* name);
// Test hook: with `on`, GEMM timing lets only split-K candidates win wherever it has any,
// so tests can check split-K numerics end to end.
void tftrt_lite_tactics_prefer_split_k(int on);
}

#endif  // TFTRT_LITE_RUNTIME_CC_TACTICS_H_

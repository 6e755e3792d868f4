// The GPU plan executor: runs an engine plan (plan_format.h) on a CUDA stream.
//
// Why TensorFlow-free: the same executor runs inside the TftrtLiteEngine op and in a
// small C harness (harness.cc) that tests drive with CuPy buffers, so its numerics are
// tested on a GPU without TensorFlow and the op stays a thin adapter. Memory comes from
// the caller's allocator (TensorFlow's, in the op), work goes on the caller's stream,
// and nothing synchronises the device (a call with host inputs waits only when eight
// calls' uploads are still queued).
//
// A plan is parsed and checked once (Create). Everything bound to a device (loaded
// modules, uploaded weights, cuBLASLt/cuDNN handles) is created on the first Run in a
// CUDA context and cached per context; library descriptors and algorithm choices are
// cached per (step, symbol values). Algorithms are chosen by timing the libraries'
// candidates once per distinct problem, or taken from the process's tactic store
// (tactics.h), which a cache file and the models themselves seed. Several threads may
// call Run on one Executor at once: per-call state lives on the caller's stack and every
// cache is under a mutex.
//
// CUDA graphs: a plan is a long, fixed sequence of small launches, so for a few input-
// shape sets the whole sequence is captured once into a CUDA graph and replayed, which
// removes the per-step host work (expression evaluation, cuLaunchKernel, cuBLASLt and
// cuDNN calls). A graph replays the addresses it was captured with while the caller
// hands new input and output addresses every call, so a captured shape runs on memory
// the executor owns (arena, library workspace and staging copies of inputs and outputs):
// copy inputs in, launch the graph, copy outputs out. The first call of a shape runs
// uncaptured on that memory (choosing algorithms and loading library kernels outside
// capture), the second captures; capture problems never fail a call, they only make
// the shape run uncaptured.
#ifndef TFTRT_LITE_RUNTIME_CC_EXECUTOR_H_
#define TFTRT_LITE_RUNTIME_CC_EXECUTOR_H_

#include <cuda.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "plan_format.h"

namespace tftrt_lite {

// The outcome of an executor call. The code tells the op which fallback applies.
class Status {
 public:
  enum Code {
    kOk = 0,
    kInvalidPlan,   // the plan bytes are not a plan this runtime can execute
    kUnavailable,   // the plan cannot be loaded on this device (arch, libraries)
    kOutOfProfile,  // the inputs' shapes are outside what the plan was built for
    kExecution,     // a CUDA, cuBLASLt, cuDNN or allocation call failed
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status Error(Code code, std::string message) { return Status(code, std::move(message)); }

  bool ok() const { return code_ == kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  Code code_ = kOk;
  std::string message_;
};

// A tensor handed to or returned by Run. Inputs may be in host memory (`on_host`,
// `ptr` then holds the host address): TensorFlow keeps the int32 tensors of GPU ops on
// the host, and Run copies such inputs to the device on the stream before any step
// reads them (see UploadHostInputs in executor.cc). Outputs are always device memory.
struct DeviceTensor {
  CUdeviceptr ptr = 0;
  std::vector<int64_t> shape;
  bool on_host = false;
};

// Where Run gets device memory. Both calls are made before any work is enqueued;
// the memory must stay valid until the work enqueued on the stream has finished (a
// stream-ordered allocator such as TensorFlow's gives exactly that).
class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  // Scratch memory (the arena, library workspaces, and operands for timing library
  // algorithms on a shape's first call), at least 256-byte aligned.
  virtual Status AllocateTemp(uint64_t bytes, CUdeviceptr* ptr) = 0;
  // Engine output `index` of `shape` (dtype from the plan), at least 256-byte aligned.
  virtual Status AllocateOutput(int index, const std::vector<int64_t>& shape, uint64_t bytes,
                                CUdeviceptr* ptr) = 0;
};

struct ExecutorOptions {
  // How many input-shape sets (symbol bindings) per device get a captured CUDA graph,
  // first come first served; other shapes run uncaptured. 0 turns capture off, as
  // does TFTRT_LITE_CUDA_GRAPHS=0 for the whole process.
  int max_cached_shapes = 1;
  // Names the engine in the messages the executor logs.
  std::string label = "engine";
  // Files the library algorithms this engine chooses under its name in the process's
  // tactic store, so tftrt_lite_tactics_dump can list one engine's (tactics.h).
  std::string engine_name;
};

class Executor {
 public:
  // Parses `plan_bytes` (copied) and checks that every step is one this executor can
  // run. Fails with kInvalidPlan naming what is wrong; touches no GPU.
  static Status Create(std::string plan_bytes, std::unique_ptr<Executor>* executor,
                       ExecutorOptions options = ExecutorOptions());
  ~Executor();

  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  const plan::Plan& plan() const { return plan_; }
  int num_inputs() const { return num_inputs_; }
  int num_outputs() const { return num_outputs_; }
  // Plan dtype code (plan::DType) of input / output `i`.
  uint32_t input_dtype(int i) const { return input_dtypes_[i]; }
  uint32_t output_dtype(int i) const { return output_dtypes_[i]; }

  // Runs the plan on `stream` (its context is made current for the call). `inputs`
  // are device (or host, see DeviceTensor) pointers with their shapes; `outputs`
  // receives one tensor per engine output, allocated through `allocator`.
  Status Run(CUstream stream, const std::vector<DeviceTensor>& inputs, DeviceAllocator* allocator,
             std::vector<DeviceTensor>* outputs);

  // Runs the plan uncaptured `repeats` times with a CUDA event recorded between every
  // two steps, and sets `step_us[i]` to step i's median time in microseconds (0 for a
  // step the shapes leave empty) and `step_kernels[i]` to the plan kernel a launch step
  // ran (its timed variant where it has them; -1 for library steps). Memory comes from
  // `allocator` once; `outputs` holds the last repeat's results. Synchronises the stream
  // after every repeat: a measuring tool, not a serving path.
  Status Profile(CUstream stream, const std::vector<DeviceTensor>& inputs, DeviceAllocator* allocator, int repeats,
                 std::vector<double>* step_us, std::vector<int>* step_kernels, std::vector<DeviceTensor>* outputs);

  struct DeviceState;  // per CUDA context: modules, weights, handles, caches

 private:
  explicit Executor(std::string plan_bytes, ExecutorOptions options);
  Status Validate();
  Status GetDeviceState(CUcontext context, DeviceState** state);
  Status LoadDeviceState(CUcontext context, DeviceState** state);
  // Logs, once per executor, why a shape runs uncaptured.
  void ReportUncapturable(const std::string& symbols, const std::string& why);

  std::string bytes_;  // the plan keeps pointers into these bytes
  plan::Plan plan_;
  const ExecutorOptions options_;
  const bool graphs_;  // capture is on (options and environment)
  int num_inputs_ = 0;
  int num_outputs_ = 0;
  std::vector<uint32_t> input_dtypes_, output_dtypes_;
  std::vector<uint32_t> input_buffers_, output_buffers_;  // plan buffer of each engine input / output
  bool needs_cublaslt_ = false, needs_cudnn_ = false;
  std::atomic<bool> uncapturable_logged_{false};

  std::mutex mu_;  // guards devices_ and unloadable_
  std::map<CUcontext, std::unique_ptr<DeviceState>> devices_;
  std::map<CUcontext, Status> unloadable_;  // why the plan cannot load there (not retried)
};

// Whether fp32 GEMMs and convolutions may use TF32 tensor cores: yes, as in
// TensorFlow, unless TFTRT_LITE_ALLOW_TF32=0 (read once per process).
bool Tf32Allowed();

// Whether executors may capture CUDA graphs: yes unless TFTRT_LITE_CUDA_GRAPHS=0 (read
// once per process).
bool CudaGraphsEnabled();

// Process-wide CUDA-graph counts over all executors: graphs captured, calls served by
// a graph replay, and shapes found uncapturable (they run uncaptured from then on).
struct CudaGraphCounts {
  int64_t captured = 0;
  int64_t replayed = 0;
  int64_t uncapturable = 0;
};
CudaGraphCounts GetCudaGraphCounts();

}  // namespace tftrt_lite

extern "C" {
// GetCudaGraphCounts for ctypes, from either library the executor is built into.
void tftrt_lite_cuda_graph_counts(int64_t* captured, int64_t* replayed, int64_t* uncapturable);
}

#endif  // TFTRT_LITE_RUNTIME_CC_EXECUTOR_H_

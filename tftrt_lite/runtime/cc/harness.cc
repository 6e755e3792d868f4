// A C API over the plan executor, built into _tftrt_lite_executor.so without TensorFlow.
//
// Why: tests drive the executor directly with CuPy buffers through ctypes, so an
// engine's GPU numerics can be checked against the NumPy reference on a machine where
// TensorFlow is absent, and a failure points at the executor rather than the op. The
// library dlopens no CUDA library until a run needs one, so it also loads on machines
// without a GPU (where plan validation is tested).
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda_api.h"
#include "executor.h"

namespace {

thread_local std::string last_error;
thread_local int last_code = 0;

int Record(const tftrt_lite::Status& status) {
  last_error = status.message();
  last_code = static_cast<int>(status.code());
  return last_code;
}

typedef uint64_t (*AllocFn)(void* user, uint64_t bytes);

// Scratch and outputs both come from the caller's callback (CuPy's pool in tests).
class CallbackAllocator : public tftrt_lite::DeviceAllocator {
 public:
  CallbackAllocator(AllocFn fn, void* user) : fn_(fn), user_(user) {}

  tftrt_lite::Status AllocateTemp(uint64_t bytes, CUdeviceptr* ptr) override { return Allocate(bytes, ptr); }
  tftrt_lite::Status AllocateOutput(int, const std::vector<int64_t>&, uint64_t bytes, CUdeviceptr* ptr) override {
    return Allocate(bytes, ptr);
  }

 private:
  tftrt_lite::Status Allocate(uint64_t bytes, CUdeviceptr* ptr) {
    *ptr = static_cast<CUdeviceptr>(fn_(user_, bytes));
    if (*ptr == 0 && bytes > 0) {
      return tftrt_lite::Status::Error(tftrt_lite::Status::kExecution,
                                       "the allocator returned no memory for " + std::to_string(bytes) + " bytes");
    }
    return tftrt_lite::Status::Ok();
  }
  AllocFn fn_;
  void* user_;
};

// Blocks from the caller's callback, handed out again by later calls. Timing loops run
// the executor back to back on one stream, where a block one call used is safe for the
// next (stream order), so after the warm-up calls the timed calls allocate nothing, as
// under TensorFlow's caching allocator.
class ReusingAllocator : public tftrt_lite::DeviceAllocator {
 public:
  ReusingAllocator(AllocFn fn, void* user) : inner_(fn, user) {}

  // Every block is free again for the next call.
  void NextCall() {
    for (Block& b : blocks_) b.in_use = false;
  }
  tftrt_lite::Status AllocateTemp(uint64_t bytes, CUdeviceptr* ptr) override { return Take(bytes, ptr); }
  tftrt_lite::Status AllocateOutput(int, const std::vector<int64_t>&, uint64_t bytes, CUdeviceptr* ptr) override {
    return Take(bytes, ptr);
  }

 private:
  struct Block {
    CUdeviceptr ptr;
    uint64_t bytes;
    bool in_use;
  };
  tftrt_lite::Status Take(uint64_t bytes, CUdeviceptr* ptr) {
    for (Block& b : blocks_) {
      if (!b.in_use && b.bytes >= bytes) {
        b.in_use = true;
        *ptr = b.ptr;
        return tftrt_lite::Status::Ok();
      }
    }
    tftrt_lite::Status status = inner_.AllocateTemp(bytes, ptr);
    if (status.ok()) blocks_.push_back(Block{*ptr, bytes, true});
    return status;
  }
  CallbackAllocator inner_;
  std::vector<Block> blocks_;
};

// Input i is `ptrs[i]` with `ranks[i]` dims taken in order from `dims`, in host memory
// where `on_host[i]` is nonzero.
std::vector<tftrt_lite::DeviceTensor> Inputs(int num_inputs, const uint64_t* ptrs, const uint8_t* on_host,
                                             const int32_t* ranks, const int64_t* dims) {
  std::vector<tftrt_lite::DeviceTensor> inputs(num_inputs);
  for (int i = 0; i < num_inputs; ++i) {
    inputs[i].ptr = static_cast<CUdeviceptr>(ptrs[i]);
    inputs[i].on_host = on_host[i] != 0;
    inputs[i].shape.assign(dims, dims + ranks[i]);
    dims += ranks[i];
  }
  return inputs;
}

}  // namespace

extern "C" {

// Parses `size` plan bytes; returns an executor handle, or NULL with the last error set.
void* tftrt_lite_executor_create(const void* plan, uint64_t size) {
  std::unique_ptr<tftrt_lite::Executor> executor;
  tftrt_lite::Status status =
      tftrt_lite::Executor::Create(std::string(static_cast<const char*>(plan), size), &executor);
  Record(status);
  return status.ok() ? executor.release() : nullptr;
}

// As tftrt_lite_executor_create, with ExecutorOptions::max_cached_shapes (0: no CUDA graphs).
void* tftrt_lite_executor_create_with_options(const void* plan, uint64_t size, int max_cached_shapes) {
  tftrt_lite::ExecutorOptions options;
  options.max_cached_shapes = max_cached_shapes;
  std::unique_ptr<tftrt_lite::Executor> executor;
  tftrt_lite::Status status =
      tftrt_lite::Executor::Create(std::string(static_cast<const char*>(plan), size), &executor, options);
  Record(status);
  return status.ok() ? executor.release() : nullptr;
}

void tftrt_lite_executor_destroy(void* executor) { delete static_cast<tftrt_lite::Executor*>(executor); }

// The message and tftrt_lite::Status code of this thread's last create/run (0, "" after success).
const char* tftrt_lite_executor_last_error() { return last_error.c_str(); }
int tftrt_lite_executor_last_error_code() { return last_code; }

int tftrt_lite_executor_num_inputs(void* executor) {
  return static_cast<tftrt_lite::Executor*>(executor)->num_inputs();
}
int tftrt_lite_executor_num_outputs(void* executor) {
  return static_cast<tftrt_lite::Executor*>(executor)->num_outputs();
}
int tftrt_lite_executor_num_steps(void* executor) {
  return static_cast<int>(static_cast<tftrt_lite::Executor*>(executor)->plan().steps.size());
}

// Runs the plan on `stream` (a CUstream; NULL for the context's default stream).
// Input i is `input_ptrs[i]` with `input_ranks[i]` dims taken in order from
// `input_dims`, in host memory where `input_on_host[i]` is nonzero (Run uploads it).
// Output j comes back as `output_ptrs[j]` (memory from `alloc`) with
// `output_ranks[j]` dims in `output_dims[j * max_rank ...]`. Returns 0 or the
// tftrt_lite::Status code, with the message in tftrt_lite_executor_last_error().
int tftrt_lite_executor_run(void* executor, void* stream, int num_inputs, const uint64_t* input_ptrs,
                            const uint8_t* input_on_host, const int32_t* input_ranks, const int64_t* input_dims,
                            AllocFn alloc, void* alloc_user,
                            uint64_t* output_ptrs, int32_t* output_ranks, int64_t* output_dims, int max_rank) {
  auto* exec = static_cast<tftrt_lite::Executor*>(executor);
  std::vector<tftrt_lite::DeviceTensor> inputs =
      Inputs(num_inputs, input_ptrs, input_on_host, input_ranks, input_dims);
  CallbackAllocator allocator(alloc, alloc_user);
  std::vector<tftrt_lite::DeviceTensor> outputs;
  tftrt_lite::Status status = exec->Run(static_cast<CUstream>(stream), inputs, &allocator, &outputs);
  if (!status.ok()) return Record(status);
  for (size_t j = 0; j < outputs.size(); ++j) {
    if (static_cast<int>(outputs[j].shape.size()) > max_rank) {
      return Record(tftrt_lite::Status::Error(
          tftrt_lite::Status::kExecution, "output " + std::to_string(j) + " has rank " +
                                              std::to_string(outputs[j].shape.size()) + ", more than max_rank " +
                                              std::to_string(max_rank)));
    }
    output_ptrs[j] = outputs[j].ptr;
    output_ranks[j] = static_cast<int32_t>(outputs[j].shape.size());
    for (size_t d = 0; d < outputs[j].shape.size(); ++d) output_dims[j * max_rank + d] = outputs[j].shape[d];
  }
  return Record(tftrt_lite::Status::Ok());
}

// Executor::Profile: runs the plan uncaptured `repeats` times with CUDA events around
// every step and writes each step's median microseconds to `step_us` and the plan
// kernel each launch step ran to `step_kernels` (-1 for library steps; both
// tftrt_lite_executor_num_steps entries). Inputs as for tftrt_lite_executor_run.
int tftrt_lite_executor_profile(void* executor, void* stream, int num_inputs, const uint64_t* input_ptrs,
                                const uint8_t* input_on_host, const int32_t* input_ranks, const int64_t* input_dims,
                                AllocFn alloc, void* alloc_user, int repeats, double* step_us, int* step_kernels) {
  auto* exec = static_cast<tftrt_lite::Executor*>(executor);
  CallbackAllocator allocator(alloc, alloc_user);
  std::vector<tftrt_lite::DeviceTensor> outputs;
  std::vector<double> times;
  std::vector<int> kernels;
  tftrt_lite::Status status =
      exec->Profile(static_cast<CUstream>(stream), Inputs(num_inputs, input_ptrs, input_on_host, input_ranks, input_dims),
                    &allocator, repeats, &times, &kernels, &outputs);
  if (!status.ok()) return Record(status);
  for (size_t i = 0; i < times.size(); ++i) {
    step_us[i] = times[i];
    step_kernels[i] = kernels[i];
  }
  return Record(tftrt_lite::Status::Ok());
}

// End-to-end latency as a caller sees it: `warmup` calls (the first runs uncaptured,
// the second captures a CUDA graph where the executor may), then `iters` calls back to
// back on `stream`, synchronised once; `*ms_per_call` is their wall time over `iters`,
// host work included. Memory comes from `alloc` during the warm-up and is reused after.
int tftrt_lite_executor_time_calls(void* executor, void* stream, int num_inputs, const uint64_t* input_ptrs,
                                   const uint8_t* input_on_host, const int32_t* input_ranks,
                                   const int64_t* input_dims, AllocFn alloc, void* alloc_user, int warmup, int iters,
                                   double* ms_per_call) {
  using tftrt_lite::Status;
  if (iters < 1) return Record(Status::Error(Status::kExecution, "iters must be at least 1, got " +
                                                                     std::to_string(iters)));
  std::string error;
  const tftrt_lite::cuda::DriverApi* drv = tftrt_lite::cuda::Driver(&error);
  if (drv == nullptr) return Record(Status::Error(Status::kUnavailable, error));
  auto* exec = static_cast<tftrt_lite::Executor*>(executor);
  const CUstream cu_stream = static_cast<CUstream>(stream);
  const std::vector<tftrt_lite::DeviceTensor> inputs =
      Inputs(num_inputs, input_ptrs, input_on_host, input_ranks, input_dims);
  ReusingAllocator allocator(alloc, alloc_user);
  std::vector<tftrt_lite::DeviceTensor> outputs;
  auto synchronize = [&]() {
    CUresult r = drv->StreamSynchronize(cu_stream);
    return r == CUDA_SUCCESS ? Status::Ok()
                             : Status::Error(Status::kExecution, "cuStreamSynchronize failed: " +
                                                                     tftrt_lite::cuda::DriverErrorString(*drv, r));
  };
  for (int i = 0; i < warmup; ++i) {
    allocator.NextCall();
    Status status = exec->Run(cu_stream, inputs, &allocator, &outputs);
    if (!status.ok()) return Record(status);
  }
  Status status = synchronize();
  if (!status.ok()) return Record(status);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) {
    allocator.NextCall();
    status = exec->Run(cu_stream, inputs, &allocator, &outputs);
    if (!status.ok()) return Record(status);
  }
  status = synchronize();
  if (!status.ok()) return Record(status);
  const std::chrono::duration<double, std::milli> elapsed = std::chrono::steady_clock::now() - start;
  *ms_per_call = elapsed.count() / iters;
  return Record(Status::Ok());
}

}  // extern "C"

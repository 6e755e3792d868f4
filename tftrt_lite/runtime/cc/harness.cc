// A C API over the plan executor, built into _tftrt_lite_executor.so without TensorFlow.
//
// Why: tests drive the executor directly with CuPy buffers through ctypes, so an
// engine's GPU numerics can be checked against the NumPy reference on a machine where
// TensorFlow is absent, and a failure points at the executor rather than the op. The
// library dlopens no CUDA library until a run needs one, so it also loads on machines
// without a GPU (where plan validation is tested).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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

// Runs the plan on `stream` (a CUstream; NULL for the context's default stream).
// Input i is `input_ptrs[i]` with `input_ranks[i]` dims taken in order from
// `input_dims`. Output j comes back as `output_ptrs[j]` (memory from `alloc`) with
// `output_ranks[j]` dims in `output_dims[j * max_rank ...]`. Returns 0 or the
// tftrt_lite::Status code, with the message in tftrt_lite_executor_last_error().
int tftrt_lite_executor_run(void* executor, void* stream, int num_inputs, const uint64_t* input_ptrs,
                            const int32_t* input_ranks, const int64_t* input_dims, AllocFn alloc, void* alloc_user,
                            uint64_t* output_ptrs, int32_t* output_ranks, int64_t* output_dims, int max_rank) {
  auto* exec = static_cast<tftrt_lite::Executor*>(executor);
  std::vector<tftrt_lite::DeviceTensor> inputs(num_inputs);
  const int64_t* dims = input_dims;
  for (int i = 0; i < num_inputs; ++i) {
    inputs[i].ptr = static_cast<CUdeviceptr>(input_ptrs[i]);
    inputs[i].shape.assign(dims, dims + input_ranks[i]);
    dims += input_ranks[i];
  }
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

}  // extern "C"

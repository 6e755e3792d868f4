// The CUDA driver, cuBLASLt and cuDNN entry points the plan executor calls, resolved
// at run time with dlopen/dlsym.
//
// Why not link them: the op library is built with g++ alone against the headers that
// ship in the TensorFlow wheel (types and enums only), and must load on machines with
// no GPU, where none of these libraries exist. TensorFlow's GPU build has normally
// loaded all three already, so the copy TensorFlow uses is preferred (RTLD_NOLOAD
// first); the test harness, which runs without TensorFlow, loads them by soname.
// Each library is loaded once per process, on first use, and only when a plan needs
// it (a plan without convolutions never touches cuDNN).
#ifndef TFTRT_LITE_RUNTIME_CC_CUDA_API_H_
#define TFTRT_LITE_RUNTIME_CC_CUDA_API_H_

#include <cublasLt.h>
#include <cuda.h>
#include <cudnn.h>

#include <string>

namespace tftrt_lite {
namespace cuda {

// X(member, exported symbol). Versioned symbols are spelled as the driver exports
// them (cuda.h maps e.g. cuMemAlloc to cuMemAlloc_v2 with a macro, and the CUDA 12
// cuGraphInstantiate to cuGraphInstantiateWithFlags).
#define TFTRT_LITE_DRIVER_FUNCTIONS(X)                   \
  X(Init, cuInit)                                        \
  X(GetErrorName, cuGetErrorName)                        \
  X(GetErrorString, cuGetErrorString)                    \
  X(CtxGetCurrent, cuCtxGetCurrent)                      \
  X(CtxPushCurrent, cuCtxPushCurrent_v2)                 \
  X(CtxPopCurrent, cuCtxPopCurrent_v2)                   \
  X(CtxGetDevice, cuCtxGetDevice)                        \
  X(StreamGetCtx, cuStreamGetCtx)                        \
  X(DeviceGetAttribute, cuDeviceGetAttribute)            \
  X(ModuleLoadData, cuModuleLoadData)                    \
  X(ModuleUnload, cuModuleUnload)                        \
  X(ModuleGetFunction, cuModuleGetFunction)              \
  X(FuncSetAttribute, cuFuncSetAttribute)                \
  X(LaunchKernel, cuLaunchKernel)                        \
  X(MemAlloc, cuMemAlloc_v2)                             \
  X(MemFree, cuMemFree_v2)                               \
  X(MemcpyHtoD, cuMemcpyHtoD_v2)                         \
  X(MemcpyHtoDAsync, cuMemcpyHtoDAsync_v2)               \
  X(MemHostAlloc, cuMemHostAlloc)                        \
  X(MemFreeHost, cuMemFreeHost)                          \
  X(MemsetD8Async, cuMemsetD8Async)                      \
  X(Memcpy3DAsync, cuMemcpy3DAsync_v2)                   \
  X(MemcpyDtoDAsync, cuMemcpyDtoDAsync_v2)               \
  X(StreamCreate, cuStreamCreate)                        \
  X(StreamDestroy, cuStreamDestroy_v2)                   \
  X(StreamWaitEvent, cuStreamWaitEvent)                  \
  X(StreamSynchronize, cuStreamSynchronize)              \
  X(EventCreate, cuEventCreate)                          \
  X(EventDestroy, cuEventDestroy_v2)                     \
  X(EventRecord, cuEventRecord)                          \
  X(EventSynchronize, cuEventSynchronize)                \
  X(EventElapsedTime, cuEventElapsedTime)                \
  X(StreamBeginCapture, cuStreamBeginCapture_v2)         \
  X(StreamEndCapture, cuStreamEndCapture)                \
  X(GraphInstantiate, cuGraphInstantiateWithFlags)       \
  X(GraphLaunch, cuGraphLaunch)                          \
  X(GraphExecDestroy, cuGraphExecDestroy)                \
  X(GraphDestroy, cuGraphDestroy)

// Entry points that only tactic timing uses (tactics.h): resolved when the library has
// them and left null otherwise, so a library without one still runs engines, untuned.
#define TFTRT_LITE_DRIVER_OPTIONAL_FUNCTIONS(X)          \
  X(DeviceGetName, cuDeviceGetName)                      \
  X(DriverGetVersion, cuDriverGetVersion)                \
  X(MemcpyDtoHAsync, cuMemcpyDtoHAsync_v2)

#define TFTRT_LITE_CUBLASLT_FUNCTIONS(X)                                 \
  X(Create, cublasLtCreate)                                              \
  X(Destroy, cublasLtDestroy)                                            \
  X(GetStatusString, cublasLtGetStatusString)                            \
  X(MatmulDescCreate, cublasLtMatmulDescCreate)                          \
  X(MatmulDescDestroy, cublasLtMatmulDescDestroy)                        \
  X(MatmulDescSetAttribute, cublasLtMatmulDescSetAttribute)              \
  X(MatrixLayoutCreate, cublasLtMatrixLayoutCreate)                      \
  X(MatrixLayoutDestroy, cublasLtMatrixLayoutDestroy)                    \
  X(MatrixLayoutSetAttribute, cublasLtMatrixLayoutSetAttribute)          \
  X(MatmulPreferenceCreate, cublasLtMatmulPreferenceCreate)              \
  X(MatmulPreferenceDestroy, cublasLtMatmulPreferenceDestroy)            \
  X(MatmulPreferenceSetAttribute, cublasLtMatmulPreferenceSetAttribute)  \
  X(MatmulAlgoGetHeuristic, cublasLtMatmulAlgoGetHeuristic)              \
  X(Matmul, cublasLtMatmul)

#define TFTRT_LITE_CUBLASLT_OPTIONAL_FUNCTIONS(X)                              \
  X(GetVersion, cublasLtGetVersion)                                            \
  X(MatmulAlgoCheck, cublasLtMatmulAlgoCheck)                                  \
  X(MatmulAlgoCapGetAttribute, cublasLtMatmulAlgoCapGetAttribute)              \
  X(MatmulAlgoConfigGetAttribute, cublasLtMatmulAlgoConfigGetAttribute)        \
  X(MatmulAlgoConfigSetAttribute, cublasLtMatmulAlgoConfigSetAttribute)

#define TFTRT_LITE_CUDNN_FUNCTIONS(X)                                          \
  X(Create, cudnnCreate)                                                       \
  X(Destroy, cudnnDestroy)                                                     \
  X(GetErrorString, cudnnGetErrorString)                                       \
  X(SetStream, cudnnSetStream)                                                 \
  X(CreateTensorDescriptor, cudnnCreateTensorDescriptor)                       \
  X(DestroyTensorDescriptor, cudnnDestroyTensorDescriptor)                     \
  X(SetTensor4dDescriptor, cudnnSetTensor4dDescriptor)                         \
  X(CreateFilterDescriptor, cudnnCreateFilterDescriptor)                       \
  X(DestroyFilterDescriptor, cudnnDestroyFilterDescriptor)                     \
  X(SetFilter4dDescriptor, cudnnSetFilter4dDescriptor)                         \
  X(CreateConvolutionDescriptor, cudnnCreateConvolutionDescriptor)             \
  X(DestroyConvolutionDescriptor, cudnnDestroyConvolutionDescriptor)           \
  X(SetConvolution2dDescriptor, cudnnSetConvolution2dDescriptor)               \
  X(SetConvolutionGroupCount, cudnnSetConvolutionGroupCount)                   \
  X(SetConvolutionMathType, cudnnSetConvolutionMathType)                       \
  X(GetConvolutionForwardAlgorithm_v7, cudnnGetConvolutionForwardAlgorithm_v7) \
  X(GetConvolutionForwardWorkspaceSize, cudnnGetConvolutionForwardWorkspaceSize) \
  X(ConvolutionForward, cudnnConvolutionForward)                               \
  X(ConvolutionBiasActivationForward, cudnnConvolutionBiasActivationForward)   \
  X(CreateActivationDescriptor, cudnnCreateActivationDescriptor)               \
  X(DestroyActivationDescriptor, cudnnDestroyActivationDescriptor)             \
  X(SetActivationDescriptor, cudnnSetActivationDescriptor)                     \
  X(ActivationForward, cudnnActivationForward)                                 \
  X(AddTensor, cudnnAddTensor)

#define TFTRT_LITE_CUDNN_OPTIONAL_FUNCTIONS(X) \
  X(GetVersion, cudnnGetVersion)

#define TFTRT_LITE_DECLARE_MEMBER(member, symbol) decltype(&::symbol) member = nullptr;

struct DriverApi {
  TFTRT_LITE_DRIVER_FUNCTIONS(TFTRT_LITE_DECLARE_MEMBER)
  TFTRT_LITE_DRIVER_OPTIONAL_FUNCTIONS(TFTRT_LITE_DECLARE_MEMBER)
};
struct CublasLtApi {
  TFTRT_LITE_CUBLASLT_FUNCTIONS(TFTRT_LITE_DECLARE_MEMBER)
  TFTRT_LITE_CUBLASLT_OPTIONAL_FUNCTIONS(TFTRT_LITE_DECLARE_MEMBER)
};
struct CudnnApi {
  TFTRT_LITE_CUDNN_FUNCTIONS(TFTRT_LITE_DECLARE_MEMBER)
  TFTRT_LITE_CUDNN_OPTIONAL_FUNCTIONS(TFTRT_LITE_DECLARE_MEMBER)
};

#undef TFTRT_LITE_DECLARE_MEMBER

// Each returns the process-wide function table, loading its library on the first
// call. On failure (library absent, required symbol missing, cuInit failing) it returns
// nullptr and sets `*error`; the failure is remembered, so later calls fail the same
// way without retrying the dlopen.
const DriverApi* Driver(std::string* error);
const CublasLtApi* CublasLt(std::string* error);
const CudnnApi* Cudnn(std::string* error);

// "CUDA_ERROR_... (message)" for a driver result.
std::string DriverErrorString(const DriverApi& api, CUresult result);

}  // namespace cuda
}  // namespace tftrt_lite

#endif  // TFTRT_LITE_RUNTIME_CC_CUDA_API_H_

#include "cuda_api.h"

#include <dlfcn.h>

#include <mutex>
#include <string>
#include <vector>

namespace tftrt_lite {
namespace cuda {
namespace {

// Opens the first of `sonames` that is already loaded into the process (the copy
// TensorFlow uses), else the first that dlopen can find.
void* OpenLibrary(const std::vector<const char*>& sonames, std::string* error) {
  for (const char* name : sonames) {
    if (void* handle = dlopen(name, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD)) return handle;
  }
  std::string reasons;
  for (const char* name : sonames) {
    if (void* handle = dlopen(name, RTLD_NOW | RTLD_LOCAL)) return handle;
    const char* why = dlerror();
    reasons += std::string("\n  ") + name + ": " + (why ? why : "not found");
  }
  *error = "cannot load any of the libraries the engine needs:" + reasons;
  return nullptr;
}

template <typename Fn>
bool Resolve(void* handle, const char* symbol, const char* library, Fn* fn, std::string* error) {
  *fn = reinterpret_cast<Fn>(dlsym(handle, symbol));
  if (*fn == nullptr) {
    *error = std::string(library) + " has no symbol " + symbol + " (the installed version is too old?)";
    return false;
  }
  return true;
}

// An optional entry point: null when the library lacks it (its users check).
template <typename Fn>
void ResolveOptional(void* handle, const char* symbol, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(handle, symbol));
}

// A function table loaded once; the outcome (table or error) is kept for later calls.
template <typename Api>
struct Loaded {
  std::once_flag once;
  Api api;
  bool ok = false;
  std::string error;
};

#define TFTRT_LITE_RESOLVE(member, symbol) \
  if (!Resolve(handle, #symbol, library, &api->member, error)) return false;
#define TFTRT_LITE_RESOLVE_OPTIONAL(member, symbol) ResolveOptional(handle, #symbol, &api->member);

bool LoadDriver(DriverApi* api, std::string* error) {
  const char* library = "libcuda.so.1";
  void* handle = OpenLibrary({library}, error);
  if (handle == nullptr) return false;
  TFTRT_LITE_DRIVER_FUNCTIONS(TFTRT_LITE_RESOLVE)
  TFTRT_LITE_DRIVER_OPTIONAL_FUNCTIONS(TFTRT_LITE_RESOLVE_OPTIONAL)
  CUresult result = api->Init(0);
  if (result != CUDA_SUCCESS) {
    *error = "cuInit failed: " + DriverErrorString(*api, result);
    return false;
  }
  return true;
}

bool LoadCublasLt(CublasLtApi* api, std::string* error) {
  void* handle = OpenLibrary({"libcublasLt.so.12", "libcublasLt.so.13"}, error);
  if (handle == nullptr) return false;
  const char* library = "libcublasLt";
  TFTRT_LITE_CUBLASLT_FUNCTIONS(TFTRT_LITE_RESOLVE)
  TFTRT_LITE_CUBLASLT_OPTIONAL_FUNCTIONS(TFTRT_LITE_RESOLVE_OPTIONAL)
  return true;
}

bool LoadCudnn(CudnnApi* api, std::string* error) {
  const char* library = "libcudnn.so.9";
  void* handle = OpenLibrary({library}, error);
  if (handle == nullptr) return false;
  TFTRT_LITE_CUDNN_FUNCTIONS(TFTRT_LITE_RESOLVE)
  TFTRT_LITE_CUDNN_OPTIONAL_FUNCTIONS(TFTRT_LITE_RESOLVE_OPTIONAL)
  return true;
}

#undef TFTRT_LITE_RESOLVE
#undef TFTRT_LITE_RESOLVE_OPTIONAL

template <typename Api>
const Api* Get(Loaded<Api>* loaded, bool (*load)(Api*, std::string*), std::string* error) {
  std::call_once(loaded->once, [&] { loaded->ok = load(&loaded->api, &loaded->error); });
  if (!loaded->ok) {
    *error = loaded->error;
    return nullptr;
  }
  return &loaded->api;
}

}  // namespace

const DriverApi* Driver(std::string* error) {
  static Loaded<DriverApi>* loaded = new Loaded<DriverApi>();
  return Get(loaded, LoadDriver, error);
}

const CublasLtApi* CublasLt(std::string* error) {
  static Loaded<CublasLtApi>* loaded = new Loaded<CublasLtApi>();
  return Get(loaded, LoadCublasLt, error);
}

const CudnnApi* Cudnn(std::string* error) {
  static Loaded<CudnnApi>* loaded = new Loaded<CudnnApi>();
  return Get(loaded, LoadCudnn, error);
}

std::string DriverErrorString(const DriverApi& api, CUresult result) {
  const char* name = nullptr;
  const char* text = nullptr;
  if (api.GetErrorName == nullptr || api.GetErrorName(result, &name) != CUDA_SUCCESS) name = nullptr;
  if (api.GetErrorString == nullptr || api.GetErrorString(result, &text) != CUDA_SUCCESS) text = nullptr;
  std::string out = name ? name : "CUresult " + std::to_string(static_cast<int>(result));
  if (text) out += std::string(" (") + text + ")";
  return out;
}

}  // namespace cuda
}  // namespace tftrt_lite

// Process-wide counters of TftrtLiteEngine calls.
//
// Tests and users need to know whether an engine really ran or the op quietly fell
// back to the native segment, so every call is counted here. The counters are plain
// atomics (no TensorFlow dependency) and are read from Python through the extern "C"
// functions below with ctypes, which works on the library TensorFlow already loaded.
#ifndef TFTRT_LITE_RUNTIME_CC_STATS_H_
#define TFTRT_LITE_RUNTIME_CC_STATS_H_

#include <cstdint>

namespace tftrt_lite {

// One entry per counter; kCounterNames in stats.cc gives the name Python sees.
enum class Counter : int {
  kEngineCalls = 0,            // every TftrtLiteEngine execution attempt
  kFallbackCalls,              // calls served by the native segment function
  kFallbackNoGpu,              // ... because the kernel runs on a CPU device
  kFallbackNoExecutor,         // ... because the plan cannot be loaded on this device
  kFallbackShapeMismatch,      // ... because an input is outside the engine's shapes
  kFallbackExecutionError,     // ... because the engine failed while running
  kRefusedCalls,               // calls that needed a fallback and could not have one
  kNumCounters,
};

void IncrementCounter(Counter counter);

}  // namespace tftrt_lite

extern "C" {
// Number of counters; valid indices are [0, tftrt_lite_stats_count()).
int tftrt_lite_stats_count();
// Name of counter `index`, or nullptr when out of range.
const char* tftrt_lite_stats_name(int index);
// Value of counter `index`, or -1 when out of range.
int64_t tftrt_lite_stats_get(int index);
// Sets every counter to zero.
void tftrt_lite_stats_reset();
}

#endif  // TFTRT_LITE_RUNTIME_CC_STATS_H_

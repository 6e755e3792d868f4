#include "stats.h"

#include <atomic>

namespace tftrt_lite {
namespace {

constexpr int kNumCounters = static_cast<int>(Counter::kNumCounters);

// Same order as the Counter enum.
constexpr const char* kCounterNames[kNumCounters] = {
    "engine_calls",
    "fallback_calls",
    "fallback_no_gpu",
    "fallback_no_executor",
    "fallback_shape_mismatch",
    "fallback_execution_error",
    "refused_calls",
};

std::atomic<int64_t> counters[kNumCounters];

}  // namespace

void IncrementCounter(Counter counter) {
  counters[static_cast<int>(counter)].fetch_add(1, std::memory_order_relaxed);
}

}  // namespace tftrt_lite

extern "C" {

int tftrt_lite_stats_count() { return tftrt_lite::kNumCounters; }

const char* tftrt_lite_stats_name(int index) {
  if (index < 0 || index >= tftrt_lite::kNumCounters) return nullptr;
  return tftrt_lite::kCounterNames[index];
}

int64_t tftrt_lite_stats_get(int index) {
  if (index < 0 || index >= tftrt_lite::kNumCounters) return -1;
  return tftrt_lite::counters[index].load(std::memory_order_relaxed);
}

void tftrt_lite_stats_reset() {
  for (auto& counter : tftrt_lite::counters) {
    counter.store(0, std::memory_order_relaxed);
  }
}

}  // extern "C"

// What `moco-train bench-step` measures that tch 0.24 cannot: ATen ops per step (a RecordFunction
// callback), the accelerator's synchronisation and its allocator's peak. Exceptions stay on this
// side of the C ABI.
#include <ATen/DeviceAccelerator.h>
#include <ATen/record_function.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

// A RecordFunction callback on every thread: each ATen op the dispatcher runs counts once in
// `all`, and in `top` when no other ATen op encloses it on its thread (what our code and the
// autograd engine dispatch, as torch.profiler's top-level aten:: events; the ops an op calls
// inside count in `all` only). Installed only while counting: callbacks cost time on every op.
namespace {

std::atomic<uint64_t> ops_top{0};
std::atomic<uint64_t> ops_all{0};
thread_local int aten_depth = 0;
at::CallbackHandle counter_handle = 0;
// Top-level ops by name, when asked for (a lock on every op: for finding where ops come from).
std::atomic<bool> by_name{false};
std::mutex names_lock;
std::map<std::string, uint64_t> names;

// ATen's ops and our own (`moco::`, models-tch/csrc: ops built from ATen ops the way ATen
// builds its composite ones, counted like them: once at the top, their insides as nested).
bool is_aten(const at::RecordFunction& fn) {
  const char* name = fn.name();
  return name && (std::strncmp(name, "aten::", 6) == 0 || std::strncmp(name, "moco::", 6) == 0);
}

std::unique_ptr<at::ObserverContext> op_start(const at::RecordFunction& fn) {
  if (is_aten(fn)) {
    if (aten_depth == 0) {
      ops_top.fetch_add(1, std::memory_order_relaxed);
      if (by_name.load(std::memory_order_relaxed)) {
        std::lock_guard<std::mutex> g(names_lock);
        ++names[fn.name()];
      }
    }
    ops_all.fetch_add(1, std::memory_order_relaxed);
    ++aten_depth;
  }
  return nullptr;
}

void op_end(const at::RecordFunction& fn, at::ObserverContext*) {
  if (is_aten(fn) && aten_depth > 0) {
    --aten_depth;
  }
}

}  // namespace

// Starts (on != 0; 2 also counts the top-level ops by name) or stops counting; the counts are
// kept until read.
extern "C" int moco_count_ops(int on) {
  try {
    by_name.store(on == 2);
    if (on && counter_handle == 0) {
      counter_handle = at::addGlobalCallback(
          at::RecordFunctionCallback(op_start, op_end)
              .needsInputs(false)
              .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
    } else if (!on && counter_handle != 0) {
      at::removeCallback(counter_handle);
      counter_handle = 0;
    }
    return 0;
  } catch (...) {
    return 1;
  }
}

// The counts since the last read (top-level, all), then reset.
extern "C" void moco_read_ops(uint64_t* top, uint64_t* all) {
  *top = ops_top.exchange(0);
  *all = ops_all.exchange(0);
}

// The accelerator's clock and memory, for bench-step.

// Waits for every kernel queued on the device (what timing a GPU step needs). 1 without one.
extern "C" int moco_device_synchronize(int index) {
  try {
    at::accelerator::synchronizeDevice(static_cast<c10::DeviceIndex>(index));
    return 0;
  } catch (...) {
    return 1;
  }
}

// The most bytes the caching allocator held in tensors since the last reset (then reset when
// `reset`); -1 without an accelerator.
extern "C" long long moco_device_peak_bytes(int index, int reset) {
  try {
    const auto i = static_cast<c10::DeviceIndex>(index);
    const auto stats = at::accelerator::getDeviceStats(i);
    const auto peak =
        stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
    if (reset) {
      at::accelerator::resetPeakStats(i);
    }
    return static_cast<long long>(peak);
  } catch (...) {
    return -1;
  }
}

// The top-level ops by name since counting started, as "count name" lines into `buf` (cut at
// `len`); the table is cleared.
extern "C" void moco_read_op_names(char* buf, size_t len) {
  std::lock_guard<std::mutex> g(names_lock);
  std::string out;
  for (const auto& [name, count] : names) {
    out += std::to_string(count) + " " + name + "\n";
  }
  names.clear();
  std::snprintf(buf, len, "%s", out.c_str());
}

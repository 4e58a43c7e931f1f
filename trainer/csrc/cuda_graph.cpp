// A training step captured once and replayed as one CUDA graph (`pretrain --cuda-graph`):
// libtorch's `at::cuda::CUDAGraph`, which tch 0.24 does not wrap. Capture runs on a side stream
// (CUDA cannot capture the legacy default stream) with autocast's cast cache off (cached casts
// would outlive the capture); the default stream waits for the side stream at both ends, so
// eager work before and after stays ordered. Built only where the CUDA runtime's headers are
// found (MOCO_CUDA_GRAPH); elsewhere every call fails with a message. Exceptions stay on this
// side of the C ABI.
#include <string>

namespace {
thread_local std::string last_error;

template <typename F>
int guarded(F f, const char** error) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    *error = last_error.c_str();
    return 1;
  }
}
}  // namespace

#ifdef MOCO_CUDA_GRAPH
// Streams and events through c10's calls (libc10_cuda), not the inline guards and events of
// the headers: those call the CUDA runtime directly, which the binary does not link.
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/Event.h>
#include <c10/cuda/CUDAStream.h>

namespace {
struct Graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream side;
  c10::cuda::CUDAStream caller;
  bool cache_was_enabled = true;

  explicit Graph(c10::DeviceIndex device)
      : side(c10::cuda::getStreamFromPool(false, device)),
        caller(c10::cuda::getCurrentCUDAStream(device)) {}
};

// `waiter` waits for everything queued on `queued` so far.
void wait_for(const c10::cuda::CUDAStream& waiter, const c10::cuda::CUDAStream& queued) {
  c10::Event event(c10::DeviceType::CUDA);
  event.record(queued.unwrap());
  event.block(waiter.unwrap());
}
}  // namespace

extern "C" int moco_graph_new(void** out, int device, const char** error) {
  return guarded([&] { *out = new Graph(static_cast<c10::DeviceIndex>(device)); }, error);
}

extern "C" int moco_graph_capture_begin(void* g, const char** error) {
  return guarded(
      [&] {
        auto* graph = static_cast<Graph*>(g);
        graph->caller = c10::cuda::getCurrentCUDAStream(graph->side.device_index());
        wait_for(graph->side, graph->caller);
        c10::cuda::setCurrentCUDAStream(graph->side);
        graph->cache_was_enabled = at::autocast::is_autocast_cache_enabled();
        at::autocast::set_autocast_cache_enabled(false);
        // Thread-local: the loader thread may pin host memory while the step is captured,
        // which a global capture would refuse. The autograd engine's device thread launches
        // the backward into the captured stream, and is captured with it.
        graph->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      },
      error);
}

extern "C" int moco_graph_capture_end(void* g, const char** error) {
  auto* graph = static_cast<Graph*>(g);
  const int rc = guarded([&] { graph->graph.capture_end(); }, error);
  at::autocast::set_autocast_cache_enabled(graph->cache_was_enabled);
  c10::cuda::setCurrentCUDAStream(graph->caller);
  wait_for(graph->caller, graph->side);
  return rc;
}

extern "C" int moco_graph_replay(void* g, const char** error) {
  return guarded([&] { static_cast<Graph*>(g)->graph.replay(); }, error);
}

extern "C" void moco_graph_free(void* g) { delete static_cast<Graph*>(g); }

extern "C" int moco_graph_built() { return 1; }

#else

namespace {
int not_built(const char** error) {
  last_error =
      "this moco-train was built without the CUDA runtime's headers (scripts/setup.sh installs "
      "them with the CUDA wheel of torch)";
  *error = last_error.c_str();
  return 1;
}
}  // namespace

extern "C" int moco_graph_new(void**, int, const char** error) { return not_built(error); }
extern "C" int moco_graph_capture_begin(void*, const char** error) { return not_built(error); }
extern "C" int moco_graph_capture_end(void*, const char** error) { return not_built(error); }
extern "C" int moco_graph_replay(void*, const char** error) { return not_built(error); }
extern "C" void moco_graph_free(void*) {}
extern "C" int moco_graph_built() { return 0; }

#endif

// PyTorch's distributed engine (c10d, inside libtorch) for moco-train: TCPStore rendezvous and
// ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA, when built with USE_C10D_NCCL) collectives,
// behind a C ABI. tch 0.24 wraps none of c10d. Every function
// catches C++ exceptions and reports them through `err` (a timeout, a peer that closed its
// connection), so Rust turns them into one-line errors instead of aborting.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
};

void report(char* err, size_t len, const char* what) {
  if (err && len) {
    std::snprintf(err, len, "%s", what);
  }
}

template <typename F>
int guarded(char* err, size_t len, F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    report(err, len, e.what());
  } catch (...) {
    report(err, len, "unknown C++ exception");
  }
  return 1;
}

}  // namespace

// With `server`, this rank hosts the store on `host:port`; the others connect to it, retrying
// until `timeout_ms`. Under torchrun the agent hosts it and every rank is a client. `nccl_device`
// ≥ 0 asks for ProcessGroupNCCL bound to that CUDA device; otherwise Gloo.
extern "C" void* moco_dist_init(const char* host, int port, int rank, int world, int server,
                                int timeout_ms, int nccl_device, char* err, size_t errlen) {
  Group* g = nullptr;
  // The rendezvous logs every connection retry and its timeout as errors with a C++ backtrace,
  // and moco-train reports a failed rendezvous itself in one line: c10's log is held back while
  // the store connects, and only then (the process groups' and NCCL's warnings and errors of a
  // run reach the user).
  // TORCH_CPP_LOG_LEVEL still wins when set.
  const char* level = std::getenv("TORCH_CPP_LOG_LEVEL");
  const bool quiet_rendezvous = !level || !*level;
  const int before = FLAGS_caffe2_log_level;
  guarded(err, errlen, [&] {
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = server != 0;
    so.numWorkers = world;
    so.waitWorkers = true;
    so.timeout = timeout;
    // Our keys in a namespace of their own (torchrun's agent keeps its keys in the same store).
    if (quiet_rendezvous) {
      FLAGS_caffe2_log_level = c10::GLOG_FATAL;
    }
    c10::intrusive_ptr<c10d::Store> tcp;
    try {
      tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    } catch (...) {
      FLAGS_caffe2_log_level = before;
      throw;
    }
    FLAGS_caffe2_log_level = before;
    auto store = c10::make_intrusive<c10d::PrefixStore>("moco-rs", tcp);
    if (nccl_device >= 0) {
#ifdef USE_C10D_NCCL
      auto nopts = c10d::ProcessGroupNCCL::Options::create();
      nopts->timeout = timeout;
      auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, nopts);
      // Bound up front: barrier() and the communicator's first use need no device guess (the
      // collectives themselves run on their tensors' device).
      pg->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(nccl_device)));
      g = new Group{store, pg};
      return;
#else
      throw std::runtime_error("this moco-train was built without NCCL");
#endif
    }
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    // GLOO_SOCKET_IFNAME picks the interface, as in PyTorch; a loopback master means one host.
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    const std::string h(host);
    if (ifname && *ifname) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (h == "127.0.0.1" || h == "localhost") {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    g = new Group{store, pg};
  });
  return g;
}

extern "C" void moco_dist_free(void* g) { delete static_cast<Group*>(g); }

// In place: t = Σ over ranks of t.
extern "C" int moco_dist_allreduce_sum(void* g, at::Tensor* t, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    std::vector<at::Tensor> v{*t};
    static_cast<Group*>(g)->pg->allreduce(v)->wait();
  });
}

// out [world·n, …] = the ranks' `in` [n, …] in rank order.
extern "C" int moco_dist_allgather(void* g, at::Tensor* out, at::Tensor* in, char* err,
                                   size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* grp = static_cast<Group*>(g);
    std::vector<std::vector<at::Tensor>> outs(1);
    for (auto& chunk : out->chunk(grp->pg->getSize(), 0)) {
      outs[0].push_back(chunk);
    }
    std::vector<at::Tensor> ins{in->contiguous()};
    grp->pg->allgather(outs, ins)->wait();
  });
}

// In place: t = rank `root`'s t.
extern "C" int moco_dist_broadcast(void* g, at::Tensor* t, int root, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    static_cast<Group*>(g)->pg->broadcast(v, o)->wait();
  });
}

extern "C" int moco_dist_barrier(void* g, char* err, size_t errlen) {
  return guarded(err, errlen, [&] { static_cast<Group*>(g)->pg->barrier()->wait(); });
}

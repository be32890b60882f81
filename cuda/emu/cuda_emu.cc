// The emulator's scheduler and runtime (see cuda_emu.h for what it is for and how it runs).
#include "cuda_emu.h"

#include <ucontext.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace luna_emu {

namespace {

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
  ucontext_t context;
  uint3 tid;
  int warp = 0, lane = 0;
  State state = State::Runnable;
};

// Big enough for the kernels' register arrays at -O0 as well; the pages are only touched as used.
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kMaxThreads = 1024;
constexpr size_t kStaticSharedLimit = 48 * 1024;
constexpr size_t kOptinSharedLimit = 227 * 1024;  // H100/H200

struct Block {
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>>* stacks = nullptr;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  dim3 grid, block;
  uint3 bid{0, 0, 0};
  const std::function<void()>* body = nullptr;
  std::vector<uint64_t> slots;  // one per thread: the values a shuffle exchanges
  int warps = 0;
  unsigned char* smem = nullptr;
};

Block* g_block = nullptr;  // the block being run (blocks run one at a time)
std::recursive_mutex g_launch_mutex;  // one launch at a time, from any OS thread
cudaError_t g_last_error = cudaSuccess;
std::unordered_map<const void*, int> g_smem_attribute;

Fiber& current_fiber() {
  if (g_block == nullptr || g_block->current == nullptr) {
    std::fprintf(stderr, "luna CUDA emulator: a device function ran outside a kernel launch\n");
    std::abort();
  }
  return *g_block->current;
}

void fiber_entry() {
  Block* b = g_block;
  (*b->body)();
  b->current->state = State::Done;
  // Returning resumes uc_link, the scheduler.
}

void wait_at(State s) {
  Fiber& f = current_fiber();
  f.state = s;
  swapcontext(&f.context, &g_block->scheduler);
}

// Runs every fiber until all are done; throws (as a string) on a deadlock.
bool run_block(Block& b, const char* name) {
  const size_t n = b.fibers.size();
  for (size_t i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = (*b.stacks)[i].get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_entry, 0);
    f.state = State::Runnable;
  }
  for (;;) {
    bool ran = false;
    for (size_t i = 0; i < n; ++i) {
      Fiber& f = b.fibers[i];
      if (f.state != State::Runnable) continue;
      b.current = &f;
      swapcontext(&b.scheduler, &f.context);
      b.current = nullptr;
      ran = true;
    }
    size_t done = 0, at_block = 0;
    for (const Fiber& f : b.fibers) done += f.state == State::Done, at_block += f.state == State::AtBlockBarrier;
    if (done == n) return true;
    bool released = false;
    if (at_block == n - done) {
      for (Fiber& f : b.fibers)
        if (f.state == State::AtBlockBarrier) f.state = State::Runnable;
      released = true;
    } else {
      for (int w = 0; w < b.warps; ++w) {
        const size_t first = size_t(w) * 32, last = std::min(n, first + 32);
        size_t live = 0, waiting = 0;
        for (size_t i = first; i < last; ++i) {
          live += b.fibers[i].state != State::Done;
          waiting += b.fibers[i].state == State::AtWarpBarrier;
        }
        if (live > 0 && waiting == live) {
          for (size_t i = first; i < last; ++i)
            if (b.fibers[i].state == State::AtWarpBarrier) b.fibers[i].state = State::Runnable;
          released = true;
        }
      }
    }
    if (!released && !ran) {
      std::fprintf(stderr,
                   "luna CUDA emulator: kernel %s deadlocked in block (%u,%u,%u): %zu threads wait at "
                   "__syncthreads while others wait at a warp barrier (a barrier or shuffle in divergent code)\n",
                   name, b.bid.x, b.bid.y, b.bid.z, at_block);
      return false;
    }
  }
}

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

cudaError_t fail(cudaError_t e) {
  g_last_error = e;
  return e;
}

// The emulated device's memory: a byte budget (LUNA_EMU_MEMORY_MB, default 4096) so that the
// out-of-memory path can be tested.
size_t memory_budget() {
  static const size_t budget = [] {
    const char* mb = std::getenv("LUNA_EMU_MEMORY_MB");
    const long v = mb ? std::atol(mb) : 0;
    return size_t(v > 0 ? v : 4096) << 20;
  }();
  return budget;
}
std::mutex g_memory_mutex;
std::map<void*, size_t> g_allocations;
size_t g_allocated = 0;

}  // namespace

const uint3& thread_idx() { return current_fiber().tid; }
const uint3& block_idx() { return g_block->bid; }
const dim3& block_dim() { return g_block->block; }
const dim3& grid_dim() { return g_block->grid; }
void sync_block() { wait_at(State::AtBlockBarrier); }
void sync_warp() { wait_at(State::AtWarpBarrier); }
int lane_id() { return current_fiber().lane; }
int warp_lanes() {
  const Fiber& f = current_fiber();
  return int(std::min<size_t>(32, g_block->fibers.size() - size_t(f.warp) * 32));
}

uint64_t exchange(uint64_t bits, int src_lane) {
  Fiber& f = current_fiber();
  const size_t me = size_t(f.warp) * 32 + f.lane;
  g_block->slots[me] = bits;
  sync_warp();  // every lane has written
  const size_t src = size_t(f.warp) * 32 + size_t(src_lane);
  const uint64_t got = (src_lane >= 0 && src_lane < 32 && src < g_block->fibers.size()) ? g_block->slots[src] : bits;
  sync_warp();  // every lane has read, so the slots can be reused
  return got;
}

void* dynamic_smem_base() { return g_block->smem; }

cudaError_t run_grid(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem,
                     const std::function<void()>& body) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  const size_t threads = size_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
    std::fprintf(stderr, "luna CUDA emulator: %s launched with grid (%u,%u,%u) block (%u,%u,%u)\n", name, grid.x,
                 grid.y, grid.z, block.x, block.y, block.z);
    return fail(cudaErrorInvalidConfiguration);
  }
  const auto attr = g_smem_attribute.find(kernel);
  const size_t allowed = attr == g_smem_attribute.end() ? kStaticSharedLimit : size_t(attr->second);
  if (smem > std::max(allowed, kStaticSharedLimit) || smem > kOptinSharedLimit) {
    std::fprintf(stderr, "luna CUDA emulator: %s asks for %zu bytes of dynamic shared memory, allowed %zu\n", name,
                 smem, allowed);
    return fail(cudaErrorInvalidValue);
  }
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (stacks.size() < threads) stacks.emplace_back(new char[kStackBytes]);
  std::unique_ptr<unsigned char[]> smem_buffer(new (std::align_val_t(128)) unsigned char[std::max<size_t>(smem, 16)]);
  Block b;
  b.stacks = &stacks;
  b.grid = grid;
  b.block = block;
  b.body = &body;
  b.fibers.resize(threads);
  b.slots.assign(threads, 0);
  b.warps = int((threads + 31) / 32);
  b.smem = smem_buffer.get();
  for (unsigned z = 0, i = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x, ++i) {
        b.fibers[i].tid = {x, y, z};
        b.fibers[i].warp = int(i / 32);
        b.fibers[i].lane = int(i % 32);
      }
  Block* outer = g_block;
  g_block = &b;
  bool ok = true;
  for (unsigned z = 0; z < grid.z && ok; ++z)
    for (unsigned y = 0; y < grid.y && ok; ++y)
      for (unsigned x = 0; x < grid.x && ok; ++x) {
        b.bid = {x, y, z};
        std::memset(b.smem, 0xff, smem);  // NaN bytes: an unwritten element shows
        ok = run_block(b, name);
      }
  g_block = outer;
  // smem_buffer was allocated with an alignment: free it the matching way.
  ::operator delete[](smem_buffer.release(), std::align_val_t(128));
  return ok ? cudaSuccess : fail(cudaErrorLaunchFailure);
}

}  // namespace luna_emu

using namespace luna_emu;

unsigned __ballot_sync(unsigned, int predicate) {
  Fiber& f = current_fiber();
  const size_t base = size_t(f.warp) * 32;
  g_block->slots[base + f.lane] = predicate ? 1 : 0;
  sync_warp();
  unsigned bits = 0;
  for (size_t i = 0; i < 32 && base + i < g_block->fibers.size(); ++i) bits |= unsigned(g_block->slots[base + i] != 0) << i;
  sync_warp();
  return bits;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "luna CUDA emulator (CPU)");
  prop->totalGlobalMem = memory_budget();
  prop->sharedMemPerBlock = kStaticSharedLimit;
  prop->sharedMemPerBlockOptin = kOptinSharedLimit;
  prop->multiProcessorCount = 4;
  prop->maxThreadsPerBlock = int(kMaxThreads);
  prop->warpSize = 32;
  prop->major = 9;
  prop->minor = 0;
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  *ptr = nullptr;
  if (bytes > memory_budget() - g_allocated) return fail(cudaErrorMemoryAllocation);
  void* p = ::operator new(std::max<size_t>(bytes, 1), std::align_val_t(256), std::nothrow);
  if (p == nullptr) return fail(cudaErrorMemoryAllocation);
  std::memset(p, 0xff, bytes);  // fresh device memory is garbage; NaN bytes make it show
  g_allocations[p] = bytes;
  g_allocated += bytes;
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  const auto it = g_allocations.find(ptr);
  if (it == g_allocations.end()) return fail(cudaErrorInvalidDevicePointer);
  g_allocated -= it->second;
  g_allocations.erase(it);
  ::operator delete(ptr, std::align_val_t(256));
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
  *ptr = std::malloc(std::max<size_t>(bytes, 1));
  return *ptr ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  *free_bytes = memory_budget() - g_allocated;
  *total_bytes = memory_budget();
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) { return cudaMemset(dst, value, bytes); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  static char token;
  *s = reinterpret_cast<cudaStream_t>(&token);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaGetLastError() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_last_error; }
const char* cudaGetErrorName(cudaError_t err) { return error_name(err); }
const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return error_name(err);
  }
}
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || size_t(value) > kOptinSharedLimit)
    return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  g_smem_attribute[func] = value;
  return cudaSuccess;
}

struct luna_emu_event {
  std::chrono::steady_clock::time_point t;
};
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new luna_emu_event{};
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  e->t = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  *ms = std::chrono::duration<float, std::milli>(end->t - start->t).count();
  return cudaSuccess;
}

// The fiber scheduler and the runtime API behind cuda_emu.h (see there). Device memory is host
// memory filled with NaN bytes when allocated, so a kernel that reads what nobody wrote shows up.
#include "cuda_emu.h"

#include <ucontext.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif

uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
dim3 blockDim, gridDim;

namespace cuda_emu {

namespace {

constexpr size_t kStack = 256 * 1024;
constexpr int kMaxThreads = 1024;

struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;
    uint3 tid{0, 0, 0};
    bool done = false, at_barrier = false;
};

std::recursive_mutex g_launch_mu;  // one kernel at a time (shared memory is static)
ucontext_t g_sched;
Fiber g_fibers[kMaxThreads];
Fiber* g_cur = nullptr;
const std::function<void()>* g_body = nullptr;
std::string g_error;
cudaError_t g_last = cudaSuccess;
#ifdef EMU_ASAN
void* g_sched_fake = nullptr;
const void* g_sched_bottom = nullptr;
size_t g_sched_size = 0;
#endif

void switch_to_fiber(Fiber& f) {
    g_cur = &f;
    threadIdx = f.tid;
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&g_sched_fake, f.stack, kStack);
#endif
    swapcontext(&g_sched, &f.ctx);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#endif
}

void switch_to_scheduler(bool finished) {
    Fiber& f = *g_cur;
#ifdef EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(finished ? nullptr : &fake, g_sched_bottom, g_sched_size);
#endif
    swapcontext(&f.ctx, &g_sched);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, &g_sched_bottom, &g_sched_size);
#endif
    threadIdx = f.tid;
}

void fiber_main() {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched_bottom, &g_sched_size);
#endif
    (*g_body)();
    g_cur->done = true;
    switch_to_scheduler(true);
}

// CNNKIT_EMU_REVERSE=1 runs the threads of a phase last-to-first: a missing barrier between a
// write and a read of shared memory is caught in one of the two orders.
bool reverse_order() {
    static const bool r = [] {
        const char* e = std::getenv("CNNKIT_EMU_REVERSE");
        return e && e[0] == '1';
    }();
    return r;
}

}  // namespace

void fail(const char* what) {
    if (g_error.empty()) g_error = what;
}

int64_t max_grid() {
    static const int64_t g = [] {
        const char* e = std::getenv("CNNKIT_EMU_MAX_GRID");
        return e ? std::max<int64_t>(1, std::atoll(e)) : int64_t(8);
    }();
    return g;
}

void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
    std::lock_guard<std::recursive_mutex> lock(g_launch_mu);
    const unsigned nt = block.x * block.y * block.z;
    if (nt == 0 || nt > kMaxThreads || grid.y > 65535 || grid.z > 65535) {
        g_last = cudaErrorInvalidValue;
        return;
    }
    g_error.clear();
    g_body = &body;
    gridDim = grid;
    blockDim = block;
    for (unsigned t = 0; t < nt; ++t)
        if (!g_fibers[t].stack) g_fibers[t].stack = static_cast<char*>(std::malloc(kStack));
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = uint3{bx, by, bz};
                for (unsigned t = 0; t < nt; ++t) {
                    Fiber& f = g_fibers[t];
                    f.tid = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                    f.done = f.at_barrier = false;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack;
                    f.ctx.uc_stack.ss_size = kStack;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, fiber_main, 0);
                }
                unsigned finished = 0;
                while (finished < nt) {
                    unsigned waiting = 0;
                    for (unsigned i = 0; i < nt; ++i) {
                        Fiber& f = g_fibers[reverse_order() ? nt - 1 - i : i];
                        if (f.done) continue;
                        f.at_barrier = false;
                        switch_to_fiber(f);
                        if (f.done)
                            ++finished;
                        else
                            ++waiting;
                    }
                    if (waiting && finished) {
                        // some threads left the kernel while others wait at a barrier: on a
                        // GPU that is undefined (a hang or garbage)
                        fail("__syncthreads not reached by every thread of the block");
                        // let the waiting threads run on so their fibers end cleanly
                    }
                }
                if (!g_error.empty()) {
                    std::fprintf(stderr, "cuda_emu: kernel fault in block (%u,%u,%u): %s\n", bx,
                                 by, bz, g_error.c_str());
                    g_last = cudaErrorLaunchFailure;
                    return;
                }
            }
}

}  // namespace cuda_emu

void __syncthreads() {
    cuda_emu::g_cur->at_barrier = true;
    cuda_emu::switch_to_scheduler(false);
}

// ---- runtime API ---------------------------------------------------------------------------------

const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorLaunchFailure: return "unspecified launch failure (emulated kernel fault)";
        case cudaErrorNoKernelImageForDevice: return "no kernel image is available";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorNotReady: return "device not ready";
    }
    return "unknown error";
}
const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
        case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorNotReady: return "cudaErrorNotReady";
    }
    return "cudaErrorUnknown";
}
cudaError_t cudaGetLastError() {
    cudaError_t e = cuda_emu::g_last;
    cuda_emu::g_last = cudaSuccess;
    return e;
}
static int emu_devices() {
    static const int n = [] {
        const char* e = std::getenv("CNNKIT_EMU_DEVICES");
        const int v = e ? std::atoi(e) : 1;
        return v >= 1 ? v : 1;
    }();
    return n;
}
static thread_local int emu_current = 0;
cudaError_t cudaGetDeviceCount(int* n) {
    *n = emu_devices();
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= emu_devices()) return cudaErrorInvalidDevice;
    emu_current = device;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
    *device = emu_current;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
    std::snprintf(p->name, sizeof(p->name), "cnnkit CPU emulation");
    return cudaSuccess;
}
// A deferred stream's queue: tasks [0, run) have run; flush(upto) runs the rest up to upto.
struct CUstream_st {
    bool deferred = false;
    std::recursive_mutex mu;
    std::vector<std::function<void()>> tasks;
    size_t run = 0;

    void flush(size_t upto) {
        std::lock_guard<std::recursive_mutex> lock(mu);
        while (run < upto && run < tasks.size()) {
            std::function<void()> t = std::move(tasks[run]);
            t();
            ++run;
        }
    }
    size_t size() {
        std::lock_guard<std::recursive_mutex> lock(mu);
        return tasks.size();
    }
    // runs `t` now on an immediate stream, else queues it
    void submit(std::function<void()> t) {
        if (!deferred) {
            t();
            return;
        }
        std::lock_guard<std::recursive_mutex> lock(mu);
        tasks.push_back(std::move(t));
    }
};
struct CUevent_st {
    std::chrono::steady_clock::time_point t;
    CUstream_st* stream = nullptr;  // deferred stream it was last recorded on, or none
    size_t pos = 0;                 // that stream's queue length at the record
};
cudaError_t cudaStreamCreate(cudaStream_t* s) {
    *s = new CUstream_st();
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
    *s = new CUstream_st();
    (*s)->deferred = true;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return cudaErrorInvalidValue;
    s->flush(s->size());  // as CUDA: queued work still completes
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (s) s->flush(s->size());
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
    if (!e) return cudaErrorInvalidValue;
    CUstream_st* src = e->stream;
    if (!src) return cudaSuccess;  // recorded on an immediate stream: done already
    const size_t pos = e->pos;
    if (s && s->deferred)
        s->submit([src, pos] { src->flush(pos); });
    else
        src->flush(pos);  // the waiting stream runs at once: so must what it waits for
    return cudaSuccess;
}
cudaError_t cudaMalloc(void** p, size_t bytes) {
    // CNNKIT_EMU_MAX_ALLOC (bytes) makes big allocations fail, to test the out-of-memory path
    static const size_t limit = [] {
        const char* e = std::getenv("CNNKIT_EMU_MAX_ALLOC");
        return e ? static_cast<size_t>(std::atoll(e)) : size_t(0);
    }();
    if (limit && bytes > limit) return cudaErrorMemoryAllocation;
    *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!*p) return cudaErrorMemoryAllocation;
    std::memset(*p, 0xff, bytes);  // NaN: "uninitialised device memory"
    return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
    std::free(p);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
    *free_b = *total_b = size_t(1) << 34;
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t s) {
    if (s && s->deferred)
        s->submit([=] { std::memmove(dst, src, bytes); });
    else
        std::memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
    if (s && s->deferred)
        s->submit([=] { std::memset(p, value, bytes); });
    else
        std::memset(p, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned) {
    *p = std::malloc(bytes);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void* p) {
    std::free(p);
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
    *e = new CUevent_st();
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    e->t = std::chrono::steady_clock::now();
    e->stream = s && s->deferred ? s : nullptr;
    e->pos = e->stream ? s->size() : 0;
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (e && e->stream) e->stream->flush(e->pos);
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {  // complete once waited for: run what it follows
    return cudaEventSynchronize(e);
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}

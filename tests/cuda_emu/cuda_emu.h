// CPU emulation of the slice of CUDA that csrc/cuda/*.cu uses, so the kernels can be compiled
// as plain C++ and run on a machine without a GPU (tests/cuda_emu/run.sh). A development aid
// only: it checks index arithmetic, bounds (under AddressSanitizer), __syncthreads placement,
// float4 alignment and the host-side logic, NOT the GPU's memory model, timing or numerics
// (no FMA contraction, host libm instead of CUDA's math library).
//
// Each block runs alone; its threads are fibers (ucontext) run round-robin, each up to its next
// __syncthreads. Thread 0 runs as far as it can before thread 1 starts (or the last thread
// first, with CNNKIT_EMU_REVERSE=1), so a missing barrier shows up as stale or clobbered shared
// memory in one order or the other. A __shared__ variable is a function-local
// static: one block at a time means one copy per block.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
inline float __fmul_rn(float a, float b) { return a * b; }

extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

void __syncthreads();

namespace cuda_emu {
// Runs body once per thread of every block of the grid (see the top of this file).
void launch(dim3 grid, dim3 block, const std::function<void()>& body);
// Records a kernel fault (reported by launch as a failed launch).
void fail(const char* what);
inline void check_aligned(const void* p, unsigned bytes) {
    if (reinterpret_cast<uintptr_t>(p) % bytes) fail("misaligned vector access");
}
// Grid cap for grid-stride loops: CNNKIT_EMU_MAX_GRID (default 8), small so the loops wrap.
int64_t max_grid();
}  // namespace cuda_emu

// ---- runtime API -------------------------------------------------------------------------------

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoKernelImageForDevice = 209,
    cudaErrorNotReady = 600,
    cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
};
struct CUstream_st;
struct CUevent_st;
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;
struct cudaDeviceProp {
    char name[256];
};
constexpr unsigned cudaEventDisableTiming = 2;
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaHostAllocDefault = 0;

const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device);
// CNNKIT_EMU_DEVICES (default 1) emulated devices, all the same host memory
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
// Streams. cudaStreamCreate's (cnnkit's one stream) runs everything at once, as kernels do.
// A stream made by cudaStreamCreateWithFlags (the copy streams of an overlapped data-parallel
// step, the NCCL communicator's) defers its copies until something waits for them (an event
// recorded after them, or the stream), so a missing wait shows up as data that never arrived.
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s);
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);  // always complete (what it follows runs first)
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaEventDestroy(cudaEvent_t e);

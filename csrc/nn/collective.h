// The process-wide collective SyncBatchNorm sums its statistics with: one function for the
// whole process (a process is one rank of a data-parallel job), set by cnnkit.distributed
// when the job has more than one process, unset otherwise. Any thread may call it; the
// function itself takes the GIL (it is the mpi4py all-reduce).
#pragma once

#include <cstdint>
#include <functional>

namespace cnnkit {
namespace nn {

// fn(data, n) sums n doubles over every process of the job, in place.
using StatsReducer = std::function<void(double* data, int64_t n)>;
void set_stats_reducer(StatsReducer fn);  // an empty function clears it
bool has_stats_reducer();
// Sums data over the processes; false (data untouched) when no reducer is set.
bool reduce_stats(double* data, int64_t n);

}  // namespace nn
}  // namespace cnnkit

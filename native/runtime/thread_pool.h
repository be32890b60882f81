// A small thread pool of our own, so the addon needs no OpenMP runtime.
//
// parallel_for(n, fn) runs fn(0) .. fn(n-1), each exactly once, spread over the pool's threads
// and the calling thread. Which thread runs a task never changes what the task computes: kernels
// split work by problem size only and reduce partial results in task order, so results are
// bitwise the same for any thread count.
#pragma once

#include <cstdint>
#include <functional>

namespace luna {

// Number of threads used by parallel_for (calling thread included). Defaults to the
// LUNA_NUM_THREADS environment variable, else the number of hardware threads.
int num_threads();
void set_num_threads(int n);

void parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn);

}  // namespace luna

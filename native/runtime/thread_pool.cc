#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#endif

namespace luna {

namespace {

int default_thread_count() {
  if (const char* env = std::getenv("LUNA_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return std::min(n, 256);
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(std::min(hw, 256u));
}

// True on pool workers and on a caller inside parallel_for: a nested parallel_for runs inline
// instead of waiting on the pool it is already part of.
thread_local bool inside_parallel_region = false;

class ThreadPool {
 public:
  ThreadPool() {
    // Never throw out of the constructor: workers already started hold `this`. With fewer
    // threads than asked for the pool still works (the caller runs what nobody else takes).
    try {
      resize_locked(default_thread_count());
    } catch (...) {
    }
  }
  ~ThreadPool() { stop_workers(); }

  // Lock-free on purpose: kernels ask for the thread count to size their tiles, and a
  // worker_thread asking while another thread owns the pool for a long job must not wait for
  // that job to finish.
  int size() const { return threads_.load(std::memory_order_relaxed); }

  void resize(int n) {
    std::lock_guard<std::mutex> call(call_mutex_);
    resize_locked(n);
  }

  void run(int64_t n_tasks, const std::function<void(int64_t)>& fn) {
    if (n_tasks <= 0) return;
    // One caller at a time owns the workers; another thread calling meanwhile (a second
    // worker_thread, say) runs its tasks inline rather than oversubscribing the cores.
    std::unique_lock<std::mutex> call(call_mutex_, std::try_to_lock);
    if (inside_parallel_region || !call.owns_lock() || workers_.empty() || n_tasks == 1) {
      run_inline(n_tasks, fn);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      job_tasks_ = n_tasks;
      next_task_.store(0);
      finished_tasks_ = 0;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    inside_parallel_region = true;
    work_on_current_job(fn, n_tasks);
    inside_parallel_region = false;
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return finished_tasks_ == job_tasks_ && busy_workers_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static void run_inline(int64_t n_tasks, const std::function<void(int64_t)>& fn) {
    const bool outer = inside_parallel_region;
    inside_parallel_region = true;
    try {
      for (int64_t t = 0; t < n_tasks; ++t) fn(t);
    } catch (...) {
      inside_parallel_region = outer;
      throw;
    }
    inside_parallel_region = outer;
  }

  // Claims tasks until none are left; records the first exception.
  void work_on_current_job(const std::function<void(int64_t)>& fn, int64_t n_tasks) {
    int64_t done_here = 0;
    for (;;) {
      int64_t t = next_task_.fetch_add(1);
      if (t >= n_tasks) break;
      try {
        fn(t);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      ++done_here;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    finished_tasks_ += done_here;
    if (finished_tasks_ == job_tasks_) done_.notify_all();
  }

  void worker_loop() {
#if defined(__linux__)
    // A name shows the pool in `top -H` and lets tests count its threads (/proc/self/task).
    pthread_setname_np(pthread_self(), "luna-pool");
#endif
    inside_parallel_region = true;
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int64_t)>* job;
      int64_t n_tasks;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || (generation_ != seen && job_ != nullptr); });
        if (stopping_) return;
        seen = generation_;
        job = job_;
        n_tasks = job_tasks_;
        ++busy_workers_;
      }
      work_on_current_job(*job, n_tasks);
      std::lock_guard<std::mutex> lock(mutex_);
      --busy_workers_;
      if (busy_workers_ == 0) done_.notify_all();
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    stopping_ = false;
  }

  void resize_locked(int n) {
    n = std::max(1, std::min(n, 256));
    stop_workers();
    // A thread that cannot be started (std::system_error) leaves the pool with the workers it
    // got, the count telling the truth, and the error for the binding to turn into a JS error.
    try {
      for (int i = 1; i < n; ++i) workers_.emplace_back([this] { worker_loop(); });
    } catch (...) {
      threads_.store(static_cast<int>(workers_.size()) + 1);
      throw;
    }
    threads_.store(n);
  }

  std::mutex call_mutex_;  // held by the one caller that owns the workers
  std::mutex mutex_;       // guards the job fields below
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::atomic<int> threads_{1};  // workers_.size() + 1 (the caller); written under call_mutex_
  bool stopping_ = false;
  uint64_t generation_ = 0;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t job_tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
  int64_t finished_tasks_ = 0;
  int busy_workers_ = 0;
  std::exception_ptr error_;
};

ThreadPool& pool() {
  // Leaked on purpose: joining threads from a static destructor at process exit can deadlock
  // when the exit happens on a worker_thread or after the runtime has torn threads down.
  static ThreadPool* instance = new ThreadPool();
  return *instance;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }
void parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn) { pool().run(n_tasks, fn); }

}  // namespace luna

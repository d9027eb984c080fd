// The small thread pool a context owns (nq_config.num_threads): num_threads - 1 workers
// plus the thread that calls. A pool runs one call's tasks at a time; a call that finds
// it busy (the engine calls from several threads) runs its tasks inline instead of
// queueing or adding threads, so the library never runs more threads than configured
// on top of the engine's own.
#pragma once
#include <cstdint>

#include "nexusquant.h"

namespace nq {

struct MemoryHooks;
struct ThreadPool;

// *out = NULL (and no thread started) when threads <= 1.
nq_status thread_pool_create(const MemoryHooks &mem, uint32_t threads, ThreadPool **out);
void thread_pool_free(ThreadPool *pool);  // joins the workers; NULL is fine

// Threads a call may use: workers + the caller, 1 for NULL.
uint32_t thread_pool_size(const ThreadPool *pool);

// Runs fn(arg, i) for every i in [0, n), on the pool's workers and the calling thread,
// and returns when all have finished. Which thread runs which i is unspecified: tasks
// must write disjoint outputs.
void thread_pool_run(ThreadPool *pool, uint32_t n, void (*fn)(void *arg, uint32_t i), void *arg);

}  // namespace nq

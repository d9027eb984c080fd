#include "thread_pool.h"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <new>

#include "../../src/backend.h"
#include "cpu_dispatch.h"

namespace nq {

struct ThreadPool {
    MemoryHooks mem;
    uint32_t num_workers = 0;
    pthread_t *workers = nullptr;

    std::atomic<bool> busy{false};  // a call owns the pool
    std::mutex mu;
    std::condition_variable wake, done;
    uint64_t generation = 0;  // bumped for every call that uses the workers
    uint32_t running = 0;     // workers still inside the current call
    bool stop = false;

    // the current call
    void (*fn)(void *, uint32_t) = nullptr;
    void *arg = nullptr;
    uint32_t n = 0;
    std::atomic<uint32_t> next{0};
};

namespace {

void take_tasks(ThreadPool *p, void (*fn)(void *, uint32_t), void *arg, uint32_t n) {
    for (uint32_t i = p->next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = p->next.fetch_add(1, std::memory_order_relaxed))
        fn(arg, i);
}

void *worker_main(void *vp) {
    ThreadPool *p = static_cast<ThreadPool *>(vp);
    FpEnvGuard env;  // workers start with their creator's MXCSR
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(p->mu);
    for (;;) {
        p->wake.wait(lock, [&] { return p->stop || p->generation != seen; });
        if (p->stop) break;
        seen = p->generation;
        auto fn = p->fn;
        void *arg = p->arg;
        const uint32_t n = p->n;
        lock.unlock();
        take_tasks(p, fn, arg, n);
        lock.lock();
        if (--p->running == 0) p->done.notify_one();
    }
    return nullptr;
}

void stop_workers(ThreadPool *p, uint32_t started) {
    {
        std::lock_guard<std::mutex> lock(p->mu);
        p->stop = true;
    }
    p->wake.notify_all();
    for (uint32_t i = 0; i < started; ++i) pthread_join(p->workers[i], nullptr);
}

}  // namespace

nq_status thread_pool_create(const MemoryHooks &mem, uint32_t threads, ThreadPool **out) {
    *out = nullptr;
    if (threads <= 1) return NQ_OK;
    void *mp = mem.alloc(sizeof(ThreadPool), alignof(ThreadPool));
    if (!mp) return fail(NQ_ERR_OUT_OF_MEMORY, "allocating the thread pool failed");
    ThreadPool *p = new (mp) ThreadPool();
    p->mem = mem;
    p->workers = static_cast<pthread_t *>(mem.alloc(sizeof(pthread_t) * (threads - 1), alignof(pthread_t)));
    if (!p->workers) {
        p->~ThreadPool();
        mem.release(mp);
        return fail(NQ_ERR_OUT_OF_MEMORY, "allocating the thread pool failed");
    }
    for (uint32_t i = 0; i + 1 < threads; ++i) {
        int rc = pthread_create(&p->workers[i], nullptr, worker_main, p);
        if (rc != 0) {
            stop_workers(p, i);
            mem.release(p->workers);
            p->~ThreadPool();
            mem.release(mp);
            return fail(NQ_ERR_INTERNAL, "starting thread %u of %u failed (error %d)", i + 1, threads - 1, rc);
        }
        p->num_workers = i + 1;
    }
    *out = p;
    return NQ_OK;
}

void thread_pool_free(ThreadPool *p) {
    if (!p) return;
    stop_workers(p, p->num_workers);
    MemoryHooks mem = p->mem;
    mem.release(p->workers);
    p->~ThreadPool();
    mem.release(p);
}

uint32_t thread_pool_size(const ThreadPool *p) { return p ? p->num_workers + 1 : 1u; }

void thread_pool_run(ThreadPool *p, uint32_t n, void (*fn)(void *, uint32_t), void *arg) {
    if (!p || n <= 1 || p->busy.exchange(true, std::memory_order_acquire)) {
        for (uint32_t i = 0; i < n; ++i) fn(arg, i);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(p->mu);
        p->fn = fn;
        p->arg = arg;
        p->n = n;
        p->next.store(0, std::memory_order_relaxed);
        p->running = p->num_workers;
        ++p->generation;
    }
    p->wake.notify_all();
    take_tasks(p, fn, arg, n);
    {
        std::unique_lock<std::mutex> lock(p->mu);
        p->done.wait(lock, [&] { return p->running == 0; });
    }
    p->busy.store(false, std::memory_order_release);
}

}  // namespace nq

// The backend table: which backends this library holds, by the memory kind each
// serves. The CPU is always there; a GPU backend is there when the build compiled it
// (its registration function is defined in its own folder, e.g. backends/cuda/registry.cu).
#include "backend.h"

namespace nq {

const BackendOps *cpu_backend_ops();  // backends/cpu/cpu_backend.cpp
const BackendOps *gpu_backend_ops();  // backends/cuda/registry.cu (CUDA or HIP)

namespace {

struct Registry {
    const BackendOps *by_memory[kMemoryKinds] = {};
    const BackendOps *all[kMemoryKinds] = {};
    size_t n = 0;
    void add(const BackendOps *ops) {
        if (!ops || (int)ops->memory < 0 || (int)ops->memory >= kMemoryKinds || by_memory[(int)ops->memory]) return;
        by_memory[(int)ops->memory] = ops;
        all[n++] = ops;
    }
    Registry() {
        add(cpu_backend_ops());
#if defined(NQ_HAVE_GPU)
        add(gpu_backend_ops());
#endif
    }
};

const Registry &registry() {
    static const Registry r;
    return r;
}

}  // namespace

const BackendOps *backend_for(nq_memory memory) {
    if ((int)memory < 0 || (int)memory >= kMemoryKinds) return nullptr;
    return registry().by_memory[(int)memory];
}

const BackendOps *backend_for_kind(nq_backend kind) {
    const Registry &r = registry();
    for (size_t i = 0; i < r.n; ++i)
        if (r.all[i]->kind == kind) return r.all[i];
    return nullptr;
}

bool have_device_backend() {
    const Registry &r = registry();
    for (size_t i = 0; i < r.n; ++i)
        if (r.all[i]->memory != NQ_MEMORY_HOST) return true;
    return false;
}

const BackendOps *const *backends_registered(size_t *n) {
    *n = registry().n;
    return registry().all;
}

}  // namespace nq

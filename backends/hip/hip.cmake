# The HIP backend (included by the top-level CMakeLists.txt when NQ_HIP is ON): the
# CUDA backend's sources compiled by hipcc, with backends/hip/hip_compat.h mapping the
# CUDA names. No source of its own. Objects are built by custom commands so the
# project needs no HIP language support from CMake.
include_guard(GLOBAL)
find_program(NQ_HIPCC hipcc REQUIRED)
find_library(NQ_AMDHIP64 amdhip64 REQUIRED)
set(NQ_HIP_ARCHS gfx90a gfx940 gfx1030 CACHE STRING "AMD GPU targets")
set(NQ_HIP_FLAGS -x hip -std=c++17 -O2 -fPIC -ffp-contract=off -fno-fast-math -fvisibility=hidden
  -fno-gpu-flush-denormals-to-zero -DNQ_HIP -DNQ_HAVE_GPU -DNQ_HAVE_HIP -DNQ_BUILDING_LIBRARY
  -I${CMAKE_SOURCE_DIR}/include -I${CMAKE_SOURCE_DIR}/src)
foreach(arch ${NQ_HIP_ARCHS})
  list(APPEND NQ_HIP_FLAGS --offload-arch=${arch})
endforeach()
set(NQ_HIP_OBJECTS)
foreach(src backend decode encode select attention registry)
  set(in ${CMAKE_SOURCE_DIR}/backends/cuda/${src}.cu)
  set(out ${CMAKE_BINARY_DIR}/hip/${src}.o)
  add_custom_command(OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/hip
    COMMAND ${NQ_HIPCC} ${NQ_HIP_FLAGS} -c ${in} -o ${out}
    DEPENDS ${in} ${CMAKE_SOURCE_DIR}/backends/cuda/kernels.cuh ${CMAKE_SOURCE_DIR}/backends/cuda/launch.h
            ${CMAKE_SOURCE_DIR}/backends/cuda/gpu_desc.h ${CMAKE_SOURCE_DIR}/backends/cuda/gpu_runtime.h
            ${CMAKE_SOURCE_DIR}/backends/hip/hip_compat.h ${CMAKE_SOURCE_DIR}/src/core/block_view.h
            ${CMAKE_SOURCE_DIR}/src/attention/attention.h ${CMAKE_SOURCE_DIR}/src/backend.h
            ${CMAKE_SOURCE_DIR}/backends/cuda/gpu_backend.h
    COMMENT "hipcc ${src}.cu"
    VERBATIM)
  list(APPEND NQ_HIP_OBJECTS ${out})
endforeach()
set_source_files_properties(${NQ_HIP_OBJECTS} PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
list(APPEND NQ_SOURCES ${NQ_HIP_OBJECTS})
set(NQ_GPU_DEFINITIONS NQ_HAVE_GPU NQ_HAVE_HIP)
set(NQ_GPU_LIBRARIES ${NQ_AMDHIP64})

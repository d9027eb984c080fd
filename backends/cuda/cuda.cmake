# The CUDA backend (included by the top-level CMakeLists.txt when NQ_CUDA is ON).
# Appends the kernel sources to NQ_SOURCES and sets NQ_GPU_DEFINITIONS and
# NQ_GPU_CUDA_OPTIONS for the library targets.
include_guard(GLOBAL)
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 80 90)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)
set(NQ_CUDA_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/backend.cu
  ${CMAKE_CURRENT_LIST_DIR}/decode.cu
  ${CMAKE_CURRENT_LIST_DIR}/encode.cu
  ${CMAKE_CURRENT_LIST_DIR}/select.cu
  ${CMAKE_CURRENT_LIST_DIR}/attention.cu
  ${CMAKE_CURRENT_LIST_DIR}/registry.cu)
set(NQ_GPU_DEFINITIONS NQ_HAVE_GPU NQ_HAVE_CUDA)
# Reproducible arithmetic: no FMA contraction, IEEE division and square root, no
# flush of subnormals; the host side of .cu files as strict as the C++ sources.
set(NQ_GPU_CUDA_OPTIONS --fmad=false -prec-div=true -prec-sqrt=true -ftz=false
  -Xcompiler=-ffp-contract=off,-fno-fast-math,-fvisibility=hidden
  --expt-relaxed-constexpr)
# Attention decides no stored bit: its kernel may contract multiply-adds (FMA). Its
# host code keeps the strict flags.
set(NQ_GPU_ATTENTION_OPTIONS -ftz=false -Xcompiler=-ffp-contract=off,-fno-fast-math,-fvisibility=hidden
  --expt-relaxed-constexpr)
# Compiled once, linked into the shared, static and test libraries.
set(NQ_CUDA_STRICT_SOURCES ${NQ_CUDA_SOURCES})
list(FILTER NQ_CUDA_STRICT_SOURCES EXCLUDE REGEX "attention\\.cu$")
add_library(nq_cuda_objects OBJECT ${NQ_CUDA_SOURCES})
target_include_directories(nq_cuda_objects PRIVATE ${CMAKE_SOURCE_DIR}/include ${CMAKE_SOURCE_DIR}/src)
target_compile_definitions(nq_cuda_objects PRIVATE NQ_BUILDING_LIBRARY ${NQ_GPU_DEFINITIONS})
set_source_files_properties(${NQ_CUDA_STRICT_SOURCES} PROPERTIES COMPILE_OPTIONS "${NQ_GPU_CUDA_OPTIONS}")
set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/attention.cu PROPERTIES COMPILE_OPTIONS
  "${NQ_GPU_ATTENTION_OPTIONS}")
target_link_libraries(nq_cuda_objects PRIVATE PkgConfig::XXHASH)
set_target_properties(nq_cuda_objects PROPERTIES POSITION_INDEPENDENT_CODE ON)
list(APPEND NQ_SOURCES $<TARGET_OBJECTS:nq_cuda_objects>)
set(NQ_GPU_LIBRARIES CUDA::cudart_static)

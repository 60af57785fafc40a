// Portable speed for the hot loops: the loops are plain C++ written branch-free with
// `#pragma omp simd` reductions (honoured with -fopenmp or -fopenmp-simd, ignored otherwise), and
// on x86-64 Linux with GCC the functions marked TRANSPOSE_HOT are compiled twice, for the
// portable baseline and for x86-64-v3 (AVX2 + FMA), with the copy picked at load time for the CPU
// at hand. No -march=native needed. Results may differ in the last bits between the two copies
// (FMA), never between runs or thread counts on one machine.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(TRANSPOSE_NO_TARGET_CLONES)
#define TRANSPOSE_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define TRANSPOSE_HOT
#endif

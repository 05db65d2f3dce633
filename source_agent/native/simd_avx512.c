/* BLAKE3's avx512 code, compiled for avx512f,avx512vl whatever the build flags; blake3_dispatch.c runs it only on
 * CPUs that have avx512f,avx512vl (a setuptools Extension cannot give one source file its own -m flags). */
#pragma GCC target("avx512f,avx512vl")
#include "blake3/blake3_avx512.c"

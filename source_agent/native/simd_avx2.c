/* BLAKE3's avx2 code, compiled for avx2 whatever the build flags; blake3_dispatch.c runs it only on
 * CPUs that have avx2 (a setuptools Extension cannot give one source file its own -m flags). */
#pragma GCC target("avx2")
#include "blake3/blake3_avx2.c"

/* BLAKE3's sse2 code, compiled for sse2 whatever the build flags; blake3_dispatch.c runs it only on
 * CPUs that have sse2 (a setuptools Extension cannot give one source file its own -m flags). */
#pragma GCC target("sse2")
#include "blake3/blake3_sse2.c"

/* BLAKE3's sse41 code, compiled for sse4.1 whatever the build flags; blake3_dispatch.c runs it only on
 * CPUs that have sse4.1 (a setuptools Extension cannot give one source file its own -m flags). */
#pragma GCC target("sse4.1")
#include "blake3/blake3_sse41.c"

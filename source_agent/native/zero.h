/* The zero check shared by blockscan.c and hashahead.c. */
#ifndef VZ_ZERO_H
#define VZ_ZERO_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* 64 bytes per step with an early exit: the compiler vectorises the OR-reduction. */
static inline int all_zero(const uint8_t *p, size_t n) {
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        uint64_t w[8];
        memcpy(w, p + i, sizeof w);
        if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return 0;
    }
    for (; i < n; i++)
        if (p[i]) return 0;
    return 1;
}
#endif

/*
 * The scanner's inner loop in C: classify and hash the blocks of one window of a disk.
 *
 * Why C: in Python the per-block loop held the GIL for its zero checks and bookkeeping, so two
 * scanning threads ran little faster than one, and the sender waited on them. Called through ctypes,
 * this function runs with the GIL released: both cores scan while the event loop sends.
 *
 * It is a plain shared library (no Python headers); source_agent/native/__init__.py loads it.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "blake3/blake3.h"
#include "zero.h"

#define HASH_LEN 32
#define VZ_EXPORT __attribute__((visibility("default")))

/* what the caller asks of each block (want[i]) */
enum { WANT_SKIP = 0, WANT_READ = 1, WANT_HOLE = 2 };

/* what the block turned out to be (kind[i]) */
enum {
    KIND_SKIPPED = 0,    /* outside the filter: not read; its map entry is kept */
    KIND_ZERO_SAME = 1,  /* all zeros (or a hole) and the map already says so */
    KIND_ZERO_NEW = 2,   /* all zeros, the map says otherwise: send a zero range */
    KIND_SAME = 3,       /* data whose hash equals the map entry */
    KIND_CHANGED = 4,    /* data whose hash differs: send the block */
};

VZ_EXPORT const char *vz_blockscan_blake3_version(void) { return blake3_version(); }

/*
 * Blocks of `bs` bytes cover buf[0, len); the last may be shorter (its zero hash is zero_hash_tail).
 * buf may be NULL when no block is WANT_READ. For each block i:
 *   old[32*i]    the map's entry (in), hashes[32*i] the new entry (out; the old one when skipped),
 *   want[i]      WANT_SKIP / WANT_READ / WANT_HOLE (in), kind[i] a KIND_* (out).
 * Returns how many blocks must be sent (KIND_ZERO_NEW + KIND_CHANGED).
 */
VZ_EXPORT size_t vz_blockscan(const uint8_t *buf, size_t len, size_t bs, const uint8_t *want, const uint8_t *old,
                    const uint8_t *zero_hash, const uint8_t *zero_hash_tail, uint8_t *hashes,
                    uint8_t *kind) {
    size_t nblocks = bs ? (len + bs - 1) / bs : 0, to_send = 0;
    for (size_t i = 0; i < nblocks; i++) {
        const uint8_t *was = old + HASH_LEN * i;
        uint8_t *out = hashes + HASH_LEN * i;
        size_t n = (i + 1) * bs <= len ? bs : len - i * bs;
        if (want[i] == WANT_SKIP) {
            memcpy(out, was, HASH_LEN);
            kind[i] = KIND_SKIPPED;
            continue;
        }
        const uint8_t *p = buf ? buf + i * bs : NULL;
        if (want[i] == WANT_HOLE || all_zero(p, n)) {
            const uint8_t *zh = n == bs ? zero_hash : zero_hash_tail;
            memcpy(out, zh, HASH_LEN);
            if (memcmp(was, zh, HASH_LEN) == 0) {
                kind[i] = KIND_ZERO_SAME;
            } else {
                kind[i] = KIND_ZERO_NEW;
                to_send++;
            }
            continue;
        }
        blake3_hasher h;
        blake3_hasher_init(&h);
        blake3_hasher_update(&h, p, n);
        blake3_hasher_finalize(&h, out, HASH_LEN);
        if (memcmp(was, out, HASH_LEN) == 0) {
            kind[i] = KIND_SAME;
        } else {
            kind[i] = KIND_CHANGED;
            to_send++;
        }
    }
    return to_send;
}

/*
 * Hash-ahead: threads that read, zero-check and hash a disk's blocks ahead of the pipeline.
 *
 * Why: an incremental pass of a large, mostly unchanged disk is bound by reading and hashing, and
 * the source spends its first ~0.15 s importing asyncssh and connecting with one core idle. These
 * are plain POSIX threads that never touch Python: started before the imports, they use that core,
 * and later the hashing needs no GIL hand-offs at all. The hashes do not depend on the target's map,
 * so whatever the target says about it, they stay valid; comparing them with the map is
 * vz_ahead_classify(), run by the pipeline chunk by chunk.
 *
 * Memory is bounded: results live in a ring of `slots` chunks; a thread may start chunk c only once
 * the pipeline released chunk c - slots. The disk is one region of one file or device: [foff,
 * foff + size) of fd. Blocks in holes (SEEK_DATA/SEEK_HOLE) are not read; regular files on local
 * filesystems are mapped (the caller decides, as source_agent/disks/mapping.py explains), anything
 * else is read with pread. Parts of a block past the file's end or in holes read as zeros.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blake3/blake3.h"
#include "zero.h"

#define HASH_LEN 32
#define MAX_THREADS 16
#define VZ_EXPORT __attribute__((visibility("default")))

/* flags[i] of a finished block */
enum { AHEAD_HOLE = 1, AHEAD_ZERO = 2, AHEAD_DATA = 3 };
/* state of a ring slot */
enum { SLOT_FREE = 0, SLOT_WORKING = 1, SLOT_DONE = 2, SLOT_FAILED = 3 };
/* kinds, as blockscan.c */
enum { KIND_ZERO_SAME = 1, KIND_ZERO_NEW = 2, KIND_SAME = 3, KIND_CHANGED = 4 };

typedef struct {
    int fd, use_mmap, seek_data;
    uint64_t foff, size, file_end; /* file_end: the file's size at start, in disk offsets */
    uint64_t bs, chunk_blocks, nchunks, slots;
    uint8_t zero_hash[HASH_LEN], zero_hash_tail[HASH_LEN];
    uint8_t *hashes;        /* slots * chunk_blocks * 32 */
    uint8_t *flags;         /* slots * chunk_blocks */
    uint64_t *bytes_read;   /* per slot */
    int64_t *slot_chunk;    /* which chunk a slot holds (-1: none) */
    int *slot_state;
    int *slot_errno;
    uint64_t next;          /* next chunk to claim */
    int active, stop;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    int nthreads, started;
    pthread_t th[MAX_THREADS];
} vz_ahead;

/* Data segments of [lo, hi) in disk offsets, clipped to the file's end; at most max of them.
 * Without SEEK_DATA support the whole range is data. Returns the count, or -errno. */
static int segments(vz_ahead *a, uint64_t lo, uint64_t hi, uint64_t (*seg)[2], int max) {
    if (hi > a->file_end) hi = a->file_end;
    if (lo >= hi) return 0;
    if (!a->seek_data) {
        seg[0][0] = lo, seg[0][1] = hi;
        return 1;
    }
    int n = 0;
    uint64_t pos = lo;
    while (pos < hi) {
        off_t d = lseek(a->fd, (off_t)(a->foff + pos), SEEK_DATA);
        if (d < 0) {
            if (errno == ENXIO) break;
            return -errno;
        }
        uint64_t dpos = (uint64_t)d - a->foff;
        if (dpos >= hi) break;
        off_t h = lseek(a->fd, d, SEEK_HOLE);
        if (h < 0) return -errno;
        uint64_t hpos = (uint64_t)h - a->foff;
        if (hpos > hi) hpos = hi;
        if (n == max) { /* too fragmented to list: treat the rest as data (reads zeros, still right) */
            seg[n - 1][1] = hi;
            return n;
        }
        seg[n][0] = dpos, seg[n][1] = hpos, n++;
        pos = hpos;
    }
    return n;
}

static int pread_full(int fd, uint8_t *buf, size_t n, uint64_t off) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, buf + done, n - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (r == 0) { /* past the end: zeros (the pipeline's size check reports a shrunk disk) */
            memset(buf + done, 0, n - done);
            return 0;
        }
        done += (size_t)r;
    }
    return 0;
}

#define MAX_SEGS 512

/* Read, check and hash one chunk into its slot. Returns 0 or -errno. */
static int do_chunk(vz_ahead *a, uint64_t c, uint8_t *buf) {
    uint64_t s = c % a->slots, bs = a->bs;
    uint64_t start = c * a->chunk_blocks * bs, end = start + a->chunk_blocks * bs;
    if (end > a->size) end = a->size;
    uint64_t count = (end - start + bs - 1) / bs;
    uint8_t *hashes = a->hashes + s * a->chunk_blocks * HASH_LEN, *flags = a->flags + s * a->chunk_blocks;
    uint64_t seg[MAX_SEGS][2];
    int nseg = segments(a, start, end, seg, MAX_SEGS);
    if (nseg < 0) return nseg;
    uint64_t read = 0;
    for (int k = 0; k < nseg; k++) read += seg[k][1] - seg[k][0];
    a->bytes_read[s] = read;

    /* map the data part of the chunk once (whole pages inside the file only) */
    uint8_t *map = NULL;
    uint64_t map_lo = 0, map_hi = 0;
    size_t map_len = 0;
    if (a->use_mmap && nseg > 0) {
        uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
        uint64_t flo = a->foff + seg[0][0], fhi = a->foff + seg[nseg - 1][1];
        uint64_t alo = flo - flo % page;
        map_len = (size_t)(fhi - alo);
        void *m = mmap(NULL, map_len, PROT_READ, MAP_SHARED, a->fd, (off_t)alo);
        if (m != MAP_FAILED) {
            map = (uint8_t *)m + (flo - alo);
            map_lo = seg[0][0], map_hi = seg[nseg - 1][1];
        }
    }
    int k = 0, err = 0;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t lo = start + i * bs, n = lo + bs <= end ? bs : end - lo, hi = lo + n;
        uint8_t *out = hashes + i * HASH_LEN;
        while (k < nseg && seg[k][1] <= lo) k++;
        uint64_t cover = 0;
        int whole = 0;
        for (int j = k; j < nseg && seg[j][0] < hi; j++) {
            uint64_t a0 = seg[j][0] > lo ? seg[j][0] : lo, a1 = seg[j][1] < hi ? seg[j][1] : hi;
            cover += a1 - a0;
            if (seg[j][0] <= lo && seg[j][1] >= hi) whole = 1;
        }
        if (cover == 0) {
            flags[i] = AHEAD_HOLE;
            memcpy(out, n == bs ? a->zero_hash : a->zero_hash_tail, HASH_LEN);
            continue;
        }
        const uint8_t *p;
        if (whole && map && lo >= map_lo && hi <= map_hi) {
            p = map + (lo - map_lo);
        } else if (whole) {
            if ((err = pread_full(a->fd, buf, (size_t)n, a->foff + lo)) != 0) break;
            p = buf;
        } else { /* a block that is partly hole or past the file's end: zeros there */
            memset(buf, 0, (size_t)n);
            for (int j = k; j < nseg && seg[j][0] < hi; j++) {
                uint64_t a0 = seg[j][0] > lo ? seg[j][0] : lo, a1 = seg[j][1] < hi ? seg[j][1] : hi;
                if ((err = pread_full(a->fd, buf + (a0 - lo), (size_t)(a1 - a0), a->foff + a0)) != 0) break;
            }
            if (err) break;
            p = buf;
        }
        if (all_zero(p, (size_t)n)) {
            flags[i] = AHEAD_ZERO;
            memcpy(out, n == bs ? a->zero_hash : a->zero_hash_tail, HASH_LEN);
        } else {
            blake3_hasher h;
            blake3_hasher_init(&h);
            blake3_hasher_update(&h, p, (size_t)n);
            blake3_hasher_finalize(&h, out, HASH_LEN);
            flags[i] = AHEAD_DATA;
        }
    }
    if (map) munmap(map - ((a->foff + map_lo) % (uint64_t)sysconf(_SC_PAGESIZE)), map_len);
    return err;
}

static void *worker(void *arg) {
    vz_ahead *a = arg;
    uint8_t *buf = malloc((size_t)a->bs);
    pthread_mutex_lock(&a->mu);
    int id = a->started++; /* any order: only how many may work matters */
    for (;;) {
        uint64_t c = a->next;
        /* wait for: a stop, or the right to run (id < active) and a free slot for the next chunk */
        while (!a->stop && c < a->nchunks &&
               (id >= a->active || (a->slot_state[c % a->slots] != SLOT_FREE))) {
            pthread_cond_wait(&a->work_cv, &a->mu);
            c = a->next;
        }
        if (a->stop || c >= a->nchunks) break;
        uint64_t s = c % a->slots;
        a->next = c + 1;
        a->slot_chunk[s] = (int64_t)c;
        a->slot_state[s] = SLOT_WORKING;
        pthread_mutex_unlock(&a->mu);
        int err = buf ? do_chunk(a, c, buf) : -ENOMEM;
        pthread_mutex_lock(&a->mu);
        a->slot_state[s] = err ? SLOT_FAILED : SLOT_DONE;
        a->slot_errno[s] = -err;
        pthread_cond_broadcast(&a->done_cv);
    }
    pthread_mutex_unlock(&a->mu);
    free(buf);
    return NULL;
}

VZ_EXPORT void vz_ahead_stop(vz_ahead *a);

/*
 * Start hashing [foff, foff + size) of fd in blocks of bs, chunk_blocks blocks per chunk, at most
 * `slots` chunks ahead of the pipeline, with nthreads threads of which `active` run now.
 * Returns NULL (errno set) on failure. The fd must stay open until vz_ahead_stop().
 */
VZ_EXPORT vz_ahead *vz_ahead_start(int fd, uint64_t foff, uint64_t size, uint64_t bs, uint64_t chunk_blocks,
                                   uint64_t slots, int use_mmap, int nthreads, int active,
                                   const uint8_t *zero_hash, const uint8_t *zero_hash_tail) {
    if (bs == 0 || chunk_blocks == 0 || slots == 0 || size == 0 || nthreads < 1 || nthreads > MAX_THREADS) {
        errno = EINVAL;
        return NULL;
    }
    vz_ahead *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->fd = fd, a->foff = foff, a->size = size, a->bs = bs, a->chunk_blocks = chunk_blocks;
    a->slots = slots, a->use_mmap = use_mmap, a->active = active;
    a->nchunks = (size + bs * chunk_blocks - 1) / (bs * chunk_blocks);
    memcpy(a->zero_hash, zero_hash, HASH_LEN);
    memcpy(a->zero_hash_tail, zero_hash_tail, HASH_LEN);
    struct stat st;
    if (fstat(fd, &st) != 0) goto fail;
    if (S_ISREG(st.st_mode)) {
        a->file_end = (uint64_t)st.st_size > foff ? (uint64_t)st.st_size - foff : 0;
        a->seek_data = lseek(fd, 0, SEEK_DATA) >= 0 || errno == ENXIO;
    } else {
        a->file_end = size, a->use_mmap = 0, a->seek_data = 0;
    }
    a->hashes = calloc(slots * chunk_blocks, HASH_LEN);
    a->flags = calloc(slots * chunk_blocks, 1);
    a->bytes_read = calloc(slots, sizeof *a->bytes_read);
    a->slot_chunk = calloc(slots, sizeof *a->slot_chunk);
    a->slot_state = calloc(slots, sizeof *a->slot_state);
    a->slot_errno = calloc(slots, sizeof *a->slot_errno);
    if (!a->hashes || !a->flags || !a->bytes_read || !a->slot_chunk || !a->slot_state || !a->slot_errno) goto fail;
    for (uint64_t s = 0; s < slots; s++) a->slot_chunk[s] = -1;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->work_cv, NULL);
    pthread_cond_init(&a->done_cv, NULL);
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&a->th[i], NULL, worker, a) != 0) {
            vz_ahead_stop(a); /* joins the i threads started */
            errno = EAGAIN;
            return NULL;
        }
        a->nthreads = i + 1;
    }
    return a;
fail:
    free(a->hashes), free(a->flags), free(a->bytes_read), free(a->slot_chunk), free(a->slot_state);
    free(a->slot_errno), free(a);
    return NULL;
}

/* How many threads may work (the rest wait). */
VZ_EXPORT void vz_ahead_set_active(vz_ahead *a, int active) {
    pthread_mutex_lock(&a->mu);
    a->active = active;
    pthread_cond_broadcast(&a->work_cv);
    pthread_mutex_unlock(&a->mu);
}

/*
 * Wait for chunk c and copy its results out: hashes (count*32), flags (count), *bytes_read.
 * Returns 0, an errno of the read, or -1 if the pool was stopped or c is out of order (its slot
 * was never given to it: the pipeline released chunks it had not taken).
 */
VZ_EXPORT int vz_ahead_take(vz_ahead *a, uint64_t c, uint8_t *hashes, uint8_t *flags, uint64_t *bytes_read) {
    if (c >= a->nchunks) return -1;
    uint64_t s = c % a->slots;
    pthread_mutex_lock(&a->mu);
    while (!a->stop && !(a->slot_chunk[s] == (int64_t)c && a->slot_state[s] >= SLOT_DONE)) {
        if ((a->next > c && a->slot_chunk[s] != (int64_t)c) || /* claimed, released, slot reused */
            (a->slot_chunk[s] == (int64_t)c && a->slot_state[s] == SLOT_FREE)) { /* released */
            pthread_mutex_unlock(&a->mu);
            return -1;
        }
        pthread_cond_wait(&a->done_cv, &a->mu);
    }
    int rc = a->stop ? -1 : a->slot_state[s] == SLOT_FAILED ? a->slot_errno[s] : 0;
    pthread_mutex_unlock(&a->mu);
    if (rc == 0) {
        uint64_t start = c * a->chunk_blocks * a->bs, end = start + a->chunk_blocks * a->bs;
        if (end > a->size) end = a->size;
        uint64_t count = (end - start + a->bs - 1) / a->bs;
        memcpy(hashes, a->hashes + s * a->chunk_blocks * HASH_LEN, count * HASH_LEN);
        memcpy(flags, a->flags + s * a->chunk_blocks, count);
        *bytes_read = a->bytes_read[s];
    }
    return rc;
}

/* The pipeline is done with chunk c: its slot may take chunk c + slots. */
VZ_EXPORT void vz_ahead_release(vz_ahead *a, uint64_t c) {
    uint64_t s = c % a->slots;
    pthread_mutex_lock(&a->mu);
    if (a->slot_chunk[s] == (int64_t)c && a->slot_state[s] >= SLOT_DONE) {
        a->slot_state[s] = SLOT_FREE;
        pthread_cond_broadcast(&a->work_cv);
    }
    pthread_mutex_unlock(&a->mu);
}

/* Ask the threads to stop (each finishes the chunk it is on); a waiting vz_ahead_take returns -1. */
VZ_EXPORT void vz_ahead_cancel(vz_ahead *a) {
    pthread_mutex_lock(&a->mu);
    a->stop = 1;
    pthread_cond_broadcast(&a->work_cv);
    pthread_cond_broadcast(&a->done_cv);
    pthread_mutex_unlock(&a->mu);
}

/* Cancel, join the threads and free everything; no vz_ahead_take may be running or follow. */
VZ_EXPORT void vz_ahead_stop(vz_ahead *a) {
    if (!a) return;
    vz_ahead_cancel(a);
    for (int i = 0; i < a->nthreads; i++) pthread_join(a->th[i], NULL);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->work_cv);
    pthread_cond_destroy(&a->done_cv);
    free(a->hashes), free(a->flags), free(a->bytes_read), free(a->slot_chunk), free(a->slot_state);
    free(a->slot_errno), free(a);
}

/*
 * Compare a taken chunk with the map: kinds[i] (KIND_* of blockscan.c) from flags[i], hashes[i] and
 * the map's old[i]. Returns how many blocks must be sent.
 */
VZ_EXPORT size_t vz_ahead_classify(size_t count, const uint8_t *flags, const uint8_t *hashes,
                                   const uint8_t *old, uint8_t *kinds) {
    size_t to_send = 0;
    for (size_t i = 0; i < count; i++) {
        int same = memcmp(hashes + i * HASH_LEN, old + i * HASH_LEN, HASH_LEN) == 0;
        if (flags[i] == AHEAD_DATA)
            kinds[i] = same ? KIND_SAME : KIND_CHANGED;
        else
            kinds[i] = same ? KIND_ZERO_SAME : KIND_ZERO_NEW;
        to_send += !same;
    }
    return to_send;
}

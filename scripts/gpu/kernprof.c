// Kernel-time breakdown of any CUDA program, through CUPTI's activity API, loaded with LD_PRELOAD.
//
// The GPU machines have no Nsight Systems (nsys is not on the PATH, and the copy inside Nsight Compute cannot
// make a report), and ncu reads counters only on some of them; CUPTI itself works wherever PyTorch's profiler
// does. This library records every kernel, memcpy and memset of the process and, at exit, writes one row per
// kernel name (calls, total and mean time, share of the GPU time) sorted by total time, plus the GPU-busy time
// against the span from the first to the last record (the gap is launch overhead and host work).
//
//   gcc -shared -fPIC -O2 -I$CUPTI/include -o kernprof.so kernprof.c -L$CUPTI/lib -l:libcupti.so.13
//   KERNPROF_OUT=kernels.csv LD_PRELOAD=./kernprof.so vsdm-image --cuda bench --arch ddpmpp --batch 128 --iters 3
//
// KERNPROF_SKIP_MS=T drops the records that start in the first T ms after the first record (warm-up, PTX JIT).
#include <cupti.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_SIZE (16u << 20)
#define TABLE 8192

typedef struct {
    char *name;
    uint64_t calls, total_ns;
} Row;

static Row rows[TABLE];
static uint64_t first_start = UINT64_MAX, last_end, busy_ns, skip_ns, dropped;
static int enabled;

static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void add(const char *name, uint64_t start, uint64_t end) {
    if (start < first_start) first_start = start;
    if (start < first_start + skip_ns) return;
    if (end > last_end) last_end = end;
    uint64_t d = end > start ? end - start : 0;
    busy_ns += d;
    for (uint64_t i = hash(name), n = 0; n < TABLE; i++, n++) {
        Row *r = &rows[i % TABLE];
        if (!r->name) r->name = strdup(name);
        if (strcmp(r->name, name) == 0) {
            r->calls++;
            r->total_ns += d;
            return;
        }
    }
    dropped++;
}

static void CUPTIAPI requested(uint8_t **buf, size_t *size, size_t *max_records) {
    *buf = aligned_alloc(8, BUF_SIZE);
    *size = *buf ? BUF_SIZE : 0;
    *max_records = 0;
}

static void CUPTIAPI completed(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size, size_t valid) {
    (void)ctx, (void)stream, (void)size;
    CUpti_Activity *rec = NULL;
    while (cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
        switch (rec->kind) {
        case CUPTI_ACTIVITY_KIND_KERNEL:
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
            CUpti_ActivityKernel10 *k = (CUpti_ActivityKernel10 *)rec;
            add(k->name ? k->name : "?", k->start, k->end);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
            CUpti_ActivityMemcpy6 *m = (CUpti_ActivityMemcpy6 *)rec;
            static const char *kinds[] = {"?", "HtoD", "DtoH", "HtoA", "AtoH", "AtoA", "AtoD", "DtoA", "DtoD",
                                          "HtoH", "PtoP"};
            char name[64];
            snprintf(name, sizeof name, "[memcpy %s]", m->copyKind < 11 ? kinds[m->copyKind] : "?");
            add(name, m->start, m->end);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
            CUpti_ActivityMemset4 *m = (CUpti_ActivityMemset4 *)rec;
            add("[memset]", m->start, m->end);
            break;
        }
        default:
            break;
        }
    }
    size_t lost = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream, &lost) == CUPTI_SUCCESS && lost)
        fprintf(stderr, "kernprof: CUPTI dropped %zu records\n", lost);
    free(buf);
}

static int by_total(const void *a, const void *b) {
    const Row *x = a, *y = b;
    return x->total_ns < y->total_ns ? 1 : x->total_ns > y->total_ns ? -1 : 0;
}

__attribute__((constructor)) static void kernprof_start(void) {
    const char *skip = getenv("KERNPROF_SKIP_MS");
    skip_ns = skip ? (uint64_t)(atof(skip) * 1e6) : 0;
    CUptiResult r = cuptiActivityRegisterCallbacks(requested, completed);
    if (r == CUPTI_SUCCESS) r = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    if (r == CUPTI_SUCCESS) r = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
    if (r == CUPTI_SUCCESS) r = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
    if (r != CUPTI_SUCCESS) {
        const char *msg = "?";
        cuptiGetResultString(r, &msg);
        fprintf(stderr, "kernprof: CUPTI not enabled (%s); no kernel breakdown\n", msg);
        return;
    }
    enabled = 1;
}

__attribute__((destructor)) static void kernprof_stop(void) {
    if (!enabled) return;
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    size_t n = 0;
    for (size_t i = 0; i < TABLE; i++)
        if (rows[i].name) rows[n++] = rows[i];
    qsort(rows, n, sizeof(Row), by_total);
    const char *path = getenv("KERNPROF_OUT");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (!f) f = stderr;
    double span = last_end > first_start ? (double)(last_end - first_start) : 0.0;
    fprintf(f, "# GPU busy %.3f ms of a %.3f ms span (%.1f%%), %zu kernel names%s\n", busy_ns / 1e6, span / 1e6,
            span > 0 ? 100.0 * busy_ns / span : 0.0, n, dropped ? ", table full: some dropped" : "");
    fprintf(f, "total_ms,calls,mean_us,share_pct,name\n");
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%.3f,%llu,%.2f,%.2f,\"%s\"\n", rows[i].total_ns / 1e6, (unsigned long long)rows[i].calls,
                rows[i].total_ns / 1e3 / (double)rows[i].calls, busy_ns ? 100.0 * rows[i].total_ns / busy_ns : 0.0,
                rows[i].name);
    if (f != stderr) fclose(f);
}

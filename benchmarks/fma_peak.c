/* This CPU's FP32 arithmetic peak: AVX-512 fused multiply-adds, one thread per core.
 *
 *     gcc -O3 -march=native -pthread benchmarks/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak 2
 *
 * Twelve independent accumulator chains hide the FMA latency, so the loop runs at the
 * core's FMA throughput. Section 2 of runtime_overhead.py compares the GFLOP/s that
 * onnxruntime and PyTorch reach on ResNet against this number: a backend already near it
 * cannot get faster in FP32, only a slower baseline can raise the ratio.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 12
#define ROUNDS 20000000L

static double gflops(void) {
    __m512 acc[CHAINS];
    const __m512 mul = _mm512_set1_ps(1.0000001f), add = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long r = 0; r < ROUNDS; r++)
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], mul, add);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    float sink = 0;  /* keep the result live so the loop is not optimised away */
    for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(acc[i]);
    if (sink == 42.0f) puts("");
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return (double)ROUNDS * CHAINS * 16 * 2 / secs / 1e9;  /* 16 lanes, 2 flops per FMA */
}

static void *worker(void *out) {
    *(double *)out = gflops();
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: %s [threads 1-256]\n", argv[0]);
        return 2;
    }
    gflops();  /* warm-up: let the clock settle */
    pthread_t tid[256];
    double rate[256], total = 0;
    for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, worker, &rate[t]);
    for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL), total += rate[t];
    printf("FP32 FMA peak, %d thread(s): %.0f GFLOP/s (%.0f per thread)\n", threads, total, total / threads);
    return 0;
}

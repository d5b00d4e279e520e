/* This CPU's FP32 arithmetic peak: fused multiply-adds on its widest vectors, one thread per core.
 *
 *     cc -O3 -march=native -ffp-contract=fast -pthread fma_peak.c -o fma_peak && ./fma_peak 2
 *
 * Portable C (GCC/Clang vector extensions): the vector is as wide as the ISA -march=native
 * enables (AVX-512: 16 floats, AVX: 8, else 4: SSE on x86, NEON on a Jetson's Arm cores),
 * and `acc * mul + add` contracts to one FMA instruction where the CPU has one. Twelve
 * independent accumulator chains hide the FMA latency, so the loop runs at the core's FMA
 * throughput; twelve vectors fit in the registers of each of those ISAs. convdeploy's
 * `bench --layers` (runtime/peak.py) builds and runs this file and compares each layer's
 * GFLOP/s against the number it prints.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

#define CHAINS 12
#define ROUNDS 20000000L

static double gflops(long rounds) {
    vec acc[CHAINS], mul, add;
    for (int l = 0; l < LANES; l++) mul[l] = 1.0000001f, add[l] = 1e-7f;
    for (int i = 0; i < CHAINS; i++)
        for (int l = 0; l < LANES; l++) acc[i][l] = (float)i;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long r = 0; r < rounds; r++)
        for (int i = 0; i < CHAINS; i++) acc[i] = acc[i] * mul + add;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    float sink = 0;  /* keep the result live so the loop is not optimised away */
    for (int i = 0; i < CHAINS; i++)
        for (int l = 0; l < LANES; l++) sink += acc[i][l];
    if (sink == 42.0f) puts("");
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return (double)rounds * CHAINS * LANES * 2 / secs / 1e9;  /* 2 flops per lane per FMA */
}

static void *worker(void *out) {
    *(double *)out = gflops(ROUNDS);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: %s [threads 1-256]\n", argv[0]);
        return 2;
    }
    gflops(ROUNDS);  /* warm-up: let the clock settle */
    pthread_t tid[256];
    double rate[256], total = 0;
    for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, worker, &rate[t]);
    for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL), total += rate[t];
    printf("FP32 FMA peak, %d thread(s): %.0f GFLOP/s (%.0f per thread, %d-float vectors)\n",
           threads, total, total / threads, LANES);
    return 0;
}

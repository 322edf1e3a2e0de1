/* A baseline and the same workload through bulwark, measured in alternating
 * passes (BENCH.md method: one untimed warm-up pass of each at 1/10 of the
 * count, then 5 timed passes of each; medians printed, min/max on `#`
 * lines). On a shared VM the machine's speed drifts by tens of percent
 * within a minute: back-to-back pairs see the same conditions, so the
 * ratio is taken per pair and its median printed on a `#` line. */
#ifndef BW_BENCH_PAIRED_H
#define BW_BENCH_PAIRED_H

#include <stdio.h>
#include <stdlib.h>

#define BP_PASSES 5

/* One pass of `count` operations; returns operations per second, < 0 on failure. */
typedef double (*bp_pass_fn)(void *ctx, int count);

typedef struct bp_side {
  const char *name; /* "http_raw" */
  bp_pass_fn pass;
} bp_side_t;

static int bp_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double bp_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof v[0], bp_cmp_double);
  return v[n / 2];
}

/* `what` describes the workload for the `#` lines ("20000 GETs, 64 in flight").
 * Returns 0, or -1 when a pass failed (nothing printed for the pair). */
static int bp_run_pair(bp_side_t base, bp_side_t ours, void *ctx, int count, const char *what,
                       const char *unit) {
  const bp_side_t sides[2] = {base, ours};
  double v[2][BP_PASSES], ratio[BP_PASSES];
  for (int s = 0; s < 2; s++) sides[s].pass(ctx, count / 10); /* warm-up */
  for (int i = 0; i < BP_PASSES; i++) {
    for (int s = 0; s < 2; s++) {
      v[s][i] = sides[s].pass(ctx, count);
      if (v[s][i] < 0) {
        printf("# %s: failed\n", sides[s].name);
        return -1;
      }
    }
    ratio[i] = v[1][i] / v[0][i];
    if (getenv("BP_SHOW"))
      printf("# pass %d: %s %.0f, %s %.0f %s (%.1f%%)\n", i + 1, base.name, v[0][i], ours.name,
             v[1][i], unit, 100.0 * ratio[i]);
  }
  for (int s = 0; s < 2; s++) {
    double mid = bp_median(v[s], BP_PASSES);
    printf("# %s: %s, median of %d passes (alternating with %s); min %.0f max %.0f %s\n",
           sides[s].name, what, BP_PASSES, sides[1 - s].name, v[s][0], v[s][BP_PASSES - 1], unit);
    printf("%s %.0f %s\n", sides[s].name, mid, unit);
  }
  double r = bp_median(ratio, BP_PASSES);
  printf("# %s / %s: median of the per-pair ratios %.1f%% (min %.1f%% max %.1f%%)\n", ours.name,
         base.name, 100.0 * r, 100.0 * ratio[0], 100.0 * ratio[BP_PASSES - 1]);
  fflush(stdout);
  return 0;
}

#endif

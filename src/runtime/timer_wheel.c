/* Hierarchical timing wheel. See timer_wheel.h for the contract.
 *
 * Design notes
 * ------------
 * Layout (as tokio's time driver): level L has 64 slots of 64^L ms each, so
 * it spans 64^(L+1) ms. An armed entry with deadline d sits at the level of
 * the highest bit in which d differs from the wheel time `elapsed`
 * (level = bit / 6), in slot (d >> 6L) & 63. Each slot is a circular doubly
 * linked list (O(1) append and unlink) and each level has a 64-bit
 * occupancy mask, so finding the next non-empty slot is a count of trailing
 * zeros, never a scan of empty slots.
 *
 * Invariants
 * - Every entry in the slots has deadline > elapsed. Every deadline <=
 *   elapsed that is still armed is on `due` or `pending`.
 * - For a level L < 5 entry, its slot lies after elapsed's slot in the same
 *   level-(L+1) block; so the slot's start time (computed from elapsed) is a
 *   lower bound of its deadline and the slot can never be "behind" elapsed.
 *   Only level 5 can wrap: deadlines beyond 2^36 ms are placed at
 *   elapsed + 2^36 - 1 (a lower bound) and re-placed when their slot comes.
 * - Level-0 slot lists hold entries of one deadline in insertion order.
 *   Cascading moves a slot's entries, in list order, to lower levels when
 *   elapsed reaches the slot's start; an entry inserted later with the same
 *   deadline can only land in the lower level after that (its level is
 *   computed from the same elapsed), so it is appended behind: ties keep
 *   insertion order.
 * - `due` holds entries whose tick has come (sorted by deadline, ties in
 *   insertion order); it is non-empty only inside a call or when a call hit
 *   its `max`. `pending` holds entries inserted with a deadline <= elapsed
 *   (overdue); it is merged (stable sort) into `due` at the start of each
 *   expire/advance call, and only then, so an entry a callback re-arms in
 *   the past waits for the next call instead of looping.
 *
 * next_expiry: each slot keeps the minimum of the (clamped) deadlines
 * placed in it, reset when the slot empties; removing the minimum leaves a
 * stale, lower value (still a valid lower bound) until the slot empties.
 *
 * Work bounds: insert/remove O(1); next_expiry O(levels); one expire step
 * visits only non-empty slots (ctz on the mask); an entry is moved at most
 * once per level on its way down (<= 5 cascades). The pending merge is
 * O(p log p) in the number of overdue entries, usually 0 or 1.
 *
 * Threads: none; the owner serialises every call. */
#include "runtime/timer_wheel.h"

#define LEVEL_BITS 6u
#define SLOT_MASK ((uint64_t)BW__TIMER_SLOTS - 1)

/* ---- circular list helpers ------------------------------------------ */

static void list_append(bw__timer_entry_t **head, bw__timer_entry_t *e) {
  bw__timer_entry_t *h = *head;
  if (!h) {
    e->next = e->prev = e;
    *head = e;
    return;
  }
  bw__timer_entry_t *t = h->prev;
  e->prev = t;
  e->next = h;
  t->next = e;
  h->prev = e;
}

static void list_unlink(bw__timer_entry_t **head, bw__timer_entry_t *e) {
  if (e->next == e) {
    *head = NULL;
  } else {
    e->prev->next = e->next;
    e->next->prev = e->prev;
    if (*head == e) *head = e->next;
  }
  e->next = e->prev = NULL;
}

static bw__timer_entry_t *list_pop(bw__timer_entry_t **head) {
  bw__timer_entry_t *e = *head;
  if (e) list_unlink(head, e);
  return e;
}

/* Stable merge sort by deadline of a NULL-terminated singly linked list
 * (through ->next). */
static bw__timer_entry_t *merge(bw__timer_entry_t *a, bw__timer_entry_t *b) {
  bw__timer_entry_t head, *t = &head;
  while (a && b) {
    if (b->deadline_ms < a->deadline_ms) { /* strict: ties keep a first */
      t->next = b;
      b = b->next;
    } else {
      t->next = a;
      a = a->next;
    }
    t = t->next;
  }
  t->next = a ? a : b;
  return head.next;
}

static bw__timer_entry_t *sort(bw__timer_entry_t *l) {
  if (!l || !l->next) return l;
  bw__timer_entry_t *slow = l, *fast = l->next;
  while (fast && fast->next) {
    slow = slow->next;
    fast = fast->next->next;
  }
  bw__timer_entry_t *right = slow->next;
  slow->next = NULL;
  return merge(sort(l), sort(right));
}

/* Circular -> NULL-terminated (head may be NULL). */
static bw__timer_entry_t *linearise(bw__timer_entry_t *head) {
  if (!head) return NULL;
  head->prev->next = NULL;
  return head;
}

/* NULL-terminated -> circular, fixing prev links. */
static bw__timer_entry_t *circularise(bw__timer_entry_t *l) {
  if (!l) return NULL;
  bw__timer_entry_t *p = l;
  while (p->next) {
    p->next->prev = p;
    p = p->next;
  }
  p->next = l;
  l->prev = p;
  return l;
}

/* ---- placement ------------------------------------------------------- */

static void set_where(bw__timer_entry_t *e, uint8_t where) { e->where = where; }

static void place(bw__timer_wheel_t *w, bw__timer_entry_t *e) {
  uint64_t d = e->deadline_ms;
  if (d <= w->elapsed) { /* only from cascading: d == elapsed */
    set_where(e, BW__TIMER_DUE);
    list_append(&w->due, e);
    return;
  }
  uint64_t when = d;
  if (d - w->elapsed >= BW__TIMER_SPAN_MS) when = w->elapsed + BW__TIMER_SPAN_MS - 1;
  uint64_t masked = w->elapsed ^ when;
  unsigned bit = 63u - (unsigned)__builtin_clzll(masked);
  unsigned level = bit / LEVEL_BITS;
  if (level >= BW__TIMER_LEVELS) level = BW__TIMER_LEVELS - 1;
  unsigned slot = (unsigned)((when >> (LEVEL_BITS * level)) & SLOT_MASK);
  list_append(&w->level[level].slots[slot], e);
  w->level[level].occupied |= (uint64_t)1 << slot;
  if (when < w->level[level].min[slot]) w->level[level].min[slot] = when;
  set_where(e, (uint8_t)(1 + level));
  e->slot = (uint8_t)slot;
}

/* Earliest non-empty slot at level L: its start time (a lower bound of its
 * entries' deadlines), or NEVER. */
static uint64_t level_next(const bw__timer_wheel_t *w, unsigned L, unsigned *slot_out) {
  uint64_t occ = w->level[L].occupied;
  if (!occ) return BW__TIMER_NEVER;
  unsigned shift = LEVEL_BITS * L;
  uint64_t slot_range = (uint64_t)1 << shift;
  /* level_range = 64^(L+1); for L = 5 that is 2^36, still fits. */
  uint64_t level_range = slot_range << LEVEL_BITS;
  uint64_t level_start = w->elapsed & ~(level_range - 1);
  unsigned cur = (unsigned)((w->elapsed >> shift) & SLOT_MASK);
  unsigned slot;
  uint64_t start;
  /* Level 0 may hold the current tick; higher levels never hold their
   * current slot except by wrapping at the top level (then it is a full
   * turn ahead). */
  unsigned from = L == 0 ? cur : cur + 1;
  uint64_t ahead = from < 64 ? occ & (~(uint64_t)0 << from) : 0;
  if (ahead) {
    slot = (unsigned)__builtin_ctzll(ahead);
    start = level_start + (uint64_t)slot * slot_range;
  } else {
    slot = (unsigned)__builtin_ctzll(occ); /* wrapped: next level block */
    start = level_start + level_range + (uint64_t)slot * slot_range;
  }
  *slot_out = slot;
  return start;
}

/* Earliest non-empty slot over all levels (lowest level wins ties). */
static uint64_t next_slot(const bw__timer_wheel_t *w, unsigned *level_out, unsigned *slot_out) {
  uint64_t best = BW__TIMER_NEVER;
  for (unsigned L = 0; L < BW__TIMER_LEVELS; L++) {
    unsigned s;
    uint64_t t = level_next(w, L, &s);
    if (t < best) {
      best = t;
      *level_out = L;
      *slot_out = s;
    }
  }
  return best;
}

/* Stable-merge the overdue entries into `due` (due's entries first on ties:
 * they were armed earlier). */
static void merge_pending(bw__timer_wheel_t *w) {
  if (!w->pending) return;
  bw__timer_entry_t *p = sort(linearise(w->pending));
  for (bw__timer_entry_t *e = p; e; e = e->next) set_where(e, BW__TIMER_DUE);
  w->pending = NULL;
  w->pending_min = BW__TIMER_NEVER;
  w->due = circularise(merge(linearise(w->due), p));
}

/* Take the earliest due entry at or before now, cascading as needed; NULL
 * when nothing more is due. elapsed moves to now once nothing is left. */
static bw__timer_entry_t *take_one(bw__timer_wheel_t *w, uint64_t now) {
  for (;;) {
    bw__timer_entry_t *e = list_pop(&w->due);
    if (e) {
      set_where(e, BW__TIMER_IDLE);
      w->count--;
      return e;
    }
    unsigned L = 0, s = 0;
    uint64_t t = next_slot(w, &L, &s);
    if (t == BW__TIMER_NEVER || t > now) { /* NEVER: even for now == UINT64_MAX */
      w->elapsed = now;
      return NULL;
    }
    w->elapsed = t;
    bw__timer_entry_t *list = w->level[L].slots[s];
    w->level[L].slots[s] = NULL;
    w->level[L].min[s] = BW__TIMER_NEVER;
    w->level[L].occupied &= ~((uint64_t)1 << s);
    /* Re-place in list order: they go to lower levels (or due when their
     * deadline is this tick), keeping insertion order among equals. */
    for (bw__timer_entry_t *x = linearise(list), *nx; x; x = nx) {
      nx = x->next;
      place(w, x);
    }
  }
}

/* ---- public ---------------------------------------------------------- */

void bw__timer_entry_init(bw__timer_entry_t *e) {
  e->next = e->prev = NULL;
  e->deadline_ms = 0;
  e->where = BW__TIMER_IDLE;
  e->slot = 0;
}

bool bw__timer_entry_armed(const bw__timer_entry_t *e) { return e->where != BW__TIMER_IDLE; }

void bw__timer_wheel_init(bw__timer_wheel_t *w, uint64_t now_ms) {
  w->elapsed = now_ms;
  w->count = 0;
  w->pending_min = BW__TIMER_NEVER;
  w->due = NULL;
  w->pending = NULL;
  for (unsigned L = 0; L < BW__TIMER_LEVELS; L++) {
    w->level[L].occupied = 0;
    for (unsigned s = 0; s < BW__TIMER_SLOTS; s++) {
      w->level[L].slots[s] = NULL;
      w->level[L].min[s] = BW__TIMER_NEVER;
    }
  }
}

void bw__timer_wheel_insert(bw__timer_wheel_t *w, bw__timer_entry_t *e, uint64_t deadline_ms) {
  if (e->where != BW__TIMER_IDLE) bw__timer_wheel_remove(w, e);
  e->deadline_ms = deadline_ms;
  w->count++;
  if (deadline_ms <= w->elapsed) {
    set_where(e, BW__TIMER_PENDING);
    list_append(&w->pending, e);
    if (deadline_ms < w->pending_min) w->pending_min = deadline_ms;
    return;
  }
  place(w, e);
}

bool bw__timer_wheel_remove(bw__timer_wheel_t *w, bw__timer_entry_t *e) {
  switch (e->where) {
  case BW__TIMER_IDLE:
    return false;
  case BW__TIMER_PENDING:
    list_unlink(&w->pending, e);
    if (!w->pending) w->pending_min = BW__TIMER_NEVER; /* else stays a lower bound */
    break;
  case BW__TIMER_DUE:
    list_unlink(&w->due, e);
    break;
  default: {
    unsigned L = (unsigned)e->where - 1;
    list_unlink(&w->level[L].slots[e->slot], e);
    if (!w->level[L].slots[e->slot]) { /* else min stays a lower bound */
      w->level[L].occupied &= ~((uint64_t)1 << e->slot);
      w->level[L].min[e->slot] = BW__TIMER_NEVER;
    }
    break;
  }
  }
  set_where(e, BW__TIMER_IDLE);
  w->count--;
  return true;
}

uint64_t bw__timer_wheel_next_expiry(const bw__timer_wheel_t *w) {
  if (w->count == 0) return BW__TIMER_NEVER;
  uint64_t best = w->pending_min;
  if (w->due && w->due->deadline_ms < best) best = w->due->deadline_ms;
  /* Per level, the first slot in time order holds that level's earliest
   * deadlines (slots partition time; a clamped far entry sits in the last
   * position of the top level and counts with its clamped value), so its
   * min is the level's min. */
  for (unsigned L = 0; L < BW__TIMER_LEVELS; L++) {
    unsigned s;
    if (level_next(w, L, &s) == BW__TIMER_NEVER) continue;
    uint64_t m = w->level[L].min[s];
    if (m < best) best = m;
  }
  return best;
}

size_t bw__timer_wheel_expire(bw__timer_wheel_t *w, uint64_t now_ms, bw__timer_entry_t **out,
                              size_t max) {
  if (now_ms < w->elapsed) now_ms = w->elapsed;
  merge_pending(w);
  size_t n = 0;
  while (n < max) {
    bw__timer_entry_t *e = take_one(w, now_ms);
    if (!e) break;
    out[n++] = e;
  }
  return n;
}

size_t bw__timer_wheel_advance(bw__timer_wheel_t *w, uint64_t now_ms, bw__timer_fire_fn cb,
                               void *arg) {
  if (now_ms < w->elapsed) now_ms = w->elapsed;
  merge_pending(w); /* once: entries re-armed in the past by cb wait */
  size_t n = 0;
  for (;;) {
    bw__timer_entry_t *e = take_one(w, now_ms);
    if (!e) break;
    n++;
    cb(e, arg);
  }
  return n;
}

size_t bw__timer_wheel_count(const bw__timer_wheel_t *w) { return w->count; }

uint64_t bw__timer_wheel_now(const bw__timer_wheel_t *w) { return w->elapsed; }

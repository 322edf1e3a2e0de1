/* Hierarchical timing wheel (internal, standalone).
 *
 * 6 levels x 64 slots, 1 ms per tick: level L slot covers 64^L ms, so the
 * wheel spans 2^36 ms (~795 days) from its current time; later deadlines are
 * parked at the far end and re-placed as time moves (they still fire on
 * time). Entries are intrusive (embed bw__timer_entry_t in your object and
 * get back to it with a container_of); the wheel never allocates.
 *
 * Semantics:
 * - insert/remove are O(1). Inserting an armed entry moves it.
 * - An entry fires exactly once per insert, when advance/expire is called
 *   with now_ms >= its deadline. Entries fire in deadline order; entries with
 *   the same deadline fire in insertion order.
 * - A deadline <= the wheel's current time is "overdue": it fires at the
 *   start of the NEXT advance/expire call (even if now_ms did not move), so a
 *   callback that re-arms itself in the past cannot make one advance loop
 *   forever.
 * - Time never goes back: now_ms lower than the wheel's time is treated as
 *   the wheel's time.
 * - A fired entry is disarmed before it is handed out; its owner may re-insert
 *   or free it at once (also from inside the advance callback).
 *
 * Threads: not thread-safe. Guard each wheel with a lock or keep it owned by
 * one thread. All functions are O(1) except expire/advance, whose work is
 * O(fired + cascaded + non-empty slots visited); each entry cascades at most
 * 5 times over its life. */
#ifndef BW_RUNTIME_TIMER_WHEEL_H
#define BW_RUNTIME_TIMER_WHEEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BW__TIMER_LEVELS 6
#define BW__TIMER_SLOTS 64
/* Largest distance from the wheel's time that is placed exactly (2^36 ms). */
#define BW__TIMER_SPAN_MS ((uint64_t)1 << 36)
/* next_expiry() value when nothing is armed. */
#define BW__TIMER_NEVER UINT64_MAX
/* bw__timer_entry_t.where (private) */
enum { BW__TIMER_IDLE = 0, BW__TIMER_PENDING = 0xfe, BW__TIMER_DUE = 0xff };

typedef struct bw__timer_entry bw__timer_entry_t;
/* Embed this in your object. Initialise with bw__timer_entry_init() before
 * first use. All fields are private to the wheel except deadline_ms, which
 * may be read (not written) while armed and after firing. */
struct bw__timer_entry {
  bw__timer_entry_t *next, *prev; /* circular list of the slot / due / pending list */
  uint64_t deadline_ms;
  uint8_t where; /* BW__TIMER_IDLE, _PENDING, _DUE or 1 + level */
  uint8_t slot;
};

typedef struct bw__timer_wheel {
  uint64_t elapsed;        /* wheel time: every deadline < elapsed has fired */
  size_t count;            /* armed entries */
  uint64_t pending_min;    /* lower bound of pending deadlines, or NEVER */
  bw__timer_entry_t *due;     /* taken out of a slot, fire next (sorted) */
  bw__timer_entry_t *pending; /* inserted with deadline <= elapsed */
  struct {
    uint64_t occupied; /* bit i set <=> slots[i] non-empty */
    bw__timer_entry_t *slots[BW__TIMER_SLOTS];
    uint64_t min[BW__TIMER_SLOTS]; /* lower bound of the slot's (placed) deadlines */
  } level[BW__TIMER_LEVELS];
} bw__timer_wheel_t;

/* Make e idle (not armed). Call once before first insert. */
void bw__timer_entry_init(bw__timer_entry_t *e);
/* True while e is in a wheel (inserted, not yet fired or removed). */
bool bw__timer_entry_armed(const bw__timer_entry_t *e);

/* Initialise an empty wheel whose time is now_ms. No allocation, nothing to
 * free (an empty wheel can simply be dropped). */
void bw__timer_wheel_init(bw__timer_wheel_t *w, uint64_t now_ms);

/* Arm e to fire at deadline_ms. If e is already armed (in this wheel) it is
 * moved. O(1). */
void bw__timer_wheel_insert(bw__timer_wheel_t *w, bw__timer_entry_t *e, uint64_t deadline_ms);

/* Disarm e. Returns true if it was armed (it will now never fire), false if
 * it was not (never inserted, already fired, already removed). O(1).
 * e must be idle or armed in w (not in another wheel). */
bool bw__timer_wheel_remove(bw__timer_wheel_t *w, bw__timer_entry_t *e);

/* The earliest armed deadline, or a lower bound of it: never later. It is
 * exact unless the earliest entry was removed while others share its slot
 * (then a stale, earlier value until that slot is processed) or the deadline
 * is beyond the wheel's span (then the span's end). BW__TIMER_NEVER if
 * nothing is armed. A value <= the wheel's time means "something is due
 * now". O(levels). A paused-clock driver loops: jump to next_expiry,
 * advance, repeat while something is armed and nothing fired. */
uint64_t bw__timer_wheel_next_expiry(const bw__timer_wheel_t *w);

/* Move time to now_ms and take out up to `max` due entries, in firing order,
 * into out[0..n). Returns n. Taken entries are disarmed. If n == max there
 * may be more due: call again (with the same now_ms) to continue; the
 * wheel's time then stays at the last processed tick until everything up to
 * now_ms has been taken. Use this to fire entries without holding the lock
 * that guards the wheel. */
size_t bw__timer_wheel_expire(bw__timer_wheel_t *w, uint64_t now_ms, bw__timer_entry_t **out,
                              size_t max);

/* Fire everything due at now_ms, calling cb(e, arg) for each entry in order
 * (e already disarmed). cb may insert/remove any entry of w, including e.
 * Returns the number fired. */
typedef void (*bw__timer_fire_fn)(bw__timer_entry_t *e, void *arg);
size_t bw__timer_wheel_advance(bw__timer_wheel_t *w, uint64_t now_ms, bw__timer_fire_fn cb,
                               void *arg);

/* Number of armed entries. O(1). */
size_t bw__timer_wheel_count(const bw__timer_wheel_t *w);
/* The wheel's current time (last now_ms fully processed). */
uint64_t bw__timer_wheel_now(const bw__timer_wheel_t *w);

#endif

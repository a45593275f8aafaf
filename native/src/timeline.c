/* The per-thread timeline of a stage call (mlp_timeline_enable / mlp_timeline_read). Each thread writes only
 * its own slot, padded to whole cache lines, so recording adds no sharing between threads. */
#define _POSIX_C_SOURCE 199309L
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

typedef struct {
    mlp_event *events;
    int count, dropped;
    long long pack_ns;
    char pad[ALIGN_BYTES];    /* keeps two threads' counters off one cache line */
} thread_slot;

struct timeline {
    thread_slot *slots;
    int threads, capacity, team;
    long long origin;         /* the call's start; events are stored relative to it */
};

long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

timeline *timeline_create(int threads, int events_per_thread)
{
    timeline *tl = calloc(1, sizeof *tl);
    if (!tl)
        return NULL;
    tl->slots = aligned_alloc(ALIGN_BYTES, (size_t)round_up((ptrdiff_t)(threads * sizeof(thread_slot)), ALIGN_BYTES));
    if (!tl->slots) {
        free(tl);
        return NULL;
    }
    memset(tl->slots, 0, (size_t)threads * sizeof(thread_slot));
    tl->threads = threads;
    tl->capacity = events_per_thread;
    for (int t = 0; t < threads; ++t) {
        tl->slots[t].events = calloc((size_t)events_per_thread, sizeof(mlp_event));
        if (!tl->slots[t].events) {
            timeline_destroy(tl);
            return NULL;
        }
    }
    return tl;
}

void timeline_destroy(timeline *tl)
{
    if (!tl)
        return;
    for (int t = 0; t < tl->threads; ++t)
        free(tl->slots[t].events);
    free(tl->slots);
    free(tl);
}

void timeline_begin(timeline *tl, int team)
{
    if (!tl)
        return;
    for (int t = 0; t < tl->threads; ++t) {
        tl->slots[t].count = tl->slots[t].dropped = 0;
        tl->slots[t].pack_ns = 0;
    }
    tl->team = team;
    tl->origin = now_ns();
}

long long timeline_record(timeline *tl, int kind, int layer, long long start, long long pack_ns, long long work)
{
    const long long end = now_ns();
    thread_slot *slot = &tl->slots[omp_get_thread_num()];
    if (slot->count == tl->capacity) {
        ++slot->dropped;
        return end;
    }
    slot->events[slot->count++] = (mlp_event){
        .start_ns = start - tl->origin, .end_ns = end - tl->origin, .pack_ns = pack_ns, .work = work,
        .kind = kind, .layer = layer, .thread = omp_get_thread_num(), .team = tl->team,
    };
    return end;
}

/* The calling thread, after the team joined: its wait for the others. */
void timeline_end(timeline *tl)
{
    if (!tl || tl->team == 1)
        return;
    thread_slot *slot = &tl->slots[0];
    const long long last = slot->count ? slot->events[slot->count - 1].end_ns + tl->origin : tl->origin;
    timeline_record(tl, MLP_EV_JOIN, 0, last, 0, 0);
}

void timeline_add_pack(timeline *tl, long long ns) { tl->slots[omp_get_thread_num()].pack_ns += ns; }

long long timeline_take_pack(timeline *tl)
{
    thread_slot *slot = &tl->slots[omp_get_thread_num()];
    const long long ns = slot->pack_ns;
    slot->pack_ns = 0;
    return ns;
}

int timeline_copy(const timeline *tl, mlp_event *events, int capacity, int *count, int *dropped)
{
    int total = 0, lost = 0;
    for (int t = 0; t < tl->threads; ++t) {
        const thread_slot *slot = &tl->slots[t];
        for (int e = 0; e < slot->count; ++e, ++total)
            if (total < capacity)
                events[total] = slot->events[e];
        lost += slot->dropped;
    }
    *count = total;
    if (dropped)
        *dropped = lost;
    return total <= capacity ? MLP_OK : MLP_ERR_SIZE;
}

/* Each team thread as it starts: the fork's latency. */
void timeline_fork(timeline *tl) { timeline_record(tl, MLP_EV_FORK, 0, tl->origin, 0, 0); }

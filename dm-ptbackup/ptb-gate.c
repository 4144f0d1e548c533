// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup write gate: every write is counted from map to end_io, and a
 * holder (a job's start, a transaction, a bitmap change, a hand-over) can
 * hold new writes back and wait until the counted ones have completed:
 * that instant is the point in time of what it changes.  Writes that
 * arrive meanwhile are parked and handed back to the write path
 * (the gate's released callback) when the hold is lifted.
 */

#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include <linux/sched/mm.h>

#include "ptb-gate.h"

/*
 * Count a write as in flight on this CPU's counter, so the write path
 * touches no cache line that other CPUs write.  The check of the hold
 * flag and the count are one RCU read section with preemption off (an
 * RCU-sched section, which synchronize_rcu_expedited() waits for as it
 * does for rcu_read_lock(), and which costs the write path no call): a
 * hold, which raises the flag and then waits for a grace period, either
 * sees the count or the write sees the flag.  Returns false if writes are
 * being held: the bio then sits on the held list until
 * ptb_release_writes().
 */
bool ptb_account_write(struct ptb_gate *g, struct ptb_bio *pb,
		       struct bio *bio)
{
	unsigned long flags;
	bool held;

	for (;;) {
		rcu_read_lock_sched();
		/* Acquire: a lifted hold means the new image is published. */
		if (likely(!smp_load_acquire(&g->hold_writes))) {
			this_cpu_inc(*g->writes);
			rcu_read_unlock_sched();
			pb->counted = true;
			return true;
		}
		rcu_read_unlock_sched();
		spin_lock_irqsave(&g->lock, flags);
		/* Re-check under the lock: the hold may have just been lifted. */
		held = g->hold_writes;
		if (held)
			bio_list_add(&g->held_bios, bio);
		spin_unlock_irqrestore(&g->lock, flags);
		if (held)
			return false;
	}
}

/*
 * The same RCU read section as the count: a completion that finds no
 * hold ends before a later hold's grace period does, which orders
 * everything the write did before the hold's sum.  One that finds a hold
 * orders the write's work before its count with a full barrier (paired
 * with the one in ptb_gate_drained()) and wakes the hold.
 */
void ptb_write_done(struct ptb_gate *g, struct ptb_bio *pb)
{
	if (!pb->counted)
		return;
	pb->counted = false;
	rcu_read_lock_sched();
	if (likely(!READ_ONCE(g->hold_writes))) {
		this_cpu_dec(*g->writes);
	} else {
		/* The write's work before its count: pairs with the drain's. */
		smp_mb();
		this_cpu_dec(*g->writes);
		wake_up(&g->drain_wait);
	}
	rcu_read_unlock_sched();
}

/*
 * No counted write in flight: exact once no write can be counted (after
 * the hold's grace period), since every count up is then visible and a
 * count down not yet seen can only make the sum larger.
 */
static bool ptb_gate_drained(struct ptb_gate *g)
{
	unsigned long sum = 0;
	int cpu;

	for_each_possible_cpu(cpu)
		sum += READ_ONCE(*per_cpu_ptr(g->writes, cpu));
	if (sum)
		return false;
	/* What the writes did is seen after this (ptb_write_done()). */
	smp_mb();
	return true;
}

/*
 * Hold back new writes and wait until every write already counted has
 * completed: raise the hold flag, wait for an expedited RCU grace period
 * (after it, every write either was counted or parks), then for the
 * per-CPU counts to sum to zero.  Writes waiting for a copy or a bitmap
 * commit count as in flight; copies and commits make progress without
 * the hold being lifted, so this cannot deadlock.  Holds g->hold_lock
 * until ptb_release_writes().
 */
static void ptb_hold_writes_locked(struct ptb_gate *g)
{
	/*
	 * Reclaim must not write to this device while its writes are held:
	 * every allocation until the release is GFP_NOIO.
	 */
	g->hold_noio = memalloc_noio_save();
	g->hold_owner = current;
	g->hold_depth = 1;
	spin_lock_irq(&g->lock);
	WRITE_ONCE(g->hold_writes, 1);
	spin_unlock_irq(&g->lock);
	/* Holds are rare and short, as device-mapper's table swap is. */
	synchronize_rcu_expedited();
	wait_event(g->drain_wait, ptb_gate_drained(g));
}

void ptb_hold_writes(struct ptb_gate *g)
{
	/* Nested holds (a transaction's elements) are free. */
	if (g->hold_owner == current) {
		g->hold_depth++;
		return;
	}
	mutex_lock(&g->hold_lock);
	ptb_hold_writes_locked(g);
}

/* Hold writes unless somebody else holds them; never nested. */
bool ptb_try_hold_writes(struct ptb_gate *g)
{
	if (!mutex_trylock(&g->hold_lock))
		return false;
	ptb_hold_writes_locked(g);
	return true;
}

void ptb_release_writes(struct ptb_gate *g)
{
	unsigned int noio = g->hold_noio;
	struct bio_list held;

	if (--g->hold_depth)
		return;
	g->hold_owner = NULL;
	spin_lock_irq(&g->lock);
	/* Release: the new image is published before writes see no hold. */
	smp_store_release(&g->hold_writes, 0);
	held = g->held_bios;
	bio_list_init(&g->held_bios);
	spin_unlock_irq(&g->lock);
	mutex_unlock(&g->hold_lock);
	/* Still GFP_NOIO: the writes go on before reclaim may use them. */
	if (!bio_list_empty(&held))
		g->released(g, &held);
	memalloc_noio_restore(noio);
	/* A hand-over that found the hold taken waits for this (ptb-job.c). */
	g->hold_released(g);
}

int ptb_gate_init(struct ptb_gate *g,
		  void (*released)(struct ptb_gate *g, struct bio_list *bios),
		  void (*hold_released)(struct ptb_gate *g))
{
	g->released = released;
	g->hold_released = hold_released;
	mutex_init(&g->hold_lock);
	spin_lock_init(&g->lock);
	bio_list_init(&g->held_bios);
	init_waitqueue_head(&g->drain_wait);
	g->writes = alloc_percpu(unsigned long);
	return g->writes ? 0 : -ENOMEM;
}

/* No write in flight, no hold; also after a failed ptb_gate_init(). */
void ptb_gate_exit(struct ptb_gate *g)
{
	free_percpu(g->writes);
	g->writes = NULL;
	mutex_destroy(&g->hold_lock);
}

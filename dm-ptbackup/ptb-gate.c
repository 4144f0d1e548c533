// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup write gate: every write is counted from map to end_io, and a
 * holder (a job's start, a transaction, a bitmap change, a hand-over) can
 * hold new writes back and wait until the counted ones have completed:
 * that instant is the point in time of what it changes.  Writes that
 * arrive meanwhile are parked and handed back to the write path
 * (the gate's released callback) when the hold is lifted.
 */

#include <linux/percpu-refcount.h>
#include <linux/sched/mm.h>

#include "ptb-gate.h"

/* The last counted write of a hold's drain has completed. */
static void ptb_gate_drained(struct percpu_ref *ref)
{
	struct ptb_gate *g = container_of(ref, struct ptb_gate, writes);

	complete(&g->drained);
}

/*
 * Count a write as in flight: a per-CPU reference, so the write path
 * touches no cache line that other CPUs write.  Returns false if writes
 * are being held: the bio then sits on the held list until
 * ptb_release_writes().
 */
bool ptb_account_write(struct ptb_gate *g, struct ptb_bio *pb,
		       struct bio *bio)
{
	unsigned long flags;
	bool held;

	for (;;) {
		if (likely(percpu_ref_tryget_live(&g->writes))) {
			/* Acquire: a lifted hold means the new image is published. */
			if (likely(!smp_load_acquire(&g->hold_writes))) {
				pb->counted = true;
				return true;
			}
			/* A hold is starting: this write belongs after it. */
			percpu_ref_put(&g->writes);
		}
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

void ptb_write_done(struct ptb_gate *g, struct ptb_bio *pb)
{
	if (!pb->counted)
		return;
	pb->counted = false;
	percpu_ref_put(&g->writes);
}

/*
 * Hold back new writes and wait until every write already counted has
 * completed: raise the hold flag, then kill the reference, whose release
 * runs when the last counted write completes (after an RCU grace period
 * at the least).  Writes waiting for a copy or a bitmap commit count as in
 * flight; copies and commits make progress without the hold being lifted,
 * so this cannot deadlock.  Holds g->hold_lock until ptb_release_writes().
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
	reinit_completion(&g->drained);
	percpu_ref_kill(&g->writes);
	wait_for_completion(&g->drained);
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
	/*
	 * Live again before the flag drops: a write that finds the
	 * reference dead always finds the flag raised and parks.
	 */
	percpu_ref_reinit(&g->writes);
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
	init_completion(&g->drained);
	return percpu_ref_init(&g->writes, ptb_gate_drained,
			       PERCPU_REF_ALLOW_REINIT, GFP_KERNEL);
}

/* No write in flight, no hold. */
void ptb_gate_exit(struct ptb_gate *g)
{
	percpu_ref_exit(&g->writes);
	mutex_destroy(&g->hold_lock);
}

// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup write gate: every write is counted from map to end_io, and a
 * holder (a job's start, a transaction, a bitmap change, a hand-over) can
 * hold new writes back and wait until the counted ones have completed:
 * that instant is the point in time of what it changes.  Writes that
 * arrive meanwhile are parked and handed back to the write path
 * (pd->write_ops->released) when the hold is lifted.
 */

#include <linux/sched/mm.h>

#include "ptb-device.h"
#include "ptb-gate.h"

/*
 * Count a write as in flight.  Returns false if writes are being held for a
 * new job: the bio then sits on the held list until ptb_release_writes().
 * Pairs with the barrier in ptb_hold_writes().
 */
bool ptb_account_write(struct ptb_device *pd, struct ptb_bio *pb,
		       struct bio *bio)
{
	unsigned long flags;
	bool held;

	for (;;) {
		atomic_inc(&pd->writes_in_flight);
		pb->counted = true;
		/* Count before looking at the hold: pairs with smp_mb() in hold. */
		smp_mb__after_atomic();
		/* Acquire: a lifted hold means the new image is published. */
		if (likely(!smp_load_acquire(&pd->hold_writes)))
			return true;

		ptb_write_done(pd, pb);
		spin_lock_irqsave(&pd->bio_lock, flags);
		/* Re-check under the lock: the hold may have just been lifted. */
		held = pd->hold_writes;
		if (held)
			bio_list_add(&pd->held_bios, bio);
		spin_unlock_irqrestore(&pd->bio_lock, flags);
		if (held)
			return false;
	}
}

void ptb_write_done(struct ptb_device *pd, struct ptb_bio *pb)
{
	if (!pb->counted)
		return;
	pb->counted = false;
	/* Full barrier in atomic_dec_and_test() pairs with ptb_hold_writes(). */
	if (atomic_dec_and_test(&pd->writes_in_flight) &&
	    READ_ONCE(pd->hold_writes))
		wake_up(&pd->writes_drained);
}

/*
 * Hold back new writes and wait until every write already mapped has
 * completed.  Writes waiting for a copy or a bitmap commit count as in
 * flight; copies and commits make progress without the hold being lifted,
 * so this cannot deadlock.  Holds pd->hold_lock until ptb_release_writes().
 */
static void ptb_hold_writes_locked(struct ptb_device *pd)
{
	/*
	 * Reclaim must not write to this device while its writes are held:
	 * every allocation until the release is GFP_NOIO.
	 */
	pd->hold_noio = memalloc_noio_save();
	pd->hold_owner = current;
	pd->hold_depth = 1;
	spin_lock_irq(&pd->bio_lock);
	WRITE_ONCE(pd->hold_writes, 1);
	spin_unlock_irq(&pd->bio_lock);
	/* Hold before reading the count: pairs with ptb_account_write(). */
	smp_mb();
	wait_event(pd->writes_drained, !atomic_read(&pd->writes_in_flight));
}

void ptb_hold_writes(struct ptb_device *pd)
{
	/* Nested holds (a transaction's elements) are free. */
	if (pd->hold_owner == current) {
		pd->hold_depth++;
		return;
	}
	mutex_lock(&pd->hold_lock);
	ptb_hold_writes_locked(pd);
}

/* Hold writes unless somebody else holds them; never nested. */
bool ptb_try_hold_writes(struct ptb_device *pd)
{
	if (!mutex_trylock(&pd->hold_lock))
		return false;
	ptb_hold_writes_locked(pd);
	return true;
}

void ptb_release_writes(struct ptb_device *pd)
{
	unsigned int noio = pd->hold_noio;
	struct bio_list held;

	if (--pd->hold_depth)
		return;
	pd->hold_owner = NULL;
	spin_lock_irq(&pd->bio_lock);
	/* Release: the new image is published before writes see no hold. */
	smp_store_release(&pd->hold_writes, 0);
	held = pd->held_bios;
	bio_list_init(&pd->held_bios);
	spin_unlock_irq(&pd->bio_lock);
	mutex_unlock(&pd->hold_lock);
	/* Still GFP_NOIO: the writes go on before reclaim may use them. */
	if (!bio_list_empty(&held))
		pd->write_ops->released(pd, &held);
	memalloc_noio_restore(noio);
	/* A hand-over that found the hold taken waits for this (ptb-job.c). */
	pd->write_ops->hold_released(pd);
}

void ptb_gate_init(struct ptb_device *pd)
{
	mutex_init(&pd->hold_lock);
	spin_lock_init(&pd->bio_lock);
	bio_list_init(&pd->held_bios);
	atomic_set(&pd->writes_in_flight, 0);
	init_waitqueue_head(&pd->writes_drained);
}

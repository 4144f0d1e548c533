/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup copy-before-write engine (ptb-cow.c): write accounting and
 * the write hold that gives a job its point in time, the deferred-write
 * queue, the table of chunk copies in flight and the worker that drives
 * them and services the jobs.
 *
 * Contexts: as marked; unmarked functions run in the worker.
 */
#ifndef DM_PTBACKUP_COW_H
#define DM_PTBACKUP_COW_H

#include "ptb.h"

int ptb_cow_init(struct ptb_device *pd);
void ptb_cow_exit(struct ptb_device *pd);
bool ptb_write_needs_cow(struct ptb_device *pd, struct bio *bio); /* any context, RCU */
void ptb_defer_bio(struct ptb_device *pd, struct bio *bio);	/* any context */
void ptb_wake_worker(struct ptb_device *pd);			/* any context */
bool ptb_account_write(struct ptb_device *pd, struct ptb_bio *pb,
		       struct bio *bio);				/* any context */
void ptb_hold_writes(struct ptb_device *pd);			/* may sleep */
bool ptb_try_hold_writes(struct ptb_device *pd);		/* may sleep */
/* ptb_hold_writes() takes pd->hold_lock, ptb_release_writes() drops it. */
void ptb_release_writes(struct ptb_device *pd);		/* may sleep */
void ptb_write_done(struct ptb_device *pd, struct ptb_bio *pb);	/* any context */
void ptb_do_worker(struct work_struct *ws);
void ptb_do_waker(struct work_struct *ws);
int ptb_copy_start(struct ptb_job *job, unsigned long chunk);	/* worker */
bool ptb_copy_in_flight(struct ptb_job *job, unsigned long chunk); /* worker */

void ptb_io_start(struct ptb_device *pd);			/* worker */
void ptb_io_end(struct ptb_device *pd);				/* any context */

#endif /* DM_PTBACKUP_COW_H */

/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup mirror jobs (ptb-mirror.c): keep a second device identical
 * to the live one.  Every write, discard and write-zeroes is applied to
 * the origin and to the mirror's target, and completes once both have it;
 * flushes and FUA go to both.  What the target does not have yet is in
 * the job's out-of-sync map (one bit per chunk, in memory): all of the
 * device for sync=full, then whatever a failing target missed.  The job
 * copies those chunks from the origin (dm-kcopyd) while writes go on;
 * a copy and a write of the same blocks never overlap: the copy waits for
 * the writes in flight there, later writes wait for the copy.
 *
 *   syncing  --nothing out of sync, no copy in flight-->  ready
 *   degraded --job resume------------------------------>  syncing
 *   ready    --a chunk out of sync (origin error, ...)-->  syncing
 *   ready    --job complete---------------------------->  completed
 *   syncing, ready --target error (report, stop)------->  degraded
 *   any of the three above --job cancel, removal------>  cancelled
 *
 * A degraded job sends nothing to the target: writes go to the origin and
 * are recorded (report), or fail (stop), until `job resume'.
 *
 * Contexts: ptb_mirror_write() from the map path or a worker (may sleep
 * in mempool allocation, never on I/O); the messages with pd->lock held,
 * may sleep; completions in any context.  At most one mirror job of a
 * device is active at a time: pd->mirror, RCU.
 */
#ifndef DM_PTBACKUP_MIRROR_H
#define DM_PTBACKUP_MIRROR_H

#include "ptb.h"

struct ptb_mirror;

struct ptb_mirror_params {
	char id[PTB_JOB_ID_MAX + 1];
	const char *target_path;
	enum ptb_sync_mode sync;	/* full or none */
	u64 speed;			/* bytes/s, 0 = unlimited */
	enum ptb_error_action on_target_error;
};

/*
 * The write path.  ptb_mirror_get() under rcu_read_lock(): the device's
 * active mirror with a reference, or NULL.  ptb_mirror_write() takes the
 * write (its sectors in one piece, or an empty flush) and drops the
 * reference once it has completed.
 */
struct ptb_mirror *ptb_mirror_get(struct ptb_device *pd);
void ptb_mirror_write(struct ptb_mirror *m, struct bio *bio);

/* Messages; pd->lock held. */
struct ptb_mirror *ptb_mirror_find(struct ptb_device *pd, const char *id);
int ptb_mirror_start(struct ptb_target *pt, const struct ptb_mirror_params *p);
int ptb_mirror_complete(struct ptb_mirror *m);
int ptb_mirror_cancel(struct ptb_mirror *m);
int ptb_mirror_resume(struct ptb_mirror *m);
int ptb_mirror_dismiss(struct ptb_mirror *m);
void ptb_mirror_set_speed(struct ptb_mirror *m, u64 speed);
/* Append the mirror jobs to a status line or the `job list' reply (verbose). */
unsigned int ptb_mirrors_emit(struct ptb_device *pd, char *result,
			      unsigned int maxlen, unsigned int sz, bool verbose);

/* The device: suspend, resume, the last table going, the object freed. */
void ptb_mirrors_postsuspend(struct ptb_device *pd);
void ptb_mirrors_resume(struct ptb_device *pd);
bool ptb_mirrors_elsewhere(struct ptb_device *pd, struct block_device *origin,
			   sector_t len);
void ptb_mirrors_cancel(struct ptb_device *pd);		/* pd->lock held */
void ptb_mirrors_destroy(struct ptb_device *pd);	/* pd->lock held */

#endif /* DM_PTBACKUP_MIRROR_H */

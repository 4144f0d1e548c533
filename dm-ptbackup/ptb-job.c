// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup jobs: creation with its point in time, the state machine, the
 * background sweep of sync=full jobs with its rate limit, error policies,
 * the final flush, the bitmap hand-over and release of a finished job.
 *
 *   running <--> paused           (pause, resume; the "stop" error policy)
 *      |
 *      | all chunks copied, no copy in flight (worker)
 *      v
 *   flushing --flush ok, no bitmap-------------------------> completed
 *      |  flush ok, a bitmap
 *      v
 *   handing-over --bitmap handed back (success)------------> completed
 *
 *   running, paused, flushing --cancel--> cancelling --> cancelled
 *   running, paused, flushing --error---> failing ----> failed
 *
 * Cancelling and failing jobs wait for their copies and flush in flight,
 * hand their bitmap back as a failure, then release their buffers and
 * target (worker), which makes them cancelled or failed.  A handing-over
 * job can no longer be cancelled: its backup is complete and its bitmap
 * is being reset.  A flush error under the "ignore" policy goes back to
 * running (the flush is retried), under "stop" to paused.
 *
 * Transitions use cmpxchg: messages (pause, resume, cancel), the worker
 * (errors, completion) and the hand-over race.  The hand-over runs with
 * writes held, in handover_work, or directly in a transaction's undo, which
 * already holds them (ptb_job_undo_start()); handover_work only tries to
 * take the hold, so it never waits for a transaction that waits for it.
 */

#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "ptb-device.h"
#include "ptb-bitmap.h"
#include "ptb-cow.h"
#include "ptb-gate.h"
#include "ptb-job.h"
#include "ptb-mirror.h"
#include "ptb-rate.h"

#define DM_MSG_PREFIX "ptbackup"

static const struct ptb_image_ops ptb_job_image_ops;

#define PTB_RETRY_DELAY		(HZ / 10)

#define PTB_ACTIVE_STATES	(BIT(PTB_JOB_RUNNING) | BIT(PTB_JOB_PAUSED) | \
				 BIT(PTB_JOB_FLUSHING) | BIT(PTB_JOB_HANDING_OVER))
#define PTB_CANCELLABLE_STATES	(BIT(PTB_JOB_RUNNING) | BIT(PTB_JOB_PAUSED) | \
				 BIT(PTB_JOB_FLUSHING))
#define PTB_FINAL_STATES	(BIT(PTB_JOB_COMPLETED) | BIT(PTB_JOB_CANCELLED) | \
				 BIT(PTB_JOB_FAILED))

static const char * const ptb_state_names[PTB_JOB_NR_STATES] = {
	[PTB_JOB_RUNNING] = "running",
	[PTB_JOB_PAUSED] = "paused",
	[PTB_JOB_FLUSHING] = "running",
	[PTB_JOB_HANDING_OVER] = "running",
	[PTB_JOB_CANCELLING] = "cancelled",
	[PTB_JOB_FAILING] = "failed",
	[PTB_JOB_COMPLETED] = "completed",
	[PTB_JOB_CANCELLED] = "cancelled",
	[PTB_JOB_FAILED] = "failed",
};

static const char * const ptb_site_names[] = {
	[PTB_SITE_NONE] = "-",
	[PTB_SITE_SOURCE] = "source",
	[PTB_SITE_TARGET] = "target",
	[PTB_SITE_CBW] = "cbw",
	[PTB_SITE_FLUSH] = "flush",
};

/* For log lines: the states status shows as others have their own name. */
static const char * const ptb_state_log_names[PTB_JOB_NR_STATES] = {
	[PTB_JOB_FLUSHING] = "flushing its target",
	[PTB_JOB_HANDING_OVER] = "completing (handing its bitmap over)",
	[PTB_JOB_CANCELLING] = "being cancelled",
	[PTB_JOB_FAILING] = "failing",
};

const char *ptb_job_state_name(enum ptb_job_state s)
{
	return ptb_state_names[s];
}

const char *ptb_job_state_log_name(enum ptb_job_state s)
{
	return ptb_state_log_names[s] ?: ptb_state_names[s];
}

static const char * const ptb_sync_names[] = {
	[PTB_SYNC_FULL] = "full",
	[PTB_SYNC_NONE] = "none",
	[PTB_SYNC_INCREMENTAL] = "incremental",
};

const char *ptb_sync_name(enum ptb_sync_mode m)
{
	return ptb_sync_names[m];
}

static bool ptb_job_active(const struct ptb_job *job)
{
	return BIT(READ_ONCE(job->state)) & PTB_ACTIVE_STATES;
}

/* In a final state: its I/O is over, target and buffers given back. */
bool ptb_job_released(const struct ptb_job *job)
{
	return BIT(READ_ONCE(job->state)) & PTB_FINAL_STATES;
}

/*
 * Views may read a running or paused job.  Transitions race (a resume
 * with the worker's flush): each writer checks the state again after its
 * store, so the last store follows the last state.
 */
static void ptb_job_update_readable(struct ptb_job *job)
{
	int s;

	do {
		s = READ_ONCE(job->state);
		ptb_image_set_readable(&job->img, s == PTB_JOB_RUNNING || s == PTB_JOB_PAUSED);
		/* The store before the second look at the state. */
		smp_mb();
	} while (READ_ONCE(job->state) != s);
}

/* Move job to state to if it is in one of the states in from_mask. */
static bool ptb_job_transition(struct ptb_job *job, unsigned long from_mask,
			       enum ptb_job_state to)
{
	int old = READ_ONCE(job->state);

	do {
		if (!(BIT(old) & from_mask))
			return false;
	} while (!try_cmpxchg(&job->state, &old, to));

	if (!(BIT(to) & PTB_ACTIVE_STATES))
		ptb_image_unprotect(&job->img);
	ptb_job_update_readable(job);
	if (strcmp(ptb_state_names[old], ptb_state_names[to]))
		job->pd->notify(job->pd);
	if (!(BIT(to) & PTB_ACTIVE_STATES) || to == PTB_JOB_HANDING_OVER)
		ptb_wake_worker(&job->pd->cow);
	return true;
}

struct ptb_job *ptb_job_find(struct ptb_device *pd, const char *id)
{
	struct ptb_job *job;

	lockdep_assert_held(&pd->lock);
	list_for_each_entry(job, &pd->jobs, node)
		if (!strcmp(job->id, id))
			return job;
	return NULL;
}

static void ptb_job_log_completion(struct ptb_job *job)
{
	DMINFO("%s: job %s completed: %llu bytes, %llu of them zeroes",
	       ptb_device_name(job->pd), job->id,
	       (unsigned long long)atomic64_read(&job->bytes_done),
	       (unsigned long long)atomic64_read(&job->zero_bytes));
}

/*----------------------------------------------------------------*/

/* Creation. */

static void ptb_job_free(struct ptb_job *job)
{
	ptb_image_exit(&job->img);
	ptb_bdev_close(&job->target, job);
	kfree(job);
}

/* Checks that need no open: the target exists and is none of our devices. */
int ptb_job_check_target(struct ptb_target *pt, const char *verb, const char *id,
			 const char *path)
{
	struct ptb_device *pd = pt->pd;
	const char *name = ptb_device_name(pd);
	dev_t dev;
	int r;

	r = lookup_bdev(path, &dev);
	if (r) {
		DMERR("%s: %s %s: cannot find target block device %s (%d)",
		      name, verb, id, path, r);
		return r;
	}
	if (dev == pt->origin->bdev->bd_dev) {
		DMERR("%s: %s %s: target %s is the origin device",
		      name, verb, id, path);
		return -EINVAL;
	}
	if (pt->metadata && dev == pt->metadata->bdev->bd_dev) {
		DMERR("%s: %s %s: target %s is the metadata device",
		      name, verb, id, path);
		return -EINVAL;
	}
	if (dev == disk_devt(dm_disk(pd->md))) {
		DMERR("%s: %s %s: target %s is this device itself",
		      name, verb, id, path);
		return -EINVAL;
	}
	return 0;
}

static int ptb_job_open_target(struct ptb_target *pt, struct ptb_job *job,
			       const char *path)
{
	const char *name = ptb_device_name(pt->pd);
	struct block_device *target, *origin = pt->origin->bdev;
	int r;

	r = ptb_bdev_open_excl(path, job, &job->target);
	if (r == -EBUSY) {
		DMERR("%s: backup start %s: target %s is busy (in use by a mount, device or job)",
		      name, job->id, path);
		return r;
	} else if (r) {
		DMERR("%s: backup start %s: cannot open target %s read-write (%d)",
		      name, job->id, path, r);
		return r;
	}

	target = job->target.bdev;
	job->img.target = target;
	job->target_dev = target->bd_dev;
	if (bdev_nr_sectors(target) < pt->ti->len && job->sync != PTB_SYNC_NONE) {
		DMERR("%s: backup start %s: target %s: %llu sectors, fewer than the device's %llu (only a sync=none job takes a smaller store)",
		      name, job->id, path,
		      (unsigned long long)bdev_nr_sectors(target),
		      (unsigned long long)pt->ti->len);
		return -ENOSPC;
	}
	if (bdev_logical_block_size(target) > bdev_logical_block_size(origin)) {
		DMERR("%s: backup start %s: target %s has %u-byte logical blocks, the origin %u",
		      name, job->id, path, bdev_logical_block_size(target),
		      bdev_logical_block_size(origin));
		return -EINVAL;
	}
	r = ptb_image_init_store(&job->img, bdev_nr_sectors(target));
	if (r == -ENOSPC)
		DMERR("%s: backup start %s: store %s is smaller than one chunk (%u sectors)",
		      name, job->id, path, 1U << pt->chunk_shift);
	return r;
}

static int ptb_job_check_bitmap(struct ptb_target *pt,
				const struct ptb_job_params *p,
				struct ptb_bitmap **bp)
{
	const char *name = ptb_device_name(pt->pd);
	struct ptb_bitmap *b;
	const struct ptb_bitmap_user *busy;

	if (!p->bitmap) {
		if (p->sync == PTB_SYNC_INCREMENTAL) {
			DMERR("%s: backup start %s: sync=incremental needs bitmap=<name>",
			      name, p->id);
			return -EINVAL;
		}
		return 0;
	}
	if (p->sync == PTB_SYNC_NONE) {
		DMERR("%s: backup start %s: bitmap= needs sync=full or sync=incremental",
		      name, p->id);
		return -EINVAL;
	}
	b = ptb_bitmap_find(&pt->pd->trk, p->bitmap);
	if (!b) {
		DMERR("%s: backup start %s: no bitmap `%s'", name, p->id, p->bitmap);
		return -ENOENT;
	}
	busy = READ_ONCE(b->busy);
	if (busy) {
		DMERR("%s: backup start %s: bitmap %s is in use by job %s", name,
		      p->id, b->name, busy->name);
		return -EBUSY;
	}
	if (p->sync == PTB_SYNC_INCREMENTAL && READ_ONCE(b->inconsistent)) {
		DMERR("%s: backup start %s: bitmap %s lost track of writes: take a full backup",
		      name, p->id, b->name);
		return -EINVAL;
	}
	*bp = b;
	return 0;
}

/*
 * Hand the bitmap back: on success (handing-over) it becomes what
 * bitmap_mode says, on failure (cancelling, failing: only once no copy is
 * in flight) it keeps what was not copied.  Writes are held by the caller,
 * so no write falls between the bitmap and its successor.  The worker then
 * releases the job.
 */
static void ptb_job_handover(struct ptb_job *job)
{
	struct ptb_device *pd = job->pd;
	int state = READ_ONCE(job->state);

	lockdep_assert_held(&pd->gate.hold_lock);
	if (!job->bitmap || !(BIT(state) & (BIT(PTB_JOB_HANDING_OVER) |
					    BIT(PTB_JOB_CANCELLING) |
					    BIT(PTB_JOB_FAILING))))
		return;
	ptb_bitmap_thaw(&pd->trk, job->bitmap, state == PTB_JOB_HANDING_OVER);
	WRITE_ONCE(job->bitmap, NULL);
	ptb_wake_worker(&pd->cow);
}

/*
 * The hand-over work.  It only tries to take the write hold: a holder
 * (another job's start, a transaction) wakes the worker when it lets go,
 * and the worker queues this work again.
 */
static void ptb_job_do_handover(struct work_struct *ws)
{
	struct ptb_job *job = container_of(ws, struct ptb_job, handover_work);
	struct ptb_device *pd = job->pd;

	/* Queued again while it ran: nothing to do, hold nothing. */
	if (!READ_ONCE(job->bitmap) || !ptb_try_hold_writes(&pd->gate))
		return;
	ptb_job_handover(job);
	ptb_release_writes(&pd->gate);
}

/*
 * A transaction that started this job failed later: undo the start.  The
 * transaction has held writes since before the job began, so nothing was
 * written since its point in time: its bitmap gets back exactly the bits it
 * had (mode never), whatever state the job reached.  Then wait until the
 * worker has released it.  Caller owns the write hold and pd->lock.
 */
void ptb_job_undo_start(struct ptb_job *job)
{
	lockdep_assert_held(&job->pd->gate.hold_lock);
	if (ptb_job_transition(job, PTB_ACTIVE_STATES, PTB_JOB_CANCELLING))
		DMINFO("%s: job %s cancelled: its transaction is undone",
		       ptb_device_name(job->pd), job->id);
	else
		DMINFO("%s: job %s is %s: its transaction is undone",
		       ptb_device_name(job->pd), job->id,
		       ptb_job_state_log_name(READ_ONCE(job->state)));
	if (job->bitmap) {
		job->bitmap_user.mode = PTB_BITMAP_NEVER;
		ptb_bitmap_thaw(&job->pd->trk, job->bitmap, false);
		WRITE_ONCE(job->bitmap, NULL);
	}
	ptb_wake_worker(&job->pd->cow);
	wait_for_completion(&job->finished);
}

/* Checks against the device's jobs and bitmaps; nothing is opened. */
static int ptb_job_check_start(struct ptb_target *pt,
			       const struct ptb_job_params *p,
			       struct ptb_bitmap **bitmap)
{
	struct ptb_device *pd = pt->pd;
	const char *name = ptb_device_name(pd);
	int r;

	if (ptb_job_find(pd, p->id) || ptb_mirror_find(pd, p->id)) {
		DMERR("%s: backup start: job %s already exists", name, p->id);
		return -EEXIST;
	}
	if (pd->origin_change) {
		DMERR("%s: backup start %s: a loaded table changes the origin device: resume or clear it first",
		      name, p->id);
		return -EBUSY;
	}
	if (pd->nr_jobs >= PTB_MAX_JOBS) {
		DMERR("%s: backup start %s: too many jobs (%u): dismiss finished ones",
		      name, p->id, PTB_MAX_JOBS);
		return -ENOSPC;
	}
	r = ptb_job_check_target(pt, "backup start", p->id, p->target_path);
	return r ? r : ptb_job_check_bitmap(pt, p, bitmap);
}

/* A new job, not yet published: its target open, its memory allocated. */
static int ptb_job_new(struct ptb_target *pt, const struct ptb_job_params *p,
		       struct ptb_job **jobp)
{
	struct ptb_job *job = kzalloc(sizeof(*job), GFP_KERNEL);
	int r;

	if (!job)
		return -ENOMEM;
	job->pd = pt->pd;
	job->type = p->type;
	strscpy(job->id, p->id, sizeof(job->id));
	job->sync = p->sync;
	job->speed = p->speed;
	job->on_source_error = p->on_source_error;
	job->on_target_error = p->on_target_error;
	job->on_cbw_error = p->on_cbw_error;
	job->cbw_timeout = p->cbw_timeout;
	job->state = PTB_JOB_RUNNING;
	job->bytes_total = (u64)pt->ti->len << SECTOR_SHIFT;
	job->rate_next = ktime_get();
	INIT_WORK(&job->handover_work, ptb_job_do_handover);
	init_completion(&job->finished);
	atomic64_set(&job->bytes_done, 0);
	atomic64_set(&job->zero_bytes, 0);

	r = ptb_image_init(&job->img, &pt->pd->cow, &ptb_job_image_ops, job->id,
			   pt->chunk_shift, pt->ti->len, pt->copy_slots,
			   ilog2(bdev_logical_block_size(pt->origin->bdev) >> SECTOR_SHIFT));
	if (!r) {
		job->img.origin = pt->origin->bdev;
		job->img.cbw_timeout = (unsigned long)p->cbw_timeout * HZ;
		r = ptb_job_open_target(pt, job, p->target_path);
	}
	if (r) {
		ptb_job_free(job);
		return r;
	}
	*jobp = job;
	return 0;
}

/*
 * Create a job and start it.  Its point in time is when it is published:
 * writes are held back and drained first, so every write completed before
 * this call is in the backup and every write held or issued after it is
 * not.  Caller holds pd->lock.  On error nothing has changed.
 */
int ptb_job_start(struct ptb_target *pt, const struct ptb_job_params *p)
{
	struct ptb_device *pd = pt->pd;
	struct ptb_bitmap *bitmap = NULL;
	unsigned long *succ = NULL;
	struct ptb_job *job;
	int r;

	lockdep_assert_held(&pd->lock);
	r = ptb_job_check_start(pt, p, &bitmap);
	if (r)
		return r;
	r = ptb_job_new(pt, p, &job);
	if (r)
		return r;
	if (bitmap) {
		r = ptb_bitmap_prepare_job(bitmap, &succ);
		if (r) {
			ptb_job_free(job);
			return r;
		}
	}

	ptb_hold_writes(&pd->gate);
	if (bitmap) {
		job->bitmap = bitmap;
		job->bitmap_user = (struct ptb_bitmap_user) {
			.name = job->id,
			.done = job->img.done,
			.nr_chunks = job->img.nr_chunks,
			.chunk_shift = job->img.chunk_shift,
			.dev_sectors = job->img.dev_sectors,
			.mode = p->bitmap_mode,
		};
		ptb_bitmap_freeze(bitmap, &job->bitmap_user, succ);
	}
	job->bytes_total = job->type->begin(job);
	list_add_tail(&job->node, &pd->jobs);
	pd->nr_jobs++;
	ptb_image_publish(&job->img);
	ptb_release_writes(&pd->gate);

	DMINFO("%s: job %s: %s of %lu chunks of %u sectors to %u:%u started, sync=%s",
	       ptb_device_name(pd), job->id, job->type->name, job->img.nr_chunks,
	       1U << job->img.chunk_shift,
	       MAJOR(job->target_dev), MINOR(job->target_dev),
	       ptb_sync_name(job->sync));
	pd->notify(pd);
	return 0;
}

/*----------------------------------------------------------------*/

/* Progress and errors.  Worker only. */

/* The image's ops: what the copy engine reports.  Worker only. */
static void ptb_job_copied(struct ptb_image *img, sector_t len, sector_t zero_len)
{
	struct ptb_job *job = container_of(img, struct ptb_job, img);

	atomic64_add((u64)len << SECTOR_SHIFT, &job->bytes_done);
	if (zero_len)
		atomic64_add((u64)zero_len << SECTOR_SHIFT, &job->zero_bytes);
}

static void ptb_job_record_error(struct ptb_job *job, enum ptb_error_site site,
				 int err)
{
	WRITE_ONCE(job->error_site, site);
	WRITE_ONCE(job->last_error, err);
}

static void ptb_job_fail(struct ptb_job *job, enum ptb_error_site site, int err)
{
	/* A stopping job keeps the error that stopped it. */
	if (!(BIT(READ_ONCE(job->state)) & PTB_CANCELLABLE_STATES))
		return;
	ptb_job_record_error(job, site, err);
	if (ptb_job_transition(job, PTB_CANCELLABLE_STATES, PTB_JOB_FAILING))
		DMERR("%s: job %s failed: %s error %d",
		      ptb_device_name(job->pd), job->id, ptb_site_names[site], err);
}

/* From states in from_mask: a flush error is handled from flushing. */
static void ptb_job_error_from(struct ptb_job *job, unsigned long from_mask,
			       enum ptb_error_site site, int err,
			       enum ptb_error_action action)
{
	if (action == PTB_ERR_REPORT) {
		ptb_job_fail(job, site, err);
		return;
	}
	ptb_job_record_error(job, site, err);
	switch (action) {
	case PTB_ERR_REPORT:
		break;
	case PTB_ERR_IGNORE:
		DMERR_LIMIT("%s: job %s: %s error %d, retrying",
			    ptb_device_name(job->pd), job->id,
			    ptb_site_names[site], err);
		if (!job->retry_at)
			job->retry_at = (jiffies + PTB_RETRY_DELAY) | 1;
		ptb_job_transition(job, from_mask, PTB_JOB_RUNNING);
		break;
	case PTB_ERR_STOP:
		if (ptb_job_transition(job, from_mask, PTB_JOB_PAUSED))
			DMERR("%s: job %s paused: %s error %d; `job resume' retries",
			      ptb_device_name(job->pd), job->id,
			      ptb_site_names[site], err);
		break;
	}
}

/*
 * A copy failed.  No write waits for it: the policy for its site.  Writes
 * wait for it (copy-before-write): break-guest-write fails them while the
 * job is active; break-snapshot fails the job and lets them go on.
 */
static bool ptb_job_copy_failed(struct ptb_image *img, unsigned long chunk,
				enum ptb_error_site site, int err, bool writes_wait)
{
	struct ptb_job *job = container_of(img, struct ptb_job, img);

	if (!writes_wait) {
		ptb_job_error_from(job, BIT(PTB_JOB_RUNNING), site, err,
				   site == PTB_SITE_SOURCE ? job->on_source_error :
							     job->on_target_error);
		return false;
	}
	if (!ptb_job_active(job)) {
		/* Stopping: it may not have unprotected the image yet. */
		ptb_image_unprotect(img);
		return false;
	}
	if (job->on_cbw_error == PTB_CBW_BREAK_GUEST_WRITE) {
		DMERR_LIMIT("%s: job %s: copy of chunk %lu failed (%d), failing the write",
			    ptb_device_name(job->pd), job->id, chunk, err);
		ptb_job_record_error(job, PTB_SITE_CBW, err);
		return true;
	}
	ptb_job_fail(job, PTB_SITE_CBW, err);
	return false;
}

/*----------------------------------------------------------------*/

/* The background sweep and completion.  Worker only. */

/* May the sweep issue another chunk now?  0 if so, else the delay. */
static unsigned long ptb_job_rate_delay(struct ptb_job *job, ktime_t now)
{
	return ptb_rate_delay(job->rate_next, READ_ONCE(job->speed), now);
}

static void ptb_job_rate_charge(struct ptb_job *job, ktime_t now, u64 bytes)
{
	ptb_rate_charge(&job->rate_next, READ_ONCE(job->speed), now, bytes);
}

/*
 * The longest run of chunks from chunk on that the sweep may copy at
 * once: not done, not in flight, at most max of them and 1 MiB, and under
 * a speed limit no more than the limit's burst (so that the rate stays
 * smooth), but always one.
 */
static unsigned int ptb_job_run_length(struct ptb_job *job, unsigned long chunk,
				       unsigned int max)
{
	struct ptb_image *img = &job->img;
	unsigned int cshift = img->chunk_shift + SECTOR_SHIFT;
	u64 burst = ptb_rate_burst_bytes(READ_ONCE(job->speed));
	unsigned int n = 1;

	max = min(max, max(1U, PTB_RUN_MAX_BYTES >> cshift));
	max = min_t(u64, max, max_t(u64, 1, burst >> cshift));
	while (n < max && chunk + n < img->nr_chunks &&
	       !test_bit(chunk + n, img->done) && !ptb_copy_in_flight(img, chunk + n))
		n++;
	return n;
}

/*
 * Copy what is left in runs of adjacent chunks, keeping a quarter of the
 * slots for copy-before-write.
 */
static unsigned long ptb_job_sweep(struct ptb_job *job)
{
	struct ptb_image *img = &job->img;
	unsigned int reserve = img->nr_slots / 4, nr;
	unsigned long chunk, delay;
	ktime_t now;

	while (img->free_slots > reserve) {
		now = ktime_get();
		delay = ptb_job_rate_delay(job, now);
		if (delay)
			return delay;

		chunk = find_next_zero_bit(img->done, img->nr_chunks, job->cursor);
		if (chunk >= img->nr_chunks) {
			job->cursor = img->nr_chunks;
			break;
		}
		job->cursor = chunk + 1;
		if (ptb_copy_in_flight(img, chunk))
			continue;
		nr = ptb_job_run_length(job, chunk, img->free_slots - reserve);
		if (ptb_copy_start_run(img, chunk, &nr)) {
			job->cursor = chunk;
			return 1;
		}
		if (!nr) {
			job->cursor = chunk;
			break;
		}
		job->cursor = chunk + nr;
		ptb_job_rate_charge(job, now, (u64)nr << (img->chunk_shift + SECTOR_SHIFT));
	}
	return 0;
}

/*
 * The flush's completion.  The RCU read section keeps the job and the
 * device alive until it returns (ptb_job_remove(), ptb_cow_exit()).
 */
static void ptb_job_flush_end_io(struct bio *bio)
{
	struct ptb_job *job = bio->bi_private;
	struct ptb_device *pd = job->pd;
	int r = blk_status_to_errno(bio->bi_status);

	bio_put(bio);
	rcu_read_lock();
	WRITE_ONCE(job->flush_result, r);
	ptb_wake_worker(&pd->cow);
	ptb_io_end(&pd->cow);
	rcu_read_unlock();
}

/* Every chunk is on the target: flush it before the job may complete. */
static void ptb_job_flush(struct ptb_job *job)
{
	struct bio *bio;

	if (!ptb_job_transition(job, BIT(PTB_JOB_RUNNING), PTB_JOB_FLUSHING))
		return;
	bio = bio_alloc(job->target.bdev, 0, REQ_OP_WRITE | REQ_PREFLUSH, GFP_NOIO);
	bio->bi_end_io = ptb_job_flush_end_io;
	bio->bi_private = job;
	WRITE_ONCE(job->flush_result, 1);
	ptb_io_start(&job->pd->cow);
	submit_bio(bio);
}

/*
 * Enter final state to from state from, then give back what the job holds;
 * its entry stays until dismissed.  Nothing happens if the state changed
 * meanwhile (a cancel): the worker sees the new state next time.
 */
static void ptb_job_release(struct ptb_job *job, enum ptb_job_state from,
			    enum ptb_job_state to)
{
	struct ptb_device *pd = job->pd;
	int old = from;

	/* Only the worker releases; a cancel may have moved the job on. */
	if (!try_cmpxchg(&job->state, &old, to))
		return;
	ptb_image_set_readable(&job->img, false);
	ptb_image_unprotect(&job->img);
	ptb_image_free_buffers(&job->img);
	ptb_bdev_close(&job->target, job);
	if (to == PTB_JOB_COMPLETED)
		ptb_job_log_completion(job);
	complete_all(&job->finished);
	/* After the target is closed: whoever the event wakes may reuse it. */
	pd->notify(pd);
}

static void ptb_job_flush_done(struct ptb_job *job, int r)
{
	if (r)
		ptb_job_error_from(job, BIT(PTB_JOB_FLUSHING), PTB_SITE_FLUSH, r,
				   job->on_target_error);
	else if (job->bitmap)
		ptb_job_transition(job, BIT(PTB_JOB_FLUSHING), PTB_JOB_HANDING_OVER);
	else
		ptb_job_release(job, PTB_JOB_FLUSHING, PTB_JOB_COMPLETED);
}

/* A job that is ending, once its I/O is over: hand over, then release. */
static void ptb_job_service_ending(struct ptb_job *job, enum ptb_job_state state)
{
	static const enum ptb_job_state final[PTB_JOB_NR_STATES] = {
		[PTB_JOB_HANDING_OVER] = PTB_JOB_COMPLETED,
		[PTB_JOB_CANCELLING] = PTB_JOB_CANCELLED,
		[PTB_JOB_FAILING] = PTB_JOB_FAILED,
	};

	if (job->img.copies_in_flight || READ_ONCE(job->flush_result) == 1)
		return;
	if (READ_ONCE(job->bitmap)) {
		/*
		 * Even while the device is suspended: a cancel or a removal
		 * of a suspended device waits for it.
		 */
		queue_work(system_long_wq, &job->handover_work);
		return;
	}
	/* Views' reads admitted before the job ended wake the worker. */
	if (!ptb_image_reads_idle(&job->img))
		return;
	ptb_job_release(job, state, final[state]);
}

/*
 * Advance a running job: its type copies what is left; once all is
 * copied, the final flush.  Returns 0, or the delay in jiffies after which
 * the worker should run again.
 */
static unsigned long ptb_job_service_running(struct ptb_job *job)
{
	bool all_copied = false;
	unsigned long delay;

	if (READ_ONCE(job->pd->suspended))
		return 0;
	delay = job->type->advance(job, &all_copied);
	if (all_copied)
		ptb_job_flush(job);
	return delay;
}

/*----------------------------------------------------------------*/

/*
 * The backup type: the point-in-time image is saved to the target.
 * sync=full copies every chunk, incremental the chunks its bitmap selected
 * (the others are marked done at the start), none only what writes
 * overwrite, until it is cancelled.
 */
static u64 ptb_backup_begin(struct ptb_job *job)
{
	if (job->sync == PTB_SYNC_INCREMENTAL)
		return ptb_bitmap_select_chunks(job->bitmap);
	return job->bytes_total;
}

/* Retries, then the sweep; all copied once no chunk is left or in flight. */
static unsigned long ptb_backup_advance(struct ptb_job *job, bool *all_copied)
{
	unsigned long delay, now = jiffies;

	if (job->sync == PTB_SYNC_NONE)
		return 0;
	if (job->retry_at) {
		if (time_before(now, job->retry_at))
			return job->retry_at - now;
		job->retry_at = 0;
		job->cursor = 0;
	}

	delay = ptb_job_sweep(job);
	if (delay || job->cursor < job->img.nr_chunks || job->img.copies_in_flight)
		return delay;

	if (find_first_zero_bit(job->img.done, job->img.nr_chunks) < job->img.nr_chunks) {
		/* Chunks skipped while in flight, or failed: go round again. */
		job->cursor = 0;
		return job->retry_at ? max_t(long, 1, (long)(job->retry_at - jiffies)) : 1;
	}
	*all_copied = true;
	return 0;
}

const struct ptb_job_type ptb_backup_job = {
	.name = "backup",
	.begin = ptb_backup_begin,
	.advance = ptb_backup_advance,
};

/* Advance a job (the image's service op).  Returns 0 or a delay. */
static unsigned long ptb_job_service(struct ptb_image *img)
{
	struct ptb_job *job = container_of(img, struct ptb_job, img);
	int state = READ_ONCE(job->state), r;

	switch (state) {
	case PTB_JOB_RUNNING:
		return ptb_job_service_running(job);
	case PTB_JOB_FLUSHING:
		r = READ_ONCE(job->flush_result);
		/* Flushing admits no view read; those before it end first. */
		if (r == 1 || !ptb_image_reads_idle(&job->img))
			return 0;
		ptb_job_flush_done(job, r);
		/* Policy ignore: back to running, the flush is retried later. */
		return job->retry_at ? max_t(long, 1, (long)(job->retry_at - jiffies)) : 0;
	case PTB_JOB_HANDING_OVER:
	case PTB_JOB_CANCELLING:
	case PTB_JOB_FAILING:
		ptb_job_service_ending(job, state);
		return 0;
	default:
		return 0;
	}
}

static const struct ptb_image_ops ptb_job_image_ops = {
	.copied = ptb_job_copied,
	.failed = ptb_job_copy_failed,
	.service = ptb_job_service,
};

/*----------------------------------------------------------------*/

/* Messages.  Caller holds pd->lock. */

/*
 * Cancel a running, paused or flushing job and wait until it has released
 * its target.  -EBUSY: it is handing over, i.e. completing.
 */
int ptb_job_cancel(struct ptb_job *job)
{
	if (!ptb_job_transition(job, PTB_CANCELLABLE_STATES, PTB_JOB_CANCELLING))
		return READ_ONCE(job->state) == PTB_JOB_HANDING_OVER ? -EBUSY : -EINVAL;
	DMINFO("%s: job %s cancelled", ptb_device_name(job->pd), job->id);
	/* Copies in flight finish; then the worker releases the target. */
	wait_for_completion(&job->finished);
	return 0;
}

int ptb_job_pause(struct ptb_job *job)
{
	return ptb_job_transition(job, BIT(PTB_JOB_RUNNING), PTB_JOB_PAUSED) ?
		0 : -EINVAL;
}

int ptb_job_resume(struct ptb_job *job)
{
	if (!ptb_job_transition(job, BIT(PTB_JOB_PAUSED), PTB_JOB_RUNNING))
		return -EINVAL;
	ptb_wake_worker(&job->pd->cow);
	return 0;
}

void ptb_job_set_speed(struct ptb_job *job, u64 speed)
{
	WRITE_ONCE(job->speed, speed);
	ptb_wake_worker(&job->pd->cow);
}

static void ptb_job_remove(struct ptb_job *job)
{
	struct ptb_device *pd = job->pd;

	list_del(&job->node);
	pd->nr_jobs--;
	/* Also waits for the completions of its flush (RCU) and the worker. */
	ptb_image_unpublish(&job->img);
	cancel_work_sync(&job->handover_work);
	ptb_job_free(job);
}

int ptb_job_dismiss(struct ptb_job *job)
{
	if (ptb_job_active(job) || job->nr_views)
		return -EBUSY;
	wait_for_completion(&job->finished);
	ptb_job_remove(job);
	return 0;
}

/*
 * A view opens on a running or paused job that saves the image at its
 * point in time: sync=full or sync=none.  (An incremental job's target
 * holds only the chunks its bitmap selected.)
 */
int ptb_job_open_view(struct ptb_device *pd, const char *id, struct ptb_job **jobp,
		      char **error)
{
	struct ptb_job *job = ptb_job_find(pd, id);

	if (!job) {
		*error = "No job of that name on the ptbackup device";
		return -ENOENT;
	}
	if (!READ_ONCE(job->img.readable)) {
		*error = "The job is not running or paused: a view needs a running or paused job";
		return -EINVAL;
	}
	if (job->sync == PTB_SYNC_INCREMENTAL) {
		*error = "A view needs a sync=none or sync=full job: an incremental job's target holds only changed chunks";
		return -EINVAL;
	}
	if (ptb_image_enable_release(&job->img)) {
		*error = "Cannot allocate the view's map of released chunks";
		return -ENOMEM;
	}
	job->nr_views++;
	*jobp = job;
	return 0;
}

void ptb_job_close_view(struct ptb_job *job)
{
	lockdep_assert_held(&job->pd->lock);
	job->nr_views--;
}

/* The device's last table is going: cancel every job, wait for each. */
void ptb_jobs_cancel(struct ptb_device *pd)
{
	struct ptb_job *job;

	lockdep_assert_held(&pd->lock);
	list_for_each_entry(job, &pd->jobs, node)
		if (ptb_job_cancel(job))
			wait_for_completion(&job->finished);
}

/* The device is going away: cancel and free every job. */
void ptb_jobs_destroy(struct ptb_device *pd)
{
	struct ptb_job *job, *tmp;

	list_for_each_entry_safe(job, tmp, &pd->jobs, node) {
		if (ptb_job_cancel(job))
			wait_for_completion(&job->finished);
		ptb_job_remove(job);
	}
}

/*----------------------------------------------------------------*/

static const char *ptb_job_error_string(const struct ptb_job *job, char *buf,
					size_t len)
{
	enum ptb_error_site site = READ_ONCE(job->error_site);

	if (site == PTB_SITE_NONE)
		return "-";
	snprintf(buf, len, "%s:%d", ptb_site_names[site], READ_ONCE(job->last_error));
	return buf;
}

/*
 * Append a job to a status line (verbose = false) or to the `job list'
 * reply (verbose = true).  Returns the new length, like DMEMIT.
 */
unsigned int ptb_job_emit(const struct ptb_job *job, char *result,
			  unsigned int maxlen, unsigned int sz, bool verbose)
{
	char err[32];
	const char *error = ptb_job_error_string(job, err, sizeof(err));
	const char *state = ptb_job_state_name(READ_ONCE(job->state));
	unsigned long long done = atomic64_read(&job->bytes_done);

	if (!verbose) {
		DMEMIT(" %s %s %s %s %llu %llu %llu %s", job->id, job->type->name,
		       ptb_sync_name(job->sync), state, done,
		       (unsigned long long)job->bytes_total,
		       (unsigned long long)READ_ONCE(job->speed), error);
		return sz;
	}
	DMEMIT("%s type=%s sync=%s state=%s done=%llu total=%llu speed=%llu",
	       job->id, job->type->name, ptb_sync_name(job->sync), state, done,
	       (unsigned long long)job->bytes_total,
	       (unsigned long long)READ_ONCE(job->speed));
	DMEMIT(" zero=%llu target=%u:%u chunk=%u error=%s cbw_timeout=%u",
	       (unsigned long long)atomic64_read(&job->zero_bytes),
	       MAJOR(job->target_dev), MINOR(job->target_dev),
	       1U << job->img.chunk_shift, error, job->cbw_timeout);
	DMEMIT(" store=%s/%lu saved=%lu held=%lu released=%lu\n",
	       job->img.store.mapped ? "mapped" : "linear", job->img.store.nr_chunks,
	       READ_ONCE(job->img.store.nr_saved), READ_ONCE(job->img.store.nr_held),
	       ptb_image_nr_released(&job->img));
	return sz;
}

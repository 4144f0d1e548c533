/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup: point-in-time backups of a live block device.
 *
 * Objects and their lifetimes:
 *
 *  struct ptb_device  - one per mapped device.  Shared by every table
 *                       instance of that device, so jobs survive a table
 *                       reload.  Freed when its last table is destroyed
 *                       (dmsetup remove), which cancels the jobs first.
 *  struct ptb_target  - one per table instance (ti->private).
 *  struct ptb_job     - a backup job.  On the device's RCU job list from
 *                       `backup start' until `job dismiss' (or removal).
 *  struct ptb_copy    - one chunk being copied to one job's target, with
 *                       the writes waiting for it.
 *
 * Locking and contexts: see Documentation/ptbackup.rst, "Design".
 *  - pd->lock (mutex) serialises messages, job list changes and reloads.
 *  - pd->bio_lock (spinlock, irq-safe) guards the deferred bio lists and the
 *    completed-copy list.
 *  - Everything else about copies (the in-flight table, slots, cursors,
 *    job state transitions other than pause/resume) belongs to the worker,
 *    a single-threaded workqueue, and needs no lock.
 *  - The map path only reads: the job list under RCU, job->state and the
 *    per-job done bitmap.  A done bit is set only after the chunk's old data
 *    is on the target, and never cleared while the job is active.
 */
#ifndef DM_PTBACKUP_H
#define DM_PTBACKUP_H

#include <linux/bio.h>
#include <linux/device-mapper.h>
#include <linux/dm-io.h>
#include <linux/hashtable.h>
#include <linux/list.h>
#include <linux/mempool.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "compat.h"

#define PTB_JOB_ID_MAX		32	/* == PTB_BITMAP_NAME_MAX */
#define PTB_MAX_JOBS		16
#define PTB_MIN_CHUNK_SECTORS	8
#define PTB_MAX_CHUNK_SECTORS	2048
#define PTB_DEFAULT_COPY_SLOTS	16
#define PTB_MAX_COPY_SLOTS	256
#define PTB_COPY_HASH_BITS	10

/*
 * A job's life (ptb-job.c has the diagram).  Running, paused, flushing and
 * handing-over jobs are active: they protect the chunks they have not
 * copied.  Cancelling and failing jobs wait for their I/O to end, hand
 * their bitmap back and release their target; completed, cancelled and
 * failed jobs have released everything.  Status shows flushing and
 * handing-over as "running", cancelling as "cancelled", failing as
 * "failed".
 */
enum ptb_job_state {
	PTB_JOB_RUNNING,	/* the sweep copies (sync=full, incremental) */
	PTB_JOB_PAUSED,		/* only copy-before-write */
	PTB_JOB_FLUSHING,	/* all copied, final flush of the target */
	PTB_JOB_HANDING_OVER,	/* flushed, bitmap hand-over (success) */
	PTB_JOB_CANCELLING,
	PTB_JOB_FAILING,
	PTB_JOB_COMPLETED,
	PTB_JOB_CANCELLED,
	PTB_JOB_FAILED,
	PTB_JOB_NR_STATES
};

enum ptb_sync_mode {
	PTB_SYNC_FULL,
	PTB_SYNC_NONE,
	PTB_SYNC_INCREMENTAL,
};

/* What to do when background copying hits an error. */
enum ptb_error_action {
	PTB_ERR_REPORT,		/* fail the job */
	PTB_ERR_IGNORE,		/* retry the chunk later */
	PTB_ERR_STOP,		/* pause the job until `job resume' */
};

/* What to do when copy-before-write for a user's write fails. */
enum ptb_cbw_action {
	PTB_CBW_BREAK_SNAPSHOT,		/* fail the job, let the write proceed */
	PTB_CBW_BREAK_GUEST_WRITE,	/* fail the write, keep the job */
};

/* Where the last error of a job happened (status field). */
enum ptb_error_site {
	PTB_SITE_NONE,
	PTB_SITE_SOURCE,
	PTB_SITE_TARGET,
	PTB_SITE_CBW,
	PTB_SITE_FLUSH,
};

struct ptb_device;
struct ptb_bitmap;
struct ptb_metadata;
struct ptb_tracking_load;

struct ptb_job_params {
	char id[PTB_JOB_ID_MAX + 1];
	const char *target_path;
	enum ptb_sync_mode sync;
	const char *bitmap;		/* NULL: none */
	int bitmap_mode;		/* enum ptb_bitmap_mode */
	u64 speed;			/* bytes/s, 0 = unlimited */
	enum ptb_error_action on_source_error;
	enum ptb_error_action on_target_error;
	enum ptb_cbw_action on_cbw_error;
};

struct ptb_job {
	struct list_head node;		/* pd->jobs, RCU */
	struct ptb_device *pd;
	char id[PTB_JOB_ID_MAX + 1];
	enum ptb_sync_mode sync;
	enum ptb_error_action on_source_error;
	enum ptb_error_action on_target_error;
	enum ptb_cbw_action on_cbw_error;
	u64 speed;			/* WRITE_ONCE/READ_ONCE */
	struct ptb_bitmap *bitmap;	/* busy with this job; NULL once handed back */
	int bitmap_mode;		/* enum ptb_bitmap_mode */

	/* Read by the map path. */
	int state;			/* enum ptb_job_state, cmpxchg */
	unsigned int chunk_shift;	/* chunk size in sectors, log2 */
	unsigned long nr_chunks;
	unsigned long *done;		/* chunk's old data is on the target */

	sector_t dev_sectors;		/* size of the device at start */
	struct block_device *origin;
	struct ptb_bdev target;
	dev_t target_dev;

	/* Worker only. */
	unsigned long cursor;		/* next chunk for the background sweep */
	unsigned int nr_slots;
	unsigned int free_slots;
	void **slot_buf;		/* free_slots buffers at the front */
	unsigned int copies_in_flight;	/* entries in the copy table */
	struct list_head slot_waiters;	/* copies waiting for a buffer */
	ktime_t rate_next;		/* background may issue from then on */
	unsigned long retry_at;		/* jiffies, 0: none (policy "ignore") */
	bool no_write_zeroes;		/* the target rejected write-zeroes */
	int flush_result;		/* 1 in flight, else 0 or -errno */

	/* Bitmap hand-over when the job ends; under the write hold. */
	struct work_struct handover_work;

	/* Progress, read by status. */
	atomic64_t bytes_done;
	atomic64_t zero_bytes;
	u64 bytes_total;
	enum ptb_error_site error_site;
	int last_error;

	struct completion finished;	/* released after a final state */
};

struct ptb_device {
	struct list_head node;		/* global device list */
	struct mapped_device *md;
	unsigned int nr_targets;	/* table instances, under ptb_devices_lock */
	struct ptb_target *live;	/* instance that gets events; event_lock */
	struct mutex event_lock;

	struct mutex lock;		/* messages, job list changes */
	struct list_head jobs;
	unsigned int nr_jobs;

	/* Dirty bitmaps, and the metadata that keeps them. */
	struct ptb_metadata *pmd;	/* NULL without a metadata device */
	dev_t metadata_dev;
	struct list_head bitmaps;	/* RCU; changes under lock */
	unsigned int nr_bitmaps;
	struct bio_list mark_bios;	/* bio_lock */
	struct workqueue_struct *mark_wq;
	struct delayed_work marker;	/* intent log and bitmap commits */
	atomic_t bitmaps_lost;		/* reported once */

	/*
	 * The write-intent log (ptb-bitmap.c).  intent: regions whose intent
	 * bit is durable; the map path reads it.  touched: written since the
	 * last commit.  Everything else belongs to the marker.
	 */
	unsigned long *intent;
	unsigned long *touched;
	unsigned long *intent_disk;	/* the log as on disk */
	unsigned long *intent_clearing;	/* scratch */
	unsigned long nr_regions;
	unsigned int region_shift;	/* log2 sectors */
	unsigned long next_commit;	/* jiffies */
	bool clean_request;		/* commit all, clear the log */

	/* Write accounting: the point in time of a new job. */
	struct mutex hold_lock;		/* one hold at a time */
	struct task_struct *hold_owner;	/* under hold_lock */
	unsigned int hold_depth;
	unsigned int hold_noio;		/* memalloc_noio_save() of the holder */
	atomic_t writes_in_flight;
	int hold_writes;		/* smp_load_acquire/smp_store_release */
	wait_queue_head_t writes_drained;

	spinlock_t bio_lock;		/* the three lists below */
	struct bio_list held_bios;	/* arrived while hold_writes was set */
	struct bio_list deferred_bios;	/* writes to check against the jobs */
	struct list_head completed_copies;

	/* Copies and final flushes in flight; postsuspend waits for none. */
	atomic_t io_in_flight;
	wait_queue_head_t io_idle;
	bool suspended;			/* READ_ONCE: no sweep, no new flush */
	/* A loaded, not yet resumed table with another origin; lock. */
	struct ptb_target *origin_change;

	struct workqueue_struct *wq;
	struct work_struct worker;
	struct delayed_work waker;	/* rate limit, retries */

	struct dm_io_client *io_client;
	mempool_t copy_pool;
	DECLARE_HASHTABLE(copies, PTB_COPY_HASH_BITS);
};

struct ptb_target {
	struct dm_target *ti;
	struct ptb_device *pd;
	struct dm_dev *origin;
	struct dm_dev *metadata;	/* NULL for `-' */
	sector_t chunk_sectors;
	unsigned int chunk_shift;
	unsigned long nr_chunks;
	unsigned int copy_slots;
	bool copy_slots_set:1;
	/* Metadata opened by the constructor, attached at preresume. */
	struct ptb_tracking_load *pending_md;
};

/* Per-bio data. */
struct ptb_bio {
	bool counted;			/* in pd->writes_in_flight */
};

static inline unsigned long ptb_sector_to_chunk(sector_t sector,
						unsigned int chunk_shift)
{
	return sector >> chunk_shift;
}

static inline const char *ptb_device_name(struct ptb_device *pd)
{
	return dm_disk(pd->md)->disk_name;
}

/* ptb-target.c */
void ptb_device_event(struct ptb_device *pd);

/* ptb-cow.c: copy-before-write engine, worker context unless noted */
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
void ptb_release_writes(struct ptb_device *pd);		/* any context */
void ptb_write_done(struct ptb_device *pd, struct ptb_bio *pb);	/* any context */
void ptb_do_worker(struct work_struct *ws);
void ptb_do_waker(struct work_struct *ws);
int ptb_copy_start(struct ptb_job *job, unsigned long chunk);	/* worker */
bool ptb_copy_in_flight(struct ptb_job *job, unsigned long chunk); /* worker */

/* ptb-job.c */
struct ptb_job *ptb_job_find(struct ptb_device *pd, const char *id);
int ptb_job_start(struct ptb_target *pt, const struct ptb_job_params *p);
int ptb_job_check_target(struct ptb_target *pt, const char *id,
			 const char *path);
int ptb_job_dismiss(struct ptb_job *job);
void ptb_jobs_destroy(struct ptb_device *pd);
bool ptb_job_active(const struct ptb_job *job);		/* any context */
void ptb_job_copy_done(struct ptb_job *job, unsigned long chunk,
		       sector_t len, bool zero);			/* worker */
void ptb_job_error(struct ptb_job *job, enum ptb_error_site site, int err,
		   enum ptb_error_action action);		/* worker */
void ptb_job_fail(struct ptb_job *job, enum ptb_error_site site, int err);
void ptb_job_record_error(struct ptb_job *job, enum ptb_error_site site,
			  int err);					/* any context */
void ptb_job_undo_start(struct ptb_job *job);		/* write hold owned */
void ptb_io_start(struct ptb_device *pd);			/* worker */
void ptb_io_end(struct ptb_device *pd);				/* any context */
unsigned long ptb_job_service(struct ptb_job *job);		/* worker */
int ptb_job_cancel(struct ptb_job *job);			/* may sleep */
int ptb_job_pause(struct ptb_job *job);
int ptb_job_resume(struct ptb_job *job);
void ptb_job_set_speed(struct ptb_job *job, u64 speed);
const char *ptb_job_state_name(enum ptb_job_state s);
const char *ptb_job_state_log_name(enum ptb_job_state s);
const char *ptb_sync_name(enum ptb_sync_mode m);
unsigned int ptb_job_emit(const struct ptb_job *job, char *result,
			  unsigned int maxlen, unsigned int sz, bool verbose);

/* ptb-message.c */
int ptb_message(struct ptb_target *pt, unsigned int argc, char **argv,
		char *result, unsigned int maxlen);
int ptb_parse_size(const char *s, u64 *out);

#endif /* DM_PTBACKUP_H */

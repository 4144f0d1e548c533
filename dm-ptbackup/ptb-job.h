/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup jobs (ptb-job.c): a backup job, its state machine (the
 * diagram is at the top of ptb-job.c), the sweep, error policies, the final
 * flush, the bitmap hand-over.
 *
 * Contexts: ptb_job_active() any context (the map path); functions marked
 * "worker" only from the copy engine's worker; the messages (start,
 * cancel, pause, resume, dismiss) with pd->lock held, may sleep.
 */
#ifndef DM_PTBACKUP_JOB_H
#define DM_PTBACKUP_JOB_H

#include "ptb.h"
#include "ptb-bitmap.h"
#include "ptb-cow.h"

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

struct ptb_job;

/*
 * What one type of job does.  The state machine, error policies, rate
 * limit, final flush, bitmap hand-over and release are common to every
 * type; the type decides what the job copies.
 */
struct ptb_job_type {
	const char *name;		/* in log lines */
	/*
	 * At the job's point in time, writes held, its bitmap (if any)
	 * frozen: returns the bytes the job will copy.  Must not sleep on I/O.
	 */
	u64 (*begin)(struct ptb_job *job);
	/*
	 * Worker, the job running and the device not suspended: issue the
	 * next copies.  Returns 0 or a delay in jiffies.  Sets *all_copied
	 * once nothing is left to copy or in flight: the job then flushes
	 * its target and ends.
	 */
	unsigned long (*advance)(struct ptb_job *job, bool *all_copied);
};

/* Saves the point-in-time image: sync=full, incremental or none. */
extern const struct ptb_job_type ptb_backup_job;

struct ptb_job_params {
	const struct ptb_job_type *type;
	char id[PTB_JOB_ID_MAX + 1];
	const char *target_path;
	enum ptb_sync_mode sync;
	const char *bitmap;		/* NULL: none */
	int bitmap_mode;		/* enum ptb_bitmap_mode */
	u64 speed;			/* bytes/s, 0 = unlimited */
	enum ptb_error_action on_source_error;
	enum ptb_error_action on_target_error;
	enum ptb_cbw_action on_cbw_error;
	unsigned int cbw_timeout;	/* seconds, 0: none */
};

struct ptb_job {
	struct list_head node;		/* pd->jobs; pd->lock */
	struct ptb_device *pd;
	const struct ptb_job_type *type;
	char id[PTB_JOB_ID_MAX + 1];
	enum ptb_sync_mode sync;
	enum ptb_error_action on_source_error;
	enum ptb_error_action on_target_error;
	enum ptb_cbw_action on_cbw_error;
	unsigned int cbw_timeout;	/* seconds, 0: none */
	u64 speed;			/* WRITE_ONCE/READ_ONCE */
	struct ptb_bitmap *bitmap;	/* busy with this job; NULL once handed back */
	struct ptb_bitmap_user bitmap_user;	/* what the bitmap sees of it */

	int state;			/* enum ptb_job_state, cmpxchg */
	/* What the copy engine keeps: done chunks, buffers, copies. */
	struct ptb_image img;
	struct ptb_bdev target;
	dev_t target_dev;

	/* Worker only. */
	unsigned long cursor;		/* next chunk for the background sweep */
	ktime_t rate_next;		/* background may issue from then on */
	unsigned long retry_at;		/* jiffies, 0: none (policy "ignore") */
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
	unsigned int nr_views;		/* views open on it; pd->lock */
};

struct ptb_job *ptb_job_find(struct ptb_device *pd, const char *id);
int ptb_job_start(struct ptb_target *pt, const struct ptb_job_params *p);
int ptb_job_check_target(struct ptb_target *pt, const char *verb,
			 const char *id, const char *path);
int ptb_job_dismiss(struct ptb_job *job);
int ptb_job_open_view(struct ptb_device *pd, const char *id, struct ptb_job **jobp,
		      char **error);
void ptb_job_close_view(struct ptb_job *job);
void ptb_jobs_cancel(struct ptb_device *pd);
void ptb_jobs_destroy(struct ptb_device *pd);
bool ptb_job_released(const struct ptb_job *job);		/* any context */
void ptb_job_undo_start(struct ptb_job *job);		/* write hold owned */
int ptb_job_cancel(struct ptb_job *job);			/* may sleep */
int ptb_job_pause(struct ptb_job *job);
int ptb_job_resume(struct ptb_job *job);
void ptb_job_set_speed(struct ptb_job *job, u64 speed);
const char *ptb_job_state_name(enum ptb_job_state s);
const char *ptb_job_state_log_name(enum ptb_job_state s);
const char *ptb_sync_name(enum ptb_sync_mode m);
unsigned int ptb_job_emit(const struct ptb_job *job, char *result,
			  unsigned int maxlen, unsigned int sz, bool verbose);

#endif /* DM_PTBACKUP_JOB_H */

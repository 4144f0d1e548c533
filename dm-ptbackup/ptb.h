/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup: point-in-time backups of a live block device.
 *
 * What every layer shares: limits, the job options, per-bio data.  Each
 * layer's API and state are in its own header (ptb-metadata.h, ptb-gate.h,
 * ptb-bitmap.h, ptb-cow.h, ptb-job.h, ptb-device.h, ptb-message.h).
 *
 * Objects and their lifetimes:
 *
 *  struct ptb_device  - one per mapped device.  Shared by every table
 *                       instance of that device, so jobs survive a table
 *                       reload.  Freed when its last table is destroyed
 *                       (dmsetup remove), which cancels the jobs first.
 *  struct ptb_target  - one per table instance (ti->private).
 *  struct ptb_job     - a backup job.  On the device's job list from
 *                       `backup start' until `job dismiss' (or removal).
 *  struct ptb_gate, ptb_tracking, ptb_cow - the state of the gate, of
 *                       tracking and of the copy engine, embedded in the
 *                       device object.
 *  struct ptb_image   - a job's point-in-time image as the copy engine
 *                       sees it; on the engine's RCU image list as long.
 *  struct ptb_copy    - one chunk being copied to one image's target, with
 *                       the writes waiting for it.
 *
 * Locking and contexts: Documentation/ptbackup.rst, "Locking and contexts".
 *  - pd->lock (mutex) serialises messages, job and bitmap list changes,
 *    status, the constructor's checks and preresume.
 *  - pd->gate.hold_lock (mutex) belongs to the owner of the write hold.
 *  - One irq-safe spinlock per layer guards that layer's bio lists:
 *    pd->gate.lock (held writes), pd->trk.mark_lock (writes waiting for
 *    their intent), pd->cow.lock (deferred writes, completed copies).
 *  - The copy table, slots, cursors and copies in flight belong to the
 *    worker, a single-threaded workqueue, and need no lock.  Job states
 *    change by cmpxchg only.
 *  - The map path only reads: the image list under RCU, an image's
 *    protected flag and done bitmap.  A done bit is set only after the
 *    chunk's old data is on the target, and never cleared.
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
 * The most chunks a device and granules a bitmap may have: the kernel's
 * bitmap helpers (bitmap_fill(), bitmap_weight(), ...) take int sizes.
 */
#define PTB_MAX_BITS		INT_MAX

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

/* The longest cbw_timeout, in seconds. */
#define PTB_CBW_TIMEOUT_MAX	3600

/* Where the last error of a job happened (status field). */
enum ptb_error_site {
	PTB_SITE_NONE,
	PTB_SITE_SOURCE,
	PTB_SITE_TARGET,
	PTB_SITE_CBW,
	PTB_SITE_FLUSH,
};

struct ptb_device;
struct ptb_target;
struct ptb_job;
struct ptb_mirror;
struct ptb_bitmap;
struct ptb_metadata;
struct ptb_tracking_load;

/* A write on its way to a mirror job's target and the origin (ptb-mirror.c). */
struct ptb_mirror_io {
	struct ptb_mirror *m;
	struct list_head node;		/* m->writes while in flight; m->lock */
	sector_t sector;
	sector_t end;
	atomic_t pending;		/* clones not yet ended */
	blk_status_t origin_status;
	blk_status_t target_status;
	bool tracked;			/* on m->writes */
	bool mirrored;			/* sent to the target too */
	u8 route;			/* enum ptb_mirror_route, when admitted */
};

/* Per-bio data. */
struct ptb_bio {
	bool counted;			/* in pd->writes_in_flight */
	struct ptb_mirror_io mirror;	/* a write while a mirror job runs */
};

static inline unsigned long ptb_sector_to_chunk(sector_t sector,
						unsigned int chunk_shift)
{
	return sector >> chunk_shift;
}

#endif /* DM_PTBACKUP_H */

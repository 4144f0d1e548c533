/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup device object (ptb-device.c): one per mapped device,
 * shared by its table instances; jobs, bitmaps, the metadata and the
 * write-hold state live in it.  A table instance (struct ptb_target)
 * attaches in its constructor and detaches in its destructor.
 *
 * Contexts: attach, detach, the suspend and resume hooks run in process
 * context and may sleep.  Lower layers raise events through pd->notify
 * and hand writes back through pd->write_ops, so they call nothing here.
 */
#ifndef DM_PTBACKUP_DEVICE_H
#define DM_PTBACKUP_DEVICE_H

#include "ptb.h"

/*
 * What the lower layers of the write path hand back up; the target
 * registers them (ptb_device_attach()).
 */
struct ptb_write_ops {
	/* Writes parked by a hold that was just lifted (process context). */
	void (*released)(struct ptb_device *pd, struct bio_list *bios);
	/* A hold was lifted (process context). */
	void (*hold_released)(struct ptb_device *pd);
	/* A write's intent region is logged: on past tracking (work item). */
	void (*marked)(struct ptb_device *pd, struct bio *bio);
};

struct ptb_device {
	struct list_head node;		/* global device list */
	struct mapped_device *md;
	const struct ptb_write_ops *write_ops;
	/* Raise a device-mapper event (set by ptb-device.c; may sleep). */
	void (*notify)(struct ptb_device *pd);
	unsigned int nr_targets;	/* table instances, under ptb_devices_lock */
	struct ptb_target *live;	/* instance that gets events; event_lock */
	struct mutex event_lock;

	struct mutex lock;		/* messages, job list changes */
	struct list_head jobs;
	unsigned int nr_jobs;
	/* The jobs' images, read by the map path and the worker (RCU). */
	struct list_head images;

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

static inline const char *ptb_device_name(struct ptb_device *pd)
{
	return dm_disk(pd->md)->disk_name;
}

int ptb_device_attach(struct ptb_target *pt, const struct ptb_write_ops *ops,
		      char **error);
void ptb_device_detach(struct ptb_target *pt);
void ptb_device_presuspend(struct ptb_device *pd);
void ptb_device_presuspend_undo(struct ptb_device *pd);
void ptb_device_postsuspend(struct ptb_device *pd);
int ptb_device_preresume(struct ptb_target *pt);
void ptb_device_resume(struct ptb_target *pt);

#endif /* DM_PTBACKUP_DEVICE_H */

/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup device object (ptb-device.c): one per mapped device,
 * shared by its table instances; jobs, bitmaps, the metadata and the
 * write-hold state live in it.  A table instance (struct ptb_target)
 * attaches in its constructor and detaches in its destructor.
 *
 * Contexts: attach, detach, the suspend and resume hooks run in process
 * context and may sleep.  Lower layers raise events and hand writes back
 * through the callbacks of their own state (gate, tracking, cow), which
 * this object wires to pd->write_ops and pd->notify; they call nothing
 * here and see nothing of this struct.
 */
#ifndef DM_PTBACKUP_DEVICE_H
#define DM_PTBACKUP_DEVICE_H

#include "ptb.h"
#include "ptb-bitmap.h"
#include "ptb-cow.h"
#include "ptb-gate.h"

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
	/* A write the copy engine let go: on to the devices (its worker). */
	void (*submit)(struct ptb_device *pd, struct bio *bio);
};

/*
 * The per-device object.  Each lower layer keeps its own state in its own
 * struct (gate, tracking, cow) and sees nothing else of this one; the
 * device wires their callbacks up to write_ops and notify.
 */
struct ptb_device {
	struct list_head node;		/* global device list */
	struct mapped_device *md;
	const struct ptb_write_ops *write_ops;
	/* Raise a device-mapper event (may sleep). */
	void (*notify)(struct ptb_device *pd);
	unsigned int nr_targets;	/* table instances, under ptb_devices_lock */
	/*
	 * Views holding the object, under ptb_devices_lock.  Once the last
	 * table has gone, the jobs are cancelled and the metadata closed;
	 * the object (jobs, copy engine) stays until the last view goes.
	 */
	unsigned int nr_views;
	struct ptb_target *live;	/* instance that gets events; event_lock */
	struct mutex event_lock;

	struct mutex lock;		/* messages, job list changes */
	struct list_head jobs;
	struct list_head mirrors;	/* mirror jobs (ptb-mirror.c) */
	unsigned int nr_jobs;		/* backup and mirror jobs */
	/* The active mirror job: the write path's (RCU), set under lock. */
	struct ptb_mirror __rcu *mirror;

	struct ptb_gate gate;		/* write accounting, the write hold */
	struct ptb_tracking trk;	/* dirty bitmaps, metadata, intent log */
	struct ptb_cow cow;		/* images, copies, the worker */

	bool suspended;			/* READ_ONCE: no sweep, no new flush */
	/* A loaded, not yet resumed table with another origin; lock. */
	struct ptb_target *origin_change;
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
/* A view's hold on the ptbackup device of block device dev; NULL: none. */
struct ptb_device *ptb_device_get(dev_t dev);
void ptb_device_put(struct ptb_device *pd);
void ptb_device_presuspend(struct ptb_device *pd);
void ptb_device_presuspend_undo(struct ptb_device *pd);
void ptb_device_postsuspend(struct ptb_device *pd);
int ptb_device_preresume(struct ptb_target *pt);
void ptb_device_resume(struct ptb_target *pt);

#endif /* DM_PTBACKUP_DEVICE_H */

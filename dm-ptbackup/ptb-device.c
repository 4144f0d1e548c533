// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup device object: one per mapped device, shared by its table
 * instances so that jobs and bitmaps survive reloads.  Attaching a table
 * (constructor) changes nothing the live device uses; preresume makes the
 * table's metadata and size the device's; suspend quiesces the jobs.
 */

#include <linux/slab.h>

#include "ptb-device.h"
#include "ptb-bitmap.h"
#include "ptb-cow.h"
#include "ptb-gate.h"
#include "ptb-job.h"
#include "ptb-metadata.h"
#include "ptb-mirror.h"

#define DM_MSG_PREFIX "ptbackup"

static LIST_HEAD(ptb_devices);
static DEFINE_MUTEX(ptb_devices_lock);
/*
 * Serialises the loads, attachments and final closes of metadata devices,
 * so that a load never overlaps another's writes to the same device.
 * Taken before ptb_devices_lock and pd->lock.
 */
static DEFINE_MUTEX(ptb_metadata_lock);

/*----------------------------------------------------------------*/

/* The per-device object, shared by the device's table instances. */

static void ptb_device_event(struct ptb_device *pd)
{
	mutex_lock(&pd->event_lock);
	if (pd->live)
		dm_table_event(pd->live->ti->table);
	mutex_unlock(&pd->event_lock);
}

/* The lower layers' callbacks, handed on to the target's write_ops. */
static void ptb_gate_released(struct ptb_gate *g, struct bio_list *bios)
{
	struct ptb_device *pd = container_of(g, struct ptb_device, gate);

	pd->write_ops->released(pd, bios);
}

static void ptb_gate_hold_released(struct ptb_gate *g)
{
	struct ptb_device *pd = container_of(g, struct ptb_device, gate);

	pd->write_ops->hold_released(pd);
}

static void ptb_tracking_notify(struct ptb_tracking *trk)
{
	struct ptb_device *pd = container_of(trk, struct ptb_device, trk);

	pd->notify(pd);
}

static void ptb_tracking_marked(struct ptb_tracking *trk, struct bio *bio)
{
	struct ptb_device *pd = container_of(trk, struct ptb_device, trk);

	pd->write_ops->marked(pd, bio);
}

static void ptb_cow_submit_write(struct ptb_cow *cow, struct bio *bio)
{
	struct ptb_device *pd = container_of(cow, struct ptb_device, cow);

	pd->write_ops->submit(pd, bio);
}

static const struct ptb_tracking_ops ptb_device_tracking_ops = {
	.notify = ptb_tracking_notify,
	.marked = ptb_tracking_marked,
};

static struct ptb_device *ptb_device_lookup(struct mapped_device *md)
{
	struct ptb_device *pd;

	lockdep_assert_held(&ptb_devices_lock);
	list_for_each_entry(pd, &ptb_devices, node)
		if (pd->md == md)
			return pd;
	return NULL;
}

static struct ptb_device *ptb_device_create(struct mapped_device *md,
					    const struct ptb_write_ops *ops)
{
	struct ptb_device *pd;

	pd = kzalloc(sizeof(*pd), GFP_KERNEL);
	if (!pd)
		return NULL;
	pd->md = md;
	pd->write_ops = ops;
	pd->notify = ptb_device_event;
	mutex_init(&pd->lock);
	mutex_init(&pd->event_lock);
	INIT_LIST_HEAD(&pd->jobs);
	INIT_LIST_HEAD(&pd->mirrors);
	if (ptb_gate_init(&pd->gate, ptb_gate_released, ptb_gate_hold_released))
		goto bad_gate;
	if (ptb_bitmaps_init(&pd->trk, &ptb_device_tracking_ops,
			     dm_disk(md)->disk_name, &pd->lock, &pd->gate))
		goto bad_bitmaps;
	if (ptb_cow_init(&pd->cow, dm_disk(md)->disk_name, &pd->lock))
		goto bad_bitmaps;
	pd->cow.submit_write = ptb_cow_submit_write;
	list_add(&pd->node, &ptb_devices);
	return pd;

bad_bitmaps:
	ptb_bitmaps_exit(&pd->trk);
	ptb_gate_exit(&pd->gate);
bad_gate:
	kfree(pd);
	return NULL;
}

/* The last table is going: no job runs on, the metadata is closed. */
static void ptb_device_shutdown(struct ptb_device *pd)
{
	mutex_lock(&pd->lock);
	ptb_mirrors_cancel(pd);
	ptb_jobs_cancel(pd);
	mutex_unlock(&pd->lock);
	ptb_bitmaps_exit(&pd->trk);
	if (pd->trk.pmd)
		ptb_metadata_close(pd->trk.pmd);
	pd->trk.pmd = NULL;
}

/* Nothing holds the object any more. */
static void ptb_device_free(struct ptb_device *pd)
{
	mutex_lock(&pd->lock);
	ptb_mirrors_destroy(pd);
	ptb_jobs_destroy(pd);
	mutex_unlock(&pd->lock);
	ptb_cow_exit(&pd->cow);
	mutex_destroy(&pd->lock);
	mutex_destroy(&pd->event_lock);
	ptb_gate_exit(&pd->gate);
	kfree(pd);
}

static void ptb_device_destroy(struct ptb_device *pd)
{
	ptb_device_shutdown(pd);
	ptb_device_free(pd);
}

struct ptb_device *ptb_device_get(dev_t dev)
{
	struct ptb_device *pd, *found = NULL;

	mutex_lock(&ptb_devices_lock);
	list_for_each_entry(pd, &ptb_devices, node) {
		if (disk_devt(dm_disk(pd->md)) == dev) {
			found = pd;
			pd->nr_views++;
			break;
		}
	}
	mutex_unlock(&ptb_devices_lock);
	return found;
}

void ptb_device_put(struct ptb_device *pd)
{
	bool last;

	mutex_lock(&ptb_devices_lock);
	last = !--pd->nr_views && !pd->nr_targets;
	mutex_unlock(&ptb_devices_lock);
	if (last)
		ptb_device_free(pd);
}

/*
 * A table with another origin may be loaded only while no job is active,
 * and no job may start until it is resumed or cleared: a job copies from
 * the origin it started on.
 */
/* Does a job not yet released copy from another origin than bdev? */
static bool ptb_device_jobs_elsewhere(struct ptb_device *pd,
				      struct block_device *bdev)
{
	struct ptb_job *job;

	lockdep_assert_held(&pd->lock);
	list_for_each_entry(job, &pd->jobs, node)
		if (!ptb_job_released(job) && job->img.origin != bdev)
			return true;
	return false;
}

static int ptb_device_check_origin(struct ptb_device *pd, struct ptb_target *pt,
				   char **error)
{
	struct ptb_target *live = pd->live;

	if (ptb_device_jobs_elsewhere(pd, pt->origin->bdev)) {
		*error = "Cannot change the origin device while a backup job is running";
		return -EBUSY;
	}
	if (ptb_mirrors_elsewhere(pd, pt->origin->bdev, pt->ti->len)) {
		*error = "Cannot change the origin device or the size while a mirror job is active";
		return -EBUSY;
	}
	if (live && live->origin->bdev != pt->origin->bdev)
		pd->origin_change = pt;
	return 0;
}

/*
 * The metadata device is opened once per device: the constructor of the
 * first table that names it loads it, that table's preresume attaches it
 * (ptb_device_attach_metadata()).  Later tables must name the same one.
 * A load reads the whole metadata and may write it (format, resize, intent
 * replay), so it runs under ptb_metadata_lock only, not under
 * ptb_devices_lock or pd->lock: a slow metadata device delays other
 * metadata loads, attachments and closes, nothing else.
 */
static bool ptb_device_needs_metadata(struct mapped_device *md)
{
	struct ptb_device *pd;
	bool needs;

	lockdep_assert_held(&ptb_metadata_lock);
	mutex_lock(&ptb_devices_lock);
	pd = ptb_device_lookup(md);
	/* trk.pmd is set only under ptb_metadata_lock. */
	needs = !pd || !pd->trk.pmd;
	mutex_unlock(&ptb_devices_lock);
	return needs;
}

static int ptb_device_check_metadata(struct ptb_device *pd,
				     struct ptb_target *pt, char **error)
{
	dev_t dev = pt->metadata ? pt->metadata->bdev->bd_dev : 0;

	if (pd->trk.pmd) {
		if (dev != pd->trk.metadata_dev) {
			*error = "Cannot change the metadata device on reload";
			return -EINVAL;
		}
		if (pt->ti->len > ptb_metadata_dev_sectors(pd->trk.pmd) &&
		    ptb_has_persistent(&pd->trk)) {
			*error = "Device is larger than its persistent bitmaps cover";
			return -EINVAL;
		}
		return 0;
	}
	if (!dev)
		return 0;
	return ptb_tracking_check_names(&pd->trk, pt->pending_md, error);
}

/* Preresume: the metadata this table loaded becomes the device's. */
static int ptb_device_attach_metadata(struct ptb_device *pd,
				      struct ptb_target *pt)
{
	char *error = NULL;
	int r;

	if (!pt->pending_md)
		return 0;
	lockdep_assert_held(&ptb_metadata_lock);
	if (WARN_ON_ONCE(pd->trk.pmd))
		return -EINVAL;
	r = ptb_tracking_attach(&pd->trk, pt->pending_md, pt->metadata->bdev->bd_dev,
				&error);
	if (r) {
		DMERR("%s: cannot attach the metadata device: %s",
		      ptb_device_name(pd), error);
		return r;
	}
	pt->pending_md = NULL;
	return 0;
}

/*
 * Find or create the device's object and attach the table to it, if the
 * table fits the device.  Nothing the live device uses changes here.
 */
static int ptb_device_join(struct ptb_target *pt, struct mapped_device *md,
			   const struct ptb_write_ops *ops, char **error)
{
	struct ptb_target *prev_change;
	struct ptb_device *pd;
	bool created = false;
	int r;

	mutex_lock(&ptb_devices_lock);
	pd = ptb_device_lookup(md);
	if (!pd) {
		pd = ptb_device_create(md, ops);
		if (!pd) {
			*error = "Cannot allocate device state";
			r = -ENOMEM;
			goto out;
		}
		created = true;
	}
	mutex_lock(&pd->lock);
	prev_change = pd->origin_change;
	r = ptb_device_check_origin(pd, pt, error);
	if (!r)
		r = ptb_device_check_metadata(pd, pt, error);
	/* On error the table loaded before this one is still there. */
	if (r)
		pd->origin_change = prev_change;
	mutex_unlock(&pd->lock);
	if (r) {
		if (created) {
			list_del(&pd->node);
			ptb_device_destroy(pd);
		}
		goto out;
	}
	pd->nr_targets++;
	pt->pd = pd;
	mutex_lock(&pd->event_lock);
	if (!pd->live)
		pd->live = pt;
	mutex_unlock(&pd->event_lock);
out:
	mutex_unlock(&ptb_devices_lock);
	return r;
}

/*
 * The constructor: load the metadata the table names if the device has
 * none attached yet, then join the device.  A load that is not attached
 * is given back after every lock is dropped.
 */
int ptb_device_attach(struct ptb_target *pt, const struct ptb_write_ops *ops,
		      char **error)
{
	struct mapped_device *md = dm_table_get_md(pt->ti->table);
	int r = 0;

	if (pt->metadata) {
		mutex_lock(&ptb_metadata_lock);
		if (ptb_device_needs_metadata(md))
			r = ptb_tracking_load(pt->metadata->bdev, pt->ti->len,
					      dm_disk(md)->disk_name,
					      &pt->pending_md, error);
	}
	if (!r)
		r = ptb_device_join(pt, md, ops, error);
	if (pt->metadata)
		mutex_unlock(&ptb_metadata_lock);
	if (r && pt->pending_md) {
		ptb_tracking_unload(pt->pending_md);
		pt->pending_md = NULL;
	}
	return r;
}

void ptb_device_detach(struct ptb_target *pt)
{
	struct ptb_device *pd = pt->pd;
	bool last, closing_md;

	/* A table that was never resumed gives back what it loaded. */
	mutex_lock(&pd->lock);
	if (pd->origin_change == pt)
		pd->origin_change = NULL;
	/* Under pd->lock too: status and bitmap messages read pd->live. */
	mutex_lock(&pd->event_lock);
	if (pd->live == pt)
		pd->live = NULL;
	mutex_unlock(&pd->event_lock);
	mutex_unlock(&pd->lock);
	if (pt->pending_md)
		ptb_tracking_unload(pt->pending_md);
	pt->pending_md = NULL;

	/*
	 * The last table closes the metadata: no load of the same device
	 * may read it meanwhile.  trk.pmd cannot be attached concurrently
	 * to a device whose last table goes.
	 */
	closing_md = READ_ONCE(pd->trk.pmd);
	if (closing_md)
		mutex_lock(&ptb_metadata_lock);
	mutex_lock(&ptb_devices_lock);
	last = !--pd->nr_targets;
	if (last) {
		list_del(&pd->node);
		pd->nr_views++;		/* held until the shutdown is over */
	}
	mutex_unlock(&ptb_devices_lock);

	if (last) {
		ptb_device_shutdown(pd);
		ptb_device_put(pd);
	}
	if (closing_md)
		mutex_unlock(&ptb_metadata_lock);
}

/*----------------------------------------------------------------*/

/*
 * Suspend quiesces: presuspend stops the background sweep and new final
 * flushes (copies for writes still being drained go on); postsuspend,
 * once every write has completed, waits for the copies and flushes in
 * flight (at most copy_slots per job) and leaves the metadata as after a
 * clean shutdown.  Resume starts the sweep again.
 */
void ptb_device_presuspend(struct ptb_device *pd)
{
	WRITE_ONCE(pd->suspended, true);
}

void ptb_device_presuspend_undo(struct ptb_device *pd)
{
	WRITE_ONCE(pd->suspended, false);
	ptb_wake_worker(&pd->cow);
	ptb_mirrors_resume(pd);
}

void ptb_device_postsuspend(struct ptb_device *pd)
{
	/* A worker pass that saw no suspend yet may still issue copies. */
	flush_work(&pd->cow.worker);
	wait_event(pd->cow.io_idle, !atomic_read(&pd->cow.io_in_flight));
	ptb_mirrors_postsuspend(pd);
	ptb_bitmaps_quiesce(&pd->trk);
}

/*
 * What the constructor checked may have changed since (a job started, a
 * persistent bitmap added): check again.  A failed preresume leaves the
 * device suspended with the new table; reload a good one and resume.
 */
static int ptb_device_check_resume(struct ptb_device *pd, struct ptb_target *pt)
{
	if (ptb_device_jobs_elsewhere(pd, pt->origin->bdev)) {
		DMERR("%s: resume: a backup job still copies from another origin device",
		      ptb_device_name(pd));
		return -EBUSY;
	}
	if (ptb_mirrors_elsewhere(pd, pt->origin->bdev, pt->ti->len)) {
		DMERR("%s: resume: a mirror job is active on another origin or size: complete or cancel it",
		      ptb_device_name(pd));
		return -EBUSY;
	}
	if (pd->trk.pmd && pt->ti->len > ptb_metadata_dev_sectors(pd->trk.pmd) &&
	    ptb_has_persistent(&pd->trk)) {
		DMERR("%s: resume: the device is larger than its persistent bitmaps cover",
		      ptb_device_name(pd));
		return -EINVAL;
	}
	return 0;
}

/*
 * The table becomes live: it attaches the metadata it loaded, transient
 * bitmaps grow to its size, a pending origin change is done.  The device
 * is suspended: no write is in flight.
 */
int ptb_device_preresume(struct ptb_target *pt)
{
	struct ptb_device *pd = pt->pd;
	bool attaching = pt->pending_md;
	int r;

	if (attaching)
		mutex_lock(&ptb_metadata_lock);
	mutex_lock(&pd->lock);
	r = ptb_device_check_resume(pd, pt);
	if (!r)
		r = ptb_device_attach_metadata(pd, pt);
	if (!r) {
		/* Bits and successors change only with writes held. */
		ptb_hold_writes(&pd->gate);
		r = ptb_bitmaps_fit(&pd->trk, pd->live ? pd->live->ti->len : pt->ti->len,
				    pt->ti->len);
		ptb_release_writes(&pd->gate);
	}
	if (!r && pd->origin_change == pt)
		pd->origin_change = NULL;
	mutex_unlock(&pd->lock);
	if (attaching)
		mutex_unlock(&ptb_metadata_lock);
	return r;
}

void ptb_device_resume(struct ptb_target *pt)
{
	struct ptb_device *pd = pt->pd;

	mutex_lock(&pd->event_lock);
	pd->live = pt;
	mutex_unlock(&pd->event_lock);
	WRITE_ONCE(pd->suspended, false);
	ptb_wake_worker(&pd->cow);
	ptb_mirrors_resume(pd);
}

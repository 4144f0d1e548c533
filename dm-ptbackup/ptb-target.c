// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup: a device-mapper target that takes point-in-time backups of a
 * live block device by copy-before-write.
 *
 * This file is the target glue: constructor and destructor, the map path,
 * status and the suspend/resume hooks; the per-device object that jobs
 * live in, so that they survive table reloads, is in ptb-device.c.
 *
 * Table line:
 *   ptbackup <origin_dev> <metadata_dev|-> <chunk_sectors>
 *            [<#feature_args> <feature_arg>...]
 * Features:
 *   copy_slots <n>   chunks each job copies at once (1..256, default 16)
 */

#include <linux/module.h>
#include <linux/slab.h>

#include "ptb-device.h"
#include "ptb-bitmap.h"
#include "ptb-cow.h"
#include "ptb-gate.h"
#include "ptb-job.h"
#include "ptb-message.h"
#include "ptb-metadata.h"
#include "ptb-mirror.h"
#include "ptb-view.h"

#define DM_MSG_PREFIX "ptbackup"

static const struct ptb_write_ops ptb_write_ops;

/*----------------------------------------------------------------*/

/* Constructor. */

static int parse_origin_dev(struct ptb_target *pt, const char *arg,
			    char **error)
{
	struct dm_target *ti = pt->ti;
	int r;

	r = dm_get_device(ti, arg, dm_table_get_mode(ti->table), &pt->origin);
	if (r) {
		*error = "Error opening origin device";
		return r;
	}
	if (ti->len > bdev_nr_sectors(pt->origin->bdev)) {
		*error = "Device is larger than the origin device";
		return -EINVAL;
	}
	return 0;
}

static int parse_metadata_dev(struct ptb_target *pt, const char *arg,
			      char **error)
{
	struct dm_target *ti = pt->ti;
	int r;

	if (!strcmp(arg, "-"))
		return 0;
	r = dm_get_device(ti, arg, dm_table_get_mode(ti->table), &pt->metadata);
	if (r) {
		*error = "Error opening metadata device";
		return r;
	}
	if (pt->metadata->bdev == pt->origin->bdev) {
		*error = "Metadata device must differ from the origin device";
		return -EINVAL;
	}
	return 0;
}

static int parse_chunk_sectors(struct ptb_target *pt, const char *arg,
			       char **error)
{
	unsigned int logical = bdev_logical_block_size(pt->origin->bdev);
	unsigned int chunk;

	if (kstrtouint(arg, 10, &chunk) || !is_power_of_2(chunk) ||
	    chunk < PTB_MIN_CHUNK_SECTORS || chunk > PTB_MAX_CHUNK_SECTORS) {
		*error = "Invalid chunk size: must be a power of two from 8 to 2048 sectors";
		return -EINVAL;
	}
	if (((unsigned long)chunk << SECTOR_SHIFT) < logical) {
		*error = "Chunk size is smaller than the origin's logical block size";
		return -EINVAL;
	}
	pt->chunk_sectors = chunk;
	pt->chunk_shift = __ffs(chunk);
	pt->nr_chunks = DIV_ROUND_UP_SECTOR_T(pt->ti->len, chunk);
	if (pt->nr_chunks > PTB_MAX_BITS) {
		*error = "Too many chunks for a device this large: use a larger chunk size";
		return -EINVAL;
	}
	return 0;
}

static int parse_features(struct ptb_target *pt, struct dm_arg_set *as,
			  char **error)
{
	static const struct dm_arg feature_count = {
		0, 2, "Invalid number of feature arguments"
	};
	static const struct dm_arg copy_slots = {
		1, PTB_MAX_COPY_SLOTS, "Invalid copy_slots: must be from 1 to 256"
	};
	unsigned int argc;
	const char *name;
	int r;

	pt->copy_slots = PTB_DEFAULT_COPY_SLOTS;
	if (!as->argc)
		return 0;
	r = dm_read_arg_group(&feature_count, as, &argc, error);
	if (r)
		return r;
	while (argc) {
		name = dm_shift_arg(as);
		argc--;
		if (!strcasecmp(name, "copy_slots") && argc) {
			if (pt->copy_slots_set) {
				*error = "Feature copy_slots duplicated";
				return -EINVAL;
			}
			r = dm_read_arg(&copy_slots, as, &pt->copy_slots, error);
			if (r)
				return r;
			argc--;
			pt->copy_slots_set = true;
			continue;
		}
		*error = "Unrecognised feature argument (known: copy_slots <n>)";
		return -EINVAL;
	}
	if (as->argc) {
		*error = "Unexpected arguments after the feature arguments";
		return -EINVAL;
	}
	return 0;
}

static void ptb_put_devices(struct ptb_target *pt)
{
	if (pt->metadata)
		dm_put_device(pt->ti, pt->metadata);
	if (pt->origin)
		dm_put_device(pt->ti, pt->origin);
}

static int ptb_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct ptb_target *pt;
	int r;

	if (argc < 3) {
		ti->error = "Requires at least 3 arguments: <origin> <metadata|-> <chunk_sectors>";
		return -EINVAL;
	}

	pt = kzalloc(sizeof(*pt), GFP_KERNEL);
	if (!pt) {
		ti->error = "Cannot allocate target context";
		return -ENOMEM;
	}
	pt->ti = ti;

	r = parse_origin_dev(pt, dm_shift_arg(&as), &ti->error);
	if (r)
		goto bad;
	r = parse_metadata_dev(pt, dm_shift_arg(&as), &ti->error);
	if (r)
		goto bad;
	r = parse_chunk_sectors(pt, dm_shift_arg(&as), &ti->error);
	if (r)
		goto bad;
	r = parse_features(pt, &as, &ti->error);
	if (r)
		goto bad;
	r = ptb_device_attach(pt, &ptb_write_ops, &ti->error);
	if (r)
		goto bad;

	ti->num_flush_bios = 1;
	ti->num_discard_bios = 1;
	ti->num_write_zeroes_bios = 1;
	ti->per_io_data_size = sizeof(struct ptb_bio);
	ti->accounts_remapped_io = true;
	ti->private = pt;
	return 0;

bad:
	ptb_put_devices(pt);
	kfree(pt);
	return r;
}

static void ptb_dtr(struct dm_target *ti)
{
	struct ptb_target *pt = ti->private;

	ptb_device_detach(pt);
	ptb_put_devices(pt);
	kfree(pt);
}

/*----------------------------------------------------------------*/

/* I/O. */

/* Keep a write inside one chunk while jobs may need to copy it. */
static void ptb_split_write(struct ptb_target *pt, struct bio *bio)
{
	sector_t offset = bio->bi_iter.bi_sector & (pt->chunk_sectors - 1);

	if (offset + bio_sectors(bio) > pt->chunk_sectors)
		dm_accept_partial_bio(bio, pt->chunk_sectors - offset);
}

/*
 * The last step of a write: to the origin, or through the active mirror
 * job to the origin and its target.  Returns a DM_MAPIO_* verdict.
 */
static int ptb_remap_write(struct ptb_device *pd, struct bio *bio)
{
	struct ptb_mirror *m;

	if (likely(!rcu_access_pointer(pd->mirror)))
		return DM_MAPIO_REMAPPED;
	rcu_read_lock();
	m = ptb_mirror_get(pd);
	rcu_read_unlock();
	if (!m)
		return DM_MAPIO_REMAPPED;
	ptb_mirror_write(m, bio);
	return DM_MAPIO_SUBMITTED;
}

static void ptb_submit_write(struct ptb_device *pd, struct bio *bio)
{
	if (ptb_remap_write(pd, bio) == DM_MAPIO_REMAPPED)
		dm_submit_bio_remap(bio, NULL);
}

/*
 * The write path, once past the gate: tracking may first need the write's
 * intent logged (the marker hands it back through ptb_write_marked()),
 * then the copy engine may need old data saved first (its worker submits
 * it), then a mirror job duplicates it.  Returns a DM_MAPIO_* verdict.
 */
static int ptb_route_cow(struct ptb_device *pd, struct bio *bio)
{
	if (likely(list_empty(&pd->cow.images)) || !ptb_write_needs_cow(&pd->cow, bio))
		return ptb_remap_write(pd, bio);
	ptb_defer_bio(&pd->cow, bio);
	return DM_MAPIO_SUBMITTED;
}

static int ptb_route_write(struct ptb_device *pd, struct bio *bio)
{
	if (!list_empty(&pd->trk.bitmaps) && ptb_bitmaps_mark(&pd->trk, bio)) {
		ptb_defer_mark(&pd->trk, bio);
		return DM_MAPIO_SUBMITTED;
	}
	return ptb_route_cow(pd, bio);
}

static void ptb_write_marked(struct ptb_device *pd, struct bio *bio)
{
	if (ptb_route_cow(pd, bio) == DM_MAPIO_REMAPPED)
		dm_submit_bio_remap(bio, NULL);
}

/* Writes that waited for a hold: through the gate and the path again. */
static void ptb_writes_released(struct ptb_device *pd, struct bio_list *bios)
{
	struct ptb_bio *pb;
	struct bio *bio;

	while ((bio = bio_list_pop(bios))) {
		pb = dm_per_bio_data(bio, sizeof(struct ptb_bio));
		if (ptb_account_write(&pd->gate, pb, bio) &&
		    ptb_route_write(pd, bio) == DM_MAPIO_REMAPPED)
			dm_submit_bio_remap(bio, NULL);
	}
}

/* A job's hand-over that found the hold taken runs again (ptb-job.c). */
static void ptb_hold_released(struct ptb_device *pd)
{
	ptb_wake_worker(&pd->cow);
}

static const struct ptb_write_ops ptb_write_ops = {
	.released = ptb_writes_released,
	.hold_released = ptb_hold_released,
	.marked = ptb_write_marked,
	.submit = ptb_submit_write,
};

static int ptb_map(struct dm_target *ti, struct bio *bio)
{
	struct ptb_target *pt = ti->private;
	struct ptb_device *pd = pt->pd;
	struct ptb_bio *pb = dm_per_bio_data(bio, sizeof(struct ptb_bio));

	pb->counted = false;
	bio_set_dev(bio, pt->origin->bdev);
	if (bio_sectors(bio))
		bio->bi_iter.bi_sector = dm_target_offset(ti, bio->bi_iter.bi_sector);

	if (!op_is_write(bio_op(bio)))
		return DM_MAPIO_REMAPPED;
	if (!bio_sectors(bio))
		return ptb_remap_write(pd, bio);	/* a flush */

	if (!list_empty(&pd->cow.images) || READ_ONCE(pd->gate.hold_writes))
		ptb_split_write(pt, bio);
	if (!ptb_account_write(&pd->gate, pb, bio))
		return DM_MAPIO_SUBMITTED;
	return ptb_route_write(pd, bio);
}

static int ptb_end_io(struct dm_target *ti, struct bio *bio,
		      blk_status_t *error)
{
	struct ptb_target *pt = ti->private;
	struct ptb_bio *pb = dm_per_bio_data(bio, sizeof(struct ptb_bio));

	if (pb->counted)
		ptb_write_done(&pt->pd->gate, pb);
	return DM_ENDIO_DONE;
}

/*
 * Deliberate bugs for proving that the debug lane catches them; compiled in
 * only with `make PTB_TEST_FAULT=...' (see Kbuild).
 */
static void ptb_test_faults(struct ptb_device *pd)
{
#ifdef PTB_TEST_FAULT_LEAK
	void *leak = kmalloc(96, GFP_KERNEL);

	pr_info("ptbackup: PTB_TEST_FAULT_LEAK: leaking %p\n", leak);
#endif
#ifdef PTB_TEST_FAULT_LOCK_ORDER
	/* Messages take pd->lock, then event_lock: this is the reverse. */
	mutex_lock(&pd->event_lock);
	mutex_lock(&pd->lock);
	mutex_unlock(&pd->lock);
	mutex_unlock(&pd->event_lock);
#endif
}

/* Suspend and resume: the device object does the work (ptb-device.c). */
static void ptb_presuspend(struct dm_target *ti)
{
	ptb_device_presuspend(((struct ptb_target *)ti->private)->pd);
}

static void ptb_presuspend_undo(struct dm_target *ti)
{
	ptb_device_presuspend_undo(((struct ptb_target *)ti->private)->pd);
}

static void ptb_postsuspend(struct dm_target *ti)
{
	ptb_device_postsuspend(((struct ptb_target *)ti->private)->pd);
}

static int ptb_preresume(struct dm_target *ti)
{
	return ptb_device_preresume(ti->private);
}

static void ptb_resume(struct dm_target *ti)
{
	struct ptb_target *pt = ti->private;

	ptb_test_faults(pt->pd);
	ptb_device_resume(pt);
}

/*----------------------------------------------------------------*/

/* Status, messages, devices. */

static const char *ptb_metadata_mode(struct ptb_device *pd)
{
	if (!pd->trk.pmd)
		return "-";
	return ptb_metadata_failed(pd->trk.pmd) ? "fail" : "rw";
}

static void ptb_status(struct dm_target *ti, status_type_t type,
		       unsigned int status_flags, char *result,
		       unsigned int maxlen)
{
	struct ptb_target *pt = ti->private;
	struct ptb_device *pd = pt->pd;
	struct ptb_job *job;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		mutex_lock(&pd->lock);
		DMEMIT("%llu %lu %s %u %u", (unsigned long long)pt->chunk_sectors,
		       pt->nr_chunks, ptb_metadata_mode(pd), pd->trk.nr_bitmaps,
		       pd->nr_jobs);
		list_for_each_entry(job, &pd->jobs, node)
			sz = ptb_job_emit(job, result, maxlen, sz, false);
		sz = ptb_mirrors_emit(pd, result, maxlen, sz, false);
		mutex_unlock(&pd->lock);
		break;

	case STATUSTYPE_TABLE:
		DMEMIT("%s %s %llu", pt->origin->name,
		       pt->metadata ? pt->metadata->name : "-",
		       (unsigned long long)pt->chunk_sectors);
		if (pt->copy_slots_set)
			DMEMIT(" 2 copy_slots %u", pt->copy_slots);
		break;

	case STATUSTYPE_IMA:
		*result = '\0';
		break;
	}
}

static int ptb_message_hook(struct dm_target *ti, unsigned int argc,
			    char **argv, char *result, unsigned int maxlen)
{
	return ptb_message(ti->private, argc, argv, result, maxlen);
}

static int ptb_iterate_devices(struct dm_target *ti,
			       iterate_devices_callout_fn fn, void *data)
{
	struct ptb_target *pt = ti->private;

	return fn(ti, pt->origin, 0, ti->len, data);
}

static struct target_type ptbackup_target = {
	.name = "ptbackup",
	.version = {1, 4, 0},
	.features = DM_TARGET_SINGLETON,
	.module = THIS_MODULE,
	.ctr = ptb_ctr,
	.dtr = ptb_dtr,
	.map = ptb_map,
	.end_io = ptb_end_io,
	.presuspend = ptb_presuspend,
	.presuspend_undo = ptb_presuspend_undo,
	.postsuspend = ptb_postsuspend,
	.preresume = ptb_preresume,
	.resume = ptb_resume,
	.status = ptb_status,
	.message = ptb_message_hook,
	.iterate_devices = ptb_iterate_devices,
};

static int __init dm_ptbackup_init(void)
{
	int r = dm_register_target(&ptbackup_target);

	if (r)
		return r;
	r = dm_register_target(&ptbackup_view_target);
	if (r)
		dm_unregister_target(&ptbackup_target);
	return r;
}

static void __exit dm_ptbackup_exit(void)
{
	dm_unregister_target(&ptbackup_view_target);
	dm_unregister_target(&ptbackup_target);
}

module_init(dm_ptbackup_init);
module_exit(dm_ptbackup_exit);

MODULE_DESCRIPTION(DM_NAME " point-in-time backup target");
MODULE_AUTHOR("The dm-ptbackup developers");
MODULE_LICENSE("GPL");
MODULE_ALIAS("dm-ptbackup");

// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup view target: a read-only device that shows the image of a
 * running backup job at its point in time, for a reader that pulls the
 * backup itself (an NBD server, a backup program).
 *
 * Table line:
 *   ptbackup-view <ptbackup_dev> <job_id>
 *
 * Reads go to the copy engine's worker (ptb-read.c), which reads the
 * blocks the job has saved from its target and the others from the
 * origin, ordered against copy-before-write.  Writes fail; discards
 * release the chunks they cover whole (the reader is done with them).
 * The view holds
 * the job (it cannot be dismissed) and the ptbackup device's object; the
 * device itself cannot be removed while the view has it open.  Once the
 * job stops being active (cancelled, failed, completed), reads fail.
 */

#include <linux/module.h>
#include <linux/slab.h>

#include "ptb-device.h"
#include "ptb-cow.h"
#include "ptb-job.h"
#include "ptb-view.h"

#define DM_MSG_PREFIX "ptbackup-view"

struct ptb_view {
	struct dm_dev *dev;		/* the ptbackup device */
	struct ptb_device *pd;
	struct ptb_job *job;
	struct bio_set bs;		/* the engine splits reads with it */
};

static int ptb_view_attach(struct dm_target *ti, struct ptb_view *v, const char *id)
{
	int r;

	v->pd = ptb_device_get(v->dev->bdev->bd_dev);
	if (!v->pd) {
		ti->error = "Not a ptbackup device";
		return -ENODEV;
	}
	mutex_lock(&v->pd->lock);
	r = ptb_job_open_view(v->pd, id, &v->job, &ti->error);
	if (!r && ti->len > v->job->img.dev_sectors) {
		ti->error = "View is larger than the job's point-in-time image";
		ptb_job_close_view(v->job);
		r = -EINVAL;
	}
	mutex_unlock(&v->pd->lock);
	if (r) {
		ptb_device_put(v->pd);
		v->pd = NULL;
	}
	return r;
}

static void ptb_view_detach(struct ptb_view *v)
{
	mutex_lock(&v->pd->lock);
	ptb_job_close_view(v->job);
	mutex_unlock(&v->pd->lock);
	ptb_device_put(v->pd);
}

static int ptb_view_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct ptb_view *v;
	int r;

	if (argc != 2) {
		ti->error = "Requires 2 arguments: <ptbackup_dev> <job_id>";
		return -EINVAL;
	}
	v = kzalloc(sizeof(*v), GFP_KERNEL);
	if (!v) {
		ti->error = "Cannot allocate view context";
		return -ENOMEM;
	}
	/* The view only reads: the ptbackup device is opened for reading. */
	r = dm_get_device(ti, argv[0], ptb_mode_read_only(dm_table_get_mode(ti->table)),
			  &v->dev);
	if (r) {
		ti->error = "Error opening the ptbackup device";
		goto bad_dev;
	}
	r = bioset_init(&v->bs, BIO_POOL_SIZE, 0, 0);
	if (r) {
		ti->error = "Cannot allocate view bio set";
		goto bad_bs;
	}
	r = ptb_view_attach(ti, v, argv[1]);
	if (r)
		goto bad_attach;

	ti->per_io_data_size = sizeof(struct ptb_read);
	/*
	 * Only a sync=none job's chunks may be released: a sync=full job's
	 * target would lack them, and its bitmap hand-over would take them
	 * for copied.
	 */
	if (v->job->sync == PTB_SYNC_NONE) {
		ti->num_discard_bios = 1;
		ti->discards_supported = true;
	}
	ti->accounts_remapped_io = true;
	ti->private = v;
	return 0;

bad_attach:
	bioset_exit(&v->bs);
bad_bs:
	dm_put_device(ti, v->dev);
bad_dev:
	kfree(v);
	return r;
}

static void ptb_view_dtr(struct dm_target *ti)
{
	struct ptb_view *v = ti->private;

	ptb_view_detach(v);
	bioset_exit(&v->bs);
	dm_put_device(ti, v->dev);
	kfree(v);
}

static int ptb_view_map(struct dm_target *ti, struct bio *bio)
{
	struct ptb_view *v = ti->private;
	struct ptb_image *img = &v->job->img;
	sector_t chunk = (sector_t)1 << img->chunk_shift, offset;

	if (bio_op(bio) == REQ_OP_DISCARD) {
		bio->bi_iter.bi_sector = dm_target_offset(ti, bio->bi_iter.bi_sector);
		offset = bio->bi_iter.bi_sector & (chunk - 1);
		if (offset + bio_sectors(bio) > chunk * PTB_RUN_MAX_CHUNKS)
			dm_accept_partial_bio(bio, chunk * PTB_RUN_MAX_CHUNKS - offset);
		ptb_image_discard(img, bio);
		return DM_MAPIO_SUBMITTED;
	}
	if (bio_op(bio) != REQ_OP_READ) {
		DMERR_LIMIT("%s: the view of job %s is read-only: a write was refused",
			    dm_disk(dm_table_get_md(ti->table))->disk_name, v->job->id);
		return DM_MAPIO_KILL;
	}
	bio->bi_iter.bi_sector = dm_target_offset(ti, bio->bi_iter.bi_sector);
	offset = bio->bi_iter.bi_sector & (chunk - 1);
	if (offset + bio_sectors(bio) > chunk)
		dm_accept_partial_bio(bio, chunk - offset);
	ptb_image_read(img, bio, &v->bs);
	return DM_MAPIO_SUBMITTED;
}

static int ptb_view_end_io(struct dm_target *ti, struct bio *bio, blk_status_t *error)
{
	if (bio_op(bio) == REQ_OP_READ)
		ptb_image_read_end(bio, error);
	return DM_ENDIO_DONE;
}

static void ptb_view_status(struct dm_target *ti, status_type_t type,
			    unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct ptb_view *v = ti->private;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		DMEMIT("%s %lu", ptb_job_state_name(READ_ONCE(v->job->state)),
		       ptb_image_nr_released(&v->job->img));
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %s", v->dev->name, v->job->id);
		break;
	case STATUSTYPE_IMA:
		*result = '\0';
		break;
	}
}

static int ptb_view_iterate_devices(struct dm_target *ti,
				    iterate_devices_callout_fn fn, void *data)
{
	struct ptb_view *v = ti->private;

	return fn(ti, v->dev, 0, ti->len, data);
}

/*
 * Discards go to the engine, not to the devices below: any chunk-aligned
 * range, even where the ptbackup device has no discard of its own.
 */
static void ptb_view_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct ptb_view *v = ti->private;
	unsigned int chunk = 1U << v->job->img.chunk_shift;

	if (!ti->num_discard_bios)
		return;
	limits->discard_granularity = chunk << SECTOR_SHIFT;
	limits->max_hw_discard_sectors = chunk * PTB_RUN_MAX_CHUNKS;
	limits->max_discard_sectors = chunk * PTB_RUN_MAX_CHUNKS;
}

struct target_type ptbackup_view_target = {
	.name = "ptbackup-view",
	.version = {1, 0, 0},
	.module = THIS_MODULE,
	.ctr = ptb_view_ctr,
	.dtr = ptb_view_dtr,
	.map = ptb_view_map,
	.end_io = ptb_view_end_io,
	.status = ptb_view_status,
	.iterate_devices = ptb_view_iterate_devices,
	.io_hints = ptb_view_io_hints,
};

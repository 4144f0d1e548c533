// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup mirror jobs: every write goes to the origin and to the
 * mirror's target; what the target lacks is copied from the origin.  The
 * state diagram is in ptb-mirror.h.
 *
 * A mirrored write is cloned twice from the job's bio_set (one clone per
 * device, sharing the write's pages) and ends when both clones have; the
 * origin's clone is the one device-mapper accounts.  Writes with sectors
 * are on m->writes while in flight.  A resync copy (dm-kcopyd, up to 1 MiB
 * of adjacent out-of-sync chunks) is registered on m->copies: from then on
 * writes that overlap it wait on the copy; it starts once the overlapping
 * writes that were already in flight have ended.  So the target never gets
 * the copy's (older) data after a write's.
 *
 * Locking: m->lock (irq-safe spinlock) guards m->writes, m->copies, the
 * out-of-sync map and every state change.  The worker (m->work, an ordered
 * workqueue) finds out-of-sync chunks and starts copies; kcopyd ends them.
 * The job's lifetime on the write path is a percpu_ref: a write holds it
 * from ptb_mirror_get() to its completion, and a stopping job waits for
 * them all.  The object is freed at dismiss.
 */

#include <linux/dm-io.h>
#include <linux/dm-kcopyd.h>
#include <linux/percpu-refcount.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "ptb-device.h"
#include "ptb-gate.h"
#include "ptb-job.h"
#include "ptb-mirror.h"
#include "ptb-rate.h"

#define DM_MSG_PREFIX "ptbackup"

/* Resync copies registered at once, and the delay of an "ignore" retry. */
#define PTB_MIRROR_COPIES	8
#define PTB_MIRROR_RETRY_DELAY	HZ

enum ptb_mirror_state {
	PTB_MIRROR_SYNCING,
	PTB_MIRROR_READY,
	PTB_MIRROR_DEGRADED,
	PTB_MIRROR_COMPLETED,
	PTB_MIRROR_CANCELLED,
	PTB_MIRROR_NR_STATES
};

static const char * const ptb_mirror_state_names[PTB_MIRROR_NR_STATES] = {
	[PTB_MIRROR_SYNCING] = "syncing",
	[PTB_MIRROR_READY] = "ready",
	[PTB_MIRROR_DEGRADED] = "degraded",
	[PTB_MIRROR_COMPLETED] = "completed",
	[PTB_MIRROR_CANCELLED] = "cancelled",
};

static const char * const ptb_mirror_site_names[] = {
	[PTB_SITE_NONE] = "-",
	[PTB_SITE_SOURCE] = "source",
	[PTB_SITE_TARGET] = "target",
	[PTB_SITE_CBW] = "cbw",
	[PTB_SITE_FLUSH] = "flush",
};

/* One resync copy: blocks [sector, end) from the origin to the target. */
struct ptb_mirror_copy {
	struct list_head node;		/* m->copies; m->lock */
	struct ptb_mirror *m;
	sector_t sector;
	sector_t end;
	unsigned int writers;		/* overlapping writes still in flight */
	bool started;
	struct bio_list waiting;	/* writes that arrived meanwhile */
};

struct ptb_mirror {
	struct list_head node;		/* pd->mirrors; pd->lock */
	struct ptb_device *pd;
	char id[PTB_JOB_ID_MAX + 1];
	enum ptb_sync_mode sync;
	enum ptb_error_action on_target_error;
	u64 speed;			/* WRITE_ONCE/READ_ONCE */

	int state;			/* m->lock to change; READ_ONCE */
	struct ptb_bdev target;
	dev_t target_dev;
	struct block_device *origin;
	unsigned int chunk_shift;
	unsigned long nr_chunks;
	sector_t dev_sectors;

	spinlock_t lock;		/* the fields below up to retry_at */
	unsigned long *out_of_sync;	/* chunks the target lacks; lock */
	struct list_head writes;	/* writes in flight; lock */
	struct list_head copies;	/* resync copies registered; lock */
	struct ptb_mirror_copy copy[PTB_MIRROR_COPIES];
	unsigned long copies_used;	/* bit i: copy[i] registered; lock */
	unsigned int nr_copies;		/* lock; READ_ONCE */
	wait_queue_head_t idle;		/* nr_copies fell to 0 */
	unsigned long retry_at;		/* jiffies, 0: none; lock */

	struct percpu_ref ref;		/* writes in flight, and the job's own */
	struct completion refs_gone;
	struct bio_set bs;
	struct dm_kcopyd_client *kc;
	struct workqueue_struct *wq;
	struct delayed_work work;	/* the resync; worker only below */
	unsigned long cursor;
	ktime_t rate_next;
	struct work_struct event_work;	/* raise a device-mapper event */

	/* Progress and errors, read by status. */
	atomic64_t bytes_copied;
	u64 bytes_to_copy;		/* at the start */
	unsigned long final_out_of_sync; /* chunks, once stopped */
	enum ptb_error_site error_site;
	int last_error;
};

static const char *ptb_mirror_state_name(const struct ptb_mirror *m);

/*----------------------------------------------------------------*/

/* State, the out-of-sync map and errors.  m->lock held. */

static bool ptb_mirror_stopped(int state)
{
	return state == PTB_MIRROR_COMPLETED || state == PTB_MIRROR_CANCELLED;
}

static void ptb_mirror_kick(struct ptb_mirror *m)
{
	mod_delayed_work(m->wq, &m->work, 0);
}

static void ptb_mirror_set_state(struct ptb_mirror *m, int state)
{
	lockdep_assert_held(&m->lock);
	if (m->state == state)
		return;
	WRITE_ONCE(m->state, state);
	queue_work(system_wq, &m->event_work);
	ptb_mirror_kick(m);
}

static unsigned long ptb_mirror_first_chunk(const struct ptb_mirror *m, sector_t s)
{
	return s >> m->chunk_shift;
}

static unsigned long ptb_mirror_last_chunk(const struct ptb_mirror *m, sector_t end)
{
	return (end - 1) >> m->chunk_shift;
}

/* Blocks [sector, end) may differ on the target: copy them again. */
static void ptb_mirror_mark(struct ptb_mirror *m, sector_t sector, sector_t end)
{
	unsigned long first = ptb_mirror_first_chunk(m, sector);

	lockdep_assert_held(&m->lock);
	bitmap_set(m->out_of_sync, first, ptb_mirror_last_chunk(m, end) - first + 1);
	if (m->state == PTB_MIRROR_READY)
		ptb_mirror_set_state(m, PTB_MIRROR_SYNCING);
}

/* The target (or the origin, for a copy) failed: on_target_error applies. */
static void ptb_mirror_failed(struct ptb_mirror *m, enum ptb_error_site site, int err)
{
	lockdep_assert_held(&m->lock);
	WRITE_ONCE(m->error_site, site);
	WRITE_ONCE(m->last_error, err);
	if (m->state != PTB_MIRROR_SYNCING && m->state != PTB_MIRROR_READY)
		return;
	if (m->on_target_error == PTB_ERR_IGNORE) {
		DMERR_LIMIT("%s: mirror %s: %s error %d, copying again later",
			    ptb_device_name(m->pd), m->id, ptb_mirror_site_names[site], err);
		if (!m->retry_at)
			m->retry_at = (jiffies + PTB_MIRROR_RETRY_DELAY) | 1;
		return;
	}
	DMERR("%s: mirror %s degraded: %s error %d; writes are recorded%s until `job resume'",
	      ptb_device_name(m->pd), m->id, ptb_mirror_site_names[site], err,
	      m->on_target_error == PTB_ERR_STOP ? " and fail" : "");
	ptb_mirror_set_state(m, PTB_MIRROR_DEGRADED);
}

static void ptb_mirror_do_event(struct work_struct *ws)
{
	struct ptb_mirror *m = container_of(ws, struct ptb_mirror, event_work);

	m->pd->notify(m->pd);
}

/*----------------------------------------------------------------*/

/* The write path. */

static struct ptb_mirror_io *ptb_mirror_io_of(struct bio *bio)
{
	struct ptb_bio *pb = dm_per_bio_data(bio, sizeof(struct ptb_bio));

	return &pb->mirror;
}

struct ptb_mirror *ptb_mirror_get(struct ptb_device *pd)
{
	struct ptb_mirror *m = rcu_dereference(pd->mirror);

	if (m && !percpu_ref_tryget_live(&m->ref))
		m = NULL;
	return m;
}

static bool ptb_ranges_overlap(sector_t s1, sector_t e1, sector_t s2, sector_t e2)
{
	return s1 < e2 && s2 < e1;
}

static struct ptb_mirror_copy *ptb_mirror_copy_over(struct ptb_mirror *m,
						    sector_t sector, sector_t end)
{
	struct ptb_mirror_copy *c;

	list_for_each_entry(c, &m->copies, node)
		if (ptb_ranges_overlap(sector, end, c->sector, c->end))
			return c;
	return NULL;
}

enum ptb_mirror_route {
	PTB_ROUTE_QUEUED,	/* waits for a copy */
	PTB_ROUTE_BOTH,		/* to the origin and the target */
	PTB_ROUTE_ORIGIN,	/* to the origin only */
	PTB_ROUTE_FAIL,		/* degraded under "stop": fail it */
};

/* Where a write goes now.  m->lock held. */
static enum ptb_mirror_route ptb_mirror_admit(struct ptb_mirror *m, struct bio *bio)
{
	struct ptb_mirror_io *io = ptb_mirror_io_of(bio);
	struct ptb_mirror_copy *c;
	bool data = io->end > io->sector;

	lockdep_assert_held(&m->lock);
	io->tracked = false;
	io->mirrored = false;
	if (data) {
		c = ptb_mirror_copy_over(m, io->sector, io->end);
		if (c) {
			bio_list_add(&c->waiting, bio);
			return PTB_ROUTE_QUEUED;
		}
	}
	switch (m->state) {
	case PTB_MIRROR_SYNCING:
	case PTB_MIRROR_READY:
		io->mirrored = true;
		break;
	case PTB_MIRROR_DEGRADED:
		if (!data)
			break;
		if (m->on_target_error == PTB_ERR_STOP) {
			io->route = PTB_ROUTE_FAIL;
			return PTB_ROUTE_FAIL;
		}
		ptb_mirror_mark(m, io->sector, io->end);
		break;
	}
	if (data) {
		list_add_tail(&io->node, &m->writes);
		io->tracked = true;
	}
	io->route = io->mirrored ? PTB_ROUTE_BOTH : PTB_ROUTE_ORIGIN;
	return io->route;
}

/* A write that overlaps copies not yet started has ended.  m->lock held. */
static void ptb_mirror_writer_gone(struct ptb_mirror *m, struct ptb_mirror_io *io)
{
	struct ptb_mirror_copy *c;

	list_del(&io->node);
	list_for_each_entry(c, &m->copies, node)
		if (!c->started && ptb_ranges_overlap(io->sector, io->end, c->sector, c->end) &&
		    !--c->writers)
			ptb_mirror_kick(m);
}

/* The target cannot do this discard or write-zeroes: copy the blocks instead. */
static bool ptb_mirror_unsupported(struct bio *bio, blk_status_t status)
{
	return status == BLK_STS_NOTSUPP &&
	       (bio_op(bio) == REQ_OP_DISCARD || bio_op(bio) == REQ_OP_WRITE_ZEROES);
}

/* Both clones have ended: account the outcome, end the write. */
static void ptb_mirror_write_end(struct bio *bio)
{
	struct ptb_mirror_io *io = ptb_mirror_io_of(bio);
	struct ptb_mirror *m = io->m;
	blk_status_t target = io->target_status, status = io->origin_status;
	bool target_failed = target && !ptb_mirror_unsupported(bio, target);
	unsigned long flags;

	spin_lock_irqsave(&m->lock, flags);
	if (io->tracked)
		ptb_mirror_writer_gone(m, io);
	if (io->mirrored && io->end > io->sector && (target || status))
		ptb_mirror_mark(m, io->sector, io->end);
	if (io->mirrored && target_failed)
		ptb_mirror_failed(m, io->end > io->sector ? PTB_SITE_TARGET : PTB_SITE_FLUSH,
				  blk_status_to_errno(target));
	spin_unlock_irqrestore(&m->lock, flags);

	/* Under "stop" a write succeeds only if the target has it too. */
	if (!status && io->mirrored && target_failed && m->on_target_error == PTB_ERR_STOP)
		status = target;
	bio->bi_status = status;
	bio_endio(bio);
	percpu_ref_put(&m->ref);
}

static void ptb_mirror_clone_end(struct bio *clone, bool to_target)
{
	struct bio *bio = clone->bi_private;
	struct ptb_mirror_io *io = ptb_mirror_io_of(bio);

	if (to_target)
		io->target_status = clone->bi_status;
	else
		io->origin_status = clone->bi_status;
	bio_put(clone);
	if (atomic_dec_and_test(&io->pending))
		ptb_mirror_write_end(bio);
}

static void ptb_mirror_origin_end_io(struct bio *clone)
{
	ptb_mirror_clone_end(clone, false);
}

static void ptb_mirror_target_end_io(struct bio *clone)
{
	ptb_mirror_clone_end(clone, true);
}

static void ptb_mirror_dispatch(struct ptb_mirror *m, struct bio *bio,
				enum ptb_mirror_route route)
{
	struct ptb_mirror_io *io = ptb_mirror_io_of(bio);
	struct bio *to_origin, *to_target;

	switch (route) {
	case PTB_ROUTE_QUEUED:
		return;
	case PTB_ROUTE_FAIL:
		bio->bi_status = BLK_STS_IOERR;
		bio_endio(bio);
		percpu_ref_put(&m->ref);
		return;
	default:
		break;
	}
	io->origin_status = BLK_STS_OK;
	io->target_status = BLK_STS_OK;
	atomic_set(&io->pending, route == PTB_ROUTE_BOTH ? 2 : 1);
	to_origin = bio_alloc_clone(bio->bi_bdev, bio, GFP_NOIO, &m->bs);
	to_origin->bi_end_io = ptb_mirror_origin_end_io;
	to_origin->bi_private = bio;
	if (route == PTB_ROUTE_BOTH) {
		to_target = bio_alloc_clone(m->target.bdev, bio, GFP_NOIO, &m->bs);
		to_target->bi_end_io = ptb_mirror_target_end_io;
		to_target->bi_private = bio;
		submit_bio_noacct(to_target);
	}
	dm_submit_bio_remap(bio, to_origin);
}

void ptb_mirror_write(struct ptb_mirror *m, struct bio *bio)
{
	struct ptb_mirror_io *io = ptb_mirror_io_of(bio);
	enum ptb_mirror_route route;
	unsigned long flags;

	io->m = m;
	io->sector = bio->bi_iter.bi_sector;
	io->end = bio_end_sector(bio);
	spin_lock_irqsave(&m->lock, flags);
	route = ptb_mirror_admit(m, bio);
	spin_unlock_irqrestore(&m->lock, flags);
	ptb_mirror_dispatch(m, bio, route);
}

/*----------------------------------------------------------------*/

/* Resync copies. */

/*
 * A copy has ended: its blocks are in sync unless it failed; the writes
 * that waited for it go on (or wait for another copy they overlap).  Its
 * last act is to count itself out under m->lock, which a stopping job
 * takes after it saw no copy left: then the job may free itself.
 */
static void ptb_mirror_copy_end(int read_err, unsigned long write_err, void *context)
{
	struct ptb_mirror_copy *c = context;
	struct ptb_mirror *m = c->m;
	unsigned long first = ptb_mirror_first_chunk(m, c->sector), flags;
	struct bio_list waiting, admitted = BIO_EMPTY_LIST;
	struct bio *bio;

	spin_lock_irqsave(&m->lock, flags);
	if (read_err)
		ptb_mirror_failed(m, PTB_SITE_SOURCE, -EIO);
	else if (write_err)
		ptb_mirror_failed(m, PTB_SITE_TARGET, -EIO);
	else
		bitmap_clear(m->out_of_sync, first,
			     ptb_mirror_last_chunk(m, c->end) - first + 1);
	list_del(&c->node);
	__clear_bit(c - m->copy, &m->copies_used);
	waiting = c->waiting;
	bio_list_init(&c->waiting);
	while ((bio = bio_list_pop(&waiting)))
		if (ptb_mirror_admit(m, bio) != PTB_ROUTE_QUEUED)
			bio_list_add(&admitted, bio);
	spin_unlock_irqrestore(&m->lock, flags);

	if (!read_err && !write_err)
		atomic64_add((u64)(c->end - c->sector) << SECTOR_SHIFT, &m->bytes_copied);
	while ((bio = bio_list_pop(&admitted)))
		ptb_mirror_dispatch(m, bio, ptb_mirror_io_of(bio)->route);

	/* The worker runs after the count: the last copy may make it ready. */
	spin_lock_irqsave(&m->lock, flags);
	WRITE_ONCE(m->nr_copies, m->nr_copies - 1);
	wake_up_all(&m->idle);
	ptb_mirror_kick(m);
	spin_unlock_irqrestore(&m->lock, flags);
}

static void ptb_mirror_copy_issue(struct ptb_mirror_copy *c)
{
	struct ptb_mirror *m = c->m;
	struct dm_io_region from = {
		.bdev = m->origin, .sector = c->sector, .count = c->end - c->sector,
	};
	struct dm_io_region to = {
		.bdev = m->target.bdev, .sector = c->sector, .count = c->end - c->sector,
	};

	dm_kcopyd_copy(m->kc, &from, 1, &to, 0, ptb_mirror_copy_end, c);
}

/* Copies whose overlapping writes have all ended may start.  Worker. */
static void ptb_mirror_start_waiting_copies(struct ptb_mirror *m)
{
	struct ptb_mirror_copy *c, *ready[PTB_MIRROR_COPIES];
	unsigned int n = 0, i;

	spin_lock_irq(&m->lock);
	list_for_each_entry(c, &m->copies, node)
		if (!c->started && !c->writers) {
			c->started = true;
			ready[n++] = c;
		}
	spin_unlock_irq(&m->lock);
	for (i = 0; i < n; i++)
		ptb_mirror_copy_issue(ready[i]);
}

/*
 * Register a copy of blocks [sector, end), unless it overlaps one; it
 * starts now if no write overlaps it, else once they have ended.  Worker.
 */
static bool ptb_mirror_add_copy(struct ptb_mirror *m, sector_t sector, sector_t end)
{
	struct ptb_mirror_copy *c;
	struct ptb_mirror_io *io;
	bool start;

	spin_lock_irq(&m->lock);
	if (ptb_mirror_copy_over(m, sector, end)) {
		spin_unlock_irq(&m->lock);
		return false;
	}
	c = &m->copy[ffz(m->copies_used)];
	__set_bit(c - m->copy, &m->copies_used);
	c->sector = sector;
	c->end = end;
	c->writers = 0;
	bio_list_init(&c->waiting);
	list_for_each_entry(io, &m->writes, node)
		if (ptb_ranges_overlap(sector, end, io->sector, io->end))
			c->writers++;
	start = !c->writers;
	c->started = start;
	list_add_tail(&c->node, &m->copies);
	WRITE_ONCE(m->nr_copies, m->nr_copies + 1);
	spin_unlock_irq(&m->lock);
	if (start)
		ptb_mirror_copy_issue(c);
	return true;
}

/* Adjacent out-of-sync chunks from chunk on: at most 1 MiB and a burst. */
static unsigned int ptb_mirror_run_length(struct ptb_mirror *m, unsigned long chunk)
{
	unsigned int cshift = m->chunk_shift + SECTOR_SHIFT;
	u64 burst = ptb_rate_burst_bytes(READ_ONCE(m->speed));
	unsigned int max = max(1U, PTB_RUN_MAX_BYTES >> cshift), n = 1;

	max = min_t(u64, max, max_t(u64, 1, burst >> cshift));
	while (n < max && chunk + n < m->nr_chunks && test_bit(chunk + n, m->out_of_sync))
		n++;
	return n;
}

/* Retries of the "ignore" policy wait for their time.  Worker. */
static unsigned long ptb_mirror_retry_delay(struct ptb_mirror *m)
{
	unsigned long delay = 0, now = jiffies;

	spin_lock_irq(&m->lock);
	if (m->retry_at && time_before(now, m->retry_at))
		delay = m->retry_at - now;
	else
		m->retry_at = 0;
	spin_unlock_irq(&m->lock);
	return delay;
}

/* Issue copies of what is out of sync.  0 or a delay in jiffies.  Worker. */
static unsigned long ptb_mirror_resync(struct ptb_mirror *m)
{
	unsigned long chunk, delay;
	bool wrapped = false;
	unsigned int n;
	sector_t sector, end;
	ktime_t now;

	delay = ptb_mirror_retry_delay(m);
	if (delay)
		return delay;
	while (READ_ONCE(m->nr_copies) < PTB_MIRROR_COPIES) {
		now = ktime_get();
		delay = ptb_rate_delay(m->rate_next, READ_ONCE(m->speed), now);
		if (delay)
			return delay;
		chunk = find_next_bit(m->out_of_sync, m->nr_chunks, m->cursor);
		if (chunk >= m->nr_chunks) {
			if (wrapped || !m->cursor)
				break;
			m->cursor = 0;
			wrapped = true;
			continue;
		}
		n = ptb_mirror_run_length(m, chunk);
		m->cursor = chunk + n;
		sector = (sector_t)chunk << m->chunk_shift;
		end = min_t(sector_t, (sector_t)(chunk + n) << m->chunk_shift, m->dev_sectors);
		if (ptb_mirror_add_copy(m, sector, end))
			ptb_rate_charge(&m->rate_next, READ_ONCE(m->speed), now,
					(u64)(end - sector) << SECTOR_SHIFT);
	}
	return 0;
}

/* Nothing out of sync, no copy registered: the target is identical. */
static void ptb_mirror_check_ready(struct ptb_mirror *m)
{
	spin_lock_irq(&m->lock);
	if (m->state == PTB_MIRROR_SYNCING && !m->nr_copies && !m->retry_at &&
	    find_first_bit(m->out_of_sync, m->nr_chunks) >= m->nr_chunks) {
		ptb_mirror_set_state(m, PTB_MIRROR_READY);
		DMINFO("%s: mirror %s ready: the target is in sync",
		       ptb_device_name(m->pd), m->id);
	}
	spin_unlock_irq(&m->lock);
}

static void ptb_mirror_do_work(struct work_struct *ws)
{
	struct ptb_mirror *m = container_of(to_delayed_work(ws), struct ptb_mirror, work);
	unsigned long delay = 0;

	ptb_mirror_start_waiting_copies(m);
	if (READ_ONCE(m->state) != PTB_MIRROR_SYNCING || READ_ONCE(m->pd->suspended))
		return;
	delay = ptb_mirror_resync(m);
	ptb_mirror_check_ready(m);
	if (delay)
		queue_delayed_work(m->wq, &m->work, delay);
}

/*----------------------------------------------------------------*/

/* Creation and end.  pd->lock held. */

struct ptb_mirror *ptb_mirror_find(struct ptb_device *pd, const char *id)
{
	struct ptb_mirror *m;

	lockdep_assert_held(&pd->lock);
	list_for_each_entry(m, &pd->mirrors, node)
		if (!strcmp(m->id, id))
			return m;
	return NULL;
}

static void ptb_mirror_refs_gone(struct percpu_ref *ref)
{
	struct ptb_mirror *m = container_of(ref, struct ptb_mirror, ref);

	complete(&m->refs_gone);
}

/* What the job holds besides its entry; it has stopped (or never ran). */
static void ptb_mirror_release(struct ptb_mirror *m)
{
	if (m->wq) {
		cancel_delayed_work_sync(&m->work);
		destroy_workqueue(m->wq);
		m->wq = NULL;
	}
	flush_work(&m->event_work);
	if (!IS_ERR_OR_NULL(m->kc))
		dm_kcopyd_client_destroy(m->kc);
	m->kc = NULL;
	bioset_exit(&m->bs);
	if (m->out_of_sync)
		m->final_out_of_sync = bitmap_weight(m->out_of_sync, m->nr_chunks);
	kvfree(m->out_of_sync);
	m->out_of_sync = NULL;
	ptb_bdev_close(&m->target, m);
}

static void ptb_mirror_free(struct ptb_mirror *m)
{
	ptb_mirror_release(m);
	percpu_ref_exit(&m->ref);
	kfree(m);
}

static int ptb_mirror_open_target(struct ptb_target *pt, struct ptb_mirror *m,
				  const char *path)
{
	const char *name = ptb_device_name(pt->pd);
	struct block_device *target, *origin = pt->origin->bdev;
	int r;

	r = ptb_bdev_open_excl(path, m, &m->target);
	if (r) {
		DMERR("%s: mirror start %s: cannot open target %s read-write%s (%d)",
		      name, m->id, path,
		      r == -EBUSY ? ": it is in use by a mount, device or job" : "", r);
		return r;
	}
	target = m->target.bdev;
	m->target_dev = target->bd_dev;
	if (bdev_nr_sectors(target) < pt->ti->len) {
		DMERR("%s: mirror start %s: target %s: %llu sectors, fewer than the device's %llu",
		      name, m->id, path, (unsigned long long)bdev_nr_sectors(target),
		      (unsigned long long)pt->ti->len);
		return -ENOSPC;
	}
	if (bdev_logical_block_size(target) > bdev_logical_block_size(origin)) {
		DMERR("%s: mirror start %s: target %s has %u-byte logical blocks, the origin %u",
		      name, m->id, path, bdev_logical_block_size(target),
		      bdev_logical_block_size(origin));
		return -EINVAL;
	}
	return 0;
}

/* The job's resources: copy engine, clones, the out-of-sync map. */
static int ptb_mirror_alloc(struct ptb_mirror *m)
{
	int r;

	m->out_of_sync = kvcalloc(BITS_TO_LONGS(m->nr_chunks), sizeof(long), GFP_KERNEL);
	if (!m->out_of_sync)
		return -ENOMEM;
	r = bioset_init(&m->bs, BIO_POOL_SIZE, 0, BIOSET_NEED_RESCUER);
	if (r)
		return r;
	m->kc = dm_kcopyd_client_create(NULL);
	if (IS_ERR(m->kc))
		return PTR_ERR(m->kc);
	m->wq = alloc_ordered_workqueue("ptb-mirror/%s", WQ_MEM_RECLAIM,
					ptb_device_name(m->pd));
	return m->wq ? 0 : -ENOMEM;
}

static struct ptb_mirror *ptb_mirror_new(struct ptb_target *pt,
					 const struct ptb_mirror_params *p, int *err)
{
	struct ptb_mirror *m = kzalloc(sizeof(*m), GFP_KERNEL);
	unsigned int i;
	int r;

	if (!m) {
		*err = -ENOMEM;
		return NULL;
	}
	m->pd = pt->pd;
	strscpy(m->id, p->id, sizeof(m->id));
	m->sync = p->sync;
	m->speed = p->speed;
	m->on_target_error = p->on_target_error;
	m->origin = pt->origin->bdev;
	m->chunk_shift = pt->chunk_shift;
	m->nr_chunks = pt->nr_chunks;
	m->dev_sectors = pt->ti->len;
	m->rate_next = ktime_get();
	spin_lock_init(&m->lock);
	INIT_LIST_HEAD(&m->writes);
	INIT_LIST_HEAD(&m->copies);
	init_waitqueue_head(&m->idle);
	init_completion(&m->refs_gone);
	INIT_DELAYED_WORK(&m->work, ptb_mirror_do_work);
	INIT_WORK(&m->event_work, ptb_mirror_do_event);
	atomic64_set(&m->bytes_copied, 0);
	for (i = 0; i < PTB_MIRROR_COPIES; i++)
		m->copy[i].m = m;

	r = percpu_ref_init(&m->ref, ptb_mirror_refs_gone, 0, GFP_KERNEL);
	if (r) {
		kfree(m);
		*err = r;
		return NULL;
	}
	r = ptb_mirror_open_target(pt, m, p->target_path);
	if (!r)
		r = ptb_mirror_alloc(m);
	if (r) {
		if (r == -ENOMEM)
			DMERR("%s: mirror start %s: out of memory", ptb_device_name(m->pd), m->id);
		ptb_mirror_free(m);
		*err = r;
		return NULL;
	}
	return m;
}

static int ptb_mirror_check_start(struct ptb_target *pt, const struct ptb_mirror_params *p)
{
	struct ptb_device *pd = pt->pd;
	const char *name = ptb_device_name(pd);
	struct ptb_mirror *active;

	if (ptb_job_find(pd, p->id) || ptb_mirror_find(pd, p->id)) {
		DMERR("%s: mirror start: job %s already exists", name, p->id);
		return -EEXIST;
	}
	if (pd->origin_change) {
		DMERR("%s: mirror start %s: a loaded table changes the origin device: resume or clear it first",
		      name, p->id);
		return -EBUSY;
	}
	if (pd->nr_jobs >= PTB_MAX_JOBS) {
		DMERR("%s: mirror start %s: too many jobs (%u): dismiss finished ones",
		      name, p->id, PTB_MAX_JOBS);
		return -ENOSPC;
	}
	active = rcu_dereference_protected(pd->mirror, lockdep_is_held(&pd->lock));
	if (active) {
		DMERR("%s: mirror start %s: mirror %s is active: one mirror at a time",
		      name, p->id, active->id);
		return -EBUSY;
	}
	return ptb_job_check_target(pt, "mirror start", p->id, p->target_path);
}

/*
 * Start mirroring.  Writes are held and drained while the job is
 * published, so every write after it goes to both devices; sync=none
 * trusts that the devices were identical before.
 */
int ptb_mirror_start(struct ptb_target *pt, const struct ptb_mirror_params *p)
{
	struct ptb_device *pd = pt->pd;
	struct ptb_mirror *m;
	int r;

	lockdep_assert_held(&pd->lock);
	r = ptb_mirror_check_start(pt, p);
	if (r)
		return r;
	m = ptb_mirror_new(pt, p, &r);
	if (!m)
		return r;
	if (p->sync == PTB_SYNC_FULL) {
		bitmap_set(m->out_of_sync, 0, m->nr_chunks);
		m->bytes_to_copy = (u64)m->dev_sectors << SECTOR_SHIFT;
		m->state = PTB_MIRROR_SYNCING;
	} else {
		m->state = PTB_MIRROR_READY;
	}

	ptb_hold_writes(&pd->gate);
	list_add_tail(&m->node, &pd->mirrors);
	pd->nr_jobs++;
	rcu_assign_pointer(pd->mirror, m);
	ptb_release_writes(&pd->gate);

	DMINFO("%s: mirror %s to %u:%u started, sync=%s, %lu chunks of %u sectors",
	       ptb_device_name(pd), m->id, MAJOR(m->target_dev), MINOR(m->target_dev),
	       ptb_sync_name(m->sync), m->nr_chunks, 1U << m->chunk_shift);
	pd->notify(pd);
	ptb_mirror_kick(m);
	return 0;
}

/*
 * Stop an active job in state to (already set): no new write takes it,
 * the writes and copies in flight end, then it lets go of its target.
 */
static void ptb_mirror_wind_down(struct ptb_mirror *m)
{
	struct ptb_device *pd = m->pd;

	rcu_assign_pointer(pd->mirror, NULL);
	percpu_ref_kill(&m->ref);
	wait_for_completion(&m->refs_gone);
	/* Copies started before; the worker may still start waiting ones. */
	flush_delayed_work(&m->work);
	wait_event(m->idle, !READ_ONCE(m->nr_copies));
	/* The last copy's end has let go of the lock: nothing touches m. */
	spin_lock_irq(&m->lock);
	spin_unlock_irq(&m->lock);
	ptb_mirror_release(m);
	pd->notify(pd);
}

static bool ptb_mirror_active(const struct ptb_mirror *m)
{
	return !ptb_mirror_stopped(READ_ONCE(m->state));
}

/*
 * Complete a ready job: with writes held and drained, the target has
 * every write; it is flushed, then no write goes to it any more.  A failed
 * flush is a target error (its cache may have lost writes: every chunk is
 * out of sync and copied again).
 */
int ptb_mirror_complete(struct ptb_mirror *m)
{
	struct ptb_device *pd = m->pd;
	const char *name = ptb_device_name(pd);
	bool in_sync;
	int r;

	if (READ_ONCE(m->state) != PTB_MIRROR_READY) {
		DMERR("%s: job complete %s: mirror is %s: it completes only when ready",
		      name, m->id, ptb_mirror_state_name(m));
		return -EINVAL;
	}
	ptb_hold_writes(&pd->gate);
	spin_lock_irq(&m->lock);
	in_sync = m->state == PTB_MIRROR_READY && !m->nr_copies &&
		  find_first_bit(m->out_of_sync, m->nr_chunks) >= m->nr_chunks;
	spin_unlock_irq(&m->lock);
	if (!in_sync) {
		ptb_release_writes(&pd->gate);
		DMERR("%s: job complete %s: mirror fell out of sync: try again once ready",
		      name, m->id);
		return -EBUSY;
	}
	r = blkdev_issue_flush(m->target.bdev);
	spin_lock_irq(&m->lock);
	if (r) {
		ptb_mirror_failed(m, PTB_SITE_FLUSH, r);
		ptb_mirror_mark(m, 0, m->dev_sectors);
	} else {
		ptb_mirror_set_state(m, PTB_MIRROR_COMPLETED);
	}
	spin_unlock_irq(&m->lock);
	ptb_release_writes(&pd->gate);
	if (r) {
		DMERR("%s: job complete %s: the target failed its flush (%d): mirror degraded",
		      name, m->id, r);
		return r;
	}
	ptb_mirror_wind_down(m);
	DMINFO("%s: mirror %s completed: %llu bytes copied", name, m->id,
	       (unsigned long long)atomic64_read(&m->bytes_copied));
	return 0;
}

/* Stop at once; the target may lack writes if the job was not ready. */
int ptb_mirror_cancel(struct ptb_mirror *m)
{
	int state;

	spin_lock_irq(&m->lock);
	state = m->state;
	if (!ptb_mirror_stopped(state))
		ptb_mirror_set_state(m, PTB_MIRROR_CANCELLED);
	spin_unlock_irq(&m->lock);
	if (ptb_mirror_stopped(state)) {
		DMERR("%s: job cancel %s: mirror is %s", ptb_device_name(m->pd), m->id,
		      ptb_mirror_state_names[state]);
		return -EINVAL;
	}
	DMINFO("%s: mirror %s cancelled while %s%s", ptb_device_name(m->pd), m->id,
	       ptb_mirror_state_names[state],
	       state == PTB_MIRROR_READY ? "" : ": the target is not consistent");
	ptb_mirror_wind_down(m);
	return 0;
}

/* A degraded job copies what its target missed, then is ready again. */
int ptb_mirror_resume(struct ptb_mirror *m)
{
	int r = -EINVAL;

	spin_lock_irq(&m->lock);
	if (m->state == PTB_MIRROR_DEGRADED) {
		m->retry_at = 0;
		ptb_mirror_set_state(m, PTB_MIRROR_SYNCING);
		r = 0;
	}
	spin_unlock_irq(&m->lock);
	if (r)
		DMERR("%s: job resume %s: mirror is %s: only a degraded mirror resumes",
		      ptb_device_name(m->pd), m->id, ptb_mirror_state_name(m));
	return r;
}

int ptb_mirror_dismiss(struct ptb_mirror *m)
{
	if (ptb_mirror_active(m)) {
		DMERR("%s: job dismiss %s: mirror is %s: complete or cancel it first",
		      ptb_device_name(m->pd), m->id, ptb_mirror_state_name(m));
		return -EBUSY;
	}
	list_del(&m->node);
	m->pd->nr_jobs--;
	ptb_mirror_free(m);
	return 0;
}

void ptb_mirror_set_speed(struct ptb_mirror *m, u64 speed)
{
	WRITE_ONCE(m->speed, speed);
	if (ptb_mirror_active(m))
		ptb_mirror_kick(m);
}

/*----------------------------------------------------------------*/

/* The device's hooks. */

static struct ptb_mirror *ptb_mirror_hold_active(struct ptb_device *pd)
{
	struct ptb_mirror *m;

	rcu_read_lock();
	m = ptb_mirror_get(pd);
	rcu_read_unlock();
	return m;
}

/* No write is in flight: wait for the copies, start no new one. */
void ptb_mirrors_postsuspend(struct ptb_device *pd)
{
	struct ptb_mirror *m = ptb_mirror_hold_active(pd);

	if (!m)
		return;
	flush_delayed_work(&m->work);
	wait_event(m->idle, !READ_ONCE(m->nr_copies));
	percpu_ref_put(&m->ref);
}

void ptb_mirrors_resume(struct ptb_device *pd)
{
	struct ptb_mirror *m = ptb_mirror_hold_active(pd);

	if (!m)
		return;
	ptb_mirror_kick(m);
	percpu_ref_put(&m->ref);
}

/* An active mirror copies from another origin or for another size. */
bool ptb_mirrors_elsewhere(struct ptb_device *pd, struct block_device *origin,
			   sector_t len)
{
	struct ptb_mirror *m;

	lockdep_assert_held(&pd->lock);
	m = rcu_dereference_protected(pd->mirror, lockdep_is_held(&pd->lock));
	return m && (m->origin != origin || m->dev_sectors != len);
}

void ptb_mirrors_cancel(struct ptb_device *pd)
{
	struct ptb_mirror *m;

	lockdep_assert_held(&pd->lock);
	list_for_each_entry(m, &pd->mirrors, node)
		if (ptb_mirror_active(m))
			ptb_mirror_cancel(m);
}

void ptb_mirrors_destroy(struct ptb_device *pd)
{
	struct ptb_mirror *m, *tmp;

	ptb_mirrors_cancel(pd);
	list_for_each_entry_safe(m, tmp, &pd->mirrors, node)
		ptb_mirror_dismiss(m);
}

/*----------------------------------------------------------------*/

static const char *ptb_mirror_state_name(const struct ptb_mirror *m)
{
	return ptb_mirror_state_names[READ_ONCE(m->state)];
}

/* Bytes the target lacks (chunks out of sync, the last one clipped). */
static u64 ptb_mirror_out_of_sync_bytes(const struct ptb_mirror *m)
{
	u64 chunks = m->out_of_sync ? bitmap_weight(m->out_of_sync, m->nr_chunks) :
				      m->final_out_of_sync;
	u64 bytes = chunks << (m->chunk_shift + SECTOR_SHIFT);

	return min_t(u64, bytes, (u64)m->dev_sectors << SECTOR_SHIFT);
}

/* Like ptb_job_emit(): a status line's job, or a line of `job list'. */
static unsigned int ptb_mirror_emit(const struct ptb_mirror *m, char *result,
				    unsigned int maxlen, unsigned int sz, bool verbose)
{
	u64 total = (u64)m->dev_sectors << SECTOR_SHIFT;
	u64 out = ptb_mirror_out_of_sync_bytes(m);
	enum ptb_error_site site = READ_ONCE(m->error_site);
	char error[32] = "-";

	if (site != PTB_SITE_NONE)
		snprintf(error, sizeof(error), "%s:%d", ptb_mirror_site_names[site],
			 READ_ONCE(m->last_error));
	if (!verbose) {
		DMEMIT(" %s mirror %s %s %llu %llu %llu %s", m->id, ptb_sync_name(m->sync),
		       ptb_mirror_state_name(m), total - out, total,
		       (unsigned long long)READ_ONCE(m->speed), error);
		return sz;
	}
	DMEMIT("%s type=mirror sync=%s state=%s done=%llu total=%llu speed=%llu",
	       m->id, ptb_sync_name(m->sync), ptb_mirror_state_name(m), total - out,
	       total, (unsigned long long)READ_ONCE(m->speed));
	DMEMIT(" target=%u:%u chunk=%u error=%s in_sync=%llu out_of_sync=%llu copied=%llu\n",
	       MAJOR(m->target_dev), MINOR(m->target_dev), 1U << m->chunk_shift, error,
	       total - out, out, (unsigned long long)atomic64_read(&m->bytes_copied));
	return sz;
}

unsigned int ptb_mirrors_emit(struct ptb_device *pd, char *result,
			      unsigned int maxlen, unsigned int sz, bool verbose)
{
	struct ptb_mirror *m;

	lockdep_assert_held(&pd->lock);
	list_for_each_entry(m, &pd->mirrors, node)
		sz = ptb_mirror_emit(m, result, maxlen, sz, verbose);
	return sz;
}

// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup copy-before-write engine.
 *
 * A write to a chunk that an active job has not copied yet is deferred to
 * the worker.  The worker looks the (job, chunk) pair up in the copy table,
 * starts a copy if there is none, and parks the bio on the copy.  A copy
 * reads the chunk's old data from the origin into one of the job's slot
 * buffers, writes it to the job's target (as write-zeroes when the chunk is
 * all zeroes and the target supports it), marks the chunk done, and sends
 * the parked bios back through the check: another job may still need the
 * same chunk.  The background sweep of sync=full jobs uses the same copies.
 *
 * Write accounting gives `backup start' its point in time: every write is
 * counted from map to end_io; a new job holds new writes back, waits for the
 * count to drain, publishes itself and lets the held writes go.
 */

#include <linux/hash.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

#include "ptb-device.h"
#include "ptb-bitmap.h"
#include "ptb-cow.h"
#include "ptb-job.h"

#define DM_MSG_PREFIX "ptbackup"

#define PTB_COPY_POOL_SIZE	16
#define PTB_ENOMEM_RETRY	(HZ / 50)

enum ptb_copy_stage {
	PTB_COPY_QUEUED,	/* waiting for a slot buffer */
	PTB_COPY_READING,	/* reading the origin */
	PTB_COPY_WRITING,	/* writing the target */
};

struct ptb_copy {
	struct hlist_node hnode;	/* pd->copies */
	struct list_head list;		/* job->slot_waiters or pd->completed */
	struct ptb_job *job;
	unsigned long chunk;
	sector_t sector;
	sector_t len;
	void *buf;
	struct bio_list waiters;	/* writes waiting for this copy */
	enum ptb_copy_stage stage;
	int error;
	bool zero;
	bool write_zeroes;	/* the target write is a write-zeroes */
};

/*
 * Jobs are freed only after the worker has been flushed (job dismiss and
 * device destruction), so the worker may walk the job list without holding
 * rcu_read_lock() across the sleeps of I/O submission.
 */
static inline bool __maybe_unused ptb_in_worker(struct ptb_device *pd)
{
	return current_work() == &pd->worker;
}

#define for_each_job_in_worker(job, pd) \
	list_for_each_entry_rcu(job, &(pd)->jobs, node, ptb_in_worker(pd))

/*----------------------------------------------------------------*/

/* The first chunk in [sector, sector + sectors) that job still needs. */
static bool ptb_job_first_pending(const struct ptb_job *job, sector_t sector,
				  unsigned int sectors, unsigned long *chunk)
{
	unsigned long first, last, c;

	if (!sectors || !ptb_job_active(job))
		return false;
	first = ptb_sector_to_chunk(sector, job->chunk_shift);
	if (first >= job->nr_chunks)
		return false;
	last = ptb_sector_to_chunk(sector + sectors - 1, job->chunk_shift);
	if (last >= job->nr_chunks)
		last = job->nr_chunks - 1;
	c = find_next_zero_bit(job->done, last + 1, first);
	if (c > last)
		return false;
	*chunk = c;
	return true;
}

/* Does this write touch a chunk that an active job still needs? */
bool ptb_write_needs_cow(struct ptb_device *pd, struct bio *bio)
{
	struct ptb_job *job;
	unsigned long chunk;
	bool needed = false;

	rcu_read_lock();
	list_for_each_entry_rcu(job, &pd->jobs, node) {
		if (ptb_job_first_pending(job, bio->bi_iter.bi_sector,
					  bio_sectors(bio), &chunk)) {
			needed = true;
			break;
		}
	}
	rcu_read_unlock();
	return needed;
}

/*
 * Copies and final flushes in flight, from their start to the worker's
 * last look at them: postsuspend waits until there are none.
 */
void ptb_io_start(struct ptb_device *pd)
{
	atomic_inc(&pd->io_in_flight);
}

void ptb_io_end(struct ptb_device *pd)
{
	if (atomic_dec_and_test(&pd->io_in_flight))
		wake_up_all(&pd->io_idle);
}

void ptb_wake_worker(struct ptb_device *pd)
{
	queue_work(pd->wq, &pd->worker);
}

void ptb_defer_bio(struct ptb_device *pd, struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&pd->bio_lock, flags);
	bio_list_add(&pd->deferred_bios, bio);
	spin_unlock_irqrestore(&pd->bio_lock, flags);
	ptb_wake_worker(pd);
}

/*----------------------------------------------------------------*/

/* Write accounting and the hold used by `backup start'. */

/*
 * Count a write as in flight.  Returns false if writes are being held for a
 * new job: the bio then sits on the held list until ptb_release_writes().
 * Pairs with the barrier in ptb_hold_writes().
 */
bool ptb_account_write(struct ptb_device *pd, struct ptb_bio *pb,
		       struct bio *bio)
{
	unsigned long flags;
	bool held;

	atomic_inc(&pd->writes_in_flight);
	/* Count before looking at the hold: pairs with smp_mb() in hold. */
	smp_mb__after_atomic();
	/* Acquire: a lifted hold means the new job is on the list. */
	if (likely(!smp_load_acquire(&pd->hold_writes))) {
		pb->counted = true;
		return true;
	}

	pb->counted = true;
	ptb_write_done(pd, pb);
	spin_lock_irqsave(&pd->bio_lock, flags);
	/* Re-check under the lock: the hold may have just been lifted. */
	held = pd->hold_writes;
	if (held)
		bio_list_add(&pd->held_bios, bio);
	else
		bio_list_add(&pd->deferred_bios, bio);
	spin_unlock_irqrestore(&pd->bio_lock, flags);
	if (!held)
		ptb_wake_worker(pd);
	return false;
}

void ptb_write_done(struct ptb_device *pd, struct ptb_bio *pb)
{
	if (!pb->counted)
		return;
	pb->counted = false;
	/* Full barrier in atomic_dec_and_test() pairs with ptb_hold_writes(). */
	if (atomic_dec_and_test(&pd->writes_in_flight) &&
	    READ_ONCE(pd->hold_writes))
		wake_up(&pd->writes_drained);
}

/*
 * Hold back new writes and wait until every write already mapped has
 * completed.  Writes waiting for a copy or a bitmap commit count as in
 * flight; copies and commits make progress without the hold being lifted,
 * so this cannot deadlock.  Holds pd->hold_lock until ptb_release_writes().
 */
static void ptb_hold_writes_locked(struct ptb_device *pd)
{
	/*
	 * Reclaim must not write to this device while its writes are held:
	 * every allocation until the release is GFP_NOIO.
	 */
	pd->hold_noio = memalloc_noio_save();
	pd->hold_owner = current;
	pd->hold_depth = 1;
	spin_lock_irq(&pd->bio_lock);
	WRITE_ONCE(pd->hold_writes, 1);
	spin_unlock_irq(&pd->bio_lock);
	/* Hold before reading the count: pairs with ptb_account_write(). */
	smp_mb();
	wait_event(pd->writes_drained, !atomic_read(&pd->writes_in_flight));
}

void ptb_hold_writes(struct ptb_device *pd)
{
	/* Nested holds (a transaction's elements) are free. */
	if (pd->hold_owner == current) {
		pd->hold_depth++;
		return;
	}
	mutex_lock(&pd->hold_lock);
	ptb_hold_writes_locked(pd);
}

/* Hold writes unless somebody else holds them; never nested. */
bool ptb_try_hold_writes(struct ptb_device *pd)
{
	if (!mutex_trylock(&pd->hold_lock))
		return false;
	ptb_hold_writes_locked(pd);
	return true;
}

void ptb_release_writes(struct ptb_device *pd)
{
	if (--pd->hold_depth)
		return;
	pd->hold_owner = NULL;
	memalloc_noio_restore(pd->hold_noio);
	spin_lock_irq(&pd->bio_lock);
	/* Release: the new job is published before writes see no hold. */
	smp_store_release(&pd->hold_writes, 0);
	bio_list_merge(&pd->deferred_bios, &pd->held_bios);
	bio_list_init(&pd->held_bios);
	spin_unlock_irq(&pd->bio_lock);
	mutex_unlock(&pd->hold_lock);
	ptb_wake_worker(pd);
}

/*----------------------------------------------------------------*/

/* The copy table.  Worker only. */

static unsigned long ptb_copy_key(const struct ptb_job *job, unsigned long chunk)
{
	return chunk ^ hash_ptr(job, BITS_PER_LONG);
}

static struct ptb_copy *ptb_copy_find(struct ptb_job *job, unsigned long chunk)
{
	struct ptb_device *pd = job->pd;
	struct ptb_copy *c;

	hash_for_each_possible(pd->copies, c, hnode, ptb_copy_key(job, chunk))
		if (c->job == job && c->chunk == chunk)
			return c;
	return NULL;
}

bool ptb_copy_in_flight(struct ptb_job *job, unsigned long chunk)
{
	return !!ptb_copy_find(job, chunk);
}

/* The RCU read section keeps pd alive until it returns (ptb_cow_exit()). */
static void ptb_copy_io_done(unsigned long error, void *context)
{
	struct ptb_copy *c = context;
	struct ptb_device *pd = c->job->pd;
	unsigned long flags;

	rcu_read_lock();
	c->error = error ? -EIO : 0;
	spin_lock_irqsave(&pd->bio_lock, flags);
	list_add_tail(&c->list, &pd->completed_copies);
	spin_unlock_irqrestore(&pd->bio_lock, flags);
	ptb_wake_worker(pd);
	rcu_read_unlock();
}

static void ptb_copy_submit(struct ptb_copy *c, blk_opf_t opf,
			    struct block_device *bdev)
{
	struct ptb_job *job = c->job;
	struct dm_io_region where = {
		.bdev = bdev,
		.sector = c->sector,
		.count = c->len,
	};
	struct dm_io_request req = {
		.bi_opf = opf,
		.mem.type = DM_IO_VMA,
		.mem.ptr.vma = c->buf,
		.notify.fn = ptb_copy_io_done,
		.notify.context = c,
		.client = job->pd->io_client,
	};
	int r;

	r = ptb_dm_io(&req, 1, &where);
	if (r)
		ptb_copy_io_done(1, c);
}

static void ptb_copy_read(struct ptb_copy *c)
{
	struct ptb_job *job = c->job;

	c->buf = job->slot_buf[--job->free_slots];
	c->stage = PTB_COPY_READING;
	ptb_copy_submit(c, REQ_OP_READ, job->origin);
}

/*
 * All-zero chunks go out as write-zeroes where the target offers it; if
 * the target rejects one, the chunk is written as data and the job stops
 * using write-zeroes (ptb_copy_advance()).
 */
static void ptb_copy_write(struct ptb_copy *c)
{
	struct ptb_job *job = c->job;
	struct block_device *target = job->target.bdev;

	c->zero = !memchr_inv(c->buf, 0, c->len << SECTOR_SHIFT);
	c->write_zeroes = c->zero && !job->no_write_zeroes &&
			  bdev_write_zeroes_sectors(target);
	c->stage = PTB_COPY_WRITING;
	ptb_copy_submit(c, c->write_zeroes ? REQ_OP_WRITE_ZEROES : REQ_OP_WRITE,
			target);
}

/*
 * Find the copy of this chunk for this job, starting one if there is none.
 * Returns NULL when no descriptor could be had without sleeping on the
 * pool (whose elements only the worker itself gives back).
 */
static struct ptb_copy *ptb_copy_get(struct ptb_job *job, unsigned long chunk)
{
	struct ptb_device *pd = job->pd;
	struct ptb_copy *c;
	sector_t sector;

	c = ptb_copy_find(job, chunk);
	if (c)
		return c;

	c = mempool_alloc(&pd->copy_pool, GFP_NOWAIT | __GFP_NOWARN);
	if (!c)
		return NULL;

	sector = (sector_t)chunk << job->chunk_shift;
	c->job = job;
	c->chunk = chunk;
	c->sector = sector;
	c->len = min_t(sector_t, (sector_t)1 << job->chunk_shift,
		       job->dev_sectors - sector);
	c->buf = NULL;
	bio_list_init(&c->waiters);
	c->error = 0;
	c->zero = false;
	c->write_zeroes = false;
	c->stage = PTB_COPY_QUEUED;
	ptb_io_start(pd);
	hash_add(pd->copies, &c->hnode, ptb_copy_key(job, chunk));
	job->copies_in_flight++;

	if (job->free_slots)
		ptb_copy_read(c);
	else
		list_add_tail(&c->list, &job->slot_waiters);
	return c;
}

int ptb_copy_start(struct ptb_job *job, unsigned long chunk)
{
	return ptb_copy_get(job, chunk) ? 0 : -ENOMEM;
}

static void ptb_requeue_bios(struct ptb_device *pd, struct bio_list *bios)
{
	unsigned long flags;

	if (bio_list_empty(bios))
		return;
	spin_lock_irqsave(&pd->bio_lock, flags);
	bio_list_merge(&pd->deferred_bios, bios);
	spin_unlock_irqrestore(&pd->bio_lock, flags);
	bio_list_init(bios);
}

static void ptb_copy_finish(struct ptb_copy *c)
{
	struct ptb_job *job = c->job;
	struct ptb_device *pd = job->pd;
	struct ptb_copy *next;

	hash_del(&c->hnode);
	ptb_requeue_bios(pd, &c->waiters);

	job->slot_buf[job->free_slots++] = c->buf;
	job->copies_in_flight--;
	mempool_free(c, &pd->copy_pool);
	ptb_io_end(pd);

	next = list_first_entry_or_null(&job->slot_waiters, struct ptb_copy, list);
	if (next) {
		list_del(&next->list);
		ptb_copy_read(next);
	}
}

static void ptb_fail_bios(struct bio_list *bios)
{
	struct bio *bio;

	while ((bio = bio_list_pop(bios)))
		bio_io_error(bio);
}

static void ptb_copy_failed(struct ptb_copy *c, enum ptb_error_site site)
{
	struct ptb_job *job = c->job;

	if (bio_list_empty(&c->waiters)) {
		ptb_job_error(job, site, c->error,
			      site == PTB_SITE_SOURCE ? job->on_source_error :
							job->on_target_error);
	} else if (job->on_cbw_error == PTB_CBW_BREAK_GUEST_WRITE) {
		DMERR_LIMIT("%s: job %s: copy of chunk %lu failed (%d), failing the write",
			    ptb_device_name(job->pd), job->id, c->chunk, c->error);
		ptb_job_record_error(job, PTB_SITE_CBW, c->error);
		ptb_fail_bios(&c->waiters);
	} else {
		ptb_job_fail(job, PTB_SITE_CBW, c->error);
	}
	ptb_copy_finish(c);
}

static void ptb_copy_advance(struct ptb_copy *c)
{
	switch (c->stage) {
	case PTB_COPY_READING:
		if (c->error)
			ptb_copy_failed(c, PTB_SITE_SOURCE);
		else
			ptb_copy_write(c);
		break;
	case PTB_COPY_WRITING:
		if (c->error && c->write_zeroes) {
			DMWARN_LIMIT("%s: job %s: target rejected write-zeroes (%d), writing zeroes as data",
				     ptb_device_name(c->job->pd), c->job->id, c->error);
			c->job->no_write_zeroes = true;
			c->error = 0;
			c->write_zeroes = false;
			ptb_copy_submit(c, REQ_OP_WRITE, c->job->target.bdev);
		} else if (c->error) {
			ptb_copy_failed(c, PTB_SITE_TARGET);
		} else {
			ptb_job_copy_done(c->job, c->chunk, c->len, c->zero);
			ptb_copy_finish(c);
		}
		break;
	default:
		WARN_ON_ONCE(1);
	}
}

/*----------------------------------------------------------------*/

/* The worker. */

/* Returns false if the bio could not be handled now and must be retried. */
static bool ptb_handle_write(struct ptb_device *pd, struct bio *bio)
{
	struct ptb_bio *pb = dm_per_bio_data(bio, sizeof(struct ptb_bio));
	struct ptb_job *job;
	struct ptb_copy *c;
	unsigned long chunk;

	if (!pb->counted) {
		/* Held by a hold: it has not been through the map checks. */
		if (!ptb_account_write(pd, pb, bio))
			return true;
		if (ptb_bitmaps_mark(pd, bio)) {
			ptb_defer_mark(pd, bio);
			return true;
		}
	}

	for_each_job_in_worker(job, pd) {
		if (!ptb_job_first_pending(job, bio->bi_iter.bi_sector,
					   bio_sectors(bio), &chunk))
			continue;
		c = ptb_copy_get(job, chunk);
		if (!c)
			return false;
		bio_list_add(&c->waiters, bio);
		return true;
	}

	dm_submit_bio_remap(bio, NULL);
	return true;
}

static void ptb_process_completed(struct ptb_device *pd, struct list_head *done)
{
	struct ptb_copy *c, *tmp;

	list_for_each_entry_safe(c, tmp, done, list) {
		list_del(&c->list);
		ptb_copy_advance(c);
	}
}

/* Returns true if some bio could not be handled for lack of memory. */
static bool ptb_process_deferred(struct ptb_device *pd, struct bio_list *bios)
{
	struct bio_list retry = BIO_EMPTY_LIST;
	struct bio *bio;

	while ((bio = bio_list_pop(bios))) {
		if (!ptb_handle_write(pd, bio))
			bio_list_add(&retry, bio);
	}
	if (bio_list_empty(&retry))
		return false;
	ptb_requeue_bios(pd, &retry);
	return true;
}

void ptb_do_worker(struct work_struct *ws)
{
	struct ptb_device *pd = container_of(ws, struct ptb_device, worker);
	unsigned long wake = 0, delay;
	struct bio_list bios;
	LIST_HEAD(done);
	struct ptb_job *job;

	for (;;) {
		spin_lock_irq(&pd->bio_lock);
		list_splice_init(&pd->completed_copies, &done);
		bios = pd->deferred_bios;
		bio_list_init(&pd->deferred_bios);
		spin_unlock_irq(&pd->bio_lock);

		if (list_empty(&done) && bio_list_empty(&bios))
			break;
		ptb_process_completed(pd, &done);
		if (ptb_process_deferred(pd, &bios)) {
			wake = PTB_ENOMEM_RETRY;
			break;
		}
		cond_resched();
	}

	for_each_job_in_worker(job, pd) {
		delay = ptb_job_service(job);
		if (delay && (!wake || delay < wake))
			wake = delay;
	}

	if (wake)
		mod_delayed_work(pd->wq, &pd->waker, wake);
}

void ptb_do_waker(struct work_struct *ws)
{
	struct ptb_device *pd = container_of(to_delayed_work(ws),
					     struct ptb_device, waker);

	ptb_wake_worker(pd);
}

/*----------------------------------------------------------------*/

int ptb_cow_init(struct ptb_device *pd)
{
	int r;

	spin_lock_init(&pd->bio_lock);
	bio_list_init(&pd->held_bios);
	bio_list_init(&pd->deferred_bios);
	INIT_LIST_HEAD(&pd->completed_copies);
	atomic_set(&pd->writes_in_flight, 0);
	init_waitqueue_head(&pd->writes_drained);
	atomic_set(&pd->io_in_flight, 0);
	init_waitqueue_head(&pd->io_idle);
	hash_init(pd->copies);
	INIT_WORK(&pd->worker, ptb_do_worker);
	INIT_DELAYED_WORK(&pd->waker, ptb_do_waker);

	r = mempool_init_kmalloc_pool(&pd->copy_pool, PTB_COPY_POOL_SIZE,
				      sizeof(struct ptb_copy));
	if (r)
		return r;

	pd->io_client = dm_io_client_create();
	if (IS_ERR(pd->io_client)) {
		r = PTR_ERR(pd->io_client);
		goto bad_io_client;
	}

	pd->wq = alloc_ordered_workqueue("dm-ptbackup", WQ_MEM_RECLAIM);
	if (!pd->wq) {
		r = -ENOMEM;
		goto bad_wq;
	}
	return 0;

bad_wq:
	dm_io_client_destroy(pd->io_client);
bad_io_client:
	mempool_exit(&pd->copy_pool);
	return r;
}

/* All jobs are released: no copies, no deferred bios. */
void ptb_cow_exit(struct ptb_device *pd)
{
	/* I/O completions still returning (ptb_copy_io_done()). */
	synchronize_rcu();
	flush_workqueue(pd->wq);
	cancel_delayed_work_sync(&pd->waker);
	destroy_workqueue(pd->wq);
	WARN_ON_ONCE(!hash_empty(pd->copies));
	WARN_ON_ONCE(!bio_list_empty(&pd->deferred_bios));
	dm_io_client_destroy(pd->io_client);
	mempool_exit(&pd->copy_pool);
}

// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup copy-before-write engine.
 *
 * A write to a chunk that a protected image has not saved yet is deferred
 * to the worker.  The worker looks the (image, chunk) pair up in the copy
 * table, starts a copy if there is none, and parks the bio on the copy.  A
 * copy reads the chunk's old data from the origin into one of the image's
 * slot buffers, writes it to the image's target (as write-zeroes when the
 * chunk is all zeroes and the target supports it), marks the chunk done,
 * and sends the parked bios back through the check: another image may
 * still need the same chunk.  An owner's background copies (the sweep of
 * a sync=full backup) use the same copies, through ptb_copy_start().
 *
 * The point in time of an image comes from the write gate (ptb-gate.c).
 */

#include <linux/hash.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

#include "ptb-cow.h"

#define DM_MSG_PREFIX "ptbackup"

#define PTB_COPY_POOL_SIZE	16
#define PTB_ENOMEM_RETRY	(HZ / 50)

enum ptb_copy_stage {
	PTB_COPY_QUEUED,	/* waiting for a slot buffer */
	PTB_COPY_READING,	/* reading the origin */
	PTB_COPY_WRITING,	/* writing the target */
};

/* A copy's entry in the copy table for one of the chunks it covers. */
struct ptb_copy_key {
	struct hlist_node hnode;	/* cow->copies */
	struct ptb_copy *copy;
	unsigned long chunk;
};

/*
 * One copy: nr adjacent chunks (one for a write's copy-before-write, up to
 * PTB_RUN_MAX_CHUNKS for the background sweep), read with one I/O into nr
 * adjacent slot buffers and written with one I/O.
 */
struct ptb_copy {
	struct ptb_copy_key keys[PTB_RUN_MAX_CHUNKS];
	struct list_head list;		/* img->slot_waiters or cow->completed_copies */
	struct ptb_image *img;
	unsigned long chunk;		/* the first */
	unsigned int nr;
	unsigned int slot;		/* the first slot buffer */
	sector_t sector;
	sector_t len;
	void *buf;
	struct bio_list waiters;	/* writes waiting for this copy */
	enum ptb_copy_stage stage;
	int error;
	unsigned int wpos;	/* the piece being written: chunks wpos.. */
	unsigned int wlen;	/* ..wpos + wlen */
	sector_t zero_len;	/* sectors written as zeroes so far */
	bool zero;		/* the piece is all zeroes */
	bool write_zeroes;	/* the piece's write is a write-zeroes */
};

/*
 * Images are freed only after the worker has been flushed
 * (ptb_image_unpublish()), so the worker may walk the image list without
 * holding rcu_read_lock() across the sleeps of I/O submission.
 */
static inline bool __maybe_unused ptb_in_worker(struct ptb_cow *cow)
{
	return current_work() == &cow->worker;
}

#define for_each_image_in_worker(img, cow) \
	list_for_each_entry_rcu(img, &(cow)->images, node, ptb_in_worker(cow))

/*----------------------------------------------------------------*/

/* Images. */

int ptb_image_init(struct ptb_image *img, struct ptb_cow *cow,
		   const struct ptb_image_ops *ops, const char *name,
		   unsigned int chunk_shift, sector_t dev_sectors,
		   unsigned int nr_slots)
{
	size_t size = (size_t)1 << (chunk_shift + SECTOR_SHIFT);

	img->cow = cow;
	img->ops = ops;
	img->name = name;
	img->protected = true;
	img->chunk_shift = chunk_shift;
	img->dev_sectors = dev_sectors;
	img->nr_chunks = DIV_ROUND_UP_SECTOR_T(dev_sectors, (sector_t)1 << chunk_shift);
	INIT_LIST_HEAD(&img->slot_waiters);
	img->done = kvcalloc(BITS_TO_LONGS(img->nr_chunks), sizeof(long), GFP_KERNEL);
	img->slot_used = bitmap_zalloc(nr_slots, GFP_KERNEL);
	/* One area: a run of chunks reads into adjacent slots. */
	img->slot_area = vmalloc(array_size(nr_slots, size));
	if (!img->done || !img->slot_used || !img->slot_area)
		return -ENOMEM;
	img->nr_slots = nr_slots;
	img->free_slots = nr_slots;
	return 0;
}

/* The chunk buffers; no copy may be in flight. */
void ptb_image_free_buffers(struct ptb_image *img)
{
	vfree(img->slot_area);
	img->slot_area = NULL;
	bitmap_free(img->slot_used);
	img->slot_used = NULL;
}

/* Everything ptb_image_init() allocated, even after it failed. */
void ptb_image_exit(struct ptb_image *img)
{
	ptb_image_free_buffers(img);
	kvfree(img->done);
	img->done = NULL;
}

void ptb_image_publish(struct ptb_image *img)
{
	lockdep_assert_held(img->cow->images_lock);
	list_add_tail_rcu(&img->node, &img->cow->images);
}

/* Neither the map path nor the worker sees the image once this returns. */
void ptb_image_unpublish(struct ptb_image *img)
{
	lockdep_assert_held(img->cow->images_lock);
	list_del_rcu(&img->node);
	/* Completions of its copies run under RCU (ptb_copy_io_done()). */
	synchronize_rcu();
	flush_work(&img->cow->worker);
}

void ptb_image_unprotect(struct ptb_image *img)
{
	WRITE_ONCE(img->protected, false);
}

/* The first chunk in [sector, sector + sectors) that img still needs. */
static bool ptb_image_first_pending(const struct ptb_image *img, sector_t sector,
				    unsigned int sectors, unsigned long *chunk)
{
	unsigned long first, last, c;

	if (!sectors || !READ_ONCE(img->protected))
		return false;
	first = ptb_sector_to_chunk(sector, img->chunk_shift);
	if (first >= img->nr_chunks)
		return false;
	last = ptb_sector_to_chunk(sector + sectors - 1, img->chunk_shift);
	if (last >= img->nr_chunks)
		last = img->nr_chunks - 1;
	c = find_next_zero_bit(img->done, last + 1, first);
	if (c > last)
		return false;
	*chunk = c;
	return true;
}

/* Does this write touch a chunk that a protected image still needs? */
bool ptb_write_needs_cow(struct ptb_cow *cow, struct bio *bio)
{
	struct ptb_image *img;
	unsigned long chunk;
	bool needed = false;

	rcu_read_lock();
	list_for_each_entry_rcu(img, &cow->images, node) {
		if (ptb_image_first_pending(img, bio->bi_iter.bi_sector,
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
void ptb_io_start(struct ptb_cow *cow)
{
	atomic_inc(&cow->io_in_flight);
}

void ptb_io_end(struct ptb_cow *cow)
{
	if (atomic_dec_and_test(&cow->io_in_flight))
		wake_up_all(&cow->io_idle);
}

void ptb_wake_worker(struct ptb_cow *cow)
{
	queue_work(cow->wq, &cow->worker);
}

void ptb_defer_bio(struct ptb_cow *cow, struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&cow->lock, flags);
	bio_list_add(&cow->deferred_bios, bio);
	spin_unlock_irqrestore(&cow->lock, flags);
	ptb_wake_worker(cow);
}

/*----------------------------------------------------------------*/

/* The copy table.  Worker only. */

static unsigned long ptb_copy_key(const struct ptb_image *img, unsigned long chunk)
{
	return chunk ^ hash_ptr(img, BITS_PER_LONG);
}

static struct ptb_copy *ptb_copy_find(struct ptb_image *img, unsigned long chunk)
{
	struct ptb_cow *cow = img->cow;
	struct ptb_copy_key *k;

	hash_for_each_possible(cow->copies, k, hnode, ptb_copy_key(img, chunk))
		if (k->chunk == chunk && k->copy->img == img)
			return k->copy;
	return NULL;
}

static void ptb_copy_hash(struct ptb_copy *c)
{
	struct ptb_copy_key *k;
	unsigned int i;

	for (i = 0; i < c->nr; i++) {
		k = &c->keys[i];
		k->copy = c;
		k->chunk = c->chunk + i;
		hash_add(c->img->cow->copies, &k->hnode, ptb_copy_key(c->img, k->chunk));
	}
}

static void ptb_copy_unhash(struct ptb_copy *c)
{
	unsigned int i;

	for (i = 0; i < c->nr; i++)
		hash_del(&c->keys[i].hnode);
}

bool ptb_copy_in_flight(struct ptb_image *img, unsigned long chunk)
{
	return !!ptb_copy_find(img, chunk);
}

/* The RCU read section keeps cow alive until it returns (ptb_cow_exit()). */
static void ptb_copy_io_done(unsigned long error, void *context)
{
	struct ptb_copy *c = context;
	struct ptb_cow *cow = c->img->cow;
	unsigned long flags;

	rcu_read_lock();
	c->error = error ? -EIO : 0;
	spin_lock_irqsave(&cow->lock, flags);
	list_add_tail(&c->list, &cow->completed_copies);
	spin_unlock_irqrestore(&cow->lock, flags);
	ptb_wake_worker(cow);
	rcu_read_unlock();
}

/* Read or write chunks [first, first + nr) of the copy. */
static void ptb_copy_submit(struct ptb_copy *c, blk_opf_t opf,
			    struct block_device *bdev, unsigned int first,
			    unsigned int nr)
{
	struct ptb_image *img = c->img;
	sector_t off = (sector_t)first << img->chunk_shift;
	struct dm_io_region where = {
		.bdev = bdev,
		.sector = c->sector + off,
		.count = min_t(sector_t, (sector_t)nr << img->chunk_shift, c->len - off),
	};
	struct dm_io_request req = {
		.bi_opf = opf,
		.mem.type = DM_IO_VMA,
		.mem.ptr.vma = c->buf + (off << SECTOR_SHIFT),
		.notify.fn = ptb_copy_io_done,
		.notify.context = c,
		.client = img->cow->io_client,
	};
	int r;

	r = ptb_dm_io(&req, 1, &where);
	if (r)
		ptb_copy_io_done(1, c);
}

/* The first of nr adjacent free slots, or nr_slots if there are none. */
static unsigned int ptb_slots_find(struct ptb_image *img, unsigned int nr)
{
	if (nr > img->free_slots)
		return img->nr_slots;
	return bitmap_find_next_zero_area(img->slot_used, img->nr_slots, 0, nr, 0);
}

/* Start reading into nr adjacent free slots from slot on. */
static void ptb_copy_read(struct ptb_copy *c, unsigned int slot)
{
	struct ptb_image *img = c->img;

	c->slot = slot;
	bitmap_set(img->slot_used, slot, c->nr);
	img->free_slots -= c->nr;
	c->buf = img->slot_area + ((size_t)slot << (img->chunk_shift + SECTOR_SHIFT));
	c->stage = PTB_COPY_READING;
	ptb_copy_submit(c, REQ_OP_READ, img->origin, 0, c->nr);
}

/* Is chunk i of the copy all zeroes?  (The last one may be short.) */
static bool ptb_copy_chunk_zero(const struct ptb_copy *c, unsigned int i)
{
	unsigned int shift = c->img->chunk_shift;
	sector_t off = (sector_t)i << shift;
	sector_t len = min_t(sector_t, (sector_t)1 << shift, c->len - off);

	return !memchr_inv(c->buf + (off << SECTOR_SHIFT), 0, len << SECTOR_SHIFT);
}

/*
 * Write the copy's next piece, from chunk wpos on: the longest run of
 * chunks that all hold zeroes, or that all hold data.  Zeroes go out as
 * write-zeroes where the target offers it (a thin or sparse target stays
 * unallocated there); if the target rejects one, the piece is written as
 * data and the image stops using write-zeroes (ptb_copy_advance()).
 */
static void ptb_copy_write(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	struct block_device *target = img->target;
	bool zero = ptb_copy_chunk_zero(c, c->wpos);
	unsigned int n = 1;

	while (c->wpos + n < c->nr && ptb_copy_chunk_zero(c, c->wpos + n) == zero)
		n++;
	c->wlen = n;
	c->zero = zero;
	c->write_zeroes = zero && !img->no_write_zeroes &&
			  bdev_write_zeroes_sectors(target);
	c->stage = PTB_COPY_WRITING;
	ptb_copy_submit(c, c->write_zeroes ? REQ_OP_WRITE_ZEROES : REQ_OP_WRITE,
			target, c->wpos, n);
}

/*
 * A new copy of chunks [chunk, chunk + nr), in the copy table.  NULL when
 * no descriptor could be had without sleeping on the pool (whose elements
 * only the worker itself gives back).
 */
static struct ptb_copy *ptb_copy_new(struct ptb_image *img, unsigned long chunk,
				     unsigned int nr)
{
	struct ptb_cow *cow = img->cow;
	struct ptb_copy *c;
	sector_t sector;

	c = mempool_alloc(&cow->copy_pool, GFP_NOWAIT | __GFP_NOWARN);
	if (!c)
		return NULL;

	sector = (sector_t)chunk << img->chunk_shift;
	c->img = img;
	c->chunk = chunk;
	c->nr = nr;
	c->sector = sector;
	c->len = min_t(sector_t, (sector_t)nr << img->chunk_shift,
		       img->dev_sectors - sector);
	c->buf = NULL;
	bio_list_init(&c->waiters);
	c->error = 0;
	c->wpos = 0;
	c->wlen = 0;
	c->zero_len = 0;
	c->zero = false;
	c->write_zeroes = false;
	c->stage = PTB_COPY_QUEUED;
	ptb_io_start(cow);
	ptb_copy_hash(c);
	img->copies_in_flight++;
	return c;
}

/* The copy of this chunk for this image, started if there is none. */
static struct ptb_copy *ptb_copy_get(struct ptb_image *img, unsigned long chunk)
{
	struct ptb_copy *c = ptb_copy_find(img, chunk);
	unsigned int slot;

	if (c)
		return c;
	c = ptb_copy_new(img, chunk, 1);
	if (!c)
		return NULL;
	slot = ptb_slots_find(img, 1);
	if (slot < img->nr_slots)
		ptb_copy_read(c, slot);
	else
		list_add_tail(&c->list, &img->slot_waiters);
	return c;
}

/*
 * Background copy of up to *nr adjacent chunks from chunk on, none of them
 * done or in flight, into free slots (never waiting for one).  Sets *nr to
 * the chunks the copy covers: 0 if no slot is free.  -ENOMEM: no
 * descriptor now, try again later.
 */
int ptb_copy_start_run(struct ptb_image *img, unsigned long chunk,
		       unsigned int *nr)
{
	unsigned int want = min3(*nr, img->free_slots, (unsigned int)PTB_RUN_MAX_CHUNKS);
	unsigned int slot = img->nr_slots;
	struct ptb_copy *c;

	/* The longest run that fits in adjacent free slots. */
	for (; want; want--) {
		slot = ptb_slots_find(img, want);
		if (slot < img->nr_slots)
			break;
	}
	*nr = want;
	if (!want)
		return 0;
	c = ptb_copy_new(img, chunk, want);
	if (!c) {
		*nr = 0;
		return -ENOMEM;
	}
	ptb_copy_read(c, slot);
	return 0;
}

static void ptb_requeue_bios(struct ptb_cow *cow, struct bio_list *bios)
{
	unsigned long flags;

	if (bio_list_empty(bios))
		return;
	spin_lock_irqsave(&cow->lock, flags);
	bio_list_merge(&cow->deferred_bios, bios);
	spin_unlock_irqrestore(&cow->lock, flags);
	bio_list_init(bios);
}

static void ptb_copy_finish(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	struct ptb_cow *cow = img->cow;
	struct ptb_copy *next;
	unsigned int slot;

	ptb_copy_unhash(c);
	ptb_requeue_bios(cow, &c->waiters);

	if (c->buf) {
		bitmap_clear(img->slot_used, c->slot, c->nr);
		img->free_slots += c->nr;
	}
	img->copies_in_flight--;
	mempool_free(c, &cow->copy_pool);
	ptb_io_end(cow);

	/* Waiters are single chunks: each takes one slot. */
	while ((next = list_first_entry_or_null(&img->slot_waiters,
						struct ptb_copy, list))) {
		slot = ptb_slots_find(img, 1);
		if (slot >= img->nr_slots)
			break;
		list_del(&next->list);
		ptb_copy_read(next, slot);
	}
}

static void ptb_fail_bios(struct bio_list *bios)
{
	struct bio *bio;

	while ((bio = bio_list_pop(bios)))
		bio_io_error(bio);
}

/*
 * The owner decides whether writes waiting for a copy of their chunk fail.
 * A background run failed as a whole: the writes waiting for it go back
 * through the check and get copies of their own chunks.
 */
static void ptb_copy_failed(struct ptb_copy *c, enum ptb_error_site site)
{
	struct ptb_image *img = c->img;
	bool waits = c->nr == 1 && !bio_list_empty(&c->waiters);

	if (img->ops->failed(img, c->chunk, site, c->error, waits))
		ptb_fail_bios(&c->waiters);
	ptb_copy_finish(c);
}

/*
 * A piece is on the target: write the next one, or, once every chunk is
 * there, mark them done (from then on the map path lets their writes go).
 */
static void ptb_copy_written(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	sector_t off = (sector_t)c->wpos << img->chunk_shift;
	unsigned int i;

	if (c->zero)
		c->zero_len += min_t(sector_t, (sector_t)c->wlen << img->chunk_shift,
				     c->len - off);
	c->wpos += c->wlen;
	if (c->wpos < c->nr) {
		ptb_copy_write(c);
		return;
	}
	for (i = 0; i < c->nr; i++)
		set_bit(c->chunk + i, img->done);
	img->ops->copied(img, c->len, c->zero_len);
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
			DMWARN_LIMIT("%s: %s: target rejected write-zeroes (%d), writing zeroes as data",
				     c->img->cow->name, c->img->name, c->error);
			c->img->no_write_zeroes = true;
			c->error = 0;
			c->write_zeroes = false;
			ptb_copy_submit(c, REQ_OP_WRITE, c->img->target, c->wpos, c->wlen);
		} else if (c->error) {
			ptb_copy_failed(c, PTB_SITE_TARGET);
		} else {
			ptb_copy_written(c);
		}
		break;
	default:
		WARN_ON_ONCE(1);
	}
}

/*----------------------------------------------------------------*/

/* The worker. */

/* Returns false if the bio could not be handled now and must be retried. */
static bool ptb_handle_write(struct ptb_cow *cow, struct bio *bio)
{
	struct ptb_image *img;
	struct ptb_copy *c;
	unsigned long chunk;

	for_each_image_in_worker(img, cow) {
		if (!ptb_image_first_pending(img, bio->bi_iter.bi_sector,
					     bio_sectors(bio), &chunk))
			continue;
		c = ptb_copy_get(img, chunk);
		if (!c)
			return false;
		bio_list_add(&c->waiters, bio);
		return true;
	}

	dm_submit_bio_remap(bio, NULL);
	return true;
}

static void ptb_process_completed(struct ptb_cow *cow, struct list_head *done)
{
	struct ptb_copy *c, *tmp;

	list_for_each_entry_safe(c, tmp, done, list) {
		list_del(&c->list);
		ptb_copy_advance(c);
	}
}

/* Returns true if some bio could not be handled for lack of memory. */
static bool ptb_process_deferred(struct ptb_cow *cow, struct bio_list *bios)
{
	struct bio_list retry = BIO_EMPTY_LIST;
	struct bio *bio;

	while ((bio = bio_list_pop(bios))) {
		if (!ptb_handle_write(cow, bio))
			bio_list_add(&retry, bio);
	}
	if (bio_list_empty(&retry))
		return false;
	ptb_requeue_bios(cow, &retry);
	return true;
}

void ptb_do_worker(struct work_struct *ws)
{
	struct ptb_cow *cow = container_of(ws, struct ptb_cow, worker);
	unsigned long wake = 0, delay;
	struct bio_list bios;
	LIST_HEAD(done);
	struct ptb_image *img;

	for (;;) {
		spin_lock_irq(&cow->lock);
		list_splice_init(&cow->completed_copies, &done);
		bios = cow->deferred_bios;
		bio_list_init(&cow->deferred_bios);
		spin_unlock_irq(&cow->lock);

		if (list_empty(&done) && bio_list_empty(&bios))
			break;
		ptb_process_completed(cow, &done);
		if (ptb_process_deferred(cow, &bios)) {
			wake = PTB_ENOMEM_RETRY;
			break;
		}
		cond_resched();
	}

	for_each_image_in_worker(img, cow) {
		delay = img->ops->service(img);
		if (delay && (!wake || delay < wake))
			wake = delay;
	}

	if (wake)
		mod_delayed_work(cow->wq, &cow->waker, wake);
}

void ptb_do_waker(struct work_struct *ws)
{
	struct ptb_cow *cow = container_of(to_delayed_work(ws),
					     struct ptb_cow, waker);

	ptb_wake_worker(cow);
}

/*----------------------------------------------------------------*/

int ptb_cow_init(struct ptb_cow *cow, const char *name,
		 struct mutex *images_lock)
{
	int r;

	cow->name = name;
	cow->images_lock = images_lock;
	INIT_LIST_HEAD(&cow->images);
	spin_lock_init(&cow->lock);
	bio_list_init(&cow->deferred_bios);
	INIT_LIST_HEAD(&cow->completed_copies);
	atomic_set(&cow->io_in_flight, 0);
	init_waitqueue_head(&cow->io_idle);
	hash_init(cow->copies);
	INIT_WORK(&cow->worker, ptb_do_worker);
	INIT_DELAYED_WORK(&cow->waker, ptb_do_waker);

	r = mempool_init_kmalloc_pool(&cow->copy_pool, PTB_COPY_POOL_SIZE,
				      sizeof(struct ptb_copy));
	if (r)
		return r;

	cow->io_client = dm_io_client_create();
	if (IS_ERR(cow->io_client)) {
		r = PTR_ERR(cow->io_client);
		goto bad_io_client;
	}

	cow->wq = alloc_ordered_workqueue("dm-ptbackup", WQ_MEM_RECLAIM);
	if (!cow->wq) {
		r = -ENOMEM;
		goto bad_wq;
	}
	return 0;

bad_wq:
	dm_io_client_destroy(cow->io_client);
bad_io_client:
	mempool_exit(&cow->copy_pool);
	return r;
}

/* Every image is unpublished: no copies, no deferred bios. */
void ptb_cow_exit(struct ptb_cow *cow)
{
	/* I/O completions still returning (ptb_copy_io_done()). */
	synchronize_rcu();
	flush_workqueue(cow->wq);
	cancel_delayed_work_sync(&cow->waker);
	destroy_workqueue(cow->wq);
	WARN_ON_ONCE(!hash_empty(cow->copies));
	WARN_ON_ONCE(!bio_list_empty(&cow->deferred_bios));
	dm_io_client_destroy(cow->io_client);
	mempool_exit(&cow->copy_pool);
}

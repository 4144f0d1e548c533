// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup reads of an image at its point in time (a view's reads).
 *
 * A read lies in one chunk.  The worker routes it: while a copy of the
 * chunk is in flight, the read waits on the copy as a write does; the
 * blocks the image has saved are read from its target, the others from
 * the origin, where their old data still is.  It stays there for as long
 * as the read is in flight: the read holds the chunk's guard, and a copy
 * of a guarded chunk, once its data is on the target, waits (DRAINING)
 * before it marks the blocks saved and lets the writes waiting for it go.
 * Reads of a chunk with a copy in flight wait for the copy, so guards
 * cannot hold a copy back for ever.  With a mapped store every read holds
 * the guard, reads of the store too: a release of the chunk waits for it,
 * so the store chunk is not given to another chunk under the read.  A read
 * of saved and unsaved blocks is split where it changes from one to the
 * other.
 *
 * The end of a read (the view's end_io) gives its guard back, and fails
 * the read if its image stopped being protected meanwhile: from then on
 * writes wait for no copy, and what the read found in the origin may be
 * new.  A write that was let go because the image stopped being
 * protected saw protected false before its data reached the origin; a
 * read that found that data sees protected false at its end (the read
 * barrier below; the I/O between the two orders the rest).
 */

#include <linux/hash.h>
#include <linux/slab.h>

#include "ptb-cow.h"
#include "ptb-cow-internal.h"

/* The reads of the origin in flight in one chunk of one image. */
struct ptb_read_guard {
	struct hlist_node hnode;	/* cow->guards; cow->lock */
	struct ptb_image *img;
	unsigned long chunk;
	unsigned int readers;		/* cow->lock */
	struct ptb_copy *copy;		/* waiting for the readers; cow->lock */
};

static struct ptb_read *ptb_read_of(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct ptb_read));
}

static unsigned long ptb_guard_key(const struct ptb_image *img, unsigned long chunk)
{
	return chunk ^ hash_ptr(img, BITS_PER_LONG);
}

/* cow->lock held. */
static struct ptb_read_guard *ptb_guard_find(struct ptb_image *img, unsigned long chunk)
{
	struct ptb_read_guard *g;

	hash_for_each_possible(img->cow->guards, g, hnode, ptb_guard_key(img, chunk))
		if (g->chunk == chunk && g->img == img)
			return g;
	return NULL;
}

/*
 * Worker: the read holds the guard of its chunk.  Only the worker adds
 * guards, so one not found stays absent until it adds it.  False: no
 * memory now, try again later.
 */
static bool ptb_guard_take(struct ptb_image *img, unsigned long chunk, struct ptb_read *rd)
{
	struct ptb_cow *cow = img->cow;
	struct ptb_read_guard *g;

	spin_lock_irq(&cow->lock);
	g = ptb_guard_find(img, chunk);
	if (g)
		g->readers++;
	spin_unlock_irq(&cow->lock);
	if (!g) {
		g = kmalloc(sizeof(*g), GFP_NOWAIT | __GFP_NOWARN);
		if (!g)
			return false;
		g->img = img;
		g->chunk = chunk;
		g->readers = 1;
		g->copy = NULL;
		spin_lock_irq(&cow->lock);
		hash_add(cow->guards, &g->hnode, ptb_guard_key(img, chunk));
		WRITE_ONCE(cow->nr_guards, cow->nr_guards + 1);
		spin_unlock_irq(&cow->lock);
	}
	rd->guard = g;
	return true;
}

/* Any context.  The last reader lets the copy waiting for it go on. */
static void ptb_guard_put(struct ptb_cow *cow, struct ptb_read_guard *g)
{
	struct ptb_copy *copy = NULL;
	unsigned long flags;
	bool last;

	spin_lock_irqsave(&cow->lock, flags);
	last = !--g->readers;
	if (last) {
		hash_del(&g->hnode);
		WRITE_ONCE(cow->nr_guards, cow->nr_guards - 1);
		copy = g->copy;
		if (copy)
			list_add_tail(&copy->list, &cow->completed_copies);
	}
	spin_unlock_irqrestore(&cow->lock, flags);
	if (copy)
		ptb_wake_worker(cow);
	if (last)
		kfree(g);
}

/*
 * Worker, the copy's data on the target: must it wait for reads of the
 * origin in its chunks?  Then it waits on the first guard found, which
 * queues it back to the worker when its last reader ends.
 */
bool ptb_copy_must_drain(struct ptb_copy *c)
{
	struct ptb_cow *cow = c->img->cow;
	struct ptb_read_guard *g = NULL;
	unsigned int i;

	/* Only the worker adds guards: none now, none before we return. */
	if (!READ_ONCE(cow->nr_guards))
		return false;
	spin_lock_irq(&cow->lock);
	for (i = 0; i < c->nr && !g; i++)
		g = ptb_guard_find(c->img, c->chunk + i);
	if (g) {
		g->copy = c;
		c->stage = PTB_COPY_DRAINING;
	}
	spin_unlock_irq(&cow->lock);
	return g;
}

/*----------------------------------------------------------------*/

/* store: where the chunk that starts at sector start is on the target. */
static void ptb_read_remap(struct ptb_image *img, struct bio *bio, bool from_origin,
			   sector_t start, sector_t store)
{
	if (from_origin) {
		bio_set_dev(bio, img->origin);
		return;
	}
	bio_set_dev(bio, img->target);
	bio->bi_iter.bi_sector = store + (bio->bi_iter.bi_sector - start);
}

/*
 * Submit the read, split where it goes from saved blocks to unsaved ones
 * or back.  unsaved: the blocks of the chunk it reads from the origin;
 * store: where the chunk's saved blocks are on the target.
 */
static void ptb_read_submit(struct ptb_image *img, struct bio *bio, unsigned long unsaved,
			    sector_t store)
{
	struct ptb_read *rd = ptb_read_of(bio);
	sector_t start = bio->bi_iter.bi_sector & ~(((sector_t)1 << img->chunk_shift) - 1);
	unsigned int block, next;
	struct bio *split;
	bool from_origin;
	sector_t end;

	for (;;) {
		block = (bio->bi_iter.bi_sector - start) >> img->block_shift;
		from_origin = unsaved & BIT(block);
		if (from_origin)
			next = find_next_zero_bit(&unsaved, BITS_PER_LONG, block);
		else
			next = find_next_bit(&unsaved, BITS_PER_LONG, block);
		end = start + ((sector_t)next << img->block_shift);
		if (end >= bio_end_sector(bio))
			break;
		split = bio_split(bio, end - bio->bi_iter.bi_sector, GFP_NOIO, rd->bs);
		bio_chain(split, bio);
		ptb_read_remap(img, split, from_origin, start, store);
		submit_bio_noacct(split);
	}
	ptb_read_remap(img, bio, from_origin, start, store);
	dm_submit_bio_remap(bio, NULL);
}

/* The blocks of its chunk that a read covers, as a mask. */
static unsigned long ptb_read_blocks(const struct ptb_image *img, struct bio *bio)
{
	sector_t mask = ((sector_t)1 << img->chunk_shift) - 1;
	unsigned int first = (bio->bi_iter.bi_sector & mask) >> img->block_shift;
	unsigned int last = ((bio_end_sector(bio) - 1) & mask) >> img->block_shift;

	return GENMASK(last, first);
}

/* Worker.  False: the read could not be handled now, retry it. */
bool ptb_handle_read(struct ptb_cow *cow, struct bio *bio)
{
	struct ptb_read *rd = ptb_read_of(bio);
	struct ptb_image *img = rd->img;
	sector_t sector = bio->bi_iter.bi_sector;
	unsigned long chunk = ptb_sector_to_chunk(sector, img->chunk_shift);
	unsigned long unsaved = 0;
	struct ptb_copy *c;
	sector_t store = 0;

	if (!READ_ONCE(img->readable) || !READ_ONCE(img->protected) ||
	    test_bit(chunk, img->released)) {
		bio_io_error(bio);
		return true;
	}
	c = ptb_copy_find(img, chunk);
	if (c) {
		bio_list_add(&c->waiters, bio);
		return true;
	}
	if (!test_bit(chunk, img->done))
		unsaved = ptb_blocks_needed(img, chunk, sector, bio_end_sector(bio));
	if (unsaved != ptb_read_blocks(img, bio) &&
	    WARN_ON_ONCE(ptb_store_locate(&img->store, chunk, false, &store))) {
		bio_io_error(bio);
		return true;
	}
	/*
	 * The guard holds back a copy to the chunk's origin blocks, and a
	 * release of the chunk, which would let a mapped store give its
	 * space to another chunk under the read.
	 */
	if ((unsaved || img->store.mapped) && !ptb_guard_take(img, chunk, rd))
		return false;
	rd->submitted = true;
	atomic_inc(&img->reads_in_flight);
	ptb_read_submit(img, bio, unsaved, store);
	return true;
}

/* The view's bio belongs to img from its map on: its end reads this. */
static void ptb_read_init(struct ptb_image *img, struct bio *bio, struct bio_set *bs)
{
	struct ptb_read *rd = ptb_read_of(bio);

	rd->img = img;
	rd->bs = bs;
	rd->guard = NULL;
	rd->submitted = false;
}

void ptb_image_read(struct ptb_image *img, struct bio *bio, struct bio_set *bs)
{
	ptb_read_init(img, bio, bs);
	ptb_defer_bio(img->cow, bio);
}

void ptb_image_read_end(struct bio *bio, blk_status_t *error)
{
	struct ptb_read *rd = ptb_read_of(bio);
	struct ptb_image *img = rd->img;
	struct ptb_cow *cow = img->cow;

	if (!rd->submitted)
		return;
	rd->submitted = false;
	/* The read's data, then the flag (see the top of this file). */
	smp_rmb();
	if (!READ_ONCE(img->protected) && !*error)
		*error = BLK_STS_IOERR;
	if (rd->guard)
		ptb_guard_put(cow, rd->guard);
	rd->guard = NULL;
	/* A job that is ending waits for its reads before it lets go. */
	if (atomic_dec_and_test(&img->reads_in_flight))
		ptb_wake_worker(cow);
}

/*----------------------------------------------------------------*/

/*
 * Discards of a view: the reader is done with the chunks they cover
 * whole.  A released chunk is marked done, so writes there wait for no
 * copy from then on, and its reads fail.  A chunk with a copy in flight
 * or a read of the origin in flight is released only once they are over.
 */

static bool ptb_chunk_busy(struct ptb_image *img, unsigned long chunk)
{
	struct ptb_cow *cow = img->cow;
	bool guarded = false;

	if (ptb_copy_find(img, chunk))
		return true;
	if (READ_ONCE(cow->nr_guards)) {
		spin_lock_irq(&cow->lock);
		guarded = ptb_guard_find(img, chunk);
		spin_unlock_irq(&cow->lock);
	}
	return guarded;
}

static void ptb_chunk_release(struct ptb_image *img, unsigned long chunk)
{
	struct ptb_partial *p;

	if (test_and_set_bit(chunk, img->released))
		return;
	WRITE_ONCE(img->nr_released, img->nr_released + 1);
	if (test_bit(chunk, img->done)) {
		ptb_store_drop(&img->store, chunk, true);
		return;
	}
	p = ptb_partial_find(img, chunk);
	ptb_store_drop(&img->store, chunk, p && p->saved);
	if (p)
		ptb_partial_free(img, p);
	set_bit(chunk, img->done);
}

/* Worker.  False: a chunk is busy, retry the discard later. */
static bool ptb_handle_view_discard(struct bio *bio)
{
	struct ptb_image *img = ptb_read_of(bio)->img;
	sector_t size = (sector_t)1 << img->chunk_shift;
	sector_t end = min(bio_end_sector(bio), img->dev_sectors);
	unsigned long first, last, c;

	if (!READ_ONCE(img->readable) || !READ_ONCE(img->protected)) {
		bio_io_error(bio);
		return true;
	}
	first = DIV_ROUND_UP_SECTOR_T(bio->bi_iter.bi_sector, size);
	/* The last chunk may be short: up to the image's end covers it. */
	last = end == img->dev_sectors ? img->nr_chunks : end >> img->chunk_shift;
	for (c = first; c < last; c++)
		if (ptb_chunk_busy(img, c))
			return false;
	for (c = first; c < last; c++)
		ptb_chunk_release(img, c);
	bio_endio(bio);
	return true;
}

/* Worker.  The discards that must be retried go to retry. */
void ptb_process_view_discards(struct bio_list *bios, struct bio_list *retry)
{
	struct bio *bio;

	while ((bio = bio_list_pop(bios)))
		if (!ptb_handle_view_discard(bio))
			bio_list_add(retry, bio);
}

/* Worker: queue the discards to retry again, for the next pass. */
void ptb_requeue_view_discards(struct ptb_cow *cow, struct bio_list *retry)
{
	if (bio_list_empty(retry))
		return;
	spin_lock_irq(&cow->lock);
	bio_list_merge(&cow->view_discards, retry);
	spin_unlock_irq(&cow->lock);
}

void ptb_image_discard(struct ptb_image *img, struct bio *bio)
{
	struct ptb_cow *cow = img->cow;
	unsigned long flags;

	ptb_read_init(img, bio, NULL);
	spin_lock_irqsave(&cow->lock, flags);
	bio_list_add(&cow->view_discards, bio);
	spin_unlock_irqrestore(&cow->lock, flags);
	ptb_wake_worker(cow);
}

/* Process context, before the image's first view does I/O. */
int ptb_image_enable_release(struct ptb_image *img)
{
	if (img->released)
		return 0;
	img->released = kvcalloc(BITS_TO_LONGS(img->nr_chunks), sizeof(long), GFP_KERNEL);
	return img->released ? 0 : -ENOMEM;
}

unsigned long ptb_image_nr_released(const struct ptb_image *img)
{
	return READ_ONCE(img->nr_released);
}

void ptb_image_set_readable(struct ptb_image *img, bool readable)
{
	WRITE_ONCE(img->readable, readable);
}

bool ptb_image_reads_idle(struct ptb_image *img)
{
	return !atomic_read(&img->reads_in_flight);
}

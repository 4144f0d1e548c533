// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup copy-before-write engine.
 *
 * A write to a chunk that a protected image has not saved yet is deferred
 * to the worker.  The worker looks the (image, chunk) pair up in the copy
 * table, starts a copy if there is none, and parks the bio on the copy.  A
 * write's copy covers only the blocks of the chunk that the write covers
 * and that are not saved yet; the image keeps a table of the chunks it has
 * saved in part.  A copy reads the old data from the origin into one of
 * the image's slot buffers, writes it to the image's target (as
 * write-zeroes when a chunk's data is all zeroes and the target supports
 * it), skipping blocks saved before, marks what it saved, and sends the
 * parked bios back through the check: another image, or another block of
 * the chunk, may still need a copy.  A chunk is done once all its blocks
 * are saved.  An owner's background copies (the sweep of a sync=full
 * backup) use the same copies, through ptb_copy_start_run().
 *
 * The point in time of an image comes from the write gate (ptb-gate.c).
 */

#include <linux/hash.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

#include "ptb-cow.h"
#include "ptb-cow-internal.h"

#define DM_MSG_PREFIX "ptbackup"

#define PTB_COPY_POOL_SIZE	16
#define PTB_ENOMEM_RETRY	(HZ / 50)

/*----------------------------------------------------------------*/

/*
 * Blocks and the partly saved chunks.  The worker alone changes the table;
 * the map path reads it under RCU.  An entry taken out of the table is
 * reused only after an RCU grace period, so a reader that finds an entry
 * reads the saved blocks of that chunk; saved bits are set only once the
 * blocks' old data is on the target, and never cleared while the entry
 * is in the table.
 */

/* The blocks of chunk inside the device at the point in time. */
static unsigned int ptb_chunk_blocks(const struct ptb_image *img, unsigned long chunk)
{
	sector_t start = (sector_t)chunk << img->chunk_shift;
	sector_t len = min_t(sector_t, (sector_t)1 << img->chunk_shift,
			     img->dev_sectors - start);

	return DIV_ROUND_UP_SECTOR_T(len, (sector_t)1 << img->block_shift);
}

/* The mask of all the blocks of chunk. */
static unsigned long ptb_chunk_all_blocks(const struct ptb_image *img, unsigned long chunk)
{
	return GENMASK(ptb_chunk_blocks(img, chunk) - 1, 0);
}

static struct hlist_head *ptb_partial_head(const struct ptb_image *img,
					   unsigned long chunk)
{
	return &img->partial_table[hash_long(chunk, PTB_PARTIAL_HASH_BITS)];
}

/* Worker, or any context under rcu_read_lock(). */
struct ptb_partial *ptb_partial_find(const struct ptb_image *img,
				     unsigned long chunk)
{
	struct ptb_partial *p;

	if (!READ_ONCE(img->nr_partials))
		return NULL;
	hlist_for_each_entry_rcu(p, ptb_partial_head(img, chunk), hnode,
				 ptb_in_worker(img->cow))
		if (p->chunk == chunk)
			return p;
	return NULL;
}

/* The entries follow the table's heads in one area. */
static struct ptb_partial *ptb_partial_entries(const struct ptb_image *img)
{
	return img->partial_area + (sizeof(struct hlist_head) << PTB_PARTIAL_HASH_BITS);
}

/*
 * A new entry with no block saved: one never used, or else the oldest
 * free one once a grace period has passed since it left the table.  NULL
 * if there is none.
 */
static struct ptb_partial *ptb_partial_new(struct ptb_image *img, unsigned long chunk)
{
	struct ptb_partial *p = img->free_head;

	if (img->partials_used < img->max_partials) {
		p = &ptb_partial_entries(img)[img->partials_used++];
	} else {
		if (!p || !poll_state_synchronize_rcu(p->gp_cookie))
			return NULL;
		img->free_head = p->next_free;
		if (!img->free_head)
			img->free_tail = NULL;
	}
	p->chunk = chunk;
	p->saved = 0;
	hlist_add_head_rcu(&p->hnode, ptb_partial_head(img, chunk));
	WRITE_ONCE(img->nr_partials, img->nr_partials + 1);
	return p;
}

static void ptb_partial_add_free(struct ptb_image *img, struct ptb_partial *p)
{
	/* Starts a grace period: a quiet system may have none pending. */
	p->gp_cookie = start_poll_synchronize_rcu();
	p->next_free = NULL;
	if (img->free_tail)
		img->free_tail->next_free = p;
	else
		img->free_head = p;
	img->free_tail = p;
}

void ptb_partial_free(struct ptb_image *img, struct ptb_partial *p)
{
	hlist_del_rcu(&p->hnode);
	WRITE_ONCE(img->nr_partials, img->nr_partials - 1);
	ptb_partial_add_free(img, p);
}

/*
 * The blocks of chunk that [sector, end) covers and that img has not
 * saved yet, as a mask (bit 0: the chunk's first block).
 */
unsigned long ptb_blocks_needed(const struct ptb_image *img,
				unsigned long chunk, sector_t sector, sector_t end)
{
	sector_t start = (sector_t)chunk << img->chunk_shift;
	struct ptb_partial *p = ptb_partial_find(img, chunk);
	unsigned int first, last;

	sector = max(sector, start);
	end = min3(end, start + ((sector_t)1 << img->chunk_shift), img->dev_sectors);
	if (sector >= end)
		return 0;
	first = (sector - start) >> img->block_shift;
	last = (end - 1 - start) >> img->block_shift;
	return GENMASK(last, first) & ~(p ? READ_ONCE(p->saved) : 0);
}

/*----------------------------------------------------------------*/

/* Images. */

/*
 * The table of partly saved chunks: heads and entries in one area, no
 * entry used yet.  None when a chunk is one block.
 */
static int ptb_partials_init(struct ptb_image *img)
{
	size_t heads = sizeof(struct hlist_head) << PTB_PARTIAL_HASH_BITS;

	if (img->block_shift == img->chunk_shift)
		return 0;
	img->max_partials = min_t(unsigned long, img->nr_chunks, PTB_PARTIAL_MAX);
	img->partial_area = vzalloc(heads + img->max_partials * sizeof(struct ptb_partial));
	if (!img->partial_area)
		return -ENOMEM;
	img->partial_table = img->partial_area;
	return 0;
}

/*
 * The pages of the slot area, chained in order for dm-io: a copy's I/O
 * then needs no page-table walk per page (vmalloc_to_page()).
 */
static int ptb_slot_pages_init(struct ptb_image *img, size_t nr_pages)
{
	size_t i;

	img->slot_pages = kvmalloc_array(nr_pages, sizeof(*img->slot_pages), GFP_KERNEL);
	if (!img->slot_pages)
		return -ENOMEM;
	for (i = 0; i < nr_pages; i++) {
		img->slot_pages[i].page = vmalloc_to_page(img->slot_area + i * PAGE_SIZE);
		img->slot_pages[i].next = i + 1 < nr_pages ? &img->slot_pages[i + 1] : NULL;
	}
	return 0;
}

/*
 * min_block_shift: the origin's logical block size in sectors, log2; a
 * block is at least that, at least 4 KiB and at least a 32nd of a chunk.
 */
int ptb_image_init(struct ptb_image *img, struct ptb_cow *cow,
		   const struct ptb_image_ops *ops, const char *name,
		   unsigned int chunk_shift, sector_t dev_sectors,
		   unsigned int nr_slots, unsigned int min_block_shift)
{
	size_t size = (size_t)1 << (chunk_shift + SECTOR_SHIFT);
	unsigned int per_chunk = min_t(unsigned int, chunk_shift, ilog2(PTB_CHUNK_MAX_BLOCKS));
	unsigned int block_shift;

	block_shift = max3(min_block_shift, (unsigned int)PTB_BLOCK_MIN_SHIFT,
			   chunk_shift - per_chunk);
	img->cow = cow;
	img->ops = ops;
	img->name = name;
	img->protected = true;
	img->readable = true;
	img->chunk_shift = chunk_shift;
	img->block_shift = min(block_shift, chunk_shift);
	img->dev_sectors = dev_sectors;
	img->nr_chunks = DIV_ROUND_UP_SECTOR_T(dev_sectors, (sector_t)1 << chunk_shift);
	INIT_LIST_HEAD(&img->slot_waiters);
	INIT_LIST_HEAD(&img->copies_by_age);
	atomic_set(&img->reads_in_flight, 0);
	img->done = kvcalloc(BITS_TO_LONGS(img->nr_chunks), sizeof(long), GFP_KERNEL);
	img->slot_used = bitmap_zalloc(nr_slots, GFP_KERNEL);
	/* One area: a run of chunks reads into adjacent slots. */
	img->slot_area = vmalloc(array_size(nr_slots, size));
	if (!img->done || !img->slot_used || !img->slot_area ||
	    ptb_slot_pages_init(img, nr_slots * (size >> PAGE_SHIFT)))
		return -ENOMEM;
	img->nr_slots = nr_slots;
	img->free_slots = nr_slots;
	return ptb_partials_init(img);
}

int ptb_image_init_store(struct ptb_image *img, sector_t target_sectors)
{
	return ptb_store_init(&img->store, img->chunk_shift, img->dev_sectors,
			      target_sectors);
}

/* The chunk buffers; no copy may be in flight. */
void ptb_image_free_buffers(struct ptb_image *img)
{
	kvfree(img->slot_pages);
	img->slot_pages = NULL;
	vfree(img->slot_area);
	img->slot_area = NULL;
	bitmap_free(img->slot_used);
	img->slot_used = NULL;
}

/*
 * Everything ptb_image_init() allocated, even after it failed.  The map
 * path reads the table of partly saved chunks until the image is
 * unpublished, so it goes only now.
 */
void ptb_image_exit(struct ptb_image *img)
{
	ptb_image_free_buffers(img);
	ptb_store_exit(&img->store);
	vfree(img->partial_area);
	img->partial_area = NULL;
	kvfree(img->released);
	img->released = NULL;
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

/* Does img need old data of [sector, end) saved?  Worker, or under RCU. */
static bool ptb_image_needs(const struct ptb_image *img, sector_t sector, sector_t end)
{
	unsigned long chunk;

	while (sector < end &&
	       ptb_image_first_pending(img, sector, end - sector, &chunk)) {
		if (ptb_blocks_needed(img, chunk, sector, end))
			return true;
		sector = (sector_t)(chunk + 1) << img->chunk_shift;
	}
	return false;
}

/* Does this write touch blocks that a protected image still needs? */
bool ptb_write_needs_cow(struct ptb_cow *cow, struct bio *bio)
{
	struct ptb_image *img;
	bool needed = false;

	rcu_read_lock();
	list_for_each_entry_rcu(img, &cow->images, node) {
		if (ptb_image_needs(img, bio->bi_iter.bi_sector, bio_end_sector(bio))) {
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

struct ptb_copy *ptb_copy_find(struct ptb_image *img, unsigned long chunk)
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

/* Read or write blocks [first, first + nr) of the copy. */
static void ptb_copy_submit(struct ptb_copy *c, blk_opf_t opf,
			    unsigned int first, unsigned int nr)
{
	struct ptb_image *img = c->img;
	bool to_target = op_is_write(opf);
	sector_t off = (sector_t)first << img->block_shift;
	size_t pos = (c->buf - img->slot_area) + (off << SECTOR_SHIFT);
	struct dm_io_region where = {
		.bdev = to_target ? img->target : img->origin,
		.sector = (to_target ? c->store_sector : c->sector) + off,
		.count = min_t(sector_t, (sector_t)nr << img->block_shift, c->len - off),
	};
	struct dm_io_request req = {
		.bi_opf = opf,
		.mem.type = DM_IO_PAGE_LIST,
		.mem.ptr.pl = &img->slot_pages[pos >> PAGE_SHIFT],
		.mem.offset = offset_in_page(pos),
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
	ptb_copy_submit(c, REQ_OP_READ, 0, c->nr_blocks);
}

/*
 * Note the blocks of the copy that lie in chunks whose data in the copy is
 * all zeroes.  (A write's copy holds part of one chunk.)
 */
static void ptb_copy_find_zeroes(struct ptb_copy *c)
{
	unsigned int bpc_shift = c->img->chunk_shift - c->img->block_shift;
	unsigned int i, first, end;
	size_t off, len;

	bitmap_zero(c->zero_blocks, PTB_COPY_MAX_BLOCKS);
	for (i = 0; i < c->nr; i++) {
		first = i ? (i << bpc_shift) - c->block0 : 0;
		end = min(((i + 1) << bpc_shift) - c->block0, c->nr_blocks);
		off = (size_t)first << (c->img->block_shift + SECTOR_SHIFT);
		len = min_t(sector_t, (sector_t)(end - first) << c->img->block_shift,
			    c->len - ((sector_t)first << c->img->block_shift));
		if (!memchr_inv(c->buf + off, 0, len << SECTOR_SHIFT))
			bitmap_set(c->zero_blocks, first, end - first);
	}
}

/*
 * Find the copy's next piece from block wpos on: the longest run of blocks
 * to save that all lie in chunks of zeroes, or all in chunks of data.
 * False once every piece is written.
 */
static bool ptb_copy_next_piece(struct ptb_copy *c)
{
	unsigned int start, end;

	start = find_next_bit(c->todo, c->nr_blocks, c->wpos);
	if (start >= c->nr_blocks)
		return false;
	end = find_next_zero_bit(c->todo, c->nr_blocks, start);
	c->zero = test_bit(start, c->zero_blocks);
	if (c->zero)
		end = find_next_zero_bit(c->zero_blocks, end, start);
	else
		end = find_next_bit(c->zero_blocks, end, start);
	c->wpos = start;
	c->wlen = end - start;
	return true;
}

/*
 * Write the piece found.  Zeroes go out as write-zeroes where the target
 * offers it (a thin or sparse target stays unallocated there); if the
 * target rejects one, the piece is written as data and the image stops
 * using write-zeroes (ptb_copy_advance()).
 */
static void ptb_copy_write(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	struct block_device *target = img->target;

	c->write_zeroes = c->zero && !img->no_write_zeroes &&
			  bdev_write_zeroes_sectors(target);
	c->stage = PTB_COPY_WRITING;
	ptb_copy_submit(c, c->write_zeroes ? REQ_OP_WRITE_ZEROES : REQ_OP_WRITE,
			c->wpos, c->wlen);
}

/* The copy covers nr blocks, all of them to be written. */
static void ptb_copy_set_blocks(struct ptb_copy *c, unsigned int nr)
{
	c->nr_blocks = nr;
	bitmap_zero(c->todo, PTB_COPY_MAX_BLOCKS);
	bitmap_set(c->todo, 0, nr);
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
	c->block0 = 0;
	ptb_copy_set_blocks(c, DIV_ROUND_UP_SECTOR_T(c->len, (sector_t)1 << img->block_shift));
	c->partial = NULL;
	c->store_new = false;
	c->written = 0;
	c->buf = NULL;
	bio_list_init(&c->waiters);
	c->error = 0;
	c->wpos = 0;
	c->wlen = 0;
	c->zero_len = 0;
	c->zero = false;
	c->write_zeroes = false;
	c->stage = PTB_COPY_QUEUED;
	c->timed_out = false;
	INIT_LIST_HEAD(&c->age_node);
	ptb_io_start(cow);
	ptb_copy_hash(c);
	img->copies_in_flight++;
	return c;
}

/* Narrow a new copy of one chunk to its nr blocks from block first on. */
static void ptb_copy_narrow(struct ptb_copy *c, unsigned int first, unsigned int nr)
{
	struct ptb_image *img = c->img;

	c->block0 = first;
	c->sector += (sector_t)first << img->block_shift;
	c->len = min_t(sector_t, (sector_t)nr << img->block_shift,
		       img->dev_sectors - c->sector);
	ptb_copy_set_blocks(c, nr);
}

/* Leave out of a new copy of whole chunks the blocks saved before. */
static void ptb_copy_skip_saved(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	unsigned int bpc_shift = img->chunk_shift - img->block_shift;
	struct ptb_partial *p;
	unsigned int i, b;

	for (i = 0; i < c->nr && img->nr_partials; i++) {
		p = ptb_partial_find(img, c->chunk + i);
		if (!p)
			continue;
		for_each_set_bit(b, &p->saved, 1U << bpc_shift)
			clear_bit((i << bpc_shift) + b, c->todo);
	}
}

/*
 * Start the copy a write needs: need is the mask of the chunk's blocks
 * that the write covers and that are not saved.  The first write to a
 * chunk saves the first run of them, unless it covers the whole chunk or
 * the table of partly saved chunks has no free entry: then the whole
 * chunk.  A later write to a partly saved chunk saves all the rest of it,
 * so that no chunk costs more than two copies.  NULL: no descriptor now,
 * try again later.
 */
static struct ptb_copy *ptb_copy_start_write(struct ptb_image *img, unsigned long chunk,
					     unsigned long need)
{
	struct ptb_partial *p = ptb_partial_find(img, chunk);
	unsigned int first = __ffs(need), slot;
	struct ptb_copy *c;

	c = ptb_copy_new(img, chunk, 1);
	if (!c)
		return NULL;
	if (p) {
		ptb_copy_skip_saved(c);
	} else if (need != ptb_chunk_all_blocks(img, chunk)) {
		c->partial = ptb_partial_new(img, chunk);
		if (c->partial)
			ptb_copy_narrow(c, first, ffz(need >> first));
	}
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

	/* At most 1 MiB, so at most PTB_COPY_MAX_BLOCKS blocks. */
	want = min(want, (unsigned int)(PTB_RUN_MAX_BYTES >> SECTOR_SHIFT) >> img->chunk_shift);

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
	ptb_copy_skip_saved(c);
	ptb_copy_read(c, slot);
	return 0;
}

void ptb_requeue_bios(struct ptb_cow *cow, struct bio_list *bios)
{
	unsigned long flags;

	if (bio_list_empty(bios))
		return;
	spin_lock_irqsave(&cow->lock, flags);
	bio_list_merge(&cow->deferred_bios, bios);
	spin_unlock_irqrestore(&cow->lock, flags);
	bio_list_init(bios);
}

/* The copy's slot buffers are free again: start copies waiting for one. */
static void ptb_copy_put_slots(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	struct ptb_copy *next;
	unsigned int slot;

	if (!c->buf)
		return;
	bitmap_clear(img->slot_used, c->slot, c->nr);
	img->free_slots += c->nr;
	c->buf = NULL;

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

static void ptb_copy_finish(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	struct ptb_cow *cow = img->cow;

	ptb_copy_unhash(c);
	list_del(&c->age_node);
	ptb_requeue_bios(cow, &c->waiters);
	ptb_copy_put_slots(c);
	img->copies_in_flight--;
	mempool_free(c, &cow->copy_pool);
	ptb_io_end(cow);
}

/* Move the writes of bios to writes; the reads stay. */
static void ptb_take_writes(struct bio_list *bios, struct bio_list *writes)
{
	struct bio_list reads = BIO_EMPTY_LIST;
	struct bio *bio;

	while ((bio = bio_list_pop(bios)))
		bio_list_add(bio_op(bio) == REQ_OP_READ ? &reads : writes, bio);
	*bios = reads;
}

/* Fail the writes of bios; the reads stay to go back through the check. */
static void ptb_fail_writes(struct bio_list *bios)
{
	struct bio_list writes = BIO_EMPTY_LIST;
	struct bio *bio;

	ptb_take_writes(bios, &writes);
	while ((bio = bio_list_pop(&writes)))
		bio_io_error(bio);
}

/* Are writes among bios (not only views' reads)? */
static bool ptb_writes_wait(struct bio_list *bios)
{
	struct bio *bio;

	bio_list_for_each(bio, bios)
		if (bio_op(bio) != REQ_OP_READ)
			return true;
	return false;
}

/*
 * The owner decides whether writes waiting for a copy of their chunk fail.
 * A background run failed as a whole: the writes waiting for it go back
 * through the check and get copies of their own chunks.
 */
static void ptb_copy_failed(struct ptb_copy *c, enum ptb_error_site site)
{
	struct ptb_image *img = c->img;
	/*
	 * Views' reads parked on the copy are not writes waiting for it; a
	 * copy that timed out had writes waiting, which the timeout sent on.
	 */
	bool waits = c->nr == 1 && (c->timed_out || ptb_writes_wait(&c->waiters));

	if (c->partial && !c->partial->saved)
		ptb_partial_free(img, c->partial);
	if (c->store_new)
		ptb_store_drop(&img->store, c->chunk, false);
	if (img->ops->failed(img, c->chunk, site, c->error, waits))
		ptb_fail_writes(&c->waiters);
	ptb_copy_finish(c);
}

/*
 * A write is to wait for copy c: with a cbw_timeout, the copy's deadline
 * runs from the first such write (copies_by_age stays in deadline order).
 */
static void ptb_copy_arm_timeout(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;

	if (!img->cbw_timeout || c->timed_out || !list_empty(&c->age_node))
		return;
	c->deadline = jiffies + img->cbw_timeout;
	list_add_tail(&c->age_node, &img->copies_by_age);
}

/*
 * Copy c has kept a write waiting longer than cbw_timeout: the owner's
 * policy fails the writes waiting for it or sends them on (the owner then
 * no longer protects the image).  A copy still waiting for a slot buffer
 * has started no I/O and is withdrawn as failed; the chunk stays uncopied.
 * Otherwise its I/O goes on, and later writes to the chunk do not wait.
 */
static void ptb_copy_timeout(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	struct bio_list writes = BIO_EMPTY_LIST;

	DMERR_LIMIT("%s: %s: copy-before-write of chunk %lu took over %u s",
		    img->cow->name, img->name, c->chunk,
		    jiffies_to_msecs(img->cbw_timeout) / 1000);
	c->timed_out = true;
	if (c->stage == PTB_COPY_QUEUED) {
		list_del(&c->list);
		c->error = -ETIMEDOUT;
		ptb_copy_failed(c, PTB_SITE_CBW);
		return;
	}
	if (img->ops->failed(img, c->chunk, PTB_SITE_CBW, -ETIMEDOUT, true)) {
		ptb_fail_writes(&c->waiters);
		return;
	}
	ptb_take_writes(&c->waiters, &writes);
	ptb_requeue_bios(img->cow, &writes);
}

/*
 * Time out the copies past their deadline: the delay to the next one (0:
 * none).  The writes it sends on are taken by the worker's next pass.
 */
static unsigned long ptb_image_check_timeouts(struct ptb_image *img)
{
	unsigned long now = jiffies;
	struct ptb_copy *c;
	bool acted = false;

	while ((c = list_first_entry_or_null(&img->copies_by_age, struct ptb_copy,
					     age_node))) {
		if (time_before(now, c->deadline))
			break;
		list_del_init(&c->age_node);
		ptb_copy_timeout(c);
		acted = true;
	}
	if (acted)
		ptb_wake_worker(img->cow);
	return c ? c->deadline - now : 0;
}

/*
 * Every piece is on the target: note the blocks saved, and mark the
 * chunks that have all their blocks saved done (from then on the map path
 * lets their writes go).
 */
static void ptb_copy_saved(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	struct ptb_partial *p = c->partial;
	unsigned int i;

	if (p) {
		if (!p->saved)
			ptb_store_saved(&img->store);
		WRITE_ONCE(p->saved, p->saved | GENMASK(c->block0 + c->nr_blocks - 1, c->block0));
		if (p->saved != ptb_chunk_all_blocks(img, c->chunk))
			return;
		ptb_partial_free(img, p);
		set_bit(c->chunk, img->done);
		return;
	}
	for (i = 0; i < c->nr; i++) {
		p = ptb_partial_find(img, c->chunk + i);
		if (!p || !p->saved)
			ptb_store_saved(&img->store);
		if (p)
			ptb_partial_free(img, p);
		set_bit(c->chunk + i, img->done);
	}
}

/*
 * Every piece is on the target.  Once no read of the origin is in flight
 * in the copy's chunks (ptb-read.c), mark the blocks saved, tell the
 * owner and let the writes waiting for the copy go.
 */
static void ptb_copy_complete(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;

	if (ptb_copy_must_drain(c)) {
		/* Its data is on the target: the buffers may serve others. */
		ptb_copy_put_slots(c);
		return;
	}
	ptb_copy_saved(c);
	if (c->written)
		img->ops->copied(img, c->written, c->zero_len);
	ptb_copy_finish(c);
}

/* A piece is on the target: write the next one, or finish. */
static void ptb_copy_written(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	sector_t off = (sector_t)c->wpos << img->block_shift;
	sector_t len = min_t(sector_t, (sector_t)c->wlen << img->block_shift,
			     c->len - off);

	c->written += len;
	if (c->zero)
		c->zero_len += len;
	c->wpos += c->wlen;
	if (ptb_copy_next_piece(c)) {
		ptb_copy_write(c);
		return;
	}
	ptb_copy_complete(c);
}

/*
 * Where the copy goes on the target.  A mapped store holds one chunk per
 * copy (its jobs have no sweep) and may be full.
 */
static int ptb_copy_locate(struct ptb_copy *c)
{
	struct ptb_image *img = c->img;
	sector_t base;
	int r;

	if (WARN_ON_ONCE(img->store.mapped && c->nr != 1))
		return -EIO;
	r = ptb_store_locate(&img->store, c->chunk, true, &base);
	if (r < 0)
		return r;
	c->store_new = r;
	c->store_sector = base + c->sector - ((sector_t)c->chunk << img->chunk_shift);
	return 0;
}

/* The old data is in the buffer: write the first piece. */
static void ptb_copy_have_data(struct ptb_copy *c)
{
	c->error = ptb_copy_locate(c);
	if (c->error) {
		ptb_copy_failed(c, PTB_SITE_TARGET);
		return;
	}
	ptb_copy_find_zeroes(c);
	if (ptb_copy_next_piece(c)) {
		ptb_copy_write(c);
		return;
	}
	ptb_copy_complete(c);
}

static void ptb_copy_advance(struct ptb_copy *c)
{
	switch (c->stage) {
	case PTB_COPY_READING:
		if (c->error)
			ptb_copy_failed(c, PTB_SITE_SOURCE);
		else
			ptb_copy_have_data(c);
		break;
	case PTB_COPY_WRITING:
		if (c->error && c->write_zeroes) {
			DMWARN_LIMIT("%s: %s: target rejected write-zeroes (%d), writing zeroes as data",
				     c->img->cow->name, c->img->name, c->error);
			c->img->no_write_zeroes = true;
			c->error = 0;
			c->write_zeroes = false;
			ptb_copy_submit(c, REQ_OP_WRITE, c->wpos, c->wlen);
		} else if (c->error) {
			ptb_copy_failed(c, PTB_SITE_TARGET);
		} else {
			ptb_copy_written(c);
		}
		break;
	case PTB_COPY_DRAINING:
		ptb_copy_complete(c);
		break;
	default:
		WARN_ON_ONCE(1);
	}
}

/*----------------------------------------------------------------*/

/* The worker. */

/*
 * Does img need old data saved before bio may go on?  Parks the bio on
 * the copy (started if need be) and returns 1; 0 if img needs nothing;
 * -ENOMEM if no copy could be started now; -ETIMEDOUT if the copy has
 * timed out and the write is to fail.
 */
static int ptb_image_hold_write(struct ptb_image *img, struct bio *bio)
{
	sector_t sector = bio->bi_iter.bi_sector, end = bio_end_sector(bio);
	unsigned long chunk, need;
	struct ptb_copy *c;

	while (sector < end &&
	       ptb_image_first_pending(img, sector, end - sector, &chunk)) {
		c = ptb_copy_find(img, chunk);
		if (!c) {
			need = ptb_blocks_needed(img, chunk, sector, end);
			if (!need) {
				sector = (sector_t)(chunk + 1) << img->chunk_shift;
				continue;
			}
			c = ptb_copy_start_write(img, chunk, need);
			if (!c)
				return -ENOMEM;
		} else if (c->timed_out) {
			/* Not waiting for it: fail, or go on unprotected. */
			if (img->ops->failed(img, c->chunk, PTB_SITE_CBW, -ETIMEDOUT, true))
				return -ETIMEDOUT;
			return 0;
		}
		ptb_copy_arm_timeout(c);
		bio_list_add(&c->waiters, bio);
		return 1;
	}
	return 0;
}

/* Returns false if the bio could not be handled now and must be retried. */
static bool ptb_handle_write(struct ptb_cow *cow, struct bio *bio)
{
	struct ptb_image *img;
	int r;

	for_each_image_in_worker(img, cow) {
		r = ptb_image_hold_write(img, bio);
		if (r == -ETIMEDOUT)
			bio_io_error(bio);
		if (r)
			return r != -ENOMEM;
	}

	cow->submit_write(cow, bio);
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
		if (bio_op(bio) == REQ_OP_READ ? !ptb_handle_read(cow, bio) :
		    !ptb_handle_write(cow, bio))
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
	struct bio_list bios, discards, retry = BIO_EMPTY_LIST;
	LIST_HEAD(done);
	struct ptb_image *img;

	for (;;) {
		spin_lock_irq(&cow->lock);
		list_splice_init(&cow->completed_copies, &done);
		bios = cow->deferred_bios;
		bio_list_init(&cow->deferred_bios);
		discards = cow->view_discards;
		bio_list_init(&cow->view_discards);
		spin_unlock_irq(&cow->lock);

		if (list_empty(&done) && bio_list_empty(&bios) && bio_list_empty(&discards))
			break;
		ptb_process_completed(cow, &done);
		ptb_process_view_discards(&discards, &retry);
		if (ptb_process_deferred(cow, &bios)) {
			wake = PTB_ENOMEM_RETRY;
			break;
		}
		cond_resched();
	}

	/* Discards of busy chunks: again in a while, the rest went on. */
	if (!bio_list_empty(&retry)) {
		ptb_requeue_view_discards(cow, &retry);
		if (!wake)
			wake = PTB_ENOMEM_RETRY;
	}

	for_each_image_in_worker(img, cow) {
		delay = ptb_image_check_timeouts(img);
		if (delay && (!wake || delay < wake))
			wake = delay;
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
	bio_list_init(&cow->view_discards);
	INIT_LIST_HEAD(&cow->completed_copies);
	atomic_set(&cow->io_in_flight, 0);
	init_waitqueue_head(&cow->io_idle);
	hash_init(cow->copies);
	hash_init(cow->guards);
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
	WARN_ON_ONCE(!hash_empty(cow->guards));
	WARN_ON_ONCE(!bio_list_empty(&cow->deferred_bios));
	WARN_ON_ONCE(!bio_list_empty(&cow->view_discards));
	dm_io_client_destroy(cow->io_client);
	mempool_exit(&cow->copy_pool);
}

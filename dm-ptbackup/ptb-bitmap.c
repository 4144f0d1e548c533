// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup dirty bitmaps: marking, the marker work that makes bits
 * durable before the writes they record, the bitmap messages, and the
 * hand-over between a bitmap and the job that uses it.
 */

#include <linux/slab.h>

#include "ptb-bitmap.h"

#define DM_MSG_PREFIX "ptbackup"

/* Bitmaps are freed only after the marker is flushed: see ptb_bitmap_free(). */
static inline bool __maybe_unused ptb_in_marker(struct ptb_device *pd)
{
	return current_work() == &pd->marker;
}

#define for_each_bitmap_in_marker(b, pd) \
	list_for_each_entry_rcu(b, &(pd)->bitmaps, node, ptb_in_marker(pd))

static bool ptb_bitmap_persistent(struct ptb_device *pd, struct ptb_bitmap *b)
{
	return b->slot >= 0 && !ptb_metadata_failed(pd->pmd);
}

/* The granules [*first, *last] a bio touches; false if none. */
static bool ptb_bitmap_range(const struct ptb_bitmap *b, sector_t sector,
			     unsigned int sectors, unsigned long *first,
			     unsigned long *last)
{
	unsigned int shift = b->gran_shift - SECTOR_SHIFT;

	if (!sectors)
		return false;
	*first = sector >> shift;
	if (*first >= b->nr_bits)
		return false;
	*last = min_t(unsigned long, (sector + sectors - 1) >> shift, b->nr_bits - 1);
	return true;
}

static bool ptb_bits_all_set(const unsigned long *bits, unsigned long first,
			     unsigned long last)
{
	return find_next_zero_bit(bits, last + 1, first) > last;
}

static void ptb_bits_set(unsigned long *bits, unsigned long first,
			 unsigned long last)
{
	unsigned long i;

	for (i = first; i <= last; i++)
		if (!test_bit(i, bits))
			set_bit(i, bits);
}

static unsigned long *ptb_bits_alloc(unsigned long nr_bits, gfp_t gfp)
{
	return kvcalloc(BITS_TO_LONGS(nr_bits), sizeof(unsigned long), gfp);
}

/*----------------------------------------------------------------*/

/*
 * Map path.  Sets what can be set without a commit (transient bitmaps,
 * successors); returns true if a persistent bit is clear, in which case
 * the bio goes to the marker and waits for the commit.
 */
bool ptb_bitmaps_mark(struct ptb_device *pd, struct bio *bio)
{
	sector_t sector = bio->bi_iter.bi_sector;
	unsigned int sectors = bio_sectors(bio);
	unsigned long first, last, *succ;
	struct ptb_bitmap *b;
	bool commit = false;

	rcu_read_lock();
	list_for_each_entry_rcu(b, &pd->bitmaps, node) {
		if (!READ_ONCE(b->enabled) ||
		    !ptb_bitmap_range(b, sector, sectors, &first, &last))
			continue;
		succ = rcu_dereference(b->succ);
		if (succ)
			ptb_bits_set(succ, first, last);
		if (ptb_bits_all_set(b->bits, first, last))
			continue;
		if (ptb_bitmap_persistent(pd, b))
			commit = true;
		else
			ptb_bits_set(b->bits, first, last);
	}
	rcu_read_unlock();
	return commit;
}

void ptb_defer_mark(struct ptb_device *pd, struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&pd->bio_lock, flags);
	bio_list_add(&pd->mark_bios, bio);
	spin_unlock_irqrestore(&pd->bio_lock, flags);
	queue_work(pd->mark_wq, &pd->marker);
}

/*
 * The metadata failed: every persistent bitmap may now miss writes.  Say
 * so, loudly, once: flag the bitmaps (incremental backups from them are
 * refused), log, and raise an event.
 */
void ptb_bitmaps_lost_tracking(struct ptb_device *pd)
{
	struct ptb_bitmap *b;

	if (atomic_xchg(&pd->bitmaps_lost, 1))
		return;
	rcu_read_lock();
	list_for_each_entry_rcu(b, &pd->bitmaps, node)
		if (b->slot >= 0)
			WRITE_ONCE(b->inconsistent, true);
	rcu_read_unlock();
	DMERR("%s: metadata failed: persistent bitmaps no longer track writes; take full backups",
	      ptb_device_name(pd));
	ptb_device_event(pd);
}

/*
 * The marker: set the bits of the waiting writes on disk, commit once for
 * all of them, then set the in-core bits and let the writes go on to the
 * copy-before-write check.
 */
static void ptb_do_marker(struct work_struct *ws)
{
	struct ptb_device *pd = container_of(ws, struct ptb_device, marker);
	unsigned long first, last;
	struct bio_list bios;
	struct ptb_bitmap *b;
	struct bio *bio;
	bool failed;

	spin_lock_irq(&pd->bio_lock);
	bios = pd->mark_bios;
	bio_list_init(&pd->mark_bios);
	spin_unlock_irq(&pd->bio_lock);
	if (bio_list_empty(&bios))
		return;

	failed = ptb_metadata_failed(pd->pmd);
	bio_list_for_each(bio, &bios) {
		for_each_bitmap_in_marker(b, pd) {
			if (failed || !READ_ONCE(b->enabled) || b->slot < 0 ||
			    !ptb_bitmap_range(b, bio->bi_iter.bi_sector,
					      bio_sectors(bio), &first, &last) ||
			    ptb_bits_all_set(b->bits, first, last))
				continue;
			if (ptb_metadata_set_bits(pd->pmd, b->slot, first, last))
				failed = true;
		}
	}
	if (!failed && ptb_metadata_commit(pd->pmd))
		failed = true;
	if (failed)
		ptb_bitmaps_lost_tracking(pd);

	while ((bio = bio_list_pop(&bios))) {
		for_each_bitmap_in_marker(b, pd) {
			if (READ_ONCE(b->enabled) &&
			    ptb_bitmap_range(b, bio->bi_iter.bi_sector,
					     bio_sectors(bio), &first, &last))
				ptb_bits_set(b->bits, first, last);
		}
		if (ptb_write_needs_cow(pd, bio))
			ptb_defer_bio(pd, bio);
		else
			dm_submit_bio_remap(bio, NULL);
	}
}

/*----------------------------------------------------------------*/

int ptb_bitmaps_init(struct ptb_device *pd)
{
	INIT_LIST_HEAD(&pd->bitmaps);
	bio_list_init(&pd->mark_bios);
	INIT_WORK(&pd->marker, ptb_do_marker);
	pd->mark_wq = alloc_ordered_workqueue("dm-ptbackup-mark", WQ_MEM_RECLAIM);
	return pd->mark_wq ? 0 : -ENOMEM;
}

static void ptb_bitmap_free(struct ptb_bitmap *b)
{
	kvfree(rcu_dereference_protected(b->succ, true));
	kvfree(b->bits);
	kfree(b);
}

void ptb_bitmaps_exit(struct ptb_device *pd)
{
	struct ptb_bitmap *b, *tmp;

	if (pd->mark_wq)
		destroy_workqueue(pd->mark_wq);
	list_for_each_entry_safe(b, tmp, &pd->bitmaps, node) {
		list_del(&b->node);
		ptb_bitmap_free(b);
	}
	pd->nr_bitmaps = 0;
}

static struct ptb_bitmap *ptb_bitmap_new(const char *name, unsigned int gran_shift,
					 sector_t dev_sectors)
{
	struct ptb_bitmap *b = kzalloc(sizeof(*b), GFP_KERNEL);

	if (!b)
		return NULL;
	strscpy(b->name, name, sizeof(b->name));
	b->gran_shift = gran_shift;
	b->nr_bits = DIV_ROUND_UP_ULL((u64)dev_sectors << SECTOR_SHIFT,
				      1ULL << gran_shift);
	b->slot = -1;
	b->bits = ptb_bits_alloc(b->nr_bits, GFP_KERNEL);
	if (!b->bits) {
		kfree(b);
		return NULL;
	}
	return b;
}

static void ptb_bitmap_publish(struct ptb_device *pd, struct ptb_bitmap *b)
{
	list_add_tail_rcu(&b->node, &pd->bitmaps);
	pd->nr_bitmaps++;
}

/* Load the persistent bitmaps when the metadata is opened. */
int ptb_bitmaps_load(struct ptb_device *pd, char **error)
{
	struct ptb_md_bitmap md;
	struct ptb_bitmap *b;
	unsigned int slot;
	int r;

	for (slot = 0; slot < PTB_MAX_PERSISTENT_BITMAPS; slot++) {
		if (!ptb_metadata_get_bitmap(pd->pmd, slot, &md))
			continue;
		b = ptb_bitmap_new(md.name, md.granularity_shift,
				   ptb_metadata_dev_sectors(pd->pmd));
		if (!b) {
			*error = "Cannot allocate a bitmap";
			return -ENOMEM;
		}
		b->slot = slot;
		b->enabled = md.enabled;
		r = ptb_metadata_load_bits(pd->pmd, slot, b->bits);
		if (r) {
			ptb_bitmap_free(b);
			*error = "Cannot read a bitmap from the metadata device";
			return r;
		}
		ptb_bitmap_publish(pd, b);
	}
	return 0;
}

struct ptb_bitmap *ptb_bitmap_find(struct ptb_device *pd, const char *name)
{
	struct ptb_bitmap *b;

	list_for_each_entry(b, &pd->bitmaps, node)
		if (!strcmp(b->name, name))
			return b;
	return NULL;
}

/*----------------------------------------------------------------*/

/* Messages.  Caller holds pd->lock. */

static int ptb_bitmap_commit(struct ptb_device *pd, const char *op,
			     struct ptb_bitmap *b)
{
	int r = ptb_metadata_commit(pd->pmd);

	if (r) {
		DMERR("%s: bitmap %s %s: metadata commit failed (%d)",
		      ptb_device_name(pd), op, b->name, r);
		ptb_bitmaps_lost_tracking(pd);
	}
	return r;
}

int ptb_bitmap_add(struct ptb_target *pt, const char *name, u64 granularity,
		   bool transient, bool disabled)
{
	struct ptb_device *pd = pt->pd;
	const char *dev = ptb_device_name(pd);
	struct ptb_md_bitmap md = { };
	bool persistent = pd->pmd && !transient;
	struct ptb_bitmap *b;
	unsigned int slot;
	int r;

	if (ptb_bitmap_find(pd, name)) {
		DMERR("%s: bitmap add: bitmap %s already exists", dev, name);
		return -EEXIST;
	}
	if (pd->nr_bitmaps >= PTB_MAX_BITMAPS) {
		DMERR("%s: bitmap add %s: too many bitmaps (%u)", dev, name,
		      PTB_MAX_BITMAPS);
		return -ENOSPC;
	}
	if (!granularity)
		granularity = (u64)pt->chunk_sectors << SECTOR_SHIFT;
	if (!is_power_of_2(granularity) ||
	    granularity < ((u64)pt->chunk_sectors << SECTOR_SHIFT) ||
	    granularity > (1ULL << 40)) {
		DMERR("%s: bitmap add %s: granularity %llu must be a power of two from %llu to 1T",
		      dev, name, granularity, (u64)pt->chunk_sectors << SECTOR_SHIFT);
		return -EINVAL;
	}
	if (persistent && ptb_metadata_failed(pd->pmd)) {
		DMERR("%s: bitmap add %s: metadata failed: add transient bitmaps only",
		      dev, name);
		return -EIO;
	}

	b = ptb_bitmap_new(name, ilog2(granularity),
			   persistent ? ptb_metadata_dev_sectors(pd->pmd) : pt->ti->len);
	if (!b)
		return -ENOMEM;
	b->enabled = !disabled;
	if (persistent) {
		strscpy(md.name, name, sizeof(md.name));
		md.granularity_shift = b->gran_shift;
		md.nr_bits = b->nr_bits;
		md.enabled = b->enabled;
		r = ptb_metadata_add_bitmap(pd->pmd, &md, &slot);
		if (r == -ENOSPC)
			DMERR("%s: bitmap add %s: no room on the metadata device",
			      dev, name);
		if (!r) {
			r = ptb_bitmap_commit(pd, "add", b);
			if (r)
				ptb_metadata_remove_bitmap(pd->pmd, slot);
		}
		if (r) {
			ptb_bitmap_free(b);
			return r;
		}
		b->slot = slot;
	}
	/* Writes before this point are not recorded, writes after it are. */
	ptb_hold_writes(pd);
	ptb_bitmap_publish(pd, b);
	ptb_release_writes(pd);
	return 0;
}

static int ptb_bitmap_check_idle(struct ptb_device *pd, const char *op,
				 struct ptb_bitmap *b)
{
	if (!b->busy)
		return 0;
	DMERR("%s: bitmap %s %s: bitmap is in use by job %s", ptb_device_name(pd),
	      op, b->name, b->busy->id);
	return -EBUSY;
}

int ptb_bitmap_remove(struct ptb_device *pd, struct ptb_bitmap *b)
{
	int r = ptb_bitmap_check_idle(pd, "remove", b);

	if (r)
		return r;
	if (b->slot >= 0 && !ptb_metadata_failed(pd->pmd)) {
		ptb_metadata_remove_bitmap(pd->pmd, b->slot);
		r = ptb_bitmap_commit(pd, "remove", b);
		if (r)
			return r;
	}
	list_del_rcu(&b->node);
	pd->nr_bitmaps--;
	synchronize_rcu();
	flush_work(&pd->marker);
	ptb_bitmap_free(b);
	return 0;
}

int ptb_bitmap_clear(struct ptb_device *pd, struct ptb_bitmap *b)
{
	int r = ptb_bitmap_check_idle(pd, "clear", b);

	if (r)
		return r;
	/* Writes in flight would be lost from the bitmap: hold them. */
	ptb_hold_writes(pd);
	flush_work(&pd->marker);
	bitmap_zero(b->bits, b->nr_bits);
	if (b->slot >= 0 && !ptb_metadata_failed(pd->pmd)) {
		r = ptb_metadata_store_bits(pd->pmd, b->slot, b->bits);
		r = r ? r : ptb_bitmap_commit(pd, "clear", b);
		if (r)
			ptb_bitmaps_lost_tracking(pd);
	}
	WRITE_ONCE(b->inconsistent, b->slot >= 0 && ptb_metadata_failed(pd->pmd));
	ptb_release_writes(pd);
	return r;
}

int ptb_bitmap_enable(struct ptb_device *pd, struct ptb_bitmap *b, bool on)
{
	int r = 0;

	if (!on) {
		r = ptb_bitmap_check_idle(pd, "disable", b);
		if (r)
			return r;
	}
	if (READ_ONCE(b->enabled) == on)
		return 0;
	if (b->slot >= 0 && !ptb_metadata_failed(pd->pmd)) {
		ptb_metadata_set_enabled(pd->pmd, b->slot, on);
		r = ptb_bitmap_commit(pd, on ? "enable" : "disable", b);
		if (r)
			return r;
	}
	ptb_hold_writes(pd);
	WRITE_ONCE(b->enabled, on);
	ptb_release_writes(pd);
	return 0;
}

/* Set in dst every granule that overlaps a dirty granule of src. */
static void ptb_bits_merge(const struct ptb_bitmap *src, struct ptb_bitmap *dst,
			   unsigned long *out)
{
	unsigned long s, e, first, last;
	u64 start, end;

	for (s = find_first_bit(src->bits, src->nr_bits); s < src->nr_bits;
	     s = find_next_bit(src->bits, src->nr_bits, e)) {
		e = find_next_zero_bit(src->bits, src->nr_bits, s);
		start = (u64)s << src->gran_shift;
		end = ((u64)e << src->gran_shift) - 1;
		first = start >> dst->gran_shift;
		if (first >= dst->nr_bits)
			break;
		last = min_t(u64, end >> dst->gran_shift, dst->nr_bits - 1);
		bitmap_set(out, first, last - first + 1);
	}
}

int ptb_bitmap_merge(struct ptb_device *pd, struct ptb_bitmap *src,
		     struct ptb_bitmap *dst)
{
	unsigned long *merged;
	int r = ptb_bitmap_check_idle(pd, "merge", dst);

	if (r)
		return r;
	merged = ptb_bits_alloc(dst->nr_bits, GFP_KERNEL);
	if (!merged)
		return -ENOMEM;
	bitmap_copy(merged, dst->bits, dst->nr_bits);
	ptb_bits_merge(src, dst, merged);
	if (dst->slot >= 0 && !ptb_metadata_failed(pd->pmd)) {
		r = ptb_metadata_store_bits(pd->pmd, dst->slot, merged);
		r = r ? r : ptb_bitmap_commit(pd, "merge", dst);
		if (r)
			ptb_bitmaps_lost_tracking(pd);
	}
	if (!r) {
		/* Only sets bits: concurrent marking stays correct. */
		bitmap_or(dst->bits, dst->bits, merged, dst->nr_bits);
		if (READ_ONCE(src->inconsistent))
			WRITE_ONCE(dst->inconsistent, true);
	}
	kvfree(merged);
	return r;
}

static u64 ptb_bitmap_dirty_bytes(const struct ptb_bitmap *b, sector_t dev_sectors)
{
	u64 bytes = (u64)bitmap_weight(b->bits, b->nr_bits) << b->gran_shift;
	u64 size = (u64)b->nr_bits << b->gran_shift;
	u64 dev_bytes = (u64)dev_sectors << SECTOR_SHIFT;

	/* The last granule may extend past the end of the device. */
	if (b->nr_bits && test_bit(b->nr_bits - 1, b->bits) && size > dev_bytes)
		bytes -= size - dev_bytes;
	return bytes;
}

static sector_t ptb_bitmap_dev_sectors(struct ptb_device *pd,
				       const struct ptb_bitmap *b)
{
	struct ptb_target *live = pd->live;

	if (b->slot >= 0)
		return ptb_metadata_dev_sectors(pd->pmd);
	return live ? live->ti->len : (sector_t)b->nr_bits << (b->gran_shift - SECTOR_SHIFT);
}

int ptb_bitmap_list(struct ptb_device *pd, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b;
	unsigned int sz = 0;

	result[0] = '\0';
	list_for_each_entry(b, &pd->bitmaps, node) {
		DMEMIT("%s %llu %s %s %s %llu%s\n", b->name, 1ULL << b->gran_shift,
		       READ_ONCE(b->enabled) ? "enabled" : "disabled",
		       b->slot >= 0 ? "persistent" : "transient",
		       b->busy ? "busy" : "idle",
		       ptb_bitmap_dirty_bytes(b, ptb_bitmap_dev_sectors(pd, b)),
		       READ_ONCE(b->inconsistent) ? " inconsistent" : "");
	}
	return 1;
}

/*
 * Dirty extents from byte start on, as "<offset> <length>" lines in bytes.
 * If they do not all fit, the last line is "next <offset>": ask again from
 * there.
 */
int ptb_bitmap_dump(struct ptb_device *pd, struct ptb_bitmap *b, u64 start,
		    char *result, unsigned int maxlen)
{
	u64 dev_bytes = (u64)ptb_bitmap_dev_sectors(pd, b) << SECTOR_SHIFT;
	unsigned long s, e;
	unsigned int sz = 0;
	u64 off, len;
	char line[48];

	result[0] = '\0';
	for (s = find_next_bit(b->bits, b->nr_bits, start >> b->gran_shift);
	     s < b->nr_bits; s = find_next_bit(b->bits, b->nr_bits, e)) {
		e = find_next_zero_bit(b->bits, b->nr_bits, s);
		off = max_t(u64, (u64)s << b->gran_shift, start);
		len = min_t(u64, (u64)e << b->gran_shift, dev_bytes) - off;
		snprintf(line, sizeof(line), "%llu %llu\n", off, len);
		/* Keep room for the "next" line. */
		if (sz + strlen(line) + 28 >= maxlen) {
			DMEMIT("next %llu\n", off);
			return 1;
		}
		DMEMIT("%s", line);
	}
	return 1;
}

/*----------------------------------------------------------------*/

/* Jobs. */

/* Allocate the successor before writes are held. */
int ptb_bitmap_prepare_job(struct ptb_bitmap *b, unsigned long **succ)
{
	*succ = ptb_bits_alloc(b->nr_bits, GFP_KERNEL);
	return *succ ? 0 : -ENOMEM;
}

/* With writes held: from now on the successor records new writes. */
void ptb_bitmap_freeze(struct ptb_bitmap *b, struct ptb_job *job,
		       unsigned long *succ)
{
	b->busy = job;
	rcu_assign_pointer(b->succ, succ);
}

/* The chunk's byte range overlaps a dirty granule? */
static bool ptb_bitmap_chunk_dirty(const struct ptb_bitmap *b,
				   const struct ptb_job *job, unsigned long chunk)
{
	unsigned int cshift = job->chunk_shift + SECTOR_SHIFT;
	unsigned long first = ((u64)chunk << cshift) >> b->gran_shift;
	unsigned long last = (((u64)(chunk + 1) << cshift) - 1) >> b->gran_shift;

	if (first >= b->nr_bits)
		return true;	/* not covered: copy it to be safe */
	last = min(last, b->nr_bits - 1);
	return find_next_bit(b->bits, last + 1, first) <= last;
}

/* With writes held: an incremental job copies only the dirty chunks. */
void ptb_bitmap_select_chunks(struct ptb_bitmap *b, struct ptb_job *job)
{
	unsigned long c;
	u64 total = 0;

	for (c = 0; c < job->nr_chunks; c++) {
		if (ptb_bitmap_chunk_dirty(b, job, c))
			total += min_t(u64, 1ULL << (job->chunk_shift + SECTOR_SHIFT),
				       ((u64)job->dev_sectors << SECTOR_SHIFT) -
				       ((u64)c << (job->chunk_shift + SECTOR_SHIFT)));
		else
			__set_bit(c, job->done);
		if (!(c & 4095))
			cond_resched();
	}
	job->bytes_total = total;
}

/*
 * The job is over and writes are held.  Success with bitmap_mode
 * on-success or always: the bitmap becomes its successor.  Failure with
 * always: what was not copied plus the successor.  Otherwise the bitmap
 * already holds everything (it kept recording): leave it.
 */
void ptb_bitmap_thaw(struct ptb_device *pd, struct ptb_bitmap *b,
		     struct ptb_job *job, bool success)
{
	unsigned long *succ = rcu_dereference_protected(b->succ, true);
	unsigned long *next = NULL, c, g, first, last;
	unsigned int cshift = job->chunk_shift + SECTOR_SHIFT;
	int r = 0;

	if (job->bitmap_mode != PTB_BITMAP_NEVER && success) {
		next = succ;
	} else if (job->bitmap_mode == PTB_BITMAP_ALWAYS) {
		next = succ;
		for (c = find_first_zero_bit(job->done, job->nr_chunks);
		     c < job->nr_chunks;
		     c = find_next_zero_bit(job->done, job->nr_chunks, c + 1)) {
			first = ((u64)c << cshift) >> b->gran_shift;
			last = (((u64)(c + 1) << cshift) - 1) >> b->gran_shift;
			for (g = first; g <= last && g < b->nr_bits; g++)
				__set_bit(g, next);
		}
	}

	if (next) {
		bitmap_copy(b->bits, next, b->nr_bits);
		if (b->slot >= 0 && !ptb_metadata_failed(pd->pmd)) {
			r = ptb_metadata_store_bits(pd->pmd, b->slot, b->bits);
			if (!r)
				r = ptb_metadata_commit(pd->pmd);
			if (r) {
				DMERR("%s: bitmap %s: cannot store it after job %s (%d)",
				      ptb_device_name(pd), b->name, job->id, r);
				ptb_bitmaps_lost_tracking(pd);
			}
		}
	}
	rcu_assign_pointer(b->succ, NULL);
	b->busy = NULL;
	synchronize_rcu();
	kvfree(succ);
}

// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup dirty bitmaps: marking, the write-intent log and the marker
 * work that keeps it, periodic commits of the bitmaps, the bitmap
 * messages, and the hand-over between a bitmap and the job that uses it.
 */

#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "ptb-bitmap.h"
#include "ptb-gate.h"

#define DM_MSG_PREFIX "ptbackup"

/* Bitmaps are freed only after the marker is flushed: see ptb_bitmap_remove(). */
static inline bool __maybe_unused ptb_in_marker(struct ptb_tracking *trk)
{
	return current_work() == &trk->marker.work;
}

#define for_each_bitmap_in_marker(b, trk) \
	list_for_each_entry_rcu(b, &(trk)->bitmaps, node, ptb_in_marker(trk))

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
	if (first == last)
		return test_bit(first, bits);
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

/* NULL, quietly, for sizes the bitmap helpers cannot take (crafted metadata). */
static unsigned long *ptb_bits_alloc(unsigned long nr_bits, gfp_t gfp)
{
	if (nr_bits > PTB_MAX_BITS)
		return NULL;
	return kvcalloc(BITS_TO_LONGS(nr_bits), sizeof(unsigned long),
			gfp | __GFP_NOWARN);
}

/*----------------------------------------------------------------*/

/* The intent regions [*first, *last] a bio touches. */
static void ptb_intent_range(struct ptb_tracking *trk, sector_t sector,
			     unsigned int sectors, unsigned long *first,
			     unsigned long *last)
{
	*first = min_t(unsigned long, sector >> trk->region_shift, trk->nr_regions - 1);
	*last = min_t(unsigned long, (sector + sectors - 1) >> trk->region_shift,
		      trk->nr_regions - 1);
}

/*
 * Is the intent of every region the bio touches durable?  Called in an
 * RCU read section (the map path's RCU-sched one), after the bio's bits
 * are set in core.  A commit that
 * takes a region out of the log clears its intent bit in core, waits for
 * an RCU grace period, and only then reads the bits to commit: so either
 * this sees the intent clear (and the bio waits for the marker to log it
 * again), or the commit sees the bits this bio set.
 */
static bool ptb_intent_held(struct ptb_tracking *trk, sector_t sector,
			    unsigned int sectors)
{
	unsigned long first, last, r;

	ptb_intent_range(trk, sector, sectors, &first, &last);
	for (r = first; r <= last; r++)
		if (!test_bit(r, trk->intent))
			return false;
	for (r = first; r <= last; r++)
		if (!test_bit(r, trk->touched))
			set_bit(r, trk->touched);
	return true;
}

/* Note bits first..last of a persistent bitmap for the next commit. */
static void ptb_bitmap_note_change(struct ptb_bitmap *b, unsigned long first,
				   unsigned long last)
{
	unsigned long seg;

	for (seg = first / PTB_BITMAP_SEGMENT_BITS;
	     seg <= last / PTB_BITMAP_SEGMENT_BITS; seg++)
		set_bit(seg, b->changed);
}

/* The marker: write the segments of b changed since the last commit. */
static int ptb_bitmap_write_changes(struct ptb_tracking *trk, struct ptb_bitmap *b)
{
	unsigned long seg, first, last;
	int err = 0;

	for_each_set_bit(seg, b->changed, b->nr_segments) {
		if (!test_and_clear_bit(seg, b->changed))
			continue;
		first = seg * PTB_BITMAP_SEGMENT_BITS;
		last = min(first + PTB_BITMAP_SEGMENT_BITS, b->nr_bits) - 1;
		err = ptb_metadata_write_bits(trk->pmd, b->slot, b->bits, b->nr_bits,
					      first, last);
		if (err)
			break;
	}
	return err;
}

/*
 * Map path.  Sets the bits of every enabled bitmap the write touches (and
 * of its successor) in core; for a persistent bitmap also notes the
 * segment as changed.  Returns true if the write must first wait for
 * the marker to log its intent region.
 */
bool ptb_bitmaps_mark(struct ptb_tracking *trk, struct bio *bio)
{
	sector_t sector = bio->bi_iter.bi_sector;
	unsigned int sectors = bio_sectors(bio);
	unsigned long first, last, *succ;
	struct ptb_bitmap *b;
	bool persistent = false, wait = false;

	rcu_read_lock_sched();
	list_for_each_entry_rcu(b, &trk->bitmaps, node) {
		if (!READ_ONCE(b->enabled) ||
		    !ptb_bitmap_range(b, sector, sectors, &first, &last))
			continue;
		succ = rcu_dereference_sched(b->succ);
		if (succ)
			ptb_bits_set(succ, first, last);
		if (b->slot < 0) {
			ptb_bits_set(b->bits, first, last);
			continue;
		}
		persistent = true;
		if (ptb_bits_all_set(b->bits, first, last))
			continue;
		ptb_bits_set(b->bits, first, last);
		/* Bits before segment: pairs with ptb_bitmaps_sync(). */
		smp_mb__before_atomic();
		ptb_bitmap_note_change(b, first, last);
	}
	/* After a metadata failure (bitmaps_lost) writes no longer wait. */
	if (persistent && !atomic_read(&trk->bitmaps_lost))
		wait = !ptb_intent_held(trk, sector, sectors);
	rcu_read_unlock_sched();
	return wait;
}

void ptb_defer_mark(struct ptb_tracking *trk, struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&trk->mark_lock, flags);
	bio_list_add(&trk->mark_bios, bio);
	spin_unlock_irqrestore(&trk->mark_lock, flags);
	mod_delayed_work(trk->mark_wq, &trk->marker, 0);
}

/*
 * The metadata failed: every persistent bitmap may now miss writes.  Say
 * so, loudly, once: flag the bitmaps (incremental backups from them are
 * refused), log, and raise an event.
 */
void ptb_bitmaps_lost_tracking(struct ptb_tracking *trk)
{
	struct ptb_bitmap *b;

	if (atomic_xchg(&trk->bitmaps_lost, 1))
		return;
	rcu_read_lock();
	list_for_each_entry_rcu(b, &trk->bitmaps, node)
		if (b->slot >= 0)
			WRITE_ONCE(b->inconsistent, true);
	rcu_read_unlock();
	DMERR("%s: metadata failed: persistent bitmaps no longer track writes; take full backups",
	      trk->name);
	trk->ops->notify(trk);
}

/*
 * Log the intent regions of the waiting writes, with one write of the log
 * for all of them; from then on writes to those regions go straight on.
 */
static void ptb_intent_log(struct ptb_tracking *trk, struct bio_list *bios)
{
	unsigned long first, last, r;
	bool changed = false;
	struct bio *bio;

	if (ptb_metadata_failed(trk->pmd)) {
		ptb_bitmaps_lost_tracking(trk);
		return;
	}
	bio_list_for_each(bio, bios) {
		ptb_intent_range(trk, bio->bi_iter.bi_sector, bio_sectors(bio),
				 &first, &last);
		for (r = first; r <= last; r++)
			changed |= !__test_and_set_bit(r, trk->intent_disk);
	}
	if (changed && ptb_metadata_write_intent(trk->pmd, trk->intent_disk)) {
		ptb_bitmaps_lost_tracking(trk);
		return;
	}
	if (bitmap_empty(trk->intent, trk->nr_regions))
		trk->next_commit = jiffies + PTB_COMMIT_PERIOD;
	bio_list_for_each(bio, bios) {
		ptb_intent_range(trk, bio->bi_iter.bi_sector, bio_sectors(bio),
				 &first, &last);
		for (r = first; r <= last; r++) {
			set_bit(r, trk->touched);
			set_bit(r, trk->intent);
		}
	}
}

/*
 * Commit the bitmaps: take the intent of every region not written since
 * the last commit off (all of them for a clean shutdown), write the dirty
 * bitmap blocks and flush, and only then write the smaller intent log.
 */
static void ptb_bitmaps_sync(struct ptb_tracking *trk)
{
	bool clean = READ_ONCE(trk->clean_request);
	unsigned long n = trk->nr_regions, r;
	struct ptb_bitmap *b;
	int err = 0;

	bitmap_zero(trk->intent_clearing, n);
	for_each_set_bit(r, trk->intent, n) {
		if (test_and_clear_bit(r, trk->touched) && !clean)
			continue;
		clear_bit(r, trk->intent);
		__set_bit(r, trk->intent_clearing);
	}
	/*
	 * Writes that saw those intent bits set have finished marking (see
	 * ptb_intent_held()).  No write is being mapped at a clean shutdown.
	 */
	if (!clean && !bitmap_empty(trk->intent_clearing, n))
		synchronize_rcu();
	if (ptb_metadata_failed(trk->pmd))
		goto out;

	for_each_bitmap_in_marker(b, trk)
		if (b->changed && !err)
			err = ptb_bitmap_write_changes(trk, b);
	if (!err)
		err = ptb_metadata_commit(trk->pmd);
	if (!err && !bitmap_empty(trk->intent_clearing, n)) {
		bitmap_andnot(trk->intent_disk, trk->intent_disk,
			      trk->intent_clearing, n);
		err = ptb_metadata_write_intent(trk->pmd, trk->intent_disk);
	}
	if (err)
		ptb_bitmaps_lost_tracking(trk);
out:
	trk->next_commit = jiffies + PTB_COMMIT_PERIOD;
	if (clean)
		WRITE_ONCE(trk->clean_request, false);
}

/*
 * The marker: logs the intent of waiting writes and lets them go on to the
 * copy-before-write check; commits the bitmaps every PTB_COMMIT_PERIOD
 * while any intent is logged, and on request (clean shutdown).
 */
static void ptb_do_marker(struct work_struct *ws)
{
	struct ptb_tracking *trk = container_of(to_delayed_work(ws),
					     struct ptb_tracking, marker);
	struct bio_list bios;
	struct bio *bio;

	spin_lock_irq(&trk->mark_lock);
	bios = trk->mark_bios;
	bio_list_init(&trk->mark_bios);
	spin_unlock_irq(&trk->mark_lock);

	if (!bio_list_empty(&bios))
		ptb_intent_log(trk, &bios);
	while ((bio = bio_list_pop(&bios)))
		trk->ops->marked(trk, bio);

	if (!trk->intent)
		return;
	if (READ_ONCE(trk->clean_request) || time_after_eq(jiffies, trk->next_commit))
		ptb_bitmaps_sync(trk);
	if (!bitmap_empty(trk->intent, trk->nr_regions) &&
	    !ptb_metadata_failed(trk->pmd))
		queue_delayed_work(trk->mark_wq, &trk->marker,
				   max_t(long, 1, (long)(trk->next_commit - jiffies)));
}

/* Commit everything and empty the intent log: no write is in flight. */
void ptb_bitmaps_quiesce(struct ptb_tracking *trk)
{
	if (!trk->intent)
		return;
	WRITE_ONCE(trk->clean_request, true);
	mod_delayed_work(trk->mark_wq, &trk->marker, 0);
	flush_delayed_work(&trk->marker);
}

/*
 * After an unclean shutdown the intent log names the regions that may hold
 * writes the bitmaps do not: mark them dirty in every persistent bitmap.
 */
static void ptb_bitmap_mark_region(struct ptb_tracking_load *ld,
				   struct ptb_bitmap *b, unsigned long r)
{
	sector_t dev = ptb_metadata_dev_sectors(ld->pmd);
	sector_t start = (sector_t)r << ld->region_shift;
	sector_t end = r == ld->nr_regions - 1 ? dev :
		min_t(sector_t, dev, (sector_t)(r + 1) << ld->region_shift);
	unsigned long first, last;

	if (start < end && ptb_bitmap_range(b, start, end - start, &first, &last))
		bitmap_set(b->bits, first, last - first + 1);
}

static int ptb_intent_recover(struct ptb_tracking_load *ld, const char *name)
{
	unsigned long n = ld->nr_regions, r;
	struct ptb_bitmap *b;
	int err;

	err = ptb_metadata_load_intent(ld->pmd, ld->intent_disk);
	if (err || bitmap_empty(ld->intent_disk, n))
		return err;
	list_for_each_entry(b, &ld->bitmaps, node) {
		for_each_set_bit(r, ld->intent_disk, n)
			ptb_bitmap_mark_region(ld, b, r);
		err = ptb_metadata_store_bits(ld->pmd, b->slot, b->bits);
		if (err)
			return err;
	}
	err = ptb_metadata_commit(ld->pmd);
	if (err)
		return err;
	DMWARN("%s: unclean shutdown: %u of %lu intent regions (%llu KiB each) %s",
	       name, bitmap_weight(ld->intent_disk, n), n,
	       (1ULL << ld->region_shift) >> 1,
	       "marked dirty in every persistent bitmap");
	bitmap_zero(ld->intent_disk, n);
	return ptb_metadata_write_intent(ld->pmd, ld->intent_disk);
}

/*----------------------------------------------------------------*/

int ptb_bitmaps_init(struct ptb_tracking *trk, const struct ptb_tracking_ops *ops,
		     const char *name, struct mutex *lock, struct ptb_gate *gate)
{
	trk->ops = ops;
	trk->name = name;
	trk->lock = lock;
	trk->gate = gate;
	spin_lock_init(&trk->mark_lock);
	INIT_LIST_HEAD(&trk->bitmaps);
	bio_list_init(&trk->mark_bios);
	INIT_DELAYED_WORK(&trk->marker, ptb_do_marker);
	trk->mark_wq = alloc_ordered_workqueue("dm-ptbackup-mark", WQ_MEM_RECLAIM);
	return trk->mark_wq ? 0 : -ENOMEM;
}

static void ptb_bitmap_free(struct ptb_bitmap *b)
{
	kvfree(rcu_dereference_protected(b->succ, true));
	kvfree(b->changed);
	kvfree(b->bits);
	kfree(b);
}

static void ptb_intent_free(struct ptb_tracking *trk)
{
	kvfree(trk->intent);
	kvfree(trk->touched);
	kvfree(trk->intent_disk);
	kvfree(trk->intent_clearing);
	trk->intent = NULL;
	trk->touched = NULL;
	trk->intent_disk = NULL;
	trk->intent_clearing = NULL;
}

void ptb_bitmaps_exit(struct ptb_tracking *trk)
{
	struct ptb_bitmap *b, *tmp;

	if (trk->mark_wq) {
		cancel_delayed_work_sync(&trk->marker);
		destroy_workqueue(trk->mark_wq);
		trk->mark_wq = NULL;
	}
	list_for_each_entry_safe(b, tmp, &trk->bitmaps, node) {
		list_del(&b->node);
		ptb_bitmap_free(b);
	}
	trk->nr_bitmaps = 0;
	ptb_intent_free(trk);
}

static struct ptb_bitmap *ptb_bitmap_new(const char *name, unsigned int gran_shift,
					 sector_t dev_sectors, bool persistent)
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
	b->nr_segments = DIV_ROUND_UP(b->nr_bits, PTB_BITMAP_SEGMENT_BITS);
	if (persistent)
		b->changed = ptb_bits_alloc(b->nr_segments, GFP_KERNEL);
	if (!b->bits || (persistent && !b->changed)) {
		ptb_bitmap_free(b);
		return NULL;
	}
	return b;
}

static void ptb_bitmap_publish(struct ptb_tracking *trk, struct ptb_bitmap *b)
{
	list_add_tail_rcu(&b->node, &trk->bitmaps);
	trk->nr_bitmaps++;
}

/*
 * Allocate the intent log's in-core bitmaps, all clear, for as many regions
 * as the log can hold, so that a resize never reallocates them.
 */
static int ptb_intent_alloc(struct ptb_tracking_load *ld)
{
	unsigned long n = PTB_MD_MAX_REGIONS;

	ld->intent = ptb_bits_alloc(n, GFP_KERNEL);
	ld->touched = ptb_bits_alloc(n, GFP_KERNEL);
	ld->intent_disk = ptb_bits_alloc(n, GFP_KERNEL);
	ld->intent_clearing = ptb_bits_alloc(n, GFP_KERNEL);
	if (!ld->intent || !ld->touched || !ld->intent_disk || !ld->intent_clearing)
		return -ENOMEM;
	ld->region_shift = ptb_metadata_region_shift(ld->pmd);
	ld->nr_regions = ptb_metadata_nr_regions(ld->pmd);
	return 0;
}

/*
 * The device grew or shrank while the metadata held no persistent bitmap:
 * make the metadata cover the new size before one is added.
 */
static int ptb_bitmaps_resize(struct ptb_tracking *trk, sector_t dev_sectors)
{
	int r;

	ptb_hold_writes(trk->gate);
	/* Writes are drained, so the marker has no bio to strand. */
	cancel_delayed_work_sync(&trk->marker);
	r = ptb_metadata_resize(trk->pmd, dev_sectors);
	if (!r) {
		bitmap_zero(trk->intent, PTB_MD_MAX_REGIONS);
		bitmap_zero(trk->touched, PTB_MD_MAX_REGIONS);
		bitmap_zero(trk->intent_disk, PTB_MD_MAX_REGIONS);
		trk->region_shift = ptb_metadata_region_shift(trk->pmd);
		trk->nr_regions = ptb_metadata_nr_regions(trk->pmd);
		r = ptb_metadata_write_intent(trk->pmd, trk->intent_disk);
	}
	ptb_release_writes(trk->gate);
	return r;
}

/*
 * A transient bitmap grows to nr_bits (the new granules clear: the caller
 * marks what changed), its successor too if it is busy.  The device is
 * suspended (preresume) and writes are held, so no write is being marked
 * and no hand-over runs; readers under RCU are waited for.
 */
static int ptb_bitmap_grow(struct ptb_bitmap *b, unsigned long nr_bits)
{
	unsigned long *old = b->bits, *old_succ = rcu_dereference_protected(b->succ, true);
	unsigned long *bits, *succ = NULL;
	unsigned int noio = memalloc_noio_save();

	bits = ptb_bits_alloc(nr_bits, GFP_KERNEL);
	if (old_succ)
		succ = ptb_bits_alloc(nr_bits, GFP_KERNEL);
	memalloc_noio_restore(noio);
	if (!bits || (old_succ && !succ)) {
		kvfree(bits);
		kvfree(succ);
		return -ENOMEM;
	}
	bitmap_copy(bits, old, b->nr_bits);
	if (old_succ) {
		bitmap_copy(succ, old_succ, b->nr_bits);
		rcu_assign_pointer(b->succ, succ);
	}
	WRITE_ONCE(b->bits, bits);
	WRITE_ONCE(b->nr_bits, nr_bits);
	synchronize_rcu();
	kvfree(old);
	kvfree(old_succ);
	return 0;
}

/*
 * Mark sectors [start, end) dirty, in the successor too, and for a
 * persistent bitmap in the next commit: the device's size changed there,
 * so that area (or what comes back there) was never backed up.
 */
static void ptb_bitmap_mark_resized(struct ptb_bitmap *b, sector_t start,
				    sector_t end)
{
	unsigned long *succ = rcu_dereference_protected(b->succ, true);
	unsigned long first, last;

	if (start >= end || !ptb_bitmap_range(b, start, end - start, &first, &last))
		return;
	bitmap_set(b->bits, first, last - first + 1);
	if (succ)
		bitmap_set(succ, first, last - first + 1);
	if (b->changed)
		ptb_bitmap_note_change(b, first, last);
}

/*
 * Preresume, the device's size going from old_sectors to new_sectors:
 * transient bitmaps grow to cover it, and every bitmap marks the sectors
 * between the two ends dirty (the granule holding the smaller end too).
 * trk->lock and the write hold are held, the device is suspended.
 */
int ptb_bitmaps_fit(struct ptb_tracking *trk, sector_t old_sectors,
		    sector_t new_sectors)
{
	struct ptb_bitmap *b;
	unsigned long nr_bits;
	int r;

	lockdep_assert_held(trk->lock);
	if (old_sectors == new_sectors)
		return 0;
	list_for_each_entry(b, &trk->bitmaps, node) {
		nr_bits = DIV_ROUND_UP_ULL((u64)new_sectors << SECTOR_SHIFT,
					   1ULL << b->gran_shift);
		if (b->slot < 0 && nr_bits > b->nr_bits) {
			r = ptb_bitmap_grow(b, nr_bits);
			if (r) {
				DMERR("%s: bitmap %s: cannot grow it to the device's new size (%d)",
				      trk->name, b->name, r);
				return r;
			}
		}
		ptb_bitmap_mark_resized(b, min(old_sectors, new_sectors),
					max(old_sectors, new_sectors));
	}
	return 0;
}

bool ptb_has_persistent(struct ptb_tracking *trk)
{
	struct ptb_bitmap *b;

	list_for_each_entry(b, &trk->bitmaps, node)
		if (b->slot >= 0)
			return true;
	return false;
}

/* Give back everything a load holds that was not attached. */
void ptb_tracking_unload(struct ptb_tracking_load *ld)
{
	struct ptb_bitmap *b, *tmp;

	list_for_each_entry_safe(b, tmp, &ld->bitmaps, node) {
		list_del(&b->node);
		ptb_bitmap_free(b);
	}
	kvfree(ld->intent);
	kvfree(ld->touched);
	kvfree(ld->intent_disk);
	kvfree(ld->intent_clearing);
	if (ld->pmd)
		ptb_metadata_close(ld->pmd);
	kfree(ld);
}

static int ptb_tracking_load_bitmaps(struct ptb_tracking_load *ld, char **error)
{
	struct ptb_md_bitmap md;
	struct ptb_bitmap *b;
	unsigned int slot;
	int r;

	for (slot = 0; slot < PTB_MAX_PERSISTENT_BITMAPS; slot++) {
		if (!ptb_metadata_get_bitmap(ld->pmd, slot, &md))
			continue;
		b = ptb_bitmap_new(md.name, md.granularity_shift,
				   ptb_metadata_dev_sectors(ld->pmd), true);
		if (!b) {
			*error = "Cannot allocate a bitmap";
			return -ENOMEM;
		}
		b->slot = slot;
		b->enabled = md.enabled;
		list_add_tail(&b->node, &ld->bitmaps);
		if (b->nr_bits != md.nr_bits) {
			*error = "Metadata superblock describes an impossible bitmap (size)";
			return -EINVAL;
		}
		r = ptb_metadata_load_bits(ld->pmd, slot, b->bits);
		if (r) {
			*error = "Cannot read a bitmap from the metadata device";
			return r;
		}
	}
	return 0;
}

/*
 * Open the metadata on bdev for a device of dev_sectors, load its
 * persistent bitmaps and replay its intent log into them, touching no
 * device state: ptb_tracking_attach() publishes the result (the
 * constructor loads, preresume attaches).  name is for log lines.
 */
int ptb_tracking_load(struct block_device *bdev, sector_t dev_sectors,
		      const char *name, struct ptb_tracking_load **ldp,
		      char **error)
{
	struct ptb_tracking_load *ld = kzalloc(sizeof(*ld), GFP_KERNEL);
	int r;

	if (!ld) {
		*error = "Cannot allocate the metadata state";
		return -ENOMEM;
	}
	INIT_LIST_HEAD(&ld->bitmaps);
	r = ptb_metadata_open(bdev, dev_sectors, &ld->pmd, error);
	if (r) {
		ld->pmd = NULL;
		goto bad;
	}
	r = ptb_intent_alloc(ld);
	if (r) {
		*error = "Cannot allocate the intent log";
		goto bad;
	}
	r = ptb_tracking_load_bitmaps(ld, error);
	if (r)
		goto bad;
	r = ptb_intent_recover(ld, name);
	if (r) {
		*error = "Cannot replay the metadata's intent log";
		goto bad;
	}
	*ldp = ld;
	return 0;

bad:
	ptb_tracking_unload(ld);
	return r;
}

/* Would a loaded bitmap take the name of one the device has? */
int ptb_tracking_check_names(struct ptb_tracking *trk, struct ptb_tracking_load *ld,
			     char **error)
{
	struct ptb_bitmap *b;

	list_for_each_entry(b, &ld->bitmaps, node) {
		if (ptb_bitmap_find(trk, b->name)) {
			*error = "A persistent bitmap has the name of a transient one";
			return -EEXIST;
		}
	}
	return 0;
}

/*
 * Preresume: the device takes over the loaded metadata and publishes its
 * bitmaps at one instant (writes held).  On success ld is consumed; on
 * error (a name clash) nothing changed.  Caller holds trk->lock.
 */
int ptb_tracking_attach(struct ptb_tracking *trk, struct ptb_tracking_load *ld,
			dev_t dev, char **error)
{
	struct ptb_bitmap *b, *tmp;
	int r = ptb_tracking_check_names(trk, ld, error);

	if (r)
		return r;
	ptb_hold_writes(trk->gate);
	WRITE_ONCE(trk->pmd, ld->pmd);
	trk->metadata_dev = dev;
	trk->intent = ld->intent;
	trk->touched = ld->touched;
	trk->intent_disk = ld->intent_disk;
	trk->intent_clearing = ld->intent_clearing;
	trk->region_shift = ld->region_shift;
	trk->nr_regions = ld->nr_regions;
	list_for_each_entry_safe(b, tmp, &ld->bitmaps, node) {
		list_del(&b->node);
		ptb_bitmap_publish(trk, b);
	}
	ptb_release_writes(trk->gate);
	kfree(ld);
	return 0;
}

struct ptb_bitmap *ptb_bitmap_find(struct ptb_tracking *trk, const char *name)
{
	struct ptb_bitmap *b;

	list_for_each_entry(b, &trk->bitmaps, node)
		if (!strcmp(b->name, name))
			return b;
	return NULL;
}

/*----------------------------------------------------------------*/

/* Messages.  Caller holds trk->lock. */

static int ptb_bitmap_commit(struct ptb_tracking *trk, const char *op,
			     struct ptb_bitmap *b)
{
	int r = ptb_metadata_commit(trk->pmd);

	if (r) {
		DMERR("%s: bitmap %s %s: metadata commit failed (%d)",
		      trk->name, op, b->name, r);
		ptb_bitmaps_lost_tracking(trk);
	}
	return r;
}

int ptb_bitmap_add(struct ptb_tracking *trk, const struct ptb_table_geom *g,
		   const char *name, u64 granularity, bool transient, bool disabled)
{
	const char *dev = trk->name;
	struct ptb_md_bitmap md = { };
	bool persistent = trk->pmd && !transient;
	struct ptb_bitmap *b;
	unsigned int slot;
	int r;

	if (ptb_bitmap_find(trk, name)) {
		DMERR("%s: bitmap add: bitmap %s already exists", dev, name);
		return -EEXIST;
	}
	if (trk->nr_bitmaps >= PTB_MAX_BITMAPS) {
		DMERR("%s: bitmap add %s: too many bitmaps (%u)", dev, name,
		      PTB_MAX_BITMAPS);
		return -ENOSPC;
	}
	if (!granularity)
		granularity = (u64)g->chunk_sectors << SECTOR_SHIFT;
	if (!is_power_of_2(granularity) ||
	    granularity < ((u64)g->chunk_sectors << SECTOR_SHIFT) ||
	    granularity > (1ULL << 40)) {
		DMERR("%s: bitmap add %s: granularity %llu must be a power of two from %llu to 1T",
		      dev, name, granularity, (u64)g->chunk_sectors << SECTOR_SHIFT);
		return -EINVAL;
	}
	if (DIV_ROUND_UP_ULL((u64)g->dev_sectors << SECTOR_SHIFT, granularity) >
	    PTB_MAX_BITS) {
		DMERR("%s: bitmap add %s: granularity %llu is too small for this device: at most %d granules",
		      dev, name, granularity, PTB_MAX_BITS);
		return -EINVAL;
	}
	if (persistent && ptb_metadata_failed(trk->pmd)) {
		DMERR("%s: bitmap add %s: metadata failed: add transient bitmaps only",
		      dev, name);
		return -EIO;
	}
	if (persistent && g->dev_sectors != ptb_metadata_dev_sectors(trk->pmd) &&
	    !ptb_has_persistent(trk)) {
		r = ptb_bitmaps_resize(trk, g->dev_sectors);
		if (r) {
			DMERR("%s: bitmap add %s: cannot resize the metadata to the device (%d)",
			      dev, name, r);
			return r;
		}
	}

	b = ptb_bitmap_new(name, ilog2(granularity),
			   persistent ? ptb_metadata_dev_sectors(trk->pmd) : g->dev_sectors,
			   persistent);
	if (!b)
		return -ENOMEM;
	b->enabled = !disabled;
	if (persistent) {
		strscpy(md.name, name, sizeof(md.name));
		md.granularity_shift = b->gran_shift;
		md.nr_bits = b->nr_bits;
		md.enabled = b->enabled;
		r = ptb_metadata_add_bitmap(trk->pmd, &md, &slot);
		if (r == -ENOSPC)
			DMERR("%s: bitmap add %s: no room on the metadata device",
			      dev, name);
		if (!r) {
			r = ptb_bitmap_commit(trk, "add", b);
			if (r)
				ptb_metadata_remove_bitmap(trk->pmd, slot);
		}
		if (r) {
			ptb_bitmap_free(b);
			return r;
		}
		b->slot = slot;
	}
	/* Writes before this point are not recorded, writes after it are. */
	ptb_hold_writes(trk->gate);
	ptb_bitmap_publish(trk, b);
	ptb_release_writes(trk->gate);
	return 0;
}

static int ptb_bitmap_check_idle(struct ptb_tracking *trk, const char *op,
				 struct ptb_bitmap *b)
{
	const struct ptb_bitmap_user *user = READ_ONCE(b->busy);

	if (!user)
		return 0;
	DMERR("%s: bitmap %s %s: bitmap is in use by job %s", trk->name,
	      op, b->name, user->name);
	return -EBUSY;
}

int ptb_bitmap_remove(struct ptb_tracking *trk, struct ptb_bitmap *b)
{
	int r = ptb_bitmap_check_idle(trk, "remove", b);

	if (r)
		return r;
	/* No writer and no commit may still see it when its slot goes. */
	list_del_rcu(&b->node);
	trk->nr_bitmaps--;
	synchronize_rcu();
	flush_delayed_work(&trk->marker);
	if (b->slot >= 0 && !ptb_metadata_failed(trk->pmd)) {
		ptb_metadata_remove_bitmap(trk->pmd, b->slot);
		r = ptb_bitmap_commit(trk, "remove", b);
	}
	ptb_bitmap_free(b);
	return r;
}

int ptb_bitmap_clear(struct ptb_tracking *trk, struct ptb_bitmap *b)
{
	int r = ptb_bitmap_check_idle(trk, "clear", b);

	if (r)
		return r;
	/* Writes in flight would be lost from the bitmap: hold them. */
	ptb_hold_writes(trk->gate);
	flush_delayed_work(&trk->marker);
	bitmap_zero(b->bits, b->nr_bits);
	if (b->slot >= 0 && !ptb_metadata_failed(trk->pmd)) {
		r = ptb_metadata_store_bits(trk->pmd, b->slot, b->bits);
		r = r ? r : ptb_bitmap_commit(trk, "clear", b);
		if (r)
			ptb_bitmaps_lost_tracking(trk);
	}
	WRITE_ONCE(b->inconsistent, b->slot >= 0 && ptb_metadata_failed(trk->pmd));
	ptb_release_writes(trk->gate);
	return r;
}

int ptb_bitmap_enable(struct ptb_tracking *trk, struct ptb_bitmap *b, bool on)
{
	int r = 0;

	if (!on) {
		r = ptb_bitmap_check_idle(trk, "disable", b);
		if (r)
			return r;
	}
	if (READ_ONCE(b->enabled) == on)
		return 0;
	if (b->slot >= 0 && !ptb_metadata_failed(trk->pmd)) {
		ptb_metadata_set_enabled(trk->pmd, b->slot, on);
		r = ptb_bitmap_commit(trk, on ? "enable" : "disable", b);
		if (r)
			return r;
	}
	ptb_hold_writes(trk->gate);
	WRITE_ONCE(b->enabled, on);
	ptb_release_writes(trk->gate);
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

int ptb_bitmap_merge(struct ptb_tracking *trk, struct ptb_bitmap *src,
		     struct ptb_bitmap *dst)
{
	int r = ptb_bitmap_check_idle(trk, "merge", dst);

	if (r)
		return r;
	/*
	 * With writes held nothing else sets dst's bits, and a commit that
	 * copies its blocks meanwhile sees them merged or is overwritten.
	 */
	ptb_hold_writes(trk->gate);
	ptb_bits_merge(src, dst, dst->bits);
	if (READ_ONCE(src->inconsistent))
		WRITE_ONCE(dst->inconsistent, true);
	if (dst->slot >= 0 && !ptb_metadata_failed(trk->pmd)) {
		r = ptb_metadata_store_bits(trk->pmd, dst->slot, dst->bits);
		r = r ? r : ptb_bitmap_commit(trk, "merge", dst);
		if (r)
			ptb_bitmaps_lost_tracking(trk);
	}
	ptb_release_writes(trk->gate);
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

/* The size a bitmap covers: the metadata's, or the device's now. */
static sector_t ptb_bitmap_dev_sectors(struct ptb_tracking *trk,
				       const struct ptb_bitmap *b,
				       sector_t dev_sectors)
{
	if (b->slot >= 0)
		return ptb_metadata_dev_sectors(trk->pmd);
	return dev_sectors;
}

int ptb_bitmap_list(struct ptb_tracking *trk, sector_t dev_sectors,
		    char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b;
	unsigned int sz = 0;

	result[0] = '\0';
	list_for_each_entry(b, &trk->bitmaps, node) {
		DMEMIT("%s %llu %s %s %s %llu%s\n", b->name, 1ULL << b->gran_shift,
		       READ_ONCE(b->enabled) ? "enabled" : "disabled",
		       b->slot >= 0 ? "persistent" : "transient",
		       READ_ONCE(b->busy) ? "busy" : "idle",
		       ptb_bitmap_dirty_bytes(b, ptb_bitmap_dev_sectors(trk, b, dev_sectors)),
		       READ_ONCE(b->inconsistent) ? " inconsistent" : "");
	}
	return 1;
}

/*
 * Dirty extents from byte start on, as "<offset> <length>" lines in bytes.
 * If they do not all fit, the last line is "next <offset>": ask again from
 * there.
 */
int ptb_bitmap_dump(struct ptb_tracking *trk, struct ptb_bitmap *b,
		    sector_t dev_sectors, u64 start, char *result, unsigned int maxlen)
{
	u64 dev_bytes = (u64)ptb_bitmap_dev_sectors(trk, b, dev_sectors) << SECTOR_SHIFT;
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

int ptb_bitmap_save(const struct ptb_bitmap *b, struct ptb_bitmap_copy *c)
{
	c->bits = ptb_bits_alloc(b->nr_bits, GFP_KERNEL);
	if (!c->bits)
		return -ENOMEM;
	bitmap_copy(c->bits, b->bits, b->nr_bits);
	strscpy(c->name, b->name, sizeof(c->name));
	c->gran_shift = b->gran_shift;
	c->nr_bits = b->nr_bits;
	c->enabled = READ_ONCE(b->enabled);
	c->persistent = b->slot >= 0;
	c->inconsistent = READ_ONCE(b->inconsistent);
	return 0;
}

/*
 * Put a saved bitmap back, adding it again if it was removed.  Writes are
 * held by the caller, so the saved bits plus nothing are exact.  A bitmap
 * added again with another size (a transient one, after a reload) gets
 * every granule beyond the saved ones marked: over-report, never under.
 */
int ptb_bitmap_restore(struct ptb_tracking *trk, const struct ptb_table_geom *g,
		       const struct ptb_bitmap_copy *c)
{
	struct ptb_bitmap *b = ptb_bitmap_find(trk, c->name);
	int r;

	if (!b) {
		r = ptb_bitmap_add(trk, g, c->name, 1ULL << c->gran_shift,
				   !c->persistent, !c->enabled);
		if (r)
			return r;
		b = ptb_bitmap_find(trk, c->name);
	}
	flush_delayed_work(&trk->marker);
	bitmap_copy(b->bits, c->bits, min(b->nr_bits, c->nr_bits));
	if (b->nr_bits > c->nr_bits)
		bitmap_set(b->bits, c->nr_bits, b->nr_bits - c->nr_bits);
	WRITE_ONCE(b->inconsistent, c->inconsistent ||
		   (b->slot >= 0 && ptb_metadata_failed(trk->pmd)));
	if (b->slot < 0 || ptb_metadata_failed(trk->pmd))
		return 0;
	r = ptb_metadata_store_bits(trk->pmd, b->slot, b->bits);
	r = r ? r : ptb_bitmap_commit(trk, "restore", b);
	if (r)
		ptb_bitmaps_lost_tracking(trk);
	return r;
}

void ptb_bitmap_copy_free(struct ptb_bitmap_copy *c)
{
	kvfree(c->bits);
	c->bits = NULL;
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
void ptb_bitmap_freeze(struct ptb_bitmap *b, const struct ptb_bitmap_user *user,
		       unsigned long *succ)
{
	WRITE_ONCE(b->busy, user);
	rcu_assign_pointer(b->succ, succ);
}

/* The granules [*first, *last] of chunk c of the user's chunk map. */
static bool ptb_bitmap_chunk_range(const struct ptb_bitmap *b,
				   const struct ptb_bitmap_user *u,
				   unsigned long c, unsigned long *first,
				   unsigned long *last)
{
	unsigned int cshift = u->chunk_shift + SECTOR_SHIFT;

	*first = ((u64)c << cshift) >> b->gran_shift;
	*last = (((u64)(c + 1) << cshift) - 1) >> b->gran_shift;
	if (*first >= b->nr_bits)
		return false;
	*last = min(*last, b->nr_bits - 1);
	return true;
}

/*
 * Clear in the user's chunk map (all set: every chunk clean) the chunks
 * that dirty granules touch.  Walks the bitmap's words and its dirty
 * granules, never every chunk.
 */
static void ptb_bitmap_unmark_dirty(const struct ptb_bitmap *b,
				    const struct ptb_bitmap_user *u)
{
	unsigned int cshift = u->chunk_shift + SECTOR_SHIFT;
	unsigned long g, c, end, k;

	if (b->gran_shift >= cshift) {
		/* A granule covers 1 << k chunks: clear runs of dirty granules. */
		k = b->gran_shift - cshift;
		for (g = find_first_bit(b->bits, b->nr_bits); g < b->nr_bits;
		     g = find_next_bit(b->bits, b->nr_bits, end)) {
			end = find_next_zero_bit(b->bits, b->nr_bits, g);
			c = g << k;
			if (c >= u->nr_chunks)
				break;
			bitmap_clear(u->done, c, min(u->nr_chunks, end << k) - c);
		}
		return;
	}
	/* A chunk covers 1 << k granules: one dirty granule is enough. */
	k = cshift - b->gran_shift;
	for (g = find_first_bit(b->bits, b->nr_bits); g < b->nr_bits;
	     g = find_next_bit(b->bits, b->nr_bits, (c + 1) << k)) {
		c = g >> k;
		if (c >= u->nr_chunks)
			break;
		__clear_bit(c, u->done);
	}
}

/*
 * With writes held, for an incremental backup: mark every clean chunk as
 * done in the user's chunk map, so that only dirty ones are copied.
 * Chunks the bitmap does not cover are copied, to be safe.  Word-wise
 * bitmap operations only: the hold lasts microseconds per GiB of bitmap.
 * Returns the bytes left to copy.
 */
u64 ptb_bitmap_select_chunks(struct ptb_bitmap *b)
{
	const struct ptb_bitmap_user *u = b->busy;
	unsigned int cshift = u->chunk_shift + SECTOR_SHIFT;
	u64 dev_bytes = (u64)u->dev_sectors << SECTOR_SHIFT;
	u64 covered = (u64)b->nr_bits << b->gran_shift;
	unsigned long first_uncovered, nr_dirty;
	u64 total;

	bitmap_fill(u->done, u->nr_chunks);
	ptb_bitmap_unmark_dirty(b, u);
	first_uncovered = covered >= dev_bytes ? u->nr_chunks :
			  min_t(u64, u->nr_chunks, covered >> cshift);
	if (first_uncovered < u->nr_chunks)
		bitmap_clear(u->done, first_uncovered, u->nr_chunks - first_uncovered);

	nr_dirty = u->nr_chunks - bitmap_weight(u->done, u->nr_chunks);
	total = (u64)nr_dirty << cshift;
	/* The last chunk may be short. */
	if (nr_dirty && !test_bit(u->nr_chunks - 1, u->done))
		total -= ((u64)u->nr_chunks << cshift) - dev_bytes;
	return total;
}

/*
 * The user is done and writes are held.  Success with bitmap_mode
 * on-success or always: the bitmap becomes its successor.  Failure with
 * always: what was not copied plus the successor.  Otherwise the bitmap
 * already holds everything (it kept recording): leave it.
 */
void ptb_bitmap_thaw(struct ptb_tracking *trk, struct ptb_bitmap *b, bool success)
{
	const struct ptb_bitmap_user *u = b->busy;
	unsigned long *succ = rcu_dereference_protected(b->succ, true);
	unsigned long *next = NULL, c, first, last;
	int r = 0;

	if (u->mode != PTB_BITMAP_NEVER && success) {
		next = succ;
	} else if (u->mode == PTB_BITMAP_ALWAYS) {
		next = succ;
		for_each_clear_bit(c, u->done, u->nr_chunks)
			if (ptb_bitmap_chunk_range(b, u, c, &first, &last))
				bitmap_set(next, first, last - first + 1);
	}

	if (next) {
		bitmap_copy(b->bits, next, b->nr_bits);
		if (b->slot >= 0 && !ptb_metadata_failed(trk->pmd)) {
			r = ptb_metadata_store_bits(trk->pmd, b->slot, b->bits);
			if (!r)
				r = ptb_metadata_commit(trk->pmd);
			if (r) {
				DMERR("%s: bitmap %s: cannot store it after job %s (%d)",
				      trk->name, b->name, u->name, r);
				ptb_bitmaps_lost_tracking(trk);
			}
		}
	}
	rcu_assign_pointer(b->succ, NULL);
	WRITE_ONCE(b->busy, NULL);
	/* Writers may still be marking it; no grace period under the hold. */
	kvfree_rcu_mightsleep(succ);
}

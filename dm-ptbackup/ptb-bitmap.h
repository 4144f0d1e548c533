/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup dirty bitmaps: named, in-core, optionally persistent records
 * of which granules of the device were written.
 *
 * The in-core bits are what the map path reads and sets.  Persistent
 * bitmaps reach the metadata device through a write-intent log: before a
 * write to an intent region (4 MiB or more) is issued, the region's bit is
 * durable in the log; the bitmap bits themselves are committed every
 * PTB_COMMIT_PERIOD, and a region leaves the log only after a commit
 * following a whole period without writes to it.  After an unclean
 * shutdown every logged region is marked dirty.  So a bitmap may
 * over-report but never under-report, and a write waits for the metadata
 * only when its region was idle.
 *
 * While a job uses a bitmap (incremental or full backup with bitmap=), the
 * bitmap is "busy": it keeps recording every write and a successor records
 * the writes since the job's point in time.  When the job ends, the bitmap
 * becomes what bitmap_mode says: the successor (success), itself (failure:
 * nothing lost), or what was not copied plus the successor (always).
 */
#ifndef DM_PTBACKUP_BITMAP_H
#define DM_PTBACKUP_BITMAP_H

#include "ptb.h"
#include "ptb-metadata.h"

#define PTB_MAX_BITMAPS		32
#define PTB_COMMIT_PERIOD	HZ

struct ptb_bitmap {
	struct list_head node;		/* pd->bitmaps, RCU */
	char name[PTB_BITMAP_NAME_MAX + 1];
	unsigned int gran_shift;	/* granule size in bytes, log2 */
	unsigned long nr_bits;
	unsigned long *bits;
	unsigned long nr_blocks;	/* metadata blocks of the bits */
	unsigned long *dirty_blocks;	/* persistent: changed since commit */
	unsigned long __rcu *succ;	/* successor while busy */
	int slot;			/* metadata slot, -1 if transient */
	bool enabled;			/* READ_ONCE */
	bool inconsistent;		/* lost track (metadata failure) */
	/*
	 * Job using it: set with writes held at its start, cleared by its
	 * hand-over (writes held); READ_ONCE elsewhere.
	 */
	const struct ptb_bitmap_user *busy;
};

enum ptb_bitmap_mode {
	PTB_BITMAP_ON_SUCCESS,
	PTB_BITMAP_ALWAYS,
	PTB_BITMAP_NEVER,
};

int ptb_bitmaps_init(struct ptb_device *pd);
void ptb_bitmaps_exit(struct ptb_device *pd);

/*
 * Metadata opened and read by a constructor, attached to the device at
 * preresume: a table that is never resumed changes nothing.
 */
struct ptb_tracking_load {
	struct ptb_metadata *pmd;
	struct list_head bitmaps;	/* loaded, not yet published */
	unsigned long *intent, *touched, *intent_disk, *intent_clearing;
	unsigned int region_shift;
	unsigned long nr_regions;
};

int ptb_tracking_load(struct block_device *bdev, sector_t dev_sectors,
		      const char *name, struct ptb_tracking_load **ldp,
		      char **error);				/* may sleep */
int ptb_tracking_check_names(struct ptb_device *pd, struct ptb_tracking_load *ld,
			     char **error);			/* pd->lock */
int ptb_tracking_attach(struct ptb_device *pd, struct ptb_tracking_load *ld,
			dev_t dev, char **error);		/* pd->lock */
void ptb_tracking_unload(struct ptb_tracking_load *ld);
/*
 * Preresume, pd->lock and writes held: transient bitmaps grow with the
 * device; every bitmap marks the sectors between the old and new ends.
 */
int ptb_bitmaps_fit(struct ptb_device *pd, sector_t old_sectors,
		    sector_t new_sectors);

/* Map path: record a write; true if it must wait for a metadata commit. */
bool ptb_bitmaps_mark(struct ptb_device *pd, struct bio *bio);
void ptb_defer_mark(struct ptb_device *pd, struct bio *bio);
void ptb_bitmaps_lost_tracking(struct ptb_device *pd);
/* Suspend: commit, empty the intent log (a clean shutdown). */
void ptb_bitmaps_quiesce(struct ptb_device *pd);

struct ptb_bitmap *ptb_bitmap_find(struct ptb_device *pd, const char *name);
bool ptb_has_persistent(struct ptb_device *pd);			/* pd->lock */

/* Messages; caller holds pd->lock. */
int ptb_bitmap_add(struct ptb_target *pt, const char *name, u64 granularity,
		   bool transient, bool disabled);
int ptb_bitmap_remove(struct ptb_device *pd, struct ptb_bitmap *b);
int ptb_bitmap_clear(struct ptb_device *pd, struct ptb_bitmap *b);
int ptb_bitmap_enable(struct ptb_device *pd, struct ptb_bitmap *b, bool on);
int ptb_bitmap_merge(struct ptb_device *pd, struct ptb_bitmap *src,
		     struct ptb_bitmap *dst);
int ptb_bitmap_list(struct ptb_device *pd, char *result, unsigned int maxlen);
int ptb_bitmap_dump(struct ptb_device *pd, struct ptb_bitmap *b, u64 start,
		    char *result, unsigned int maxlen);

/* A bitmap as it was, to undo a transaction element.  pd->lock held. */
struct ptb_bitmap_copy {
	char name[PTB_BITMAP_NAME_MAX + 1];
	unsigned int gran_shift;
	unsigned long nr_bits;
	bool enabled;
	bool persistent;
	bool inconsistent;
	unsigned long *bits;		/* NULL: nothing saved */
};

int ptb_bitmap_save(const struct ptb_bitmap *b, struct ptb_bitmap_copy *c);
int ptb_bitmap_restore(struct ptb_target *pt, const struct ptb_bitmap_copy *c);
void ptb_bitmap_copy_free(struct ptb_bitmap_copy *c);

/*
 * A bitmap's user (a backup job): its name, and the map of the chunks it
 * has copied, which the hand-over reads.  Lives until the hand-over.
 */
struct ptb_bitmap_user {
	const char *name;
	unsigned long *done;		/* bit set: chunk copied */
	unsigned long nr_chunks;
	unsigned int chunk_shift;	/* log2 sectors */
	sector_t dev_sectors;
	int mode;			/* enum ptb_bitmap_mode */
};

/* Before writes are held: allocate the successor. */
int ptb_bitmap_prepare_job(struct ptb_bitmap *b, unsigned long **succ);
/* With writes held (ptb_hold_writes). */
void ptb_bitmap_freeze(struct ptb_bitmap *b, const struct ptb_bitmap_user *user,
		       unsigned long *succ);
u64 ptb_bitmap_select_chunks(struct ptb_bitmap *b);
void ptb_bitmap_thaw(struct ptb_device *pd, struct ptb_bitmap *b, bool success);

#endif /* DM_PTBACKUP_BITMAP_H */

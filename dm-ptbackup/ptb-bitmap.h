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
#include "ptb-gate.h"
#include "ptb-metadata.h"

#define PTB_MAX_BITMAPS		32
#define PTB_COMMIT_PERIOD	HZ
/*
 * A persistent bitmap is written to the metadata in segments of this many
 * bits, those changed since the last commit (4 KiB of bits).
 */
#define PTB_BITMAP_SEGMENT_BITS	32768UL

struct ptb_bitmap {
	struct list_head node;		/* trk->bitmaps, RCU */
	char name[PTB_BITMAP_NAME_MAX + 1];
	unsigned int gran_shift;	/* granule size in bytes, log2 */
	unsigned long nr_bits;
	unsigned long *bits;
	unsigned long nr_segments;	/* of PTB_BITMAP_SEGMENT_BITS bits */
	unsigned long *changed;		/* persistent: segments changed since commit */
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

struct ptb_tracking;

/* What tracking reports to its owner (the device). */
struct ptb_tracking_ops {
	/* Raise a device-mapper event (process context, may sleep). */
	void (*notify)(struct ptb_tracking *trk);
	/* A write's intent region is logged: on past tracking (work item). */
	void (*marked)(struct ptb_tracking *trk, struct bio *bio);
};

/* The dirty bitmaps of one device and the metadata that keeps them. */
struct ptb_tracking {
	const struct ptb_tracking_ops *ops;
	const char *name;		/* the device's, for log lines */
	/*
	 * The owner's mutex: messages, bitmap list changes, the metadata's
	 * attachment happen under it.
	 */
	struct mutex *lock;
	struct ptb_gate *gate;		/* holds writes for bitmap changes */

	struct ptb_metadata *pmd;	/* NULL without a metadata device */
	dev_t metadata_dev;
	struct list_head bitmaps;	/* RCU; changes under lock */
	unsigned int nr_bitmaps;
	spinlock_t mark_lock;		/* mark_bios; irq-safe */
	struct bio_list mark_bios;	/* writes waiting for their intent */
	struct workqueue_struct *mark_wq;
	struct delayed_work marker;	/* intent log and bitmap commits */
	atomic_t bitmaps_lost;		/* reported once */

	/*
	 * The write-intent log.  intent: regions whose intent bit is
	 * durable; the map path reads it.  touched: written since the last
	 * commit.  Everything else belongs to the marker.
	 */
	unsigned long *intent;
	unsigned long *touched;
	unsigned long *intent_disk;	/* the log as on disk */
	unsigned long *intent_clearing;	/* scratch */
	unsigned long nr_regions;
	unsigned int region_shift;	/* log2 sectors */
	unsigned long next_commit;	/* jiffies */
	bool clean_request;		/* commit all, clear the log */
};

/* The live table as the bitmap messages see it. */
struct ptb_table_geom {
	sector_t dev_sectors;		/* the device's size now */
	sector_t chunk_sectors;		/* the smallest granule */
};

int ptb_bitmaps_init(struct ptb_tracking *trk, const struct ptb_tracking_ops *ops,
		     const char *name, struct mutex *lock, struct ptb_gate *gate);
void ptb_bitmaps_exit(struct ptb_tracking *trk);

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
int ptb_tracking_check_names(struct ptb_tracking *trk, struct ptb_tracking_load *ld,
			     char **error);			/* trk->lock */
int ptb_tracking_attach(struct ptb_tracking *trk, struct ptb_tracking_load *ld,
			dev_t dev, char **error);		/* trk->lock */
void ptb_tracking_unload(struct ptb_tracking_load *ld);
/*
 * Preresume, trk->lock and writes held: transient bitmaps grow with the
 * device; every bitmap marks the sectors between the old and new ends.
 */
int ptb_bitmaps_fit(struct ptb_tracking *trk, sector_t old_sectors,
		    sector_t new_sectors);

/* Map path: record a write; true if it must wait for a metadata commit. */
bool ptb_bitmaps_mark(struct ptb_tracking *trk, struct bio *bio);
void ptb_defer_mark(struct ptb_tracking *trk, struct bio *bio);
void ptb_bitmaps_lost_tracking(struct ptb_tracking *trk);
/* Suspend: commit, empty the intent log (a clean shutdown). */
void ptb_bitmaps_quiesce(struct ptb_tracking *trk);

struct ptb_bitmap *ptb_bitmap_find(struct ptb_tracking *trk, const char *name);
bool ptb_has_persistent(struct ptb_tracking *trk);		/* trk->lock */

/* Messages; caller holds trk->lock. */
int ptb_bitmap_add(struct ptb_tracking *trk, const struct ptb_table_geom *g,
		   const char *name, u64 granularity, bool transient, bool disabled);
int ptb_bitmap_remove(struct ptb_tracking *trk, struct ptb_bitmap *b);
int ptb_bitmap_clear(struct ptb_tracking *trk, struct ptb_bitmap *b);
int ptb_bitmap_enable(struct ptb_tracking *trk, struct ptb_bitmap *b, bool on);
int ptb_bitmap_merge(struct ptb_tracking *trk, struct ptb_bitmap *src,
		     struct ptb_bitmap *dst);
int ptb_bitmap_list(struct ptb_tracking *trk, sector_t dev_sectors,
		    char *result, unsigned int maxlen);
int ptb_bitmap_dump(struct ptb_tracking *trk, struct ptb_bitmap *b,
		    sector_t dev_sectors, u64 start, char *result, unsigned int maxlen);

/* A bitmap as it was, to undo a transaction element.  trk->lock held. */
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
int ptb_bitmap_restore(struct ptb_tracking *trk, const struct ptb_table_geom *g,
		       const struct ptb_bitmap_copy *c);
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
void ptb_bitmap_thaw(struct ptb_tracking *trk, struct ptb_bitmap *b, bool success);

#endif /* DM_PTBACKUP_BITMAP_H */

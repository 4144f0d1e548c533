/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup dirty bitmaps: named, in-core, optionally persistent records
 * of which granules of the device were written.
 *
 * The in-core bits are what the map path reads.  For a persistent bitmap
 * an in-core bit is set only after the same bit is durable on the metadata
 * device, and a write to a granule whose bit is clear waits for that (the
 * marker work batches these commits).  So after a crash a bitmap may
 * over-report but never under-report.
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

struct ptb_bitmap {
	struct list_head node;		/* pd->bitmaps, RCU */
	char name[PTB_BITMAP_NAME_MAX + 1];
	unsigned int gran_shift;	/* granule size in bytes, log2 */
	unsigned long nr_bits;
	unsigned long *bits;
	unsigned long __rcu *succ;	/* successor while busy */
	int slot;			/* metadata slot, -1 if transient */
	bool enabled;			/* READ_ONCE */
	bool inconsistent;		/* lost track (metadata failure) */
	struct ptb_job *busy;		/* job using it; pd->lock */
};

enum ptb_bitmap_mode {
	PTB_BITMAP_ON_SUCCESS,
	PTB_BITMAP_ALWAYS,
	PTB_BITMAP_NEVER,
};

int ptb_bitmaps_init(struct ptb_device *pd);
void ptb_bitmaps_exit(struct ptb_device *pd);
int ptb_bitmaps_load(struct ptb_device *pd, char **error);

/* Map path: record a write; true if it must wait for a metadata commit. */
bool ptb_bitmaps_mark(struct ptb_device *pd, struct bio *bio);
void ptb_defer_mark(struct ptb_device *pd, struct bio *bio);
void ptb_bitmaps_lost_tracking(struct ptb_device *pd);

struct ptb_bitmap *ptb_bitmap_find(struct ptb_device *pd, const char *name);

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

/* Jobs.  Called with writes held (ptb_hold_writes). */
int ptb_bitmap_prepare_job(struct ptb_bitmap *b, unsigned long **succ);
void ptb_bitmap_freeze(struct ptb_bitmap *b, struct ptb_job *job,
		       unsigned long *succ);
void ptb_bitmap_select_chunks(struct ptb_bitmap *b, struct ptb_job *job);
void ptb_bitmap_thaw(struct ptb_device *pd, struct ptb_bitmap *b,
		     struct ptb_job *job, bool success);

#endif /* DM_PTBACKUP_BITMAP_H */

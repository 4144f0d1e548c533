/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup on-disk metadata: persistent dirty bitmaps.
 *
 * The layout lives in ptb-metadata.c and Documentation/ptbackup.rst.  Users
 * of this interface see bitmap slots, bits and commits, never blocks.
 *
 * Every function may sleep (metadata I/O) and takes the metadata's own
 * mutex; none may be called from the map path.  A failed metadata write or
 * flush puts the metadata into fail mode for good: every later call that
 * would write returns -EIO.
 */
#ifndef DM_PTBACKUP_METADATA_H
#define DM_PTBACKUP_METADATA_H

#include <linux/blkdev.h>
#include <linux/types.h>

#define PTB_MAX_PERSISTENT_BITMAPS	16
#define PTB_BITMAP_NAME_MAX		32
/* The write-intent log holds at most this many regions. */
#define PTB_MD_MAX_REGIONS		32768

struct ptb_metadata;

struct ptb_md_bitmap {
	char name[PTB_BITMAP_NAME_MAX + 1];
	unsigned int granularity_shift;	/* log2 of the granule in bytes */
	u64 nr_bits;
	bool enabled;
};

/*
 * Open the metadata on bdev for a device of dev_sectors.  A zeroed device
 * is formatted.  A foreign, corrupt or newer-version device is refused with
 * *error set.
 */
int ptb_metadata_open(struct block_device *bdev, sector_t dev_sectors,
		      struct ptb_metadata **pmdp, char **error);
void ptb_metadata_close(struct ptb_metadata *pmd);

bool ptb_metadata_failed(struct ptb_metadata *pmd);
sector_t ptb_metadata_dev_sectors(struct ptb_metadata *pmd);
/* Cover a new device size: -EBUSY while any bitmap exists. */
int ptb_metadata_resize(struct ptb_metadata *pmd, sector_t dev_sectors);

/* Slot i holds a bitmap?  Fills *b.  Slots are stable for a bitmap's life. */
bool ptb_metadata_get_bitmap(struct ptb_metadata *pmd, unsigned int slot,
			     struct ptb_md_bitmap *b);
/* Read a bitmap's bits into an in-core bitmap of b->nr_bits bits. */
int ptb_metadata_load_bits(struct ptb_metadata *pmd, unsigned int slot,
			   unsigned long *bits);

/* Structural changes: made durable by the next ptb_metadata_commit(). */
int ptb_metadata_add_bitmap(struct ptb_metadata *pmd,
			    const struct ptb_md_bitmap *b, unsigned int *slot);
int ptb_metadata_remove_bitmap(struct ptb_metadata *pmd, unsigned int slot);
int ptb_metadata_set_enabled(struct ptb_metadata *pmd, unsigned int slot,
			     bool enabled);
/* Can a bitmap of nr_bits fit?  0, or -ENOSPC / -ENOMEM style error. */
int ptb_metadata_check_space(struct ptb_metadata *pmd, u64 nr_bits);

/*
 * Write bits first..last of the slot's in-core bitmap (of nr_bits, which
 * must be the slot's size) to disk; durable after the next commit.
 * Neighbouring bits may be written too, from the same in-core bitmap.
 */
int ptb_metadata_write_bits(struct ptb_metadata *pmd, unsigned int slot,
			    const unsigned long *bits, u64 nr_bits,
			    u64 first, u64 last);
/* Replace a bitmap's bits with an in-core bitmap. */
int ptb_metadata_store_bits(struct ptb_metadata *pmd, unsigned int slot,
			    const unsigned long *bits);

/*
 * The write-intent log: one bit per region of 1 << region_shift sectors
 * (the last region runs to the end of the device).  Writing it flushes:
 * the log is durable when ptb_metadata_write_intent() returns 0.
 */
unsigned int ptb_metadata_region_shift(struct ptb_metadata *pmd);
unsigned long ptb_metadata_nr_regions(struct ptb_metadata *pmd);
int ptb_metadata_load_intent(struct ptb_metadata *pmd, unsigned long *regions);
int ptb_metadata_write_intent(struct ptb_metadata *pmd,
			      const unsigned long *regions);

/*
 * Write every change since the last commit and flush: bitmap blocks first,
 * then, if the bitmap table changed, the superblock (alternating between
 * its two copies).
 */
int ptb_metadata_commit(struct ptb_metadata *pmd);

#endif /* DM_PTBACKUP_METADATA_H */

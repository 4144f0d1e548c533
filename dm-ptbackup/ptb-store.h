/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup store (ptb-store.c): where an image's saved chunks lie on
 * its target, and how much of the target they use.
 *
 * A target at least the device's size keeps the linear layout: chunk c
 * is saved at c's own offset.  A smaller target (a sync=none job's scratch
 * store) is mapped: each chunk takes the next free store chunk the first
 * time old data of it is saved, through an in-memory map whose entries
 * are all allocated when the store is set up (24 bytes per store chunk
 * and a hash head per two to four), so no copy ever allocates.  A released chunk
 * gives its store chunk back.
 *
 * Contexts: ptb_store_init() and ptb_store_exit() process context; the
 * counters any context (READ_ONCE); the rest the copy engine's worker.
 */
#ifndef DM_PTBACKUP_STORE_H
#define DM_PTBACKUP_STORE_H

#include <linux/hashtable.h>
#include <linux/blkdev.h>

struct ptb_store_entry;

struct ptb_store {
	unsigned int chunk_shift;
	unsigned long nr_chunks;	/* store chunks: the target's whole ones */
	bool mapped;			/* false: the linear layout */

	/* Mapped only: entry i is store chunk i's. */
	struct ptb_store_entry *entries;
	struct hlist_head *heads;
	unsigned int hash_bits;
	unsigned long *used;		/* store chunks taken */
	unsigned long next_free;	/* where the search for one starts */

	/* Image chunks: saved ever, held now, released by a reader. */
	unsigned long nr_saved;		/* READ_ONCE */
	unsigned long nr_held;		/* READ_ONCE */
};

/*
 * Set up the store of an image of a device of dev_sectors on a target of
 * target_sectors.  -ENOSPC if it cannot hold one chunk.
 */
int ptb_store_init(struct ptb_store *st, unsigned int chunk_shift,
		   sector_t dev_sectors, sector_t target_sectors);
void ptb_store_exit(struct ptb_store *st);

/*
 * The target sector where chunk's old data is (or goes, alloc true: a
 * mapped store takes a free store chunk for it, and returns 1).  -ENOENT:
 * nothing of the chunk is saved; -ENOSPC: the store is full.
 */
int ptb_store_locate(struct ptb_store *st, unsigned long chunk, bool alloc,
		     sector_t *sector);
/* The first data of chunk is on the target: count it as held. */
void ptb_store_saved(struct ptb_store *st);
/*
 * Nothing of chunk is on the target after all (its first copy failed),
 * or (held true) what is there is no longer wanted: give its space back.
 */
void ptb_store_drop(struct ptb_store *st, unsigned long chunk, bool held);

#endif /* DM_PTBACKUP_STORE_H */

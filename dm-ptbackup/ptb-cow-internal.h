/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup copy-before-write engine, inside: what the engine's two
 * files share.  ptb-cow.c keeps the copies and the table of partly saved
 * chunks; ptb-read.c routes the reads of an image (a view's) and keeps
 * the read guards that hold a copy back while the origin is read under it.
 *
 * Contexts: the worker, unless marked.
 */
#ifndef DM_PTBACKUP_COW_INTERNAL_H
#define DM_PTBACKUP_COW_INTERNAL_H

#include "ptb-cow.h"

enum ptb_copy_stage {
	PTB_COPY_QUEUED,	/* waiting for a slot buffer */
	PTB_COPY_READING,	/* reading the origin */
	PTB_COPY_WRITING,	/* writing the target */
	PTB_COPY_DRAINING,	/* saved; waits for reads of the origin there */
};

/* A copy's entry in the copy table for one of the chunks it covers. */
struct ptb_copy_key {
	struct hlist_node hnode;	/* cow->copies */
	struct ptb_copy *copy;
	unsigned long chunk;
};

/* A chunk saved in part: which of its blocks are on the target. */
struct ptb_partial {
	struct hlist_node hnode;	/* img->partial_table (RCU) */
	unsigned long chunk;
	unsigned long saved;		/* bit b: block b of the chunk */
	struct ptb_partial *next_free;	/* img's free entries, oldest first */
	unsigned long gp_cookie;	/* when it was freed (RCU state) */
};

/*
 * One copy: some blocks of one chunk (a write's copy-before-write), or nr
 * adjacent chunks (up to PTB_RUN_MAX_CHUNKS, the background sweep), read
 * with one I/O into adjacent slot buffers and written in pieces, leaving
 * out the blocks saved before.
 */
struct ptb_copy {
	struct ptb_copy_key keys[PTB_RUN_MAX_CHUNKS];
	struct list_head list;		/* img->slot_waiters or cow->completed_copies */
	struct ptb_image *img;
	unsigned long chunk;		/* the first */
	unsigned int nr;
	unsigned int slot;		/* the first slot buffer */
	sector_t sector;
	sector_t store_sector;		/* where it goes on the target */
	sector_t len;
	void *buf;
	struct bio_list waiters;	/* writes and reads waiting for it */
	enum ptb_copy_stage stage;
	int error;
	/* Blocks, from the copy's first one: block0 of its first chunk. */
	unsigned int block0;
	unsigned int nr_blocks;
	DECLARE_BITMAP(todo, PTB_COPY_MAX_BLOCKS);	/* not saved before */
	DECLARE_BITMAP(zero_blocks, PTB_COPY_MAX_BLOCKS); /* in all-zero chunks */
	struct list_head age_node;	/* img->copies_by_age, if timed */
	unsigned long deadline;		/* jiffies: then the copy has timed out */
	bool timed_out;
	struct ptb_partial *partial;	/* the chunk's entry: a write's copy */
	bool store_new;			/* it took the chunk's store space */
	unsigned int wpos;	/* the piece being written: blocks wpos.. */
	unsigned int wlen;	/* ..wpos + wlen */
	sector_t written;	/* sectors written so far */
	sector_t zero_len;	/* of them, zeroes */
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

/* ptb-cow.c */
/* Worker, or any context under rcu_read_lock(). */
struct ptb_partial *ptb_partial_find(const struct ptb_image *img, unsigned long chunk);
unsigned long ptb_blocks_needed(const struct ptb_image *img, unsigned long chunk,
				sector_t sector, sector_t end);
struct ptb_copy *ptb_copy_find(struct ptb_image *img, unsigned long chunk);
void ptb_requeue_bios(struct ptb_cow *cow, struct bio_list *bios);	/* any context */
void ptb_partial_free(struct ptb_image *img, struct ptb_partial *p);

/* ptb-read.c */
bool ptb_handle_read(struct ptb_cow *cow, struct bio *bio);
bool ptb_copy_must_drain(struct ptb_copy *c);
void ptb_process_view_discards(struct bio_list *bios, struct bio_list *retry);
void ptb_requeue_view_discards(struct ptb_cow *cow, struct bio_list *retry);

#endif /* DM_PTBACKUP_COW_INTERNAL_H */

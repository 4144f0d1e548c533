/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup copy-before-write engine (ptb-cow.c): the deferred-write
 * queue, images with their chunk buffers, the table of chunk copies in
 * flight and the worker that drives them.
 *
 * An image is the point-in-time contents of the device that one owner (a
 * backup job) saves to a target: while it is protected, a write to blocks
 * not yet saved waits until their old data is on the target (a chunk's
 * blocks are saved as writes cover them, or all at once).  The
 * engine knows nothing of jobs: it tells the owner of saved and failed
 * copies, and lets it advance (sweep, flush) from the worker, through the
 * image's ops.
 *
 * Contexts: as marked; unmarked functions run in the worker.
 */
#ifndef DM_PTBACKUP_COW_H
#define DM_PTBACKUP_COW_H

#include <linux/sizes.h>

#include "ptb.h"
#include "ptb-store.h"

struct ptb_image;

/* The longest background copy, in chunks (and at most 1 MiB of them). */
#define PTB_RUN_MAX_CHUNKS	32
#define PTB_RUN_MAX_BYTES	SZ_1M

/*
 * A write's copy-before-write saves only the blocks of its chunk that it
 * covers, blocks of at least 4 KiB and at most 32 to a chunk; the sweep
 * saves the rest.  At most PTB_PARTIAL_MAX chunks of an image are partly
 * saved at once; beyond that a write saves its whole chunk.
 */
#define PTB_BLOCK_MIN_SHIFT	3	/* in sectors: 4 KiB */
#define PTB_CHUNK_MAX_BLOCKS	32
#define PTB_COPY_MAX_BLOCKS	(PTB_RUN_MAX_BYTES >> (PTB_BLOCK_MIN_SHIFT + SECTOR_SHIFT))
#define PTB_PARTIAL_MAX		4096
#define PTB_PARTIAL_HASH_BITS	10

struct ptb_partial;
struct ptb_read_guard;

#define PTB_GUARD_HASH_BITS	6

/*
 * The engine of one device: its images, the writes deferred to the
 * worker, the copies in flight.
 */
struct ptb_cow {
	const char *name;		/* the device's, for log lines */
	/* Submit a write that no image holds back any more (the owner's). */
	void (*submit_write)(struct ptb_cow *cow, struct bio *bio);
	/* The owner's mutex: image list changes happen under it. */
	struct mutex *images_lock;
	/* The images, read by the map path and the worker (RCU). */
	struct list_head images;

	spinlock_t lock;		/* the two lists below; irq-safe */
	struct bio_list deferred_bios;	/* writes to check against the images */
	struct bio_list view_discards;	/* views' discards: chunks to release */
	struct list_head completed_copies;

	/* Copies and final flushes in flight; a suspend waits for none. */
	atomic_t io_in_flight;
	wait_queue_head_t io_idle;

	struct workqueue_struct *wq;
	struct work_struct worker;
	struct delayed_work waker;	/* rate limit, retries */

	struct dm_io_client *io_client;
	mempool_t copy_pool;
	DECLARE_HASHTABLE(copies, PTB_COPY_HASH_BITS);	/* worker only */
	DECLARE_HASHTABLE(guards, PTB_GUARD_HASH_BITS);	/* read guards; lock */
	unsigned int nr_guards;		/* lock; only the worker adds one */
};

struct ptb_image_ops {
	/* A copy of len sectors is on the target, zero_len of them zeroes. */
	void (*copied)(struct ptb_image *img, sector_t len, sector_t zero_len);
	/*
	 * The copy of chunk failed at site.  writes_wait: user writes wait
	 * for it; return true to fail them, false to let them go on.
	 */
	bool (*failed)(struct ptb_image *img, unsigned long chunk,
		       enum ptb_error_site site, int err, bool writes_wait);
	/* Advance after the worker's pass: 0 or a delay in jiffies. */
	unsigned long (*service)(struct ptb_image *img);
};

struct ptb_image {
	struct list_head node;		/* cow->images, RCU; cow->images_lock */
	struct ptb_cow *cow;
	const struct ptb_image_ops *ops;
	const char *name;		/* for log lines */
	/*
	 * The map path reads these.  protected only ever goes from true to
	 * false; a done bit is set only once the chunk's old data is on the
	 * target, and never cleared.
	 */
	bool protected;			/* READ_ONCE */
	unsigned int chunk_shift;	/* chunk size in sectors, log2 */
	unsigned long nr_chunks;
	unsigned long *done;
	unsigned int block_shift;	/* block size in sectors, log2 */
	sector_t dev_sectors;		/* size of the device at the point in time */
	struct block_device *origin;
	struct block_device *target;
	struct ptb_store store;		/* target layout; worker (counters: any) */
	/*
	 * A copy that keeps a write waiting longer than this (jiffies, 0: no
	 * limit) has timed out: the owner's policy applies.  Worker only: the
	 * copies that writes wait for, the oldest deadline first.
	 */
	unsigned long cbw_timeout;
	struct list_head copies_by_age;

	/* Worker only. */
	unsigned int nr_slots;
	unsigned int free_slots;
	void *slot_area;		/* nr_slots chunk buffers, adjacent */
	struct page_list *slot_pages;	/* its pages, chained in order */
	unsigned long *slot_used;	/* the buffers in use */
	unsigned int copies_in_flight;	/* copies in the copy table */
	struct list_head slot_waiters;	/* copies waiting for a buffer */
	bool no_write_zeroes;		/* the target rejected write-zeroes */

	/*
	 * Reads of the image (a view's) submitted to the origin or the
	 * target and not yet ended: the owner releases the target only
	 * once there are none.
	 */
	atomic_t reads_in_flight;
	/*
	 * Views may read the image: the owner clears it before it lets go
	 * of the target (READ_ONCE).  Reads admitted before end normally
	 * but fail if the image stopped being protected meanwhile.
	 */
	bool readable;
	/*
	 * The chunks a view's reader released (discarded): no longer
	 * protected, their reads fail.  Allocated when the first view
	 * opens; the worker alone sets bits.
	 */
	unsigned long *released;
	unsigned long nr_released;	/* READ_ONCE */

	/*
	 * The chunks saved in part (none if a chunk is one block): the map
	 * path reads the table under RCU; the rest is the worker's.
	 */
	unsigned int max_partials;
	unsigned int partials_used;	/* entries ever taken */
	unsigned int nr_partials;	/* in the table; READ_ONCE */
	void *partial_area;		/* the table's heads, then the entries */
	struct hlist_head *partial_table;
	struct ptb_partial *free_head;	/* free entries, oldest first */
	struct ptb_partial *free_tail;
};

/*
 * A read of an image at its point in time, by a view: the per-bio data
 * of its bio, which the view's target reserves (per_io_data_size).  The
 * blocks saved are read from the image's target, the others from the
 * origin, under a guard that holds back a copy of their chunk (and so
 * the writes waiting for it) until the read has ended.
 */
struct ptb_read {
	struct ptb_image *img;
	struct bio_set *bs;		/* splits a read of saved and unsaved blocks */
	struct ptb_read_guard *guard;	/* the chunk's: origin or mapped store */
	bool submitted;			/* in img->reads_in_flight */
};

/*
 * ptb-read.c.  The read must lie in one chunk of the image.  Map path,
 * any context: queue it to the worker.  The view's end_io: end it; the
 * read fails if the image stopped being protected meanwhile.
 */
void ptb_image_read(struct ptb_image *img, struct bio *bio, struct bio_set *bs);
/*
 * A view's discard, at most PTB_RUN_MAX_CHUNKS chunks (any context): the
 * chunks it covers whole are released.  Process context, before the
 * first: ptb_image_enable_release().
 */
void ptb_image_discard(struct ptb_image *img, struct bio *bio);
int ptb_image_enable_release(struct ptb_image *img);
unsigned long ptb_image_nr_released(const struct ptb_image *img);	/* any context */
void ptb_image_read_end(struct bio *bio, blk_status_t *error);
bool ptb_image_reads_idle(struct ptb_image *img);		/* any context */
void ptb_image_set_readable(struct ptb_image *img, bool readable); /* any context */

/* Process context, may sleep; the image is not yet published. */
int ptb_image_init(struct ptb_image *img, struct ptb_cow *cow,
		   const struct ptb_image_ops *ops, const char *name,
		   unsigned int chunk_shift, sector_t dev_sectors,
		   unsigned int nr_slots, unsigned int min_block_shift);
/* Process context, before publishing: the target's size sets the layout. */
int ptb_image_init_store(struct ptb_image *img, sector_t target_sectors);
void ptb_image_free_buffers(struct ptb_image *img);	/* no copy in flight */
void ptb_image_exit(struct ptb_image *img);
/* Publish and unpublish (images_lock held; publish with writes held). */
void ptb_image_publish(struct ptb_image *img);
void ptb_image_unpublish(struct ptb_image *img);	/* may sleep */
/* Stop protecting: writes no longer wait for this image (any context). */
void ptb_image_unprotect(struct ptb_image *img);

int ptb_cow_init(struct ptb_cow *cow, const char *name,
		 struct mutex *images_lock);	/* the owner's mutex */
void ptb_cow_exit(struct ptb_cow *cow);
bool ptb_write_needs_cow(struct ptb_cow *cow, struct bio *bio); /* any context, RCU */
void ptb_defer_bio(struct ptb_cow *cow, struct bio *bio);	/* any context */
void ptb_wake_worker(struct ptb_cow *cow);			/* any context */
void ptb_do_worker(struct work_struct *ws);
void ptb_do_waker(struct work_struct *ws);
int ptb_copy_start_run(struct ptb_image *img, unsigned long chunk,
		       unsigned int *nr);				/* worker */
bool ptb_copy_in_flight(struct ptb_image *img, unsigned long chunk); /* worker */

void ptb_io_start(struct ptb_cow *cow);			/* worker */
void ptb_io_end(struct ptb_cow *cow);				/* any context */

#endif /* DM_PTBACKUP_COW_H */

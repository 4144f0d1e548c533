// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup store: the layout of saved chunks on an image's target.
 * ptb-store.h has the API.
 */
#include <linux/bitmap.h>
#include <linux/hash.h>
#include <linux/log2.h>
#include <linux/slab.h>

#include "ptb-store.h"

/* A mapped store chunk: which image chunk it holds. */
struct ptb_store_entry {
	struct hlist_node hnode;	/* st->heads */
	unsigned long chunk;
};

int ptb_store_init(struct ptb_store *st, unsigned int chunk_shift,
		   sector_t dev_sectors, sector_t target_sectors)
{
	unsigned long slots = target_sectors >> chunk_shift;
	unsigned long i, nr_heads;

	memset(st, 0, sizeof(*st));
	st->chunk_shift = chunk_shift;
	if (target_sectors >= dev_sectors) {
		st->nr_chunks = DIV_ROUND_UP_SECTOR_T(dev_sectors, (sector_t)1 << chunk_shift);
		return 0;
	}
	if (!slots)
		return -ENOSPC;
	st->mapped = true;
	st->nr_chunks = slots;
	st->hash_bits = max(ilog2(slots), 2) - 1;
	nr_heads = 1UL << st->hash_bits;
	st->entries = kvcalloc(slots, sizeof(*st->entries), GFP_KERNEL);
	st->heads = kvcalloc(nr_heads, sizeof(*st->heads), GFP_KERNEL);
	st->used = bitmap_zalloc(slots, GFP_KERNEL);
	if (!st->entries || !st->heads || !st->used) {
		ptb_store_exit(st);
		return -ENOMEM;
	}
	for (i = 0; i < nr_heads; i++)
		INIT_HLIST_HEAD(&st->heads[i]);
	return 0;
}

void ptb_store_exit(struct ptb_store *st)
{
	bitmap_free(st->used);
	st->used = NULL;
	kvfree(st->heads);
	st->heads = NULL;
	kvfree(st->entries);
	st->entries = NULL;
}

static struct hlist_head *ptb_store_head(struct ptb_store *st, unsigned long chunk)
{
	return &st->heads[hash_long(chunk, st->hash_bits)];
}

static struct ptb_store_entry *ptb_store_find(struct ptb_store *st,
					      unsigned long chunk)
{
	struct ptb_store_entry *e;

	hlist_for_each_entry(e, ptb_store_head(st, chunk), hnode)
		if (e->chunk == chunk)
			return e;
	return NULL;
}

/* Take the next free store chunk for chunk; NULL if there is none. */
static struct ptb_store_entry *ptb_store_take(struct ptb_store *st,
					      unsigned long chunk)
{
	unsigned long slot = find_next_zero_bit(st->used, st->nr_chunks, st->next_free);
	struct ptb_store_entry *e;

	if (slot >= st->nr_chunks)
		slot = find_first_zero_bit(st->used, st->nr_chunks);
	if (slot >= st->nr_chunks)
		return NULL;
	__set_bit(slot, st->used);
	st->next_free = slot + 1;
	e = &st->entries[slot];
	e->chunk = chunk;
	hlist_add_head(&e->hnode, ptb_store_head(st, chunk));
	return e;
}

int ptb_store_locate(struct ptb_store *st, unsigned long chunk, bool alloc,
		     sector_t *sector)
{
	struct ptb_store_entry *e;

	if (!st->mapped) {
		*sector = (sector_t)chunk << st->chunk_shift;
		return 0;
	}
	e = ptb_store_find(st, chunk);
	if (e) {
		*sector = (sector_t)(e - st->entries) << st->chunk_shift;
		return 0;
	}
	if (!alloc)
		return -ENOENT;
	e = ptb_store_take(st, chunk);
	if (!e)
		return -ENOSPC;
	*sector = (sector_t)(e - st->entries) << st->chunk_shift;
	return 1;
}

void ptb_store_saved(struct ptb_store *st)
{
	WRITE_ONCE(st->nr_saved, st->nr_saved + 1);
	WRITE_ONCE(st->nr_held, st->nr_held + 1);
}

void ptb_store_drop(struct ptb_store *st, unsigned long chunk, bool held)
{
	struct ptb_store_entry *e;

	if (held)
		WRITE_ONCE(st->nr_held, st->nr_held - 1);
	if (!st->mapped)
		return;
	e = ptb_store_find(st, chunk);
	if (!e)
		return;
	hlist_del(&e->hnode);
	__clear_bit(e - st->entries, st->used);
}

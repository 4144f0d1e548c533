// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup on-disk metadata.
 *
 * Layout, in 4 KiB blocks:
 *
 *   block 0, 1   two copies of the superblock; the valid one with the
 *                higher generation is current, a commit writes the other
 *   block 2      the write-intent log: bit r set means the device may
 *                have been written in intent region r since the bitmaps
 *                were last committed (region r = sectors r << shift up to
 *                (r + 1) << shift, the last region up to the device end)
 *   block 3...   bitmap areas, one contiguous run of blocks per bitmap;
 *                bit i of a bitmap is bit (i % 32768) of block
 *                (first_block + i / 32768), little-endian bit order
 *
 * The superblock holds a checksum, magic, version, the device size the
 * bitmaps cover, the intent region size and the table of bitmaps (name,
 * granularity, area, flags).  The intent log and bitmap blocks are
 * written in place.  An intent bit is durable before any write to its
 * region is issued, and is cleared only after the bitmap bits of every
 * write to the region are durable; so the bitmaps plus the intent regions
 * never miss a write, whatever the moment of a crash.  An area freed by a
 * remove is reused only after the superblock that dropped it is on disk.
 */

#include <linux/crc32c.h>
#include <linux/device-mapper.h>
#include <linux/dm-bufio.h>
#include <linux/slab.h>

#include "ptb-metadata.h"

#define DM_MSG_PREFIX "ptbackup"

#define PTB_MD_BLOCK_SIZE	4096
#define PTB_MD_BITS_PER_BLOCK	(PTB_MD_BLOCK_SIZE * 8)
#define PTB_MD_SB_COPIES	2
#define PTB_MD_INTENT_BLOCK	PTB_MD_SB_COPIES
#define PTB_MD_FIRST_DATA_BLOCK	(PTB_MD_INTENT_BLOCK + 1)
#define PTB_MD_MAGIC		0x4b425450	/* "PTBK" */
#define PTB_MD_VERSION		2
/* Intent regions: at least 4 MiB, at most one block of them. */
static_assert(PTB_MD_MAX_REGIONS <= PTB_MD_BITS_PER_BLOCK);
#define PTB_MD_MIN_REGION_SHIFT	13	/* sectors */
#define PTB_MD_CSUM_XOR		0x70746231
/* 512 PiB: bitmap sizes in bytes and bits never wrap. */
#define PTB_MD_MAX_DEV_SECTORS	BIT_ULL(50)

#define PTB_DISK_BITMAP_ENABLED	BIT(0)

struct ptb_disk_bitmap {
	char name[PTB_BITMAP_NAME_MAX];	/* NUL padded, not terminated */
	__le64 first_block;
	__le64 nr_blocks;
	__le64 nr_bits;
	__le32 granularity_shift;
	__le32 flags;
} __packed;

struct ptb_disk_superblock {
	__le32 csum;			/* crc32c of the rest of the block */
	__le32 magic;
	__le32 version;
	__le32 block_size;
	__le64 generation;
	__le64 dev_sectors;		/* device size the bitmaps cover */
	__le32 nr_bitmaps;
	__le32 flags;
	__le32 region_shift;		/* intent region size, log2 sectors */
	__u8 reserved[20];
	struct ptb_disk_bitmap bitmaps[PTB_MAX_PERSISTENT_BITMAPS];
} __packed;

struct ptb_md_slot {
	struct ptb_md_bitmap b;
	u64 first_block;
	u64 nr_blocks;
	bool used;
};

struct ptb_metadata {
	struct mutex lock;		/* everything below */
	struct dm_bufio_client *bufio;
	u64 nr_blocks;			/* size of the metadata device */
	u64 generation;
	unsigned int active_sb;		/* copy written by the last commit */
	sector_t dev_sectors;
	unsigned int region_shift;	/* intent regions, log2 sectors */
	struct ptb_md_slot slots[PTB_MAX_PERSISTENT_BITMAPS];
	struct ptb_md_slot committed[PTB_MAX_PERSISTENT_BITMAPS];
	bool table_dirty;
	bool failed;
};

static u64 ptb_md_blocks_for(u64 nr_bits)
{
	return DIV_ROUND_UP_ULL(nr_bits, PTB_MD_BITS_PER_BLOCK);
}

/* Bits of a bitmap with granules of 1 << shift bytes over dev_sectors. */
static u64 ptb_md_bits_for(sector_t dev_sectors, unsigned int shift)
{
	return DIV_ROUND_UP_ULL((u64)dev_sectors << SECTOR_SHIFT, 1ULL << shift);
}

static u64 ptb_md_nr_regions(sector_t dev_sectors, unsigned int shift)
{
	return max_t(u64, 1, DIV_ROUND_UP_ULL(dev_sectors, 1ULL << shift));
}

/* The smallest region size that covers the device with the log's bits. */
static unsigned int ptb_md_region_shift_for(sector_t dev_sectors)
{
	unsigned int shift = PTB_MD_MIN_REGION_SHIFT;

	while (ptb_md_nr_regions(dev_sectors, shift) > PTB_MD_MAX_REGIONS)
		shift++;
	return shift;
}

static u32 ptb_md_csum(const void *block)
{
	return crc32c(~0U, block + sizeof(__le32),
		      PTB_MD_BLOCK_SIZE - sizeof(__le32)) ^ PTB_MD_CSUM_XOR;
}

static int ptb_md_fail(struct ptb_metadata *pmd, const char *op, int r)
{
	if (!pmd->failed)
		DMERR("metadata %s failed (%d): metadata is now in fail mode", op, r);
	pmd->failed = true;
	return r;
}

/*----------------------------------------------------------------*/

/* Superblock encoding. */

enum ptb_sb_kind { PTB_SB_ZERO, PTB_SB_VALID, PTB_SB_FOREIGN, PTB_SB_CORRUPT,
		   PTB_SB_NEWER, PTB_SB_OLDER };

static enum ptb_sb_kind ptb_md_classify(const void *block, u32 *version)
{
	const struct ptb_disk_superblock *sb = block;

	if (!memchr_inv(block, 0, PTB_MD_BLOCK_SIZE))
		return PTB_SB_ZERO;
	if (le32_to_cpu(sb->magic) != PTB_MD_MAGIC)
		return PTB_SB_FOREIGN;
	*version = le32_to_cpu(sb->version);
	if (*version > PTB_MD_VERSION)
		return PTB_SB_NEWER;
	if (*version < PTB_MD_VERSION)
		return PTB_SB_OLDER;
	if (le32_to_cpu(sb->csum) != ptb_md_csum(block) ||
	    le32_to_cpu(sb->block_size) != PTB_MD_BLOCK_SIZE)
		return PTB_SB_CORRUPT;
	return PTB_SB_VALID;
}

/* Two bitmaps whose areas overlap, or with the same name? */
static bool ptb_md_slots_clash(const struct ptb_metadata *pmd)
{
	const struct ptb_md_slot *a, *b;
	unsigned int i, j;

	for (i = 0; i < PTB_MAX_PERSISTENT_BITMAPS; i++) {
		a = &pmd->slots[i];
		for (j = i + 1; a->used && j < PTB_MAX_PERSISTENT_BITMAPS; j++) {
			b = &pmd->slots[j];
			if (b->used && (!strcmp(a->b.name, b->b.name) ||
					(a->first_block < b->first_block + b->nr_blocks &&
					 b->first_block < a->first_block + a->nr_blocks)))
				return true;
		}
	}
	return false;
}

static int ptb_md_unpack(struct ptb_metadata *pmd,
			 const struct ptb_disk_superblock *sb, char **error)
{
	unsigned int i;

	memset(pmd->slots, 0, sizeof(pmd->slots));
	pmd->generation = le64_to_cpu(sb->generation);
	pmd->dev_sectors = le64_to_cpu(sb->dev_sectors);
	pmd->region_shift = le32_to_cpu(sb->region_shift);
	/* The size in bytes must not wrap: every bitmap size derives from it. */
	if (!pmd->dev_sectors || pmd->dev_sectors > PTB_MD_MAX_DEV_SECTORS) {
		*error = "Metadata superblock describes an impossible device size";
		return -EINVAL;
	}
	if (pmd->region_shift < PTB_MD_MIN_REGION_SHIFT || pmd->region_shift > 40 ||
	    ptb_md_nr_regions(pmd->dev_sectors, pmd->region_shift) >
	    PTB_MD_MAX_REGIONS) {
		*error = "Metadata superblock describes an impossible intent log";
		return -EINVAL;
	}
	for (i = 0; i < PTB_MAX_PERSISTENT_BITMAPS; i++) {
		const struct ptb_disk_bitmap *d = &sb->bitmaps[i];
		struct ptb_md_slot *s = &pmd->slots[i];

		if (!d->name[0])
			continue;
		s->used = true;
		memcpy(s->b.name, d->name, PTB_BITMAP_NAME_MAX);
		s->b.name[PTB_BITMAP_NAME_MAX] = '\0';
		s->b.granularity_shift = le32_to_cpu(d->granularity_shift);
		s->b.nr_bits = le64_to_cpu(d->nr_bits);
		s->b.enabled = le32_to_cpu(d->flags) & PTB_DISK_BITMAP_ENABLED;
		s->first_block = le64_to_cpu(d->first_block);
		s->nr_blocks = le64_to_cpu(d->nr_blocks);
		if (s->first_block < PTB_MD_FIRST_DATA_BLOCK ||
		    s->nr_blocks != ptb_md_blocks_for(s->b.nr_bits) ||
		    s->first_block > pmd->nr_blocks ||
		    s->nr_blocks > pmd->nr_blocks - s->first_block ||
		    s->b.granularity_shift < SECTOR_SHIFT ||
		    s->b.granularity_shift > 40 ||
		    s->b.nr_bits != ptb_md_bits_for(pmd->dev_sectors,
						    s->b.granularity_shift)) {
			*error = "Metadata superblock describes an impossible bitmap";
			return -EINVAL;
		}
	}
	if (ptb_md_slots_clash(pmd)) {
		*error = "Metadata superblock describes an impossible bitmap (overlap or name)";
		return -EINVAL;
	}
	memcpy(pmd->committed, pmd->slots, sizeof(pmd->slots));
	return 0;
}

static void ptb_md_pack(struct ptb_metadata *pmd, struct ptb_disk_superblock *sb)
{
	unsigned int i, n = 0;

	memset(sb, 0, PTB_MD_BLOCK_SIZE);
	sb->magic = cpu_to_le32(PTB_MD_MAGIC);
	sb->version = cpu_to_le32(PTB_MD_VERSION);
	sb->block_size = cpu_to_le32(PTB_MD_BLOCK_SIZE);
	sb->generation = cpu_to_le64(pmd->generation + 1);
	sb->dev_sectors = cpu_to_le64(pmd->dev_sectors);
	sb->region_shift = cpu_to_le32(pmd->region_shift);
	for (i = 0; i < PTB_MAX_PERSISTENT_BITMAPS; i++) {
		const struct ptb_md_slot *s = &pmd->slots[i];
		struct ptb_disk_bitmap *d = &sb->bitmaps[i];

		if (!s->used)
			continue;
		n++;
		strncpy(d->name, s->b.name, PTB_BITMAP_NAME_MAX);
		d->first_block = cpu_to_le64(s->first_block);
		d->nr_blocks = cpu_to_le64(s->nr_blocks);
		d->nr_bits = cpu_to_le64(s->b.nr_bits);
		d->granularity_shift = cpu_to_le32(s->b.granularity_shift);
		d->flags = cpu_to_le32(s->b.enabled ? PTB_DISK_BITMAP_ENABLED : 0);
	}
	sb->nr_bitmaps = cpu_to_le32(n);
	sb->csum = cpu_to_le32(ptb_md_csum(sb));
}

/*
 * Write every dirty block, then flush the device's cache: when this
 * returns 0 they are durable.
 */
static int ptb_md_write_durable(struct ptb_metadata *pmd)
{
	int r = dm_bufio_write_dirty_buffers(pmd->bufio);

	return r ? r : dm_bufio_issue_flush(pmd->bufio);
}

static int ptb_md_write_superblock(struct ptb_metadata *pmd)
{
	unsigned int copy = pmd->active_sb ^ 1;
	struct dm_buffer *buf;
	void *data;
	int r;

	data = dm_bufio_new(pmd->bufio, copy, &buf);
	if (IS_ERR(data))
		return PTR_ERR(data);
	ptb_md_pack(pmd, data);
	dm_bufio_mark_buffer_dirty(buf);
	dm_bufio_release(buf);

	r = ptb_md_write_durable(pmd);
	if (r)
		return r;
	pmd->active_sb = copy;
	pmd->generation++;
	memcpy(pmd->committed, pmd->slots, sizeof(pmd->slots));
	pmd->table_dirty = false;
	return 0;
}

/* Read both superblock copies and pick the current one, or format. */
static int ptb_md_load(struct ptb_metadata *pmd, char **error)
{
	enum ptb_sb_kind kind[PTB_MD_SB_COPIES];
	u32 version[PTB_MD_SB_COPIES] = { 0 };
	u64 gen[PTB_MD_SB_COPIES] = { 0 };
	struct ptb_disk_superblock *sb;
	struct dm_buffer *buf;
	int best = -1, i, r;
	void *data;

	for (i = 0; i < PTB_MD_SB_COPIES; i++) {
		data = dm_bufio_read(pmd->bufio, i, &buf);
		if (IS_ERR(data)) {
			*error = "Cannot read the metadata superblock";
			return PTR_ERR(data);
		}
		kind[i] = ptb_md_classify(data, &version[i]);
		gen[i] = le64_to_cpu(((struct ptb_disk_superblock *)data)->generation);
		dm_bufio_release(buf);
		if (kind[i] == PTB_SB_VALID && (best < 0 || gen[i] > gen[best]))
			best = i;
	}

	for (i = 0; i < PTB_MD_SB_COPIES; i++) {
		if (kind[i] == PTB_SB_NEWER) {
			*error = "Metadata was written by a newer dm-ptbackup (version too new)";
			return -EINVAL;
		}
		if (kind[i] == PTB_SB_OLDER && best < 0) {
			*error = "Metadata has an older development format: zero it to format";
			return -EINVAL;
		}
	}

	if (best < 0) {
		if (kind[0] == PTB_SB_ZERO && kind[1] == PTB_SB_ZERO) {
			DMINFO("formatting zeroed metadata device");
			pmd->generation = 0;
			pmd->active_sb = 1;	/* the first commit writes copy 0 */
			pmd->region_shift = ptb_md_region_shift_for(pmd->dev_sectors);
			r = ptb_md_write_superblock(pmd);
			if (r)
				*error = "Cannot write the metadata superblock";
			return r;
		}
		if (kind[0] == PTB_SB_CORRUPT || kind[1] == PTB_SB_CORRUPT)
			*error = "Metadata superblock is corrupt (bad checksum)";
		else
			*error = "Metadata device holds something else: zero it to format";
		return -EINVAL;
	}

	data = dm_bufio_read(pmd->bufio, best, &buf);
	if (IS_ERR(data)) {
		*error = "Cannot read the metadata superblock";
		return PTR_ERR(data);
	}
	sb = data;
	r = ptb_md_unpack(pmd, sb, error);
	dm_bufio_release(buf);
	pmd->active_sb = best;
	return r;
}

int ptb_metadata_open(struct block_device *bdev, sector_t dev_sectors,
		      struct ptb_metadata **pmdp, char **error)
{
	struct ptb_metadata *pmd;
	unsigned int i;
	bool any = false;
	int r;

	pmd = kzalloc(sizeof(*pmd), GFP_KERNEL);
	if (!pmd) {
		*error = "Cannot allocate metadata";
		return -ENOMEM;
	}
	mutex_init(&pmd->lock);
	pmd->dev_sectors = dev_sectors;
	pmd->bufio = dm_bufio_client_create(bdev, PTB_MD_BLOCK_SIZE, 1, 0,
					    NULL, NULL, 0);
	if (IS_ERR(pmd->bufio)) {
		r = PTR_ERR(pmd->bufio);
		*error = "Cannot create the metadata buffer client";
		goto bad_bufio;
	}
	pmd->nr_blocks = dm_bufio_get_device_size(pmd->bufio);
	if (pmd->nr_blocks <= PTB_MD_FIRST_DATA_BLOCK) {
		*error = "Metadata device too small: it needs at least 16 KiB";
		r = -EINVAL;
		goto bad;
	}

	r = ptb_md_load(pmd, error);
	if (r)
		goto bad;

	for (i = 0; i < PTB_MAX_PERSISTENT_BITMAPS; i++)
		any |= pmd->slots[i].used;
	if (dev_sectors > pmd->dev_sectors && any) {
		*error = "Device is larger than its persistent bitmaps cover: remove them first";
		r = -EINVAL;
		goto bad;
	}
	if (!any && dev_sectors != pmd->dev_sectors) {
		pmd->dev_sectors = dev_sectors;
		pmd->region_shift = ptb_md_region_shift_for(dev_sectors);
		r = ptb_md_write_superblock(pmd);
		if (r) {
			*error = "Cannot write the metadata superblock";
			goto bad;
		}
	}
	*pmdp = pmd;
	return 0;

bad:
	dm_bufio_client_destroy(pmd->bufio);
bad_bufio:
	kfree(pmd);
	return r;
}

void ptb_metadata_close(struct ptb_metadata *pmd)
{
	if (!pmd->failed && pmd->table_dirty)
		ptb_metadata_commit(pmd);
	dm_bufio_client_destroy(pmd->bufio);
	kfree(pmd);
}

bool ptb_metadata_failed(struct ptb_metadata *pmd)
{
	return READ_ONCE(pmd->failed);
}

sector_t ptb_metadata_dev_sectors(struct ptb_metadata *pmd)
{
	return pmd->dev_sectors;
}

/*----------------------------------------------------------------*/

/* Bitmap table and bits. */

bool ptb_metadata_get_bitmap(struct ptb_metadata *pmd, unsigned int slot,
			     struct ptb_md_bitmap *b)
{
	bool used;

	mutex_lock(&pmd->lock);
	used = slot < PTB_MAX_PERSISTENT_BITMAPS && pmd->slots[slot].used;
	if (used)
		*b = pmd->slots[slot].b;
	mutex_unlock(&pmd->lock);
	return used;
}

int ptb_metadata_load_bits(struct ptb_metadata *pmd, unsigned int slot,
			   unsigned long *bits)
{
	struct ptb_md_slot *s = &pmd->slots[slot];
	struct dm_buffer *buf;
	unsigned long bit;
	u64 blk, base, n;
	void *data;
	int r = 0;

	mutex_lock(&pmd->lock);
	for (blk = 0; blk < s->nr_blocks; blk++) {
		data = dm_bufio_read(pmd->bufio, s->first_block + blk, &buf);
		if (IS_ERR(data)) {
			r = PTR_ERR(data);
			break;
		}
		base = blk * PTB_MD_BITS_PER_BLOCK;
		n = min_t(u64, PTB_MD_BITS_PER_BLOCK, s->b.nr_bits - base);
		for (bit = find_next_bit_le(data, n, 0); bit < n;
		     bit = find_next_bit_le(data, n, bit + 1))
			__set_bit(base + bit, bits);
		dm_bufio_release(buf);
		cond_resched();
	}
	mutex_unlock(&pmd->lock);
	return r;
}

/* Is [first, first + nr) free in both the current and committed tables? */
static bool ptb_md_region_free(struct ptb_metadata *pmd, u64 first, u64 nr)
{
	const struct ptb_md_slot *tables[] = { pmd->slots, pmd->committed };
	unsigned int t, i;

	for (t = 0; t < ARRAY_SIZE(tables); t++) {
		for (i = 0; i < PTB_MAX_PERSISTENT_BITMAPS; i++) {
			const struct ptb_md_slot *s = &tables[t][i];

			if (s->used && first < s->first_block + s->nr_blocks &&
			    s->first_block < first + nr)
				return false;
		}
	}
	return true;
}

static void ptb_md_try_region(struct ptb_metadata *pmd, u64 cand, u64 nr,
			      u64 *best)
{
	if (cand < *best && cand + nr <= pmd->nr_blocks &&
	    ptb_md_region_free(pmd, cand, nr))
		*best = cand;
}

/* First fit: candidates are the data start and the end of every region. */
static int ptb_md_alloc_region(struct ptb_metadata *pmd, u64 nr, u64 *first)
{
	const struct ptb_md_slot *tables[] = { pmd->slots, pmd->committed };
	u64 best = U64_MAX;
	unsigned int t, i;

	ptb_md_try_region(pmd, PTB_MD_FIRST_DATA_BLOCK, nr, &best);
	for (t = 0; t < ARRAY_SIZE(tables); t++)
		for (i = 0; i < PTB_MAX_PERSISTENT_BITMAPS; i++)
			if (tables[t][i].used)
				ptb_md_try_region(pmd, tables[t][i].first_block +
						  tables[t][i].nr_blocks, nr, &best);
	if (best == U64_MAX)
		return -ENOSPC;
	*first = best;
	return 0;
}

static int ptb_md_free_slot(struct ptb_metadata *pmd)
{
	unsigned int i;

	for (i = 0; i < PTB_MAX_PERSISTENT_BITMAPS; i++)
		if (!pmd->slots[i].used && !pmd->committed[i].used)
			return i;
	return -ENOSPC;
}

int ptb_metadata_check_space(struct ptb_metadata *pmd, u64 nr_bits)
{
	u64 first;
	int r;

	mutex_lock(&pmd->lock);
	r = ptb_md_free_slot(pmd);
	if (r >= 0)
		r = ptb_md_alloc_region(pmd, ptb_md_blocks_for(nr_bits), &first);
	mutex_unlock(&pmd->lock);
	return r < 0 ? r : 0;
}

/* Little-endian bit order on disk, whatever the CPU's. */
static void ptb_md_fill_block(void *data, const unsigned long *bits,
			      u64 base, u64 n)
{
	unsigned long bit;

	memset(data, 0, PTB_MD_BLOCK_SIZE);
	for (bit = find_next_bit(bits, base + n, base); bit < base + n;
	     bit = find_next_bit(bits, base + n, bit + 1))
		__set_bit_le(bit - base, data);
}

/* Zero (bits == NULL) or fill a bitmap's region from an in-core bitmap. */
static int ptb_md_write_region(struct ptb_metadata *pmd, struct ptb_md_slot *s,
			       const unsigned long *bits)
{
	struct dm_buffer *buf;
	u64 blk, base, n;
	void *data;

	for (blk = 0; blk < s->nr_blocks; blk++) {
		data = dm_bufio_new(pmd->bufio, s->first_block + blk, &buf);
		if (IS_ERR(data))
			return PTR_ERR(data);
		base = blk * PTB_MD_BITS_PER_BLOCK;
		n = min_t(u64, PTB_MD_BITS_PER_BLOCK, s->b.nr_bits - base);
		if (bits)
			ptb_md_fill_block(data, bits, base, n);
		else
			memset(data, 0, PTB_MD_BLOCK_SIZE);
		dm_bufio_mark_buffer_dirty(buf);
		dm_bufio_release(buf);
		cond_resched();
	}
	return 0;
}

int ptb_metadata_add_bitmap(struct ptb_metadata *pmd,
			    const struct ptb_md_bitmap *b, unsigned int *slotp)
{
	struct ptb_md_slot *s;
	u64 nr, first;
	int slot, r;

	mutex_lock(&pmd->lock);
	r = -EIO;
	if (pmd->failed)
		goto out;
	slot = ptb_md_free_slot(pmd);
	r = slot;
	if (slot < 0)
		goto out;
	nr = ptb_md_blocks_for(b->nr_bits);
	r = ptb_md_alloc_region(pmd, nr, &first);
	if (r)
		goto out;

	s = &pmd->slots[slot];
	s->b = *b;
	s->first_block = first;
	s->nr_blocks = nr;
	r = ptb_md_write_region(pmd, s, NULL);
	if (r) {
		memset(s, 0, sizeof(*s));
		ptb_md_fail(pmd, "write", r);
		goto out;
	}
	s->used = true;
	pmd->table_dirty = true;
	*slotp = slot;
out:
	mutex_unlock(&pmd->lock);
	return r;
}

int ptb_metadata_remove_bitmap(struct ptb_metadata *pmd, unsigned int slot)
{
	mutex_lock(&pmd->lock);
	memset(&pmd->slots[slot], 0, sizeof(pmd->slots[slot]));
	pmd->table_dirty = true;
	mutex_unlock(&pmd->lock);
	return 0;
}

int ptb_metadata_set_enabled(struct ptb_metadata *pmd, unsigned int slot,
			     bool enabled)
{
	mutex_lock(&pmd->lock);
	pmd->slots[slot].b.enabled = enabled;
	pmd->table_dirty = true;
	mutex_unlock(&pmd->lock);
	return 0;
}

/* Fill block index of slot s from an in-core bitmap.  pmd->lock held. */
static int ptb_md_write_block(struct ptb_metadata *pmd, struct ptb_md_slot *s,
			      u64 index, const unsigned long *bits)
{
	u64 base = index * PTB_MD_BITS_PER_BLOCK;
	struct dm_buffer *buf;
	void *data;

	data = dm_bufio_new(pmd->bufio, s->first_block + index, &buf);
	if (IS_ERR(data))
		return ptb_md_fail(pmd, "write", PTR_ERR(data));
	ptb_md_fill_block(data, bits, base,
			  min_t(u64, PTB_MD_BITS_PER_BLOCK, s->b.nr_bits - base));
	dm_bufio_mark_buffer_dirty(buf);
	dm_bufio_release(buf);
	return 0;
}

int ptb_metadata_write_bits(struct ptb_metadata *pmd, unsigned int slot,
			    const unsigned long *bits, u64 nr_bits,
			    u64 first, u64 last)
{
	struct ptb_md_slot *s = &pmd->slots[slot];
	u64 index;
	int r = -EIO;

	mutex_lock(&pmd->lock);
	if (pmd->failed)
		goto out;
	r = -EINVAL;
	if (WARN_ON_ONCE(!s->used || nr_bits != s->b.nr_bits ||
			 first > last || last >= nr_bits))
		goto out;
	r = 0;
	for (index = first / PTB_MD_BITS_PER_BLOCK;
	     !r && index <= last / PTB_MD_BITS_PER_BLOCK; index++)
		r = ptb_md_write_block(pmd, s, index, bits);
out:
	mutex_unlock(&pmd->lock);
	return r;
}

/* Cover a new device size; only while no bitmap exists. */
int ptb_metadata_resize(struct ptb_metadata *pmd, sector_t dev_sectors)
{
	unsigned int i;
	int r = -EIO;

	mutex_lock(&pmd->lock);
	if (pmd->failed)
		goto out;
	r = -EBUSY;
	for (i = 0; i < PTB_MAX_PERSISTENT_BITMAPS; i++)
		if (pmd->slots[i].used || pmd->committed[i].used)
			goto out;
	pmd->dev_sectors = dev_sectors;
	pmd->region_shift = ptb_md_region_shift_for(dev_sectors);
	r = ptb_md_write_superblock(pmd);
	if (r)
		ptb_md_fail(pmd, "commit", r);
out:
	mutex_unlock(&pmd->lock);
	return r;
}

/*----------------------------------------------------------------*/

/* The write-intent log. */

unsigned int ptb_metadata_region_shift(struct ptb_metadata *pmd)
{
	return pmd->region_shift;
}

unsigned long ptb_metadata_nr_regions(struct ptb_metadata *pmd)
{
	return ptb_md_nr_regions(pmd->dev_sectors, pmd->region_shift);
}

int ptb_metadata_load_intent(struct ptb_metadata *pmd, unsigned long *regions)
{
	unsigned long n = ptb_metadata_nr_regions(pmd), bit;
	struct dm_buffer *buf;
	void *data;

	mutex_lock(&pmd->lock);
	data = dm_bufio_read(pmd->bufio, PTB_MD_INTENT_BLOCK, &buf);
	if (IS_ERR(data)) {
		mutex_unlock(&pmd->lock);
		return PTR_ERR(data);
	}
	bitmap_zero(regions, n);
	for (bit = find_next_bit_le(data, n, 0); bit < n;
	     bit = find_next_bit_le(data, n, bit + 1))
		__set_bit(bit, regions);
	dm_bufio_release(buf);
	mutex_unlock(&pmd->lock);
	return 0;
}

/* Write the whole intent log and flush: durable on return. */
int ptb_metadata_write_intent(struct ptb_metadata *pmd,
			      const unsigned long *regions)
{
	struct dm_buffer *buf;
	void *data;
	int r = -EIO;

	mutex_lock(&pmd->lock);
	if (pmd->failed)
		goto out;
	data = dm_bufio_new(pmd->bufio, PTB_MD_INTENT_BLOCK, &buf);
	if (IS_ERR(data)) {
		r = ptb_md_fail(pmd, "intent write", PTR_ERR(data));
		goto out;
	}
	ptb_md_fill_block(data, regions, 0, ptb_metadata_nr_regions(pmd));
	dm_bufio_mark_buffer_dirty(buf);
	dm_bufio_release(buf);
	r = ptb_md_write_durable(pmd);
	if (r)
		ptb_md_fail(pmd, "intent write", r);
out:
	mutex_unlock(&pmd->lock);
	return r;
}

int ptb_metadata_store_bits(struct ptb_metadata *pmd, unsigned int slot,
			    const unsigned long *bits)
{
	int r = -EIO;

	mutex_lock(&pmd->lock);
	if (!pmd->failed) {
		r = ptb_md_write_region(pmd, &pmd->slots[slot], bits);
		if (r)
			ptb_md_fail(pmd, "write", r);
	}
	mutex_unlock(&pmd->lock);
	return r;
}

int ptb_metadata_commit(struct ptb_metadata *pmd)
{
	int r;

	mutex_lock(&pmd->lock);
	if (pmd->failed) {
		r = -EIO;
		goto out;
	}
	r = ptb_md_write_durable(pmd);
	if (!r && pmd->table_dirty)
		r = ptb_md_write_superblock(pmd);
	if (r)
		ptb_md_fail(pmd, "commit", r);
out:
	mutex_unlock(&pmd->lock);
	return r;
}

/* tok_int.h: the private layout of kiln_vocab shared by vocab.c (load, lookups), encode.c (SPM and
 * byte-level BPE) and decode.c (pieces, streaming detokenizer). Not part of the API.
 * Invariants: every id stored here is in [0, n_tokens) or -1; hash tables are open-addressed with
 * a power-of-two capacity at least twice their entry count. Read-only after kiln_vocab_load. */
#ifndef KILN_TOK_INT_H
#define KILN_TOK_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tok/tok.h"

#define TOK_MAX_REGEX 6

/* Merge of a pair of ids (byte-level BPE): its rank (lower merges first) and the merged id. */
typedef struct tok_merge {
    uint64_t key; /* (uint64)left << 32 | right; UINT64_MAX = empty slot */
    int32_t rank;
    int32_t merged;
} tok_merge;

struct kiln_vocab {
    kiln_vocab_type type;
    char pre[64]; /* tokenizer.ggml.pre as read ("" for SPM) */
    int32_t n_tokens;
    char *text_pool;    /* raw token texts back to back */
    uint32_t *text_off; /* (n_tokens + 1,) offsets into text_pool */
    float *scores;      /* (n_tokens,) SPM merge scores (0 when absent) */
    uint8_t *ttype;     /* (n_tokens,) kiln_token_type */
    int32_t *hash;      /* (hash_mask + 1,) text -> id, -1 empty */
    uint32_t hash_mask;

    /* decoded bytes of each token (SPM "▁" -> ' ', <0xNN> -> byte, byte-level unicode -> bytes) */
    char *piece_pool;
    uint32_t *piece_off; /* (n_tokens + 1,) */

    /* special tokens matched in text: CONTROL / UNKNOWN (only with parse_special), USER_DEFINED */
    int32_t *special_hash; /* (special_mask + 1,) text -> id, -1 empty */
    uint32_t special_mask;
    /* lengths of the special tokens starting with byte b, longest first:
     * special_lens[special_len_off[b] .. special_len_off[b + 1]) */
    uint8_t *special_lens;
    uint32_t special_len_off[257];

    int32_t byte_tok[256]; /* SPM: id of <0xNN>; BPE: id of the byte-level char of byte b */

    tok_merge *merges; /* (merge_mask + 1,) BPE only */
    uint32_t merge_mask;

    pcre2_code *regex[TOK_MAX_REGEX]; /* BPE pre-tokenizer, applied in sequence */
    int n_regex;
    pcre2_general_context *gc; /* allocator hooks (kiln_malloc) for match data */
    bool nfc;                  /* NFC-normalize text before pre-tokenization (Qwen2) */
    bool ignore_merges; /* a whole pre-token that is in the vocab is emitted as is (Llama 3) */

    int32_t bos, eos, eot, eom, unk, pad;
    bool add_bos, add_eos, add_space_prefix;
    uint8_t *eog; /* (n_tokens,) 1 = end of generation */
};

uint64_t kiln_tok_hash(const char *s, size_t n);
/* Id of the token with raw text s[0..n) using table (mask) over v's texts, or -1. */
int32_t kiln_tok_table_find(const kiln_vocab *v, const int32_t *table, uint32_t mask, const char *s,
                            size_t n);
/* Length of the UTF-8 sequence announced by lead byte c (1 for invalid leads). */
static inline size_t kiln_tok_utf8_len(uint8_t c) {
    static const uint8_t lens[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lens[c >> 4];
}

#endif

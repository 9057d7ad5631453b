/* encode.c: text -> token ids. Special tokens are split out first (leftmost, longest match, as
 * HF's added-token matcher); the text between them goes to SentencePiece-BPE (merge the adjacent
 * pair of highest score first, byte fallback) or to byte-level BPE (NFC when the vocab asks,
 * PCRE2 pre-tokenizer regexes in sequence, then the lowest-rank merge first per pre-token).
 * Ties go to the leftmost pair, as in SentencePiece and HF tokenizers.
 * Thread: any; all scratch memory is per call (the vocab is only read). */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok/tok_int.h"

#define MAX_TEXT_BYTES ((size_t)1 << 30)

typedef struct sym {
    int32_t prev, next;  /* neighbours in the live list, -1 at the ends */
    uint32_t start, len; /* bytes of the text (len 0 = merged away) */
    int32_t id;          /* BPE: current token id (-1 = no token) */
} sym;

typedef struct bigram {
    double key;          /* SPM: -score; BPE: rank. Lowest first */
    int32_t left, right; /* symbol indices */
    uint32_t size;       /* SPM: bytes of the pair when queued */
    int32_t id_l, id_r;  /* BPE: ids when queued */
    int32_t merged;      /* resulting id */
} bigram;

typedef struct span {
    size_t start, len;
} span;

typedef struct work {
    const kiln_vocab *v;
    int32_t *ids;
    size_t n_ids, cap_ids;
    sym *syms;
    size_t cap_syms;
    bigram *heap;
    size_t n_heap, cap_heap;
    char *buf;
    size_t cap_buf;
    span *spans[2];
    size_t n_spans[2], cap_spans[2];
    pcre2_match_data *md;
} work;

static kiln_err grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return KILN_OK;
    size_t nc = *cap ? *cap : 16, bytes;
    while (nc < need) nc *= 2;
    if (!kiln_mul_size(nc, elem, &bytes))
        return kiln_errf(KILN_ERR_LIMIT, "tokenizer: text too long");
    void *np = kiln_realloc(*p, bytes);
    if (!np) return kiln_errf(KILN_ERR_NOMEM, "tokenizer: out of memory");
    *p = np;
    *cap = nc;
    return KILN_OK;
}

static kiln_err push_id(work *w, int32_t id) {
    kiln_err err = grow((void **)&w->ids, &w->cap_ids, w->n_ids + 1, sizeof(int32_t));
    if (err) return err;
    w->ids[w->n_ids++] = id;
    return KILN_OK;
}

/* ---- a binary min-heap of bigrams on (key, left) ---- */
static bool bigram_less(const bigram *a, const bigram *b) {
    return a->key < b->key || (a->key == b->key && a->left < b->left);
}

static kiln_err heap_push(work *w, bigram b) {
    kiln_err err = grow((void **)&w->heap, &w->cap_heap, w->n_heap + 1, sizeof(bigram));
    if (err) return err;
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_less(&b, &w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = b;
    return KILN_OK;
}

static bigram heap_pop(work *w) {
    bigram top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_less(&w->heap[c + 1], &w->heap[c])) c++;
        if (!bigram_less(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n > 0) w->heap[i] = last;
    return top;
}

/* Length of the well-formed UTF-8 character at s (n > 0 bytes left), or 1 for a byte that does
 * not start one: invalid bytes stay single symbols and reach byte fallback one by one. */
static size_t char_len(const char *p, size_t n) {
    const uint8_t *s = (const uint8_t *)p;
    size_t l = kiln_tok_utf8_len(s[0]);
    if (l == 1 || l > n || s[0] < 0xc2 || s[0] > 0xf4) return 1;
    uint8_t lo = 0x80, hi = 0xbf;
    if (s[0] == 0xe0)
        lo = 0xa0;
    else if (s[0] == 0xed)
        hi = 0x9f;
    else if (s[0] == 0xf0)
        lo = 0x90;
    else if (s[0] == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi) return 1;
    for (size_t i = 2; i < l; i++)
        if ((s[i] & 0xc0) != 0x80) return 1;
    return l;
}

/* Splits buf[0..n) into one symbol per UTF-8 character. */
static kiln_err make_syms(work *w, const char *s, size_t n, size_t *n_syms) {
    kiln_err err = grow((void **)&w->syms, &w->cap_syms, n, sizeof(sym));
    if (err) return err;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t l = char_len(s + i, n - i);
        w->syms[k] = (sym){(int32_t)k - 1, (int32_t)k + 1, (uint32_t)i, (uint32_t)l, -1};
        k++;
        i += l;
    }
    if (k) w->syms[k - 1].next = -1;
    *n_syms = k;
    return KILN_OK;
}

/* ---- SentencePiece BPE ---- */
static bool spm_mergeable(const kiln_vocab *v, int32_t id) {
    uint8_t t = v->ttype[id];
    return t != KILN_TOKEN_CONTROL && t != KILN_TOKEN_UNKNOWN && t != KILN_TOKEN_BYTE;
}

static kiln_err spm_try_pair(work *w, const char *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return KILN_OK;
    const sym *a = &w->syms[l], *b = &w->syms[r];
    uint32_t size = a->len + b->len;
    int32_t id = kiln_tok_table_find(w->v, w->v->hash, w->v->hash_mask, s + a->start, size);
    if (id < 0 || !spm_mergeable(w->v, id)) return KILN_OK;
    return heap_push(w, (bigram){-(double)w->v->scores[id], l, r, size, -1, -1, id});
}

static kiln_err spm_emit_bytes(work *w, const char *s, size_t n) {
    kiln_err err = KILN_OK;
    for (size_t i = 0; i < n && !err; i++) {
        int32_t id = w->v->byte_tok[(uint8_t)s[i]];
        if (id < 0) id = w->v->unk;
        if (id >= 0) err = push_id(w, id);
    }
    return err;
}

static kiln_err spm_encode(work *w, const char *text, size_t len, bool prefix) {
    const kiln_vocab *v = w->v;
    /* escaped text: optional dummy prefix, spaces as U+2581 (3 bytes) */
    size_t need;
    if (!kiln_mul_size(len + 1, 3, &need))
        return kiln_errf(KILN_ERR_LIMIT, "tokenizer: text too long");
    kiln_err err = grow((void **)&w->buf, &w->cap_buf, need, 1);
    if (err) return err;
    size_t n = 0;
    if (prefix) {
        memcpy(w->buf, "\xe2\x96\x81", 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(w->buf + n, "\xe2\x96\x81", 3);
            n += 3;
        } else {
            w->buf[n++] = text[i];
        }
    }
    const char *s = w->buf;
    size_t n_syms;
    if ((err = make_syms(w, s, n, &n_syms)) != KILN_OK) return err;
    w->n_heap = 0;
    for (size_t i = 1; i < n_syms; i++)
        if ((err = spm_try_pair(w, s, (int32_t)i - 1, (int32_t)i)) != KILN_OK) return err;
    while (w->n_heap > 0) {
        bigram b = heap_pop(w);
        sym *a = &w->syms[b.left], *c = &w->syms[b.right];
        if (a->len == 0 || c->len == 0 || a->next != b.right || a->len + c->len != b.size) continue;
        a->len += c->len;
        c->len = 0;
        a->next = c->next;
        if (c->next >= 0) w->syms[c->next].prev = b.left;
        if ((err = spm_try_pair(w, s, a->prev, b.left)) != KILN_OK) return err;
        if ((err = spm_try_pair(w, s, b.left, a->next)) != KILN_OK) return err;
    }
    for (int32_t i = n_syms ? 0 : -1; i >= 0; i = w->syms[i].next) {
        const sym *a = &w->syms[i];
        int32_t id = kiln_tok_table_find(v, v->hash, v->hash_mask, s + a->start, a->len);
        if (id >= 0 && spm_mergeable(v, id)) {
            err = push_id(w, id);
        } else {
            err = spm_emit_bytes(w, s + a->start, a->len);
        }
        if (err) return err;
    }
    return KILN_OK;
}

/* ---- byte-level BPE ---- */
static int32_t merge_find(const kiln_vocab *v, int32_t l, int32_t r, int32_t *rank) {
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    uint32_t i = (uint32_t)(key * 0x9e3779b97f4a7c15ull >> 32) & v->merge_mask;
    for (;;) {
        const tok_merge *m = &v->merges[i];
        if (m->key == UINT64_MAX) return -1;
        if (m->key == key) {
            *rank = m->rank;
            return m->merged;
        }
        i = (i + 1) & v->merge_mask;
    }
}

static kiln_err bpe_try_pair(work *w, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return KILN_OK;
    int32_t a = w->syms[l].id, b = w->syms[r].id, rank;
    if (a < 0 || b < 0) return KILN_OK;
    int32_t merged = merge_find(w->v, a, b, &rank);
    if (merged < 0) return KILN_OK;
    return heap_push(w, (bigram){(double)rank, l, r, 0, a, b, merged});
}

static kiln_err bpe_word(work *w, const uint8_t *s, size_t n) {
    const kiln_vocab *v = w->v;
    kiln_err err;
    if (v->ignore_merges) {
        size_t need;
        if (!kiln_mul_size(n, 2, &need))
            return kiln_errf(KILN_ERR_LIMIT, "tokenizer: text too long");
        if ((err = grow((void **)&w->buf, &w->cap_buf, need, 1)) != KILN_OK) return err;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            /* the byte-level char of byte b is the text of byte_tok[b] when present */
            int32_t bt = v->byte_tok[s[i]];
            if (bt < 0) {
                k = SIZE_MAX;
                break;
            }
            size_t bl;
            const char *bs = kiln_vocab_token_text(v, bt, &bl);
            memcpy(w->buf + k, bs, bl);
            k += bl;
        }
        if (k != SIZE_MAX) {
            int32_t id = kiln_tok_table_find(v, v->hash, v->hash_mask, w->buf, k);
            if (id >= 0) return push_id(w, id);
        }
    }
    if ((err = grow((void **)&w->syms, &w->cap_syms, n, sizeof(sym))) != KILN_OK) return err;
    for (size_t i = 0; i < n; i++)
        w->syms[i] = (sym){(int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, (uint32_t)i, 1,
                           v->byte_tok[s[i]]};
    w->n_heap = 0;
    for (size_t i = 1; i < n; i++)
        if ((err = bpe_try_pair(w, (int32_t)i - 1, (int32_t)i)) != KILN_OK) return err;
    while (w->n_heap > 0) {
        bigram b = heap_pop(w);
        sym *a = &w->syms[b.left], *c = &w->syms[b.right];
        if (a->len == 0 || c->len == 0 || a->next != b.right || a->id != b.id_l || c->id != b.id_r)
            continue;
        a->id = b.merged;
        a->len += c->len;
        c->len = 0;
        a->next = c->next;
        if (c->next >= 0) w->syms[c->next].prev = b.left;
        if ((err = bpe_try_pair(w, a->prev, b.left)) != KILN_OK) return err;
        if ((err = bpe_try_pair(w, b.left, a->next)) != KILN_OK) return err;
    }
    for (int32_t i = n ? 0 : -1; i >= 0; i = w->syms[i].next) {
        int32_t id = w->syms[i].id >= 0 ? w->syms[i].id : v->unk;
        if (id >= 0 && (err = push_id(w, id)) != KILN_OK) return err;
    }
    return KILN_OK;
}

static kiln_err push_span(work *w, int k, size_t start, size_t len) {
    kiln_err err = grow((void **)&w->spans[k], &w->cap_spans[k], w->n_spans[k] + 1, sizeof(span));
    if (err) return err;
    w->spans[k][w->n_spans[k]++] = (span){start, len};
    return KILN_OK;
}

/* Splits every span of list `from` by regex re into list 1 - from: matches and the gaps between
 * them both become spans (HF's Split with the Isolated behaviour). */
static kiln_err regex_split(work *w, const pcre2_code *re, const char *text, int from) {
    int to = 1 - from;
    w->n_spans[to] = 0;
    kiln_err err;
    for (size_t k = 0; k < w->n_spans[from]; k++) {
        span sp = w->spans[from][k];
        const PCRE2_SPTR subj = (PCRE2_SPTR)(text + sp.start);
        size_t pos = 0, off = 0;
        while (off < sp.len) {
            int rc = pcre2_match(re, subj, sp.len, off, 0, w->md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc == PCRE2_ERROR_NOMEMORY || rc == PCRE2_ERROR_HEAP_FAILED)
                return kiln_errf(KILN_ERR_NOMEM, "tokenizer: out of memory in the pre-tokenizer");
            if (rc < 0)
                return kiln_errf(KILN_ERR_LIMIT, "tokenizer: pre-tokenizer regex failed (%d)", rc);
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
            size_t ms = ov[0], me = ov[1];
            if (me <= ms) { /* empty match: step over one character */
                off = ms + char_len((const char *)subj + ms, sp.len - ms);
                continue;
            }
            if (ms > pos && (err = push_span(w, to, sp.start + pos, ms - pos)) != KILN_OK)
                return err;
            if ((err = push_span(w, to, sp.start + ms, me - ms)) != KILN_OK) return err;
            pos = off = me;
        }
        if (pos < sp.len && (err = push_span(w, to, sp.start + pos, sp.len - pos)) != KILN_OK)
            return err;
    }
    return KILN_OK;
}

static bool is_ascii(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)s[i] >= 0x80) return false;
    return true;
}

static kiln_err bpe_encode(work *w, const char *text, size_t len) {
    const kiln_vocab *v = w->v;
    kiln_err err = KILN_OK;
    utf8proc_uint8_t *norm = NULL;
    if (v->nfc && !is_ascii(text, len)) {
        utf8proc_ssize_t nl = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len,
                                           &norm, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (nl >= 0) {
            text = (const char *)norm;
            len = (size_t)nl;
        } else if (nl == UTF8PROC_ERROR_NOMEM) {
            return kiln_errf(KILN_ERR_NOMEM, "tokenizer: out of memory normalizing text");
        } /* invalid UTF-8: tokenized as is */
    }
    if (!w->md) {
        w->md = pcre2_match_data_create(1, v->gc);
        if (!w->md) {
            err = kiln_errf(KILN_ERR_NOMEM, "tokenizer: out of memory");
            goto out;
        }
    }
    w->n_spans[0] = 0;
    if ((err = push_span(w, 0, 0, len)) != KILN_OK) goto out;
    int cur = 0;
    for (int r = 0; r < v->n_regex; r++) {
        if ((err = regex_split(w, v->regex[r], text, cur)) != KILN_OK) goto out;
        cur = 1 - cur;
    }
    for (size_t k = 0; k < w->n_spans[cur]; k++) {
        span sp = w->spans[cur][k];
        if ((err = bpe_word(w, (const uint8_t *)text + sp.start, sp.len)) != KILN_OK) goto out;
    }
out:
    free(norm); /* utf8proc's allocation */
    return err;
}

/* ---- special tokens, then the model ---- */
static int32_t match_special(const kiln_vocab *v, const char *s, size_t n, bool parse_special,
                             size_t *len) {
    uint8_t b = (uint8_t)s[0];
    for (uint32_t k = v->special_len_off[b]; k < v->special_len_off[b + 1]; k++) {
        size_t l = v->special_lens[k];
        if (l > n) continue;
        int32_t id = kiln_tok_table_find(v, v->special_hash, v->special_mask, s, l);
        if (id < 0) continue;
        if (!parse_special && v->ttype[id] != KILN_TOKEN_USER_DEFINED) continue;
        *len = l;
        return id;
    }
    return -1;
}

static kiln_err encode_text(work *w, const char *s, size_t n, bool prev_special) {
    if (n == 0) return KILN_OK;
    if (w->v->type == KILN_VOCAB_SPM)
        return spm_encode(w, s, n, w->v->add_space_prefix && prev_special);
    return bpe_encode(w, s, n);
}

kiln_err kiln_tok_encode(const kiln_vocab *v, const char *text, size_t len, bool add_bos,
                         bool parse_special, int32_t **ids, size_t *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    if (len > MAX_TEXT_BYTES)
        return kiln_errf(KILN_ERR_LIMIT, "tokenizer: text of %zu bytes is over the 1 GiB limit",
                         len);
    work w = {.v = v};
    kiln_err err = KILN_OK;
    bool prev_special = true; /* the dummy prefix goes before the first text */
    if (add_bos && kiln_vocab_add_bos(v) && (err = push_id(&w, v->bos)) != KILN_OK) goto out;
    size_t start = 0;
    for (size_t i = 0; i < len;) {
        size_t l;
        int32_t id = match_special(v, text + i, len - i, parse_special, &l);
        if (id < 0) {
            i++;
            continue;
        }
        if ((err = encode_text(&w, text + start, i - start, prev_special)) != KILN_OK) goto out;
        if ((err = push_id(&w, id)) != KILN_OK) goto out;
        prev_special = true;
        i += l;
        start = i;
        continue;
    }
    if (start < len) {
        if ((err = encode_text(&w, text + start, len - start, prev_special)) != KILN_OK) goto out;
    }
    if (add_bos && kiln_vocab_add_eos(v) && (err = push_id(&w, v->eos)) != KILN_OK) goto out;
out:
    kiln_free(w.syms);
    kiln_free(w.heap);
    kiln_free(w.buf);
    kiln_free(w.spans[0]);
    kiln_free(w.spans[1]);
    pcre2_match_data_free(w.md);
    if (err) {
        kiln_free(w.ids);
        return err;
    }
    *ids = w.ids;
    *n_ids = w.n_ids;
    return KILN_OK;
}

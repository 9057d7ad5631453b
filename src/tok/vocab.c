/* vocab.c: loads a kiln_vocab from GGUF tokenizer metadata (llama.cpp's tokenizer.ggml.* keys):
 * token texts, scores, types, BPE merges, special ids and flags; builds the lookup tables (text
 * -> id, special-token matcher, byte tokens, merge ranks, decoded pieces) and compiles the
 * pre-tokenizer regexes of tokenizer.ggml.pre with PCRE2 (UTF, UCP, JIT).
 * Thread: load on any thread; the result is read-only and shared. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok_int.h"

/* ---- hashing ---- */
uint64_t kiln_tok_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static const char *tok_text(const kiln_vocab *v, int32_t id, size_t *len) {
    *len = v->text_off[id + 1] - v->text_off[id];
    return v->text_pool + v->text_off[id];
}

int32_t kiln_tok_table_find(const kiln_vocab *v, const int32_t *table, uint32_t mask, const char *s,
                            size_t n) {
    uint32_t i = (uint32_t)kiln_tok_hash(s, n) & mask;
    for (;;) {
        int32_t id = table[i];
        if (id < 0) return -1;
        size_t len;
        const char *t = tok_text(v, id, &len);
        if (len == n && memcmp(t, s, n) == 0) return id;
        i = (i + 1) & mask;
    }
}

/* Inserts id under its text unless that text is present (the first id wins). */
static void table_insert(const kiln_vocab *v, int32_t *table, uint32_t mask, int32_t id) {
    size_t n;
    const char *s = tok_text(v, id, &n);
    uint32_t i = (uint32_t)kiln_tok_hash(s, n) & mask;
    for (;;) {
        int32_t cur = table[i];
        if (cur < 0) {
            table[i] = id;
            return;
        }
        size_t len;
        const char *t = tok_text(v, cur, &len);
        if (len == n && memcmp(t, s, n) == 0) return;
        i = (i + 1) & mask;
    }
}

static kiln_err table_new(uint32_t n_entries, int32_t **table, uint32_t *mask) {
    uint32_t cap = 16;
    while (cap < 2u * n_entries) cap <<= 1;
    *table = kiln_malloc((size_t)cap * sizeof(int32_t));
    if (!*table) return kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory for a %u-slot table", cap);
    memset(*table, 0xff, (size_t)cap * sizeof(int32_t));
    *mask = cap - 1;
    return KILN_OK;
}

/* ---- GPT-2 byte <-> unicode map ----
 * Printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand for themselves; the other 68 bytes
 * map in order to U+0100.. . */
static uint32_t byte_to_cp(uint8_t b) {
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae)) return b;
    uint32_t n = 0;
    for (uint32_t c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || (c >= 0xae))) n++;
    return 256 + n;
}

static size_t cp_to_utf8(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decodes one UTF-8 code point at s (n bytes left); 0 when malformed. */
static size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    size_t len = kiln_tok_utf8_len(s[0]);
    if (len > n) return 0;
    if (len == 1) {
        if (s[0] >= 0x80) return 0;
        *cp = s[0];
        return 1;
    }
    uint32_t c = s[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    *cp = c;
    return len;
}

/* ---- pre-tokenizers (tokenizer.ggml.pre), regexes as in the models' tokenizer.json ---- */
/* clang-format off */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RE_LLAMA3                                                                                  \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"    \
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                   \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"    \
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_CJK "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"

typedef struct pre_def {
    const char *names;               /* NUL-separated list of tokenizer.ggml.pre values */
    const char *regex[TOK_MAX_REGEX];
    bool nfc, ignore_merges, add_bos;
} pre_def;

static const pre_def pre_defs[] = {
    {"llama-bpe\0llama3\0llama-v3\0smaug-bpe\0dbrx\0falcon3\0", {RE_LLAMA3}, false, true, true},
    {"qwen2\0qwen2.5\0qwen-2.5\0deepseek-r1-qwen\0stablelm2\0", {RE_QWEN2}, true, false, false},
    {"default\0gpt-2\0gpt2\0mpt\0olmo\0jais\0phi-2\0roberta-bpe\0", {RE_GPT2}, false, false, false},
    {"starcoder\0refact\0command-r\0smollm\0codeshell\0exaone\0minerva-7b\0",
     {"\\p{N}", RE_GPT2},
     false, false, false},
    {"falcon\0", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}, false, false, false},
    {"deepseek-llm\0",
     {"[\\r\\n]",
      "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}"
      "\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}"
      "\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}"
      "\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}"
      "\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}"
      "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}"
      "\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}"
      "\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}"
      "\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}"
      "\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}"
      "\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}"
      "\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}"
      "\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}"
      "\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}"
      "\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}"
      "\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}"
      "\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}"
      "\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+",
      "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
      "\\s+$", RE_CJK, "\\p{N}+"},
     false, false, false},
    {"deepseek-coder\0", {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK, "\\p{N}"},
     false, false, false},
};

/* clang-format on */

static const pre_def *pre_lookup(const char *name) {
    for (size_t i = 0; i < KILN_ARRAY_LEN(pre_defs); i++)
        for (const char *n = pre_defs[i].names; *n; n += strlen(n) + 1)
            if (strcmp(n, name) == 0) return &pre_defs[i];
    return NULL;
}

/* PCRE2 allocations go through kiln_malloc so that fault injection reaches them. */
static void *pcre_alloc(size_t n, void *ud) {
    (void)ud;
    return kiln_malloc(n);
}
static void pcre_free(void *p, void *ud) {
    (void)ud;
    kiln_free(p);
}

static kiln_err compile_regexes(kiln_vocab *v, const pre_def *d) {
    kiln_err err = KILN_OK;
    v->gc = pcre2_general_context_create(pcre_alloc, pcre_free, NULL);
    if (!v->gc) return kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory for PCRE2");
    pcre2_compile_context *cc = pcre2_compile_context_create(v->gc);
    if (!cc) return kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory for PCRE2");
    for (int i = 0; i < TOK_MAX_REGEX && d->regex[i]; i++) {
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile(
            (PCRE2_SPTR)d->regex[i], PCRE2_ZERO_TERMINATED,
            PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY, &ec, &eo, cc);
        if (!re) {
            if (ec == PCRE2_ERROR_NOMEMORY || ec == PCRE2_ERROR_HEAP_FAILED) {
                err = kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory compiling a regex");
            } else {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(ec, msg, sizeof(msg));
                /* a bug in the table above, not an input error */
                err =
                    kiln_errf(KILN_ERR_UNSUPPORTED, "vocab: pre-tokenizer '%s' regex %d: %s at %zu",
                              v->pre, i, (const char *)msg, (size_t)eo);
            }
            break;
        }
        /* JIT failure (no JIT support, no memory) leaves the interpreter in charge: same results */
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        v->regex[v->n_regex++] = re;
    }
    pcre2_compile_context_free(cc);
    return err;
}

/* ---- special tokens matched in text ---- */
static bool is_special_type(uint8_t t) {
    return t == KILN_TOKEN_CONTROL || t == KILN_TOKEN_USER_DEFINED || t == KILN_TOKEN_UNKNOWN;
}

static kiln_err build_special(kiln_vocab *v) {
    uint32_t n_special = 0;
    /* lengths seen per first byte: a 256 x 256 bitmap would be large; lengths > 255 are never
     * matched (no real special token is that long) */
    static const size_t max_len = 255;
    uint8_t *seen = kiln_calloc(256, 256);
    if (!seen) return kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory");
    for (int32_t id = 0; id < v->n_tokens; id++) {
        size_t len;
        const char *s = tok_text(v, id, &len);
        if (!is_special_type(v->ttype[id]) || len == 0 || len > max_len) continue;
        n_special++;
        seen[(uint8_t)s[0] * 256 + len] = 1;
    }
    kiln_err err = table_new(n_special, &v->special_hash, &v->special_mask);
    if (err) goto out;
    uint32_t n_lens = 0;
    for (int b = 0; b < 256; b++)
        for (int l = 0; l < 256; l++) n_lens += seen[b * 256 + l];
    v->special_lens = kiln_malloc(n_lens ? n_lens : 1);
    if (!v->special_lens) {
        err = kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory");
        goto out;
    }
    uint32_t k = 0;
    for (int b = 0; b < 256; b++) {
        v->special_len_off[b] = k;
        for (int l = 255; l >= 1; l--)
            if (seen[b * 256 + l]) v->special_lens[k++] = (uint8_t)l;
    }
    v->special_len_off[256] = k;
    for (int32_t id = 0; id < v->n_tokens; id++) {
        size_t len;
        (void)tok_text(v, id, &len);
        if (is_special_type(v->ttype[id]) && len > 0 && len <= max_len)
            table_insert(v, v->special_hash, v->special_mask, id);
    }
out:
    kiln_free(seen);
    return err;
}

/* ---- BPE merges ---- */
static kiln_err build_merges(kiln_vocab *v, const kiln_gguf *g) {
    const kiln_gguf_kv *kv;
    kiln_err err = kiln_gguf_get_arr(g, "tokenizer.ggml.merges", KILN_GGUF_STRING, &kv);
    if (err == KILN_ERR_NOT_FOUND)
        return kiln_errf(KILN_ERR_FORMAT, "vocab: gpt2 tokenizer without tokenizer.ggml.merges");
    if (err)
        return kiln_errf(KILN_ERR_FORMAT, "vocab: tokenizer.ggml.merges is not a string array");
    if (kv->v.arr.n > (uint64_t)INT32_MAX / 4)
        return kiln_errf(KILN_ERR_FORMAT, "vocab: %llu merges is too many",
                         (unsigned long long)kv->v.arr.n);
    uint32_t n = (uint32_t)kv->v.arr.n;
    uint32_t cap = 16;
    while (cap < 2u * n) cap <<= 1;
    v->merges = kiln_malloc((size_t)cap * sizeof(tok_merge));
    if (!v->merges) return kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory for %u merges", n);
    v->merge_mask = cap - 1;
    for (uint32_t i = 0; i < cap; i++) v->merges[i].key = UINT64_MAX;
    char *buf = NULL;
    size_t buf_cap = 0;
    for (uint32_t r = 0; r < n; r++) {
        kiln_gguf_str m = kiln_gguf_arr_str(kv, r);
        /* "left right": split at the first space after the first byte (a left part may be " ") */
        const char *sp = m.len > 1 ? memchr(m.p + 1, ' ', m.len - 1) : NULL;
        if (!sp) {
            kiln_free(buf);
            return kiln_errf(KILN_ERR_FORMAT, "vocab: merge %u has no space separator", r);
        }
        size_t nl = (size_t)(sp - m.p), nr = m.len - nl - 1;
        int32_t l = kiln_tok_table_find(v, v->hash, v->hash_mask, m.p, nl);
        int32_t rt = kiln_tok_table_find(v, v->hash, v->hash_mask, sp + 1, nr);
        if (l < 0 || rt < 0) continue; /* a merge of unknown parts can never apply */
        if (nl + nr > buf_cap) {
            char *nb = kiln_realloc(buf, nl + nr);
            if (!nb) {
                kiln_free(buf);
                return kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory");
            }
            buf = nb;
            buf_cap = nl + nr;
        }
        memcpy(buf, m.p, nl);
        memcpy(buf + nl, sp + 1, nr);
        int32_t merged = kiln_tok_table_find(v, v->hash, v->hash_mask, buf, nl + nr);
        if (merged < 0) continue;
        uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)rt;
        uint32_t i = (uint32_t)(key * 0x9e3779b97f4a7c15ull >> 32) & v->merge_mask;
        while (v->merges[i].key != UINT64_MAX && v->merges[i].key != key)
            i = (i + 1) & v->merge_mask;
        if (v->merges[i].key == key) continue; /* duplicate: the first rank wins */
        v->merges[i] = (tok_merge){key, (int32_t)r, merged};
    }
    kiln_free(buf);
    return KILN_OK;
}

/* ---- decoded pieces ---- */
static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static kiln_err build_pieces(kiln_vocab *v) {
    size_t total = v->text_off[v->n_tokens];
    /* a decoded piece is never longer than its raw text */
    v->piece_pool = kiln_malloc(total ? total : 1);
    v->piece_off = kiln_malloc(((size_t)v->n_tokens + 1) * sizeof(uint32_t));
    if (!v->piece_pool || !v->piece_off) return kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory");
    uint8_t cp_byte[324];
    bool cp_ok[324];
    memset(cp_ok, 0, sizeof(cp_ok));
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_to_cp((uint8_t)b);
        cp_byte[cp] = (uint8_t)b;
        cp_ok[cp] = true;
    }
    uint32_t k = 0;
    for (int32_t id = 0; id < v->n_tokens; id++) {
        v->piece_off[id] = k;
        size_t n;
        const char *s = tok_text(v, id, &n);
        char *o = v->piece_pool + k;
        size_t w = 0;
        uint8_t t = v->ttype[id];
        if (t == KILN_TOKEN_UNUSED) {
            /* nothing */
        } else if (t == KILN_TOKEN_USER_DEFINED || t == KILN_TOKEN_CONTROL ||
                   t == KILN_TOKEN_UNKNOWN) {
            memcpy(o, s, n); /* literal text (special ones only rendered on request) */
            w = n;
        } else if (v->type == KILN_VOCAB_SPM) {
            int hi = n == 6 ? hexval(s[3]) : -1, lo = n == 6 ? hexval(s[4]) : -1;
            if (t == KILN_TOKEN_BYTE && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
                hi >= 0 && lo >= 0) {
                o[w++] = (char)(hi * 16 + lo);
            } else {
                for (size_t i = 0; i < n; i++) {
                    if (i + 2 < n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                        o[w++] = ' ';
                        i += 2;
                    } else {
                        o[w++] = s[i];
                    }
                }
            }
        } else {
            /* byte-level: every char maps back to one byte; a token with any other char is
             * taken literally (as HF's ByteLevel decoder does) */
            size_t i = 0;
            while (i < n) {
                uint32_t cp;
                size_t l = utf8_decode((const uint8_t *)s + i, n - i, &cp);
                if (l == 0 || cp >= 324 || !cp_ok[cp]) break;
                o[w++] = (char)cp_byte[cp];
                i += l;
            }
            if (i < n) {
                memcpy(o, s, n);
                w = n;
            }
        }
        k += (uint32_t)w;
    }
    v->piece_off[v->n_tokens] = k;
    return KILN_OK;
}

/* ---- load ---- */
/* clang-format off */
static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|EOT|>", "<EOT>",
    "<|eom_id|>", "<｜end▁of▁sentence｜>", "<|end_of_text|>", "</s>",
};
static const char *const eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|EOT|>", "<EOT>",
};

/* clang-format on */

/* Reads an optional special-token id; UINT32_MAX and out-of-range values mean none. */
static int32_t get_id(const kiln_gguf *g, const char *key, int32_t n_tokens, int32_t dflt) {
    int64_t x;
    if (kiln_gguf_get_i64(g, key, &x) != KILN_OK) return dflt;
    if (x < 0 || x >= n_tokens) {
        if (x != (int64_t)UINT32_MAX && x != -1)
            KILN_WARN("vocab: %s = %lld is out of range (%d tokens); ignored", key, (long long)x,
                      n_tokens);
        return -1;
    }
    return (int32_t)x;
}

static bool get_flag(const kiln_gguf *g, const char *key, bool dflt) {
    bool b;
    return kiln_gguf_get_bool(g, key, &b) == KILN_OK ? b : dflt;
}

static kiln_err read_tokens(kiln_vocab *v, const kiln_gguf *g) {
    const kiln_gguf_kv *toks;
    kiln_err err = kiln_gguf_get_arr(g, "tokenizer.ggml.tokens", KILN_GGUF_STRING, &toks);
    if (err == KILN_ERR_NOT_FOUND)
        return kiln_errf(KILN_ERR_NOT_FOUND, "vocab: no tokenizer.ggml.tokens in the file");
    if (err)
        return kiln_errf(KILN_ERR_FORMAT, "vocab: tokenizer.ggml.tokens is not a string array");
    if (toks->v.arr.n == 0 || toks->v.arr.n > (1u << 24))
        return kiln_errf(KILN_ERR_FORMAT, "vocab: %llu tokens (expected 1 to 16777216)",
                         (unsigned long long)toks->v.arr.n);
    v->n_tokens = (int32_t)toks->v.arr.n;
    size_t total = 0;
    for (int32_t i = 0; i < v->n_tokens; i++) {
        kiln_gguf_str s = kiln_gguf_arr_str(toks, (uint64_t)i);
        if (s.len > 65536)
            return kiln_errf(KILN_ERR_FORMAT, "vocab: token %d is %llu bytes long", i,
                             (unsigned long long)s.len);
        total += s.len;
    }
    if (total > UINT32_MAX / 2) return kiln_errf(KILN_ERR_FORMAT, "vocab: token texts too large");
    size_t n1 = (size_t)v->n_tokens + 1;
    v->text_pool = kiln_malloc(total ? total : 1);
    v->text_off = kiln_malloc(n1 * sizeof(uint32_t));
    v->scores = kiln_calloc((size_t)v->n_tokens, sizeof(float));
    v->ttype = kiln_malloc((size_t)v->n_tokens);
    v->eog = kiln_calloc((size_t)v->n_tokens, 1);
    if (!v->text_pool || !v->text_off || !v->scores || !v->ttype || !v->eog)
        return kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory for %d tokens", v->n_tokens);
    uint32_t k = 0;
    for (int32_t i = 0; i < v->n_tokens; i++) {
        kiln_gguf_str s = kiln_gguf_arr_str(toks, (uint64_t)i);
        v->text_off[i] = k;
        memcpy(v->text_pool + k, s.p, s.len);
        k += (uint32_t)s.len;
    }
    v->text_off[v->n_tokens] = k;

    const kiln_gguf_kv *kv = kiln_gguf_find(g, "tokenizer.ggml.scores");
    if (kv) {
        if (kv->type != KILN_GGUF_ARRAY || kv->v.arr.n != (uint64_t)v->n_tokens ||
            (kv->v.arr.type != KILN_GGUF_FLOAT32 && kv->v.arr.type != KILN_GGUF_FLOAT64))
            return kiln_errf(KILN_ERR_FORMAT, "vocab: tokenizer.ggml.scores must be %d floats",
                             v->n_tokens);
        for (int32_t i = 0; i < v->n_tokens; i++)
            v->scores[i] = (float)kiln_gguf_arr_f64(kv, (uint64_t)i);
    }
    kv = kiln_gguf_find(g, "tokenizer.ggml.token_type");
    if (kv) {
        if (kv->type != KILN_GGUF_ARRAY || kv->v.arr.n != (uint64_t)v->n_tokens ||
            kv->v.arr.type == KILN_GGUF_STRING || kv->v.arr.type == KILN_GGUF_ARRAY ||
            kv->v.arr.type == KILN_GGUF_FLOAT32 || kv->v.arr.type == KILN_GGUF_FLOAT64)
            return kiln_errf(KILN_ERR_FORMAT,
                             "vocab: tokenizer.ggml.token_type must be %d integers", v->n_tokens);
        for (int32_t i = 0; i < v->n_tokens; i++) {
            int64_t t = kiln_gguf_arr_i64(kv, (uint64_t)i);
            v->ttype[i] = (t > 0 && t < KILN_TOKEN_TYPE_COUNT) ? (uint8_t)t : KILN_TOKEN_NORMAL;
        }
    } else {
        memset(v->ttype, KILN_TOKEN_NORMAL, (size_t)v->n_tokens);
    }
    return KILN_OK;
}

kiln_err kiln_vocab_load(const kiln_gguf *g, kiln_vocab **out) {
    *out = NULL;
    kiln_vocab *v = kiln_calloc(1, sizeof(*v));
    if (!v) return kiln_errf(KILN_ERR_NOMEM, "vocab: out of memory");
    kiln_err err;
    kiln_gguf_str model;
    if (kiln_gguf_get_str(g, "tokenizer.ggml.model", &model) != KILN_OK) {
        err = kiln_errf(KILN_ERR_NOT_FOUND, "vocab: no tokenizer.ggml.model in the file");
        goto fail;
    }
    if (kiln_gguf_str_eq(model, "llama")) {
        v->type = KILN_VOCAB_SPM;
    } else if (kiln_gguf_str_eq(model, "gpt2")) {
        v->type = KILN_VOCAB_BPE;
    } else {
        err = kiln_errf(KILN_ERR_UNSUPPORTED,
                        "vocab: tokenizer model '%.*s' is not supported "
                        "(only 'llama' and 'gpt2')",
                        (int)KILN_MIN(model.len, 64), model.p);
        goto fail;
    }
    kiln_gguf_str pre = {"default", 7};
    (void)kiln_gguf_get_str(g, "tokenizer.ggml.pre", &pre);
    if (pre.len >= sizeof(v->pre)) {
        err = kiln_errf(KILN_ERR_UNSUPPORTED, "vocab: pre-tokenizer name too long");
        goto fail;
    }
    if (v->type == KILN_VOCAB_BPE) memcpy(v->pre, pre.p, pre.len);

    if ((err = read_tokens(v, g)) != KILN_OK) goto fail;
    int32_t n = v->n_tokens;
    if ((err = table_new((uint32_t)n, &v->hash, &v->hash_mask)) != KILN_OK) goto fail;
    for (int32_t id = 0; id < n; id++) table_insert(v, v->hash, v->hash_mask, id);

    bool spm = v->type == KILN_VOCAB_SPM;
    v->bos = get_id(g, "tokenizer.ggml.bos_token_id", n, spm && n > 1 ? 1 : -1);
    v->eos = get_id(g, "tokenizer.ggml.eos_token_id", n, spm && n > 2 ? 2 : -1);
    v->unk = get_id(g, "tokenizer.ggml.unknown_token_id", n, spm ? 0 : -1);
    v->pad = get_id(g, "tokenizer.ggml.padding_token_id", n, -1);
    v->eot = get_id(g, "tokenizer.ggml.eot_token_id", n, -1);
    v->eom = get_id(g, "tokenizer.ggml.eom_token_id", n, -1);
    v->add_space_prefix = get_flag(g, "tokenizer.ggml.add_space_prefix", spm);
    v->add_eos = get_flag(g, "tokenizer.ggml.add_eos_token", false);

    const pre_def *pd = NULL;
    if (!spm) {
        pd = pre_lookup(v->pre);
        if (!pd) {
            err = kiln_errf(KILN_ERR_UNSUPPORTED, "vocab: pre-tokenizer '%s' is not supported",
                            v->pre);
            goto fail;
        }
        v->nfc = pd->nfc;
        v->ignore_merges = pd->ignore_merges;
    }
    v->add_bos = get_flag(g, "tokenizer.ggml.add_bos_token", spm ? true : pd->add_bos);

    /* without types, the special ids still must not be produced from plain text */
    if (!kiln_gguf_find(g, "tokenizer.ggml.token_type")) {
        int32_t sp[] = {v->bos, v->eos, v->eot, v->eom, v->pad};
        for (size_t i = 0; i < KILN_ARRAY_LEN(sp); i++)
            if (sp[i] >= 0) v->ttype[sp[i]] = KILN_TOKEN_CONTROL;
        if (v->unk >= 0) v->ttype[v->unk] = KILN_TOKEN_UNKNOWN;
    }

    for (int b = 0; b < 256; b++) {
        char buf[8];
        size_t len;
        if (spm) {
            len = (size_t)snprintf(buf, sizeof(buf), "<0x%02X>", b);
        } else {
            len = cp_to_utf8(byte_to_cp((uint8_t)b), buf);
        }
        v->byte_tok[b] = kiln_tok_table_find(v, v->hash, v->hash_mask, buf, len);
        if (spm && v->byte_tok[b] >= 0 && !kiln_gguf_find(g, "tokenizer.ggml.token_type"))
            v->ttype[v->byte_tok[b]] = KILN_TOKEN_BYTE;
    }

    /* end of generation: eos/eot/eom and the end-of-turn texts of known chat formats */
    int32_t ends[] = {v->eos, v->eot, v->eom};
    for (size_t i = 0; i < KILN_ARRAY_LEN(ends); i++)
        if (ends[i] >= 0) v->eog[ends[i]] = 1;
    for (size_t i = 0; i < KILN_ARRAY_LEN(eog_texts); i++) {
        int32_t id =
            kiln_tok_table_find(v, v->hash, v->hash_mask, eog_texts[i], strlen(eog_texts[i]));
        if (id >= 0 && v->ttype[id] != KILN_TOKEN_NORMAL && v->ttype[id] != KILN_TOKEN_BYTE)
            v->eog[id] = 1;
    }
    for (size_t i = 0; i < KILN_ARRAY_LEN(eot_texts) && v->eot < 0; i++) {
        int32_t id =
            kiln_tok_table_find(v, v->hash, v->hash_mask, eot_texts[i], strlen(eot_texts[i]));
        if (id >= 0 && v->ttype[id] != KILN_TOKEN_NORMAL && v->ttype[id] != KILN_TOKEN_BYTE) {
            v->eot = id;
            v->eog[id] = 1;
        }
    }

    if ((err = build_special(v)) != KILN_OK) goto fail;
    if ((err = build_pieces(v)) != KILN_OK) goto fail;
    if (!spm) {
        if ((err = build_merges(v, g)) != KILN_OK) goto fail;
        if ((err = compile_regexes(v, pd)) != KILN_OK) goto fail;
    }
    *out = v;
    return KILN_OK;
fail:
    kiln_vocab_free(v);
    return err;
}

void kiln_vocab_free(kiln_vocab *v) {
    if (!v) return;
    for (int i = 0; i < v->n_regex; i++) pcre2_code_free(v->regex[i]);
    pcre2_general_context_free(v->gc);
    kiln_free(v->text_pool);
    kiln_free(v->text_off);
    kiln_free(v->scores);
    kiln_free(v->ttype);
    kiln_free(v->hash);
    kiln_free(v->piece_pool);
    kiln_free(v->piece_off);
    kiln_free(v->special_hash);
    kiln_free(v->special_lens);
    kiln_free(v->merges);
    kiln_free(v->eog);
    kiln_free(v);
}

/* ---- accessors ---- */
kiln_vocab_type kiln_vocab_get_type(const kiln_vocab *v) { return v->type; }
const char *kiln_vocab_pre(const kiln_vocab *v) { return v->pre; }
int32_t kiln_vocab_n_tokens(const kiln_vocab *v) { return v->n_tokens; }
int32_t kiln_vocab_bos(const kiln_vocab *v) { return v->bos; }
int32_t kiln_vocab_eos(const kiln_vocab *v) { return v->eos; }
int32_t kiln_vocab_eot(const kiln_vocab *v) { return v->eot; }
int32_t kiln_vocab_unk(const kiln_vocab *v) { return v->unk; }
int32_t kiln_vocab_pad(const kiln_vocab *v) { return v->pad; }
bool kiln_vocab_add_bos(const kiln_vocab *v) { return v->add_bos && v->bos >= 0; }
bool kiln_vocab_add_eos(const kiln_vocab *v) { return v->add_eos && v->eos >= 0; }

bool kiln_vocab_is_eog(const kiln_vocab *v, int32_t id) {
    return id >= 0 && id < v->n_tokens && v->eog[id];
}

bool kiln_vocab_is_control(const kiln_vocab *v, int32_t id) {
    return id >= 0 && id < v->n_tokens && v->ttype[id] == KILN_TOKEN_CONTROL;
}

kiln_token_type kiln_vocab_token_type(const kiln_vocab *v, int32_t id) {
    if (id < 0 || id >= v->n_tokens) return KILN_TOKEN_UNDEFINED;
    return (kiln_token_type)v->ttype[id];
}

const char *kiln_vocab_token_text(const kiln_vocab *v, int32_t id, size_t *len) {
    if (id < 0 || id >= v->n_tokens) {
        *len = 0;
        return NULL;
    }
    return tok_text(v, id, len);
}

int32_t kiln_vocab_find(const kiln_vocab *v, const char *text, size_t len) {
    return kiln_tok_table_find(v, v->hash, v->hash_mask, text, len);
}

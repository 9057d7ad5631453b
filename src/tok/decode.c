/* decode.c: token ids -> text. Pieces are precomputed at load (vocab.c); here they are glued,
 * the SPM dummy-prefix space is dropped, and bytes are assembled into complete UTF-8 characters:
 * a split character is held until its last byte arrives, a sequence proven invalid becomes one
 * U+FFFD per maximal invalid subpart (Unicode's recommended practice, as String::from_utf8_lossy).
 * Thread: the vocab is only read; a kiln_detok belongs to its caller. */
#include <string.h>

#include "tok/tok_int.h"

static const char replacement[3] = {(char)0xef, (char)0xbf, (char)0xbd}; /* U+FFFD */

static bool is_special_piece(uint8_t t) {
    return t == KILN_TOKEN_CONTROL || t == KILN_TOKEN_UNKNOWN;
}

static const char *piece(const kiln_vocab *v, int32_t id, bool render_special, size_t *len) {
    if (is_special_piece(v->ttype[id]) && !render_special) {
        *len = 0;
        return "";
    }
    *len = v->piece_off[id + 1] - v->piece_off[id];
    return v->piece_pool + v->piece_off[id];
}

kiln_err kiln_tok_piece(const kiln_vocab *v, int32_t id, bool render_special, kiln_buf *out) {
    if (id < 0 || id >= v->n_tokens)
        return kiln_errf(KILN_ERR_INVALID, "token id %d out of range [0, %d)", id, v->n_tokens);
    size_t n;
    const char *p = piece(v, id, render_special, &n);
    if (n == 0) return KILN_OK;
    return kiln_buf_append(out, p, n);
}

/* Bounds of the byte after a prefix of a UTF-8 sequence: the first continuation byte depends
 * on the lead (no overlongs, no surrogates, nothing above U+10FFFF). */
static void cont_range(const uint8_t *held, uint8_t n_held, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xbf;
    if (n_held != 1) return;
    switch (held[0]) {
    case 0xe0: *lo = 0xa0; break;
    case 0xed: *hi = 0x9f; break;
    case 0xf0: *lo = 0x90; break;
    case 0xf4: *hi = 0x8f; break;
    default: break;
    }
}

static size_t seq_len(uint8_t lead) {
    if (lead < 0x80) return 1;
    if (lead >= 0xc2 && lead <= 0xdf) return 2;
    if (lead >= 0xe0 && lead <= 0xef) return 3;
    if (lead >= 0xf0 && lead <= 0xf4) return 4;
    return 0; /* never valid as a lead */
}

/* Feeds bytes p[0..n) through the UTF-8 assembler of d, appending complete characters. */
static kiln_err feed(kiln_detok *d, const char *p, size_t n, kiln_buf *out) {
    kiln_err err;
    size_t run = 0; /* start of a pending run of complete ASCII/characters to copy at once */
    size_t i = 0;
    while (i < n) {
        uint8_t c = (uint8_t)p[i];
        if (d->n_held == 0) {
            size_t l = seq_len(c);
            if (l == 1) {
                i++;
                continue;
            }
            /* flush the run before this lead */
            if (i > run && (err = kiln_buf_append(out, p + run, i - run)) != KILN_OK) return err;
            if (l == 0) {
                if ((err = kiln_buf_append(out, replacement, 3)) != KILN_OK) return err;
                i++;
                run = i;
                continue;
            }
            d->held[d->n_held++] = c;
            i++;
            run = i;
            continue;
        }
        uint8_t lo, hi;
        cont_range(d->held, d->n_held, &lo, &hi);
        if (c < lo || c > hi) {
            /* the held prefix is a maximal invalid subpart; c starts over */
            d->n_held = 0;
            if ((err = kiln_buf_append(out, replacement, 3)) != KILN_OK) return err;
            run = i;
            continue;
        }
        d->held[d->n_held++] = c;
        i++;
        run = i;
        if (d->n_held == seq_len(d->held[0])) {
            err = kiln_buf_append(out, (const char *)d->held, d->n_held);
            d->n_held = 0;
            if (err) return err;
        }
    }
    if (i > run) return kiln_buf_append(out, p + run, i - run);
    return KILN_OK;
}

void kiln_detok_init(kiln_detok *d, const kiln_vocab *v, bool skip_special,
                     bool strip_leading_space) {
    memset(d, 0, sizeof(*d));
    d->vocab = v;
    d->skip_special = skip_special;
    d->strip_pending = strip_leading_space && v->type == KILN_VOCAB_SPM && v->add_space_prefix;
}

kiln_err kiln_detok_push(kiln_detok *d, int32_t id, kiln_buf *out) {
    const kiln_vocab *v = d->vocab;
    if (id < 0 || id >= v->n_tokens)
        return kiln_errf(KILN_ERR_INVALID, "token id %d out of range [0, %d)", id, v->n_tokens);
    size_t n;
    const char *p = piece(v, id, !d->skip_special, &n);
    if (n == 0) return KILN_OK;
    if (d->strip_pending) {
        d->strip_pending = false;
        if (p[0] == ' ') {
            p++;
            n--;
        }
    }
    /* make room first so that a failed append cannot leave the state half-updated */
    kiln_err err = kiln_buf_reserve(out, 3 * (n + d->n_held + 1));
    if (err) return err;
    return feed(d, p, n, out);
}

kiln_err kiln_detok_flush(kiln_detok *d, kiln_buf *out) {
    kiln_err err = KILN_OK;
    if (d->n_held) {
        d->n_held = 0;
        err = kiln_buf_append(out, replacement, 3);
    }
    d->strip_pending = false;
    return err;
}

kiln_err kiln_tok_decode(const kiln_vocab *v, const int32_t *ids, size_t n, bool skip_special,
                         kiln_buf *out) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= v->n_tokens)
            return kiln_errf(KILN_ERR_INVALID, "token id %d (at %zu) out of range [0, %d)", ids[i],
                             i, v->n_tokens);
    kiln_detok d;
    kiln_detok_init(&d, v, skip_special, true);
    for (size_t i = 0; i < n; i++) {
        kiln_err err = kiln_detok_push(&d, ids[i], out);
        if (err) return err;
    }
    return kiln_detok_flush(&d, out);
}

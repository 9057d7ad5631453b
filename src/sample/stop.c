/* stop.c: stop strings over streamed text. One KMP automaton per stop string follows the stream
 * byte by byte: state[i] is the longest prefix of stop i that ends the text so far. Invariants: no
 * released byte belongs to a possible match (everything from the longest partial match on is held);
 * released text never ends inside a UTF-8 character. Thread: the owner of the matcher (engine). */
#include "sample/sample.h"

#include <string.h>

/* Length of the UTF-8 sequence led by byte b (1 for ASCII and for bytes that cannot lead). */
static size_t utf8_len(unsigned char b) {
    if (b < 0xc2) return 1;
    if (b < 0xe0) return 2;
    if (b < 0xf0) return 3;
    if (b < 0xf5) return 4;
    return 1;
}

static bool utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char b = s[i];
        size_t len = utf8_len(b);
        if (len == 1) {
            if (b >= 0x80) return false;
            i++;
            continue;
        }
        if (i + len > n) return false;
        for (size_t j = 1; j < len; j++)
            if ((s[i + j] & 0xc0) != 0x80) return false;
        if (b == 0xe0 && s[i + 1] < 0xa0) return false; /* overlong */
        if (b == 0xed && s[i + 1] >= 0xa0) return false; /* surrogates */
        if (b == 0xf0 && s[i + 1] < 0x90) return false; /* overlong */
        if (b == 0xf4 && s[i + 1] >= 0x90) return false; /* > U+10FFFF */
        i += len;
    }
    return true;
}

/* Largest c' <= cut such that s[0..c') does not end inside a UTF-8 sequence that s[0..cut) leaves
 * incomplete. Bytes that cannot belong to a sequence count as single characters. */
static size_t utf8_safe_cut(const char *text, size_t cut) {
    const unsigned char *s = (const unsigned char *)text;
    for (size_t back = 1; back <= 4 && back <= cut; back++) {
        unsigned char b = s[cut - back];
        if ((b & 0xc0) == 0x80) continue; /* continuation: keep looking for its lead */
        size_t len = utf8_len(b);
        return len > back ? cut - back : cut;
    }
    return cut;
}

kiln_err kiln_stop_matcher_init(kiln_stop_matcher *m, const char *const *stops, const size_t *lens,
                                int32_t n_stops, bool include_stop_str_in_output) {
    memset(m, 0, sizeof(*m));
    kiln_buf_init(&m->pending);
    m->i_matched = -1;
    m->include_stop = include_stop_str_in_output;
    if (n_stops < 0 || n_stops > KILN_STOP_MAX_STRINGS)
        return kiln_errf(KILN_ERR_INVALID, "stop: at most %d stop strings, got %d",
                         KILN_STOP_MAX_STRINGS, (int)n_stops);
    if (n_stops == 0) return KILN_OK;
    for (int32_t i = 0; i < n_stops; i++) {
        size_t len = lens ? lens[i] : strlen(stops[i]);
        if (len == 0) return kiln_errf(KILN_ERR_INVALID, "stop: stop string %d is empty", (int)i);
        if (len > KILN_STOP_MAX_BYTES)
            return kiln_errf(KILN_ERR_INVALID, "stop: stop string %d is longer than %d bytes",
                             (int)i, KILN_STOP_MAX_BYTES);
        if (!utf8_valid((const unsigned char *)stops[i], len))
            return kiln_errf(KILN_ERR_INVALID, "stop: stop string %d is not valid UTF-8", (int)i);
    }
    m->stops = kiln_calloc((size_t)n_stops, sizeof(*m->stops));
    m->lens = kiln_calloc((size_t)n_stops, sizeof(*m->lens));
    m->fail = kiln_calloc((size_t)n_stops, sizeof(*m->fail));
    m->state = kiln_calloc((size_t)n_stops, sizeof(*m->state));
    if (!m->stops || !m->lens || !m->fail || !m->state) goto out_nomem;
    m->n_stops = n_stops;
    for (int32_t i = 0; i < n_stops; i++) {
        size_t len = m->lens[i] = lens ? lens[i] : strlen(stops[i]);
        m->stops[i] = kiln_strndup(stops[i], len);
        m->fail[i] = kiln_calloc(len, sizeof(uint16_t));
        if (!m->stops[i] || !m->fail[i]) goto out_nomem;
        /* fail[j]: length of the longest proper prefix of stop[0..j] that is also its suffix */
        const char *t = m->stops[i];
        size_t k = 0;
        for (size_t j = 1; j < len; j++) {
            while (k > 0 && t[j] != t[k]) k = m->fail[i][k - 1];
            if (t[j] == t[k]) k++;
            m->fail[i][j] = (uint16_t)k;
        }
    }
    return KILN_OK;
out_nomem:
    kiln_stop_matcher_deinit(m);
    return kiln_errf(KILN_ERR_NOMEM, "stop: out of memory");
}

void kiln_stop_matcher_deinit(kiln_stop_matcher *m) {
    for (int32_t i = 0; i < m->n_stops; i++) {
        if (m->stops) kiln_free(m->stops[i]);
        if (m->fail) kiln_free(m->fail[i]);
    }
    kiln_free(m->stops);
    kiln_free(m->lens);
    kiln_free(m->fail);
    kiln_free(m->state);
    kiln_buf_deinit(&m->pending);
    m->stops = NULL;
    m->lens = NULL;
    m->fail = NULL;
    m->state = NULL;
    m->n_stops = 0;
}

/* Drops the bytes released by the previous call from the front of pending. */
static void drop_released(kiln_stop_matcher *m) {
    if (m->n_released == 0) return;
    size_t rest = m->pending.len - m->n_released;
    memmove(m->pending.data, m->pending.data + m->n_released, rest);
    m->pending.len = rest;
    m->pending.data[rest] = '\0';
    m->n_released = 0;
}

kiln_err kiln_stop_matcher_feed(kiln_stop_matcher *m, const char *text, size_t n,
                                kiln_stop_out *out) {
    out->text = NULL;
    out->n_text = 0;
    out->i_stop = m->i_matched;
    if (m->i_matched >= 0) return KILN_OK;
    drop_released(m);
    size_t old_len = m->pending.len;
    if (n > 0) {
        kiln_err err = kiln_buf_append(&m->pending, text, n);
        if (err != KILN_OK) return err;
    }
    const char *s = m->pending.data;
    size_t len = m->pending.len;
    if (len == 0) return KILN_OK;

    /* Advance every automaton byte by byte: the first stop string to complete wins (smallest
     * end; at equal ends the longest, which started first). */
    for (size_t end = old_len + 1; end <= len; end++) {
        const char c = s[end - 1];
        int32_t best = -1;
        for (int32_t i = 0; i < m->n_stops; i++) {
            const char *t = m->stops[i];
            size_t k = m->state[i];
            while (k > 0 && t[k] != c) k = m->fail[i][k - 1];
            if (t[k] == c) k++;
            if (k == m->lens[i]) {
                if (best < 0 || m->lens[i] > m->lens[best]) best = i;
                k = m->fail[i][k - 1];
            }
            m->state[i] = k;
        }
        if (best >= 0) {
            m->i_matched = best;
            size_t start = end - m->lens[best];
            out->text = s;
            out->n_text = m->include_stop ? end : start;
            out->i_stop = best;
            m->n_released = len; /* everything else is dropped */
            return KILN_OK;
        }
    }

    /* Hold back the longest partial match (a proper prefix of some stop string). */
    size_t hold = 0;
    for (int32_t i = 0; i < m->n_stops; i++) hold = KILN_MAX(hold, m->state[i]);
    KILN_ASSERT(hold <= len);
    size_t cut = utf8_safe_cut(s, len - hold);
    out->text = s;
    out->n_text = cut;
    m->n_released = cut;
    return KILN_OK;
}

void kiln_stop_matcher_flush(kiln_stop_matcher *m, kiln_stop_out *out) {
    out->text = NULL;
    out->n_text = 0;
    out->i_stop = m->i_matched;
    if (m->i_matched >= 0) return;
    drop_released(m);
    for (int32_t i = 0; i < m->n_stops; i++) m->state[i] = 0; /* held text is gone */
    out->text = m->pending.len ? m->pending.data : NULL;
    out->n_text = m->pending.len;
    m->n_released = m->pending.len;
}

size_t kiln_stop_matcher_n_held(const kiln_stop_matcher *m) {
    if (m->i_matched >= 0) return 0;
    return m->pending.len - m->n_released;
}

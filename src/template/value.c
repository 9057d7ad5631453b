/* value.c: the template engine's values and their Python semantics: arena allocation, string
 * builders, lists and insertion-ordered dicts, truthiness, ==, ordering, str()/repr() as Python
 * prints them (single-quoted strings, True/False/None, shortest float repr), and json.dumps as
 * transformers' tojson calls it (ensure_ascii=False). Single-threaded per render. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/internal.h"

struct arena_chunk {
    arena_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void arena_init(arena *a, size_t max_bytes) {
    memset(a, 0, sizeof(*a));
    a->max_bytes = max_bytes;
}

void arena_deinit(arena *a) {
    arena_chunk *c = a->head;
    while (c) {
        arena_chunk *next = c->next;
        kiln_free(c);
        c = next;
    }
    a->head = NULL;
    a->n_bytes = 0;
}

void *arena_alloc(arena *a, size_t n) {
    size_t need = (n + 15) & ~(size_t)15;
    if (need < n) return NULL;
    arena_chunk *c = a->head;
    if (!c || c->cap - c->used < need) {
        size_t cap = need > 16384 ? need : 16384;
        size_t total;
        if (!kiln_add_size(cap, sizeof(arena_chunk), &total)) return NULL;
        if (a->max_bytes && (a->n_bytes + total > a->max_bytes || a->n_bytes + total < total)) {
            a->hit_limit = true;
            return NULL;
        }
        c = kiln_malloc(total);
        if (!c) return NULL;
        c->cap = cap;
        c->used = 0;
        a->n_bytes += total;
        if (need > 4096 && a->head) {
            /* a big block gets its own chunk behind the current one, so the current chunk's free
             * space stays usable */
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
        }
    }
    void *p = c->data + c->used;
    c->used += need;
    memset(p, 0, n);
    return p;
}

char *arena_strndup(arena *a, const char *s, size_t n) {
    char *p = arena_alloc(a, n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ---- string builder ---- */
void sb_init(sbuf *b, arena *a, size_t max) {
    b->a = a;
    b->p = NULL;
    b->n = b->cap = 0;
    b->max = max;
    b->failed = b->over = b->too_deep = false;
}

static bool sb_grow(sbuf *b, size_t extra) {
    size_t need;
    if (b->failed) return false;
    if (!kiln_add_size(b->n, extra, &need) || (b->max && need > b->max)) {
        b->failed = b->over = true;
        return false;
    }
    if (need <= b->cap) return true;
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap < need) cap *= 2;
    if (b->max && cap > b->max) cap = b->max;
    char *p = arena_alloc(b->a, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    if (b->n) memcpy(p, b->p, b->n);
    b->p = p;
    b->cap = cap;
    return true;
}

bool sb_add(sbuf *b, const char *p, size_t n) {
    if (!n) return true;
    if (!sb_grow(b, n)) return false;
    memcpy(b->p + b->n, p, n);
    b->n += n;
    return true;
}

bool sb_addc(sbuf *b, char c) { return sb_add(b, &c, 1); }

bool sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return false;
    }
    if ((size_t)n < sizeof tmp) return sb_add(b, tmp, (size_t)n);
    if (!sb_grow(b, (size_t)n + 1)) return false;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
    return true;
}

tval sb_val(sbuf *b) { return tv_str(b->p ? b->p : "", b->n); }

/* ---- containers ---- */
tlist *tl_new(arena *a, size_t cap) {
    tlist *l = arena_alloc(a, sizeof(*l));
    if (!l) return NULL;
    if (cap) {
        size_t bytes;
        if (!kiln_mul_size(cap, sizeof(tval), &bytes)) return NULL;
        l->items = arena_alloc(a, bytes);
        if (!l->items) return NULL;
        l->cap = cap;
    }
    return l;
}

bool tl_push(arena *a, tlist *l, tval v) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4, bytes;
        if (!kiln_mul_size(cap, sizeof(tval), &bytes)) return false;
        tval *items = arena_alloc(a, bytes);
        if (!items) return false;
        if (l->n) memcpy(items, l->items, l->n * sizeof(tval));
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n++] = v;
    return true;
}

tdict *td_new(arena *a, size_t cap) {
    tdict *d = arena_alloc(a, sizeof(*d));
    if (!d) return NULL;
    if (cap) {
        size_t bytes;
        if (!kiln_mul_size(cap, sizeof(tval), &bytes)) return NULL;
        d->keys = arena_alloc(a, bytes);
        d->vals = arena_alloc(a, bytes);
        if (!d->keys || !d->vals) return NULL;
        d->cap = cap;
    }
    return d;
}

tval *td_get(const tdict *d, tval k) {
    for (size_t i = 0; i < d->n; i++)
        if (tv_equal(d->keys[i], k)) return &d->vals[i];
    return NULL;
}

tval *td_get_s(const tdict *d, const char *k, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->keys[i].t == TV_STR && d->keys[i].s.n == n && !memcmp(d->keys[i].s.p, k, n))
            return &d->vals[i];
    return NULL;
}

bool td_set(arena *a, tdict *d, tval k, tval v) {
    tval *slot = td_get(d, k);
    if (slot) {
        *slot = v;
        return true;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4, bytes;
        if (!kiln_mul_size(cap, sizeof(tval), &bytes)) return false;
        tval *keys = arena_alloc(a, bytes), *vals = arena_alloc(a, bytes);
        if (!keys || !vals) return false;
        if (d->n) {
            memcpy(keys, d->keys, d->n * sizeof(tval));
            memcpy(vals, d->vals, d->n * sizeof(tval));
        }
        d->keys = keys;
        d->vals = vals;
        d->cap = cap;
    }
    d->keys[d->n] = k;
    d->vals[d->n] = v;
    d->n++;
    return true;
}

/* ---- Python semantics ---- */
bool tv_truthy(tval v) {
    switch (v.t) {
    case TV_UNDEF:
    case TV_NONE: return false;
    case TV_BOOL: return v.b;
    case TV_INT: return v.i != 0;
    case TV_FLOAT: return v.f != 0.0;
    case TV_STR: return v.s.n != 0;
    case TV_LIST: return tl_is_generator(v.l) || v.l->n != 0;
    case TV_DICT: return v.d->n != 0;
    default: return true;
    }
}

bool tl_is_generator(const tlist *l) {
    return l->iter_type && strncmp(l->iter_type, "dict_", 5) != 0;
}

static bool is_num(tval v) { return v.t == TV_INT || v.t == TV_FLOAT || v.t == TV_BOOL; }
static double num_f(tval v) {
    return v.t == TV_FLOAT ? v.f : v.t == TV_INT ? (double)v.i : (double)v.b;
}

#define MAX_VALUE_DEPTH 256

static bool equal_d(tval a, tval b, int depth) {
    if (is_num(a) && is_num(b)) {
        if (a.t == TV_FLOAT || b.t == TV_FLOAT) return num_f(a) == num_f(b);
        int64_t x = a.t == TV_INT ? a.i : a.b, y = b.t == TV_INT ? b.i : b.b;
        return x == y;
    }
    if (a.t != b.t || depth > MAX_VALUE_DEPTH) return false;
    switch (a.t) {
    case TV_UNDEF:
    case TV_NONE: return true;
    case TV_STR: return a.s.n == b.s.n && !memcmp(a.s.p, b.s.p, a.s.n);
    case TV_LIST:
        if (a.l->iter_type || b.l->iter_type) return a.l == b.l;
        if (a.l->tuple != b.l->tuple || a.l->n != b.l->n) return false;
        for (size_t i = 0; i < a.l->n; i++)
            if (!equal_d(a.l->items[i], b.l->items[i], depth + 1)) return false;
        return true;
    case TV_DICT:
        if (a.d->n != b.d->n) return false;
        for (size_t i = 0; i < a.d->n; i++) {
            tval *o = td_get(b.d, a.d->keys[i]);
            if (!o || !equal_d(a.d->vals[i], *o, depth + 1)) return false;
        }
        return true;
    case TV_NS: return a.d == b.d;
    case TV_MACRO: return a.m == b.m;
    case TV_FUNC: return a.fn == b.fn;
    case TV_LOOP: return a.loop == b.loop;
    default: return false;
    }
}

bool tv_equal(tval a, tval b) { return equal_d(a, b, 0); }

static int compare_d(tval a, tval b, bool *ok, int depth) {
    *ok = depth <= MAX_VALUE_DEPTH;
    if (!*ok) return 0;
    if (is_num(a) && is_num(b)) {
        if (a.t == TV_FLOAT || b.t == TV_FLOAT) {
            double x = num_f(a), y = num_f(b);
            return x < y ? -1 : x > y ? 1 : 0;
        }
        int64_t x = a.t == TV_INT ? a.i : a.b, y = b.t == TV_INT ? b.i : b.b;
        return x < y ? -1 : x > y ? 1 : 0;
    }
    if (a.t == TV_STR && b.t == TV_STR) {
        size_t n = KILN_MIN(a.s.n, b.s.n);
        int c = memcmp(a.s.p, b.s.p, n);
        if (c) return c < 0 ? -1 : 1;
        return a.s.n < b.s.n ? -1 : a.s.n > b.s.n ? 1 : 0;
    }
    if (a.t == TV_LIST && b.t == TV_LIST && a.l->tuple == b.l->tuple) {
        size_t n = KILN_MIN(a.l->n, b.l->n);
        for (size_t i = 0; i < n; i++) {
            if (equal_d(a.l->items[i], b.l->items[i], depth + 1)) continue;
            return compare_d(a.l->items[i], b.l->items[i], ok, depth + 1);
        }
        return a.l->n < b.l->n ? -1 : a.l->n > b.l->n ? 1 : 0;
    }
    *ok = false;
    return 0;
}

int tv_compare(tval a, tval b, bool *ok) { return compare_d(a, b, ok, 0); }

const char *tv_type_name(tval v) {
    switch (v.t) {
    case TV_UNDEF: return "Undefined";
    case TV_NONE: return "NoneType";
    case TV_BOOL: return "bool";
    case TV_INT: return "int";
    case TV_FLOAT: return "float";
    case TV_STR: return v.safe ? "Markup" : "str";
    case TV_LIST: return v.l->iter_type ? v.l->iter_type : v.l->tuple ? "tuple" : "list";
    case TV_DICT: return "dict";
    case TV_NS: return "Namespace";
    case TV_MACRO: return "Macro";
    case TV_FUNC: return v.fn->self.t != TV_UNDEF ? "builtin_function_or_method" : "function";
    case TV_LOOP: return "LoopContext";
    default: return "object";
    }
}

/* Python float repr: the shortest digits that round-trip, in fixed notation for exponents in
 * [-4, 16) and scientific otherwise, always with a '.0' or an exponent. */
void fmt_float(char *buf, size_t cap, double f) {
    if (isnan(f)) {
        snprintf(buf, cap, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, cap, f < 0 ? "-inf" : "inf");
        return;
    }
    char digits[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(digits, sizeof digits, "%.*e", prec - 1, f);
        if (strtod(digits, NULL) == f) break;
    }
    /* digits = [-]d[.ddd]e[+-]XX */
    char mant[32];
    int mn = 0, exp10;
    bool neg = false;
    const char *p = digits;
    if (*p == '-') {
        neg = true;
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p != '.') mant[mn++] = *p;
    mant[mn] = 0;
    exp10 = atoi(p + 1);
    while (mn > 1 && mant[mn - 1] == '0') mant[--mn] = 0;
    char *o = buf;
    size_t left = cap;
#define PUT(c)                                                                                 \
    do {                                                                                       \
        if (left > 1) {                                                                        \
            *o++ = (c);                                                                        \
            left--;                                                                            \
        }                                                                                      \
    } while (0)
    if (neg) PUT('-');
    if (exp10 >= 16 || exp10 < -4) {
        PUT(mant[0]);
        if (mn > 1) {
            PUT('.');
            for (int i = 1; i < mn; i++) PUT(mant[i]);
        }
        char e[16];
        snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        for (char *q = e; *q; q++) PUT(*q);
    } else if (exp10 < 0) {
        PUT('0');
        PUT('.');
        for (int i = 0; i < -exp10 - 1; i++) PUT('0');
        for (int i = 0; i < mn; i++) PUT(mant[i]);
    } else {
        for (int i = 0; i <= exp10; i++) PUT(i < mn ? mant[i] : '0');
        PUT('.');
        if (mn > exp10 + 1)
            for (int i = exp10 + 1; i < mn; i++) PUT(mant[i]);
        else
            PUT('0');
    }
    *o = 0;
#undef PUT
}

/* Python repr of a str: single quotes unless the text has ' and no ". Non-ASCII is kept. */
static bool str_repr(sbuf *b, const char *p, size_t n) {
    bool has_sq = memchr(p, '\'', n) != NULL, has_dq = memchr(p, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    if (!sb_addc(b, q)) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        bool ok;
        if (c == (unsigned char)q || c == '\\') {
            char e[2] = {'\\', (char)c};
            ok = sb_add(b, e, 2);
        } else if (c == '\n') {
            ok = sb_add(b, "\\n", 2);
        } else if (c == '\r') {
            ok = sb_add(b, "\\r", 2);
        } else if (c == '\t') {
            ok = sb_add(b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            ok = sb_printf(b, "\\x%02x", c);
        } else if (c == 0xc2 && i + 1 < n && (unsigned char)p[i + 1] >= 0x80 &&
                   (unsigned char)p[i + 1] <= 0xa0) {
            /* U+0080..U+00A0 are not printable for Python */
            ok = sb_printf(b, "\\x%02x", (unsigned char)p[i + 1]);
            i++;
        } else {
            ok = sb_addc(b, (char)c);
        }
        if (!ok) return false;
    }
    return sb_addc(b, q);
}

static bool to_str_d(sbuf *b, tval v, bool is_repr, int depth);

bool tv_to_str(sbuf *b, tval v, bool is_repr) { return to_str_d(b, v, is_repr, 0); }

static bool to_str_d(sbuf *b, tval v, bool is_repr, int depth) {
    char tmp[64];
    if (depth > MAX_VALUE_DEPTH) {
        b->failed = b->too_deep = true;
        return false;
    }
    switch (v.t) {
    case TV_UNDEF: return !is_repr || sb_adds(b, "Undefined");
    case TV_NONE: return sb_adds(b, "None");
    case TV_BOOL: return sb_adds(b, v.b ? "True" : "False");
    case TV_INT: return sb_printf(b, "%lld", (long long)v.i);
    case TV_FLOAT:
        fmt_float(tmp, sizeof tmp, v.f);
        return sb_adds(b, tmp);
    case TV_STR:
        if (!is_repr) return sb_add(b, v.s.p, v.s.n);
        if (v.safe) return sb_adds(b, "Markup(") && str_repr(b, v.s.p, v.s.n) && sb_addc(b, ')');
        return str_repr(b, v.s.p, v.s.n);
    case TV_LIST: {
        if (tl_is_generator(v.l)) return sb_printf(b, "<%s object at 0x7f0000000000>", v.l->iter_type);
        if (v.l->iter_type && !sb_printf(b, "%s(", v.l->iter_type)) return false;
        if (!sb_addc(b, v.l->tuple ? '(' : '[')) return false;
        for (size_t i = 0; i < v.l->n; i++) {
            if (i && !sb_add(b, ", ", 2)) return false;
            if (!to_str_d(b, v.l->items[i], true, depth + 1)) return false;
        }
        if (v.l->tuple && v.l->n == 1 && !sb_addc(b, ',')) return false;
        if (!sb_addc(b, v.l->tuple ? ')' : ']')) return false;
        return !v.l->iter_type || sb_addc(b, ')');
    }
    case TV_DICT: {
        if (!sb_addc(b, '{')) return false;
        for (size_t i = 0; i < v.d->n; i++) {
            if (i && !sb_add(b, ", ", 2)) return false;
            if (!to_str_d(b, v.d->keys[i], true, depth + 1) || !sb_add(b, ": ", 2) ||
                !to_str_d(b, v.d->vals[i], true, depth + 1))
                return false;
        }
        return sb_addc(b, '}');
    }
    case TV_NS: {
        if (!sb_adds(b, "<Namespace {")) return false;
        for (size_t i = 0; i < v.d->n; i++) {
            if (i && !sb_add(b, ", ", 2)) return false;
            if (!to_str_d(b, v.d->keys[i], true, depth + 1) || !sb_add(b, ": ", 2) ||
                !to_str_d(b, v.d->vals[i], true, depth + 1))
                return false;
        }
        return sb_adds(b, "}>");
    }
    case TV_MACRO:
        return sb_printf(b, "<Macro '%s'>", v.m->def->name ? v.m->def->name : "caller");
    case TV_FUNC: return sb_printf(b, "<built-in function %s>", v.fn->name);
    case TV_LOOP: return sb_adds(b, "<LoopContext>");
    default: return false;
    }
}

/* ---- JSON (Python json.dumps, ensure_ascii=False) ---- */
static bool json_str(sbuf *b, const char *p, size_t n) {
    if (!sb_addc(b, '"')) return false;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        const char *e = NULL;
        char ub[8];
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        default:
            if (c < 0x20) {
                snprintf(ub, sizeof ub, "\\u%04x", c);
                e = ub;
            }
        }
        if (e) {
            if (!sb_add(b, p + i - run, run) || !sb_adds(b, e)) return false;
            run = 0;
        } else {
            run++;
        }
    }
    if (!sb_add(b, p + n - run, run)) return false;
    return sb_addc(b, '"');
}

static bool json_indent(sbuf *b, const char *indent, int level) {
    if (!sb_addc(b, '\n')) return false;
    for (int i = 0; i < level; i++)
        if (!sb_adds(b, indent)) return false;
    return true;
}

typedef struct json_opts {
    const char *indent;   /* NULL: none */
    const char *item_sep, *key_sep;
    bool sort_keys;
    const char **err_type;
} json_opts;

static bool json_val(sbuf *b, tval v, const json_opts *o, int level);

static bool json_key(sbuf *b, tval k, const json_opts *o) {
    char tmp[64];
    switch (k.t) {
    case TV_STR: return json_str(b, k.s.p, k.s.n);
    case TV_INT: return sb_printf(b, "\"%lld\"", (long long)k.i);
    case TV_BOOL: return sb_adds(b, k.b ? "\"true\"" : "\"false\"");
    case TV_NONE: return sb_adds(b, "\"null\"");
    case TV_FLOAT:
        fmt_float(tmp, sizeof tmp, k.f);
        return sb_printf(b, "\"%s\"", tmp);
    default:
        *o->err_type = "keys must be str, int, float, bool or None, not tuple";
        return false;
    }
}

static int cmp_keys(const void *x, const void *y) {
    const tval *a = *(tval *const *)x, *b = *(tval *const *)y;
    bool ok;
    return tv_compare(*a, *b, &ok);
}

static bool json_val(sbuf *b, tval v, const json_opts *o, int level) {
    char tmp[64];
    if (level > MAX_VALUE_DEPTH) {
        *o->err_type = "maximum recursion depth exceeded while encoding a JSON object";
        return false;
    }
    switch (v.t) {
    case TV_NONE: return sb_adds(b, "null");
    case TV_BOOL: return sb_adds(b, v.b ? "true" : "false");
    case TV_INT: return sb_printf(b, "%lld", (long long)v.i);
    case TV_FLOAT:
        if (isnan(v.f)) return sb_adds(b, "NaN");
        if (isinf(v.f)) return sb_adds(b, v.f < 0 ? "-Infinity" : "Infinity");
        fmt_float(tmp, sizeof tmp, v.f);
        return sb_adds(b, tmp);
    case TV_STR: return json_str(b, v.s.p, v.s.n);
    case TV_LIST:
        if (v.l->iter_type) {
            *o->err_type = v.l->iter_type;
            return false;
        }
        if (!v.l->n) return sb_adds(b, "[]");
        if (!sb_addc(b, '[')) return false;
        for (size_t i = 0; i < v.l->n; i++) {
            if (i && !sb_adds(b, o->item_sep)) return false;
            if (o->indent && !json_indent(b, o->indent, level + 1)) return false;
            if (!json_val(b, v.l->items[i], o, level + 1)) return false;
        }
        if (o->indent && !json_indent(b, o->indent, level)) return false;
        return sb_addc(b, ']');
    case TV_DICT: {
        if (!v.d->n) return sb_adds(b, "{}");
        size_t n = v.d->n;
        const tval **order = arena_alloc(b->a, n * sizeof(*order));
        if (!order) return false;
        for (size_t i = 0; i < n; i++) order[i] = &v.d->keys[i];
        if (o->sort_keys) {
            for (size_t i = 0; i < n; i++)
                if (order[i]->t != v.d->keys[0].t) {
                    *o->err_type = "'<' not supported between instances of dict keys";
                    return false;
                }
            qsort(order, n, sizeof(*order), cmp_keys);
        }
        if (!sb_addc(b, '{')) return false;
        for (size_t j = 0; j < n; j++) {
            size_t i = (size_t)(order[j] - v.d->keys);
            if (j && !sb_adds(b, o->item_sep)) return false;
            if (o->indent && !json_indent(b, o->indent, level + 1)) return false;
            if (!json_key(b, v.d->keys[i], o) || !sb_adds(b, o->key_sep) ||
                !json_val(b, v.d->vals[i], o, level + 1))
                return false;
        }
        if (o->indent && !json_indent(b, o->indent, level)) return false;
        return sb_addc(b, '}');
    }
    default:
        *o->err_type = tv_type_name(v);
        return false;
    }
}

bool tv_to_json(sbuf *b, tval v, const char *indent, const char *item_sep, const char *key_sep,
                bool sort_keys, const char **err_type) {
    json_opts o = {indent, item_sep ? item_sep : (indent ? "," : ", "),
                   key_sep ? key_sep : ": ", sort_keys, err_type};
    *err_type = NULL;
    return json_val(b, v, &o, 0);
}

kiln_err tv_from_json(arena *a, const json_t *j, tval *out, int depth) {
    kiln_err err;
    if (depth > 200) return KILN_ERR_LIMIT;
    switch (json_typeof(j)) {
    case JSON_NULL: *out = tv_none(); return KILN_OK;
    case JSON_TRUE: *out = tv_bool(true); return KILN_OK;
    case JSON_FALSE: *out = tv_bool(false); return KILN_OK;
    case JSON_INTEGER: *out = tv_int((int64_t)json_integer_value(j)); return KILN_OK;
    case JSON_REAL: *out = tv_float(json_real_value(j)); return KILN_OK;
    case JSON_STRING: {
        size_t n = json_string_length(j);
        char *p = arena_strndup(a, json_string_value(j), n);
        if (!p) return KILN_ERR_NOMEM;
        *out = tv_str(p, n);
        return KILN_OK;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        tlist *l = tl_new(a, n);
        if (!l) return KILN_ERR_NOMEM;
        for (size_t i = 0; i < n; i++)
            if ((err = tv_from_json(a, json_array_get(j, i), &l->items[l->n++], depth + 1))) return err;
        out->t = TV_LIST;
        out->l = l;
        return KILN_OK;
    }
    case JSON_OBJECT: {
        tdict *d = td_new(a, json_object_size(j));
        if (!d) return KILN_ERR_NOMEM;
        const char *k;
        size_t klen;
        json_t *v;
        json_object_keylen_foreach((json_t *)j, k, klen, v) {
            char *kp = arena_strndup(a, k, klen);
            if (!kp) return KILN_ERR_NOMEM;
            d->keys[d->n] = tv_str(kp, klen);
            if ((err = tv_from_json(a, v, &d->vals[d->n], depth + 1))) return err;
            d->n++;
        }
        out->t = TV_DICT;
        out->d = d;
        return KILN_OK;
    }
    }
    return KILN_ERR_NOMEM;
}

/* builtins.c: jinja2's builtin filters and tests, the globals transformers adds (raise_exception,
 * strftime_now) plus range/namespace/dict, and the Python str/dict/list methods the sandbox
 * allows (mutating methods are "unsafe", as in ImmutableSandboxedEnvironment). Semantics and
 * error wording follow jinja2 3.1 and CPython. Thread: the render's. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "template/internal.h"

#define A(st) rs_arena(st)

/* ---- argument access ---- */
static bool arg(call_args *ca, size_t idx, const char *name, tval *out) {
    for (size_t i = 0; i < ca->n_kw; i++)
        if (name && !strcmp(ca->kw_names[i], name)) {
            *out = ca->kw_vals[i];
            return true;
        }
    if (idx < ca->n_pos) {
        *out = ca->pos[idx];
        return true;
    }
    return false;
}

static tval arg_or(call_args *ca, size_t idx, const char *name, tval dflt) {
    tval v;
    return arg(ca, idx, name, &v) ? v : dflt;
}

static kiln_err want_str(rstate *st, int line, tval v, const char *what) {
    if (v.t == TV_STR) return KILN_OK;
    return rt_error(st, line, KILN_ERR_INVALID, "%s must be str, not %s", what, tv_type_name(v));
}

/* ---- unicode helpers ---- */
static size_t u8_next(const char *p, size_t n, size_t i, int32_t *cp) {
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)p + i, (utf8proc_ssize_t)(n - i), cp);
    if (k <= 0) {
        *cp = (unsigned char)p[i];
        return i + 1;
    }
    return i + (size_t)k;
}

static bool py_isspace(int32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

static bool sb_cp(sbuf *b, int32_t cp) {
    utf8proc_uint8_t o[8];
    utf8proc_ssize_t k = utf8proc_encode_char(cp, o);
    return sb_add(b, (const char *)o, (size_t)k);
}

typedef enum casemode { CASE_LOWER, CASE_UPPER, CASE_TITLE, CASE_CAPITALIZE } casemode;

static kiln_err change_case(rstate *st, int line, tval s, casemode mode, tval *out) {
    sbuf b;
    sb_init(&b, A(st), 0);
    sb_add(&b, "", 0);
    bool prev_cased = false, first = true;
    for (size_t i = 0; i < s.s.n;) {
        int32_t c;
        i = u8_next(s.s.p, s.s.n, i, &c);
        int32_t r;
        switch (mode) {
        case CASE_LOWER: r = utf8proc_tolower(c); break;
        case CASE_UPPER: r = utf8proc_toupper(c); break;
        case CASE_CAPITALIZE: r = first ? utf8proc_totitle(c) : utf8proc_tolower(c); break;
        default: r = prev_cased ? utf8proc_tolower(c) : utf8proc_totitle(c); break;
        }
        if (c == 0xdf && (mode == CASE_UPPER || ((mode == CASE_TITLE && !prev_cased) || (mode == CASE_CAPITALIZE && first)))) {
            if (!sb_adds(&b, mode == CASE_UPPER ? "SS" : "Ss")) return rt_nomem(st, line);
        } else if (!sb_cp(&b, r)) {
            return rt_nomem(st, line);
        }
        utf8proc_category_t cat = utf8proc_category(c);
        prev_cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
        first = false;
    }
    *out = sb_val(&b);
    return KILN_OK;
}

static bool in_chars(tval chars, int32_t c) {
    for (size_t i = 0; i < chars.s.n;) {
        int32_t d;
        i = u8_next(chars.s.p, chars.s.n, i, &d);
        if (d == c) return true;
    }
    return false;
}

/* strip: which 1 = left, 2 = right, 3 = both; chars NONE = whitespace */
static tval do_strip(tval s, tval chars, int which) {
    size_t b = 0, e = s.s.n;
    bool ws = chars.t != TV_STR;
    if (which & 1) {
        while (b < e) {
            int32_t c;
            size_t nx = u8_next(s.s.p, e, b, &c);
            if (ws ? !py_isspace(c) : !in_chars(chars, c)) break;
            b = nx;
        }
    }
    if (which & 2) {
        while (e > b) {
            size_t k = e - 1;
            while (k > b && ((unsigned char)s.s.p[k] & 0xc0) == 0x80) k--;
            int32_t c;
            u8_next(s.s.p, e, k, &c);
            if (ws ? !py_isspace(c) : !in_chars(chars, c)) break;
            e = k;
        }
    }
    return tv_str(s.s.p + b, e - b);
}

static tval mklist(tlist *l) {
    tval v = {.t = TV_LIST};
    v.l = l;
    return v;
}

static bool tl_reversible_err(tval v) {
    return !(v.t == TV_STR || v.t == TV_DICT || v.t == TV_UNDEF || (v.t == TV_LIST && (!v.l->iter_type || !tl_is_generator(v.l))));
}

static tval mkiter(tlist *l, const char *iter_type) {
    l->iter_type = iter_type;
    return mklist(l);
}

static kiln_err do_split(rstate *st, int line, tval s, tval sep, int64_t maxsplit, bool from_right, tval *out) {
    tlist *l = tl_new(A(st), 0);
    if (!l) return rt_nomem(st, line);
    const char *p = s.s.p;
    size_t n = s.s.n;
    if (sep.t != TV_STR) {
        /* whitespace split */
        if (!from_right) {
            size_t i = 0;
            int64_t splits = 0;
            for (;;) {
                int32_t c;
                while (i < n) {
                    size_t nx = u8_next(p, n, i, &c);
                    if (!py_isspace(c)) break;
                    i = nx;
                }
                if (i >= n) break;
                if (maxsplit >= 0 && splits >= maxsplit) {
                    size_t e = n;
                    tval rest = do_strip(tv_str(p + i, e - i), tv_none(), 2);
                    if (!tl_push(A(st), l, rest)) return rt_nomem(st, line);
                    break;
                }
                size_t j = i;
                while (j < n) {
                    size_t nx = u8_next(p, n, j, &c);
                    if (py_isspace(c)) break;
                    j = nx;
                }
                if (!tl_push(A(st), l, tv_str(p + i, j - i))) return rt_nomem(st, line);
                splits++;
                i = j;
            }
        } else {
            /* rsplit(None): collect from the right */
            tval stripped = do_strip(s, tv_none(), 3);
            tval parts = {0};
            kiln_err err = do_split(st, line, stripped, sep, -1, false, &parts);
            if (err) return err;
            if (maxsplit < 0 || (size_t)maxsplit + 1 >= parts.l->n) {
                *out = parts;
                return KILN_OK;
            }
            size_t keep = (size_t)maxsplit;
            size_t first_n = parts.l->n - keep;
            /* the head is the original text up to the start of part first_n */
            const char *start_of = parts.l->items[first_n].s.p;
            tval head = do_strip(tv_str(stripped.s.p, (size_t)(start_of - stripped.s.p)), tv_none(), 2);
            if (!tl_push(A(st), l, head)) return rt_nomem(st, line);
            for (size_t i = first_n; i < parts.l->n; i++)
                if (!tl_push(A(st), l, parts.l->items[i])) return rt_nomem(st, line);
        }
        *out = mklist(l);
        return KILN_OK;
    }
    if (!sep.s.n) return rt_error(st, line, KILN_ERR_INVALID, "empty separator");
    if (!from_right) {
        size_t i = 0;
        int64_t splits = 0;
        for (;;) {
            const char *hit = (maxsplit < 0 || splits < maxsplit) ? memmem(p + i, n - i, sep.s.p, sep.s.n) : NULL;
            if (!hit) {
                if (!tl_push(A(st), l, tv_str(p + i, n - i))) return rt_nomem(st, line);
                break;
            }
            if (!tl_push(A(st), l, tv_str(p + i, (size_t)(hit - (p + i))))) return rt_nomem(st, line);
            i = (size_t)(hit - p) + sep.s.n;
            splits++;
        }
    } else {
        /* find split points from the right */
        size_t e = n;
        int64_t splits = 0;
        tlist *rev = tl_new(A(st), 0);
        if (!rev) return rt_nomem(st, line);
        for (;;) {
            const char *hit = NULL;
            if ((maxsplit < 0 || splits < maxsplit) && e >= sep.s.n)
                for (size_t k = e - sep.s.n + 1; k-- > 0;)
                    if (!memcmp(p + k, sep.s.p, sep.s.n)) {
                        hit = p + k;
                        break;
                    }
            if (!hit) {
                if (!tl_push(A(st), rev, tv_str(p, e))) return rt_nomem(st, line);
                break;
            }
            size_t after = (size_t)(hit - p) + sep.s.n;
            if (!tl_push(A(st), rev, tv_str(p + after, e - after))) return rt_nomem(st, line);
            e = (size_t)(hit - p);
            splits++;
        }
        for (size_t i = rev->n; i-- > 0;)
            if (!tl_push(A(st), l, rev->items[i])) return rt_nomem(st, line);
    }
    *out = mklist(l);
    return KILN_OK;
}

static kiln_err do_replace(rstate *st, int line, tval s, tval old, tval new_, int64_t count, tval *out) {
    sbuf b;
    sb_init(&b, A(st), rs_max_output(st));
    sb_add(&b, "", 0);
    size_t i = 0;
    int64_t done = 0;
    if (!old.s.n) {
        /* insert `new` before every code point and at the end */
        while (i <= s.s.n) {
            if (count >= 0 && done >= count) {
                if (!sb_add(&b, s.s.p + i, s.s.n - i)) return rt_sb_fail(st, &b, line);
                break;
            }
            if (!sb_add(&b, new_.s.p, new_.s.n)) return rt_sb_fail(st, &b, line);
            done++;
            if (i == s.s.n) break;
            int32_t c;
            size_t nx = u8_next(s.s.p, s.s.n, i, &c);
            if (!sb_add(&b, s.s.p + i, nx - i)) return rt_sb_fail(st, &b, line);
            i = nx;
        }
        *out = sb_val(&b);
        return KILN_OK;
    }
    for (;;) {
        const char *hit = (count < 0 || done < count) ? memmem(s.s.p + i, s.s.n - i, old.s.p, old.s.n) : NULL;
        if (!hit) {
            if (!sb_add(&b, s.s.p + i, s.s.n - i)) return rt_sb_fail(st, &b, line);
            break;
        }
        size_t k = (size_t)(hit - s.s.p);
        if (!sb_add(&b, s.s.p + i, k - i) || !sb_add(&b, new_.s.p, new_.s.n)) return rt_sb_fail(st, &b, line);
        i = k + old.s.n;
        done++;
    }
    *out = sb_val(&b);
    return KILN_OK;
}

static bool starts_with(tval s, tval pre) { return pre.s.n <= s.s.n && !memcmp(s.s.p, pre.s.p, pre.s.n); }
static bool ends_with(tval s, tval suf) { return suf.s.n <= s.s.n && !memcmp(s.s.p + s.s.n - suf.s.n, suf.s.p, suf.s.n); }

static size_t cp_count(const char *p, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)p[i] & 0xc0) != 0x80;
    return k;
}

/* ---- methods ---- */
enum {
    M_STRIP = 1, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_STARTSWITH, M_ENDSWITH, M_LOWER, M_UPPER,
    M_TITLE, M_CAPITALIZE, M_REPLACE, M_FIND, M_RFIND, M_COUNT, M_JOIN, M_ISDIGIT, M_ISALPHA,
    M_ISALNUM, M_ISSPACE, M_ISLOWER, M_ISUPPER, M_SPLITLINES, M_FORMAT, M_INDEX,
    M_ITEMS, M_KEYS, M_VALUES, M_GET,
    G_RANGE = 100, G_NAMESPACE, G_DICT, G_RAISE, G_STRFTIME, G_JOINER, G_CYCLER, G_JOINER_OBJ, G_CYCLER_OBJ,
    G_CYCLER_NEXT, G_CYCLER_RESET,
};

typedef struct method_entry {
    const char *name;
    int id;
} method_entry;

static const method_entry str_methods[] = {
    {"strip", M_STRIP}, {"lstrip", M_LSTRIP}, {"rstrip", M_RSTRIP}, {"split", M_SPLIT},
    {"rsplit", M_RSPLIT}, {"startswith", M_STARTSWITH}, {"endswith", M_ENDSWITH},
    {"lower", M_LOWER}, {"upper", M_UPPER}, {"title", M_TITLE}, {"capitalize", M_CAPITALIZE},
    {"replace", M_REPLACE}, {"find", M_FIND}, {"rfind", M_RFIND}, {"count", M_COUNT},
    {"join", M_JOIN}, {"isdigit", M_ISDIGIT}, {"isalpha", M_ISALPHA}, {"isalnum", M_ISALNUM},
    {"isspace", M_ISSPACE}, {"islower", M_ISLOWER}, {"isupper", M_ISUPPER},
    {"splitlines", M_SPLITLINES}, {"format", M_FORMAT}, {"index", M_INDEX},
};
static const method_entry dict_methods[] = {
    {"items", M_ITEMS}, {"keys", M_KEYS}, {"values", M_VALUES}, {"get", M_GET},
};
static const method_entry list_methods[] = {{"index", M_INDEX}, {"count", M_COUNT}};
static const char *const dict_unsafe[] = {"pop", "popitem", "update", "clear", "setdefault", "copy", "fromkeys"};
static const char *const list_unsafe[] = {"append", "pop", "extend", "insert", "remove", "clear", "sort", "reverse", "copy"};

static bool bind(rstate *st, tval obj, const method_entry *tab, size_t n, const char *name, tval *out) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(tab[i].name, name)) {
            tfunc *f = arena_alloc(A(st), sizeof(*f));
            if (!f) {
                *out = tv_undef();
                return true;
            }
            f->id = tab[i].id;
            f->name = tab[i].name;
            f->self = obj;
            out->t = TV_FUNC;
            out->fn = f;
            return true;
        }
    return false;
}

static bool unsafe(rstate *st, tval obj, const char *const *names, size_t n, const char *name, tval *out) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(names[i], name)) {
            char *hint = arena_alloc(A(st), strlen(name) + 64);
            if (hint) sprintf(hint, "access to attribute '%s' of '%s' object is unsafe.", name, tv_type_name(obj));
            *out = rt_undef(st, UNDEF_UNSAFE, NULL, tv_undef(), hint ? hint : "unsafe");
            return true;
        }
    return false;
}

bool bi_method(rstate *st, tval obj, const char *name, tval *out) {
    switch (obj.t) {
    case TV_STR: return bind(st, obj, str_methods, KILN_ARRAY_LEN(str_methods), name, out);
    case TV_DICT:
        return bind(st, obj, dict_methods, KILN_ARRAY_LEN(dict_methods), name, out) ||
               unsafe(st, obj, dict_unsafe, KILN_ARRAY_LEN(dict_unsafe), name, out);
    case TV_LIST:
        if (obj.l->group && (!strcmp(name, "grouper") || !strcmp(name, "list"))) {
            *out = obj.l->items[name[0] == 'l'];
            return true;
        }
        if (obj.l->tuple) return bind(st, obj, list_methods, KILN_ARRAY_LEN(list_methods), name, out);
        return bind(st, obj, list_methods, KILN_ARRAY_LEN(list_methods), name, out) ||
               unsafe(st, obj, list_unsafe, KILN_ARRAY_LEN(list_unsafe), name, out);
    case TV_FUNC:
        if (obj.fn->id == G_CYCLER_OBJ) {
            tlist *items = obj.fn->self.l;
            if (!strcmp(name, "current")) {
                *out = items->n ? items->items[obj.fn->state % items->n] : tv_undef();
                return true;
            }
            if (strcmp(name, "next") && strcmp(name, "reset")) return false;
            tfunc *f = arena_alloc(A(st), sizeof(*f));
            if (!f) {
                *out = tv_undef();
                return true;
            }
            f->id = name[0] == 'n' ? G_CYCLER_NEXT : G_CYCLER_RESET;
            f->name = name[0] == 'n' ? "next" : "reset";
            f->self = obj;
            out->t = TV_FUNC;
            out->fn = f;
            return true;
        }
        return false;
    default: return false;
    }
}

static kiln_err items_list(rstate *st, int line, tdict *d, tval *out);
static kiln_err call_method_inner(rstate *st, int line, tfunc *fn, call_args *ca, tval *out);

static kiln_err call_method(rstate *st, int line, tfunc *fn, call_args *ca, tval *out) {
    kiln_err err = call_method_inner(st, line, fn, ca, out);
    if (!err && fn->self.t == TV_STR && fn->self.safe && out->t == TV_STR) out->safe = 1;
    return err;
}

static kiln_err items_list(rstate *st, int line, tdict *d, tval *out) {
    tlist *l = tl_new(A(st), d->n);
    if (!l) return rt_nomem(st, line);
    for (size_t i = 0; i < d->n; i++) {
        tlist *pair = tl_new(A(st), 2);
        if (!pair) return rt_nomem(st, line);
        pair->tuple = true;
        pair->items[0] = d->keys[i];
        pair->items[1] = d->vals[i];
        pair->n = 2;
        l->items[l->n++] = mklist(pair);
    }
    *out = mklist(l);
    return KILN_OK;
}

static kiln_err str_pred(rstate *st, tval s, int id, tval *out) {
    if (!s.s.n) {
        *out = tv_bool(false);
        return KILN_OK;
    }
    bool all = true, any_cased = false, ok_case = true;
    for (size_t i = 0; i < s.s.n;) {
        int32_t c;
        i = u8_next(s.s.p, s.s.n, i, &c);
        utf8proc_category_t cat = utf8proc_category(c);
        bool letter = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
        bool digit = cat == UTF8PROC_CATEGORY_ND;
        switch (id) {
        case M_ISDIGIT: all &= digit; break;
        case M_ISALPHA: all &= letter; break;
        case M_ISALNUM: all &= letter || digit || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO; break;
        case M_ISSPACE: all &= py_isspace(c); break;
        case M_ISLOWER:
            if (cat == UTF8PROC_CATEGORY_LL) any_cased = true;
            else if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LT) ok_case = false;
            break;
        case M_ISUPPER:
            if (cat == UTF8PROC_CATEGORY_LU) any_cased = true;
            else if (cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT) ok_case = false;
            break;
        }
    }
    if (id == M_ISLOWER || id == M_ISUPPER) *out = tv_bool(any_cased && ok_case);
    else *out = tv_bool(all);
    return KILN_OK;
}

static kiln_err splitlines(rstate *st, int line, tval s, bool keepends, tlist **out) {
    tlist *l = tl_new(A(st), 0);
    if (!l) return rt_nomem(st, line);
    size_t start = 0, i = 0;
    while (i < s.s.n) {
        int32_t c;
        size_t nx = u8_next(s.s.p, s.s.n, i, &c);
        bool brk = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e) || c == 0x85 || c == 0x2028 || c == 0x2029;
        if (brk) {
            size_t end_nl = nx;
            if (c == '\r' && nx < s.s.n && s.s.p[nx] == '\n') end_nl = nx + 1;
            if (!tl_push(A(st), l, tv_str(s.s.p + start, (keepends ? end_nl : i) - start))) return rt_nomem(st, line);
            start = i = end_nl;
        } else {
            i = nx;
        }
    }
    if (start < s.s.n && !tl_push(A(st), l, tv_str(s.s.p + start, s.s.n - start))) return rt_nomem(st, line);
    *out = l;
    return KILN_OK;
}

static kiln_err str_join(rstate *st, int line, tval sep, tval seq, tval *out) {
    tlist *items;
    kiln_err err = rt_iter_list(st, line, seq, &items);
    if (err) return err;
    sbuf b;
    sb_init(&b, A(st), rs_max_output(st));
    sb_add(&b, "", 0);
    for (size_t i = 0; i < items->n; i++) {
        if (items->items[i].t != TV_STR)
            return rt_error(st, line, KILN_ERR_INVALID, "sequence item %zu: expected str instance, %s found", i, tv_type_name(items->items[i]));
        if ((i && !sb_add(&b, sep.s.p, sep.s.n)) || !sb_add(&b, items->items[i].s.p, items->items[i].s.n))
            return rt_sb_fail(st, &b, line);
    }
    *out = sb_val(&b);
    return KILN_OK;
}

/* One replacement field of str.format: value, conversion (!r/!s) and a format spec in Python's
 * mini-language ([[fill]align][sign][#][0][width][,|_][.precision][type]). */
static kiln_err format_field(rstate *st, int line, sbuf *b, tval v, char conv, const char *spec, size_t spec_n) {
    char fill = ' ', align = 0, sign = '-', type = 0, grouping = 0;
    bool alt = false, zero = false;
    long width = -1, prec = -1;
    size_t k = 0;
    if (spec_n >= 2 && strchr("<>^=", spec[1])) {
        fill = spec[0];
        align = spec[1];
        k = 2;
    } else if (spec_n >= 1 && strchr("<>^=", spec[0])) {
        align = spec[0];
        k = 1;
    }
    if (k < spec_n && strchr("+- ", spec[k])) sign = spec[k++];
    if (k < spec_n && spec[k] == '#') alt = true, k++;
    if (k < spec_n && spec[k] == '0') zero = true, k++;
    while (k < spec_n && spec[k] >= '0' && spec[k] <= '9' && width < 100000) width = (width < 0 ? 0 : width * 10) + (spec[k++] - '0');
    if (k < spec_n && (spec[k] == ',' || spec[k] == '_')) grouping = spec[k++];
    if (k < spec_n && spec[k] == '.') {
        k++;
        prec = 0;
        while (k < spec_n && spec[k] >= '0' && spec[k] <= '9' && prec < 1000) prec = prec * 10 + (spec[k++] - '0');
    }
    if (k < spec_n) type = spec[k++];
    if (k < spec_n) return rt_error(st, line, KILN_ERR_INVALID, "Invalid format specifier");
    sbuf body;
    sb_init(&body, A(st), rs_max_output(st));
    bool numeric = false;
    if (conv || v.t == TV_STR || v.t == TV_NONE || v.t == TV_LIST || v.t == TV_DICT || v.t == TV_UNDEF) {
        if (type && type != 's') return rt_error(st, line, KILN_ERR_INVALID, "Unknown format code '%c' for object of type '%s'", type, tv_type_name(v));
        if (v.t != TV_STR && !conv && spec_n)
            return rt_error(st, line, KILN_ERR_INVALID, "unsupported format string passed to %s.__format__", tv_type_name(v));
        sbuf t;
        sb_init(&t, A(st), rs_max_output(st));
        if (!tv_to_str(&t, v, conv == 'r')) return rt_sb_fail(st, &t, line);
        size_t n = t.n;
        if (prec >= 0) {
            size_t cps = 0, off = 0;
            while (off < t.n && cps < (size_t)prec) {
                off++;
                while (off < t.n && ((unsigned char)t.p[off] & 0xc0) == 0x80) off++;
                cps++;
            }
            n = off;
        }
        sb_add(&body, t.p ? t.p : "", n);
        if (!align) align = '<';
    } else {
        numeric = true;
        bool is_float = v.t == TV_FLOAT || (type && strchr("eEfFgG%", type));
        char buf[512];
        if (!is_float) {
            long long x = v.t == TV_INT ? v.i : v.b;
            if (type == 'x' || type == 'X' || type == 'o' || type == 'b') {
                unsigned long long ux = x < 0 ? (unsigned long long)(-(x + 1)) + 1 : (unsigned long long)x;
                char digits[80];
                int nd = 0;
                unsigned base = type == 'o' ? 8 : type == 'b' ? 2 : 16;
                do {
                    unsigned dgt = (unsigned)(ux % base);
                    digits[nd++] = (char)(dgt < 10 ? '0' + dgt : (type == 'X' ? 'A' : 'a') + dgt - 10);
                    ux /= base;
                } while (ux);
                int o = 0;
                if (x < 0) buf[o++] = '-';
                else if (sign == '+' || sign == ' ') buf[o++] = sign;
                if (alt) {
                    buf[o++] = '0';
                    buf[o++] = type == 'X' ? 'X' : type;
                }
                while (nd) buf[o++] = digits[--nd];
                buf[o] = 0;
            } else if (!type || type == 'd' || type == 'n') {
                snprintf(buf, sizeof buf, sign == '+' ? "%+lld" : sign == ' ' ? "% lld" : "%lld", x);
            } else {
                return rt_error(st, line, KILN_ERR_INVALID, "Unknown format code '%c' for object of type 'int'", type);
            }
        } else {
            double x = v.t == TV_FLOAT ? v.f : v.t == TV_INT ? (double)v.i : v.b;
            char f[16];
            int pr = prec < 0 ? 6 : (int)KILN_MIN(prec, 300);
            if (!type) {
                if (prec < 0) {
                    fmt_float(buf, sizeof buf, x);
                    if (sign == '+' && x >= 0) memmove(buf + 1, buf, strlen(buf) + 1), buf[0] = '+';
                } else {
                    snprintf(f, sizeof f, "%%%s.%dg", sign == '+' ? "+" : sign == ' ' ? " " : "", pr ? pr : 1);
                    snprintf(buf, sizeof buf, f, x);
                }
            } else if (type == '%') {
                snprintf(f, sizeof f, "%%%s.%df%%%%", sign == '+' ? "+" : sign == ' ' ? " " : "", pr);
                snprintf(buf, sizeof buf, f, x * 100);
            } else {
                snprintf(f, sizeof f, "%%%s.%d%c", sign == '+' ? "+" : sign == ' ' ? " " : "", pr, type);
                snprintf(buf, sizeof buf, f, x);
            }
        }
        if (grouping) {
            /* insert separators into the integer digits */
            char tmp[sizeof buf + 200];
            const char *d = buf;
            size_t o = 0;
            while (*d && !(*d >= '0' && *d <= '9')) tmp[o++] = *d++;
            size_t nd = 0;
            while (d[nd] >= '0' && d[nd] <= '9') nd++;
            for (size_t q = 0; q < nd; q++) {
                tmp[o++] = d[q];
                if ((nd - q - 1) % 3 == 0 && q + 1 < nd) tmp[o++] = grouping;
            }
            snprintf(tmp + o, sizeof tmp - o, "%s", d + nd);
            snprintf(buf, sizeof buf, "%.*s", (int)sizeof buf - 1, tmp);
        }
        sb_adds(&body, buf);
        if (!align) align = zero ? '=' : '>';
        if (zero && fill == ' ' && align == '=') fill = '0';
    }
    if (body.failed) return rt_sb_fail(st, &body, line);
    size_t len = 0;
    for (size_t q = 0; q < body.n; q++) len += ((unsigned char)body.p[q] & 0xc0) != 0x80;
    size_t pad = width > 0 && (size_t)width > len ? (size_t)width - len : 0;
    size_t left = align == '<' ? 0 : align == '^' ? pad / 2 : pad;
    size_t right = pad - left;
    size_t sign_len = 0;
    if (numeric && align == '=' && body.n && (body.p[0] == '-' || body.p[0] == '+' || body.p[0] == ' ')) sign_len = 1;
    if (!sb_add(b, body.p ? body.p : "", sign_len)) return rt_sb_fail(st, b, line);
    for (size_t q = 0; q < left; q++)
        if (!sb_addc(b, fill)) return rt_sb_fail(st, b, line);
    if (!sb_add(b, body.p ? body.p + sign_len : "", body.n - sign_len)) return rt_sb_fail(st, b, line);
    for (size_t q = 0; q < right; q++)
        if (!sb_addc(b, fill)) return rt_sb_fail(st, b, line);
    return KILN_OK;
}

/* str.format: {} / {0} / {name} fields, !r / !s, and a format spec */
static kiln_err str_format_method(rstate *st, int line, tval fmt, call_args *ca, tval *out) {
    sbuf b;
    sb_init(&b, A(st), rs_max_output(st));
    size_t auto_idx = 0;
    const char *p = fmt.s.p, *e = p + fmt.s.n;
    while (p < e) {
        if ((*p == '{' || *p == '}') && p + 1 < e && p[1] == *p) {
            sb_addc(&b, *p);
            p += 2;
            continue;
        }
        if (*p == '}') return rt_error(st, line, KILN_ERR_INVALID, "Single '}' encountered in format string");
        if (*p != '{') {
            if (!sb_addc(&b, *p++)) return rt_sb_fail(st, &b, line);
            continue;
        }
        const char *q = memchr(p, '}', (size_t)(e - p));
        if (!q) return rt_error(st, line, KILN_ERR_INVALID, "Single '{' encountered in format string");
        const char *f = p + 1, *fe = q;
        const char *colon = memchr(f, ':', (size_t)(fe - f));
        const char *name_end = colon ? colon : fe;
        const char *bang = memchr(f, '!', (size_t)(name_end - f));
        char conv = 0;
        if (bang) {
            conv = bang + 1 < name_end ? bang[1] : 0;
            if (conv != 'r' && conv != 's' && conv != 'a') return rt_error(st, line, KILN_ERR_INVALID, "Unknown conversion specifier");
            name_end = bang;
        }
        size_t fl = (size_t)(name_end - f);
        tval v;
        bool found = false;
        if (!fl) {
            found = auto_idx < ca->n_pos;
            if (found) v = ca->pos[auto_idx++];
        } else if (f[0] >= '0' && f[0] <= '9') {
            size_t idx = (size_t)atoi(f);
            found = idx < ca->n_pos;
            if (found) v = ca->pos[idx];
        } else {
            for (size_t i = 0; i < ca->n_kw; i++)
                if (strlen(ca->kw_names[i]) == fl && !strncmp(ca->kw_names[i], f, fl)) {
                    v = ca->kw_vals[i];
                    found = true;
                }
            if (!found) return rt_error(st, line, KILN_ERR_INVALID, "'%.*s'", (int)KILN_MIN(fl, 200), f);
        }
        if (!found) return rt_error(st, line, KILN_ERR_INVALID, "Replacement index %zu out of range for positional args tuple", auto_idx);
        kiln_err err = format_field(st, line, &b, v, conv == 'a' ? 'r' : conv, colon ? colon + 1 : "", colon ? (size_t)(fe - colon - 1) : 0);
        if (err) return err;
        p = q + 1;
    }
    if (b.failed) return rt_sb_fail(st, &b, line);
    *out = sb_val(&b);
    return KILN_OK;
}

static kiln_err find_sub(tval s, tval sub, bool right, int64_t *out) {
    const char *hit = NULL;
    if (!right) {
        hit = memmem(s.s.p, s.s.n, sub.s.p, sub.s.n);
    } else if (sub.s.n <= s.s.n) {
        for (size_t k = s.s.n - sub.s.n + 1; k-- > 0;)
            if (!memcmp(s.s.p + k, sub.s.p, sub.s.n)) {
                hit = s.s.p + k;
                break;
            }
    }
    *out = hit ? (int64_t)cp_count(s.s.p, (size_t)(hit - s.s.p)) : -1;
    return KILN_OK;
}

static kiln_err call_method_inner(rstate *st, int line, tfunc *fn, call_args *ca, tval *out) {
    tval self = fn->self, a0, a1;
    kiln_err err;
    switch (fn->id) {
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        tval chars = arg_or(ca, 0, NULL, tv_none());
        if (chars.t != TV_NONE && chars.t != TV_STR)
            return rt_error(st, line, KILN_ERR_INVALID, "%s arg must be None or str", fn->name);
        *out = do_strip(self, chars, fn->id == M_STRIP ? 3 : fn->id == M_LSTRIP ? 1 : 2);
        return KILN_OK;
    }
    case M_SPLIT:
    case M_RSPLIT: {
        tval sep = arg_or(ca, 0, "sep", tv_none()), mx = arg_or(ca, 1, "maxsplit", tv_int(-1));
        if (sep.t != TV_NONE && sep.t != TV_STR)
            return rt_error(st, line, KILN_ERR_INVALID, "must be str or None, not %s", tv_type_name(sep));
        if (mx.t != TV_INT) return rt_error(st, line, KILN_ERR_INVALID, "'%s' object cannot be interpreted as an integer", tv_type_name(mx));
        return do_split(st, line, self, sep, mx.i, fn->id == M_RSPLIT, out);
    }
    case M_STARTSWITH:
    case M_ENDSWITH: {
        if (!arg(ca, 0, NULL, &a0)) return rt_error(st, line, KILN_ERR_INVALID, "%s() takes at least 1 argument (0 given)", fn->name);
        bool r = false;
        if (a0.t == TV_LIST && a0.l->tuple) {
            for (size_t i = 0; i < a0.l->n; i++) {
                if (a0.l->items[i].t != TV_STR)
                    return rt_error(st, line, KILN_ERR_INVALID, "tuple for %s must only contain str, not %s", fn->name, tv_type_name(a0.l->items[i]));
                r |= fn->id == M_STARTSWITH ? starts_with(self, a0.l->items[i]) : ends_with(self, a0.l->items[i]);
            }
        } else if (a0.t == TV_STR) {
            r = fn->id == M_STARTSWITH ? starts_with(self, a0) : ends_with(self, a0);
        } else {
            return rt_error(st, line, KILN_ERR_INVALID, "%s first arg must be str or a tuple of str, not %s", fn->name, tv_type_name(a0));
        }
        *out = tv_bool(r);
        return KILN_OK;
    }
    case M_LOWER: return change_case(st, line, self, CASE_LOWER, out);
    case M_UPPER: return change_case(st, line, self, CASE_UPPER, out);
    case M_TITLE: return change_case(st, line, self, CASE_TITLE, out);
    case M_CAPITALIZE: return change_case(st, line, self, CASE_CAPITALIZE, out);
    case M_REPLACE: {
        if (!arg(ca, 0, NULL, &a0) || !arg(ca, 1, NULL, &a1))
            return rt_error(st, line, KILN_ERR_INVALID, "replace expected at least 2 arguments, got %zu", ca->n_pos);
        if ((err = want_str(st, line, a0, "replace() argument 1")) || (err = want_str(st, line, a1, "replace() argument 2"))) return err;
        tval cnt = arg_or(ca, 2, "count", tv_int(-1));
        return do_replace(st, line, self, a0, a1, cnt.t == TV_INT ? cnt.i : -1, out);
    }
    case M_FIND:
    case M_RFIND:
    case M_INDEX:
        if (self.t == TV_LIST) {
            if (!arg(ca, 0, NULL, &a0)) return rt_error(st, line, KILN_ERR_INVALID, "index expected at least 1 argument, got 0");
            for (size_t i = 0; i < self.l->n; i++)
                if (tv_equal(self.l->items[i], a0)) {
                    *out = tv_int((int64_t)i);
                    return KILN_OK;
                }
            return rt_error(st, line, KILN_ERR_INVALID, "%s.index(x): x not in %s", self.l->tuple ? "tuple" : "list", self.l->tuple ? "tuple" : "list");
        } else {
            if (!arg(ca, 0, NULL, &a0)) return rt_error(st, line, KILN_ERR_INVALID, "%s() takes at least 1 argument (0 given)", fn->name);
            if (a0.t != TV_STR) return rt_error(st, line, KILN_ERR_INVALID, "must be str, not %s", tv_type_name(a0));
            int64_t r;
            find_sub(self, a0, fn->id == M_RFIND, &r);
            if (fn->id == M_INDEX && r < 0) return rt_error(st, line, KILN_ERR_INVALID, "substring not found");
            *out = tv_int(r);
            return KILN_OK;
        }
    case M_COUNT:
        if (!arg(ca, 0, NULL, &a0)) return rt_error(st, line, KILN_ERR_INVALID, "count() takes exactly one argument (0 given)");
        if (self.t == TV_LIST) {
            int64_t k = 0;
            for (size_t i = 0; i < self.l->n; i++) k += tv_equal(self.l->items[i], a0);
            *out = tv_int(k);
        } else {
            if (a0.t != TV_STR) return rt_error(st, line, KILN_ERR_INVALID, "must be str, not %s", tv_type_name(a0));
            int64_t k = 0;
            if (!a0.s.n) {
                k = (int64_t)cp_count(self.s.p, self.s.n) + 1;
            } else {
                for (size_t i = 0; i + a0.s.n <= self.s.n;) {
                    const char *h = memmem(self.s.p + i, self.s.n - i, a0.s.p, a0.s.n);
                    if (!h) break;
                    k++;
                    i = (size_t)(h - self.s.p) + a0.s.n;
                }
            }
            *out = tv_int(k);
        }
        return KILN_OK;
    case M_JOIN:
        if (!arg(ca, 0, NULL, &a0)) return rt_error(st, line, KILN_ERR_INVALID, "join() takes exactly one argument (0 given)");
        return str_join(st, line, self, a0, out);
    case M_ISDIGIT:
    case M_ISALPHA:
    case M_ISALNUM:
    case M_ISSPACE:
    case M_ISLOWER:
    case M_ISUPPER: return str_pred(st, self, fn->id, out);
    case M_SPLITLINES: {
        tlist *l;
        tval ke = arg_or(ca, 0, "keepends", tv_bool(false));
        if ((err = splitlines(st, line, self, tv_truthy(ke), &l))) return err;
        *out = mklist(l);
        return KILN_OK;
    }
    case M_FORMAT: return str_format_method(st, line, self, ca, out);
    case M_ITEMS:
        if ((err = items_list(st, line, self.d, out))) return err;
        out->l->iter_type = "dict_items";
        return KILN_OK;
    case M_KEYS:
    case M_VALUES: {
        tlist *l = tl_new(A(st), self.d->n);
        if (!l) return rt_nomem(st, line);
        for (size_t i = 0; i < self.d->n; i++) l->items[l->n++] = fn->id == M_KEYS ? self.d->keys[i] : self.d->vals[i];
        *out = mkiter(l, fn->id == M_KEYS ? "dict_keys" : "dict_values");
        return KILN_OK;
    }
    case M_GET: {
        if (!arg(ca, 0, NULL, &a0)) return rt_error(st, line, KILN_ERR_INVALID, "get expected at least 1 argument, got 0");
        tval *v = td_get(self.d, a0);
        *out = v ? *v : arg_or(ca, 1, NULL, tv_none());
        return KILN_OK;
    }
    default: return rt_error(st, line, KILN_ERR_INVALID, "'%s' is not callable", fn->name);
    }
}

/* ---- globals ---- */
static bool global_fn(rstate *st, int id, const char *name, tval *out) {
    tfunc *f = arena_alloc(A(st), sizeof(*f));
    if (!f) {
        *out = tv_undef();
        return true;
    }
    f->id = id;
    f->name = name;
    out->t = TV_FUNC;
    out->fn = f;
    return true;
}

bool bi_global(rstate *st, const char *name, tval *out) {
    if (!strcmp(name, "range")) return global_fn(st, G_RANGE, "range", out);
    if (!strcmp(name, "namespace")) return global_fn(st, G_NAMESPACE, "namespace", out);
    if (!strcmp(name, "dict")) return global_fn(st, G_DICT, "dict", out);
    if (!strcmp(name, "raise_exception")) return global_fn(st, G_RAISE, "raise_exception", out);
    if (!strcmp(name, "strftime_now")) return global_fn(st, G_STRFTIME, "strftime_now", out);
    if (!strcmp(name, "joiner")) return global_fn(st, G_JOINER, "joiner", out);
    if (!strcmp(name, "cycler")) return global_fn(st, G_CYCLER, "cycler", out);
    return false;
}

static kiln_err do_strftime(rstate *st, int line, tval fmt, tval *out) {
    if (fmt.t != TV_STR) return rt_error(st, line, KILN_ERR_INVALID, "strftime() argument 1 must be str, not %s", tv_type_name(fmt));
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *fixed = getenv("KILN_TEMPLATE_NOW");
    if (fixed && *fixed) {
        int y, mo, d, h = 0, mi = 0, s = 0;
        if (sscanf(fixed, "%d-%d-%d %d:%d:%d", &y, &mo, &d, &h, &mi, &s) < 3)
            return rt_error(st, line, KILN_ERR_INVALID, "KILN_TEMPLATE_NOW must be \"YYYY-MM-DD HH:MM:SS\"");
        tm.tm_year = y - 1900;
        tm.tm_mon = mo - 1;
        tm.tm_mday = d;
        tm.tm_hour = h;
        tm.tm_min = mi;
        tm.tm_sec = s;
        tm.tm_isdst = -1;
        time_t t = timegm(&tm);
        gmtime_r(&t, &tm);
    } else {
        time_t t = time(NULL);
        localtime_r(&t, &tm);
    }
    char *fz = arena_strndup(A(st), fmt.s.p, fmt.s.n);
    if (!fz) return rt_nomem(st, line);
    size_t cap = fmt.s.n * 8 + 64;
    char *buf = arena_alloc(A(st), cap);
    if (!buf) return rt_nomem(st, line);
    size_t n = strftime(buf, cap, fz, &tm);
    *out = tv_str(buf, n);
    return KILN_OK;
}

kiln_err bi_call_func(rstate *st, int line, tfunc *fn, call_args *ca, tval *out) {
    if (fn->id < G_RANGE) return call_method(st, line, fn, ca, out);
    switch (fn->id) {
    case G_RANGE: {
        int64_t a[3] = {0, 0, 1};
        if (ca->n_pos < 1 || ca->n_pos > 3) return rt_error(st, line, KILN_ERR_INVALID, "range expected at most 3 arguments, got %zu", ca->n_pos);
        for (size_t i = 0; i < ca->n_pos; i++) {
            tval v = ca->pos[i];
            if (v.t != TV_INT && v.t != TV_BOOL)
                return rt_error(st, line, KILN_ERR_INVALID, "'%s' object cannot be interpreted as an integer", tv_type_name(v));
        }
        if (ca->n_pos == 1) {
            a[1] = ca->pos[0].t == TV_INT ? ca->pos[0].i : ca->pos[0].b;
        } else {
            for (size_t i = 0; i < ca->n_pos; i++) a[i] = ca->pos[i].t == TV_INT ? ca->pos[i].i : ca->pos[i].b;
        }
        if (a[2] == 0) return rt_error(st, line, KILN_ERR_INVALID, "range() arg 3 must not be zero");
        /* range() is materialized: refuse more items than the iteration limit (a loop over it
         * would pass that limit anyway) */
        double cnt = a[2] > 0 ? ceil(((double)a[1] - (double)a[0]) / (double)a[2]) : ceil(((double)a[0] - (double)a[1]) / (double)-a[2]);
        if (cnt < 0) cnt = 0;
        if (cnt > (double)rs_max_iterations(st))
            return rt_error(st, line, KILN_ERR_LIMIT, "range of %.0f items exceeds the limit of %llu loop iterations", cnt,
                            (unsigned long long)rs_max_iterations(st));
        tlist *l = tl_new(A(st), (size_t)cnt);
        if (!l) return rt_nomem(st, line);
        for (int64_t v = a[0]; a[2] > 0 ? v < a[1] : v > a[1]; v += a[2]) {
            l->items[l->n++] = tv_int(v);
            if (l->n >= (size_t)cnt) break;
        }
        *out = mklist(l);
        return KILN_OK;
    }
    case G_NAMESPACE:
    case G_DICT: {
        tdict *d = td_new(A(st), 0);
        if (!d) return rt_nomem(st, line);
        for (size_t i = 0; i < ca->n_pos; i++) {
            tval v = ca->pos[i];
            if (v.t == TV_DICT || v.t == TV_NS) {
                for (size_t k = 0; k < v.d->n; k++) {
                    kiln_err err = rt_tick(st, line, (uint32_t)KILN_MIN(d->n, 1u << 20)); /* td_set is linear */
                    if (err) return err;
                    if (!td_set(A(st), d, v.d->keys[k], v.d->vals[k])) return rt_nomem(st, line);
                }
            } else {
                return rt_error(st, line, KILN_ERR_INVALID, "cannot convert %s to a dictionary", tv_type_name(v));
            }
        }
        for (size_t i = 0; i < ca->n_kw; i++)
            if (!td_set(A(st), d, tv_cstr(ca->kw_names[i]), ca->kw_vals[i])) return rt_nomem(st, line);
        out->t = fn->id == G_NAMESPACE ? TV_NS : TV_DICT;
        out->d = d;
        return KILN_OK;
    }
    case G_RAISE: {
        tval m = arg_or(ca, 0, "message", tv_undef());
        if (!arg(ca, 0, "message", &m)) return rt_error(st, line, KILN_ERR_INVALID, "raise_exception() missing 1 required positional argument: 'message'");
        tval s;
        kiln_err err = rt_to_str(st, line, m, &s);
        if (err) return err;
        return rt_error(st, line, KILN_ERR_RAISED, "%.*s", (int)KILN_MIN(s.s.n, 900), s.s.p);
    }
    case G_JOINER:
    case G_CYCLER: {
        tfunc *f = arena_alloc(A(st), sizeof(*f));
        if (!f) return rt_nomem(st, line);
        f->id = fn->id == G_JOINER ? G_JOINER_OBJ : G_CYCLER_OBJ;
        f->name = fn->id == G_JOINER ? "joiner" : "cycler";
        if (fn->id == G_JOINER) {
            f->self = arg_or(ca, 0, "sep", tv_cstr(", "));
        } else {
            tlist *items = tl_new(A(st), ca->n_pos);
            if (!items) return rt_nomem(st, line);
            for (size_t i = 0; i < ca->n_pos; i++) items->items[items->n++] = ca->pos[i];
            if (!items->n) return rt_error(st, line, KILN_ERR_INVALID, "at least one item has to be provided");
            f->self = mklist(items);
        }
        out->t = TV_FUNC;
        out->fn = f;
        return KILN_OK;
    }
    case G_JOINER_OBJ:
        *out = fn->state++ ? fn->self : tv_str("", 0);
        return KILN_OK;
    case G_CYCLER_OBJ: return rt_error(st, line, KILN_ERR_INVALID, "'Cycler' object is not callable");
    case G_CYCLER_NEXT: {
        tfunc *c = fn->self.fn;
        tlist *items = c->self.l;
        *out = items->items[c->state % items->n];
        c->state = (c->state + 1) % items->n;
        return KILN_OK;
    }
    case G_CYCLER_RESET:
        fn->self.fn->state = 0;
        *out = tv_none();
        return KILN_OK;
    case G_STRFTIME: {
        tval f;
        if (!arg(ca, 0, "format", &f)) return rt_error(st, line, KILN_ERR_INVALID, "strftime_now() missing 1 required positional argument: 'format'");
        return do_strftime(st, line, f, out);
    }
    default: return rt_error(st, line, KILN_ERR_INVALID, "'%s' is not callable", fn->name);
    }
}

/* ---- tests ---- */
static const char *const test_names[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false",
    "filter", "float", "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan",
    "lower", "lt", "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string",
    "test", "true", "undefined", "upper", "==", "!=", "<", "<=", ">", ">=",
};

bool bi_has_test(const char *name) {
    for (size_t i = 0; i < KILN_ARRAY_LEN(test_names); i++)
        if (!strcmp(test_names[i], name)) return true;
    return false;
}

bool bi_has_filter(const char *name);

static kiln_err cmp_test(rstate *st, int line, const char *op, tval a, call_args *ca, bool *out) {
    tval b;
    if (!arg(ca, 0, NULL, &b)) return rt_error(st, line, KILN_ERR_INVALID, "test expects an argument");
    if (!strcmp(op, "eq")) {
        *out = tv_equal(a, b);
        return KILN_OK;
    }
    if (!strcmp(op, "ne")) {
        *out = !tv_equal(a, b);
        return KILN_OK;
    }
    if (a.t == TV_UNDEF) return rt_undef_error(st, line, a);
    if (b.t == TV_UNDEF) return rt_undef_error(st, line, b);
    bool ok;
    int c = tv_compare(a, b, &ok);
    const char *sym = !strcmp(op, "lt") ? "<" : !strcmp(op, "le") ? "<=" : !strcmp(op, "gt") ? ">" : ">=";
    if (!ok)
        return rt_error(st, line, KILN_ERR_INVALID, "'%s' not supported between instances of '%s' and '%s'", sym, tv_type_name(a), tv_type_name(b));
    *out = sym[0] == '<' ? (sym[1] ? c <= 0 : c < 0) : (sym[1] ? c >= 0 : c > 0);
    return KILN_OK;
}

static bool str_all_case(tval s, bool upper) {
    bool any = false;
    for (size_t i = 0; i < s.s.n;) {
        int32_t c;
        i = u8_next(s.s.p, s.s.n, i, &c);
        utf8proc_category_t cat = utf8proc_category(c);
        if (cat == (upper ? UTF8PROC_CATEGORY_LU : UTF8PROC_CATEGORY_LL)) any = true;
        else if (cat == (upper ? UTF8PROC_CATEGORY_LL : UTF8PROC_CATEGORY_LU) || cat == UTF8PROC_CATEGORY_LT) return false;
    }
    return any;
}

kiln_err bi_test(rstate *st, int line, const char *name, tval v, call_args *ca, bool *out) {
    tval b;
    if (!strcmp(name, "defined")) *out = v.t != TV_UNDEF;
    else if (!strcmp(name, "undefined")) *out = v.t == TV_UNDEF;
    else if (!strcmp(name, "none")) *out = v.t == TV_NONE;
    else if (!strcmp(name, "string")) *out = v.t == TV_STR;
    else if (!strcmp(name, "mapping")) *out = v.t == TV_DICT;
    else if (!strcmp(name, "iterable")) *out = v.t == TV_STR || v.t == TV_LIST || v.t == TV_DICT || v.t == TV_UNDEF;
    else if (!strcmp(name, "sequence")) *out = v.t == TV_STR || (v.t == TV_LIST && !v.l->iter_type) || v.t == TV_DICT || v.t == TV_UNDEF;
    else if (!strcmp(name, "number")) *out = v.t == TV_INT || v.t == TV_FLOAT || v.t == TV_BOOL;
    else if (!strcmp(name, "integer")) *out = v.t == TV_INT;
    else if (!strcmp(name, "float")) *out = v.t == TV_FLOAT;
    else if (!strcmp(name, "boolean")) *out = v.t == TV_BOOL;
    else if (!strcmp(name, "true")) *out = v.t == TV_BOOL && v.b;
    else if (!strcmp(name, "false")) *out = v.t == TV_BOOL && !v.b;
    else if (!strcmp(name, "callable")) *out = v.t == TV_MACRO || v.t == TV_FUNC || v.t == TV_LOOP || v.t == TV_UNDEF;
    else if (!strcmp(name, "escaped")) *out = false;
    else if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (v.t != TV_STR) {
            tval s;
            kiln_err err = rt_to_str(st, line, v, &s);
            if (err) return err;
            v = s;
        }
        *out = str_all_case(v, name[0] == 'u');
    } else if (!strcmp(name, "odd") || !strcmp(name, "even") || !strcmp(name, "divisibleby")) {
        tval dv = tv_int(2);
        if (name[0] == 'd' && !arg(ca, 0, "num", &dv)) return rt_error(st, line, KILN_ERR_INVALID, "divisibleby() missing 1 required positional argument: 'num'");
        if (v.t == TV_UNDEF) return rt_undef_error(st, line, v);
        if (v.t == TV_STR) return rt_error(st, line, KILN_ERR_INVALID, "not all arguments converted during string formatting");
        bool vnum = v.t == TV_INT || v.t == TV_BOOL || v.t == TV_FLOAT, dnum = dv.t == TV_INT || dv.t == TV_BOOL || dv.t == TV_FLOAT;
        if (!vnum || !dnum)
            return rt_error(st, line, KILN_ERR_INVALID, "unsupported operand type(s) for %%: '%s' and '%s'", tv_type_name(v), tv_type_name(dv));
        if (v.t == TV_FLOAT || dv.t == TV_FLOAT) {
            double x = v.t == TV_FLOAT ? v.f : v.t == TV_INT ? (double)v.i : v.b, y = dv.t == TV_FLOAT ? dv.f : dv.t == TV_INT ? (double)dv.i : dv.b;
            if (y == 0) return rt_error(st, line, KILN_ERR_INVALID, "float modulo");
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            *out = name[0] == 'o' ? m == 1 : m == 0;
            return KILN_OK;
        }
        int64_t x = v.t == TV_INT ? v.i : v.b, d = dv.t == TV_INT ? dv.i : dv.b;
        if (!d) return rt_error(st, line, KILN_ERR_INVALID, "integer modulo by zero");
        int64_t m = d == -1 ? 0 : x % d;
        if (m && ((m < 0) != (d < 0))) m += d;
        *out = name[0] == 'o' ? m == 1 : m == 0;
    } else if (!strcmp(name, "sameas")) {
        if (!arg(ca, 0, "other", &b)) return rt_error(st, line, KILN_ERR_INVALID, "sameas() missing argument");
        *out = v.t == b.t && (v.t == TV_NONE || v.t == TV_UNDEF || (v.t == TV_BOOL && v.b == b.b) ||
                              (v.t == TV_INT && v.i == b.i && v.i >= -5 && v.i <= 256) ||
                              (v.t == TV_LIST && v.l == b.l) || ((v.t == TV_DICT || v.t == TV_NS) && v.d == b.d));
    } else if (!strcmp(name, "in")) {
        if (!arg(ca, 0, "seq", &b)) return rt_error(st, line, KILN_ERR_INVALID, "in() missing argument");
        if (b.t == TV_STR) {
            if (v.t != TV_STR) return rt_error(st, line, KILN_ERR_INVALID, "'in <string>' requires string as left operand, not %s", tv_type_name(v));
            *out = !v.s.n || memmem(b.s.p, b.s.n, v.s.p, v.s.n);
        } else if (b.t == TV_LIST) {
            *out = false;
            for (size_t i = 0; i < b.l->n; i++) *out |= tv_equal(b.l->items[i], v);
        } else if (b.t == TV_DICT || b.t == TV_NS) {
            *out = td_get(b.d, v) != NULL;
        } else if (b.t == TV_UNDEF) {
            *out = false;
        } else {
            return rt_error(st, line, KILN_ERR_INVALID, "argument of type '%s' is not iterable", tv_type_name(b));
        }
    } else if (!strcmp(name, "filter")) {
        *out = arg(ca, 0, NULL, &b) && b.t == TV_STR && bi_has_filter(arena_strndup(A(st), b.s.p, b.s.n));
    } else if (!strcmp(name, "test")) {
        *out = arg(ca, 0, NULL, &b) && b.t == TV_STR && bi_has_test(arena_strndup(A(st), b.s.p, b.s.n));
    } else {
        const char *op = NULL;
        if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")) op = "eq";
        else if (!strcmp(name, "ne") || !strcmp(name, "!=")) op = "ne";
        else if (!strcmp(name, "lt") || !strcmp(name, "lessthan") || !strcmp(name, "<")) op = "lt";
        else if (!strcmp(name, "le") || !strcmp(name, "<=")) op = "le";
        else if (!strcmp(name, "gt") || !strcmp(name, "greaterthan") || !strcmp(name, ">")) op = "gt";
        else if (!strcmp(name, "ge") || !strcmp(name, ">=")) op = "ge";
        if (!op) return rt_error(st, line, KILN_ERR_FORMAT, "No test named '%s'.", name);
        return cmp_test(st, line, op, v, ca, out);
    }
    return KILN_OK;
}

/* ---- filters ---- */
static const char *const filter_names[] = {
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e",
    "escape", "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent",
    "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min", "pprint",
    "random", "reject", "rejectattr", "replace", "reverse", "round", "safe", "select",
    "selectattr", "slice", "sort", "string", "striptags", "sum", "title", "tojson", "trim",
    "truncate", "unique", "upper", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr",
};

bool bi_has_filter(const char *name) {
    if (!name) return false;
    for (size_t i = 0; i < KILN_ARRAY_LEN(filter_names); i++)
        if (!strcmp(filter_names[i], name)) return true;
    return false;
}

static kiln_err soft_str(rstate *st, int line, tval v, tval *out) {
    if (v.t == TV_UNDEF) {
        *out = tv_str("", 0);
        return KILN_OK;
    }
    return rt_to_str(st, line, v, out);
}

/* jinja2's make_attrgetter: "a.b.0" walks getitem with ints for digit parts */
static kiln_err get_attr_path(rstate *st, int line, tval item, tval attr, tval *out) {
    if (attr.t == TV_INT) return rt_getitem(st, line, item, attr, out);
    if (attr.t != TV_STR) return rt_getitem(st, line, item, attr, out);
    const char *p = attr.s.p, *e = p + attr.s.n;
    tval cur = item;
    while (p <= e) {
        const char *dot = memchr(p, '.', (size_t)(e - p));
        if (!dot) dot = e;
        size_t n = (size_t)(dot - p);
        bool digits = n > 0;
        for (size_t i = 0; i < n; i++) digits &= p[i] >= '0' && p[i] <= '9';
        tval key = digits ? tv_int(atoll(p)) : tv_str(p, n);
        kiln_err err = rt_getitem(st, line, cur, key, &cur);
        if (err) return err;
        if (dot == e) break;
        p = dot + 1;
    }
    *out = cur;
    return KILN_OK;
}

static kiln_err len_of(rstate *st, int line, tval v, int64_t *out) {
    switch (v.t) {
    case TV_STR: *out = (int64_t)cp_count(v.s.p, v.s.n); return KILN_OK;
    case TV_LIST:
        if (tl_is_generator(v.l)) break;
        *out = (int64_t)v.l->n;
        return KILN_OK;
    case TV_DICT: *out = (int64_t)v.d->n; return KILN_OK;
    case TV_UNDEF: *out = 0; return KILN_OK;
    default: break;
    }
    switch (v.t) {
    default: return rt_error(st, line, KILN_ERR_INVALID, "object of type '%s' has no len()", tv_type_name(v));
    }
}

/* sort key: lowercased string when not case sensitive */
static kiln_err sort_key(rstate *st, int line, tval v, bool case_sensitive, tval *out) {
    if (!case_sensitive && v.t == TV_STR) return change_case(st, line, v, CASE_LOWER, out);
    *out = v;
    return KILN_OK;
}

typedef struct sort_item {
    tval key, val;
} sort_item;

/* stable merge sort with a comparison that can fail (Python's TypeError) */
static kiln_err merge_sort(rstate *st, int line, sort_item *a, size_t n, bool reverse) {
    if (n < 2) return KILN_OK;
    sort_item *tmp = arena_alloc(A(st), n * sizeof(*tmp));
    if (!tmp) return rt_nomem(st, line);
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = KILN_MIN(lo + w, n), hi = KILN_MIN(lo + 2 * w, n), i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                bool ok;
                int c = tv_compare(a[j].key, a[i].key, &ok);
                if (!ok)
                    return rt_error(st, line, KILN_ERR_INVALID, "'<' not supported between instances of '%s' and '%s'",
                                    tv_type_name(a[j].key), tv_type_name(a[i].key));
                bool take_right = reverse ? c > 0 : c < 0;
                tmp[k++] = take_right ? a[j++] : a[i++];
            }
            while (i < mid) tmp[k++] = a[i++];
            while (j < hi) tmp[k++] = a[j++];
        }
        memcpy(a, tmp, n * sizeof(*a));
    }
    return KILN_OK;
}

static kiln_err select_common(rstate *st, int line, tval v, call_args *ca, bool by_attr, bool want, tval *out) {
    tlist *items;
    if (!tv_truthy(v)) v = tv_undef(); /* jinja2: `if value:` before iterating */
    kiln_err err = rt_iter_list(st, line, v, &items);
    if (err) return err;
    size_t ai = 0;
    tval attr = tv_undef(), test_name = tv_undef();
    if (by_attr) {
        if (!arg(ca, 0, NULL, &attr)) return rt_error(st, line, KILN_ERR_INVALID, "Missing parameter for attribute name");
        ai = 1;
    }
    bool has_test = ai < ca->n_pos;
    if (has_test) test_name = ca->pos[ai];
    call_args targs = {has_test ? ca->pos + ai + 1 : NULL, has_test ? ca->n_pos - ai - 1 : 0, ca->kw_names, ca->kw_vals, ca->n_kw};
    char *tn = NULL;
    if (has_test) {
        if (test_name.t != TV_STR) return rt_error(st, line, KILN_ERR_INVALID, "test name must be a string");
        tn = arena_strndup(A(st), test_name.s.p, test_name.s.n);
        if (!tn) return rt_nomem(st, line);
        if (!bi_has_test(tn)) return rt_error(st, line, KILN_ERR_INVALID, "No test named '%s'.", tn);
    }
    tlist *l = tl_new(A(st), 0);
    if (!l) return rt_nomem(st, line);
    for (size_t i = 0; i < items->n; i++) {
        tval x = items->items[i];
        if (by_attr && (err = get_attr_path(st, line, x, attr, &x))) return err;
        bool r;
        if (has_test) {
            if ((err = bi_test(st, line, tn, x, &targs, &r))) return err;
        } else {
            r = tv_truthy(x);
        }
        if (r == want && !tl_push(A(st), l, items->items[i])) return rt_nomem(st, line);
    }
    *out = mkiter(l, "generator");
    return KILN_OK;
}

static kiln_err do_indent(rstate *st, int line, tval s, call_args *ca, tval *out) {
    tval width = arg_or(ca, 0, "width", tv_int(4)), first = arg_or(ca, 1, "first", tv_bool(false)),
         blank = arg_or(ca, 2, "blank", tv_bool(false));
    sbuf ind;
    sb_init(&ind, A(st), 0);
    sb_add(&ind, "", 0);
    if (width.t == TV_STR) {
        sb_add(&ind, width.s.p, width.s.n);
    } else if (width.t == TV_INT) {
        for (int64_t i = 0; i < width.i && i < 1000; i++) sb_addc(&ind, ' ');
    } else {
        return rt_error(st, line, KILN_ERR_INVALID, "can't multiply sequence by non-int of type '%s'", tv_type_name(width));
    }
    if (ind.failed) return rt_nomem(st, line);
    tval text;
    kiln_err err = soft_str(st, line, s, &text);
    if (err) return err;
    /* s += "\n" then splitlines */
    sbuf t;
    sb_init(&t, A(st), 0);
    if (!sb_add(&t, text.s.p, text.s.n) || !sb_addc(&t, '\n')) return rt_nomem(st, line);
    tlist *lines;
    if ((err = splitlines(st, line, sb_val(&t), false, &lines))) return err;
    sbuf b;
    sb_init(&b, A(st), rs_max_output(st));
    sb_add(&b, "", 0);
    if (tv_truthy(first) && !sb_add(&b, ind.p, ind.n)) return rt_sb_fail(st, &b, line);
    for (size_t i = 0; i < lines->n; i++) {
        tval ln = lines->items[i];
        if (i) {
            if (!sb_addc(&b, '\n')) return rt_sb_fail(st, &b, line);
            if ((tv_truthy(blank) || ln.s.n) && !sb_add(&b, ind.p, ind.n)) return rt_sb_fail(st, &b, line);
        }
        if (!sb_add(&b, ln.s.p, ln.s.n)) return rt_sb_fail(st, &b, line);
    }
    *out = sb_val(&b);
    return KILN_OK;
}

static kiln_err do_tojson(rstate *st, int line, tval v, call_args *ca, tval *out) {
    tval ensure_ascii = arg_or(ca, 0, "ensure_ascii", tv_bool(false));
    tval indent = arg_or(ca, 1, "indent", tv_none());
    tval seps = arg_or(ca, 2, "separators", tv_none());
    tval sort_keys = arg_or(ca, 3, "sort_keys", tv_bool(false));
    const char *ind = NULL;
    if (indent.t == TV_INT || indent.t == TV_BOOL) {
        int64_t k = indent.t == TV_INT ? indent.i : indent.b;
        char *sp = arena_alloc(A(st), 65);
        if (!sp) return rt_nomem(st, line);
        k = KILN_MAX(0, KILN_MIN(k, 64));
        memset(sp, ' ', (size_t)k);
        ind = sp;
    } else if (indent.t == TV_STR) {
        ind = arena_strndup(A(st), indent.s.p, KILN_MIN(indent.s.n, 64));
        if (!ind) return rt_nomem(st, line);
    } else if (indent.t != TV_NONE) {
        return rt_error(st, line, KILN_ERR_INVALID, "can't multiply sequence by non-int of type '%s'", tv_type_name(indent));
    }
    const char *item_sep = NULL, *key_sep = NULL;
    if (seps.t == TV_LIST && seps.l->n == 2 && seps.l->items[0].t == TV_STR && seps.l->items[1].t == TV_STR) {
        item_sep = arena_strndup(A(st), seps.l->items[0].s.p, seps.l->items[0].s.n);
        key_sep = arena_strndup(A(st), seps.l->items[1].s.p, seps.l->items[1].s.n);
        if (!item_sep || !key_sep) return rt_nomem(st, line);
    } else if (seps.t != TV_NONE) {
        return rt_error(st, line, KILN_ERR_INVALID, "separators must be a pair of strings");
    }
    sbuf b;
    sb_init(&b, A(st), rs_max_output(st));
    sb_add(&b, "", 0);
    const char *err_type = NULL;
    if (!tv_to_json(&b, v, ind, item_sep, key_sep, tv_truthy(sort_keys), &err_type)) {
        if (err_type) {
            if (strchr(err_type, ' ')) return rt_error(st, line, KILN_ERR_INVALID, "%s", err_type);
            return rt_error(st, line, KILN_ERR_INVALID, "Object of type %s is not JSON serializable", err_type);
        }
        return rt_sb_fail(st, &b, line);
    }
    if (tv_truthy(ensure_ascii)) {
        sbuf a;
        sb_init(&a, A(st), rs_max_output(st));
        sb_add(&a, "", 0);
        for (size_t i = 0; i < b.n;) {
            int32_t c;
            size_t nx = u8_next(b.p, b.n, i, &c);
            bool ok;
            if (c < 0x80) ok = sb_addc(&a, b.p[i]);
            else if (c < 0x10000) ok = sb_printf(&a, "\\u%04x", (unsigned)c);
            else {
                uint32_t u = (uint32_t)c - 0x10000;
                ok = sb_printf(&a, "\\u%04x\\u%04x", 0xd800 + (u >> 10), 0xdc00 + (u & 0x3ff));
            }
            if (!ok) return rt_sb_fail(st, &a, line);
            i = nx;
        }
        b = a;
    }
    *out = sb_val(&b);
    return KILN_OK;
}

static kiln_err filter_impl(rstate *st, int line, const char *name, tval v, call_args *ca, tval *out) {
    kiln_err err;
    tval a0, s;
    if (!strcmp(name, "tojson")) return do_tojson(st, line, v, ca, out);
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        int64_t n = 0;
        if ((err = len_of(st, line, v, &n))) return err;
        *out = tv_int(n);
        return KILN_OK;
    }
    if (!strcmp(name, "trim")) {
        if ((err = soft_str(st, line, v, &s))) return err;
        tval chars = arg_or(ca, 0, "chars", tv_none());
        *out = do_strip(s, chars, 3);
        out->safe = s.safe;
        return KILN_OK;
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        tval dv = arg_or(ca, 0, "default_value", tv_str("", 0)), boolean = arg_or(ca, 1, "boolean", tv_bool(false));
        bool use = v.t == TV_UNDEF || (tv_truthy(boolean) && !tv_truthy(v));
        *out = use ? dv : v;
        return KILN_OK;
    }
    if (!strcmp(name, "string")) return soft_str(st, line, v, out);
    if (!strcmp(name, "safe")) {
        if ((err = soft_str(st, line, v, out))) return err;
        out->safe = 1;
        return KILN_OK;
    }
    if (!strcmp(name, "items")) {
        if (v.t == TV_UNDEF) {
            tlist *l = tl_new(A(st), 0);
            if (!l) return rt_nomem(st, line);
            *out = mklist(l);
            return KILN_OK;
        }
        if (v.t != TV_DICT) return rt_error(st, line, KILN_ERR_INVALID, "Can only get item pairs from a mapping.");
        if ((err = items_list(st, line, v.d, out))) return err;
        out->l->iter_type = "generator";
        return KILN_OK;
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") || !strcmp(name, "title")) {
        if ((err = soft_str(st, line, v, &s))) return err;
        casemode m = name[0] == 'u' ? CASE_UPPER : name[0] == 'l' ? CASE_LOWER : name[0] == 'c' ? CASE_CAPITALIZE : CASE_TITLE;
        if ((err = change_case(st, line, s, m, out))) return err;
        out->safe = s.safe;
        return KILN_OK;
    }
    if (!strcmp(name, "join")) {
        tval d = arg_or(ca, 0, "d", tv_str("", 0)), attr = arg_or(ca, 1, "attribute", tv_none());
        tlist *items;
        if ((err = rt_iter_list(st, line, v, &items))) return err;
        if ((err = soft_str(st, line, d, &d))) return err;
        sbuf b;
        sb_init(&b, A(st), rs_max_output(st));
        sb_add(&b, "", 0);
        for (size_t i = 0; i < items->n; i++) {
            tval x = items->items[i];
            if (attr.t != TV_NONE && (err = get_attr_path(st, line, x, attr, &x))) return err;
            if (i && !sb_add(&b, d.s.p, d.s.n)) return rt_sb_fail(st, &b, line);
            if (!tv_to_str(&b, x, false)) return rt_sb_fail(st, &b, line);
        }
        *out = sb_val(&b);
        return KILN_OK;
    }
    if (!strcmp(name, "list")) {
        tlist *items;
        if ((err = rt_iter_list(st, line, v, &items))) return err;
        tlist *l = tl_new(A(st), items->n);
        if (!l) return rt_nomem(st, line);
        for (size_t i = 0; i < items->n; i++) l->items[l->n++] = items->items[i];
        *out = mklist(l);
        return KILN_OK;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        tlist *items;
        if (name[0] == 'l' && (tl_reversible_err(v)))
            return rt_error(st, line, KILN_ERR_INVALID, "'%s' object is not reversible", tv_type_name(v));
        if ((err = rt_iter_list(st, line, v, &items))) return err;
        if (!items->n) {
            *out = rt_undef(st, UNDEF_HINT, NULL, tv_undef(), name[0] == 'f' ? "No first item, sequence was empty." : "No last item, sequence was empty.");
            return KILN_OK;
        }
        *out = name[0] == 'f' ? items->items[0] : items->items[items->n - 1];
        if (name[0] == 'f' && v.t == TV_LIST && tl_is_generator(v.l)) v.l->pos = v.l->n - items->n + 1; /* next() took one */
        return KILN_OK;
    }
    if (!strcmp(name, "reverse")) {
        if (v.t == TV_STR) {
            sbuf b;
            sb_init(&b, A(st), 0);
            sb_add(&b, "", 0);
            for (size_t e = v.s.n; e > 0;) {
                size_t k = e - 1;
                while (k > 0 && ((unsigned char)v.s.p[k] & 0xc0) == 0x80) k--;
                if (!sb_add(&b, v.s.p + k, e - k)) return rt_nomem(st, line);
                e = k;
            }
            *out = sb_val(&b);
            return KILN_OK;
        }
        tlist *items;
        if (v.t != TV_LIST && v.t != TV_DICT && v.t != TV_UNDEF) return rt_error(st, line, KILN_ERR_INVALID, "argument must be iterable");
        if ((err = rt_iter_list(st, line, v, &items))) return err;
        tlist *l = tl_new(A(st), items->n);
        if (!l) return rt_nomem(st, line);
        for (size_t i = items->n; i-- > 0;) l->items[l->n++] = items->items[i];
        *out = mkiter(l, v.t == TV_LIST ? "list_reverseiterator" : "generator");
        return KILN_OK;
    }
    if (!strcmp(name, "dictsort")) {
        if (v.t == TV_UNDEF) return rt_undef_error(st, line, v);
        if (v.t != TV_DICT) return rt_error(st, line, KILN_ERR_INVALID, "'%s' object has no attribute 'items'", tv_type_name(v));
        bool cs = tv_truthy(arg_or(ca, 0, "case_sensitive", tv_bool(false)));
        tval by = arg_or(ca, 1, "by", tv_cstr("key"));
        bool rev = tv_truthy(arg_or(ca, 2, "reverse", tv_bool(false)));
        bool by_value = by.t == TV_STR && by.s.n == 5 && !memcmp(by.s.p, "value", 5);
        size_t n = v.d->n;
        sort_item *it = arena_alloc(A(st), (n + 1) * sizeof(*it));
        if (!it) return rt_nomem(st, line);
        tval pairs;
        if ((err = items_list(st, line, v.d, &pairs))) return err;
        for (size_t i = 0; i < n; i++) {
            it[i].val = pairs.l->items[i];
            if ((err = sort_key(st, line, by_value ? v.d->vals[i] : v.d->keys[i], cs, &it[i].key))) return err;
        }
        if ((err = merge_sort(st, line, it, n, rev))) return err;
        for (size_t i = 0; i < n; i++) pairs.l->items[i] = it[i].val;
        *out = pairs;
        return KILN_OK;
    }
    if (!strcmp(name, "sort") || !strcmp(name, "unique") || !strcmp(name, "min") || !strcmp(name, "max")) {
        bool is_sort = !strcmp(name, "sort");
        bool rev = is_sort && tv_truthy(arg_or(ca, 0, "reverse", tv_bool(false)));
        bool cs = tv_truthy(arg_or(ca, is_sort ? 1 : 0, "case_sensitive", tv_bool(false)));
        tval attr = arg_or(ca, is_sort ? 2 : 1, "attribute", tv_none());
        tlist *items;
        if ((err = rt_iter_list(st, line, v, &items))) return err;
        size_t n = items->n;
        sort_item *it = arena_alloc(A(st), (n + 1) * sizeof(*it));
        if (!it) return rt_nomem(st, line);
        for (size_t i = 0; i < n; i++) {
            tval k = items->items[i];
            if (attr.t != TV_NONE && (err = get_attr_path(st, line, k, attr, &k))) return err;
            if ((err = sort_key(st, line, k, cs, &it[i].key))) return err;
            it[i].val = items->items[i];
        }
        tlist *l = tl_new(A(st), n);
        if (!l) return rt_nomem(st, line);
        if (!strcmp(name, "unique")) {
            tval *keys_kept = arena_alloc(A(st), (n + 1) * sizeof(tval));
            if (!keys_kept) return rt_nomem(st, line);
            for (size_t i = 0; i < n; i++) {
                bool seen = false;
                /* compared against the kept items only; quadratic, so it pays into the time budget */
                for (size_t j = 0; j < l->n && !seen; j++) seen = tv_equal(keys_kept[j], it[i].key);
                if ((err = rt_tick(st, line, (uint32_t)KILN_MIN(l->n, 1u << 20)))) return err;
                if (!seen) {
                    keys_kept[l->n] = it[i].key;
                    l->items[l->n++] = it[i].val;
                }
            }
            *out = mkiter(l, "generator");
            return KILN_OK;
        }
        if (!is_sort) {
            if (!n) {
                *out = rt_undef(st, UNDEF_HINT, NULL, tv_undef(), "No aggregated item, sequence was empty.");
                return KILN_OK;
            }
            size_t best = 0;
            for (size_t i = 1; i < n; i++) {
                bool ok;
                int c = tv_compare(it[i].key, it[best].key, &ok);
                if (!ok)
                    return rt_error(st, line, KILN_ERR_INVALID, "'%s' not supported between instances of '%s' and '%s'",
                                    name[1] == 'i' ? "<" : ">", tv_type_name(it[i].key), tv_type_name(it[best].key));
                if (name[1] == 'i' ? c < 0 : c > 0) best = i;
            }
            *out = it[best].val;
            return KILN_OK;
        }
        if ((err = merge_sort(st, line, it, n, rev))) return err;
        for (size_t i = 0; i < n; i++) l->items[l->n++] = it[i].val;
        *out = mklist(l);
        return KILN_OK;
    }
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr")) return select_common(st, line, v, ca, true, name[0] == 's', out);
    if (!strcmp(name, "select") || !strcmp(name, "reject")) return select_common(st, line, v, ca, false, name[0] == 's', out);
    if (!strcmp(name, "map")) {
        tlist *items;
        if (!tv_truthy(v)) v = tv_undef();
        if ((err = rt_iter_list(st, line, v, &items))) return err;
        tlist *l = tl_new(A(st), items->n);
        if (!l) return rt_nomem(st, line);
        tval attr;
        bool by_attr = false;
        for (size_t i = 0; i < ca->n_kw; i++)
            if (!strcmp(ca->kw_names[i], "attribute")) by_attr = true;
        if (by_attr) {
            arg(ca, 99, "attribute", &attr);
            tval dflt;
            bool has_default = arg(ca, 99, "default", &dflt);
            for (size_t i = 0; i < items->n; i++) {
                tval x;
                if ((err = get_attr_path(st, line, items->items[i], attr, &x))) return err;
                if (has_default && x.t == TV_UNDEF) x = dflt;
                l->items[l->n++] = x;
            }
        } else {
            if (!ca->n_pos || ca->pos[0].t != TV_STR) return rt_error(st, line, KILN_ERR_INVALID, "map requires a filter argument");
            char *fname = arena_strndup(A(st), ca->pos[0].s.p, ca->pos[0].s.n);
            if (!fname) return rt_nomem(st, line);
            if (!bi_has_filter(fname)) return rt_error(st, line, KILN_ERR_INVALID, "No filter named '%s'.", fname);
            call_args sub = {ca->pos + 1, ca->n_pos - 1, ca->kw_names, ca->kw_vals, ca->n_kw};
            for (size_t i = 0; i < items->n; i++)
                if ((err = bi_filter(st, line, fname, items->items[i], &sub, &l->items[l->n++]))) return err;
        }
        *out = mkiter(l, "generator");
        return KILN_OK;
    }
    if (!strcmp(name, "indent")) {
        if (v.t == TV_UNDEF) return rt_undef_error(st, line, v);
        if (v.t == TV_LIST && !v.l->tuple && !v.l->iter_type) /* list += str extends it; then no splitlines */
            return rt_error(st, line, KILN_ERR_INVALID, "'list' object has no attribute 'splitlines'");
        if (v.t != TV_STR) return rt_error(st, line, KILN_ERR_INVALID, "unsupported operand type(s) for +=: '%s' and 'str'", tv_type_name(v));
        if ((err = do_indent(st, line, v, ca, out))) return err;
        out->safe = v.t == TV_STR && v.safe;
        return KILN_OK;
    }
    if (!strcmp(name, "replace")) {
        tval old, new_;
        if (!arg(ca, 0, "old", &old) || !arg(ca, 1, "new", &new_)) return rt_error(st, line, KILN_ERR_INVALID, "replace() missing arguments");
        if ((err = soft_str(st, line, v, &s)) || (err = soft_str(st, line, old, &old)) || (err = soft_str(st, line, new_, &new_))) return err;
        tval cnt = arg_or(ca, 2, "count", tv_none());
        return do_replace(st, line, s, old, new_, cnt.t == TV_INT ? cnt.i : -1, out);
    }
    if (!strcmp(name, "int")) {
        tval dflt = arg_or(ca, 0, "default", tv_int(0));
        if (v.t == TV_INT) *out = v;
        else if (v.t == TV_BOOL) *out = tv_int(v.b);
        else if (v.t == TV_FLOAT) *out = isfinite(v.f) && fabs(v.f) < 9.2e18 ? tv_int((int64_t)v.f) : dflt;
        else if (v.t == TV_STR) {
            char *z = arena_strndup(A(st), v.s.p, v.s.n), *end;
            if (!z) return rt_nomem(st, line);
            errno = 0;
            long long x = strtoll(z, &end, 10);
            while (*end && py_isspace((unsigned char)*end)) end++;
            if (!*end && end != z && !errno) {
                *out = tv_int(x);
            } else {
                double f = strtod(z, &end);
                while (*end && py_isspace((unsigned char)*end)) end++;
                *out = (!*end && end != z && isfinite(f) && fabs(f) < 9.2e18) ? tv_int((int64_t)f) : dflt;
            }
        } else *out = dflt;
        return KILN_OK;
    }
    if (!strcmp(name, "float")) {
        tval dflt = arg_or(ca, 0, "default", tv_float(0.0));
        if (v.t == TV_FLOAT) *out = v;
        else if (v.t == TV_INT || v.t == TV_BOOL) *out = tv_float(v.t == TV_INT ? (double)v.i : v.b);
        else if (v.t == TV_STR) {
            char *z = arena_strndup(A(st), v.s.p, v.s.n), *end;
            if (!z) return rt_nomem(st, line);
            double f = strtod(z, &end);
            while (*end && py_isspace((unsigned char)*end)) end++;
            *out = (!*end && end != z) ? tv_float(f) : dflt;
        } else *out = dflt;
        return KILN_OK;
    }
    if (!strcmp(name, "abs")) {
        if (v.t == TV_INT) *out = tv_int(v.i < 0 ? -v.i : v.i);
        else if (v.t == TV_BOOL) *out = tv_int(v.b);
        else if (v.t == TV_FLOAT) *out = tv_float(fabs(v.f));
        else return rt_error(st, line, KILN_ERR_INVALID, "bad operand type for abs(): '%s'", tv_type_name(v));
        return KILN_OK;
    }
    if (!strcmp(name, "round")) {
        tval prec = arg_or(ca, 0, "precision", tv_int(0)), method = arg_or(ca, 1, "method", tv_cstr("common"));
        if (v.t != TV_INT && v.t != TV_FLOAT && v.t != TV_BOOL) return rt_error(st, line, KILN_ERR_INVALID, "type %s doesn't define __round__ method", tv_type_name(v));
        double x = v.t == TV_FLOAT ? v.f : v.t == TV_INT ? (double)v.i : v.b;
        bool common = !(method.t == TV_STR && ((method.s.n == 5 && !memcmp(method.s.p, "floor", 5)) || (method.s.n == 4 && !memcmp(method.s.p, "ceil", 4))));
        if (common && v.t != TV_FLOAT && prec.t == TV_INT && prec.i >= 0) {
            *out = tv_int(v.t == TV_INT ? v.i : v.b); /* Python: round(int, n) is the int */
            return KILN_OK;
        }
        int p = prec.t == TV_INT ? (int)KILN_MAX(-20, KILN_MIN(prec.i, 20)) : 0;
        double m = pow(10, p);
        if (method.t == TV_STR && method.s.n == 5 && !memcmp(method.s.p, "floor", 5)) x = floor(x * m) / m;
        else if (method.t == TV_STR && method.s.n == 4 && !memcmp(method.s.p, "ceil", 4)) x = ceil(x * m) / m;
        else if (p >= 0) {
            char buf[64];
            snprintf(buf, sizeof buf, "%.*f", p, x);
            x = strtod(buf, NULL);
        } else {
            x = nearbyint(x / pow(10, -p)) * pow(10, -p);
        }
        *out = tv_float(x);
        return KILN_OK;
    }
    if (!strcmp(name, "sum")) {
        tval attr = arg_or(ca, 0, "attribute", tv_none()), acc = arg_or(ca, 1, "start", tv_int(0));
        tlist *items;
        if ((err = rt_iter_list(st, line, v, &items))) return err;
        for (size_t i = 0; i < items->n; i++) {
            tval x = items->items[i];
            if (attr.t != TV_NONE && (err = get_attr_path(st, line, x, attr, &x))) return err;
            if (!((x.t == TV_INT || x.t == TV_FLOAT || x.t == TV_BOOL) && (acc.t == TV_INT || acc.t == TV_FLOAT || acc.t == TV_BOOL)))
                return rt_error(st, line, KILN_ERR_INVALID, "unsupported operand type(s) for +: '%s' and '%s'", tv_type_name(acc), tv_type_name(x));
            if (acc.t == TV_FLOAT || x.t == TV_FLOAT) {
                acc = tv_float((acc.t == TV_FLOAT ? acc.f : acc.t == TV_INT ? (double)acc.i : acc.b) +
                               (x.t == TV_FLOAT ? x.f : x.t == TV_INT ? (double)x.i : x.b));
            } else {
                int64_t r;
                if (__builtin_add_overflow(acc.t == TV_INT ? acc.i : acc.b, x.t == TV_INT ? x.i : x.b, &r))
                    return rt_error(st, line, KILN_ERR_LIMIT, "integer overflow");
                acc = tv_int(r);
            }
        }
        *out = acc;
        return KILN_OK;
    }
    if (!strcmp(name, "wordcount")) {
        if ((err = soft_str(st, line, v, &s))) return err;
        int64_t k = 0;
        bool in_word = false;
        for (size_t i = 0; i < s.s.n;) {
            int32_t c;
            i = u8_next(s.s.p, s.s.n, i, &c);
            utf8proc_category_t cat = utf8proc_category(c);
            bool w = c == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_NO);
            if (w && !in_word) k++;
            in_word = w;
        }
        *out = tv_int(k);
        return KILN_OK;
    }
    if (!strcmp(name, "center")) {
        if ((err = soft_str(st, line, v, &s))) return err;
        tval w = arg_or(ca, 0, "width", tv_int(80));
        int64_t len = (int64_t)cp_count(s.s.p, s.s.n), width = w.t == TV_INT ? KILN_MIN(w.i, 100000) : 80;
        if (width <= len) {
            *out = s;
            return KILN_OK;
        }
        int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
        sbuf b;
        sb_init(&b, A(st), 0);
        sb_add(&b, "", 0);
        for (int64_t i = 0; i < left; i++) sb_addc(&b, ' ');
        sb_add(&b, s.s.p, s.s.n);
        for (int64_t i = 0; i < pad - left; i++) sb_addc(&b, ' ');
        if (b.failed) return rt_nomem(st, line);
        *out = sb_val(&b);
        return KILN_OK;
    }
    if (!strcmp(name, "e") || !strcmp(name, "escape") || !strcmp(name, "forceescape")) {
        if (name[0] == 'f' && v.t == TV_STR) v.safe = 0;
        return rt_escape(st, line, v, out);
    }
    if (!strcmp(name, "format")) {
        if ((err = soft_str(st, line, v, &s))) return err;
        tlist *args = tl_new(A(st), ca->n_pos);
        if (!args) return rt_nomem(st, line);
        args->tuple = true;
        for (size_t i = 0; i < ca->n_pos; i++) args->items[args->n++] = ca->pos[i];
        return rt_str_format(st, line, s, mklist(args), out);
    }
    if (!strcmp(name, "attr")) {
        if (!arg(ca, 0, "name", &a0) || a0.t != TV_STR) return rt_error(st, line, KILN_ERR_INVALID, "attr() requires a name");
        if (v.t == TV_UNDEF) return rt_undef_error(st, line, v);
        char *an = arena_strndup(A(st), a0.s.p, a0.s.n);
        if (!an) return rt_nomem(st, line);
        if (bi_method(st, v, an, out)) return KILN_OK;
        *out = rt_undef(st, UNDEF_ATTR, rt_obj_type_repr(v), a0, NULL);
        return KILN_OK;
    }
    if (!strcmp(name, "batch")) {
        tval cnt = arg_or(ca, 0, "linecount", tv_undef()), fill = arg_or(ca, 1, "fill_with", tv_none());
        if (cnt.t != TV_INT || cnt.i <= 0) return rt_error(st, line, KILN_ERR_INVALID, "batch() requires a positive linecount");
        tlist *items;
        if ((err = rt_iter_list(st, line, v, &items))) return err;
        tlist *l = tl_new(A(st), 0), *curr = NULL;
        if (!l) return rt_nomem(st, line);
        for (size_t i = 0; i < items->n; i++) {
            if (!curr || curr->n == (size_t)cnt.i) {
                if (!(curr = tl_new(A(st), 0)) || !tl_push(A(st), l, mklist(curr))) return rt_nomem(st, line);
            }
            if (!tl_push(A(st), curr, items->items[i])) return rt_nomem(st, line);
        }
        if (curr && fill.t != TV_NONE)
            while (curr->n < (size_t)cnt.i)
                if (!tl_push(A(st), curr, fill)) return rt_nomem(st, line);
        *out = mkiter(l, "generator");
        return KILN_OK;
    }
    if (!strcmp(name, "truncate")) {
        tval len_v = arg_or(ca, 0, "length", tv_int(255)), kw = arg_or(ca, 1, "killwords", tv_bool(false)),
             end = arg_or(ca, 2, "end", tv_cstr("...")), leeway = arg_or(ca, 3, "leeway", tv_int(5));
        if ((err = soft_str(st, line, v, &s))) return err;
        if (len_v.t != TV_INT || leeway.t != TV_INT || end.t != TV_STR)
            return rt_error(st, line, KILN_ERR_INVALID, "truncate() expects integer length/leeway and a string end");
        int64_t n_end = (int64_t)cp_count(end.s.p, end.s.n), n = (int64_t)cp_count(s.s.p, s.s.n);
        if (len_v.i < n_end) return rt_error(st, line, KILN_ERR_INVALID, "expected length >= %lld, got %lld", (long long)n_end, (long long)len_v.i);
        if (leeway.i < 0) return rt_error(st, line, KILN_ERR_INVALID, "expected leeway >= 0, got %lld", (long long)leeway.i);
        if (n <= len_v.i + leeway.i) {
            *out = s;
            return KILN_OK;
        }
        /* the first length - len(end) code points */
        size_t cut = 0;
        for (int64_t k = 0; k < len_v.i - n_end && cut < s.s.n; k++) {
            cut++;
            while (cut < s.s.n && ((unsigned char)s.s.p[cut] & 0xc0) == 0x80) cut++;
        }
        if (!tv_truthy(kw)) {
            /* rsplit(" ", 1)[0] */
            for (size_t k = cut; k-- > 0;)
                if (s.s.p[k] == ' ') {
                    cut = k;
                    break;
                }
        }
        sbuf b;
        sb_init(&b, A(st), rs_max_output(st));
        if (!sb_add(&b, s.s.p, cut) || !sb_add(&b, end.s.p, end.s.n)) return rt_sb_fail(st, &b, line);
        *out = sb_val(&b);
        return KILN_OK;
    }
    if (!strcmp(name, "groupby")) {
        tval attr, dflt = arg_or(ca, 1, "default", tv_undef());
        bool cs = tv_truthy(arg_or(ca, 2, "case_sensitive", tv_bool(false)));
        if (!arg(ca, 0, "attribute", &attr)) return rt_error(st, line, KILN_ERR_INVALID, "groupby() missing 1 required positional argument: 'attribute'");
        tlist *items;
        if ((err = rt_iter_list(st, line, v, &items))) return err;
        size_t n = items->n;
        sort_item *it = arena_alloc(A(st), (n + 1) * sizeof(*it));
        tval *raw = arena_alloc(A(st), (n + 1) * sizeof(*raw));
        if (!it || !raw) return rt_nomem(st, line);
        for (size_t i = 0; i < n; i++) {
            tval k;
            if ((err = get_attr_path(st, line, items->items[i], attr, &k))) return err;
            if (k.t == TV_UNDEF && dflt.t != TV_UNDEF) k = dflt;
            raw[i] = k;
            it[i].val = tv_int((int64_t)i);
            if ((err = sort_key(st, line, k, cs, &it[i].key))) return err;
        }
        if ((err = merge_sort(st, line, it, n, false))) return err;
        tlist *groups = tl_new(A(st), 0);
        if (!groups) return rt_nomem(st, line);
        for (size_t i = 0; i < n;) {
            size_t j = i;
            tlist *members = tl_new(A(st), 0), *pair = tl_new(A(st), 2);
            if (!members || !pair) return rt_nomem(st, line);
            while (j < n && tv_equal(it[j].key, it[i].key)) {
                if (!tl_push(A(st), members, items->items[it[j].val.i])) return rt_nomem(st, line);
                j++;
            }
            pair->tuple = pair->group = true;
            /* case-insensitive groups are named by their first member's value */
            pair->items[0] = cs ? it[i].key : raw[it[i].val.i];
            pair->items[1] = mklist(members);
            pair->n = 2;
            if (!tl_push(A(st), groups, mklist(pair))) return rt_nomem(st, line);
            i = j;
        }
        *out = mklist(groups);
        return KILN_OK;
    }
    if (!strcmp(name, "slice")) {
        tval sl = arg_or(ca, 0, "slices", tv_undef()), fill = arg_or(ca, 1, "fill_with", tv_none());
        if (sl.t != TV_INT || sl.i <= 0 || sl.i > 100000) return rt_error(st, line, KILN_ERR_INVALID, "slice() needs a positive number of slices");
        tlist *items;
        if ((err = rt_iter_list(st, line, v, &items))) return err;
        size_t len = items->n, slices = (size_t)sl.i, per = len / slices, extra = len % slices, offset = 0;
        tlist *l = tl_new(A(st), slices);
        if (!l) return rt_nomem(st, line);
        for (size_t k = 0; k < slices; k++) {
            size_t start = offset + k * per;
            if (k < extra) offset++;
            size_t end = offset + (k + 1) * per;
            tlist *part = tl_new(A(st), end - start + 1);
            if (!part) return rt_nomem(st, line);
            for (size_t q = start; q < end; q++) part->items[part->n++] = items->items[q];
            if (fill.t != TV_NONE && k >= extra) part->items[part->n++] = fill;
            l->items[l->n++] = mklist(part);
        }
        *out = mkiter(l, "generator");
        return KILN_OK;
    }
    if (!strcmp(name, "filesizeformat")) {
        bool binary = tv_truthy(arg_or(ca, 0, "binary", tv_bool(false)));
        double bytes;
        if (v.t == TV_INT || v.t == TV_BOOL) bytes = (double)(v.t == TV_INT ? v.i : v.b);
        else if (v.t == TV_FLOAT) bytes = v.f;
        else if (v.t == TV_STR) {
            char *z = arena_strndup(A(st), v.s.p, v.s.n), *endp;
            if (!z) return rt_nomem(st, line);
            bytes = strtod(z, &endp);
            if (endp == z) return rt_error(st, line, KILN_ERR_INVALID, "could not convert string to float: '%.100s'", z);
        } else {
            return rt_error(st, line, KILN_ERR_INVALID, "float() argument must be a string or a real number, not '%s'", tv_type_name(v));
        }
        static const char *const dec[] = {"kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"};
        static const char *const bin[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"};
        double base = binary ? 1024 : 1000;
        sbuf b;
        sb_init(&b, A(st), 0);
        if (bytes == 1) {
            sb_adds(&b, "1 Byte");
        } else if (bytes < base) {
            sb_printf(&b, "%lld Bytes", (long long)bytes);
        } else {
            double unit = base;
            int i;
            for (i = 0; i < 8; i++) {
                unit *= base;
                if (bytes < unit) break;
            }
            if (i == 8) i = 7;
            char num[64];
            snprintf(num, sizeof num, "%.1f", base * bytes / unit);
            sb_printf(&b, "%s %s", num, binary ? bin[i] : dec[i]);
        }
        if (b.failed) return rt_nomem(st, line);
        *out = sb_val(&b);
        return KILN_OK;
    }
    if (!strcmp(name, "striptags")) {
        if ((err = soft_str(st, line, v, &s))) return err;
        /* remove <!-- comments --> and <tags>, collapse whitespace, unescape the basic entities */
        sbuf t;
        sb_init(&t, A(st), rs_max_output(st));
        for (size_t i = 0; i < s.s.n;) {
            if (s.s.n - i >= 4 && !memcmp(s.s.p + i, "<!--", 4)) {
                const char *e = memmem(s.s.p + i + 4, s.s.n - i - 4, "-->", 3);
                if (e) {
                    i = (size_t)(e - s.s.p) + 3;
                    continue;
                }
            }
            if (s.s.p[i] == '<') {
                const char *e = memchr(s.s.p + i + 1, '>', s.s.n - i - 1);
                if (e) {
                    i = (size_t)(e - s.s.p) + 1;
                    continue;
                }
            }
            sb_addc(&t, s.s.p[i++]);
        }
        tval words;
        if ((err = do_split(st, line, sb_val(&t), tv_none(), -1, false, &words))) return err;
        tval joined;
        if ((err = str_join(st, line, tv_cstr(" "), words, &joined))) return err;
        static const char *const ents[][2] = {{"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&#39;", "'"}, {"&#34;", "\""}, {"&nbsp;", "\xc2\xa0"}};
        tval r = joined;
        for (size_t k = 0; k < KILN_ARRAY_LEN(ents); k++)
            if ((err = do_replace(st, line, r, tv_cstr(ents[k][0]), tv_cstr(ents[k][1]), -1, &r))) return err;
        *out = r;
        return KILN_OK;
    }
    if (!strcmp(name, "urlencode")) {
        /* werkzeug-style url_quote: UTF-8 bytes, unreserved kept, '/' kept outside query pairs */
        tval pairs_v = tv_undef();
        bool single = v.t == TV_STR || !(v.t == TV_LIST || v.t == TV_DICT);
        sbuf b;
        sb_init(&b, A(st), rs_max_output(st));
        tlist *pairs = NULL;
        if (!single) {
            if (v.t == TV_DICT) {
                if ((err = items_list(st, line, v.d, &pairs_v))) return err;
                pairs = pairs_v.l;
            } else {
                pairs = v.l;
            }
        }
        size_t n_parts = single ? 1 : pairs->n * 2;
        for (size_t k = 0; k < n_parts; k++) {
            tval part;
            if (single) {
                part = v;
            } else {
                tval pair = pairs->items[k / 2];
                if (pair.t != TV_LIST || pair.l->n != 2)
                    return rt_error(st, line, KILN_ERR_INVALID, "urlencode expects pairs");
                part = pair.l->items[k % 2];
                if (k) sb_addc(&b, k % 2 ? '=' : '&');
            }
            tval ps;
            if ((err = rt_to_str(st, line, part, &ps))) return err;
            for (size_t q = 0; q < ps.s.n; q++) {
                unsigned char c = (unsigned char)ps.s.p[q];
                if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("_.-~", c) ||
                    (single && c == '/'))
                    sb_addc(&b, (char)c);
                else if (c == ' ' && !single)
                    sb_addc(&b, '+');
                else
                    sb_printf(&b, "%%%02X", c);
            }
        }
        if (b.failed) return rt_sb_fail(st, &b, line);
        *out = sb_val(&b);
        return KILN_OK;
    }
    if (!strcmp(name, "xmlattr")) {
        if (v.t != TV_DICT) return rt_error(st, line, KILN_ERR_INVALID, "'%s' object has no attribute 'items'", tv_type_name(v));
        bool autospace = tv_truthy(arg_or(ca, 0, "autospace", tv_bool(true)));
        sbuf b;
        sb_init(&b, A(st), rs_max_output(st));
        bool any = false;
        for (size_t k = 0; k < v.d->n; k++) {
            tval val = v.d->vals[k], ek, ev;
            if (val.t == TV_NONE || val.t == TV_UNDEF) continue;
            if ((err = rt_escape(st, line, v.d->keys[k], &ek)) || (err = rt_escape(st, line, val, &ev))) return err;
            if ((any || autospace) && !sb_addc(&b, ' ')) return rt_sb_fail(st, &b, line);
            if (!sb_add(&b, ek.s.p, ek.s.n) || !sb_adds(&b, "=\"") || !sb_add(&b, ev.s.p, ev.s.n) || !sb_addc(&b, '"'))
                return rt_sb_fail(st, &b, line);
            any = true;
        }
        *out = sb_val(&b);
        return KILN_OK;
    }
    return rt_error(st, line, KILN_ERR_UNSUPPORTED, "filter '%s' is not supported by kiln", name);
}

/* jinja2's select/map/items/unique/batch/slice are generators: a failure (input not iterable, a
 * test that raises) surfaces only when the result is iterated, and never if it is not. */
kiln_err bi_filter(rstate *st, int line, const char *name, tval v, call_args *ca, tval *out) {
    static const char *const lazy[] = {"select", "reject", "selectattr", "rejectattr", "map", "unique",
                                       "batch", "items", "slice"};
    kiln_err err = filter_impl(st, line, name, v, ca, out);
    if (err == KILN_OK || err == KILN_ERR_NOMEM || err == KILN_ERR_LIMIT) return err;
    bool is_lazy = false;
    for (size_t i = 0; i < KILN_ARRAY_LEN(lazy); i++) is_lazy |= !strcmp(lazy[i], name);
    if (!is_lazy) return err;
    tlist *g = tl_new(A(st), 0);
    char *msg = arena_strndup(A(st), kiln_errmsg(), strlen(kiln_errmsg()));
    if (!g || !msg) return rt_nomem(st, line);
    g->err_msg = msg;
    g->err_code = err;
    *out = mkiter(g, "generator");
    return KILN_OK;
}

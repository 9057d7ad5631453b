/* render.c: the interpreter: walks the AST of a kiln_template with a scope chain over the JSON
 * context, with jinja2's semantics (per-iteration loop scopes, `loop.*`, namespaces, macros with
 * caller(), Python operators, default Undefined) and the limits of kiln_template_limits. Each
 * render owns one arena freed at the end, so errors anywhere unwind without leaks.
 * Thread: any; a render touches only its own state and the read-only template. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "template/internal.h"

typedef struct scope {
    struct scope *parent;
    const char **names;
    tval *vals;
    size_t n, cap;
    bool captured;         /* a macro or caller() closes over it: never reuse it */
} scope;

typedef enum ctl { CTL_NONE, CTL_BREAK, CTL_CONTINUE } ctl;

struct rstate {
    arena a;
    kiln_template_limits lim;
    uint64_t n_iters;
    uint64_t deadline_ns;  /* 0 = none */
    uint32_t n_ticks;      /* work steps since the last clock read */
    int depth;
    scope *root;
    sbuf *out;
    ctl ctl;
    tval filter_body;      /* the body text of a filter block / filtered set block */
};

arena *rs_arena(rstate *st) { return &st->a; }

kiln_err rt_tick(rstate *st, int line, uint32_t steps) {
    st->n_ticks += steps;
    if (!st->deadline_ns || st->n_ticks < 4096) return KILN_OK;
    st->n_ticks = 0;
    if (kiln_now_ns() > st->deadline_ns)
        return rt_error(st, line, KILN_ERR_LIMIT, "template render exceeds the time limit of %llu ms",
                        (unsigned long long)st->lim.max_time_ms);
    return KILN_OK;
}
size_t rs_max_output(rstate *st) { return st->lim.max_output_bytes; }
uint64_t rs_max_iterations(rstate *st) { return st->lim.max_iterations; }

void kiln_template_limits_default(kiln_template_limits *lim) {
    lim->max_output_bytes = 8u << 20;
    lim->max_memory_bytes = 256u << 20;
    lim->max_iterations = 2000000;
    lim->max_depth = 500;
    lim->max_time_ms = 10000;
}

kiln_err rt_error(rstate *st, int line, kiln_err code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (code == KILN_ERR_RAISED) return kiln_errf(code, "%s", msg);
    return kiln_errf(code, "line %d: %s", line, msg);
}

kiln_err rt_nomem(rstate *st, int line) {
    if (st->a.hit_limit)
        return rt_error(st, line, KILN_ERR_LIMIT, "template render exceeds the memory limit (%zu bytes)", st->lim.max_memory_bytes);
    return rt_error(st, line, KILN_ERR_NOMEM, "out of memory rendering template");
}

kiln_err rt_sb_fail(rstate *st, sbuf *b, int line) {
    if (b->too_deep) return rt_error(st, line, KILN_ERR_LIMIT, "value nested too deeply to print");
    if (!st->a.hit_limit && b->over)
        return rt_error(st, line, KILN_ERR_LIMIT, "template output exceeds the limit of %zu bytes", b->max);
    return rt_nomem(st, line);
}

bool undef_message(sbuf *b, tval u) {
    if (!u.u) return sb_adds(b, "undefined value");
    switch (u.u->kind) {
    case UNDEF_NAME:
        return tv_to_str(b, u.u->key, true) && sb_adds(b, " is undefined");
    case UNDEF_ATTR:
        return sb_printf(b, "'%s' has no attribute ", u.u->obj_type) && tv_to_str(b, u.u->key, true);
    case UNDEF_ITEM:
        return sb_printf(b, "%s has no element ", u.u->obj_type) && tv_to_str(b, u.u->key, true);
    default:
        return sb_adds(b, u.u->hint ? u.u->hint : "undefined value");
    }
}

kiln_err rt_undef_error(rstate *st, int line, tval u) {
    sbuf b;
    sb_init(&b, &st->a, 0);
    if (!undef_message(&b, u) || !sb_addc(&b, 0)) return rt_nomem(st, line);
    return rt_error(st, line, KILN_ERR_INVALID, "%s", b.p);
}

/* ---- scopes ---- */
static scope *scope_new(rstate *st, scope *parent) {
    scope *s = arena_alloc(&st->a, sizeof(*s));
    if (s) s->parent = parent;
    return s;
}

static bool scope_set(rstate *st, scope *s, const char *name, tval v) {
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) {
            s->vals[i] = v;
            return true;
        }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **names = arena_alloc(&st->a, cap * sizeof(*names));
        tval *vals = arena_alloc(&st->a, cap * sizeof(*vals));
        if (!names || !vals) return false;
        if (s->n) {
            memcpy(names, s->names, s->n * sizeof(*names));
            memcpy(vals, s->vals, s->n * sizeof(*vals));
        }
        s->names = names;
        s->vals = vals;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->vals[s->n] = v;
    s->n++;
    return true;
}

static bool scope_get(scope *s, const char *name, tval *out) {
    for (; s; s = s->parent)
        for (size_t i = s->n; i-- > 0;)
            if (!strcmp(s->names[i], name)) {
                *out = s->vals[i];
                return true;
            }
    return false;
}

tval rt_undef(rstate *st, undef_kind kind, const char *obj_type, tval key, const char *hint) {
    tval v = tv_undef();
    tundef *u = arena_alloc(&st->a, sizeof(*u));
    if (u) {
        u->kind = kind;
        u->obj_type = obj_type;
        u->key = key;
        u->hint = hint;
    }
    v.u = u;
    return v;
}

/* jinja2's object_type_repr */
const char *rt_obj_type_repr(tval v) {
    switch (v.t) {
    case TV_NONE: return "None";
    case TV_BOOL: return "bool object";
    case TV_INT: return "int object";
    case TV_FLOAT: return "float object";
    case TV_STR: return "str object";
    case TV_LIST:
        if (v.l->iter_type) return v.l->iter_type;
        return v.l->tuple ? "tuple object" : "list object";
    case TV_DICT: return "dict object";
    case TV_NS: return "jinja2.utils.Namespace object";
    case TV_MACRO: return "jinja2.runtime.Macro object";
    case TV_LOOP: return "jinja2.runtime.LoopContext object";
    case TV_FUNC: return "builtin_function_or_method object";
    default: return "jinja2.runtime.Undefined object";
    }
}

/* ---- UTF-8 helpers for Python's code-point indexing ---- */
static size_t u8_len(const char *p, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)p[i] & 0xc0) != 0x80;
    return k;
}
/* byte offset of code point index cp (cp <= length) */
static size_t u8_off(const char *p, size_t n, size_t cp) {
    size_t i = 0, k = 0;
    while (i < n) {
        if (((unsigned char)p[i] & 0xc0) != 0x80) {
            if (k == cp) return i;
            k++;
        }
        i++;
    }
    return n;
}

/* ---- expressions ---- */
static kiln_err eval(rstate *st, scope *sc, const node *n, tval *out);
static kiln_err exec_body(rstate *st, scope *sc, const node *body);

static kiln_err getattr_v(rstate *st, int line, tval obj, const char *name, tval *out);

static kiln_err get_loop_attr(rstate *st, int line, tloop *lp, const char *name, tval *out) {
    size_t n = lp->items->n, i = lp->i;
    if (!strcmp(name, "index")) *out = tv_int((int64_t)i + 1);
    else if (!strcmp(name, "index0")) *out = tv_int((int64_t)i);
    else if (!strcmp(name, "revindex")) *out = tv_int((int64_t)(n - i));
    else if (!strcmp(name, "revindex0")) *out = tv_int((int64_t)(n - i - 1));
    else if (!strcmp(name, "first")) *out = tv_bool(i == 0);
    else if (!strcmp(name, "last")) *out = tv_bool(i + 1 == n);
    else if (!strcmp(name, "length")) *out = tv_int((int64_t)n);
    else if (!strcmp(name, "depth")) *out = tv_int(lp->depth);
    else if (!strcmp(name, "depth0")) *out = tv_int(lp->depth - 1);
    else if (!strcmp(name, "previtem"))
        *out = i > 0 ? lp->items->items[i - 1] : rt_undef(st, UNDEF_HINT, NULL, tv_undef(), "there is no previous item");
    else if (!strcmp(name, "nextitem"))
        *out = i + 1 < n ? lp->items->items[i + 1] : rt_undef(st, UNDEF_HINT, NULL, tv_undef(), "there is no next item");
    else if (!strcmp(name, "cycle") || !strcmp(name, "changed")) {
        tfunc *f = arena_alloc(&st->a, sizeof(*f));
        if (!f) return rt_nomem(st, line);
        f->id = name[1] == 'y' ? -1 : -2;
        f->name = name[1] == 'y' ? "cycle" : "changed";
        f->self.t = TV_LOOP;
        f->self.loop = lp;
        out->t = TV_FUNC;
        out->fn = f;
    } else
        *out = rt_undef(st, UNDEF_ATTR, rt_obj_type_repr((tval){.t = TV_LOOP}), tv_cstr(name), NULL);
    return KILN_OK;
}

static kiln_err getattr_v(rstate *st, int line, tval obj, const char *name, tval *out) {
    switch (obj.t) {
    case TV_UNDEF: return rt_undef_error(st, line, obj);
    case TV_LOOP: return get_loop_attr(st, line, obj.loop, name, out);
    case TV_NS: {
        tval *v = td_get_s(obj.d, name, strlen(name));
        *out = v ? *v : rt_undef(st, UNDEF_ATTR, rt_obj_type_repr(obj), tv_cstr(name), NULL);
        return KILN_OK;
    }
    case TV_DICT:
        if (bi_method(st, obj, name, out)) return KILN_OK;
        {
            tval *v = td_get_s(obj.d, name, strlen(name));
            *out = v ? *v : rt_undef(st, UNDEF_ATTR, rt_obj_type_repr(obj), tv_cstr(name), NULL);
        }
        return KILN_OK;
    default:
        if (bi_method(st, obj, name, out)) return KILN_OK;
        *out = rt_undef(st, UNDEF_ATTR, rt_obj_type_repr(obj), tv_cstr(name), NULL);
        return KILN_OK;
    }
}

static kiln_err norm_index(int64_t i, size_t n, size_t *out) {
    if (i < 0) i += (int64_t)n;
    if (i < 0 || (uint64_t)i >= n) return KILN_ERR_NOT_FOUND;
    *out = (size_t)i;
    return KILN_OK;
}

kiln_err rt_getitem(rstate *st, int line, tval obj, tval key, tval *out) {
    if (obj.t == TV_UNDEF) return rt_undef_error(st, line, obj);
    if (key.t == TV_BOOL) key = tv_int(key.b);
    switch (obj.t) {
    case TV_LIST:
        if (obj.l->iter_type) break;
        if (key.t == TV_INT) {
            size_t i;
            if (norm_index(key.i, obj.l->n, &i) == KILN_OK) {
                *out = obj.l->items[i];
                return KILN_OK;
            }
            *out = rt_undef(st, UNDEF_ITEM, rt_obj_type_repr(obj), key, NULL);
            return KILN_OK;
        }
        break;
    case TV_STR:
        if (key.t == TV_INT) {
            size_t i, len = u8_len(obj.s.p, obj.s.n);
            if (norm_index(key.i, len, &i) == KILN_OK) {
                size_t a = u8_off(obj.s.p, obj.s.n, i), b = u8_off(obj.s.p, obj.s.n, i + 1);
                *out = tv_str(obj.s.p + a, b - a);
                return KILN_OK;
            }
            *out = rt_undef(st, UNDEF_ITEM, rt_obj_type_repr(obj), key, NULL);
            return KILN_OK;
        }
        break;
    case TV_DICT:
    case TV_NS: {
        tval *v = td_get(obj.d, key);
        if (v) {
            *out = *v;
            return KILN_OK;
        }
        break;
    }
    case TV_LOOP:
        if (key.t == TV_STR) return get_loop_attr(st, line, obj.loop, arena_strndup(&st->a, key.s.p, key.s.n), out);
        break;
    default: break;
    }
    if (key.t == TV_STR) {
        char *name = arena_strndup(&st->a, key.s.p, key.s.n);
        if (!name) return rt_nomem(st, line);
        if (obj.t != TV_DICT && obj.t != TV_NS && bi_method(st, obj, name, out)) return KILN_OK;
        *out = rt_undef(st, UNDEF_ATTR, rt_obj_type_repr(obj), key, NULL);
        return KILN_OK;
    }
    *out = rt_undef(st, UNDEF_ITEM, rt_obj_type_repr(obj), key, NULL);
    if (obj.t == TV_DICT) out->u->kind = UNDEF_ATTR;
    return KILN_OK;
}

static int64_t clampi(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Python slice index normalization */
static void slice_indices(int64_t len, tval start, tval stop, tval step, int64_t *o_start, int64_t *o_stop, int64_t *o_step) {
    int64_t st = step.t == TV_INT ? step.i : 1;
    int64_t b, e;
    if (st > 0) {
        b = start.t == TV_INT ? start.i : 0;
        e = stop.t == TV_INT ? stop.i : len;
        if (b < 0) b += len;
        if (e < 0) e += len;
        b = clampi(b, 0, len);
        e = clampi(e, 0, len);
    } else {
        b = start.t == TV_INT ? start.i : len - 1;
        e = stop.t == TV_INT ? stop.i : -len - 1;
        if (start.t == TV_INT && b < 0) b += len;
        if (stop.t == TV_INT && e < 0) e += len;
        if (stop.t != TV_INT) e = -1;
        b = clampi(b, -1, len - 1);
        e = clampi(e, -1, len - 1);
    }
    *o_start = b;
    *o_stop = e;
    *o_step = st;
}

static kiln_err eval_slice(rstate *st, scope *sc, tval obj, const node *s, tval *out) {
    tval v[3] = {tv_none(), tv_none(), tv_none()};
    const node *parts[3] = {s->b, s->c, s->d};
    for (int k = 0; k < 3; k++) {
        if (!parts[k]) continue;
        kiln_err err = eval(st, sc, parts[k], &v[k]);
        if (err) return err;
        if (v[k].t == TV_BOOL) v[k] = tv_int(v[k].b);
        if (v[k].t != TV_INT && v[k].t != TV_NONE)
            return rt_error(st, s->line, KILN_ERR_INVALID, "slice indices must be integers or None or have an __index__ method");
    }
    if (v[2].t == TV_INT && v[2].i == 0) return rt_error(st, s->line, KILN_ERR_INVALID, "slice step cannot be zero");
    if (obj.t == TV_UNDEF) return rt_undef_error(st, s->line, obj);
    int64_t b, e, step;
    if (obj.t == TV_LIST && obj.l->iter_type)
        return rt_error(st, s->line, KILN_ERR_INVALID, "'%s' object is not subscriptable", obj.l->iter_type);
    if (obj.t == TV_LIST) {
        slice_indices((int64_t)obj.l->n, v[0], v[1], v[2], &b, &e, &step);
        tlist *l = tl_new(&st->a, 0);
        if (!l) return rt_nomem(st, s->line);
        l->tuple = obj.l->tuple;
        for (int64_t i = b; step > 0 ? i < e : i > e; i += step)
            if (!tl_push(&st->a, l, obj.l->items[i])) return rt_nomem(st, s->line);
        out->t = TV_LIST;
        out->l = l;
        return KILN_OK;
    }
    if (obj.t == TV_STR) {
        size_t len = u8_len(obj.s.p, obj.s.n);
        slice_indices((int64_t)len, v[0], v[1], v[2], &b, &e, &step);
        if (step == 1) {
            if (e < b) e = b;
            size_t ob = u8_off(obj.s.p, obj.s.n, (size_t)b), oe = u8_off(obj.s.p, obj.s.n, (size_t)e);
            *out = tv_str(obj.s.p + ob, oe - ob);
            return KILN_OK;
        }
        sbuf sb;
        sb_init(&sb, &st->a, 0);
        sb_add(&sb, "", 0);
        for (int64_t i = b; step > 0 ? i < e : i > e; i += step) {
            size_t ob = u8_off(obj.s.p, obj.s.n, (size_t)i), oe = u8_off(obj.s.p, obj.s.n, (size_t)i + 1);
            if (!sb_add(&sb, obj.s.p + ob, oe - ob)) return rt_nomem(st, s->line);
        }
        *out = sb_val(&sb);
        return KILN_OK;
    }
    /* jinja2 compiles a slice to a plain Python subscript: the TypeError propagates */
    if (obj.t == TV_DICT) return rt_error(st, s->line, KILN_ERR_INVALID, "unhashable type: 'slice'");
    return rt_error(st, s->line, KILN_ERR_INVALID, "'%s' object is not subscriptable", tv_type_name(obj));
}

static bool is_numeric(tval v) { return v.t == TV_INT || v.t == TV_FLOAT || v.t == TV_BOOL; }
static double as_f(tval v) { return v.t == TV_FLOAT ? v.f : v.t == TV_INT ? (double)v.i : (double)v.b; }
static int64_t as_i(tval v) { return v.t == TV_INT ? v.i : (int64_t)v.b; }

static kiln_err type_error_op(rstate *st, int line, const char *op, tval a, tval b) {
    return rt_error(st, line, KILN_ERR_INVALID, "unsupported operand type(s) for %s: '%s' and '%s'", op,
                    tv_type_name(a), tv_type_name(b));
}

static kiln_err repeat(rstate *st, int line, tval seq, int64_t times, tval *out) {
    if (times < 0) times = 0;
    /* an empty sequence repeated any number of times is empty: never loop `times` times */
    if ((seq.t == TV_STR && seq.s.n == 0) || (seq.t == TV_LIST && !seq.l->iter_type && seq.l->n == 0)) times = 0;
    if (seq.t == TV_STR) {
        size_t total;
        if (!kiln_mul_size(seq.s.n, (size_t)times, &total) || total > st->lim.max_output_bytes)
            return rt_error(st, line, KILN_ERR_LIMIT, "string repetition exceeds the output limit of %zu bytes", st->lim.max_output_bytes);
        char *p = arena_alloc(&st->a, total + 1);
        if (!p) return rt_nomem(st, line);
        for (int64_t i = 0; i < times; i++) memcpy(p + (size_t)i * seq.s.n, seq.s.p, seq.s.n);
        *out = tv_str(p, total);
        out->safe = seq.safe;
        return KILN_OK;
    }
    size_t total;
    if (seq.l->iter_type) return rt_error(st, line, KILN_ERR_INVALID, "unsupported operand type(s) for *: '%s' and 'int'", seq.l->iter_type);
    if (!kiln_mul_size(seq.l->n, (size_t)times, &total) || total > st->lim.max_iterations)
        return rt_error(st, line, KILN_ERR_LIMIT, "list repetition exceeds the limit");
    tlist *l = tl_new(&st->a, total);
    if (!l) return rt_nomem(st, line);
    l->tuple = seq.l->tuple;
    for (int64_t i = 0; i < times; i++)
        for (size_t j = 0; j < seq.l->n; j++) l->items[l->n++] = seq.l->items[j];
    out->t = TV_LIST;
    out->l = l;
    return KILN_OK;
}

/* Python's `str % args` for the conversions templates use: %s %r %d %i %f %% and widths. */
kiln_err rt_str_format(rstate *st, int line, tval fmt, tval args, tval *out) {
    tval *av = &args;
    size_t n_av = 1, k = 0;
    if (args.t == TV_LIST && args.l->tuple) {
        av = args.l->items;
        n_av = args.l->n;
    }
    sbuf b;
    sb_init(&b, &st->a, st->lim.max_output_bytes);
    sb_add(&b, "", 0);
    const char *p = fmt.s.p, *end = p + fmt.s.n;
    while (p < end) {
        if (*p != '%') {
            if (!sb_addc(&b, *p++)) return rt_sb_fail(st, &b, line);
            continue;
        }
        p++;
        if (p < end && *p == '%') {
            sb_addc(&b, '%');
            p++;
            continue;
        }
        char spec[32];
        size_t sn = 0;
        spec[sn++] = '%';
        while (p < end && sn < 20 && strchr("-+ #0123456789.", *p)) spec[sn++] = *p++;
        if (p >= end) return rt_error(st, line, KILN_ERR_INVALID, "incomplete format");
        char conv = *p++;
        if (k >= n_av) return rt_error(st, line, KILN_ERR_INVALID, "not enough arguments for format string");
        tval a = av[k++];
        if (conv == 's' || conv == 'r') {
            sbuf t;
            sb_init(&t, &st->a, 0);
            if (!tv_to_str(&t, a, conv == 'r') || !sb_addc(&t, 0)) return rt_nomem(st, line);
            spec[sn++] = 's';
            spec[sn] = 0;
            if (!sb_printf(&b, spec, t.p)) return rt_sb_fail(st, &b, line);
        } else if (conv == 'd' || conv == 'i') {
            if (!is_numeric(a)) return rt_error(st, line, KILN_ERR_INVALID, "%%%c format: a real number is required, not %s", conv, tv_type_name(a));
            spec[sn++] = 'l';
            spec[sn++] = 'l';
            spec[sn++] = 'd';
            spec[sn] = 0;
            if (!sb_printf(&b, spec, (long long)(a.t == TV_FLOAT ? (int64_t)a.f : as_i(a)))) return rt_sb_fail(st, &b, line);
        } else if (strchr("feEgGx", conv)) {
            if (!is_numeric(a)) return rt_error(st, line, KILN_ERR_INVALID, "must be real number, not %s", tv_type_name(a));
            if (conv == 'x') {
                spec[sn++] = 'l';
                spec[sn++] = 'l';
                spec[sn++] = 'x';
                spec[sn] = 0;
                if (!sb_printf(&b, spec, (long long)as_i(a))) return rt_sb_fail(st, &b, line);
            } else {
                spec[sn++] = conv;
                spec[sn] = 0;
                if (!sb_printf(&b, spec, as_f(a))) return rt_sb_fail(st, &b, line);
            }
        } else {
            return rt_error(st, line, KILN_ERR_INVALID, "unsupported format character '%c'", conv);
        }
    }
    /* Python skips this check when the argument is a mapping-like object (list, dict) */
    bool mapping_like = args.t == TV_DICT || (args.t == TV_LIST && !args.l->tuple);
    if (k < n_av && !mapping_like) return rt_error(st, line, KILN_ERR_INVALID, "not all arguments converted during string formatting");
    *out = sb_val(&b);
    return KILN_OK;
}

static kiln_err binop_v(rstate *st, int line, binop op, tval a, tval b, tval *out) {
    static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (a.t == TV_UNDEF) return rt_undef_error(st, line, a);
    if (b.t == TV_UNDEF) return rt_undef_error(st, line, b);
    if (is_numeric(a) && is_numeric(b)) {
        bool fl = a.t == TV_FLOAT || b.t == TV_FLOAT;
        if (fl) {
            double x = as_f(a), y = as_f(b), r;
            switch (op) {
            case OP_ADD: r = x + y; break;
            case OP_SUB: r = x - y; break;
            case OP_MUL: r = x * y; break;
            case OP_DIV:
                if (y == 0) return rt_error(st, line, KILN_ERR_INVALID, "float division by zero");
                r = x / y;
                break;
            case OP_FLOORDIV:
                if (y == 0) return rt_error(st, line, KILN_ERR_INVALID, "float floor division by zero");
                r = floor(x / y);
                break;
            case OP_MOD:
                if (y == 0) return rt_error(st, line, KILN_ERR_INVALID, "float modulo");
                r = fmod(x, y);
                if (r != 0 && ((r < 0) != (y < 0))) r += y;
                break;
            case OP_POW:
                if (x == 0 && y < 0) return rt_error(st, line, KILN_ERR_INVALID, "0.0 cannot be raised to a negative power");
                r = pow(x, y);
                break;
            default: return KILN_ERR_INVALID;
            }
            *out = tv_float(r);
            return KILN_OK;
        }
        int64_t x = as_i(a), y = as_i(b), r;
        bool ovf = false;
        switch (op) {
        case OP_ADD: ovf = __builtin_add_overflow(x, y, &r); break;
        case OP_SUB: ovf = __builtin_sub_overflow(x, y, &r); break;
        case OP_MUL: ovf = __builtin_mul_overflow(x, y, &r); break;
        case OP_DIV:
            if (y == 0) return rt_error(st, line, KILN_ERR_INVALID, "division by zero");
            *out = tv_float((double)x / (double)y);
            return KILN_OK;
        case OP_FLOORDIV:
        case OP_MOD: {
            if (y == 0) return rt_error(st, line, KILN_ERR_INVALID, op == OP_MOD ? "integer modulo by zero" : "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) {
                ovf = true;
                break;
            }
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) {
                q--;
                m += y;
            }
            r = op == OP_MOD ? m : q;
            break;
        }
        case OP_POW:
            if (y < 0) {
                if (x == 0) return rt_error(st, line, KILN_ERR_INVALID, "0.0 cannot be raised to a negative power");
                *out = tv_float(pow((double)x, (double)y));
                return KILN_OK;
            }
            r = 1;
            for (int64_t i = 0; i < y && !ovf; i++) {
                ovf = __builtin_mul_overflow(r, x, &r);
                if (r == 0 || r == 1) break;
                if (r == -1) {
                    r = (y % 2) ? -1 : 1;
                    break;
                }
            }
            break;
        default: return KILN_ERR_INVALID;
        }
        if (ovf) return rt_error(st, line, KILN_ERR_LIMIT, "integer overflow");
        *out = tv_int(r);
        return KILN_OK;
    }
    switch (op) {
    case OP_ADD:
        if (a.t == TV_STR && b.t == TV_STR && a.safe != b.safe) {
            /* Markup + str escapes the plain operand */
            tval ea = a, eb = b;
            kiln_err err = a.safe ? rt_escape(st, line, b, &eb) : rt_escape(st, line, a, &ea);
            if (err) return err;
            ea.safe = eb.safe = 0;
            if ((err = binop_v(st, line, op, ea, eb, out))) return err;
            out->safe = 1;
            return KILN_OK;
        }
        if (a.t == TV_STR && b.t == TV_STR) {
            size_t n;
            if (!kiln_add_size(a.s.n, b.s.n, &n)) return rt_nomem(st, line);
            char *p = arena_alloc(&st->a, n + 1);
            if (!p) return rt_nomem(st, line);
            memcpy(p, a.s.p, a.s.n);
            memcpy(p + a.s.n, b.s.p, b.s.n);
            *out = tv_str(p, n);
            out->safe = a.safe;
            return KILN_OK;
        }
        if (a.t == TV_LIST && b.t == TV_LIST && a.l->tuple == b.l->tuple && !a.l->iter_type && !b.l->iter_type) {
            tlist *l = tl_new(&st->a, a.l->n + b.l->n);
            if (!l) return rt_nomem(st, line);
            l->tuple = a.l->tuple;
            for (size_t i = 0; i < a.l->n; i++) l->items[l->n++] = a.l->items[i];
            for (size_t i = 0; i < b.l->n; i++) l->items[l->n++] = b.l->items[i];
            out->t = TV_LIST;
            out->l = l;
            return KILN_OK;
        }
        if (a.t == TV_STR)
            return rt_error(st, line, KILN_ERR_INVALID, "can only concatenate str (not \"%s\") to str", tv_type_name(b));
        if (a.t == TV_LIST && a.l->iter_type) break;
        if (a.t == TV_LIST && !a.l->tuple)
            return rt_error(st, line, KILN_ERR_INVALID, "can only concatenate list (not \"%s\") to list", tv_type_name(b));
        if (a.t == TV_LIST)
            return rt_error(st, line, KILN_ERR_INVALID, "can only concatenate tuple (not \"%s\") to tuple", tv_type_name(b));
        break;
    case OP_MUL:
        if ((a.t == TV_STR || a.t == TV_LIST) && (b.t == TV_INT || b.t == TV_BOOL)) return repeat(st, line, a, as_i(b), out);
        if ((b.t == TV_STR || b.t == TV_LIST) && (a.t == TV_INT || a.t == TV_BOOL)) return repeat(st, line, b, as_i(a), out);
        if (a.t == TV_STR || b.t == TV_STR || a.t == TV_LIST || b.t == TV_LIST)
            return rt_error(st, line, KILN_ERR_INVALID, "can't multiply sequence by non-int of type '%s'",
                            tv_type_name(a.t == TV_STR || a.t == TV_LIST ? b : a));
        break;
    case OP_MOD:
        if (a.t == TV_STR) return rt_str_format(st, line, a, b, out);
        break;
    default: break;
    }
    return type_error_op(st, line, op == OP_POW ? "** or pow()" : names[op], a, b);
}

static kiln_err contains(rstate *st, int line, tval item, tval seq, bool *out) {
    switch (seq.t) {
    case TV_UNDEF: *out = false; return KILN_OK;
    case TV_STR:
        if (item.t != TV_STR)
            return rt_error(st, line, KILN_ERR_INVALID, "'in <string>' requires string as left operand, not %s", tv_type_name(item));
        *out = item.s.n == 0 || memmem(seq.s.p, seq.s.n, item.s.p, item.s.n) != NULL;
        return KILN_OK;
    case TV_LIST: {
        *out = false;
        if (seq.l->err_msg) return kiln_errf(seq.l->err_code, "%s", seq.l->err_msg);
        bool gen = tl_is_generator(seq.l);
        size_t i;
        for (i = gen ? seq.l->pos : 0; i < seq.l->n; i++) {
            if ((i & 1023) == 1023 && rt_tick(st, line, 1024)) return KILN_ERR_LIMIT;
            if (tv_equal(seq.l->items[i], item)) {
                *out = true;
                break;
            }
        }
        if (gen) seq.l->pos = KILN_MIN(i + 1, seq.l->n); /* `in` consumes a generator up to the match */
        return KILN_OK;
    }
    case TV_DICT:
    case TV_NS:
        *out = td_get(seq.d, item) != NULL;
        return KILN_OK;
    default:
        return rt_error(st, line, KILN_ERR_INVALID, "argument of type '%s' is not iterable", tv_type_name(seq));
    }
}

static kiln_err compare_v(rstate *st, int line, binop op, tval a, tval b, bool *out) {
    static const char *const names[] = {[OP_LT] = "<", [OP_LE] = "<=", [OP_GT] = ">", [OP_GE] = ">="};
    switch (op) {
    case OP_EQ: *out = tv_equal(a, b); return KILN_OK;
    case OP_NE: *out = !tv_equal(a, b); return KILN_OK;
    case OP_IN: return contains(st, line, a, b, out);
    case OP_NOTIN: {
        kiln_err err = contains(st, line, a, b, out);
        *out = !*out;
        return err;
    }
    default: break;
    }
    if (a.t == TV_UNDEF) return rt_undef_error(st, line, a);
    if (b.t == TV_UNDEF) return rt_undef_error(st, line, b);
    bool ok;
    int c = tv_compare(a, b, &ok);
    if (!ok) {
        /* Python compares sequences at their first unequal items: name those */
        for (int guard = 0; guard < 256 && a.t == TV_LIST && b.t == TV_LIST && a.l->tuple == b.l->tuple; guard++) {
            size_t i = 0;
            while (i < a.l->n && i < b.l->n && tv_equal(a.l->items[i], b.l->items[i])) i++;
            if (i >= a.l->n || i >= b.l->n) break;
            a = a.l->items[i];
            b = b.l->items[i];
        }
        return rt_error(st, line, KILN_ERR_INVALID, "'%s' not supported between instances of '%s' and '%s'", names[op],
                        tv_type_name(a), tv_type_name(b));
    }
    switch (op) {
    case OP_LT: *out = c < 0; break;
    case OP_LE: *out = c <= 0; break;
    case OP_GT: *out = c > 0; break;
    default: *out = c >= 0; break;
    }
    return KILN_OK;
}

/* HTML escaping as markupsafe.escape; the result is a Markup */
kiln_err rt_escape(rstate *st, int line, tval v, tval *out) {
    if (v.t == TV_STR && v.safe) {
        *out = v;
        return KILN_OK;
    }
    tval s;
    kiln_err err = rt_to_str(st, line, v, &s);
    if (err) return err;
    sbuf b;
    sb_init(&b, &st->a, st->lim.max_output_bytes);
    for (size_t i = 0; i < s.s.n; i++) {
        char c = s.s.p[i];
        switch (c) {
        case '&': sb_adds(&b, "&amp;"); break;
        case '<': sb_adds(&b, "&lt;"); break;
        case '>': sb_adds(&b, "&gt;"); break;
        case '"': sb_adds(&b, "&#34;"); break;
        case '\'': sb_adds(&b, "&#39;"); break;
        default: sb_addc(&b, c);
        }
    }
    if (b.failed) return rt_sb_fail(st, &b, line);
    *out = sb_val(&b);
    out->safe = 1;
    return KILN_OK;
}

kiln_err rt_to_str(rstate *st, int line, tval v, tval *out) {
    if (v.t == TV_STR) {
        *out = v;
        return KILN_OK;
    }
    sbuf b;
    sb_init(&b, &st->a, st->lim.max_output_bytes);
    sb_add(&b, "", 0);
    if (!tv_to_str(&b, v, false)) return rt_sb_fail(st, &b, line);
    *out = sb_val(&b);
    return KILN_OK;
}

/* Evaluates call arguments (positional and keyword). */
static kiln_err eval_args(rstate *st, scope *sc, const node *call, call_args *ca) {
    memset(ca, 0, sizeof(*ca));
    size_t n = call->n_kids;
    if (!n) return KILN_OK;
    ca->pos = arena_alloc(&st->a, n * sizeof(tval));
    ca->kw_vals = arena_alloc(&st->a, n * sizeof(tval));
    ca->kw_names = arena_alloc(&st->a, n * sizeof(char *));
    if (!ca->pos || !ca->kw_vals || !ca->kw_names) return rt_nomem(st, call->line);
    for (size_t i = 0; i < n; i++) {
        const node *k = call->kids[i];
        kiln_err err;
        if (k->kind == N_KWARG) {
            ca->kw_names[ca->n_kw] = k->name;
            err = eval(st, sc, k->a, &ca->kw_vals[ca->n_kw++]);
        } else {
            err = eval(st, sc, k, &ca->pos[ca->n_pos++]);
        }
        if (err) return err;
    }
    return KILN_OK;
}

static kiln_err call_macro(rstate *st, int line, tmacro *m, call_args *ca, tval *out);
static kiln_err loop_call(rstate *st, int line, tloop *lp, call_args *ca, tval *out);

static kiln_err call_value(rstate *st, int line, tval fn, call_args *ca, tval *out) {
    switch (fn.t) {
    case TV_MACRO: return call_macro(st, line, fn.m, ca, out);
    case TV_FUNC:
        if (fn.fn->id == -1) { /* loop.cycle */
            if (!ca->n_pos) return rt_error(st, line, KILN_ERR_INVALID, "no items for cycling given");
            *out = ca->pos[fn.fn->self.loop->i % ca->n_pos];
            return KILN_OK;
        }
        if (fn.fn->id == -2) { /* loop.changed(*values) */
            tloop *lp = fn.fn->self.loop;
            tlist *args = tl_new(&st->a, ca->n_pos);
            if (!args) return rt_nomem(st, line);
            args->tuple = true;
            for (size_t i = 0; i < ca->n_pos; i++) args->items[args->n++] = ca->pos[i];
            tval now = {.t = TV_LIST};
            now.l = args;
            bool changed = lp->last_changed.t == TV_UNDEF || !tv_equal(lp->last_changed, now);
            lp->last_changed = now;
            *out = tv_bool(changed);
            return KILN_OK;
        }
        return bi_call_func(st, line, fn.fn, ca, out);
    case TV_LOOP: return loop_call(st, line, fn.loop, ca, out);
    case TV_UNDEF:
        if (fn.u && fn.u->kind == UNDEF_UNSAFE) return rt_error(st, line, KILN_ERR_INVALID, "%s", fn.u->hint);
        return rt_undef_error(st, line, fn);
    default:
        return rt_error(st, line, KILN_ERR_INVALID, "'%s' object is not callable", tv_type_name(fn));
    }
}

static kiln_err apply_filter(rstate *st, scope *sc, const node *f, tval *out) {
    tval v;
    kiln_err err;
    if (f->a) {
        if ((err = eval(st, sc, f->a, &v))) return err;
    } else {
        v = st->filter_body;
    }
    if (!bi_has_filter(f->name)) return rt_error(st, f->line, KILN_ERR_INVALID, "No filter named '%s' found.", f->name);
    call_args ca;
    if ((err = eval_args(st, sc, f, &ca))) return err;
    return bi_filter(st, f->line, f->name, v, &ca, out);
}

static kiln_err eval_node(rstate *st, scope *sc, const node *n, tval *out);

static kiln_err eval(rstate *st, scope *sc, const node *n, tval *out) {
    if (++st->depth > st->lim.max_depth)
        return rt_error(st, n->line, KILN_ERR_LIMIT, "maximum recursion depth (%d) exceeded", st->lim.max_depth);
    kiln_err err = eval_node(st, sc, n, out);
    st->depth--;
    return err;
}

static kiln_err eval_node(rstate *st, scope *sc, const node *n, tval *out) {
    kiln_err err;
    tval a, b;
    switch ((node_kind)n->kind) {
    case N_LIT: *out = n->lit; return KILN_OK;
    case N_NAME:
        if (scope_get(sc, n->name, out)) return KILN_OK;
        if (bi_global(st, n->name, out)) return KILN_OK;
        *out = rt_undef(st, UNDEF_NAME, NULL, tv_cstr(n->name), NULL);
        return KILN_OK;
    case N_GETATTR:
        if ((err = eval(st, sc, n->a, &a))) return err;
        return getattr_v(st, n->line, a, n->name, out);
    case N_GETITEM:
        if ((err = eval(st, sc, n->a, &a))) return err;
        if (n->b->kind == N_SLICE) return eval_slice(st, sc, a, n->b, out);
        if ((err = eval(st, sc, n->b, &b))) return err;
        return rt_getitem(st, n->line, a, b, out);
    case N_CALL: {
        tval fn;
        if ((err = eval(st, sc, n->a, &fn))) return err;
        call_args ca;
        if ((err = eval_args(st, sc, n, &ca))) return err;
        if (++st->depth > st->lim.max_depth)
            return rt_error(st, n->line, KILN_ERR_LIMIT, "maximum recursion depth (%d) exceeded", st->lim.max_depth);
        err = call_value(st, n->line, fn, &ca, out);
        st->depth--;
        return err;
    }
    case N_FILTER: return apply_filter(st, sc, n, out);
    case N_TEST: {
        if ((err = eval(st, sc, n->a, &a))) return err;
        if (!bi_has_test(n->name)) return rt_error(st, n->line, KILN_ERR_INVALID, "No test named '%s' found.", n->name);
        call_args ca;
        if ((err = eval_args(st, sc, n, &ca))) return err;
        bool r;
        if ((err = bi_test(st, n->line, n->name, a, &ca, &r))) return err;
        *out = tv_bool(n->flag ? !r : r);
        return KILN_OK;
    }
    case N_BINOP:
        if ((err = eval(st, sc, n->a, &a)) || (err = eval(st, sc, n->b, &b))) return err;
        return binop_v(st, n->line, (binop)n->op, a, b, out);
    case N_NEG:
    case N_POS:
        if ((err = eval(st, sc, n->a, &a))) return err;
        if (a.t == TV_UNDEF) return rt_undef_error(st, n->line, a);
        if (a.t == TV_INT || a.t == TV_BOOL) {
            int64_t x = as_i(a);
            if (n->kind == N_NEG && x == INT64_MIN) return rt_error(st, n->line, KILN_ERR_LIMIT, "integer overflow");
            *out = tv_int(n->kind == N_NEG ? -x : x);
        } else if (a.t == TV_FLOAT) {
            *out = tv_float(n->kind == N_NEG ? -a.f : a.f);
        } else {
            return rt_error(st, n->line, KILN_ERR_INVALID, "bad operand type for unary %c: '%s'", n->kind == N_NEG ? '-' : '+', tv_type_name(a));
        }
        return KILN_OK;
    case N_NOT:
        if ((err = eval(st, sc, n->a, &a))) return err;
        *out = tv_bool(!tv_truthy(a));
        return KILN_OK;
    case N_AND:
        if ((err = eval(st, sc, n->a, &a))) return err;
        if (!tv_truthy(a)) {
            *out = a;
            return KILN_OK;
        }
        return eval(st, sc, n->b, out);
    case N_OR:
        if ((err = eval(st, sc, n->a, &a))) return err;
        if (tv_truthy(a)) {
            *out = a;
            return KILN_OK;
        }
        return eval(st, sc, n->b, out);
    case N_COMPARE: {
        if ((err = eval(st, sc, n->kids[0], &a))) return err;
        for (size_t i = 1; i < n->n_kids; i++) {
            if ((err = eval(st, sc, n->kids[i], &b))) return err;
            bool r;
            if ((err = compare_v(st, n->line, (binop)n->ops[i - 1], a, b, &r))) return err;
            if (!r) {
                *out = tv_bool(false);
                return KILN_OK;
            }
            a = b;
        }
        *out = tv_bool(true);
        return KILN_OK;
    }
    case N_CONCAT: {
        sbuf sb;
        sb_init(&sb, &st->a, st->lim.max_output_bytes);
        sb_add(&sb, "", 0);
        for (size_t i = 0; i < n->n_kids; i++) {
            if ((err = eval(st, sc, n->kids[i], &a))) return err;
            if (!tv_to_str(&sb, a, false)) return rt_sb_fail(st, &sb, n->line);
        }
        if (sb.failed) return rt_nomem(st, n->line);
        *out = sb_val(&sb);
        return KILN_OK;
    }
    case N_CONDEXPR:
        if ((err = eval(st, sc, n->b, &a))) return err;
        if (tv_truthy(a)) return eval(st, sc, n->a, out);
        if (n->c) return eval(st, sc, n->c, out);
        *out = rt_undef(st, UNDEF_HINT, NULL, tv_undef(), "the inline if-expression evaluated to false and no else section was defined.");
        return KILN_OK;
    case N_LIST:
    case N_TUPLE: {
        tlist *l = tl_new(&st->a, n->n_kids);
        if (!l) return rt_nomem(st, n->line);
        l->tuple = n->kind == N_TUPLE;
        for (size_t i = 0; i < n->n_kids; i++)
            if ((err = eval(st, sc, n->kids[i], &l->items[l->n++]))) return err;
        out->t = TV_LIST;
        out->l = l;
        return KILN_OK;
    }
    case N_DICT: {
        tdict *d = td_new(&st->a, n->n_kids / 2);
        if (!d) return rt_nomem(st, n->line);
        for (size_t i = 0; i + 1 < n->n_kids; i += 2) {
            if ((err = eval(st, sc, n->kids[i], &a)) || (err = eval(st, sc, n->kids[i + 1], &b))) return err;
            if (a.t == TV_LIST && !a.l->tuple) return rt_error(st, n->line, KILN_ERR_INVALID, "unhashable type: 'list'");
            if (a.t == TV_DICT) return rt_error(st, n->line, KILN_ERR_INVALID, "unhashable type: 'dict'");
            if (!td_set(&st->a, d, a, b)) return rt_nomem(st, n->line);
        }
        out->t = TV_DICT;
        out->d = d;
        return KILN_OK;
    }
    default:
        return rt_error(st, n->line, KILN_ERR_INVALID, "unexpected node");
    }
}

/* ---- statements ---- */
static kiln_err emit_str(rstate *st, int line, const char *p, size_t n) {
    if (!sb_add(st->out, p, n)) return rt_sb_fail(st, st->out, line);
    return KILN_OK;
}

static kiln_err assign(rstate *st, scope *sc, const node *target, tval v) {
    if (target->kind == N_NAME) {
        if (!scope_set(st, sc, target->name, v)) return rt_nomem(st, target->line);
        return KILN_OK;
    }
    if (target->kind == N_TUPLE) {
        if (v.t == TV_UNDEF) return rt_undef_error(st, target->line, v);
        tlist *l;
        tlist tmp = {0};
        if (v.t == TV_LIST && v.l->iter_type && tl_is_generator(v.l)) {
            kiln_err err = rt_iter_list(st, target->line, v, &l); /* consumes, or raises a deferred error */
            if (err) return err;
        } else if (v.t == TV_LIST) {
            l = v.l;
        } else if (v.t == TV_DICT) {
            tmp.items = v.d->keys;
            tmp.n = v.d->n;
            l = &tmp;
        } else if (v.t == TV_STR) {
            /* unpack characters */
            l = tl_new(&st->a, 0);
            if (!l) return rt_nomem(st, target->line);
            for (size_t i = 0; i < v.s.n;) {
                size_t j = i + 1;
                while (j < v.s.n && ((unsigned char)v.s.p[j] & 0xc0) == 0x80) j++;
                if (!tl_push(&st->a, l, tv_str(v.s.p + i, j - i))) return rt_nomem(st, target->line);
                i = j;
            }
        } else {
            return rt_error(st, target->line, KILN_ERR_INVALID, "cannot unpack non-iterable %s object", tv_type_name(v));
        }
        if (l->n < target->n_kids)
            return rt_error(st, target->line, KILN_ERR_INVALID, "not enough values to unpack (expected %zu, got %zu)", target->n_kids, l->n);
        if (l->n > target->n_kids)
            return rt_error(st, target->line, KILN_ERR_INVALID, "too many values to unpack (expected %zu)", target->n_kids);
        for (size_t i = 0; i < target->n_kids; i++) {
            kiln_err err = assign(st, sc, target->kids[i], l->items[i]);
            if (err) return err;
        }
        return KILN_OK;
    }
    if (target->kind == N_NSREF) {
        tval ns;
        if (!scope_get(sc, target->name, &ns) || ns.t != TV_NS)
            return rt_error(st, target->line, KILN_ERR_INVALID, "cannot assign attribute on non-namespace object");
        const char *attr = target->a->name;
        if (!td_set(&st->a, ns.d, tv_cstr(attr), v)) return rt_nomem(st, target->line);
        return KILN_OK;
    }
    return rt_error(st, target->line, KILN_ERR_INVALID, "can't assign");
}

/* Renders `body` into a fresh string with `sc`. */
static kiln_err capture(rstate *st, scope *sc, const node *body, tval *out) {
    sbuf b, *saved = st->out;
    sb_init(&b, &st->a, st->lim.max_output_bytes);
    sb_add(&b, "", 0);
    st->out = &b;
    kiln_err err = exec_body(st, sc, body);
    st->out = saved;
    if (err) return err;
    *out = sb_val(&b);
    return KILN_OK;
}

kiln_err rt_iter_list(rstate *st, int line, tval v, tlist **out) {
    switch (v.t) {
    case TV_LIST:
        if (v.l->err_msg) return kiln_errf(v.l->err_code, "%s", v.l->err_msg);
        if (tl_is_generator(v.l)) {
            /* a Python generator is consumed by iterating it: the next iteration sees the rest */
            tlist *rest = tl_new(&st->a, 0);
            if (!rest) return rt_nomem(st, line);
            rest->items = v.l->items ? v.l->items + v.l->pos : NULL;
            rest->n = rest->cap = v.l->n - v.l->pos;
            rest->iter_type = v.l->iter_type;
            v.l->pos = v.l->n;
            *out = rest;
            return KILN_OK;
        }
        *out = v.l;
        return KILN_OK;
    case TV_UNDEF:
        *out = tl_new(&st->a, 0);
        return *out ? KILN_OK : rt_nomem(st, line);
    case TV_DICT:
    case TV_NS: {
        tlist *l = tl_new(&st->a, 0);
        if (!l) return rt_nomem(st, line);
        l->items = v.d->keys;
        l->n = l->cap = v.d->n;
        *out = l;
        return KILN_OK;
    }
    case TV_STR: {
        tlist *l = tl_new(&st->a, 0);
        if (!l) return rt_nomem(st, line);
        for (size_t i = 0; i < v.s.n;) {
            size_t j = i + 1;
            while (j < v.s.n && ((unsigned char)v.s.p[j] & 0xc0) == 0x80) j++;
            if (!tl_push(&st->a, l, tv_str(v.s.p + i, j - i))) return rt_nomem(st, line);
            i = j;
        }
        *out = l;
        return KILN_OK;
    }
    default:
        return rt_error(st, line, KILN_ERR_INVALID, "'%s' object is not iterable", tv_type_name(v));
    }
}

static kiln_err count_iter(rstate *st, int line) {
    if (++st->n_iters > st->lim.max_iterations)
        return rt_error(st, line, KILN_ERR_LIMIT, "template exceeds the limit of %llu loop iterations", (unsigned long long)st->lim.max_iterations);
    return rt_tick(st, line, 1);
}

static kiln_err run_for(rstate *st, scope *sc, const node *n, tval iter, int depth) {
    kiln_err err;
    tlist *items;
    if ((err = rt_iter_list(st, n->line, iter, &items))) return err;
    if (n->e) { /* loop filter: evaluated per item with the target bound */
        tlist *kept = tl_new(&st->a, 0);
        if (!kept) return rt_nomem(st, n->line);
        scope *fs = NULL;
        for (size_t i = 0; i < items->n; i++) {
            if ((err = count_iter(st, n->line))) return err;
            if (fs && !fs->captured) fs->n = 0; /* reuse: a render's arena only grows */
            else if (!(fs = scope_new(st, sc))) return rt_nomem(st, n->line);
            if ((err = assign(st, fs, n->a, items->items[i]))) return err;
            tval c;
            if ((err = eval(st, fs, n->e, &c))) return err;
            if (tv_truthy(c) && !tl_push(&st->a, kept, items->items[i])) return rt_nomem(st, n->line);
        }
        items = kept;
    }
    if (!items->n) {
        if (n->d) return exec_body(st, sc, n->d);
        return KILN_OK;
    }
    tloop *lp = arena_alloc(&st->a, sizeof(*lp));
    if (!lp) return rt_nomem(st, n->line);
    lp->items = items;
    lp->depth = depth;
    lp->for_node = n;
    lp->scope = sc;
    bool else_pending = true;
    scope *is = NULL;
    for (size_t i = 0; i < items->n; i++) {
        if ((err = count_iter(st, n->line))) return err;
        lp->i = i;
        /* each iteration starts from an empty scope (jinja2 semantics); its storage is reused
         * unless a macro defined in the previous iteration closes over it */
        if (is && !is->captured) is->n = 0;
        else if (!(is = scope_new(st, sc))) return rt_nomem(st, n->line);
        tval lv = {.t = TV_LOOP};
        lv.loop = lp;
        if (!scope_set(st, is, "loop", lv)) return rt_nomem(st, n->line);
        if ((err = assign(st, is, n->a, items->items[i]))) return err;
        if ((err = exec_body(st, is, n->c))) return err;
        /* jinja2 clears its "no iteration" flag at the end of the body, so a body left by
         * break or continue does not count: `else` still runs if none completed */
        if (st->ctl == CTL_NONE) else_pending = false;
        if (st->ctl == CTL_BREAK) {
            st->ctl = CTL_NONE;
            break;
        }
        st->ctl = CTL_NONE;
    }
    if (else_pending && n->d) return exec_body(st, sc, n->d);
    return KILN_OK;
}

static kiln_err loop_call(rstate *st, int line, tloop *lp, call_args *ca, tval *out) {
    if (!lp->for_node->flag)
        return rt_error(st, line, KILN_ERR_INVALID, "Tried to call non recursive loop.  Maybe you forgot the 'recursive' modifier.");
    if (ca->n_pos != 1) return rt_error(st, line, KILN_ERR_INVALID, "loop() takes exactly one argument");
    sbuf b, *saved = st->out;
    sb_init(&b, &st->a, st->lim.max_output_bytes);
    sb_add(&b, "", 0);
    st->out = &b;
    kiln_err err = run_for(st, lp->scope, lp->for_node, ca->pos[0], lp->depth + 1);
    st->out = saved;
    if (err) return err;
    *out = sb_val(&b);
    return KILN_OK;
}

static kiln_err call_macro(rstate *st, int line, tmacro *m, call_args *ca, tval *out) {
    const node *def = m->def;
    kiln_err err;
    if ((err = count_iter(st, line))) return err;
    scope *ms = scope_new(st, m->closure);
    if (!ms) return rt_nomem(st, line);
    size_t n_params = def->n_kids;
    tlist *varargs = tl_new(&st->a, 0);
    tdict *kwargs = td_new(&st->a, 0);
    if (!varargs || !kwargs) return rt_nomem(st, line);
    varargs->tuple = true;
    bool *given = arena_alloc(&st->a, n_params + 1);
    if (!given) return rt_nomem(st, line);
    for (size_t i = 0; i < ca->n_pos; i++) {
        if (i < n_params) {
            if (!scope_set(st, ms, def->kids[i]->name, ca->pos[i])) return rt_nomem(st, line);
            given[i] = true;
        } else if (!tl_push(&st->a, varargs, ca->pos[i])) {
            return rt_nomem(st, line);
        }
    }
    for (size_t k = 0; k < ca->n_kw; k++) {
        size_t i;
        for (i = 0; i < n_params; i++)
            if (!strcmp(def->kids[i]->name, ca->kw_names[k])) break;
        if (i < n_params) {
            if (given[i])
                return rt_error(st, line, KILN_ERR_INVALID, "macro '%s' got multiple values for argument '%s'", def->name ? def->name : "caller", ca->kw_names[k]);
            if (!scope_set(st, ms, def->kids[i]->name, ca->kw_vals[k])) return rt_nomem(st, line);
            given[i] = true;
        } else if (!td_set(&st->a, kwargs, tv_cstr(ca->kw_names[k]), ca->kw_vals[k])) {
            return rt_nomem(st, line);
        }
    }
    for (size_t i = 0; i < n_params; i++) {
        if (given[i]) continue;
        tval v;
        if (def->kids[i]->a) {
            if ((err = eval(st, ms, def->kids[i]->a, &v))) return err;
        } else {
            char *hint = arena_alloc(&st->a, strlen(def->kids[i]->name) + 40);
            if (!hint) return rt_nomem(st, line);
            sprintf(hint, "parameter '%s' was not provided", def->kids[i]->name);
            v = rt_undef(st, UNDEF_HINT, NULL, tv_undef(), hint);
        }
        if (!scope_set(st, ms, def->kids[i]->name, v)) return rt_nomem(st, line);
    }
    tval vv = {.t = TV_LIST}, kv = {.t = TV_DICT};
    vv.l = varargs;
    kv.d = kwargs;
    if (!scope_set(st, ms, "varargs", vv) || !scope_set(st, ms, "kwargs", kv)) return rt_nomem(st, line);
    if (m->caller) {
        tval cv = {.t = TV_MACRO};
        cv.m = m->caller;
        if (!scope_set(st, ms, "caller", cv)) return rt_nomem(st, line);
    }
    ctl saved_ctl = st->ctl;
    err = capture(st, ms, def->b, out);
    st->ctl = saved_ctl;
    return err;
}

/* A closure keeps its whole scope chain: none of those scopes may be reused by a loop. */
static void capture_chain(scope *sc) {
    for (; sc && !sc->captured; sc = sc->parent) sc->captured = true;
}

static kiln_err exec_stmt(rstate *st, scope *sc, const node *n) {
    kiln_err err;
    tval v;
    switch ((node_kind)n->kind) {
    case N_BODY: return exec_body(st, sc, n);
    case N_TEXT: return emit_str(st, n->line, n->lit.s.p, n->lit.s.n);
    case N_OUTPUT:
        if ((err = eval(st, sc, n->a, &v))) return err;
        if (v.t == TV_STR) return emit_str(st, n->line, v.s.p, v.s.n);
        if (!tv_to_str(st->out, v, false)) return rt_sb_fail(st, st->out, n->line);
        return KILN_OK;
    case N_IF:
        for (const node *c = n; c;) {
            if (c->kind != N_IF) return exec_stmt(st, sc, c);
            if ((err = eval(st, sc, c->a, &v))) return err;
            if (tv_truthy(v)) return exec_body(st, sc, c->b);
            c = c->c;
        }
        return KILN_OK;
    case N_FOR:
        if ((err = eval(st, sc, n->b, &v))) return err;
        return run_for(st, sc, n, v, 1);
    case N_SET:
        if ((err = eval(st, sc, n->b, &v))) return err;
        return assign(st, sc, n->a, v);
    case N_SETBLOCK: {
        scope *bs = scope_new(st, sc); /* the body is its own frame, as in jinja2 */
        if (!bs) return rt_nomem(st, n->line);
        if ((err = capture(st, bs, n->b, &v))) return err;
        if (n->c) {
            tval saved = st->filter_body;
            st->filter_body = v;
            err = eval(st, sc, n->c, &v);
            st->filter_body = saved;
            if (err) return err;
        }
        return assign(st, sc, n->a, v);
    }
    case N_MACRO: {
        tmacro *m = arena_alloc(&st->a, sizeof(*m));
        if (!m) return rt_nomem(st, n->line);
        m->def = n;
        m->closure = sc;
        capture_chain(sc);
        tval mv = {.t = TV_MACRO};
        mv.m = m;
        if (!scope_set(st, sc, n->name, mv)) return rt_nomem(st, n->line);
        return KILN_OK;
    }
    case N_CALLBLOCK: {
        tmacro *caller = arena_alloc(&st->a, sizeof(*caller));
        if (!caller) return rt_nomem(st, n->line);
        caller->def = n;
        caller->closure = sc;
        capture_chain(sc);
        tval fn;
        if ((err = eval(st, sc, n->a->a, &fn))) return err;
        call_args ca;
        if ((err = eval_args(st, sc, n->a, &ca))) return err;
        if (fn.t != TV_MACRO) return rt_error(st, n->line, KILN_ERR_INVALID, "'%s' object is not a macro", tv_type_name(fn));
        tmacro bound = *fn.m;
        bound.caller = caller;
        if (++st->depth > st->lim.max_depth)
            return rt_error(st, n->line, KILN_ERR_LIMIT, "maximum recursion depth (%d) exceeded", st->lim.max_depth);
        err = call_macro(st, n->line, &bound, &ca, &v);
        st->depth--;
        if (err) return err;
        return emit_str(st, n->line, v.s.p, v.s.n);
    }
    case N_FILTERBLOCK: {
        scope *fs = scope_new(st, sc);
        if (!fs) return rt_nomem(st, n->line);
        if ((err = capture(st, fs, n->b, &v))) return err;
        tval saved = st->filter_body;
        st->filter_body = v;
        err = eval(st, sc, n->a, &v);
        st->filter_body = saved;
        if (err) return err;
        if ((err = rt_to_str(st, n->line, v, &v))) return err;
        return emit_str(st, n->line, v.s.p, v.s.n);
    }
    case N_WITH: {
        scope *ws = scope_new(st, n->flag ? st->root : sc); /* flag: a block, scoped to the top level */
        if (!ws) return rt_nomem(st, n->line);
        for (size_t i = 0; i < n->n_kids; i++) {
            if ((err = eval(st, sc, n->kids[i]->a, &v))) return err;
            if ((err = assign(st, ws, n->kids[i], v))) return err;
        }
        return exec_body(st, ws, n->b);
    }
    case N_NOLOADER: return rt_error(st, n->line, KILN_ERR_INVALID, "no loader for this environment specified");
    case N_BREAK: st->ctl = CTL_BREAK; return KILN_OK;
    case N_CONTINUE: st->ctl = CTL_CONTINUE; return KILN_OK;
    default:
        return rt_error(st, n->line, KILN_ERR_INVALID, "unexpected statement");
    }
}

static kiln_err exec_body(rstate *st, scope *sc, const node *body) {
    if (++st->depth > st->lim.max_depth)
        return rt_error(st, body->line, KILN_ERR_LIMIT, "maximum recursion depth (%d) exceeded", st->lim.max_depth);
    kiln_err err = KILN_OK;
    for (size_t i = 0; i < body->n_kids; i++) {
        if ((err = exec_stmt(st, sc, body->kids[i]))) break;
        if (st->ctl != CTL_NONE) break;
    }
    st->depth--;
    return err;
}

/* ---- public ---- */
kiln_err kiln_template_parse(const char *src, size_t len, kiln_template **out) {
    *out = NULL;
    kiln_template *t = kiln_calloc(1, sizeof(*t));
    if (!t) return kiln_errf(KILN_ERR_NOMEM, "out of memory parsing template");
    arena_init(&t->a, 0);
    kiln_err err = tpl_parse(&t->a, src, len, &t->root);
    if (err) {
        kiln_template_free(t);
        return err;
    }
    *out = t;
    return KILN_OK;
}

void kiln_template_free(kiln_template *t) {
    if (!t) return;
    arena_deinit(&t->a);
    kiln_free(t);
}

kiln_err kiln_template_render(const kiln_template *t, const json_t *ctx,
                              const kiln_template_limits *lim, kiln_buf *out) {
    rstate st;
    memset(&st, 0, sizeof(st));
    if (lim) st.lim = *lim;
    else kiln_template_limits_default(&st.lim);
    arena_init(&st.a, st.lim.max_memory_bytes);
    if (st.lim.max_time_ms) st.deadline_ns = kiln_now_ns() + st.lim.max_time_ms * 1000000ull;
    kiln_err err = KILN_OK;
    st.root = scope_new(&st, NULL);
    if (!st.root) {
        err = rt_nomem(&st, 0);
        goto out;
    }
    if (ctx && json_is_object(ctx)) {
        const char *k;
        json_t *jv;
        json_object_foreach((json_t *)ctx, k, jv) {
            tval v;
            char *name = arena_strndup(&st.a, k, strlen(k));
            kiln_err jerr = name ? tv_from_json(&st.a, jv, &v, 0) : KILN_ERR_NOMEM;
            if (jerr) {
                err = jerr == KILN_ERR_LIMIT ? rt_error(&st, 0, KILN_ERR_LIMIT, "context value '%s' is nested too deeply", k)
                                             : rt_nomem(&st, 0);
                goto out;
            }
            if (!scope_set(&st, st.root, name, v)) {
                err = rt_nomem(&st, 0);
                goto out;
            }
        }
    }
    sbuf b;
    sb_init(&b, &st.a, st.lim.max_output_bytes);
    st.out = &b;
    if ((err = exec_body(&st, st.root, t->root))) goto out;
    if ((err = kiln_buf_append(out, b.p ? b.p : "", b.n))) {
        err = kiln_errf(KILN_ERR_NOMEM, "out of memory");
        goto out;
    }
out:
    arena_deinit(&st.a);
    return err;
}

kiln_err kiln_template_render_chat(const kiln_template *t, const json_t *messages,
                                   const json_t *tools, bool add_generation_prompt,
                                   const char *bos_token, const char *eos_token,
                                   const json_t *extra_kwargs, kiln_buf *out) {
    json_t *ctx = json_object();
    if (!ctx) return kiln_errf(KILN_ERR_NOMEM, "out of memory");
    kiln_err err = KILN_OK;
    if (extra_kwargs && json_is_object(extra_kwargs)) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)extra_kwargs, k, v) {
            if (json_object_set(ctx, k, v)) goto nomem;
        }
    }
    if (messages ? json_object_set(ctx, "messages", (json_t *)messages)
                 : json_object_set_new(ctx, "messages", json_array()))
        goto nomem;
    /* transformers passes tools and documents always, None when absent */
    if (tools ? json_object_set(ctx, "tools", (json_t *)tools) : json_object_set_new(ctx, "tools", json_null())) goto nomem;
    if (!json_object_get(ctx, "documents") && json_object_set_new(ctx, "documents", json_null())) goto nomem;
    if (json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt))) goto nomem;
    if (bos_token && json_object_set_new(ctx, "bos_token", json_string(bos_token))) goto nomem;
    if (eos_token && json_object_set_new(ctx, "eos_token", json_string(eos_token))) goto nomem;
    err = kiln_template_render(t, ctx, NULL, out);
    json_decref(ctx);
    return err;
nomem:
    json_decref(ctx);
    return kiln_errf(KILN_ERR_NOMEM, "out of memory building the template context");
}

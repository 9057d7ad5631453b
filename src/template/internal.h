/* internal.h: shared types of the template engine: the arena, values (tval), AST nodes, and the
 * entry points between lexer/parser (parse.c), values (value.c), interpreter (render.c) and the
 * builtin filters/tests/methods (builtins.c). Not part of the public API.
 * Invariant: every tval and node lives in an arena (parse arena owned by the kiln_template, or
 * the render arena of one render); nothing here is freed individually. */
#ifndef KILN_TEMPLATE_INTERNAL_H
#define KILN_TEMPLATE_INTERNAL_H

#include <string.h>

#include "template/template.h"

/* ---- arena ---- */
typedef struct arena_chunk arena_chunk;
typedef struct arena {
    arena_chunk *head;     /* newest chunk first */
    size_t n_bytes;        /* total bytes handed out + chunk overheads */
    size_t max_bytes;      /* 0 = unlimited */
    bool hit_limit;        /* the last failure was the limit, not malloc */
} arena;
void arena_init(arena *a, size_t max_bytes);
void arena_deinit(arena *a);
void *arena_alloc(arena *a, size_t n);  /* zeroed, 16-aligned; NULL on failure */
char *arena_strndup(arena *a, const char *s, size_t n);

/* ---- values ---- */
typedef enum tv_type {
    TV_UNDEF,
    TV_NONE,
    TV_BOOL,
    TV_INT,
    TV_FLOAT,
    TV_STR,
    TV_LIST,   /* list or tuple (tlist.tuple) */
    TV_DICT,
    TV_NS,     /* namespace(): a mutable dict with attribute access */
    TV_MACRO,
    TV_FUNC,   /* builtin global or bound method */
    TV_LOOP,   /* the `loop` object of a for */
    TV_TYPE_COUNT
} tv_type;

typedef struct tlist tlist;
typedef struct tdict tdict;
typedef struct tmacro tmacro;
typedef struct tfunc tfunc;
typedef struct tundef tundef;
typedef struct tloop tloop;

typedef struct tval {
    uint8_t t;             /* tv_type */
    uint8_t safe;          /* TV_STR: a Markup (|safe, |e): `+` escapes the other operand */
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *p; /* not NUL-terminated */
            size_t n;      /* bytes */
        } s;
        tlist *l;
        tdict *d;
        tmacro *m;
        tfunc *fn;
        tundef *u;         /* may be NULL: plain undefined with no hint */
        tloop *loop;
    };
} tval;

struct tlist {
    tval *items;
    size_t n, cap;
    bool tuple;
    /* NULL for a list/tuple; else the Python iterator or view this stands for ("generator",
     * "dict_items", ...): not JSON-serializable, not indexable; generators have no len() */
    const char *iter_type;
    size_t pos;            /* generators: items before pos were consumed by an iteration */
    bool group;            /* a groupby() (grouper, list) tuple: has those two attributes */
    const char *err_msg;   /* a generator whose creation failed: iterating it raises this */
    kiln_err err_code;
};
struct tdict {
    tval *keys;
    tval *vals;
    size_t n, cap;
};

/* Why a value is undefined, for jinja2's UndefinedError wording. */
typedef enum undef_kind {
    UNDEF_NAME,   /* 'x' is undefined */
    UNDEF_ATTR,   /* 'dict object' has no attribute 'x' */
    UNDEF_ITEM,   /* list object has no element 3 */
    UNDEF_HINT,   /* a fixed message */
    UNDEF_UNSAFE, /* sandbox: calling it raises SecurityError with the hint */
} undef_kind;
struct tundef {
    undef_kind kind;
    const char *obj_type;  /* "dict object" */
    tval key;
    const char *hint;
};

typedef struct tval_pair {
    tval k, v;
} tval_pair;

static inline tval tv_undef(void) { tval v = {.t = TV_UNDEF}; return v; }
static inline tval tv_none(void) { tval v = {.t = TV_NONE}; return v; }
static inline tval tv_bool(bool b) { tval v = {.t = TV_BOOL}; v.b = b; return v; }
static inline tval tv_int(int64_t i) { tval v = {.t = TV_INT}; v.i = i; return v; }
static inline tval tv_float(double f) { tval v = {.t = TV_FLOAT}; v.f = f; return v; }
static inline tval tv_str(const char *p, size_t n) { tval v = {.t = TV_STR}; v.s.p = p; v.s.n = n; return v; }
static inline tval tv_cstr(const char *p) { return tv_str(p, strlen(p)); }

/* A string builder in an arena; fails (returns false) on allocation failure or past `max`. */
typedef struct sbuf {
    arena *a;
    char *p;
    size_t n, cap;
    size_t max;
    bool failed;   /* an append failed (sticky) */
    bool over;     /* ... because it would pass `max` */
    bool too_deep; /* ... because a value was nested too deeply to print */
} sbuf;
void sb_init(sbuf *b, arena *a, size_t max);
bool sb_add(sbuf *b, const char *p, size_t n);
static inline bool sb_adds(sbuf *b, const char *s) { return sb_add(b, s, strlen(s)); }
bool sb_addc(sbuf *b, char c);
bool sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
tval sb_val(sbuf *b);

tlist *tl_new(arena *a, size_t cap);
bool tl_push(arena *a, tlist *l, tval v);
tdict *td_new(arena *a, size_t cap);
bool td_set(arena *a, tdict *d, tval k, tval v);  /* replaces an equal key in place */
tval *td_get(const tdict *d, tval k);             /* NULL if absent */
tval *td_get_s(const tdict *d, const char *k, size_t n);

bool tv_truthy(tval v);
bool tv_equal(tval a, tval b);          /* Python == */
const char *tv_type_name(tval v);       /* Python type name: "str", "dict", "NoneType" ... */
/* Python str() (is_repr false) or repr() appended to b. Returns false on failure. */
bool tv_to_str(sbuf *b, tval v, bool is_repr);
void fmt_float(char *buf, size_t cap, double f);   /* Python repr of a float */
/* json.dumps(v, ensure_ascii=False, indent (NULL or the per-level string), separators,
 * sort_keys); *err_type is set to a Python
 * type name when v holds something JSON cannot serialize. */
bool tv_to_json(sbuf *b, tval v, const char *indent, const char *item_sep, const char *key_sep,
                bool sort_keys, const char **err_type);
/* Converts parsed JSON into values (objects keep key order). KILN_ERR_NOMEM, or KILN_ERR_LIMIT
 * past 200 levels of nesting (no message set). */
kiln_err tv_from_json(arena *a, const json_t *j, tval *out, int depth);
int tv_compare(tval a, tval b, bool *ok);  /* <0, 0, >0; ok false when not orderable */

/* ---- AST ---- */
typedef enum node_kind {
    /* statements */
    N_BODY, N_TEXT, N_OUTPUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_CALLBLOCK,
    N_FILTERBLOCK, N_BREAK, N_CONTINUE, N_WITH, N_NOLOADER,
    /* expressions */
    N_LIT, N_NAME, N_GETATTR, N_GETITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_BINOP, N_NEG,
    N_POS, N_NOT, N_AND, N_OR, N_COMPARE, N_CONCAT, N_CONDEXPR, N_LIST, N_TUPLE, N_DICT,
    N_KWARG, N_NSREF,
    N_KIND_COUNT
} node_kind;

typedef enum binop {
    OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW,
    OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN,
} binop;

typedef struct node node;
struct node {
    uint8_t kind;        /* node_kind */
    uint8_t op;          /* binop, or flags */
    bool flag;           /* N_TEST: negated; N_FOR: recursive; N_FILTER: soft (if-frame); N_WITH: a block */
    int line;            /* 1-based template line */
    const char *name;    /* NUL-terminated: variable, attribute, filter, test, macro name */
    node *a, *b, *c, *d, *e;
    node **kids;         /* arguments, list items, body statements, compare operands */
    size_t n_kids;
    uint8_t *ops;        /* N_COMPARE: n_kids ops */
    tval lit;            /* N_LIT, N_TEXT */
};

struct kiln_template {
    arena a;             /* owns every node and literal */
    node *root;          /* N_BODY */
};

/* Lexes and parses `len` bytes of source into an N_BODY in `a`; KILN_ERR_FORMAT with
 * "line N: message" (jinja2's wording), KILN_ERR_NOMEM. */
kiln_err tpl_parse(arena *a, const char *src, size_t len, node **root);

/* ---- render state and builtins (render.c / builtins.c) ---- */
typedef struct rstate rstate;
struct tfunc {
    int id;              /* builtin id (builtins.c) */
    const char *name;
    tval self;           /* bound object for methods; joiner separator; cycler items */
    size_t state;        /* joiner: calls so far; cycler: current position */
};
struct tmacro {
    const node *def;     /* N_MACRO or N_CALLBLOCK (caller) */
    struct scope *closure;
    struct tmacro *caller; /* caller() body passed to this macro call, or NULL */
};
struct tloop {
    tlist *items;
    size_t i;            /* index0 */
    int depth;           /* 1-based */
    const node *for_node; /* for loop(...) recursion */
    struct scope *scope;
    tval last_changed;   /* loop.changed(): the previous arguments (a tuple), TV_UNDEF at first */
};

/* Sets the error message ("line N: ..." except for KILN_ERR_RAISED) and returns `code`. */
kiln_err rt_error(rstate *st, int line, kiln_err code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
arena *rs_arena(rstate *st);           /* the render's arena */
size_t rs_max_output(rstate *st);      /* the output limit, for string builders */
uint64_t rs_max_iterations(rstate *st); /* the loop iteration limit */
/* Raises jinja2's UndefinedError for an undefined used where a value is required. */
kiln_err rt_undef_error(rstate *st, int line, tval u);
bool undef_message(sbuf *b, tval u);  /* jinja2's wording of why `u` is undefined */

/* Accounts `steps` units of work; past the render's time budget: KILN_ERR_LIMIT (message set).
 * Long builtin loops call it so that no single operation outlives the budget. */
kiln_err rt_tick(rstate *st, int line, uint32_t steps);
/* An allocation failed: KILN_ERR_LIMIT when the arena hit its limit, else KILN_ERR_NOMEM. */
kiln_err rt_nomem(rstate *st, int line);
/* A string builder failed: output limit, nesting too deep, memory limit or out of memory. */
kiln_err rt_sb_fail(rstate *st, sbuf *b, int line);
kiln_err rt_str_format(rstate *st, int line, tval fmt, tval args, tval *out); /* Python `fmt % args` */
kiln_err rt_to_str(rstate *st, int line, tval v, tval *out);                  /* Python str(v) */
kiln_err rt_escape(rstate *st, int line, tval v, tval *out);                  /* markupsafe.escape */
/* jinja2's environment.getitem: obj[key], else the attribute, else an undefined. */
kiln_err rt_getitem(rstate *st, int line, tval obj, tval key, tval *out);
/* The items a for loop over `v` sees (dict keys, string characters, the rest of a generator,
 * nothing for an undefined); a TypeError for non-iterables. */
kiln_err rt_iter_list(rstate *st, int line, tval v, tlist **out);
tval rt_undef(rstate *st, undef_kind kind, const char *obj_type, tval key, const char *hint);
const char *rt_obj_type_repr(tval v); /* jinja2's object_type_repr: "dict object" ... */

/* Builtins. Each returns KILN_OK and *out, or an error via rt_error. */
typedef struct call_args {
    tval *pos;
    size_t n_pos;
    const char **kw_names;
    tval *kw_vals;
    size_t n_kw;
} call_args;
bool bi_has_filter(const char *name);
bool bi_has_test(const char *name);
bool tl_is_generator(const tlist *l);  /* an iterator without len() */
kiln_err bi_filter(rstate *st, int line, const char *name, tval v, call_args *ca, tval *out);
kiln_err bi_test(rstate *st, int line, const char *name, tval v, call_args *ca, bool *out);
/* Attribute lookup on builtin types (str/list/dict methods). Returns false if no such method. */
bool bi_method(rstate *st, tval obj, const char *name, tval *out);
kiln_err bi_call_func(rstate *st, int line, tfunc *fn, call_args *ca, tval *out);
/* Global functions: range, namespace, dict, raise_exception, strftime_now, joiner, cycler. */
bool bi_global(rstate *st, const char *name, tval *out);

#endif

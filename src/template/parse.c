/* parse.c: Jinja2 lexer and parser. The lexer follows jinja2's (3.1) rules with trim_blocks and
 * lstrip_blocks on: newlines normalized to \n, one trailing newline dropped, `{%-`/`-%}` strip
 * all whitespace, `+` disables lstrip/trim, raw blocks. The parser is jinja2's recursive descent
 * (same precedence, same statement forms) and builds an arena-allocated AST (internal.h).
 * Errors are KILN_ERR_FORMAT with "line N: <jinja2's message>". Pure; any thread. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/internal.h"

typedef enum tk_type {
    TK_TEXT,
    TK_VAR_BEGIN,
    TK_VAR_END,
    TK_BLOCK_BEGIN,
    TK_BLOCK_END,
    TK_NAME,
    TK_STRING,
    TK_INT,
    TK_FLOAT,
    TK_OP,
    TK_EOF,
} tk_type;

typedef struct tok {
    uint8_t type;
    int line;
    const char *p;  /* source text (names, operators) */
    size_t n;
    tval v;         /* decoded string / number */
} tok;

typedef struct lexer {
    arena *a;
    const char *s;
    size_t n, pos;
    int line;
    tok *toks;
    size_t n_toks, cap_toks;
} lexer;

#define MAX_NEST 200

static kiln_err syntax(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static kiln_err syntax(int line, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kiln_errf(KILN_ERR_FORMAT, "line %d: %s", line, msg);
}

static kiln_err emit(lexer *lx, tk_type type, const char *p, size_t n, int line, tval v) {
    if (lx->n_toks == lx->cap_toks) {
        size_t cap = lx->cap_toks ? lx->cap_toks * 2 : 256, bytes;
        if (!kiln_mul_size(cap, sizeof(tok), &bytes)) return KILN_ERR_NOMEM;
        tok *t = arena_alloc(lx->a, bytes);
        if (!t) return kiln_errf(KILN_ERR_NOMEM, "template too large");
        if (lx->n_toks) memcpy(t, lx->toks, lx->n_toks * sizeof(tok));
        lx->toks = t;
        lx->cap_toks = cap;
    }
    tok *t = &lx->toks[lx->n_toks++];
    t->type = (uint8_t)type;
    t->p = p;
    t->n = n;
    t->line = line;
    t->v = v;
    return KILN_OK;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
static int count_nl(const char *p, size_t n) {
    int k = 0;
    for (size_t i = 0; i < n; i++) k += p[i] == '\n';
    return k;
}

static void put_utf8(sbuf *b, uint32_t cp) {
    char o[4];
    if (cp < 0x80) {
        sb_addc(b, (char)cp);
    } else if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        sb_add(b, o, 2);
    } else if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        sb_add(b, o, 3);
    } else {
        o[0] = (char)(0xf0 | (cp >> 18));
        o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[3] = (char)(0x80 | (cp & 0x3f));
        sb_add(b, o, 4);
    }
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes a string literal body the way Python's unicode-escape codec does. */
static kiln_err unescape(arena *a, const char *p, size_t n, tval *out) {
    sbuf b;
    sb_init(&b, a, 0);
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c != '\\' || i + 1 >= n) {
            if (!sb_addc(&b, c)) return KILN_ERR_NOMEM;
            continue;
        }
        char e = p[++i];
        switch (e) {
        case '\n': break;
        case '\\': sb_addc(&b, '\\'); break;
        case '\'': sb_addc(&b, '\''); break;
        case '"': sb_addc(&b, '"'); break;
        case 'a': sb_addc(&b, '\a'); break;
        case 'b': sb_addc(&b, '\b'); break;
        case 'f': sb_addc(&b, '\f'); break;
        case 'n': sb_addc(&b, '\n'); break;
        case 'r': sb_addc(&b, '\r'); break;
        case 't': sb_addc(&b, '\t'); break;
        case 'v': sb_addc(&b, '\v'); break;
        case 'x':
        case 'u':
        case 'U': {
            int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t cp = 0;
            int k;
            for (k = 0; k < nd && i + 1 + k < n && hexval(p[i + 1 + k]) >= 0; k++)
                cp = cp * 16 + (uint32_t)hexval(p[i + 1 + k]);
            if (k < nd || cp > 0x10ffff) return KILN_ERR_FORMAT;
            i += (size_t)nd;
            put_utf8(&b, cp);
            break;
        }
        default:
            if (e >= '0' && e <= '7') {
                uint32_t cp = (uint32_t)(e - '0');
                for (int k = 0; k < 2 && i + 1 < n && p[i + 1] >= '0' && p[i + 1] <= '7'; k++)
                    cp = cp * 8 + (uint32_t)(p[++i] - '0');
                put_utf8(&b, cp);
            } else {
                sb_addc(&b, '\\');
                sb_addc(&b, e);
            }
        }
    }
    if (b.failed) return KILN_ERR_NOMEM;
    *out = sb_val(&b);
    return KILN_OK;
}

static const char *const ops2[] = {"//", "**", "==", "!=", ">=", "<="};
static const char ops1[] = "+-/*%~[](){}><=.:|,;";

/* Lexes the inside of a {{ }} or {% %} tag, up to and including its end. */
static kiln_err lex_tag(lexer *lx, bool is_block, bool *strip_after, bool *trim_after) {
    char stack[MAX_NEST];
    int depth = 0;
    const char *s = lx->s;
    kiln_err err;
    for (;;) {
        size_t i = lx->pos;
        if (i >= lx->n)
            return syntax(lx->line, "unexpected end of template, expected '%s'", is_block ? "end of statement block" : "end of print statement");
        if (depth == 0) {
            const char *end = is_block ? "%}" : "}}";
            if (s[i] == '-' && i + 3 <= lx->n && !strncmp(s + i + 1, end, 2)) {
                *strip_after = true;
                lx->pos = i + 3;
                return emit(lx, is_block ? TK_BLOCK_END : TK_VAR_END, s + i, 3, lx->line, tv_undef());
            }
            if (is_block && s[i] == '+' && i + 3 <= lx->n && !strncmp(s + i + 1, end, 2)) {
                lx->pos = i + 3;
                return emit(lx, TK_BLOCK_END, s + i, 3, lx->line, tv_undef());
            }
            if (i + 2 <= lx->n && !strncmp(s + i, end, 2)) {
                *trim_after = is_block;
                lx->pos = i + 2;
                return emit(lx, is_block ? TK_BLOCK_END : TK_VAR_END, s + i, 2, lx->line, tv_undef());
            }
        }
        if (is_ws(s[i])) {
            while (i < lx->n && is_ws(s[i])) lx->line += s[i++] == '\n';
            lx->pos = i;
            continue;
        }
        char c = s[i];
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < lx->n && s[j] != c) {
                if (s[j] == '\\' && j + 1 < lx->n) j++;
                j++;
            }
            if (j >= lx->n) return syntax(lx->line, "unexpected char %s at %zu", c == '"' ? "'\"'" : "\"'\"", i);
            tval v;
            if ((err = unescape(lx->a, s + i + 1, j - i - 1, &v)))
                return err == KILN_ERR_NOMEM ? kiln_errf(err, "out of memory parsing template")
                                             : syntax(lx->line, "invalid escape in string literal");
            if ((err = emit(lx, TK_STRING, s + i, j + 1 - i, lx->line, v))) return err;
            lx->line += count_nl(s + i, j + 1 - i);
            lx->pos = j + 1;
            continue;
        }
        if (c == '0' && i + 2 < lx->n && strchr("xXoObB", s[i + 1])) {
            /* 0x / 0o / 0b integers, with optional underscores */
            int base = (s[i + 1] | 0x20) == 'x' ? 16 : (s[i + 1] | 0x20) == 'o' ? 8 : 2;
            size_t j = i + 2;
            unsigned long long x = 0;
            bool any = false, ovf = false;
            for (; j < lx->n; j++) {
                if (s[j] == '_' && any) continue;
                int d = hexval(s[j]);
                if (d < 0 || d >= base) break;
                if (x > (unsigned long long)INT64_MAX / (unsigned)base) ovf = true;
                x = x * (unsigned)base + (unsigned)d;
                if (x > (unsigned long long)INT64_MAX) ovf = true;
                any = true;
            }
            if (any) {
                if (ovf) return syntax(lx->line, "integer literal too large");
                if ((err = emit(lx, TK_INT, s + i, j - i, lx->line, tv_int((int64_t)x)))) return err;
                lx->pos = j;
                continue;
            }
        }
        if (isdigit((unsigned char)c) && !(i > 0 && s[i - 1] == '.')) {
            /* digits (underscores dropped) collected in the arena: literals may be any length */
            size_t j = i;
            sbuf num;
            sb_init(&num, lx->a, 0);
            bool is_float = false;
            while (j < lx->n && (isdigit((unsigned char)s[j]) || (s[j] == '_' && j + 1 < lx->n && isdigit((unsigned char)s[j + 1])))) {
                if (s[j] != '_') sb_addc(&num, s[j]);
                j++;
            }
            if (j + 1 < lx->n && s[j] == '.' && isdigit((unsigned char)s[j + 1])) {
                is_float = true;
                sb_addc(&num, '.');
                j++;
                while (j < lx->n && (isdigit((unsigned char)s[j]) || (s[j] == '_' && j + 1 < lx->n && isdigit((unsigned char)s[j + 1])))) {
                    if (s[j] != '_') sb_addc(&num, s[j]);
                    j++;
                }
            }
            if (j < lx->n && (s[j] == 'e' || s[j] == 'E')) {
                size_t m = j + 1;
                if (m < lx->n && (s[m] == '+' || s[m] == '-')) m++;
                if (m < lx->n && isdigit((unsigned char)s[m])) {
                    is_float = true;
                    sb_add(&num, s + j, m - j);
                    j = m;
                    while (j < lx->n && (isdigit((unsigned char)s[j]) || s[j] == '_')) {
                        if (s[j] != '_') sb_addc(&num, s[j]);
                        j++;
                    }
                }
            }
            sb_addc(&num, 0);
            if (num.failed) return kiln_errf(KILN_ERR_NOMEM, "out of memory parsing template");
            tval v;
            if (is_float) {
                v = tv_float(strtod(num.p, NULL));
            } else {
                errno = 0;
                char *endp;
                long long x = strtoll(num.p, &endp, 10);
                if (errno) return syntax(lx->line, "integer literal too large");
                v = tv_int(x);
            }
            if ((err = emit(lx, is_float ? TK_FLOAT : TK_INT, s + i, j - i, lx->line, v))) return err;
            lx->pos = j;
            continue;
        }
        if (isalpha((unsigned char)c) || c == '_') {
            size_t j = i;
            while (j < lx->n && (isalnum((unsigned char)s[j]) || s[j] == '_')) j++;
            char *name = arena_strndup(lx->a, s + i, j - i);
            if (!name) return kiln_errf(KILN_ERR_NOMEM, "template too large");
            if ((err = emit(lx, TK_NAME, name, j - i, lx->line, tv_undef()))) return err;
            lx->pos = j;
            continue;
        }
        size_t oplen = 0;
        for (size_t k = 0; k < KILN_ARRAY_LEN(ops2); k++)
            if (i + 2 <= lx->n && !strncmp(s + i, ops2[k], 2)) oplen = 2;
        if (!oplen && c && strchr(ops1, c)) oplen = 1;
        if (!oplen) return syntax(lx->line, "unexpected char '%c' at %zu", c, i);
        if (oplen == 1) {
            if (c == '(' || c == '[' || c == '{') {
                if (depth >= MAX_NEST) return syntax(lx->line, "brackets nested too deeply");
                stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
            } else if (c == ')' || c == ']' || c == '}') {
                if (!depth) return syntax(lx->line, "unexpected '%c'", c);
                if (stack[depth - 1] != c) return syntax(lx->line, "unexpected '%c', expected '%c'", c, stack[depth - 1]);
                depth--;
            }
        }
        if ((err = emit(lx, TK_OP, s + i, oplen, lx->line, tv_undef()))) return err;
        lx->pos = i + oplen;
    }
}

static kiln_err lex(lexer *lx) {
    const char *s = lx->s;
    bool line_starting = true;
    kiln_err err;
    lx->line = 1;
    while (lx->pos < lx->n) {
        /* find the next tag opener */
        size_t q = lx->pos;
        while (q + 1 < lx->n && !(s[q] == '{' && (s[q + 1] == '{' || s[q + 1] == '%' || s[q + 1] == '#'))) q++;
        if (q + 1 >= lx->n) {
            if ((err = emit(lx, TK_TEXT, s + lx->pos, lx->n - lx->pos, lx->line, tv_str(s + lx->pos, lx->n - lx->pos)))) return err;
            lx->line += count_nl(s + lx->pos, lx->n - lx->pos);
            break;
        }
        char kind = s[q + 1];
        char sign = q + 2 < lx->n && (s[q + 2] == '-' || s[q + 2] == '+') ? s[q + 2] : 0;
        /* raw block? */
        bool raw = false;
        size_t raw_body = 0;
        if (kind == '%') {
            size_t j = q + 2 + (sign ? 1 : 0);
            while (j < lx->n && is_ws(s[j])) j++;
            if (j + 3 <= lx->n && !strncmp(s + j, "raw", 3)) {
                j += 3;
                while (j < lx->n && is_ws(s[j])) j++;
                if (j < lx->n && s[j] == '-') j++; /* jinja2: only `-%}` or `%}` end a raw tag */
                if (j + 2 <= lx->n && !strncmp(s + j, "%}", 2)) {
                    raw = true;
                    raw_body = j + 2;
                }
            }
        }
        /* the text before the tag, with whitespace control */
        size_t text_end = q;
        if (sign == '-') {
            while (text_end > lx->pos && is_ws(s[text_end - 1])) text_end--;
        } else if (sign != '+' && kind != '{') {
            size_t l = q;
            while (l > lx->pos && s[l - 1] != '\n') l--;
            bool at_line_start = l > lx->pos || line_starting;
            if (at_line_start && l < q) {
                bool all_ws = true;
                for (size_t k = l; k < q; k++)
                    if (!is_ws(s[k])) all_ws = false;
                if (all_ws) text_end = l;
            }
        }
        if (text_end > lx->pos &&
            (err = emit(lx, TK_TEXT, s + lx->pos, text_end - lx->pos, lx->line, tv_str(s + lx->pos, text_end - lx->pos))))
            return err;
        lx->line += count_nl(s + lx->pos, q - lx->pos);
        size_t after;
        bool strip_after = false, trim_after = false;
        if (raw) {
            /* find {% endraw %} */
            size_t j = raw_body;
            size_t body_end = 0, end_after = 0;
            char end_sign_l = 0, end_sign_r = 0;
            for (; j + 1 < lx->n; j++) {
                if (s[j] != '{' || s[j + 1] != '%') continue;
                size_t k = j + 2;
                char sl = 0;
                if (k < lx->n && (s[k] == '-' || s[k] == '+')) sl = s[k++];
                while (k < lx->n && is_ws(s[k])) k++;
                if (k + 6 > lx->n || strncmp(s + k, "endraw", 6)) continue;
                k += 6;
                while (k < lx->n && is_ws(s[k])) k++;
                char sr = 0;
                if (k < lx->n && (s[k] == '-' || s[k] == '+')) sr = s[k++];
                if (k + 2 > lx->n || strncmp(s + k, "%}", 2)) continue;
                body_end = j;
                end_after = k + 2;
                end_sign_l = sl;
                end_sign_r = sr;
                break;
            }
            if (!end_after) return syntax(lx->line, "Missing end of raw directive");
            size_t b0 = raw_body, b1 = body_end;
            char open_r = s[raw_body - 3];
            if (open_r == '-')
                while (b0 < b1 && is_ws(s[b0])) b0++;
            if (end_sign_l == '-') {
                while (b1 > b0 && is_ws(s[b1 - 1])) b1--;
            } else if (end_sign_l != '+') {
                size_t l = b1;
                while (l > b0 && s[l - 1] != '\n') l--;
                bool all_ws = true;
                for (size_t k = l; k < b1; k++)
                    if (!is_ws(s[k])) all_ws = false;
                if (all_ws && (l > b0 || (b0 > 0 && s[b0 - 1] == '\n'))) b1 = l;
            }
            if (b1 > b0 && (err = emit(lx, TK_TEXT, s + b0, b1 - b0, lx->line, tv_str(s + b0, b1 - b0)))) return err;
            lx->line += count_nl(s + q, end_after - q);
            after = end_after;
            strip_after = end_sign_r == '-';
            trim_after = end_sign_r != '+' && end_sign_r != '-';
        } else if (kind == '#') {
            size_t j = q + 2;
            while (j + 1 < lx->n && !(s[j] == '#' && s[j + 1] == '}')) j++;
            if (j + 1 >= lx->n) return syntax(lx->line, "Missing end of comment tag");
            char es = j > q + 2 ? s[j - 1] : 0;
            strip_after = es == '-';
            trim_after = es != '+' && es != '-';
            lx->line += count_nl(s + q, j - q);
            after = j + 2;
        } else {
            bool is_block = kind == '%';
            if ((err = emit(lx, is_block ? TK_BLOCK_BEGIN : TK_VAR_BEGIN, s + q, 2, lx->line, tv_undef()))) return err;
            lx->pos = q + 2 + (sign ? 1 : 0);
            if ((err = lex_tag(lx, is_block, &strip_after, &trim_after))) return err;
            after = lx->pos;
        }
        size_t tag_end = after;
        if (strip_after) {
            while (after < lx->n && is_ws(s[after])) after++;
        } else if (trim_after && after < lx->n && s[after] == '\n') {
            after++;
        }
        lx->line += count_nl(s + tag_end, after - tag_end);
        line_starting = after > tag_end && s[after - 1] == '\n';
        lx->pos = after;
    }
    return emit(lx, TK_EOF, "", 0, lx->line, tv_undef());
}

/* ---- parser ---- */
typedef struct parser {
    arena *a;
    tok *t;
    size_t i, n;
    bool soft;                 /* inside an if / conditional expression frame */
    int depth;
    const char *tag_stack[MAX_NEST];
    int n_tags;
} parser;

static tok *cur(parser *p) { return &p->t[p->i]; }
static tok *peek(parser *p, size_t k) { return &p->t[KILN_MIN(p->i + k, p->n - 1)]; }
static void adv(parser *p) {
    if (p->i + 1 < p->n) p->i++;
}
static bool is_op(tok *t, const char *op) {
    return t->type == TK_OP && t->n == strlen(op) && !strncmp(t->p, op, t->n);
}
static bool is_name(tok *t, const char *name) {
    return t->type == TK_NAME && !strcmp(t->p, name);
}

static const char *describe(tok *t, char *buf, size_t cap) {
    switch (t->type) {
    case TK_EOF: return "end of template";
    case TK_BLOCK_END: return "end of statement block";
    case TK_VAR_END: return "end of print statement";
    case TK_BLOCK_BEGIN: return "begin of statement block";
    case TK_VAR_BEGIN: return "begin of print statement";
    case TK_TEXT: return "template data / text";
    case TK_INT: return "integer";
    case TK_FLOAT: return "float";
    case TK_STRING: return "string";
    default: snprintf(buf, cap, "%.*s", (int)KILN_MIN(t->n, 60), t->p); return buf;
    }
}

static kiln_err fail_unexpected(parser *p) {
    char b[80];
    tok *t = cur(p);
    return syntax(t->line, "unexpected '%s'", describe(t, b, sizeof b));
}

static kiln_err expect_op(parser *p, const char *op) {
    char b[80];
    tok *t = cur(p);
    if (!is_op(t, op)) {
        if (t->type == TK_EOF)
            return syntax(t->line, "unexpected end of template, expected '%s'.", op);
        return syntax(t->line, "expected token '%s', got '%s'", op, describe(t, b, sizeof b));
    }
    adv(p);
    return KILN_OK;
}

static kiln_err expect_type(parser *p, tk_type type, const char *what) {
    char b[80];
    tok *t = cur(p);
    if (t->type != type) {
        if (t->type == TK_EOF)
            return syntax(t->line, "unexpected end of template, expected '%s'.", what);
        return syntax(t->line, "expected token '%s', got '%s'", what, describe(t, b, sizeof b));
    }
    adv(p);
    return KILN_OK;
}

static node *mk(parser *p, node_kind kind, int line) {
    node *n = arena_alloc(p->a, sizeof(node));
    if (!n) return NULL;
    n->kind = (uint8_t)kind;
    n->line = line;
    return n;
}

typedef struct nlist {
    node **items;
    size_t n, cap;
} nlist;

static bool nl_push(parser *p, nlist *l, node *x) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        node **items = arena_alloc(p->a, cap * sizeof(node *));
        if (!items) return false;
        if (l->n) memcpy(items, l->items, l->n * sizeof(node *));
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n++] = x;
    return true;
}

#define NOMEM() kiln_errf(KILN_ERR_NOMEM, "out of memory parsing template")
#define TRY(x)                                                                                 \
    do {                                                                                       \
        kiln_err e_ = (x);                                                                     \
        if (e_) return e_;                                                                     \
    } while (0)

static kiln_err parse_expression(parser *p, bool with_condexpr, node **out);
static kiln_err parse_tuple(parser *p, bool simplified, bool with_condexpr, const char *extra_end,
                            bool explicit_paren, node **out);
static kiln_err parse_unary(parser *p, bool with_filter, node **out);
static kiln_err parse_primary(parser *p, node **out);
static kiln_err parse_postfix(parser *p, node *n, node **out);
static kiln_err subparse(parser *p, const char *const *end_tokens, node **out);

static kiln_err enter(parser *p) {
    if (++p->depth > MAX_NEST) return syntax(cur(p)->line, "expression nested too deeply");
    return KILN_OK;
}

/* call arguments: (a, b, k=v) -> kids, keyword args as N_KWARG */
static kiln_err parse_call_args(parser *p, node *call) {
    nlist args = {0};
    TRY(expect_op(p, "("));
    bool kw_seen = false;
    while (!is_op(cur(p), ")")) {
        if (args.n) {
            TRY(expect_op(p, ","));
            if (is_op(cur(p), ")")) break;
        }
        node *arg;
        if (is_op(cur(p), "*") || is_op(cur(p), "**"))
            return syntax(cur(p)->line, "*args and **kwargs are not supported");
        if (cur(p)->type == TK_NAME && is_op(peek(p, 1), "=")) {
            const char *name = cur(p)->p;
            int line = cur(p)->line;
            adv(p);
            adv(p);
            node *kw = mk(p, N_KWARG, line);
            if (!kw) return NOMEM();
            kw->name = name;
            TRY(parse_expression(p, true, &kw->a));
            arg = kw;
            kw_seen = true;
        } else {
            if (kw_seen) return syntax(cur(p)->line, "Invalid argument syntax");
            TRY(parse_expression(p, true, &arg));
        }
        if (!nl_push(p, &args, arg)) return NOMEM();
    }
    adv(p);
    call->kids = args.items;
    call->n_kids = args.n;
    return KILN_OK;
}

static kiln_err parse_filter(parser *p, node *operand, bool start_inline, node **out) {
    /* operand is the filtered node (NULL in a filter block) */
    node *n = operand;
    while (start_inline || is_op(cur(p), "|")) {
        if (!start_inline) adv(p);
        start_inline = false;
        tok *t = cur(p);
        if (t->type != TK_NAME) return expect_type(p, TK_NAME, "name");
        sbuf nb;
        sb_init(&nb, p->a, 0);
        sb_adds(&nb, t->p);
        int line = t->line;
        adv(p);
        while (is_op(cur(p), ".")) {
            adv(p);
            if (cur(p)->type != TK_NAME) return expect_type(p, TK_NAME, "name");
            sb_addc(&nb, '.');
            sb_adds(&nb, cur(p)->p);
            adv(p);
        }
        sb_addc(&nb, 0);
        if (nb.failed) return NOMEM();
        if (!p->soft && !bi_has_filter(nb.p)) return syntax(line, "No filter named '%s'.", nb.p);
        node *f = mk(p, N_FILTER, line);
        if (!f) return NOMEM();
        f->name = nb.p;
        f->a = n;
        f->flag = p->soft;
        if (is_op(cur(p), "(")) TRY(parse_call_args(p, f));
        n = f;
    }
    *out = n;
    return KILN_OK;
}

static kiln_err parse_test(parser *p, node *operand, node **out) {
    int line = cur(p)->line;
    adv(p); /* is */
    bool negated = false;
    if (is_name(cur(p), "not")) {
        negated = true;
        adv(p);
    }
    tok *t = cur(p);
    if (t->type != TK_NAME) return expect_type(p, TK_NAME, "name");
    node *n = mk(p, N_TEST, line);
    if (!n) return NOMEM();
    n->name = t->p;
    n->a = operand;
    n->flag = negated;
    n->op = p->soft;
    adv(p);
    while (is_op(cur(p), ".")) { /* dotted test names: keep the last part for lookup failure */
        adv(p);
        if (cur(p)->type != TK_NAME) return expect_type(p, TK_NAME, "name");
        n->name = cur(p)->p;
        adv(p);
    }
    if (!p->soft && !bi_has_test(n->name)) return syntax(line, "No test named '%s'.", n->name);
    tok *c = cur(p);
    if (is_op(c, "(")) {
        TRY(parse_call_args(p, n));
    } else if ((c->type == TK_NAME || c->type == TK_STRING || c->type == TK_INT || c->type == TK_FLOAT ||
                is_op(c, "(") || is_op(c, "[") || is_op(c, "{")) &&
               !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
        if (is_name(c, "is")) return syntax(c->line, "You cannot chain multiple tests with is");
        node *arg;
        TRY(parse_primary(p, &arg));
        TRY(parse_postfix(p, arg, &arg));
        n->kids = arena_alloc(p->a, sizeof(node *));
        if (!n->kids) return NOMEM();
        n->kids[0] = arg;
        n->n_kids = 1;
    }
    *out = n;
    return KILN_OK;
}

static kiln_err parse_subscribed(parser *p, node **out) {
    int line = cur(p)->line;
    node *args[3] = {NULL, NULL, NULL};
    if (is_op(cur(p), ":")) {
        adv(p);
    } else {
        node *e;
        TRY(parse_expression(p, true, &e));
        if (!is_op(cur(p), ":")) {
            *out = e;
            return KILN_OK;
        }
        adv(p);
        args[0] = e;
    }
    if (!is_op(cur(p), "]") && !is_op(cur(p), ",") && !is_op(cur(p), ":"))
        TRY(parse_expression(p, true, &args[1]));
    if (is_op(cur(p), ":")) {
        adv(p);
        if (!is_op(cur(p), "]") && !is_op(cur(p), ","))
            TRY(parse_expression(p, true, &args[2]));
    }
    node *s = mk(p, N_SLICE, line);
    if (!s) return NOMEM();
    s->b = args[0];
    s->c = args[1];
    s->d = args[2];
    *out = s;
    return KILN_OK;
}

static kiln_err parse_postfix(parser *p, node *n, node **out) {
    for (;;) {
        tok *t = cur(p);
        if (is_op(t, ".")) {
            adv(p);
            tok *a = cur(p);
            if (a->type == TK_NAME) {
                node *g = mk(p, N_GETATTR, a->line);
                if (!g) return NOMEM();
                g->a = n;
                g->name = a->p;
                adv(p);
                n = g;
            } else if (a->type == TK_INT) {
                node *g = mk(p, N_GETITEM, a->line), *l = mk(p, N_LIT, a->line);
                if (!g || !l) return NOMEM();
                l->lit = a->v;
                g->a = n;
                g->b = l;
                adv(p);
                n = g;
            } else {
                return syntax(a->line, "expected name or number");
            }
        } else if (is_op(t, "[")) {
            adv(p);
            nlist args = {0};
            while (!is_op(cur(p), "]")) {
                if (args.n) {
                    TRY(expect_op(p, ","));
                    if (is_op(cur(p), "]")) break;
                }
                node *e = NULL;
                TRY(parse_subscribed(p, &e));
                if (!nl_push(p, &args, e)) return NOMEM();
            }
            adv(p);
            node *g = mk(p, N_GETITEM, t->line);
            if (!g) return NOMEM();
            g->a = n;
            if (args.n == 1) {
                g->b = args.items[0];
            } else {
                node *tu = mk(p, N_TUPLE, t->line);
                if (!tu) return NOMEM();
                tu->kids = args.items;
                tu->n_kids = args.n;
                g->b = tu;
            }
            n = g;
        } else if (is_op(t, "(")) {
            node *c = mk(p, N_CALL, t->line);
            if (!c) return NOMEM();
            c->a = n;
            TRY(parse_call_args(p, c));
            n = c;
        } else {
            break;
        }
    }
    *out = n;
    return KILN_OK;
}

static kiln_err parse_filter_expr(parser *p, node *n, node **out) {
    for (;;) {
        tok *t = cur(p);
        if (is_op(t, "|")) {
            TRY(parse_filter(p, n, false, &n));
        } else if (is_name(t, "is")) {
            TRY(parse_test(p, n, &n));
        } else if (is_op(t, "(")) {
            node *c = mk(p, N_CALL, t->line);
            if (!c) return NOMEM();
            c->a = n;
            TRY(parse_call_args(p, c));
            n = c;
        } else {
            break;
        }
    }
    *out = n;
    return KILN_OK;
}

static kiln_err parse_primary(parser *p, node **out) {
    tok *t = cur(p);
    char b[80];
    node *n;
    TRY(enter(p));
    if (t->type == TK_NAME) {
        n = mk(p, N_LIT, t->line);
        if (!n) return NOMEM();
        if (!strcmp(t->p, "true") || !strcmp(t->p, "True")) {
            n->lit = tv_bool(true);
        } else if (!strcmp(t->p, "false") || !strcmp(t->p, "False")) {
            n->lit = tv_bool(false);
        } else if (!strcmp(t->p, "none") || !strcmp(t->p, "None")) {
            n->lit = tv_none();
        } else {
            n->kind = N_NAME;
            n->name = t->p;
        }
        adv(p);
    } else if (t->type == TK_STRING) {
        n = mk(p, N_LIT, t->line);
        if (!n) return NOMEM();
        n->lit = t->v;
        adv(p);
        if (cur(p)->type == TK_STRING) {
            sbuf sb;
            sb_init(&sb, p->a, 0);
            sb_add(&sb, t->v.s.p, t->v.s.n);
            while (cur(p)->type == TK_STRING) {
                sb_add(&sb, cur(p)->v.s.p, cur(p)->v.s.n);
                adv(p);
            }
            if (sb.failed) return NOMEM();
            n->lit = sb_val(&sb);
        }
    } else if (t->type == TK_INT || t->type == TK_FLOAT) {
        n = mk(p, N_LIT, t->line);
        if (!n) return NOMEM();
        n->lit = t->v;
        adv(p);
    } else if (is_op(t, "(")) {
        adv(p);
        TRY(parse_tuple(p, false, true, NULL, true, &n));
        TRY(expect_op(p, ")"));
    } else if (is_op(t, "[") || is_op(t, "{")) {
        bool is_dict = is_op(t, "{");
        const char *close = is_dict ? "}" : "]";
        adv(p);
        nlist items = {0};
        while (!is_op(cur(p), close)) {
            if (items.n) {
                TRY(expect_op(p, ","));
                if (is_op(cur(p), close)) break;
            }
            node *e;
            TRY(parse_expression(p, true, &e));
            if (!nl_push(p, &items, e)) return NOMEM();
            if (is_dict) {
                TRY(expect_op(p, ":"));
                TRY(parse_expression(p, true, &e));
                if (!nl_push(p, &items, e)) return NOMEM();
            }
        }
        adv(p);
        n = mk(p, is_dict ? N_DICT : N_LIST, t->line);
        if (!n) return NOMEM();
        n->kids = items.items;
        n->n_kids = items.n;
    } else {
        return syntax(t->line, "unexpected '%s'", describe(t, b, sizeof b));
    }
    p->depth--;
    *out = n;
    return KILN_OK;
}

static kiln_err parse_unary(parser *p, bool with_filter, node **out) {
    tok *t = cur(p);
    node *n;
    TRY(enter(p));
    if (is_op(t, "-") || is_op(t, "+")) {
        adv(p);
        n = mk(p, is_op(t, "-") ? N_NEG : N_POS, t->line);
        if (!n) return NOMEM();
        TRY(parse_unary(p, false, &n->a));
    } else {
        TRY(parse_primary(p, &n));
    }
    TRY(parse_postfix(p, n, &n));
    if (with_filter) TRY(parse_filter_expr(p, n, &n));
    p->depth--;
    *out = n;
    return KILN_OK;
}

static kiln_err binop_node(parser *p, binop op, int line, node *l, node *r, node **out) {
    node *n = mk(p, N_BINOP, line);
    if (!n) return NOMEM();
    n->op = (uint8_t)op;
    n->a = l;
    n->b = r;
    *out = n;
    return KILN_OK;
}

static kiln_err parse_pow(parser *p, node **out) {
    node *l, *r;
    TRY(parse_unary(p, true, &l));
    while (is_op(cur(p), "**")) {
        int line = cur(p)->line;
        adv(p);
        TRY(parse_unary(p, true, &r));
        TRY(binop_node(p, OP_POW, line, l, r, &l));
    }
    *out = l;
    return KILN_OK;
}

static kiln_err parse_math2(parser *p, node **out) {
    node *l, *r;
    TRY(parse_pow(p, &l));
    for (;;) {
        tok *t = cur(p);
        binop op;
        if (is_op(t, "*")) op = OP_MUL;
        else if (is_op(t, "/")) op = OP_DIV;
        else if (is_op(t, "//")) op = OP_FLOORDIV;
        else if (is_op(t, "%")) op = OP_MOD;
        else break;
        adv(p);
        TRY(parse_pow(p, &r));
        TRY(binop_node(p, op, t->line, l, r, &l));
    }
    *out = l;
    return KILN_OK;
}

static kiln_err parse_concat(parser *p, node **out) {
    node *first;
    TRY(parse_math2(p, &first));
    if (!is_op(cur(p), "~")) {
        *out = first;
        return KILN_OK;
    }
    nlist args = {0};
    if (!nl_push(p, &args, first)) return NOMEM();
    int line = cur(p)->line;
    while (is_op(cur(p), "~")) {
        adv(p);
        node *e;
        TRY(parse_math2(p, &e));
        if (!nl_push(p, &args, e)) return NOMEM();
    }
    node *n = mk(p, N_CONCAT, line);
    if (!n) return NOMEM();
    n->kids = args.items;
    n->n_kids = args.n;
    *out = n;
    return KILN_OK;
}

static kiln_err parse_math1(parser *p, node **out) {
    node *l, *r;
    TRY(parse_concat(p, &l));
    for (;;) {
        tok *t = cur(p);
        binop op;
        if (is_op(t, "+")) op = OP_ADD;
        else if (is_op(t, "-")) op = OP_SUB;
        else break;
        adv(p);
        TRY(parse_concat(p, &r));
        TRY(binop_node(p, op, t->line, l, r, &l));
    }
    *out = l;
    return KILN_OK;
}

static kiln_err parse_compare(parser *p, node **out) {
    node *e;
    int line = cur(p)->line;
    TRY(parse_math1(p, &e));
    nlist operands = {0};
    uint8_t ops[64];
    size_t n_ops = 0;
    for (;;) {
        tok *t = cur(p);
        binop op;
        if (is_op(t, "==")) op = OP_EQ;
        else if (is_op(t, "!=")) op = OP_NE;
        else if (is_op(t, "<")) op = OP_LT;
        else if (is_op(t, "<=")) op = OP_LE;
        else if (is_op(t, ">")) op = OP_GT;
        else if (is_op(t, ">=")) op = OP_GE;
        else if (is_name(t, "in")) op = OP_IN;
        else if (is_name(t, "not") && is_name(peek(p, 1), "in")) {
            adv(p);
            op = OP_NOTIN;
        } else break;
        adv(p);
        if (n_ops == KILN_ARRAY_LEN(ops)) return syntax(t->line, "comparison chain too long");
        if (!operands.n && !nl_push(p, &operands, e)) return NOMEM();
        node *r;
        TRY(parse_math1(p, &r));
        if (!nl_push(p, &operands, r)) return NOMEM();
        ops[n_ops++] = (uint8_t)op;
    }
    if (!n_ops) {
        *out = e;
        return KILN_OK;
    }
    node *n = mk(p, N_COMPARE, line);
    if (!n) return NOMEM();
    n->kids = operands.items;
    n->n_kids = operands.n;
    n->ops = arena_alloc(p->a, n_ops);
    if (!n->ops) return NOMEM();
    memcpy(n->ops, ops, n_ops);
    *out = n;
    return KILN_OK;
}

static kiln_err parse_not(parser *p, node **out) {
    if (is_name(cur(p), "not")) {
        node *n = mk(p, N_NOT, cur(p)->line);
        if (!n) return NOMEM();
        adv(p);
        TRY(enter(p));
        TRY(parse_not(p, &n->a));
        p->depth--;
        *out = n;
        return KILN_OK;
    }
    return parse_compare(p, out);
}

static kiln_err parse_and(parser *p, node **out) {
    node *l;
    TRY(parse_not(p, &l));
    while (is_name(cur(p), "and")) {
        node *n = mk(p, N_AND, cur(p)->line);
        if (!n) return NOMEM();
        adv(p);
        n->a = l;
        TRY(parse_not(p, &n->b));
        l = n;
    }
    *out = l;
    return KILN_OK;
}

static kiln_err parse_or(parser *p, node **out) {
    node *l;
    TRY(parse_and(p, &l));
    while (is_name(cur(p), "or")) {
        node *n = mk(p, N_OR, cur(p)->line);
        if (!n) return NOMEM();
        adv(p);
        n->a = l;
        TRY(parse_and(p, &n->b));
        l = n;
    }
    *out = l;
    return KILN_OK;
}

static kiln_err parse_condexpr(parser *p, node **out) {
    node *e1;
    TRY(parse_or(p, &e1));
    while (is_name(cur(p), "if")) {
        node *n = mk(p, N_CONDEXPR, cur(p)->line);
        if (!n) return NOMEM();
        adv(p);
        bool soft = p->soft;
        p->soft = true;
        TRY(parse_or(p, &n->b));
        n->a = e1;
        if (is_name(cur(p), "else")) {
            adv(p);
            TRY(enter(p));
            TRY(parse_condexpr(p, &n->c));
            p->depth--;
        }
        p->soft = soft;
        e1 = n;
    }
    *out = e1;
    return KILN_OK;
}

static kiln_err parse_expression(parser *p, bool with_condexpr, node **out) {
    TRY(enter(p));
    kiln_err e = with_condexpr ? parse_condexpr(p, out) : parse_or(p, out);
    p->depth--;
    return e;
}

static bool is_tuple_end(parser *p, const char *extra_end) {
    tok *t = cur(p);
    if (t->type == TK_VAR_END || t->type == TK_BLOCK_END || is_op(t, ")")) return true;
    return extra_end && is_name(t, extra_end);
}

static kiln_err parse_tuple(parser *p, bool simplified, bool with_condexpr, const char *extra_end,
                            bool explicit_paren, node **out) {
    int line = cur(p)->line;
    nlist args = {0};
    bool is_tuple = false;
    for (;;) {
        if (args.n) TRY(expect_op(p, ","));
        if (is_tuple_end(p, extra_end)) break;
        node *e;
        if (simplified) TRY(parse_primary(p, &e));
        else TRY(parse_expression(p, with_condexpr, &e));
        if (!nl_push(p, &args, e)) return NOMEM();
        if (is_op(cur(p), ",")) is_tuple = true;
        else break;
    }
    if (!is_tuple) {
        if (args.n) {
            *out = args.items[0];
            return KILN_OK;
        }
        if (!explicit_paren) {
            char b[80];
            return syntax(cur(p)->line, "Expected an expression, got '%s'", describe(cur(p), b, sizeof b));
        }
    }
    node *n = mk(p, N_TUPLE, line);
    if (!n) return NOMEM();
    n->kids = args.items;
    n->n_kids = args.n;
    *out = n;
    return KILN_OK;
}

/* a name or a (nested) tuple of names */
static bool assignable(const node *t) {
    if (t->kind == N_NAME) return true;
    if (t->kind != N_TUPLE) return false;
    for (size_t i = 0; i < t->n_kids; i++)
        if (!assignable(t->kids[i])) return false;
    return true;
}

static kiln_err parse_assign_target(parser *p, bool with_tuple, bool name_only, const char *extra_end,
                                    bool with_namespace, node **out) {
    tok *t = cur(p);
    if (with_namespace && t->type == TK_NAME && is_op(peek(p, 1), ".")) {
        tok *attr = peek(p, 2);
        if (attr->type != TK_NAME) {
            adv(p);
            adv(p);
            return expect_type(p, TK_NAME, "name");
        }
        node *n = mk(p, N_NSREF, t->line);
        if (!n) return NOMEM();
        n->name = t->p;
        node *a = mk(p, N_LIT, t->line);
        if (!a) return NOMEM();
        a->name = attr->p;
        n->a = a;
        adv(p);
        adv(p);
        adv(p);
        *out = n;
        return KILN_OK;
    }
    node *target;
    if (name_only) {
        if (t->type != TK_NAME) return expect_type(p, TK_NAME, "name");
        target = mk(p, N_NAME, t->line);
        if (!target) return NOMEM();
        target->name = t->p;
        adv(p);
    } else if (with_tuple) {
        TRY(parse_tuple(p, true, true, extra_end, false, &target));
    } else {
        TRY(parse_primary(p, &target));
    }
    bool ok = assignable(target);
    if (!ok) {
        const char *what = target->kind == N_LIT ? "Const" : target->kind == N_TUPLE ? "Tuple" : "expression";
        return syntax(target->line, "can't assign to '%s'", what);
    }
    *out = target;
    return KILN_OK;
}

static kiln_err fail_eof_or_unknown(parser *p, const char *name, const char *const *end_tokens, int line) {
    sbuf b;
    sb_init(&b, p->a, 0);
    if (name) sb_printf(&b, "Encountered unknown tag '%s'.", name);
    else sb_adds(&b, "Unexpected end of template.");
    if (end_tokens && end_tokens[0]) {
        bool expected = false;
        for (size_t i = 0; name && end_tokens[i]; i++)
            if (!strcmp(end_tokens[i], name)) expected = true;
        sb_adds(&b, expected ? " You probably made a nesting mistake. Jinja is expecting this tag, but currently looking for "
                             : " Jinja was looking for the following tags: ");
        for (size_t i = 0; end_tokens[i]; i++) sb_printf(&b, "%s'%s'", i ? " or " : "", end_tokens[i]);
        sb_adds(&b, ".");
    }
    if (p->n_tags) sb_printf(&b, " The innermost block that needs to be closed is '%s'.", p->tag_stack[p->n_tags - 1]);
    sb_addc(&b, 0);
    return syntax(line, "%s", b.p ? b.p : "syntax error");
}

/* parse_statements: expects block_end, parses a body until one of end_tokens; on return the
 * current token is that end-tag name (consumed too when drop_needle). */
static kiln_err parse_statements(parser *p, const char *const *end_tokens, bool drop_needle, node **out) {
    if (is_op(cur(p), ":")) adv(p);
    TRY(expect_type(p, TK_BLOCK_END, "end of statement block"));
    TRY(subparse(p, end_tokens, out));
    if (cur(p)->type == TK_EOF) return fail_eof_or_unknown(p, NULL, end_tokens, cur(p)->line);
    if (drop_needle) adv(p);
    return KILN_OK;
}

static kiln_err parse_signature(parser *p, node *n) {
    nlist params = {0};
    TRY(expect_op(p, "("));
    bool have_default = false;
    while (!is_op(cur(p), ")")) {
        if (params.n) TRY(expect_op(p, ","));
        node *arg;
        TRY(parse_assign_target(p, false, true, NULL, false, &arg));
        if (is_op(cur(p), "=")) {
            adv(p);
            TRY(parse_expression(p, true, &arg->a));
            have_default = true;
        } else if (have_default) {
            return syntax(arg->line, "non-default argument follows default argument");
        }
        if (!nl_push(p, &params, arg)) return NOMEM();
    }
    adv(p);
    n->kids = params.items;
    n->n_kids = params.n;
    return KILN_OK;
}

static kiln_err parse_statement(parser *p, node **out) {
    tok *t = cur(p);
    static const char *const end_for[] = {"endfor", "else", NULL};
    static const char *const end_for2[] = {"endfor", NULL};
    static const char *const end_if[] = {"elif", "else", "endif", NULL};
    static const char *const end_if2[] = {"endif", NULL};
    static const char *const end_set[] = {"endset", NULL};
    static const char *const end_macro[] = {"endmacro", NULL};
    static const char *const end_call[] = {"endcall", NULL};
    static const char *const end_filter[] = {"endfilter", NULL};
    static const char *const end_gen[] = {"endgeneration", NULL};
    static const char *const end_with[] = {"endwith", NULL};
    if (t->type != TK_NAME) return syntax(t->line, "tag name expected");
    if (p->n_tags >= MAX_NEST) return syntax(t->line, "blocks nested too deeply");
    p->tag_stack[p->n_tags++] = t->p;
    const char *kw = t->p;
    int line = t->line;
    node *n = NULL;
    bool soft = p->soft;
    if (!strcmp(kw, "for")) {
        adv(p);
        n = mk(p, N_FOR, line);
        if (!n) return NOMEM();
        TRY(parse_assign_target(p, true, false, "in", false, &n->a));
        if (!is_name(cur(p), "in")) {
            char b[80];
            if (cur(p)->type == TK_EOF) return syntax(cur(p)->line, "unexpected end of template, expected 'in'.");
            return syntax(cur(p)->line, "expected token 'in', got '%s'", describe(cur(p), b, sizeof b));
        }
        adv(p);
        TRY(parse_tuple(p, false, false, "recursive", false, &n->b));
        p->soft = false;
        if (is_name(cur(p), "if")) {
            adv(p);
            TRY(parse_expression(p, true, &n->e));
        }
        if (is_name(cur(p), "recursive")) {
            adv(p);
            n->flag = true;
        }
        TRY(parse_statements(p, end_for, false, &n->c));
        bool is_else = is_name(cur(p), "else");
        adv(p);
        if (is_else) TRY(parse_statements(p, end_for2, true, &n->d));
    } else if (!strcmp(kw, "if")) {
        adv(p);
        n = mk(p, N_IF, line);
        if (!n) return NOMEM();
        node *ifn = n;
        p->soft = true;
        for (;;) {
            TRY(parse_tuple(p, false, false, NULL, false, &ifn->a));
            TRY(parse_statements(p, end_if, false, &ifn->b));
            tok *e = cur(p);
            adv(p);
            if (is_name(e, "elif")) {
                node *sub = mk(p, N_IF, e->line);
                if (!sub) return NOMEM();
                ifn->c = sub;
                ifn = sub;
                continue;
            }
            if (is_name(e, "else")) TRY(parse_statements(p, end_if2, true, &ifn->c));
            break;
        }
    } else if (!strcmp(kw, "set")) {
        adv(p);
        node *target;
        TRY(parse_assign_target(p, true, false, NULL, true, &target));
        if (is_op(cur(p), "=")) {
            adv(p);
            n = mk(p, N_SET, line);
            if (!n) return NOMEM();
            n->a = target;
            TRY(parse_tuple(p, false, true, NULL, false, &n->b));
        } else {
            n = mk(p, N_SETBLOCK, line);
            if (!n) return NOMEM();
            n->a = target;
            p->soft = false;
            if (is_op(cur(p), "|")) TRY(parse_filter(p, NULL, false, &n->c));
            TRY(parse_statements(p, end_set, true, &n->b));
        }
    } else if (!strcmp(kw, "macro")) {
        adv(p);
        n = mk(p, N_MACRO, line);
        if (!n) return NOMEM();
        node *name;
        TRY(parse_assign_target(p, false, true, NULL, false, &name));
        n->name = name->name;
        p->soft = false;
        TRY(parse_signature(p, n));
        TRY(parse_statements(p, end_macro, true, &n->b));
    } else if (!strcmp(kw, "call")) {
        adv(p);
        n = mk(p, N_CALLBLOCK, line);
        if (!n) return NOMEM();
        if (is_op(cur(p), "(")) TRY(parse_signature(p, n));
        p->soft = false;
        TRY(parse_expression(p, true, &n->a));
        if (n->a->kind != N_CALL) return syntax(line, "expected call");
        TRY(parse_statements(p, end_call, true, &n->b));
    } else if (!strcmp(kw, "filter")) {
        adv(p);
        n = mk(p, N_FILTERBLOCK, line);
        if (!n) return NOMEM();
        p->soft = false;
        TRY(parse_filter(p, NULL, true, &n->a));
        TRY(parse_statements(p, end_filter, true, &n->b));
    } else if (!strcmp(kw, "generation")) {
        /* transformers renders the body as a call block: a scope of its own */
        adv(p);
        n = mk(p, N_WITH, line);
        if (!n) return NOMEM();
        p->soft = false;
        TRY(parse_statements(p, end_gen, true, &n->b));
    } else if (!strcmp(kw, "with")) {
        adv(p);
        n = mk(p, N_WITH, line);
        if (!n) return NOMEM();
        nlist targets = {0};
        while (cur(p)->type != TK_BLOCK_END) {
            if (targets.n) TRY(expect_op(p, ","));
            node *tg;
            TRY(parse_assign_target(p, false, false, NULL, false, &tg));
            TRY(expect_op(p, "="));
            TRY(parse_expression(p, true, &tg->a));
            if (!nl_push(p, &targets, tg)) return NOMEM();
        }
        n->kids = targets.items;
        n->n_kids = targets.n;
        p->soft = false;
        TRY(parse_statements(p, end_with, true, &n->b));
    } else if (!strcmp(kw, "block")) {
        /* a standalone template renders its blocks in place, in a scope of their own that sees
         * the template's top level (and the enclosing scope only when `scoped`) */
        static const char *const end_block[] = {"endblock", NULL};
        adv(p);
        if (cur(p)->type != TK_NAME) return expect_type(p, TK_NAME, "name");
        const char *bname = cur(p)->p;
        adv(p);
        n = mk(p, N_WITH, line);
        if (!n) return NOMEM();
        n->flag = true;
        if (is_name(cur(p), "scoped")) {
            n->flag = false;
            adv(p);
        }
        if (is_name(cur(p), "required")) adv(p);
        p->soft = false;
        TRY(parse_statements(p, end_block, true, &n->b));
        if (cur(p)->type == TK_NAME) {
            if (strcmp(cur(p)->p, bname)) return syntax(cur(p)->line, "expected token 'end of statement block', got '%s'", cur(p)->p);
            adv(p);
        }
    } else if (!strcmp(kw, "include") || !strcmp(kw, "import") || !strcmp(kw, "from") || !strcmp(kw, "extends")) {
        /* transformers' environment has no loader: these fail when reached, as in jinja2 */
        adv(p);
        n = mk(p, N_NOLOADER, line);
        if (!n) return NOMEM();
        while (cur(p)->type != TK_BLOCK_END && cur(p)->type != TK_EOF) adv(p);
    } else if (!strcmp(kw, "print")) {
        /* {% print a, b %} outputs each expression (not a tuple) */
        adv(p);
        n = mk(p, N_BODY, line);
        if (!n) return NOMEM();
        nlist outs = {0};
        while (cur(p)->type != TK_BLOCK_END) {
            if (outs.n) TRY(expect_op(p, ","));
            node *o = mk(p, N_OUTPUT, cur(p)->line);
            if (!o) return NOMEM();
            TRY(parse_expression(p, true, &o->a));
            if (!nl_push(p, &outs, o)) return NOMEM();
        }
        n->kids = outs.items;
        n->n_kids = outs.n;
    } else if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
        adv(p);
        n = mk(p, kw[0] == 'b' ? N_BREAK : N_CONTINUE, line);
        if (!n) return NOMEM();
    } else {
        p->n_tags--;
        return fail_eof_or_unknown(p, kw, NULL, line);
    }
    p->soft = soft;
    p->n_tags--;
    KILN_ASSERT(n != NULL); /* every branch above builds its node or returns an error */
    *out = n;
    return KILN_OK;
}

static kiln_err subparse(parser *p, const char *const *end_tokens, node **out) {
    nlist body = {0};
    node *bn = mk(p, N_BODY, cur(p)->line);
    if (!bn) return NOMEM();
    TRY(enter(p));
    for (;;) {
        tok *t = cur(p);
        if (t->type == TK_EOF) break;
        if (t->type == TK_TEXT) {
            node *n = mk(p, N_TEXT, t->line);
            if (!n) return NOMEM();
            n->lit = t->v;
            if (!nl_push(p, &body, n)) return NOMEM();
            adv(p);
        } else if (t->type == TK_VAR_BEGIN) {
            adv(p);
            node *n = mk(p, N_OUTPUT, t->line);
            if (!n) return NOMEM();
            TRY(parse_tuple(p, false, true, NULL, false, &n->a));
            TRY(expect_type(p, TK_VAR_END, "end of print statement"));
            if (!nl_push(p, &body, n)) return NOMEM();
        } else if (t->type == TK_BLOCK_BEGIN) {
            adv(p);
            tok *name = cur(p);
            if (end_tokens && name->type == TK_NAME) {
                for (size_t i = 0; end_tokens[i]; i++)
                    if (!strcmp(name->p, end_tokens[i])) goto done;
            }
            if (name->type == TK_NAME && !end_tokens &&
                (!strncmp(name->p, "end", 3) || !strcmp(name->p, "else") || !strcmp(name->p, "elif")))
                return fail_eof_or_unknown(p, name->p, NULL, name->line);
            if (name->type == TK_NAME && end_tokens) {
                /* an end tag of an outer block: a nesting mistake */
                bool known = !strcmp(name->p, "for") || !strcmp(name->p, "if") || !strcmp(name->p, "set") ||
                             !strcmp(name->p, "macro") || !strcmp(name->p, "call") || !strcmp(name->p, "filter") ||
                             !strcmp(name->p, "generation") || !strcmp(name->p, "with") ||
                             !strcmp(name->p, "break") || !strcmp(name->p, "continue") || !strcmp(name->p, "print") ||
                             !strcmp(name->p, "block") || !strcmp(name->p, "include") || !strcmp(name->p, "import") ||
                             !strcmp(name->p, "from") || !strcmp(name->p, "extends");
                if (!known) return fail_eof_or_unknown(p, name->p, end_tokens, name->line);
            }
            node *n = NULL;
            TRY(parse_statement(p, &n));
            TRY(expect_type(p, TK_BLOCK_END, "end of statement block"));
            if (!nl_push(p, &body, n)) return NOMEM();
        } else {
            return fail_unexpected(p);
        }
    }
done:
    p->depth--;
    bn->kids = body.items;
    bn->n_kids = body.n;
    *out = bn;
    return KILN_OK;
}

kiln_err tpl_parse(arena *a, const char *src, size_t len, node **root) {
    /* normalize newlines (\r\n, \r -> \n) and drop one trailing newline, as jinja2 does */
    char *s = arena_alloc(a, len + 1);
    if (!s) return NOMEM();
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    lexer lx = {.a = a, .s = s, .n = n};
    TRY(lex(&lx));
    parser p = {.a = a, .t = lx.toks, .n = lx.n_toks};
    TRY(subparse(&p, NULL, root));
    if (cur(&p)->type != TK_EOF) return fail_unexpected(&p);
    return KILN_OK;
}

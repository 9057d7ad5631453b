/* tok.h: tokenizers read from GGUF metadata (tokenizer.ggml.*): SentencePiece-BPE ("llama":
 * scores, byte fallback, dummy prefix) and byte-level BPE ("gpt2": ranked merges, pre-tokenizer
 * regexes run by PCRE2 per tokenizer.ggml.pre), special tokens, and a streaming detokenizer that
 * only ever emits complete UTF-8. Reference behaviour: Hugging Face tokenizers (ids and decode).
 * Threads: a kiln_vocab is read-only after kiln_vocab_load and may be shared by any thread; a
 * kiln_detok belongs to one sequence (one thread at a time). */
#ifndef KILN_TOK_H
#define KILN_TOK_H

#include "base/base.h"
#include "model/gguf.h"

typedef struct kiln_vocab kiln_vocab; /* read-only after load, any thread */

typedef enum kiln_vocab_type {
    KILN_VOCAB_SPM, /* tokenizer.ggml.model = "llama": SentencePiece BPE with byte fallback */
    KILN_VOCAB_BPE, /* tokenizer.ggml.model = "gpt2": byte-level BPE */
    KILN_VOCAB_TYPE_COUNT
} kiln_vocab_type;

/* Token attributes (tokenizer.ggml.token_type, GGUF/llama.cpp numbering). */
typedef enum kiln_token_type {
    KILN_TOKEN_UNDEFINED = 0,
    KILN_TOKEN_NORMAL = 1,
    KILN_TOKEN_UNKNOWN = 2,
    KILN_TOKEN_CONTROL = 3,
    KILN_TOKEN_USER_DEFINED = 4,
    KILN_TOKEN_UNUSED = 5,
    KILN_TOKEN_BYTE = 6,
    KILN_TOKEN_TYPE_COUNT
} kiln_token_type;

/* Reads the vocabulary of g (tokenizer.ggml.model, .tokens, .scores, .token_type, .merges, .pre,
 * the special token ids and add_bos/add_eos/add_space_prefix flags). Copies all it needs: g may be
 * closed afterwards. A special-token id out of range is ignored with a warning (-1).
 * KILN_ERR_NOT_FOUND (no tokenizer metadata), KILN_ERR_FORMAT (inconsistent arrays, malformed
 * merges), KILN_ERR_UNSUPPORTED (other tokenizer models, an unknown pre-tokenizer),
 * KILN_ERR_NOMEM. The caller owns *out (kiln_vocab_free). */
kiln_err kiln_vocab_load(const kiln_gguf *g, kiln_vocab **out);
void kiln_vocab_free(kiln_vocab *v); /* NULL is a no-op */

/* SPM or byte-level BPE. */
kiln_vocab_type kiln_vocab_get_type(const kiln_vocab *v);
/* tokenizer.ggml.pre ("default" when absent; "" for SPM vocabularies). */
const char *kiln_vocab_pre(const kiln_vocab *v);
/* Number of tokens (ids are 0 .. n - 1; a model's output may be wider). */
int32_t kiln_vocab_n_tokens(const kiln_vocab *v);
int32_t kiln_vocab_bos(const kiln_vocab *v); /* -1 if none */
int32_t kiln_vocab_eos(const kiln_vocab *v); /* -1 if none */
/* End of turn (<|eot_id|>, <|im_end|> ...), -1 if none. */
int32_t kiln_vocab_eot(const kiln_vocab *v);
int32_t kiln_vocab_unk(const kiln_vocab *v); /* -1 if none */
int32_t kiln_vocab_pad(const kiln_vocab *v); /* -1 if none */
/* tokenizer.ggml.add_bos_token / add_eos_token (defaults per model type: SPM adds BOS). */
bool kiln_vocab_add_bos(const kiln_vocab *v);
bool kiln_vocab_add_eos(const kiln_vocab *v);
/* End of generation: eos, eot and the other end tokens found in the vocabulary (<|eot_id|>,
 * <|im_end|>, <|endoftext|>, <end_of_turn>, <|end|>, <|eom_id|> ...).
 * False for ids out of range. */
bool kiln_vocab_is_eog(const kiln_vocab *v, int32_t id);
/* Control tokens (BOS, EOS, <|im_start|> ...); false for ids out of range. */
bool kiln_vocab_is_control(const kiln_vocab *v, int32_t id);
/* Token type of id (KILN_TOKEN_UNDEFINED for ids out of range). */
kiln_token_type kiln_vocab_token_type(const kiln_vocab *v, int32_t id);
/* Raw text of a token as stored in the vocabulary (SPM "▁", byte-level BPE "Ġ" forms, not
 * decoded); points into v, not NUL-terminated, *len set. NULL for ids out of range. */
const char *kiln_vocab_token_text(const kiln_vocab *v, int32_t id, size_t *len);
/* The id whose raw text equals text[0..len), or -1. */
int32_t kiln_vocab_find(const kiln_vocab *v, const char *text, size_t len);

/* Encodes text (not NUL-terminated, len bytes; invalid UTF-8 is accepted and tokenized as bytes
 * where the vocabulary allows). add_bos: prepend BOS if the vocab wants one (kiln_vocab_add_bos);
 * EOS is appended likewise when add_bos is set and the vocab's add_eos flag is on. parse_special:
 * control token strings in the text become their ids, else they are plain text. User-defined
 * tokens (HF added tokens that are not special, e.g. Qwen's <think>) are always matched, as HF and
 * llama.cpp do. Matching is leftmost, then longest. For SPM the dummy-prefix space goes before
 * the text at the start and after each special token (llama.cpp). *ids is kiln_malloc'd (possibly
 * NULL when *n_ids is 0), the caller frees it. KILN_ERR_NOMEM, KILN_ERR_LIMIT (text over 1 GiB,
 * or a pre-tokenizer regex over PCRE2's match limit). */
kiln_err kiln_tok_encode(const kiln_vocab *v, const char *text, size_t len, bool add_bos,
                         bool parse_special, int32_t **ids, size_t *n_ids);

/* Appends the bytes of one token's text: byte-fallback <0xNN> -> that byte, "▁" -> space for SPM,
 * byte-level BPE unicode -> bytes; control tokens append nothing unless render_special (then their
 * raw text). The bytes may be an incomplete UTF-8 sequence. KILN_ERR_INVALID for an id out of
 * range, KILN_ERR_NOMEM. */
kiln_err kiln_tok_piece(const kiln_vocab *v, int32_t id, bool render_special, kiln_buf *out);

/* Decodes a whole id list as Hugging Face's decode does (skip_special_tokens = skip_special;
 * without skipping, control tokens appear as their text). For SPM vocabs with a dummy prefix, one
 * leading space of the whole text is removed (HF's Strip decoder). Invalid UTF-8 becomes U+FFFD
 * (one per maximal invalid subpart, as String::from_utf8_lossy). Appends to out.
 * KILN_ERR_INVALID (an id out of range), KILN_ERR_NOMEM. */
kiln_err kiln_tok_decode(const kiln_vocab *v, const int32_t *ids, size_t n, bool skip_special,
                         kiln_buf *out);

/* Streaming detokenizer: one per generated sequence, caller-owned storage, no heap. Push ids one
 * at a time; only complete UTF-8 characters reach `out` (the bytes of a split character are held
 * until complete; invalid sequences become U+FFFD as soon as they are proven invalid). With
 * strip_leading_space (for decoding a whole sequence from BOS), the same leading-space rule as
 * kiln_tok_decode applies, so concatenated output == kiln_tok_decode of the ids. For generated
 * continuations after a prompt, pass false (llama.cpp keeps that space). */
typedef struct kiln_detok {
    const kiln_vocab *vocab; /* borrowed */
    bool skip_special;       /* control tokens produce nothing */
    bool strip_pending;      /* the next output byte, if a space, is dropped */
    uint8_t n_held;          /* bytes in held[] */
    uint8_t held[4];         /* prefix of an incomplete UTF-8 character */
} kiln_detok;

/* Starts a stream over v (borrowed: it must outlive d). skip_special: control tokens produce no
 * text; strip_leading_space: see above. */
void kiln_detok_init(kiln_detok *d, const kiln_vocab *v, bool skip_special,
                     bool strip_leading_space);
/* Appends the complete characters that id completes. KILN_ERR_INVALID (id out of range; the
 * state is unchanged), KILN_ERR_NOMEM. */
kiln_err kiln_detok_push(kiln_detok *d, int32_t id, kiln_buf *out);
/* Ends the stream: held bytes of an unfinished character become U+FFFD. The detok may be reused
 * as freshly initialized (strip rule not re-armed). KILN_ERR_NOMEM. */
kiln_err kiln_detok_flush(kiln_detok *d, kiln_buf *out);

#endif

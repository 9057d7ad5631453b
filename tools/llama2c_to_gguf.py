#!/usr/bin/python3
"""llama2c_to_gguf.py: karpathy llama2.c checkpoint (.bin, "legacy" v0 layout) + its tokenizer
(llama2.c tokenizer .bin, or the SentencePiece .model protobuf) -> GGUF (arch llama) with
llama.cpp's key and tensor names. llama2.c rotates interleaved pairs, which is llama.cpp's
"normal" rope of arch llama, so q/k weights are stored unpermuted.

usage: llama2c_to_gguf.py MODEL.bin TOKENIZER.{bin,model} OUT.gguf [--type f32|f16|bf16|q8_0|q4_0]
       [--ctx N] [--name NAME] [--tie]
"""
import argparse
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def read_checkpoint(path):
    """-> (config dict, dict of float32 arrays in PyTorch shapes (out, in))."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 28:
        raise ValueError("%s: too short for a llama2.c header" % path)
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack_from("<7i", buf, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len) <= 0 or dim % n_heads:
        raise ValueError("%s: implausible header %r" % (path, (dim, hidden, n_layers, n_heads,
                                                               n_kv_heads, vocab, seq_len)))
    head = dim // n_heads
    kv_dim = head * n_kv_heads
    data = np.frombuffer(buf, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > data.size:
            raise ValueError("%s: truncated (needs %d more floats)" % (path, pos + n - data.size))
        a = data[pos:pos + n].reshape(shape)
        pos += n
        return a

    w = {}
    w["tok_emb"] = take(vocab, dim)
    w["rms_att"] = take(n_layers, dim)
    w["wq"] = take(n_layers, dim, dim)
    w["wk"] = take(n_layers, kv_dim, dim)
    w["wv"] = take(n_layers, kv_dim, dim)
    w["wo"] = take(n_layers, dim, dim)
    w["rms_ffn"] = take(n_layers, dim)
    w["w1"] = take(n_layers, hidden, dim)
    w["w2"] = take(n_layers, dim, hidden)
    w["w3"] = take(n_layers, hidden, dim)
    w["rms_final"] = take(dim)
    take(seq_len * head // 2)  # freq_cis_real (unused, recomputed at run time)
    take(seq_len * head // 2)  # freq_cis_imag
    w["wcls"] = w["tok_emb"] if shared else take(vocab, dim)
    if pos != data.size:
        raise ValueError("%s: %d trailing floats" % (path, data.size - pos))
    cfg = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
               vocab=vocab, seq_len=seq_len, shared=shared)
    return cfg, w


def _byte_piece(p):
    return len(p) == 6 and p.startswith("<0x") and p.endswith(">")


def read_tokenizer_bin(path, vocab):
    """llama2.c tokenizer.bin: int32 max_token_length, then per token f32 score, int32 len, bytes.
    llama2.c's exporter turned '\u2581' into ' ' and wrapped <s>/</s> in newlines; undo both."""
    with open(path, "rb") as f:
        buf = f.read()
    pos = 4
    tokens, scores = [], []
    for i in range(vocab):
        if pos + 8 > len(buf):
            raise ValueError("%s: truncated at token %d" % (path, i))
        score, n = struct.unpack_from("<fi", buf, pos)
        pos += 8
        if n < 0 or pos + n > len(buf):
            raise ValueError("%s: bad length at token %d" % (path, i))
        piece = buf[pos:pos + n].decode("utf-8")
        pos += n
        if piece in ("\n<s>\n", "\n</s>\n"):
            piece = piece.strip("\n")
        piece = piece.replace(" ", "\u2581")
        tokens.append(piece)
        scores.append(score)
    types = []
    for i, p in enumerate(tokens):
        if p == "<unk>":
            types.append(TOKEN_UNKNOWN)
        elif p in ("<s>", "</s>"):
            types.append(TOKEN_CONTROL)
        elif _byte_piece(p):
            types.append(TOKEN_BYTE)
        else:
            types.append(TOKEN_NORMAL)
    return tokens, scores, types


def _varint(buf, pos):
    v = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos


def _proto_fields(buf):
    """Yields (field number, wire type, value) of one protobuf message (value: int or bytes)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        fno, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 1:
            v = buf[pos:pos + 8]
            pos += 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            v = buf[pos:pos + n]
            pos += n
        elif wt == 5:
            v = buf[pos:pos + 4]
            pos += 4
        else:
            raise ValueError("unsupported protobuf wire type %d" % wt)
        yield fno, wt, v


def read_tokenizer_model(path):
    """SentencePiece ModelProto: field 1 = repeated SentencePiece {1: piece, 2: score (float),
    3: type (enum, NORMAL=1 .. BYTE=6, same numbering as GGUF token_type)}."""
    with open(path, "rb") as f:
        buf = f.read()
    tokens, scores, types = [], [], []
    for fno, wt, v in _proto_fields(buf):
        if fno != 1 or wt != 2:
            continue
        piece, score, typ = "", 0.0, TOKEN_NORMAL
        for f2, w2, v2 in _proto_fields(v):
            if f2 == 1 and w2 == 2:
                piece = v2.decode("utf-8")
            elif f2 == 2 and w2 == 5:
                score, = struct.unpack("<f", v2)
            elif f2 == 3 and w2 == 0:
                typ = v2
        tokens.append(piece)
        scores.append(score)
        types.append(typ)
    return tokens, scores, types


def convert(model_path, tok_path, out_path, wtype=gguf.F32, ctx=None, name=None, tie=False):
    cfg, w = read_checkpoint(model_path)
    if tok_path.endswith(".model"):
        tokens, scores, types = read_tokenizer_model(tok_path)
    else:
        tokens, scores, types = read_tokenizer_bin(tok_path, cfg["vocab"])
    if len(tokens) != cfg["vocab"]:
        raise ValueError("tokenizer has %d tokens, model %d" % (len(tokens), cfg["vocab"]))
    head = cfg["dim"] // cfg["n_heads"]
    g = gguf.Writer()
    g.add_str("general.architecture", "llama")
    g.add_str("general.name", name or os.path.splitext(os.path.basename(model_path))[0])
    g.add_u32("llama.context_length", ctx or cfg["seq_len"])
    g.add_u32("llama.embedding_length", cfg["dim"])
    g.add_u32("llama.block_count", cfg["n_layers"])
    g.add_u32("llama.feed_forward_length", cfg["hidden"])
    g.add_u32("llama.rope.dimension_count", head)
    g.add_u32("llama.attention.head_count", cfg["n_heads"])
    g.add_u32("llama.attention.head_count_kv", cfg["n_kv_heads"])
    g.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    g.add_f32("llama.rope.freq_base", 10000.0)
    g.add_u32("general.file_type", {gguf.F32: 0, gguf.F16: 1, gguf.Q4_0: 2, gguf.Q8_0: 7,
                                    gguf.BF16: 32}[wtype])
    g.add_str("tokenizer.ggml.model", "llama")
    g.add_arr("tokenizer.ggml.tokens", gguf.STRING, tokens)
    g.add_arr("tokenizer.ggml.scores", gguf.FLOAT32, np.asarray(scores, dtype=np.float32))
    g.add_arr("tokenizer.ggml.token_type", gguf.INT32, np.asarray(types, dtype=np.int32))
    g.add_u32("tokenizer.ggml.unknown_token_id", 0)
    g.add_u32("tokenizer.ggml.bos_token_id", 1)
    g.add_u32("tokenizer.ggml.eos_token_id", 2)
    # llama.cpp's converter records "no separator / padding token" as uint32 -1 (sic: "seperator")
    g.add_u32("tokenizer.ggml.seperator_token_id", 0xFFFFFFFF)
    g.add_u32("tokenizer.ggml.padding_token_id", 0xFFFFFFFF)
    g.add_bool("tokenizer.ggml.add_bos_token", True)
    g.add_bool("tokenizer.ggml.add_eos_token", False)
    g.add_bool("tokenizer.ggml.add_space_prefix", True)

    def mat(name, a):  # 2-D weights take the requested type (fall back to f32 if not blockable)
        t = wtype if a.shape[-1] % gguf.BLOCK[wtype][0] == 0 else gguf.F32
        g.add_array(name, a, t)

    mat("token_embd.weight", w["tok_emb"])
    g.add_array("output_norm.weight", w["rms_final"], gguf.F32)
    if not (tie and cfg["shared"]):
        mat("output.weight", w["wcls"])
    for i in range(cfg["n_layers"]):
        p = "blk.%d." % i
        mat(p + "attn_q.weight", w["wq"][i])
        mat(p + "attn_k.weight", w["wk"][i])
        mat(p + "attn_v.weight", w["wv"][i])
        mat(p + "attn_output.weight", w["wo"][i])
        g.add_array(p + "attn_norm.weight", w["rms_att"][i], gguf.F32)
        mat(p + "ffn_gate.weight", w["w1"][i])
        mat(p + "ffn_down.weight", w["w2"][i])
        mat(p + "ffn_up.weight", w["w3"][i])
        g.add_array(p + "ffn_norm.weight", w["rms_ffn"][i], gguf.F32)
    g.write(out_path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("tokenizer")
    ap.add_argument("out")
    ap.add_argument("--type", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q4_0"])
    ap.add_argument("--ctx", type=int, help="context length to record (default: the checkpoint's)")
    ap.add_argument("--name")
    ap.add_argument("--tie", action="store_true",
                    help="omit output.weight when the classifier is shared with the embeddings")
    a = ap.parse_args()
    try:
        convert(a.model, a.tokenizer, a.out, gguf.TYPE_BY_NAME[a.type], a.ctx, a.name, a.tie)
    except (ValueError, OSError) as e:
        print("llama2c_to_gguf: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

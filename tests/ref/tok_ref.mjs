// tok_ref.mjs: reference side of the tokenizer parity suite (tests/suites/tok_parity.sh).
// The reference is Hugging Face's official JS tokenizer (@huggingface/tokenizers) on a model's
// real tokenizer.json; kiln runs on the same file converted to GGUF.
//   node tok_ref.mjs gen TOKENIZER_DIR INP_FILE TEXTS_OUT IDS_OUT DECODED_OUT
//       writes the test texts (NUL-terminated), the reference ids (one line per text) and the
//       reference's decode of them (NUL-terminated)
//   node tok_ref.mjs check TOKENIZER_DIR TEXTS IDS_REF DECODED_REF IDS_KILN DECODED_KILN
//       compares ids and the decoded text (must give back the text, NFC-normalized when the
//       tokenizer normalizes with NFC, or else what the reference gives back when it does not
//       give the text back itself); prints one line per mismatch, then "N passed, N failed"
import fs from "node:fs";
import path from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";

function loadTokenizer(dir) {
    const tj = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
    const cfgPath = path.join(dir, "tokenizer_config.json");
    const cfg = fs.existsSync(cfgPath) ? JSON.parse(fs.readFileSync(cfgPath, "utf8")) : {};
    return { tok: new Tokenizer(tj, cfg), tj };
}

// Deterministic PRNG (mulberry32) for the random texts.
function rng(seed) {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

function texts(inpFile, specials) {
    const out = [];
    // 1. the ggml-vocab test texts (llama.cpp's tokenizer tests)
    const inp = fs.readFileSync(inpFile, "utf8").split("\n__ggml_vocab_test__\n");
    for (const t of inp) if (t.length) out.push(t);
    // 2. code
    out.push(
        "int main(int argc, char **argv) {\n    printf(\"hello, %s\\n\", argv[0]);\n    return 0;\n}\n",
        "def fib(n):\n\tif n < 2:\n\t\treturn n\n\treturn fib(n - 1) + fib(n - 2)\n",
        "const xs = [1, 2, 3].map((x) => x * 2); // => [2, 4, 6]",
        "{\"key\": \"value\", \"n\": 42, \"list\": [true, false, null], \"nested\": {\"a\": -1.5e-3}}",
        "<html>\n  <body class=\"main\">\n    <p>Hi &amp; bye</p>\n  </body>\n</html>",
        "for i in $(seq 1 10); do echo \"$i\" >> /tmp/out.txt; done && cat /tmp/out.txt | wc -l",
        "SELECT name, COUNT(*) AS n FROM users WHERE age >= 18 GROUP BY name ORDER BY n DESC;",
        "fn main() {\n    let v: Vec<u32> = (0..10).filter(|x| x % 2 == 0).collect();\n    println!(\"{:?}\", v);\n}",
        "    if (x == y) {\n        return;\n    }\n",
        "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))\n",
        "x = {'a': 1, \"b\": 2}  # comment with 'quotes' and \"double\"",
        "$$\\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}$$",
        "| col1 | col2 |\n|------|------|\n| a    | b    |",
        "https://example.com/path/to/page?query=1&other=two#anchor",
        "user.name+tag@example-mail.co.uk",
        "```python\nprint('hi')\n```",
        "a->b; c::d; e=>f; g<=h; i!=j; k&&l||m; n<<=2; o>>>=3;",
        "// TODO(kiln): fix this\n/* block\n * comment */",
    );
    // 3. numbers
    for (const n of ["0", "7", "42", "123", "1234", "12345", "123456", "1234567", "12345678901234567890",
        "3.14159", "-273.15", "1,000,000", "1.000.000,50", "0x1F3A", "1e-9", "6.022e23", "2024-11-23",
        "23:59:59", "+1 (555) 123-4567", "100%", "$19.99", "€5,00", "1/2 + 3/4 = 5/4", "v1.2.3-rc4",
        "١٢٣٤٥", "१२३४", "一二三", "Ⅻ", "½ ¾ ⅞", "²³", "007", "3rd 21st 100th"]) out.push(n);
    // 4. whitespace runs
    for (let k = 1; k <= 8; k++) {
        out.push(" ".repeat(k), "\t".repeat(k), "\n".repeat(k), "a" + " ".repeat(k) + "b",
            " ".repeat(k) + "word", "word" + " ".repeat(k));
    }
    out.push(" \n \t \r\n", "\r\n\r\n", "line1\r\nline2\r\n", "  \n\n  x  \n", "\u00a0nbsp\u00a0",
        "\u2003em space\u2003", "\u3000ideographic space", "a\u2028 b", "x\u0085 y", "p\u180e q",
        "r\ufeff s", "k\u001c\u001dl", "it'\u017f ok", "the '\u212a' one", "\u01c5x", "tab\tseparated\tvalues", "trailing \n",
        "\n\n\nleading newlines", "a\u200bb (zero width space)", "\v\f form feed");
    // 5. CJK, other scripts, accents, emoji
    out.push(
        "你好，世界！今天天气很好。", "我爱自然语言处理和机器学习。", "日本語のテキストです。カタカナとひらがな。",
        "東京都渋谷区", "한국어 문장입니다. 안녕하세요!", "中文English混合text测试123",
        "Привет, мир! Как дела?", "Ελληνικά: Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם",
        "नमस्ते दुनिया", "สวัสดีชาวโลก", "Xin chào thế giới", "Türkçe: İstanbul, ığdır", "ქართული ენა",
        "Հայերեն", "ᠮᠣᠩᠭᠣᠯ", "ትግርኛ", "தமிழ் மொழி", "café naïve résumé façade", "Ångström Zürich São Paulo",
        "Dvořák Łódź Kraków", "ñandú pingüino", "straße STRASSE", "ǅ ǈ ǋ ﬁ ﬂ", "Ω Ω K K Å Å",
        "e\u0301 (decomposed) vs é", "A\u030a n\u0303 o\u0308", "\u1100\u1161\u11a8 (jamo)",
        "🙂", "😀😃😄", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵 flags", "👍🏽 thumbs", "❤️ heart", "🦙 llama and 🐪 camel",
        "emoji🙂inside🙂words", "✅❌⚠️", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙", "𓀀 hieroglyph", "🀄🃏",
    );
    // 6. contractions and punctuation
    out.push("I'm sure you're right, they'll see we've done it, he'd say it's fine",
        "I'M SURE YOU'RE RIGHT, THEY'LL SEE", "don't won't can't shouldn't", "’twas the night — “quoted” ‘single’",
        "rock'n'roll o'clock y'all", "'s 't 're 've 'm 'll 'd", "Hello!!! What??? Yes... no!?",
        "...---...", "(parens) [brackets] {braces} <angles>", "a,b;c:d.e!f?g", "~`!@#$%^&*()_+-=",
        "«guillemets» „German“ 「Japanese」", "#hashtag @mention", "C'est l'été, n'est-ce pas?");
    // 7. special-token strings (matched as tokens by the reference) and near misses
    for (const s of specials.slice(0, 6)) {
        out.push(s, "Hello" + s + "world", s + "\n" + s, " " + s + " ");
    }
    out.push("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<think>\nreasoning\n</think>\n\nanswer", "<tool_call>{\"name\": \"f\"}</tool_call>",
        "<|im_start", "im_end|>", "<|eot_id|", "<|endoftext|><|endoftext|>", "<s>[INST] hi [/INST]",
        "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>");
    // 8. random mixtures (deterministic)
    const pool = [..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        ..."        \n\n\t.,;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~`",
        ..."éèêëàâäôöûüçñßøåæœÉÀÇŁłść", ..."的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
        ..."あいうえおかきくけこアイウエオ한국어", ..."абвгдежзийклмнопрстуфхцчшщъыьэюя", ..."αβγδεζηθ",
        "🙂", "😀", "🦙", "👍🏽", "🇫🇷", "❤️", "\u0301", "\u200d", "’", "—", "…"];
    const r = rng(12345);
    for (let i = 0; i < 120; i++) {
        const n = 1 + Math.floor(r() * 40);
        let s = "";
        for (let j = 0; j < n; j++) s += pool[Math.floor(r() * pool.length)];
        out.push(s);
    }
    // 9. long texts: a document made of everything above, long random mixes, long runs
    out.push(out.slice(0, 120).join("\n"));
    for (let i = 0; i < 10; i++) {
        const n = 300 + Math.floor(r() * 700);
        let s = "";
        for (let j = 0; j < n; j++) s += pool[Math.floor(r() * pool.length)];
        out.push(s);
    }
    out.push("a".repeat(500), "1".repeat(200), " ".repeat(300) + "x", "\n".repeat(100) + "y",
        "ab".repeat(300), "🦙".repeat(50), "的".repeat(120), "!?".repeat(100));
    // texts may not contain NUL (the batch separator)
    return [...new Set(out)].filter((t) => !t.includes("\0"));
}

const [mode, dir, ...rest] = process.argv.slice(2);
const { tok, tj } = loadTokenizer(dir);
if (mode === "gen") {
    const [inpFile, textsOut, idsOut, decOut] = rest;
    const specials = (tj.added_tokens || []).map((t) => t.content)
        .filter((c) => !/reserved_special_token_[1-9]/.test(c));
    const ts = texts(inpFile, specials);
    fs.writeFileSync(textsOut, Buffer.concat(ts.map((t) => Buffer.from(t + "\0", "utf8"))));
    const lines = ts.map((t) => tok.encode(t, { add_special_tokens: false }).ids.join(" "));
    fs.writeFileSync(idsOut, lines.join("\n") + "\n");
    // the reference's own decode (special tokens rendered, no clean-up), for texts it cannot
    // give back either (SPM puts a dummy-prefix space after each special token)
    const decs = ts.map((t) => tok.decode(tok.encode(t, { add_special_tokens: false }).ids,
        { skip_special_tokens: false, clean_up_tokenization_spaces: false }));
    fs.writeFileSync(decOut, Buffer.concat(decs.map((t) => Buffer.from(t + "\0", "utf8"))));
    console.error(`tok_ref: ${ts.length} texts`);
} else if (mode === "check") {
    const [textsFile, refFile, refDecFile, kilnFile, decFile] = rest;
    const ts = fs.readFileSync(textsFile, "utf8").split("\0").slice(0, -1);
    const ref = fs.readFileSync(refFile, "utf8").split("\n");
    const got = fs.readFileSync(kilnFile, "utf8").split("\n");
    const dec = fs.readFileSync(decFile, "utf8").split("\0");
    const refDec = fs.readFileSync(refDecFile, "utf8").split("\0");
    const nfc = JSON.stringify(tj.normalizer || null).includes("\"NFC\"");
    let pass = 0, fail = 0;
    for (let i = 0; i < ts.length; i++) {
        const want = nfc ? ts[i].normalize("NFC") : ts[i];
        const idsOk = ref[i] === got[i];
        // the text back; where the reference itself does not give it back, what it gives
        const decOk = dec[i] === want || (refDec[i] !== want && dec[i] === refDec[i]);
        if (idsOk && decOk) {
            pass++;
            continue;
        }
        fail++;
        console.log(`FAIL text ${i} ${JSON.stringify(ts[i])}`);
        if (!idsOk) console.log(`  ref : ${ref[i]}\n  kiln: ${got[i]}`);
        if (!decOk) console.log(`  decoded: ${JSON.stringify(dec[i])}\n  ref dec: ${JSON.stringify(refDec[i])}`);
    }
    console.log(`${pass} passed, ${fail} failed`);
    process.exit(fail ? 1 : 0);
} else {
    console.error("usage: node tok_ref.mjs gen|check TOKENIZER_DIR ...");
    process.exit(2);
}

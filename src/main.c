/* main.c: the kiln command line (kiln run | tokenize | serve | template | bench ...).
 * Wiring only: parses flags, calls the library, and is the only place that exits. */
#include <stdio.h>
#include <string.h>

#include "base/base.h"
#include "cmd/cmd.h"

static void usage(FILE *f) {
    fprintf(f, "usage: kiln <command> [options]\n"
               "commands:\n"
               "  run        generate text from a prompt\n"
               "  tokenize   print the token ids of stdin\n"
               "  detokenize print the text of the token ids on stdin\n"
               "  eval       dump the logits of a token id sequence (tests)\n"
               "  template   render a chat template with a JSON context\n"
               "  bench      engine throughput: prompt and batched generation tokens/s\n"
               "  bench serve  load-test an OpenAI-compatible server (TTFT, ITL, tokens/s)\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    if (!strcmp(argv[1], "run")) return kiln_cmd_run(argc - 1, argv + 1);
    if (!strcmp(argv[1], "tokenize")) return kiln_cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(argv[1], "detokenize")) return kiln_cmd_detokenize(argc - 1, argv + 1);
    if (!strcmp(argv[1], "eval")) return kiln_cmd_eval(argc - 1, argv + 1);
    if (!strcmp(argv[1], "serve")) return kiln_cmd_serve(argc - 1, argv + 1);
    if (!strcmp(argv[1], "template")) return kiln_cmd_template(argc - 1, argv + 1);
    if (!strcmp(argv[1], "bench") && argc > 2 && !strcmp(argv[2], "serve"))
        return kiln_cmd_bench_serve(argc - 2, argv + 2);
    if (!strcmp(argv[1], "bench")) return kiln_cmd_bench(argc - 1, argv + 1);
    fprintf(stderr, "kiln: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 1;
}

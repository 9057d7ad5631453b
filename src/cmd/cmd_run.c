/* cmd_run.c: `kiln run -m MODEL -p TEXT [-n N] [sampling options]`: generates text (placeholder
 * until the tokenizer and sampler land). */
#include <stdio.h>

#include "cmd/cmd.h"

int kiln_cmd_run(int argc, char **argv) {
    fprintf(stderr, "kiln run: not implemented yet\n");
    return 1;
}

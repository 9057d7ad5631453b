/* cmd.h: the subcommands of the kiln CLI, one file each (src/cmd/cmd_<name>.c). Each takes the
 * arguments after the command name (argv[0] is the command) and returns the process exit status;
 * only main.c exits. */
#ifndef KILN_CMD_H
#define KILN_CMD_H

int kiln_cmd_eval(int argc, char **argv);
int kiln_cmd_run(int argc, char **argv);
int kiln_cmd_tokenize(int argc, char **argv);
int kiln_cmd_detokenize(int argc, char **argv);
int kiln_cmd_serve(int argc, char **argv);
int kiln_cmd_template(int argc, char **argv);
int kiln_cmd_bench(int argc, char **argv);
int kiln_cmd_bench_serve(int argc, char **argv);

#endif

# kiln: GNU make, out-of-tree builds in build/<variant>/, -MMD header deps.
#   make               release build of ./build/release/kiln (and the `kiln` symlink)
#   make VARIANT=debug|asan|ubsan   the same under another variant
#   make test          installs deps, builds release + asan, runs every test (tests/run.sh)
#   make serve         installs deps, builds, starts the server on the default model
#   make bench         benchmarks (bench/)
# Every src/<module>/*.c except src/main.c goes into libkiln.a; tests/unit/test_X.c becomes the
# binary build/<variant>/tests/test_X linked against it.

VARIANT ?= release
BUILD := build/$(VARIANT)

CC ?= cc
PKGS := libevent libevent_pthreads jansson libpcre2-8 libutf8proc
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Wshadow -Wno-unused-parameter -Wstrict-prototypes -Wvla
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -Isrc $(WARN) $(PKG_CFLAGS) -fopenmp -pthread -g -MMD -MP
LDLIBS := $(PKG_LIBS) -fopenmp -pthread -lm

ifeq ($(VARIANT),release)
  OPT := -O2
else ifeq ($(VARIANT),debug)
  OPT := -O0
else ifeq ($(VARIANT),asan)
  OPT := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDLIBS += -fsanitize=address,undefined
else ifeq ($(VARIANT),ubsan)
  OPT := -O1 -fno-omit-frame-pointer -fsanitize=undefined -fno-sanitize-recover=undefined
  LDLIBS += -fsanitize=undefined
else ifeq ($(VARIANT),fuzz)
  CC := clang
  OPT := -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
  LDLIBS += -fsanitize=address,undefined
else
  $(error unknown VARIANT=$(VARIANT): use release, debug, asan, ubsan or fuzz)
endif
CFLAGS := $(BASE_CFLAGS) $(OPT) $(EXTRA_CFLAGS)

# Per-ISA kernel files get their own target flags; the rest of the binary stays baseline x86-64
# and dispatch picks a variant at run time.
ISA_avx2 := -mavx2 -mfma -mf16c
ISA_avx512 := -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vnni -mavx512bf16

LIB_SRC := $(filter-out src/main.c,$(wildcard src/*/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/unit/test_*.c)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)

.PHONY: all kiln tests test serve bench clean deps fuzz
all: kiln
kiln: $(BUILD)/kiln
ifeq ($(VARIANT),release)
	@ln -sf $(BUILD)/kiln kiln
endif
tests: $(TEST_BIN)

$(BUILD)/libkiln.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/kiln: $(BUILD)/src/main.o $(BUILD)/libkiln.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c tests/unit/test.h $(BUILD)/libkiln.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(BUILD)/libkiln.a $(LDLIBS)

$(BUILD)/src/kernels/avx2.o: CFLAGS += $(ISA_avx2)
$(BUILD)/src/kernels/avx512.o: CFLAGS += $(ISA_avx512)
$(BUILD)/src/kernels/avx2_%.o: CFLAGS += $(ISA_avx2)
$(BUILD)/src/kernels/avx512_%.o: CFLAGS += $(ISA_avx512)

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

deps:
	@bash scripts/deps.sh

# The whole suite: a release build (binary + unit tests) and an ASan/UBSan build of the unit
# tests and binary, then tests/run.sh, whose last line is "N passed, N failed".
test: deps
	$(MAKE) --no-print-directory VARIANT=release kiln tests
	$(MAKE) --no-print-directory VARIANT=asan kiln tests
	@bash tests/run.sh

MODEL ?= ../shared/testdata/models/stories260K.gguf
serve: deps
	$(MAKE) --no-print-directory VARIANT=release kiln
	./build/release/kiln serve -m $(MODEL) $(SERVE_ARGS)

bench: deps
	$(MAKE) --no-print-directory VARIANT=release kiln
	@bash bench/run.sh

# libFuzzer drivers (clang): build/fuzz/fuzz_X, each linked against a libkiln.a built with
# -fsanitize=fuzzer-no-link (VARIANT=fuzz keeps the per-ISA kernel flags).
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
fuzz:
	$(MAKE) --no-print-directory VARIANT=fuzz $(FUZZ_BIN)

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(BUILD)/libkiln.a
	$(CC) $(CFLAGS) -fsanitize=fuzzer -o $@ $< $(BUILD)/libkiln.a $(LDLIBS)

clean:
	rm -rf build kiln

-include $(LIB_OBJ:.o=.d) $(BUILD)/src/main.d $(TEST_BIN:=.d)

# minigpt - build, test, sanitizers, fuzzing.
#   make            library (build/libminigpt.a) and the CLI (build/minigpt)
#   make test       installs missing Debian/npm packages, builds and runs every test
#   make asan       the suite under AddressSanitizer + UBSan (quick mode: heavy tests shrink)
#   make fuzz       builds the libFuzzer targets with clang and runs each for FUZZ_SECONDS
#   make demo       runs the embedded demo model
#   make help       this list
# BUILD=dir puts objects elsewhere (several builds can coexist); WERROR=1 adds -Werror (CI).

CC ?= cc
BUILD ?= build
PYTHON ?= /usr/bin/python3
FUZZ_SECONDS ?= 30

PKGS := jansson libjpeg libpng libwebp
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -ljansson -ljpeg -lpng -lwebp)

OPT ?= -O2
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Wshadow -Wno-unused-parameter \
               -Iinclude -Isrc $(PKG_CFLAGS) -MMD -MP -pthread
ifeq ($(WERROR),1)
CFLAGS_BASE += -Werror
endif
CFLAGS_EXTRA ?=
CFLAGS := $(CFLAGS_BASE) $(CFLAGS_EXTRA)
LDFLAGS_EXTRA ?=
LIBS := $(PKG_LIBS) -lm -lpthread

LIB_SRC := $(wildcard src/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOL_SRC := $(wildcard tools/*.c)
TOOL_OBJ := $(TOOL_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)

# Per-file ISA flags: the SIMD kernels are compiled alone with their own -m flags and chosen at
# run time from CPU features, so the binary still runs on older CPUs.
ISA_avx2 := -mavx2 -mfma -mf16c
ISA_avx512 := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mfma -mf16c

.PHONY: all help test asan fuzz demo deps clean check-header
all: $(BUILD)/minigpt

help:
	@sed -n '2,9p' Makefile | sed 's/^# \{0,1\}//'

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ISA_avx2) -c $< -o $@

$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ISA_avx512) -c $< -o $@

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libminigpt.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/minigpt: $(TOOL_OBJ) $(BUILD)/libminigpt.a
	$(CC) $(CFLAGS) $(LDFLAGS_EXTRA) -o $@ $(TOOL_OBJ) $(BUILD)/libminigpt.a $(LIBS)

$(BUILD)/test_runner: $(TEST_OBJ) $(BUILD)/libminigpt.a
	$(CC) $(CFLAGS) $(LDFLAGS_EXTRA) -o $@ $(TEST_OBJ) $(BUILD)/libminigpt.a $(LIBS)

deps:
	@bash scripts/install-deps.sh

test: deps
	@$(MAKE) --no-print-directory $(BUILD)/minigpt $(BUILD)/test_runner check-header
	MG_PYTHON=$(PYTHON) MG_BIN=$(BUILD)/minigpt MG_TESTDATA=$(BUILD)/testdata $(BUILD)/test_runner $(T)

# The public header must compile alone as strict C11.
check-header:
	@echo '#include "minigpt.h"' | $(CC) -std=c11 -Wall -Wextra -Wpedantic -Werror -Iinclude -x c -fsyntax-only -

asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 \
	  CFLAGS_EXTRA="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
	  LDFLAGS_EXTRA="-fsanitize=address,undefined" build-asan/minigpt build-asan/test_runner
	MG_TEST_QUICK=1 MG_PYTHON=$(PYTHON) MG_BIN=build-asan/minigpt MG_TESTDATA=build-asan/testdata \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build-asan/test_runner $(T)

# libFuzzer targets: each tests/fuzz/fuzz_X.c becomes build-fuzz/fuzz_X, run for FUZZ_SECONDS.
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -Iinclude -Isrc $(PKG_CFLAGS) -pthread -fsanitize=fuzzer-no-link,address,undefined
fuzz:
	@mkdir -p build-fuzz
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang OPT=-O1 \
	  CFLAGS_EXTRA="-fsanitize=fuzzer-no-link,address,undefined" build-fuzz/libminigpt.a
	@set -e; for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $$f build-fuzz/libminigpt.a $(LIBS) -o build-fuzz/$$n; \
	  mkdir -p build-fuzz/corpus-$$n; \
	  if [ -d tests/fuzz/seeds/$$n ]; then cp -n tests/fuzz/seeds/$$n/* build-fuzz/corpus-$$n/ 2>/dev/null || true; fi; \
	  echo "fuzzing $$n for $(FUZZ_SECONDS)s"; \
	  build-fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 build-fuzz/corpus-$$n; done

demo: $(BUILD)/minigpt
	@bash scripts/demo.sh $(BUILD)/minigpt

clean:
	rm -rf build build-asan build-fuzz

-include $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

# Concurrent servers, step by step. `make help` lists the targets.
#
# Everything is built out of tree into build/ (build/san-$(SAN)/ with SAN=...).
# Every chapter, exercise and solution is one directory holding server.cpp;
# the rules below find them, so a new chapter needs no Makefile change.

CXX      ?= g++
CXXFLAGS ?= -O2 -g
WARNINGS := -Wall -Wextra -Wpedantic -Werror
# _FORTIFY_SOURCE turns some memory errors into aborts, FD_SET on a descriptor
# at or above FD_SETSIZE among them (chapter 06 must never do that).
CPPFLAGS += -MMD -MP -U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=2
LDLIBS   += -pthread

SAN ?=
comma    := ,
SAN_LIST := $(subst $(comma), ,$(SAN))
ifeq ($(SAN),)
  BUILD := build
else ifneq ($(filter-out address undefined thread,$(SAN_LIST)),)
  $(error SAN must be address, undefined or thread, or a comma list such as address,undefined)
else ifneq ($(and $(filter thread,$(SAN_LIST)),$(filter address,$(SAN_LIST))),)
  $(error SAN=thread cannot be combined with address)
else
  BUILD := build/san-$(subst $(comma),-,$(SAN))
  CXXFLAGS := -O1 -g -fno-omit-frame-pointer
  # An undefined-behaviour report must fail the test, not scroll past in a log.
  # Not the vptr check: before it trusts an object's vtable pointer it checks
  # that the memory is readable by writing it into a pipe, so in a server out
  # of descriptors (as the EMFILE tests arrange) it calls a valid object invalid.
  SANFLAGS := -fsanitize=$(SAN) $(if $(filter undefined,$(SAN_LIST)),-fno-sanitize-recover=all -fno-sanitize=vptr)
endif
ALL_CXXFLAGS = -std=c++20 $(WARNINGS) $(CXXFLAGS) $(SANFLAGS) -pthread

# Quiet by default: one short line per file ("CXX chapters/01_blocking/server.cpp").
# V=1 prints every compiler command in full.
ifeq ($(V),1)
  Q :=
  say = @:
else
  Q := @
  say = @echo "  $(1) $(2)"
endif
# How many compilers `make test` (and check-exercises) runs at once; the tests
# themselves always run one after another. JOBS=1 for a serial build.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# ...unless make was already given -j (then its jobserver decides).
parallel = $(if $(findstring -j,$(MAKEFLAGS)),,-j$(JOBS))

# ---- Catch2: 2.x (Debian, header only) or 3.x (Ubuntu 24.04, Homebrew: a library)
CATCH_CFLAGS := $(shell pkg-config --cflags catch2 2>/dev/null)
hash         := \#
have_header   = $(shell echo '$(hash)include <catch2/$(1)>' | $(CXX) $(CATCH_CFLAGS) -std=c++20 -x c++ -E - -o /dev/null 2>/dev/null && echo yes)
CATCH_V3     := $(call have_header,catch_all.hpp)
CATCH_V2     := $(if $(CATCH_V3),,$(call have_header,catch.hpp))
CATCH_LIBS   := $(if $(CATCH_V3),$(or $(shell pkg-config --libs catch2 2>/dev/null),-lCatch2))
HAVE_CATCH   := $(or $(CATCH_V3),$(CATCH_V2))

# ---- what there is to build
CHAPTERS   := $(patsubst %/server.cpp,%,$(sort $(wildcard chapters/[0-9][0-9]_*/server.cpp)))
EXERCISES  := $(patsubst %/server.cpp,%,$(sort $(wildcard exercises/[0-9][0-9]_*/server.cpp)))
SOLUTIONS  := $(patsubst %/server.cpp,%,$(sort $(wildcard solutions/[0-9][0-9]_*/server.cpp)))
UNITS      := $(CHAPTERS) $(EXERCISES) $(SOLUTIONS)

# common/ has three audiences: what a server is built from (common/server),
# what the tools and tests are built from besides (common/client), and the
# tools' and tests' own code (common/tools, common/test).
SERVER_LIB := $(BUILD)/common/libserver.a
CLIENT_LIB := $(BUILD)/common/libclient.a
HARNESS_OBJ := $(BUILD)/common/test/harness.o $(BUILD)/common/test/scenarios.o $(BUILD)/common/test/behaviour_suite.o $(BUILD)/common/test/catch_main.o
TOOLS      := $(patsubst common/tools/%.cpp,$(BUILD)/tools/%,$(sort $(wildcard common/tools/*.cpp)))
# An LD_PRELOAD library the behaviour suite loads into servers (accept4 that
# fails on demand: common/test/accept_shim.cpp).
ACCEPT_SHIM := $(BUILD)/common/test/accept_shim.so

SERVERS    := $(UNITS:%=$(BUILD)/%/server)
# A solution is tested by its exercise's tests (the lab's tests live with the task).
test_src    = $(if $(filter solutions/%,$(1)),$(patsubst solutions/%,exercises/%,$(1)),$(1))/test.cpp
TESTS      := $(BUILD)/common/test/unit $(foreach u,$(UNITS),$(if $(wildcard $(call test_src,$(u))),$(BUILD)/$(u)/test))

.DEFAULT_GOAL := all
# Keep object files between runs (they are intermediate files of pattern rules),
# and never leave a half-written target behind.
.SECONDARY:
.DELETE_ON_ERROR:
.PHONY: all servers tools tests run test test-build test-run test-repeat ensure-catch2 diff exercises check-exercises \
        check-slides slides-sync help clean bench-loadgen tour soak

all: servers tools $(if $(HAVE_CATCH),tests,catch2-note)
servers: $(SERVERS)
tools: $(TOOLS)
tests: $(TESTS)

catch2-note:
	@echo "note: Catch2 not found, so the tests were not built ('make test' installs it)."

# ---- compiling and linking
# Where #include "..." looks. A server's code sees common/server only, so it
# cannot come to depend on a client or test header by accident; everything
# else (tests, tools, the client library) sees all of common/ and Catch2.
SERVER_INCLUDES := -Icommon/server
ALL_INCLUDES     = -Icommon/server -Icommon/client -Icommon/test $(CATCH_CFLAGS)
INCLUDES         = $(ALL_INCLUDES)
$(BUILD)/chapters/%/server.o $(BUILD)/exercises/%/server.o $(BUILD)/solutions/%/server.o \
$(BUILD)/common/server/%.o: INCLUDES = $(SERVER_INCLUDES)

$(BUILD)/%.o: %.cpp
	@mkdir -p $(@D)
	$(call say,CXX,$<)
	$(Q)$(CXX) $(INCLUDES) $(CPPFLAGS) $(ALL_CXXFLAGS) -c $< -o $@

# Catch2's own code is compiled here; its warnings (GCC 12 sees false
# "maybe-uninitialized" ones in std::regex under sanitizers) are not ours to fix.
$(BUILD)/common/test/catch_main.o: WARNINGS := -Wall

$(SERVER_LIB): $(patsubst %.cpp,$(BUILD)/%.o,$(wildcard common/server/*.cpp))
$(CLIENT_LIB): $(patsubst %.cpp,$(BUILD)/%.o,$(wildcard common/client/*.cpp))
$(SERVER_LIB) $(CLIENT_LIB):
	@rm -f $@
	$(call say,AR,$@)
	$(Q)$(AR) rcs $@ $^

# A server links libserver.a and nothing else of common/.
$(BUILD)/%/server: $(BUILD)/%/server.o $(SERVER_LIB)
	$(call say,LINK,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LDLIBS)

# Tools and tests link libclient.a before libserver.a, which it uses (http.hpp).
$(BUILD)/tools/%: $(BUILD)/common/tools/%.o $(CLIENT_LIB) $(SERVER_LIB)
	@mkdir -p $(@D)
	$(call say,LINK,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LDLIBS)

# Built without sanitizers: it is loaded into sanitized servers as well, whose
# runtime then intercepts accept4 behind it (see the file's header comment).
$(ACCEPT_SHIM): common/test/accept_shim.cpp
	@mkdir -p $(@D)
	$(call say,SHLIB,$<)
	$(Q)$(CXX) -Icommon/test $(CPPFLAGS) -std=c++20 $(WARNINGS) -O2 -g -fPIC -shared $< -o $@ -ldl

# Unit tests of common/ and the tools: no behaviour suite (no server beside them).
$(BUILD)/common/test/unit: $(patsubst %.cpp,$(BUILD)/%.o,$(wildcard common/test/*_test.cpp)) $(BUILD)/common/test/harness.o $(BUILD)/common/test/catch_main.o $(CLIENT_LIB) $(SERVER_LIB)
	$(call say,LINK,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(CATCH_LIBS) $(LDLIBS)

# Each unit's test binary: its tests, the shared behaviour suite and harness.
# The harness finds the server to test beside the test binary.
define unit_test_rule
$(BUILD)/$(1)/test.o: $(call test_src,$(1))
	@mkdir -p $$(@D)
	$$(call say,CXX,$$<)
	$$(Q)$$(CXX) $$(INCLUDES) $$(CPPFLAGS) $$(ALL_CXXFLAGS) -c $$< -o $$@
$(BUILD)/$(1)/test: $(BUILD)/$(1)/test.o $(HARNESS_OBJ) $(CLIENT_LIB) $(SERVER_LIB) | $(BUILD)/$(1)/server $(ACCEPT_SHIM)
	$$(call say,LINK,$$@)
	$$(Q)$$(CXX) $$(ALL_CXXFLAGS) $$(filter %.o %.a,$$^) -o $$@ $$(CATCH_LIBS) $$(LDLIBS)
endef
$(foreach u,$(UNITS),$(if $(wildcard $(call test_src,$(u))),$(eval $(call unit_test_rule,$(u)))))

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- running
CH   ?= 01
PORT ?= 8080
chapter_dir = $(firstword $(wildcard chapters/$(1)_*))

run: $(BUILD)/$(call chapter_dir,$(CH))/server
	@echo "Starting $(call chapter_dir,$(CH)). In another terminal, try:"
	@echo "  curl -i http://127.0.0.1:$(PORT)/"
	@echo "  curl http://127.0.0.1:$(PORT)/stats"
	@echo "  $(BUILD)/tools/loadgen -n 30 -c 10 http://127.0.0.1:$(PORT)/sleep?ms=100   (after 'make tools')"
	@echo "Stop it with Ctrl-C."
	@$< --port $(PORT)

# ---- testing
# `make test` installs Catch2 when missing, builds what it runs with JOBS
# compilers at once, then runs every test binary (or chapter CH's and its
# solution's) one after another and ends with "N passed, N failed".
test: ensure-catch2
	@$(MAKE) --no-print-directory $(parallel) test-build
	@$(MAKE) --no-print-directory test-run

# `make test-repeat N=20`: the same selection N times in a row, stopping at
# the first failing run; LOAD=1 keeps one core busy meanwhile (a busy loop
# that ends with the runs), to check that no test depends on a quiet machine.
# FILTER='accept failing*' (a Catch2 test spec) runs only the matching tests
# of each binary, with make test and make test-repeat alike.
N    ?= 20
LOAD ?= 0
test-repeat: ensure-catch2
	@$(MAKE) --no-print-directory $(parallel) test-build
	@TEST_FILTER='$(FILTER)' common/tools/repeat_tests.sh $(N) $(LOAD) $(TEST_SELECTION)

ensure-catch2:
	@if [ -z "$(HAVE_CATCH)" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "Catch2 is missing; installing Debian's catch2 package with apt-get."; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq catch2 >/dev/null || exit 1; \
	  else \
	    echo "Catch2 is missing: install it with your package manager (apt-get install catch2, brew install catch2) and run make test again."; exit 1; \
	  fi; \
	fi

TEST_SELECTION = $(if $(filter command line,$(origin CH)),$(filter $(BUILD)/chapters/$(CH)_%/test $(BUILD)/solutions/$(CH)_%/test,$(TESTS)),$(filter-out $(BUILD)/exercises/%,$(TESTS)))
test-build: $(TEST_SELECTION) servers tools
test-run: test-build
	@TEST_FILTER='$(FILTER)' common/tools/run_tests.sh $(TEST_SELECTION)

# ---- the lesson between two chapters
# The ANCHOR marker lines (where slides and READMEs cut code out of the
# sources) are not part of the lesson, so the diff leaves them out: it
# compares copies without them, kept under $(BUILD)/diff/ at the sources' own
# paths so that the diff's header names the real files (and the hunks' line
# numbers count the lines without markers). git exits 1 when the files differ.
ANCHOR_LINE := ^[[:space:]]*// ANCHOR(_END)?:
diff:
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make diff A=07 B=08"; exit 2; }
	@a=$(call chapter_dir,$(A))/server.cpp; b=$(call chapter_dir,$(B))/server.cpp; \
	for f in $$a $$b; do test -f $$f || { echo "make diff: no chapter $(A) or $(B) ($$f)"; exit 2; }; done; \
	rm -rf $(BUILD)/diff; \
	for f in $$a $$b; do mkdir -p $(BUILD)/diff/$${f%/*} && grep -Ev '$(ANCHOR_LINE)' $$f > $(BUILD)/diff/$$f; done; \
	cd $(BUILD)/diff && { git --no-pager diff --no-index --color=auto $$a $$b || true; }

# ---- labs: the skeleton is the solution with its LAB blocks cut out
exercises: $(BUILD)/tools/markers
	@for s in $(SOLUTIONS); do \
	  e=exercises/$${s#solutions/}; mkdir -p $$e; \
	  $(BUILD)/tools/markers skeleton $$s/server.cpp > $$e/server.cpp && echo "wrote $$e/server.cpp"; \
	done

check-exercises: ensure-catch2
	@$(MAKE) --no-print-directory $(parallel) $(BUILD)/tools/markers $(filter $(BUILD)/exercises/% $(BUILD)/solutions/%,$(TESTS))
	@$(MAKE) --no-print-directory check-exercises-run

.PHONY: check-exercises-run
check-exercises-run: $(filter $(BUILD)/exercises/% $(BUILD)/solutions/%,$(TESTS))
	@common/tools/check_exercises.sh $(BUILD) $(SOLUTIONS)

# ---- slides and READMEs: code blocks are cut from the sources by ANCHOR markers
DOCS_WITH_CODE = $(wildcard slides/*.md chapters/*/README.md exercises/*/README.md)
check-slides: $(BUILD)/tools/markers
	@$(BUILD)/tools/markers check $(DOCS_WITH_CODE)

slides-sync: $(BUILD)/tools/markers
	@$(BUILD)/tools/markers update $(DOCS_WITH_CODE)

# ---- the tour: every chapter through the same scenarios (TOUR_ARGS="--quick --chapters 01,03")
tour: servers tools
	@$(BUILD)/tools/tour $(TOUR_ARGS)

# ---- the longer studies: thread pool sweep, loop throughput (+ nginx/wrk), many idle connections
.PHONY: bench
bench: servers tools
	@$(BUILD)/tools/tour --bench $(BENCH_ARGS)

# ---- nginx as a load balancer in front of three chapter 11 servers (LB_ARGS="--quick --out DIR")
.PHONY: lb
lb: servers tools
	@$(BUILD)/tools/tour --lb $(LB_ARGS)

# ---- the soak: a million mixed requests through each event-loop chapter, then
# no failure, no leaked descriptor, RSS back near its baseline, exit 0
# (SOAK_ARGS="--quick --chapters 08,09 --out DIR")
soak: servers tools
	@$(BUILD)/tools/soak $(SOAK_ARGS)

# ---- measuring the measuring tool (needs wrk)
bench-loadgen: servers tools
	@common/tools/bench_loadgen.sh $(BUILD)

# ---- fuzzing the HTTP parser and router (libFuzzer: clang++ and its compiler-rt)
# make fuzz [FUZZ_TIME=60]: a run with a fixed seed that starts from the kept
# corpus (common/test/fuzz_corpus) and writes what it finds to build/fuzz/;
# make fuzz-merge then adds the inputs that reach new code to the kept corpus.
FUZZ_BUILD  := build/fuzz
FUZZ_TIME   ?= 60
FUZZER      := $(FUZZ_BUILD)/fuzz_http_parser
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_OPTS    = -dict=common/test/fuzz_http.dict -max_len=20000 -artifact_prefix=$(FUZZ_BUILD)/
.PHONY: fuzz fuzz-merge fuzz-build
fuzz-build:
	@$(MAKE) --no-print-directory $(parallel) CXX=clang++ BUILD=$(FUZZ_BUILD) \
	  CXXFLAGS="-O1 -g -fno-omit-frame-pointer" SANFLAGS="$(FUZZ_SAN) -fsanitize=fuzzer-no-link" $(FUZZER)
fuzz: fuzz-build
	@mkdir -p $(FUZZ_BUILD)/corpus
	$(FUZZER) -seed=1 -max_total_time=$(FUZZ_TIME) -print_final_stats=1 $(FUZZ_OPTS) $(FUZZ_BUILD)/corpus common/test/fuzz_corpus
fuzz-merge: fuzz-build
	$(FUZZER) -merge=1 $(FUZZ_OPTS) common/test/fuzz_corpus $(FUZZ_BUILD)/corpus

# Only the sub-make above builds it (with BUILD=build/fuzz and clang's flags).
$(BUILD)/fuzz_http_parser: $(BUILD)/common/test/fuzz_http_parser.o $(SERVER_LIB)
	$(call say,LINK,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) -fsanitize=fuzzer $^ -o $@ $(LDLIBS)

clean:
	rm -rf build

help:
	@echo "Building (into build/; V=1 shows every compiler command, JOBS=N compilers at once)"
	@echo "  make                      build every server, tool and test"
	@echo "  make servers              only the servers (chapters, exercises, solutions)"
	@echo "  make tools                only the tools: build/tools/loadgen, tour, soak, markers"
	@echo "  make tests                only the test binaries"
	@echo "Running"
	@echo "  make run [CH=NN] [PORT=N] run chapter NN's server (default 01 on port 8080)"
	@echo "  make diff A=NN B=MM       what changes between two chapters' servers: the lesson"
	@echo "Testing"
	@echo "  make test [CH=NN]         run the tests (all, or chapter NN and its solution)"
	@echo "  make test SAN=address     the same with AddressSanitizer (also undefined, thread,"
	@echo "                            or a list: SAN=address,undefined)"
	@echo "  make test-repeat [N=20] [LOAD=1] [CH=NN]"
	@echo "                            the tests N times in a row; LOAD=1 keeps a core busy meanwhile"
	@echo "  ... FILTER='name*'        only the test cases that match (a Catch2 test spec)"
	@echo "Labs, slides and READMEs"
	@echo "  make exercises            regenerate the lab skeletons from solutions/"
	@echo "  make check-exercises      skeletons up to date, solutions pass, skeletons fail"
	@echo "  make check-slides         code on slides and in READMEs matches the sources"
	@echo "  make slides-sync          copy the sources' marked code into slides and READMEs"
	@echo "Measuring"
	@echo "  make tour                 every chapter through the same scenarios: table + SVG charts"
	@echo "  make bench                longer studies: pool sweep, loop throughput, /work on a pool, 1k-10k idle connections"
	@echo "  make soak                 1,000,000 mixed requests per event-loop chapter (05-09): no failure,"
	@echo "                            no leaked descriptor, RSS back near its baseline (SOAK_ARGS=\"--quick\")"
	@echo "  make bench-loadgen        compare loadgen with wrk against the same server"
	@echo "  make lb                   nginx as a load balancer in front of three chapter 11 servers (needs nginx)"
	@echo "Fuzzing (clang++ with libFuzzer)"
	@echo "  make fuzz [FUZZ_TIME=60]  fuzz the HTTP parser and router from the kept corpus"
	@echo "  make fuzz-merge           add the inputs that reached new code to common/test/fuzz_corpus"
	@echo "  make clean                remove build/"

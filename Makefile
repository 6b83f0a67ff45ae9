# Makefile - the menu. `make` alone lists what you can do.
#
# Run the reader first, then the writer, in two terminals:
#     make run-a                  make run-b
# Options pass through ARGS, e.g. make run-a ARGS="--proj-id 0x47 --size 8192"
# (watch and clean take the key options only: --path and --proj-id; demo
# takes none, and runs at a key of its own, made from a fresh directory;
# lessons takes a lesson's number).

PYTHON ?= python3
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run-a run-b demo lessons test check-aarch64 bench watch clean

help: ## list the targets
	@awk -F ':.*## ' '/^[a-z0-9-]+:.*## / { printf "  make %-13s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

run-a: ## start the reader, processa (first, in one terminal)
	$(PYTHON) processa.py $(ARGS)

run-b: ## start the writer, processb (in a second terminal), and type lines
	$(PYTHON) processb.py $(ARGS)

demo: ## both in this shell, at a key of their own: three lines through the segment, ipcs -m while attached
	@set -e; dir=$$(mktemp -d); reader=; trap '[ -z "$$reader" ] || kill $$reader; rm -rf "$$dir"' EXIT; \
	export SHMM_FIFO_DIR="$$dir/fifos"; \
	$(PYTHON) processa.py --path "$$dir" -q & reader=$$!; \
	key=$$($(PYTHON) shmm.py key --path "$$dir" -q); \
	{ printf '%s\n' 'hello, shared memory' '你好，共享内存' ''; \
	  for i in $$(seq 100); do ipcs -m | grep -q "^$$key .* 2 " && break; sleep 0.1; done; \
	  ipcs -m | sed -n "3p;/^$$key/p" >&2; echo bye; } | $(PYTHON) processb.py --path "$$dir" -q --wait 10; \
	wait $$reader; reader=; echo "after both ended:"; ipcs -m | sed -n "3p;/^$$key/p"

lessons: ## the tutorial's experiments, one by one, checked against the kernel (ARGS=N: lesson N)
	PYTHON=$(PYTHON) ./lessons.sh $(ARGS)

test: ## run the test suite against the real system (ipcs, /proc/sysvipc/shm)
	./test_shm.sh

check-aarch64: ## the test suite again, under an arm64 CPython run by qemu-user (as CI does)
	.ci/aarch64

bench: ## measure the channel against os.pipe, multiprocessing.Pipe and sed | cat
	$(PYTHON) bench_shm.py

watch: ## the tutorial's loop: ipcs -m once a second, our key only (Ctrl-C stops)
	@key=$$($(PYTHON) shmm.py key -q $(ARGS)) && \
	while :; do ipcs -m | sed -n "3p;/^$$key/p"; sleep 1; done

clean: ## remove the segment and FIFOs a crashed processa left at our key
	$(PYTHON) shmm.py clean $(ARGS)

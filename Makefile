# vmk: build, install, test. See README.md.
PREFIX ?= /usr/local
BINDIR = $(PREFIX)/bin
MANDIR = $(PREFIX)/share/man
SHAREDIR = $(PREFIX)/share/vmk
BASHDIR = $(PREFIX)/share/bash-completion/completions
ZSHDIR = $(PREFIX)/share/zsh/site-functions
FISHDIR = $(PREFIX)/share/fish/vendor_completions.d
TOOLS = vmk vmk-run vmk-snap vmk-clone vmk-mount vmk-sshkey vmk-ayinstall vmk-libvirt vmk-completions
CARGO ?= cargo

.PHONY: all build deps install man test check demo clean fuzz

all: build

build:
	$(CARGO) build --release --workspace --bins

# System packages (Debian/Ubuntu, root).
deps:
	./scripts/install-deps

install: build
	install -d $(BINDIR) $(MANDIR)/man1 $(MANDIR)/man5 $(SHAREDIR) $(BASHDIR) $(ZSHDIR) $(FISHDIR)
	for t in $(TOOLS); do install -m 0755 target/release/$$t $(BINDIR)/$$t; done
	install -m 0644 man/*.1 $(MANDIR)/man1/
	install -m 0644 man/*.5 $(MANDIR)/man5/
	cp -r autoinst $(SHAREDIR)/
	target/release/vmk-completions bash > $(BASHDIR)/vmk
	target/release/vmk-completions zsh > $(ZSHDIR)/_vmk
	target/release/vmk-completions fish > $(FISHDIR)/vmk.fish

# Regenerate man/ from the command and key tables and the clap definitions (a test fails
# when it is stale): vmk(1), vmk-NAME(1) for each command, vmk-config(5).
man:
	$(CARGO) run -q -p vmk-docgen --bin vmk-mangen -- man

# The test command README.md gives; .ci/run runs it too.
test:
	$(CARGO) test --workspace --no-fail-fast

# Property tests of the config parser, `vmk set`'s editor and the qemu argv
# (vmk-common/tests/fuzz.rs), run long: make test runs a few thousand cases of each.
# Prints the executions and the time of each property.
FUZZ_CASES ?= 100000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p vmk-common --test fuzz -- --nocapture

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The main job on a guest vmk builds itself (see scripts/demo).
demo: build
	./scripts/demo

clean:
	$(CARGO) clean

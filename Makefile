# RestoreFs — see README.md. `make run` and `make test` are the two set-up commands.
SHELL := /bin/bash
CONFIGURATION ?= Release
PREFIX ?= /usr/local
STORE ?=
MOUNTPOINT ?= demo/mnt
DOTNET ?= dotnet
RID := linux-x64

FILTER ?=
.PHONY: all deps build cli daemon restore-image test check run demo install clean bench

all: build

deps:
	@bash scripts/install-deps.sh

build: cli restore-image

# The restore daemon, NativeAOT (runs inside the restore VM).
daemon:
	$(DOTNET) publish src/RestoreFs.RestoreDaemon -c $(CONFIGURATION) -r $(RID) -p:PublishAot=true -o build/daemon --nologo -v quiet
	@echo "built build/daemon/restorefs-daemon"

# Kernel + initramfs of the restore VM from Debian packages (cached by content: quick when nothing changed).
restore-image: daemon
	@bash scripts/build-restore-image.sh build/restore-image build/daemon/restorefs-daemon

# NativeAOT: one native executable, no JIT and no runtime to load, so a mount is ready and answers its first read
# within milliseconds, and its code is not resident memory of its own (issue 16).
cli:
	$(DOTNET) publish src/RestoreFs.Cli -c $(CONFIGURATION) -r $(RID) -p:PublishAot=true \
		-o build/cli --nologo -v quiet
	@ln -sfn cli/restorefs build/restorefs
	@echo "built build/restorefs"

test: deps build
	$(DOTNET) build RestoreFs.sln -c $(CONFIGURATION) --nologo -v quiet
	CONFIGURATION=$(CONFIGURATION) bash scripts/test-summary.sh $(if $(FILTER),--filter "$(FILTER)")

# The fast loop: build the CLI and the tests, run them (or FILTER=…); no dependency install, no restore image rebuild.
check: cli
	$(DOTNET) build RestoreFs.sln -c $(CONFIGURATION) --nologo -v quiet
	CONFIGURATION=$(CONFIGURATION) bash scripts/test-summary.sh $(if $(FILTER),--filter "$(FILTER)")

demo: build
	@bash scripts/make-demo.sh

run: deps build
	@bash scripts/run.sh "$(STORE)" "$(MOUNTPOINT)"

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/restorefs/restore-image $(DESTDIR)$(PREFIX)/share/man/man1
	cp -a build/cli/. $(DESTDIR)$(PREFIX)/lib/restorefs/
	install -m 0644 build/restore-image/vmlinux build/restore-image/vmlinuz build/restore-image/initramfs.img $(DESTDIR)$(PREFIX)/lib/restorefs/restore-image/
	ln -sfn ../lib/restorefs/restorefs $(DESTDIR)$(PREFIX)/bin/restorefs
	install -m 0644 man/restorefs.1 $(DESTDIR)$(PREFIX)/share/man/man1/restorefs.1

bench: build
	@echo "see bench/README.md"

clean:
	rm -rf build
	$(DOTNET) clean RestoreFs.sln -v quiet --nologo

# Fuzzing (tests/RestoreFs.Fuzz): every target SECONDS seconds from seed SEED; findings go to build/fuzz-findings.
SECONDS ?= 60
SEED ?= 1
.PHONY: fuzz
fuzz:
	$(DOTNET) build tests/RestoreFs.Fuzz -c $(CONFIGURATION) --nologo -v quiet
	$(DOTNET) tests/RestoreFs.Fuzz/bin/$(CONFIGURATION)/net10.0/RestoreFs.Fuzz.dll --seconds $(SECONDS) --seed $(SEED) \
		--findings build/fuzz-findings $(if $(TARGET),--target $(TARGET))

# A small layer over cargo: build, install into PREFIX, and an uninstalled .pc file
# for building C programs against the tree.
PREFIX ?= /usr/local
CARGO ?= cargo
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
TARGET := target/release
DESTDIR ?=

.PHONY: all build install uninstalled-pc clean
all: build

build:
	OPALCRS_PREFIX=$(PREFIX) $(CARGO) build --release --locked

# build/uninstalled/opalcrs.pc points at the source tree's include/ and target/release/.
# The soname link lets programs built from the tree find the library at run time.
uninstalled-pc:
	ln -sf libopalcrs.so $(TARGET)/libopalcrs.so.0
	mkdir -p build/uninstalled
	sed -e 's|@PREFIX@|$(CURDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    -e 's|^libdir=.*|libdir=$(CURDIR)/$(TARGET)|' pkgconfig/opalcrs.pc.in > build/uninstalled/opalcrs.pc
	sed -i 's|^Libs: .*|& -Wl,-rpath,$${libdir}|' build/uninstalled/opalcrs.pc

install: build
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/opal/runtime \
	    $(DESTDIR)$(PREFIX)/include/opal/mca/crs/base $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/etc \
	    $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 0755 $(TARGET)/libopalcrs.so $(DESTDIR)$(PREFIX)/lib/libopalcrs.so.$(VERSION)
	ln -sf libopalcrs.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libopalcrs.so.0
	ln -sf libopalcrs.so.0 $(DESTDIR)$(PREFIX)/lib/libopalcrs.so
	install -m 0644 $(TARGET)/libopalcrs.a $(DESTDIR)$(PREFIX)/lib/libopalcrs.a
	install -m 0644 include/opal_crs.h include/opal_config.h $(DESTDIR)$(PREFIX)/include/
	install -m 0644 include/opal/constants.h $(DESTDIR)$(PREFIX)/include/opal/
	install -m 0644 include/opal/runtime/opal.h include/opal/runtime/opal_cr.h $(DESTDIR)$(PREFIX)/include/opal/runtime/
	install -m 0644 include/opal/mca/crs/crs.h $(DESTDIR)$(PREFIX)/include/opal/mca/crs/
	install -m 0644 include/opal/mca/crs/base/base.h $(DESTDIR)$(PREFIX)/include/opal/mca/crs/base/
	install -m 0755 $(TARGET)/opal-checkpoint $(TARGET)/opal-restart $(TARGET)/opal-info $(TARGET)/opal-run $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 man/opal-checkpoint.1 man/opal-restart.1 man/opal-info.1 man/opal-run.1 \
	    $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 0644 man/opal_crs.7 $(DESTDIR)$(PREFIX)/share/man/man7/
	test -e $(DESTDIR)$(PREFIX)/etc/openmpi-mca-params.conf || \
	    printf '# MCA parameters for libopalcrs: one "name = value" per line.\n' > $(DESTDIR)$(PREFIX)/etc/openmpi-mca-params.conf
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' pkgconfig/opalcrs.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/opalcrs.pc

clean:
	$(CARGO) clean
	rm -rf build

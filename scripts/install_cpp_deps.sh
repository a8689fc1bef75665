#!/usr/bin/env bash
# Build dependencies of the C++ example (cpp/) and its parity test (tests/test_cpp.py) on
# Debian/Ubuntu: a C++17 compiler, CMake, and the OpenCV modules, JSON library and OpenSSL (the
# manifest's SHA-256 through EVP) it links.
# libtorch comes from the torch wheel in the virtual environment, TensorRT from NVIDIA's image.
# Only the three OpenCV modules are installed: the libopencv-dev meta package pulls ~200 packages
# (VTK, Qt, GStreamer...) that the example never uses. Does nothing when everything is present.
set -euo pipefail

packages=(libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev nlohmann-json3-dev libssl-dev)
command -v cmake >/dev/null 2>&1 || packages+=(cmake)
command -v c++ >/dev/null 2>&1 || packages+=(g++)
command -v make >/dev/null 2>&1 || command -v ninja >/dev/null 2>&1 || packages+=(make)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_cpp_deps: C++ build dependencies already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_cpp_deps: no apt-get here; install yourself: ${missing[*]}" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_cpp_deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install_cpp_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

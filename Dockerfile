# syntax=docker/dockerfile:1
# `pipeline` with the locked stack (requirements/lock.txt), entrypoint `pipeline`.
# docs/docker.md: build, run, the driver requirement, volumes, what was verified.
#
# One CUDA stack, from pip, on a plain Python base: torch 2.14.1's Linux wheel
# depends on NVIDIA's CUDA 13.0 wheels (cudart, cuBLAS, cuFFT, cuRAND, NVRTC,
# cuDNN 9), and onnxruntime-gpu 1.31 is a CUDA 13 + cuDNN 9 build that loads
# those same libraries (onnxruntime.preload_dlls, called by verify/ort.py), so
# an nvidia/cuda base would only add a second copy. The host needs an NVIDIA
# driver for CUDA 13.0 (Linux >= 580.65.06) and the NVIDIA Container Toolkit
# (`docker run --gpus all`); without a GPU the image runs on the CPU.
#
# python:3.11.16-slim-bookworm (Python 3.11 as in CI, glibc 2.36 >= the wheels'
# manylinux_2_28), pinned by its multi-platform index digest.
FROM docker.io/library/python:3.11.16-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

LABEL org.opencontainers.image.title="nhle-pipeline" \
      org.opencontainers.image.description="Class unlearning (NHLE-CWM) to a verified ONNX release" \
      org.opencontainers.image.licenses="Apache-2.0"

# PIPELINE_CACHE_DIR: the baseline cache and extracted npz members (a volume, below).
# MPLCONFIGDIR: matplotlib's font cache in a folder every user can write, whatever --user says.
# NVIDIA_*: read by the NVIDIA Container Toolkit under --gpus: the driver's compute
# libraries, and a clear refusal on a driver older than CUDA 13.0 needs.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIPELINE_CACHE_DIR=/cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"

# The dependencies, every file checked against the lock's sha256, in a layer of
# their own: a change to the source rebuilds only the layers after this one.
# Both Pythons by full path: the shell remembers where it found `python` first.
COPY requirements/lock.txt /tmp/lock.txt
RUN /usr/local/bin/python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --require-hashes -r /tmp/lock.txt \
 && rm /tmp/lock.txt

# The project itself, built by the locked setuptools (no isolated build, so
# nothing unpinned is fetched); pip check: the lock meets its requirements.
COPY pyproject.toml README.md /tmp/src/
COPY export /tmp/src/export
COPY verify /tmp/src/verify
COPY pipeline /tmp/src/pipeline
RUN python -m pip install --no-deps --no-build-isolation /tmp/src \
 && python -m pip check \
 && rm -rf /tmp/src

# A non-root user; /cache, runs/ and releases/ are writable by any user
# (sticky, like /tmp), so `docker run --user "$(id -u):$(id -g)"` works too.
RUN groupadd --system --gid 10001 pipeline \
 && useradd --system --uid 10001 --gid pipeline --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin pipeline \
 && install -d -m 1777 /cache /work/runs /work/releases

WORKDIR /work
COPY examples ./examples
# numeric, so that a runtime (Kubernetes runAsNonRoot) can tell it is not root
USER 10001:10001

# The smoke test, as the user the image runs as: the digits demo on the CPU
# (train, run, verify) in a throwaway folder that this same step removes, with
# what torch and matplotlib leave in /tmp. It cds there (DL3003 ignored): a
# WORKDIR would leave the folder in the image.
# hadolint ignore=DL3003
RUN pipeline --version \
 && python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()" \
 && smoke="$(mktemp -d)" \
 && cd "$smoke" \
 && cp -r /work/examples . \
 && PIPELINE_CACHE_DIR="$smoke/cache" pipeline train examples/digits.yaml --device cpu \
 && PIPELINE_CACHE_DIR="$smoke/cache" pipeline run examples/digits.yaml --device cpu \
 && pipeline verify releases/digits-forget-0 --device cpu \
 && cd / \
 && rm -rf "$smoke" /tmp/matplotlib /tmp/torchinductor_*

VOLUME ["/cache"]
ENTRYPOINT ["pipeline"]
CMD ["--help"]

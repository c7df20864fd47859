# CUDA 13 runtime + cuDNN 9 (what onnxruntime-gpu 1.2x-1.3x wheels for CUDA 13 need), the
# project installed with onnxruntime-gpu; entrypoint `pipeline`.
#   docker build -t nhle-pipeline .
#   docker run --gpus all -v "$PWD/runs:/work/runs" -v "$PWD/releases:/work/releases" \
#     -v "$PWD/examples:/work/examples" nhle-pipeline run examples/digits.yaml
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY export ./export
COPY verify ./verify
RUN pip install --upgrade pip && pip install .

WORKDIR /work
COPY examples ./examples
ENTRYPOINT ["pipeline"]
CMD ["--help"]

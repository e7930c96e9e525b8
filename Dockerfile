# lamini-serve on a CPU: the embedded teacher behind the OpenAI-compatible endpoint.
#
#   docker build -t lamini-serve .
#   docker run -p 8000:8000 -e LAMINI_API_KEY=change-me lamini-serve
#   docker run -p 8000:8000 -e LAMINI_API_KEY=change-me -v "$PWD/runs:/work/runs" lamini-serve \
#       lamini serve --herd runs/herd --host 0.0.0.0 --require-api-key
#
# The install is the README's (`pip install '.[all]' -c constraints/cpu.txt`), with PyTorch's CPU
# wheel index so pip does not pull a CUDA build. tests/test_docker.py runs these RUN steps in a
# fresh virtual environment, so this file and the README cannot drift apart.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    LAMINI_HOME=/home/lamini/.cache/lamini \
    PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 1000 lamini

WORKDIR /opt/lamini-serve
COPY pyproject.toml README.md ./
COPY constraints ./constraints
COPY lamini_serve ./lamini_serve
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --extra-index-url "$TORCH_INDEX" '.[all]' -c constraints/cpu.txt

USER 1000
WORKDIR /work
# The teacher is pulled at build time: the image serves with no network.
RUN lamini teacher pull

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# Listens on every interface, so it refuses to start without LAMINI_API_KEY.
CMD ["lamini", "serve", "embedded", "--host", "0.0.0.0", "--port", "8000", "--require-api-key"]

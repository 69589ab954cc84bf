# The TumorOps training image for GPU pods (PipesK8sClient, see README "Training on a GPU cluster").
# Build from the repository root:  docker build -f infra/docker/training.Dockerfile -t REGISTRY/tumorops-train:TAG .
# The pip wheel of TensorFlow bundles CUDA and cuDNN through the `and-cuda` extra; the node needs only the driver
# (NVIDIA device plugin exposing nvidia.com/gpu).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TUMOROPS_HOME=/cache

RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY tumor_model ./tumor_model
COPY orchestration ./orchestration
COPY serving ./serving
COPY infra ./infra
RUN uv sync --frozen --no-dev \
    && uv pip install --python /opt/venv/bin/python "tensorflow[and-cuda]==$(/opt/venv/bin/python -c 'import tensorflow as tf; print(tf.__version__)')"

# The git commit the image was built from, recorded in every MLflow run it trains.
ARG GIT_COMMIT=unknown
ENV TUMOROPS_GIT_COMMIT=$GIT_COMMIT

# Dagster's PipesK8sClient sets the command (`tumorops train --manifest ... --resume --checkpoint-key ...`).
ENTRYPOINT []
CMD ["tumorops", "--help"]

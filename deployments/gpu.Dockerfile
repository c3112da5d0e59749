# Image for the Vertex AI GPU work pool (deployments/vertex-ai-gpu.json).
#
#   docker build -f deployments/gpu.Dockerfile -t REGION-docker.pkg.dev/PROJECT/alpha/alpha-symbio:latest .
#   docker push REGION-docker.pkg.dev/PROJECT/alpha/alpha-symbio:latest
#
# The code lives at /opt/alpha, where deployments/prefect-gcp.yaml's pull step
# runs the flow. torch comes from PyTorch's CUDA wheel index (it bundles the
# CUDA runtime; Vertex AI GPU machines provide the driver).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/alpha
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cu128

COPY pyproject.toml README.md ./
COPY model ./model
COPY symbio ./symbio
COPY storage ./storage
COPY tasks ./tasks
COPY flows ./flows
COPY dash_app ./dash_app
COPY deployments ./deployments
RUN pip install -e ".[gcp]" "prefect-gcp[aiplatform]"

# Vertex AI runs the job with the worker's command (`prefect flow-run execute`).
CMD ["prefect", "flow-run", "execute"]

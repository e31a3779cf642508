# The engine image: semipd with SGLang 0.5.23 and its full (CUDA) dependency set, the same recipe
# as `pip install -e '.[engine]'` on a GPU or a CPU-only host. On a host without a GPU (or a
# container given none) the engine runs on CPU cores; see the README's "GPU deployment".
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/semipd
COPY pyproject.toml README.md ./
COPY contract contract
COPY policies policies
COPY loadtest loadtest
COPY simulator simulator
COPY planner planner
COPY tuner tuner
COPY dashboard dashboard
COPY stack stack
COPY cli cli
COPY engine engine
RUN pip install --no-cache-dir -e '.[engine]'
EXPOSE 30000
CMD ["semipd", "serve", "--mode", "semi-pd", "--host", "0.0.0.0", "--port", "30000"]

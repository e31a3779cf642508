# The engine image: semipd with SGLang 0.5.23 and its full (CUDA) dependency set, the same recipe
# as `pip install -e '.[engine]'` on a GPU or a CPU-only host. On a host without a GPU (or a
# container given none) the engine runs on CPU cores; see the README's "GPU deployment".
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/semipd
COPY pyproject.toml README.md ./
COPY engine engine
COPY tuner tuner
COPY policies policies
COPY dashboard dashboard
RUN pip install --no-cache-dir -e '.[engine]'
EXPOSE 30000
CMD ["semipd", "serve", "--mode", "semi-pd", "--host", "0.0.0.0", "--port", "30000"]

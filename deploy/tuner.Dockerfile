# The tuner and dashboard image: no torch, no SGLang (`pip install -e .` alone).
FROM python:3.11-slim-bookworm
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
RUN pip install --no-cache-dir -e .
EXPOSE 31000 8501
CMD ["semipd", "tune", "--engine", "http://engine:30000", "--host", "0.0.0.0", "--port", "31000", "--ttft-slo", "0.5", "--tpot-slo", "0.05"]

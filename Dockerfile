# One image for every gatehouse service; the command picks the service (python -m services.<name>).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY gatehouse ./gatehouse
COPY deploy ./deploy
RUN pip install --no-cache-dir . && useradd --uid 10001 gatehouse \
    && mkdir -p /var/lib/gatehouse && chown gatehouse /var/lib/gatehouse
USER gatehouse
# the event spool of ingress and guard (mount a volume here that outlives the container)
ENV GATEHOUSE_CONFIG=/app/deploy/gatehouse.yaml GATEHOUSE_DATA_DIR=/var/lib/gatehouse
CMD ["python", "-m", "services.ingress"]

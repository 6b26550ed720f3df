FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
# The floors (README "Architecture"), lowest first.
COPY config config
COPY profiles profiles
COPY schemas schemas
COPY sinks sinks
COPY streams streams
COPY serve serve
COPY producers producers
COPY unifier unifier
EXPOSE 8088
RUN pip install --no-cache-dir . && useradd --create-home unifier && mkdir -p /var/lib/unifier \
    && chown unifier /var/lib/unifier
USER unifier
CMD ["unifier", "worker"]

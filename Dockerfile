FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY unifier unifier
COPY streams streams
COPY schemas schemas
COPY profiles profiles
COPY producers producers
EXPOSE 8088
RUN pip install --no-cache-dir . && useradd --create-home unifier && mkdir -p /var/lib/unifier \
    && chown unifier /var/lib/unifier
USER unifier
CMD ["unifier", "worker"]
